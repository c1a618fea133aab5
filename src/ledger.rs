//! One brand's ledger: the state machine plus its durable log.
//!
//! `apply_batch` runs a batch of signed submissions through the state
//! machine (no I/O but reading older records for retries) and returns the
//! new records and the answers; the caller makes the records durable with
//! one `commit` (one log frame, one `fdatasync`, one signed checkpoint)
//! and only then releases the answers. That is group commit.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use prost::Message;
use thiserror::Error;

use crate::checkpoint::{self, CheckpointError};
use crate::crypto::leaf_hash;
use crate::error::Refusal;
use crate::limits::SNAPSHOT_EVERY_RECORDS;
use crate::pb::{self, ErrorCode, Record, Request};
use crate::replay::{replay_record, ReplayError};
use crate::snapshot::{self, SnapshotError};
use crate::state::{apply, reply_for_record, BrandState, Context, Outcome, Principal, Written};
use crate::storage::{LogStore, StorageError};

/// Why a brand's ledger cannot be recovered, created or committed to. Each
/// names the brand; the cause is kept as its `source()`.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// Storage failed.
    #[error("brand {brand}: storage")]
    Storage {
        /// The brand.
        brand: u32,
        /// The failure.
        #[source]
        source: StorageError,
    },
    /// The stored chain has a gap.
    #[error("brand {brand}: record {seq} is missing (next stored is {next})")]
    Missing {
        /// The brand.
        brand: u32,
        /// The missing record.
        seq: u64,
        /// The next record stored.
        next: u64,
    },
    /// The chain's server key, after the rotations its records endorse,
    /// is not the key this ledger was opened with.
    #[error(
        "brand {brand}: the chain's server key (after its rotations) is not this data directory's server key"
    )]
    ServerKey {
        /// The brand.
        brand: u32,
    },
    /// A stored record does not replay: the ledger is corrupt.
    #[error("brand {brand}: corrupt ledger")]
    Replay {
        /// The brand.
        brand: u32,
        /// Which record and why.
        #[source]
        source: ReplayError,
    },
    /// The snapshot could not be read (`cardd check`).
    #[error("brand {brand}: snapshot")]
    Snapshot {
        /// The brand.
        brand: u32,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// The snapshot is on the chain but not the state replayed to it.
    #[error("brand {brand}: the snapshot at record {seq} differs from the state replayed to it")]
    SnapshotDiffers {
        /// The brand.
        brand: u32,
        /// The snapshot's seq.
        seq: u64,
    },
    /// Records are stored but no checkpoint covers them.
    #[error("brand {brand}: records but no checkpoint")]
    NoCheckpoint {
        /// The brand.
        brand: u32,
    },
    /// The newest checkpoint does not verify or does not match the chain.
    #[error("brand {brand}: newest checkpoint")]
    Checkpoint {
        /// The brand.
        brand: u32,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// `create` of a brand id that has a chain.
    #[error("brand {0} already exists")]
    BrandExists(u32),
    /// The state machine refused the brand's first record.
    #[error("creating brand: {0}")]
    Refused(Refusal),
}

impl LedgerError {
    /// True if the brand's stored chain is wrong (a record that does not
    /// replay, a gap, a checkpoint that does not verify, damaged bytes),
    /// as opposed to an operation that failed and may pass on a new start
    /// (I/O, a snapshot unreadable): `cardd serve` refuses such a brand
    /// alone rather than fail the start.
    pub fn is_damage(&self) -> bool {
        match self {
            LedgerError::Storage { source, .. } => source.is_damage(),
            LedgerError::Missing { .. }
            | LedgerError::ServerKey { .. }
            | LedgerError::Replay { .. }
            | LedgerError::SnapshotDiffers { .. }
            | LedgerError::NoCheckpoint { .. }
            | LedgerError::Checkpoint { .. } => true,
            _ => false,
        }
    }
}

/// A verified, signed request waiting to be applied: its exact bytes and,
/// decoded once, what they say. Built only by [`Submission::from_wire`]
/// (bytes from a client, checked by the `wire` rule) or [`Submission::signed`] (a
/// request signed here), so the two can never disagree.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Who signed it (verified by the caller).
    pub principal: Principal,
    /// The signer's public key.
    pub signer_key: [u8; 32],
    /// The exact signed request bytes.
    pub request: Vec<u8>,
    /// The signature over them.
    pub signature: Vec<u8>,
    /// The server checked a PIN block of the request against the card's
    /// PIN (`server/pins.rs`); false unless that check passed.
    pub pin_verified: bool,
    decoded: Box<Request>,
}

/// Decodes request bytes under the acceptance rule of [`crate::wire`].
pub fn decode_canonical(bytes: &[u8]) -> Result<Request, Refusal> {
    crate::wire::decode_request(bytes).map_err(Refusal::from)
}

impl Submission {
    /// A request as received: decoded once here, refused unless canonical.
    pub fn from_wire(
        principal: Principal,
        signer_key: [u8; 32],
        request: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Self, Refusal> {
        let decoded = decode_canonical(&request)?;
        Ok(Submission {
            principal,
            signer_key,
            request,
            signature,
            pin_verified: false,
            decoded: Box::new(decoded),
        })
    }

    /// `request` encoded and signed with `key` (offline tools, provisioning,
    /// tests and benchmarks).
    pub fn signed(principal: Principal, key: &SigningKey, request: Request) -> Self {
        let bytes = request.encode_to_vec();
        let signature = crate::crypto::sign_request(key, &bytes);
        Submission {
            principal,
            signer_key: key.verifying_key().to_bytes(),
            request: bytes,
            signature,
            pin_verified: false,
            decoded: Box::new(request),
        }
    }

    /// The decoded request.
    pub fn decoded(&self) -> &Request {
        &self.decoded
    }
}

/// The answer to one submission.
pub type Answer = Result<pb::Reply, Refusal>;

/// The result of applying a batch: records to make durable, then answers.
#[derive(Debug, Default)]
pub struct Batch {
    /// New records, in order.
    pub written: Vec<Written>,
    /// One answer per submission, in submission order.
    pub answers: Vec<Answer>,
    /// Keys enrolled by this batch (terminals, read-only keys), for the
    /// key index.
    pub enrolled: Vec<([u8; 32], crate::state::Principal)>,
    /// Keys this batch rotated out (owner key rotation, terminal re-key):
    /// they must stop signing on, and their open sessions end.
    pub retired: Vec<([u8; 32], crate::state::Principal)>,
    /// Answers (by index) whose request asked for an inclusion proof.
    pub proof_wanted: Vec<usize>,
}

/// Asked about each submission of a batch, in order, as the batch is
/// applied: the daemon's probing budgets (`server::guard`) must see each
/// unknown card before the next request is applied, not once the batch is
/// answered, or a till pipelining its guesses gets a whole batch of them.
pub trait Gate {
    /// `Err` to refuse submission `i` (by index in the batch) unapplied.
    fn before(&mut self, i: usize) -> Result<(), Refusal>;
    /// Submission `i`'s answer, applied or refused.
    fn after(&mut self, i: usize, answer: &Answer);
}

/// The gate that lets everything through.
struct Open;

impl Gate for Open {
    fn before(&mut self, _: usize) -> Result<(), Refusal> {
        Ok(())
    }
    fn after(&mut self, _: usize, _: &Answer) {}
}

/// A brand's state and its place in storage.
pub struct BrandLedger {
    /// The state machine's state, which is ahead of disk only between
    /// `apply_batch` and `commit` (in the daemon's writer, by at most the
    /// batches in its commit pipeline).
    pub state: BrandState,
    store: Arc<dyn LogStore>,
    server_key: Arc<SigningKey>,
    last_time_ms: i64,
    /// Where snapshots of the state are kept (if they are), and every how
    /// many records.
    snapshots: Option<(PathBuf, u64)>,
    /// The sequence number of the newest snapshot (0 for none).
    snapshot_seq: u64,
    /// The window of snapshot parts the next snapshot continues; None:
    /// the next one starts a new generation (`snapshot/parts.rs`).
    chain: Option<snapshot::parts::Chain>,
    /// Records `1..=` this were not read at recovery (it started from a
    /// snapshot of them): the background chain check reads them.
    unread_at_start: u64,
}

/// How recovery treats a brand's snapshot (see `crate::snapshot`).
#[derive(Debug, Clone, Copy)]
pub enum Recovery<'a> {
    /// Replay every record; no snapshots.
    Full,
    /// Start from the snapshot in this directory if it is usable, replay
    /// the records after it, and keep snapshotting there.
    FromSnapshot(&'a Path),
    /// Replay every record, and demand that the snapshot in this directory
    /// equal the replayed state at its sequence number (`cardd check`).
    CheckSnapshot(&'a Path),
    /// Like `FromSnapshot`, but write no snapshot: a brand read only to
    /// learn whose sign-ons to refuse (its log on disk is damaged, and
    /// nothing of it may change).
    ReadOnly(&'a Path),
}

/// Wall-clock time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl BrandLedger {
    /// Rebuilds a brand's state by replaying every stored record through the
    /// state machine, then checks the newest checkpoint against it. Any
    /// difference is corruption: refuse to serve rather than serve it.
    pub fn recover(
        store: Arc<dyn LogStore>,
        server_key: Arc<SigningKey>,
        brand: u32,
    ) -> Result<Self, LedgerError> {
        Self::recover_with(store, server_key, brand, Recovery::Full)
    }

    /// Like [`recover`](Self::recover), starting from or checking a
    /// snapshot as `mode` says.
    pub fn recover_with(
        store: Arc<dyn LogStore>,
        server_key: Arc<SigningKey>,
        brand: u32,
        mode: Recovery,
    ) -> Result<Self, LedgerError> {
        let server_pub = server_key.verifying_key();
        let (mut start, to_check) = match mode {
            Recovery::Full => (Start::empty(brand), None),
            Recovery::FromSnapshot(dir) | Recovery::ReadOnly(dir) => (
                Start::from_snapshot(store.as_ref(), dir, brand, &server_pub),
                None,
            ),
            Recovery::CheckSnapshot(dir) => {
                // The snapshot a start would take.
                let on_log = holds(store.as_ref(), brand);
                let snap = match snapshot::read_start(dir, brand, &server_pub, &on_log) {
                    // An upgrade's first check: nothing to compare.
                    Err(snapshot::SnapshotError::OtherFormat { found, reads }) => {
                        tracing::warn!(
                            brand,
                            found,
                            reads,
                            "the snapshot is of another build's format: a start replays the \
                             whole chain instead; checked without it"
                        );
                        None
                    }
                    read => read.map_err(|source| LedgerError::Snapshot { brand, source })?,
                };
                (Start::empty(brand), snap.map(|(state, _)| state))
            }
        };
        let snapshot_seq = start.state.seq;
        let server = server_pub.to_bytes();
        replay_stored(store.as_ref(), &mut start, to_check, &server, u64::MAX)?;
        check_newest_checkpoint(store.as_ref(), &start.state, &server_pub)?;
        let mut ledger = BrandLedger {
            state: start.state,
            store,
            server_key,
            last_time_ms: start.time_ms,
            snapshots: None,
            snapshot_seq,
            chain: start.chain,
            unread_at_start: snapshot_seq,
        };
        if let Recovery::FromSnapshot(dir) = mode {
            ledger.snapshot_into(dir, SNAPSHOT_EVERY_RECORDS);
            ledger.snapshot_if_due();
        }
        Ok(ledger)
    }

    /// At start-up, a snapshot when due: the next restart starts here
    /// instead of replaying again. A failure (a full disk, say) only makes
    /// that restart longer: it must not keep the daemon from serving.
    fn snapshot_if_due(&mut self) {
        if self.snapshot_due() {
            if let Err(e) = self.write_snapshot() {
                let error = crate::error::causes(&e);
                tracing::warn!(brand = self.state.brand_id, error, "snapshot failed");
            }
        }
    }

    /// Records `1..=` this were not read when the ledger was recovered
    /// (it started from their snapshot); 0 after a full replay.
    pub fn unread_at_start(&self) -> u64 {
        self.unread_at_start
    }

    /// The sequence number of the newest snapshot written or recovered
    /// from (0 for none).
    pub fn snapshot_seq(&self) -> u64 {
        self.snapshot_seq
    }

    /// Keeps snapshots of this ledger's state in `dir` from now on, one
    /// every `every` records (`SNAPSHOT_EVERY_RECORDS` in the daemon).
    pub fn snapshot_into(&mut self, dir: &Path, every: u64) {
        assert!(every > 0, "snapshots every 0 records");
        self.snapshots = Some((dir.to_path_buf(), every));
        if !self.state.tracks_changes() {
            // Nothing to continue: the next snapshot starts a generation
            // (and tracking again from there).
            self.state.track_changes(true);
            self.chain = None;
        }
    }

    /// Hands the taking of snapshots over to a copy of the state kept
    /// elsewhere (`server/snapshot_copy.rs`): this ledger takes none from
    /// now on. Returns what the copy starts from; None if this ledger
    /// keeps no snapshots.
    pub fn hand_snapshots_over(&mut self) -> Option<CopySeed> {
        let (dir, every) = self.snapshots.take()?;
        self.state.track_changes(false);
        self.chain = None;
        Some(CopySeed {
            store: self.store.clone(),
            dir,
            every,
            server_key: self.server_key.clone(),
            brand: self.state.brand_id,
            seq: self.state.seq,
            snapshot_seq: self.snapshot_seq,
        })
    }

    /// True when snapshots are kept and as many records as asked have been
    /// applied since the last one.
    pub fn snapshot_due(&self) -> bool {
        self.snapshots
            .as_ref()
            .is_some_and(|(_, every)| self.state.seq - self.snapshot_seq >= *every)
    }

    /// At shutdown: true when snapshots are kept and at least a tenth of
    /// their interval was applied since the last one, so that writing one
    /// now spares the next start a replay worth the time (fewer records
    /// replay faster than a snapshot of a big state is written).
    pub fn final_snapshot_due(&self) -> bool {
        self.snapshots.as_ref().is_some_and(|(_, every)| {
            final_snapshot_pays(self.state.seq - self.snapshot_seq, *every)
        })
    }

    /// Hands out the snapshot that is due now (the caller asked
    /// [`snapshot_due`](Self::snapshot_due)): the next part of the
    /// brand's window, or a new generation when there is no window to
    /// continue. The part may be ahead of what is durable; it waits for its
    /// record before it is written. None if this ledger keeps no snapshots.
    pub fn begin_snapshot(&mut self) -> Result<Option<snapshot::job::Work<'_>>, SnapshotError> {
        use snapshot::job::{GenerationJob, PartJob, Work};
        let Some((dir, _)) = &self.snapshots else {
            return Ok(None);
        };
        // Set first: after a failure, the next try waits for as many
        // records again instead of following every batch.
        let since = std::mem::replace(&mut self.snapshot_seq, self.state.seq);
        let chain = self.chain.take().filter(|c| c.seq() == since);
        if let Some(chain) = chain.filter(|_| self.state.tracks_changes()) {
            return Ok(Some(Work::Part(Box::new(PartJob {
                chain,
                delta: self.state.take_delta(),
                key: self.server_key.clone(),
                store: self.store.clone(),
            }))));
        }
        // Changes are counted from the generation's state on.
        self.state.track_changes(true);
        let generation = snapshot::parts::next_generation(dir, self.state.brand_id)?;
        Ok(Some(Work::Generation(GenerationJob {
            chain: snapshot::parts::Chain::after_generation(dir, &self.state, generation),
            state: &self.state,
            key: &self.server_key,
            store: self.store.clone(),
        })))
    }

    /// The window that a part or generation written elsewhere leaves for
    /// the next snapshot to continue (None after a failure: the next one
    /// starts a generation).
    pub fn continue_snapshots(&mut self, chain: Option<snapshot::parts::Chain>) {
        self.chain = chain;
    }

    /// Writes the snapshot that is due here and now (start-up, shutdown,
    /// offline tools), whether it is.
    pub fn write_snapshot(&mut self) -> Result<(), SnapshotError> {
        self.write_snapshot_unless(&|| false)
    }

    /// [`write_snapshot`](Self::write_snapshot), which stops waiting for
    /// its record once `give_up` says so (the brand's commits stopped).
    pub fn write_snapshot_unless(
        &mut self,
        give_up: &dyn Fn() -> bool,
    ) -> Result<(), SnapshotError> {
        use snapshot::job::Work;
        let started = std::time::Instant::now();
        let (chain, kind) = match self.begin_snapshot()? {
            None => return Ok(()),
            Some(Work::Part(job)) => (job.run(give_up)?.0, "part"),
            Some(Work::Generation(job)) => (job.write(give_up)?, "generation"),
        };
        tracing::info!(
            brand = self.state.brand_id,
            seq = chain.seq(),
            kind,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot stored"
        );
        self.chain = Some(chain);
        Ok(())
    }

    /// Creates a new brand: its first record, signed by the server.
    pub fn create(
        store: Arc<dyn LogStore>,
        server_key: Arc<SigningKey>,
        brand: u32,
        create: pb::CreateBrand,
    ) -> Result<Self, LedgerError> {
        let brands = store
            .brands()
            .map_err(|source| LedgerError::Storage { brand, source })?;
        if brands.contains(&brand) {
            return Err(LedgerError::BrandExists(brand));
        }
        let mut ledger = BrandLedger {
            state: BrandState::new(brand),
            store,
            server_key,
            last_time_ms: 0,
            snapshots: None,
            snapshot_seq: 0,
            chain: None,
            unread_at_start: 0,
        };
        let request = Request {
            txn_id: 1,
            brand_id: brand,
            operator: "server".into(),
            op: Some(pb::request::Op::CreateBrand(create)),
            ..Default::default()
        };
        let sub = Submission::signed(Principal::Server, &ledger.server_key, request);
        ledger.submit_now(sub)?.map_err(LedgerError::Refused)?;
        Ok(ledger)
    }

    /// The brand id.
    pub fn brand_id(&self) -> u32 {
        self.state.brand_id
    }

    /// The storage this ledger commits to.
    pub fn store(&self) -> Arc<dyn LogStore> {
        self.store.clone()
    }

    /// Applies `subs` in order. All records get the same server time,
    /// never earlier than the previous batch's.
    pub fn apply_batch(&mut self, subs: &[Submission]) -> Batch {
        self.apply_batch_behind(subs, &[])
    }

    /// Like `apply_batch`, while earlier batches may still be on their way
    /// to storage: `unflushed` holds their records (any order), which a
    /// retry or a status query of them must find although storage may not
    /// have them yet.
    pub fn apply_batch_behind(&mut self, subs: &[Submission], unflushed: &[&[Written]]) -> Batch {
        self.apply_at(subs, unflushed, now_ms(), &mut Open)
    }

    /// Like `apply_batch_behind`, with `gate` asked before each submission
    /// and told each answer, in order, as the batch is applied.
    pub fn apply_batch_gated(
        &mut self,
        subs: &[Submission],
        unflushed: &[&[Written]],
        gate: &mut dyn Gate,
    ) -> Batch {
        self.apply_at(subs, unflushed, now_ms(), gate)
    }

    /// Like `apply_batch` at server time `time_ms` (or the previous batch's
    /// if later): for tools that build ledgers spanning months.
    pub fn apply_batch_at(&mut self, subs: &[Submission], time_ms: i64) -> Batch {
        self.apply_at(subs, &[], time_ms, &mut Open)
    }

    fn apply_at(
        &mut self,
        subs: &[Submission],
        unflushed: &[&[Written]],
        time_ms: i64,
        gate: &mut dyn Gate,
    ) -> Batch {
        self.last_time_ms = self.last_time_ms.max(time_ms);
        let time_ms = self.last_time_ms;
        let first_new_seq = self.state.seq + 1;
        let mut batch = Batch::default();
        for (i, sub) in subs.iter().enumerate() {
            let answer = match gate.before(i) {
                Ok(()) => self.apply_one(sub, time_ms, first_new_seq, unflushed, &mut batch),
                Err(refusal) => Err(refusal),
            };
            gate.after(i, &answer);
            batch.answers.push(answer);
        }
        batch
    }

    fn apply_one(
        &mut self,
        sub: &Submission,
        time_ms: i64,
        first_new_seq: u64,
        unflushed: &[&[Written]],
        batch: &mut Batch,
    ) -> Answer {
        let request = &sub.decoded;
        if request.want_proof {
            batch.proof_wanted.push(batch.answers.len());
        }
        let ctx = Context {
            time_ms,
            principal: sub.principal,
            signer_key: &sub.signer_key,
            request: &sub.request,
            signature: &sub.signature,
            pin_verified: sub.pin_verified,
        };
        let (prev_seq, prev_head) = (self.state.seq, self.state.head_hash);
        match apply(&mut self.state, &ctx, request)? {
            Outcome::Written(w) => {
                // Release builds too: a record that breaks the chain must
                // never reach the log (replay checks the same on decode).
                if let Err(e) = crate::replay::check_link(prev_seq, &prev_head, &w.record) {
                    panic!(
                        "brand {}: apply made a record that breaks the chain: {e}",
                        self.state.brand_id
                    );
                }
                // The rules after the record: a SET_RULES reply carries
                // the new line.
                let reply = reply_for_record(&w.record, &w.hash, self.promotion(&w.record));
                let id = w.record.new_id;
                rotated_keys(&self.state, &w.record, batch);
                match w.record.kind() {
                    pb::RecordKind::TerminalEnrolled => {
                        let t = &self.state.terminals[&id];
                        let terminal = crate::state::Principal::Terminal(id);
                        batch.enrolled.push((t.public_key, terminal));
                    }
                    pb::RecordKind::KeyAdded => {
                        let k = &self.state.read_keys[&id];
                        batch.enrolled.push((k.public_key, k.principal(id)));
                    }
                    _ => {}
                }
                batch.written.push(w);
                Ok(reply)
            }
            Outcome::Answer(reply) => Ok(reply),
            Outcome::Seen { seq } => {
                let (rec, hash) = self.load_record(seq, first_new_seq, unflushed, batch)?;
                if rec.request != sub.request {
                    return Err(Refusal::new(
                        ErrorCode::IdempotencyConflict,
                        format!(
                            "transaction id {} was used for a different request",
                            request.txn_id
                        ),
                    ));
                }
                let mut reply = reply_for_record(&rec, &hash, self.promotion(&rec));
                reply.replayed = true;
                Ok(reply)
            }
            Outcome::Status { state, seq } => {
                let original = if seq != 0 {
                    let (rec, hash) = self.load_record(seq, first_new_seq, unflushed, batch)?;
                    Some(Box::new(reply_for_record(
                        &rec,
                        &hash,
                        self.promotion(&rec),
                    )))
                } else {
                    None
                };
                Ok(pb::Reply {
                    detail: Some(pb::reply::Detail::Status(Box::new(pb::StatusResult {
                        state: state as i32,
                        seq,
                        original,
                    }))),
                    ..Default::default()
                })
            }
        }
    }

    /// The promotion line for the reply to `rec`: its card's tier's, its
    /// store's or the brand's, under the rules in force.
    fn promotion(&self, rec: &pb::Record) -> &str {
        crate::state::rules::promotion_for(&self.state.rules, rec.store_id, &rec.tier_after)
    }

    /// A record by sequence number: from this batch or an unflushed one if
    /// not yet durable, else from storage.
    fn load_record(
        &self,
        seq: u64,
        first_new_seq: u64,
        unflushed: &[&[Written]],
        batch: &Batch,
    ) -> Result<(Record, [u8; 32]), Refusal> {
        if seq >= first_new_seq {
            let w = &batch.written[usize::try_from(seq - first_new_seq).expect("batch index")];
            return Ok((w.record.clone(), w.hash));
        }
        for written in unflushed {
            let Some(first) = written.first().map(|w| w.record.seq) else {
                continue;
            };
            if let Some(w) = seq
                .checked_sub(first)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| written.get(i))
            {
                return Ok((w.record.clone(), w.hash));
            }
        }
        let bytes = self
            .store
            .record(self.state.brand_id, seq)
            .map_err(|e| Refusal::new(ErrorCode::StorageFailure, e.to_string()))?
            .ok_or_else(|| Refusal::new(ErrorCode::Internal, format!("record {seq} missing")))?;
        let rec = Record::decode(bytes.as_slice())
            .map_err(|_| Refusal::new(ErrorCode::Internal, "record corrupt"))?;
        Ok((rec, leaf_hash(&bytes)))
    }

    /// The signed checkpoint to store with the batch just applied.
    pub fn checkpoint(&self) -> pb::Checkpoint {
        checkpoint::sign(&self.state, self.last_time_ms, &self.server_key)
    }

    /// Makes `written` and `checkpoint` durable (blocking: one log frame
    /// and one `fdatasync`, see `storage::DiskStore`).
    pub fn commit(
        store: &dyn LogStore,
        brand: u32,
        written: &[Written],
        checkpoint: &pb::Checkpoint,
    ) -> crate::storage::Result<()> {
        let records: Vec<(u64, &[u8])> = written
            .iter()
            .map(|w| (w.record.seq, w.bytes.as_slice()))
            .collect();
        let nodes: Vec<(u8, u64, [u8; 32])> = written
            .iter()
            .flat_map(|w| w.nodes.iter().copied())
            .collect();
        store.commit(
            brand,
            &records,
            &nodes,
            (checkpoint.tree_size, &checkpoint.encode_to_vec()),
        )
    }

    /// Applies one submission and commits it before returning (for offline
    /// tools and provisioning; the daemon batches instead).
    pub fn submit_now(&mut self, sub: Submission) -> Result<Answer, LedgerError> {
        let mut batch = self.apply_batch(std::slice::from_ref(&sub));
        if !batch.written.is_empty() {
            let brand = self.brand_id();
            Self::commit(
                self.store.as_ref(),
                brand,
                &batch.written,
                &self.checkpoint(),
            )
            .map_err(|source| LedgerError::Storage { brand, source })?;
        }
        Ok(batch.answers.pop().expect("one answer per submission"))
    }

    /// Rotates this brand's server key to `new` now: a SERVER_KEY_ROTATED
    /// record signed by the key in force (the endorsement, in the chain),
    /// whose checkpoint, like every later checkpoint and snapshot, is
    /// signed by `new`. For offline tools (the daemon must not be running).
    pub fn rotate_server_key(&mut self, new: Arc<SigningKey>) -> Result<Answer, LedgerError> {
        let request = Request {
            // The server's own ids: one past the chain's length is never
            // reused, as the chain only grows.
            txn_id: self.state.seq + 1,
            brand_id: self.brand_id(),
            operator: "server".into(),
            op: Some(pb::request::Op::RotateServerKey(pb::RotateServerKey {
                new_public_key: new.verifying_key().to_bytes().to_vec(),
            })),
            ..Default::default()
        };
        let sub = Submission::signed(Principal::Server, &self.server_key, request);
        let mut batch = self.apply_batch(std::slice::from_ref(&sub));
        let answer = batch.answers.pop().expect("one answer per submission");
        if batch.written.is_empty() {
            return Ok(answer);
        }
        self.server_key = new;
        // Parts signed by the old key cannot continue: a new generation.
        self.chain = None;
        let brand = self.brand_id();
        Self::commit(
            self.store.as_ref(),
            brand,
            &batch.written,
            &self.checkpoint(),
        )
        .map_err(|source| LedgerError::Storage { brand, source })?;
        Ok(answer)
    }

    /// Signs `request` with `key` and submits it now.
    pub fn submit_signed(
        &mut self,
        principal: Principal,
        key: &SigningKey,
        request: &Request,
    ) -> Result<Answer, LedgerError> {
        self.submit_now(Submission::signed(principal, key, request.clone()))
    }

    /// Applies a batch that another node committed (a standby following the
    /// active's replicated log, `crate::replica`), checked as the auditor
    /// checks an export: each record's request signature, its link and its
    /// byte-for-byte replay, then the signed checkpoint against the state
    /// reached. Then commits it to `store` (the local log) with the Merkle
    /// nodes the replay computed and the checkpoint's exact bytes.
    ///
    /// On an error the state may be ahead of `store`: the caller stops
    /// following this brand (a restart recovers it from the local log).
    pub fn follow_batch(
        &mut self,
        store: &dyn LogStore,
        records: &[(u64, &[u8])],
        checkpoint_bytes: &[u8],
    ) -> Result<(), LedgerError> {
        let brand = self.brand_id();
        let server_pub = self.server_key.verifying_key();
        let mut written = Vec::with_capacity(records.len());
        let mut prev_time_ms = self.last_time_ms;
        for &(seq, bytes) in records {
            let replay = |source| LedgerError::Replay { brand, source };
            let w = follow_record(&mut self.state, seq, bytes, &server_pub.to_bytes())
                .map_err(replay)?;
            // As recovery and the auditor refuse it: a record moved back
            // in time could land in an earlier brand day.
            crate::replay::check_time(prev_time_ms, &w.record)
                .map_err(|what| replay(ReplayError { seq, what }))?;
            prev_time_ms = w.record.time_ms;
            written.push(w);
        }
        let c = checkpoint::decode_verified(checkpoint_bytes, &server_pub)
            .and_then(|c| checkpoint::verify(&c, &server_pub, Some(&self.state)).map(|()| c))
            .map_err(|source| LedgerError::Checkpoint { brand, source })?;
        self.last_time_ms = self.last_time_ms.max(c.time_ms);
        if !stored_here(store, brand, records)? {
            let nodes: Vec<(u8, u64, [u8; 32])> = written
                .iter()
                .flat_map(|w| w.nodes.iter().copied())
                .collect();
            let committed = store.commit(brand, records, &nodes, (c.tree_size, checkpoint_bytes));
            // The stopped writer's commit may land between the look above
            // and this one: then it is there now.
            if let Err(source) = committed {
                if !stored_here(store, brand, records)? {
                    return Err(LedgerError::Storage { brand, source });
                }
            }
        }
        self.snapshot_if_due();
        Ok(())
    }
}

/// Whether the local log already holds the followed commit's `records`,
/// each byte for byte (its checkpoint is the same writer's, stored with
/// them). It can: a node whose lease lapsed while its writer's
/// commit was on its way to the stream stops serving the brand and starts
/// following it, recovered from its local log, while that commit may still
/// land there (the stream took it from this very writer, so the follower
/// reads the same bytes next). Taken as stored, not committed twice. A
/// different record at one of its places, or part of the commit only, is
/// a diverged log: an error.
fn stored_here(
    store: &dyn LogStore,
    brand: u32,
    records: &[(u64, &[u8])],
) -> Result<bool, LedgerError> {
    let storage = |source| LedgerError::Storage { brand, source };
    let Some(&(first, _)) = records.first() else {
        return Ok(false);
    };
    if store.record(brand, first).map_err(storage)?.is_none() {
        return Ok(false);
    }
    for &(seq, bytes) in records {
        if store.record(brand, seq).map_err(storage)?.as_deref() != Some(bytes) {
            let what = "the local log holds another record (or part of the commit only) here";
            let source = ReplayError {
                seq,
                what: what.to_string(),
            };
            return Err(LedgerError::Replay { brand, source });
        }
    }
    tracing::info!(
        brand,
        first,
        records = records.len(),
        "a followed commit was already in the local log (this node's previous writer finished it)"
    );
    Ok(true)
}

/// One record of a followed batch: its request signature under the key it
/// names (which the replay then requires to be the one enrolled), then the
/// replay (link, signer, byte equality).
fn follow_record(
    state: &mut BrandState,
    seq: u64,
    bytes: &[u8],
    server_key: &[u8; 32],
) -> Result<Written, ReplayError> {
    let fail = |what: &str| ReplayError {
        seq,
        what: what.to_string(),
    };
    let rec = Record::decode(bytes).map_err(|_| fail("does not decode"))?;
    let key = crate::crypto::parse_public_key(&rec.signer_public_key)
        .ok_or_else(|| fail("signer key is not a usable ed25519 key"))?;
    let message = crate::crypto::request_message(&rec.request);
    if !crate::crypto::verify_strict(&key, &message, &rec.request_signature) {
        return Err(fail("its request signature does not verify"));
    }
    crate::replay::replay_decoded(state, seq, &rec, bytes, server_key)
}

/// A rotation record's keys: the new one enrolled, the old one (the
/// record's signer for the owner; the terminal's key before, which only
/// its enrolment or an earlier re-key names) retired.
fn rotated_keys(state: &BrandState, rec: &Record, batch: &mut Batch) {
    use crate::state::Principal;
    let Ok(new) = <[u8; 32]>::try_from(rec.new_public_key.as_slice()) else {
        return;
    };
    match rec.kind() {
        pb::RecordKind::OwnerKeyRotated => {
            if let Ok(old) = <[u8; 32]>::try_from(rec.signer_public_key.as_slice()) {
                batch.retired.push((old, Principal::Owner));
            }
            batch.enrolled.push((new, Principal::Owner));
        }
        pb::RecordKind::TerminalRekeyed => {
            let terminal = Principal::Terminal(rec.new_id);
            // The re-key just retired the terminal's key before it.
            if let Some(old) = state.retired_keys.last().copied() {
                batch.retired.push((old, terminal));
            }
            batch.enrolled.push((new, terminal));
        }
        _ => {}
    }
}

/// At shutdown, whether a snapshot `since` records after the last one (of
/// one every `every`) spares the next start more than it costs: at least
/// a tenth of the interval (fewer records replay faster than a big state
/// is written).
pub fn final_snapshot_pays(since: u64, every: u64) -> bool {
    since > 0 && since >= every / 10
}

/// What a copy of a brand's state kept for snapshots starts from: the
/// brand's state at record `seq`, recovered again from what is stored.
pub struct CopySeed {
    /// The brand's log.
    pub store: Arc<dyn LogStore>,
    /// Where snapshots are kept.
    pub dir: PathBuf,
    /// Records between two snapshots.
    pub every: u64,
    /// The key that signs snapshots.
    pub server_key: Arc<SigningKey>,
    /// The brand.
    pub brand: u32,
    /// The newest record when the copy was asked for: stored, and every
    /// later one reaches the copy as it is committed.
    pub seq: u64,
    /// The newest snapshot's record then.
    pub snapshot_seq: u64,
}

impl CopySeed {
    /// The brand's state at record `seq`: its snapshot (if usable) and the
    /// stored records after it, replayed as at start-up.
    pub fn recover(&self) -> Result<BrandState, LedgerError> {
        let server_pub = self.server_key.verifying_key();
        let store = self.store.as_ref();
        let mut start = Start::from_snapshot(store, &self.dir, self.brand, &server_pub);
        // The copy writes whole-state snapshots: it tracks no changes.
        start.state.track_changes(false);
        if start.state.seq > self.seq {
            // A snapshot written since (by a daemon before this one's
            // copy was up, say) is past the point: replay from the first.
            start = Start::empty(self.brand);
        }
        replay_stored(store, &mut start, None, &server_pub.to_bytes(), self.seq)?;
        if start.state.seq != self.seq {
            return Err(LedgerError::Missing {
                brand: self.brand,
                seq: start.state.seq + 1,
                next: self.seq,
            });
        }
        Ok(start.state)
    }
}

/// Applies the stored record `bytes` at `seq` to `state`, as recovery
/// does: record 1 names the chain's first server key; every rotation
/// after it is endorsed in the chain, and the key they lead to must be
/// `server_pub` (checked once recovery ends).
pub fn replay_next(
    state: &mut BrandState,
    seq: u64,
    bytes: &[u8],
    server_pub: &[u8; 32],
) -> Result<Written, ReplayError> {
    let anchor = match seq {
        1 => first_signer(bytes).unwrap_or(*server_pub),
        _ => *server_pub,
    };
    replay_record(state, seq, bytes, &anchor)
}

/// Where recovery starts: a state (empty or a snapshot's) and the time of
/// its newest record.
struct Start {
    state: BrandState,
    time_ms: i64,
    /// The window of parts the state came from, to continue.
    chain: Option<snapshot::parts::Chain>,
}

impl Start {
    fn empty(brand: u32) -> Self {
        Start {
            state: BrandState::new(brand),
            time_ms: 0,
            chain: None,
        }
    }

    /// The brand's snapshot if it verifies and lies on the stored chain,
    /// else (logged) the empty state: a snapshot is a shortcut, never
    /// needed.
    fn from_snapshot(
        store: &dyn LogStore,
        dir: &Path,
        brand: u32,
        key: &ed25519_dalek::VerifyingKey,
    ) -> Self {
        let loading = std::time::Instant::now();
        let lock = snapshot::parts::files_lock(dir, brand);
        let files = lock.lock().unwrap_or_else(|e| e.into_inner());
        let records = SnapshotRecords::new(store, brand);
        let loaded = snapshot::read_start(dir, brand, key, &|seq, head| records.holds(seq, head));
        drop(files);
        let load_ms = loading.elapsed().as_millis() as u64;
        tracing::info!(brand, load_ms, "snapshot read");
        let on_chain = |(state, chain)| on_chain(&records, state).map(|s| (s, chain));
        match loaded.map(|s| s.map(on_chain)) {
            Ok(Some(Ok((mut start, chain)))) => {
                // The records replayed after the parts are their window's
                // next changes.
                start.state.track_changes(chain.is_some());
                start.chain = chain;
                start
            }
            Ok(None) => Start::empty(brand),
            Ok(Some(Err(why))) => {
                tracing::warn!(
                    brand,
                    why,
                    "snapshot not on the stored chain; replaying the whole chain"
                );
                Start::empty(brand)
            }
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::warn!(brand, error, "snapshot not used; replaying the whole chain");
                Start::empty(brand)
            }
        }
    }
}

/// Replays every stored record after `start` up to `until` through the
/// state machine; `to_check` (`cardd check`) must equal the state replayed
/// to its seq.
fn replay_stored(
    store: &dyn LogStore,
    start: &mut Start,
    mut to_check: Option<BrandState>,
    server_pub: &[u8; 32],
    until: u64,
) -> Result<(), LedgerError> {
    let brand = start.state.brand_id;
    let (snapshot_seq, started) = (start.state.seq, std::time::Instant::now());
    for item in store.scan(brand, start.state.seq + 1) {
        let (seq, bytes) = item.map_err(|source| LedgerError::Storage { brand, source })?;
        if seq > until {
            break;
        }
        let expected = start.state.seq + 1;
        if seq != expected {
            return Err(LedgerError::Missing {
                brand,
                seq: expected,
                next: seq,
            });
        }
        // The key rotations lead to must be this server's (checked below).
        let w = replay_next(&mut start.state, seq, &bytes, server_pub)
            .map_err(|source| LedgerError::Replay { brand, source })?;
        crate::replay::check_time(start.time_ms, &w.record).map_err(|what| {
            let source = ReplayError { seq, what };
            LedgerError::Replay { brand, source }
        })?;
        start.time_ms = w.record.time_ms;
        if let Some(snap) = to_check.take_if(|s| s.seq == seq) {
            check_snapshot(&start.state, &snap)?;
        }
    }
    if let Some(snap) = to_check {
        // Written from memory ahead of a commit that a crash then lost.
        tracing::warn!(
            brand,
            snapshot_seq = snap.seq,
            chain = start.state.seq,
            "the snapshot is beyond the stored chain; a restart ignores it"
        );
    }
    if start.state.is_created() && start.state.server_key != *server_pub {
        return Err(LedgerError::ServerKey { brand });
    }
    let replayed = start.state.seq - snapshot_seq;
    let replay_ms = started.elapsed().as_millis() as u64;
    tracing::info!(brand, snapshot_seq, replayed, replay_ms, "brand recovered");
    Ok(())
}

/// The key that signed a stored record (`None` if it does not decode; the
/// replay then names what is wrong).
fn first_signer(bytes: &[u8]) -> Option<[u8; 32]> {
    let rec = Record::decode(bytes).ok()?;
    rec.signer_public_key.as_slice().try_into().ok()
}

/// The newest stored checkpoint must verify and describe `state` exactly.
fn check_newest_checkpoint(
    store: &dyn LogStore,
    state: &BrandState,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<(), LedgerError> {
    let brand = state.brand_id;
    if state.seq == 0 {
        return Ok(());
    }
    let bytes = store
        .last_checkpoint(brand)
        .map_err(|source| LedgerError::Storage { brand, source })?
        .ok_or(LedgerError::NoCheckpoint { brand })?;
    checkpoint::decode_verified(&bytes, key)
        .and_then(|c| checkpoint::verify(&c, key, Some(state)))
        .map_err(|source| LedgerError::Checkpoint { brand, source })
}

/// Whether `store` holds `brand`'s record at a sequence number with this
/// hash: a snapshot taken there lies on the stored chain.
fn holds(store: &dyn LogStore, brand: u32) -> impl Fn(u64, &[u8; 32]) -> bool + '_ {
    move |seq, head| {
        store
            .record(brand, seq)
            .is_ok_and(|r| r.is_some_and(|bytes| leaf_hash(&bytes) == *head))
    }
}

/// The stored records a start's snapshot is checked against, each read
/// from the log once: `read_start` may ask about the same record more than
/// once (a window's newest part, then the merged window), and `on_chain`
/// then needs its bytes for its time.
struct SnapshotRecords<'a> {
    store: &'a dyn LogStore,
    brand: u32,
    read: std::cell::RefCell<std::collections::HashMap<u64, Option<Vec<u8>>>>,
}

impl<'a> SnapshotRecords<'a> {
    fn new(store: &'a dyn LogStore, brand: u32) -> Self {
        let read = std::cell::RefCell::default();
        SnapshotRecords { store, brand, read }
    }

    /// Record `seq` (None: the log ends before it), from the log the
    /// first time it is asked for. A failed read is not kept.
    fn record(&self, seq: u64) -> Result<Option<Vec<u8>>, crate::storage::StorageError> {
        if let Some(found) = self.read.borrow().get(&seq) {
            return Ok(found.clone());
        }
        let found = self.store.record(self.brand, seq)?;
        self.read.borrow_mut().insert(seq, found.clone());
        Ok(found)
    }

    /// Whether the log holds a record with this hash at `seq`.
    fn holds(&self, seq: u64, head: &[u8; 32]) -> bool {
        self.record(seq)
            .is_ok_and(|r| r.is_some_and(|bytes| leaf_hash(&bytes) == *head))
    }
}

/// `snap` as a start, if it lies on the stored chain: the stored record at
/// its sequence number hashes to its head. Else why not.
fn on_chain(records: &SnapshotRecords, snap: BrandState) -> Result<Start, String> {
    let bytes = match records.record(snap.seq) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(format!(
                "the chain ends before the snapshot's record {}",
                snap.seq
            ))
        }
        Err(e) => return Err(crate::error::causes(&e)),
    };
    if leaf_hash(&bytes) != snap.head_hash {
        return Err(format!(
            "record {} is not the snapshot's (a lost branch)",
            snap.seq
        ));
    }
    let time_ms = Record::decode(bytes.as_slice())
        .map_err(|_| "the snapshot's record does not decode".to_string())?
        .time_ms;
    Ok(Start {
        state: snap,
        time_ms,
        chain: None,
    })
}

/// `cardd check`: the snapshot must equal the replayed state, unless it
/// belongs to a branch a crash lost (then its head differs).
fn check_snapshot(replayed: &BrandState, snap: &BrandState) -> Result<(), LedgerError> {
    if snap.head_hash != replayed.head_hash {
        tracing::warn!(
            brand = snap.brand_id,
            seq = snap.seq,
            "the snapshot is of a lost branch; a restart ignores it"
        );
        return Ok(());
    }
    if snap != replayed {
        return Err(LedgerError::SnapshotDiffers {
            brand: snap.brand_id,
            seq: snap.seq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cardd serve` refuses a brand alone only for damage; an operation
    /// that failed (I/O) fails the start, to be tried again.
    #[test]
    fn only_damage_is_damage() {
        let io = || StorageError::Io {
            what: "reading".into(),
            source: std::io::Error::other("EIO"),
        };
        let storage = |source| LedgerError::Storage { brand: 2, source };
        assert!(!storage(io()).is_damage());
        assert!(storage(StorageError::Corrupt("a frame".into())).is_damage());
        let wrapped = |source| StorageError::BrandLog {
            brand: 2,
            source: Box::new(source),
        };
        assert!(storage(wrapped(StorageError::Corrupt("a table".into()))).is_damage());
        assert!(!storage(wrapped(io())).is_damage());
        assert!(LedgerError::Checkpoint {
            brand: 2,
            source: crate::checkpoint::CheckpointError::HashLength,
        }
        .is_damage());
    }
    use crate::storage::DiskStore;
    use crate::testing::{self, BRAND};

    /// `card`'s purchase of `amount` under the till's txn `txn`, committed
    /// alone; returns its record and checkpoint as the stream carries them.
    fn one_purchase(ledger: &mut BrandLedger, card: &str, txn: u64, amount: i64) -> Followed {
        let op = testing::purchase(card, amount, false);
        let sub = testing::signed(&testing::terminal_key(), Principal::Terminal(1), txn, op);
        ledger.submit_now(sub).unwrap().unwrap();
        let seq = ledger.state.seq;
        let record = ledger.store.record(BRAND, seq).unwrap().unwrap();
        let checkpoint = ledger.store.last_checkpoint(BRAND).unwrap().unwrap();
        Followed {
            seq,
            record,
            checkpoint,
        }
    }

    /// One commit of one record, as a follower reads it off the stream.
    struct Followed {
        seq: u64,
        record: Vec<u8>,
        checkpoint: Vec<u8>,
    }

    impl Followed {
        fn onto(&self, ledger: &mut BrandLedger) -> Result<(), LedgerError> {
            let store = ledger.store.clone();
            let batch = [(self.seq, self.record.as_slice())];
            ledger.follow_batch(store.as_ref(), &batch, &self.checkpoint)
        }
    }

    fn store(dir: &Path) -> Arc<dyn LogStore> {
        Arc::new(DiskStore::open(dir).unwrap())
    }

    /// Refuses every submission once it has seen one refusal, as the
    /// daemon's probing budget does once it is spent.
    #[derive(Default)]
    struct OneMiss {
        seen: Vec<usize>,
        spent: bool,
    }

    impl Gate for OneMiss {
        fn before(&mut self, _: usize) -> Result<(), Refusal> {
            match self.spent {
                true => Err(Refusal::new(ErrorCode::RateLimited, "spent")),
                false => Ok(()),
            }
        }
        fn after(&mut self, i: usize, answer: &Answer) {
            self.seen.push(i);
            self.spent |= matches!(answer, Err(r) if r.code == ErrorCode::CardNotFound);
        }
    }

    /// The gate is asked between submissions of one batch: a refusal it
    /// sees stops the rest of the batch unapplied, hits and misses alike.
    #[test]
    fn a_gate_sees_each_answer_before_the_next_submission_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ledger, card) = testing::provision(store(dir.path()), "s", 10_000);
        let till = |txn, card: &str| {
            let op = testing::purchase(card, 100, false);
            testing::signed(&testing::terminal_key(), Principal::Terminal(1), txn, op)
        };
        let unknown = crate::card_number::generate(BRAND);
        let subs = [till(2, &card), till(3, &unknown), till(4, &card)];
        let seq = ledger.state.seq;
        let mut gate = OneMiss::default();
        let batch = ledger.apply_batch_gated(&subs, &[], &mut gate);
        let codes: Vec<_> = batch
            .answers
            .iter()
            .map(|a| a.as_ref().err().map(|r| r.code))
            .collect();
        assert_eq!(
            codes,
            [
                None,
                Some(ErrorCode::CardNotFound),
                Some(ErrorCode::RateLimited)
            ]
        );
        assert_eq!(gate.seen, [0, 1, 2]);
        assert_eq!(ledger.state.seq, seq + 1, "only the first was applied");
        assert_eq!(batch.written.len(), 1);
    }

    fn recovered(store: &Arc<dyn LogStore>) -> BrandLedger {
        BrandLedger::recover(store.clone(), testing::server_key(), BRAND).unwrap()
    }

    /// Two data directories of one provisioned brand (an active node's and
    /// its standby's, caught up), and the brand's card.
    fn provisioned_twice(active: &Path, standby: &Path) -> String {
        let (ledger, card) = testing::provision(store(active), "s", 10_000);
        drop(ledger);
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(active)
            .arg(standby)
            .status();
        assert!(copied.unwrap().success());
        card
    }

    /// An active node that committed one purchase past what its standby's
    /// local log holds (a copy of the active's directory before it).
    struct Nodes {
        writer: BrandLedger,
        commit: Followed,
        card: String,
        local: Arc<dyn LogStore>,
        _dirs: tempfile::TempDir,
    }

    fn nodes() -> Nodes {
        let dirs = tempfile::tempdir().unwrap();
        let (active, local) = (dirs.path().join("active"), dirs.path().join("local"));
        let card = provisioned_twice(&active, &local);
        let mut writer = recovered(&store(&active));
        let commit = one_purchase(&mut writer, &card, 2, 700);
        Nodes {
            writer,
            commit,
            card,
            local: store(&local),
            _dirs: dirs,
        }
    }

    /// A record stamped before the one it follows (written by a writer whose
    /// clock and memory both went back, or by someone rewriting the log with
    /// the server key) stops recovery: it could sit in an earlier brand day
    /// or before a card's expiry.
    /// `card`'s purchase under the till's txn `txn`, committed by a writer
    /// whose clock and memory went back a day; returns it as the stream
    /// carries it.
    fn a_day_back(writer: &mut BrandLedger, card: &str, txn: u64) -> Followed {
        let earlier = writer.last_time_ms - 86_400_000;
        writer.last_time_ms = earlier;
        let op = testing::purchase(card, 700, false);
        let sub = testing::signed(&testing::terminal_key(), Principal::Terminal(1), txn, op);
        let batch = writer.apply_batch_at(std::slice::from_ref(&sub), earlier);
        let checkpoint = writer.checkpoint();
        BrandLedger::commit(writer.store.as_ref(), BRAND, &batch.written, &checkpoint).unwrap();
        let seq = writer.state.seq;
        Followed {
            seq,
            record: writer.store.record(BRAND, seq).unwrap().unwrap(),
            checkpoint: writer.store.last_checkpoint(BRAND).unwrap().unwrap(),
        }
    }

    #[test]
    fn a_stored_record_stamped_before_the_one_it_follows_stops_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, card) = testing::provision(store(dir.path()), "s", 10_000);
        let seq = a_day_back(&mut writer, &card, 2).seq;
        drop(writer);
        let store = store(dir.path());
        match BrandLedger::recover(store, testing::server_key(), BRAND) {
            Err(LedgerError::Replay { source, .. }) => {
                assert_eq!(source.seq, seq);
                assert!(source.what.contains("time goes backwards"), "{source}");
            }
            other => panic!("recovered: {:?}", other.map(|l| l.state.seq)),
        }
    }

    /// The standby's follower was recovered from its local log while the
    /// node's previous writer still had a commit on its way there; that
    /// commit lands first, then the follower reads it off the stream.
    #[test]
    fn a_followed_commit_the_local_log_already_holds_is_taken_once() {
        let n = nodes();
        let mut follower = recovered(&n.local);
        n.commit.onto(&mut recovered(&n.local)).unwrap();
        n.commit.onto(&mut follower).unwrap();
        assert_eq!(follower.state.seq, n.commit.seq);
        assert_eq!(follower.state, n.writer.state);
        drop(follower);
        assert_eq!(recovered(&n.local).state, n.writer.state, "stored once");
    }

    /// A standby checks what recovery and the auditor check: a followed
    /// record stamped before the one it follows is refused.
    #[test]
    fn a_followed_record_stamped_before_the_one_it_follows_is_refused() {
        let mut n = nodes();
        let mut follower = recovered(&n.local);
        n.commit.onto(&mut follower).unwrap();
        let back = a_day_back(&mut n.writer, &n.card, 3);
        let refused = back.onto(&mut follower);
        assert!(
            matches!(&refused, Err(LedgerError::Replay { source, .. })
                if source.seq == back.seq && source.what.contains("time goes backwards")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_followed_commit_where_the_local_log_holds_another_record_is_refused() {
        let n = nodes();
        let mut follower = recovered(&n.local);
        let mut lost_branch = recovered(&n.local);
        let other = one_purchase(&mut lost_branch, &n.card, 2, 300);
        assert_eq!(other.seq, n.commit.seq);
        let refused = n.commit.onto(&mut follower);
        assert!(
            matches!(&refused, Err(LedgerError::Replay { source, .. })
                if source.seq == n.commit.seq && source.what.contains("another record")),
            "{refused:?}"
        );
    }
}
