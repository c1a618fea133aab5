//! The PIN store: each card's Argon2id PIN hash and its wrong-try count,
//! outside the ledger and the export (a stolen export gives nothing to
//! guess PINs against), in `DATA/pins/brand-N/CARD`, one small file per
//! card rewritten durably (temporary file, fsync, rename, directory fsync)
//! before any answer that depends on it: a wrong try is counted on disk
//! before the till hears "wrong PIN", so neither a restart nor a kill -9
//! gives a guesser fresh tries.
//!
//! Argon2id is slow by design, so checks never run on a brand's applier:
//! they run on tokio's blocking threads, at most `MAX_PIN_CHECKS_AT_ONCE`
//! at a time, with at most `MAX_PIN_CHECKS_QUEUED` waiting (SERVER_BUSY
//! beyond). One card is checked by one request at a time: guesses sent in
//! parallel from many tills are refused (SERVER_BUSY) rather than checked
//! against a count that has not moved yet.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::guard::Probe;
use crate::error::Refusal;
use crate::limits::*;
use crate::pb::ErrorCode as E;
use crate::pin::{hash_pin, verify_pin, PinKey};
use crate::storage::fsutil::{create_dir_all_durable, replace_durably};

/// What the store keeps per card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    /// The PHC string of the PIN's Argon2id hash.
    hash: String,
    /// Wrong tries in a row; at `MAX_WRONG_PIN_TRIES` the card is locked.
    wrong: u32,
    /// The seq of the PIN_SET record this hash is the PIN of (0 in files
    /// written before it was kept): a retried PIN change stores its hash
    /// only if no later change stands here already.
    #[serde(default)]
    seq: u64,
}

/// The server's answer to a PIN typed for a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It is the card's PIN.
    Verified,
    /// The store holds no PIN for the card (the state machine then decides
    /// whether one was needed).
    NoPin,
    /// Another PIN; `left` tries before the lock (0: now locked).
    Wrong {
        /// Tries left.
        left: u32,
    },
    /// Locked by earlier wrong tries: not even checked.
    Locked,
}

impl Verdict {
    /// The refusal of a wrong or locked verdict.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Verdict::Verified | Verdict::NoPin => None,
            Verdict::Wrong { left: 0 } => Some(Refusal::new(
                E::WrongPin,
                "wrong PIN: the card is now locked for PIN operations until the owner unlocks it",
            )),
            Verdict::Wrong { left } => Some(Refusal::new(
                E::WrongPin,
                format!("wrong PIN: {left} tries left before the card is locked"),
            )),
            Verdict::Locked => Some(Refusal::new(
                E::PinLocked,
                "the card is locked for PIN operations after too many wrong PINs; the owner unlocks it",
            )),
        }
    }
}

fn storage(why: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "PIN store: {why}");
    Refusal::new(
        E::StorageFailure,
        "the PIN store could not be read or written",
    )
}

/// Every brand's PIN hashes and counts, and the server's PIN key.
pub struct PinStore {
    dir: PathBuf,
    key: PinKey,
    /// The server's signing key: it signs the lock after five wrong tries.
    server: SigningKey,
    /// Checks (and hashes) running at once.
    running: Arc<Semaphore>,
    /// Checks running or waiting.
    queued: Arc<Semaphore>,
    /// Cards with a check under way.
    busy: Mutex<HashSet<(u32, u64)>>,
}

impl std::fmt::Debug for PinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinStore").field("dir", &self.dir).finish()
    }
}

/// A card's check under way; the card is free again when it drops.
struct Busy<'a> {
    store: &'a PinStore,
    card: (u32, u64),
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.store
            .busy
            .lock()
            .expect("busy lock")
            .remove(&self.card);
    }
}

impl PinStore {
    /// The store of `data_dir`, with the PIN key of the server `server`.
    pub fn new(data_dir: &Path, server: &SigningKey) -> Self {
        PinStore {
            dir: data_dir.join("pins"),
            key: PinKey::derive(server),
            server: server.clone(),
            running: Arc::new(Semaphore::new(MAX_PIN_CHECKS_AT_ONCE)),
            queued: Arc::new(Semaphore::new(MAX_PIN_CHECKS_QUEUED)),
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// The server's PIN key (opens PIN blocks).
    pub fn key(&self) -> &PinKey {
        &self.key
    }

    /// The server's lock of `card` (CARD_PIN_LOCKED), signed by the server:
    /// no transaction id (the server keeps none), `locked` set.
    pub fn lock_request(&self, brand: u32, card: &str) -> crate::ledger::Submission {
        let op = crate::pb::request::Op::SetPinLock(crate::pb::SetPinLock {
            card: card.to_string(),
            locked: true,
        });
        let request = crate::pb::Request {
            brand_id: brand,
            operator: "server".into(),
            op: Some(op),
            ..Default::default()
        };
        crate::ledger::Submission::signed(crate::state::Principal::Server, &self.server, request)
    }

    fn path(&self, brand: u32, card: u64) -> PathBuf {
        self.dir
            .join(format!("brand-{brand}"))
            .join(crate::state::format_card(card))
    }

    fn read(&self, brand: u32, card: u64) -> Result<Option<Entry>, Refusal> {
        match std::fs::read(self.path(brand, card)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| storage("damaged entry", e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage("read", e)),
        }
    }

    fn write(&self, brand: u32, card: u64, entry: &Entry) -> Result<(), Refusal> {
        let path = self.path(brand, card);
        let dir = path.parent().expect("a card file has a directory");
        create_dir_all_durable(dir).map_err(|e| storage("directory", e))?;
        let bytes = serde_json::to_vec(entry).expect("entry encodes");
        replace_durably(&path, &bytes, true).map_err(|e| storage("write", e))
    }

    fn claim(&self, brand: u32, card: u64) -> Result<Busy<'_>, Refusal> {
        if !self.busy.lock().expect("busy lock").insert((brand, card)) {
            return Err(Refusal::new(
                E::ServerBusy,
                "this card's PIN is being checked for another request; try again",
            ));
        }
        Ok(Busy {
            store: self,
            card: (brand, card),
        })
    }

    /// The card, once no check holds it (blocking: call on a blocking
    /// thread). A check takes tens of milliseconds; a change of the PIN
    /// waits for it rather than write beside it (the check would write the
    /// old hash back with its count).
    fn claim_waiting(&self, brand: u32, card: u64) -> Result<Busy<'_>, Refusal> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match self.claim(brand, card) {
                Ok(busy) => return Ok(busy),
                Err(busy) if std::time::Instant::now() > deadline => return Err(busy),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }

    /// A turn among the bounded checks: refused when too many wait.
    async fn turn(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Refusal> {
        let busy = || Refusal::new(E::ServerBusy, "too many PIN checks waiting; try again");
        let ticket = self
            .queued
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| busy())?;
        Ok((ticket, running))
    }

    /// Checks `pin` for the card, counting a wrong try durably before it
    /// answers. Runs Argon2id on a blocking thread, in turn. With `probe`
    /// (the request's probing budgets), only if they admit it when its
    /// turn comes, and a wrong PIN counts against them before the turn
    /// passes on: guesses sent together are checked as if one by one.
    pub async fn check(
        self: &Arc<Self>,
        brand: u32,
        card: u64,
        pin: String,
        probe: Option<&Probe>,
    ) -> Result<Verdict, Refusal> {
        let _busy = self.claim(brand, card)?;
        let _turn = self.turn().await?;
        probe.map_or(Ok(()), Probe::admit)?;
        let this = self.clone();
        let verdict = tokio::task::spawn_blocking(move || this.check_blocking(brand, card, &pin))
            .await
            .map_err(|e| storage("check task", e))??;
        if let (Some(probe), Some(refusal)) = (probe, verdict.refusal()) {
            probe.count(refusal.code);
        }
        Ok(verdict)
    }

    fn check_blocking(&self, brand: u32, card: u64, pin: &str) -> Result<Verdict, Refusal> {
        let Some(mut entry) = self.read(brand, card)? else {
            return Ok(Verdict::NoPin);
        };
        if entry.wrong >= MAX_WRONG_PIN_TRIES {
            return Ok(Verdict::Locked);
        }
        if verify_pin(&entry.hash, pin) {
            if entry.wrong > 0 {
                entry.wrong = 0;
                self.write(brand, card, &entry)?;
            }
            return Ok(Verdict::Verified);
        }
        entry.wrong += 1;
        self.write(brand, card, &entry)?;
        Ok(Verdict::Wrong {
            left: MAX_WRONG_PIN_TRIES - entry.wrong,
        })
    }

    /// The Argon2id hash of a new PIN, on a blocking thread, in turn.
    pub async fn hash(self: &Arc<Self>, pin: String) -> Result<String, Refusal> {
        let _turn = self.turn().await?;
        tokio::task::spawn_blocking(move || hash_pin(&pin))
            .await
            .map_err(|e| storage("hash task", e))
    }

    /// Keeps `hash`, the PIN of the PIN_SET record `seq`, as the card's PIN
    /// with no wrong tries (durably), unless the PIN of a later record is
    /// kept already (two changes racing, or an old change retried).
    pub async fn set(
        self: &Arc<Self>,
        brand: u32,
        card: u64,
        hash: String,
        seq: u64,
    ) -> Result<(), Refusal> {
        let this = self.clone();
        let entry = Entry {
            hash,
            wrong: 0,
            seq,
        };
        tokio::task::spawn_blocking(move || {
            let _busy = this.claim_waiting(brand, card)?;
            if this.read(brand, card)?.is_some_and(|kept| kept.seq > seq) {
                return Ok(());
            }
            this.write(brand, card, &entry)
        })
        .await
        .map_err(|e| storage("set task", e))?
    }

    /// True if the card's kept PIN is not that of the PIN_SET record `seq`
    /// nor of a later one: a retried change whose hash was never stored
    /// (the daemon stopped, or this store failed, after its record).
    pub async fn lacks(self: &Arc<Self>, brand: u32, card: u64, seq: u64) -> Result<bool, Refusal> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // A hash kept before seqs were (0) stands for every change
            // before it: a resent old change must not replace it.
            Ok(this
                .read(brand, card)?
                .is_none_or(|kept| kept.seq != 0 && kept.seq < seq))
        })
        .await
        .map_err(|e| storage("read task", e))?
    }

    /// Moves `from`'s PIN (hash and count) to `to`: a replaced card keeps
    /// its holder's PIN, and its lock. Durable (rename, directory fsync).
    pub async fn rename(self: &Arc<Self>, brand: u32, from: u64, to: u64) -> Result<(), Refusal> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _busy = this.claim_waiting(brand, from)?;
            let (old, new) = (this.path(brand, from), this.path(brand, to));
            match std::fs::rename(&old, &new) {
                Ok(()) => {
                    let dir = new.parent().expect("a card file has a directory");
                    crate::storage::fsutil::sync_dir(dir).map_err(|e| storage("rename", e))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(storage("rename", e)),
            }
        })
        .await
        .map_err(|e| storage("rename task", e))?
    }

    /// Lifts the card's lock: wrong tries back to 0 (durably).
    pub async fn unlock(self: &Arc<Self>, brand: u32, card: u64) -> Result<(), Refusal> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _busy = this.claim_waiting(brand, card)?;
            match this.read(brand, card)? {
                Some(mut entry) if entry.wrong > 0 => {
                    entry.wrong = 0;
                    this.write(brand, card, &entry)
                }
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| storage("unlock task", e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: u64 = 8_000_070_000_000_000_011;

    /// A PIN store in a fresh directory, with its server key.
    fn fixture() -> (tempfile::TempDir, SigningKey, Arc<PinStore>) {
        let dir = tempfile::tempdir().unwrap();
        let server = SigningKey::from_bytes(&[3; 32]);
        let store = Arc::new(PinStore::new(dir.path(), &server));
        (dir, server, store)
    }

    #[tokio::test]
    async fn five_wrong_tries_lock_the_card_in_a_new_store_too() {
        let (dir, server, store) = fixture();
        assert_eq!(
            store.check(7, CARD, "1234".into(), None).await,
            Ok(Verdict::NoPin)
        );
        let hash = store.hash("1234".into()).await.unwrap();
        store.set(7, CARD, hash, 20).await.unwrap();
        assert_eq!(
            store.check(7, CARD, "1234".into(), None).await,
            Ok(Verdict::Verified)
        );
        for left in (1..MAX_WRONG_PIN_TRIES).rev() {
            let v = store.check(7, CARD, "9999".into(), None).await;
            assert_eq!(v, Ok(Verdict::Wrong { left }));
        }
        let reopened = Arc::new(PinStore::new(dir.path(), &server));
        let last = reopened.check(7, CARD, "9999".into(), None).await;
        assert_eq!(last, Ok(Verdict::Wrong { left: 0 }));
        let right = reopened.check(7, CARD, "1234".into(), None).await;
        assert_eq!(right, Ok(Verdict::Locked));
        reopened.unlock(7, CARD).await.unwrap();
        let right = reopened.check(7, CARD, "1234".into(), None).await;
        assert_eq!(right, Ok(Verdict::Verified));
        let file = std::fs::read_to_string(reopened.path(7, CARD)).unwrap();
        assert!(
            file.contains("$argon2id$") && !file.contains("\"1234\""),
            "{file}"
        );
    }

    #[tokio::test]
    async fn the_pin_of_the_latest_change_is_kept_whatever_order_the_hashes_come_in() {
        let (_dir, _, store) = fixture();
        assert!(store.lacks(7, CARD, 30).await.unwrap(), "nothing kept yet");
        let later = store.hash("2222".into()).await.unwrap();
        store.set(7, CARD, later, 31).await.unwrap();
        // An earlier change (seq 30) stored late, or resent, is ignored.
        let earlier = store.hash("1111".into()).await.unwrap();
        assert!(!store.lacks(7, CARD, 30).await.unwrap());
        store.set(7, CARD, earlier, 30).await.unwrap();
        let now = store.check(7, CARD, "2222".into(), None).await;
        assert_eq!(now, Ok(Verdict::Verified));
        assert!(!store.lacks(7, CARD, 31).await.unwrap(), "kept: 31");
        assert!(
            store.lacks(7, CARD, 32).await.unwrap(),
            "a later one is not"
        );
    }

    /// A hash kept before seqs were (0 in its file) is taken as the latest:
    /// resending an old change must not bring its PIN back.
    #[tokio::test]
    async fn a_hash_from_before_seqs_stands_for_every_earlier_change() {
        let (_dir, _, store) = fixture();
        let hash = store.hash("2222".into()).await.unwrap();
        store.set(7, CARD, hash, 0).await.unwrap();
        assert!(!store.lacks(7, CARD, 30).await.unwrap());
    }
}
