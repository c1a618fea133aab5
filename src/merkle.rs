//! The RFC 9162 Merkle tree head of a brand's chain, kept incrementally.
//!
//! The frontier holds the roots of the perfect subtrees that make up the
//! tree, largest first (at most 64 of them), so appending a leaf and
//! computing the root are O(log n) without rereading the log.
use crate::crypto::{node_hash, sha256};

/// The compact frontier of an append-only Merkle tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

    /// True if the frontier has one subtree root per set bit of its size,
    /// as every frontier built by `push` has (checked on frontiers read
    /// back from a snapshot).
    pub fn well_formed(&self) -> bool {
        self.nodes.len() == self.size.count_ones() as usize
    }

    /// Appends a leaf given its leaf hash (SHA-256(0x00 || data)) and
    /// calls `completed(level, index, hash)` for every perfect subtree this
    /// completes (the leaf itself at level 0, then each merge), which is
    /// what storage keeps to answer proofs.
    pub fn push_with(&mut self, leaf: [u8; 32], mut completed: impl FnMut(u8, u64, [u8; 32])) {
        let index = self.size;
        let mut node = leaf;
        completed(0, index, node);
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as `node`: merge them, like a binary carry.
        let mut size = self.size;
        let mut level = 0u8;
        while size & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("frontier holds one node per set bit");
            node = node_hash(&left, &node);
            size >>= 1;
            level += 1;
            completed(level, index >> level, node);
        }
        self.nodes.push(node);
        self.size += 1;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    /// Appends a leaf.
    pub fn push(&mut self, leaf: [u8; 32]) {
        self.push_with(leaf, |_, _, _| {});
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

/// Why a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf is not in the tree.
    #[error("leaf {leaf} is not in a tree of size {size}")]
    NotInTree {
        /// The leaf's index.
        leaf: u64,
        /// The tree's size.
        size: u64,
    },
    /// The sizes do not satisfy 0 < old <= new.
    #[error("no consistency proof from size {old} to {new}")]
    Sizes {
        /// The older tree's size.
        old: u64,
        /// The newer tree's size.
        new: u64,
    },
    /// The node source failed or lacks a node; its own message.
    // A string because `NodeSource` reports one (storage's implementation
    // is the lead's storage rewrite; it can carry a typed source then).
    #[error("{0}")]
    Node(String),
}

/// Where proofs read perfect-subtree hashes: `node(level, index)` is the
/// root of leaves `[index << level, (index + 1) << level)`.
pub trait NodeSource {
    /// The stored node, or an error message if storage fails or lacks it.
    fn node(&self, level: u8, index: u64) -> Result<[u8; 32], String>;
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves [start, end): a stored node when the range is a perfect,
/// aligned subtree, otherwise split as the RFC does. Only the right edge of
/// a tree is ever imperfect, so this reads O(log n) nodes.
pub fn subtree_hash(src: &impl NodeSource, start: u64, end: u64) -> Result<[u8; 32], MerkleError> {
    let n = end - start;
    if n == 0 {
        return Ok(sha256(b""));
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return src
            .node(n.trailing_zeros() as u8, start / n)
            .map_err(MerkleError::Node);
    }
    let k = split(n);
    Ok(node_hash(
        &subtree_hash(src, start, start + k)?,
        &subtree_hash(src, start + k, end)?,
    ))
}

/// RFC 9162 2.1.3.1: the inclusion proof of leaf `m` in the tree of the
/// first `n` leaves.
pub fn inclusion_proof(
    src: &impl NodeSource,
    m: u64,
    n: u64,
) -> Result<Vec<[u8; 32]>, MerkleError> {
    if m >= n {
        return Err(MerkleError::NotInTree { leaf: m, size: n });
    }
    let mut path = Vec::new();
    let (mut start, mut end, mut m) = (0u64, n, m);
    // Walk down from the root; siblings are collected root-first, and the
    // proof lists them leaf-first.
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            path.push(subtree_hash(src, start + k, end)?);
            end = start + k;
        } else {
            path.push(subtree_hash(src, start, start + k)?);
            start += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 2.1.3.2: checks that `leaf` is leaf `m` of the tree of size `n`
/// whose root is `root`. Every element of the proof is used; a proof of the
/// wrong length fails.
pub fn verify_inclusion(
    leaf: &[u8; 32],
    m: u64,
    n: u64,
    path: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if m >= n {
        return false;
    }
    let (mut f_n, mut s_n) = (m, n - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// RFC 9162 2.1.4.1: the consistency proof between the trees of the first
/// `m` and the first `n` leaves (0 < m <= n).
pub fn consistency_proof(
    src: &impl NodeSource,
    m: u64,
    n: u64,
) -> Result<Vec<[u8; 32]>, MerkleError> {
    if m == 0 || m > n {
        return Err(MerkleError::Sizes { old: m, new: n });
    }
    let mut proof = Vec::new();
    subproof(src, m, 0, n, true, &mut proof)?;
    Ok(proof)
}

/// SUBPROOF(m, D[start:end], b) with m relative to `start`.
fn subproof(
    src: &impl NodeSource,
    m: u64,
    start: u64,
    end: u64,
    b: bool,
    out: &mut Vec<[u8; 32]>,
) -> Result<(), MerkleError> {
    let n = end - start;
    if m == n {
        if !b {
            out.push(subtree_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, start + k, b, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 2.1.4.2: checks that the tree of size `n` with root `new_root`
/// extends the tree of size `m` with root `old_root`.
pub fn verify_consistency(
    m: u64,
    n: u64,
    old_root: &[u8; 32],
    new_root: &[u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<[u8; 32]> = Vec::with_capacity(proof.len() + 1);
    if m.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (m - 1, n - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *old_root && sr == *new_root && s_n == 0
}

/// Every perfect-subtree node of a tree, in memory (for tests, the auditor's
/// replay of an export, and small trees).
#[derive(Debug, Default, Clone)]
pub struct MemoryNodes {
    levels: Vec<Vec<[u8; 32]>>,
}

impl MemoryNodes {
    /// Records a completed node (as given by [`Frontier::push_with`]).
    pub fn add(&mut self, level: u8, index: u64, hash: [u8; 32]) {
        let level = usize::from(level);
        if self.levels.len() <= level {
            self.levels.resize(level + 1, Vec::new());
        }
        debug_assert_eq!(self.levels[level].len() as u64, index);
        self.levels[level].push(hash);
    }
}

/// A whole tree in memory: its head and every perfect-subtree node, so it
/// answers proofs (the auditor's copy of an export, tests).
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    frontier: Frontier,
    nodes: MemoryNodes,
}

impl MemoryTree {
    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: [u8; 32]) {
        let nodes = &mut self.nodes;
        self.frontier
            .push_with(leaf, |level, index, hash| nodes.add(level, index, hash));
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The tree head.
    pub fn root(&self) -> [u8; 32] {
        self.frontier.root()
    }
}

impl NodeSource for MemoryTree {
    fn node(&self, level: u8, index: u64) -> Result<[u8; 32], String> {
        self.nodes.node(level, index)
    }
}

impl NodeSource for MemoryNodes {
    fn node(&self, level: u8, index: u64) -> Result<[u8; 32], String> {
        self.levels
            .get(usize::from(level))
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or_else(|| format!("no node at level {level} index {index}"))
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

    fn tree(n: u32) -> (MemoryTree, Vec<[u8; 32]>) {
        let mut tree = MemoryTree::default();
        let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for leaf in &leaves {
            tree.push(*leaf);
        }
        (tree, leaves)
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_and_size() {
        let (nodes, leaves) = tree(40);
        for n in 1..=40u64 {
            let root = mth(&leaves[..n as usize]);
            for m in 0..n {
                let path = inclusion_proof(&nodes, m, n).unwrap();
                assert!(
                    verify_inclusion(&leaves[m as usize], m, n, &path, &root),
                    "m={m} n={n}"
                );
                // Every element matters (CVE-2022-36111 class of bugs).
                for i in 0..path.len() {
                    let mut bad = path.clone();
                    bad[i][0] ^= 1;
                    assert!(!verify_inclusion(&leaves[m as usize], m, n, &bad, &root));
                }
                let mut longer = path.clone();
                longer.push([0; 32]);
                assert!(!verify_inclusion(&leaves[m as usize], m, n, &longer, &root));
                if !path.is_empty() {
                    assert!(!verify_inclusion(
                        &leaves[m as usize],
                        m,
                        n,
                        &path[..path.len() - 1],
                        &root
                    ));
                }
                assert!(
                    !verify_inclusion(&leaves[m as usize], (m + 1) % n.max(2), n, &path, &root)
                        || n == 1
                        || path.is_empty()
                );
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_for_every_pair_of_sizes() {
        let (nodes, leaves) = tree(40);
        for n in 1..=40u64 {
            let new_root = mth(&leaves[..n as usize]);
            for m in 1..=n {
                let old_root = mth(&leaves[..m as usize]);
                let proof = consistency_proof(&nodes, m, n).unwrap();
                assert!(
                    verify_consistency(m, n, &old_root, &new_root, &proof),
                    "m={m} n={n}"
                );
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][31] ^= 1;
                    assert!(
                        !verify_consistency(m, n, &old_root, &new_root, &bad),
                        "m={m} n={n} i={i}"
                    );
                }
                // A forked old tree (one leaf differs) is not extended.
                let mut forked = leaves[..m as usize].to_vec();
                forked[0][0] ^= 1;
                assert!(!verify_consistency(m, n, &mth(&forked), &new_root, &proof));
            }
        }
    }

    #[test]
    fn subtree_hash_matches_definition() {
        let (nodes, leaves) = tree(37);
        assert_eq!(subtree_hash(&nodes, 0, 37).unwrap(), nodes.root());
        assert_eq!(subtree_hash(&nodes, 5, 19).unwrap(), mth(&leaves[5..19]));
    }
}
