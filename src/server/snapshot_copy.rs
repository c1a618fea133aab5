//! A second copy of a brand's state, kept only to write its snapshots, so
//! that the applier never pauses for one (issue 17 item 5).
//!
//! The copy lives on its own thread, which runs only on a core nothing
//! else wants (SCHED_IDLE). It starts from
//! what is stored (the newest snapshot and the records after it, as a
//! restart does) and then follows every batch the committer has made
//! durable, replaying its records through the state machine exactly as an
//! auditor's replay does (`ledger::replay_next`): each record must come
//! out byte for byte as stored, or the copy stops and says so. When
//! `every` records have passed since the last snapshot it encodes and
//! writes one from its own state, while the applier goes on. Being behind
//! the committer only delays a snapshot; it never holds a commit.
//!
//! The price is memory: the brand's state twice. It is chosen with
//! `--snapshot-by copy`; the default, `fork`, keeps one copy and pauses
//! the applier for a fork at each snapshot (`snapshot_child.rs`). Under
//! load on two cores the copy's p99 during snapshots was no better than the
//! fork's (the encoding's memory traffic and the file's write-back remain),
//! which is why it is not the default.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::ledger::{replay_next, CopySeed};
use crate::snapshot;
use crate::state::{BrandState, Written};

/// The handle of a brand's snapshot copy, held by its committer.
pub(super) struct SnapshotCopy {
    batches: Sender<Arc<Vec<Written>>>,
    thread: JoinHandle<()>,
}

impl SnapshotCopy {
    /// Starts the copy's thread from `seed` (see [`CopySeed`]).
    pub(super) fn start(seed: CopySeed) -> std::io::Result<Self> {
        let (batches, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("snapshots-{}", seed.brand))
            .spawn(move || run(seed, receiver))?;
        Ok(SnapshotCopy { batches, thread })
    }

    /// Hands the copy a batch just made durable. False once the copy has
    /// stopped (logged when it did): snapshots then wait for a restart.
    pub(super) fn follow(&self, written: &Arc<Vec<Written>>) -> bool {
        self.batches.send(written.clone()).is_ok()
    }

    /// At shutdown: lets the copy take in what it was given, write a final
    /// snapshot where that spares the next start a long replay, and end.
    pub(super) fn finish(self) {
        drop(self.batches);
        let _ = self.thread.join();
    }
}

/// The copy's thread: recover, then follow until the committer is gone.
fn run(seed: CopySeed, batches: Receiver<Arc<Vec<Written>>>) {
    run_when_idle();
    let brand = seed.brand;
    let started = std::time::Instant::now();
    let mut state = match seed.recover() {
        Ok(state) => state,
        Err(e) => {
            let error = crate::error::causes(&e);
            tracing::error!(
                brand,
                error,
                "the snapshot copy could not start; no snapshots until a restart"
            );
            return;
        }
    };
    let ready_ms = started.elapsed().as_millis() as u64;
    tracing::info!(brand, seq = state.seq, ready_ms, "snapshot copy ready");
    let mut last = seed.snapshot_seq;
    for batch in batches.iter() {
        if !follow(&mut state, &batch, &seed) {
            return;
        }
        if state.seq - last >= seed.every {
            last = state.seq;
            store(&seed, &state);
        }
    }
    let since = state.seq - last;
    if since > 0 && since >= seed.every / 10 {
        store(&seed, &state);
    }
}

/// Replays `batch` onto the copy; false (logged) if a record does not come
/// out as the applier wrote it: the copy stops rather than snapshot a
/// state that is not the brand's.
fn follow(state: &mut BrandState, batch: &[Written], seed: &CopySeed) -> bool {
    let server_pub = seed.server_key.verifying_key().to_bytes();
    let done = state.seq;
    for w in batch.iter().filter(|w| w.record.seq > done) {
        let seq = state.seq + 1;
        if let Err(e) = replay_next(state, seq, &w.bytes, &server_pub) {
            tracing::error!(
                brand = seed.brand,
                error = %e,
                "the snapshot copy differs from the brand's state; no snapshots until a restart"
            );
            return false;
        }
    }
    true
}

/// Encodes and writes a snapshot of the copy; a failure costs only a
/// longer restart.
fn store(seed: &CopySeed, state: &BrandState) {
    let started = std::time::Instant::now();
    match snapshot::write(&seed.dir, state, &seed.server_key) {
        Ok(bytes) => {
            let took = started.elapsed();
            super::metrics::get()
                .snapshot_seconds
                .observe(took.as_secs_f64());
            tracing::info!(
                brand = seed.brand,
                seq = state.seq,
                bytes,
                took_ms = took.as_millis() as u64,
                "snapshot stored by the snapshot copy"
            );
        }
        Err(e) => {
            let error = crate::error::causes(&e);
            tracing::warn!(brand = seed.brand, error, "snapshot not stored");
        }
    }
}

/// Puts the calling thread (or a forked child) under SCHED_IDLE: it runs
/// only when no other thread wants the core, and a waking till's task
/// takes the core from it at once. A nice value was not enough: with
/// `nice 10` a woken applier could still wait behind the copy's slice on
/// two cores (p99 under load 23-38 ms against ~7 ms).
pub(super) fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; param is a valid pointer for
    // the call. A refusal leaves the default policy, which still works.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}
