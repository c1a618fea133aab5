//! Each brand's log replicated on NATS JetStream (`cardd serve --replicate`,
//! `--standby`; the design and its failure cases: docs/replication.md).
//!
//! Per brand one stream (`CARDD_BRAND_{id}`, three replicas, file storage)
//! with one subject (`cardd.brand.{id}.log`). Every commit goes onto it as
//! one or more messages, each one *run* in the storage's own stored form
//! ([`StoredBatch`] without its Merkle nodes, which a follower recomputes),
//! the last run of a commit carrying the commit's signed checkpoint. Each
//! append names the stream sequence it expects to follow (fencing: a
//! second writer is refused) and a message id derived from its bytes (a
//! retried append is not stored twice).
//!
//! - `nats`: the connection, on a small runtime of its own so that the
//!   brands' commit threads can wait for an acknowledgement;
//! - `store`: [`ReplicatedStore`], the `LogStore` that appends to the stream
//!   before the local log, so no answer leaves before both hold the batch;
//! - `follow`: reading a stream after the local chain's end, each batch
//!   checked as the auditor checks it ([`BrandLedger::follow_batch`]) and
//!   committed locally: the standby's loop and an active's catch-up.
//!
//! The single-node default never reaches this module.
use thiserror::Error;

use crate::ledger::{BrandLedger, LedgerError};
use crate::storage::StoredBatch;

pub mod follow;
pub mod lease;
mod nats;
mod store;

pub use lease::{LeaseClock, Leases};
pub use nats::{brand_stream, Nats};
pub use store::{Ends, ReplicatedStore};

/// Replicas of each brand's stream (JetStream's Raft group: a quorum of two
/// survives the loss of one NATS node).
pub const REPLICAS: usize = 3;
/// The header carrying a run's first record's sequence number (the stored
/// run encoding names only its last).
pub const FIRST_SEQ_HEADER: &str = "Cardd-First-Seq";
/// The header that marks a fence: a message with no records that a node
/// taking a brand over appends first, so that an append still in flight
/// from the brand's previous writer (which names an older stream sequence)
/// is refused.
pub const FENCE_HEADER: &str = "Cardd-Fence";
/// The prefix of every brand's stream name.
pub const STREAM_PREFIX: &str = "CARDD_BRAND_";

/// The stream of `brand`.
pub fn stream_name(brand: u32) -> String {
    format!("{STREAM_PREFIX}{brand}")
}

/// The one subject of `brand`'s stream.
pub fn subject(brand: u32) -> String {
    format!("cardd.brand.{brand}.log")
}

/// A boxed source error from the NATS client.
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Why replication failed. On the write path every one of these stops the
/// brand (fail-stop): nothing of the batch is acknowledged.
#[derive(Debug, Error)]
pub enum ReplicaError {
    /// The replication runtime could not start, or stopped.
    #[error("the replication runtime")]
    Runtime(#[source] std::io::Error),
    /// No NATS server of the list answered.
    #[error("connecting to NATS at {urls}")]
    Connect {
        /// The `--replicate` list.
        urls: String,
        /// The client's error.
        #[source]
        source: Source,
    },
    /// A JetStream request (stream create, info, message get) failed.
    #[error("brand {brand}: {what}")]
    Stream {
        /// The brand.
        brand: u32,
        /// What was being done.
        what: &'static str,
        /// The client's error.
        #[source]
        source: Source,
    },
    /// Another writer appended to the brand's stream since this node's
    /// last append: this node is no longer the brand's only writer.
    #[error(
        "brand {brand}: the append of records {first}..={last} was refused: another node has \
         appended to the brand's replicated log (this node was fenced)"
    )]
    Fenced {
        /// The brand.
        brand: u32,
        /// The run's first record.
        first: u64,
        /// The run's last record.
        last: u64,
    },
    /// This node's lease of the brand has lapsed or was lost: another node
    /// may be the brand's writer now.
    #[error("brand {brand}: this node is no longer active for the brand (its lease lapsed)")]
    NotActive {
        /// The brand.
        brand: u32,
    },
    /// An append was not acknowledged (no quorum, a timeout, a lost
    /// connection); it may or may not be stored.
    #[error("brand {brand}: the append of records {first}..={last} was not acknowledged")]
    Publish {
        /// The brand.
        brand: u32,
        /// The run's first record.
        first: u64,
        /// The run's last record.
        last: u64,
        /// The client's error.
        #[source]
        source: Source,
    },
    /// The stream and the local log are not one chain.
    #[error("brand {brand}: the replicated log and this data directory disagree: {what}")]
    Diverged {
        /// The brand.
        brand: u32,
        /// How.
        what: String,
    },
    /// A take-over read the stream, and seeded or fenced it, this many
    /// times and found it moved on each time (another writer still
    /// appending).
    #[error("brand {brand}: its stream kept moving through {rounds} rounds of taking it over")]
    Unsettled {
        /// The brand.
        brand: u32,
        /// The rounds tried.
        rounds: u32,
    },
    /// A message below the stream's newest is gone (deleted by hand, `nats
    /// stream rmm`): the chain cannot be read past it, now or later.
    #[error(
        "brand {brand}: message {stream_seq} of its stream is missing (deleted below the \
         stream's newest): its chain cannot be read; restore the stream or follow from a copy"
    )]
    Missing {
        /// The brand.
        brand: u32,
        /// The missing message's stream sequence.
        stream_seq: u64,
    },
    /// A stream message is not a cardd run.
    #[error("brand {brand}: message {stream_seq} of its stream is not a cardd run: {what}")]
    Malformed {
        /// The brand.
        brand: u32,
        /// The message's stream sequence.
        stream_seq: u64,
        /// Why.
        what: String,
    },
    /// The local log could not be read (seeding a stream from it).
    #[error("reading the local log")]
    Local(#[from] crate::storage::StorageError),
    /// A followed batch does not verify or could not be committed locally.
    #[error("following the replicated log")]
    Ledger(#[from] LedgerError),
    /// The thread following the brand panicked (a defect: its log says
    /// where).
    #[error("brand {brand}: its follower thread panicked")]
    Panicked {
        /// The brand.
        brand: u32,
    },
}

/// How long a call to NATS that fails is tried again where waiting is
/// better than failing (start-up, a brand's first append, catching up): a
/// stream just created, or one electing a leader after the loss of a node,
/// answers "no responders" for a few seconds, and a cluster that lost a
/// node on a loaded 2-core machine was seen without a meta leader for over
/// 10 s (a start-up then gave up; systemd would only start it again).
pub const NATS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `attempt` again (every 250 ms) while it fails with a NATS error
/// ([`ReplicaError::Stream`]), for up to [`NATS_PATIENCE`]. Blocking: not
/// for the connection's own runtime.
pub fn patiently<T>(
    mut attempt: impl FnMut() -> Result<T, ReplicaError>,
) -> Result<T, ReplicaError> {
    let deadline = std::time::Instant::now() + NATS_PATIENCE;
    loop {
        match attempt() {
            Err(ReplicaError::Stream { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// One stream message taken apart: its stream sequence and its run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The message's sequence number in the brand's stream.
    pub stream_seq: u64,
    /// The run (records, and the checkpoint if it ends a commit).
    pub batch: StoredBatch,
}

impl Run {
    /// Decodes a message of `brand`'s stream.
    pub fn decode(
        brand: u32,
        stream_seq: u64,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Result<Run, ReplicaError> {
        let malformed = |what: String| ReplicaError::Malformed {
            brand,
            stream_seq,
            what,
        };
        if headers.is_some_and(|h| h.get(FENCE_HEADER).is_some()) {
            let batch = StoredBatch {
                first_seq: 0,
                last_seq: 0,
                checkpoint: Vec::new(),
                nodes: Vec::new(),
                records: Vec::new(),
            };
            return Ok(Run { stream_seq, batch });
        }
        let first = headers
            .and_then(|h| h.get(FIRST_SEQ_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| malformed(format!("no {FIRST_SEQ_HEADER} header")))?;
        let batch = StoredBatch::decode(first, payload).map_err(|e| malformed(e.to_string()))?;
        if batch.records.is_empty() {
            return Err(malformed("a run with no record".into()));
        }
        Ok(Run { stream_seq, batch })
    }

    /// A fence (no records): a new writer started here.
    pub fn is_fence(&self) -> bool {
        self.batch.records.is_empty()
    }
}

/// The ledger a follower advances and the run of a commit not yet complete
/// (a commit too big for one message spans several).
pub struct Follower {
    /// The brand's ledger (its state is the local log's end).
    pub ledger: BrandLedger,
    pending: Vec<StoredBatch>,
    /// The stream sequence of the newest message taken.
    pub stream_seq: u64,
}
