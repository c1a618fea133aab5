//! `cardd serve`, `cardd config check` and `cardd check`: the daemon, its
//! settings and its offline check.
//!
//! Every serve flag is also a `CARDD_<NAME>` environment variable (clap)
//! and a key of the `--config` TOML file (`cardd::config`); a flag or a
//! variable wins over the file, the file over the default.
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches};
use tokio_util::sync::CancellationToken;

use cardd::config::{self, LogFormat, Settings};
use cardd::limits;
use cardd::server;

/// `cardd serve`'s flags (each also `CARDD_<NAME>` and a `--config` key).
#[derive(Args)]
pub struct ServeArgs {
    /// A TOML file of settings (keys as the flags, in snake_case); flags
    /// and environment variables win over it.
    #[arg(long, env = "CARDD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (created on first start).
    #[arg(long, env = "CARDD_DATA", default_value = "cardd-data")]
    data: PathBuf,
    /// Address to listen on for terminals.
    #[arg(long, env = "CARDD_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address of the HTTP listener (GET /metrics, /livez, /readyz); off
    /// unless set. Keep it on loopback or a management network.
    #[arg(long, env = "CARDD_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Provision a demo brand (only into an empty ledger) and write demo.json.
    #[arg(long, env = "CARDD_DEMO")]
    demo: bool,
    /// Largest frame accepted, in bytes.
    #[arg(long, env = "CARDD_MAX_FRAME_BYTES", default_value_t = limits::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Sign-on failures allowed per address per minute before it is
    /// refused for a minute (0 = unlimited).
    #[arg(long, env = "CARDD_SIGN_ON_FAILURES_PER_MINUTE",
          default_value_t = limits::DEFAULT_SIGN_ON_FAILURES_PER_MINUTE)]
    sign_on_failures_per_minute: u32,
    /// Unknown-card answers and wrong PINs allowed per terminal and per address per
    /// minute before it is refused for a minute (0 = unlimited).
    #[arg(long, env = "CARDD_CARD_MISSES_PER_MINUTE",
          default_value_t = limits::DEFAULT_CARD_MISSES_PER_MINUTE)]
    card_misses_per_minute: u32,
    /// Speak TLS 1.3 on the terminal port with this certificate chain
    /// (PEM; with --tls-key). Without it the port is plain TCP.
    #[arg(long, env = "CARDD_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM, mode 0600; with --tls-cert).
    #[arg(long, env = "CARDD_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Records between two snapshots of a brand's state (a restart
    /// replays at most this many after loading the newest snapshot).
    #[arg(long, env = "CARDD_SNAPSHOT_EVERY", default_value_t = limits::SNAPSHOT_EVERY_RECORDS)]
    snapshot_every: u64,
    /// How snapshots are written: `fork` (one copy of the state; the
    /// applier pauses for a fork, ~20 ms at a million cards, per snapshot)
    /// or `copy` (a second copy of each brand's state follows the log and
    /// writes them; the applier never pauses, the state takes twice the
    /// memory).
    #[arg(long, env = "CARDD_SNAPSHOT_BY", default_value = "fork",
          value_parser = ["copy", "fork"])]
    snapshot_by: String,
    #[command(flatten)]
    quotas: QuotaArgs,
    /// Seconds an audit stream (export) may wait for its reader to take
    /// data before it is stopped and its connection closed.
    #[arg(long, env = "CARDD_AUDIT_STALL_SECS", default_value_t = limits::AUDIT_STALL_TIMEOUT_SECS)]
    audit_stall_secs: u64,
    /// Seconds a peer may take to accept an answer (a write to its socket)
    /// before its connection is closed and its slots freed; 1..=3600.
    #[arg(long, env = "CARDD_WRITE_TIMEOUT_SECS", default_value_t = limits::WRITE_TIMEOUT_SECS)]
    write_timeout_secs: u64,
    /// MiB per second all audit streams together may send (exports are
    /// paced so that they never take the cores from tills in bursts);
    /// 1..=100000.
    #[arg(long, env = "CARDD_AUDIT_MIB_PER_SEC", default_value_t = limits::DEFAULT_AUDIT_MIB_PER_SEC)]
    audit_mib_per_sec: u32,
    /// KiB after which a brand's log segment is sealed (its frame table
    /// written, a new segment started); 64..=1048576. Start-up reads one
    /// table header per sealed segment.
    #[arg(long, env = "CARDD_LOG_SEGMENT_KIB", default_value_t = limits::LOG_SEGMENT_BYTES / 1024)]
    log_segment_kib: u64,
    /// Log lines as human-readable text or one JSON object per line.
    #[arg(long, env = "CARDD_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,
    /// Replicate every brand's log on this NATS JetStream cluster
    /// (comma-separated nats://HOST:PORT; docs/replication.md): no answer
    /// leaves before its batch is on a quorum of NATS nodes and on disk.
    /// Off (single node) unless set.
    #[arg(long, env = "CARDD_REPLICATE", value_name = "URLS")]
    replicate: Option<String>,
    /// Follow the replicated log (with --replicate and the active node's
    /// server key) into this data directory, checking every record as the
    /// auditor does, instead of serving tills.
    #[arg(long, env = "CARDD_STANDBY")]
    standby: bool,
}

/// `cardd serve` quotas (docs/security.md): what one key, one brand and
/// the whole daemon may hold at once.
#[derive(Args)]
struct QuotaArgs {
    /// Signed-on connections of one terminal key; past it, sign-on is
    /// refused with QUOTA_EXCEEDED.
    #[arg(long, env = "CARDD_CONNECTIONS_PER_TERMINAL",
          default_value_t = limits::DEFAULT_CONNECTIONS_PER_TERMINAL)]
    connections_per_terminal: usize,
    /// Signed-on connections of one owner key.
    #[arg(long, env = "CARDD_CONNECTIONS_PER_OWNER",
          default_value_t = limits::DEFAULT_CONNECTIONS_PER_OWNER)]
    connections_per_owner: usize,
    /// Signed-on terminal connections of one brand, all its tills together.
    #[arg(long, env = "CARDD_CONNECTIONS_PER_BRAND",
          default_value_t = limits::DEFAULT_CONNECTIONS_PER_BRAND)]
    connections_per_brand: usize,
    /// Connection slots only owner keys may use once all others are taken
    /// (so that an owner can always sign on to revoke a till); 1..=4999.
    #[arg(long, env = "CARDD_OWNER_RESERVED_CONNECTIONS",
          default_value_t = limits::DEFAULT_OWNER_RESERVED_CONNECTIONS)]
    owner_reserved_connections: usize,
    /// Concurrent audit streams (exports, consistency proofs) of one key.
    #[arg(long, env = "CARDD_AUDIT_STREAMS_PER_KEY",
          default_value_t = limits::DEFAULT_AUDIT_STREAMS_PER_KEY)]
    audit_streams_per_key: usize,
    /// Concurrent audit streams of one brand.
    #[arg(long, env = "CARDD_AUDIT_STREAMS_PER_BRAND",
          default_value_t = limits::DEFAULT_AUDIT_STREAMS_PER_BRAND)]
    audit_streams_per_brand: usize,
    /// Concurrent audit streams of the whole daemon (each holds a thread); 1..=999.
    #[arg(long, env = "CARDD_AUDIT_STREAMS", default_value_t = limits::DEFAULT_AUDIT_STREAMS)]
    audit_streams: usize,
}

impl ServeArgs {
    /// The flags and environment (over the defaults) as settings.
    fn given(self) -> Settings {
        let q = self.quotas;
        Settings {
            data: self.data,
            listen: self.listen,
            http_listen: self.http_listen,
            demo: self.demo,
            max_frame_bytes: self.max_frame_bytes,
            sign_on_failures_per_minute: self.sign_on_failures_per_minute,
            card_misses_per_minute: self.card_misses_per_minute,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            snapshot_every: self.snapshot_every,
            snapshot_by: self.snapshot_by.parse().unwrap_or_default(),
            connections_per_terminal: q.connections_per_terminal,
            connections_per_owner: q.connections_per_owner,
            connections_per_brand: q.connections_per_brand,
            owner_reserved_connections: q.owner_reserved_connections,
            audit_streams_per_key: q.audit_streams_per_key,
            audit_streams_per_brand: q.audit_streams_per_brand,
            audit_streams: q.audit_streams,
            audit_stall_secs: self.audit_stall_secs,
            write_timeout_secs: self.write_timeout_secs,
            audit_mib_per_sec: self.audit_mib_per_sec,
            log_segment_kib: self.log_segment_kib,
            log_format: self.log_format.parse().unwrap_or_default(),
            replicate: self.replicate,
            standby: self.standby,
        }
    }

    /// The effective settings: flags and environment (`matches` tells
    /// which were given), then the `--config` file, then the defaults;
    /// every value checked.
    pub fn settings(self, matches: &ArgMatches) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => config::read_file(path)?,
            None => config::FileSettings::default(),
        };
        let explicit = |key: &str| {
            matches!(
                matches.value_source(key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let settings = Settings::merge(self.given(), file, explicit);
        settings.validate()?;
        Ok(settings)
    }
}

/// The serve flags as clap sees them, for `cardd config check`.
#[derive(clap::Parser)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

/// `cardd config check FILE`: the effective settings `cardd serve --config
/// FILE` would run with (environment included), or the bad key; the TLS
/// files, if named, are loaded too.
pub fn config_check(file: &Path) -> anyhow::Result<()> {
    let matches = ServeOnly::command()
        .try_get_matches_from([
            "cardd serve".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
        ])
        .context("the CARDD_ environment variables")?;
    let args = ServeOnly::from_arg_matches(&matches)?.args;
    let settings = args.settings(&matches)?;
    // The TLS files are read as serve would read them: a wrong path or a
    // key that does not match fails here, not at the next restart.
    let (cert, key) = (settings.tls_cert.as_deref(), settings.tls_key.as_deref());
    cardd::tls::tls_acceptor(cert, key).context("tls_cert / tls_key")?;
    outln!("# {}: valid; the effective settings:", file.display());
    super::print_text(&settings.to_toml());
    Ok(())
}

/// Installs the log subscriber: `format`, to standard error, with colours
/// only when standard error is a terminal (never in a log file or journal).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sled=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `cardd serve`: runs the daemon until SIGTERM or SIGINT, then shuts
/// down gracefully (a second signal exits at once).
pub fn serve(settings: Settings) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = CancellationToken::new();
    let result = rt.block_on(async {
        tokio::spawn(on_signals(stop.clone()));
        server::run_until(settings.server_config(), stop, |r| {
            // A line scripts and tests can wait for.
            println!("cardd listening on {}", r.local_addr);
            notify_systemd(sd_notify::NotifyState::Ready);
        })
        .await
    });
    if let Err(e) = &result {
        tracing::error!(error = %cardd::error::causes(e), "cardd failed");
    }
    // Threads still parked (verifier, a stuck audit stream) must not keep
    // the process: everything acknowledged is durable by now.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(result?)
}

/// The first SIGTERM or SIGINT starts the graceful shutdown; a second one
/// exits at once (nothing acknowledged is lost: every answer follows its
/// fsync).
async fn on_signals(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("signal handlers not installed; SIGTERM ends the daemon at once");
        return;
    };
    for round in 0.. {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if round > 0 {
            tracing::warn!(signal = name, "second signal: exiting now");
            std::process::exit(1);
        }
        tracing::info!(
            signal = name,
            grace_secs = limits::SHUTDOWN_GRACE_SECS,
            "shutting down: no new connections, answering what is in flight"
        );
        notify_systemd(sd_notify::NotifyState::Stopping);
        stop.cancel();
    }
}

/// Tells systemd (under `Type=notify`; a no-op elsewhere).
fn notify_systemd(state: sd_notify::NotifyState) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// `cardd check`: replays every brand of a stopped daemon's data directory
/// and prints one line per brand.
pub fn check(data: &Path) -> anyhow::Result<()> {
    let (_, _, ledgers) = server::load_checked(data)?;
    for l in &ledgers {
        let (paid, bonus) = l.state.liability();
        outln!(
            "brand {} ({}): {} records, {} cards, outstanding paid {} bonus {} (minor units), head {}",
            l.brand_id(),
            l.state.name,
            l.state.seq,
            l.state.cards.len(),
            paid,
            bonus,
            hex::encode(l.state.head_hash)
        );
    }
    outln!(
        "ok: {} brands replayed from their first record and match their checkpoints and snapshots",
        ledgers.len()
    );
    Ok(())
}
