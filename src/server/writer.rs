//! The single writer of one brand's log: group commit, in two stages.
//!
//! The applier takes everything queued (up to MAX_COMMIT_BATCH), applies
//! it through the state machine and signs the batch's checkpoint; the
//! committer writes each batch's records and that checkpoint as one log
//! frame and `fdatasync`s it, strictly in apply order, and only then sends
//! the answers. So the next batch is applied while the previous one syncs,
//! and nothing is answered before it (and every batch before it) is
//! durable. A failed commit stops both stages: memory is ahead of disk.
//!
//! The committer's writes run on the brand's own commit thread, never in
//! tokio's blocking pool, so no other work (audit reads, snapshots, another
//! brand's anything) can make a durable commit wait for a thread. Once a
//! batch that disables a terminal is durable, that terminal's open sessions
//! are cut (`sessions::Sessions::revoke`).
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::keys::KeyIndex;
use super::reply::{Reply, ReplyTo};
use super::sessions::Sessions;
use super::snapshot_copy::SnapshotCopy;
use crate::ledger::{Answer, Batch, BrandLedger, CopySeed, Submission};
use crate::limits::{COMMIT_PIPELINE_DEPTH, MAX_COMMIT_BATCH};
use crate::pb;
use crate::snapshot::job::{GenerationJob, PartJob, Work};
use crate::snapshot::parts::Chain;
use crate::state::{Principal, Written};
use crate::storage::LogStore;

/// What a connection asks of a brand's writer.
pub enum Command {
    /// Apply a verified signed request; answer once durable.
    Apply(Submission, Reply),
    /// Describe the session of a signer that just proved its key.
    SignOn(
        Principal,
        [u8; 32],
        oneshot::Sender<Result<pb::SignOnOk, crate::error::Refusal>>,
    ),
    /// Whether a card is issued and not replaced (the holder store takes
    /// no person for a card that is not there). Answered from the
    /// applier's state: a card whose issue is still being flushed counts,
    /// and if that flush failed the brand stops anyway.
    HasCard(u64, oneshot::Sender<bool>),
    /// Stop serving for good (the ledger on disk was found changed).
    Halt(String),
    /// Read the brand's state (the web page): see [`ReadFn`].
    Read(ReadFn),
}

/// A read of a brand's state that writes nothing (the owner's web page).
/// It runs on the applier between batches, so it sees one consistent
/// state, and returns what delivers its answer; that is run by the
/// committer with the next batch's answers, so nothing read is shown
/// before it is durable (the same rule as every other answer).
pub type ReadFn = Box<dyn FnOnce(&crate::state::BrandState) -> Deliver + Send>;

/// Delivers a read's answer (once what it read is durable).
pub type Deliver = Box<dyn FnOnce() + Send>;

/// Halts a brand if its writer still runs (see [`BrandHandle::halter`]).
pub struct Halter {
    tx: mpsc::WeakUnboundedSender<Command>,
    halted: Arc<std::sync::atomic::AtomicBool>,
}

impl Halter {
    /// [`BrandHandle::halt`], if the writer has not ended.
    pub fn halt(&self, why: String) {
        self.halted.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.send(Command::Halt(why));
        }
    }
}

/// A handle to a brand's writer task.
///
/// Its queue is unbounded so that the verifier threads can hand over
/// verified requests without ever blocking (a stalled brand must not stall
/// the others' verification); what it holds is bounded all the same: every
/// request from a connection holds one of that connection's in-flight
/// permits until its answer is written, and a connection waits for its
/// sign-on answer (see `MAX_IN_FLIGHT_PER_CONNECTION`).
#[derive(Clone)]
pub struct BrandHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// Set by [`BrandHandle::halt`]: audit reads, which do not pass the
    /// writer, ask it too.
    halted: Arc<std::sync::atomic::AtomicBool>,
}

impl BrandHandle {
    /// Starts the writer (applier and committer tasks) for `ledger`.
    pub fn spawn(ledger: BrandLedger, keys: Arc<KeyIndex>) -> Self {
        BrandHandle::spawn_revoking(ledger, keys, None, &TaskTracker::new(), None)
    }

    /// Like [`BrandHandle::spawn`]; once a terminal's disabling is durable,
    /// every open session of it in `sessions` is closed. Both tasks are
    /// spawned on `tracker`: once every handle is dropped, they make what
    /// they hold durable, answer it and end, so a shutdown waits on it.
    /// With `copy` (`BrandLedger::hand_snapshots_over`), snapshots are
    /// written by a copy of the state that follows the committer
    /// (`snapshot_copy.rs`) instead of the applier's forks.
    pub fn spawn_revoking(
        ledger: BrandLedger,
        keys: Arc<KeyIndex>,
        sessions: Option<Arc<Sessions>>,
        tracker: &TaskTracker,
        copy: Option<CopySeed>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (jobs_tx, jobs_rx) = mpsc::channel(COMMIT_PIPELINE_DEPTH);
        let committer = Committer {
            brand: ledger.brand_id(),
            store: ledger.store(),
            keys,
            sessions,
            thread: commit_thread(ledger.brand_id()),
            records: super::metrics::get().records_of(ledger.brand_id()),
            copy: copy.and_then(start_copy),
        };
        let halted: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let stopped = halted.clone();
        tracker.spawn(commit_in_order(
            committer,
            ledger.checkpoint(),
            jobs_rx,
            stopped,
        ));
        tracker.spawn(apply_in_order(ledger, rx, jobs_tx, halted.clone()));
        BrandHandle { tx, halted }
    }

    /// Submits a request and waits for its durable answer. None if the
    /// writer has stopped (the daemon is going down).
    pub async fn submit(&self, sub: Submission) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Apply(sub, Reply::Wait(tx))).ok()?;
        rx.await.ok()
    }

    /// Submits a request whose answer goes straight to `to` once durable.
    /// Returns `to` back if the writer has stopped (the daemon is going
    /// down).
    pub fn submit_to(&self, sub: Submission, to: ReplyTo) -> Result<(), ReplyTo> {
        self.send(Command::Apply(sub, Reply::Connection(to)))
            .map_err(|e| match e.0 {
                Command::Apply(_, Reply::Connection(to)) => to,
                _ => unreachable!("sent an Apply to a connection"),
            })
    }

    /// Stops the brand: from now on every request and sign-on is refused
    /// with STORAGE_FAILURE and `why`.
    pub fn halt(&self, why: String) {
        self.halted.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.tx.send(Command::Halt(why));
    }

    /// What can halt the brand without keeping its writer alive: a
    /// background task (the chain check) holding it does not make a
    /// shutdown wait for that task.
    pub fn halter(&self) -> Halter {
        Halter {
            tx: self.tx.downgrade(),
            halted: self.halted.clone(),
        }
    }

    /// Queues a read of the brand's state; false if the writer has stopped
    /// (dropping `read` then tells its waiter).
    pub fn read(&self, read: ReadFn) -> bool {
        !self.is_halted() && self.send(Command::Read(read)).is_ok()
    }

    /// True once the brand was halted: nothing of it may be served.
    pub fn is_halted(&self) -> bool {
        self.halted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The sign-on answer for `principal`, who proved `key`.
    pub async fn sign_on(
        &self,
        principal: Principal,
        key: [u8; 32],
    ) -> Option<Result<pb::SignOnOk, crate::error::Refusal>> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::SignOn(principal, key, tx)).ok()?;
        rx.await.ok()
    }

    /// True if the brand has `card`, issued and not replaced; `None` if the
    /// writer has stopped.
    pub async fn has_card(&self, card: u64) -> Option<bool> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::HasCard(card, tx)).ok()?;
        rx.await.ok()
    }

    /// True if the brand's state already has `txn_id` of `principal` (or
    /// has forgotten ids that old): a retry, which the state machine answers
    /// from the ledger. `None` if the writer has stopped.
    pub async fn txn_known(&self, principal: Principal, txn_id: u64) -> Option<bool> {
        let ns = principal.txn_namespace();
        self.read_with(move |state| !matches!(state.txn_entry(ns, txn_id), Ok(None)))
            .await
    }

    /// `f` of the live state, delivered once what it read is durable;
    /// `None` if the writer has stopped.
    async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::state::BrandState) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let read: ReadFn = Box::new(move |state| {
            let value = f(state);
            Box::new(move || {
                let _ = tx.send(value);
            })
        });
        if !self.read(read) {
            return None;
        }
        rx.await.ok()
    }

    /// What the state would do now with `req`, the owner's EraseHolder
    /// signed with `signer_key` (`state::erase_fate`). `None` if the writer
    /// has stopped.
    pub async fn erase_fate(
        &self,
        signer_key: [u8; 32],
        req: crate::pb::Request,
    ) -> Option<crate::state::Fate> {
        self.read_with(move |state| crate::state::erase_fate(state, &signer_key, &req))
            .await
    }

    /// What the state would do now with `req`, a `SetPin` signed with
    /// `signer_key` by `principal`, if its old PIN's verdict is
    /// `pin_verified` (`state::set_pin_fate`, at the server's time now).
    /// `None` if the writer has stopped.
    pub async fn set_pin_fate(
        &self,
        (principal, signer_key): (Principal, [u8; 32]),
        req: crate::pb::Request,
        pin_verified: bool,
    ) -> Option<crate::state::Fate> {
        self.read_with(move |state| {
            let ctx = crate::state::Context {
                time_ms: crate::ledger::now_ms(),
                principal,
                signer_key: &signer_key,
                request: &[],
                signature: &[],
                pin_verified,
            };
            crate::state::set_pin_fate(state, &ctx, &req)
        })
        .await
    }

    /// The seq of the brand's newest record (applied); `None` if the
    /// writer has stopped. A PIN entry stored for a later record is from a
    /// ledger this one is not (a brand put back from a backup): see
    /// `pins::Held::set`.
    pub async fn head_seq(&self) -> Option<u64> {
        self.read_with(|state| state.seq).await
    }

    /// True if the ledger says `card` is locked by wrong PINs; false for
    /// an unlocked card or no such card. `None` if the writer has stopped.
    pub async fn card_pin_locked(&self, card: u64) -> Option<bool> {
        self.card_flag(card, |c| c.pin_locked).await
    }

    /// `flag` of `card` in the live state (false for no such card).
    async fn card_flag(&self, card: u64, flag: fn(&crate::state::Card) -> bool) -> Option<bool> {
        self.read_with(move |state| state.cards.get(&card).is_some_and(flag))
            .await
    }

    /// Queues `cmd`, counted in the queue-depth gauge until the applier
    /// takes it.
    // The error hands the command back (as tokio's does), on the rare
    // stopped-writer path only: boxing it would cost every send.
    #[allow(clippy::result_large_err)]
    fn send(&self, cmd: Command) -> Result<(), mpsc::error::SendError<Command>> {
        // Counted before it is sent, so the applier never takes it first.
        let depth = &super::metrics::get().queue_depth;
        depth.inc();
        self.tx.send(cmd).inspect_err(|_| depth.dec())
    }
}

fn sign_on_ok(
    ledger: &BrandLedger,
    principal: Principal,
    key: &[u8; 32],
) -> Result<pb::SignOnOk, crate::error::Refusal> {
    let s = &ledger.state;
    // The state, not the key index, says which key is the principal's now:
    // a node's index may still hold a key rotated away (a standby learns
    // rotations as it follows, and only adds keys).
    let current = match principal {
        Principal::Owner => Some(s.owner_key),
        Principal::Terminal(id) => s.terminals.get(&id).map(|t| t.public_key),
        Principal::Auditor(id) | Principal::StoreManager(id, _) => {
            s.read_keys.get(&id).map(|k| k.public_key)
        }
        Principal::Server => None,
    };
    if current.is_some_and(|c| c != *key) {
        return Err(crate::error::Refusal::new(
            pb::ErrorCode::UnknownKey,
            "this key was rotated away",
        ));
    }
    if let Principal::Terminal(id) = principal {
        if s.terminals.get(&id).is_none_or(|t| t.disabled) {
            return Err(crate::error::Refusal::new(
                pb::ErrorCode::TerminalDisabled,
                "this terminal was disabled by the owner",
            ));
        }
    }
    if let Principal::Auditor(id) | Principal::StoreManager(id, _) = principal {
        if s.read_keys.get(&id).is_none_or(|k| k.removed) {
            return Err(crate::error::Refusal::new(
                pb::ErrorCode::UnknownKey,
                "this read-only key was removed by the owner",
            ));
        }
    }
    let (role, store_id, terminal_id) = match principal {
        Principal::Terminal(id) => (
            pb::Role::Terminal,
            s.terminals.get(&id).map_or(0, |t| t.store_id),
            id,
        ),
        Principal::Auditor(_) => (pb::Role::Auditor, 0, 0),
        Principal::StoreManager(_, store) => (pb::Role::StoreManager, store, 0),
        _ => (pb::Role::Owner, 0, 0),
    };
    Ok(pb::SignOnOk {
        role: role as i32,
        brand_id: s.brand_id,
        brand_name: s.name.clone(),
        currency: s.currency.clone(),
        currency_exponent: s.exponent,
        store_id,
        store_name: s
            .stores
            .get(&store_id)
            .map(|st| st.name.clone())
            .unwrap_or_default(),
        terminal_id,
        last_txn_id: s.last_txn_id(principal),
        max_frame_bytes: 0,
        max_in_flight: 0,
        // Filled in by the session (`sign_on`), which holds the key.
        pin_public_key: Vec::new(),
    })
}

/// Attaches inclusion proofs (against `checkpoint`) to the answers that
/// asked for one. Proofs read O(log^2 n) stored nodes; only asked-for
/// answers pay for them.
fn attach_proofs(batch: &mut Batch, store: &dyn LogStore, checkpoint: &pb::Checkpoint) {
    let nodes = crate::storage::StoredNodes {
        store,
        brand: checkpoint.brand_id,
    };
    for &i in &batch.proof_wanted {
        let Ok(reply) = &mut batch.answers[i] else {
            continue;
        };
        let Some(seq) = reply.receipt.as_ref().map(|r| r.seq) else {
            continue;
        };
        match crate::merkle::inclusion_proof(&nodes, seq - 1, checkpoint.tree_size) {
            Ok(path) => {
                reply.proof = Some(pb::InclusionProof {
                    leaf_index: seq - 1,
                    tree_size: checkpoint.tree_size,
                    path: path.iter().map(|h| h.to_vec()).collect(),
                    checkpoint: Some(checkpoint.clone()),
                })
            }
            Err(e) => tracing::error!(seq, error = %e, "inclusion proof failed"),
        }
    }
}

/// A sign-on answer and where it goes.
type SignOnReply = (
    oneshot::Sender<Result<pb::SignOnOk, crate::error::Refusal>>,
    Result<pb::SignOnOk, crate::error::Refusal>,
);

/// One applied batch on its way from the applier to the committer.
struct Job {
    /// The new records (shared with the applier, which answers retries of
    /// them from memory until they are surely in storage).
    written: Arc<Vec<Written>>,
    /// Signed right after this batch was applied, so it covers exactly the
    /// tree after it; None when the batch wrote nothing.
    checkpoint: Option<pb::Checkpoint>,
    /// Answers, enrolled keys, proof requests (`written` taken out).
    batch: Batch,
    waiting: Vec<Reply>,
    /// Computed from the state before this batch, which may itself not be
    /// durable yet: released with this batch's answers.
    sign_ons: Vec<SignOnReply>,
    /// Reads of that same state, delivered with them.
    reads: Vec<Deliver>,
}

impl Job {
    fn refuse(self) {
        for to in self.waiting {
            to.send(Err(stopped_refusal()));
        }
        for (tx, _) in self.sign_ons {
            let _ = tx.send(Err(stopped_refusal()));
        }
    }
}

/// Stage 1: applies batches in memory and hands them to the committer,
/// at most COMMIT_PIPELINE_DEPTH ahead of the one being flushed.
async fn apply_in_order(
    mut ledger: BrandLedger,
    mut rx: mpsc::UnboundedReceiver<Command>,
    jobs: mpsc::Sender<Job>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    // Records of the batches the committer may not have made durable yet:
    // with a slot reserved before applying, that is at most the last
    // COMMIT_PIPELINE_DEPTH batches handed over.
    let mut unflushed: VecDeque<Arc<Vec<Written>>> =
        VecDeque::with_capacity(COMMIT_PIPELINE_DEPTH + 1);
    let mut commands = Vec::with_capacity(MAX_COMMIT_BATCH);
    // The write of the newest snapshot, which goes on while batches apply.
    let mut snapshot_store: Option<Storing> = None;
    let give_up = give_up_when_stopped(&stopped, &jobs);
    loop {
        // Room first, then the queue: while the committer is behind,
        // requests keep queuing and the next batch takes them all.
        let Ok(slot) = jobs.reserve().await else {
            break; // the committer stopped: a commit failed
        };
        let taken = rx.recv_many(&mut commands, MAX_COMMIT_BATCH).await;
        if taken == 0 {
            // Every handle is gone: the daemon is going down. A snapshot
            // being written is finished first (a cut leaves the old one,
            // and the next start replays more); then, where it pays, a
            // final one, so that the next start replays little.
            if let Some(store) = snapshot_store {
                ledger.continue_snapshots(store.await.ok().flatten());
            }
            if ledger.final_snapshot_due() {
                snapshot_here(ledger, give_up).await;
            }
            return;
        }
        super::metrics::get().queue_depth.sub(taken as i64);
        if jobs.is_closed() {
            // A commit failed while we waited: memory is ahead of disk.
            commands.drain(..).for_each(|c| refuse(c, STORAGE_FAILED));
            break;
        }
        if let Some(why) = halted(&commands) {
            tracing::error!(brand = ledger.brand_id(), why, "brand halted");
            commands.drain(..).for_each(|c| refuse(c, &why));
            drop(ledger);
            refuse_all(rx, &why).await;
            return;
        }
        let mut subs = Vec::with_capacity(commands.len());
        let mut waiting = Vec::with_capacity(commands.len());
        let mut sign_ons = Vec::new();
        let mut reads = Vec::new();
        for cmd in commands.drain(..) {
            match cmd {
                Command::Apply(sub, tx) => {
                    subs.push(sub);
                    waiting.push(tx);
                }
                Command::SignOn(p, key, tx) => sign_ons.push((tx, sign_on_ok(&ledger, p, &key))),
                Command::HasCard(card, tx) => {
                    let _ = tx.send(has_card(&ledger, card));
                }
                Command::Read(read) => reads.push(read(&ledger.state)),
                Command::Halt(_) => unreachable!("a halt is taken before the batch"),
            }
        }
        // Even a batch that writes nothing goes through the committer: its
        // answers (balances, refusals, replays) may rest on records still
        // being flushed.
        let behind: Vec<&[Written]> = unflushed.iter().map(|w| w.as_slice()).collect();
        let mut batch = ledger.apply_batch_gated(&subs, &behind, &mut Probing(&mut waiting));
        let written = Arc::new(std::mem::take(&mut batch.written));
        let checkpoint = (!written.is_empty()).then(|| ledger.checkpoint());
        unflushed.push_back(written.clone());
        if unflushed.len() > COMMIT_PIPELINE_DEPTH {
            unflushed.pop_front();
        }
        slot.send(Job {
            written,
            checkpoint,
            batch,
            waiting,
            sign_ons,
            reads,
        });
        ledger = snapshot_if_due(ledger, &mut snapshot_store, &give_up).await;
    }
    // Memory is ahead of disk and nothing more of it may be served: the
    // brand is halted (a replicated node then gives its lease up).
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(ledger);
    refuse_all(rx, STORAGE_FAILED).await;
}

/// The probing budgets of a batch's requests, asked as each is applied: a
/// till that pipelines card guesses sees the budget's misses, then
/// `RATE_LIMITED` for the rest of what it sent, hits and misses alike.
struct Probing<'a>(&'a mut [Reply]);

impl crate::ledger::Gate for Probing<'_> {
    fn before(&mut self, i: usize) -> Result<(), crate::error::Refusal> {
        match &self.0[i] {
            Reply::Connection(to) => to.admit(),
            Reply::Wait(_) => Ok(()),
        }
    }

    fn after(&mut self, i: usize, answer: &Answer) {
        if let Reply::Connection(to) = &mut self.0[i] {
            to.found(answer);
        }
    }
}

/// True if the brand has `card`, issued and not replaced.
fn has_card(ledger: &BrandLedger, card: u64) -> bool {
    let card = ledger.state.cards.get(&card);
    card.is_some_and(|c| c.status != pb::CardStatus::Replaced)
}

/// Why the brand must stop, if a command of the batch says so.
fn halted(commands: &[Command]) -> Option<String> {
    commands.iter().find_map(|c| match c {
        Command::Halt(why) => Some(why.clone()),
        _ => None,
    })
}

/// A snapshot being stored beside the applier; it ends with the window
/// the next snapshot continues (None: the next starts a generation).
type Storing = tokio::task::JoinHandle<Option<Chain>>;

/// True once the brand stopped on this node (halted, or its commits
/// failed): a snapshot waiting for its record then stops waiting, and
/// deletes nothing. The record may never come, and another writer (a
/// follower of this node, after the lease went) may own the brand's
/// snapshot files by then.
type GiveUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// The brand's [`GiveUp`]: its writer stopped, or its committer did.
fn give_up_when_stopped(
    stopped: &Arc<std::sync::atomic::AtomicBool>,
    jobs: &mpsc::Sender<Job>,
) -> GiveUp {
    let (stopped, committer) = (stopped.clone(), jobs.downgrade());
    Arc::new(move || {
        stopped.load(std::sync::atomic::Ordering::SeqCst)
            || committer.upgrade().is_none_or(|c| c.is_closed())
    })
}

/// Starts the snapshot that is due, if any. One at a time, and the applier
/// never waits for one: while the previous is still being written (a big
/// state, a busy machine), the due one waits for the next batch.
async fn snapshot_if_due(
    mut ledger: BrandLedger,
    store: &mut Option<Storing>,
    give_up: &GiveUp,
) -> BrandLedger {
    let writing = store.as_ref().is_some_and(|s| !s.is_finished());
    if !ledger.snapshot_due() || writing {
        return ledger;
    }
    if let Some(previous) = store.take() {
        // Finished: this only reaps it.
        ledger.continue_snapshots(previous.await.ok().flatten());
    }
    match snapshot_beside(&mut ledger, give_up) {
        Ok(waiting) => {
            *store = waiting;
            ledger
        }
        Err(()) => snapshot_here(ledger, give_up.clone()).await,
    }
}

/// Starts the snapshot that is due beside the applier: the next part of
/// the window on a blocking thread (the applier paused only to take what
/// changed), or a new generation in a forked child (`snapshot_child.rs`;
/// the applier paused for the fork). Returns the task that ends with it,
/// or `Err` if the fork failed (the caller then writes it here).
fn snapshot_beside(ledger: &mut BrandLedger, give_up: &GiveUp) -> Result<Option<Storing>, ()> {
    let brand = ledger.brand_id();
    let started = std::time::Instant::now();
    let work = match ledger.begin_snapshot() {
        Ok(Some(work)) => work,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::warn!(brand, error = %crate::error::causes(&e), "snapshot not begun");
            return Ok(None);
        }
    };
    match work {
        Work::Part(job) => Ok(Some(store_part(brand, job, started, give_up.clone()))),
        Work::Generation(job) => fork_generation(brand, &job, started, give_up.clone()).map(Some),
    }
}

/// The part writer's scheduling priority: below tills and the commit
/// path, as the snapshot copy's (not 19 or SCHED_IDLE: under a long full
/// load the part would starve while the state's copies of changed values
/// grow until it is taken).
const PART_NICE: i32 = 10;

/// Writes the next part on a thread of its own at a lower priority.
fn store_part(
    brand: u32,
    job: Box<PartJob>,
    started: std::time::Instant,
    give_up: GiveUp,
) -> Storing {
    let stall = started.elapsed();
    super::metrics::get()
        .snapshot_stall_seconds
        .observe(stall.as_secs_f64());
    let (seq, changed) = (job.seq(), job.changed());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("snapshot-{brand}"))
        .spawn(move || {
            super::audit::lower_priority(PART_NICE);
            let _ = tx.send(job.run(&*give_up));
        });
    if let Err(e) = spawned {
        tracing::warn!(brand, error = %e, "no thread for a snapshot part; the next starts anew");
    }
    tokio::spawn(async move {
        let Ok(result) = rx.await else {
            tracing::error!(
                brand,
                "the snapshot part's thread ended without a result; the next starts anew"
            );
            return None;
        };
        let took = started.elapsed();
        super::metrics::get()
            .snapshot_seconds
            .observe(took.as_secs_f64());
        match result {
            Ok((chain, bytes)) => {
                tracing::info!(
                    brand,
                    seq,
                    changed,
                    bytes,
                    stall_us = stall.as_micros() as u64,
                    took_ms = took.as_millis() as u64,
                    "snapshot part stored"
                );
                Some(chain)
            }
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::warn!(
                    brand,
                    error,
                    "snapshot part not stored; the next starts anew"
                );
                None
            }
        }
    })
}

/// Forks a child that writes a new generation; the task waiting for it
/// ends with the generation's window.
fn fork_generation(
    brand: u32,
    job: &GenerationJob<'_>,
    started: std::time::Instant,
    give_up: GiveUp,
) -> Result<Storing, ()> {
    let (seq, settle) = (job.state.seq, job.settle());
    let child = match super::snapshot_child::spawn(job) {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!(brand, error = %crate::error::causes(&e), "writing the snapshot here");
            return Err(());
        }
    };
    let stall = started.elapsed();
    super::metrics::get()
        .snapshot_stall_seconds
        .observe(stall.as_secs_f64());
    Ok(tokio::task::spawn_blocking(move || {
        // The files the generation replaces go once its record is durable.
        let why = |e: &dyn std::error::Error| crate::error::causes(e);
        let result = (child.wait().map_err(|e| why(&e)))
            .and_then(|()| settle.run(&*give_up).map_err(|e| why(&e)));
        let took = started.elapsed();
        super::metrics::get()
            .snapshot_seconds
            .observe(took.as_secs_f64());
        match result {
            Ok(chain) => {
                tracing::info!(
                    brand,
                    seq,
                    stall_us = stall.as_micros() as u64,
                    took_ms = took.as_millis() as u64,
                    "snapshot generation stored by a child process"
                );
                Some(chain)
            }
            Err(error) => {
                tracing::warn!(brand, error, "snapshot not stored");
                None
            }
        }
    }))
}

/// Writes the snapshot that is due on a blocking thread while the applier
/// waits (shutdown, or a fork that failed). A failed snapshot costs only a
/// longer restart.
async fn snapshot_here(mut ledger: BrandLedger, give_up: GiveUp) -> BrandLedger {
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = ledger.write_snapshot_unless(&*give_up) {
            let brand = ledger.brand_id();
            tracing::warn!(brand, error = %crate::error::causes(&e), "snapshot not stored");
        }
        let took = started.elapsed().as_secs_f64();
        super::metrics::get().snapshot_seconds.observe(took);
        ledger
    })
    .await
    .expect("writing a snapshot does not panic")
}

/// Starts a brand's snapshot copy; None (logged) if its thread cannot
/// start: snapshots then wait for a restart.
fn start_copy(seed: CopySeed) -> Option<SnapshotCopy> {
    let brand = seed.brand;
    SnapshotCopy::start(seed)
        .inspect_err(|e| tracing::error!(brand, error = %e, "the snapshot copy could not start"))
        .ok()
}

/// Work for a brand's commit thread.
type CommitWork = Box<dyn FnOnce() + Send>;

/// Starts the brand's own commit thread: durable commits never wait for a
/// thread of tokio's blocking pool, which audit reads, snapshots or anything
/// else may have filled. It ends when its committer does.
fn commit_thread(brand: u32) -> std::sync::mpsc::Sender<CommitWork> {
    let (tx, rx) = std::sync::mpsc::channel::<CommitWork>();
    std::thread::Builder::new()
        .name(format!("commit-{brand}"))
        .spawn(move || {
            for work in rx {
                work();
            }
        })
        .expect("starting a brand's commit thread");
    tx
}

/// What the committer of one brand works with.
struct Committer {
    brand: u32,
    store: Arc<dyn LogStore>,
    keys: Arc<KeyIndex>,
    sessions: Option<Arc<Sessions>>,
    thread: std::sync::mpsc::Sender<CommitWork>,
    /// The brand's record-count gauge.
    records: prometheus::IntGauge,
    /// The copy of the state that writes snapshots, if it does.
    copy: Option<SnapshotCopy>,
}

impl Committer {
    /// Writes one batch durably on the commit thread; the error chain on
    /// one line if it failed (or the thread died).
    async fn commit(
        &self,
        written: Arc<Vec<Written>>,
        checkpoint: pb::Checkpoint,
    ) -> Result<pb::Checkpoint, String> {
        let (store, brand) = (self.store.clone(), self.brand);
        let (tx, rx) = oneshot::channel();
        let work: CommitWork = Box::new(move || {
            let result = BrandLedger::commit(store.as_ref(), brand, &written, &checkpoint)
                .map(|()| checkpoint)
                .map_err(|e| crate::error::causes(&e));
            let _ = tx.send(result);
        });
        if self.thread.send(work).is_err() {
            return Err("the commit thread has stopped".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("the commit thread panicked".into()))
    }

    /// After a durable batch: rotated-out keys can no longer sign on,
    /// enrolled keys may, and disabled terminals lose every open session.
    /// Returns the principals whose sessions a rotation ends, once the
    /// batch's answers are on their way (the rotating session gets its
    /// answer before it is cut).
    fn publish(&self, job: &Job) -> Vec<Principal> {
        for (key, _) in &job.batch.retired {
            self.keys.remove(key, self.brand);
        }
        for (key, principal) in &job.batch.enrolled {
            self.keys.insert(*key, self.brand, *principal);
        }
        if let Some(sessions) = &self.sessions {
            for terminal in disabled_terminals(&job.written) {
                sessions.revoke(self.brand, terminal);
            }
            for key in removed_keys(&job.written) {
                sessions.revoke_principal(self.brand, key);
            }
        }
        job.batch.retired.iter().map(|(_, p)| *p).collect()
    }

    /// Ends every open session of the principals whose key was rotated
    /// (they signed on with the old key; the new key signs on afresh).
    fn cut_rotated(&self, rotated: &[Principal]) {
        let Some(sessions) = &self.sessions else {
            return;
        };
        for principal in rotated {
            sessions.revoke_principal(self.brand, *principal);
        }
    }
}

/// The read-only keys that `written` removes.
fn removed_keys(written: &[Written]) -> Vec<Principal> {
    written
        .iter()
        .filter(|w| w.record.kind == pb::RecordKind::KeyRemoved as i32)
        .map(|w| match w.record.store_id {
            0 => Principal::Auditor(w.record.new_id),
            store => Principal::StoreManager(w.record.new_id, store),
        })
        .collect()
}

/// The terminals that `written` disables.
fn disabled_terminals(written: &[Written]) -> Vec<u32> {
    use prost::Message;
    written
        .iter()
        .filter(|w| w.record.kind == pb::RecordKind::TerminalStatusChanged as i32)
        .filter_map(|w| match pb::Request::decode(w.record.request.as_slice()) {
            Ok(pb::Request {
                op: Some(pb::request::Op::SetTerminalDisabled(d)),
                ..
            }) if d.disabled => Some(d.terminal_id),
            _ => None,
        })
        .collect()
}

/// Stage 2: makes batches durable one at a time, in the order applied,
/// and only then releases their keys and answers. A failed commit marks
/// the brand `stopped` (halted) at once.
async fn commit_in_order(
    mut committer: Committer,
    // The newest durable checkpoint: what proofs are given against.
    mut last_checkpoint: pb::Checkpoint,
    mut jobs: mpsc::Receiver<Job>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) {
    let brand = committer.brand;
    while let Some(mut job) = jobs.recv().await {
        let mut rotated = Vec::new();
        if let Some(checkpoint) = job.checkpoint.take() {
            match committer.commit(job.written.clone(), checkpoint).await {
                Ok(checkpoint) => {
                    let metrics = super::metrics::get();
                    metrics.commit_batch.observe(job.written.len() as f64);
                    metrics.checkpoints.inc();
                    committer.records.set(checkpoint.tree_size as i64);
                    last_checkpoint = checkpoint;
                    if committer
                        .copy
                        .as_ref()
                        .is_some_and(|c| !c.follow(&job.written))
                    {
                        committer.copy = None;
                    }
                }
                Err(error) => return stop_committing(brand, &error, job, jobs, &stopped).await,
            }
            rotated = committer.publish(&job);
        }
        if !job.batch.proof_wanted.is_empty() {
            attach_proofs(&mut job.batch, committer.store.as_ref(), &last_checkpoint);
        }
        for (tx, answer) in job.sign_ons {
            let _ = tx.send(answer);
        }
        for deliver in job.reads {
            deliver();
        }
        for (to, answer) in job.waiting.into_iter().zip(job.batch.answers) {
            to.send(answer);
        }
        committer.cut_rotated(&rotated);
    }
    if let Some(copy) = committer.copy.take() {
        // Its final snapshot spares the next start a replay.
        let _ = tokio::task::spawn_blocking(move || copy.finish()).await;
    }
}

/// After `job`'s commit failed with `error`: memory is now ahead of disk,
/// and the batch may or may not have reached it. Nothing of it nor of the
/// batches applied on top of it is acknowledged, and the applier stops.
/// Other brands go on; a restart recovers this one from its durable log.
async fn stop_committing(
    brand: u32,
    error: &str,
    job: Job,
    mut jobs: mpsc::Receiver<Job>,
    stopped: &std::sync::atomic::AtomicBool,
) {
    // Logged once, at error level (on unless RUST_LOG turns off errors
    // too).
    tracing::error!(
        brand,
        error,
        "commit failed; brand stopped (restart recovers it)"
    );
    // Seen halted now, not when the applier next wakes (on a request that
    // may never come): a replicated node gives the lease of a halted brand
    // up.
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    jobs.close();
    job.refuse();
    while let Some(later) = jobs.recv().await {
        later.refuse();
    }
}

const STORAGE_FAILED: &str = "storage failed; the outcome of this request is unknown until the daemon restarts (then ask its status)";

fn stopped_refusal() -> crate::error::Refusal {
    crate::error::Refusal::new(pb::ErrorCode::StorageFailure, STORAGE_FAILED)
}

/// A stopped brand answers every request (and sign-on) with STORAGE_FAILURE.
async fn refuse_all(mut rx: mpsc::UnboundedReceiver<Command>, why: &str) {
    while let Some(cmd) = rx.recv().await {
        super::metrics::get().queue_depth.dec();
        refuse(cmd, why);
    }
}

fn refuse(cmd: Command, why: &str) {
    let refusal = || crate::error::Refusal::new(pb::ErrorCode::StorageFailure, why);
    match cmd {
        Command::Apply(_, to) => to.send(Err(refusal())),
        Command::SignOn(_, _, tx) => {
            let _ = tx.send(Err(refusal()));
        }
        // Dropped unanswered/unrun: the caller sees a stopped writer.
        Command::HasCard(..) | Command::Halt(_) | Command::Read(_) => {}
    }
}
