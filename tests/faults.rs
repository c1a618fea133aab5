//! Faults at the storage boundary and corrupted data directories.
//!
//! A storage wrapper injects failures into the brand writer's commits: a
//! write that fails before anything reaches disk, a full disk, and a flush
//! that reports failure after the data did reach disk. In every case no
//! request of the failed batch is acknowledged, the brand refuses further
//! requests with STORAGE_FAILURE instead of serving state that may not
//! survive, and reopening the data directory recovers every acknowledged
//! record with balances equal to their records. A flipped byte in the
//! ledger is detected at start-up with a message naming what is wrong.
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use cardd::ledger::BrandLedger;
use cardd::pb::{self, request::Op, ErrorCode};
use cardd::server::keys::KeyIndex;
use cardd::server::writer::BrandHandle;
use cardd::state::{Principal, TxnEntry};
use cardd::storage::{self, DiskStore, LogStore, StorageError, StoredBatch};
use cardd::testing::{server_key, terminal_key};
use common::store::{provision, sub, Commit, CommitHook, WrappedStore};
use prost::Message;

const PASS: u8 = 0;
const FAIL_BEFORE_WRITE: u8 = 1;
const DISK_FULL: u8 = 2;
const FAIL_AFTER_WRITE: u8 = 3;

/// A commit hook that fails commits as `mode` says (PASS lets them through).
struct Faults {
    mode: AtomicU8,
}

impl CommitHook for Faults {
    fn commit(&self, inner: &DiskStore, commit: Commit<'_>) -> storage::Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            FAIL_BEFORE_WRITE => Err(StorageError::Sled(sled::Error::Io(std::io::Error::other(
                "injected write failure",
            )))),
            DISK_FULL => Err(StorageError::Sled(sled::Error::Io(
                std::io::Error::from_raw_os_error(28),
            ))),
            FAIL_AFTER_WRITE => {
                commit.apply(inner)?;
                Err(StorageError::Sled(sled::Error::Io(std::io::Error::other(
                    "injected flush failure",
                ))))
            }
            _ => commit.apply(inner),
        }
    }
}

async fn purchase(handle: &BrandHandle, card: &str, txn: u64) -> Result<pb::Reply, ErrorCode> {
    let op = Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor: 100 + txn as i64,
        allow_partial: false,
        ..Default::default()
    });
    match tokio::time::timeout(
        Duration::from_secs(10),
        handle.submit(sub(&terminal_key(), Principal::Terminal(1), txn, op)),
    )
    .await
    {
        Ok(Some(Ok(r))) => Ok(r),
        Ok(Some(Err(refusal))) => Err(refusal.code),
        Ok(None) => Err(ErrorCode::Internal),
        Err(_) => panic!("no answer within 10 s"),
    }
}

async fn fault_case(mode: u8) {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(WrappedStore {
        inner: DiskStore::open(dir.path()).unwrap(),
        hook: Faults {
            mode: AtomicU8::new(PASS),
        },
    });
    let (ledger, card) = provision(faulty.clone());
    let handle = BrandHandle::spawn(ledger, Arc::new(KeyIndex::default()));

    // Healthy traffic first: acknowledged purchases.
    let mut acked = Vec::new();
    for txn in 2..12 {
        let r = purchase(&handle, &card, txn)
            .await
            .expect("healthy purchase");
        acked.push((txn, r.receipt.unwrap()));
    }
    // The fault: this request's batch fails, nothing is acknowledged, and the
    // brand stays stopped (even once storage would work again).
    faulty.hook.mode.store(mode, Ordering::SeqCst);
    assert_eq!(
        purchase(&handle, &card, 12).await.unwrap_err(),
        ErrorCode::StorageFailure
    );
    faulty.hook.mode.store(PASS, Ordering::SeqCst);
    assert_eq!(
        purchase(&handle, &card, 13).await.unwrap_err(),
        ErrorCode::StorageFailure
    );

    // "Restart": close everything, reopen the data directory.
    drop(handle);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&faulty) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "writer did not let go of storage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(faulty);
    let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(dir.path()).unwrap());
    let recovered = BrandLedger::recover(store.clone(), server_key(), 1)
        .expect("recovery needs no manual repair");
    let state = &recovered.state;
    for (txn, receipt) in &acked {
        let Some(TxnEntry::Committed(seq)) = state.txns.get(&(1, *txn)) else {
            panic!("acknowledged txn {txn} lost")
        };
        assert_eq!(*seq, receipt.seq);
        let bytes = store.record(1, *seq).unwrap().unwrap();
        assert_eq!(
            cardd::crypto::leaf_hash(&bytes).to_vec(),
            receipt.hash,
            "record {seq} changed"
        );
    }
    // The failed request was never acknowledged. Whether it reached disk
    // depends on where the fault struck: before the write it did not.
    let failed_present = state.txns.contains_key(&(1, 12));
    match mode {
        FAIL_BEFORE_WRITE | DISK_FULL => assert!(!failed_present, "a failed write left a record"),
        _ => assert!(
            failed_present,
            "data written before the flush failure is recovered"
        ),
    }
    assert!(
        !state.txns.contains_key(&(1, 13)),
        "a request after the stop was applied"
    );
    // Balance equals the records: 10,000.00 minus the purchases on disk.
    let spent: i64 = (2..12).map(|t| 100 + t).sum::<i64>() + if failed_present { 112 } else { 0 };
    let number: u64 = card.parse().unwrap();
    assert_eq!(state.cards[&number].balance(), 1_000_000 - spent);

    // The recovered brand serves again.
    let handle = BrandHandle::spawn(recovered, Arc::new(KeyIndex::default()));
    let r = purchase(&handle, &card, 14)
        .await
        .expect("serves after restart");
    assert_eq!(r.card.unwrap().balance_minor, 1_000_000 - spent - 114);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_acknowledges_nothing_and_restart_recovers() {
    fault_case(FAIL_BEFORE_WRITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_acknowledges_nothing_and_restart_recovers() {
    fault_case(DISK_FULL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_acknowledges_nothing_and_restart_recovers() {
    fault_case(FAIL_AFTER_WRITE).await;
}

/// What the pipeline tests' hook tells the test.
#[derive(Debug, PartialEq)]
enum Event {
    CommitStarted,
    RecordRead(u64),
}

/// A commit hook for the two-stage writer: once armed, each commit says it
/// started, then waits for the test's verdict (true: pass it on, false:
/// fail it before anything is written); reads of records are reported, so
/// the test knows when the applier has applied a batch that reads one.
struct Held {
    armed: AtomicBool,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    verdicts: Mutex<std::sync::mpsc::Receiver<bool>>,
}

impl CommitHook for Held {
    fn commit(&self, inner: &DiskStore, commit: Commit<'_>) -> storage::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return commit.apply(inner);
        }
        let _ = self.events.send(Event::CommitStarted);
        let verdicts = self.verdicts.lock().unwrap();
        match verdicts.recv_timeout(Duration::from_secs(10)) {
            Ok(true) => commit.apply(inner),
            _ => Err(StorageError::Sled(sled::Error::Io(std::io::Error::other(
                "injected write failure",
            )))),
        }
    }

    fn record_read(&self, _brand: u32, seq: u64) {
        if self.armed.load(Ordering::SeqCst) {
            let _ = self.events.send(Event::RecordRead(seq));
        }
    }
}

type Verdicts = std::sync::mpsc::Sender<bool>;
type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

/// A provisioned brand on a `Held` store, and its writer (armed).
fn held_brand(
    dir: &std::path::Path,
) -> (
    Arc<WrappedStore<Held>>,
    BrandHandle,
    String,
    Verdicts,
    Events,
) {
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (verdicts, verdicts_rx) = std::sync::mpsc::channel();
    let held = Arc::new(WrappedStore {
        inner: DiskStore::open(dir).unwrap(),
        hook: Held {
            armed: AtomicBool::new(false),
            events: events_tx,
            verdicts: Mutex::new(verdicts_rx),
        },
    });
    let (ledger, card) = provision(held.clone());
    assert_eq!(ledger.state.seq, PROVISIONED);
    let handle = BrandHandle::spawn(ledger, Arc::new(KeyIndex::default()));
    held.hook.armed.store(true, Ordering::SeqCst);
    (held, handle, card, verdicts, events)
}

/// Records `provision` writes; the last is the terminal's top-up (txn 1).
const PROVISIONED: u64 = 5;

async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("no event within 10 s")
        .expect("hook alive")
}

/// Polls `answer` once: that queues its command on the writer (whose
/// queue has room) without waiting for the answer. On a single-threaded
/// runtime the writer runs only when the test awaits something else, so
/// commands queued back to back are taken as one batch.
async fn queue<F: Future>(answer: F) -> Pin<Box<F>> {
    let mut answer = Box::pin(answer);
    std::future::poll_fn(|cx| {
        assert!(answer.as_mut().poll(cx).is_pending(), "answered at once");
        Poll::Ready(())
    })
    .await;
    answer
}

/// True while `answer` has not come.
async fn still_waiting<F: Future>(answer: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx).is_pending())).await
}

/// The status of the till's transaction `txn`.
async fn status(handle: &BrandHandle, txn: u64) -> Result<pb::StatusResult, ErrorCode> {
    let op = Op::TxnStatus(pb::TxnStatus { txn_id: txn });
    match tokio::time::timeout(
        Duration::from_secs(10),
        handle.submit(sub(&terminal_key(), Principal::Terminal(1), 0, op)),
    )
    .await
    .expect("no answer within 10 s")
    {
        Some(Ok(pb::Reply {
            detail: Some(pb::reply::Detail::Status(s)),
            ..
        })) => Ok(*s),
        Some(Ok(other)) => panic!("not a status: {other:?}"),
        Some(Err(refusal)) => Err(refusal.code),
        None => Err(ErrorCode::Internal),
    }
}

async fn sign_on(handle: &BrandHandle) -> Option<Result<pb::SignOnOk, cardd::error::Refusal>> {
    tokio::time::timeout(
        Duration::from_secs(10),
        handle.sign_on(
            Principal::Terminal(1),
            terminal_key().verifying_key().to_bytes(),
        ),
    )
    .await
    .expect("no sign-on answer within 10 s")
}

/// Batch A is stuck in its commit while batch B (a purchase, and a status
/// query that reads storage and so shows B was applied) is applied behind
/// it. A's commit fails: neither batch is acknowledged, the brand stops,
/// and after a restart only the durable prefix exists and both requests'
/// status can be asked.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_commit_refuses_the_batch_applied_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (held, handle, card, verdicts, mut events) = held_brand(dir.path());

    let a = queue(purchase(&handle, &card, 20)).await;
    assert_eq!(next_event(&mut events).await, Event::CommitStarted);
    let b_purchase = queue(purchase(&handle, &card, 21)).await;
    let b_status = queue(status(&handle, 1)).await;
    assert_eq!(
        next_event(&mut events).await,
        Event::RecordRead(PROVISIONED),
        "batch B is applied while A is held"
    );

    verdicts.send(false).unwrap();
    assert_eq!(a.await.unwrap_err(), ErrorCode::StorageFailure);
    assert_eq!(b_purchase.await.unwrap_err(), ErrorCode::StorageFailure);
    assert_eq!(
        b_status.await.unwrap_err(),
        ErrorCode::StorageFailure,
        "even a read answered behind a failed commit is refused"
    );
    // Stopped: later requests and sign-ons are refused, nothing is committed.
    assert_eq!(
        purchase(&handle, &card, 22).await.unwrap_err(),
        ErrorCode::StorageFailure
    );
    assert!(
        matches!(sign_on(&handle).await, None | Some(Err(_))),
        "a stopped brand signs no one on"
    );
    assert_eq!(events.try_recv().ok(), None, "no commit after the failure");

    // Restart from the data directory.
    drop(handle);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&held) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "writer did not let go of storage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(dir.path()).unwrap());
    let recovered = BrandLedger::recover(store.clone(), server_key(), 1).unwrap();
    assert_eq!(recovered.state.seq, PROVISIONED, "only the durable prefix");
    assert_eq!(store.record(1, PROVISIONED + 1).unwrap(), None);
    let handle = BrandHandle::spawn(recovered, Arc::new(KeyIndex::default()));
    for txn in [20, 21, 22] {
        let s = status(&handle, txn).await.expect("status after restart");
        assert_eq!(s.state(), pb::TxnState::Unknown, "txn {txn}");
    }
    // The till may now safely retry them.
    let r = purchase(&handle, &card, 20)
        .await
        .expect("retry after restart");
    assert_eq!(r.receipt.unwrap().seq, PROVISIONED + 1);
}

/// Answers that rest on a batch still being flushed wait for it: a retry
/// of A's request and a sign-on (whose last txn id is A's), both taken
/// while A is held, come only after A is durable, and the retry gives
/// A's answer (read from memory: storage may not have A yet).
#[tokio::test(flavor = "current_thread")]
async fn answers_resting_on_a_batch_being_flushed_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (held, handle, card, verdicts, mut events) = held_brand(dir.path());

    let mut a = queue(purchase(&handle, &card, 20)).await;
    assert_eq!(next_event(&mut events).await, Event::CommitStarted);
    let mut retry = queue(purchase(&handle, &card, 20)).await;
    let mut signed_on = queue(sign_on(&handle)).await;
    let mut b_status = queue(status(&handle, 1)).await;
    assert_eq!(
        next_event(&mut events).await,
        Event::RecordRead(PROVISIONED),
        "batch B is applied while A is held"
    );
    assert!(held.inner.record(1, PROVISIONED + 1).unwrap().is_none());
    assert!(still_waiting(&mut a).await);
    assert!(
        still_waiting(&mut retry).await,
        "retry answered before A is durable"
    );
    assert!(
        still_waiting(&mut signed_on).await,
        "sign-on answered before A is durable"
    );
    assert!(still_waiting(&mut b_status).await);

    verdicts.send(true).unwrap();
    let a = a.await.expect("A approved").receipt.unwrap();
    assert!(held.inner.record(1, a.seq).unwrap().is_some());
    let retry = retry.await.expect("retry answered");
    assert!(retry.replayed);
    let receipt = retry.receipt.unwrap();
    assert_eq!((receipt.seq, receipt.hash), (a.seq, a.hash));
    let ok = signed_on.await.expect("writer alive").expect("signed on");
    assert_eq!(ok.last_txn_id, 20);
    let s = b_status.await.expect("status");
    assert_eq!((s.state(), s.seq), (pb::TxnState::Committed, PROVISIONED));
    assert_eq!(events.try_recv().ok(), None, "B wrote nothing");
}

/// Writes a small ledger to `dir` and returns (records, head hash).
fn small_ledger(dir: &std::path::Path) -> (u64, [u8; 32]) {
    let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(dir).unwrap());
    let (mut ledger, card) = provision(store);
    for txn in 2..40 {
        let op = Op::Purchase(pb::Purchase {
            card: card.clone(),
            amount_minor: 100,
            allow_partial: false,
            ..Default::default()
        });
        ledger
            .submit_now(sub(&terminal_key(), Principal::Terminal(1), txn, op))
            .unwrap()
            .unwrap();
    }
    (ledger.state.seq, ledger.state.head_hash)
}

fn recover(dir: &std::path::Path) -> anyhow::Result<(u64, [u8; 32])> {
    let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(dir)?);
    let l = BrandLedger::recover(store, server_key(), 1)?;
    Ok((l.state.seq, l.state.head_hash))
}

/// Rewrites the logged commit holding record `seq` (as a disk or an
/// attacker with the data directory would, checksums made anew). `f` gets
/// the stored run holding the record and the record's index in it; `None`
/// from `f` removes the whole commit.
fn tamper(dir: &std::path::Path, seq: u64, f: impl FnOnce(&mut StoredBatch, usize) -> Option<()>) {
    let mut commits = cardd::storage::rewrite::read_commits(dir, 1).unwrap();
    let c = commits
        .iter()
        .position(|runs| runs.last().unwrap().last_seq >= seq)
        .expect("a commit holds the record");
    let run = commits[c].iter_mut().find(|r| r.last_seq >= seq).unwrap();
    let index = usize::try_from(seq - run.first_seq).unwrap();
    if f(run, index).is_none() {
        commits.remove(c);
    }
    cardd::storage::rewrite::write_commits(dir, 1, &commits).unwrap();
}

#[test]
fn a_flipped_byte_in_a_record_is_detected_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (records, _) = small_ledger(dir.path());
    assert!(recover(dir.path()).is_ok());
    tamper(dir.path(), 20, |b, i| {
        b.records[i][30] ^= 0x04;
        Some(())
    });
    let err = format!("{:#}", recover(dir.path()).unwrap_err());
    assert!(
        err.contains("brand 1") && err.contains("record 2"),
        "message names brand and record: {err}"
    );
    assert!(records > 20);
}

#[test]
fn a_missing_record_and_a_forged_checkpoint_are_detected_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    small_ledger(dir.path());
    // Each record of the small ledger is its own commit.
    tamper(dir.path(), 7, |b, _| {
        assert_eq!(b.records.len(), 1);
        None
    });
    let err = format!("{:#}", recover(dir.path()).unwrap_err());
    assert!(err.contains("record 7 is missing"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (records, _) = small_ledger(dir.path());
    tamper(dir.path(), records, |b, _| {
        let mut c = pb::Checkpoint::decode(b.checkpoint.as_slice()).unwrap();
        c.time_ms += 1;
        b.checkpoint = c.encode_to_vec();
        Some(())
    });
    let err = format!("{:#}", recover(dir.path()).unwrap_err());
    assert!(err.contains("bad server signature"), "{err}");
}

/// Bytes flipped anywhere in the data directory's files: start-up either refuses with
/// an error or recovers exactly the ledger that was written. It never
/// serves a different ledger silently.
#[test]
fn flipped_bytes_in_the_database_files_never_serve_a_different_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let expected = small_ledger(dir.path());
    // The log, the sled index, the high-water marks and the server key.
    let mut files: Vec<std::path::PathBuf> = walk(dir.path());
    files.sort();
    let mut refused = 0;
    let mut intact = 0;
    for file in &files {
        let original = std::fs::read(file).unwrap();
        if original.is_empty() {
            continue;
        }
        for k in 0..16u64 {
            let offset = (original.len() as u64 * (2 * k + 1) / 32) as usize;
            let mut bytes = original.clone();
            bytes[offset] ^= 0x20;
            std::fs::write(file, &bytes).unwrap();
            match std::panic::catch_unwind(|| recover(dir.path())) {
                Ok(Ok(state)) => {
                    assert_eq!(
                        state,
                        expected,
                        "{} byte {offset}: a different ledger was recovered",
                        file.display()
                    );
                    intact += 1;
                }
                Ok(Err(_)) | Err(_) => refused += 1,
            }
            std::fs::write(file, &original).unwrap();
        }
    }
    assert_eq!(recover(dir.path()).unwrap(), expected);
    println!("{refused} corruptions refused, {intact} landed in unused bytes");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
