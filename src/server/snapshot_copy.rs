//! A second copy of a brand's state, kept only to write its snapshots, so
//! that the applier never pauses for one (issue 17 item 5).
//!
//! The copy lives on its own thread at nice 10. Its queue is bounded
//! (`COPY_QUEUE_BATCHES`): a copy that falls that far behind (a machine
//! kept busy for long) is dropped, logged, and snapshots wait for a
//! restart, rather than memory growing without end. It starts from
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

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::ledger::{final_snapshot_pays, replay_next, CopySeed};
use crate::snapshot;
use crate::state::{BrandState, Written};

/// Durable batches the copy may have waiting before it is given up.
/// Under load a batch holds ~100 records: at 30,000 purchases a second this
/// is over 10 s of falling behind (a seed at 10M records takes ~4 s), and
/// at most a few hundred MB waiting.
pub const COPY_QUEUE_BATCHES: usize = 4_096;

/// The copy's nice value: below tills and the commit path, yet with a
/// share of a busy machine that keeps up with replay (SCHED_IDLE or nice
/// 19 could be starved until the queue overflows).
const COPY_NICE: i32 = 10;

/// The handle of a brand's snapshot copy, held by its committer.
pub(super) struct SnapshotCopy {
    brand: u32,
    batches: SyncSender<Arc<Vec<Written>>>,
    thread: JoinHandle<()>,
}

impl SnapshotCopy {
    /// Starts the copy's thread from `seed` (see [`CopySeed`]).
    pub(super) fn start(seed: CopySeed) -> std::io::Result<Self> {
        let (batches, receiver) = std::sync::mpsc::sync_channel(COPY_QUEUE_BATCHES);
        let brand = seed.brand;
        let thread = std::thread::Builder::new()
            .name(format!("snapshots-{}", seed.brand))
            .spawn(move || run(seed, receiver))?;
        Ok(SnapshotCopy {
            brand,
            batches,
            thread,
        })
    }

    /// Hands the copy a batch just made durable, never waiting. False once
    /// the copy has stopped or fallen `COPY_QUEUE_BATCHES` behind (logged):
    /// the caller drops it, and snapshots wait for a restart.
    pub(super) fn follow(&self, written: &Arc<Vec<Written>>) -> bool {
        match self.batches.try_send(written.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::error!(
                    brand = self.brand,
                    behind = COPY_QUEUE_BATCHES,
                    "the snapshot copy fell behind and was stopped; no snapshots until a restart"
                );
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
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
    super::audit::lower_priority(COPY_NICE);
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
    // Derived once: a public key from a private one is a scalar product.
    let server_pub = seed.server_key.verifying_key().to_bytes();
    for batch in batches.iter() {
        if !follow(&mut state, &batch, brand, &server_pub) {
            return;
        }
        if state.seq - last >= seed.every {
            last = state.seq;
            store(&seed, &state);
        }
    }
    if final_snapshot_pays(state.seq - last, seed.every) {
        store(&seed, &state);
    }
}

/// Replays `batch` onto the copy; false (logged) if a record does not come
/// out as the applier wrote it: the copy stops rather than snapshot a
/// state that is not the brand's.
fn follow(state: &mut BrandState, batch: &[Written], brand: u32, server_pub: &[u8; 32]) -> bool {
    let done = state.seq;
    for w in batch.iter().filter(|w| w.record.seq > done) {
        let seq = state.seq + 1;
        if let Err(e) = replay_next(state, seq, &w.bytes, server_pub) {
            tracing::error!(
                brand,
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
