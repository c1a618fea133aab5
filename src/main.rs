//! The `cardd` command: run the daemon, manage brands and keys, and the
//! owner's console (`cardd admin`).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use cardd::client::{Client, ClientError, TlsClient};
use cardd::crypto::{load_or_create_key, read_key_file, write_key_file};
use cardd::ledger::BrandLedger;
use cardd::pb::{self, request::Op};
use cardd::render::{error_json, receipt_text, reply_json};
use cardd::server::{self, Config};

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
    /// and print every card and the totals. Exits non-zero on the first failure.
    Verify {
        /// The export file.
        file: PathBuf,
        /// The server's public key in hex (the only key trusted).
        #[arg(long)]
        server_key: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
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
    /// Daemon address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    connect: String,
    /// The brand owner's key file.
    #[arg(long)]
    key: PathBuf,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Transaction id to use (default: one past the last the server holds).
    #[arg(long)]
    txn: Option<u64>,
    /// Staff name recorded as the operator.
    #[arg(long, default_value = "owner")]
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
}

/// The JSON form of the rules for `cardd admin set-rules` (see README).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    bonus_tiers: Vec<BonusTierFile>,
    #[serde(default = "one")]
    points_per_unit: i64,
    #[serde(default)]
    tiers: Vec<TierFile>,
    #[serde(default)]
    promotion_line: String,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BonusTierFile {
    min_load_minor: i64,
    #[serde(default)]
    fixed_bonus_minor: i64,
    #[serde(default)]
    bonus_bps: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    name: String,
    #[serde(default)]
    min_spend_minor: i64,
    #[serde(default)]
    min_visits: u32,
    #[serde(default = "thousand")]
    multiplier_milli: u32,
}

fn thousand() -> u32 {
    1000
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sled=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cardd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
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
        } => {
            let config = Config {
                data_dir: data,
                listen,
                max_frame_bytes,
                demo,
                sign_on_failures_per_minute,
                card_misses_per_minute,
                tls_cert,
                tls_key,
                snapshot_every,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(server::run(config, |r| {
                // A line scripts and tests can wait for.
                println!("cardd listening on {}", r.local_addr);
            }))?;
        }
        Command::ServerKey { data } => {
            let key = server::open_data_dir(&data)?;
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
        }
        Command::Keygen { out } => {
            let key = cardd::crypto::generate_key();
            write_key_file(&out, &key)?;
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
        }
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
        } => {
            brand_create(&data, name, currency, exponent, &owner_key, id)?;
        }
        Command::Check { data } => {
            let (_, _, ledgers) = server::load_checked(&data)?;
            for l in &ledgers {
                let (paid, bonus) = l.state.liability();
                println!(
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
            println!(
                "ok: {} brands replayed from their first record and match their checkpoints and snapshots",
                ledgers.len()
            );
        }
        Command::Audit { command, tls } => return audit(command, tls.client()?.as_ref()),
        Command::Admin(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            return rt.block_on(admin(args));
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn audit(command: AuditCommand, tls: Option<&TlsClient>) -> anyhow::Result<std::process::ExitCode> {
    use cardd::audit::cli;
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match command {
        AuditCommand::Export {
            connect,
            key,
            data,
            brand,
            out,
        } => match (connect, key, data, brand) {
            (Some(addr), Some(key), None, None) => {
                rt()?.block_on(cli::export_online(&addr, &key, &out, tls))?
            }
            (None, None, Some(data), Some(brand)) => cli::export_offline(&data, brand, &out)?,
            _ => bail!("give --connect ADDR --key OWNER_KEY, or --data DIR --brand ID"),
        },
        AuditCommand::Verify {
            file,
            server_key,
            json,
            old_checkpoint,
            save_checkpoint,
            compare,
            key,
        } => {
            let report = cli::verify_file(
                &file,
                cli::parse_server_key(&server_key)?,
                old_checkpoint.as_deref(),
            )?;
            cli::print_report(&report, json);
            if let (Some(path), Some(c)) = (save_checkpoint, &report.last_checkpoint) {
                cli::save_checkpoint(c, &path)?;
            }
            if let (Some(addr), Some(key)) = (compare, key) {
                let diffs = rt()?.block_on(cli::compare_live(&report, &addr, &key, tls))?;
                for d in &diffs {
                    eprintln!("DIFFERS: {d}");
                }
                if !diffs.is_empty() {
                    eprintln!("{} cards differ from the live daemon", diffs.len());
                    return Ok(std::process::ExitCode::from(3));
                }
                eprintln!("all {} cards match the live daemon", report.cards.len());
            }
        }
        AuditCommand::Consistency {
            old,
            new,
            server_key,
            export,
            connect,
            key,
        } => {
            let server_key = cli::parse_server_key(&server_key)?;
            let live = connect.as_deref().zip(key.as_deref());
            rt()?.block_on(cli::consistency(
                &old,
                &new,
                server_key,
                export.as_deref(),
                live,
                tls,
            ))?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn brand_create(
    data: &Path,
    name: String,
    currency: String,
    exponent: u32,
    owner_key: &Path,
    id: Option<u32>,
) -> anyhow::Result<()> {
    let (store, server_key, ledgers) = server::load(data)?;
    let id = match id {
        Some(id) => id,
        None => ledgers.iter().map(|l| l.brand_id()).max().unwrap_or(0) + 1,
    };
    if ledgers.len() >= cardd::limits::MAX_BRANDS {
        bail!("at most {} brands", cardd::limits::MAX_BRANDS);
    }
    let owner = load_or_create_key(owner_key)?;
    let owner_public = owner.verifying_key().to_bytes();
    for l in &ledgers {
        let s = &l.state;
        if s.owner_key == owner_public || s.terminals.values().any(|t| t.public_key == owner_public)
        {
            bail!(
                "that key is already enrolled in brand {} ({}); one key speaks for one brand",
                s.brand_id,
                s.name
            );
        }
    }
    let create = pb::CreateBrand {
        name,
        currency,
        currency_exponent: exponent,
        owner_public_key: owner.verifying_key().to_bytes().to_vec(),
    };
    BrandLedger::create(store, Arc::clone(&server_key), id, create)?;
    println!("{id}");
    Ok(())
}

async fn admin(args: AdminArgs) -> anyhow::Result<std::process::ExitCode> {
    let key = read_key_file(&args.key)?;
    let tls = args.tls.client()?;
    let mut client = Client::connect_with(args.connect.as_str(), key, tls.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    client.operator = args.operator.clone();
    let brand = client.session.brand_id;
    let txn = args.txn.unwrap_or(client.session.last_txn_id + 1);
    let op = match args.op {
        AdminOp::CreateStore { name } => Op::CreateStore(pb::CreateStore { name }),
        AdminOp::EnrollTerminal {
            store,
            public_key,
            key_out,
            label,
        } => {
            let public_key = match (public_key, key_out) {
                (Some(hex_key), None) => {
                    hex::decode(hex_key.trim()).context("public key is not hex")?
                }
                (None, Some(path)) => {
                    let k = cardd::crypto::generate_key();
                    write_key_file(&path, &k)?;
                    k.verifying_key().to_bytes().to_vec()
                }
                _ => bail!("give --public-key HEX or --key-out FILE"),
            };
            Op::EnrollTerminal(pb::EnrollTerminal {
                store_id: store,
                public_key,
                label,
            })
        }
        AdminOp::IssueCard { card } => Op::IssueCard(pb::IssueCard {
            card: card.unwrap_or_else(|| cardd::card_number::generate(brand)),
        }),
        AdminOp::BlockCard { card, reason } => Op::SetCardBlocked(pb::SetCardBlocked {
            card,
            blocked: true,
            reason,
        }),
        AdminOp::UnblockCard { card } => Op::SetCardBlocked(pb::SetCardBlocked {
            card,
            blocked: false,
            reason: String::new(),
        }),
        AdminOp::ReplaceCard { card, new } => Op::ReplaceCard(pb::ReplaceCard {
            old_card: card,
            new_card: new.unwrap_or_else(|| cardd::card_number::generate(brand)),
        }),
        AdminOp::SetRules { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r: RulesFile = serde_json::from_str(&text).context("rules file")?;
            Op::SetRules(pb::SetRules {
                rules: Some(pb::Rules {
                    bonus_tiers: r
                        .bonus_tiers
                        .into_iter()
                        .map(|b| pb::BonusTier {
                            min_load_minor: b.min_load_minor,
                            fixed_bonus_minor: b.fixed_bonus_minor,
                            bonus_bps: b.bonus_bps,
                        })
                        .collect(),
                    points_per_unit: r.points_per_unit,
                    tiers: r
                        .tiers
                        .into_iter()
                        .map(|t| pb::TierRule {
                            name: t.name,
                            min_spend_minor: t.min_spend_minor,
                            min_visits: t.min_visits,
                            multiplier_milli: t.multiplier_milli,
                        })
                        .collect(),
                    promotion_line: r.promotion_line,
                }),
            })
        }
        AdminOp::DisableTerminal { terminal, reason } => {
            Op::SetTerminalDisabled(pb::SetTerminalDisabled {
                terminal_id: terminal,
                disabled: true,
                reason,
            })
        }
        AdminOp::EnableTerminal { terminal } => Op::SetTerminalDisabled(pb::SetTerminalDisabled {
            terminal_id: terminal,
            disabled: false,
            reason: String::new(),
        }),
        AdminOp::Inquiry { card } => Op::Inquiry(pb::Inquiry { card }),
    };
    let req = client.request(txn, op);
    match client.call(&req).await {
        Ok(reply) => {
            if args.json {
                println!("{}", reply_json(&reply));
            } else {
                // The owner's console shows the full number (receipts mask it).
                if let Some(c) = &reply.card {
                    println!("Card number {}", c.card);
                }
                println!("{}", receipt_text(&reply, &client.session));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(ClientError::Refused(r)) => {
            if args.json {
                println!("{}", error_json(r.code as i32, &r.message));
            } else {
                eprintln!("refused: {} ({})", r.code.as_str_name(), r.message);
            }
            Ok(std::process::ExitCode::from(2))
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
