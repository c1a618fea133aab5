//! `cardd restore`: a new data directory rebuilt from backups.
//!
//! Every backup is verified whole before anything is written. The records
//! are then written, byte for byte, through the storage seam
//! ([`LogStore::commit`]) in the batches their checkpoints close, with the
//! Merkle nodes they complete and the original signed checkpoints, so the
//! restored chain is the same chain and new records extend it. The
//! directory is built under `NEW_DIR.restoring`, replayed whole as `cardd
//! check` does, and only then renamed to `NEW_DIR`: a restore that fails
//! leaves no half-built directory where the daemon would start.
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use prost::Message;

use crate::audit::{ExportFileError, ExportReader, VerifyError};
use crate::crypto::{leaf_hash, KeyFileError};
use crate::merkle::Frontier;
use crate::pb::{self, export_item::Item};
use crate::server::{server_key_path, StartError};
use crate::storage::fsutil::{create_dir_all_durable, sync_dir};
use crate::storage::{DiskStore, LogStore, StorageError};

/// Why a restore was refused or failed. Nothing is left at `NEW_DIR`.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target exists and is not an empty directory.
    #[error("{0}: not an empty directory; restore only into a new or empty one")]
    NotEmpty(PathBuf),
    /// A directory from an earlier restore is in the way.
    #[error("{0}: left by an interrupted restore; remove it and run again")]
    StagingExists(PathBuf),
    /// No backup was given.
    #[error("no backup files given")]
    NoBackups,
    /// A backup is not an export file.
    #[error("{path}: not a readable cardd backup")]
    Unreadable {
        /// The backup.
        path: PathBuf,
        /// Why.
        #[source]
        source: ExportFileError,
    },
    /// A backup's chain leads to another server key than the one given
    /// (the key its newest checkpoints were signed with, after the
    /// chain's rotations).
    #[error("{path}: its chain is signed by server key {found} (after its rotations), not by the key in the server key file ({given})")]
    WrongServerKey {
        /// The backup.
        path: PathBuf,
        /// Its server key, hex.
        found: String,
        /// The given key's public half, hex.
        given: String,
    },
    /// A backup does not verify.
    #[error("{path}: the backup does not verify; nothing was restored")]
    Invalid {
        /// The backup.
        path: PathBuf,
        /// The first failure.
        #[source]
        source: VerifyError,
    },
    /// Two backups of one brand.
    #[error("{second}: brand {brand} is also in {first}; give one backup per brand")]
    DuplicateBrand {
        /// The brand.
        brand: u32,
        /// The first backup.
        first: PathBuf,
        /// The second.
        second: PathBuf,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The server key could not be written.
    #[error("writing the server key")]
    Key(#[source] KeyFileError),
    /// Writing the ledger failed.
    #[error("writing the restored ledger")]
    Storage(#[from] StorageError),
    /// The restored directory did not pass the full replay check.
    #[error("the restored directory does not replay")]
    Check(#[source] Box<StartError>),
}

/// What was restored: per brand, its records and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// (brand, records, checkpoints), in the order of the backups.
    pub brands: Vec<(u32, u64, u64)>,
}

/// Restores `backups` into the new data directory `data` with the server
/// key `server_key` (the key that signed the backups' checkpoints).
pub fn restore(
    data: &Path,
    server_key: &SigningKey,
    backups: &[PathBuf],
) -> Result<Restored, RestoreError> {
    if backups.is_empty() {
        return Err(RestoreError::NoBackups);
    }
    let data = &resolve_link(data, 0)?;
    check_target(data)?;
    let brands = check_backups(server_key, backups)?;
    let staging = staging_dir(data);
    if staging.exists() {
        return Err(RestoreError::StagingExists(staging));
    }
    let built = build(&staging, server_key, backups, &brands);
    if let Err(e) = built {
        // Ours alone (it did not exist): nothing else can be lost here.
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(source) = fs::rename(&staging, data) {
        // An empty mount point cannot be renamed over (EBUSY, EXDEV): say
        // so, and leave nothing behind that would stop the next run.
        let _ = fs::remove_dir_all(&staging);
        return Err(RestoreError::Io {
            what: format!(
                "renaming {} to {} (a mount point cannot be renamed over: restore into a new \
                 directory inside it)",
                staging.display(),
                data.display()
            ),
            source,
        });
    }
    let parent = parent_of(data);
    sync_dir(parent).map_err(|source| RestoreError::Io {
        what: format!("syncing {}", parent.display()),
        source,
    })?;
    Ok(Restored { brands })
}

/// The directory a symbolic link `data` points to (`/var/lib/cardd` a
/// link to a data disk): the restore is staged beside it and renamed onto
/// it, not onto the link, which would move the ledger off the disk the
/// link names. Any other path as given.
fn resolve_link(data: &Path, depth: u32) -> Result<PathBuf, RestoreError> {
    // As the kernel's own bound on a path's links (ELOOP past 40).
    const MOST_LINKS: u32 = 40;
    let is_link = fs::symlink_metadata(data).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(data.to_path_buf());
    }
    if depth >= MOST_LINKS {
        return Err(RestoreError::Io {
            what: format!("following the links of {}", data.display()),
            source: std::io::Error::other("too many levels of symbolic links"),
        });
    }
    let target = fs::read_link(data).map_err(|source| RestoreError::Io {
        what: format!("reading the link {}", data.display()),
        source,
    })?;
    // A relative target is relative to the link's directory; it may be a
    // link again.
    resolve_link(&parent_of(data).join(target), depth + 1)
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `NEW_DIR.restoring`, beside it.
fn staging_dir(data: &Path) -> PathBuf {
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    data.with_file_name(name)
}

/// The target may be absent or an empty directory (a mount point).
fn check_target(data: &Path) -> Result<(), RestoreError> {
    if !data.exists() {
        return Ok(());
    }
    let empty = data.is_dir()
        && fs::read_dir(data)
            .map_err(|source| RestoreError::Io {
                what: format!("reading {}", data.display()),
                source,
            })?
            .next()
            .is_none();
    if empty {
        Ok(())
    } else {
        Err(RestoreError::NotEmpty(data.to_path_buf()))
    }
}

/// Verifies every backup from the first server key its header names,
/// through the rotations its chain holds; the key it leads to must be the
/// given one, which signs what the restored daemon writes next. Returns
/// (brand, records, checkpoints) of each. Nothing is written.
fn check_backups(
    server_key: &SigningKey,
    backups: &[PathBuf],
) -> Result<Vec<(u32, u64, u64)>, RestoreError> {
    let public = server_key.verifying_key().to_bytes();
    let mut brands: Vec<(u32, u64, u64)> = Vec::new();
    for (i, path) in backups.iter().enumerate() {
        let header = super::read_header(path).map_err(|source| RestoreError::Unreadable {
            path: path.clone(),
            source,
        })?;
        let wrong_key = |found: &[u8]| RestoreError::WrongServerKey {
            path: path.clone(),
            found: hex::encode(found),
            given: hex::encode(public),
        };
        let anchor =
            super::anchor_of(&header).ok_or_else(|| wrong_key(&header.server_public_key))?;
        let report =
            super::verify_file(path, anchor, None).map_err(|source| RestoreError::Invalid {
                path: path.clone(),
                source,
            })?;
        if report.server_key_now != public {
            return Err(wrong_key(&report.server_key_now));
        }
        if let Some(j) = brands.iter().position(|b| b.0 == report.brand_id) {
            return Err(RestoreError::DuplicateBrand {
                brand: report.brand_id,
                first: backups[j].clone(),
                second: backups[i].clone(),
            });
        }
        brands.push((report.brand_id, report.records, report.checkpoints));
    }
    Ok(brands)
}

/// Builds the data directory in `staging` and replays it whole.
fn build(
    staging: &Path,
    server_key: &SigningKey,
    backups: &[PathBuf],
    brands: &[(u32, u64, u64)],
) -> Result<(), RestoreError> {
    create_dir_all_durable(staging).map_err(|source| RestoreError::Io {
        what: format!("creating {}", staging.display()),
        source,
    })?;
    crate::crypto::write_key_file(&server_key_path(staging), server_key)
        .map_err(RestoreError::Key)?;
    {
        let store = DiskStore::open_bulk(staging)?;
        for (path, (brand, _, _)) in backups.iter().zip(brands) {
            write_chain(&store, *brand, path)?;
        }
        store.finish_bulk()?;
    }
    // The same full replay as `cardd check`: the daemon will start on it.
    crate::server::start::load_checked(staging).map_err(|e| RestoreError::Check(Box::new(e)))?;
    Ok(())
}

/// Writes one backup's records through `store`, one commit per
/// checkpoint, exactly as the daemon committed them.
fn write_chain(store: &DiskStore, brand: u32, path: &Path) -> Result<(), RestoreError> {
    let unreadable = |source| RestoreError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(|source| RestoreError::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    let mut reader = ExportReader::new(BufReader::with_capacity(1 << 20, f)).map_err(unreadable)?;
    let mut frontier = Frontier::new();
    let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut nodes: Vec<(u8, u64, [u8; 32])> = Vec::new();
    while let Some(item) = reader.next_item().map_err(unreadable)? {
        match item {
            Item::Record(bytes) => {
                frontier.push_with(leaf_hash(&bytes), |l, i, h| nodes.push((l, i, h)));
                records.push((frontier.size(), bytes));
            }
            // A repeated checkpoint (same tree size) has nothing to commit.
            Item::Checkpoint(_) if records.is_empty() => {}
            Item::Checkpoint(c) => {
                commit_batch(store, brand, path, &frontier, &records, &nodes, &c)?;
                records.clear();
                nodes.clear();
            }
            Item::Header(_) | Item::Trailer(_) => {}
        }
    }
    Ok(())
}

/// One commit: the records since the last checkpoint, their nodes and `c`.
fn commit_batch(
    store: &DiskStore,
    brand: u32,
    path: &Path,
    frontier: &Frontier,
    records: &[(u64, Vec<u8>)],
    nodes: &[(u8, u64, [u8; 32])],
    c: &pb::Checkpoint,
) -> Result<(), RestoreError> {
    // Verified already; checked again because these bytes are what the
    // new store will hold.
    if c.tree_size != frontier.size() || c.root_hash != frontier.root() {
        return Err(RestoreError::Invalid {
            path: path.to_path_buf(),
            source: VerifyError {
                seq: Some(frontier.size()),
                what: "a checkpoint does not match the records before it".into(),
            },
        });
    }
    let refs: Vec<(u64, &[u8])> = records.iter().map(|(s, b)| (*s, b.as_slice())).collect();
    store.commit(brand, &refs, nodes, (c.tree_size, &c.encode_to_vec()))?;
    Ok(())
}
