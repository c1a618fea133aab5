//! The sled index: every brand's stored runs (see `batch`) in a sled tree,
//! for reads by seq, by Merkle node and by checkpoint. It is derived state:
//! runs are inserted only after their commit is durable in the segment log,
//! sled is never flushed on the hot path, and whatever a crash or a power
//! cut takes from it is put back from the log at start-up.
//!
//! Layout: one tree per brand, `brand/NNNNN`, holding `B` + first seq (u64
//! BE) -> the encoded run.
use std::path::Path;

use super::batch::{completing_seq, BatchView};
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

type Item = sled::Result<(sled::IVec, sled::IVec)>;

/// The checkpoint a stored run carries, if it ends a commit.
fn run_checkpoint(item: Item) -> Result<Option<(u64, Vec<u8>)>> {
    let (k, v) = item?;
    let view = BatchView::parse(batch_seq(&k)?, &v)?;
    Ok((!view.checkpoint.is_empty()).then(|| (view.last_seq, view.checkpoint.to_vec())))
}

/// Streams (seq, bytes) from stored runs, from `from_seq` on.
fn scan_batches(
    batches: impl Iterator<Item = Item> + Send + 'static,
    from_seq: u64,
) -> impl Iterator<Item = Result<(u64, Vec<u8>)>> + Send {
    batches.flat_map(move |item| {
        let parsed = || -> Result<Vec<(u64, Vec<u8>)>> {
            let (k, v) = item?;
            let view = BatchView::parse(batch_seq(&k)?, &v)?;
            view.records()
                .filter(|r| r.as_ref().map_or(true, |(seq, _)| *seq >= from_seq))
                .map(|r| r.map(|(seq, bytes)| (seq, bytes.to_vec())))
                .collect()
        };
        match parsed() {
            Ok(records) => records.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    })
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

    /// Inserts one commit's runs, without flushing. Not one sled batch: a
    /// batch makes sled write and `sync_file_range` its buffer at once, on
    /// the commit path, and the log already makes a commit atomic (start-up
    /// re-inserts a commit the index holds only part of).
    pub fn insert(&self, brand: u32, runs: &[(u64, &[u8])]) -> Result<()> {
        let tree = self.tree(brand)?;
        for (first, bytes) in runs {
            tree.insert(key(BATCH, *first), *bytes)?;
        }
        Ok(())
    }

    /// Forgets a brand's runs (before rebuilding them from the log).
    pub fn clear(&self, brand: u32) -> Result<()> {
        self.tree(brand)?.clear()?;
        Ok(())
    }

    /// Writes sled's buffers out (after a rebuild, so the next start need
    /// not rebuild again).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The stored run holding record `seq`, if any: the last run key at or
    /// below it.
    fn run_holding(tree: &sled::Tree, seq: u64) -> Result<Option<(u64, sled::IVec)>> {
        let Some(item) = tree.range(key(BATCH, 0)..=key(BATCH, seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        Ok(Some((batch_seq(&k)?, v)))
    }

    /// One record's bytes.
    pub fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>> {
        let tree = self.tree(brand)?;
        let Some((first, value)) = Self::run_holding(&tree, seq)? else {
            return Ok(None);
        };
        let view = BatchView::parse(first, &value)?;
        for r in view.records() {
            let (s, bytes) = r?;
            if s == seq {
                return Ok(Some(bytes.to_vec()));
            }
        }
        Ok(None)
    }

    /// Records from `from_seq` on, in order.
    pub fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
        let tree = match self.tree(brand) {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        // Start at the run holding `from_seq` (or the first after it).
        let start = match Self::run_holding(&tree, from_seq) {
            Ok(found) => found.map_or(from_seq, |(first, _)| first),
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(scan_batches(
            tree.range(key(BATCH, start)..key(BATCH + 1, 0)),
            from_seq,
        ))
    }

    /// A stored interior Merkle node, or a leaf hash from its record.
    pub fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        let Some(completed_by) = completing_seq(level, index) else {
            return Ok(None);
        };
        if level == 0 {
            return Ok(self
                .record(brand, completed_by)?
                .map(|r| crate::crypto::leaf_hash(&r)));
        }
        let tree = self.tree(brand)?;
        let Some((first, value)) = Self::run_holding(&tree, completed_by)? else {
            return Ok(None);
        };
        let view = BatchView::parse(first, &value)?;
        if view.last_seq < completed_by {
            return Ok(None);
        }
        let found = view.nodes().find(|(l, i, _)| *l == level && *i == index);
        Ok(found.map(|(_, _, hash)| hash))
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        let tree = match self.tree(brand) {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(
            tree.range(key(BATCH, 0)..key(BATCH + 1, 0))
                .filter_map(|item| run_checkpoint(item).map(|c| c.map(|(_, c)| c)).transpose()),
        )
    }

    /// The newest checkpoint: the newest run ends the newest commit.
    pub fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>> {
        let tree = self.tree(brand)?;
        for item in tree.range(key(BATCH, 0)..key(BATCH + 1, 0)).rev() {
            if let Some((_, c)) = run_checkpoint(item)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}
