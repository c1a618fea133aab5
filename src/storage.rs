//! Durable storage behind a narrow interface: append a brand's records and
//! checkpoint atomically and durably, read records back. sled is the
//! embedded default; a replicated log can later sit behind the same trait.
//!
//! Layout (sled): one tree per brand, `brand/NNNNN`, holding
//! `L` + seq (u64 BE) -> record bytes, `C` + tree size (u64 BE) ->
//! checkpoint bytes, and `N` + level (u8) + index (u64 BE) -> the Merkle
//! node over leaves [index << level, (index + 1) << level) (what proofs
//! need, O(log n) reads each). One tree per brand means one `sled::Batch`
//! covers a commit's records, nodes and checkpoint: they land together or
//! not at all.
use std::path::Path;

use thiserror::Error;

/// A storage failure. The daemon treats any of these on the write path as
/// fatal (fail-stop): memory may be ahead of disk.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The embedded database failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Something on disk is not what cardd wrote.
    #[error("corrupt ledger: {0}")]
    Corrupt(String),
}

/// Result of a storage call.
pub type Result<T> = std::result::Result<T, StorageError>;

/// The narrow storage interface every layer above uses.
pub trait LogStore: Send + Sync + 'static {
    /// Brand ids that have a chain, ascending.
    fn brands(&self) -> Result<Vec<u32>>;
    /// Appends `records` (seq, bytes), the Merkle `nodes` they completed and
    /// the checkpoint for the new tree size in one atomic batch, then
    /// flushes: on return it is durable.
    fn commit(
        &self,
        brand: u32,
        records: &[(u64, &[u8])],
        nodes: &[(u8, u64, [u8; 32])],
        checkpoint: (u64, &[u8]),
    ) -> Result<()>;
    /// A stored Merkle node.
    fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>>;
    /// Every checkpoint, oldest first (streaming).
    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send>;
    /// One record's bytes.
    fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>>;
    /// Records from `from_seq` on, in order (streaming, not all in memory).
    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send>;
    /// The newest checkpoint's bytes.
    fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>>;
}

const RECORD: u8 = b'L';
const CHECKPOINT: u8 = b'C';
const NODE: u8 = b'N';

fn node_key(level: u8, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = NODE;
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn key(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn tree_name(brand: u32) -> String {
    format!("brand/{brand:05}")
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (or creates) the database under `dir/ledger`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir.join("ledger"))
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(crate::limits::SLED_CACHE_BYTES)
            .open()?;
        Ok(SledStore { db })
    }

    fn tree(&self, brand: u32) -> Result<sled::Tree> {
        Ok(self.db.open_tree(tree_name(brand))?)
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// Proof generation reads nodes of one brand from storage.
pub struct StoredNodes<'a> {
    /// The store.
    pub store: &'a dyn LogStore,
    /// The brand.
    pub brand: u32,
}

impl crate::merkle::NodeSource for StoredNodes<'_> {
    fn node(&self, level: u8, index: u64) -> std::result::Result<[u8; 32], String> {
        match self.store.node(self.brand, level, index) {
            Ok(Some(h)) => Ok(h),
            Ok(None) => Err(format!("Merkle node {level}/{index} missing from storage")),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl LogStore for SledStore {
    fn brands(&self) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()?
                    .strip_prefix("brand/")?
                    .parse()
                    .ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn commit(
        &self,
        brand: u32,
        records: &[(u64, &[u8])],
        nodes: &[(u8, u64, [u8; 32])],
        checkpoint: (u64, &[u8]),
    ) -> Result<()> {
        let tree = self.tree(brand)?;
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&key(RECORD, *seq), *bytes);
        }
        for (level, index, hash) in nodes {
            batch.insert(&node_key(*level, *index), hash);
        }
        batch.insert(&key(CHECKPOINT, checkpoint.0), checkpoint.1);
        tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(brand)?.get(key(RECORD, seq))?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
        let tree = match self.tree(brand) {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let iter = tree
            .range(key(RECORD, from_seq)..key(RECORD + 1, 0))
            .map(|item| {
                let (k, v) = item?;
                let seq: [u8; 8] = k
                    .get(1..9)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| StorageError::Corrupt(format!("bad record key {k:?}")))?;
                Ok((u64::from_be_bytes(seq), v.to_vec()))
            });
        Box::new(iter)
    }

    fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        let v = self.tree(brand)?.get(node_key(level, index))?;
        v.map(|v| {
            v.as_ref()
                .try_into()
                .map_err(|_| StorageError::Corrupt(format!("node {level}/{index} is not 32 bytes")))
        })
        .transpose()
    }

    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        let tree = match self.tree(brand) {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(
            tree.range(key(CHECKPOINT, 0)..key(CHECKPOINT + 1, 0))
                .map(|item| Ok(item?.1.to_vec())),
        )
    }

    fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>> {
        let tree = self.tree(brand)?;
        let last = tree
            .range(key(CHECKPOINT, 0)..key(CHECKPOINT + 1, 0))
            .next_back()
            .transpose()?;
        Ok(last.map(|(_, v)| v.to_vec()))
    }
}
