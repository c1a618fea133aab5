//! The holder store: the names and phones of named cards' holders, kept
//! outside the signed ledger in a store that can really forget.
//!
//! The ledger is forever, people are not (PIPL, GDPR). The ledger keeps
//! only that a card became named and a keyed commitment to its holder
//! (HMAC-SHA256 under a random key of that holder): with the key the owner
//! can show which person a record meant; without it the commitment says
//! nothing, not even to someone who guesses phone numbers.
//!
//! Erasure is real because nothing here is log-structured: each brand's
//! holders are one small file, `DATA/holders/brand-N`, rewritten whole on
//! every change (temporary file, fsync, rename, directory fsync). After an
//! erase the person's bytes are in no file of the data directory: the old
//! file is unlinked, the new one never held them, and there is no index on
//! disk (find-card scans the brand's holders in memory). What a file
//! system keeps in freed blocks is the disk's to forget: docs/security.md.
//! The cost of a change grows with the brand's holders
//! (`MAX_HOLDERS_PER_BRAND`); changes are owner operations, rare.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::Refusal;
use crate::limits::*;
use crate::pb::ErrorCode as E;
use crate::storage::fsutil::{create_dir_all_durable, replace_durably};

/// Domain separation of the holder commitment.
const COMMITMENT_DOMAIN: &[u8] = b"cardd.v1 holder\0";

/// One holder. Its `Debug` never shows the person.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Holder {
    name: String,
    phone: String,
    /// The commitment's key; erased with the person.
    key: [u8; 32],
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Holder(..)")
    }
}

impl Holder {
    fn commitment(&self, card: u64) -> [u8; 32] {
        commitment(&self.key, card, &self.name, &self.phone)
    }
}

/// HMAC-SHA256(key, domain ‖ card ‖ 0 ‖ name ‖ 0 ‖ phone): the card is its
/// 19-digit text; the zero bytes keep the fields apart (neither holds one).
pub fn commitment(key: &[u8; 32], card: u64, name: &str, phone: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(COMMITMENT_DOMAIN);
    mac.update(crate::state::format_card(card).as_bytes());
    mac.update(&[0]);
    mac.update(name.as_bytes());
    mac.update(&[0]);
    mac.update(phone.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The request itself was wrong (a refusal for the client).
    #[error("{0}")]
    Refused(Refusal),
    /// Reading or writing the brand's file failed.
    #[error("holder store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The brand's file is not what this store writes.
    #[error("holder store {path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl HolderError {
    /// The refusal a client is given (never the person's data: none of
    /// these messages holds it).
    pub fn refusal(&self) -> Refusal {
        match self {
            HolderError::Refused(r) => r.clone(),
            HolderError::Io { .. } | HolderError::Damaged { .. } => {
                Refusal::new(E::StorageFailure, "the holder store could not be written")
            }
        }
    }
}

fn refused<T>(code: E, message: &str) -> Result<T, HolderError> {
    Err(HolderError::Refused(Refusal::new(code, message)))
}

/// Checks a holder's name: 1..=MAX_HOLDER_NAME_BYTES bytes, no control
/// characters (the wire rule already made it valid UTF-8).
pub fn name_ok(name: &str) -> Result<(), Refusal> {
    if name.trim().is_empty()
        || name.len() > MAX_HOLDER_NAME_BYTES
        || name.chars().any(char::is_control)
    {
        return Err(Refusal::new(
            E::InvalidArgument,
            "the holder's name is 1 to 64 bytes without control characters",
        ));
    }
    Ok(())
}

/// Checks a phone number: an optional "+", then 5 to 20 ASCII digits.
pub fn phone_ok(phone: &str) -> Result<(), Refusal> {
    let digits = phone.strip_prefix('+').unwrap_or(phone);
    if !(MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Refusal::new(
            E::InvalidArgument,
            "a phone number is an optional + then 5 to 20 digits",
        ));
    }
    Ok(())
}

/// Every brand's holders, loaded lazily from `DATA/holders/`.
#[derive(Debug)]
pub struct HolderStore {
    dir: PathBuf,
    /// Each brand's holders under a lock of its own: one brand's rewrites
    /// and fsyncs never wait for another's.
    brands: Mutex<HashMap<u32, Arc<BrandHolders>>>,
}

type Holders = BTreeMap<u64, Holder>;

/// One brand's holders (None until read) and its calls admitted.
#[derive(Debug, Default)]
struct BrandHolders {
    holders: Mutex<Option<Holders>>,
    /// Calls admitted and not yet done, running or waiting for the lock.
    admitted: AtomicUsize,
}

/// A place among a brand's holder-store calls (see
/// [`HolderStore::admit`]); the place is given back when this is dropped.
#[derive(Debug)]
pub struct Admitted(Arc<BrandHolders>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HolderStore {
    /// The store of the data directory `data_dir` (nothing is read yet).
    pub fn new(data_dir: &Path) -> Self {
        HolderStore {
            dir: data_dir.join("holders"),
            brands: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, brand: u32) -> PathBuf {
        self.dir.join(format!("brand-{brand}"))
    }

    fn brand(&self, brand: u32) -> Arc<BrandHolders> {
        let mut brands = self.brands.lock().expect("holder store lock");
        brands.entry(brand).or_default().clone()
    }

    /// A place for one more of `brand`'s calls, or `SERVER_BUSY` when
    /// `MAX_HOLDER_CALLS_PER_BRAND` are running or waiting. Each call
    /// holds a blocking thread while it waits for the brand's lock, and
    /// those threads are shared with every brand's PIN checks: without
    /// this bound one owner's flood of `HolderData` would take them all.
    pub fn admit(&self, brand: u32) -> Result<Admitted, Refusal> {
        let one = self.brand(brand);
        let before = one.admitted.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted(one);
        if before >= MAX_HOLDER_CALLS_PER_BRAND {
            return Err(Refusal::new(
                E::ServerBusy,
                "too many holder changes of this brand at once; try again",
            ));
        }
        Ok(admitted)
    }

    /// Runs `f` on the brand's holders (read from its file on first use).
    fn with_brand<T>(
        &self,
        brand: u32,
        f: impl FnOnce(&mut BTreeMap<u64, Holder>) -> Result<T, HolderError>,
    ) -> Result<T, HolderError> {
        let one = self.brand(brand);
        let mut loaded = one.holders.lock().expect("holder store lock");
        if loaded.is_none() {
            *loaded = Some(self.load(brand)?);
        }
        f(loaded.as_mut().expect("loaded above"))
    }

    fn load(&self, brand: u32) -> Result<BTreeMap<u64, Holder>, HolderError> {
        let path = self.path(brand);
        match std::fs::read(&path) {
            Ok(bytes) => postcard::from_bytes(&bytes).map_err(|e| HolderError::Damaged {
                path,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(HolderError::Io { path, source }),
        }
    }

    /// Rewrites the brand's file whole, durably (the old file, and every
    /// byte of an erased holder in it, is unlinked by the rename).
    fn store(&self, brand: u32, holders: &BTreeMap<u64, Holder>) -> Result<(), HolderError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HolderError::Io { path, source }
        };
        create_dir_all_durable(&self.dir).map_err(io(&self.dir))?;
        let path = self.path(brand);
        let bytes = postcard::to_stdvec(holders).expect("holders encode");
        replace_durably(&path, &bytes, true).map_err(io(&path))
    }

    /// Keeps `name` and `phone` as the holder of `card` (replacing any
    /// earlier one) under a fresh key, durably; returns the commitment
    /// the owner then signs in `SetHolder`. Blocking (fsync).
    pub fn put(
        &self,
        brand: u32,
        card: u64,
        name: &str,
        phone: &str,
    ) -> Result<[u8; 32], HolderError> {
        name_ok(name).map_err(HolderError::Refused)?;
        phone_ok(phone).map_err(HolderError::Refused)?;
        let holder = Holder {
            name: name.to_string(),
            phone: phone.to_string(),
            key: rand::random(),
        };
        let commitment = holder.commitment(card);
        self.with_brand(brand, |holders| {
            if !holders.contains_key(&card) && holders.len() >= MAX_HOLDERS_PER_BRAND {
                return refused(E::LimitExceeded, "the brand holds the most holders it may");
            }
            let before = holders.insert(card, holder);
            if let Err(e) = self.store(brand, holders) {
                // Memory stays what the disk holds.
                match before {
                    Some(old) => holders.insert(card, old),
                    None => holders.remove(&card),
                };
                return Err(e);
            }
            Ok(commitment)
        })
    }

    /// True if `commitment` is the one of `card`'s holder in the store.
    pub fn holds(&self, brand: u32, card: u64, commitment: &[u8]) -> Result<bool, HolderError> {
        self.with_brand(brand, |holders| {
            Ok(holders
                .get(&card)
                .is_some_and(|h| h.commitment(card).as_slice() == commitment))
        })
    }

    /// The cards whose holder has `phone`, in card order; more than `max`
    /// is refused (`LIMIT_EXCEEDED`), as its answer would not fit a frame.
    pub fn find(&self, brand: u32, phone: &str, max: usize) -> Result<Vec<u64>, HolderError> {
        phone_ok(phone).map_err(HolderError::Refused)?;
        let found = self.with_brand(brand, |holders| {
            Ok(holders
                .iter()
                .filter(|(_, h)| h.phone == phone)
                .map(|(card, _)| *card)
                .take(max.saturating_add(1))
                .collect::<Vec<_>>())
        })?;
        if found.len() > max {
            return Err(HolderError::Refused(Refusal::new(
                E::LimitExceeded,
                format!("more than {max} cards hold this phone: too many to list"),
            )));
        }
        Ok(found)
    }

    /// Moves `from`'s holder to `to` (a replaced card: the same person
    /// holds the new number), durably; nothing to move is not an error.
    /// Blocking (fsync).
    pub fn rename(&self, brand: u32, from: u64, to: u64) -> Result<(), HolderError> {
        self.with_brand(brand, |holders| {
            let Some(holder) = holders.remove(&from) else {
                return Ok(());
            };
            let displaced = holders.insert(to, holder);
            if let Err(e) = self.store(brand, holders) {
                let holder = holders.remove(&to).expect("inserted above");
                holders.insert(from, holder);
                if let Some(d) = displaced {
                    holders.insert(to, d);
                }
                return Err(e);
            }
            Ok(())
        })
    }

    /// Forgets `card`'s holder (person and key), durably. Forgetting a
    /// card without a holder is not an error. Blocking (fsync).
    pub fn erase(&self, brand: u32, card: u64) -> Result<(), HolderError> {
        self.with_brand(brand, |holders| {
            let Some(old) = holders.remove(&card) else {
                return Ok(());
            };
            if let Err(e) = self.store(brand, holders) {
                holders.insert(card, old);
                return Err(e);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: u64 = 8_000_070_000_000_000_011;

    /// A brand busy rewriting its file (its lock held) does not hold up
    /// another brand's holders.
    #[test]
    fn one_brand_busy_does_not_wait_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(HolderStore::new(dir.path()));
        store.put(1, CARD, "Li Na", "13900139000").unwrap();
        let one = store.brands.lock().unwrap().get(&1).cloned().unwrap();
        let busy = one.holders.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = store.clone();
        std::thread::spawn(move || {
            let _ = tx.send(other.put(2, CARD, "Wang Fang", "13700137000").is_ok());
        });
        let done = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(busy);
        assert_eq!(done, Ok(true), "brand 2 waited for brand 1");
    }

    /// Places are per brand, refused past the bound, and given back when
    /// a call is done.
    #[test]
    fn a_brand_s_calls_are_admitted_up_to_the_bound_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let store = HolderStore::new(dir.path());
        let full: Vec<Admitted> = (0..MAX_HOLDER_CALLS_PER_BRAND)
            .map(|_| store.admit(1).unwrap())
            .collect();
        let refused = store.admit(1).unwrap_err();
        assert_eq!(refused.code, E::ServerBusy);
        assert!(
            store.admit(2).is_ok(),
            "another brand has places of its own"
        );
        drop(full);
        let again: Vec<Admitted> = (0..MAX_HOLDER_CALLS_PER_BRAND)
            .map(|_| store.admit(1).unwrap())
            .collect();
        assert_eq!(again.len(), MAX_HOLDER_CALLS_PER_BRAND);
    }

    #[test]
    fn an_erased_holder_is_in_no_file_and_a_new_store_forgets_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = HolderStore::new(dir.path());
        let c = store
            .put(7, CARD, "Zhang Wei 张伟", "+8613800138000")
            .unwrap();
        store.put(7, CARD + 1, "Li Na", "13900139000").unwrap();
        assert!(store.holds(7, CARD, &c).unwrap());
        assert!(!store.holds(7, CARD, &[0; 32]).unwrap());
        assert_eq!(store.find(7, "+8613800138000", 9).unwrap(), vec![CARD]);
        let file = std::fs::read(dir.path().join("holders/brand-7")).unwrap();
        assert!(file.windows(6).any(|w| w == "张伟".as_bytes()));
        store.erase(7, CARD).unwrap();
        let file = std::fs::read(dir.path().join("holders/brand-7")).unwrap();
        assert!(!file.windows(6).any(|w| w == "张伟".as_bytes()));
        assert!(!file.windows(14).any(|w| w == b"+8613800138000"));
        let reopened = HolderStore::new(dir.path());
        assert_eq!(
            reopened.find(7, "+8613800138000", 9).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(reopened.find(7, "13900139000", 9).unwrap(), vec![CARD + 1]);
        assert!(!reopened.holds(7, CARD, &c).unwrap());
    }

    #[test]
    fn malformed_holders_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = HolderStore::new(dir.path());
        let long = "x".repeat(MAX_HOLDER_NAME_BYTES + 1);
        for (name, phone) in [
            ("", "13900139000"),
            (" ", "13900139000"),
            (long.as_str(), "13900139000"),
            ("a\u{7}b", "13900139000"),
            ("Li", "1390"),
            ("Li", "139001390001390013900"),
            ("Li", "139-0013"),
            ("Li", "++13900139"),
        ] {
            let e = store.put(7, CARD, name, phone).unwrap_err();
            assert_eq!(e.refusal().code, E::InvalidArgument, "{name:?} {phone:?}");
        }
        assert!(!dir.path().join("holders").exists());
    }

    #[test]
    fn a_phone_of_more_cards_than_an_answer_lists_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = HolderStore::new(dir.path());
        for card in CARD..CARD + 3 {
            store.put(7, card, "Li Na", "13900139000").unwrap();
        }
        let all = store.find(7, "13900139000", 3).unwrap();
        assert_eq!(all, vec![CARD, CARD + 1, CARD + 2]);
        let e = store.find(7, "13900139000", 2).unwrap_err();
        assert_eq!(e.refusal().code, E::LimitExceeded);
    }
}
