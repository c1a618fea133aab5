//! Criterion benches of the pieces that must be far cheaper than a
//! signature check or an fsync: the state machine alone (no I/O), the frame
//! codec, Merkle append, and verify-and-replay of an in-memory export.
//!
//!     cargo bench --bench core
use std::sync::Arc;

use bytes::BytesMut;
use cardd::ledger::{BrandLedger, Submission};
use cardd::pb::{self, request::Op};
use cardd::state::{apply, BrandState, Context, Principal};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

const CARDS: usize = 1_000;

struct Setup {
    state: BrandState,
    terminal: SigningKey,
    cards: Vec<String>,
}

/// A brand with one store, one terminal and funded cards, built with apply.
fn setup() -> Setup {
    let server = SigningKey::from_bytes(&[1; 32]);
    let owner = SigningKey::from_bytes(&[2; 32]);
    let terminal = SigningKey::from_bytes(&[3; 32]);
    let mut state = BrandState::new(1);
    let mut txn = 0;
    let mut run = |state: &mut BrandState, key: &SigningKey, p: Principal, op: Op| {
        txn += 1;
        let req = pb::Request {
            txn_id: txn,
            brand_id: 1,
            op: Some(op),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let pk = key.verifying_key().to_bytes();
        let ctx = Context {
            time_ms: 1,
            principal: p,
            signer_key: &pk,
            request: &bytes,
            signature: &[0; 64],
        };
        apply(state, &ctx, &req).expect("setup op");
    };
    run(
        &mut state,
        &server,
        Principal::Server,
        Op::CreateBrand(pb::CreateBrand {
            name: "b".into(),
            currency: "CNY".into(),
            currency_exponent: 2,
            owner_public_key: owner.verifying_key().to_bytes().to_vec(),
        }),
    );
    run(
        &mut state,
        &owner,
        Principal::Owner,
        Op::CreateStore(pb::CreateStore { name: "s".into() }),
    );
    run(
        &mut state,
        &owner,
        Principal::Owner,
        Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: 1,
            public_key: terminal.verifying_key().to_bytes().to_vec(),
            label: String::new(),
        }),
    );
    let cards: Vec<String> = (0..CARDS)
        .map(|_| cardd::card_number::generate(1))
        .collect();
    for c in &cards {
        run(
            &mut state,
            &owner,
            Principal::Owner,
            Op::IssueCard(pb::IssueCard { card: c.clone() }),
        );
        run(
            &mut state,
            &terminal,
            Principal::Terminal(1),
            Op::TopUp(pb::TopUp {
                card: c.clone(),
                amount_minor: 900_000_000,
            }),
        );
    }
    Setup {
        state,
        terminal,
        cards,
    }
}

fn state_machine(c: &mut Criterion) {
    let s = setup();
    // Pre-encoded purchases: the bench measures apply, not encoding.
    const N: usize = 10_000;
    let requests: Vec<(pb::Request, Vec<u8>)> = (0..N)
        .map(|i| {
            let req = pb::Request {
                txn_id: 1_000_000 + i as u64,
                brand_id: 1,
                op: Some(Op::Purchase(pb::Purchase {
                    card: s.cards[i % CARDS].clone(),
                    amount_minor: 1_234,
                    allow_partial: false,
                })),
                ..Default::default()
            };
            let bytes = req.encode_to_vec();
            (req, bytes)
        })
        .collect();
    let pk = s.terminal.verifying_key().to_bytes();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("apply_10k_purchases", |b| {
        b.iter_batched_ref(
            || s.state.clone(),
            |state| {
                for (req, bytes) in &requests {
                    let ctx = Context {
                        time_ms: 2,
                        principal: Principal::Terminal(1),
                        signer_key: &pk,
                        request: bytes,
                        signature: &[0; 64],
                    };
                    apply(state, &ctx, req).expect("purchase");
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn frame_codec(c: &mut Criterion) {
    let msg = pb::ClientMessage {
        request_id: 7,
        body: Some(pb::client_message::Body::Signed(pb::SignedRequest {
            request: vec![5; 120],
            signature: vec![9; 64],
        })),
    }
    .encode_to_vec();
    let mut g = c.benchmark_group("frame_codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_decode_signed_request", |b| {
        let mut codec = cardd::codec::frame_codec(64 * 1024);
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            codec
                .encode(bytes::Bytes::from(msg.clone()), &mut buf)
                .expect("encode");
            let frame = codec.decode(&mut buf).expect("decode").expect("frame");
            pb::ClientMessage::decode(frame).expect("message")
        })
    });
    g.finish();
}

fn merkle_append(c: &mut Criterion) {
    let leaves: Vec<[u8; 32]> = (0u32..10_000)
        .map(|i| cardd::crypto::leaf_hash(&i.to_be_bytes()))
        .collect();
    let mut g = c.benchmark_group("merkle");
    g.throughput(Throughput::Elements(leaves.len() as u64));
    g.bench_function("append_10k_leaves_and_root", |b| {
        b.iter(|| {
            let mut f = cardd::merkle::Frontier::new();
            for l in &leaves {
                f.push(*l);
            }
            f.root()
        })
    });
    g.finish();
}

fn verify_replay(c: &mut Criterion) {
    // A real export of 2,000 signed records, verified from memory.
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, server_key, _) = cardd::server::load(dir.path()).expect("load");
    let owner = SigningKey::from_bytes(&[2; 32]);
    let terminal = SigningKey::from_bytes(&[3; 32]);
    let create = pb::CreateBrand {
        name: "b".into(),
        currency: "CNY".into(),
        currency_exponent: 2,
        owner_public_key: owner.verifying_key().to_bytes().to_vec(),
    };
    let mut ledger =
        BrandLedger::create(store.clone(), Arc::clone(&server_key), 1, create).expect("brand");
    let sign = |key: &SigningKey, p: Principal, txn: u64, op: Op| {
        Submission::signed(
            p,
            key,
            pb::Request {
                txn_id: txn,
                brand_id: 1,
                op: Some(op),
                ..Default::default()
            },
        )
    };
    let card = cardd::card_number::generate(1);
    let mut subs = vec![
        sign(
            &owner,
            Principal::Owner,
            1,
            Op::CreateStore(pb::CreateStore { name: "s".into() }),
        ),
        sign(
            &owner,
            Principal::Owner,
            2,
            Op::EnrollTerminal(pb::EnrollTerminal {
                store_id: 1,
                public_key: terminal.verifying_key().to_bytes().to_vec(),
                label: String::new(),
            }),
        ),
        sign(
            &owner,
            Principal::Owner,
            3,
            Op::IssueCard(pb::IssueCard { card: card.clone() }),
        ),
        sign(
            &terminal,
            Principal::Terminal(1),
            1,
            Op::TopUp(pb::TopUp {
                card: card.clone(),
                amount_minor: 900_000_000,
            }),
        ),
    ];
    for i in 0..2_000u64 {
        subs.push(sign(
            &terminal,
            Principal::Terminal(1),
            2 + i,
            Op::Purchase(pb::Purchase {
                card: card.clone(),
                amount_minor: 100,
                allow_partial: false,
            }),
        ));
    }
    for chunk in subs.chunks(500) {
        let batch = ledger.apply_batch(chunk);
        BrandLedger::commit(store.as_ref(), 1, &batch.written, &ledger.checkpoint())
            .expect("commit");
    }
    let mut export = Vec::new();
    let server_pub = server_key.verifying_key().to_bytes();
    cardd::audit::write_export(store.as_ref(), 1, &server_pub, &mut export, |_, _| {})
        .expect("export");
    let opts = cardd::audit::VerifyOptions {
        server_key: server_pub,
        old_checkpoint: None,
    };
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(ledger.state.seq));
    g.sample_size(10);
    g.bench_function("verify_and_replay_2k_records", |b| {
        b.iter(|| cardd::audit::verify_export(export.as_slice(), &opts, |_| {}).expect("verifies"))
    });
    g.finish();
}

criterion_group!(
    benches,
    state_machine,
    frame_codec,
    merkle_append,
    verify_replay
);
criterion_main!(benches);
