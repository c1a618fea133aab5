//! `terminal-sim`: a cashier terminal for `cardd` on the command line.
//!
//! One operation per call: it signs on with the terminal's key, sends one
//! signed request and prints the answer, either as a cashier's receipt or,
//! with `--json`, as one JSON object on one line. Exit code 0 means the
//! server approved, 2 that it refused (with a typed error code), 1 that the
//! call itself failed (usage, key file, connection, no answer).
//!
//! The terminal remembers its next transaction id and its own shift totals
//! in a state directory of its own (see `state.rs`), so that `close-shift`
//! can compare them with the server's.
//!
//! With `--proof` the terminal asks for the record's inclusion proof and
//! checks it against the server's signed checkpoint (`proof.rs`).
//!
//! `terminal-sim bench` is a load generator: many terminals, each a real
//! connection with its own enrolled key, provisioned through the owner key
//! (see `bench/`).
#![warn(missing_docs)]

/// `println!` that survives a closed pipe (see `output::print_line`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print_line(format_args!($($arg)*))
    };
}

mod bench;
mod output;
mod proof;
mod state;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};

use cardd::client::{connect_to, ClientError, TlsClient};
use cardd::crypto::read_key_file;
use cardd::error::Refusal;
use cardd::pb::{self, request::Op};
use cardd::render::parse_amount;

use output::{
    failed, failure_code, not_active, print_reply, refused, short_of_funds, Advice, Copy, Failure,
    EXIT_FAILED,
};
use proof::ProofCheck;
use state::Totals;
use terminal::Terminal;

/// A cashier terminal for cardd: one operation per call.
#[derive(Parser, Debug)]
#[command(name = "terminal-sim", version)]
struct Cli {
    /// Address of the cardd daemon; with replication (docs/replication.md)
    /// the brand's nodes, comma-separated (`A,B`): tried in order, a node
    /// that is down or not active for the brand (NOT_ACTIVE) passes the
    /// till on to the next. `bench` takes one address.
    #[arg(
        long,
        value_name = "ADDR[,ADDR…]",
        default_value = "127.0.0.1:7700",
        env = "CARDD_CONNECT",
        global = true
    )]
    connect: String,
    /// This terminal's ed25519 key file (hex seed, mode 0600), as written
    /// when the owner enrolled the terminal. Required for every operation
    /// but `bench`.
    #[arg(long, value_name = "TERMINAL_KEY", global = true)]
    key: Option<PathBuf>,
    /// Where the terminal keeps its state (next transaction id, shift
    /// totals, its recent signed requests): a directory of its own, mode
    /// 0700, one file (0600) per terminal key, never inside a daemon's data
    /// directory. Default: $XDG_STATE_HOME/cardd-terminal-sim, else
    /// ~/.local/state/cardd-terminal-sim.
    #[arg(
        long,
        value_name = "DIR",
        env = "TERMINAL_SIM_STATE_DIR",
        global = true
    )]
    state_dir: Option<PathBuf>,
    /// Print exactly one JSON object per line on stdout instead of a
    /// receipt (bench: one JSON object with the whole report).
    #[arg(long, global = true)]
    json: bool,
    /// Ask for the record's inclusion proof and verify it: the record's hash
    /// is in the Merkle tree of a checkpoint signed by the server key. A
    /// proof that does not verify makes the call fail (exit code 1).
    #[arg(long, global = true)]
    proof: bool,
    /// The server's public key (hex) that checkpoints must be signed by
    /// (`cardd server-key`). Without it, the key the server presents at
    /// sign-on is trusted (trust on first use).
    #[arg(long, value_name = "HEX", requires = "proof", global = true)]
    server_key: Option<String>,
    /// Transaction id for a state-changing operation (default: the next
    /// unused one; from 1). Reusing an id with the same operation is a
    /// retry. For `status`, the id to look up (required).
    // One global flag serves both meanings: clap copies a subcommand's
    // `--txn` into a global of the same name, so `status` cannot keep its own.
    #[arg(long, value_name = "ID", global = true)]
    txn: Option<u64>,
    /// The PIN the cardholder typed (purchase, redeem-points; set-pin:
    /// the old PIN). It leaves this process only sealed to the daemon's
    /// PIN key, bound to this one request.
    #[arg(long, value_name = "PIN", global = true)]
    pin: Option<String>,
    /// Cashier name recorded with the transaction.
    #[arg(long, value_name = "NAME", default_value = "cashier", global = true)]
    operator: String,
    /// Speak TLS to the daemon (`cardd serve --tls-cert ...`), trusting
    /// only the certificates in this PEM file (a CA, or the daemon's
    /// self-signed certificate).
    #[arg(long, value_name = "PEM", global = true)]
    tls_ca: Option<PathBuf>,
    /// The name the daemon's certificate must carry (with --tls-ca).
    #[arg(long, value_name = "NAME", default_value = "localhost", global = true)]
    tls_server_name: String,
    /// Seconds to wait for the connection and for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), global = true)]
    timeout: u64,
    /// The operation.
    #[command(subcommand)]
    command: Command,
}

/// Terminal operations, and the load generator.
#[derive(Subcommand, Debug)]
enum Command {
    /// Show a card's balance, points and tier.
    Inquiry {
        /// The card number (19 digits).
        #[arg(long)]
        card: String,
    },
    /// Pay a bill from a card.
    Purchase {
        /// The card number (19 digits).
        #[arg(long)]
        card: String,
        /// The bill, a decimal in the brand's currency (e.g. 12.50).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// If the card holds less, take what it has and report what is
        /// still due (split tender) instead of declining.
        #[arg(long)]
        partial: bool,
        /// The till's category code (e.g. bakery): campaigns limited to a
        /// category cover only purchases that name it.
        #[arg(long, default_value = "")]
        category: String,
        /// Loyalty points to spend as payment (a multiple of the brand's
        /// points_redemption unit); the card's value pays the rest.
        #[arg(long, default_value_t = 0)]
        points: i64,
    },
    /// Load value onto a card (the brand's bonus rule may add bonus value).
    #[command(alias = "top-up")]
    Topup {
        /// The card number (19 digits).
        #[arg(long)]
        card: String,
        /// The value loaded (the face value), a decimal (e.g. 100.00).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// A sale below face value: what the customer paid (e.g. 90.00 for
        /// 100.00 of value). Default: the face value.
        #[arg(long, allow_hyphen_values = true)]
        price: Option<String>,
        /// The order or receipt number kept on the record.
        #[arg(long, default_value = "")]
        reference: String,
    },
    /// Refund part or all of a purchase made at this store.
    Refund {
        /// The purchase's record sequence number (printed on its receipt).
        #[arg(long, value_name = "RECORD_SEQ")]
        seq: u64,
        /// The amount to refund, a decimal (e.g. 12.50).
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
    },
    /// Void a transaction of this terminal, e.g. one whose answer never came.
    Reverse {
        /// The transaction id of the request to void.
        #[arg(long, value_name = "ID")]
        original_txn: u64,
    },
    /// Spend a card's points on a reward.
    RedeemPoints {
        /// The card number (19 digits).
        #[arg(long)]
        card: String,
        /// How many points.
        #[arg(long, allow_negative_numbers = true)]
        points: i64,
        /// What the points were spent on (kept in the record).
        #[arg(long, default_value = "")]
        reward: String,
    },
    /// Set the card's PIN with the cardholder at the till: a first PIN
    /// with the card present; a change needs the old one (`--pin OLD`).
    SetPin {
        /// The card number (19 digits).
        #[arg(long)]
        card: String,
        /// The new PIN the cardholder typed (4 to 12 digits).
        #[arg(long, value_name = "PIN")]
        new_pin: String,
    },
    /// Close the shift: send this terminal's totals, which the server
    /// compares with its own, then start a new shift.
    CloseShift,
    /// Ask what the server holds for one of this terminal's transaction ids.
    /// (`status --txn ID`: the transaction id to look up.)
    Status,
    /// Load generator: provisions its own store, terminals and funded cards
    /// with the owner key, then drives signed traffic from many terminals
    /// and reports throughput, latency percentiles and errors.
    Bench(bench::BenchArgs),
}

impl Command {
    /// True for operations that change nothing and use no transaction id.
    fn is_read_only(&self) -> bool {
        matches!(self, Command::Inquiry { .. } | Command::Status)
    }

    /// True for operations whose receipt goes to the customer (and carries
    /// the brand's promotion line); a shift close or a status is the shop's.
    fn for_customer(&self) -> bool {
        !matches!(
            self,
            Command::CloseShift | Command::Status | Command::Bench(_)
        )
    }

    /// The card and the bill of a purchase, for advice on a refusal.
    fn purchase(&self) -> Option<(&str, &str)> {
        match self {
            Command::Purchase { card, amount, .. } => Some((card, amount)),
            _ => None,
        }
    }

    /// The card an operation names.
    fn card(&self) -> Option<&str> {
        match self {
            Command::Inquiry { card }
            | Command::Purchase { card, .. }
            | Command::Topup { card, .. }
            | Command::RedeemPoints { card, .. }
            | Command::SetPin { card, .. } => Some(card),
            _ => None,
        }
    }

    /// The name of the subcommand, for messages.
    fn name(&self) -> &'static str {
        match self {
            Command::Inquiry { .. } => "inquiry",
            Command::Status => "status",
            _ => "this operation",
        }
    }

    /// The protocol operation, with amounts converted to minor units of a
    /// currency with `exponent` decimals; `txn` is `--txn` (the id that
    /// `status` looks up).
    fn to_op(&self, exponent: u32, totals: &Totals, txn: Option<u64>) -> anyhow::Result<Op> {
        let amount = |text: &str| amount_arg("--amount", text, exponent);
        Ok(match self {
            Command::Inquiry { card } => Op::Inquiry(pb::Inquiry { card: card.clone() }),
            Command::Purchase {
                card,
                amount: a,
                partial,
                category,
                points,
            } => Op::Purchase(pb::Purchase {
                card: card.clone(),
                amount_minor: amount(a)?,
                allow_partial: *partial,
                category: category.clone(),
                points: *points,
                ..Default::default()
            }),
            Command::Topup {
                card,
                amount: a,
                price,
                reference,
            } => Op::TopUp(pb::TopUp {
                card: card.clone(),
                amount_minor: amount(a)?,
                reference: reference.clone(),
                price_minor: match price {
                    Some(p) => amount_arg("--price", p, exponent)?,
                    None => 0,
                },
                ..Default::default()
            }),
            Command::Refund { seq, amount: a } => Op::Refund(pb::Refund {
                original_seq: *seq,
                amount_minor: amount(a)?,
            }),
            Command::Reverse { original_txn } => Op::Reversal(pb::Reversal {
                original_txn_id: *original_txn,
            }),
            Command::RedeemPoints {
                card,
                points,
                reward,
            } => Op::RedeemPoints(pb::RedeemPoints {
                card: card.clone(),
                points: *points,
                reward: reward.clone(),
                ..Default::default()
            }),
            // The PINs are sealed once the txn id is known (`Terminal::submit`).
            Command::SetPin { card, .. } => Op::SetPin(pb::SetPin {
                card: card.clone(),
                ..Default::default()
            }),
            Command::CloseShift => Op::CloseShift(pb::CloseShift {
                terminal_totals: Some(totals.into()),
            }),
            Command::Status => Op::TxnStatus(pb::TxnStatus {
                txn_id: txn.unwrap_or_default(),
            }),
            Command::Bench(_) => bail!("bench is not a terminal operation"),
        })
    }
}

/// Parses the decimal amount given to `flag` in minor units; a negative,
/// malformed or over-precise amount is a [`Failure`] with its own code.
fn amount_arg(flag: &str, text: &str, exponent: u32) -> Result<i64, Failure> {
    parse_amount(text, exponent).map_err(|e| Failure {
        code: if text.starts_with('-') {
            "AMOUNT_OUT_OF_RANGE"
        } else {
            "INVALID_ARGUMENT"
        },
        message: format!("{flag}: {e}"),
    })
}

/// Parses the `--server-key` hex into a valid ed25519 public key.
fn parse_server_key(hex_key: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(hex_key.trim()).context("server key is not hex")?;
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("server key must be 32 bytes"))?;
    cardd::crypto::parse_public_key(&key)
        .ok_or_else(|| anyhow!("server key is not a valid ed25519 key"))?;
    Ok(key)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS; // help and version
            }
            // Usage errors exit 1 (2 means a refusal); a script that asked
            // for JSON gets one object all the same.
            if std::env::args_os().any(|a| a == "--json") {
                outln!(
                    "{}",
                    cardd::render::failure_json("USAGE", e.render().to_string().trim())
                );
            }
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let json = cli.json;
    // The load generator drives many connections: a multi-thread runtime
    // (one worker per core). One terminal operation needs one thread.
    let runtime = match &cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terminal-sim: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => failed(json, failure_code(&e), &format!("{e:#}")),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let tls = cli
        .tls_ca
        .as_deref()
        .map(|ca| TlsClient::from_ca_file(ca, &cli.tls_server_name))
        .transpose()
        .context("--tls-ca")?;
    if let Command::Bench(args) = &cli.command {
        if cli.key.is_some() || cli.txn.is_some() || cli.proof {
            bail!(
                "bench makes its own terminals: it takes --owner-key, not --key, --txn or --proof"
            );
        }
        return bench::run(&cli.connect, tls.as_ref(), cli.json, cli.timeout, args).await;
    }
    check_usage(&cli).map_err(|e| Failure {
        code: "USAGE",
        message: e.to_string(),
    })?;
    let pinned = cli
        .server_key
        .as_deref()
        .map(parse_server_key)
        .transpose()
        .context("--server-key")?;
    let key_path = cli.key.clone().ok_or_else(|| Failure {
        code: "USAGE",
        message: "--key TERMINAL_KEY is required (the terminal's key file)".into(),
    })?;
    let state_dir = state::state_dir(cli.state_dir.as_deref())?;
    let client = match sign_on(&cli, &key_path, tls.as_ref()).await? {
        Ok(client) => client,
        Err(r) => return Ok(refused(cli.json, &r, None, None)),
    };
    let timeout = Duration::from_secs(cli.timeout);
    let (mut term, warnings) = Terminal::open(client, &key_path, &state_dir, timeout)?;
    for w in warnings {
        eprintln!("terminal-sim: warning: {w}");
    }
    term.client.operator = cli.operator.clone();
    term.want_proof = cli.proof;
    term.pins = terminal::Pins {
        present: cli.pin.clone(),
        new: match &cli.command {
            Command::SetPin { new_pin, .. } => Some(new_pin.clone()),
            _ => None,
        },
    };
    let op = cli.command.to_op(
        term.client.session.currency_exponent,
        &term.state.shift,
        cli.txn,
    )?;
    let own_txn = cli.txn.filter(|_| !cli.command.is_read_only());
    let outcome = term.submit(own_txn, op).await?;
    let code = match &outcome.result {
        Ok(reply) => approved(&cli, reply, &outcome, &term, pinned),
        Err(r) => {
            let advice = advise(&cli.command, r, &mut term).await;
            refused(cli.json, r, Some(&term.client.session), advice.as_ref())
        }
    };
    term.save()
        .context("the answer above was received, but the terminal's state was not saved")?;
    Ok(code)
}

/// Refuses flag combinations that make no sense, before connecting.
fn check_usage(cli: &Cli) -> anyhow::Result<()> {
    if cli.txn == Some(0) && !matches!(cli.command, Command::Status) {
        bail!("--txn: transaction ids start at 1");
    }
    if cli.txn.is_some() && matches!(cli.command, Command::Inquiry { .. }) {
        bail!("--txn is for state-changing operations and status; inquiry uses no transaction id");
    }
    if cli.txn.is_none() && matches!(cli.command, Command::Status) {
        bail!("status needs the id to look up: `status --txn ID`");
    }
    let takes_pin = matches!(
        cli.command,
        Command::Purchase { .. } | Command::RedeemPoints { .. } | Command::SetPin { .. }
    );
    if cli.pin.is_some() && !takes_pin {
        bail!("--pin is for purchase, redeem-points and set-pin");
    }
    if cli.proof && cli.command.is_read_only() {
        bail!(
            "--proof is for state-changing operations: {} writes no ledger record to prove",
            cli.command.name()
        );
    }
    Ok(())
}

/// Connects and signs on with the key at `key_path` within `--timeout`;
/// the inner error is the server's refusal of the sign-on.
async fn sign_on(
    cli: &Cli,
    key_path: &std::path::Path,
    tls: Option<&TlsClient>,
) -> anyhow::Result<Result<cardd::client::AnyClient, cardd::error::Refusal>> {
    let key = read_key_file(key_path)?;
    // `--connect A,B`: the brand's nodes (docs/replication.md), tried in
    // order; one that cannot be reached or is not active for the brand
    // (NOT_ACTIVE) passes the till on to the next. The last one's answer
    // stands.
    let addrs: Vec<&str> = cli.connect.split(',').map(str::trim).collect();
    for (i, addr) in addrs.iter().enumerate() {
        let last = i + 1 == addrs.len();
        match sign_on_at(cli, addr, key.clone(), tls).await {
            Ok(Err(r)) if !last && r.code == pb::ErrorCode::NotActive => {}
            Err(_) if !last => {}
            answer => return answer,
        }
    }
    unreachable!("--connect names at least one address")
}

/// [`sign_on`] at one address.
async fn sign_on_at(
    cli: &Cli,
    addr: &str,
    key: ed25519_dalek::SigningKey,
    tls: Option<&TlsClient>,
) -> anyhow::Result<Result<cardd::client::AnyClient, cardd::error::Refusal>> {
    let timeout = Duration::from_secs(cli.timeout);
    match tokio::time::timeout(timeout, connect_to(addr, key, tls)).await {
        Err(_) => Err(Failure {
            code: "CONNECTION_FAILED",
            message: format!("connecting to {addr}: no sign-on within {}s", cli.timeout),
        }
        .into()),
        Ok(Err(e)) => match e.error {
            ClientError::Refused(r) => Ok(Err(r)),
            _ => Err(e.into()),
        },
        Ok(Ok(c)) => Ok(Ok(c)),
    }
}

/// Asks the server what explains a refusal the cashier can act on: the
/// balance on INSUFFICIENT_FUNDS (with the `--partial` way out), whether a
/// CARD_BLOCKED card was blocked or replaced. An inquiry changes nothing;
/// if it fails, the refusal is printed without advice.
async fn advise(command: &Command, r: &Refusal, term: &mut Terminal) -> Option<Advice> {
    let code = r.code;
    if code != pb::ErrorCode::InsufficientFunds && code != pb::ErrorCode::CardBlocked {
        return None;
    }
    let card = command.card()?.to_string();
    let request = term.client.request(0, Op::Inquiry(pb::Inquiry { card }));
    let view = term.client.call(&request).await.ok()?.card?;
    let session = &term.client.session;
    match command.purchase() {
        Some((_, bill)) if code == pb::ErrorCode::InsufficientFunds => {
            let bill = parse_amount(bill, session.currency_exponent).ok()?;
            Some(short_of_funds(view.balance_minor, bill, session))
        }
        _ => not_active(&view),
    }
}

/// Prints an approved answer, with its proof checked when `--proof` asked;
/// a proof that does not verify makes the call fail.
fn approved(
    cli: &Cli,
    reply: &pb::Reply,
    outcome: &terminal::Outcome,
    term: &Terminal,
    pinned: Option<[u8; 32]>,
) -> ExitCode {
    let proof = cli.proof.then(|| {
        let mut check = ProofCheck::run(
            reply,
            term.client.session.brand_id,
            pinned,
            term.client.server_key,
        );
        if let Err(e) = &mut check.result {
            if reply.proof.is_none() && !outcome.request.want_proof {
                e.push_str(&format!(
                    " (this retry resent the original request of transaction {}, \
                     which did not ask for a proof)",
                    outcome.request.txn_id
                ));
            }
        }
        check
    });
    let copy = Copy {
        customer: cli.command.for_customer(),
        cashier: &cli.operator,
    };
    print_reply(cli.json, reply, outcome, term, proof.as_ref(), &copy);
    match proof.as_ref().map(|p| &p.result) {
        Some(Err(e)) => {
            let seq = reply.receipt.as_ref().map_or(0, |r| r.seq);
            eprintln!(
                "terminal-sim: PROOF FAILED: {e}. The server approved the transaction \
                 (record {seq}), but it is not proven to be in the server's signed ledger."
            );
            ExitCode::from(EXIT_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("terminal-sim").chain(args.iter().copied()))
            .expect("parses")
    }

    #[test]
    fn the_argument_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn status_keeps_its_own_txn() {
        for args in [
            ["--key", "k", "status", "--txn", "5"],
            ["--txn", "5", "--key", "k", "status"],
        ] {
            let cli = parse(&args);
            assert!(matches!(cli.command, Command::Status));
            assert_eq!(cli.txn, Some(5));
        }
    }
}
