//! The daemon: binds its listeners, opens the data directory, recovers
//! every brand, serves terminals over TCP (and metrics and health over
//! HTTP when asked) until it is told to stop, then shuts down gracefully.
pub mod audit;
mod chain_check;
pub mod connection;
pub mod guard;
pub mod holders;
pub mod http;
pub mod keys;
pub mod metrics;
mod personal;
pub mod pins;
pub mod reply;
pub mod sessions;
mod shutdown;
mod sign_on;
mod snapshot_child;
mod snapshot_copy;
mod standby;
pub mod start;
pub mod verifier;
pub mod web_login;
pub mod writer;

pub use start::{
    load, load_checked, load_sized, open_data_dir, open_existing_data_dir, rotate_server_key,
    server_key_path, Loaded, Rotated, StartError,
};

// TLS set-up is shared with the client; the old path stays.
pub use crate::tls::tls_acceptor;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// Where to serve metrics and health over HTTP (off when None).
    pub http_listen: Option<SocketAddr>,
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
    /// How snapshots are written (a copy of the state, or a fork).
    pub snapshot_by: crate::config::SnapshotBy,
    /// Connections and audit streams per key, per brand and daemon-wide.
    pub quotas: Quotas,
    /// Seconds an audit stream may wait for its reader before it is
    /// stopped and its connection closed.
    pub audit_stall_secs: u64,
    /// Seconds a peer may take to accept a write to its socket before its
    /// connection is closed (`limits::WRITE_TIMEOUT_SECS`).
    pub write_timeout_secs: u64,
    /// KiB after which a brand's log segment is sealed.
    pub log_segment_kib: u64,
    /// NATS servers holding every brand's replicated log
    /// (`--replicate`, comma-separated); None: the single-node default.
    pub replicate: Option<String>,
    /// Follow the replicated log instead of serving (`--standby`).
    pub standby: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("cardd-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            http_listen: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            demo: false,
            sign_on_failures_per_minute: crate::limits::DEFAULT_SIGN_ON_FAILURES_PER_MINUTE,
            card_misses_per_minute: crate::limits::DEFAULT_CARD_MISSES_PER_MINUTE,
            tls_cert: None,
            tls_key: None,
            snapshot_every: crate::limits::SNAPSHOT_EVERY_RECORDS,
            snapshot_by: crate::config::SnapshotBy::default(),
            quotas: Quotas::default(),
            audit_stall_secs: crate::limits::AUDIT_STALL_TIMEOUT_SECS,
            write_timeout_secs: crate::limits::WRITE_TIMEOUT_SECS,
            log_segment_kib: crate::limits::LOG_SEGMENT_BYTES / 1024,
            replicate: None,
            standby: false,
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
    pub guard: Arc<guard::Guard>,
    /// Request signatures, checked in batches on every core.
    pub verifier: verifier::BatchVerifier,
    /// Signed-on sessions and audit streams, under their quotas.
    pub sessions: Arc<Sessions>,
    /// How long an audit stream may wait for its reader.
    pub audit_stall: std::time::Duration,
    /// How long a peer may take to accept one write to its socket.
    pub write_timeout: std::time::Duration,
    /// The pace of all audit streams together, in KiB.
    pub audit_pace: audit::Pace,
    /// Holders of named cards, outside the ledger (`holders.rs`).
    pub holders: Arc<holders::HolderStore>,
    /// PIN hashes and wrong-try counts, and the server's PIN key.
    pub pins: Arc<pins::PinStore>,
    /// Cancelled when the daemon starts shutting down: connections stop
    /// reading and deliver what is in flight.
    pub stop: CancellationToken,
    /// Web login links and sessions (in memory: a restart ends them).
    pub web: Arc<crate::web::Logins>,
    /// Where brands keep their snapshots, and every how many records.
    snapshots: (PathBuf, u64),
    /// How they are written.
    snapshot_by: crate::config::SnapshotBy,
    /// `--replicate`: a brand this node knows but does not serve is
    /// refused with NOT_ACTIVE (another node serves it).
    pub replicated: bool,
    /// `--replicate`: this node's own deadline for each lease it holds
    /// (set once, at start, before any brand is served).
    lease_clock: std::sync::OnceLock<Arc<crate::replica::LeaseClock>>,
    /// `--replicate`: the terminal address of the node holding the lease of
    /// each brand this node follows, as its lease names it (told to tills
    /// refused with NOT_ACTIVE).
    active_elsewhere: RwLock<HashMap<u32, String>>,
    brands: RwLock<HashMap<u32, BrandHandle>>,
    /// Brands refused at start-up because their log on disk is damaged
    /// (`start::load_sparing`): their tills are told STORAGE_FAILURE.
    damaged: RwLock<std::collections::HashSet<u32>>,
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

    /// Starts serving `ledger`'s brand: its keys may sign on, its writer
    /// runs on `writers` (at start-up, or when a replicated node takes a
    /// brand over).
    fn serve_brand(&self, mut ledger: crate::ledger::BrandLedger, writers: &TaskTracker) {
        ledger.snapshot_into(&self.snapshots.0, self.snapshots.1);
        let copy = match self.snapshot_by {
            crate::config::SnapshotBy::Copy => ledger.hand_snapshots_over(),
            crate::config::SnapshotBy::Fork => None,
        };
        self.keys.add_brand(&ledger.state);
        let id = ledger.brand_id();
        metrics::get().records_of(id).set(ledger.state.seq as i64);
        let unchecked = ledger.unread_at_start();
        let sessions = Some(self.sessions.clone());
        let handle =
            BrandHandle::spawn_revoking(ledger, self.keys.clone(), sessions, writers, copy);
        chain_check::spawn(self.store.clone(), id, unchecked, handle.halter());
        self.brands.write().expect("brands lock").insert(id, handle);
    }

    /// Refuses a brand whose log on disk was found damaged at start-up: it
    /// is not served; its keys, as far as its log reads, are known, so its
    /// tills are told STORAGE_FAILURE at sign-on, as a halted brand's are,
    /// not UNKNOWN_KEY; `cardd_brand_refused{brand}` is 1.
    fn refuse_damaged(&self, refused: start::Refused) {
        if let Some(state) = &refused.known {
            self.keys.add_brand(state);
        }
        metrics::get().refused_of(refused.brand).set(1);
        let mut damaged = self.damaged.write().expect("damaged lock");
        damaged.insert(refused.brand);
    }

    /// Whether `brand` was refused at start-up for a damaged log.
    fn is_damaged(&self, brand: u32) -> bool {
        self.damaged.read().expect("damaged lock").contains(&brand)
    }

    /// The brands refused at start-up for a damaged log, if any.
    fn any_damaged(&self) -> Option<Vec<u32>> {
        let damaged = self.damaged.read().expect("damaged lock");
        let mut brands: Vec<u32> = damaged.iter().copied().collect();
        brands.sort_unstable();
        (!brands.is_empty()).then_some(brands)
    }

    /// Stops serving `brand` at once (a replicated node that lost its
    /// lease): its writer refuses everything from now on.
    fn stop_brand(&self, brand: u32, why: String) {
        let handle = self.brands.write().expect("brands lock").remove(&brand);
        if let Some(handle) = handle {
            handle.halt(why);
        }
    }

    /// Whether this node serves `brand` now: loaded here and, on a
    /// replicated node, its lease good on this node's own clock. A node
    /// paused past its lease (SIGSTOP, a VM frozen) knows at once when it
    /// wakes, before any look at the lease: its monotonic clock ran on.
    fn serves(&self, brand: u32) -> bool {
        let lease_good = || {
            self.lease_clock
                .get()
                .is_none_or(|clock| clock.may_append(brand))
        };
        self.brand(brand).is_some() && lease_good()
    }

    /// The address of the node serving `brand` instead of this one, if
    /// known (`--replicate`).
    fn active_address(&self, brand: u32) -> Option<String> {
        let known = self.active_elsewhere.read().expect("holders lock");
        known.get(&brand).cloned()
    }

    /// Drops every brand's writer handle held here (at shutdown, once the
    /// connections are gone: the writers then finish and end).
    fn close_brands(&self) {
        let brands = std::mem::take(&mut *self.brands.write().expect("brands lock"));
        drop(brands);
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
    run_until(config, CancellationToken::new(), on_ready).await
}

/// Runs the daemon until `stop` is cancelled, then shuts down gracefully
/// (`shutdown::drain`). Everything that can fail without touching the
/// disk comes first (TLS files, both listeners), so a start that fails
/// there leaves no data directory and no key behind. `on_ready` is called
/// with the bound address once every brand is recovered.
pub async fn run_until(
    config: Config,
    stop: CancellationToken,
    on_ready: impl FnOnce(&Running),
) -> Result<(), StartError> {
    let tls = tls_acceptor(config.tls_cert.as_deref(), config.tls_key.as_deref())?;
    let listener = bind(config.listen).await?;
    let health = Arc::new(http::Health::default());
    let http_stop = CancellationToken::new();
    let logins = Arc::new(crate::web::Logins::default());
    // The web page reads brands once they are recovered (until then every
    // page answers 503, as /readyz does).
    let served: Arc<std::sync::OnceLock<Arc<Shared>>> = Arc::default();
    if let Some(addr) = config.http_listen {
        let http_listener = bind(addr).await?;
        let addr = http_listener.local_addr().unwrap_or(addr);
        tracing::info!(%addr, "HTTP listener: /metrics, /livez, /readyz");
        let web = crate::web::Web::new(logins.clone(), Arc::new(http::Served(served.clone())));
        let router = http::router(health.clone()).merge(crate::web::router(web));
        tokio::spawn(http::serve(http_listener, router, http_stop.clone()));
    }
    let writers = TaskTracker::new();
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let (shared, node) = match config.replicate.as_deref() {
        None => (start_brands(&config, stop.clone(), &writers, logins)?, None),
        Some(urls) => {
            // Blocking start-up (the stream reads wait on the connection's
            // runtime); only the multi-thread daemon runtime replicates.
            let started = tokio::task::block_in_place(|| {
                standby::start(&config, urls, local_addr, stop.clone(), &writers, logins)
            })?;
            (started.0, Some(started.1))
        }
    };
    let _ = served.set(shared.clone());
    health.set_recovered();
    let running = Running { local_addr };
    if !stop.is_cancelled() {
        // (A signal during recovery: the daemon never serves.)
        tracing::info!(addr = %running.local_addr, tls = tls.is_some(), "serving");
        on_ready(&running);
    }
    let node = node.map(|n| tokio::spawn(n.run(shared.clone(), writers.clone(), stop.clone())));
    let connections = TaskTracker::new();
    accept_loop(listener, shared.clone(), tls, &connections).await;
    // The node's loop ends first (a takeover under way with it: it may
    // start a writer); its leases stay renewed through the drain (it may
    // still append what is in flight), then are handed over.
    let drained = CancellationToken::new();
    let _drained = drained.clone().drop_guard();
    let keeping = match node {
        Some(node) => match node.await {
            Ok(node) => Some(tokio::spawn(
                node.keep_leases(shared.clone(), drained.clone()),
            )),
            Err(_) => None,
        },
        None => None,
    };
    health.set_stopping();
    let writers_done = shutdown::drain(shared, connections, writers).await;
    drained.cancel();
    if let Some(keeping) = keeping {
        // A renewal stuck on a cluster that does not answer gives up the
        // handover rather than hold the stop.
        let handover = tokio::time::timeout(standby::HANDOVER_PATIENCE, keeping).await;
        match (writers_done, handover) {
            (true, Ok(Ok(handover))) => tokio::task::block_in_place(|| handover.release()),
            _ => tracing::warn!("leases not handed over; they lapse instead"),
        }
    }
    http_stop.cancel();
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Opens the data directory, recovers every brand (provisioning the demo
/// brand if asked) and starts their writers on `writers`; logs one line
/// with what recovery found.
fn start_brands(
    config: &Config,
    stop: CancellationToken,
    writers: &TaskTracker,
    web: Arc<crate::web::Logins>,
) -> Result<Arc<Shared>, StartError> {
    let started = std::time::Instant::now();
    let segment_bytes = config.log_segment_kib.saturating_mul(1024);
    start::refuse_replicated(&config.data_dir)?;
    let ((store, server_key, mut ledgers), refused) =
        start::load_sparing(&config.data_dir, segment_bytes)?;
    log_recovered(&ledgers, refused.len(), started.elapsed());
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
    let shared = serve_ledgers(config, stop, writers, store, &server_key, ledgers, web);
    for brand in refused {
        shared.refuse_damaged(brand);
    }
    Ok(shared)
}

/// The state every connection shares, with a writer started on `writers`
/// for each of `ledgers`.
fn serve_ledgers(
    config: &Config,
    stop: CancellationToken,
    writers: &TaskTracker,
    store: Arc<dyn LogStore>,
    server_key: &ed25519_dalek::SigningKey,
    ledgers: Vec<crate::ledger::BrandLedger>,
    web: Arc<crate::web::Logins>,
) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        keys: Arc::new(KeyIndex::default()),
        server_public: server_key.verifying_key().to_bytes(),
        holders: Arc::new(holders::HolderStore::new(&config.data_dir)),
        pins: Arc::new(pins::PinStore::new(&config.data_dir, server_key)),
        store,
        verifier: verifier::BatchVerifier::start(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ),
        guard: Arc::new(guard::Guard::new(
            config.sign_on_failures_per_minute,
            config.card_misses_per_minute,
        )),
        max_frame_bytes: config.max_frame_bytes,
        sessions: Sessions::new(config.quotas),
        audit_stall: std::time::Duration::from_secs(config.audit_stall_secs),
        write_timeout: std::time::Duration::from_secs(config.write_timeout_secs),
        audit_pace: audit::pace(config.quotas.audit_mib_per_sec),
        stop,
        web,
        snapshots: (
            crate::snapshot::dir(&config.data_dir),
            config.snapshot_every,
        ),
        snapshot_by: config.snapshot_by,
        replicated: config.replicate.is_some(),
        lease_clock: std::sync::OnceLock::new(),
        active_elsewhere: RwLock::new(HashMap::new()),
        brands: RwLock::new(HashMap::new()),
        damaged: RwLock::default(),
    });
    for ledger in ledgers {
        shared.serve_brand(ledger, writers);
    }
    shared
}

/// The start-up's one line on recovery (and its metric): what every brand
/// was recovered from, in how long, and how many were refused (damaged).
fn log_recovered(
    ledgers: &[crate::ledger::BrandLedger],
    refused: usize,
    took: std::time::Duration,
) {
    let records: u64 = ledgers.iter().map(|l| l.state.seq).sum();
    // What the snapshots loaded covered (a snapshot written right after a
    // full replay covers nothing that was not replayed).
    let from_snapshots: u64 = ledgers.iter().map(|l| l.unread_at_start()).sum();
    metrics::get().recovery_seconds.set(took.as_secs_f64());
    tracing::info!(
        brands = ledgers.len(),
        refused,
        records,
        from_snapshots,
        replayed = records - from_snapshots,
        recovery_ms = took.as_millis() as u64,
        "recovered"
    );
}

/// Accepts connections until `shared.stop` is cancelled; each connection
/// runs on `tracker`, so that a shutdown can wait for it. Each holds one
/// of MAX_CONNECTIONS slots for its life, and one of MAX_PENDING_SIGN_ONS
/// until its sign-on ends;
/// signed on, it holds a session slot under its key's and brand's quotas
/// instead (`sessions`). The three pools add up to MAX_CONNECTIONS, so
/// keyless clients cannot take the sessions' slots, terminals cannot take
/// the owners' reserve, and a key over its quota takes nothing from others.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tracker: &TaskTracker,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pending = Arc::new(Semaphore::new(MAX_PENDING_SIGN_ONS));
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
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
        let counted = metrics::OpenConnection::count();
        tracker.spawn(async move {
            let _counted = counted;
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection::serve(stream, peer, shared, signing_on).await,
                // The handshake has its own deadline, so a stalled one
                // cannot hold a connection slot, and ends at a shutdown,
                // so it cannot hold the shutdown either.
                Some(tls) => {
                    let deadline = std::time::Duration::from_secs(SIGN_ON_TIMEOUT_SECS);
                    let handshake = tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        h = tokio::time::timeout(deadline, tls.accept(stream)) => h,
                    };
                    match handshake {
                        Ok(Ok(stream)) => connection::serve(stream, peer, shared, signing_on).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}
