//! `--proof`: checking the inclusion proof that comes back with a reply.
//!
//! The server answers a request that set `want_proof` with the record's
//! RFC 9162 inclusion proof in the tree of a signed checkpoint. The terminal
//! checks, trusting nothing but the server's public key:
//! - the proof is for this receipt: leaf = the receipt's record hash, at
//!   leaf index = record seq - 1;
//! - the checkpoint covers the proof's tree (same size, same brand) and
//!   carries a valid ed25519 signature by the server key;
//! - the audit path leads from the leaf to the checkpoint's root;
//! - when the record is the tree's last leaf, the checkpoint's head hash is
//!   the record's hash (the path alone cannot tell a wrong head).
//!
//! With `--json` the proof itself is printed (leaf index, tree size, path
//! and checkpoint, in hex) so that anybody can re-check the receipt.
//!
//! The server key is either pinned with `--server-key` or, failing that, the
//! key the server presented in its sign-on challenge (trust on first use,
//! which proves the record is in the ledger of *that* server only).
use cardd::crypto::parse_public_key;
use cardd::merkle::verify_inclusion;
use cardd::pb;
use serde_json::{json, Value};

/// Longest audit path accepted (a tree of 2^64 leaves has 64 levels).
const MAX_PATH: usize = 64;

/// Where the key that checkpoints must be signed by came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Given with `--server-key`.
    Pinned,
    /// Presented by the server at sign-on (trust on first use).
    SignOn,
}

impl KeySource {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Pinned => "pinned",
            KeySource::SignOn => "sign-on",
        }
    }
}

/// A proof that checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The record's leaf index (record seq - 1).
    pub leaf_index: u64,
    /// The size of the checkpoint's tree.
    pub tree_size: u64,
}

/// The outcome of checking a reply's proof, with the key it was checked
/// against.
#[derive(Debug, Clone)]
pub struct ProofCheck {
    /// The key checkpoints must be signed by.
    pub key: [u8; 32],
    /// Where that key came from.
    pub source: KeySource,
    /// The tree size the proof claimed, if a proof came back.
    pub tree_size: Option<u64>,
    /// The proof as it came back, printed with `--json` so that anybody
    /// can re-check it.
    pub proof: Option<pb::InclusionProof>,
    /// Verified, or why not.
    pub result: Result<Verified, String>,
}

impl ProofCheck {
    /// Checks `reply`'s proof for a session of `brand_id`. `pinned` is the
    /// `--server-key`; otherwise the sign-on key is trusted.
    pub fn run(
        reply: &pb::Reply,
        brand_id: u32,
        pinned: Option<[u8; 32]>,
        sign_on_key: [u8; 32],
    ) -> Self {
        let (key, source) = match pinned {
            Some(k) => (k, KeySource::Pinned),
            None => (sign_on_key, KeySource::SignOn),
        };
        let mut result = verify(reply, brand_id, &key);
        if let Err(e) = &mut result {
            if key != sign_on_key {
                e.push_str(&format!(
                    " (the pinned server key {} is not the key {} this server presented at sign-on)",
                    key_prefix(&key),
                    key_prefix(&sign_on_key)
                ));
            }
        }
        ProofCheck {
            key,
            source,
            tree_size: reply.proof.as_ref().map(|p| p.tree_size),
            proof: reply.proof.clone(),
            result,
        }
    }

    /// True if the proof verified.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The line printed on the receipt.
    pub fn receipt_line(&self) -> String {
        match &self.result {
            Ok(v) => format!(
                "proof: verified (leaf {} of tree {}, checkpoint signed by {}, {})",
                v.leaf_index,
                v.tree_size,
                key_prefix(&self.key),
                match self.source {
                    KeySource::Pinned => "the server key pinned with --server-key",
                    KeySource::SignOn =>
                        "the key the server presented at sign-on: trust on first use; pin it with --server-key",
                }
            ),
            Err(e) => format!("proof: FAILED ({e})"),
        }
    }

    /// Adds `proof_*` fields to a reply's JSON object.
    pub fn add_to_json(&self, v: &mut Value) {
        let Value::Object(m) = v else { return };
        let mut add = |k: &str, val: Value| {
            m.insert(k.to_string(), val);
        };
        add("proof_verified", json!(self.ok()));
        add("proof_tree_size", json!(self.tree_size));
        if let Some(p) = &self.proof {
            // The index the proof claims (on success, the verified one).
            add("proof_leaf_index", json!(p.leaf_index));
            let path: Vec<String> = p.path.iter().map(hex::encode).collect();
            add("proof_path", json!(path));
            add(
                "proof_checkpoint",
                p.checkpoint.as_ref().map_or(Value::Null, checkpoint_json),
            );
        }
        add("proof_server_key", json!(hex::encode(self.key)));
        add("proof_key_source", json!(self.source.as_str()));
        if let Err(e) = &self.result {
            add("proof_error", json!(e));
        }
    }
}

/// A checkpoint with its hashes and signature in hex: with the leaf index,
/// the tree size and the audit path, everything needed to re-check a
/// receipt's proof (docs/ledger-format.md, "Checkpoints").
pub fn checkpoint_json(c: &pb::Checkpoint) -> Value {
    json!({
        "brand_id": c.brand_id,
        "tree_size": c.tree_size,
        "head_hash": hex::encode(&c.head_hash),
        "root_hash": hex::encode(&c.root_hash),
        "time_ms": c.time_ms,
        "signature": hex::encode(&c.signature),
    })
}

/// The first 16 hex digits of a key, for people.
pub fn key_prefix(key: &[u8; 32]) -> String {
    format!("{}…", &hex::encode(key)[..16])
}

fn hash32(bytes: &[u8], what: &str) -> Result<[u8; 32], String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} is {} bytes, not 32", bytes.len()))
}

/// Checks the inclusion proof carried by `reply` against `server_key`.
pub fn verify(reply: &pb::Reply, brand_id: u32, server_key: &[u8; 32]) -> Result<Verified, String> {
    let receipt = reply
        .receipt
        .as_ref()
        .ok_or("the answer has no ledger record to prove")?;
    let proof = reply
        .proof
        .as_ref()
        .ok_or("the server sent no inclusion proof")?;
    let leaf = hash32(&receipt.hash, "the receipt's record hash")?;
    if receipt.seq == 0 || proof.leaf_index != receipt.seq - 1 {
        return Err(format!(
            "the proof is for leaf {}, but the receipt is record {} (leaf {})",
            proof.leaf_index,
            receipt.seq,
            receipt.seq.wrapping_sub(1)
        ));
    }
    let root = check_checkpoint(proof, brand_id, server_key)?;
    // The head is the hash of the tree's last record: when that record is
    // this one, the signed head must name it (the path alone cannot tell).
    if proof.leaf_index.checked_add(1) == Some(proof.tree_size)
        && proof.checkpoint.as_ref().map(|c| c.head_hash.as_slice()) != Some(&leaf[..])
    {
        return Err(format!(
            "record {} is the last of the signed tree, but the checkpoint's head hash is another record's",
            receipt.seq
        ));
    }
    if proof.path.len() > MAX_PATH {
        return Err(format!("the audit path has {} hashes", proof.path.len()));
    }
    let path = proof
        .path
        .iter()
        .map(|h| hash32(h, "an audit path hash"))
        .collect::<Result<Vec<_>, _>>()?;
    if !verify_inclusion(&leaf, proof.leaf_index, proof.tree_size, &path, &root) {
        return Err(format!(
            "the audit path does not lead from record {} to the root of the signed tree of {} records",
            receipt.seq, proof.tree_size
        ));
    }
    Ok(Verified {
        leaf_index: proof.leaf_index,
        tree_size: proof.tree_size,
    })
}

/// Checks that the proof's checkpoint covers its tree, is of `brand_id` and
/// is signed by `server_key`; returns the signed root.
fn check_checkpoint(
    proof: &pb::InclusionProof,
    brand_id: u32,
    server_key: &[u8; 32],
) -> Result<[u8; 32], String> {
    let ckpt = proof
        .checkpoint
        .as_ref()
        .ok_or("the proof carries no checkpoint")?;
    if ckpt.tree_size != proof.tree_size {
        return Err(format!(
            "the proof is for a tree of {} records, its checkpoint covers {}",
            proof.tree_size, ckpt.tree_size
        ));
    }
    if ckpt.brand_id != brand_id {
        return Err(format!(
            "the checkpoint is for brand {}, this terminal's brand is {brand_id}",
            ckpt.brand_id
        ));
    }
    let root = hash32(&ckpt.root_hash, "the checkpoint's root hash")?;
    hash32(&ckpt.head_hash, "the checkpoint's head hash")?;
    let key = parse_public_key(server_key).ok_or("the server key is not a valid ed25519 key")?;
    if cardd::checkpoint::verify(ckpt, &key, None).is_err() {
        return Err(format!(
            "the checkpoint of tree size {} is not signed by server key {}",
            ckpt.tree_size,
            key_prefix(server_key)
        ));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardd::checkpoint::signed_message;
    use cardd::crypto::{generate_key, leaf_hash};
    use cardd::merkle::{inclusion_proof, MemoryTree};
    use ed25519_dalek::{Signer, SigningKey};

    /// A reply for leaf `m` of a tree of `n` made-up records, with a proof
    /// against a checkpoint signed by `key`.
    fn reply(m: u64, n: u64, key: &SigningKey) -> pb::Reply {
        let mut tree = MemoryTree::default();
        let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for leaf in &leaves {
            tree.push(*leaf);
        }
        let path = inclusion_proof(&tree, m, n).unwrap();
        let mut ckpt = pb::Checkpoint {
            brand_id: 7,
            tree_size: n,
            head_hash: leaves[(n - 1) as usize].to_vec(),
            root_hash: tree.root().to_vec(),
            time_ms: 1,
            signature: vec![],
        };
        ckpt.signature = key.sign(&signed_message(&ckpt)).to_bytes().to_vec();
        pb::Reply {
            receipt: Some(pb::Receipt {
                seq: m + 1,
                hash: leaves[m as usize].to_vec(),
                ..Default::default()
            }),
            proof: Some(pb::InclusionProof {
                leaf_index: m,
                tree_size: n,
                path: path.iter().map(|h| h.to_vec()).collect(),
                checkpoint: Some(ckpt),
            }),
            ..Default::default()
        }
    }

    fn public(key: &SigningKey) -> [u8; 32] {
        key.verifying_key().to_bytes()
    }

    #[test]
    fn a_good_proof_verifies() {
        let key = generate_key();
        for (m, n) in [(0, 1), (0, 2), (1, 2), (4, 7), (6, 7), (31, 33), (32, 33)] {
            let r = reply(m, n, &key);
            assert_eq!(
                verify(&r, 7, &public(&key)),
                Ok(Verified {
                    leaf_index: m,
                    tree_size: n
                }),
                "leaf {m} of {n}"
            );
        }
    }

    #[test]
    fn tampering_is_caught() {
        let key = generate_key();
        let good = reply(4, 7, &key);
        let k = public(&key);

        // Another key.
        let other = public(&generate_key());
        let e = verify(&good, 7, &other).unwrap_err();
        assert!(e.contains("not signed"), "{e}");
        // Another brand.
        assert!(verify(&good, 8, &k).unwrap_err().contains("brand"));
        // A different record hash.
        let mut r = good.clone();
        r.receipt.as_mut().unwrap().hash[0] ^= 1;
        assert!(verify(&r, 7, &k).unwrap_err().contains("audit path"));
        // A proof for another leaf.
        let mut r = good.clone();
        r.receipt.as_mut().unwrap().seq = 3;
        assert!(verify(&r, 7, &k).unwrap_err().contains("leaf"));
        // A tampered path.
        let mut r = good.clone();
        r.proof.as_mut().unwrap().path[0][5] ^= 1;
        assert!(verify(&r, 7, &k).unwrap_err().contains("audit path"));
        // A shortened path.
        let mut r = good.clone();
        r.proof.as_mut().unwrap().path.pop();
        assert!(verify(&r, 7, &k).is_err());
        // A tree size that differs from the checkpoint's.
        let mut r = good.clone();
        r.proof.as_mut().unwrap().tree_size = 8;
        assert!(verify(&r, 7, &k).unwrap_err().contains("checkpoint covers"));
        // A re-rooted checkpoint (signature no longer matches).
        let mut r = good.clone();
        let c = r.proof.as_mut().unwrap().checkpoint.as_mut().unwrap();
        c.root_hash[0] ^= 1;
        assert!(verify(&r, 7, &k).unwrap_err().contains("not signed"));
        // No proof at all.
        let mut r = good;
        r.proof = None;
        assert!(verify(&r, 7, &k)
            .unwrap_err()
            .contains("no inclusion proof"));
    }

    #[test]
    fn the_last_leaf_must_be_the_checkpoints_head() {
        let key = generate_key();
        for (m, n) in [(0, 1), (6, 7), (32, 33)] {
            let mut r = reply(m, n, &key);
            let c = r.proof.as_mut().unwrap().checkpoint.as_mut().unwrap();
            // A validly signed checkpoint whose head is not this record.
            c.head_hash = leaf_hash(b"another record").to_vec();
            c.signature = key.sign(&signed_message(c)).to_bytes().to_vec();
            let e = verify(&r, 7, &public(&key)).unwrap_err();
            assert!(e.contains("head"), "leaf {m} of {n}: {e}");
        }
        // Not the last leaf: the head is another record, as it should be.
        assert!(verify(&reply(5, 7, &key), 7, &public(&key)).is_ok());
    }

    #[test]
    fn the_check_says_which_key() {
        let key = generate_key();
        let r = reply(2, 5, &key);
        let c = ProofCheck::run(&r, 7, None, public(&key));
        assert!(c.ok());
        assert!(c
            .receipt_line()
            .starts_with("proof: verified (leaf 2 of tree 5"));
        assert!(c.receipt_line().contains("trust on first use"));
        let mut v = json!({});
        c.add_to_json(&mut v);
        assert_eq!(v["proof_verified"], true);
        assert_eq!(v["proof_tree_size"], 5);
        assert_eq!(v["proof_key_source"], "sign-on");
        assert_eq!(v["proof_leaf_index"], 2);
        let p = r.proof.as_ref().unwrap();
        let path: Vec<String> = p.path.iter().map(hex::encode).collect();
        assert_eq!(v["proof_path"], json!(path));
        let c = p.checkpoint.as_ref().unwrap();
        assert_eq!(
            v["proof_checkpoint"]["root_hash"],
            hex::encode(&c.root_hash)
        );
        assert_eq!(
            v["proof_checkpoint"]["signature"],
            hex::encode(&c.signature)
        );

        let other = public(&generate_key());
        let c = ProofCheck::run(&r, 7, Some(other), public(&key));
        assert!(!c.ok());
        assert!(c.result.unwrap_err().contains("presented at sign-on"));
    }
}
