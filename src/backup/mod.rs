//! Logical backups and restore (`cardd backup`, `cardd restore`).
//!
//! A backup file is an ordinary ledger export (docs/ledger-format.md): the
//! same bytes `cardd audit export` writes, so `cardd audit verify` and the
//! independent verifier check it, whatever storage engine wrote it. A run
//! on an existing file verifies it, fetches only the records after its tree
//! size (`ExportLedger.after_size`), checks with a consistency proof that
//! the source's tree extends the file's newest checkpoint, writes the
//! old items, the new ones and one new header and trailer to a temporary
//! file, verifies that file whole, and only then renames it over the old
//! one (fsync of the file and of the directory): an interrupted or refused
//! run leaves the previous good file as it was. Details: docs/backup.md.
//!
//! - `file`: joining an existing backup and a new part into one export;
//! - `local`: the source for a stopped daemon's data directory;
//! - `restore`: rebuilding a data directory from backups.
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::audit::{verify_export, ExportFileError, ExportReader, VerifyError, VerifyOptions};
use crate::pb::{self, export_item::Item};

pub mod file;
pub mod local;
pub mod restore;

pub use local::LocalSource;
pub use restore::{restore, RestoreError, Restored};

/// A failure of a backup source (the daemon over the protocol, or a data
/// directory), boxed: each source has its own error type.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where a brand's records come from.
pub trait Source {
    /// The brand this source reads.
    fn brand(&self) -> u32;
    /// The server's public key (the one that signs the checkpoints).
    fn server_key(&self) -> [u8; 32];
    /// Writes the export of the records after tree size `after` and the
    /// checkpoints over them (`ExportLedger.after_size`) to `out`.
    fn export_after(&mut self, after: u64, out: &mut dyn Write) -> Result<(), SourceError>;
    /// The consistency proof from `old_size` to `new_size` (0: the newest).
    fn consistency(
        &mut self,
        old_size: u64,
        new_size: u64,
    ) -> Result<pb::ConsistencyProof, SourceError>;
}

/// Why a backup run stopped. The file it was given is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Another run is bringing the same file up to date (a cron run and a
    /// manual one, say): their scratch files would collide.
    #[error("{0}: another backup run holds this file (its .lock); try again when it ends")]
    Busy(PathBuf),
    /// The existing backup file does not verify (damaged, truncated,
    /// edited): it is left alone and nothing is appended to it.
    #[error("{path}: the existing backup does not verify (damaged? keep it for inspection and start a new file)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first failure.
        #[source]
        source: VerifyError,
    },
    /// The existing file is not an export at all.
    #[error("{path}: the existing file is not a readable cardd backup")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ExportFileError,
    },
    /// The file holds another brand than the source serves.
    #[error("{path}: the backup is of brand {file_brand}, the source is brand {source_brand}")]
    WrongBrand {
        /// The file.
        path: PathBuf,
        /// Its brand.
        file_brand: u32,
        /// The source's brand.
        source_brand: u32,
    },
    /// The file's chain leads to another server key than the source's (or
    /// the source's is not the key pinned with `--server-key`).
    #[error("{path}: server key {found} is not the expected {expected}")]
    OtherServer {
        /// The file, or the source when it was pinned.
        path: PathBuf,
        /// The key found, hex.
        found: String,
        /// The key expected, hex.
        expected: String,
    },
    /// The source failed.
    #[error("reading from the source")]
    Source(#[source] SourceError),
    /// The source's tree does not extend the backup's newest checkpoint.
    #[error("INCONSISTENT: the source's tree of size {new_size} does not extend the backup's tree of size {old_size} ({why}); the backup is left as it was")]
    NotExtended {
        /// The backup's tree size.
        old_size: u64,
        /// The source's tree size.
        new_size: u64,
        /// What failed.
        why: String,
    },
    /// The new part is not what was asked for (wrong brand, wrong start).
    #[error("the source's new part is malformed: {0}")]
    BadPart(String),
    /// The backup with the new part does not verify.
    #[error("the backup with the new part does not verify; the old file is left as it was")]
    NewPartInvalid(#[source] VerifyError),
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

impl BackupError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }
}

/// What a backup run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupOutcome {
    /// The brand.
    pub brand: u32,
    /// Records in the file before the run (0 for a new file).
    pub records_before: u64,
    /// Records in the file after it.
    pub records_after: u64,
    /// Checkpoints in the file after it.
    pub checkpoints: u64,
}

/// What the existing backup holds, after it verified.
struct Existing {
    tree_size: u64,
    checkpoints: u64,
    last_checkpoint: pb::Checkpoint,
    /// The key its header names: the chain's first server key, the trust
    /// anchor every later run verifies the file from.
    anchor: [u8; 32],
    /// The server key in force at its end, after its rotations.
    key_now: [u8; 32],
}

/// Backs `source`'s brand up to `path`: a new file holds the whole chain,
/// an existing one gets only what is new (see the module comment).
/// `pinned_key`, when given, must be the source's server key.
///
/// Across a server key rotation: the file keeps its chain's first key as
/// its anchor, and is verified from it through the rotations its records
/// hold; the key the chain then leads to must be the source's.
pub fn backup(
    source: &mut dyn Source,
    path: &Path,
    pinned_key: Option<[u8; 32]>,
) -> Result<BackupOutcome, BackupError> {
    let server_key = source.server_key();
    if let Some(pinned) = pinned_key.filter(|k| *k != server_key) {
        return Err(BackupError::OtherServer {
            path: PathBuf::from("the source"),
            found: hex::encode(server_key),
            expected: hex::encode(pinned),
        });
    }
    let _lock = lock_beside(path)?;
    let existing = match path.exists() {
        true => Some(read_existing(path, source.brand())?),
        false => None,
    };
    let temps = Temps::beside(path);
    let after = existing.as_ref().map_or(0, |e| e.tree_size);
    fetch_part(source, after, &temps.part)?;
    // A part after the file's records names the source's key; a whole
    // chain names its first.
    let part_key = existing.as_ref().map(|_| server_key);
    let part = file::scan_part(&temps.part, source.brand(), part_key.as_ref())?;
    if let Some(e) = &existing {
        if part.records == 0 {
            leads_to(path, e.key_now, server_key)?;
        }
        check_extends(source, e, part.last_checkpoint.as_ref(), &server_key)?;
        if part.records == 0 {
            // Nothing new: the file stays as it is (not even rewritten).
            return Ok(BackupOutcome {
                brand: source.brand(),
                records_before: e.tree_size,
                records_after: e.tree_size,
                checkpoints: e.checkpoints,
            });
        }
    }
    let anchor = existing.as_ref().map_or(part.anchor, |e| e.anchor);
    let old = existing.as_ref().map(|_| path);
    let joined = file::join(old, &temps.part, &temps.joined, source.brand(), &anchor)?;
    let old_checkpoint = existing.as_ref().map(|e| e.last_checkpoint.clone());
    let report =
        verify_file(&temps.joined, anchor, old_checkpoint).map_err(BackupError::NewPartInvalid)?;
    leads_to(path, report.server_key_now, server_key)?;
    temps.commit(path)?;
    Ok(BackupOutcome {
        brand: source.brand(),
        records_before: after,
        records_after: joined.tree_size,
        checkpoints: joined.checkpoints,
    })
}

/// The chain's key in force must be the one the source signs with: a
/// backup never joins a chain to a source that serves it under a key the
/// chain does not lead to.
fn leads_to(path: &Path, key_now: [u8; 32], source_key: [u8; 32]) -> Result<(), BackupError> {
    if key_now != source_key {
        return Err(BackupError::OtherServer {
            path: path.to_path_buf(),
            found: hex::encode(key_now),
            expected: hex::encode(source_key),
        });
    }
    Ok(())
}

/// Verifies the existing backup whole from the key its header names (a
/// damaged file is refused here, before anything is fetched) and checks
/// that it is the source's brand.
fn read_existing(path: &Path, brand: u32) -> Result<Existing, BackupError> {
    let header = read_header(path).map_err(|source| BackupError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if header.brand_id != brand {
        return Err(BackupError::WrongBrand {
            path: path.to_path_buf(),
            file_brand: header.brand_id,
            source_brand: brand,
        });
    }
    let corrupt = |what: &str| BackupError::Corrupt {
        path: path.to_path_buf(),
        source: VerifyError {
            seq: None,
            what: what.into(),
        },
    };
    let anchor = anchor_of(&header).ok_or_else(|| corrupt("its header names no server key"))?;
    let report = verify_file(path, anchor, None).map_err(|source| BackupError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    let key_now = report.server_key_now;
    let last_checkpoint = report
        .last_checkpoint
        .ok_or_else(|| corrupt("the backup holds no checkpoint"))?;
    Ok(Existing {
        tree_size: report.records,
        checkpoints: report.checkpoints,
        last_checkpoint,
        anchor,
        key_now,
    })
}

/// The server key an export's header names: a whole chain's first key,
/// the anchor it is verified from (None if it is not a key's length).
fn anchor_of(header: &pb::ExportHeader) -> Option<[u8; 32]> {
    header.server_public_key.as_slice().try_into().ok()
}

/// The header of an export file (read before a whole verification, so
/// that a wrong brand or key gets its own message).
pub fn read_header(path: &Path) -> Result<pb::ExportHeader, ExportFileError> {
    let f = File::open(path).map_err(ExportFileError::Read)?;
    let mut reader = ExportReader::new(BufReader::new(f))?;
    match reader.next_item()? {
        Some(Item::Header(h)) => Ok(h),
        _ => Err(ExportFileError::Empty),
    }
}

/// Creates (or truncates) a file only its owner can read: a backup holds
/// card numbers and balances.
pub(crate) fn create_private(path: &Path) -> Result<File, BackupError> {
    crate::storage::fsutil::create_file(path, true)
        .map_err(BackupError::io(format!("creating {}", path.display())))
}

/// Verifies and replays an export file (`cardd audit verify`'s check).
pub fn verify_file(
    path: &Path,
    server_key: [u8; 32],
    old_checkpoint: Option<pb::Checkpoint>,
) -> Result<crate::audit::VerifyReport, VerifyError> {
    let f = File::open(path).map_err(|e| VerifyError {
        seq: None,
        what: format!("opening {}: {e}", path.display()),
    })?;
    let wants_old = old_checkpoint.is_some();
    let opts = VerifyOptions {
        server_key,
        old_checkpoint,
    };
    let report = verify_export(BufReader::with_capacity(1 << 20, f), &opts, |_| {})?;
    if wants_old && report.extends_old_checkpoint != Some(true) {
        return Err(VerifyError {
            seq: None,
            what: "the file does not reach the backup's newest checkpoint".into(),
        });
    }
    Ok(report)
}

/// Fetches the part after `after` into `part`.
fn fetch_part(source: &mut dyn Source, after: u64, part: &Path) -> Result<(), BackupError> {
    let mut out = BufWriter::new(create_private(part)?);
    source
        .export_after(after, &mut out)
        .map_err(BackupError::Source)?;
    out.flush()
        .map_err(BackupError::io(format!("writing {}", part.display())))
}

/// Checks with a consistency proof from the source that its tree extends
/// the backup's newest checkpoint: up to the new part's newest checkpoint,
/// or, when nothing is new, up to the source's newest checkpoint.
fn check_extends(
    source: &mut dyn Source,
    existing: &Existing,
    new_checkpoint: Option<&pb::Checkpoint>,
    server_key: &[u8; 32],
) -> Result<(), BackupError> {
    let old = &existing.last_checkpoint;
    let new_size = new_checkpoint.map_or(0, |c| c.tree_size);
    let proof = source
        .consistency(old.tree_size, new_size)
        .map_err(BackupError::Source)?;
    let not_extended = |why: &str| BackupError::NotExtended {
        old_size: old.tree_size,
        new_size: proof.new_size,
        why: why.to_string(),
    };
    let new = match new_checkpoint {
        Some(c) => c,
        None => proof
            .new_checkpoint
            .as_ref()
            .ok_or_else(|| not_extended("the source sent no checkpoint"))?,
    };
    let vk = VerifyingKey::from_bytes(server_key).map_err(|_| not_extended("bad server key"))?;
    if crate::checkpoint::verify(new, &vk, None).is_err() || new.brand_id != old.brand_id {
        return Err(not_extended(
            "the source's checkpoint is not signed by the server key",
        ));
    }
    let path: Option<Vec<[u8; 32]>> = proof
        .path
        .iter()
        .map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
        .collect();
    let root = |c: &pb::Checkpoint| <[u8; 32]>::try_from(c.root_hash.as_slice()).unwrap_or([0; 32]);
    let consistent = path.is_some_and(|p| {
        proof.new_size == new.tree_size
            && crate::merkle::verify_consistency(
                old.tree_size,
                new.tree_size,
                &root(old),
                &root(new),
                &p,
            )
    });
    if !consistent {
        return Err(not_extended("history rewritten or forked"));
    }
    Ok(())
}

/// The run's temporary files beside the backup: removed on drop, unless
/// [`Temps::commit`] renamed the joined one over the backup.
/// Locks `FILE.lock` for the run: two runs on one file would share its
/// scratch files, and one could rename the other's half-written file over
/// the good one. The lock file stays (removing it would break the lock for
/// a run waiting on it); the lock goes with the process.
fn lock_beside(path: &Path) -> Result<fs::File, BackupError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(BackupError::io(format!("opening {}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(BackupError::Busy(path.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(BackupError::io(format!(
            "locking {}",
            lock_path.display()
        ))(e)),
    }
}

struct Temps {
    part: PathBuf,
    joined: PathBuf,
}

impl Temps {
    fn beside(path: &Path) -> Temps {
        let with = |suffix: &str| {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(suffix);
            path.with_file_name(name)
        };
        Temps {
            part: with(".part"),
            joined: with(".tmp"),
        }
    }

    /// Renames the joined file over `path` and fsyncs the directory (the
    /// joined file itself was fsynced when written).
    fn commit(&self, path: &Path) -> Result<(), BackupError> {
        fs::rename(&self.joined, path)
            .map_err(BackupError::io(format!("renaming over {}", path.display())))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::storage::fsutil::sync_dir(dir)
            .map_err(BackupError::io(format!("syncing {}", dir.display())))
    }
}

impl Drop for Temps {
    fn drop(&mut self) {
        // Absent files (already renamed, never made) are fine.
        let _ = fs::remove_file(&self.part);
        let _ = fs::remove_file(&self.joined);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::BrandLedger;
    use crate::state::Principal;
    use crate::storage::{DiskStore, LogStore};
    use crate::testing::{self, BRAND};

    /// A provisioned brand on a disk store in `dir`.
    fn fixture(dir: &Path) -> (Arc<DiskStore>, BrandLedger, String) {
        let store = Arc::new(DiskStore::open(&dir.join("data")).expect("store"));
        let (ledger, card) = testing::provision(store.clone(), "b", 10_000);
        (store, ledger, card)
    }

    fn source(store: &DiskStore) -> LocalSource<'_> {
        LocalSource {
            store,
            brand: BRAND,
            server_key: testing::server_key().verifying_key().to_bytes(),
        }
    }

    fn buy(ledger: &mut BrandLedger, card: &str, txn: u64) {
        let op = testing::purchase(card, 100, false);
        let sub = testing::signed(&testing::terminal_key(), Principal::Terminal(1), txn, op);
        let answer = ledger.submit_now(sub).expect("commit");
        answer.expect("purchase accepted");
    }

    #[test]
    fn a_run_after_an_interrupted_one_appends_and_clears_its_scratch_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, mut ledger, card) = fixture(dir.path());
        let file = dir.path().join("b.cardd-backup");
        let first = backup(&mut source(&store), &file, None).expect("first run");
        assert_eq!((first.records_before, first.records_after), (0, 5));
        let temps = Temps::beside(&file);
        // What a run killed half-way leaves beside the good file.
        fs::write(&temps.part, b"half a part").expect("write");
        fs::write(&temps.joined, b"half a file").expect("write");
        buy(&mut ledger, &card, 2);
        let second = backup(&mut source(&store), &file, None).expect("second run");
        assert_eq!((second.records_before, second.records_after), (5, 6));
        assert!(!temps.part.exists() && !temps.joined.exists());
        let key = testing::server_key().verifying_key().to_bytes();
        let report = verify_file(&file, key, first_checkpoint(&file, key)).expect("verifies");
        assert_eq!((report.records, report.checkpoints), (6, 6));
    }

    fn first_checkpoint(file: &Path, key: [u8; 32]) -> Option<pb::Checkpoint> {
        let mut reader = ExportReader::new(BufReader::new(File::open(file).ok()?)).ok()?;
        while let Some(item) = reader.next_item().ok()? {
            if let Item::Checkpoint(c) = item {
                assert!(
                    crate::checkpoint::verify(&c, &VerifyingKey::from_bytes(&key).ok()?, None)
                        .is_ok()
                );
                return Some(c);
            }
        }
        None
    }

    #[test]
    fn another_server_key_or_brand_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _ledger, _card) = fixture(dir.path());
        let file = dir.path().join("b.cardd-backup");
        let pinned = Some([7u8; 32]);
        let err = backup(&mut source(&store), &file, pinned).expect_err("pinned key");
        assert!(matches!(err, BackupError::OtherServer { .. }), "{err:?}");
        assert!(!file.exists());
        backup(&mut source(&store), &file, None).expect("backup");
        let bytes = fs::read(&file).expect("file");
        let mut other = source(&store);
        other.brand = BRAND + 1;
        let err = backup(&mut other, &file, None).expect_err("another brand");
        assert!(
            matches!(
                err,
                BackupError::WrongBrand {
                    file_brand: BRAND,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(fs::read(&file).expect("file"), bytes);
    }

    #[test]
    fn a_second_run_on_the_same_file_is_refused_while_the_first_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _ledger, _card) = fixture(dir.path());
        let file = dir.path().join("b.cardd-backup");
        let held = lock_beside(&file).expect("the first run's lock");
        let err = backup(&mut source(&store), &file, None).expect_err("ran beside");
        assert!(matches!(err, BackupError::Busy(_)), "{err}");
        assert!(!file.exists(), "nothing written");
        drop(held);
        backup(&mut source(&store), &file, None).expect("runs once the lock is gone");
    }

    /// An incremental export (`after_size`) reads the log from the frame
    /// holding the first new record (`LogStore::checkpoints_after`): each
    /// nightly run reads only the new part, and a damaged old frame whose
    /// records the backup already holds does not fail it (a review found
    /// both).
    #[test]
    fn an_incremental_export_does_not_read_the_frames_it_skips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, mut ledger, card) = fixture(dir.path());
        for txn in 2..6 {
            buy(&mut ledger, &card, txn);
        }
        let segment = dir
            .path()
            .join(format!("data/log/brand-{BRAND:05}/{:020}.seg", 1));
        let mut bytes = fs::read(&segment).expect("segment");
        // The first frame's last payload byte (its header says its length).
        let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4")) as usize;
        bytes[28 + len - 1] ^= 1;
        fs::write(&segment, &bytes).expect("write");
        let key = testing::server_key().verifying_key().to_bytes();
        let mut out = Vec::new();
        let part = crate::audit::write_export_after(&*store, BRAND, 8, &key, &mut out, |_, _| {});
        assert!(
            part.is_ok(),
            "records 9.. need no frame before them: {part:?}"
        );
    }

    #[test]
    fn restore_refuses_two_files_of_one_brand_and_then_restores_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _ledger, _card) = fixture(dir.path());
        let file = dir.path().join("b.cardd-backup");
        backup(&mut source(&store), &file, None).expect("backup");
        let target = dir.path().join("restored");
        let key = testing::server_key();
        let err = restore(&target, &key, &[]).expect_err("no files");
        assert!(matches!(err, RestoreError::NoBackups), "{err:?}");
        let err = restore(&target, &key, &[file.clone(), file.clone()]).expect_err("twice");
        assert!(
            matches!(err, RestoreError::DuplicateBrand { brand: BRAND, .. }),
            "{err:?}"
        );
        assert!(!target.exists());
        let done = restore(&target, &key, std::slice::from_ref(&file)).expect("restore");
        assert_eq!(done.brands, vec![(BRAND, 5, 5)]);
        let restored = DiskStore::open_existing(&target).expect("restored store");
        for seq in 1..=5 {
            assert_eq!(
                restored.record(BRAND, seq).expect("read"),
                store.record(BRAND, seq).expect("read"),
                "record {seq}"
            );
        }
    }
}
