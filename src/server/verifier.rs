//! Request signatures checked in batches, on every core, off the writer.
//!
//! One ed25519 check costs ~46 us; `verify_batch` over many signatures
//! costs ~18 us each. Connections hand their (key, message, signature) to
//! this pool together with what to do next (`Then`), and go on reading;
//! each worker thread takes everything queued (up to BATCH), verifies it as
//! one batch, and runs every job's continuation with its verdict (the
//! server's continuation forwards the request straight to its brand's
//! writer, so no task sits between verifier and writer). If a batch fails,
//! its signatures are checked one by one (strictly) to find the bad ones,
//! so one bad signature cannot fail its neighbours. At low load a batch is
//! a single signature: batching never waits for company.
//!
//! Continuations run in queue order across all workers: each batch gets a
//! ticket as it is taken from the queue, and a batch verified before an
//! earlier one has run its continuations is parked (its worker goes back
//! to the queue) until the worker of that earlier one runs both. So a
//! connection's requests reach the writer in the order they were read,
//! though they no longer wait for one another's checks.
//!
//! Keys here are enrolled keys, refused at enrolment if weak. Batch
//! verification is slightly more permissive than `verify_strict` about
//! small-order components a key holder could put in their own signature;
//! this lets no one sign for a key they do not hold.
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, VerifyingKey};
use tokio::sync::{mpsc, oneshot};

use crate::crypto::verify_strict;

/// Signatures verified in one batch at most.
const BATCH: usize = 256;
/// Signatures queued before connections wait.
const QUEUE: usize = 16_384;

/// What happens once a signature is checked: called with the verdict, on a
/// verifier thread (so it must not block), in queue order.
pub type Then = Box<dyn FnOnce(bool) + Send>;

struct Job {
    key: VerifyingKey,
    message: Vec<u8>,
    signature: Vec<u8>,
    then: Then,
}

/// The queue the workers share, and whose turn it is to run continuations.
struct Queue {
    /// The jobs, and the number of batches taken from them so far.
    rx: Mutex<(mpsc::Receiver<Job>, u64)>,
    /// Whose turn it is to run continuations, and the verdicts of batches
    /// verified before their turn.
    turn: Mutex<Turn>,
}

struct Turn {
    /// The ticket of the next batch whose continuations run.
    next: u64,
    /// Verified batches waiting for an earlier one, by ticket.
    ready: BTreeMap<u64, Vec<(Then, bool)>>,
}

/// The shared pool of verifier threads.
pub struct BatchVerifier {
    tx: mpsc::Sender<Job>,
}

impl BatchVerifier {
    /// Starts `workers` verifier threads (one per core is right).
    pub fn start(workers: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let queue = Arc::new(Queue {
            rx: Mutex::new((rx, 0)),
            turn: Mutex::new(Turn {
                next: 0,
                ready: BTreeMap::new(),
            }),
        });
        for i in 0..workers.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("cardd-verify-{i}"))
                .spawn(move || worker(&queue))
                .expect("spawn verifier thread");
        }
        BatchVerifier { tx }
    }

    /// True if `signature` is `key`'s signature over `message`.
    pub async fn verify(&self, key: VerifyingKey, message: Vec<u8>, signature: Vec<u8>) -> bool {
        let (reply, rx) = oneshot::channel();
        self.check(
            key,
            message,
            signature,
            Box::new(move |ok| {
                let _ = reply.send(ok);
            }),
        )
        .await;
        rx.await.unwrap_or(false)
    }

    /// Queues a check of `key`'s `signature` over `message` (waiting only
    /// while the queue is full) and returns; `then` gets the verdict.
    pub async fn check(&self, key: VerifyingKey, message: Vec<u8>, signature: Vec<u8>, then: Then) {
        if signature.len() != 64 {
            return then(false);
        }
        let job = Job {
            key,
            message,
            signature,
            then,
        };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job).await {
            (job.then)(false);
        }
    }
}

fn worker(queue: &Queue) {
    let mut jobs = Vec::with_capacity(BATCH);
    loop {
        let ticket = {
            // One worker drains the queue at a time; the other verifies.
            let mut guard = queue.rx.lock().expect("verifier queue lock");
            let (rx, taken) = &mut *guard;
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            jobs.push(first);
            while jobs.len() < BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            *taken += 1;
            *taken - 1
        };
        super::metrics::get()
            .verify_batch
            .observe(jobs.len() as f64);
        // A panic must not leave this ticket's turn untaken: every later
        // batch would wait for it forever. A batch that panics is refused,
        // and a continuation that panics loses only its own answer.
        let results = catch_unwind(AssertUnwindSafe(|| verify_jobs(&jobs)))
            .unwrap_or_else(|_| vec![false; jobs.len()]);
        let verdicts: Vec<(Then, bool)> = jobs.drain(..).map(|j| j.then).zip(results).collect();
        // Out of turn, the verdicts wait for the batches before them and
        // this worker goes back to the queue; in turn, it runs its own and
        // every waiting batch that follows.
        let mut guard = queue
            .turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let turn = &mut *guard;
        turn.ready.insert(ticket, verdicts);
        while let Some(verdicts) = turn.ready.remove(&turn.next) {
            for (then, ok) in verdicts {
                if catch_unwind(AssertUnwindSafe(move || then(ok))).is_err() {
                    tracing::error!("a request's continuation panicked");
                }
            }
            turn.next += 1;
        }
    }
}

fn verify_jobs(jobs: &[Job]) -> Vec<bool> {
    if jobs.len() == 1 {
        let j = &jobs[0];
        return vec![verify_strict(&j.key, &j.message, &j.signature)];
    }
    let sigs: Option<Vec<Signature>> = jobs
        .iter()
        .map(|j| Signature::from_slice(&j.signature).ok())
        .collect();
    if let Some(sigs) = sigs {
        let messages: Vec<&[u8]> = jobs.iter().map(|j| j.message.as_slice()).collect();
        let keys: Vec<VerifyingKey> = jobs.iter().map(|j| j.key).collect();
        if ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok() {
            return vec![true; jobs.len()];
        }
    }
    jobs.iter()
        .map(|j| verify_strict(&j.key, &j.message, &j.signature))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn good_signatures_pass_and_a_bad_one_fails_alone() {
        let v = Arc::new(BatchVerifier::start(2));
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let v = v.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let msg = i.to_be_bytes().to_vec();
                let mut sig = key.sign(&msg).to_bytes().to_vec();
                if i % 97 == 0 {
                    sig[5] ^= 1;
                }
                (i, v.verify(key.verifying_key(), msg, sig).await)
            }));
        }
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            assert_eq!(ok, i % 97 != 0, "signature {i}");
        }
        assert!(!v.verify(key.verifying_key(), vec![1], vec![0; 63]).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn continuations_run_in_queue_order() {
        let v = BatchVerifier::start(2);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let n = 3_000u32;
        for i in 0..n {
            let msg = i.to_be_bytes().to_vec();
            let mut sig = key.sign(&msg).to_bytes().to_vec();
            if i % 101 == 0 {
                sig[9] ^= 1;
            }
            let order = order.clone();
            let then: Then = Box::new(move |ok| order.lock().unwrap().push((i, ok)));
            v.check(key.verifying_key(), msg, sig, then).await;
        }
        for _ in 0..1_000 {
            if order.lock().unwrap().len() == n as usize {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let want: Vec<(u32, bool)> = (0..n).map(|i| (i, i % 101 != 0)).collect();
        assert_eq!(*order.lock().unwrap(), want);
    }
}
