//! The stored form of a commit: runs of about [`RUN_BYTES`] of records,
//! each with the interior Merkle nodes its records completed and, on the
//! run that ends a commit, the commit's checkpoint. The same run bytes go
//! into the segment log (the truth) and the sled index (rebuildable).
use super::{Result, StorageError};

/// First byte of an encoded run: its layout version.
const BATCH_VERSION: u8 = 1;
/// A commit is stored as runs of about this many record bytes (a run holds
/// at least one record). sled 0.34 writes any log item over a quarter of a
/// segment (128 KiB by default) to a separate blob file, and a rewritten
/// leaf page holds up to 17 items: runs of 4 KiB keep every sled page far
/// below that, so the index stays in sled's own log.
pub const RUN_BYTES: usize = 4 * 1024;

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

pub(super) fn encode_batch<'a>(
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
pub(super) struct BatchView<'a> {
    /// Seq of the run's first record.
    pub(super) first_seq: u64,
    /// Seq of the run's last record.
    pub(super) last_seq: u64,
    /// The commit's checkpoint if this run ends one, else empty.
    pub(super) checkpoint: &'a [u8],
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
    /// Checks the layout of `bytes`, stored under `first_seq`.
    pub(super) fn parse(first_seq: u64, bytes: &'a [u8]) -> Result<Self> {
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

    /// The stored interior nodes (level, index, hash).
    pub(super) fn nodes(&self) -> impl Iterator<Item = (u8, u64, [u8; 32])> + 'a {
        self.nodes.chunks_exact(NODE_BYTES).map(|n| {
            (
                n[0],
                u64::from_le_bytes(n[1..9].try_into().expect("8 bytes")),
                n[9..].try_into().expect("32 bytes"),
            )
        })
    }

    /// (seq, bytes) of each record; a damaged tail yields one error.
    pub(super) fn records(&self) -> impl Iterator<Item = Result<(u64, &'a [u8])>> + 'a {
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

/// The seq of the record that completed Merkle node (level, index): the
/// node covers leaves [index << level, (index + 1) << level), and leaf i is
/// record i + 1. None if that is past any seq.
pub(super) fn completing_seq(level: u8, index: u64) -> Option<u64> {
    index
        .checked_add(1)?
        .checked_mul(1u64.checked_shl(u32::from(level))?)
}

/// Splits one commit into stored runs: (first seq of the run, encoded run).
/// Leaf hashes are recomputed from the records, so only interior nodes are
/// kept, each with the run whose record completed it; the last run carries
/// the checkpoint. `records` must be non-empty and consecutive.
pub(super) fn runs(
    records: &[(u64, &[u8])],
    nodes: &[(u8, u64, [u8; 32])],
    checkpoint: &[u8],
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
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
            checkpoint
        } else {
            &[]
        };
        let encoded = encode_batch(
            run_last,
            run_checkpoint,
            &run_nodes,
            run.iter().map(|(_, bytes)| *bytes),
        );
        out.push((run_first, encoded));
        start = end;
    }
    out
}
