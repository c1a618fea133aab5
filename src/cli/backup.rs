//! `cardd backup` and `cardd restore`: the library's `backup` module does
//! the work; this file connects, prints and picks the exit code.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ed25519_dalek::SigningKey;
use tokio::runtime::Runtime;

use cardd::backup::{BackupOutcome, LocalSource, Source, SourceError};
use cardd::client::{Client, ClientStream, TlsClient};
use cardd::crypto::read_key_file;
use cardd::pb;
use cardd::storage::LogStore;

use super::audit::parse_server_key;
use super::current_thread_runtime;

/// A brand on a running daemon, reached with its owner key. Verifying a
/// big backup can outlast the daemon's idle timeout, so the export opens a
/// fresh connection (a sign-on), which then also asks for the proof.
struct Online<'a> {
    runtime: Runtime,
    addr: &'a str,
    key: SigningKey,
    tls: Option<&'a TlsClient>,
    /// What the first sign-on said (brand and server key, all a backup
    /// needs before the export): every later one must say the same.
    brand: u32,
    server_key: [u8; 32],
    client: Option<Client<ClientStream>>,
}

impl<'a> Online<'a> {
    fn connect(
        addr: &'a str,
        key: SigningKey,
        tls: Option<&'a TlsClient>,
    ) -> anyhow::Result<Online<'a>> {
        let runtime = current_thread_runtime()?;
        let client = runtime
            .block_on(Client::connect_with(addr, key.clone(), tls))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Online {
            runtime,
            addr,
            key,
            tls,
            brand: client.session.brand_id,
            server_key: client.server_key,
            // Not kept: no session idles while the existing file is verified.
            client: None,
        })
    }

    /// A new session, checked to be the same brand on the same server.
    fn reconnect(&mut self) -> Result<&mut Client<ClientStream>, SourceError> {
        let client =
            self.runtime
                .block_on(Client::connect_with(self.addr, self.key.clone(), self.tls))?;
        if (client.session.brand_id, client.server_key) != (self.brand, self.server_key) {
            return Err(format!("{} now answers as another brand or server", self.addr).into());
        }
        Ok(self.client.insert(client))
    }
}

impl Source for Online<'_> {
    fn brand(&self) -> u32 {
        self.brand
    }

    fn server_key(&self) -> [u8; 32] {
        self.server_key
    }

    fn export_after(&mut self, after: u64, mut out: &mut dyn Write) -> Result<(), SourceError> {
        // The daemon may have closed a session left idle while the
        // existing file was verified: always a new one here.
        self.reconnect()?;
        let Online {
            runtime, client, ..
        } = self;
        let client = client.as_mut().expect("connected just now");
        runtime.block_on(client.export_after(after, &mut out))?;
        Ok(())
    }

    fn consistency(
        &mut self,
        old_size: u64,
        new_size: u64,
    ) -> Result<pb::ConsistencyProof, SourceError> {
        if self.client.is_none() {
            self.reconnect()?;
        }
        let Online {
            runtime, client, ..
        } = self;
        let client = client.as_mut().expect("connected");
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
    let mut source = Online::connect(addr, key, tls)?;
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
    let store = cardd::storage::DiskStore::open_existing_sparing(data)
        .context("opening the ledger (is the daemon running? back up a stopped daemon or a snapshot of its directory)")?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let brands = store.brands()?;
    // One brand's refusal (its ledger on disk damaged, or its backup file)
    // does not stop the others' backups; the exit code still says that
    // one failed. A damaged brand's backup file is left as it was.
    let mut failed = Vec::new();
    for (brand, damage) in store.damaged() {
        let why = cardd::error::causes(damage);
        eprintln!("cardd: brand {brand} not backed up: its ledger on disk is damaged: {why}");
        failed.push(brand);
    }
    if brands.is_empty() && failed.is_empty() {
        bail!("{}: no brand to back up", data.display());
    }
    for brand in brands {
        let out = brand_file(out_dir, brand);
        let mut source = LocalSource {
            store: &store,
            brand,
            server_key: server_key.verifying_key().to_bytes(),
        };
        match cardd::backup::backup(&mut source, &out, None) {
            Ok(outcome) => report(&outcome, &out),
            Err(e) => {
                let e = anyhow::Error::new(e)
                    .context(format!("backing up brand {brand} to {}", out.display()));
                eprintln!("cardd: {e:#}");
                failed.push(brand);
            }
        }
    }
    if !failed.is_empty() {
        failed.sort_unstable();
        bail!("the backup of brands {failed:?} failed (see above); the others are done");
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
