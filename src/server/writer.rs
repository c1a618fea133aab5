//! The single writer of one brand's log: group commit.
//!
//! Commands queue on a channel while the previous batch is being flushed;
//! the writer takes everything queued (up to MAX_COMMIT_BATCH), applies it
//! through the state machine, commits the new records with one sled batch,
//! one flush and one signed checkpoint, and only then sends the answers.
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::keys::KeyIndex;
use crate::ledger::{Answer, BrandLedger, Submission};
use crate::limits::{MAX_COMMIT_BATCH, WRITER_QUEUE};
use crate::pb;
use crate::state::Principal;

/// What a connection asks of a brand's writer.
pub enum Command {
    /// Apply a verified signed request; answer once durable.
    Apply(Submission, oneshot::Sender<Answer>),
    /// Describe the session of a signer that just proved its key.
    SignOn(
        Principal,
        oneshot::Sender<Result<pb::SignOnOk, crate::error::Refusal>>,
    ),
}

/// A handle to a brand's writer task.
#[derive(Clone)]
pub struct BrandHandle {
    tx: mpsc::Sender<Command>,
}

impl BrandHandle {
    /// Starts the writer task for `ledger`.
    pub fn spawn(ledger: BrandLedger, keys: Arc<KeyIndex>) -> Self {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(run(ledger, rx, keys));
        BrandHandle { tx }
    }

    /// Submits a request and waits for its durable answer. None if the
    /// writer has stopped (the daemon is going down).
    pub async fn submit(&self, sub: Submission) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Apply(sub, tx)).await.ok()?;
        rx.await.ok()
    }

    /// The sign-on answer for `principal`.
    pub async fn sign_on(
        &self,
        principal: Principal,
    ) -> Option<Result<pb::SignOnOk, crate::error::Refusal>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::SignOn(principal, tx)).await.ok()?;
        rx.await.ok()
    }
}

fn sign_on_ok(
    ledger: &BrandLedger,
    principal: Principal,
) -> Result<pb::SignOnOk, crate::error::Refusal> {
    let s = &ledger.state;
    if let Principal::Terminal(id) = principal {
        if s.terminals.get(&id).is_none_or(|t| t.disabled) {
            return Err(crate::error::Refusal::new(
                pb::ErrorCode::TerminalDisabled,
                "this terminal was disabled by the owner",
            ));
        }
    }
    let (role, store_id, terminal_id) = match principal {
        Principal::Terminal(id) => (
            pb::Role::Terminal,
            s.terminals.get(&id).map_or(0, |t| t.store_id),
            id,
        ),
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
    })
}

/// Attaches inclusion proofs (against `checkpoint`) to the answers that
/// asked for one. Proofs read O(log^2 n) stored nodes; only asked-for
/// answers pay for them.
fn attach_proofs(
    batch: &mut crate::ledger::Batch,
    store: &dyn crate::storage::LogStore,
    checkpoint: &pb::Checkpoint,
) {
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

async fn run(mut ledger: BrandLedger, mut rx: mpsc::Receiver<Command>, keys: Arc<KeyIndex>) {
    let brand = ledger.brand_id();
    let store = ledger.store();
    // The newest durable checkpoint: what proofs are given against.
    let mut last_checkpoint = ledger.checkpoint();
    let mut commands = Vec::with_capacity(MAX_COMMIT_BATCH);
    while rx.recv_many(&mut commands, MAX_COMMIT_BATCH).await > 0 {
        let mut subs = Vec::with_capacity(commands.len());
        let mut waiting = Vec::with_capacity(commands.len());
        for cmd in commands.drain(..) {
            match cmd {
                Command::Apply(sub, tx) => {
                    subs.push(sub);
                    waiting.push(tx);
                }
                // Answered at once: sign-on reads only committed state, because
                // every earlier batch was committed before this loop turned.
                Command::SignOn(p, tx) => {
                    let _ = tx.send(sign_on_ok(&ledger, p));
                }
            }
        }
        if subs.is_empty() {
            continue;
        }
        let mut batch = ledger.apply_batch(&subs);
        if !batch.written.is_empty() {
            let checkpoint = ledger.checkpoint();
            last_checkpoint = checkpoint.clone();
            let store = store.clone();
            let written = std::mem::take(&mut batch.written);
            let result = tokio::task::spawn_blocking(move || {
                BrandLedger::commit(store.as_ref(), brand, &written, &checkpoint)
            })
            .await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failure {
                // Memory is now ahead of disk, and the batch may or may not
                // have reached it: acknowledge nothing, serve nothing more
                // from this state. Other brands go on; a restart recovers
                // this one from its durable log.
                tracing::error!(brand, error, "commit failed; brand stopped until restart");
                eprintln!("cardd: brand {brand}: commit failed: {error}; brand stopped (restart recovers it)");
                for tx in waiting {
                    let _ = tx.send(Err(stopped_refusal()));
                }
                drop(ledger);
                refuse_all(rx).await;
                return;
            }
            for (key, tid) in &batch.enrolled {
                keys.insert(*key, brand, Principal::Terminal(*tid));
            }
        }
        if !batch.proof_wanted.is_empty() {
            attach_proofs(&mut batch, store.as_ref(), &last_checkpoint);
        }
        for (tx, answer) in waiting.into_iter().zip(batch.answers) {
            // A connection that went away no longer wants its answer; the
            // record stands and a status query will find it.
            let _ = tx.send(answer);
        }
    }
}

fn stopped_refusal() -> crate::error::Refusal {
    crate::error::Refusal::new(
        pb::ErrorCode::StorageFailure,
        "storage failed; the outcome of this request is unknown until the daemon restarts (then ask its status)",
    )
}

/// A stopped brand answers every request with STORAGE_FAILURE.
async fn refuse_all(mut rx: mpsc::Receiver<Command>) {
    while let Some(cmd) = rx.recv().await {
        if let Command::Apply(_, tx) = cmd {
            let _ = tx.send(Err(stopped_refusal()));
        }
    }
}
