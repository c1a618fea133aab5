//! The daemon: opens the data directory, recovers every brand, and serves
//! terminals over TCP.
pub mod audit;
mod chain_check;
pub mod connection;
pub mod guard;
pub mod keys;
pub mod reply;
pub mod sessions;
mod sign_on;
pub mod start;
pub mod verifier;
pub mod writer;

pub use start::{
    load, load_checked, load_sized, open_data_dir, open_existing_data_dir, server_key_path, Loaded,
    StartError,
};

// TLS set-up is shared with the client; the old path stays.
pub use crate::tls::tls_acceptor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::limits::{
    DEFAULT_MAX_FRAME_BYTES, MAX_CONNECTIONS, MAX_PENDING_SIGN_ONS, SIGN_ON_TIMEOUT_SECS,
};
use crate::storage::LogStore;
use keys::KeyIndex;
pub use sessions::{Quotas, Sessions};
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
    /// TLS on the terminal port: the certificate chain (PEM). With
    /// `tls_key`; without both the port speaks plain TCP.
    pub tls_cert: Option<PathBuf>,
    /// TLS on the terminal port: the certificate's private key (PEM, mode
    /// 0600).
    pub tls_key: Option<PathBuf>,
    /// Records between two snapshots of a brand's state.
    pub snapshot_every: u64,
    /// Connections and audit streams per key, per brand and daemon-wide.
    pub quotas: Quotas,
    /// Seconds an audit stream may wait for its reader before it is
    /// stopped and its connection closed.
    pub audit_stall_secs: u64,
    /// KiB after which a brand's log segment is sealed.
    pub log_segment_kib: u64,
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
            tls_cert: None,
            tls_key: None,
            snapshot_every: crate::limits::SNAPSHOT_EVERY_RECORDS,
            quotas: Quotas::default(),
            audit_stall_secs: crate::limits::AUDIT_STALL_TIMEOUT_SECS,
            log_segment_kib: crate::limits::LOG_SEGMENT_BYTES / 1024,
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
    /// Request signatures, checked in batches on every core.
    pub verifier: verifier::BatchVerifier,
    /// Signed-on sessions and audit streams, under their quotas.
    pub sessions: Arc<Sessions>,
    /// How long an audit stream may wait for its reader.
    pub audit_stall: std::time::Duration,
    /// The pace of all audit streams together, in KiB.
    pub audit_pace: audit::Pace,
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

/// A running daemon: the address it listens on.
pub struct Running {
    /// The bound address (useful with port 0).
    pub local_addr: SocketAddr,
}

/// Runs the daemon until the process is stopped. `on_ready` is called with
/// the bound address once the daemon accepts connections.
pub async fn run(config: Config, on_ready: impl FnOnce(&Running)) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    // Before the ledger: a bad certificate or key fails fast.
    let tls = tls_acceptor(config.tls_cert.as_deref(), config.tls_key.as_deref())?;
    let segment_bytes = config.log_segment_kib.saturating_mul(1024);
    let (store, server_key, mut ledgers) = load_sized(&config.data_dir, segment_bytes)?;
    if config.demo {
        if ledgers.is_empty() {
            ledgers.push(crate::demo::provision(
                &config.data_dir,
                store.clone(),
                server_key.clone(),
            )?);
        } else {
            tracing::info!("--demo ignored: the ledger already holds brands");
        }
    }
    let snapshots = crate::snapshot::dir(&config.data_dir);
    for ledger in &mut ledgers {
        ledger.snapshot_into(&snapshots, config.snapshot_every);
    }
    let keys = Arc::new(KeyIndex::default());
    let audit_pace = audit::pace(config.quotas.audit_mib_per_sec);
    let sessions = Sessions::new(config.quotas);
    let mut brands = HashMap::new();
    let mut records = 0;
    for ledger in ledgers {
        keys.add_brand(&ledger.state);
        records += ledger.state.seq;
        let ledger_id = ledger.brand_id();
        let unchecked = ledger.unread_at_start();
        let handle = BrandHandle::spawn_revoking(ledger, keys.clone(), Some(sessions.clone()));
        chain_check::spawn(store.clone(), ledger_id, unchecked, handle.clone());
        brands.insert(ledger_id, handle);
    }
    let shared = Arc::new(Shared {
        keys,
        server_public: server_key.verifying_key().to_bytes(),
        store: store.clone(),
        verifier: verifier::BatchVerifier::start(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ),
        guard: guard::Guard::new(
            config.sign_on_failures_per_minute,
            config.card_misses_per_minute,
        ),
        max_frame_bytes: config.max_frame_bytes,
        sessions,
        audit_stall: std::time::Duration::from_secs(config.audit_stall_secs),
        audit_pace,
        brands: RwLock::new(brands),
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let running = Running {
        local_addr: listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?,
    };
    tracing::info!(
        addr = %running.local_addr,
        tls = tls.is_some(),
        brands = shared.brands.read().expect("brands lock").len(),
        records,
        startup_ms = started.elapsed().as_millis() as u64,
        "serving"
    );
    on_ready(&running);
    accept_loop(listener, shared, tls).await;
    Ok(())
}

/// Accepts connections for ever. Each holds one of MAX_CONNECTIONS slots
/// for its life, and one of MAX_PENDING_SIGN_ONS until its sign-on ends;
/// signed on, it holds a session slot under its key's and brand's quotas
/// instead (`sessions`). The three pools add up to MAX_CONNECTIONS, so
/// keyless clients cannot take the sessions' slots, terminals cannot take
/// the owners' reserve, and a key over its quota takes nothing from others.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = Arc::new(Semaphore::new(MAX_PENDING_SIGN_ONS));
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
        let Ok(signing_on) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections signing on; closing");
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection::serve(stream, peer, shared, signing_on).await,
                // The handshake has its own deadline, so a stalled one
                // cannot hold a connection slot.
                Some(tls) => match tokio::time::timeout(
                    std::time::Duration::from_secs(SIGN_ON_TIMEOUT_SECS),
                    tls.accept(stream),
                )
                .await
                {
                    Ok(Ok(stream)) => connection::serve(stream, peer, shared, signing_on).await,
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                },
            }
            drop(permit);
        });
    }
}
