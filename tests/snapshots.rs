//! Snapshots at recovery. A restart from a snapshot reaches exactly the
//! state a full replay reaches. A snapshot that is not on the stored chain
//! (written ahead of a flush a crash lost, or of a branch the chain no
//! longer has) or not signed by the server key is not used. `cardd check`'s
//! mode refuses a snapshot that differs from the replayed state.
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cardd::ledger::{BrandLedger, Recovery};
use cardd::pb::{self, request::Op};
use cardd::state::{BrandState, Principal};
use cardd::storage::{DiskStore, LogStore};
use cardd::testing::{server_key, terminal_key};
use common::store::{self, sub};
use ed25519_dalek::SigningKey;

/// `store::provision`, keeping snapshots in `snapshots` (the interval is
/// set by each test that needs snapshots taken on the way).
fn provision(store: Arc<dyn LogStore>, snapshots: &Path) -> (BrandLedger, String) {
    let (mut ledger, card) = store::provision(store);
    ledger.snapshot_into(snapshots, 1_000_000);
    (ledger, card)
}

/// A brand provisioned on a fresh data directory, keeping snapshots: the
/// directory (deleted when dropped), its snapshot directory, the store,
/// the ledger and its funded card.
fn shop() -> (
    tempfile::TempDir,
    PathBuf,
    Arc<dyn LogStore>,
    BrandLedger,
    String,
) {
    let tmp = tempfile::tempdir().unwrap();
    let snaps = cardd::snapshot::dir(tmp.path());
    let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(tmp.path()).unwrap());
    let (ledger, card) = provision(store.clone(), &snaps);
    (tmp, snaps, store, ledger, card)
}

fn purchase(card: &str, txn: u64, amount: i64) -> cardd::ledger::Submission {
    let op = Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor: amount,
        allow_partial: false,
        ..Default::default()
    });
    sub(&terminal_key(), Principal::Terminal(1), txn, op)
}

/// Purchases with till txn ids `txns`, each committed.
fn purchases(ledger: &mut BrandLedger, card: &str, txns: std::ops::Range<u64>) {
    for txn in txns {
        ledger
            .submit_now(purchase(card, txn, 100 + txn as i64))
            .unwrap()
            .unwrap();
    }
}

fn recover(store: &Arc<dyn LogStore>, mode: Recovery) -> anyhow::Result<BrandLedger> {
    Ok(BrandLedger::recover_with(
        store.clone(),
        server_key(),
        1,
        mode,
    )?)
}

fn full_replay(store: &Arc<dyn LogStore>) -> BrandState {
    recover(store, Recovery::Full).unwrap().state
}

#[test]
fn a_restart_from_a_snapshot_equals_a_full_replay() {
    let (_tmp, snaps, store, mut ledger, card) = shop();
    purchases(&mut ledger, &card, 2..22);
    ledger.write_snapshot().unwrap();
    let snapshot_seq = ledger.state.seq;
    purchases(&mut ledger, &card, 22..37);
    let live = ledger.state.clone();
    drop(ledger);

    let restarted = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(restarted.snapshot_seq(), snapshot_seq);
    assert_eq!(restarted.state, live);
    assert_eq!(full_replay(&store), live);
    recover(&store, Recovery::CheckSnapshot(&snaps)).unwrap();

    // It goes on serving: the next purchase lands on the same chain.
    let mut restarted = restarted;
    restarted
        .submit_now(purchase(&card, 37, 1))
        .unwrap()
        .unwrap();
    assert_eq!(full_replay(&store), restarted.state);
}

/// Counts reads of single records, by seq.
#[derive(Default)]
struct CountedReads(std::sync::Mutex<std::collections::BTreeMap<u64, u32>>);

impl store::CommitHook for CountedReads {
    fn commit(&self, inner: &DiskStore, commit: store::Commit<'_>) -> cardd::storage::Result<()> {
        commit.apply(inner)
    }

    fn record_read(&self, _brand: u32, seq: u64) {
        *self.0.lock().unwrap().entry(seq).or_default() += 1;
    }
}

/// A start from a snapshot reads the snapshot's record once: to see that
/// the log holds it and, from the same bytes, its time (the replay then
/// reads only the records after it).
#[test]
fn a_start_from_a_snapshot_reads_its_record_once() {
    let (tmp, snaps, store, mut ledger, card) = shop();
    purchases(&mut ledger, &card, 2..22);
    ledger.write_snapshot().unwrap();
    let snapshot_seq = ledger.state.seq;
    purchases(&mut ledger, &card, 22..30);
    let live = ledger.state.clone();
    drop((ledger, store));

    let counted = Arc::new(store::WrappedStore {
        inner: DiskStore::open(tmp.path()).unwrap(),
        hook: CountedReads::default(),
    });
    let store: Arc<dyn LogStore> = counted.clone();
    let restarted = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(restarted.snapshot_seq(), snapshot_seq);
    assert_eq!(restarted.state, live);
    let reads = counted.hook.0.lock().unwrap().clone();
    assert_eq!(
        reads,
        [(snapshot_seq, 1)].into(),
        "records read one by one at the start"
    );
}

#[test]
fn a_snapshot_off_the_stored_chain_is_not_used() {
    let (_tmp, snaps, store, mut ledger, card) = shop();
    purchases(&mut ledger, &card, 2..12);
    // Applied, snapshotted, never committed: a crash before the flush.
    let lost = ledger.apply_batch(&[purchase(&card, 12, 5_000)]);
    assert_eq!(lost.written.len(), 1);
    slices_only(&mut ledger);
    let durable = ledger.state.seq - 1;
    drop(ledger);

    let restarted = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(restarted.snapshot_seq(), 0, "a snapshot ahead of the chain");
    assert_eq!(restarted.state.seq, durable);
    assert_eq!(restarted.state, full_replay(&store));
    recover(&store, Recovery::CheckSnapshot(&snaps)).unwrap();

    // Another record now takes the lost one's sequence number: the
    // snapshot's seq is on the chain, its head is not.
    let mut restarted = restarted;
    restarted
        .submit_now(purchase(&card, 13, 7))
        .unwrap()
        .unwrap();
    let again = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(again.snapshot_seq(), 0, "a snapshot of a lost branch");
    assert_eq!(again.state, restarted.state);
    assert_eq!(again.state.cards, full_replay(&store).cards);
    recover(&store, Recovery::CheckSnapshot(&snaps)).unwrap();
}

/// Writes a new generation of the ledger's state as the forked child does,
/// and no more: the crash comes before its record is durable, so it
/// replaces nothing.
fn slices_only(ledger: &mut BrandLedger) {
    ledger.continue_snapshots(None);
    match ledger.begin_snapshot().unwrap() {
        Some(cardd::snapshot::job::Work::Generation(job)) => job.write_slices().unwrap(),
        _ => panic!("a generation is due"),
    }
}

#[test]
fn a_generation_ahead_of_the_log_a_crash_cut_leaves_the_older_one_to_start_from() {
    let (_tmp, snaps, store, mut ledger, card) = shop();
    purchases(&mut ledger, &card, 2..12);
    ledger.write_snapshot().unwrap();
    let older = ledger.state.seq;
    purchases(&mut ledger, &card, 12..15);
    let durable = ledger.state.seq;
    let lost = ledger.apply_batch(&[purchase(&card, 15, 5_000)]);
    assert_eq!(lost.written.len(), 1);
    slices_only(&mut ledger);
    drop(ledger);

    let mut restarted = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(
        restarted.snapshot_seq(),
        older,
        "the older generation, not a full replay"
    );
    assert_eq!(restarted.state.seq, durable);
    assert_eq!(restarted.state, full_replay(&store));
    assert_eq!(
        generations(&snaps),
        [1, 2],
        "both kept until a part is written"
    );

    // The older window goes on; its first part deletes the generation
    // that was passed over, so no start reads it again.
    purchases(&mut restarted, &card, 16..18);
    restarted.write_snapshot().unwrap();
    assert_eq!(generations(&snaps), [1]);
    let again = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(again.snapshot_seq(), restarted.state.seq);
    assert_eq!(again.state, restarted.state);
}

/// A part whose record is durable waits for the brand's snapshot files
/// (here held by the test, in the daemon by another writer of the brand on
/// the same node); the brand stops meanwhile: the part is not written.
#[test]
fn a_part_of_a_brand_that_stopped_while_it_waited_for_the_files_is_not_written() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (_tmp, snaps, _store, mut ledger, card) = shop();
    ledger.write_snapshot().unwrap();
    purchases(&mut ledger, &card, 2..4);
    let files = || {
        let dir = std::fs::read_dir(snaps.join("brand-1.parts")).unwrap();
        let mut names: Vec<_> = dir.map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = files();
    let Some(cardd::snapshot::job::Work::Part(job)) = ledger.begin_snapshot().unwrap() else {
        panic!("a part is due");
    };
    let lock = cardd::snapshot::parts::files_lock(&snaps, 1);
    let held = lock.lock().unwrap();
    // Asked once while it waits for its record (durable: it goes on to the
    // files), then again once it holds them.
    let (stopped, asked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (give_up, count) = (stopped.clone(), asked.clone());
    let part = std::thread::spawn(move || {
        job.run(&|| {
            count.fetch_add(1, Ordering::SeqCst);
            give_up.load(Ordering::SeqCst)
        })
        .map(|_| ())
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while asked.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the part never asked");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stopped.store(true, Ordering::SeqCst);
    drop(held);
    let ran = part.join().unwrap();
    assert!(
        matches!(&ran, Err(cardd::snapshot::SnapshotError::Invalid(why)) if why.contains("stopped")),
        "{ran:?}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "asked again under the lock"
    );
    assert_eq!(files(), before, "nothing written, nothing deleted");
}

/// The generations of brand 1's parts on disk, each once, in order.
fn generations(snaps: &Path) -> Vec<u64> {
    let dir = snaps.join("brand-1.parts");
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".part")?.split('-').next()?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[test]
fn a_snapshot_unlike_the_replay_or_signed_by_another_key_is_refused() {
    let (_tmp, snaps, store, mut ledger, card) = shop();
    purchases(&mut ledger, &card, 2..6);
    let truth = ledger.state.clone();
    drop(ledger);

    // Signed by the server key, but with money the records never moved:
    // only a full replay can tell, and `cardd check` does one.
    let mut forged = truth.clone();
    let numbers: Vec<u64> = forged.cards.keys().copied().collect();
    for number in numbers {
        forged.cards.get_mut(&number).expect("listed").paid += 1;
    }
    cardd::snapshot::write(&snaps, &forged, &server_key()).unwrap();
    let err = recover(&store, Recovery::CheckSnapshot(&snaps))
        .err()
        .expect("check refuses a snapshot unlike the replay");
    assert!(
        format!("{err:#}").contains("differs from the state replayed"),
        "{err:#}"
    );

    // Signed by another key: a restart replays everything instead, and
    // check refuses it.
    cardd::snapshot::write(&snaps, &forged, &SigningKey::from_bytes(&[9; 32])).unwrap();
    let restarted = recover(&store, Recovery::FromSnapshot(&snaps)).unwrap();
    assert_eq!(restarted.snapshot_seq(), 0);
    assert_eq!(restarted.state, truth);
    let err = recover(&store, Recovery::CheckSnapshot(&snaps))
        .err()
        .expect("check refuses a snapshot it cannot verify");
    assert!(format!("{err:#}").contains("signature"), "{err:#}");

    // Of another build's format (the first check after an upgrade, as
    // docs/operations.md asks): checked without it, not refused.
    cardd::snapshot::write(&snaps, &truth, &server_key()).unwrap();
    let file = snaps.join("brand-1.snap");
    let mut bytes = std::fs::read(&file).unwrap();
    let format = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
    bytes[8..12].copy_from_slice(&(format - 1).to_be_bytes());
    std::fs::write(&file, bytes).unwrap();
    let checked = recover(&store, Recovery::CheckSnapshot(&snaps)).expect("an older format");
    assert_eq!(checked.state, truth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_snapshots_as_it_goes_and_a_restart_starts_there() {
    use cardd::server::keys::KeyIndex;
    use cardd::server::writer::BrandHandle;
    let (_tmp, snaps, store, mut ledger, card) = shop();
    ledger.snapshot_into(&snaps, 10);
    let handle = BrandHandle::spawn(ledger, Arc::new(KeyIndex::default()));
    // Provisioning wrote 5 records; one purchase per batch, a snapshot due
    // every 10. The first is a generation, written by a forked child at a
    // low priority (slow on a loaded machine); a part is taken only when
    // one is due and none is being written, so buy until a part well on
    // the way is stored (bounded), then stop.
    let (mut txn, mut head) = (2, 5);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while newest_snapshot(&snaps) < 25 {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot part in 60 s"
        );
        let reply = handle.submit(purchase(&card, txn, 1)).await.unwrap();
        reply.expect("purchase");
        (txn, head) = (txn + 1, head + 1);
    }
    // The final one the writer leaves when its handles are gone.
    drop(handle);
    let snaps2 = snaps.clone();
    let last = tokio::task::spawn_blocking(move || snapshot_at(&snaps2, head))
        .await
        .unwrap();
    assert_eq!(last, head);
    // The part leaving the window is deleted just after the newest lands.
    let count = || {
        std::fs::read_dir(cardd::snapshot::parts::brand_dir(&snaps, 1))
            .unwrap()
            .count() as u64
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count() != cardd::snapshot::parts::WINDOW && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count(), cardd::snapshot::parts::WINDOW);
    assert_eq!(generations(&snaps), [1], "parts, one generation");
    let store2 = store.clone();
    let snaps2 = snaps.clone();
    let restarted = tokio::task::spawn_blocking(move || {
        recover(&store2, Recovery::FromSnapshot(&snaps2)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(restarted.snapshot_seq(), head);
    assert_eq!(restarted.state.seq, head);
    assert_eq!(restarted.state, full_replay(&store));
}

/// The sequence number of the brand's newest snapshot (0: none, or a
/// window read while its leaving part was being deleted).
fn newest_snapshot(snaps: &Path) -> u64 {
    let key = server_key().verifying_key();
    let newest = cardd::snapshot::read(snaps, 1, &key).ok().flatten();
    newest.map_or(0, |s| s.seq)
}

/// Waits (30 s at most) for the brand's newest snapshot to reach `head`,
/// and returns its sequence number.
fn snapshot_at(snaps: &Path, head: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let seq = newest_snapshot(snaps);
        assert!(seq <= head, "a snapshot past the head: {seq}");
        if seq == head {
            return seq;
        }
        assert!(std::time::Instant::now() < deadline, "snapshot at {seq}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
