//! Start-up: the data directory, the server key, the store and every
//! brand's recovery, with the typed error that stops a start.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use thiserror::Error;

use crate::crypto::KeyFileError;
use crate::ledger::{BrandLedger, LedgerError, Recovery};
use crate::storage::fsutil::{create_dir_all_durable, sync_dir};
use crate::storage::{DiskStore, LogStore, StorageError};

/// Why the daemon (or an offline command) could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The data directory could not be created or synced.
    #[error("creating {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The directory held a ledger (demo manifest, snapshots) but its log is
    /// gone.
    #[error(
        "{0}: this data directory held a ledger (demo.json or snapshots are here) but its \
         log is missing or empty; refusing to serve it empty: restore it from a backup"
    )]
    LedgerMissing(PathBuf),
    /// A read-only command named a directory that does not exist.
    #[error("{0}: no such data directory")]
    NoDataDir(PathBuf),
    /// The server key could not be read or made.
    #[error("{path}: the server key")]
    Key {
        /// The data directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: KeyFileError,
    },
    /// The store did not open (a corrupt log, a ledger that came back short).
    #[error("opening the ledger in {path}")]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: StorageError,
    },
    /// A brand did not recover.
    #[error("recovering the ledger")]
    Ledger(#[from] LedgerError),
    /// The demo brand could not be provisioned.
    #[error("provisioning the demo brand")]
    Demo(#[from] crate::demo::DemoError),
    /// The TLS certificate or key is unusable.
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
    /// The replicated log (`--replicate`) could not be reached, or this
    /// data directory could not be caught up with it.
    #[error("replication")]
    Replica(#[from] crate::replica::ReplicaError),
    /// The listening address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// The path of the server's signing key in a data directory.
pub fn server_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server.key")
}

/// Creates the data directory (0700) if needed and loads or creates the
/// server key; the directory's entry and the key's are fsynced, so a power
/// cut right after the first start cannot leave a ledger with no key.
pub fn open_data_dir(data_dir: &Path) -> Result<SigningKey, StartError> {
    let dir_err = |source| StartError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    };
    create_dir_all_durable(data_dir).map_err(dir_err)?;
    let path = server_key_path(data_dir);
    let existed = path.exists();
    let key = crate::crypto::load_or_create_key(&path).map_err(|source| StartError::Key {
        path: data_dir.to_path_buf(),
        source,
    })?;
    if !existed {
        sync_dir(data_dir).map_err(dir_err)?;
    }
    Ok(key)
}

/// For read-only commands: the data directory and its server key must
/// exist (a mistyped path is an error, not an empty ledger).
pub fn open_existing_data_dir(data_dir: &Path) -> Result<SigningKey, StartError> {
    if !data_dir.is_dir() {
        return Err(StartError::NoDataDir(data_dir.to_path_buf()));
    }
    crate::crypto::read_key_file(&server_key_path(data_dir)).map_err(|source| StartError::Key {
        path: data_dir.to_path_buf(),
        source,
    })
}

/// What [`load`] returns: storage, the server key and every brand's ledger.
pub type Loaded = (Arc<dyn LogStore>, Arc<SigningKey>, Vec<BrandLedger>);

/// Opens storage (creating the data directory on first start) and
/// recovers every brand from its snapshot and the records after it
/// (refusing a corrupt ledger or one that came back short).
pub fn load(data_dir: &Path) -> Result<Loaded, StartError> {
    load_sized(data_dir, crate::limits::LOG_SEGMENT_BYTES)
}

/// [`load`], the store sealing log segments at `segment_bytes`.
pub fn load_sized(data_dir: &Path, segment_bytes: u64) -> Result<Loaded, StartError> {
    let server_key = Arc::new(open_data_dir(data_dir)?);
    let snapshots = crate::snapshot::dir(data_dir);
    let store = open_store(data_dir, |d| DiskStore::open_sized(d, segment_bytes))?;
    recover_all(store, server_key, Recovery::FromSnapshot(&snapshots))
}

/// [`load_sized`] with every brand's log replicated through the NATS
/// cluster at `urls` (`--replicate`): brands found only on the cluster are
/// added, and each brand's local log is first caught up to the end of its
/// stream (every commit checked as the auditor checks it). The store
/// returned appends each commit to the stream before the local log, while
/// `clock` says this node's lease of the brand is good.
pub fn load_replicated(
    data_dir: &Path,
    segment_bytes: u64,
    urls: &str,
    clock: Arc<crate::replica::LeaseClock>,
) -> Result<(Loaded, Arc<crate::replica::ReplicatedStore>), StartError> {
    use crate::replica::{follow, Follower, Nats, ReplicatedStore};
    let server_key = Arc::new(open_data_dir(data_dir)?);
    let snapshots = crate::snapshot::dir(data_dir);
    let disk = open_store(data_dir, |d| DiskStore::open_sized(d, segment_bytes))?;
    let nats = Arc::new(Nats::connect(urls)?);
    let replicated = Arc::new(ReplicatedStore::new(disk.clone(), nats.clone()).with_leases(clock));
    let store: Arc<dyn LogStore> = replicated.clone();
    let mode = Recovery::FromSnapshot(&snapshots);
    let (_, _, mut ledgers) = recover_all(store.clone(), server_key.clone(), mode)?;
    for brand in crate::replica::patiently(|| nats.brands())? {
        if !ledgers.iter().any(|l| l.brand_id() == brand) {
            let key = server_key.clone();
            ledgers.push(BrandLedger::recover_with(store.clone(), key, brand, mode)?);
        }
    }
    let mut caught_up = Vec::with_capacity(ledgers.len());
    for ledger in ledgers {
        let mut follower = Follower::new(ledger);
        follow::catch_up(&nats, disk.as_ref(), &mut follower)?;
        caught_up.push(follower.ledger);
    }
    Ok(((store, server_key, caught_up), replicated))
}

/// Opens an existing data directory and replays every brand from its first
/// record, checking its snapshot against the replay on the way (`cardd
/// check`).
pub fn load_checked(data_dir: &Path) -> Result<Loaded, StartError> {
    let server_key = Arc::new(open_existing_data_dir(data_dir)?);
    let snapshots = crate::snapshot::dir(data_dir);
    let store = open_store(data_dir, DiskStore::open_existing)?;
    recover_all(store, server_key, Recovery::CheckSnapshot(&snapshots))
}

/// A directory that shows it held a ledger (a demo manifest, snapshots) but
/// opens with no brand lost its log and marks: never serve it empty (a
/// `--demo` start would even provision the brand anew over old keys).
fn refuse_emptied(data_dir: &Path, store: &DiskStore) -> Result<(), StartError> {
    let brands = store.brands().map_err(|source| StartError::Storage {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let snapshots = std::fs::read_dir(crate::snapshot::dir(data_dir))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if brands.is_empty() && (data_dir.join("demo.json").exists() || snapshots) {
        return Err(StartError::LedgerMissing(data_dir.to_path_buf()));
    }
    Ok(())
}

fn open_store(
    data_dir: &Path,
    open: impl FnOnce(&Path) -> crate::storage::Result<DiskStore>,
) -> Result<Arc<dyn LogStore>, StartError> {
    let opening = std::time::Instant::now();
    let store = open(data_dir).map_err(|source| StartError::Storage {
        path: data_dir.to_path_buf(),
        source,
    })?;
    refuse_emptied(data_dir, &store)?;
    tracing::info!(
        open_ms = opening.elapsed().as_millis() as u64,
        "storage opened"
    );
    Ok(Arc::new(store))
}

fn recover_all(
    store: Arc<dyn LogStore>,
    server_key: Arc<SigningKey>,
    mode: Recovery,
) -> Result<Loaded, StartError> {
    let mut ledgers = Vec::new();
    let brands = store
        .brands()
        .map_err(|source| LedgerError::Storage { brand: 0, source })?;
    for brand in brands {
        ledgers.push(BrandLedger::recover_with(
            store.clone(),
            server_key.clone(),
            brand,
            mode,
        )?);
    }
    Ok((store, server_key, ledgers))
}
