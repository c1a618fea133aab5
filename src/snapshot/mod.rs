//! Signed snapshots of a brand's state: a restart loads the newest one and
//! replays only the records written after it, instead of the whole chain.
//!
//! One file per brand, `DATA/snapshots/brand-<id>.snap`, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory):
//!
//! ```text
//! "CARDDSN1" | format (u32, big-endian) | body | body length (u64, big-endian) | signature (64 bytes)
//! ```
//!
//! The body is the `BrandState` in postcard, which does not describe its
//! own layout: `FORMAT` names the layout, and a test pins the encoding so
//! that a change to any state type must bump it (a snapshot of another
//! format is then ignored, never misread). The signature is the server
//! key's over `"cardd.v1 snapshot\0" ‖ SHA-256(format ‖ body)`. A snapshot is a
//! shortcut, never evidence: recovery uses one only if it verifies, names
//! its brand and lies on the stored chain (its head hash is the hash of the
//! stored record at its sequence number), then replays the rest and checks
//! the newest checkpoint as before; otherwise it replays the whole chain.
//! `cardd check` always replays in full and compares the snapshot with the
//! replayed state at the snapshot's sequence number.
pub mod job;
pub mod parts;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::crypto::{sha256, DOMAIN_SNAPSHOT};
use crate::limits::{MAX_SNAPSHOT_BYTES, MAX_TOMBSTONES_AHEAD, TXN_WINDOW_PER_SIGNER};
use crate::state::{BrandState, TxnEntry};
use crate::storage::fsutil::{create_dir_all_durable, replace_durably};

/// Why a snapshot could not be written, or exists but cannot be used.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The state did not encode, or the body does not decode.
    #[error("snapshot {what}")]
    Postcard {
        /// "encoding" or "decoding".
        what: &'static str,
        /// The failure.
        #[source]
        source: postcard::Error,
    },
    /// The file is not what this build writes, or fails a check.
    #[error("snapshot {0}")]
    Invalid(String),
    /// The file is of another build's format (an upgrade): not an error of
    /// the ledger; a start replays the chain instead.
    #[error("snapshot format {found}, this build reads {reads}")]
    OtherFormat {
        /// The file's format number.
        found: u32,
        /// This build's.
        reads: u32,
    },
}

/// Result of a snapshot call.
pub type Result<T> = std::result::Result<T, SnapshotError>;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.to_string();
    move |source| SnapshotError::Io { what, source }
}

/// `Err(Invalid(why))` unless `ok`.
fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::Invalid(why()))
    }
}

const MAGIC: &[u8; 8] = b"CARDDSN1";
/// The layout of the body. Bump it with any change to a type inside
/// `BrandState` (the test `the_encoding_of_the_state_is_pinned` fails until
/// then).
pub const FORMAT: u32 = 13;
/// Magic and format.
const HEADER: usize = 8 + 4;
/// Body length and signature.
const TRAILER: usize = 8 + 64;

/// Where a data directory keeps its snapshots.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

fn path(dir: &Path, brand: u32) -> PathBuf {
    dir.join(format!("brand-{brand}.snap"))
}

/// What the server key signs: the domain and SHA-256 of the format number
/// and the body (the bytes between the magic and the trailer).
fn signed_message(format_and_body: &[u8]) -> Vec<u8> {
    [DOMAIN_SNAPSHOT, sha256(format_and_body).as_slice()].concat()
}

/// A snapshot encoded and signed in memory, to be stored apart from the
/// state (encoding needs the state; writing and fsyncing it do not).
pub struct Encoded {
    brand: u32,
    seq: u64,
    bytes: Vec<u8>,
}

impl Encoded {
    /// The sequence number of the state it holds.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True if empty (never: a snapshot has at least its header).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes it durably to `dir`, replacing the brand's previous snapshot.
    pub fn store(&self, dir: &Path) -> Result<()> {
        create_dir_all_durable(dir).map_err(io(format!("creating {}", dir.display())))?;
        let final_path = path(dir, self.brand);
        // Temporary file, fsync, rename, directory fsync: a cut leaves the
        // old snapshot or the new one, never half of one.
        replace_durably(&final_path, &self.bytes, true)
            .map_err(io(format!("writing {}", final_path.display())))
    }
}

/// Encodes and signs `state`'s snapshot.
pub fn encode(state: &BrandState, key: &SigningKey) -> Result<Encoded> {
    Ok(Encoded {
        brand: state.brand_id,
        seq: state.seq,
        bytes: seal(MAGIC, state, key)?,
    })
}

/// `magic | FORMAT | body | body length | signature`: `value` in postcard,
/// signed by `key` (the framing of both kinds of snapshot file).
fn seal(magic: &[u8; 8], value: &impl serde::Serialize, key: &SigningKey) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(HEADER + 1024 * 1024 + TRAILER);
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&FORMAT.to_be_bytes());
    let mut bytes =
        postcard::to_extend(value, bytes).map_err(|source| SnapshotError::Postcard {
            what: "encoding",
            source,
        })?;
    let body_len = (bytes.len() - HEADER) as u64;
    let signature = key.sign(&signed_message(&bytes[magic.len()..]));
    bytes.extend_from_slice(&body_len.to_be_bytes());
    bytes.extend_from_slice(&signature.to_bytes());
    Ok(bytes)
}

/// Writes `state`'s snapshot durably, replacing the brand's previous one.
/// Returns the file's size in bytes.
pub fn write(dir: &Path, state: &BrandState, key: &SigningKey) -> Result<u64> {
    let encoded = encode(state, key)?;
    encoded.store(dir)?;
    Ok(encoded.len() as u64)
}

/// The brand's newest snapshot (its window of parts or its whole-state
/// file, whichever is further along), verified against the server key;
/// None if there is none. An error says why one exists but cannot be used.
pub fn read(dir: &Path, brand: u32, key: &VerifyingKey) -> Result<Option<BrandState>> {
    Ok(read_start(dir, brand, key, &|_, _| true)?.map(|(state, _)| state))
}

/// Whether the log holds the record a snapshot was taken at: its sequence
/// number and hash. A start begins only from such a snapshot.
pub type OnLog<'a> = &'a dyn Fn(u64, &[u8; 32]) -> bool;

/// [`read`] for a start: the newest snapshot `on_log` accepts (an older
/// generation of parts, or the whole-state file, when a newer one was
/// taken past what a crash left of the log), with the chain of parts to
/// continue when it came from parts.
pub fn read_start(
    dir: &Path,
    brand: u32,
    key: &VerifyingKey,
    on_log: OnLog<'_>,
) -> Result<Option<(BrandState, Option<parts::Chain>)>> {
    let from_parts = parts::read(dir, brand, key, on_log);
    let whole = read_whole(dir, brand, key).map(|w| {
        w.filter(|w| {
            let usable = on_log(w.seq, &w.head_hash);
            if !usable {
                let seq = w.seq;
                tracing::warn!(
                    brand,
                    seq,
                    "the whole-state snapshot is not on the stored log"
                );
            }
            usable
        })
    });
    match (from_parts, whole) {
        (Ok(Some((p, chain))), Ok(Some(w))) if w.seq > p.seq => {
            drop(chain);
            Ok(Some((w, None)))
        }
        (Ok(Some((p, chain))), _) => Ok(Some((p, Some(chain)))),
        (_, Ok(Some(w))) => Ok(Some((w, None))),
        (Err(e), _) | (Ok(None), Err(e)) => Err(e),
        (Ok(None), Ok(None)) => Ok(None),
    }
}

/// The brand's whole-state snapshot file, verified; None if there is none.
pub fn read_whole(dir: &Path, brand: u32, key: &VerifyingKey) -> Result<Option<BrandState>> {
    let Some(bytes) = read_file(&path(dir, brand))? else {
        return Ok(None);
    };
    let state = decode(&bytes, key)?;
    ensure(state.brand_id == brand, || {
        format!("names brand {}", state.brand_id)
    })?;
    consistent(&state)?;
    Ok(Some(state))
}

/// The file's bytes, within the size limits; None if there is no file.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
    };
    let reading = || format!("reading {}", path.display());
    let size = file.metadata().map_err(io(reading()))?.len();
    ensure(size <= MAX_SNAPSHOT_BYTES, || {
        format!("of {size} bytes is over the limit")
    })?;
    ensure(size >= (HEADER + TRAILER) as u64, || "is truncated".into())?;
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(size)
        .read_to_end(&mut bytes)
        .map_err(io(reading()))?;
    ensure(bytes.len() as u64 == size, || "changed while read".into())?;
    Ok(Some(bytes))
}

/// Checks the framing and the signature, then decodes the state.
fn decode(bytes: &[u8], key: &VerifyingKey) -> Result<BrandState> {
    unseal(MAGIC, bytes, key)
}

/// The value a sealed file's body begins with, read from the file's
/// first bytes only, without checking the signature or the rest: a hint
/// (where a part says it stands), which a full read verifies. None if the
/// file is missing, or that much does not decode.
fn peek<T: serde::de::DeserializeOwned>(magic: &[u8; 8], path: &Path) -> Option<T> {
    use std::io::Read;
    let mut prefix = Vec::with_capacity(PEEK_BYTES);
    let file = File::open(path).ok()?;
    file.take(PEEK_BYTES as u64).read_to_end(&mut prefix).ok()?;
    let format = prefix.get(magic.len()..HEADER)?;
    if !prefix.starts_with(magic) || format != FORMAT.to_be_bytes() {
        return None;
    }
    postcard::take_from_bytes(&prefix[HEADER..])
        .ok()
        .map(|(value, _)| value)
}

/// What [`peek`] reads: a part's place is a few hundred bytes.
const PEEK_BYTES: usize = 4096;

/// Checks [`seal`]'s framing, format and signature, then decodes the body,
/// all of it.
fn unseal<T: serde::de::DeserializeOwned>(
    magic: &[u8; 8],
    bytes: &[u8],
    key: &VerifyingKey,
) -> Result<T> {
    ensure(
        bytes.len() >= HEADER + TRAILER && bytes.starts_with(magic),
        || "is not a cardd snapshot".into(),
    )?;
    let (format, rest) = bytes[magic.len()..].split_at(4);
    let format = u32::from_be_bytes(format.try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(SnapshotError::OtherFormat {
            found: format,
            reads: FORMAT,
        });
    }
    let (body, trailer) = rest.split_at(rest.len() - TRAILER);
    let (len, signature) = trailer.split_at(8);
    let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
    ensure(len == body.len() as u64, || "length does not match".into())?;
    let signature = Signature::from_bytes(signature.try_into().expect("64 bytes"));
    let signed = &bytes[magic.len()..bytes.len() - TRAILER];
    ensure(
        key.verify_strict(&signed_message(signed), &signature)
            .is_ok(),
        || "signature does not verify".into(),
    )?;
    let (value, unread): (T, _) =
        postcard::take_from_bytes(body).map_err(|source| SnapshotError::Postcard {
            what: "decoding",
            source,
        })?;
    ensure(unread.is_empty(), || "has bytes after the state".into())?;
    Ok(value)
}

/// What every state built by `apply` satisfies and `apply` relies on:
/// checked on a snapshot before it is used, so that one written by a
/// buggy build fails here rather than inside `apply`.
fn consistent(state: &BrandState) -> Result<()> {
    ensure(
        state.merkle.well_formed() && state.merkle.size() == state.seq,
        || "Merkle frontier does not match its size".into(),
    )?;
    ensure(state.effects.is_ordered_below(state.seq + 1), || {
        "refundable records are out of order".into()
    })?;
    let mut remembered = 0;
    for (ns, window) in &state.txn_windows {
        ensure(
            window.ids.len() <= TXN_WINDOW_PER_SIGNER
                && window.tombstones_ahead.len() <= MAX_TOMBSTONES_AHEAD
                && window
                    .ids
                    .iter()
                    .chain(&window.tombstones_ahead)
                    .all(|id| state.txns.contains_key(&(*ns, *id)))
                && window.tombstones_ahead.iter().all(|id| {
                    *id > window.forgotten_up_to
                        && matches!(state.txns[&(*ns, *id)], TxnEntry::Tombstone(_))
                }),
            || format!("transaction window {ns} does not match its index"),
        )?;
        remembered += window.ids.len() + window.tombstones_ahead.len();
    }
    ensure(remembered == state.txns.len(), || {
        "transaction index holds ids outside its windows".into()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn state() -> BrandState {
        let mut s = BrandState::new(9);
        s.name = "Snap".into();
        s.cards.insert(42, crate::state::Card::default());
        s
    }

    #[test]
    fn a_snapshot_reads_back_equal_and_only_with_its_key_and_brand() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let size = write(dir.path(), &state(), &key).unwrap();
        assert_eq!(size, fs::metadata(path(dir.path(), 9)).unwrap().len());
        let back = read(dir.path(), 9, &key.verifying_key()).unwrap();
        assert_eq!(back, Some(state()));
        assert_eq!(read(dir.path(), 8, &key.verifying_key()).unwrap(), None);
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(read(dir.path(), 9, &other).is_err());
    }

    /// One of everything, so that every map has one entry and the encoding
    /// is deterministic.
    fn one_of_each() -> BrandState {
        use crate::state::{Effect, Store, Terminal, TxnEntry, TxnWindow};
        let mut s = state();
        s.seq = 3;
        for i in 0..3 {
            s.merkle.push_with([i; 32], |_, _, _| {});
        }
        s.head_hash = [7; 32];
        // Issue 15's fields, set, so that the pin covers their encoding.
        s.server_key = [5; 32];
        s.retired_keys.push([6; 32]);
        s.rules.max_balance_anonymous_minor = 100_000;
        s.rules.currency_default_limits = true;
        s.rules.exact_refunds = true;
        let card = s.cards.get_mut(&42).expect("state() has card 42");
        (card.named, card.expires_ms, card.closed) = (true, 1_900_000_000_000, true);
        (card.spend_day, card.spent_today) = (20_000, 1_234);
        s.replaced_by
            .insert(8_000_010_000_000_000_001, 8_000_010_000_000_000_002);
        s.stores.insert(
            1,
            Store {
                name: "North".into(),
            },
        );
        s.terminals.insert(
            1,
            Terminal {
                store_id: 1,
                public_key: [5; 32],
                label: "till".into(),
                last_txn_id: 9,
                shift: crate::pb::ShiftTotals::default(),
                shift_number: 1,
                disabled: false,
            },
        );
        // One map entry each, so that the encoding is deterministic: the
        // window's one id is a tombstone kept beyond it.
        s.txns.insert((1, 20), TxnEntry::Tombstone(2));
        s.txn_windows.insert(
            1,
            TxnWindow {
                ids: [].into(),
                forgotten_up_to: 2,
                tombstones_ahead: [20].into(),
            },
        );
        s.effects.push(
            3,
            Effect {
                kind: crate::pb::RecordKind::Purchase,
                card: 42,
                store_id: 1,
                terminal_id: 1,
                shift_number: 1,
                paid_in: 0,
                bonus_in: 0,
                paid_out: 100,
                bonus_out: 5,
                points_in: 1,
                points_out: 0,
                visit_counted: true,
                refunded_paid: 0,
                refunded_bonus: 0,
                refunded_points: 0,
                original_seq: 0,
                reversed: true,
                time_ms: 1_790_000_000_000,
                lots: crate::state::lots::Lots::One(crate::state::lots::Lot {
                    store: 1,
                    paid: 100,
                    bonus: 5,
                }),
                points: Some(Box::new(crate::state::EffectPoints {
                    value: 7,
                    refunded_value: 1,
                    returned: 2,
                    lots: vec![crate::state::points::PointLot {
                        expires_ms: 1_790_000_000_001,
                        points: 20,
                    }],
                })),
                refunded_lots: Some(Box::new(crate::state::lots::Lots::One(
                    crate::state::lots::Lot {
                        store: 1,
                        paid: 3,
                        bonus: 0,
                    },
                ))),
            },
        );
        let card = s.cards.get_mut(&42).expect("card 42");
        crate::state::points::award(&mut card.loyalty, 30, 1_790_000_000_002);
        crate::state::points::add_day_spend(&mut card.loyalty, 20_000, 20_000, 30, 500);
        s
    }

    #[test]
    fn the_encoding_of_the_state_is_pinned() {
        // A change to any type inside BrandState changes this encoding:
        // bump FORMAT, then pin the new hash. Never only the hash.
        let bytes = postcard::to_stdvec(&one_of_each()).unwrap();
        assert_eq!(
            (FORMAT, hex::encode(crate::crypto::sha256(&bytes))),
            (
                13,
                "a22d71a08b78c825a5f45f2373f68c98c24d58717d4e1f1db80ab44d0312e4df".to_string()
            )
        );
    }

    #[test]
    fn a_consistent_state_passes_and_mismatched_indexes_do_not() {
        let good = one_of_each();
        consistent(&good).unwrap();
        let mut bad = good.clone();
        bad.txns
            .insert((1, 10), crate::state::TxnEntry::Committed(3));
        assert!(consistent(&bad).is_err());
        let mut bad = good.clone();
        bad.seq = 2;
        assert!(consistent(&bad).is_err());
        let mut bad = good.clone();
        // A kept tombstone the mark has passed should have been dropped.
        bad.txn_windows.get_mut(&1).unwrap().forgotten_up_to = 20;
        assert!(consistent(&bad).is_err());
        let mut bad = good;
        bad.txn_windows.get_mut(&1).unwrap().ids.push_back(11);
        assert!(consistent(&bad).is_err());
    }

    #[test]
    fn any_changed_byte_makes_a_snapshot_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        write(dir.path(), &state(), &key).unwrap();
        let p = path(dir.path(), 9);
        let good = fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&p, &bad).unwrap();
            assert!(
                read(dir.path(), 9, &key.verifying_key()).is_err(),
                "byte {i} changed, yet the snapshot was accepted"
            );
        }
        fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(read(dir.path(), 9, &key.verifying_key()).is_err());
    }
}
