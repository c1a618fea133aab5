//! Criterion benches of the pieces that must be far cheaper than a
//! signature check or an fsync: the state machine alone (no I/O), the frame
//! codec, Merkle append, and verify-and-replay of an in-memory export; and
//! the signature check itself, alone and in batches (the floor of a
//! request's CPU: every request carries its till's signature).
//!
//!     cargo bench --bench core
//!     cargo bench --bench core -- signatures
use std::sync::Arc;

use bytes::BytesMut;
use cardd::ledger::BrandLedger;
use cardd::pb::{self, request::Op};
use cardd::state::{apply, BrandState, Context, Principal};
use cardd::testing;
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

/// A brand with one store, one terminal and funded cards, built with apply
/// (one txn id counter for every signer), under `rules` if given.
fn setup(rules: Option<pb::Rules>) -> Setup {
    let server = testing::key(1);
    let owner = testing::owner_key();
    let terminal = testing::terminal_key();
    let mut state = BrandState::new(testing::BRAND);
    let mut txn = 0;
    let mut run = |state: &mut BrandState, key: &SigningKey, p: Principal, op: Op| {
        txn += 1;
        let req = testing::request(txn, op);
        let bytes = req.encode_to_vec();
        let pk = key.verifying_key().to_bytes();
        let ctx = Context {
            time_ms: 1,
            principal: p,
            signer_key: &pk,
            request: &bytes,
            signature: &[0; 64],
            pin_verified: false,
        };
        apply(state, &ctx, &req).expect("setup op");
    };
    let brand = testing::create_brand("b", &owner.verifying_key().to_bytes());
    run(
        &mut state,
        &server,
        Principal::Server,
        Op::CreateBrand(brand),
    );
    let (store, enroll) = (
        testing::create_store("s"),
        testing::enroll_terminal(1, &terminal.verifying_key().to_bytes(), ""),
    );
    run(&mut state, &owner, Principal::Owner, store);
    run(&mut state, &owner, Principal::Owner, enroll);
    if let Some(rules) = rules {
        let set = Op::SetRules(pb::SetRules { rules: Some(rules) });
        run(&mut state, &owner, Principal::Owner, set);
    }
    let cards: Vec<String> = (0..CARDS)
        .map(|_| cardd::card_number::generate(testing::BRAND))
        .collect();
    for c in &cards {
        run(&mut state, &owner, Principal::Owner, testing::issue_card(c));
        let load = testing::top_up(c, 900_000_000);
        run(&mut state, &terminal, Principal::Terminal(1), load);
    }
    Setup {
        state,
        terminal,
        cards,
    }
}

/// Three campaigns (issue 17's budget: within 10% of none): two cover the
/// bench's purchases (store 1, all day), one is checked and does not (a
/// category the purchases do not name).
fn three_campaigns() -> pb::Rules {
    let campaign = |name: &str, multiplier_milli, category: &str| pb::Campaign {
        name: name.into(),
        multiplier_milli,
        starts_ms: 0,
        ends_ms: i64::MAX,
        stores: vec![pb::StoreRef { store_id: 1 }],
        category: category.into(),
    };
    pb::Rules {
        points_per_unit: 1,
        campaigns: vec![
            campaign("VIP 6x", 6_000, ""),
            campaign("top tier", 3_800, ""),
            campaign("bakery", 2_000, "bakery"),
        ],
        ..Default::default()
    }
}

fn state_machine(c: &mut Criterion) {
    let mut g = c.benchmark_group("state_machine");
    purchases(&mut g, "apply_10k_purchases", &setup(None));
    purchases(
        &mut g,
        "apply_10k_purchases_three_campaigns",
        &setup(Some(three_campaigns())),
    );
    g.finish();
}

/// Applies 10,000 purchases to a copy of `s`'s state.
fn purchases(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    s: &Setup,
) {
    // Pre-encoded purchases: the bench measures apply, not encoding.
    const N: usize = 10_000;
    let requests: Vec<(pb::Request, Vec<u8>)> = (0..N)
        .map(|i| {
            let op = testing::purchase(&s.cards[i % CARDS], 1_234, false);
            let req = testing::request(1_000_000 + i as u64, op);
            let bytes = req.encode_to_vec();
            (req, bytes)
        })
        .collect();
    let pk = s.terminal.verifying_key().to_bytes();
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function(name, |b| {
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
                        pin_verified: false,
                    };
                    apply(state, &ctx, req).expect("purchase");
                }
            },
            BatchSize::LargeInput,
        )
    });
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
    let owner = testing::owner_key();
    let terminal = testing::terminal_key();
    let create = testing::create_brand("b", &owner.verifying_key().to_bytes());
    let mut ledger = BrandLedger::create(
        store.clone(),
        Arc::clone(&server_key),
        testing::BRAND,
        create,
    )
    .expect("brand");
    let card = cardd::card_number::generate(testing::BRAND);
    let mut subs = testing::owner_setup(
        &owner,
        "s",
        std::slice::from_ref(&terminal),
        std::slice::from_ref(&card),
    );
    let load = testing::top_up(&card, 900_000_000);
    subs.push(testing::signed(&terminal, Principal::Terminal(1), 1, load));
    for i in 0..2_000u64 {
        let buy = testing::purchase(&card, 100, false);
        subs.push(testing::signed(
            &terminal,
            Principal::Terminal(1),
            2 + i,
            buy,
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

/// One signature checked alone (`verify_strict`, as a batch of one is)
/// and in batches of distinct tills' requests (`verify_batch`, as the
/// daemon's verifier threads do), per signature.
fn signatures(c: &mut Criterion) {
    const MOST: usize = 256;
    let keys: Vec<SigningKey> = (0..MOST).map(|i| testing::key(i as u8)).collect();
    let messages: Vec<Vec<u8>> = (0..MOST as u32)
        .map(|i| cardd::crypto::request_message(&[i.to_be_bytes().as_slice(), &[7; 116]].concat()))
        .collect();
    let sigs: Vec<ed25519_dalek::Signature> = keys
        .iter()
        .zip(&messages)
        .map(|(k, m)| ed25519_dalek::Signer::sign(k, m))
        .collect();
    let public: Vec<ed25519_dalek::VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let mut g = c.benchmark_group("signatures");
    g.throughput(Throughput::Elements(1));
    // What a till spends on each request it signs: on one machine with
    // the daemon (the benches' load generator), this and the daemon's
    // check share the cores.
    g.bench_function("sign_one", |b| {
        b.iter(|| ed25519_dalek::Signer::sign(&keys[0], &messages[0]))
    });
    g.bench_function("verify_strict_one", |b| {
        b.iter(|| {
            public[0]
                .verify_strict(&messages[0], &sigs[0])
                .expect("verifies")
        })
    });
    for n in [16, 64, 256] {
        let m: Vec<&[u8]> = messages[..n].iter().map(|m| m.as_slice()).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("verify_batch_{n}"), |b| {
            b.iter(|| ed25519_dalek::verify_batch(&m, &sigs[..n], &public[..n]).expect("verifies"))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    state_machine,
    frame_codec,
    merkle_append,
    verify_replay,
    signatures
);
criterion_main!(benches);
