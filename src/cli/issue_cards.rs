//! `cardd admin issue-cards`: a bulk card sale in one idempotent run.
//!
//! Why a retry neither doubles a card nor its value: before the first
//! request the run's plan (card numbers, the first owner transaction id,
//! the load's terms, the operator and the client time) is written durably
//! to `OUT.run`. Every request is then a pure function of the plan, with
//! the plan's fixed client time, so a run started again after a crash or a
//! kill -9 sends the same bytes under the same ids, and the daemon answers
//! what it already applied as a replay (`replayed: true`) and applies only
//! the rest. The CSV is written, whole, only at the end.
//!
//! The run's ids count down (card 0's issue holds the highest): its first
//! request moves the owner's last txn id past the whole run, so an owner
//! command made before the re-run (which takes last + 1) cannot take an id
//! the run still needs.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use cardd::client::{AnyClient, ClientError};
use cardd::limits::MAX_CARDS_PER_ISSUE_RUN;
use cardd::pb::{self, request::Op};
use cardd::storage::fsutil::replace_durably;

use super::admin::owner_load;
use crate::{AdminArgs, AdminOp};

/// Cards between two progress lines.
const PROGRESS_EVERY: usize = 100;

/// Everything a run's requests are made from, fixed before the first one.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Plan {
    brand_id: u32,
    first_txn_id: u64,
    operator: String,
    client_time_ms: i64,
    /// The load each card gets (its `card` field empty); none: issue only.
    load: Option<LoadTerms>,
    cards: Vec<String>,
}

/// The top-up terms of a run, as the requests carry them.
#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct LoadTerms {
    amount_minor: i64,
    channel: u32,
    reference: String,
    no_bonus: bool,
    price_minor: i64,
}

/// One line of the CSV.
struct Row {
    card: String,
    issue_seq: u64,
    load_seq: u64,
    loaded_minor: i64,
    bonus_minor: i64,
    price_minor: i64,
}

/// Runs (or finishes) the bulk sale that `args` describes.
pub async fn run(client: &mut AnyClient, args: &AdminArgs, txn: u64) -> anyhow::Result<ExitCode> {
    let AdminOp::IssueCards {
        count,
        load,
        sale,
        out,
    } = &args.op
    else {
        unreachable!("called for issue-cards only");
    };
    if !(1..=MAX_CARDS_PER_ISSUE_RUN).contains(count) {
        bail!("--count must be 1..={MAX_CARDS_PER_ISSUE_RUN}");
    }
    let terms = match load {
        Some(amount) => Some(terms_of(owner_load(
            String::new(),
            amount,
            sale,
            &client.session,
        )?)),
        None => None,
    };
    let fresh = Plan {
        brand_id: client.session.brand_id,
        first_txn_id: txn,
        operator: args.operator.clone(),
        client_time_ms: now_ms(),
        load: terms,
        cards: Vec::new(),
    };
    let path = plan_path(out);
    let (plan, resumed) = plan_for(&path, fresh, *count)?;
    if resumed {
        eprintln!(
            "issue-cards: resuming the run in {} (txn ids from {})",
            path.display(),
            plan.first_txn_id
        );
    }
    let rows = send_all(client, &plan).await?;
    let replayed = rows.iter().filter(|r| r.1).count();
    let rows: Vec<Row> = rows.into_iter().map(|r| r.0).collect();
    // Card numbers of loaded cards (anonymous ones are spendable value):
    // readable by their owner only, as exports and backups are.
    replace_durably(out, csv(&rows).as_bytes(), true)
        .with_context(|| format!("writing {}", out.display()))?;
    summary(args.json, &rows, replayed, out);
    Ok(ExitCode::SUCCESS)
}

fn terms_of(t: pb::TopUp) -> LoadTerms {
    LoadTerms {
        amount_minor: t.amount_minor,
        channel: t.channel,
        reference: t.reference,
        no_bonus: t.no_bonus,
        price_minor: t.price_minor,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `OUT.run`, beside the CSV.
fn plan_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".run");
    out.with_file_name(name)
}

/// The plan recorded at `path` if there is one (it must be the same sale),
/// else `fresh` with new card numbers, written durably before any request.
fn plan_for(path: &Path, fresh: Plan, count: usize) -> anyhow::Result<(Plan, bool)> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let plan: Plan = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the run in {}", path.display()))?;
            let same = plan.brand_id == fresh.brand_id
                && plan.load == fresh.load
                && plan.cards.len() == count;
            if !same {
                bail!(
                    "{} records another sale (brand, count or load differ); \
                     finish it with its own arguments or choose another --out",
                    path.display()
                );
            }
            Ok((plan, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut plan = fresh;
            plan.cards = new_numbers(plan.brand_id, count);
            let bytes = serde_json::to_vec_pretty(&plan).context("encoding the run")?;
            replace_durably(path, &bytes, true)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok((plan, false))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `count` distinct fresh card numbers of `brand`.
fn new_numbers(brand: u32, count: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut cards = Vec::with_capacity(count);
    while cards.len() < count {
        let c = cardd::card_number::generate(brand);
        if seen.insert(c.clone()) {
            cards.push(c);
        }
    }
    cards
}

/// The request the plan makes under `txn_id`.
fn request(plan: &Plan, txn_id: u64, op: Op) -> pb::Request {
    pb::Request {
        txn_id,
        brand_id: plan.brand_id,
        operator: plan.operator.clone(),
        client_time_ms: plan.client_time_ms,
        want_proof: false,
        op: Some(op),
    }
}

/// Sends every request of the plan in order; each row says whether all of
/// its requests were replays (applied by an earlier run).
async fn send_all(client: &mut AnyClient, plan: &Plan) -> anyhow::Result<Vec<(Row, bool)>> {
    let stride = if plan.load.is_some() { 2 } else { 1 };
    let top = plan.first_txn_id + stride * plan.cards.len() as u64 - 1;
    let mut rows = Vec::with_capacity(plan.cards.len());
    for (i, card) in plan.cards.iter().enumerate() {
        let txn = top - stride * i as u64;
        let issue = Op::IssueCard(pb::IssueCard { card: card.clone() });
        let issued = send(client, &request(plan, txn, issue), card).await?;
        let mut row = Row {
            card: card.clone(),
            issue_seq: issued.receipt.as_ref().map_or(0, |r| r.seq),
            load_seq: 0,
            loaded_minor: 0,
            bonus_minor: 0,
            price_minor: 0,
        };
        let mut replayed = issued.replayed;
        if let Some(terms) = &plan.load {
            let loaded = send(client, &request(plan, txn - 1, load_op(card, terms)), card).await?;
            replayed &= loaded.replayed;
            row.load_seq = loaded.receipt.as_ref().map_or(0, |r| r.seq);
            if let Some(pb::reply::Detail::TopUp(t)) = &loaded.detail {
                (row.loaded_minor, row.bonus_minor) = (t.paid_minor, t.bonus_minor);
                row.price_minor = t.price_minor;
            }
        }
        rows.push((row, replayed));
        if (i + 1) % PROGRESS_EVERY == 0 || i + 1 == plan.cards.len() {
            eprintln!("issue-cards: {}/{} cards done", i + 1, plan.cards.len());
        }
    }
    Ok(rows)
}

fn load_op(card: &str, t: &LoadTerms) -> Op {
    Op::TopUp(pb::TopUp {
        card: card.into(),
        amount_minor: t.amount_minor,
        channel: t.channel,
        reference: t.reference.clone(),
        no_bonus: t.no_bonus,
        price_minor: t.price_minor,
    })
}

/// One request; a refusal stops the run (what was applied stays applied,
/// and running the same command again resumes after it).
async fn send(client: &mut AnyClient, req: &pb::Request, card: &str) -> anyhow::Result<pb::Reply> {
    match client.call(req).await {
        Ok(reply) => Ok(reply),
        Err(ClientError::Refused(r)) => bail!(
            "card {card} (txn {}) refused: {} ({}); the run stopped here",
            req.txn_id,
            r.code.as_str_name(),
            r.message
        ),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The CSV for the buyer or the printer: one card a line, in minor units.
fn csv(rows: &[Row]) -> String {
    let mut s = String::from("card,issue_seq,load_seq,loaded_minor,bonus_minor,price_minor\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            r.card, r.issue_seq, r.load_seq, r.loaded_minor, r.bonus_minor, r.price_minor
        );
    }
    s
}

fn summary(json: bool, rows: &[Row], replayed: usize, out: &Path) {
    let loaded: i64 = rows.iter().map(|r| r.loaded_minor).sum();
    if json {
        let v = serde_json::json!({
            "ok": true, "cards": rows.len(), "already_done": replayed,
            "loaded_minor": loaded, "out": out.display().to_string(),
        });
        outln!("{v}");
    } else {
        outln!(
            "Issued {} cards ({replayed} by an earlier run), {loaded} minor units loaded; see {}",
            rows.len(),
            out.display()
        );
    }
}
