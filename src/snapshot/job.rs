//! A snapshot that is due, as the ledger hands it out: the next part of
//! the brand's window (small: run it on any thread), or a new generation
//! of the whole state (large: a forked child writes it, or the caller
//! while it waits).
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;

use super::parts::{self, Chain};
use super::{Result, SnapshotError};
use crate::state::delta::Delta;
use crate::state::BrandState;
use crate::storage::LogStore;

/// How long a part waits for its records to become durable before it
/// gives up (the commit path stalled or failed; the next snapshot starts a
/// new generation).
const DURABLE_PATIENCE: Duration = Duration::from_secs(30);

/// A snapshot that is due.
pub enum Work<'a> {
    /// The next part of the window (boxed: the rest of the state is
    /// inside).
    Part(Box<PartJob>),
    /// A new generation of the whole state.
    Generation(GenerationJob<'a>),
}

/// The next part: what changed since the chain's newest part.
pub struct PartJob {
    pub(crate) chain: Chain,
    pub(crate) delta: Delta,
    pub(crate) key: Arc<SigningKey>,
    pub(crate) store: Arc<dyn LogStore>,
}

impl PartJob {
    /// The sequence number the part is at.
    pub fn seq(&self) -> u64 {
        self.delta.rest.seq
    }

    /// Entities that changed since the previous part.
    pub fn changed(&self) -> usize {
        self.delta.len()
    }

    /// Waits until the part's record is durable (a window is never ahead
    /// of the log), then writes the part. Returns the chain to continue
    /// and the part's size in bytes.
    /// `give_up` ends the wait early (the brand stopped here: its record
    /// may never come, and another writer may take its window over).
    pub fn run(self, give_up: &dyn Fn() -> bool) -> Result<(Chain, u64)> {
        let rest = &self.delta.rest;
        let at = (rest.brand_id, rest.seq, &rest.head_hash);
        wait_durable(self.store.as_ref(), at, give_up)?;
        let mut chain = self.chain;
        let lock = parts::files_lock(chain.dir(), rest.brand_id);
        let _files = lock.lock().unwrap_or_else(|e| e.into_inner());
        stopped_here(give_up)?;
        let size = chain.write_next(self.delta, &self.key)?;
        Ok((chain, size))
    }
}

/// Err once the brand stopped here: checked again under the files lock,
/// right before anything is written or deleted.
fn stopped_here(give_up: &dyn Fn() -> bool) -> Result<()> {
    if give_up() {
        let why = "the brand stopped on this node".to_string();
        return Err(SnapshotError::Invalid(why));
    }
    Ok(())
}

/// Waits until record `seq` of `brand` is durable and is the one whose
/// hash is `head_hash`: a snapshot taken ahead of the log is kept only
/// once the log holds what it was taken at.
fn wait_durable(
    store: &dyn LogStore,
    (brand, seq, head_hash): (u32, u64, &[u8; 32]),
    give_up: &dyn Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + DURABLE_PATIENCE;
    loop {
        stopped_here(give_up)?;
        match store.record(brand, seq) {
            // Its own record, not another history's at that place (a
            // writer halted while another node took the brand).
            Ok(Some(bytes)) if crate::crypto::leaf_hash(&bytes) == *head_hash => return Ok(()),
            Ok(Some(_)) => {
                let why = format!("record {seq} on disk is not the snapshot's");
                return Err(SnapshotError::Invalid(why));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let why = format!("record {seq} did not become durable");
                return Err(SnapshotError::Invalid(why));
            }
            Err(e) => return Err(SnapshotError::Invalid(crate::error::causes(&e))),
        }
    }
}

/// A new generation: the whole state, borrowed from the ledger.
pub struct GenerationJob<'a> {
    /// The state to write.
    pub state: &'a BrandState,
    /// The server key that signs it.
    pub key: &'a SigningKey,
    /// The window the generation starts (its number and nonce).
    pub chain: Chain,
    /// The log the state's record must be durable in.
    pub store: Arc<dyn LogStore>,
}

impl GenerationJob<'_> {
    /// Writes the generation and settles it (blocking: the whole state is
    /// encoded, then its record awaited unless `give_up`).
    pub fn write(&self, give_up: &dyn Fn() -> bool) -> Result<Chain> {
        self.write_slices()?;
        self.settle().run(give_up)
    }

    /// Writes the generation's slices only (what a forked child does: it
    /// cannot see the log grow). The files it replaces stay until
    /// [`Settle::run`].
    pub fn write_slices(&self) -> Result<()> {
        parts::write_generation_as(self.state, self.key, self.chain.clone()).map(drop)
    }

    /// What is left once the slices are written.
    pub fn settle(&self) -> Settle {
        Settle {
            chain: self.chain.clone(),
            store: self.store.clone(),
            brand: self.state.brand_id,
            seq: self.state.seq,
            head_hash: self.state.head_hash,
        }
    }
}

/// A generation whose slices are written: it replaces the brand's older
/// snapshot files only once its record is durable. The state it was taken
/// from may be ahead of the log; a crash in between would otherwise leave
/// a generation past the log's end and nothing older to start from (a
/// full replay: minutes on a long ledger).
pub struct Settle {
    chain: Chain,
    store: Arc<dyn LogStore>,
    brand: u32,
    seq: u64,
    head_hash: [u8; 32],
}

impl Settle {
    /// Waits for the generation's record (unless `give_up`: then nothing
    /// is deleted), then deletes what it replaces. Returns the chain the
    /// next parts continue.
    pub fn run(self, give_up: &dyn Fn() -> bool) -> Result<Chain> {
        let at = (self.brand, self.seq, &self.head_hash);
        wait_durable(self.store.as_ref(), at, give_up)?;
        let lock = parts::files_lock(self.chain.dir(), self.brand);
        let _files = lock.lock().unwrap_or_else(|e| e.into_inner());
        stopped_here(give_up)?;
        self.chain.own_generation()?;
        if let Err(e) = self.chain.replace_older() {
            // The generation stands; what it replaces goes with the next.
            let (brand, error) = (self.brand, crate::error::causes(&e));
            tracing::warn!(brand, error, "older snapshot files not deleted");
        }
        Ok(self.chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_for_a_record_ends_at_once_when_the_brand_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::DiskStore::open(dir.path()).unwrap();
        let started = Instant::now();
        let waited = wait_durable(&store, (1, 5, &[0; 32]), &|| true);
        assert!(matches!(waited, Err(SnapshotError::Invalid(why)) if why.contains("stopped")));
        assert!(started.elapsed() < DURABLE_PATIENCE / 10);
    }

    #[test]
    fn generation_numbers_are_not_handed_out_twice_before_their_files_exist() {
        let dir = tempfile::tempdir().unwrap();
        let first = parts::next_generation(dir.path(), 3).unwrap();
        assert_eq!(parts::next_generation(dir.path(), 3).unwrap(), first + 1);
        assert_eq!(
            parts::next_generation(dir.path(), 4).unwrap(),
            1,
            "per brand"
        );
    }
}
