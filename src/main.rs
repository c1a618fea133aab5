//! The `cardd` command: run the daemon, manage brands and keys, and the
//! owner's console (`cardd admin`). This file holds the argument
//! definitions and the dispatch; each command's code is in `src/cli/`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use cardd::client::TlsClient;
use cardd::server::Config;

/// `println!` that survives a closed pipe (see `cli::print_line`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

mod cli;

#[derive(Parser)]
#[command(
    name = "cardd",
    version,
    about = "Stored-value membership card ledger daemon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Data directory (created on first start).
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
        /// Address to listen on for terminals.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// Provision a demo brand (only into an empty ledger) and write demo.json.
        #[arg(long)]
        demo: bool,
        /// Largest frame accepted, in bytes.
        #[arg(long, default_value_t = cardd::limits::DEFAULT_MAX_FRAME_BYTES)]
        max_frame_bytes: usize,
        /// Sign-on failures allowed per address per minute before it is
        /// refused for a minute (0 = unlimited).
        #[arg(long, default_value_t = cardd::limits::DEFAULT_SIGN_ON_FAILURES_PER_MINUTE)]
        sign_on_failures_per_minute: u32,
        /// Unknown-card answers allowed per terminal and per address per
        /// minute before it is refused for a minute (0 = unlimited).
        #[arg(long, default_value_t = cardd::limits::DEFAULT_CARD_MISSES_PER_MINUTE)]
        card_misses_per_minute: u32,
        /// Speak TLS 1.3 on the terminal port with this certificate chain
        /// (PEM; with --tls-key). Without it the port is plain TCP.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The TLS certificate's private key (PEM, mode 0600; with --tls-cert).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Records between two snapshots of a brand's state (a restart
        /// replays at most this many after loading the newest snapshot).
        #[arg(long, default_value_t = cardd::limits::SNAPSHOT_EVERY_RECORDS,
              value_parser = clap::value_parser!(u64).range(1..))]
        snapshot_every: u64,
        #[command(flatten)]
        quotas: QuotaArgs,
        /// Seconds an audit stream (export) may wait for its reader to take
        /// data before it is stopped and its connection closed.
        #[arg(long, default_value_t = cardd::limits::AUDIT_STALL_TIMEOUT_SECS,
              value_parser = clap::value_parser!(u64).range(1..))]
        audit_stall_secs: u64,
    },
    /// Print the server's public key in hex (created on first use).
    ServerKey {
        /// Data directory.
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
    },
    /// Brand management on a stopped daemon's data directory.
    Brand {
        #[command(subcommand)]
        command: BrandCommand,
    },
    /// Create an ed25519 key file (0600) and print its public key in hex.
    Keygen {
        /// Where to write the key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Replay every brand's ledger and check it (daemon stopped).
    Check {
        /// Data directory.
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
    },
    /// The owner's console: manage a brand over the protocol.
    Admin(AdminArgs),
    /// The auditor's tools: export, verify and replay, consistency.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// How `admin` and `audit` reach a daemon that serves TLS.
/// `cardd serve` quotas (docs/security.md): what one key, one brand and
/// the whole daemon may hold at once.
#[derive(Args)]
struct QuotaArgs {
    /// Signed-on connections of one terminal key; past it, sign-on is
    /// refused with QUOTA_EXCEEDED.
    #[arg(long, default_value_t = cardd::limits::DEFAULT_CONNECTIONS_PER_TERMINAL,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    connections_per_terminal: usize,
    /// Signed-on connections of one owner key.
    #[arg(long, default_value_t = cardd::limits::DEFAULT_CONNECTIONS_PER_OWNER,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    connections_per_owner: usize,
    /// Signed-on terminal connections of one brand, all its tills together.
    #[arg(long, default_value_t = cardd::limits::DEFAULT_CONNECTIONS_PER_BRAND,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    connections_per_brand: usize,
    /// Connection slots only owner keys may use once all others are taken
    /// (so that an owner can always sign on to revoke a till).
    #[arg(long, default_value_t = cardd::limits::DEFAULT_OWNER_RESERVED_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..5_000))]
    owner_reserved_connections: usize,
    /// Concurrent audit streams (exports, consistency proofs) of one key.
    #[arg(long, default_value_t = cardd::limits::DEFAULT_AUDIT_STREAMS_PER_KEY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    audit_streams_per_key: usize,
    /// Concurrent audit streams of one brand.
    #[arg(long, default_value_t = cardd::limits::DEFAULT_AUDIT_STREAMS_PER_BRAND,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    audit_streams_per_brand: usize,
    /// Concurrent audit streams of the whole daemon (each holds a thread).
    #[arg(long, default_value_t = cardd::limits::DEFAULT_AUDIT_STREAMS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..1_000))]
    audit_streams: usize,
}

impl QuotaArgs {
    fn quotas(&self) -> cardd::server::Quotas {
        cardd::server::Quotas {
            connections_per_terminal: self.connections_per_terminal,
            connections_per_owner: self.connections_per_owner,
            connections_per_brand: self.connections_per_brand,
            sessions: cardd::server::Quotas::sessions_beside(self.owner_reserved_connections),
            owner_reserved: self.owner_reserved_connections,
            audit_streams_per_key: self.audit_streams_per_key,
            audit_streams_per_brand: self.audit_streams_per_brand,
            audit_streams: self.audit_streams,
        }
    }
}

#[derive(Args)]
struct TlsArgs {
    /// Speak TLS to the daemon, trusting only the certificates in this PEM
    /// file (a CA, or the daemon's self-signed certificate).
    #[arg(long, value_name = "PEM", global = true)]
    tls_ca: Option<PathBuf>,
    /// The name the daemon's certificate must carry (with --tls-ca).
    #[arg(long, value_name = "NAME", default_value = "localhost", global = true)]
    tls_server_name: String,
}

impl TlsArgs {
    fn client(&self) -> anyhow::Result<Option<TlsClient>> {
        self.tls_ca
            .as_deref()
            .map(|ca| TlsClient::from_ca_file(ca, &self.tls_server_name).context("--tls-ca"))
            .transpose()
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write a brand's ledger to one self-describing file.
    Export {
        /// A running daemon's address (with --key).
        #[arg(long, requires = "key", conflicts_with_all = ["data", "brand"])]
        connect: Option<String>,
        /// The brand owner's key file.
        #[arg(long)]
        key: Option<PathBuf>,
        /// A stopped daemon's data directory (with --brand).
        #[arg(long, requires = "brand")]
        data: Option<PathBuf>,
        /// The brand to export from --data.
        #[arg(long)]
        brand: Option<u32>,
        /// The export file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify every signature, link and checkpoint of an export, replay it,
    /// and print a summary and the totals (every card with --cards or
    /// --json). Exits non-zero on the first failure.
    Verify {
        /// The export file.
        file: PathBuf,
        /// The server's public key in hex (the only key trusted).
        #[arg(long)]
        server_key: String,
        /// Print one JSON object (every card included).
        #[arg(long)]
        json: bool,
        /// Print one line per card after the summary.
        #[arg(long)]
        cards: bool,
        /// A checkpoint saved earlier that this export must extend.
        #[arg(long)]
        old_checkpoint: Option<PathBuf>,
        /// Save the export's newest checkpoint here (for next time).
        #[arg(long)]
        save_checkpoint: Option<PathBuf>,
        /// Compare the replayed cards with a live daemon (with --key).
        #[arg(long, requires = "key")]
        compare: Option<String>,
        /// The owner key for --compare.
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Prove that checkpoint NEW's tree extends checkpoint OLD's.
    Consistency {
        /// The older checkpoint file.
        old: PathBuf,
        /// The newer checkpoint file.
        new: PathBuf,
        /// The server's public key in hex.
        #[arg(long)]
        server_key: String,
        /// Take the proof from this export's records.
        #[arg(long, conflicts_with = "connect")]
        export: Option<PathBuf>,
        /// Ask a live daemon for the proof (with --key).
        #[arg(long, requires = "key")]
        connect: Option<String>,
        /// The owner key for --connect.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BrandCommand {
    /// Create a brand; its first record names its owner key.
    Create {
        /// Data directory.
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
        /// Brand name.
        #[arg(long)]
        name: String,
        /// ISO 4217 currency code.
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// Decimals of the currency.
        #[arg(long, default_value_t = 2)]
        exponent: u32,
        /// The owner's key file (created if missing).
        #[arg(long)]
        owner_key: PathBuf,
        /// Brand id (default: the next free one).
        #[arg(long)]
        id: Option<u32>,
    },
}

#[derive(Args)]
struct AdminArgs {
    // These flags are global so that they may come before or after the
    // subcommand (`cardd admin --json inquiry ...` or `... inquiry --json`).
    /// Daemon address.
    #[arg(
        long,
        default_value = "127.0.0.1:7700",
        env = "CARDD_CONNECT",
        global = true
    )]
    connect: String,
    /// The brand owner's key file (required).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Print one JSON object per line.
    #[arg(long, global = true)]
    json: bool,
    /// Transaction id to use (default: one past the last the server holds).
    #[arg(long, global = true)]
    txn: Option<u64>,
    /// Staff name recorded as the operator.
    #[arg(long, default_value = "owner", global = true)]
    operator: String,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    op: AdminOp,
}

#[derive(Subcommand)]
enum AdminOp {
    /// Open a store.
    CreateStore {
        #[arg(long)]
        name: String,
    },
    /// Enrol a terminal's public key to a store.
    EnrollTerminal {
        #[arg(long)]
        store: u32,
        /// The terminal's public key in hex.
        #[arg(long, conflicts_with = "key_out")]
        public_key: Option<String>,
        /// Create a new key file for the terminal and enrol it.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Issue a card (a fresh random number unless --card is given).
    IssueCard {
        #[arg(long)]
        card: Option<String>,
    },
    /// Block a card.
    BlockCard {
        #[arg(long)]
        card: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Unblock a card.
    UnblockCard {
        #[arg(long)]
        card: String,
    },
    /// Replace a lost card: value and points move to the new number.
    ReplaceCard {
        #[arg(long)]
        card: String,
        /// The new number (default: a fresh random one).
        #[arg(long)]
        new: Option<String>,
    },
    /// Set the bonus, points and tier rules from a JSON file.
    SetRules {
        #[arg(long)]
        file: PathBuf,
    },
    /// Revoke a terminal (a stolen or retired till): it can no longer sign on.
    DisableTerminal {
        #[arg(long)]
        terminal: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Restore a disabled terminal.
    EnableTerminal {
        #[arg(long)]
        terminal: u32,
    },
    /// Look up a card.
    Inquiry {
        #[arg(long)]
        card: String,
    },
    /// Load value onto a card from the head office, an online platform or
    /// a company's order (a TOP_UP record of store 0).
    Topup {
        #[arg(long)]
        card: String,
        /// The face value loaded, a decimal (e.g. 100.00).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[command(flatten)]
        sale: SaleArgs,
    },
    /// Sell cards in bulk (a company's order, a batch for a shop window):
    /// issue --count new cards, load each with --load, and write the numbers,
    /// value and record sequences to --out. Run the same command again after
    /// an interruption: it finishes the run without doubling anything.
    IssueCards {
        /// How many cards (at most MAX_CARDS_PER_ISSUE_RUN, 1,000).
        #[arg(long)]
        count: usize,
        /// The face value loaded onto each card, a decimal (default: none).
        #[arg(long, allow_hyphen_values = true)]
        load: Option<String>,
        #[command(flatten)]
        sale: SaleArgs,
        /// The CSV to write; `OUT.run` beside it holds the run's plan.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What an owner's load says besides its amount: where it was sold, for
/// what order, with or without bonus, at what price.
#[derive(Args, Clone)]
struct SaleArgs {
    /// Where the value was sold.
    #[arg(long, value_enum, default_value = "head-office")]
    channel: LoadChannel,
    /// The order or invoice number (at most 64 printable ASCII bytes).
    #[arg(long, default_value = "")]
    reference: String,
    /// Load without the brand's top-up bonus.
    #[arg(long)]
    no_bonus: bool,
    /// A sale below face value: what the buyer paid, a decimal (e.g. 90.00
    /// for 100.00 of value). Default: the face value.
    #[arg(long, allow_hyphen_values = true)]
    price: Option<String>,
}

/// The owner's sales channels (`Channel` in the proto, without `store`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LoadChannel {
    HeadOffice,
    Online,
    Corporate,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sled=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && json_asked() => {
            fail_json("USAGE", e.render().to_string().trim());
            e.exit()
        }
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cardd: {e:#}");
            if json_asked() {
                fail_json(cli::failure_code(&e), &format!("{e:#}"));
            }
            ExitCode::FAILURE
        }
    }
}

/// True when the command line asks for JSON: then every failure is also
/// one JSON object on standard output, so that a script always gets one.
fn json_asked() -> bool {
    std::env::args_os().any(|a| a == "--json")
}

/// Prints `{"ok": false, "error": CODE, "message": ...}` for a failure on
/// this side (the daemon's refusals print the same shape).
fn fail_json(code: &str, message: &str) {
    outln!("{}", cardd::render::failure_json(code, message));
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            data,
            listen,
            demo,
            max_frame_bytes,
            sign_on_failures_per_minute,
            card_misses_per_minute,
            tls_cert,
            tls_key,
            snapshot_every,
            quotas,
            audit_stall_secs,
        } => cli::serve::serve(Config {
            data_dir: data,
            listen,
            max_frame_bytes,
            demo,
            sign_on_failures_per_minute,
            card_misses_per_minute,
            tls_cert,
            tls_key,
            snapshot_every,
            quotas: quotas.quotas(),
            audit_stall_secs,
        })?,
        Command::ServerKey { data } => cli::keys::server_key(&data)?,
        Command::Keygen { out } => cli::keys::keygen(&out)?,
        Command::Brand {
            command:
                BrandCommand::Create {
                    data,
                    name,
                    currency,
                    exponent,
                    owner_key,
                    id,
                },
        } => cli::brand::create(&data, name, currency, exponent, &owner_key, id)?,
        Command::Check { data } => cli::serve::check(&data)?,
        Command::Audit { command, tls } => return cli::audit::run(command, tls.client()?.as_ref()),
        Command::Admin(args) => return cli::admin::run(args),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn admin(args: &[&str]) -> AdminArgs {
        let argv = ["cardd", "admin"].into_iter().chain(args.iter().copied());
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Admin(a) => a,
            _ => panic!("not admin"),
        }
    }

    #[test]
    fn the_argument_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn admin_flags_work_before_or_after_the_subcommand() {
        let common = [
            "--connect",
            "10.0.0.1:7700",
            "--key",
            "owner.key",
            "--json",
            "--txn",
            "9",
            "--operator",
            "ann",
        ];
        let op = ["inquiry", "--card", "6000"];
        for argv in [
            [&common[..], &op[..]].concat(),
            [&op[..], &common[..]].concat(),
        ] {
            let a = admin(&argv);
            assert_eq!(a.connect, "10.0.0.1:7700", "{argv:?}");
            assert_eq!(a.key, Some(PathBuf::from("owner.key")), "{argv:?}");
            assert!(a.json, "{argv:?}");
            assert_eq!(a.txn, Some(9), "{argv:?}");
            assert_eq!(a.operator, "ann", "{argv:?}");
            assert!(matches!(a.op, AdminOp::Inquiry { ref card } if card == "6000"));
        }
        // Without the flags, the defaults.
        let a = admin(&["--key", "k", "create-store", "--name", "Mall"]);
        assert_eq!(
            (a.connect.as_str(), a.json, a.txn),
            ("127.0.0.1:7700", false, None)
        );
    }
}
