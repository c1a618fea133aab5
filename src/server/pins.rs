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
//! against a count that has not moved yet. A change that lifts a lock (the
//! owner's unlock, a new PIN) holds the card from before its record until
//! the count is reset (`Held`): a try is counted before it or after it,
//! never against the stale count between, which would lock the card again
//! (and write the lock into the ledger) right after the owner lifted it.
use std::collections::{HashMap, HashSet};
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
    /// written before it was kept, taken as older than any record): a
    /// retried PIN change stores its hash only if no later change stands
    /// here already.
    #[serde(default)]
    seq: u64,
    /// The seq of the record that last reset `wrong` (this PIN's PIN_SET,
    /// or an owner's unlock; 0 in files written before it was kept): a
    /// resent unlock resets the count only if it is later, so that the
    /// wrong tries counted since its reset stand.
    #[serde(default)]
    reset: u64,
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
    /// Cards held (a check, or a change of the count, under way), and
    /// cards someone waits to hold.
    cards: Mutex<Cards>,
}

/// Which cards are held, and which are waited for.
#[derive(Debug, Default)]
struct Cards {
    /// Held now.
    held: HashSet<(u32, u64)>,
    /// Waited for, with how many wait: a check does not take a card
    /// someone waits for, so that a till trying PINs in a loop cannot keep
    /// the owner's unlock (or a new PIN) out of it.
    wanted: HashMap<(u32, u64), u32>,
}

impl std::fmt::Debug for PinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinStore").field("dir", &self.dir).finish()
    }
}

/// A card held: while it lives no PIN of the card is checked (a check is
/// refused SERVER_BUSY) and no other change of its count or hash is made,
/// so that what its holder does with the store and the ledger is one step
/// for every PIN try. Free again when it drops.
pub struct Held {
    store: Arc<PinStore>,
    card: (u32, u64),
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut cards = self.store.cards.lock().expect("cards lock");
        cards.held.remove(&self.card);
    }
}

/// A wait for a card, counted while it lasts (see `Cards::wanted`).
struct Wanting<'a> {
    store: &'a PinStore,
    card: (u32, u64),
}

impl Drop for Wanting<'_> {
    fn drop(&mut self) {
        let mut cards = self.store.cards.lock().expect("cards lock");
        if let Some(n) = cards.wanted.get_mut(&self.card) {
            *n -= 1;
            if *n == 0 {
                cards.wanted.remove(&self.card);
            }
        }
    }
}

/// How long a change of a card's PIN or count waits for a check under way
/// (a check takes tens of milliseconds) before it is refused SERVER_BUSY.
const HOLD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a waiting change looks again.
const HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(5);

fn card_busy() -> Refusal {
    Refusal::new(
        E::ServerBusy,
        "this card's PIN is being checked for another request; try again",
    )
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
            cards: Mutex::new(Cards::default()),
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

    /// Holds the card now, for a check: refused if it is held, or waited
    /// for by a change (which goes first).
    pub fn claim(self: &Arc<Self>, brand: u32, card: u64) -> Result<Held, Refusal> {
        let mut cards = self.cards.lock().expect("cards lock");
        if cards.wanted.contains_key(&(brand, card)) || !cards.held.insert((brand, card)) {
            return Err(card_busy());
        }
        Ok(Held {
            store: self.clone(),
            card: (brand, card),
        })
    }

    /// Holds the card if no one does, waiting or not.
    fn try_hold(self: &Arc<Self>, brand: u32, card: u64) -> Option<Held> {
        let mut cards = self.cards.lock().expect("cards lock");
        cards.held.insert((brand, card)).then(|| Held {
            store: self.clone(),
            card: (brand, card),
        })
    }

    /// Counts a wait for the card until the returned guard drops.
    fn want(&self, brand: u32, card: u64) -> Wanting<'_> {
        let mut cards = self.cards.lock().expect("cards lock");
        *cards.wanted.entry((brand, card)).or_default() += 1;
        Wanting {
            store: self,
            card: (brand, card),
        }
    }

    /// Holds the card once the check under way (if any) is done, for a
    /// change of its PIN or count; no new check takes it meanwhile.
    pub async fn hold(self: &Arc<Self>, brand: u32, card: u64) -> Result<Held, Refusal> {
        let _wanting = self.want(brand, card);
        let deadline = tokio::time::Instant::now() + HOLD_PATIENCE;
        loop {
            if let Some(held) = self.try_hold(brand, card) {
                return Ok(held);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(card_busy());
            }
            tokio::time::sleep(HOLD_POLL).await;
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
    /// answers (see [`Held::check`]); refused if the card is held.
    pub async fn check(
        self: &Arc<Self>,
        brand: u32,
        card: u64,
        pin: String,
        probe: Option<&Probe>,
    ) -> Result<Verdict, Refusal> {
        self.claim(brand, card)?.check(pin, probe).await
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
        (seq, head): (u64, u64),
    ) -> Result<(), Refusal> {
        self.hold(brand, card).await?.set(hash, (seq, head)).await
    }

    /// Writes `entry` unless the PIN of a later PIN_SET record is kept
    /// (one at or below `head`, the ledger's newest record: see
    /// [`ahead`]).
    fn keep_latest(&self, brand: u32, card: u64, entry: &Entry, head: u64) -> Result<(), Refusal> {
        if self
            .read(brand, card)?
            .is_some_and(|kept| kept.seq > entry.seq && !ahead(kept.seq, head))
        {
            return Ok(());
        }
        self.write(brand, card, entry)
    }

    /// True if the card's kept PIN is not that of the PIN_SET record `seq`
    /// nor of a later one: a retried change whose hash was never stored
    /// (the daemon stopped, or this store failed, after its record).
    pub async fn lacks(
        self: &Arc<Self>,
        brand: u32,
        card: u64,
        (seq, head): (u64, u64),
    ) -> Result<bool, Refusal> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // A hash kept before seqs were (0) is taken as older than any
            // record, as `keep_latest` takes it: the likely resend is the
            // first change after the upgrade, whose hash a stop lost, and
            // the ledger says its PIN is the card's. (Only a change older
            // than that hash's, resent across the upgrade, would bring an
            // earlier PIN back: the same harm the other way, rarer.)
            Ok(this
                .read(brand, card)?
                .is_none_or(|kept| kept.seq < seq || ahead(kept.seq, head)))
        })
        .await
        .map_err(|e| storage("read task", e))?
    }

    /// Moves `from`'s PIN (hash and count) to `to`: a replaced card keeps
    /// its holder's PIN, and its lock. Durable (rename, directory fsync).
    pub async fn rename(self: &Arc<Self>, brand: u32, from: u64, to: u64) -> Result<(), Refusal> {
        let (this, held) = (self.clone(), self.hold(brand, from).await?);
        tokio::task::spawn_blocking(move || {
            let _held = held;
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
}

impl Held {
    /// Checks `pin` for the held card, counting a wrong try durably before
    /// it answers. Runs Argon2id on a blocking thread, in turn. With
    /// `probe` (the request's probing budgets), only if they admit it when
    /// its turn comes, and a wrong PIN counts against them before the turn
    /// passes on: guesses sent together are checked as if one by one.
    pub async fn check(&self, pin: String, probe: Option<&Probe>) -> Result<Verdict, Refusal> {
        let _turn = self.store.turn().await?;
        probe.map_or(Ok(()), Probe::admit)?;
        let (this, (brand, card)) = (self.store.clone(), self.card);
        let verdict = tokio::task::spawn_blocking(move || this.check_blocking(brand, card, &pin))
            .await
            .map_err(|e| storage("check task", e))??;
        if let (Some(probe), Some(refusal)) = (probe, verdict.refusal()) {
            probe.count(refusal.code);
        }
        Ok(verdict)
    }

    /// [`PinStore::set`] on the held card: its record and this are then
    /// one step for every PIN try.
    pub async fn set(&self, hash: String, (seq, head): (u64, u64)) -> Result<(), Refusal> {
        let (this, (brand, card)) = (self.store.clone(), self.card);
        let entry = Entry {
            hash,
            wrong: 0,
            seq,
            reset: seq,
        };
        tokio::task::spawn_blocking(move || this.keep_latest(brand, card, &entry, head))
            .await
            .map_err(|e| storage("set task", e))?
    }

    /// Lifts the held card's lock for the owner's unlock record `seq`:
    /// wrong tries back to 0 (durably), unless that record or a later one
    /// reset them already (a resent unlock whose reset was kept: the tries
    /// counted since stand).
    pub async fn unlock(&self, (seq, head): (u64, u64)) -> Result<(), Refusal> {
        let (this, (brand, card)) = (self.store.clone(), self.card);
        tokio::task::spawn_blocking(move || match this.read(brand, card)? {
            Some(mut entry) if entry.reset < seq || ahead(entry.reset, head) => {
                entry.wrong = 0;
                entry.reset = seq;
                this.write(brand, card, &entry)
            }
            _ => Ok(()),
        })
        .await
        .map_err(|e| storage("unlock task", e))?
    }
}

/// True if a PIN entry's `seq` (of its PIN change, or of the record that
/// last reset its count) is past `head`, the ledger's newest record. A
/// live ledger never is: a record is durable before its entry is written.
/// A brand put back from a backup is (docs/operations.md): its entries
/// from the records lost with the damage would otherwise keep a new PIN
/// or an unlock from taking effect until the brand's records pass them.
/// Such an entry counts as older than any record.
fn ahead(seq: u64, head: u64) -> bool {
    seq > head
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: u64 = 8_000_070_000_000_000_011;
    /// The ledger's newest record in these tests: past every seq they use.
    const HEAD: u64 = 1_000;

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
        store.set(7, CARD, hash, (20, HEAD)).await.unwrap();
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
        reopened
            .hold(7, CARD)
            .await
            .unwrap()
            .unlock((21, HEAD))
            .await
            .unwrap();
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
        assert!(
            store.lacks(7, CARD, (30, HEAD)).await.unwrap(),
            "nothing kept yet"
        );
        let later = store.hash("2222".into()).await.unwrap();
        store.set(7, CARD, later, (31, HEAD)).await.unwrap();
        // An earlier change (seq 30) stored late, or resent, is ignored.
        let earlier = store.hash("1111".into()).await.unwrap();
        assert!(!store.lacks(7, CARD, (30, HEAD)).await.unwrap());
        store.set(7, CARD, earlier, (30, HEAD)).await.unwrap();
        let now = store.check(7, CARD, "2222".into(), None).await;
        assert_eq!(now, Ok(Verdict::Verified));
        assert!(!store.lacks(7, CARD, (31, HEAD)).await.unwrap(), "kept: 31");
        assert!(
            store.lacks(7, CARD, (32, HEAD)).await.unwrap(),
            "a later one is not"
        );
    }

    /// A change holding a card keeps every check out until it is done,
    /// and a change waiting for a card goes before checks that come later:
    /// a till trying PINs in a loop cannot keep the owner's unlock out.
    #[tokio::test]
    async fn a_held_card_is_not_checked_and_a_change_waiting_for_it_goes_first() {
        let (_dir, _, store) = fixture();
        let hash = store.hash("1234".into()).await.unwrap();
        store.set(7, CARD, hash, (20, HEAD)).await.unwrap();
        let check = store.claim(7, CARD).unwrap();
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.hold(7, CARD).await.map(|_| ()) }
        });
        while !store.cards.lock().unwrap().wanted.contains_key(&(7, CARD)) {
            tokio::task::yield_now().await;
        }
        let busy = store.check(7, CARD, "1234".into(), None).await;
        assert_eq!(busy.map_err(|r| r.code), Err(E::ServerBusy));
        drop(check);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Both gone: the card is free again, and its count untouched.
        let right = store.check(7, CARD, "1234".into(), None).await;
        assert_eq!(right, Ok(Verdict::Verified));
        let held = store.hold(7, CARD).await.unwrap();
        let busy = store.check(7, CARD, "1234".into(), None).await;
        assert_eq!(busy.map_err(|r| r.code), Err(E::ServerBusy));
        drop(held);
        assert!(store.cards.lock().unwrap().wanted.is_empty());
    }

    /// An unlock resets the count once: resent (the same record) after
    /// wrong tries, it leaves them; a later unlock resets them again, and
    /// an earlier one, or one before the PIN's own record, never does.
    #[tokio::test]
    async fn a_resent_unlock_leaves_the_tries_counted_since_its_reset() {
        let (_dir, _, store) = fixture();
        let hash = store.hash("1234".into()).await.unwrap();
        store.set(7, CARD, hash, (20, HEAD)).await.unwrap();
        let wrong = async |tries: u32| {
            for _ in 0..tries {
                store.check(7, CARD, "9999".into(), None).await.unwrap();
            }
        };
        let unlock = async |seq: u64| store.hold(7, CARD).await.unwrap().unlock((seq, HEAD)).await;
        let left = async || match store.check(7, CARD, "9999".into(), None).await {
            Ok(Verdict::Wrong { left }) => left,
            other => panic!("{other:?}"),
        };
        wrong(MAX_WRONG_PIN_TRIES).await;
        unlock(25).await.unwrap();
        wrong(2).await;
        unlock(25).await.unwrap();
        unlock(19).await.unwrap();
        assert_eq!(left().await, MAX_WRONG_PIN_TRIES - 3);
        unlock(30).await.unwrap();
        assert_eq!(left().await, MAX_WRONG_PIN_TRIES - 1);
    }

    /// A brand put back from a backup ending at record 60 finds entries of
    /// records it no longer holds (a PIN change at 500, an unlock at 520):
    /// they count as older than any record, so the owner's unlock and new
    /// PIN take effect now, not once the brand's records pass 520.
    #[tokio::test]
    async fn entries_past_the_ledger_s_newest_record_give_way() {
        let (_dir, _, store) = fixture();
        let lost = store.hash("1111".into()).await.unwrap();
        store.set(7, CARD, lost, (500, 500)).await.unwrap();
        store
            .hold(7, CARD)
            .await
            .unwrap()
            .unlock((520, 520))
            .await
            .unwrap();
        for _ in 0..MAX_WRONG_PIN_TRIES {
            store.check(7, CARD, "9999".into(), None).await.unwrap();
        }
        let locked = store.check(7, CARD, "1111".into(), None).await;
        assert_eq!(locked, Ok(Verdict::Locked));
        // The ledger, put back, ends at 60: the owner's unlock is 61.
        store
            .hold(7, CARD)
            .await
            .unwrap()
            .unlock((61, 61))
            .await
            .unwrap();
        let lifted = store.check(7, CARD, "1111".into(), None).await;
        assert_eq!(lifted, Ok(Verdict::Verified), "the unlock took effect");
        // A new PIN at 62, and a resent one whose hash was lost.
        assert!(store.lacks(7, CARD, (58, 62)).await.unwrap());
        let new = store.hash("2222".into()).await.unwrap();
        store.set(7, CARD, new, (62, 62)).await.unwrap();
        let now = store.check(7, CARD, "2222".into(), None).await;
        assert_eq!(now, Ok(Verdict::Verified), "the new PIN is the card's");
    }

    /// A hash kept before seqs were (0 in its file) is older than any
    /// record: a resent change whose hash was lost replaces it.
    #[tokio::test]
    async fn a_hash_from_before_seqs_is_older_than_any_record() {
        let (_dir, _, store) = fixture();
        let hash = store.hash("2222".into()).await.unwrap();
        store.set(7, CARD, hash, (0, HEAD)).await.unwrap();
        assert!(store.lacks(7, CARD, (30, HEAD)).await.unwrap());
        let hash = store.hash("3333".into()).await.unwrap();
        store.set(7, CARD, hash, (30, HEAD)).await.unwrap();
        let now = store.check(7, CARD, "3333".into(), None).await;
        assert_eq!(now, Ok(Verdict::Verified));
        assert!(!store.lacks(7, CARD, (30, HEAD)).await.unwrap());
    }
}
