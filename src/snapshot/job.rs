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
    pub fn run(self) -> Result<(Chain, u64)> {
        let (brand, seq) = (self.delta.rest.brand_id, self.delta.rest.seq);
        let deadline = Instant::now() + DURABLE_PATIENCE;
        loop {
            match self.store.record(brand, seq) {
                // Its own record, not another history's at that place (a
                // writer halted while another node took the brand).
                Ok(Some(bytes))
                    if crate::crypto::leaf_hash(&bytes) == self.delta.rest.head_hash =>
                {
                    break
                }
                Ok(Some(_)) => {
                    let why = format!("record {seq} on disk is not the part's");
                    return Err(SnapshotError::Invalid(why));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    let why = format!("record {seq} did not become durable");
                    return Err(SnapshotError::Invalid(why));
                }
                Err(e) => return Err(SnapshotError::Invalid(crate::error::causes(&e))),
            }
        }
        let mut chain = self.chain;
        let size = chain.write_next(self.delta, &self.key)?;
        Ok((chain, size))
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
}

impl GenerationJob<'_> {
    /// Writes the generation (blocking: the whole state is encoded).
    pub fn write(&self) -> Result<Chain> {
        parts::write_generation_as(self.state, self.key, self.chain.clone())
    }

    /// The chain the generation starts, once someone else wrote it.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }
}
