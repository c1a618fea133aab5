//! `cardd admin`: the owner's console. One signed request per call; the
//! reply is printed as a receipt or one JSON line, a refusal exits with 2.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::CommandFactory;
use serde::Deserialize;

use cardd::client::{connect_to, ClientError};
use cardd::crypto::{read_key_file, write_key_file};
use cardd::pb::{self, request::Op};
use cardd::render::{error_json, failure_json, human_message, receipt_text, reply_json, Printer};

use super::changes::changed;
use super::{amount_arg, current_thread_runtime};
use crate::{AdminArgs, AdminOp, Cli, LoadChannel, SaleArgs};

/// Runs one `cardd admin` command against a daemon.
pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    current_thread_runtime()?.block_on(admin(args))
}

/// The owner key file. `--key` is a global flag (it may come before or
/// after the subcommand) and clap cannot require a global flag, so the
/// check is here, with clap's own usage error and exit code.
fn key_path(args: &AdminArgs) -> PathBuf {
    match &args.key {
        Some(key) => key.clone(),
        None => {
            if args.json {
                outln!("{}", failure_json("USAGE", "--key OWNER_KEY is required"));
            }
            let mut cli = Cli::command();
            // Built, the subcommand knows its name ("cardd admin") for the usage line.
            cli.build();
            cli.find_subcommand_mut("admin")
                .expect("admin is a subcommand")
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "the following required arguments were not provided:\n  --key <KEY>",
                )
                .exit()
        }
    }
}

async fn admin(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let key = read_key_file(&key_path(&args))?;
    let tls = args.tls.client()?;
    let mut client = connect_to(&args.connect, key, tls.as_ref()).await?;
    client.operator = args.operator.clone();
    let txn = args.txn.unwrap_or(client.session.last_txn_id + 1);
    if let AdminOp::IssueCards { .. } = &args.op {
        return super::issue_cards::run(&mut client, &args, txn).await;
    }
    if let AdminOp::WebLogin { http } = &args.op {
        return web_login(&mut client, http, args.json).await;
    }
    // Reads (reports, listings, rules) write nothing and print themselves.
    let (op, json) = (args.op, args.json);
    let (op, read) = owner_read(op, json);
    if let Some((req, format)) = read {
        return match req {
            Some(req) => super::report::run(&mut client, req, format).await,
            None => super::list::print_rules(&mut client, format).await,
        };
    }
    let op = match super::holder::prepare(&mut client, op.expect("not a read"), json, txn).await? {
        super::holder::Step::Exit(code) => return Ok(code),
        super::holder::Step::Send(op) => op,
        super::holder::Step::Other(op) => build_op(op, &client.session)?,
    };
    let req = client.request(txn, op);
    send(&mut client, &req, (json, &args.operator)).await
}

/// Sends one owner request and prints its answer or refusal (exit 2).
async fn send(
    client: &mut cardd::client::Client<cardd::client::ClientStream>,
    req: &pb::Request,
    (json, operator): (bool, &str),
) -> anyhow::Result<ExitCode> {
    match client.call(req).await {
        Ok(reply) => {
            print_answer(&reply, req, &client.session, (json, operator));
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Refused(r)) => Ok(print_refusal(&r, &client.session, json)),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Prints a refusal (one JSON line, or a line on stderr); exit code 2.
pub(super) fn print_refusal(r: &cardd::error::Refusal, s: &pb::SignOnOk, json: bool) -> ExitCode {
    if json {
        outln!("{}", error_json(r.code as i32, &r.message));
    } else {
        let message = human_message(&r.message, s.currency_exponent, &s.currency);
        eprintln!("refused: {} ({message})", r.code.as_str_name());
    }
    ExitCode::from(2)
}

/// `web-login`: asks the daemon for a single-use link (no record is
/// written) and prints it; the link is a secret, so it goes to standard
/// output only.
async fn web_login(
    client: &mut cardd::client::AnyClient,
    http: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let req = client.request(0, Op::WebLogin(pb::WebLogin {}));
    let reply = match client.call(&req).await {
        Ok(reply) => reply,
        Err(e) => return super::report::failed(e, super::report::Format::from_json(json)),
    };
    let Some(pb::reply::Detail::WebLogin(link)) = reply.detail else {
        bail!("the daemon answered web-login without a link");
    };
    let url = format!("http://{http}/login/{}", link.token);
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "link": url,
                "expires_ms": link.expires_ms,
                "role": link.role().as_str_name(),
                "store_id": link.store_id,
            })
        );
    } else {
        outln!("{url}");
        let until = cardd::render::utc_time(i64::try_from(link.expires_ms).unwrap_or(i64::MAX));
        eprintln!("single use, valid until {until}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints an approved answer: one JSON line, or what changed in words and
/// the owner's copy of the receipt (no promotion line: that is for
/// customers).
fn print_answer(
    reply: &pb::Reply,
    req: &pb::Request,
    session: &pb::SignOnOk,
    (json, operator): (bool, &str),
) {
    if json {
        outln!("{}", reply_json(reply));
        return;
    }
    if let Some(words) = req.op.as_ref().and_then(|op| changed(op, reply, session)) {
        outln!("{words}");
    }
    // The owner's console shows the full number (receipts mask it).
    if let Some(c) = &reply.card {
        outln!("Card number {}", c.card);
    }
    let printer = Printer {
        session,
        cashier: operator,
        customer: false,
        now_ms: now_ms(),
    };
    outln!("{}", receipt_text(reply, &printer));
}

/// The client's clock, Unix ms (for an answer that has no record).
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The request operation for one admin command in the owner's session.
fn build_op(op: AdminOp, session: &pb::SignOnOk) -> anyhow::Result<Op> {
    let brand = session.brand_id;
    let op = match super::safety::build_op(op, session)? {
        Ok(built) => return Ok(built),
        Err(other) => other,
    };
    Ok(match op {
        AdminOp::CreateStore { name } => Op::CreateStore(pb::CreateStore { name }),
        AdminOp::EnrollTerminal {
            store,
            public_key,
            key_out,
            label,
        } => Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: store,
            public_key: terminal_public_key(public_key, key_out)?,
            label,
        }),
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
        AdminOp::SetRules { file } => Op::SetRules(pb::SetRules {
            rules: Some(read_rules(&file)?),
        }),
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
        AdminOp::Topup { card, amount, sale } => {
            Op::TopUp(owner_load(card, &amount, &sale, session)?)
        }
        AdminOp::IssueCards { .. } => unreachable!("a run of many requests, see issue_cards"),
        AdminOp::AddKey {
            role,
            store,
            public_key,
            key_out,
            label,
        } => Op::AddKey(pb::AddKey {
            public_key: terminal_public_key(public_key, key_out)?,
            role: match role.as_str() {
                "auditor" => pb::KeyRole::Auditor as u32,
                _ => pb::KeyRole::StoreManager as u32,
            },
            store_id: store.unwrap_or(0),
            label,
        }),
        AdminOp::RemoveKey {
            public_key,
            key_file,
        } => Op::RemoveKey(pb::RemoveKey {
            public_key: match (public_key, key_file) {
                (Some(hex_key), _) => {
                    hex::decode(hex_key.trim()).context("public key is not hex")?
                }
                (None, Some(file)) => read_key_file(&file)?.verifying_key().to_bytes().to_vec(),
                (None, None) => bail!("give --public-key HEX or --key-file FILE"),
            },
        }),
        AdminOp::Report(_) | AdminOp::List { .. } | AdminOp::Rules => {
            unreachable!("reads, see owner_read")
        }
        AdminOp::SetHolder { .. }
        | AdminOp::FindCard { .. }
        | AdminOp::EraseHolder { .. }
        | AdminOp::SetPin { .. }
        | AdminOp::UnlockPin { .. } => unreachable!("see holder::prepare"),
        AdminOp::WebLogin { .. } => unreachable!("a read, see web_login"),
        _ => unreachable!("issue 15's operations, see safety::build_op"),
    })
}

/// An owner's top-up of `card`, amounts in the brand's minor units.
pub(super) fn owner_load(
    card: String,
    amount: &str,
    load: &SaleArgs,
    session: &pb::SignOnOk,
) -> anyhow::Result<pb::TopUp> {
    let exponent = session.currency_exponent;
    let amount_minor = amount_arg("--amount", amount, exponent)?;
    let price_minor = match &load.price {
        Some(p) => amount_arg("--price", p, exponent)?,
        None => 0,
    };
    let channel = match load.channel {
        LoadChannel::HeadOffice => pb::Channel::HeadOffice,
        LoadChannel::Online => pb::Channel::Online,
        LoadChannel::Corporate => pb::Channel::Corporate,
    };
    Ok(pb::TopUp {
        card,
        amount_minor,
        channel: channel as u32,
        reference: load.reference.clone(),
        no_bonus: load.no_bonus,
        price_minor,
    })
}

/// The key to enrol: given in hex, or a new key file written for the terminal.
pub(super) fn terminal_public_key(
    public_key: Option<String>,
    key_out: Option<PathBuf>,
) -> anyhow::Result<Vec<u8>> {
    match (public_key, key_out) {
        (Some(hex_key), None) => hex::decode(hex_key.trim()).context("public key is not hex"),
        (None, Some(path)) => {
            let k = cardd::crypto::generate_key();
            write_key_file(&path, &k)?;
            Ok(k.verifying_key().to_bytes().to_vec())
        }
        _ => bail!("give --public-key HEX or --key-out FILE"),
    }
}

/// A report, listing or rules request: `(None, Some((request, format)))`
/// (request `None` for the rules); any other operation comes back as it was.
#[allow(clippy::type_complexity)]
fn owner_read(
    op: AdminOp,
    json: bool,
) -> (
    Option<AdminOp>,
    Option<(Option<cardd::pb::GetReport>, super::report::Format)>,
) {
    use super::report::Format;
    let format = |csv: bool| match (json, csv) {
        (true, _) => Format::Json,
        (_, true) => Format::Csv,
        _ => Format::Table,
    };
    match op {
        AdminOp::Report(r) => {
            let f = format(r.csv);
            (None, Some((Some(super::report::request_for(r.kind)), f)))
        }
        AdminOp::List { csv, kind } => (
            None,
            Some((Some(super::list::request_for(kind)), format(csv))),
        ),
        AdminOp::Rules => (None, Some((None, format(false)))),
        other => (Some(other), None),
    }
}

/// Reads a rules file (the JSON form in the README) into the wire rules.
fn read_rules(file: &std::path::Path) -> anyhow::Result<pb::Rules> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let r: RulesFile = serde_json::from_str(&text).context("rules file")?;
    let campaigns = r
        .campaigns
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.into_wire(i))
        .collect::<anyhow::Result<_>>()?;
    Ok(pb::Rules {
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
                window_days: t.window_days,
                min_day_spend_minor: t.min_day_spend_minor,
                promotion_line: t.promotion_line,
            })
            .collect(),
        promotion_line: r.promotion_line,
        time_zone: r.time_zone,
        pin_all_spends: r.pin_all_spends,
        pin_over_minor: r.pin_over_minor,
        max_balance_named_minor: r.max_balance_named_minor,
        max_balance_anonymous_minor: r.max_balance_anonymous_minor,
        max_top_up_minor: r.max_top_up_minor,
        max_daily_spend_minor: r.max_daily_spend_minor,
        card_validity_days: r.card_validity_days,
        currency_default_limits: r.currency_default_limits,
        exact_refunds: r.exact_refunds,
        campaigns,
        points_expire_after_days: r.points_expire_after_days,
        points_redemption: r.points_redemption.map(|p| pb::PointsRedemption {
            points: p.points,
            value_minor: p.value_minor,
        }),
        store_promotions: r
            .store_promotions
            .into_iter()
            .map(|s| pb::StorePromotion {
                store_id: s.store_id,
                line: s.line,
            })
            .collect(),
    })
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
    /// The brand's IANA time zone ("" = UTC): where report days start.
    #[serde(default)]
    time_zone: String,
    /// A card with a PIN needs it for every purchase and redemption.
    #[serde(default)]
    pin_all_spends: bool,
    /// ... or for purchases over this bill (minor units; 0 = none).
    #[serde(default)]
    pin_over_minor: i64,
    /// Limits (README, "Limits, expiry and corrections"): 0 = the
    /// currency's default.
    #[serde(default)]
    max_balance_named_minor: i64,
    #[serde(default)]
    max_balance_anonymous_minor: i64,
    #[serde(default)]
    max_top_up_minor: i64,
    #[serde(default)]
    max_daily_spend_minor: i64,
    /// Validity of new cards in days (0 = no expiry; at least 1096).
    #[serde(default)]
    card_validity_days: u32,
    /// The currency's default limits where a balance limit is 0 (for CNY
    /// the MOFCOM figures); on unless the file says false.
    #[serde(default = "yes")]
    currency_default_limits: bool,
    /// Refunds exact per form and store, earned points taken back in full
    /// where points pay bills; on unless the file says false.
    #[serde(default = "yes")]
    exact_refunds: bool,
    #[serde(default)]
    campaigns: Vec<CampaignFile>,
    /// 0 = points never expire.
    #[serde(default)]
    points_expire_after_days: u32,
    /// Absent or null = points do not pay bills.
    #[serde(default)]
    points_redemption: Option<RedemptionFile>,
    #[serde(default)]
    store_promotions: Vec<StorePromotionFile>,
}

fn yes() -> bool {
    true
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
    #[serde(default)]
    window_days: u32,
    #[serde(default)]
    min_day_spend_minor: i64,
    #[serde(default)]
    promotion_line: String,
}

/// A campaign: times in RFC 3339 (`2026-12-05T00:00:00+08:00`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    name: String,
    multiplier_milli: u32,
    starts: String,
    ends: String,
    /// Empty = every store.
    #[serde(default)]
    stores: Vec<u32>,
    #[serde(default)]
    category: Option<String>,
}

impl CampaignFile {
    fn into_wire(self, i: usize) -> anyhow::Result<pb::Campaign> {
        let time = |field: &str, text: &str| -> anyhow::Result<i64> {
            let t: jiff::Timestamp = text.parse().with_context(|| {
                format!("campaigns[{i}].{field}: {text:?} is not an RFC 3339 time")
            })?;
            Ok(t.as_millisecond())
        };
        Ok(pb::Campaign {
            starts_ms: time("starts", &self.starts)?,
            ends_ms: time("ends", &self.ends)?,
            name: self.name,
            multiplier_milli: self.multiplier_milli,
            stores: self
                .stores
                .into_iter()
                .map(|store_id| pb::StoreRef { store_id })
                .collect(),
            category: self.category.unwrap_or_default(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedemptionFile {
    points: i64,
    value_minor: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StorePromotionFile {
    store_id: u32,
    line: String,
}

fn thousand() -> u32 {
    1000
}
