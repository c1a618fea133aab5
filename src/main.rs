//! The `cardd` command: run the daemon, manage brands and keys, and the
//! owner's console (`cardd admin`). This file holds the argument
//! definitions and the dispatch; each command's code is in `src/cli/`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use cardd::client::TlsClient;

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
    /// Run the daemon (flags, CARDD_<NAME> variables or a --config file).
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(cli::serve::ServeArgs),
    /// Check a `cardd serve --config` file and print the effective settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the server's public key in hex (of an existing data directory:
    /// the daemon's first start makes the key).
    #[command(after_help = "Example:\n  cardd server-key --data /var/lib/cardd")]
    ServerKey {
        /// Data directory.
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
    },
    /// Replace the server key (daemon stopped): every brand's chain gets a
    /// record, signed by the old key, that endorses the new one; later
    /// checkpoints and snapshots are signed by the new key. Auditors keep
    /// trusting the first key. Run it again if it was interrupted.
    #[command(after_help = "Example:\n  cardd rotate-server-key --data /var/lib/cardd")]
    RotateServerKey {
        /// Data directory.
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
    },
    /// Brand management on a stopped daemon's data directory.
    #[command(
        after_help = "Example:\n  cardd brand create --data cardd-data --name \"Tea House\" --owner-key tea-owner.key"
    )]
    Brand {
        #[command(subcommand)]
        command: BrandCommand,
    },
    /// Create an ed25519 key file (0600) and print its public key in hex.
    #[command(after_help = "Example:\n  cardd keygen --out mall-till.key")]
    Keygen {
        /// Where to write the key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Replay every brand's ledger and check it (daemon stopped).
    #[command(after_help = "Example:\n  cardd check --data /var/lib/cardd")]
    Check {
        /// Data directory.
        #[arg(long, default_value = "cardd-data")]
        data: PathBuf,
    },
    /// The owner's console: manage a brand over the protocol.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key inquiry --card 8000018134702849687"
    )]
    Admin(AdminArgs),
    /// The auditor's tools: export, verify and replay, consistency.
    #[command(
        after_help = "Example:\n  cardd audit export --connect 127.0.0.1:7700 --key tea-owner.key --out brand1.cardd"
    )]
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Back up a brand (owner key, running daemon) or every brand (data
    /// directory, stopped daemon) to export files that `cardd audit verify`
    /// checks. Run again on the same file: only what is new is added, after
    /// a consistency proof that the daemon's chain extends the file.
    #[command(
        after_help = "Examples:\n  cardd backup --connect 127.0.0.1:7700 --key owner.key --out brand-1.cardd-backup\n  \
                            cardd backup --data /var/lib/cardd --out-dir /srv/backup/cardd"
    )]
    Backup(BackupArgs),
    /// Rebuild a new data directory from backups: each is verified, then its
    /// records are written as they were, so the restored daemon continues
    /// the same chains.
    #[command(
        after_help = "Example:\n  cardd restore --data /var/lib/cardd-new --server-key-file server.key brand-1.cardd-backup brand-2.cardd-backup"
    )]
    Restore {
        /// The data directory to create (absent, or an empty directory).
        #[arg(long)]
        data: PathBuf,
        /// The key file of the server that signed the backups' checkpoints
        /// (the old data directory's server.key).
        #[arg(long)]
        server_key_file: PathBuf,
        /// The backup files, one per brand.
        #[arg(required = true)]
        backups: Vec<PathBuf>,
    },
}

/// `cardd backup`: online with an owner key, or offline with a data
/// directory and its server key.
#[derive(Args)]
struct BackupArgs {
    /// A running daemon's address (with --key and --out).
    #[arg(long, requires_all = ["key", "out"], conflicts_with_all = ["data", "out_dir"])]
    connect: Option<String>,
    /// The brand owner's key file.
    #[arg(long, requires = "connect")]
    key: Option<PathBuf>,
    /// The backup file (created, or brought up to date).
    #[arg(long, requires = "connect")]
    out: Option<PathBuf>,
    /// The server's public key in hex: refuse a daemon with another key.
    #[arg(long, requires = "connect")]
    server_key: Option<String>,
    /// A stopped daemon's data directory (with --out-dir): every brand,
    /// with the server key found there.
    #[arg(long, requires = "out_dir")]
    data: Option<PathBuf>,
    /// Where `--data` backups go, one `brand-ID.cardd-backup` per brand.
    #[arg(long, requires = "data")]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Examples shown under `cardd serve --help`.
const SERVE_EXAMPLES: &str = "Examples:
  cardd serve --data /var/lib/cardd --listen 0.0.0.0:7700 --http-listen 127.0.0.1:9700
  CARDD_LOG_FORMAT=json cardd serve --config /etc/cardd/cardd.toml
Precedence: flag > CARDD_<NAME> environment variable > --config file > default.
SIGTERM or SIGINT shuts down gracefully; a second signal exits at once.";

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a TOML settings file (naming any bad key or value) and
    /// print the effective settings, CARDD_ variables included.
    #[command(after_help = "Example:\n  cardd config check /etc/cardd/cardd.toml")]
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// How `admin` and `audit` reach a daemon that serves TLS.
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
    #[command(
        after_help = "Example:\n  cardd audit export --connect 127.0.0.1:7700 --key tea-owner.key --out brand1.cardd"
    )]
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
    #[command(
        after_help = "Example:\n  cardd audit verify brand1.cardd --server-key $(cardd server-key --data cardd-data)"
    )]
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
    #[command(
        after_help = "Example:\n  cardd audit consistency old.ckpt new.ckpt --server-key $SERVER_KEY --export brand1.cardd"
    )]
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
    #[command(
        after_help = "Example:\n  cardd brand create --data cardd-data --name \"Tea House\" --owner-key tea-owner.key"
    )]
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
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key create-store --name Downtown"
    )]
    CreateStore {
        #[arg(long)]
        name: String,
    },
    /// Enrol a terminal's public key to a store.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key enroll-terminal --store 1 --key-out mall-till.key"
    )]
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
    #[command(after_help = "Example:\n  cardd admin --key tea-owner.key issue-card")]
    IssueCard {
        #[arg(long)]
        card: Option<String>,
    },
    /// Block a card.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key block-card --card 8000018134702849687 --reason lost"
    )]
    BlockCard {
        #[arg(long)]
        card: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Unblock a card.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key unblock-card --card 8000018134702849687"
    )]
    UnblockCard {
        #[arg(long)]
        card: String,
    },
    /// Replace a lost card: value and points move to the new number.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key replace-card --card 8000018134702849687"
    )]
    ReplaceCard {
        #[arg(long)]
        card: String,
        /// The new number (default: a fresh random one).
        #[arg(long)]
        new: Option<String>,
    },
    /// Set the bonus, points and tier rules from a JSON file.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key set-rules --file rules.json"
    )]
    SetRules {
        #[arg(long)]
        file: PathBuf,
    },
    /// Revoke a terminal (a stolen or retired till): it can no longer sign on.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key disable-terminal --terminal 2 --reason stolen"
    )]
    DisableTerminal {
        #[arg(long)]
        terminal: u32,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Restore a disabled terminal.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key enable-terminal --terminal 2"
    )]
    EnableTerminal {
        #[arg(long)]
        terminal: u32,
    },
    /// Look up a card.
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key inquiry --card 8000018134702849687"
    )]
    Inquiry {
        #[arg(long)]
        card: String,
    },
    /// Load value onto a card from the head office, an online platform or
    /// a company's order (a TOP_UP record of store 0).
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key topup --card 8000018134702849687 --amount 100.00 --channel online --reference ORD-1"
    )]
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
    #[command(
        after_help = "Example:\n  cardd admin --key tea-owner.key issue-cards --count 50 --load 100.00 --channel corporate --reference PO-7 --out cards.csv"
    )]
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
    /// Read a report from the books: a table, --json or --csv
    /// (docs/reports.md).
    Report(cli::report::ReportArgs),
    /// List stores, terminals or cards.
    List {
        /// Print CSV.
        #[arg(long)]
        csv: bool,
        #[command(subcommand)]
        kind: cli::list::ListKind,
    },
    /// Name a card's holder. The name and phone go to the daemon's holder
    /// store, never into the ledger (it keeps a commitment only); the card
    /// becomes named (docs/security.md).
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key set-holder --card 8000018134702849687 --name 'Li Na' --phone +8613900139000"
    )]
    SetHolder {
        #[arg(long)]
        card: String,
        /// The holder's name; `-` reads it from standard input (the first
        /// line), keeping it out of the process list and shell history.
        #[arg(long)]
        name: String,
        /// An optional + then 5 to 20 digits; `-` reads it from standard
        /// input (after the name, if that is `-` too).
        #[arg(long)]
        phone: String,
    },
    /// The cards whose holder has this phone number.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key find-card --phone +8613900139000"
    )]
    FindCard {
        #[arg(long)]
        phone: String,
    },
    /// Erase a card's holder for good (name, phone and the commitment's
    /// key); the card becomes anonymous, the ledger still verifies.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key erase-holder --card 8000018134702849687"
    )]
    EraseHolder {
        #[arg(long)]
        card: String,
    },
    /// Set (or reset) a card's PIN; lifts a PIN lock too.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key set-pin --card 8000018134702849687 --pin 2468"
    )]
    SetPin {
        #[arg(long)]
        card: String,
        /// 4 to 12 digits; sealed to the daemon's PIN key before it leaves.
        /// `-` reads it from standard input (not in the process list).
        #[arg(long)]
        pin: String,
    },
    /// Lift a card's PIN lock (after five wrong PINs).
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key unlock-pin --card 8000018134702849687"
    )]
    UnlockPin {
        #[arg(long)]
        card: String,
    },
    /// Print the rules in force as a file `set-rules` accepts.
    #[command(after_help = "Example:\n  cardd admin --key owner.key rules > rules.json")]
    Rules,
    /// Print a single-use link to the owner's web page (valid 10 minutes;
    /// the daemon's --http-listen serves it). Owner, auditor and
    /// store-manager keys (docs/web.md).
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key web-login --http 127.0.0.1:9100"
    )]
    WebLogin {
        /// The daemon's --http-listen address, as the browser reaches it.
        #[arg(long)]
        http: String,
    },
    /// Add a read-only key: an auditor (every report, exports, proofs) or
    /// a store manager (one store's reports and activity).
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key add-key --role store-manager --store 2 --key-out manager.key"
    )]
    AddKey {
        #[arg(long, value_parser = ["auditor", "store-manager"])]
        role: String,
        /// The store manager's store.
        #[arg(long)]
        store: Option<u32>,
        /// The key's public key in hex.
        #[arg(long, conflicts_with = "key_out")]
        public_key: Option<String>,
        /// Create a new key file and add its key.
        #[arg(long)]
        key_out: Option<PathBuf>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Remove a read-only key: it can no longer sign on.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key remove-key --key-file manager.key"
    )]
    RemoveKey {
        /// The key's public key in hex.
        #[arg(long, required_unless_present = "key_file")]
        public_key: Option<String>,
        /// Or the key file.
        #[arg(long, conflicts_with = "public_key")]
        key_file: Option<PathBuf>,
    },
    /// Correct a card's value: add (+) or take (-) paid value, or bonus
    /// value with --bonus. A CARD_ADJUSTED record with the reason.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key adjust --card 8000018134702849687 --amount -20.00 --reason \"till keyed 200 for 20\""
    )]
    Adjust {
        #[arg(long)]
        card: String,
        /// A signed decimal (e.g. -20.00 or +5.00).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// Adjust the bonus value instead of the paid value.
        #[arg(long)]
        bonus: bool,
        #[arg(long)]
        reason: String,
    },
    /// Void a till's top-up after its shift closed (within the refund
    /// window): its paid and bonus value leave the card.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key void-topup --seq 1042 --reason \"keyed twice\""
    )]
    VoidTopup {
        /// The top-up's record sequence number (on its receipt).
        #[arg(long)]
        seq: u64,
        #[arg(long)]
        reason: String,
    },
    /// Close a card for good: the paid value is cashed out, the bonus
    /// forfeited, the points dropped.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key close-card --card 8000018134702849687 --reason \"member left\""
    )]
    CloseCard {
        #[arg(long)]
        card: String,
        #[arg(long)]
        reason: String,
    },
    /// Extend a card's validity: valid through --until (a UTC date), or
    /// with --never, without end.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key extend-card --card 8000018134702849687 --until 2031-12-31"
    )]
    ExtendCard {
        #[arg(long)]
        card: String,
        /// The last day the card works, YYYY-MM-DD (UTC).
        #[arg(long, required_unless_present = "never", conflicts_with = "never")]
        until: Option<String>,
        /// The card never expires.
        #[arg(long)]
        never: bool,
    },
    /// Replace the owner key with the key in --new-key (signed by the
    /// current key, with the new key's proof): the old key stops working
    /// at once and its sessions close.
    #[command(
        after_help = "Example:\n  cardd keygen --out owner-2026.key\n  cardd admin --key owner.key rotate-owner-key --new-key owner-2026.key"
    )]
    RotateOwnerKey {
        /// The new owner key file (cardd keygen).
        #[arg(long)]
        new_key: PathBuf,
    },
    /// Give a terminal a new key under the same terminal id (its store,
    /// transaction ids and shift stay); the old key's sessions close.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key rekey-terminal --terminal 2 --key-out mall-till-2.key"
    )]
    RekeyTerminal {
        #[arg(long)]
        terminal: u32,
        /// The terminal's new public key in hex.
        #[arg(long, conflicts_with = "key_out")]
        public_key: Option<String>,
        /// Create a new key file for the terminal.
        #[arg(long)]
        key_out: Option<PathBuf>,
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
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) if e.use_stderr() && json_asked() => {
            fail_json("USAGE", e.render().to_string().trim());
            e.exit()
        }
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        // Lost output turns a success into a failure; another code (3:
        // `--compare` found differences) stands.
        Ok(code) if code == ExitCode::SUCCESS && cardd::stdout::write_failed() => ExitCode::FAILURE,
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

fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    // serve chooses its log format from its settings; the rest log text.
    if let Command::Serve(args) = cli.command {
        let serve_matches = matches.subcommand_matches("serve").expect("serve");
        let settings = args.settings(serve_matches)?;
        cli::serve::init_logs(settings.log_format);
        cli::serve::serve(settings)?;
        return Ok(ExitCode::SUCCESS);
    }
    cli::serve::init_logs(cardd::config::LogFormat::Text);
    match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => cli::serve::config_check(&file)?,
        Command::ServerKey { data } => cli::keys::server_key(&data)?,
        Command::Keygen { out } => cli::keys::keygen(&out)?,
        Command::RotateServerKey { data } => cli::keys::rotate_server_key(&data)?,
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
        Command::Backup(args) => backup(args)?,
        Command::Restore {
            data,
            server_key_file,
            backups,
        } => cli::backup::restore(&data, &server_key_file, &backups)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn backup(a: BackupArgs) -> anyhow::Result<()> {
    match (a.connect, a.key, a.out, a.data, a.out_dir) {
        (Some(addr), Some(key), Some(out), None, None) => cli::backup::backup_online(
            &addr,
            &key,
            &out,
            a.tls.client()?.as_ref(),
            a.server_key.as_deref(),
        ),
        (None, None, None, Some(data), Some(out_dir)) => {
            cli::backup::backup_offline(&data, &out_dir)
        }
        _ => anyhow::bail!(
            "give --connect ADDR --key OWNER_KEY --out FILE, or --data DIR --out-dir DIR"
        ),
    }
}

#[cfg(test)]
mod tests {
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

    /// Every command that runs something shows an example in its --help.
    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            let leaf = cmd.get_subcommands().next().is_none();
            let help = cmd
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            if leaf && !help.contains("Example") {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "cardd".into(), &mut missing);
        assert!(missing.is_empty(), "no example in --help: {missing:?}");
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
