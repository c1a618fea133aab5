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
//!
//! Modules: `model` (operations, expectations, the till and the world),
//! `plan` (a till's choices and bookkeeping), `session` (a till on the
//! wire), `check` (the checks after each restart and at the end).
#[path = "../common/mod.rs"]
mod common;

mod check;
mod model;
mod plan;
mod session;

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
use check::*;
use common::reply::*;
use common::*;
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use model::*;
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
    seed_from_env("CARDD_SOAK_SEED")
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
