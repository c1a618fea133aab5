//! Reading a brand's stream after the local chain's end: the standby's
//! loop ([`follow_brand`]) and the catch-up of a node that starts with a
//! local log behind its stream ([`catch_up`]). Every commit read is checked
//! as the auditor checks an export and committed to the local log
//! ([`BrandLedger::follow_batch`]); nothing is taken on trust from NATS.
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::nats::brand_stream;
use super::{subject, Follower, Nats, ReplicaError, Run};
use crate::ledger::BrandLedger;
use crate::storage::{LogStore, StoredBatch};

/// Where a brand's stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainEnd {
    /// The stream sequence of its newest message (0: empty): what the next
    /// append must name (fencing).
    pub stream_seq: u64,
    /// The last record of its newest complete commit (0: none). Runs after
    /// it without a checkpoint are a commit its writer never finished:
    /// never acknowledged, replaced by the next writer's records.
    pub record_seq: u64,
    /// The hash of that record (`crypto::leaf_hash`, as the ledger's
    /// `head_hash`; zeros for none): with `record_seq`, what a node compares
    /// with its local log before it serves the brand (records are
    /// hash-linked, so equal heads mean equal chains).
    pub head_hash: [u8; 32],
}

fn stream_err(
    brand: u32,
    what: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ReplicaError {
    ReplicaError::Stream {
        brand,
        what,
        source: Box::new(e),
    }
}

/// The stream's newest message, if any.
async fn newest(stream: &stream::Stream, brand: u32) -> Result<Option<Run>, ReplicaError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream
        .get_last_raw_message_by_subject(&subject(brand))
        .await
    {
        Ok(m) => Run::decode(brand, m.sequence, Some(&m.headers), &m.payload).map(Some),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(stream_err(brand, "reading its stream's newest message", e)),
    }
}

/// Message `seq` of the brand's stream. Every caller asks for a message
/// at or below one it has seen (the newest, or a commit's end), and the
/// request reaches the stream's leader (`get_raw_message`), so "no message
/// found" is no lag: the message was deleted, and no retry brings it back
/// ([`ReplicaError::Missing`], not a [`ReplicaError::Stream`] to retry).
async fn message(stream: &stream::Stream, brand: u32, seq: u64) -> Result<Run, ReplicaError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let m = match stream.get_raw_message(seq).await {
        Ok(m) => m,
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
            return Err(ReplicaError::Missing {
                brand,
                stream_seq: seq,
            })
        }
        Err(e) => return Err(stream_err(brand, "reading a message of its stream", e)),
    };
    Run::decode(brand, seq, Some(&m.headers), &m.payload)
}

/// Where `brand`'s stream ends (walking back over an unfinished commit).
pub async fn chain_end(stream: &stream::Stream, brand: u32) -> Result<ChainEnd, ReplicaError> {
    let none = |stream_seq| ChainEnd {
        stream_seq,
        record_seq: 0,
        head_hash: [0; 32],
    };
    let Some(mut run) = newest(stream, brand).await? else {
        return Ok(none(0));
    };
    let stream_seq = run.stream_seq;
    while run.batch.checkpoint.is_empty() {
        if run.stream_seq <= 1 {
            return Ok(none(stream_seq));
        }
        run = message(stream, brand, run.stream_seq - 1).await?;
    }
    // A run with a checkpoint holds at least one record (`Run::decode`).
    let head = run
        .batch
        .records
        .last()
        .map(|r| crate::crypto::leaf_hash(r));
    Ok(ChainEnd {
        stream_seq,
        record_seq: run.batch.last_seq,
        head_hash: head.unwrap_or([0; 32]),
    })
}

/// The stream sequence to read from to get every record after
/// `local_seq`: the first message holding one (walking back from the end:
/// a follower is near it), else the one after the newest.
async fn read_from(
    stream: &stream::Stream,
    brand: u32,
    local_seq: u64,
) -> Result<u64, ReplicaError> {
    let Some(newest) = newest(stream, brand).await? else {
        return Ok(1);
    };
    let mut run = newest.clone();
    // Back over fences and runs after `local_seq` to the run holding
    // `local_seq + 1` (or the start).
    while (run.is_fence() || run.batch.first_seq > local_seq + 1) && run.stream_seq > 1 {
        run = message(stream, brand, run.stream_seq - 1).await?;
    }
    if !run.is_fence() && run.batch.last_seq <= local_seq {
        // Nothing after `local_seq` below the newest message.
        return Ok(run.stream_seq + 1);
    }
    Ok(run.stream_seq)
}

impl Follower {
    /// A follower of `ledger`'s brand, at the local chain's end.
    pub fn new(ledger: BrandLedger) -> Self {
        Follower {
            ledger,
            pending: Vec::new(),
            stream_seq: 0,
        }
    }

    /// Takes the next message of the stream: a run already in the local
    /// log is passed once found the same bytes there, an unfinished commit
    /// waits for its last run, a finished one is checked and committed to
    /// `disk`.
    pub fn take(&mut self, disk: &dyn LogStore, run: Run) -> Result<(), ReplicaError> {
        let brand = self.ledger.brand_id();
        let local = self.ledger.state.seq;
        self.stream_seq = run.stream_seq;
        if run.is_fence() {
            // A new writer: a commit its predecessor left unfinished is
            // never finished.
            self.pending.clear();
            return Ok(());
        }
        let b = run.batch;
        if b.last_seq <= local {
            return same_as_stored(disk, brand, run.stream_seq, &b);
        }
        let next = self.pending.last().map_or(local, |p| p.last_seq) + 1;
        if b.first_seq != next {
            if b.first_seq != local + 1 {
                return Err(ReplicaError::Diverged {
                    brand,
                    what: format!(
                        "message {} holds records {}..={} but the next record is {next}",
                        run.stream_seq, b.first_seq, b.last_seq
                    ),
                });
            }
            // A writer died mid-commit; the next one wrote these records.
            self.pending.clear();
        }
        if b.checkpoint.is_empty() {
            self.pending.push(b);
            return Ok(());
        }
        let runs: Vec<StoredBatch> = std::mem::take(&mut self.pending);
        let records: Vec<(u64, &[u8])> = runs
            .iter()
            .chain(std::iter::once(&b))
            .flat_map(|r| {
                (r.first_seq..)
                    .zip(r.records.iter())
                    .map(|(seq, bytes)| (seq, bytes.as_slice()))
            })
            .collect();
        self.ledger.follow_batch(disk, &records, &b.checkpoint)?;
        Ok(())
    }
}

/// Checks a stream message whose records the local log already holds
/// (`run`, at `stream_seq`): it never reaches [`BrandLedger::follow_batch`],
/// so without this a stream that is another chain at those places would
/// pass unseen, and the follower would go on after a record the stream
/// does not hold.
fn same_as_stored(
    disk: &dyn LogStore,
    brand: u32,
    stream_seq: u64,
    run: &StoredBatch,
) -> Result<(), ReplicaError> {
    // One scan, not a point read per record (each reads its whole frame).
    let mut stored = disk.scan(brand, run.first_seq);
    for (seq, bytes) in (run.first_seq..).zip(&run.records) {
        let held = stored.next().transpose()?;
        if held.as_ref().map(|(s, b)| (*s, b)) != Some((seq, bytes)) {
            return Err(ReplicaError::Diverged {
                brand,
                what: format!(
                    "message {stream_seq} holds another record {seq} than this node's local log"
                ),
            });
        }
    }
    Ok(())
}

/// Brings `follower`'s local log up to the end of its stream (reading each
/// message once, by sequence): before a node serves a brand. Returns the
/// end it reached (what a fence must name).
pub fn catch_up(
    nats: &Nats,
    disk: &dyn LogStore,
    follower: &mut Follower,
) -> Result<ChainEnd, ReplicaError> {
    let brand = follower.ledger.brand_id();
    let before = follower.ledger.state.seq;
    let (stream, start, end) = super::patiently(|| {
        let js = nats.jetstream();
        nats.run(async move {
            let stream = brand_stream(&js, brand).await?;
            let start = read_from(&stream, brand, before).await?;
            let end = chain_end(&stream, brand).await?;
            Ok::<_, ReplicaError>((stream, start, end))
        })?
    })?;
    for seq in start..=end.stream_seq {
        let run = super::patiently(|| {
            let s = stream.clone();
            nats.run(async move { message(&s, brand, seq).await })?
        })?;
        follower.take(disk, run)?;
    }
    let caught = follower.ledger.state.seq - before;
    if caught > 0 {
        tracing::info!(
            brand,
            caught,
            stream_seq = end.stream_seq,
            "caught up from the replicated log"
        );
    }
    Ok(end)
}

/// What the reader of a stream hands its follower.
enum Read {
    /// A message, and whether none followed it in the stream when it was
    /// delivered.
    Run(Run, bool),
    /// The stream held nothing after the local chain when the reader
    /// (re)started.
    AtEnd,
}

/// Follows `brand`'s stream until `stop` is cancelled or an error: an
/// ordered consumer on the connection's runtime reads from the first
/// message after the local chain, and the calling thread checks and
/// commits each commit, then shows `committed` the state it reached.
/// `at_end` is told, after each message taken (and when the reader finds
/// nothing to read), whether the local log has reached the stream's end
/// as the reader saw it: a take-over before that would read the rest
/// itself, where the caller may be waiting on it.
/// The standby's loop for one brand; an error stops following it.
pub fn follow_brand(
    nats: &Nats,
    disk: &dyn LogStore,
    mut follower: Follower,
    stop: CancellationToken,
    committed: &dyn Fn(&crate::state::BrandState),
    at_end: &dyn Fn(bool),
) -> Result<Follower, ReplicaError> {
    let brand = follower.ledger.brand_id();
    let local = follower.ledger.state.seq;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Read, ReplicaError>>(256);
    let js = nats.jetstream();
    nats.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            read = read_patiently(js, brand, local, &tx) => {
                if let Err(e) = read {
                    let _ = tx.send(Err(e)).await;
                }
            }
        }
    });
    // Ends when the reader does (stopped, or the stream ended with an error
    // sent first).
    while let Some(read) = rx.blocking_recv() {
        // A message was the newest when it was read, which may be long
        // before it is taken: only with nothing read after it is the
        // local log at the end.
        let Read::Run(run, newest) = read? else {
            at_end(rx.is_empty());
            continue;
        };
        let before = follower.ledger.state.seq;
        follower.take(disk, run)?;
        if follower.ledger.state.seq != before {
            committed(&follower.ledger.state);
        }
        at_end(newest && rx.is_empty());
    }
    Ok(follower)
}

/// [`read_stream`], started again after a NATS failure (a stream without
/// a leader for a few seconds after the loss of a node) from the end of
/// the last complete commit sent; what is not a cardd run ends it.
async fn read_patiently(
    js: async_nats::jetstream::Context,
    brand: u32,
    mut local: u64,
    tx: &tokio::sync::mpsc::Sender<Result<Read, ReplicaError>>,
) -> Result<(), ReplicaError> {
    loop {
        match read_stream(js.clone(), brand, &mut local, tx).await {
            Ok(true) => return Ok(()), // the follower stopped
            Ok(false) => {}            // the consumer ended: open it again
            Err(ReplicaError::Stream { what, source, .. }) => {
                let error = crate::error::causes(source.as_ref());
                tracing::warn!(brand, what, error, "following: NATS failed; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends every message of the brand's stream from the first one after
/// record `local` to `tx`, as they come, each saying whether it was the
/// newest ([`Read::AtEnd`] first if there is none); `local` follows the
/// last complete commit sent. True once the follower has stopped (`tx`
/// closed), false if the consumer ended.
async fn read_stream(
    js: async_nats::jetstream::Context,
    brand: u32,
    local: &mut u64,
    tx: &tokio::sync::mpsc::Sender<Result<Read, ReplicaError>>,
) -> Result<bool, ReplicaError> {
    let stream = brand_stream(&js, brand).await?;
    let start_sequence = read_from(&stream, brand, *local).await?;
    let following = |e: &dyn std::fmt::Display| ReplicaError::Stream {
        brand,
        what: "following its stream",
        source: e.to_string().into(),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject(brand),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ..Default::default()
        })
        .await
        .map_err(|e| following(&e))?;
    if consumer.cached_info().num_pending == 0 && tx.send(Ok(Read::AtEnd)).await.is_err() {
        return Ok(true);
    }
    let mut messages = consumer.messages().await.map_err(|e| following(&e))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| following(&e))?;
        let info = m.info().map_err(|e| following(&e))?;
        let (seq, newest) = (info.stream_sequence, info.pending == 0);
        let run = Run::decode(brand, seq, m.headers.as_ref(), &m.payload)?;
        let ends_commit = (!run.batch.checkpoint.is_empty()).then_some(run.batch.last_seq);
        if tx.send(Ok(Read::Run(run, newest))).await.is_err() {
            return Ok(true);
        }
        if let Some(last) = ends_commit {
            *local = (*local).max(last);
        }
    }
    Ok(tx.is_closed())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::DiskStore;
    use crate::testing::{self, BRAND};

    /// A follower of a provisioned brand, its local log, and the run the
    /// stream would carry for the local log's last commit.
    fn a_follower(dir: &std::path::Path) -> (Follower, Arc<dyn LogStore>, Run) {
        let disk: Arc<dyn LogStore> = Arc::new(DiskStore::open(dir).unwrap());
        let (ledger, _) = testing::provision(disk.clone(), "s", 10_000);
        let seq = ledger.state.seq;
        let run = run_of(disk.as_ref(), seq, seq);
        (Follower::new(ledger), disk, run)
    }

    /// The run the stream would carry for the local log's records
    /// `first..=last`.
    fn run_of(disk: &dyn LogStore, first: u64, last: u64) -> Run {
        let batch = StoredBatch {
            first_seq: first,
            last_seq: last,
            checkpoint: disk.last_checkpoint(BRAND).unwrap().unwrap(),
            nodes: Vec::new(),
            records: (first..=last)
                .map(|seq| disk.record(BRAND, seq).unwrap().unwrap())
                .collect(),
        };
        Run {
            stream_seq: 7,
            batch,
        }
    }

    /// A run of many records, from the middle of the local log's commits
    /// to its end, is compared record by record: the same bytes pass, and
    /// one record other than the local one, not the first, is named.
    #[test]
    fn a_long_run_is_compared_record_by_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut follower, disk, _) = a_follower(dir.path());
        let end = follower.ledger.state.seq;
        assert!(end >= 4, "a few records to compare");
        follower
            .take(disk.as_ref(), run_of(disk.as_ref(), 2, end))
            .unwrap();
        let mut run = run_of(disk.as_ref(), 2, end);
        *run.batch.records[2].last_mut().expect("a byte") ^= 1;
        match follower.take(disk.as_ref(), run) {
            Err(ReplicaError::Diverged { what, .. }) => {
                assert!(what.contains("record 4 "), "{what}")
            }
            other => panic!("expected a diverged stream, got {other:?}"),
        }
    }

    /// A stream message holding a record the local log holds too is the
    /// same bytes (the one chain, read again), and changes nothing.
    #[test]
    fn a_run_the_local_log_already_holds_byte_for_byte_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut follower, disk, run) = a_follower(dir.path());
        let state = follower.ledger.state.clone();
        follower.take(disk.as_ref(), run).unwrap();
        assert_eq!(follower.ledger.state, state);
        assert_eq!(follower.stream_seq, 7);
    }

    /// Another record where the local log holds one is another chain:
    /// the follower stops (named), it does not pass over it.
    #[test]
    fn a_run_holding_another_record_than_the_local_log_is_a_diverged_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (mut follower, disk, mut run) = a_follower(dir.path());
        let seq = run.batch.last_seq;
        let last = run.batch.records[0].last_mut().expect("a byte");
        *last ^= 1;
        match follower.take(disk.as_ref(), run) {
            Err(ReplicaError::Diverged { brand, what }) => {
                assert_eq!(brand, BRAND);
                assert!(what.contains(&format!("record {seq}")), "{what}");
            }
            other => panic!("expected a diverged stream, got {other:?}"),
        }
    }
}
