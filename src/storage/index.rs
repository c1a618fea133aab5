//! The sled layout of earlier versions, read once to import a data
//! directory written before the segment log (sled then held the ledger:
//! every brand's stored runs, see `batch`). Later versions kept the same
//! runs in sled as an index of the log; this one reads the log through
//! its frame tables instead (`frames`), because sled 0.34 rescans its
//! whole log on the first open after writing, so a restart grew with the
//! ledger.
//!
//! Layout: one tree per brand, `brand/NNNNN`, holding `B` + first seq (u64
//! BE) -> the encoded run.
use std::path::Path;

use super::batch::BatchView;
use super::{Result, StorageError};

/// Key tag of a stored run.
const BATCH: u8 = b'B';
/// Key tag of the first layout (one key per record, node and checkpoint),
/// which this version does not read.
const OLD_LAYOUT_RECORD: u8 = b'L';

fn key(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn tree_name(brand: u32) -> String {
    format!("brand/{brand:05}")
}

fn batch_seq(k: &[u8]) -> Result<u64> {
    let seq: [u8; 8] = k
        .get(1..9)
        .filter(|_| k.len() == 9)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("bad batch key {k:?}")))?;
    Ok(u64::from_be_bytes(seq))
}

/// A stored run: (first seq, last seq, bytes, whether it ends a commit).
pub type RunInfo = (u64, u64, Vec<u8>, bool);

/// The sled database of runs.
pub struct SledIndex {
    pub(super) db: sled::Db,
}

impl SledIndex {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(crate::limits::SLED_CACHE_BYTES)
            // The log is the durable copy: sled writes its buffers when they
            // fill (and on a clean close), never a flush per commit.
            .flush_every_ms(None)
            .open()?;
        let index = SledIndex { db };
        index.refuse_first_layout()?;
        Ok(index)
    }

    fn refuse_first_layout(&self) -> Result<()> {
        for name in self.db.tree_names() {
            if name.starts_with(b"brand/")
                && self
                    .db
                    .open_tree(&name)?
                    .scan_prefix([OLD_LAYOUT_RECORD])
                    .next()
                    .is_some()
            {
                return Err(StorageError::Corrupt(format!(
                    "{} holds the first storage layout (a key per record), which this \
                     version does not read: export it with the version that wrote it",
                    String::from_utf8_lossy(&name)
                )));
            }
        }
        Ok(())
    }

    fn tree(&self, brand: u32) -> Result<sled::Tree> {
        Ok(self.db.open_tree(tree_name(brand))?)
    }

    /// Brand ids with a tree, ascending.
    pub fn brands(&self) -> Vec<u32> {
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
        ids
    }

    /// The last stored run: (its first seq, its last seq, its bytes).
    pub fn last_run(&self, brand: u32) -> Result<Option<(u64, u64, sled::IVec)>> {
        let tree = self.tree(brand)?;
        let Some(item) = tree.range(key(BATCH, 0)..key(BATCH + 1, 0)).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        let first = batch_seq(&k)?;
        let last = BatchView::parse(first, &v)?.last_seq;
        Ok(Some((first, last, v)))
    }

    /// Every stored run, oldest first: (first seq, last seq, bytes, whether
    /// it ends a commit).
    pub fn runs(&self, brand: u32) -> Result<impl Iterator<Item = Result<RunInfo>>> {
        let tree = self.tree(brand)?;
        Ok(tree.range(key(BATCH, 0)..key(BATCH + 1, 0)).map(|item| {
            let (k, v) = item?;
            let first = batch_seq(&k)?;
            let view = BatchView::parse(first, &v)?;
            Ok((
                first,
                view.last_seq,
                v.to_vec(),
                !view.checkpoint.is_empty(),
            ))
        }))
    }

    /// Inserts one commit's runs, as the versions that kept them in sled
    /// did (the tests of the import make such a directory).
    #[cfg(test)]
    pub fn insert(&self, brand: u32, runs: &[(u64, &[u8])]) -> Result<()> {
        let tree = self.tree(brand)?;
        for (first, bytes) in runs {
            tree.insert(key(BATCH, *first), *bytes)?;
        }
        Ok(())
    }
}
