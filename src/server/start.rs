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
    /// A server key rotation was started and not finished: some brands may
    /// already be signed by the new key.
    #[error(
        "{0}: a server key rotation is unfinished (server.key.next is here): run `cardd rotate-server-key --data DIR` again to finish it"
    )]
    RotationUnfinished(PathBuf),
    /// The state machine refused a brand's rotation record.
    #[error("brand {brand}: the server key rotation was refused: {refusal}")]
    RotationRefused {
        /// The brand.
        brand: u32,
        /// Why.
        refusal: crate::error::Refusal,
    },
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
    /// The directory was served with `--replicate` (its `replicated`
    /// file): serving or rotating it as a single node would fork its
    /// brands' history from the stream the other nodes follow.
    #[error(
        "{0}: this data directory is replicated (its `replicated` file says so): start it with \
         --replicate (NATS URLs) as before. To take it out of replication for good, stop every \
         node of the cluster first, then remove that file on the one node that goes on alone \
         (docs/replication.md)"
    )]
    Replicated(PathBuf),
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

/// Where a server key rotation keeps the new key until every brand's chain
/// endorses it (`rotate_server_key`).
pub fn next_server_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server.key.next")
}

/// The file that marks a data directory as replicated.
pub fn replicated_marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join("replicated")
}

/// What the marker says to someone who opens it.
const REPLICATED_MARKER_TEXT: &str =
    "This data directory is served with `cardd serve --replicate`.\n\
     cardd refuses to serve it (or rotate its server key) without replication:\n\
     a single-node start would write a history the other nodes never see.\n\
     See docs/replication.md before removing this file.\n";

/// Marks `data_dir` as replicated, durably, before its first replicated
/// commit: from then on a start without `--replicate` is refused.
fn mark_replicated(data_dir: &Path) -> Result<(), StartError> {
    let path = replicated_marker_path(data_dir);
    if path.exists() {
        return Ok(());
    }
    crate::storage::fsutil::replace_durably(&path, REPLICATED_MARKER_TEXT.as_bytes(), false)
        .map_err(|source| StartError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })
}

/// A replicated directory is never served or rotated as a single node.
/// (Offline brand creation still works on it: the next `--replicate`
/// start puts the new brand on its stream.)
pub(super) fn refuse_replicated(data_dir: &Path) -> Result<(), StartError> {
    if replicated_marker_path(data_dir).exists() {
        return Err(StartError::Replicated(data_dir.to_path_buf()));
    }
    Ok(())
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
    refuse_unfinished_rotation(data_dir)?;
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
    refuse_unfinished_rotation(data_dir)?;
    crate::crypto::read_key_file(&server_key_path(data_dir)).map_err(|source| StartError::Key {
        path: data_dir.to_path_buf(),
        source,
    })
}

/// A half-done rotation must be finished before anything serves or reads
/// the directory as if it had one server key.
fn refuse_unfinished_rotation(data_dir: &Path) -> Result<(), StartError> {
    if next_server_key_path(data_dir).exists() {
        return Err(StartError::RotationUnfinished(data_dir.to_path_buf()));
    }
    Ok(())
}

/// What a server key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new server public key.
    pub new_key: [u8; 32],
    /// Brands whose chain now endorses it (a SERVER_KEY_ROTATED record).
    pub rotated: Vec<u32>,
    /// Brands that already did (a rotation interrupted and run again).
    pub already: Vec<u32>,
}

/// Rotates the server key of a stopped daemon's data directory: every
/// brand must recover first (nothing is written otherwise); then a new key
/// is made and kept durably in `server.key.next`, every brand's chain gets
/// a SERVER_KEY_ROTATED record signed by the old key (its checkpoint and
/// snapshot by the new one), and the new key replaces `server.key`.
/// Interrupted anywhere, it is run again: brands already rotated are
/// recognised, and nothing starts on the directory until it is finished.
pub fn rotate_server_key(data_dir: &Path) -> Result<Rotated, StartError> {
    if !data_dir.is_dir() {
        return Err(StartError::NoDataDir(data_dir.to_path_buf()));
    }
    refuse_replicated(data_dir)?;
    let key_err = |source| StartError::Key {
        path: data_dir.to_path_buf(),
        source,
    };
    let dir_err = |source| StartError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    };
    let old = Arc::new(crate::crypto::read_key_file(&server_key_path(data_dir)).map_err(key_err)?);
    // The directory's lock before anything is made: with a daemon running
    // this fails and leaves the directory as it was.
    let store = open_store(data_dir, DiskStore::open_existing)?;
    let next_path = next_server_key_path(data_dir);
    let pending = match next_path.exists() {
        true => Some(Arc::new(
            crate::crypto::read_key_file(&next_path).map_err(key_err)?,
        )),
        false => None,
    };
    let ledgers = recover_for_rotation(&store, &old, pending.as_ref())?;
    let new = match pending {
        Some(key) => key,
        None => {
            let key = crate::crypto::load_or_create_key(&next_path).map_err(key_err)?;
            sync_dir(data_dir).map_err(dir_err)?;
            Arc::new(key)
        }
    };
    let mut done = Rotated {
        new_key: new.verifying_key().to_bytes(),
        rotated: Vec::new(),
        already: Vec::new(),
    };
    let snapshots = crate::snapshot::dir(data_dir);
    for (brand, ledger) in ledgers {
        match ledger {
            Some(ledger) => {
                rotate_brand(ledger, &new, &snapshots)?;
                done.rotated.push(brand);
            }
            None => done.already.push(brand),
        }
    }
    std::fs::rename(&next_path, server_key_path(data_dir)).map_err(dir_err)?;
    sync_dir(data_dir).map_err(dir_err)?;
    Ok(done)
}

/// Every brand recovered under the old key, or `None` for one an earlier,
/// interrupted run already rotated to `pending` (it must recover under it).
fn recover_for_rotation(
    store: &Arc<dyn LogStore>,
    old: &Arc<SigningKey>,
    pending: Option<&Arc<SigningKey>>,
) -> Result<Vec<(u32, Option<BrandLedger>)>, StartError> {
    let brands = store
        .brands()
        .map_err(|source| LedgerError::Storage { brand: 0, source })?;
    let mut ledgers = Vec::with_capacity(brands.len());
    for brand in brands {
        let ledger = match (
            BrandLedger::recover(store.clone(), old.clone(), brand),
            pending,
        ) {
            (Ok(ledger), _) => Some(ledger),
            (Err(LedgerError::ServerKey { .. }), Some(new)) => {
                BrandLedger::recover(store.clone(), new.clone(), brand)?;
                None
            }
            (Err(e), _) => return Err(e.into()),
        };
        ledgers.push((brand, ledger));
    }
    Ok(ledgers)
}

/// One brand's rotation record, then a snapshot under the new key, so that
/// the next start need not replay (the old key's snapshot no longer
/// verifies; a failed snapshot only makes that start longer).
fn rotate_brand(
    mut ledger: BrandLedger,
    new: &Arc<SigningKey>,
    snapshots: &Path,
) -> Result<(), StartError> {
    let brand = ledger.brand_id();
    ledger
        .rotate_server_key(new.clone())?
        .map_err(|refusal| StartError::RotationRefused { brand, refusal })?;
    ledger.snapshot_into(snapshots, crate::limits::SNAPSHOT_EVERY_RECORDS);
    if let Err(e) = ledger.write_snapshot() {
        let error = crate::error::causes(&e);
        tracing::warn!(brand, error, "snapshot after the rotation failed");
    }
    Ok(())
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

/// A brand refused at start-up because its log on disk is damaged
/// (`DiskStore::open_sparing`): not served, nothing of it changed.
pub struct Refused {
    /// The brand.
    pub brand: u32,
    /// Its state as far as its log reads (None: it does not), used only for
    /// its keys: its tills are then told why they are refused.
    pub known: Option<crate::state::BrandState>,
}

/// [`load_sized`] for `cardd serve`: a brand whose log does not open whole
/// (damaged, or shorter than its high-water mark) is refused alone, with an
/// ERROR line naming it and the damage, and returned apart; the others are
/// recovered. Problems of the whole directory still fail the start, and so
/// does a directory whose every brand is damaged (nothing would be served).
pub fn load_sparing(
    data_dir: &Path,
    segment_bytes: u64,
) -> Result<(Loaded, Vec<Refused>), StartError> {
    let server_key = Arc::new(open_data_dir(data_dir)?);
    let snapshots = crate::snapshot::dir(data_dir);
    let disk = open_disk(data_dir, |d| DiskStore::open_sparing(d, segment_bytes))?;
    let no_brand_whole = disk.brands().is_ok_and(|b| b.is_empty());
    if no_brand_whole && disk.damaged().next().is_some() {
        let source = disk.into_first_damage().expect("a damaged brand");
        let path = data_dir.to_path_buf();
        return Err(StartError::Storage { path, source });
    }
    let mut refused = refused_brands(&disk, &server_key, &snapshots);
    let store: Arc<dyn LogStore> = Arc::new(disk);
    let (loaded, failed) = recover_sparing(store, server_key, &snapshots)?;
    refused.extend(failed);
    Ok((loaded, refused))
}

/// [`recover_all`] for `cardd serve`: a brand whose records do not replay
/// (damage the open could not see: a sealed segment's payload changed
/// under a frame table that checks, a record rewritten with its checksum;
/// [`LedgerError::is_damage`]) is refused alone, logged, as one found
/// damaged at the open is; its keys are not known. Fails, with the first
/// brand's error, if no brand recovers, and at once on a failure that may
/// pass (I/O).
fn recover_sparing(
    store: Arc<dyn LogStore>,
    server_key: Arc<SigningKey>,
    snapshots: &Path,
) -> Result<(Loaded, Vec<Refused>), StartError> {
    let brands = store
        .brands()
        .map_err(|source| LedgerError::Storage { brand: 0, source })?;
    let (mut ledgers, mut failed) = (Vec::new(), Vec::new());
    let mode = Recovery::FromSnapshot(snapshots);
    for brand in brands {
        match BrandLedger::recover_with(store.clone(), server_key.clone(), brand, mode) {
            Ok(ledger) => ledgers.push(ledger),
            // A failure that may pass (I/O) fails the start, to be tried
            // again, rather than refuse the brand until the next one.
            Err(e) if !e.is_damage() => return Err(e.into()),
            Err(e) => {
                tracing::error!(
                    brand,
                    error = crate::error::causes(&e),
                    "brand refused: its records on disk do not replay; it is not served and \
                     nothing of it is changed (the other brands are served). Restore it from a \
                     backup (docs/operations.md)"
                );
                failed.push((brand, e));
            }
        }
    }
    if ledgers.is_empty() {
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(e.into());
        }
        return Ok(((store, server_key, ledgers), Vec::new()));
    }
    let refused = failed
        .into_iter()
        .map(|(brand, _)| Refused { brand, known: None });
    Ok(((store, server_key, ledgers), refused.collect()))
}

/// Every brand `disk` set aside, each logged (ERROR) with its damage, and
/// what its readable records (if any) replay to, read-only.
fn refused_brands(disk: &DiskStore, key: &Arc<SigningKey>, snapshots: &Path) -> Vec<Refused> {
    let mut refused = Vec::new();
    for (brand, damage) in disk.damaged() {
        let error = crate::error::causes(damage);
        let known = disk.damaged_log(brand).and_then(|log| {
            let mode = Recovery::ReadOnly(snapshots);
            match BrandLedger::recover_with(Arc::new(log), key.clone(), brand, mode) {
                Ok(ledger) => Some(ledger.state),
                Err(e) => {
                    let error = crate::error::causes(&e);
                    tracing::warn!(
                        brand,
                        error,
                        "the refused brand's readable records do not recover"
                    );
                    None
                }
            }
        });
        // After that replay's own lines, so that this is the last word.
        tracing::error!(
            brand,
            error,
            tills_known = known.is_some(),
            "brand refused: its ledger on disk is damaged; it is not served and nothing of it is \
             changed (the other brands are served). Restore it from a backup (docs/operations.md)"
        );
        refused.push(Refused { brand, known });
    }
    refused
}

/// What [`load_replicated`] returns: storage, the server key and the
/// ledgers caught up with their streams; the replicated store; and the
/// brands refused (their stream and local log are not one chain, or the
/// stream could not be read: logged), each with its ledger as recovered,
/// so that its tills are known and told NOT_ACTIVE.
pub type LoadedReplicated = (
    Loaded,
    Arc<crate::replica::ReplicatedStore>,
    Vec<BrandLedger>,
);

/// [`load_sized`] with every brand's log replicated through the NATS
/// cluster at `urls` (`--replicate`): brands found only on the cluster are
/// added, and each brand's local log is first caught up to the end of its
/// stream (every commit checked as the auditor checks it). The store
/// returned appends each commit to the stream before the local log, while
/// `clock` says this node's lease of the brand is good. One brand whose
/// stream cannot be followed (diverged, a message missing, NATS gave up)
/// is refused alone (an error log line naming it); the others start.
pub fn load_replicated(
    data_dir: &Path,
    segment_bytes: u64,
    urls: &str,
    clock: Arc<crate::replica::LeaseClock>,
) -> Result<LoadedReplicated, StartError> {
    use crate::replica::{Nats, ReplicatedStore};
    let server_key = Arc::new(open_data_dir(data_dir)?);
    let snapshots = crate::snapshot::dir(data_dir);
    let disk = open_store(data_dir, |d| DiskStore::open_sized(d, segment_bytes))?;
    let nats = Arc::new(Nats::connect(urls)?);
    // Under the directory's lock, once the cluster answered (a mistyped
    // URL marks nothing), before anything reaches the stream.
    mark_replicated(data_dir)?;
    let replicated = Arc::new(ReplicatedStore::new(disk.clone(), nats.clone()).with_leases(clock));
    let store: Arc<dyn LogStore> = replicated.clone();
    let mode = Recovery::FromSnapshot(&snapshots);
    let (_, _, mut ledgers) = recover_all(store.clone(), server_key.clone(), mode)?;
    for brand in crate::replica::patiently(|| nats.brands())? {
        if ledgers.iter().any(|l| l.brand_id() == brand) {
            continue;
        }
        let key = server_key.clone();
        match BrandLedger::recover_with(store.clone(), key, brand, mode) {
            Ok(ledger) => ledgers.push(ledger),
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::error!(brand, error, "brand refused: its ledger did not recover");
            }
        }
    }
    let (caught_up, refused) = catch_up_all(&nats, disk.as_ref(), ledgers);
    Ok(((store, server_key, caught_up), replicated, refused))
}

/// Catches every ledger up with its stream: (those caught up, those
/// refused, each refusal logged with its brand and why).
fn catch_up_all(
    nats: &crate::replica::Nats,
    disk: &dyn LogStore,
    ledgers: Vec<BrandLedger>,
) -> (Vec<BrandLedger>, Vec<BrandLedger>) {
    use crate::replica::{follow, Follower};
    let (mut caught_up, mut refused) = (Vec::with_capacity(ledgers.len()), Vec::new());
    for ledger in ledgers {
        let brand = ledger.brand_id();
        let mut follower = Follower::new(ledger);
        match follow::catch_up(nats, disk, &mut follower) {
            Ok(_) => caught_up.push(follower.ledger),
            Err(e) => {
                let error = crate::error::causes(&e);
                tracing::error!(
                    brand,
                    error,
                    "brand refused: its replicated log could not be caught up with; not served \
                     here, following it tried again later (the other brands go on)"
                );
                refused.push(follower.ledger);
            }
        }
    }
    (caught_up, refused)
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
    if store.damaged().next().is_some() {
        // Not emptied: damaged (`load_sparing` says so by name).
        return Ok(());
    }
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
    Ok(Arc::new(open_disk(data_dir, open)?))
}

fn open_disk(
    data_dir: &Path,
    open: impl FnOnce(&Path) -> crate::storage::Result<DiskStore>,
) -> Result<DiskStore, StartError> {
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
    Ok(store)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::write_key_file;
    use crate::limits::LOG_SEGMENT_BYTES;
    use crate::testing;

    /// Two brands on a data directory whose server key is the fixture's.
    fn two_brands(data: &Path) -> Arc<SigningKey> {
        let old = testing::server_key();
        std::fs::create_dir_all(data).unwrap();
        write_key_file(&server_key_path(data), &old).unwrap();
        let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(data).unwrap());
        for (brand, owner) in [(1, 2), (2, 20)] {
            let owner = testing::key(owner).verifying_key().to_bytes();
            let create = testing::create_brand("Two", &owner);
            BrandLedger::create(store.clone(), old.clone(), brand, create).unwrap();
        }
        old
    }

    /// Cuts the last bytes off `brand`'s only segment: its log now ends
    /// before its high-water mark.
    fn cut_below_mark(data: &Path, brand: u32) -> Vec<u8> {
        let dir = data.join(format!("log/brand-{brand:05}"));
        let segment = dir.join(format!("{:020}.seg", 1));
        let bytes = std::fs::read(&segment).unwrap();
        std::fs::write(&segment, &bytes[..bytes.len() - 5]).unwrap();
        bytes[..bytes.len() - 5].to_vec()
    }

    #[test]
    fn a_damaged_brand_is_refused_alone_unless_no_brand_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        two_brands(&data);
        let cut = cut_below_mark(&data, 2);
        let ((_, _, ledgers), refused) = load_sparing(&data, LOG_SEGMENT_BYTES).unwrap();
        let served: Vec<u32> = ledgers.iter().map(|l| l.brand_id()).collect();
        assert_eq!(served, vec![1]);
        let refused: Vec<u32> = refused.iter().map(|r| r.brand).collect();
        assert_eq!(refused, vec![2]);
        drop(ledgers);
        let segment = data.join("log/brand-00002").join(format!("{:020}.seg", 1));
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            cut,
            "the damaged log changed"
        );
        // With no whole brand left there is nothing to serve: the start
        // fails with the damage, naming the brand.
        cut_below_mark(&data, 1);
        let err = load_sparing(&data, LOG_SEGMENT_BYTES)
            .err()
            .expect("started");
        assert!(matches!(err, StartError::Storage { .. }), "{err}");
        let text = crate::error::causes(&err);
        assert!(
            text.contains("brand 1") && text.contains("high-water mark"),
            "{text}"
        );
    }

    /// A record rewritten with its checksum made anew (below the newest,
    /// so the open's checks pass) is found only by the replay: that brand
    /// is refused alone too, its log left as found, and the other served.
    #[test]
    fn a_brand_whose_records_do_not_replay_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        write_key_file(&server_key_path(&data), &testing::server_key()).unwrap();
        {
            let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(&data).unwrap());
            testing::provision(store.clone(), "Damaged", 10_000);
            let owner = testing::key(20).verifying_key().to_bytes();
            let create = testing::create_brand("Whole", &owner);
            BrandLedger::create(store, testing::server_key(), 2, create).unwrap();
        }
        let mut commits = crate::storage::rewrite::read_commits(&data, testing::BRAND).unwrap();
        assert!(commits.len() > 1, "the newest commit is left alone");
        *commits[0][0].records[0].last_mut().unwrap() ^= 1;
        crate::storage::rewrite::write_commits(&data, testing::BRAND, &commits).unwrap();
        let segment = data.join(format!("log/brand-{:05}/{:020}.seg", testing::BRAND, 1));
        let tampered = std::fs::read(&segment).unwrap();

        let ((_, _, ledgers), refused) = load_sparing(&data, LOG_SEGMENT_BYTES).unwrap();
        let served: Vec<u32> = ledgers.iter().map(|l| l.brand_id()).collect();
        assert_eq!(served, vec![2]);
        let refused: Vec<(u32, bool)> = refused
            .iter()
            .map(|r| (r.brand, r.known.is_some()))
            .collect();
        assert_eq!(refused, vec![(testing::BRAND, false)]);
        drop(ledgers);
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            tampered,
            "the log changed"
        );
    }

    #[test]
    fn a_replicated_directory_is_neither_served_nor_rotated_as_a_single_node() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        two_brands(&data);
        assert_eq!(load(&data).unwrap().2.len(), 2, "unmarked: served");
        assert!(refuse_replicated(&data).is_ok());
        mark_replicated(&data).unwrap();
        let text = std::fs::read_to_string(replicated_marker_path(&data)).unwrap();
        assert!(text.contains("--replicate"), "{text}");
        // `cardd serve` without --replicate asks this first (start_brands).
        assert!(matches!(
            refuse_replicated(&data),
            Err(StartError::Replicated(_))
        ));
        assert!(matches!(
            rotate_server_key(&data),
            Err(StartError::Replicated(_))
        ));
        assert!(
            !next_server_key_path(&data).exists(),
            "a refused rotation makes no key"
        );
        // Read-only commands (check, export) still read it, and offline
        // brand creation (`cardd brand create`) still opens it.
        assert_eq!(load_checked(&data).unwrap().2.len(), 2);
        assert_eq!(load(&data).unwrap().2.len(), 2);
    }

    #[test]
    fn an_interrupted_rotation_is_finished_by_running_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let old = two_brands(&data);
        // The run that stopped after brand 1: the new key was kept, brand 1
        // endorsed it, brand 2 not yet, server.key still the old one.
        let new = Arc::new(testing::key(55));
        write_key_file(&next_server_key_path(&data), &new).unwrap();
        {
            let store: Arc<dyn LogStore> = Arc::new(DiskStore::open(&data).unwrap());
            let mut ledger = BrandLedger::recover(store, old.clone(), 1).unwrap();
            ledger.rotate_server_key(new.clone()).unwrap().unwrap();
        }
        assert!(matches!(
            load_checked(&data),
            Err(StartError::RotationUnfinished(_))
        ));
        let done = rotate_server_key(&data).unwrap();
        assert_eq!(done.new_key, new.verifying_key().to_bytes());
        assert_eq!((done.already, done.rotated), (vec![1], vec![2]));
        let (_, key, ledgers) = load_checked(&data).unwrap();
        assert_eq!(key.verifying_key(), new.verifying_key());
        assert!(ledgers.iter().all(|l| l.state.server_key == done.new_key));
        // The old key's last record and the new key's checkpoints: each
        // brand's chain starts with the old key and ends with the new one.
        assert!(ledgers
            .iter()
            .all(|l| l.state.retired_keys == vec![old.verifying_key().to_bytes()]));
    }

    #[test]
    fn a_rotation_on_a_directory_in_use_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        two_brands(&data);
        let held = DiskStore::open(&data).unwrap();
        assert!(rotate_server_key(&data).is_err());
        assert!(!next_server_key_path(&data).exists());
        drop(held);
        let done = rotate_server_key(&data).unwrap();
        assert_eq!((done.already, done.rotated), (vec![], vec![1, 2]));
    }
}
