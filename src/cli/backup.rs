//! `cardd backup` and `cardd restore`: the library's `backup` module does
//! the work; this file connects, prints and picks the exit code.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tokio::runtime::Runtime;

use cardd::backup::{BackupOutcome, LocalSource, Source, SourceError};
use cardd::client::{Client, ClientStream, TlsClient};
use cardd::crypto::read_key_file;
use cardd::pb;
use cardd::storage::LogStore;

use super::audit::parse_server_key;
use super::current_thread_runtime;

/// A brand on a running daemon, reached with its owner key.
struct Online {
    runtime: Runtime,
    client: Client<ClientStream>,
}

impl Source for Online {
    fn brand(&self) -> u32 {
        self.client.session.brand_id
    }

    fn server_key(&self) -> [u8; 32] {
        self.client.server_key
    }

    fn export_after(&mut self, after: u64, mut out: &mut dyn Write) -> Result<(), SourceError> {
        let Online { runtime, client } = self;
        runtime.block_on(client.export_after(after, &mut out))?;
        Ok(())
    }

    fn consistency(
        &mut self,
        old_size: u64,
        new_size: u64,
    ) -> Result<pb::ConsistencyProof, SourceError> {
        let Online { runtime, client } = self;
        Ok(runtime.block_on(client.consistency_proof(old_size, new_size))?)
    }
}

fn report(o: &BackupOutcome, out: &Path) {
    if o.records_after == o.records_before {
        eprintln!(
            "brand {}: {} is up to date ({} records, {} checkpoints); the daemon's chain extends it",
            o.brand,
            out.display(),
            o.records_after,
            o.checkpoints
        );
    } else {
        eprintln!(
            "brand {}: {} now holds {} records and {} checkpoints ({} new), verified",
            o.brand,
            out.display(),
            o.records_after,
            o.checkpoints,
            o.records_after - o.records_before
        );
    }
}

/// `cardd backup --connect ADDR --key OWNER_KEY --out FILE`.
pub fn backup_online(
    addr: &str,
    owner_key: &Path,
    out: &Path,
    tls: Option<&TlsClient>,
    server_key: Option<&str>,
) -> anyhow::Result<()> {
    let pinned = server_key.map(parse_server_key).transpose()?;
    let key = read_key_file(owner_key)?;
    let runtime = current_thread_runtime()?;
    let client = runtime
        .block_on(Client::connect_with(addr, key, tls))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut source = Online { runtime, client };
    let outcome = cardd::backup::backup(&mut source, out, pinned)
        .with_context(|| format!("backing up to {}", out.display()))?;
    report(&outcome, out);
    Ok(())
}

/// `cardd backup --data DIR --out-dir OUT`: every brand of a stopped
/// daemon's data directory (or a file-system snapshot of a running one's),
/// with its server key, into `OUT/brand-ID.cardd-backup`.
pub fn backup_offline(data: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let server_key = cardd::server::open_existing_data_dir(data)?;
    let store = cardd::storage::DiskStore::open_existing(data)
        .context("opening the ledger (is the daemon running? back up a stopped daemon or a snapshot of its directory)")?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let brands = store.brands()?;
    if brands.is_empty() {
        bail!("{}: no brand to back up", data.display());
    }
    for brand in brands {
        let out = brand_file(out_dir, brand);
        let mut source = LocalSource {
            store: &store,
            brand,
            server_key: server_key.verifying_key().to_bytes(),
        };
        let outcome = cardd::backup::backup(&mut source, &out, None)
            .with_context(|| format!("backing up brand {brand} to {}", out.display()))?;
        report(&outcome, &out);
    }
    Ok(())
}

/// The file of one brand in `--out-dir`.
pub fn brand_file(out_dir: &Path, brand: u32) -> PathBuf {
    out_dir.join(format!("brand-{brand}.cardd-backup"))
}

/// `cardd restore --data NEW_DIR --server-key-file FILE BACKUP...`.
pub fn restore(data: &Path, server_key_file: &Path, backups: &[PathBuf]) -> anyhow::Result<()> {
    let key = read_key_file(server_key_file)?;
    let restored = cardd::backup::restore(data, &key, backups)
        .with_context(|| format!("restoring into {}", data.display()))?;
    for (brand, records, checkpoints) in &restored.brands {
        eprintln!("brand {brand}: {records} records and {checkpoints} checkpoints restored");
    }
    eprintln!(
        "{} is ready: every record replayed and checked; start the daemon on it",
        data.display()
    );
    Ok(())
}
