//! Signed checkpoints: the server's statement over a brand's chain after a
//! commit (tree size, last record hash, Merkle root, time).
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use prost::Message;

use crate::crypto::{verify_strict, DOMAIN_CHECKPOINT};
use crate::pb::Checkpoint;
use crate::state::BrandState;

/// The exact bytes the server signs for `c` (see the .proto for the layout).
pub fn signed_message(c: &Checkpoint) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_CHECKPOINT.len() + 4 + 8 + 32 + 32 + 8);
    m.extend_from_slice(DOMAIN_CHECKPOINT);
    m.extend_from_slice(&c.brand_id.to_be_bytes());
    m.extend_from_slice(&c.tree_size.to_be_bytes());
    m.extend_from_slice(&c.head_hash);
    m.extend_from_slice(&c.root_hash);
    m.extend_from_slice(&c.time_ms.to_be_bytes());
    m
}

/// A signed checkpoint of `state` as it is now.
pub fn sign(state: &BrandState, time_ms: i64, key: &SigningKey) -> Checkpoint {
    let mut c = Checkpoint {
        brand_id: state.brand_id,
        tree_size: state.seq,
        head_hash: state.head_hash.to_vec(),
        root_hash: state.merkle.root().to_vec(),
        time_ms,
        signature: vec![],
    };
    c.signature = key.sign(&signed_message(&c)).to_bytes().to_vec();
    c
}

/// Why a checkpoint is refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The stored bytes are not a `Checkpoint`.
    #[error("checkpoint does not decode")]
    Decode(#[source] prost::DecodeError),
    /// A hash field is not 32 bytes long.
    #[error("checkpoint hashes are not 32 bytes")]
    HashLength,
    /// The server's signature does not verify.
    #[error("checkpoint at tree size {tree_size} has a bad server signature")]
    BadSignature {
        /// The size the checkpoint claims.
        tree_size: u64,
    },
    /// The checkpoint is for another brand than the chain.
    #[error("checkpoint names brand {checkpoint}, chain is brand {chain}")]
    OtherBrand {
        /// The checkpoint's brand.
        checkpoint: u32,
        /// The chain's brand.
        chain: u32,
    },
    /// The checkpoint covers another number of records than the chain has.
    #[error("checkpoint covers {checkpoint} records, chain has {chain}")]
    Size {
        /// The checkpoint's tree size.
        checkpoint: u64,
        /// The chain's length.
        chain: u64,
    },
    /// The checkpoint's head or root hash differs from the chain's.
    #[error("checkpoint at tree size {tree_size} does not match the records' hashes")]
    Hashes {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
}

/// The one checkpoint check: the server's signature over `c` and, when
/// `state` is given, that `c` describes that state exactly. Every reader
/// of a checkpoint (recovery, the auditor's verify, proofs) goes through
/// here or [`decode_verified`].
pub fn verify(
    c: &Checkpoint,
    server_key: &VerifyingKey,
    state: Option<&BrandState>,
) -> Result<(), CheckpointError> {
    if !verify_strict(server_key, &signed_message(c), &c.signature) {
        return Err(CheckpointError::BadSignature {
            tree_size: c.tree_size,
        });
    }
    match state {
        Some(state) => matches(c, state),
        None => Ok(()),
    }
}

/// Decodes a stored checkpoint, checks its hash lengths and its signature
/// (see [`verify`]; match it against a state with [`matches`]).
pub fn decode_verified(
    bytes: &[u8],
    server_key: &VerifyingKey,
) -> Result<Checkpoint, CheckpointError> {
    let c = Checkpoint::decode(bytes).map_err(CheckpointError::Decode)?;
    if c.head_hash.len() != 32 || c.root_hash.len() != 32 {
        return Err(CheckpointError::HashLength);
    }
    verify(&c, server_key, None)?;
    Ok(c)
}

/// Checks that a verified checkpoint describes `state` exactly.
pub fn matches(c: &Checkpoint, state: &BrandState) -> Result<(), CheckpointError> {
    if c.brand_id != state.brand_id {
        return Err(CheckpointError::OtherBrand {
            checkpoint: c.brand_id,
            chain: state.brand_id,
        });
    }
    if c.tree_size != state.seq {
        return Err(CheckpointError::Size {
            checkpoint: c.tree_size,
            chain: state.seq,
        });
    }
    if c.head_hash != state.head_hash || c.root_hash != state.merkle.root() {
        return Err(CheckpointError::Hashes {
            tree_size: c.tree_size,
        });
    }
    Ok(())
}
