//! The RFC 9162 Merkle tree head of a brand's chain, kept incrementally.
//!
//! The frontier holds the roots of the perfect subtrees that make up the
//! tree, largest first (at most 64 of them), so appending a leaf and
//! computing the root are O(log n) without rereading the log.
use crate::crypto::{node_hash, sha256};

/// The compact frontier of an append-only Merkle tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of perfect subtrees, largest (leftmost) first.
    nodes: Vec<[u8; 32]>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf given its leaf hash (SHA-256(0x00 || data)).
    pub fn push(&mut self, leaf: [u8; 32]) {
        let mut node = leaf;
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as `node`: merge them, like a binary carry.
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.nodes.pop().expect("frontier holds one node per set bit");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    /// The tree head: RFC 9162 MTH of all leaves; SHA-256("") when empty.
    pub fn root(&self) -> [u8; 32] {
        let mut iter = self.nodes.iter().rev();
        let Some(last) = iter.next() else {
            return sha256(b"");
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::leaf_hash;

    /// RFC 9162 section 2.1.1, written recursively as the RFC states it.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => sha256(b""),
            1 => leaves[0],
            n => {
                // The largest power of two smaller than n.
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_root_matches_recursive_definition() {
        let mut f = Frontier::new();
        let mut leaves = Vec::new();
        assert_eq!(f.root(), mth(&leaves));
        for i in 0u32..70 {
            let leaf = leaf_hash(&i.to_be_bytes());
            leaves.push(leaf);
            f.push(leaf);
            assert_eq!(f.root(), mth(&leaves), "size {}", i + 1);
        }
    }

    #[test]
    fn rfc6962_reference_vector() {
        // The 8-leaf tree of the certificate-transparency reference tests
        // (leaves "", 00, 10, 2021, 3031, 40414243, 5051525354555657,
        // 606162636465666768696a6b6c6d6e6f).
        let inputs: [&str; 8] = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let mut f = Frontier::new();
        for i in inputs {
            f.push(leaf_hash(&hex::decode(i).unwrap()));
        }
        assert_eq!(
            hex::encode(f.root()),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }
}
