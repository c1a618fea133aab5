//! No answer leaves the writer before its record is durable.
//!
//! The brand writer runs on a storage wrapper that (a) holds every commit
//! at a gate the test controls and (b) remembers the highest sequence
//! number whose commit has returned. While a commit is held, no answer may
//! arrive; every answer that arrives names a record at or below the durable
//! mark. Many requests from many tasks exercise group commit.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cardd::pb::{self, request::Op};
use cardd::server::keys::KeyIndex;
use cardd::server::writer::BrandHandle;
use cardd::state::Principal;
use cardd::storage::{self, DiskStore, LogStore};
use common::store::{sub, Commit, CommitHook, WrappedStore};

/// A commit hook that holds every commit until the test allows it.
struct Gate {
    /// Commits allowed to pass; u64::MAX = gate open.
    allowed: Mutex<u64>,
    changed: Condvar,
    /// Commits that have started (waiting or not).
    started: AtomicU64,
    /// Highest record seq whose commit returned (durable).
    durable: AtomicU64,
}

impl Gate {
    fn allow(&self, n: u64) {
        *self.allowed.lock().unwrap() = n;
        self.changed.notify_all();
    }
}

impl CommitHook for Gate {
    fn commit(&self, inner: &DiskStore, commit: Commit<'_>) -> storage::Result<()> {
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let mut allowed = self.allowed.lock().unwrap();
        while *allowed < n {
            allowed = self.changed.wait(allowed).unwrap();
        }
        drop(allowed);
        commit.apply(inner)?;
        let last = commit.records.last().map_or(0, |r| r.0);
        self.durable.fetch_max(last, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_before_its_record_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    // Storage whose commits wait for the test's permission.
    let gated = Arc::new(WrappedStore {
        inner: DiskStore::open(dir.path()).unwrap(),
        hook: Gate {
            allowed: Mutex::new(u64::MAX),
            changed: Condvar::new(),
            started: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        },
    });
    let store: Arc<dyn LogStore> = gated.clone();
    let gate = &gated.hook;
    // Provision with the gate open.
    let (ledger, card) = cardd::testing::provision(store, "Gate", 1_000_000);
    let till = cardd::testing::terminal_key();

    // Close the gate: the next commit waits.
    let started_before = gate.started.load(Ordering::SeqCst);
    gate.allow(started_before);
    let handle = BrandHandle::spawn(ledger, Arc::new(KeyIndex::default()));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    const REQUESTS: u64 = 200;
    for txn in 2..2 + REQUESTS {
        let (handle, tx, till, card) = (handle.clone(), tx.clone(), till.clone(), card.clone());
        tokio::spawn(async move {
            let s = sub(
                &till,
                Principal::Terminal(1),
                txn,
                Op::Purchase(pb::Purchase {
                    card,
                    amount_minor: 100,
                    allow_partial: false,
                    ..Default::default()
                }),
            );
            let answer = handle
                .submit(s)
                .await
                .expect("writer alive")
                .expect("purchase approved");
            let _ = tx.send(answer);
        });
    }
    drop(tx);

    // The first batch is now held at the gate: nothing may be answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate.started.load(Ordering::SeqCst) == started_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writer never committed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let early = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(
        early.is_err(),
        "an answer arrived while its commit was held: {early:?}"
    );
    assert_eq!(
        gate.durable.load(Ordering::SeqCst),
        5,
        "only the provisioning records are durable"
    );

    // Let commits through one at a time; every answer must be durable.
    let mut answered = 0;
    let mut allowed = started_before;
    while answered < REQUESTS {
        allowed += 1;
        gate.allow(allowed);
        while let Ok(Some(reply)) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            let seq = reply.receipt.expect("receipt").seq;
            let durable = gate.durable.load(Ordering::SeqCst);
            assert!(
                seq <= durable,
                "answer for record {seq} while only {durable} is durable"
            );
            answered += 1;
        }
        assert!(
            allowed < started_before + REQUESTS + 5,
            "answers missing: {answered} of {REQUESTS}"
        );
    }
    assert_eq!(gate.durable.load(Ordering::SeqCst), 5 + REQUESTS);
    // Group commit: 200 requests took far fewer commits than requests.
    let commits = gate.started.load(Ordering::SeqCst) - started_before;
    assert!(
        commits < REQUESTS,
        "{commits} commits for {REQUESTS} requests"
    );
    gate.allow(u64::MAX);
}
