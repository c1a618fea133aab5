//! `terminal-sim`: a cashier terminal for `cardd` on the command line.
//!
//! One operation per call: it signs on with the terminal's key, sends one
//! signed request and prints the answer, either as a cashier's receipt or,
//! with `--json`, as one JSON object on one line. Exit code 0 means the
//! server approved, 2 that it refused (with a typed error code), 1 that the
//! call itself failed (usage, key file, connection, no answer).
//!
//! The terminal remembers its next transaction id and its own shift totals
//! in `<keyfile>.state.json` (see `state.rs`), so that `close-shift` can
//! compare them with the server's.
#![warn(missing_docs)]

mod output;
mod state;
mod terminal;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};

use cardd::client::{Client, ClientError};
use cardd::crypto::read_key_file;
use cardd::pb::{self, request::Op};
use cardd::render::parse_amount;

use output::{print_reply, refused, EXIT_FAILED};
use state::Totals;
use terminal::Terminal;

/// A cashier terminal for cardd: one operation per call.
#[derive(Parser, Debug)]
#[command(name = "terminal-sim", version)]
struct Cli {
    /// Address of the cardd daemon.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7700")]
    connect: String,
    /// This terminal's ed25519 key file (hex seed, mode 0600), as written
    /// when the owner enrolled the terminal. Its state is kept beside it in
    /// `<KEY>.state.json`.
    #[arg(long, value_name = "TERMINAL_KEY")]
    key: PathBuf,
    /// Print exactly one JSON object per line on stdout instead of a receipt.
    #[arg(long)]
    json: bool,
    /// Transaction id for a state-changing operation (default: the next
    /// unused one). Reusing an id with the same operation is a retry.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    txn: Option<u64>,
    /// Cashier name recorded with the transaction.
    #[arg(long, value_name = "NAME", default_value = "cashier")]
    operator: String,
    /// Seconds to wait for the connection and for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// The operation.
    #[command(subcommand)]
    command: Command,
}

/// Terminal operations. (A `bench` load generator will join them later.)
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
        #[arg(long)]
        amount: String,
        /// If the card holds less, take what it has and report what is
        /// still due (split tender) instead of declining.
        #[arg(long)]
        partial: bool,
    },
    /// Load value onto a card (the brand's bonus rule may add bonus value).
    #[command(alias = "top-up")]
    Topup {
        /// The card number (19 digits).
        #[arg(long)]
        card: String,
        /// The amount paid by the customer, a decimal (e.g. 100.00).
        #[arg(long)]
        amount: String,
    },
    /// Refund part or all of a purchase made at this store.
    Refund {
        /// The purchase's record sequence number (printed on its receipt).
        #[arg(long, value_name = "RECORD_SEQ")]
        seq: u64,
        /// The amount to refund, a decimal (e.g. 12.50).
        #[arg(long)]
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
        #[arg(long)]
        points: i64,
        /// What the points were spent on (kept in the record).
        #[arg(long, default_value = "")]
        reward: String,
    },
    /// Close the shift: send this terminal's totals, which the server
    /// compares with its own, then start a new shift.
    CloseShift,
    /// Ask what the server holds for one of this terminal's transaction ids.
    Status {
        /// The transaction id to look up.
        #[arg(long, value_name = "ID")]
        txn: u64,
    },
}

impl Command {
    /// True for operations that change nothing and use no transaction id.
    fn is_read_only(&self) -> bool {
        matches!(self, Command::Inquiry { .. } | Command::Status { .. })
    }

    /// The protocol operation, with amounts converted to minor units of a
    /// currency with `exponent` decimals.
    fn to_op(&self, exponent: u32, totals: &Totals) -> anyhow::Result<Op> {
        let amount =
            |text: &str| parse_amount(text, exponent).map_err(|e| anyhow!("--amount: {e}"));
        Ok(match self {
            Command::Inquiry { card } => Op::Inquiry(pb::Inquiry { card: card.clone() }),
            Command::Purchase {
                card,
                amount: a,
                partial,
            } => Op::Purchase(pb::Purchase {
                card: card.clone(),
                amount_minor: amount(a)?,
                allow_partial: *partial,
            }),
            Command::Topup { card, amount: a } => Op::TopUp(pb::TopUp {
                card: card.clone(),
                amount_minor: amount(a)?,
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
            }),
            Command::CloseShift => Op::CloseShift(pb::CloseShift {
                terminal_totals: Some(totals.into()),
            }),
            Command::Status { txn } => Op::TxnStatus(pb::TxnStatus { txn_id: *txn }),
        })
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not failures; usage errors exit 1 (2 means a refusal).
            return if e.use_stderr() {
                ExitCode::from(EXIT_FAILED)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terminal-sim: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("terminal-sim: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.txn.is_some() && cli.command.is_read_only() {
        anyhow::bail!(
            "--txn is for state-changing operations; inquiry and status use no transaction id \
             (status takes the id to look up after the subcommand: `status --txn ID`)"
        );
    }
    let key = read_key_file(&cli.key)?;
    let timeout = Duration::from_secs(cli.timeout);
    let client =
        match tokio::time::timeout(timeout, Client::connect(cli.connect.as_str(), key)).await {
            Err(_) => anyhow::bail!(
                "connecting to {}: no sign-on within {}s",
                cli.connect,
                cli.timeout
            ),
            Ok(Err(ClientError::Refused(r))) => return Ok(refused(cli.json, &r)),
            Ok(Err(e)) => anyhow::bail!("connecting to {}: {e}", cli.connect),
            Ok(Ok(c)) => c,
        };
    let (mut term, warnings) = Terminal::open(client, &cli.key, timeout)?;
    for w in warnings {
        eprintln!("terminal-sim: warning: {w}");
    }
    term.client.operator = cli.operator.clone();
    let op = cli
        .command
        .to_op(term.client.session.currency_exponent, &term.state.shift)?;
    let outcome = term.submit(cli.txn, op).await?;
    let code = match &outcome.result {
        Ok(reply) => {
            print_reply(cli.json, reply, &outcome, &term);
            ExitCode::SUCCESS
        }
        Err(r) => refused(cli.json, r),
    };
    term.save()
        .context("the answer above was received, but the terminal's state was not saved")?;
    Ok(code)
}
