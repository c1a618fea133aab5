//! [`ReplicatedStore`]: a brand's commit goes onto its stream, then into the
//! local log. Both before `commit` returns, so the writer's committer (which
//! releases answers only after `commit`) acknowledges nothing that is not
//! on a quorum of NATS nodes and on the local disk.
//!
//! The stream first: a batch the stream refused (fenced) or never took is
//! then not in the local log either, and a local log is never ahead of its
//! stream. A batch the stream took whose local write failed stops the
//! brand like any failed commit; a restart catches the local log up from
//! the stream (`follow::catch_up`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use sha2::{Digest, Sha256};

use super::nats::brand_stream;
use super::{follow, subject, LeaseClock, Nats, ReplicaError, FIRST_SEQ_HEADER};
use crate::storage::{LogStore, Result, StorageError, StoredBatch};

/// How long one append that fails other than by fencing is resent (each
/// attempt waits up to the context's 5 s for its acknowledgement): a
/// stream's leader election after the loss of a NATS node takes a few
/// seconds, and the brand should wait for it rather than stop.
const APPEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The local log plus each brand's stream.
pub struct ReplicatedStore {
    disk: Arc<dyn LogStore>,
    nats: Arc<Nats>,
    /// Per brand: the stream sequence of its newest message, which the next
    /// append must find there (fencing). Read from the stream at a brand's
    /// first append; dropped on any failure, so it is read again.
    tails: Mutex<HashMap<u32, u64>>,
    /// The leases this node holds (None: appends are guarded by fencing
    /// alone, as in the catch-up at start).
    clock: Option<Arc<LeaseClock>>,
}

impl ReplicatedStore {
    /// `disk` (the local log) replicated through `nats`.
    pub fn new(disk: Arc<dyn LogStore>, nats: Arc<Nats>) -> Self {
        ReplicatedStore {
            disk,
            nats,
            tails: Mutex::new(HashMap::new()),
            clock: None,
        }
    }

    /// Appends only while `clock` says this node's lease of the brand is
    /// good.
    pub fn with_leases(mut self, clock: Arc<LeaseClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Appends a fence to `brand`'s stream, fenced on `end` (where this
    /// node caught the stream up to): from then on only this node's appends
    /// are taken. `local` is the local log's end (record seq, head hash):
    /// the fence is refused ([`ReplicaError::Diverged`]) unless the stream
    /// ends exactly there, since serving from a log the stream does not end
    /// with would put the next record after the wrong one on one of them.
    /// Fails with [`ReplicaError::Fenced`] if another append came first
    /// (catch up again, then fence again).
    pub fn fence(
        &self,
        brand: u32,
        end: follow::ChainEnd,
        local: (u64, [u8; 32]),
    ) -> std::result::Result<(), ReplicaError> {
        self.tails.lock().expect("tails lock").remove(&brand);
        if (end.record_seq, end.head_hash) != local {
            return Err(ReplicaError::Diverged {
                brand,
                what: format!(
                    "its stream's chain ends at record {} but this node's local log at record {} \
                     (not fencing: the stream must end where the local log does)",
                    end.record_seq, local.0
                ),
            });
        }
        let message = PublishMessage::build()
            .header(super::FENCE_HEADER, "1")
            .expected_last_subject_sequence(end.stream_seq);
        let seq = self.publish(brand, message, (0, 0))?;
        self.tails.lock().expect("tails lock").insert(brand, seq);
        Ok(())
    }

    /// How `brand`'s stream, ending at `end`, stands to the local log,
    /// ending at `local` (record seq, head hash): the same chain to the
    /// same end, or a strict prefix of the local log (same record bytes up
    /// to the stream's end: a seeding that stopped part-way). Anything else
    /// is [`ReplicaError::Diverged`]: the node must not serve the brand.
    pub fn compare_ends(
        &self,
        brand: u32,
        end: follow::ChainEnd,
        local: (u64, [u8; 32]),
    ) -> std::result::Result<Ends, ReplicaError> {
        let diverged = |what: String| ReplicaError::Diverged { brand, what };
        if (end.record_seq, end.head_hash) == local {
            return Ok(Ends::Same);
        }
        if end.record_seq >= local.0 {
            return Err(diverged(format!(
                "its stream's chain ends at record {} with another record than this node's \
                 local log, which ends at {}",
                end.record_seq, local.0
            )));
        }
        if end.record_seq == 0 {
            return Ok(Ends::StreamBehind);
        }
        let here = self.disk.record(brand, end.record_seq)?;
        if here.as_deref().map(crate::crypto::leaf_hash) != Some(end.head_hash) {
            return Err(diverged(format!(
                "its stream's record {} is not this node's record {} (the local log, to {}, \
                 holds another chain)",
                end.record_seq, end.record_seq, local.0
            )));
        }
        Ok(Ends::StreamBehind)
    }

    /// The local log alone (what a follower commits to).
    pub fn disk(&self) -> &Arc<dyn LogStore> {
        &self.disk
    }

    /// The connection.
    pub fn nats(&self) -> &Arc<Nats> {
        &self.nats
    }

    /// Puts `brand`'s local commits after record `after` on its stream,
    /// commit by commit with the stored checkpoints: a brand created before
    /// replication (on a single node, or offline: `after` 0), or one whose
    /// seeding stopped part-way (a publish timeout, a crash; `after` is
    /// where its stream ends, which [`compare_ends`](Self::compare_ends)
    /// found to be the local log's up to there). A long history outlasts
    /// a lease: the caller keeps the leases renewed meanwhile, and each
    /// commit is appended only while this brand's is good. Returns the
    /// commits appended.
    pub fn seed(&self, brand: u32, after: u64) -> std::result::Result<u64, ReplicaError> {
        use prost::Message;
        // The stream's tail is read again (an earlier stint as the brand's
        // writer may have left one that is stale now).
        self.tails.lock().expect("tails lock").remove(&brand);
        let mut records = self.disk.scan(brand, after + 1);
        let (mut commits, mut last) = (0, after);
        for stored in self.disk.checkpoints_after(brand, after) {
            let checkpoint = stored?;
            let size = crate::pb::Checkpoint::decode(checkpoint.as_slice())
                .map_err(|e| ReplicaError::Diverged {
                    brand,
                    what: format!("a stored checkpoint does not decode: {e}"),
                })?
                .tree_size;
            if size <= after {
                continue; // `checkpoints_after` may start a little early
            }
            let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
            while batch.last().is_none_or(|(seq, _)| *seq < size) {
                match records.next() {
                    Some(record) => batch.push(record?),
                    None => break,
                }
            }
            if batch.last().map(|(seq, _)| *seq) != Some(size) {
                return Err(ReplicaError::Diverged {
                    brand,
                    what: format!("the local log's records do not end at its checkpoint's {size}"),
                });
            }
            let refs: Vec<(u64, &[u8])> = batch.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            self.replicate(brand, &refs, &checkpoint)?;
            (commits, last) = (commits + 1, size);
        }
        tracing::info!(
            brand,
            commits,
            from = after + 1,
            to = last,
            "seeded the brand's stream from the local log"
        );
        Ok(commits)
    }

    /// Appends one commit to `brand`'s stream: runs of at most the
    /// message size, the last with the checkpoint, each fenced on the one
    /// before it.
    fn replicate(
        &self,
        brand: u32,
        records: &[(u64, &[u8])],
        checkpoint: &[u8],
    ) -> std::result::Result<(), ReplicaError> {
        let Some(&(first, _)) = records.first() else {
            return Ok(()); // nothing to replicate (never asked by the writer)
        };
        if self.clock.as_ref().is_some_and(|c| !c.may_append(brand)) {
            return Err(ReplicaError::NotActive { brand });
        }
        let known = self.tails.lock().expect("tails lock").remove(&brand);
        let mut tail = match known {
            Some(tail) => tail,
            None => self.read_tail(brand, first)?,
        };
        let runs = split(records, self.nats.max_run_bytes);
        let count = runs.len();
        for (i, run) in runs.into_iter().enumerate() {
            let batch = StoredBatch {
                first_seq: run[0].0,
                last_seq: run[run.len() - 1].0,
                checkpoint: if i + 1 == count {
                    checkpoint.to_vec()
                } else {
                    Vec::new()
                },
                nodes: Vec::new(),
                records: run.iter().map(|(_, r)| r.to_vec()).collect(),
            };
            tail = self.append(brand, &batch, tail)?;
        }
        self.tails.lock().expect("tails lock").insert(brand, tail);
        Ok(())
    }

    /// The stream sequence the brand's next append must follow, checking
    /// that the stream's chain ends just before `first` (the local chain's
    /// end, which recovery caught up with the stream).
    fn read_tail(&self, brand: u32, first: u64) -> std::result::Result<u64, ReplicaError> {
        let end = super::patiently(|| {
            let js = self.nats.jetstream();
            self.nats.run(async move {
                let stream = brand_stream(&js, brand).await?;
                follow::chain_end(&stream, brand).await
            })?
        })?;
        if end.record_seq + 1 != first {
            return Err(ReplicaError::Diverged {
                brand,
                what: format!(
                    "its stream's chain ends at record {} but this node's next record is {first} \
                     (another node wrote to it: restart this one to catch up)",
                    end.record_seq
                ),
            });
        }
        Ok(end.stream_seq)
    }

    /// One message: the run, fenced on `after` (the stream sequence it
    /// must follow), with an id of its bytes. Returns its stream sequence.
    fn append(
        &self,
        brand: u32,
        batch: &StoredBatch,
        after: u64,
    ) -> std::result::Result<u64, ReplicaError> {
        let (first, last) = (batch.first_seq, batch.last_seq);
        let payload = batch.encode();
        // The same bytes get the same id: a retried append is dropped by
        // the stream's de-duplication; another writer's run never is.
        let digest = Sha256::digest(&payload);
        let id = format!("{brand}-{first}-{last}-{}", hex::encode(&digest[..12]));
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(id)
            .header(FIRST_SEQ_HEADER, first.to_string().as_str())
            .expected_last_subject_sequence(after);
        self.publish(brand, message, (first, last))
    }

    /// Publishes `message` on the brand's subject and waits for its
    /// acknowledgement: its stream sequence. `records` names the run in
    /// errors.
    fn publish(
        &self,
        brand: u32,
        message: PublishMessage,
        (first, last): (u64, u64),
    ) -> std::result::Result<u64, ReplicaError> {
        let js = self.nats.jetstream();
        let acked = self.nats.run(async move {
            let started = std::time::Instant::now();
            loop {
                let sent = match js.send_publish(subject(brand), message.clone()).await {
                    Ok(ack) => ack
                        .await
                        .map_err(|e| (e.kind(), Box::new(e) as super::Source)),
                    Err(e) => Err((e.kind(), Box::new(e) as super::Source)),
                };
                match sent {
                    Ok(ack) => break Ok(ack),
                    Err((PublishErrorKind::WrongLastSequence, e)) => break Err((true, e)),
                    // While a stream elects a new leader (a NATS node lost)
                    // appends go unanswered or are refused: the same message
                    // again is safe (a stored first copy is recognised by
                    // its id, and the expected sequence still fences).
                    Err(_) if started.elapsed() < APPEND_PATIENCE => {
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                    Err((_, e)) => break Err((false, e)),
                }
            }
        })?;
        match acked {
            Ok(ack) => Ok(ack.sequence),
            Err((true, _)) => Err(ReplicaError::Fenced { brand, first, last }),
            Err((false, source)) => Err(ReplicaError::Publish {
                brand,
                first,
                last,
                source,
            }),
        }
    }
}

/// How a brand's stream stands to the local log (
/// [`ReplicatedStore::compare_ends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// Both end at the same record, with the same hash.
    Same,
    /// The stream holds the local log's first records only, the same bytes
    /// (its last one's hash equal): the rest is to be seeded.
    StreamBehind,
}

/// `records` in runs of at most `max_bytes` of record bytes (at least one
/// record each).
fn split<'a, 'b>(records: &'b [(u64, &'a [u8])], max_bytes: usize) -> Vec<&'b [(u64, &'a [u8])]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, r)) in records.iter().enumerate() {
        let size = r.len() + 4;
        if i > start && bytes + size > max_bytes {
            runs.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    runs.push(&records[start..]);
    runs
}

impl LogStore for ReplicatedStore {
    fn brands(&self) -> Result<Vec<u32>> {
        self.disk.brands()
    }

    fn commit(
        &self,
        brand: u32,
        records: &[(u64, &[u8])],
        nodes: &[(u8, u64, [u8; 32])],
        checkpoint: (u64, &[u8]),
    ) -> Result<()> {
        self.replicate(brand, records, checkpoint.1)
            .map_err(|e| StorageError::Replication {
                brand,
                source: Box::new(e),
            })?;
        self.disk.commit(brand, records, nodes, checkpoint)
    }

    fn node(&self, brand: u32, level: u8, index: u64) -> Result<Option<[u8; 32]>> {
        self.disk.node(brand, level, index)
    }

    fn checkpoints(&self, brand: u32) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        self.disk.checkpoints(brand)
    }

    fn checkpoints_after(
        &self,
        brand: u32,
        after_size: u64,
    ) -> Box<dyn Iterator<Item = Result<Vec<u8>>> + Send> {
        self.disk.checkpoints_after(brand, after_size)
    }

    fn record(&self, brand: u32, seq: u64) -> Result<Option<Vec<u8>>> {
        self.disk.record(brand, seq)
    }

    fn scan(
        &self,
        brand: u32,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>)>> + Send> {
        self.disk.scan(brand, from_seq)
    }

    fn last_checkpoint(&self, brand: u32) -> Result<Option<Vec<u8>>> {
        self.disk.last_checkpoint(brand)
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn runs_stay_under_the_size_and_keep_every_record_in_order() {
        let bodies: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 96]).collect();
        let records: Vec<(u64, &[u8])> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u64 + 1, b.as_slice()))
            .collect();
        let runs = split(&records, 300);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        let seqs: Vec<u64> = runs.iter().flat_map(|r| r.iter().map(|x| x.0)).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        // A record bigger than a run still goes, alone.
        assert_eq!(split(&records, 10).len(), 10);
    }
}
