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

/// Decodes a stored checkpoint and checks its signature.
pub fn decode_verified(bytes: &[u8], server_key: &VerifyingKey) -> Result<Checkpoint, String> {
    let c = Checkpoint::decode(bytes).map_err(|e| format!("checkpoint does not decode: {e}"))?;
    if c.head_hash.len() != 32 || c.root_hash.len() != 32 {
        return Err("checkpoint hashes are not 32 bytes".into());
    }
    if !verify_strict(server_key, &signed_message(&c), &c.signature) {
        return Err(format!(
            "checkpoint at tree size {} has a bad server signature",
            c.tree_size
        ));
    }
    Ok(c)
}

/// Checks that a verified checkpoint describes `state` exactly.
pub fn matches(c: &Checkpoint, state: &BrandState) -> Result<(), String> {
    if c.brand_id != state.brand_id {
        return Err(format!(
            "checkpoint names brand {}, chain is brand {}",
            c.brand_id, state.brand_id
        ));
    }
    if c.tree_size != state.seq {
        return Err(format!(
            "checkpoint covers {} records, chain has {}",
            c.tree_size, state.seq
        ));
    }
    if c.head_hash != state.head_hash || c.root_hash != state.merkle.root() {
        return Err(format!(
            "checkpoint at tree size {} does not match the records' hashes",
            c.tree_size
        ));
    }
    Ok(())
}
