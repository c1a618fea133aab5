//! `cardd admin report KIND`: the owner's books, printed as a table, one
//! JSON object (`--json`) or CSV (`--csv`). The daemon answers from the
//! aggregates it keeps (docs/reports.md); this file only asks and prints.
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use cardd::client::{AnyClient, ClientError};
use cardd::pb::{self, report_cell::Value as Cell, request::Op};
use cardd::render::{error_json, format_amount};

/// `cardd admin report`: which report, and how to print it.
#[derive(Args)]
pub struct ReportArgs {
    /// Print CSV: each section a header line and rows, sections apart by a
    /// blank line and a `# name` line.
    #[arg(long, global = true)]
    pub csv: bool,
    #[command(subcommand)]
    pub kind: ReportKind,
}

/// The reports (docs/reports.md). Dates are the brand's days, YYYY-MM-DD.
#[derive(Subcommand)]
pub enum ReportKind {
    /// The records of one card or one store: kind, amount, store,
    /// terminal, operator, time, balance after; a page at a time.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report activity --card 8000017626872006924 --from 2026-12-01"
    )]
    Activity {
        /// The card.
        #[arg(long, required_unless_present = "store", conflicts_with = "store")]
        card: Option<String>,
        /// The store (0 = head office).
        #[arg(long)]
        store: Option<u32>,
        /// First day (default: the whole chain).
        #[arg(long)]
        from: Option<String>,
        /// Last day.
        #[arg(long)]
        to: Option<String>,
        /// Go on from this sequence number (the `more:` line of a page).
        #[arg(long, default_value_t = 0)]
        cursor: u64,
    },
    /// Purchases, loads (paid and bonus), refunds, reversals, average
    /// ticket, active cards and visits per active card.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report sales --from 2026-11-01 --to 2026-11-30 --by store"
    )]
    Sales {
        /// First day (default: 30 days to --to).
        #[arg(long)]
        from: Option<String>,
        /// Last day (default: today).
        #[arg(long)]
        to: Option<String>,
        /// Only this store (0 = head office).
        #[arg(long)]
        store: Option<u32>,
        /// Rows by day, store, cashier or terminal.
        #[arg(long, default_value = "store")]
        by: String,
    },
    /// Outstanding paid and bonus value by store of issue, and its aging.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report liability --as-of 2026-11-30"
    )]
    Liability {
        /// As of the end of this day (default: now).
        #[arg(long)]
        as_of: Option<String>,
        /// Only this store of issue.
        #[arg(long)]
        store: Option<u32>,
    },
    /// What each store owes each other (value loaded at one and spent at
    /// the other), netted per pair.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report settlement --from 2026-11-01 --to 2026-11-30"
    )]
    Settlement {
        /// First day.
        #[arg(long)]
        from: String,
        /// Last day.
        #[arg(long)]
        to: String,
        /// Only pairs with this store.
        #[arg(long)]
        store: Option<u32>,
    },
    /// Cards with a balance and no visit in --idle-days.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report dormant --idle-days 90 --csv > call-list.csv"
    )]
    Dormant {
        /// Days without a visit.
        #[arg(long, default_value_t = 90)]
        idle_days: u32,
    },
    /// Cards with points expiring in the next --days days, as of now.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report points-expiring --days 30 --csv"
    )]
    PointsExpiring {
        /// Days ahead.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Recency, frequency and monetary segments of the active cards.
    #[command(after_help = "Example:\n  cardd admin --key owner.key report rfm --json")]
    Rfm,
    /// One day per store against the day before and a week before.
    #[command(
        after_help = "Example:\n  cardd admin --key owner.key report daily --date 2026-11-30"
    )]
    Daily {
        /// The day (default: yesterday).
        #[arg(long)]
        date: Option<String>,
        /// Only this store.
        #[arg(long)]
        store: Option<u32>,
    },
}

/// The request for a report.
pub fn request_for(kind: ReportKind) -> pb::GetReport {
    let mut r = pb::GetReport::default();
    match kind {
        ReportKind::Activity {
            card,
            store,
            from,
            to,
            cursor,
        } => {
            (r.kind, r.card, r.store_id) = ("activity".into(), card.unwrap_or_default(), store);
            (r.from, r.to, r.cursor) = (from.unwrap_or_default(), to.unwrap_or_default(), cursor);
        }
        ReportKind::Sales {
            from,
            to,
            store,
            by,
        } => {
            (r.kind, r.from, r.to) = (
                "sales".into(),
                from.unwrap_or_default(),
                to.unwrap_or_default(),
            );
            (r.store_id, r.by) = (store, by);
        }
        ReportKind::Liability { as_of, store } => {
            // A time is accepted too: its date is the day.
            let day = as_of.unwrap_or_default().chars().take(10).collect();
            (r.kind, r.date, r.store_id) = ("liability".into(), day, store);
        }
        ReportKind::Settlement { from, to, store } => {
            (r.kind, r.from, r.to, r.store_id) = ("settlement".into(), from, to, store);
        }
        ReportKind::Dormant { idle_days } => {
            (r.kind, r.idle_days) = ("dormant".into(), idle_days);
        }
        ReportKind::PointsExpiring { days } => {
            // The request's day count travels in idle_days (docs/reports.md).
            (r.kind, r.idle_days) = ("points-expiring".into(), days);
        }
        ReportKind::Rfm => r.kind = "rfm".into(),
        ReportKind::Daily { date, store } => {
            (r.kind, r.date, r.store_id) = ("daily".into(), date.unwrap_or_default(), store);
        }
    }
    r
}

/// How a report is printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, amounts as decimals.
    Table,
    /// One JSON object.
    Json,
    /// CSV, amounts in minor units.
    Csv,
}

impl Format {
    /// JSON or the table.
    pub fn from_json(json: bool) -> Self {
        if json {
            Format::Json
        } else {
            Format::Table
        }
    }
}

/// One report request and its answer.
async fn ask(client: &mut AnyClient, req: pb::GetReport) -> Result<pb::Report, ClientError> {
    let request = client.request(0, Op::Report(req));
    let reply = client.call(&request).await?;
    Ok(reply.report.unwrap_or_default())
}

/// The activity page request for the range the daemon answered.
fn scan_request(range: &pb::Report, req: &pb::GetReport) -> anyhow::Result<pb::GetReport> {
    let cells = range
        .sections
        .first()
        .and_then(|s| s.rows.first())
        .map(|r| r.cells.clone())
        .unwrap_or_default();
    let (Some(Cell::Int(from)), Some(Cell::Int(end)), Some(Cell::Text(card))) = (
        cells.first().and_then(|c| c.value.clone()),
        cells.get(1).and_then(|c| c.value.clone()),
        cells.get(2).and_then(|c| c.value.clone()),
    ) else {
        bail!("the daemon answered the activity range in another form");
    };
    Ok(pb::GetReport {
        kind: "activity-scan".into(),
        cursor: u64::try_from(from)?,
        end_seq: u64::try_from(end)?,
        card,
        store_id: req.store_id,
        ..Default::default()
    })
}

/// Asks the daemon for `req` and prints the answer; a refusal exits 2.
pub async fn run(
    client: &mut AnyClient,
    req: pb::GetReport,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let activity = req.kind == "activity";
    let mut answer = ask(client, req.clone()).await;
    if activity {
        // The daemon named the range of records; now read a page of it.
        if let Ok(range) = &answer {
            answer = ask(client, scan_request(range, &req)?).await;
        }
    }
    match answer {
        Ok(report) => {
            let exponent = client.session.currency_exponent;
            match format {
                Format::Table => super::print_text(&table(&report, exponent)),
                Format::Json => outln!("{}", report_json(&report)),
                Format::Csv => super::print_text(&csv(&report)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => failed(e, format),
    }
}

/// A read the daemon refused (exit 2, the refusal as JSON under `--json`)
/// or that failed on this side.
pub fn failed(e: ClientError, format: Format) -> anyhow::Result<ExitCode> {
    match e {
        ClientError::Refused(r) => {
            if format == Format::Json {
                outln!("{}", error_json(r.code as i32, &r.message));
            } else {
                eprintln!("refused: {} ({})", r.code.as_str_name(), r.message);
            }
            Ok(ExitCode::from(2))
        }
        e => Err(anyhow::anyhow!("{e}")),
    }
}

fn cell_json(c: &pb::ReportCell) -> Value {
    match &c.value {
        Some(Cell::Int(i)) => json!(i),
        Some(Cell::Text(t)) => json!(t),
        None => Value::Null,
    }
}

/// One JSON object: `report`, then each section as an array of objects
/// keyed by column (amounts stay integers in their `_minor` fields).
pub fn report_json(report: &pb::Report) -> Value {
    let mut out = Map::new();
    out.insert("report".into(), json!(report.kind));
    for s in &report.sections {
        let rows: Vec<Value> = s
            .rows
            .iter()
            .map(|r| {
                let fields = s.columns.iter().zip(&r.cells);
                Value::Object(fields.map(|(c, v)| (c.clone(), cell_json(v))).collect())
            })
            .collect();
        out.insert(s.name.clone(), Value::Array(rows));
    }
    if report.next_cursor != 0 {
        out.insert("next_cursor".into(), json!(report.next_cursor));
    }
    out.insert("truncated".into(), json!(report.truncated));
    Value::Object(out)
}

fn cell_text(c: &pb::ReportCell, column: &str, exponent: Option<u32>) -> String {
    match (&c.value, exponent) {
        (Some(Cell::Int(i)), Some(e)) if column.ends_with("_minor") => format_amount(*i, e),
        (Some(Cell::Int(i)), _) => i.to_string(),
        (Some(Cell::Text(t)), _) => t.clone(),
        (None, _) => String::new(),
    }
}

/// Aligned columns per section; amounts as decimals (the `_minor` suffix
/// dropped from their headers).
pub fn table(report: &pb::Report, exponent: u32) -> String {
    let mut out = String::new();
    for s in &report.sections {
        let header: Vec<String> = s
            .columns
            .iter()
            .map(|c| c.strip_suffix("_minor").unwrap_or(c).to_string())
            .collect();
        let rows: Vec<Vec<String>> = s
            .rows
            .iter()
            .map(|r| {
                let cells = s.columns.iter().zip(&r.cells);
                cells
                    .map(|(c, v)| cell_text(v, c, Some(exponent)))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r.get(i).map_or(0, String::len))
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        out.push_str(&format!("== {} ==\n", s.name));
        out.push_str(&line(&header));
        rows.iter().for_each(|r| out.push_str(&line(r)));
        if rows.is_empty() {
            out.push_str("(none)\n");
        }
        out.push('\n');
    }
    if report.truncated {
        out.push_str("(rows were cut to fit one reply: narrow the request)\n");
    }
    if report.next_cursor != 0 {
        out.push_str(&format!("more: --cursor {}\n", report.next_cursor));
    }
    out
}

/// CSV: per section a `# name` line, the header, the rows (amounts in
/// minor units), then a blank line (the web page's downloads are the same).
pub fn csv(report: &pb::Report) -> String {
    cardd::render::report_csv(report)
}
