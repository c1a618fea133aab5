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
//! Continuations run in queue order across all workers: a batch's
//! continuations wait until every batch taken from the queue before it has
//! run its own. So a connection's requests reach the writer in the order
//! they were read, though they no longer wait for one another's checks.
//!
//! Keys here are enrolled keys, refused at enrolment if weak. Batch
//! verification is slightly more permissive than `verify_strict` about
//! small-order components a key holder could put in their own signature;
//! this lets no one sign for a key they do not hold.
use std::sync::{Arc, Condvar, Mutex};

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
    /// The number of batches whose continuations have run.
    done: Mutex<u64>,
    turn: Condvar,
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
            done: Mutex::new(0),
            turn: Condvar::new(),
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
        let results = verify_jobs(&jobs);
        let mut done = queue.done.lock().expect("verifier turn lock");
        while *done != ticket {
            done = queue.turn.wait(done).expect("verifier turn lock");
        }
        for (job, ok) in jobs.drain(..).zip(results) {
            (job.then)(ok);
        }
        *done += 1;
        drop(done);
        queue.turn.notify_all();
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
}
