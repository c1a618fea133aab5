//! Consistency proofs from stored Merkle nodes: one function for the
//! daemon's answer to `GetConsistencyProof` and for `cardd backup --data`,
//! which reads a stopped daemon's store directly.
use prost::Message;

use crate::merkle::MerkleError;
use crate::pb;
use crate::storage::{LogStore, StorageError, StoredNodes};

/// Why no proof could be built.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// The brand has no checkpoint yet.
    #[error("no checkpoint yet")]
    NoCheckpoint,
    /// The newest stored checkpoint does not decode.
    #[error("the newest checkpoint is corrupt")]
    Corrupt(#[source] prost::DecodeError),
    /// The sizes asked for do not fit the chain.
    #[error("sizes must satisfy 0 < old <= new <= {newest} (asked {old} and {new})")]
    Sizes {
        /// The older size asked for.
        old: u64,
        /// The newer size asked for (after 0 was read as the newest).
        new: u64,
        /// The newest checkpoint's tree size.
        newest: u64,
    },
    /// Reading storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored node is missing or unreadable.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// The RFC 9162 consistency proof of `brand`'s chain from tree size
/// `old_size` to `new_size` (0: the newest checkpoint's size), with that
/// checkpoint when `new_size` is its size.
pub fn consistency_from_store(
    store: &dyn LogStore,
    brand: u32,
    old_size: u64,
    new_size: u64,
) -> Result<pb::ConsistencyProof, ProveError> {
    let last = store
        .last_checkpoint(brand)?
        .ok_or(ProveError::NoCheckpoint)?;
    let last = pb::Checkpoint::decode(last.as_slice()).map_err(ProveError::Corrupt)?;
    let new_size = if new_size == 0 {
        last.tree_size
    } else {
        new_size
    };
    if old_size == 0 || old_size > new_size || new_size > last.tree_size {
        return Err(ProveError::Sizes {
            old: old_size,
            new: new_size,
            newest: last.tree_size,
        });
    }
    let path = crate::merkle::consistency_proof(&StoredNodes { store, brand }, old_size, new_size)?;
    Ok(pb::ConsistencyProof {
        old_size,
        new_size,
        path: path.iter().map(|h| h.to_vec()).collect(),
        new_checkpoint: (new_size == last.tree_size).then_some(last),
    })
}
