//! Turns a page's reports into what its template shows: tables whose
//! every figure cell carries the report's own value (`data-col`,
//! `data-value`: the `--json` figure, so a test can compare them), SVG
//! bars, and the CSV download. Templates are compiled into the binary and
//! auto-escaped.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use minijinja::Environment;
use serde::Serialize;

use super::logins::Grant;
use super::pages::{Page, Shown, Snapshot, CHART_DAYS};
use crate::pb::{self, report_cell::Value as Cell};
use crate::render::{csv_text, format_amount, money, report_csv};
use crate::state::books::day_text;
use crate::state::Principal;

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("page.html", include_str!("templates/page.html")),
            ("login.html", include_str!("templates/login.html")),
            ("confirm.html", include_str!("templates/confirm.html")),
        ] {
            env.add_template(name, source)
                .expect("the compiled-in templates parse");
        }
        env
    })
}

/// One cell: its column, the report's value, and the text shown.
#[derive(Serialize)]
struct CellView {
    col: String,
    value: String,
    text: String,
    num: bool,
    /// A link from the cell ("" = none).
    href: String,
}

/// Something a page shows.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Block {
    Figures {
        title: String,
        items: Vec<Figure>,
    },
    Table {
        id: String,
        title: String,
        columns: Vec<String>,
        rows: Vec<Vec<CellView>>,
    },
    Bars {
        id: String,
        title: String,
        width: i64,
        height: i64,
        bars: Vec<Bar>,
    },
    Form {
        action: String,
        fields: Vec<Field>,
        button: String,
    },
    Notice {
        text: String,
    },
    Link {
        href: String,
        text: String,
    },
}

#[derive(Serialize)]
struct Figure {
    id: String,
    label: String,
    value: i64,
    text: String,
}

#[derive(Serialize)]
struct Bar {
    label: String,
    /// The report's figure (minor units).
    value: i64,
    text: String,
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

#[derive(Serialize)]
struct Field {
    name: String,
    label: String,
    value: String,
    placeholder: String,
}

#[derive(Serialize)]
struct Nav {
    href: &'static str,
    label: &'static str,
    current: bool,
}

/// How the page's figures are written.
struct Fmt<'a> {
    exponent: u32,
    stores: &'a BTreeMap<u32, String>,
    zone: &'a str,
}

impl Fmt<'_> {
    fn store(&self, id: i64) -> String {
        let name = u32::try_from(id)
            .ok()
            .and_then(|s| self.stores.get(&s))
            .map_or("head office", String::as_str);
        format!("#{id} {name}")
    }

    fn cell(&self, column: &str, cell: &pb::ReportCell) -> CellView {
        let (value, text, num) = match &cell.value {
            Some(Cell::Int(i)) if column.ends_with("_minor") => {
                (i.to_string(), format_amount(*i, self.exponent), true)
            }
            Some(Cell::Int(i)) if column.contains("store") => {
                (i.to_string(), self.store(*i), false)
            }
            Some(Cell::Int(i)) if column == "seq" => {
                let href = format!("/record/{i}");
                return CellView {
                    col: column.into(),
                    value: i.to_string(),
                    text: i.to_string(),
                    num: true,
                    href,
                };
            }
            Some(Cell::Int(i)) => (i.to_string(), i.to_string(), true),
            Some(Cell::Text(t)) if column == "time" => (t.clone(), self.time(t), false),
            Some(Cell::Text(t)) => (t.clone(), t.clone(), false),
            None => (String::new(), String::new(), false),
        };
        CellView {
            col: column.to_string(),
            value,
            text,
            num,
            href: String::new(),
        }
    }

    /// A UTC timestamp (RFC 3339) in the brand's time zone.
    fn time(&self, utc: &str) -> String {
        let zone = match self.zone {
            "" => "UTC",
            z => z,
        };
        utc.parse::<jiff::Timestamp>()
            .ok()
            .and_then(|t| t.in_tz(zone).ok())
            .map_or_else(
                || utc.to_string(),
                |z| z.strftime("%Y-%m-%d %H:%M:%S %Z").to_string(),
            )
    }
}

fn label(column: &str) -> String {
    let name = column.strip_suffix("_minor").unwrap_or(column);
    name.strip_suffix("_id").unwrap_or(name).replace('_', " ")
}

/// A report section as a table, only `keep` columns (all when empty).
fn table(
    f: &Fmt,
    id: &str,
    title: &str,
    section: Option<&pb::ReportSection>,
    keep: &[&str],
) -> Block {
    let Some(s) = section else {
        return Block::Notice {
            text: format!("{title}: nothing to show"),
        };
    };
    let shown: Vec<usize> = (0..s.columns.len())
        .filter(|i| keep.is_empty() || keep.contains(&s.columns[*i].as_str()))
        .collect();
    let rows = s
        .rows
        .iter()
        .map(|r| {
            shown
                .iter()
                .filter_map(|i| Some(f.cell(&s.columns[*i], r.cells.get(*i)?)))
                .collect()
        })
        .collect();
    Block::Table {
        id: id.to_string(),
        title: title.to_string(),
        columns: shown.iter().map(|i| label(&s.columns[*i])).collect(),
        rows,
    }
}

fn section<'a>(report: &'a pb::Report, name: &str) -> Option<&'a pb::ReportSection> {
    report.sections.iter().find(|s| s.name == name)
}

/// The values of `column` in `section`'s rows, keyed by `key` column text.
fn column(s: Option<&pb::ReportSection>, key: &str, column: &str) -> Vec<(String, i64)> {
    let Some(s) = s else { return vec![] };
    let at = |name: &str| s.columns.iter().position(|c| c == name);
    let (Some(k), Some(c)) = (at(key), at(column)) else {
        return vec![];
    };
    s.rows
        .iter()
        .filter_map(|r| {
            let key = match r.cells.get(k)?.value.as_ref()? {
                Cell::Text(t) => t.clone(),
                Cell::Int(i) => i.to_string(),
            };
            match r.cells.get(c)?.value.as_ref()? {
                Cell::Int(v) => Some((key, *v)),
                Cell::Text(_) => None,
            }
        })
        .collect()
}

/// Bars of `values` (labels, amounts), vertical (a time series) or
/// horizontal (categories); heights in whole pixels of the largest.
fn bars(f: &Fmt, id: &str, title: &str, values: &[(String, i64)], vertical: bool) -> Block {
    let max = values.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let n = i64::try_from(values.len()).unwrap_or(1).max(1);
    let (width, height) = if vertical { (600, 160) } else { (600, 24 * n) };
    let bars = values
        .iter()
        .enumerate()
        .map(|(i, (label, v))| {
            let i = i64::try_from(i).unwrap_or(0);
            let len = |full: i64| (v.max(&0) * full / max).max(i64::from(*v > 0));
            let text = format_amount(*v, f.exponent);
            if vertical {
                let w = width / n;
                let h = len(height);
                Bar {
                    label: label.clone(),
                    value: *v,
                    text,
                    x: i * w,
                    y: height - h,
                    w: (w - 2).max(1),
                    h,
                }
            } else {
                let w = len(width - 160);
                Bar {
                    label: label.clone(),
                    value: *v,
                    text,
                    x: 100,
                    y: i * 24,
                    w,
                    h: 18,
                }
            }
        })
        .collect();
    Block::Bars {
        id: id.to_string(),
        title: title.to_string(),
        width,
        height,
        bars,
    }
}

/// A refused report is shown in place of its tables, with its reason.
fn refused(shown: &Shown) -> Option<Block> {
    shown.answer.as_ref().err().map(|r| Block::Notice {
        text: format!("{}: {}", shown.request.kind, r.message),
    })
}

const TALLY_SHOWN: [&str; 8] = [
    "store_id",
    "purchases",
    "net_sales_minor",
    "top_up_paid_minor",
    "top_up_bonus_minor",
    "refunds",
    "refund_minor",
    "visits",
];

/// Outstanding value and the 30-day chart first (what an owner looks
/// for), then today and this month per store.
fn overview(f: &Fmt, snap: &Snapshot) -> Vec<Block> {
    let mut out = Vec::new();
    if let Some(shown) = snap.reports.get(2) {
        match &shown.answer {
            Ok(r) => out.push(outstanding(f, snap, section(r, "liability"))),
            Err(_) => out.extend(refused(shown)),
        }
    }
    if let Some(shown) = snap.reports.get(3) {
        match &shown.answer {
            Ok(r) => out.push(chart(f, snap, section(r, "sales"))),
            Err(_) => out.extend(refused(shown)),
        }
    }
    let titles = [("today", "Today"), ("month", "This month")];
    for (shown, (id, title)) in snap.reports.iter().zip(titles) {
        let Ok(r) = &shown.answer else {
            out.extend(refused(shown));
            continue;
        };
        out.push(table(
            f,
            &format!("{id}-sales"),
            title,
            section(r, "sales"),
            &TALLY_SHOWN,
        ));
        let total = section(r, "total");
        let all = format!("{title}, in total");
        out.push(table(
            f,
            &format!("{id}-total"),
            &all,
            total,
            &TALLY_SHOWN[1..],
        ));
    }
    out
}

/// Net sales per day over the last `CHART_DAYS` (a day without sales is 0).
fn chart(f: &Fmt, snap: &Snapshot, by_day: Option<&pb::ReportSection>) -> Block {
    let by_day: BTreeMap<String, i64> = column(by_day, "day", "net_sales_minor")
        .into_iter()
        .collect();
    let days: Vec<(String, i64)> = (snap.today - (CHART_DAYS - 1)..=snap.today)
        .map(|d| {
            let day = day_text(d);
            let v = by_day.get(&day).copied().unwrap_or(0);
            (day, v)
        })
        .collect();
    bars(f, "chart", "Net sales, last 30 days", &days, true)
}

/// Outstanding value: the liability report's rows added up.
fn outstanding(f: &Fmt, snap: &Snapshot, s: Option<&pb::ReportSection>) -> Block {
    let sum = |c: &str| {
        column(s, "store_id", c)
            .iter()
            .try_fold(0i64, |acc, (_, v)| acc.checked_add(*v))
            .unwrap_or(i64::MAX)
    };
    let (currency, exponent) = (&snap.currency.0, f.exponent);
    let items = [
        ("outstanding-paid", "Paid value", "paid_minor"),
        ("outstanding-bonus", "Bonus value", "bonus_minor"),
        ("outstanding-total", "Outstanding value", "total_minor"),
    ]
    .into_iter()
    .map(|(id, label, c)| {
        let value = sum(c);
        Figure {
            id: id.into(),
            label: label.into(),
            value,
            text: money(value, exponent, currency),
        }
    })
    .collect();
    Block::Figures {
        title: "Outstanding value (what the cards hold)".into(),
        items,
    }
}

fn settlement(f: &Fmt, snap: &Snapshot) -> Vec<Block> {
    let q = &snap.query;
    let mut out = vec![Block::Form {
        action: "/settlement".into(),
        fields: vec![
            field("from", "From", &q.from, "YYYY-MM-DD"),
            field("to", "To", &q.to, "YYYY-MM-DD"),
        ],
        button: "Show".into(),
    }];
    let Some(shown) = snap.reports.first() else {
        return out;
    };
    let Ok(r) = &shown.answer else {
        out.extend(refused(shown));
        return out;
    };
    out.push(matrix(f, section(r, "settlement")));
    out.push(table(
        f,
        "settlement-settlement",
        "Who owes whom (netted per pair)",
        section(r, "settlement"),
        &[],
    ));
    out.push(table(
        f,
        "settlement-net",
        "Each store's net",
        section(r, "net"),
        &[],
    ));
    out
}

/// The netted pairs as a matrix: a row per paying store, a column per
/// receiving store, the total owed in the cell.
fn matrix(f: &Fmt, s: Option<&pb::ReportSection>) -> Block {
    let pairs: Vec<(String, i64)> = column(s, "from_store", "total_minor");
    let to: Vec<(String, i64)> = column(s, "to_store", "total_minor");
    let owed: BTreeMap<(i64, i64), i64> = pairs
        .iter()
        .zip(&to)
        .filter_map(|((a, v), (b, _))| Some(((a.parse().ok()?, b.parse().ok()?), *v)))
        .collect();
    let mut stores: Vec<i64> = owed.keys().flat_map(|(a, b)| [*a, *b]).collect();
    stores.sort_unstable();
    stores.dedup();
    let mut columns = vec!["owes ↓ / to →".to_string()];
    columns.extend(stores.iter().map(|s| f.store(*s)));
    let rows = stores
        .iter()
        .map(|from| {
            let mut row = vec![CellView {
                col: String::new(),
                value: String::new(),
                text: f.store(*from),
                num: false,
                href: String::new(),
            }];
            row.extend(stores.iter().map(|to| {
                let text = owed
                    .get(&(*from, *to))
                    .map_or(String::new(), |v| format_amount(*v, f.exponent));
                CellView {
                    col: String::new(),
                    value: String::new(),
                    text,
                    num: true,
                    href: String::new(),
                }
            }));
            row
        })
        .collect();
    Block::Table {
        id: "settlement-matrix".into(),
        title: "Matrix".into(),
        columns,
        rows,
    }
}

fn liability(f: &Fmt, snap: &Snapshot) -> Vec<Block> {
    let mut out = Vec::new();
    let Some(shown) = snap.reports.first() else {
        return out;
    };
    let Ok(r) = &shown.answer else {
        out.extend(refused(shown));
        return out;
    };
    out.push(table(
        f,
        "liability-liability",
        "By store of issue",
        section(r, "liability"),
        &[],
    ));
    let aging = column(section(r, "aging"), "days_since_activity", "total_minor");
    let labelled: Vec<(String, i64)> = aging
        .into_iter()
        .map(|(d, v)| (format!("{d} days"), v))
        .collect();
    out.push(bars(
        f,
        "aging-bars",
        "Aging: value by days since the card's last activity",
        &labelled,
        false,
    ));
    out.push(table(
        f,
        "liability-aging",
        "Aging",
        section(r, "aging"),
        &[],
    ));
    out
}

fn members(f: &Fmt, snap: &Snapshot) -> Vec<Block> {
    let idle = match snap.query.idle_days {
        0 => String::new(),
        n => n.to_string(),
    };
    let mut out = vec![Block::Form {
        action: "/members".into(),
        fields: vec![field("idle_days", "Idle days", &idle, "90")],
        button: "Show".into(),
    }];
    let ids = [
        ("dormant", "Dormant cards to call (largest balance first)"),
        ("rfm", "RFM segments"),
    ];
    for (shown, (id, title)) in snap.reports.iter().zip(ids) {
        let Ok(r) = &shown.answer else {
            out.extend(refused(shown));
            continue;
        };
        out.push(table(
            f,
            &format!("{id}-summary"),
            "Summary",
            section(r, "summary"),
            &[],
        ));
        out.push(table(f, &format!("{id}-{id}"), title, section(r, id), &[]));
    }
    out
}

fn card(f: &Fmt, snap: &Snapshot) -> Vec<Block> {
    let mut out = vec![Block::Form {
        action: "/card".into(),
        fields: vec![field("card", "Card number", &snap.query.card, "20 digits")],
        button: "Find".into(),
    }];
    // Hook: search by phone arrives with named cards (the named-holder
    // feature); until then only the number finds a card.
    out.push(Block::Notice {
        text: "Search by phone: available once cards can be named.".into(),
    });
    match &snap.card {
        None => {}
        Some(Err(r)) => out.push(Block::Notice {
            text: r.message.clone(),
        }),
        Some(Ok(c)) => {
            let (cur, e) = (&snap.currency.0, f.exponent);
            let fig = |id: &str, label: &str, value: i64, text: String| Figure {
                id: id.into(),
                label: label.into(),
                value,
                text,
            };
            out.push(Block::Figures {
                title: format!("Card {} ({})", c.card, c.tier),
                items: vec![
                    fig(
                        "card-balance",
                        "Balance",
                        c.balance_minor,
                        money(c.balance_minor, e, cur),
                    ),
                    fig(
                        "card-paid",
                        "Paid value",
                        c.paid_balance_minor,
                        money(c.paid_balance_minor, e, cur),
                    ),
                    fig(
                        "card-bonus",
                        "Bonus value",
                        c.bonus_balance_minor,
                        money(c.bonus_balance_minor, e, cur),
                    ),
                    fig("card-points", "Points", c.points, c.points.to_string()),
                ],
            });
            out.extend(activity(f, snap, &c.card));
        }
    }
    out
}

/// The card's records of the last 30 days, a page at a time, each linked
/// to its record (sequence number and hash).
fn activity(f: &Fmt, snap: &Snapshot, card: &str) -> Vec<Block> {
    let Some(shown) = snap.reports.first() else {
        return vec![];
    };
    let r = match &shown.answer {
        Ok(r) => r,
        Err(_) => return refused(shown).into_iter().collect(),
    };
    let title = "Its records, last 30 days (each links to the record and its hash)";
    let mut out = vec![table(
        f,
        "card-activity",
        title,
        section(r, "activity"),
        &[],
    )];
    if r.next_cursor != 0 {
        out.push(Block::Link {
            href: format!("/card?card={card}&cursor={}", r.next_cursor),
            text: "More records".into(),
        });
    }
    out
}

/// One record: what it says, its hash and the hash it links to.
fn record(f: &Fmt, snap: &Snapshot) -> Vec<Block> {
    let Some(found) = &snap.record else {
        return vec![];
    };
    let (seq, rec, hash) = match found {
        Ok(r) => r,
        Err(e) => {
            return vec![Block::Notice {
                text: e.message.clone(),
            }]
        }
    };
    let time =
        jiff::Timestamp::from_millisecond(rec.time_ms).map_or(String::new(), |t| t.to_string());
    let plain = |col: &'static str, v: String| (col, v.clone(), v);
    let mut rows = vec![
        plain("seq", seq.to_string()),
        plain("hash", hex::encode(hash)),
        plain("prev_hash", hex::encode(&rec.prev_hash)),
        ("time", time.clone(), f.time(&time)),
        plain("kind", rec.kind().as_str_name().to_ascii_lowercase()),
        plain("card", rec.card.clone()),
        (
            "store_id",
            rec.store_id.to_string(),
            f.store(i64::from(rec.store_id)),
        ),
        plain("terminal_id", rec.terminal_id.to_string()),
        plain("operator", rec.operator.clone()),
    ];
    let amounts = [
        ("paid_in_minor", rec.paid_in_minor),
        ("bonus_in_minor", rec.bonus_in_minor),
        ("paid_out_minor", rec.paid_out_minor),
        ("bonus_out_minor", rec.bonus_out_minor),
        ("paid_balance_after_minor", rec.paid_balance_after_minor),
        ("bonus_balance_after_minor", rec.bonus_balance_after_minor),
    ];
    rows.extend(amounts.map(|(col, v)| (col, v.to_string(), format_amount(v, f.exponent))));
    let cell = |col: &str, value: String, text: String| CellView {
        col: col.into(),
        value,
        text,
        num: false,
        href: String::new(),
    };
    let rows = rows
        .into_iter()
        .map(|(col, value, text)| vec![cell("", String::new(), label(col)), cell(col, value, text)])
        .collect();
    vec![
        Block::Table {
            id: "record".into(),
            title: format!("Record {seq}"),
            columns: vec!["field".into(), "value".into()],
            rows,
        },
        Block::Notice {
            text: "The hash is the record's leaf in the brand's Merkle tree; \
                   `cardd audit verify` checks every one."
                .into(),
        },
    ]
}

fn field(name: &str, label: &str, value: &str, placeholder: &str) -> Field {
    Field {
        name: name.into(),
        label: label.into(),
        value: value.into(),
        placeholder: placeholder.into(),
    }
}

fn who(grant: Grant, stores: &BTreeMap<u32, String>) -> String {
    match grant.principal {
        Principal::Auditor(_) => "auditor".into(),
        Principal::StoreManager(_, s) => format!(
            "manager of store #{s} {}",
            stores.get(&s).map_or("", String::as_str)
        ),
        _ => "owner".into(),
    }
}

/// The page's HTML.
pub fn page(page: Page, snap: &Snapshot, grant: Grant) -> Result<String, minijinja::Error> {
    let f = Fmt {
        exponent: snap.currency.1,
        stores: &snap.stores,
        zone: &snap.zone,
    };
    let (title, blocks) = match page {
        Page::Overview => ("Overview", overview(&f, snap)),
        Page::Settlement => ("Settlement", settlement(&f, snap)),
        Page::Liability => ("Liability", liability(&f, snap)),
        Page::Members => ("Members", members(&f, snap)),
        Page::Card => ("Card", card(&f, snap)),
        Page::Record => ("Record", record(&f, snap)),
    };
    let nav = [
        ("/", "Overview", Page::Overview),
        ("/settlement", "Settlement", Page::Settlement),
        ("/liability", "Liability", Page::Liability),
        ("/members", "Members", Page::Members),
        ("/card", "Card", Page::Card),
    ]
    .map(|(href, label, p)| Nav {
        href,
        label,
        current: p == page,
    });
    let csv = csv_link(page, snap);
    templates()
        .get_template("page.html")?
        .render(minijinja::context! {
            title,
            brand => snap.brand,
            who => who(grant, &snap.stores),
            today => day_text(snap.today),
            currency => snap.currency.0,
            nav,
            blocks,
            csv,
        })
}

fn csv_link(page: Page, snap: &Snapshot) -> String {
    let q = &snap.query;
    let query = match page {
        Page::Settlement => format!("?from={}&to={}", q.from, q.to),
        Page::Members if q.idle_days != 0 => format!("?idle_days={}", q.idle_days),
        Page::Card => format!("?card={}&cursor={}", q.card, q.cursor),
        Page::Record => return String::new(),
        _ => String::new(),
    };
    format!("/csv/{}.csv{query}", page.name())
}

/// The login page (no data).
pub fn login(why: &str) -> String {
    templates()
        .get_template("login.html")
        .and_then(|t| t.render(minijinja::context! { why }))
        .unwrap_or_else(|_| "<!doctype html><title>cardd</title><p>Sign in again.</p>".into())
}

/// The confirmation page of a live link: whom it signs in as, and the
/// form whose post (with `check`, bound to the browser's pre-login
/// cookie) opens the session. No data.
pub fn confirm(token: &str, check: &str, grant: Grant) -> String {
    let who = who(grant, &BTreeMap::new());
    templates()
        .get_template("confirm.html")
        .and_then(|t| {
            t.render(
                minijinja::context! { token, check, who => who.trim_end(), brand => grant.brand },
            )
        })
        .unwrap_or_else(|_| "<!doctype html><title>cardd</title><p>Sign in again.</p>".into())
}

/// The page's reports as CSV (`report --csv`'s form), each after a
/// `# report KIND` line.
pub fn csv(snap: &Snapshot) -> String {
    let mut out = String::new();
    for shown in &snap.reports {
        let r = &shown.request;
        let line = format!("# report {} {} {}", r.kind, r.from, r.to);
        out.push_str(line.trim_end());
        out.push('\n');
        match &shown.answer {
            Ok(report) => out.push_str(&report_csv(report)),
            Err(e) => out.push_str(&format!("# refused: {}\n\n", e.message)),
        }
    }
    if let Some(Ok(c)) = &snap.card {
        out.push_str("# card\ncard,balance_minor,paid_minor,bonus_minor,points,tier\n");
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            csv_text(&c.card),
            c.balance_minor,
            c.paid_balance_minor,
            c.bonus_balance_minor,
            c.points,
            csv_text(&c.tier)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::pages::Query;

    fn cell(v: Cell) -> pb::ReportCell {
        pb::ReportCell { value: Some(v) }
    }

    /// A liability page whose store name and figures come from `name`.
    fn snapshot(name: &str) -> Snapshot {
        let report = pb::Report {
            kind: "liability".into(),
            sections: vec![pb::ReportSection {
                name: "liability".into(),
                columns: vec!["store_id".into(), "total_minor".into()],
                rows: vec![pb::ReportRow {
                    cells: vec![cell(Cell::Int(1)), cell(Cell::Int(-1250))],
                }],
            }],
            ..Default::default()
        };
        Snapshot {
            brand: name.into(),
            currency: ("CNY".into(), 2),
            today: 20_000,
            query: Query::default(),
            stores: [(1, name.to_string())].into(),
            reports: vec![Shown {
                request: pb::GetReport::default(),
                answer: Ok(report),
            }],
            card: None,
            zone: String::new(),
            record: None,
        }
    }

    #[test]
    fn text_from_the_ledger_is_escaped_and_figures_keep_their_value() {
        let grant = Grant {
            brand: 1,
            principal: Principal::Owner,
            key: [0; 32],
        };
        let html = page(Page::Liability, &snapshot("<script>x</script>"), grant).unwrap();
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains(r#"data-col="total_minor" data-value="-1250""#));
        assert!(html.contains(">-12.50<"), "{html}");
        let login = login("<b>why</b>");
        assert!(login.contains("&lt;b&gt;why") && !login.contains("<b>"));
    }

    /// The tier name is the owner's text: a comma or a formula in it must
    /// stay one cell of text in a spreadsheet.
    #[test]
    fn the_card_line_of_the_csv_quotes_the_tier_and_defuses_formulas() {
        let mut snap = snapshot("Tea");
        let card = |tier: &str| pb::CardView {
            card: "8000010000000000422".into(),
            balance_minor: 1250,
            tier: tier.into(),
            ..Default::default()
        };
        snap.card = Some(Ok(card("Gold, plus")));
        assert!(csv(&snap).ends_with("\n8000010000000000422,1250,0,0,0,\"Gold, plus\"\n"));
        snap.card = Some(Ok(card("=HYPERLINK(\"x\")")));
        let out = csv(&snap);
        assert!(out.ends_with(",\"'=HYPERLINK(\"\"x\"\")\"\n"), "{out}");
    }

    #[test]
    fn bars_scale_to_the_largest_and_never_go_negative() {
        let f = Fmt {
            exponent: 2,
            stores: &BTreeMap::new(),
            zone: "",
        };
        let values = [("a".to_string(), 100), ("b".into(), 50), ("c".into(), -5)];
        let Block::Bars { bars, height, .. } = bars(&f, "x", "t", &values, true) else {
            panic!("bars")
        };
        assert_eq!(bars[0].h, height);
        assert_eq!(bars[1].h, height / 2);
        assert_eq!(bars[2].h, 0);
        assert_eq!(bars[1].y, height - height / 2);
    }
}
