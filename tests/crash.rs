//! kill -9 in the middle of a stream of pipelined purchases, three times.
//!
//! After each crash the restarted daemon must hold every acknowledged
//! purchase (same sequence number, same record hash), every unacknowledged
//! one either committed once or not at all (and a retry of the exact signed
//! bytes then applies it exactly once), and every card balance must equal
//! what the durable ledger records say.
//!
//! The storm is random but seeded: the seed is printed, and
//! `CARDD_CRASH_SEED=<n> cargo test --test crash` reproduces the same
//! amounts, cards and kill delays.
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cardd::client::Client;
use cardd::crypto::{generate_key, read_key_file, sign_request};
use cardd::pb::{
    self, client_message::Body, request::Op, server_message, ClientMessage, ServerMessage,
};
use cardd::storage::{DiskStore, LogStore};
use common::reply::{receipt, status};
use common::*;
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `cardd serve` flags of every start: 256 KiB log segments.
const SEGMENTS: &[&str] = &["--log-segment-kib", "256"];
/// Crash/restart cycles.
const CYCLES: u64 = 3;
/// Connections sending purchases during a storm.
const CONNECTIONS: usize = 8;
/// Requests one connection keeps in flight (pipelined).
const WINDOW: usize = 8;
/// A connection sends at most one request per this interval ...
const PACE: Duration = Duration::from_millis(2);
/// ... and at most this many per cycle (bounds the whole test).
const MAX_PER_CONNECTION: usize = 1_000;
/// Value loaded on every demo card before the first storm.
const LOAD: i64 = 5_000_000;
/// Purchases are 1..=MAX_PURCHASE minor units.
const MAX_PURCHASE: i64 = 500;

/// One purchase sent (or about to be sent) during a storm.
struct Issued {
    key: usize,
    txn: u64,
    card: String,
    amount: i64,
    request: Vec<u8>,
    signature: Vec<u8>,
    /// The answer, if it arrived before the crash.
    ack: Option<pb::Reply>,
}

fn seed() -> u64 {
    seed_from_env("CARDD_CRASH_SEED")
}

/// Pipelines purchases on `client` until the connection dies or the cap is
/// reached, and returns everything it issued with the answers it got.
async fn storm(
    mut client: Client,
    key: usize,
    txn_base: u64,
    cards: Vec<String>,
    seed: u64,
    acks: Arc<AtomicUsize>,
) -> Vec<Issued> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut issued: Vec<Issued> = Vec::new();
    let mut by_request_id: HashMap<u64, usize> = HashMap::new();
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = 0usize;
    loop {
        let can_send = issued.len() < MAX_PER_CONNECTION && in_flight < WINDOW;
        if !can_send && in_flight == 0 {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if can_send => {
                let txn = txn_base + issued.len() as u64 + 1;
                let card = cards[rng.gen_range(0..cards.len())].clone();
                let amount = rng.gen_range(1..=MAX_PURCHASE);
                let request = client.request(txn, purchase(&card, amount)).encode_to_vec();
                let signature = sign_request(client.key(), &request);
                let request_id = txn;
                by_request_id.insert(request_id, issued.len());
                let msg = ClientMessage {
                    request_id,
                    body: Some(Body::Signed(pb::SignedRequest { request: request.clone(), signature: signature.clone() })),
                };
                // Recorded before the write: a request half-written when the
                // daemon dies is still one whose fate must be settled.
                issued.push(Issued { key, txn, card, amount, request, signature, ack: None });
                if client.framed().send(Bytes::from(msg.encode_to_vec())).await.is_err() {
                    break;
                }
                in_flight += 1;
            }
            frame = client.framed().next() => {
                let Some(Ok(frame)) = frame else { break };
                let msg = ServerMessage::decode(frame).expect("server frames decode");
                let idx = *by_request_id.get(&msg.request_id).unwrap_or_else(|| panic!("answer to unknown request {}", msg.request_id));
                match msg.body {
                    Some(server_message::Body::Reply(r)) => {
                        assert!(issued[idx].ack.is_none(), "two answers to request {}", msg.request_id);
                        assert!(!r.replayed, "a fresh purchase was answered as a replay");
                        issued[idx].ack = Some(r);
                        in_flight -= 1;
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("purchase {} refused during the storm: {other:?}", issued[idx].txn),
                }
            }
        }
    }
    issued
}

/// Every record of `brand`, in order (daemon stopped).
fn read_ledger(data: &Path, brand: u32) -> Vec<pb::Record> {
    let store = DiskStore::open(data).expect("open the ledger");
    let mut out = Vec::new();
    for item in store.scan(brand, 1) {
        let (seq, bytes) = item.expect("read a record");
        let rec = pb::Record::decode(bytes.as_slice()).expect("records decode");
        assert_eq!(rec.seq, seq, "record stored under another sequence number");
        assert_eq!(seq, out.len() as u64 + 1, "a gap in the chain");
        out.push(rec);
    }
    out
}

/// Per card: (sum in - sum out, balance after its newest record).
fn ledger_balances(records: &[pb::Record]) -> BTreeMap<String, (i64, i64)> {
    let mut m: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.card.is_empty()) {
        let e = m.entry(r.card.clone()).or_default();
        e.0 += r.paid_in_minor + r.bonus_in_minor - r.paid_out_minor - r.bonus_out_minor;
        e.1 = r.paid_balance_after_minor + r.bonus_balance_after_minor;
    }
    m
}

async fn balances(c: &mut Client, cards: &[String]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for card in cards {
        m.insert(card.clone(), inquiry(c, card).await.balance_minor);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_purchase_storm_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let seed = seed();
    println!("crash test seed = {seed} (CARDD_CRASH_SEED={seed} reproduces it)");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().expect("tempdir");
    // Small log segments, so that the storms seal several of them and the
    // kills land among seals too (a frame table written or not, a new
    // segment created or not): every restart reopens them all.
    let (mut daemon, demo) = Daemon::demo_with(dir.path(), SEGMENTS);
    let data = demo.data.clone();
    let brand = demo.manifest.brand_id;
    let cards = demo.manifest.cards.clone();

    // Four terminal keys: the two demo tills and two enrolled here. Eight
    // connections, two per key, so a key is signed on twice at once.
    let mut keys: Vec<SigningKey> = vec![
        read_key_file(&demo.terminal_key_path(0)).expect("key"),
        read_key_file(&demo.terminal_key_path(1)).expect("key"),
    ];
    {
        let mut owner = bounded(demo.owner(daemon.addr)).await;
        let mut txn = owner.session.last_txn_id;
        for store_index in 0..2 {
            let key = generate_key();
            txn += 1;
            let op = Op::EnrollTerminal(pb::EnrollTerminal {
                store_id: demo.manifest.stores[store_index].store_id,
                public_key: key.verifying_key().to_bytes().to_vec(),
                label: format!("crash till {store_index}"),
            });
            call(&mut owner, txn, op).await.expect("enrol a terminal");
            keys.push(key);
        }
    }
    let mut terminal_ids = Vec::new();
    {
        // Load every card well beyond what the storms can spend.
        let mut till = bounded(Client::connect(daemon.addr, keys[0].clone()))
            .await
            .expect("sign-on");
        for (i, card) in cards.iter().enumerate() {
            call(&mut till, 900_000_000 + i as u64, top_up(card, LOAD))
                .await
                .expect("top-up");
        }
        for key in &keys {
            let c = bounded(Client::connect(daemon.addr, key.clone()))
                .await
                .expect("sign-on");
            terminal_ids.push(c.session.terminal_id);
        }
    }
    let distinct: HashSet<u32> = terminal_ids.iter().copied().collect();
    assert_eq!(distinct.len(), keys.len(), "each key is its own terminal");

    let mut total_issued = 0usize;
    let mut total_unacked = 0usize;
    for cycle in 1..=CYCLES {
        // Balances before the storm, from the daemon.
        let mut probe = bounded(Client::connect(daemon.addr, keys[0].clone()))
            .await
            .expect("sign-on");
        let before = balances(&mut probe, &cards).await;
        drop(probe);

        let mut clients = Vec::new();
        for w in 0..CONNECTIONS {
            let key = w % keys.len();
            clients.push(
                bounded(Client::connect(daemon.addr, keys[key].clone()))
                    .await
                    .expect("sign-on"),
            );
        }
        let acks = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (w, client) in clients.into_iter().enumerate() {
            let txn_base = cycle * 10_000_000 + w as u64 * 100_000;
            let storm = storm(
                client,
                w % keys.len(),
                txn_base,
                cards.clone(),
                rng.gen(),
                acks.clone(),
            );
            tasks.push(tokio::spawn(storm));
        }
        // The kill delay runs from the first answer, so that every cycle has
        // acknowledged purchases to look for, however slow this machine is.
        bounded(async {
            while acks.load(Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let delay = Duration::from_millis(rng.gen_range(200..=700));
        tokio::time::sleep(delay).await;
        daemon.kill9();
        let mut issued: Vec<Issued> = Vec::new();
        for t in tasks {
            issued.extend(bounded(t).await.expect("storm task"));
        }
        let acked = issued.iter().filter(|i| i.ack.is_some()).count();
        let unacked = issued.len() - acked;
        println!(
            "cycle {cycle}: killed {delay:?} after the first answer; {} issued, {acked} acknowledged, {unacked} in flight",
            issued.len()
        );
        assert!(
            acked > 0,
            "cycle {cycle}: nothing was acknowledged before the kill"
        );
        total_issued += issued.len();
        total_unacked += unacked;

        // Restart on the same data and settle every request's fate.
        daemon = Daemon::start(&data, SEGMENTS);
        let mut tills = Vec::new();
        for key in &keys {
            tills.push(
                bounded(Client::connect(daemon.addr, key.clone()))
                    .await
                    .expect("sign-on after restart"),
            );
        }
        // The sign-on tells a till the newest txn id the server holds for it.
        for (k, till) in tills.iter().enumerate() {
            let newest = issued
                .iter()
                .filter(|i| i.key == k && i.ack.is_some())
                .map(|i| i.txn)
                .max()
                .unwrap_or(0);
            if newest > 0 {
                assert!(
                    till.session.last_txn_id >= cycle * 10_000_000,
                    "till {k}: last_txn_id {} is older than this cycle",
                    till.session.last_txn_id
                );
            }
        }
        let (mut found_committed, mut applied_by_retry) = (0, 0);
        for (n, i) in issued.iter().enumerate() {
            let till = &mut tills[i.key];
            let status = status(
                call(till, 0, Op::TxnStatus(pb::TxnStatus { txn_id: i.txn }))
                    .await
                    .expect("status"),
            );
            match &i.ack {
                Some(ack) => {
                    let r = receipt(ack);
                    assert_eq!(r.txn_id, i.txn);
                    assert_eq!(
                        status.state(),
                        pb::TxnState::Committed,
                        "acknowledged txn {} lost in the crash",
                        i.txn
                    );
                    assert_eq!(
                        status.seq, r.seq,
                        "acknowledged txn {} moved to another record",
                        i.txn
                    );
                    let original = status
                        .original
                        .as_ref()
                        .expect("status of a committed txn holds its answer");
                    assert_eq!(
                        receipt(original).hash,
                        r.hash,
                        "txn {}: the record hash changed across the crash",
                        i.txn
                    );
                    assert_eq!(
                        original.card.as_ref().map(|c| c.balance_minor),
                        ack.card.as_ref().map(|c| c.balance_minor),
                        "txn {}: the balance on the receipt changed across the crash",
                        i.txn
                    );
                    // A few acknowledged ones are retried too: replay, not re-apply.
                    if n % 97 == 0 {
                        let again =
                            bounded(till.call_signed(i.request.clone(), i.signature.clone()))
                                .await
                                .expect("retry");
                        assert!(
                            again.replayed,
                            "txn {}: retry of an acknowledged purchase was applied again",
                            i.txn
                        );
                        assert_eq!(receipt(&again).seq, r.seq);
                        assert_eq!(receipt(&again).hash, r.hash);
                    }
                }
                None => {
                    let first = bounded(till.call_signed(i.request.clone(), i.signature.clone()))
                        .await
                        .unwrap_or_else(|e| panic!("retry of txn {} failed: {e}", i.txn));
                    match status.state() {
                        pb::TxnState::Committed => {
                            found_committed += 1;
                            assert!(
                                first.replayed,
                                "txn {} was committed, yet its retry was applied again",
                                i.txn
                            );
                            assert_eq!(receipt(&first).seq, status.seq);
                            let original = status.original.as_ref().expect("original answer");
                            assert_eq!(receipt(&first).hash, receipt(original).hash);
                        }
                        pb::TxnState::Unknown => {
                            applied_by_retry += 1;
                            assert!(
                                !first.replayed,
                                "txn {} was unknown, yet its retry claims a replay",
                                i.txn
                            );
                            let second =
                                bounded(till.call_signed(i.request.clone(), i.signature.clone()))
                                    .await
                                    .expect("second retry");
                            assert!(
                                second.replayed,
                                "txn {}: second retry was applied again",
                                i.txn
                            );
                            assert_eq!(receipt(&second).seq, receipt(&first).seq);
                            assert_eq!(receipt(&second).hash, receipt(&first).hash);
                        }
                        other => panic!("unacknowledged txn {} is {other:?}", i.txn),
                    }
                }
            }
        }
        println!("cycle {cycle}: of {unacked} unacknowledged, {found_committed} were durable, {applied_by_retry} applied by retry");

        // Every issued purchase is now applied exactly once.
        let mut expected = before.clone();
        for i in &issued {
            *expected.get_mut(&i.card).expect("demo card") -= i.amount;
        }
        let live = balances(&mut tills[0], &cards).await;
        assert_eq!(
            live, expected,
            "cycle {cycle}: balances are not the load minus each purchase once"
        );
        drop(tills);

        // The durable ledger agrees, record by record.
        daemon.kill9();
        let records = read_ledger(&data, brand);
        let mut seen = HashSet::new();
        for r in records
            .iter()
            .filter(|r| r.terminal_id != 0 && r.txn_id != 0)
        {
            assert!(
                seen.insert((r.terminal_id, r.txn_id)),
                "terminal {} txn {} is in the ledger twice",
                r.terminal_id,
                r.txn_id
            );
        }
        for i in &issued {
            let tid = terminal_ids[i.key];
            let recs: Vec<&pb::Record> = records
                .iter()
                .filter(|r| r.terminal_id == tid && r.txn_id == i.txn)
                .collect();
            assert_eq!(
                recs.len(),
                1,
                "txn {} of terminal {tid} has {} records",
                i.txn,
                recs.len()
            );
            let r = recs[0];
            assert_eq!(r.kind(), pb::RecordKind::Purchase);
            assert_eq!(r.card, i.card);
            assert_eq!(
                r.paid_out_minor + r.bonus_out_minor,
                i.amount,
                "txn {}: wrong amount recorded",
                i.txn
            );
            assert_eq!(
                r.request, i.request,
                "txn {}: the record does not keep the signed bytes",
                i.txn
            );
            if let Some(ack) = &i.ack {
                assert_eq!(r.seq, receipt(ack).seq);
                let bytes = r.encode_to_vec();
                assert_eq!(
                    cardd::crypto::leaf_hash(&bytes).to_vec(),
                    receipt(ack).hash,
                    "txn {}: receipt hash is not the record's",
                    i.txn
                );
            }
        }
        let from_ledger = ledger_balances(&records);
        for card in &cards {
            let (sum, last) = from_ledger[card];
            assert_eq!(
                sum, last,
                "card {card}: sum of deltas differs from the newest balance_after"
            );
            assert_eq!(
                sum, expected[card],
                "card {card}: ledger differs from the live balance"
            );
        }
        run::cardd_check(&data);

        daemon = Daemon::start(&data, SEGMENTS);
        let mut till = bounded(Client::connect(daemon.addr, keys[0].clone()))
            .await
            .expect("sign-on");
        let again = balances(&mut till, &cards).await;
        assert_eq!(
            again, expected,
            "cycle {cycle}: balances after a clean restart differ"
        );
        println!("cycle {cycle}: verified at {:?}", started.elapsed());
    }
    assert!(
        total_unacked > 0,
        "no request was ever in flight at a kill ({total_issued} issued)"
    );
    let segments = std::fs::read_dir(data.join("log").join(format!("brand-{brand:05}")))
        .expect("the brand's log")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    println!("{segments} log segments");
    assert!(segments > 3, "the storms sealed segments: {segments}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "crash test took {:?}",
        started.elapsed()
    );
}
