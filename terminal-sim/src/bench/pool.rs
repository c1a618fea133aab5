//! The pre-signed request streams. Every request a terminal may send in the
//! measured window is encoded and signed before the clock starts (signing
//! costs ~28 us, and the generator shares the cores with the daemon), then
//! kept as ready `ClientMessage` frames in one buffer per terminal.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cardd::crypto::sign_request;
use cardd::pb::{self, client_message::Body, request::Op, ClientMessage};
use ed25519_dalek::SigningKey;
use prost::Message;

use super::plan::PlanOp;
use super::provision::OPERATOR;

/// One terminal's signed requests, ready to send: `ClientMessage` frames
/// (without their length prefix) with request ids 1, 2, ...
pub struct Pool {
    buf: Bytes,
    ends: Vec<usize>,
}

impl Pool {
    /// Number of requests.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The encoded frame of request `i` (request id `i + 1`).
    pub fn frame(&self, i: usize) -> Bytes {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.buf.slice(start..self.ends[i])
    }
}

/// What one terminal's pool is signed from.
pub struct PoolSpec<'a> {
    /// The terminal's key.
    pub key: &'a SigningKey,
    /// The brand.
    pub brand_id: u32,
    /// The first transaction id for a state-changing request.
    pub first_txn: u64,
    /// The plan.
    pub ops: &'a [PlanOp],
    /// Record seqs of the terminal's setup purchases (refund originals).
    pub seed_seqs: &'a [u64],
}

/// The protocol operation for a planned one, and whether it takes a
/// transaction id (every operation but an inquiry does).
fn wire_op(op: &PlanOp, cards: &[String], seed_seqs: &[u64]) -> (Op, bool) {
    match *op {
        PlanOp::Purchase { card, amount } => (
            Op::Purchase(pb::Purchase {
                card: cards[card as usize].clone(),
                amount_minor: amount,
                allow_partial: false,
                ..Default::default()
            }),
            true,
        ),
        PlanOp::TopUp { card, amount } => (
            Op::TopUp(pb::TopUp {
                card: cards[card as usize].clone(),
                amount_minor: amount,
                ..Default::default()
            }),
            true,
        ),
        PlanOp::Inquiry { card } => (
            Op::Inquiry(pb::Inquiry {
                card: cards[card as usize].clone(),
            }),
            false,
        ),
        PlanOp::Refund { seed, amount } => (
            Op::Refund(pb::Refund {
                original_seq: seed_seqs[seed as usize],
                amount_minor: amount,
            }),
            true,
        ),
    }
}

/// Encodes and signs one terminal's plan. Read-only requests use no
/// transaction id; every other request takes the next one.
pub fn sign_pool(spec: &PoolSpec<'_>, cards: &[String], signed: &AtomicU64) -> Pool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut buf = Vec::with_capacity(spec.ops.len() * 180);
    let mut ends = Vec::with_capacity(spec.ops.len());
    let mut txn = spec.first_txn;
    for (i, op) in spec.ops.iter().enumerate() {
        let (op, takes_txn) = wire_op(op, cards, spec.seed_seqs);
        let txn_id = if takes_txn {
            txn += 1;
            txn - 1
        } else {
            0
        };
        let request = pb::Request {
            txn_id,
            brand_id: spec.brand_id,
            operator: OPERATOR.into(),
            client_time_ms: now_ms,
            want_proof: false,
            op: Some(op),
        }
        .encode_to_vec();
        let signature = sign_request(spec.key, &request);
        ClientMessage {
            request_id: i as u64 + 1,
            body: Some(Body::Signed(pb::SignedRequest { request, signature })),
        }
        .encode(&mut buf)
        .expect("a Vec grows");
        ends.push(buf.len());
        if i % 256 == 255 {
            signed.fetch_add(256, Ordering::Relaxed);
        }
    }
    signed.fetch_add(spec.ops.len() as u64 % 256, Ordering::Relaxed);
    Pool {
        buf: Bytes::from(buf),
        ends,
    }
}

/// Signs every terminal's pool on `threads` threads.
pub fn sign_all(
    specs: &[PoolSpec<'_>],
    cards: &[String],
    threads: usize,
    signed: &AtomicU64,
) -> Vec<Pool> {
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Pool>> = (0..specs.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(spec) = specs.get(i) else { break };
                        done.push((i, sign_pool(spec, cards, signed)));
                    }
                    done
                })
            })
            .collect();
        for w in workers {
            for (i, pool) in w.join().expect("a signing thread panicked") {
                out[i] = Some(pool);
            }
        }
    });
    out.into_iter()
        .map(|p| p.expect("every pool signed"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardd::crypto::{generate_key, request_message, verify_strict};

    #[test]
    fn pools_are_signed_frames_with_sequential_ids() {
        let key = generate_key();
        let cards = vec!["8000011234567890123".to_string()];
        let ops = [
            PlanOp::Purchase {
                card: 0,
                amount: 500,
            },
            PlanOp::Inquiry { card: 0 },
            PlanOp::TopUp {
                card: 0,
                amount: 1000,
            },
            PlanOp::Refund {
                seed: 0,
                amount: 100,
            },
        ];
        let spec = PoolSpec {
            key: &key,
            brand_id: 3,
            first_txn: 10,
            ops: &ops,
            seed_seqs: &[77],
        };
        let counter = AtomicU64::new(0);
        let pools = sign_all(&[spec], &cards, 2, &counter);
        assert_eq!(counter.load(Ordering::Relaxed), 4);
        let pool = &pools[0];
        assert_eq!(pool.len(), 4);
        let mut txns = Vec::new();
        for i in 0..pool.len() {
            let msg = ClientMessage::decode(pool.frame(i)).unwrap();
            assert_eq!(msg.request_id, i as u64 + 1);
            let Some(Body::Signed(s)) = msg.body else {
                panic!("not signed")
            };
            assert!(verify_strict(
                &key.verifying_key(),
                &request_message(&s.request),
                &s.signature
            ));
            let req = pb::Request::decode(s.request.as_slice()).unwrap();
            assert_eq!(req.brand_id, 3);
            txns.push(req.txn_id);
            if let Some(Op::Refund(r)) = req.op {
                assert_eq!(r.original_seq, 77);
            }
        }
        assert_eq!(txns, vec![10, 0, 11, 12]);
    }
}
