//! Durable storage behind a narrow interface: append a brand's records and
//! checkpoint atomically and durably, read records back. sled is the
//! embedded default; a replicated log can later sit behind the same trait.
//!
//! Layout (sled): one tree per brand, `brand/NNNNN`, holding a commit as
//! runs of about 4 KiB of records, `B` + first seq (u64 BE) ->
//! [`StoredBatch`]: the run's records, the interior Merkle nodes they
//! completed and, on the commit's last run, its checkpoint. One sled batch
//! per commit means a commit lands whole or not at all, and group commit
//! pays sled's per-key cost once per run instead of about three times per
//! record. A record, a node (stored with the record that completed it) or a
//! checkpoint is found with one range lookup.
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

/// Key tag of a stored run of records: `B` + first seq (u64 BE) -> the
/// encoded [`StoredBatch`].
const BATCH: u8 = b'B';
/// A commit is stored as runs of about this many record bytes (a run holds
/// at least one record). sled 0.34 writes any log item over a quarter of a
/// segment (128 KiB by default) to a separate blob file that its flush
/// never fsyncs, and a rewritten leaf page holds up to 17 items: runs of
/// 4 KiB keep every page far below that, so a flushed commit is on disk.
const RUN_BYTES: usize = 4 * 1024;
/// Key tag of the first layout (one key per record, node and checkpoint),
/// which this version does not read.
const OLD_LAYOUT_RECORD: u8 = b'L';
/// First byte of an encoded batch: its layout version.
const BATCH_VERSION: u8 = 1;

fn key(tag: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

fn tree_name(brand: u32) -> String {
    format!("brand/{brand:05}")
}

/// The sled key of the stored run whose first record is `first_seq`.
pub fn batch_key(first_seq: u64) -> [u8; 9] {
    key(BATCH, first_seq)
}

/// One run of a commit as stored: records consecutive from `first_seq`,
/// the interior Merkle nodes those records completed, and, on the run that
/// ends a commit, the commit's checkpoint (empty on the others).
///
/// Encoding (integers little-endian unless said): version byte (1); u64
/// seq of the run's last record (the tree size after it); u32 length +
/// checkpoint bytes; u32 count + that many (u8 level, u64 index, 32-byte
/// hash) nodes; u32 count + that many (u32 length + record bytes). Leaf
/// hashes (level 0) are not stored: they are recomputed from the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last record (the tree size after this run).
    pub last_seq: u64,
    /// The encoded checkpoint if this run ends a commit, else empty.
    pub checkpoint: Vec<u8>,
    /// Interior Merkle nodes (level >= 1) this run's records completed.
    pub nodes: Vec<(u8, u64, [u8; 32])>,
    /// Record bytes, in seq order.
    pub records: Vec<Vec<u8>>,
}

impl StoredBatch {
    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        encode_batch(
            self.last_seq,
            &self.checkpoint,
            &self.nodes,
            self.records.iter().map(|r| r.as_slice()),
        )
    }

    /// Decodes a stored batch whose key names `first_seq`.
    pub fn decode(first_seq: u64, bytes: &[u8]) -> Result<Self> {
        let view = BatchView::parse(first_seq, bytes)?;
        Ok(StoredBatch {
            first_seq,
            last_seq: view.last_seq,
            checkpoint: view.checkpoint.to_vec(),
            nodes: view.nodes().collect(),
            records: view
                .records()
                .map(|r| r.map(|(_, bytes)| bytes.to_vec()))
                .collect::<Result<Vec<_>>>()?,
        })
    }
}

fn encode_batch<'a>(
    last_seq: u64,
    checkpoint: &[u8],
    nodes: &[(u8, u64, [u8; 32])],
    records: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).expect("batch parts are bounded far below 4 GiB");
    let record_bytes: usize = records.clone().map(|r| 4 + r.len()).sum();
    let mut out =
        Vec::with_capacity(1 + 8 + 4 + checkpoint.len() + 4 + nodes.len() * 41 + 4 + record_bytes);
    out.push(BATCH_VERSION);
    out.extend_from_slice(&last_seq.to_le_bytes());
    out.extend_from_slice(&len32(checkpoint.len()).to_le_bytes());
    out.extend_from_slice(checkpoint);
    out.extend_from_slice(&len32(nodes.len()).to_le_bytes());
    for (level, index, hash) in nodes {
        out.push(*level);
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(hash);
    }
    out.extend_from_slice(&len32(records.len()).to_le_bytes());
    for r in records {
        out.extend_from_slice(&len32(r.len()).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// A stored batch read in place: every length is checked against the
/// bytes before use, so a damaged value is a `Corrupt` error, not a panic.
struct BatchView<'a> {
    first_seq: u64,
    last_seq: u64,
    checkpoint: &'a [u8],
    nodes: &'a [u8],
    records: &'a [u8],
}

/// A cursor over untrusted bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    first_seq: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(StorageError::Corrupt(format!(
                "stored batch at record {} is truncated",
                self.first_seq
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// Bytes per stored interior node: level, index, hash.
const NODE_BYTES: usize = 1 + 8 + 32;

impl<'a> BatchView<'a> {
    fn parse(first_seq: u64, bytes: &'a [u8]) -> Result<Self> {
        let corrupt = |what: &str| {
            StorageError::Corrupt(format!("stored batch at record {first_seq}: {what}"))
        };
        let mut c = Cursor { bytes, first_seq };
        if c.take(1)? != [BATCH_VERSION] {
            return Err(corrupt("unknown layout version"));
        }
        let last_seq = c.u64()?;
        let cp_len = c.u32()?;
        let checkpoint = c.take(cp_len)?;
        let node_count = c.u32()?;
        let nodes = c.take(
            node_count
                .checked_mul(NODE_BYTES)
                .ok_or_else(|| corrupt("node count"))?,
        )?;
        let record_count = c.u32()? as u64;
        // The last seq must leave room to count past it (no u64::MAX).
        if record_count == 0
            || last_seq == u64::MAX
            || first_seq.checked_add(record_count - 1) != Some(last_seq)
        {
            return Err(corrupt("record count does not match its key and last seq"));
        }
        Ok(BatchView {
            first_seq,
            last_seq,
            checkpoint,
            nodes,
            records: c.bytes,
        })
    }

    fn nodes(&self) -> impl Iterator<Item = (u8, u64, [u8; 32])> + 'a {
        self.nodes.chunks_exact(NODE_BYTES).map(|n| {
            (
                n[0],
                u64::from_le_bytes(n[1..9].try_into().expect("8 bytes")),
                n[9..].try_into().expect("32 bytes"),
            )
        })
    }

    /// (seq, bytes) of each record; a damaged tail yields one error.
    fn records(&self) -> impl Iterator<Item = Result<(u64, &'a [u8])>> + 'a {
        let mut c = Cursor {
            bytes: self.records,
            first_seq: self.first_seq,
        };
        let mut seq = self.first_seq;
        // `parse` refused a last seq of u64::MAX.
        let end = self.last_seq + 1;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || seq == end {
                if !failed && !c.bytes.is_empty() {
                    failed = true;
                    return Some(Err(StorageError::Corrupt(format!(
                        "stored batch at record {}: bytes after its last record",
                        c.first_seq
                    ))));
                }
                return None;
            }
            let item = c.u32().and_then(|n| c.take(n)).map(|r| (seq, r));
            failed = item.is_err();
            seq += 1;
            Some(item)
        })
    }
}

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    /// Per brand written to by this process: the tree size known flushed.
    /// sled shows an insert to readers before its flush returns, so readers
    /// of checkpoints (export, proofs) must not go past this.
    durable: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

impl SledStore {
    /// Opens (or creates) the database under `dir/ledger`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir.join("ledger"))
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(crate::limits::SLED_CACHE_BYTES)
            // Every commit flushes itself; sled's own timed flush would only
            // contend with it for the log (measured as tail latency).
            .flush_every_ms(None)
            .open()?;
        for name in db.tree_names() {
            if name.starts_with(b"brand/")
                && db
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
        Ok(SledStore {
            db,
            durable: Default::default(),
        })
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

impl SledStore {
    fn durable_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u32, u64>> {
        // The map holds plain numbers; a panic elsewhere cannot leave it
        // half-updated.
        self.durable.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flushed tree size of a brand this process commits to; None if
    /// it has not (then everything stored was flushed before it opened).
    fn durable_size(&self, brand: u32) -> Option<u64> {
        self.durable_lock().get(&brand).copied()
    }

    /// The stored batch holding record `seq`, if any: the last batch key at
    /// or below it.
    fn batch_holding(tree: &sled::Tree, seq: u64) -> Result<Option<(u64, sled::IVec)>> {
        let Some(item) = tree.range(key(BATCH, 0)..=key(BATCH, seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        Ok(Some((batch_seq(&k)?, v)))
    }
}

/// The seq of the record that completed Merkle node (level, index): the
/// node covers leaves [index << level, (index + 1) << level), and leaf i is
/// record i + 1. None if that is past any seq.
fn completing_seq(level: u8, index: u64) -> Option<u64> {
    index
        .checked_add(1)?
        .checked_mul(1u64.checked_shl(u32::from(level))?)
}

fn batch_seq(k: &[u8]) -> Result<u64> {
    let seq: [u8; 8] = k
        .get(1..9)
        .filter(|_| k.len() == 9)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StorageError::Corrupt(format!("bad batch key {k:?}")))?;
    Ok(u64::from_be_bytes(seq))
}

/// The checkpoint a stored run carries, if it ends a commit.
fn run_checkpoint(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Option<(u64, Vec<u8>)>> {
    let (k, v) = item?;
    let view = BatchView::parse(batch_seq(&k)?, &v)?;
    Ok((!view.checkpoint.is_empty()).then(|| (view.last_seq, view.checkpoint.to_vec())))
}

/// Streams (seq, bytes) from stored batches, from `from_seq` on.
fn scan_batches(
    batches: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send + 'static,
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
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Err(StorageError::Corrupt("a commit without records".into()));
        };
        let consecutive = records
            .windows(2)
            .all(|w| w[0].0.checked_add(1) == Some(w[1].0));
        if !consecutive || last.0 != checkpoint.0 {
            return Err(StorageError::Corrupt(format!(
                "commit of records {}..={} with checkpoint size {} is not one consecutive run",
                first.0, last.0, checkpoint.0
            )));
        }
        // Appends only: the commit must start right after what is stored
        // (a caller bug must not overwrite durable records or leave a gap).
        let tree = self.tree(brand)?;
        let stored = match tree.range(key(BATCH, 0)..key(BATCH + 1, 0)).next_back() {
            None => 0,
            Some(item) => {
                let (k, v) = item?;
                BatchView::parse(batch_seq(&k)?, &v)?.last_seq
            }
        };
        if stored.checked_add(1) != Some(first.0) {
            return Err(StorageError::Corrupt(format!(
                "commit of records from {} does not follow the stored {stored}",
                first.0
            )));
        }
        self.durable_lock().entry(brand).or_insert(stored);
        // Leaf hashes are recomputed from the records; store only the
        // interior nodes, each with the run whose record completed it.
        let mut batch = sled::Batch::default();
        let mut start = 0;
        while start < records.len() {
            let mut end = start + 1;
            let mut bytes = records[start].1.len();
            while end < records.len() && bytes + records[end].1.len() <= RUN_BYTES {
                bytes += records[end].1.len();
                end += 1;
            }
            let run = &records[start..end];
            let (run_first, run_last) = (run[0].0, run[run.len() - 1].0);
            let run_nodes: Vec<(u8, u64, [u8; 32])> = nodes
                .iter()
                .copied()
                .filter(|(level, index, _)| {
                    *level > 0
                        && completing_seq(*level, *index)
                            .is_some_and(|s| (run_first..=run_last).contains(&s))
                })
                .collect();
            let run_checkpoint: &[u8] = if end == records.len() {
                checkpoint.1
            } else {
                &[]
            };
            batch.insert(
                &key(BATCH, run_first),
                encode_batch(
                    run_last,
                    run_checkpoint,
                    &run_nodes,
                    run.iter().map(|(_, bytes)| *bytes),
                ),
            );
            start = end;
        }
        // One sled batch: the commit's runs land together or not at all.
        tree.apply_batch(batch)?;
        self.db.flush()?;
        self.durable_lock().insert(brand, last.0);
        Ok(())
    }

    fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>> {
        let tree = self.tree(brand)?;
        let Some((first, value)) = Self::batch_holding(&tree, seq)? else {
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

    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
        let tree = match self.tree(brand) {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        // Start at the batch holding `from_seq` (or the first after it).
        let start = match Self::batch_holding(&tree, from_seq) {
            Ok(found) => found.map_or(from_seq, |(first, _)| first),
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(scan_batches(
            tree.range(key(BATCH, start)..key(BATCH + 1, 0)),
            from_seq,
        ))
    }

    fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        let Some(completed_by) = completing_seq(level, index) else {
            return Ok(None);
        };
        if level == 0 {
            return Ok(self
                .record(brand, completed_by)?
                .map(|r| crate::crypto::leaf_hash(&r)));
        }
        let tree = self.tree(brand)?;
        let Some((first, value)) = Self::batch_holding(&tree, completed_by)? else {
            return Ok(None);
        };
        let view = BatchView::parse(first, &value)?;
        if view.last_seq < completed_by {
            return Ok(None);
        }
        let found = view.nodes().find(|(l, i, _)| *l == level && *i == index);
        Ok(found.map(|(_, _, hash)| hash))
    }

    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        let tree = match self.tree(brand) {
            Ok(t) => t,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(
            tree.range(key(BATCH, 0)..key(BATCH + 1, 0))
                .filter_map(|item| run_checkpoint(item).map(|c| c.map(|(_, c)| c)).transpose()),
        )
    }

    fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>> {
        // The newest run ends the newest commit, so it holds a checkpoint,
        // unless that commit is still being flushed: then the one before.
        let durable = self.durable_size(brand);
        let tree = self.tree(brand)?;
        for item in tree.range(key(BATCH, 0)..key(BATCH + 1, 0)).rev() {
            if let Some((size, c)) = run_checkpoint(item)? {
                if durable.is_none_or(|d| size <= d) {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::leaf_hash;
    use crate::merkle::{Frontier, MemoryNodes, NodeSource};

    /// Commits `sizes` batches of made-up records with their real Merkle
    /// nodes; returns the store, the records and every node.
    fn ledger(sizes: &[u64]) -> (tempfile::TempDir, SledStore, Vec<Vec<u8>>, MemoryNodes) {
        ledger_of(sizes, |seq| {
            format!("record {seq} {}", "x".repeat(seq as usize % 7)).into_bytes()
        })
    }

    fn ledger_of(
        sizes: &[u64],
        record: impl Fn(u64) -> Vec<u8>,
    ) -> (tempfile::TempDir, SledStore, Vec<Vec<u8>>, MemoryNodes) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut frontier = Frontier::new();
        let mut all_nodes = MemoryNodes::default();
        let mut records = Vec::new();
        for &size in sizes {
            let first = records.len() as u64 + 1;
            let mut nodes = Vec::new();
            for seq in first..first + size {
                let bytes = record(seq);
                frontier.push_with(leaf_hash(&bytes), |l, i, h| {
                    nodes.push((l, i, h));
                    all_nodes.add(l, i, h);
                });
                records.push(bytes);
            }
            let batch: Vec<(u64, &[u8])> = (first..first + size)
                .map(|s| (s, records[s as usize - 1].as_slice()))
                .collect();
            let last = first + size - 1;
            let checkpoint = format!("checkpoint {last}").into_bytes();
            store
                .commit(7, &batch, &nodes, (last, &checkpoint))
                .unwrap();
        }
        (dir, store, records, all_nodes)
    }

    #[test]
    fn records_nodes_and_checkpoints_are_found_across_commits() {
        let sizes = [1, 5, 10, 1, 16];
        let (_dir, store, records, nodes) = ledger(&sizes);
        let n = records.len() as u64;
        for seq in 1..=n {
            assert_eq!(
                store.record(7, seq).unwrap().as_ref(),
                Some(&records[seq as usize - 1])
            );
        }
        assert_eq!(store.record(7, n + 1).unwrap(), None);
        assert_eq!(store.record(7, 0).unwrap(), None);
        for from in [1, 2, 6, 7, 16, n, n + 1] {
            let scanned: Vec<(u64, Vec<u8>)> = store.scan(7, from).collect::<Result<_>>().unwrap();
            let expected: Vec<(u64, Vec<u8>)> = (from..=n)
                .map(|s| (s, records[s as usize - 1].clone()))
                .collect();
            assert_eq!(scanned, expected, "scan from {from}");
        }
        for level in 0..6u8 {
            for index in 0..(n >> level) {
                assert_eq!(
                    store.node(7, level, index).unwrap(),
                    Some(nodes.node(level, index).unwrap()),
                    "node {level}/{index}"
                );
            }
            assert_eq!(
                store.node(7, level, n >> level).unwrap(),
                None,
                "incomplete node"
            );
        }
        let mut last = 0;
        let sizes_after: Vec<Vec<u8>> = sizes
            .iter()
            .map(|s| {
                last += s;
                format!("checkpoint {last}").into_bytes()
            })
            .collect();
        let checkpoints: Vec<Vec<u8>> = store.checkpoints(7).collect::<Result<_>>().unwrap();
        assert_eq!(checkpoints, sizes_after);
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            sizes_after.last().cloned()
        );
        assert_eq!(store.brands().unwrap(), vec![7]);
    }

    #[test]
    fn large_commits_are_stored_in_runs_and_never_in_unsynced_blobs() {
        // Full group commits of ~400-byte records, as a busy brand makes.
        let sizes = [2_048, 2_048, 1, 2_048];
        let (dir, store, records, nodes) =
            ledger_of(&sizes, |seq| format!("{seq:>400}").into_bytes());
        let n = records.len() as u64;
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("ledger").join("blobs"))
            .map(|d| d.collect())
            .unwrap_or_default();
        assert!(blobs.is_empty(), "sled wrote blob files: {blobs:?}");
        let runs = store.db.open_tree(tree_name(7)).unwrap().len();
        assert!(runs > 3 * 2_048 * 400 / RUN_BYTES, "only {runs} runs");
        let checkpoints: Vec<Vec<u8>> = store.checkpoints(7).collect::<Result<_>>().unwrap();
        assert_eq!(checkpoints.len(), sizes.len(), "one checkpoint per commit");
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            Some(format!("checkpoint {n}").into_bytes())
        );
        for seq in [1, 9, 10, 11, 2_048, 2_049, 4_096, 4_097, 4_098, n] {
            assert_eq!(
                store.record(7, seq).unwrap().as_ref(),
                Some(&records[seq as usize - 1])
            );
        }
        let from = 3_000;
        let scanned = store.scan(7, from).count() as u64;
        assert_eq!(scanned, n - from + 1);
        for level in 0..13u8 {
            for index in (0..(n >> level)).step_by(7) {
                assert_eq!(
                    store.node(7, level, index).unwrap(),
                    Some(nodes.node(level, index).unwrap()),
                    "node {level}/{index}"
                );
            }
        }
    }

    #[test]
    fn a_commit_must_be_one_consecutive_run_ending_at_its_checkpoint() {
        let (_dir, store, _, _) = ledger(&[2]);
        let gap = store.commit(7, &[(3, b"a"), (5, b"b")], &[], (5, b"c"));
        assert!(matches!(gap, Err(StorageError::Corrupt(_))));
        let short = store.commit(7, &[(3, b"a")], &[], (4, b"c"));
        assert!(matches!(short, Err(StorageError::Corrupt(_))));
        let empty = store.commit(7, &[], &[], (2, b"c"));
        assert!(matches!(empty, Err(StorageError::Corrupt(_))));
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            Some(b"checkpoint 2".to_vec())
        );
    }

    #[test]
    fn a_commit_must_follow_what_is_stored() {
        let (_dir, store, records, _) = ledger(&[3]);
        for first in [1, 3, 5] {
            let r = store.commit(7, &[(first, b"x")], &[], (first, b"cp"));
            assert!(
                matches!(r, Err(StorageError::Corrupt(_))),
                "commit from {first}"
            );
        }
        assert_eq!(store.record(7, 3).unwrap(), Some(records[2].clone()));
        assert_eq!(store.record(7, 5).unwrap(), None);
        assert!(store.commit(7, &[(4, b"x")], &[], (4, b"cp")).is_ok());
    }

    #[test]
    fn checkpoints_not_yet_flushed_are_not_served() {
        let (dir, store, _, _) = ledger(&[2]);
        // As a commit looks between its insert and its flush: stored, and
        // visible to sled's readers, but not yet known durable.
        let in_flight = StoredBatch {
            first_seq: 3,
            last_seq: 3,
            checkpoint: b"checkpoint 3".to_vec(),
            nodes: vec![],
            records: vec![b"r3".to_vec()],
        };
        store
            .tree(7)
            .unwrap()
            .insert(batch_key(3), in_flight.encode())
            .unwrap();
        assert_eq!(
            store.last_checkpoint(7).unwrap(),
            Some(b"checkpoint 2".to_vec())
        );
        // A process that opens the store later finds it all on disk.
        store.db.flush().unwrap();
        drop(store);
        let reopened = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.last_checkpoint(7).unwrap(),
            Some(b"checkpoint 3".to_vec())
        );
    }

    #[test]
    fn a_damaged_batch_is_a_corrupt_error_never_a_panic() {
        let batch = StoredBatch {
            first_seq: 10,
            last_seq: 12,
            checkpoint: b"cp".to_vec(),
            nodes: vec![(1, 5, [9; 32])],
            records: vec![b"ten".to_vec(), b"eleven".to_vec(), vec![]],
        };
        let bytes = batch.encode();
        assert_eq!(StoredBatch::decode(10, &bytes).unwrap(), batch);
        // Wrong key for the counts, every truncation, a trailing byte, a
        // flipped version.
        assert!(StoredBatch::decode(11, &bytes).is_err());
        for len in 0..bytes.len() {
            assert!(
                StoredBatch::decode(10, &bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StoredBatch::decode(10, &longer).is_err());
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(StoredBatch::decode(10, &version).is_err());
        // A last seq with no room to count past it.
        let end = StoredBatch {
            first_seq: u64::MAX - 2,
            last_seq: u64::MAX,
            ..batch.clone()
        };
        assert!(StoredBatch::decode(u64::MAX - 2, &end.encode()).is_err());
        // Huge announced lengths.
        for at in [9, 15] {
            let mut huge = bytes.clone();
            huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(StoredBatch::decode(10, &huge).is_err(), "length at {at}");
        }
    }

    #[test]
    fn the_first_layout_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("ledger")).unwrap();
            db.open_tree("brand/00001")
                .unwrap()
                .insert(key(OLD_LAYOUT_RECORD, 1), b"old".to_vec())
                .unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path())
            .err()
            .expect("old layout opened");
        assert!(err.to_string().contains("first storage layout"), "{err}");
    }
}
