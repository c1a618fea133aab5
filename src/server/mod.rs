//! The daemon: opens the data directory, recovers every brand, and serves
//! terminals over TCP.
pub mod audit;
pub mod connection;
pub mod guard;
pub mod keys;
pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::ledger::BrandLedger;
use crate::limits::{DEFAULT_MAX_FRAME_BYTES, MAX_CONNECTIONS};
use crate::storage::{LogStore, SledStore};
use keys::KeyIndex;
use writer::BrandHandle;

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory (created on first start).
    pub data_dir: PathBuf,
    /// Where to listen for terminals.
    pub listen: SocketAddr,
    /// The frame size limit.
    pub max_frame_bytes: usize,
    /// Provision the demo brand into an empty ledger.
    pub demo: bool,
    /// Sign-on failures per address per minute (0 = unlimited).
    pub sign_on_failures_per_minute: u32,
    /// Unknown-card answers per terminal and per address per minute (0 = unlimited).
    pub card_misses_per_minute: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("cardd-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            demo: false,
            sign_on_failures_per_minute: crate::limits::DEFAULT_SIGN_ON_FAILURES_PER_MINUTE,
            card_misses_per_minute: crate::limits::DEFAULT_CARD_MISSES_PER_MINUTE,
        }
    }
}

/// State shared by every connection.
pub struct Shared {
    /// Enrolled keys.
    pub keys: Arc<KeyIndex>,
    /// The server's public key (sent in every challenge).
    pub server_public: [u8; 32],
    /// The frame size limit.
    pub max_frame_bytes: usize,
    /// Durable storage, for audit reads (export, proofs).
    pub store: Arc<dyn LogStore>,
    /// Failure budgets per address and terminal.
    pub guard: guard::Guard,
    brands: RwLock<HashMap<u32, BrandHandle>>,
}

impl Shared {
    /// The writer of `brand`, if loaded.
    pub fn brand(&self, brand: u32) -> Option<BrandHandle> {
        self.brands
            .read()
            .expect("brands lock")
            .get(&brand)
            .cloned()
    }
}

/// The path of the server's signing key in a data directory.
pub fn server_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server.key")
}

/// Creates the data directory (0700) if needed and loads or creates the
/// server key.
pub fn open_data_dir(data_dir: &Path) -> anyhow::Result<SigningKey> {
    if !data_dir.exists() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    crate::crypto::load_or_create_key(&server_key_path(data_dir))
}

/// What [`load`] returns: storage, the server key and every brand's ledger.
pub type Loaded = (Arc<dyn LogStore>, Arc<SigningKey>, Vec<BrandLedger>);

/// Opens storage and replays every brand (refusing a corrupt ledger).
pub fn load(
    data_dir: &Path,
) -> anyhow::Result<Loaded> {
    let server_key = Arc::new(open_data_dir(data_dir)?);
    let store: Arc<dyn LogStore> = Arc::new(
        SledStore::open(data_dir)
            .with_context(|| format!("opening the ledger in {}", data_dir.display()))?,
    );
    let mut ledgers = Vec::new();
    for brand in store.brands()? {
        ledgers.push(BrandLedger::recover(
            store.clone(),
            server_key.clone(),
            brand,
        )?);
    }
    Ok((store, server_key, ledgers))
}

/// A running daemon: the address it listens on.
pub struct Running {
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
}

/// Runs the daemon until the process is stopped. `on_ready` is called with
/// the bound address once the daemon accepts connections.
pub async fn run(config: Config, on_ready: impl FnOnce(&Running)) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (store, server_key, mut ledgers) = load(&config.data_dir)?;
    if config.demo {
        if ledgers.is_empty() {
            let ledger =
                crate::demo::provision(&config.data_dir, store.clone(), server_key.clone())?;
            ledgers.push(ledger);
        } else {
            tracing::info!("--demo ignored: the ledger already holds brands");
        }
    }
    let keys = Arc::new(KeyIndex::default());
    let mut brands = HashMap::new();
    let mut records = 0;
    for ledger in ledgers {
        keys.add_brand(&ledger.state);
        records += ledger.state.seq;
        brands.insert(ledger.brand_id(), BrandHandle::spawn(ledger, keys.clone()));
    }
    let shared = Arc::new(Shared {
        keys,
        server_public: server_key.verifying_key().to_bytes(),
        store: store.clone(),
        guard: guard::Guard::new(config.sign_on_failures_per_minute, config.card_misses_per_minute),
        max_frame_bytes: config.max_frame_bytes,
        brands: RwLock::new(brands),
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let running = Running {
        local_addr: listener.local_addr()?,
    };
    tracing::info!(
        addr = %running.local_addr,
        brands = shared.brands.read().expect("brands lock").len(),
        records,
        startup_ms = started.elapsed().as_millis() as u64,
        "serving"
    );
    on_ready(&running);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Running out of file descriptors must not end the daemon.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            connection::serve(stream, shared).await;
            drop(permit);
        });
    }
}
