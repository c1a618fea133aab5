//! Durable storage behind a narrow interface ([`LogStore`]): append a
//! brand's records and checkpoint atomically and durably, read records
//! back. The embedded default ([`DiskStore`]) keeps each brand's commits in
//! its own append-only, checksummed segment log, fdatasynced before a
//! commit returns (the truth), read back through the sealed segments'
//! frame tables (derived: rebuilt from their segments when missing). A
//! replicated log sits behind the same trait (`crate::replica`).
//!
//! - `segment`: the log files, their frames and the torn-tail rule;
//! - `frames`: where each frame lies (frame tables, the newest in memory);
//! - `batch`: the stored form of a commit (runs of records, Merkle nodes,
//!   checkpoint);
//! - `index`: the sled layout of earlier versions, imported once;
//! - `mark`: the fsynced high-water marks checked at start-up;
//! - `disk`: the store that ties them together;
//! - `fsutil`: directory fsyncs and durable file replacement;
//! - `rewrite`: offline rewriting of a log, for tamper tests and drills.
use std::path::PathBuf;

use thiserror::Error;

mod batch;
mod disk;
mod frames;
pub mod fsutil;
mod index;
pub mod mark;
pub mod rewrite;
mod segment;

pub use batch::{StoredBatch, RUN_BYTES};
pub use disk::{DamagedLog, DiskStore};

/// A storage failure. The daemon treats any of these on the write path as
/// fatal (fail-stop): memory may be ahead of disk.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The embedded database failed.
    #[error("the sled index failed")]
    Sled(#[from] sled::Error),
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Something on disk is not what cardd wrote.
    #[error("corrupt ledger: {0}")]
    Corrupt(String),
    /// A brand's log ends before its high-water mark (or before what its
    /// index held, which only ever holds durable runs): records that were
    /// acknowledged are gone. Serving would answer retries as new requests.
    #[error(
        "brand {brand}: the ledger came back short: record {acknowledged} was acknowledged (its \
         high-water mark or index says so) but the log ends at record {stored} or holds other \
         bytes there (a lost, truncated or replaced file?); refusing to serve it: restore the \
         data directory from a backup"
    )]
    ShortLedger {
        /// The brand.
        brand: u32,
        /// The last record its log holds (or that matches the mark).
        stored: u64,
        /// The record the mark names.
        acknowledged: u64,
    },
    /// A brand's log does not open: a segment or frame table is damaged,
    /// or a record is missing.
    #[error("brand {brand}: its log is damaged")]
    BrandLog {
        /// The brand.
        brand: u32,
        /// What is wrong.
        #[source]
        source: Box<StorageError>,
    },
    /// A commit to a brand whose log was found damaged when the store
    /// opened ([`DiskStore::open_sparing`]): nothing is written to it.
    #[error(
        "brand {0}: its log was found damaged when the data directory was opened; nothing is \
         written to it until it is restored"
    )]
    DamagedBrand(u32),
    /// Another process has the data directory open.
    #[error(
        "{0}: another cardd process has this data directory open (is the daemon \
         running? offline commands need it stopped)"
    )]
    Locked(PathBuf),
    /// A replicated store could not put the commit on its replicated log
    /// (`cardd serve --replicate`): unreachable, refused (fenced by another
    /// writer) or unacknowledged. Fatal like a failed fsync: nothing of the
    /// batch is acknowledged.
    #[error("replicating brand {brand}'s commit")]
    Replication {
        /// The brand.
        brand: u32,
        /// Why (the replication layer's error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read-only command was pointed at a directory with no ledger.
    #[error("{0}: no cardd ledger here (no log/ or ledger/ directory)")]
    NoLedger(PathBuf),
}

impl StorageError {
    /// True if the bytes stored are wrong (damaged, short, a gap), as
    /// opposed to an operation that failed (I/O, a lock) and may pass.
    pub fn is_damage(&self) -> bool {
        match self {
            StorageError::Corrupt(_) | StorageError::ShortLedger { .. } => true,
            StorageError::BrandLog { source, .. } => source.is_damage(),
            _ => false,
        }
    }
}

/// Result of a storage call.
pub type Result<T> = std::result::Result<T, StorageError>;

/// The narrow storage interface every layer above uses.
pub trait LogStore: Send + Sync + 'static {
    /// Brand ids that have a chain, ascending.
    fn brands(&self) -> Result<Vec<u32>>;
    /// Appends `records` (seq, bytes), the Merkle `nodes` they completed and
    /// the checkpoint for the new tree size as one atomic commit: on return
    /// it is durable (survives a power cut).
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
    /// The checkpoints of the commits holding records after `after_size`,
    /// oldest first, and maybe some before them (the caller skips those by
    /// their tree size): an incremental export reads only the new part of
    /// the log.
    fn checkpoints_after(
        &self,
        brand: u32,
        after_size: u64,
    ) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        let _ = after_size;
        self.checkpoints(brand)
    }
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
