//! Crash soak: many terminals run purchases, top-ups, refunds and reversals,
//! drop their connections at random "timeouts" and settle what they never
//! heard back the way a till does, while the daemon is killed with SIGKILL at
//! random moments and restarted on the same data, N times.
//!
//! After every restart (and at the end, offline, through the `cardd audit`
//! CLI):
//! - every acknowledged operation is in the ledger exactly once, with the
//!   sequence number and record hash its receipt gave (TxnStatus and the
//!   exported records agree), and a retry of its signed bytes is a replay;
//! - every operation whose answer never came is settled (TxnStatus, then a
//!   retry of the identical bytes or a reversal) and applied at most once;
//!   no (terminal, txn) appears twice and no record exists that the
//!   client-side model does not know;
//! - every card's live balance equals the model built from the replies
//!   (each reply's balance after = the previous one's + its own delta), and
//!   the auditor's replay gives the same paid, bonus and points;
//! - money is conserved: loads + bonus − spends + refunds + reversal net =
//!   the sum of the balances = the outstanding liability;
//! - the export verifies and replays (`cardd::audit::verify_export`).
//!
//! `CARDD_SOAK_CYCLES` sets the number of crash cycles (default 5, the CI
//! size), `CARDD_SOAK_SEED` the seed (printed; it reproduces the choices and
//! the kill delays, not the thread interleavings). `bench/soak.sh` runs the
//! long mode. The last line printed starts with `SOAK SUMMARY`.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cardd::audit::{verify_export, ExportReader, VerifyOptions, VerifyReport};
use cardd::client::{Client, ClientError};
use cardd::crypto::{generate_key, leaf_hash, read_key_file, sign_request};
use cardd::pb::{
    self, client_message::Body, export_item::Item, reply::Detail, request::Op, server_message,
    ClientMessage, ErrorCode, RecordKind, ServerMessage, TxnState,
};
use common::*;
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Connections driving operations during a storm (over four terminal keys:
/// two keys have two connections each, with disjoint txn id ranges).
const CONNECTIONS: usize = 6;
/// Terminal keys: the two demo tills and two enrolled by the owner.
const KEYS: usize = 4;
/// Requests one connection keeps in flight (pipelined).
const WINDOW: usize = 8;
/// A connection sends at most one request per this interval ...
const PACE: Duration = Duration::from_millis(3);
/// ... and at most this many per cycle (bounds every cycle).
const MAX_OPS_PER_CYCLE: usize = 600;
/// Chance that a connection "times out" right after a send: it drops the
/// connection without reading any answer and settles them after reconnecting.
const P_DROP: f64 = 0.012;
/// Chance (when something is in flight) that a till, tired of waiting, sends
/// a request still in flight again (identical bytes, same connection).
const P_DUPLICATE: f64 = 0.2;
/// Chance that a till settles an unknown purchase or top-up by reversing it
/// (otherwise it retries the identical bytes).
const P_REVERSE_UNKNOWN: f64 = 0.35;
/// The kill comes this long (ms) after the cycle's first answer.
const KILL_DELAY_MS: std::ops::RangeInclusive<u64> = 50..=1_000;
/// No answer from a live daemon may take longer than this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Cards issued by the owner on top of the demo's five.
const EXTRA_CARDS: usize = 5;
/// First load of every card (over 100,000: the demo rules add 15% bonus).
const SETUP_LOAD: i64 = 20_000_000;
/// A card below this balance is topped up between cycles ...
const LOW_BALANCE: i64 = 2_000_000;
/// ... with this much.
const REFILL: i64 = 10_000_000;
/// The card whose paid value is spent to zero before every storm, so that
/// purchases, refunds and reversals move bonus value too.
const BONUS_CARD: usize = 0;
/// Reversal and refund targets are chosen among this many recent txns.
const RECENT: usize = 64;

fn seed() -> u64 {
    match std::env::var("CARDD_SOAK_SEED") {
        Ok(s) => s.parse().expect("CARDD_SOAK_SEED must be a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    }
}

fn cycles() -> u64 {
    match std::env::var("CARDD_SOAK_CYCLES") {
        Ok(s) => s.parse().expect("CARDD_SOAK_CYCLES must be a number"),
        Err(_) => 5,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The daemon went away under us (killed by this test): the operation's
/// outcome is unknown.
#[derive(Debug)]
struct Lost;

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planned {
    Purchase {
        card: usize,
        amount: i64,
    },
    TopUp {
        card: usize,
        amount: i64,
    },
    /// Refund of this connection's own purchase (by its txn id).
    Refund {
        purchase: u64,
        amount: i64,
    },
    /// Reversal of `target`; `found` is what the reply must say, when known.
    Reversal {
        target: u64,
        found: Option<bool>,
    },
    /// A purchase sent under a txn id that was tombstoned by a reversal.
    Late {
        card: usize,
        amount: i64,
    },
}

/// The answers a request may get: success, and at most one refusal code.
#[derive(Debug, Clone, Copy)]
struct Expect {
    ok: bool,
    refusal: Option<ErrorCode>,
}

const OK: Expect = Expect {
    ok: true,
    refusal: None,
};

fn refused(code: ErrorCode) -> Expect {
    Expect {
        ok: false,
        refusal: Some(code),
    }
}

/// One signed request, kept verbatim so that a retry sends identical bytes.
#[derive(Debug, Clone)]
struct Sent {
    txn: u64,
    planned: Planned,
    expect: Expect,
    request: Vec<u8>,
    signature: Vec<u8>,
    /// Own txns this request works on (no other request may touch them
    /// until this one is settled).
    locks: Vec<u64>,
}

/// A request whose answer never came, and the reversal sent to settle it
/// (once chosen, the reversal's bytes are reused: never a second one).
#[derive(Debug, Clone)]
struct Pending {
    sent: Sent,
    reversal: Option<Sent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnKind {
    Purchase,
    TopUp,
    Refund,
}

/// A money operation of this connection, in the ledger.
#[derive(Debug, Clone)]
struct Own {
    kind: OwnKind,
    seq: u64,
    card: usize,
    /// Purchase: approved; top-up: paid + bonus; refund: refunded.
    value: i64,
    /// Refund: the purchase's txn.
    purchase: u64,
    /// Purchase: the value of its live (not reversed) refunds.
    refunded: i64,
    reversed: bool,
}

/// One record this test caused, as its reply described it.
#[derive(Debug, Clone)]
struct Applied {
    terminal_id: u32,
    txn: u64,
    seq: u64,
    hash: Vec<u8>,
    request: Vec<u8>,
    signature: Vec<u8>,
    kind: RecordKind,
    card: Option<usize>,
    /// Signed change of the card's value (paid + bonus).
    delta: i64,
    view: Option<pb::CardView>,
    cycle: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    /// Fresh requests sent (not counting retries).
    sent: u64,
    /// Fresh requests answered with a result.
    acked: u64,
    /// Fresh requests answered with the refusal the model predicted.
    refused_as_expected: u64,
    /// Connections dropped with answers outstanding (simulated timeouts).
    drops: u64,
    /// Unknown outcomes settled after a drop, daemon alive.
    resolved_in_cycle: u64,
    /// Unknown outcomes settled after a crash and restart.
    resolved_after_crash: u64,
    /// ... of which: found committed (retry answered as a replay).
    found_committed: u64,
    /// ... not in the ledger, applied once by the retry.
    applied_by_retry: u64,
    /// ... refused again on retry, as predicted.
    refused_on_retry: u64,
    /// ... settled by a reversal that found the original.
    reversed_unknown: u64,
    /// ... settled by a reversal that left a tombstone.
    tombstoned_unknown: u64,
    /// Retries of acknowledged requests answered as replays.
    replays_checked: u64,
    /// Requests sent twice on one connection while the first was in flight.
    duplicates: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.refused_as_expected += o.refused_as_expected;
        self.drops += o.drops;
        self.resolved_in_cycle += o.resolved_in_cycle;
        self.resolved_after_crash += o.resolved_after_crash;
        self.found_committed += o.found_committed;
        self.applied_by_retry += o.applied_by_retry;
        self.refused_on_retry += o.refused_on_retry;
        self.reversed_unknown += o.reversed_unknown;
        self.tombstoned_unknown += o.tombstoned_unknown;
        self.replays_checked += o.replays_checked;
        self.duplicates += o.duplicates;
    }
}

/// How a storm on one connection ended.
enum Flow {
    /// Dropped on purpose: reconnect and settle.
    Dropped,
    /// The daemon is gone.
    Lost,
    /// The cycle's quota is done.
    Done,
}

/// Sends signed bytes and waits (bounded) for the answer.
async fn roundtrip(
    c: &mut Client,
    request: Vec<u8>,
    signature: Vec<u8>,
    killed: &AtomicBool,
) -> Result<Result<pb::Reply, ErrorCode>, Lost> {
    match tokio::time::timeout(ANSWER_TIMEOUT, c.call_signed(request, signature)).await {
        Ok(Ok(r)) => Ok(Ok(r)),
        Ok(Err(ClientError::Refused(r))) => Ok(Err(r.code)),
        Ok(Err(e)) if killed.load(Ordering::SeqCst) => {
            let _ = e;
            Err(Lost)
        }
        Ok(Err(e)) => panic!("transport failure with a live daemon: {e}"),
        Err(_) if killed.load(Ordering::SeqCst) => Err(Lost),
        Err(_) => panic!("no answer within {ANSWER_TIMEOUT:?} from a live daemon"),
    }
}

fn receipt(r: &pb::Reply) -> &pb::Receipt {
    r.receipt
        .as_ref()
        .expect("a reply to a state change carries a receipt")
}

/// One terminal connection's till: its key, its txn id range, what it knows
/// of its own operations, and what it has not heard back.
struct Worker {
    id: usize,
    terminal_id: u32,
    key: SigningKey,
    brand: u32,
    cards: Arc<Vec<String>>,
    operator: String,
    txn_base: u64,
    next_txn: u64,
    cycle: u64,
    /// Own money operations in the ledger, by txn.
    book: HashMap<u64, Own>,
    /// Own money txns, oldest first (targets for refunds and reversals).
    recent: Vec<u64>,
    /// Tombstoned txn ids not yet sent late.
    tombstones_unsent: Vec<u64>,
    /// Every tombstoned txn id.
    tombstones: Vec<u64>,
    pending: Vec<Pending>,
    locked: HashSet<u64>,
    applied: Vec<Applied>,
    stats: Stats,
    sent_this_cycle: usize,
}

impl Worker {
    fn fresh_txn(&mut self) -> u64 {
        self.next_txn += 1;
        self.txn_base + self.next_txn
    }

    fn make(&mut self, txn: u64, planned: Planned, expect: Expect) -> Sent {
        let card_no = |i: usize| self.cards[i].clone();
        let (op, locks) = match planned {
            Planned::Purchase { card, amount } | Planned::Late { card, amount } => {
                (purchase(&card_no(card), amount), vec![])
            }
            Planned::TopUp { card, amount } => (top_up(&card_no(card), amount), vec![]),
            Planned::Refund {
                purchase: p,
                amount,
            } => (
                Op::Refund(pb::Refund {
                    original_seq: self.book[&p].seq,
                    amount_minor: amount,
                }),
                vec![p],
            ),
            Planned::Reversal { target, .. } => {
                let mut locks = vec![target];
                if let Some(o) = self.book.get(&target) {
                    if o.kind == OwnKind::Refund {
                        locks.push(o.purchase);
                    }
                }
                (
                    Op::Reversal(pb::Reversal {
                        original_txn_id: target,
                    }),
                    locks,
                )
            }
        };
        let req = pb::Request {
            txn_id: txn,
            brand_id: self.brand,
            operator: self.operator.clone(),
            client_time_ms: now_ms(),
            want_proof: false,
            op: Some(op),
        };
        let request = req.encode_to_vec();
        let signature = sign_request(&self.key, &request);
        Sent {
            txn,
            planned,
            expect,
            request,
            signature,
            locks,
        }
    }

    fn random_card(&self, rng: &mut StdRng) -> usize {
        rng.gen_range(0..self.cards.len())
    }

    fn plan_purchase(&mut self, rng: &mut StdRng) -> Sent {
        let card = self.random_card(rng);
        let amount = rng.gen_range(1..=2_000);
        let txn = self.fresh_txn();
        self.make(txn, Planned::Purchase { card, amount }, OK)
    }

    fn plan_top_up(&mut self, rng: &mut StdRng) -> Sent {
        let card = self.random_card(rng);
        // Mostly small loads; one in five earns bonus under the demo rules.
        let amount = if rng.gen_bool(0.8) {
            rng.gen_range(1_000..=10_000)
        } else {
            rng.gen_range(50_000..=120_000)
        };
        let txn = self.fresh_txn();
        self.make(txn, Planned::TopUp { card, amount }, OK)
    }

    fn recent_unlocked(&self) -> Vec<u64> {
        let from = self.recent.len().saturating_sub(RECENT);
        self.recent[from..]
            .iter()
            .copied()
            .filter(|t| !self.locked.contains(t))
            .filter(|t| {
                // A refund also locks its purchase.
                let o = &self.book[t];
                o.kind != OwnKind::Refund || !self.locked.contains(&o.purchase)
            })
            .collect()
    }

    fn plan_refund(&mut self, rng: &mut StdRng) -> Option<Sent> {
        let candidates: Vec<u64> = self
            .recent_unlocked()
            .into_iter()
            .filter(|t| {
                let o = &self.book[t];
                o.kind == OwnKind::Purchase && !o.reversed && o.value > o.refunded
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let p = candidates[rng.gen_range(0..candidates.len())];
        let left = self.book[&p].value - self.book[&p].refunded;
        let amount = rng.gen_range(1..=left);
        let txn = self.fresh_txn();
        Some(self.make(
            txn,
            Planned::Refund {
                purchase: p,
                amount,
            },
            OK,
        ))
    }

    /// What reversing own, settled `target` must answer.
    fn predict_reversal(&self, target: u64) -> Expect {
        let o = &self.book[&target];
        if o.reversed {
            return refused(ErrorCode::AlreadyReversed);
        }
        if o.kind == OwnKind::Purchase && o.refunded > 0 {
            return refused(ErrorCode::NotReversible);
        }
        if o.card == BONUS_CARD && o.kind != OwnKind::Purchase {
            // Taking value back needs it on the card: the bonus card's
            // paid value is spent to zero each cycle, and other tills spend
            // from it concurrently.
            return Expect {
                ok: true,
                refusal: Some(ErrorCode::InsufficientFunds),
            };
        }
        OK
    }

    fn plan_reversal(&mut self, rng: &mut StdRng) -> Sent {
        let pick = rng.gen_range(0..100);
        if pick < 55 {
            let candidates = self.recent_unlocked();
            if !candidates.is_empty() {
                let target = candidates[rng.gen_range(0..candidates.len())];
                let expect = self.predict_reversal(target);
                let found = expect.ok.then_some(true);
                let txn = self.fresh_txn();
                return self.make(txn, Planned::Reversal { target, found }, expect);
            }
        } else if pick >= 85 && !self.tombstones.is_empty() {
            // A second reversal of a tombstoned id.
            let target = self.tombstones[rng.gen_range(0..self.tombstones.len())];
            if !self.locked.contains(&target) {
                let txn = self.fresh_txn();
                return self.make(
                    txn,
                    Planned::Reversal {
                        target,
                        found: None,
                    },
                    refused(ErrorCode::AlreadyReversed),
                );
            }
        }
        // Reversal of a txn id this till skipped and never sent: a tombstone.
        let target = self.fresh_txn();
        let txn = self.fresh_txn();
        self.make(
            txn,
            Planned::Reversal {
                target,
                found: Some(false),
            },
            OK,
        )
    }

    fn plan_late(&mut self, rng: &mut StdRng) -> Option<Sent> {
        if self.tombstones_unsent.is_empty() {
            return None;
        }
        let i = rng.gen_range(0..self.tombstones_unsent.len());
        let txn = self.tombstones_unsent.swap_remove(i);
        let card = self.random_card(rng);
        let amount = rng.gen_range(1..=2_000);
        Some(self.make(
            txn,
            Planned::Late { card, amount },
            refused(ErrorCode::TxnReversed),
        ))
    }

    fn plan(&mut self, rng: &mut StdRng) -> Sent {
        let r = rng.gen_range(0..100);
        let planned = if r < 60 {
            None
        } else if r < 75 {
            Some(self.plan_top_up(rng))
        } else if r < 85 {
            self.plan_refund(rng)
        } else if r < 95 {
            Some(self.plan_reversal(rng))
        } else {
            self.plan_late(rng)
        };
        let s = planned.unwrap_or_else(|| self.plan_purchase(rng));
        self.locked.extend(s.locks.iter().copied());
        s
    }

    fn unlock(&mut self, s: &Sent) {
        for t in &s.locks {
            self.locked.remove(t);
        }
    }

    fn check_refusal(&self, s: &Sent, code: ErrorCode) {
        assert_eq!(
            s.expect.refusal,
            Some(code),
            "worker {} txn {} ({:?}) refused with {code:?}, expected {:?}",
            self.id,
            s.txn,
            s.planned,
            s.expect
        );
    }

    /// Folds a result (fresh, replayed or read back by TxnStatus) into the
    /// model, checking it says what the request asked.
    fn settle(&mut self, s: &Sent, reply: &pb::Reply) {
        assert!(
            s.expect.ok,
            "worker {} txn {} ({:?}) succeeded, expected {:?}",
            self.id, s.txn, s.planned, s.expect
        );
        let r = receipt(reply);
        assert_eq!(r.txn_id, s.txn, "receipt for another txn");
        assert_eq!(
            r.terminal_id, self.terminal_id,
            "receipt of another terminal"
        );
        let view = reply.card.clone();
        let card_of = |view: &Option<pb::CardView>, card: usize| {
            let v = view.as_ref().expect("a money reply shows the card");
            assert_eq!(v.card, self.cards[card], "reply shows another card");
            card
        };
        let (kind, card, delta) = match (s.planned, &reply.detail) {
            (Planned::Purchase { card, amount }, Some(Detail::Purchase(p))) => {
                assert_eq!(p.requested_minor, amount);
                assert_eq!(p.approved_minor, amount, "txn {}: partial purchase", s.txn);
                let card = card_of(&view, card);
                self.own(s.txn, OwnKind::Purchase, r.seq, card, amount, 0);
                (RecordKind::Purchase, Some(card), -amount)
            }
            (Planned::TopUp { card, amount }, Some(Detail::TopUp(t))) => {
                assert_eq!(t.paid_minor, amount);
                assert!(t.bonus_minor >= 0);
                let card = card_of(&view, card);
                let value = t.paid_minor + t.bonus_minor;
                self.own(s.txn, OwnKind::TopUp, r.seq, card, value, 0);
                (RecordKind::TopUp, Some(card), value)
            }
            (
                Planned::Refund {
                    purchase: p,
                    amount,
                },
                Some(Detail::Refund(f)),
            ) => {
                assert_eq!(f.refunded_minor, amount, "txn {}: refund amount", s.txn);
                let orig = self.book.get_mut(&p).expect("refund of a known purchase");
                assert!(!orig.reversed, "refund of a reversed purchase applied");
                orig.refunded += amount;
                assert_eq!(
                    f.refundable_left_minor,
                    orig.value - orig.refunded,
                    "txn {}: refundable left",
                    s.txn
                );
                let card = card_of(&view, orig.card);
                self.own(s.txn, OwnKind::Refund, r.seq, card, amount, p);
                (RecordKind::Refund, Some(card), amount)
            }
            (Planned::Reversal { target, found }, Some(Detail::Reversal(v))) => {
                assert_eq!(v.original_txn_id, target);
                if let Some(f) = found {
                    assert_eq!(v.original_found, f, "txn {}: reversal of {target}", s.txn);
                }
                if v.original_found {
                    let o = self
                        .book
                        .get_mut(&target)
                        .expect("a reversal that found the original: original settled first");
                    assert!(!o.reversed, "txn {target} reversed twice");
                    assert_eq!(v.original_seq, o.seq, "reversal names another record");
                    assert_eq!(v.value_minor, o.value, "txn {}: reversal value", s.txn);
                    o.reversed = true;
                    let (okind, ocard, ovalue, opurchase) = (o.kind, o.card, o.value, o.purchase);
                    let delta = match okind {
                        OwnKind::Purchase => ovalue,
                        OwnKind::TopUp | OwnKind::Refund => -ovalue,
                    };
                    if okind == OwnKind::Refund {
                        self.book
                            .get_mut(&opurchase)
                            .expect("refund's purchase")
                            .refunded -= ovalue;
                    }
                    let card = card_of(&view, ocard);
                    (RecordKind::Reversal, Some(card), delta)
                } else {
                    assert!(view.is_none(), "a tombstone shows a card");
                    assert!(
                        !self.book.contains_key(&target),
                        "tombstone for an applied txn"
                    );
                    self.tombstones.push(target);
                    self.tombstones_unsent.push(target);
                    (RecordKind::Reversal, None, 0)
                }
            }
            (planned, detail) => panic!("txn {}: {planned:?} answered with {detail:?}", s.txn),
        };
        self.applied.push(Applied {
            terminal_id: self.terminal_id,
            txn: s.txn,
            seq: r.seq,
            hash: r.hash.clone(),
            request: s.request.clone(),
            signature: s.signature.clone(),
            kind,
            card,
            delta,
            view,
            cycle: self.cycle,
        });
    }

    fn own(&mut self, txn: u64, kind: OwnKind, seq: u64, card: usize, value: i64, purchase: u64) {
        let prev = self.book.insert(
            txn,
            Own {
                kind,
                seq,
                card,
                value,
                purchase,
                refunded: 0,
                reversed: false,
            },
        );
        assert!(prev.is_none(), "txn {txn} applied twice");
        self.recent.push(txn);
    }

    async fn status(
        &self,
        c: &mut Client,
        txn: u64,
        killed: &AtomicBool,
    ) -> Result<pb::StatusResult, Lost> {
        let req = pb::Request {
            txn_id: 0,
            brand_id: self.brand,
            operator: self.operator.clone(),
            client_time_ms: now_ms(),
            want_proof: false,
            op: Some(Op::TxnStatus(pb::TxnStatus { txn_id: txn })),
        };
        let bytes = req.encode_to_vec();
        let sig = sign_request(&self.key, &bytes);
        match roundtrip(c, bytes, sig, killed).await? {
            Ok(pb::Reply {
                detail: Some(Detail::Status(s)),
                ..
            }) => Ok(*s),
            other => panic!("TxnStatus {txn}: {other:?}"),
        }
    }

    /// TxnStatus, then the identical signed bytes again; checks that the
    /// answer agrees with the status (a committed txn is replayed, never
    /// re-applied). `strict`: nothing of ours is still inside the daemon
    /// (after a restart), so an unknown txn must be applied fresh.
    async fn retry(
        &mut self,
        c: &mut Client,
        s: &Sent,
        strict: bool,
        killed: &AtomicBool,
    ) -> Result<Result<pb::Reply, ErrorCode>, Lost> {
        let st = self.status(c, s.txn, killed).await?;
        let ans = roundtrip(c, s.request.clone(), s.signature.clone(), killed).await?;
        let state = st.state();
        match state {
            TxnState::Committed | TxnState::Reversed => {
                let r = ans.as_ref().unwrap_or_else(|code| {
                    panic!(
                        "txn {} is {state:?}, yet its retry was refused: {code:?}",
                        s.txn
                    )
                });
                assert!(
                    r.replayed,
                    "txn {} is {state:?}, yet its retry was applied again",
                    s.txn
                );
                let original = st
                    .original
                    .as_ref()
                    .expect("status holds the original answer");
                assert_eq!(
                    receipt(r).seq,
                    st.seq,
                    "txn {}: replay names another record",
                    s.txn
                );
                assert_eq!(
                    receipt(r).hash,
                    receipt(original).hash,
                    "txn {}: replay hash",
                    s.txn
                );
                self.stats.found_committed += 1;
            }
            TxnState::Tombstoned => {
                assert_eq!(
                    ans.as_ref().err(),
                    Some(&ErrorCode::TxnReversed),
                    "txn {} is tombstoned, yet its retry answered {ans:?}",
                    s.txn
                );
                self.stats.refused_on_retry += 1;
            }
            TxnState::Unknown => match &ans {
                Ok(r) => {
                    if strict {
                        assert!(
                            !r.replayed,
                            "txn {} was unknown after the restart, yet its retry claims a replay",
                            s.txn
                        );
                    }
                    // Again: now it must be a replay of the same record.
                    let again = roundtrip(c, s.request.clone(), s.signature.clone(), killed)
                        .await?
                        .unwrap_or_else(|code| panic!("txn {}: second retry {code:?}", s.txn));
                    assert!(again.replayed, "txn {}: second retry applied again", s.txn);
                    assert_eq!(receipt(&again).seq, receipt(r).seq);
                    assert_eq!(receipt(&again).hash, receipt(r).hash);
                    if r.replayed {
                        // The dropped connection's copy landed in between.
                        self.stats.found_committed += 1;
                    } else {
                        self.stats.applied_by_retry += 1;
                    }
                }
                Err(_) => self.stats.refused_on_retry += 1,
            },
            TxnState::Unspecified => panic!("txn {}: status unspecified", s.txn),
            // Retries here are of the newest few ids, far inside the window.
            TxnState::Expired => panic!("txn {}: status expired", s.txn),
        }
        Ok(ans)
    }

    /// Settles every request whose answer never came, as a till does after
    /// reconnecting.
    async fn resolve_pending(
        &mut self,
        c: &mut Client,
        strict: bool,
        rng: &mut StdRng,
        killed: &AtomicBool,
    ) -> Result<(), Lost> {
        while !self.pending.is_empty() {
            let p = self.pending[0].clone();
            let reversal = match p.reversal {
                Some(r) => Some(r),
                None => match p.sent.planned {
                    Planned::Purchase { card, .. } | Planned::TopUp { card, .. }
                        if rng.gen_bool(P_REVERSE_UNKNOWN) =>
                    {
                        let insufficient_ok =
                            card == BONUS_CARD && matches!(p.sent.planned, Planned::TopUp { .. });
                        let expect = Expect {
                            ok: true,
                            refusal: insufficient_ok.then_some(ErrorCode::InsufficientFunds),
                        };
                        let txn = self.fresh_txn();
                        let target = p.sent.txn;
                        let r = self.make(
                            txn,
                            Planned::Reversal {
                                target,
                                found: None,
                            },
                            expect,
                        );
                        // Kept before it is sent: if the daemon dies now,
                        // this reversal is what gets settled next time.
                        self.pending[0].reversal = Some(r.clone());
                        Some(r)
                    }
                    _ => None,
                },
            };
            match reversal {
                None => match self.retry(c, &p.sent, strict, killed).await? {
                    Ok(reply) => self.settle(&p.sent, &reply),
                    Err(code) => self.check_refusal(&p.sent, code),
                },
                Some(r) => {
                    let ans = self.retry(c, &r, strict, killed).await?;
                    let st = self.status(c, p.sent.txn, killed).await?;
                    match (st.state(), &ans) {
                        (TxnState::Reversed, Ok(reply)) => {
                            let original = st.original.as_ref().expect("original answer");
                            self.settle(&p.sent, original);
                            self.settle(&r, reply);
                            self.stats.reversed_unknown += 1;
                        }
                        (TxnState::Tombstoned, Ok(reply)) => {
                            self.settle(&r, reply);
                            self.stats.tombstoned_unknown += 1;
                        }
                        (TxnState::Committed, Err(code)) => {
                            self.check_refusal(&r, *code);
                            let original = st.original.as_ref().expect("original answer");
                            self.settle(&p.sent, original);
                        }
                        (state, ans) => panic!(
                            "txn {} reversed by txn {}: original is {state:?}, reversal answered {ans:?}",
                            p.sent.txn, r.txn
                        ),
                    }
                }
            }
            if strict {
                self.stats.resolved_after_crash += 1;
            } else {
                self.stats.resolved_in_cycle += 1;
            }
            self.unlock(&p.sent);
            self.pending.remove(0);
        }
        Ok(())
    }

    /// Pipelines operations on `c` until a drop, the daemon's death or the
    /// cycle's quota. Now and then a till that waited too long sends the
    /// identical bytes again on the same connection, the first copy still
    /// in flight: at most one copy may be applied, the other is a replay.
    async fn storm(
        &mut self,
        c: &mut Client,
        rng: &mut StdRng,
        acks: &AtomicUsize,
        killed: &AtomicBool,
    ) -> Flow {
        // Request id -> request; a duplicate is a second entry of one txn.
        let mut in_flight: BTreeMap<u64, Sent> = BTreeMap::new();
        // Txn -> copies still in flight, and whether it was sent twice.
        let mut copies: HashMap<u64, (usize, bool)> = HashMap::new();
        // Txn -> (seq, hash, fresh answer seen) of what this storm applied.
        let mut answered: HashMap<u64, (u64, Vec<u8>, bool)> = HashMap::new();
        let mut next_request_id = 1u64 << 40;
        let mut tick = tokio::time::interval(PACE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flow = loop {
            let can_send = self.sent_this_cycle < MAX_OPS_PER_CYCLE && in_flight.len() < WINDOW;
            if !can_send && in_flight.is_empty() {
                break Flow::Done;
            }
            tokio::select! {
                _ = tick.tick(), if can_send => {
                    let s = if !in_flight.is_empty() && rng.gen_bool(P_DUPLICATE) {
                        let n = rng.gen_range(0..in_flight.len());
                        let s = in_flight.values().nth(n).expect("in flight").clone();
                        copies.get_mut(&s.txn).expect("copies").1 = true;
                        self.stats.duplicates += 1;
                        s
                    } else {
                        let s = self.plan(rng);
                        self.stats.sent += 1;
                        self.sent_this_cycle += 1;
                        s
                    };
                    copies.entry(s.txn).or_insert((0, false)).0 += 1;
                    next_request_id += 1;
                    let msg = ClientMessage {
                        request_id: next_request_id,
                        body: Some(Body::Signed(pb::SignedRequest {
                            request: s.request.clone(),
                            signature: s.signature.clone(),
                        })),
                    };
                    // Recorded before the write: a request half-written when
                    // the daemon dies still has a fate to settle.
                    in_flight.insert(next_request_id, s);
                    if c.framed().send(Bytes::from(msg.encode_to_vec())).await.is_err() {
                        assert!(killed.load(Ordering::SeqCst), "send failed with a live daemon");
                        break Flow::Lost;
                    }
                    if rng.gen_bool(P_DROP) {
                        self.stats.drops += 1;
                        break Flow::Dropped;
                    }
                }
                frame = tokio::time::timeout(ANSWER_TIMEOUT, c.framed().next()) => {
                    let frame = match frame {
                        Ok(Some(Ok(frame))) => frame,
                        Ok(_) if killed.load(Ordering::SeqCst) => break Flow::Lost,
                        Ok(other) => panic!("worker {}: connection lost with a live daemon: {other:?}", self.id),
                        Err(_) if killed.load(Ordering::SeqCst) => break Flow::Lost,
                        Err(_) => panic!(
                            "worker {}: no answer in {ANSWER_TIMEOUT:?} with {} requests in flight",
                            self.id,
                            in_flight.len()
                        ),
                    };
                    let msg = ServerMessage::decode(frame).expect("server frames decode");
                    let s = in_flight
                        .remove(&msg.request_id)
                        .unwrap_or_else(|| panic!("answer to unknown request {}: {msg:?}", msg.request_id));
                    let (left, duplicated) = {
                        let e = copies.get_mut(&s.txn).expect("copies");
                        e.0 -= 1;
                        *e
                    };
                    match msg.body {
                        Some(server_message::Body::Reply(r)) => {
                            if let Some((seq, hash, fresh)) = answered.get_mut(&s.txn) {
                                assert_eq!(receipt(&r).seq, *seq, "txn {}: copies answered with two records", s.txn);
                                assert_eq!(&receipt(&r).hash, hash, "txn {}: copies answered with two hashes", s.txn);
                                if !r.replayed {
                                    assert!(!*fresh, "txn {}: both copies applied", s.txn);
                                    *fresh = true;
                                }
                                self.stats.replays_checked += 1;
                            } else {
                                assert!(
                                    !r.replayed || duplicated,
                                    "txn {}: a fresh request answered as a replay",
                                    s.txn
                                );
                                self.settle(&s, &r);
                                answered.insert(s.txn, (receipt(&r).seq, receipt(&r).hash.clone(), !r.replayed));
                                self.stats.acked += 1;
                                acks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(server_message::Body::Error(e)) => {
                            assert!(
                                !answered.contains_key(&s.txn),
                                "txn {}: a copy of an applied request was refused: {e:?}",
                                s.txn
                            );
                            self.check_refusal(&s, e.code());
                            self.stats.refused_as_expected += 1;
                        }
                        other => panic!("txn {}: unexpected answer {other:?}", s.txn),
                    }
                    if left == 0 {
                        copies.remove(&s.txn);
                        self.unlock(&s);
                    }
                }
            }
        };
        // Whatever is still in flight has an unknown outcome, unless another
        // copy of it was answered with a result (the rest can only replay).
        let mut seen = HashSet::new();
        for (_, s) in in_flight {
            if !seen.insert(s.txn) {
                continue;
            }
            if answered.contains_key(&s.txn) {
                self.unlock(&s);
            } else {
                self.pending.push(Pending {
                    sent: s,
                    reversal: None,
                });
            }
        }
        flow
    }

    /// One storm: connect, settle what is unknown, pipeline, and again after
    /// every drop, until the quota is done or the daemon dies.
    async fn run_cycle(
        mut self,
        addr: SocketAddr,
        seed: u64,
        acks: Arc<AtomicUsize>,
        killed: Arc<AtomicBool>,
    ) -> Worker {
        let mut rng = StdRng::seed_from_u64(seed);
        self.sent_this_cycle = 0;
        loop {
            let mut c =
                match tokio::time::timeout(ANSWER_TIMEOUT, Client::connect(addr, self.key.clone()))
                    .await
                {
                    Ok(Ok(c)) => c,
                    _ if killed.load(Ordering::SeqCst) => return self,
                    Ok(Err(e)) => {
                        panic!("worker {}: sign-on failed with a live daemon: {e}", self.id)
                    }
                    Err(_) => panic!("worker {}: sign-on timed out with a live daemon", self.id),
                };
            if self
                .resolve_pending(&mut c, false, &mut rng, &killed)
                .await
                .is_err()
            {
                return self;
            }
            match self.storm(&mut c, &mut rng, &acks, &killed).await {
                Flow::Dropped => continue,
                Flow::Lost | Flow::Done => return self,
            }
        }
    }

    /// A single operation between storms that must succeed.
    async fn direct(&mut self, c: &mut Client, planned: Planned, killed: &AtomicBool) {
        let txn = self.fresh_txn();
        let s = self.make(txn, planned, OK);
        let reply = roundtrip(c, s.request.clone(), s.signature.clone(), killed)
            .await
            .expect("daemon alive")
            .unwrap_or_else(|code| panic!("{planned:?} refused: {code:?}"));
        assert!(!reply.replayed);
        self.settle(&s, &reply);
        // Loads and drains are the test's own bookkeeping, not targets for
        // the storm's refunds and reversals (taking back a 20,000,000 load
        // would depend on what other tills spent meanwhile).
        self.recent.retain(|t| *t != txn);
    }
}

/// A card as the daemon (or the auditor) shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CardState {
    paid: i64,
    bonus: i64,
    points: i64,
}

impl CardState {
    fn balance(&self) -> i64 {
        self.paid + self.bonus
    }
}

async fn live_cards(c: &mut Client, cards: &[String]) -> Vec<CardState> {
    let mut out = Vec::new();
    for card in cards {
        let v = bounded(inquiry(c, card)).await;
        assert_eq!(
            v.balance_minor,
            v.paid_balance_minor + v.bonus_balance_minor
        );
        out.push(CardState {
            paid: v.paid_balance_minor,
            bonus: v.bonus_balance_minor,
            points: v.points,
        });
    }
    out
}

/// Everything the checks need.
struct World {
    brand: u32,
    data: std::path::PathBuf,
    owner_key: SigningKey,
    cards: Arc<Vec<String>>,
    /// Cards as they were before the test's first money operation.
    baseline: Vec<CardState>,
    /// The ledger's size then: every later record is one of ours.
    baseline_seq: u64,
    workers: Vec<Worker>,
    /// Records in the newest verified export.
    records: u64,
}

impl World {
    fn applied(&self) -> impl Iterator<Item = &Applied> {
        self.workers.iter().flat_map(|w| w.applied.iter())
    }

    /// The model's balance of every card: baseline plus every reply's delta,
    /// checking that each reply's balance after is the one before plus its
    /// own delta (no operation the model does not know touched the card).
    fn model_cards(&self) -> Vec<(i64, Option<pb::CardView>)> {
        let mut per_card: Vec<Vec<&Applied>> = vec![Vec::new(); self.cards.len()];
        for a in self.applied() {
            if let Some(card) = a.card {
                per_card[card].push(a);
            }
        }
        per_card
            .into_iter()
            .enumerate()
            .map(|(i, mut ops)| {
                ops.sort_by_key(|a| a.seq);
                let mut balance = self.baseline[i].balance();
                let mut last = None;
                for a in ops {
                    balance += a.delta;
                    let v = a.view.as_ref().expect("card view");
                    assert_eq!(
                        v.balance_minor, balance,
                        "card {i}: record {} (txn {} of terminal {}) shows {} after, the model {}",
                        a.seq, a.txn, a.terminal_id, v.balance_minor, balance
                    );
                    last = Some(v.clone());
                }
                (balance, last)
            })
            .collect()
    }
}

fn parse_export(bytes: &[u8]) -> Vec<(pb::Record, [u8; 32], Vec<u8>)> {
    let mut reader = ExportReader::new(bytes).expect("export magic");
    let mut out = Vec::new();
    while let Some(item) = reader.next_item().expect("export item") {
        if let Item::Record(b) = item {
            let rec = pb::Record::decode(b.as_slice()).expect("record decodes");
            assert_eq!(rec.seq, out.len() as u64 + 1, "records in order");
            out.push((rec, leaf_hash(&b), b));
        }
    }
    out
}

/// Checks after a restart (and every worker's unknowns settled).
async fn check(world: &mut World, addr: SocketAddr, cycle: u64, totals: &mut Stats) {
    let killed = AtomicBool::new(false);
    let mut sign_on_last_txn: HashMap<u32, u64> = HashMap::new();
    // 1. TxnStatus of every operation acknowledged this cycle: committed
    //    (or reversed, if this test reversed it) with the receipt's seq and
    //    hash; a few are retried and must be replays; tombstones hold.
    for w in &mut world.workers {
        assert!(w.pending.is_empty(), "worker {}: unsettled requests", w.id);
        assert!(
            w.locked.is_empty(),
            "worker {}: locks left: {:?}",
            w.id,
            w.locked
        );
        let mut c = bounded(Client::connect(addr, w.key.clone()))
            .await
            .expect("sign-on");
        sign_on_last_txn.insert(w.terminal_id, c.session.last_txn_id);
        let this_cycle: Vec<Applied> = w
            .applied
            .iter()
            .filter(|a| a.cycle == cycle)
            .cloned()
            .collect();
        for (n, a) in this_cycle.iter().enumerate() {
            let st = w.status(&mut c, a.txn, &killed).await.expect("live");
            let reversed = w.book.get(&a.txn).is_some_and(|o| o.reversed);
            let want = if reversed {
                TxnState::Reversed
            } else {
                TxnState::Committed
            };
            assert_eq!(
                st.state(),
                want,
                "cycle {cycle}: acknowledged txn {} of terminal {} lost or changed",
                a.txn,
                a.terminal_id
            );
            assert_eq!(st.seq, a.seq, "txn {}: moved to another record", a.txn);
            let original = st.original.as_ref().expect("original answer");
            assert_eq!(
                receipt(original).hash,
                a.hash,
                "txn {}: record hash changed",
                a.txn
            );
            if n % 23 == 0 {
                let again = roundtrip(&mut c, a.request.clone(), a.signature.clone(), &killed)
                    .await
                    .expect("live")
                    .unwrap_or_else(|code| panic!("retry of acknowledged txn {}: {code:?}", a.txn));
                assert!(
                    again.replayed,
                    "txn {}: retry of an acknowledged request applied again",
                    a.txn
                );
                assert_eq!(receipt(&again).seq, a.seq);
                assert_eq!(receipt(&again).hash, a.hash);
                w.stats.replays_checked += 1;
            }
        }
        for &t in w.tombstones.iter().rev().take(8) {
            let st = w.status(&mut c, t, &killed).await.expect("live");
            assert_eq!(st.state(), TxnState::Tombstoned, "txn {t}: tombstone lost");
        }
    }

    // 2. The auditor's export, verified and replayed.
    let mut owner = bounded(Client::connect(addr, world.owner_key.clone()))
        .await
        .expect("owner sign-on");
    let mut export = Vec::new();
    bounded(owner.export(&mut export)).await.expect("export");
    let opts = VerifyOptions {
        server_key: owner.server_key,
        old_checkpoint: None,
    };
    let report: VerifyReport = verify_export(export.as_slice(), &opts, |_| {})
        .unwrap_or_else(|e| panic!("cycle {cycle}: the export does not verify: {e}"));
    let records = parse_export(&export);
    assert_eq!(report.records, records.len() as u64);
    assert!(report.records >= world.records, "the ledger shrank");
    world.records = report.records;

    // 3. The ledger holds exactly the model's records, each once.
    let mut seen = HashSet::new();
    for (r, _, _) in &records {
        if r.signer() == pb::Signer::Terminal {
            assert!(
                seen.insert((r.terminal_id, r.txn_id)),
                "cycle {cycle}: terminal {} txn {} is in the ledger twice",
                r.terminal_id,
                r.txn_id
            );
        }
    }
    let mut by_seq: HashMap<u64, &Applied> = HashMap::new();
    for a in world.applied() {
        assert!(
            by_seq.insert(a.seq, a).is_none(),
            "two replies name record {}",
            a.seq
        );
    }
    for (r, hash, _) in &records[world.baseline_seq as usize..] {
        let a = by_seq.remove(&r.seq).unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: record {} ({:?}, terminal {} txn {}) was never acknowledged nor settled",
                r.seq,
                r.kind(),
                r.terminal_id,
                r.txn_id
            )
        });
        assert_eq!(r.kind(), a.kind, "record {}: kind", r.seq);
        assert_eq!(r.terminal_id, a.terminal_id, "record {}: terminal", r.seq);
        assert_eq!(r.txn_id, a.txn, "record {}: txn", r.seq);
        assert_eq!(
            hash.as_slice(),
            a.hash.as_slice(),
            "record {}: receipt hash",
            r.seq
        );
        assert_eq!(r.request, a.request, "record {}: signed bytes", r.seq);
        let delta = r.paid_in_minor + r.bonus_in_minor - r.paid_out_minor - r.bonus_out_minor;
        assert_eq!(delta, a.delta, "record {}: value moved", r.seq);
    }
    assert!(
        by_seq.is_empty(),
        "cycle {cycle}: acknowledged records missing from the ledger: {:?}",
        by_seq.keys().collect::<Vec<_>>()
    );

    // The sign-on tells each till the highest txn id the ledger holds from
    // it (so that a till that crashed knows where it stands).
    let mut max_txn: HashMap<u32, u64> = HashMap::new();
    for (r, _, _) in &records {
        if r.signer() == pb::Signer::Terminal {
            let m = max_txn.entry(r.terminal_id).or_default();
            *m = (*m).max(r.txn_id);
        }
    }
    for (tid, last) in &sign_on_last_txn {
        assert_eq!(
            Some(last),
            max_txn.get(tid),
            "cycle {cycle}: terminal {tid}: sign-on last_txn_id differs from the ledger"
        );
    }

    // 4. Money: flows from the records, the auditor's totals, the cards.
    let (mut loads, mut spends, mut refunds, mut reversals) = (0i128, 0i128, 0i128, 0i128);
    for (r, _, _) in &records {
        let (pi, bi, po, bo) = (
            i128::from(r.paid_in_minor),
            i128::from(r.bonus_in_minor),
            i128::from(r.paid_out_minor),
            i128::from(r.bonus_out_minor),
        );
        match r.kind() {
            RecordKind::TopUp => loads += pi + bi,
            RecordKind::Purchase => spends += po + bo,
            RecordKind::Refund => refunds += pi + bi,
            RecordKind::Reversal => reversals += pi + bi - po - bo,
            _ => assert_eq!(pi + bi + po + bo, 0, "record {}: money moved", r.seq),
        }
    }
    let t = &report.totals;
    assert_eq!(loads, t.loaded_paid_minor + t.bonus_granted_minor);
    assert_eq!(spends, t.spent_minor);
    assert_eq!(refunds, t.refunded_minor);
    assert_eq!(reversals, t.reversed_net_minor);
    let outstanding = t.outstanding_paid_minor + t.outstanding_bonus_minor;
    assert_eq!(
        loads - spends + refunds + reversals,
        outstanding,
        "cycle {cycle}: money not conserved"
    );

    let live = live_cards(&mut owner, &world.cards).await;
    let model = world.model_cards();
    let report_cards: HashMap<&str, &cardd::audit::CardSummary> =
        report.cards.iter().map(|c| (c.card.as_str(), c)).collect();
    let mut live_sum = 0i128;
    for (i, card) in world.cards.iter().enumerate() {
        let l = live[i];
        let (balance, view) = &model[i];
        assert_eq!(
            l.balance(),
            *balance,
            "cycle {cycle}: card {i} holds {}, the model {balance}",
            l.balance()
        );
        if let Some(v) = view {
            assert_eq!(
                (l.paid, l.bonus, l.points),
                (v.paid_balance_minor, v.bonus_balance_minor, v.points),
                "cycle {cycle}: card {i} differs from its newest receipt"
            );
        }
        let r = report_cards[card.as_str()];
        assert_eq!(
            (r.paid_minor, r.bonus_minor, r.points),
            (l.paid, l.bonus, l.points),
            "cycle {cycle}: card {i}: the auditor's replay differs from the daemon"
        );
        live_sum += i128::from(l.balance());
    }
    // Every card of the brand is one of ours, so their sum is the liability.
    assert_eq!(report.cards.len(), world.cards.len());
    assert_eq!(
        live_sum, outstanding,
        "cycle {cycle}: cards do not sum to the liability"
    );

    for w in &world.workers {
        totals.add(&w.stats);
    }
}

/// Keeps every card funded and spends the bonus card's paid value to zero,
/// so that the next storm never runs a card dry and moves bonus value too.
async fn between_storms(world: &mut World, addr: SocketAddr) {
    let killed = AtomicBool::new(false);
    let w = &mut world.workers[0];
    let mut c = bounded(Client::connect(addr, w.key.clone()))
        .await
        .expect("sign-on");
    let cards = world.cards.clone();
    let live = live_cards(&mut c, &cards).await;
    for (i, l) in live.iter().enumerate() {
        // Purchases spend paid value first: normal cards must keep paid
        // value (so that reversing a top-up never meets spent value), the
        // bonus card bonus value.
        let low = if i == BONUS_CARD {
            l.bonus < LOW_BALANCE
        } else {
            l.paid < LOW_BALANCE
        };
        if low {
            w.direct(
                &mut c,
                Planned::TopUp {
                    card: i,
                    amount: REFILL,
                },
                &killed,
            )
            .await;
        }
    }
    let paid = bounded(inquiry(&mut c, &cards[BONUS_CARD]))
        .await
        .paid_balance_minor;
    if paid > 0 {
        w.direct(
            &mut c,
            Planned::Purchase {
                card: BONUS_CARD,
                amount: paid,
            },
            &killed,
        )
        .await;
    }
}

fn run_cli(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(cardd_bin())
        .args(args)
        .output()
        .expect("run cardd");
    assert!(
        out.status.success(),
        "cardd {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The end: the daemon stopped, the auditor's CLI exports the ledger from
/// the data directory and verifies it; its report must match the model.
fn final_offline_audit(world: &World, dir: &Path) -> serde_json::Value {
    let data = world.data.as_os_str();
    let out = dir.join("final.export");
    let brand = world.brand.to_string();
    run_cli(&[
        "audit".as_ref(),
        "export".as_ref(),
        "--data".as_ref(),
        data,
        "--brand".as_ref(),
        brand.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    let key = run_cli(&["server-key".as_ref(), "--data".as_ref(), data]);
    let json = run_cli(&[
        "audit".as_ref(),
        "verify".as_ref(),
        out.as_os_str(),
        "--server-key".as_ref(),
        key.trim().as_ref(),
        "--json".as_ref(),
    ]);
    run_cli(&["check".as_ref(), "--data".as_ref(), data]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("verify --json output");
    assert_eq!(
        v["records"].as_u64(),
        Some(world.records),
        "records after the last restart"
    );
    let model = world.model_cards();
    let cards = v["cards"].as_array().expect("cards");
    assert_eq!(cards.len(), world.cards.len());
    let mut sum = 0i64;
    for (i, number) in world.cards.iter().enumerate() {
        let c = cards
            .iter()
            .find(|c| c["card"].as_str() == Some(number.as_str()))
            .unwrap_or_else(|| panic!("card {i} missing from the audit report"));
        let paid = c["paid_minor"].as_i64().expect("paid");
        let bonus = c["bonus_minor"].as_i64().expect("bonus");
        assert_eq!(paid + bonus, model[i].0, "card {i}: audit report vs model");
        if let Some(view) = &model[i].1 {
            assert_eq!(
                (paid, bonus, c["points"].as_i64().expect("points")),
                (
                    view.paid_balance_minor,
                    view.bonus_balance_minor,
                    view.points
                ),
                "card {i}: audit report vs its newest receipt"
            );
        }
        sum += paid + bonus;
    }
    let t = &v["totals"];
    let n = |k: &str| t[k].as_i64().unwrap_or_else(|| panic!("totals.{k}"));
    assert_eq!(
        n("loaded_paid_minor") + n("bonus_granted_minor") - n("spent_minor")
            + n("refunded_minor")
            + n("reversed_net_minor"),
        sum,
        "final: money not conserved"
    );
    assert_eq!(
        n("outstanding_paid_minor") + n("outstanding_bonus_minor"),
        sum
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_soak() {
    let started = Instant::now();
    let seed = seed();
    let cycles = cycles();
    println!(
        "soak: {cycles} cycles, seed = {seed} (CARDD_SOAK_SEED={seed} reproduces the choices)"
    );
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, demo) = Daemon::demo(dir.path());
    let brand = demo.manifest.brand_id;
    let owner_key = read_key_file(&demo.owner_key_path()).expect("owner key");

    // Two more tills (one per store) and more cards, by the owner.
    let mut keys: Vec<SigningKey> = vec![
        read_key_file(&demo.terminal_key_path(0)).expect("key"),
        read_key_file(&demo.terminal_key_path(1)).expect("key"),
    ];
    let mut cards = demo.manifest.cards.clone();
    let baseline_seq;
    {
        let mut owner = bounded(demo.owner(daemon.addr)).await;
        let mut txn = owner.session.last_txn_id;
        let mut last_seq = 0;
        for store_index in 0..KEYS - 2 {
            let key = generate_key();
            txn += 1;
            let op = Op::EnrollTerminal(pb::EnrollTerminal {
                store_id: demo.manifest.stores[store_index].store_id,
                public_key: key.verifying_key().to_bytes().to_vec(),
                label: format!("soak till {store_index}"),
            });
            let r = call(&mut owner, txn, op).await.expect("enrol a terminal");
            last_seq = receipt(&r).seq;
            keys.push(key);
        }
        for _ in 0..EXTRA_CARDS {
            let card = cardd::card_number::generate(brand);
            txn += 1;
            let op = Op::IssueCard(pb::IssueCard { card: card.clone() });
            let r = call(&mut owner, txn, op).await.expect("issue a card");
            last_seq = receipt(&r).seq;
            cards.push(card);
        }
        baseline_seq = last_seq;
    }
    let cards = Arc::new(cards);
    let mut terminal_ids = Vec::new();
    for key in &keys {
        let c = bounded(Client::connect(daemon.addr, key.clone()))
            .await
            .expect("sign-on");
        terminal_ids.push(c.session.terminal_id);
    }
    let distinct: HashSet<u32> = terminal_ids.iter().copied().collect();
    assert_eq!(distinct.len(), keys.len(), "each key is its own terminal");

    let baseline = {
        let mut owner = bounded(demo.owner(daemon.addr)).await;
        live_cards(&mut owner, &cards).await
    };
    let workers = (0..CONNECTIONS)
        .map(|w| {
            let k = w % KEYS;
            Worker {
                id: w,
                terminal_id: terminal_ids[k],
                key: keys[k].clone(),
                brand,
                cards: cards.clone(),
                operator: format!("soak-{w}"),
                // Disjoint txn ranges: two connections of one key never share an id.
                txn_base: (w as u64 + 1) << 40,
                next_txn: 0,
                cycle: 0,
                book: HashMap::new(),
                recent: Vec::new(),
                tombstones_unsent: Vec::new(),
                tombstones: Vec::new(),
                pending: Vec::new(),
                locked: HashSet::new(),
                applied: Vec::new(),
                stats: Stats::default(),
                sent_this_cycle: 0,
            }
        })
        .collect();
    let mut world = World {
        brand,
        data: demo.data.clone(),
        owner_key,
        cards: cards.clone(),
        baseline,
        baseline_seq,
        workers,
        records: 0,
    };
    // First loads, through the model like everything else.
    {
        let killed = AtomicBool::new(false);
        let w = &mut world.workers[0];
        let mut c = bounded(Client::connect(daemon.addr, w.key.clone()))
            .await
            .expect("sign-on");
        for card in 0..cards.len() {
            w.direct(
                &mut c,
                Planned::TopUp {
                    card,
                    amount: SETUP_LOAD,
                },
                &killed,
            )
            .await;
        }
    }

    let mut unknown_at_kills = 0u64;
    let mut summary = Stats::default();
    for cycle in 1..=cycles {
        for w in &mut world.workers {
            w.cycle = cycle;
            w.stats = Stats::default();
        }
        between_storms(&mut world, daemon.addr).await;
        let killed = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in std::mem::take(&mut world.workers) {
            let run = w.run_cycle(daemon.addr, rng.gen(), acks.clone(), killed.clone());
            tasks.push(tokio::spawn(run));
        }
        // The kill delay runs from the first answer, so that every cycle has
        // acknowledged operations, however slow the machine.
        bounded(async {
            while acks.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let delay = Duration::from_millis(rng.gen_range(KILL_DELAY_MS));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        daemon.kill9();
        for t in tasks {
            world.workers.push(
                bounded(t)
                    .await
                    .expect("a worker failed (see its panic above)"),
            );
        }
        let unknown: usize = world.workers.iter().map(|w| w.pending.len()).sum();
        unknown_at_kills += unknown as u64;

        // Restart on the same data; every till settles what it never heard.
        let restart = Instant::now();
        daemon = Daemon::start(&world.data, &[]);
        let restart = restart.elapsed();
        let never = AtomicBool::new(false);
        for w in &mut world.workers {
            if w.pending.is_empty() {
                continue;
            }
            let mut c = bounded(Client::connect(daemon.addr, w.key.clone()))
                .await
                .expect("sign-on after restart");
            let mut r = StdRng::seed_from_u64(rng.gen());
            w.resolve_pending(&mut c, true, &mut r, &never)
                .await
                .expect("daemon alive");
        }
        let mut cycle_stats = Stats::default();
        let checking = Instant::now();
        check(&mut world, daemon.addr, cycle, &mut cycle_stats).await;
        let checking = checking.elapsed();
        println!(
            "cycle {cycle}: killed {delay:?} after the first answer; sent {}, acknowledged {}, \
             refused as predicted {}, duplicates {}, drops {}, unknown at the kill {unknown}; \
             settled {} in cycle + {} after restart (found committed {}, applied by retry {}, \
             refused again {}, reversed {}, tombstoned {}); restart {restart:.1?}, \
             {} records checked and verified in {checking:.1?}; at {:.1?}",
            cycle_stats.sent,
            cycle_stats.acked,
            cycle_stats.refused_as_expected,
            cycle_stats.duplicates,
            cycle_stats.drops,
            cycle_stats.resolved_in_cycle,
            cycle_stats.resolved_after_crash,
            cycle_stats.found_committed,
            cycle_stats.applied_by_retry,
            cycle_stats.refused_on_retry,
            cycle_stats.reversed_unknown,
            cycle_stats.tombstoned_unknown,
            world.records,
            started.elapsed()
        );
        summary.add(&cycle_stats);
    }
    assert!(
        unknown_at_kills > 0,
        "no request was ever in flight at a kill ({} sent)",
        summary.sent
    );

    // The end: stop the daemon the hard way once more and audit offline.
    daemon.kill9();
    final_offline_audit(&world, dir.path());
    let elapsed = started.elapsed();
    println!(
        "SOAK SUMMARY cycles={cycles} seed={seed} operations={} acknowledged={} \
         refused_as_predicted={} duplicates={} dropped_connections={} resolved_in_cycle={} \
         unknown_at_kill={unknown_at_kills} resolved_after_crash={} found_committed={} \
         applied_by_retry={} refused_on_retry={} reversed_unknown={} tombstoned_unknown={} \
         replays_checked={} records={} duration_s={:.1}",
        summary.sent,
        summary.acked,
        summary.refused_as_expected,
        summary.duplicates,
        summary.drops,
        summary.resolved_in_cycle,
        summary.resolved_after_crash,
        summary.found_committed,
        summary.applied_by_retry,
        summary.refused_on_retry,
        summary.reversed_unknown,
        summary.tombstoned_unknown,
        summary.replays_checked,
        world.records,
        elapsed.as_secs_f64()
    );
    if std::env::var("CARDD_SOAK_CYCLES").is_err() {
        assert!(
            elapsed < Duration::from_secs(60),
            "short soak took {elapsed:?}"
        );
    }
}
