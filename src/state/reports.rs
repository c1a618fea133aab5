//! The owner's reports, answered from the books (`books.rs`) and the cards,
//! never from the records: a report costs a walk over the days asked for
//! (at most `MAX_BOOK_DAYS`) and, for the card reports, one pass over the
//! cards. Read only: nothing here changes the state.
//!
//! Every report is a list of named sections of rows; a column whose name
//! ends in `_minor` holds money, one whose name contains `store` a store
//! id. `docs/reports.md` describes each report and its columns.
use std::collections::BTreeMap;

use super::books::{day_of_text, day_text, Tally, Value};
use super::{format_card, rules, BrandState};
use crate::error::{refuse, Refusal};
use crate::limits::{MAX_BOOK_DAYS, MAX_REPORT_BYTES, MAX_REPORT_ROWS};
use crate::pb::{self, report_cell::Value as Cell, CardStatus, ErrorCode as E};

/// Days a report covers when `--from` is not given: the 30 days to `to`.
const DEFAULT_SPAN_DAYS: i32 = 30;
/// Dormant: days without a visit when not given.
const DEFAULT_IDLE_DAYS: u32 = 90;

/// Reports a store manager may read: its own store's.
const STORE_MANAGER_KINDS: [&str; 6] = [
    "sales",
    "daily",
    "liability",
    "settlement",
    "terminals",
    "activity",
];

/// Answers a report request. `today` is the brand day of the request;
/// `scope` a store manager's store (its reports are that store's only).
pub fn report(
    state: &BrandState,
    r: &pb::GetReport,
    now_ms: i64,
    today: i32,
    scope: Option<u32>,
) -> Result<pb::Report, Refusal> {
    let scoped;
    let r = match scope {
        None => r,
        Some(store) => {
            scoped = scoped_request(r, store)?;
            &scoped
        }
    };
    if let Some(s) = r.store_id {
        if s != 0 && !state.stores.contains_key(&s) {
            return refuse(E::StoreNotFound, "no such store");
        }
    }
    let mut out = pb::Report {
        kind: r.kind.clone(),
        ..Default::default()
    };
    out.sections = match r.kind.as_str() {
        "sales" => sales(state, r, today)?,
        "liability" => liability(state, r, today)?,
        "settlement" => settlement(state, r, today)?,
        "dormant" => dormant(state, r, today),
        "points-expiring" => points_expiring(state, r, now_ms),
        "rfm" => rfm(state, today),
        "daily" => daily(state, r, today)?,
        "stores" => vec![list_stores(state)],
        "terminals" => vec![list_terminals(state, r)],
        "cards" => {
            let (section, next) = list_cards(state, r)?;
            out.next_cursor = next;
            vec![section]
        }
        "rules" => {
            out.rules = Some(state.rules.clone());
            vec![]
        }
        "activity" => vec![activity_range(state, r, today)?],
        other => {
            return refuse(
                E::InvalidArgument,
                format!(
                    "unknown report {other:?}: activity, sales, liability, settlement, \
                     dormant, points-expiring, rfm, daily, stores, terminals, cards or rules"
                ),
            )
        }
    };
    fit_one_frame(&mut out);
    Ok(out)
}

/// A store manager's request, held to its store: another store, a card,
/// or a brand-wide report is `WRONG_ROLE`.
fn scoped_request(r: &pb::GetReport, store: u32) -> Result<pb::GetReport, Refusal> {
    let wrong = |why: &str| {
        refuse(
            E::WrongRole,
            format!("a store manager of store {store} {why}"),
        )
    };
    if !STORE_MANAGER_KINDS.contains(&r.kind.as_str()) {
        return wrong(
            "reads its store's sales, daily, liability, settlement, terminals and activity",
        );
    }
    if r.store_id.is_some_and(|s| s != store) {
        return wrong("reads its own store only");
    }
    if !r.card.is_empty() {
        return wrong("reads its store's activity, not a card's");
    }
    Ok(pb::GetReport {
        store_id: Some(store),
        ..r.clone()
    })
}

/// Cuts rows from the longest section until the report fits one frame.
fn fit_one_frame(out: &mut pb::Report) {
    use prost::Message;
    while out.encoded_len() > MAX_REPORT_BYTES {
        let Some(longest) = out.sections.iter_mut().max_by_key(|s| s.rows.len()) else {
            return;
        };
        let keep = longest.rows.len() * 3 / 4;
        longest.rows.truncate(keep);
        out.truncated = true;
        if keep == 0 {
            return;
        }
    }
}

fn int(v: impl Into<i64>) -> pb::ReportCell {
    pb::ReportCell {
        value: Some(Cell::Int(v.into())),
    }
}

fn text(v: impl Into<String>) -> pb::ReportCell {
    pb::ReportCell {
        value: Some(Cell::Text(v.into())),
    }
}

fn section(name: &str, columns: &[&str], rows: Vec<Vec<pb::ReportCell>>) -> pb::ReportSection {
    pb::ReportSection {
        name: name.into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows: rows
            .into_iter()
            .map(|cells| pb::ReportRow { cells })
            .collect(),
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, Refusal> {
    refuse(E::InvalidArgument, why.into())
}

fn parse_day(text: &str, what: &str) -> Result<i32, Refusal> {
    day_of_text(text).map_or_else(|| bad(format!("{what} must be a date YYYY-MM-DD")), Ok)
}

/// The days asked for: `to` (default today) back to `from` (default 30
/// days), refused when reversed, longer than the books keep, or older.
fn range(r: &pb::GetReport, today: i32) -> Result<(i32, i32), Refusal> {
    let to = match r.to.as_str() {
        "" => today,
        t => parse_day(t, "--to")?,
    };
    let from = match r.from.as_str() {
        "" => to - (DEFAULT_SPAN_DAYS - 1),
        f => parse_day(f, "--from")?,
    };
    if from > to {
        return bad("--from is after --to");
    }
    if to - from >= MAX_BOOK_DAYS || from < today - MAX_BOOK_DAYS {
        return bad(format!(
            "the books keep the last {MAX_BOOK_DAYS} days: ask for a range inside them"
        ));
    }
    Ok((from, to))
}

fn store_ok(r: &pb::GetReport, store: u32) -> bool {
    r.store_id.is_none_or(|s| s == store)
}

const TALLY_COLUMNS: [&str; 19] = [
    "purchases",
    "purchase_minor",
    "bonus_spent_minor",
    "visits",
    "top_ups",
    "top_up_paid_minor",
    "top_up_bonus_minor",
    "refunds",
    "refund_minor",
    "reversals",
    "net_sales_minor",
    "average_ticket_minor",
    "points_paid_minor",
    // The owner's corrections (issue 15), at the head office (store 0).
    "adjustments",
    "adjusted_minor",
    "voided_top_up_minor",
    "closed_cards",
    "cashed_out_minor",
    "forfeited_bonus_minor",
];

fn tally_cells(t: &Tally) -> Vec<pb::ReportCell> {
    let average = if t.purchases == 0 {
        0
    } else {
        t.purchase_minor / i64::from(t.purchases)
    };
    vec![
        int(t.purchases),
        int(t.purchase_minor),
        int(t.purchase_bonus_minor),
        int(t.visits),
        int(t.top_ups),
        int(t.top_up_paid_minor),
        int(t.top_up_bonus_minor),
        int(t.refunds),
        int(t.refund_minor),
        int(t.reversals),
        int(t.net_sales_minor()),
        int(average),
        int(t.points_paid_minor),
        int(t.adjustments),
        int(t.adjusted_in_minor.saturating_sub(t.adjusted_out_minor)),
        int(t.voided_top_up_minor),
        int(t.closed_cards),
        int(t.cashed_out_minor),
        int(t.forfeited_bonus_minor),
    ]
}

/// The cells of a sales row's key (day, store, cashier or terminal).
type KeyCells = fn(&BrandState, (i64, u32)) -> Vec<pb::ReportCell>;

/// Sales by day, store, cashier or terminal over a range.
fn sales(
    state: &BrandState,
    r: &pb::GetReport,
    today: i32,
) -> Result<Vec<pb::ReportSection>, Refusal> {
    let (from, to) = range(r, today)?;
    let mut groups: BTreeMap<(i64, u32), Tally> = BTreeMap::new();
    let mut total = Tally::default();
    for (day, book) in state.books.days.range(from..=to) {
        for (store, t) in book.stores.iter().filter(|(s, _)| store_ok(r, **s)) {
            total.add(t);
            match r.by.as_str() {
                "" | "store" => groups.entry((i64::from(*store), 0)).or_default().add(t),
                "day" => groups.entry((i64::from(*day), 0)).or_default().add(t),
                _ => {}
            }
        }
        if r.by == "terminal" {
            for (tid, t) in &book.terminals {
                let store = state.terminals.get(tid).map_or(0, |x| x.store_id);
                if store_ok(r, store) {
                    groups.entry((i64::from(*tid), store)).or_default().add(t);
                }
            }
        }
        if r.by == "cashier" {
            for ((store, op), t) in book.operators.iter().filter(|((s, _), _)| store_ok(r, *s)) {
                groups.entry((i64::from(*store), *op)).or_default().add(t);
            }
        }
    }
    let (keys, key_cells): (&[&str], KeyCells) = match r.by.as_str() {
        "" | "store" => (&["store_id"], |_, k| vec![int(k.0)]),
        "day" => (&["day"], |_, k| vec![text(day_text(k.0 as i32))]),
        "terminal" => (&["terminal_id", "store_id"], |_, k| {
            vec![int(k.0), int(k.1)]
        }),
        "cashier" => (&["store_id", "operator"], |s, k| {
            let name = s.books.operators.get(k.1 as usize).cloned();
            vec![int(k.0), text(name.unwrap_or_default())]
        }),
        other => return bad(format!("--by {other:?}: day, store, cashier or terminal")),
    };
    let columns: Vec<&str> = keys.iter().chain(TALLY_COLUMNS.iter()).copied().collect();
    let rows = groups
        .into_iter()
        .map(|(k, t)| [key_cells(state, k), tally_cells(&t)].concat())
        .collect();
    Ok(vec![
        section("sales", &columns, rows),
        sales_total(state, &total, (from, to), r.store_id.is_some()),
    ])
}

/// The range's totals, with the cards active in it: those whose last
/// visit falls in it or later (exact for a range that ends today). Cards
/// are the brand's, so one store's totals leave them out (0).
fn sales_total(
    state: &BrandState,
    total: &Tally,
    (from, to): (i32, i32),
    one_store: bool,
) -> pb::ReportSection {
    let active = state
        .cards
        .values()
        .filter(|c| !one_store && c.last_visit_day >= i64::from(from))
        .count();
    let active = i64::try_from(active).unwrap_or(i64::MAX);
    let per_card = match active {
        0 => "0.00".to_string(),
        n => {
            let hundredths = i64::from(total.visits) * 100 / n;
            format!("{}.{:02}", hundredths / 100, hundredths % 100)
        }
    };
    let mut columns = vec!["from", "to"];
    columns.extend(TALLY_COLUMNS);
    columns.extend(["active_cards", "visits_per_active_card"]);
    let mut row = vec![text(day_text(from)), text(day_text(to))];
    row.extend(tally_cells(total));
    row.extend([int(active), text(per_card)]);
    section("total", &columns, vec![row])
}

/// Outstanding value by store of issue (as of the end of `--date`), card
/// counts, average balance, and (as of today) aging by last activity.
fn liability(
    state: &BrandState,
    r: &pb::GetReport,
    today: i32,
) -> Result<Vec<pb::ReportSection>, Refusal> {
    let as_of = match r.date.as_str() {
        "" => today,
        d => parse_day(d, "--as-of")?.min(today),
    };
    if as_of < today - MAX_BOOK_DAYS {
        return bad(format!("the books keep the last {MAX_BOOK_DAYS} days"));
    }
    let mut owed: BTreeMap<u32, Value> = state.books.liability.clone();
    for book in state.books.days.range(as_of + 1..).map(|(_, b)| b) {
        for (store, change) in &book.liability_change {
            let v = owed.entry(*store).or_default();
            v.paid -= change.paid;
            v.bonus -= change.bonus;
        }
    }
    let now = as_of == today;
    let (cards, aging) = if now {
        holders_and_aging(state, r, today)
    } else {
        Default::default()
    };
    let rows = owed
        .iter()
        .filter(|(s, v)| store_ok(r, **s) && (v.paid != 0 || v.bonus != 0))
        .map(|(s, v)| {
            let n = cards.get(s).copied().unwrap_or(0);
            let average = if n == 0 { 0 } else { (v.paid + v.bonus) / n };
            vec![
                int(*s),
                int(v.paid),
                int(v.bonus),
                int(v.paid + v.bonus),
                int(n),
                int(average),
            ]
        })
        .collect();
    let columns = [
        "store_id",
        "paid_minor",
        "bonus_minor",
        "total_minor",
        "cards",
        "average_balance_minor",
    ];
    let mut out = vec![section("liability", &columns, rows)];
    if now {
        out.push(aging_section(aging));
    }
    Ok(out)
}

/// Value by days since its card's last activity: 0-30, 31-90, 91-365, >365.
type Aging = [(i64, Value); 4];

/// One pass over the cards: how many hold value from each store of issue,
/// and the aging of that value (only the stores asked for).
fn holders_and_aging(
    state: &BrandState,
    r: &pb::GetReport,
    today: i32,
) -> (BTreeMap<u32, i64>, Aging) {
    let mut cards: BTreeMap<u32, i64> = BTreeMap::new();
    let mut aging: Aging = Default::default();
    for c in state.cards.values().filter(|c| c.balance() > 0) {
        let mut held = Value::default();
        for lot in c.lots.as_slice().iter().filter(|l| store_ok(r, l.store)) {
            *cards.entry(lot.store).or_default() += 1;
            held.paid += lot.paid;
            held.bonus += lot.bonus;
        }
        if held == Value::default() {
            continue;
        }
        let bucket = match today.saturating_sub(c.last_active_day) {
            ..=30 => 0,
            31..=90 => 1,
            91..=365 => 2,
            _ => 3,
        };
        aging[bucket].0 += 1;
        aging[bucket].1.paid += held.paid;
        aging[bucket].1.bonus += held.bonus;
    }
    (cards, aging)
}

fn aging_section(aging: Aging) -> pb::ReportSection {
    let names = ["0-30", "31-90", "91-365", ">365"];
    let rows = names
        .iter()
        .zip(aging)
        .map(|(n, (c, v))| {
            vec![
                text(*n),
                int(c),
                int(v.paid),
                int(v.bonus),
                int(v.paid + v.bonus),
            ]
        })
        .collect();
    let columns = [
        "days_since_activity",
        "cards",
        "paid_minor",
        "bonus_minor",
        "total_minor",
    ];
    section("aging", &columns, rows)
}

/// What each store owes each other over a range, netted per pair, and
/// each store's net (the nets sum to zero).
fn settlement(
    state: &BrandState,
    r: &pb::GetReport,
    today: i32,
) -> Result<Vec<pb::ReportSection>, Refusal> {
    if r.from.is_empty() || r.to.is_empty() {
        return bad("settlement needs --from and --to");
    }
    let (from, to) = range(r, today)?;
    let mut net: BTreeMap<u32, Value> = BTreeMap::new();
    let mut rows = Vec::new();
    for (debtor, creditor, v) in settlement_pairs(state, from, to) {
        if !(store_ok(r, debtor) || store_ok(r, creditor)) {
            continue;
        }
        for (store, sign) in [(debtor, -1), (creditor, 1)] {
            let n = net.entry(store).or_default();
            n.paid += sign * v.paid;
            n.bonus += sign * v.bonus;
        }
        rows.push(vec![
            int(debtor),
            int(creditor),
            int(v.paid),
            int(v.bonus),
            int(v.paid + v.bonus),
        ]);
    }
    let columns = [
        "from_store",
        "to_store",
        "paid_minor",
        "bonus_minor",
        "total_minor",
    ];
    let net_rows = net
        .iter()
        .map(|(s, v)| vec![int(*s), int(v.paid), int(v.bonus), int(v.paid + v.bonus)])
        .collect();
    let net_columns = ["store_id", "net_paid_minor", "net_bonus_minor", "net_minor"];
    Ok(vec![
        section("settlement", &columns, rows),
        section("net", &net_columns, net_rows),
    ])
}

/// Who owes whom over the days `from..=to`, netted per pair of stores:
/// (debtor, creditor, value), one per pair with a non-zero net, in store
/// order. The daemon's report and the auditor's verify both use it.
pub fn settlement_pairs(state: &BrandState, from: i32, to: i32) -> Vec<(u32, u32, Value)> {
    let mut pairs: BTreeMap<(u32, u32), Value> = BTreeMap::new();
    for (_, book) in state.books.days.range(from..=to) {
        for ((issuer, redeemer), v) in &book.settlement {
            // One entry per unordered pair, signed: positive = lo owes hi.
            let (key, sign) = if issuer < redeemer {
                ((*issuer, *redeemer), 1)
            } else {
                ((*redeemer, *issuer), -1)
            };
            let e = pairs.entry(key).or_default();
            e.paid += sign * v.paid;
            e.bonus += sign * v.bonus;
        }
    }
    pairs
        .into_iter()
        .filter(|(_, v)| *v != Value::default())
        .map(|((lo, hi), v)| {
            if v.paid + v.bonus >= 0 {
                (lo, hi, v)
            } else {
                let v = Value {
                    paid: -v.paid,
                    bonus: -v.bonus,
                };
                (hi, lo, v)
            }
        })
        .collect()
}

/// The first step of the activity report: the card or store checked, and
/// the days asked for turned into sequence numbers (`from_seq`, `end_seq`;
/// 0 = the chain's end) from the books' first record of each day. The
/// records themselves are read from storage (`audit::activity`).
fn activity_range(
    state: &BrandState,
    r: &pb::GetReport,
    today: i32,
) -> Result<pb::ReportSection, Refusal> {
    let card = match (r.card.as_str(), r.store_id) {
        ("", None) => return bad("activity needs --card or --store"),
        ("", Some(_)) => String::new(),
        (c, _) => {
            let number = crate::card_number::parse_number(c)
                .filter(|(brand, n)| *brand == state.brand_id && state.cards.contains_key(n));
            match number {
                Some((_, n)) => format_card(n),
                None => return refuse(E::CardNotFound, "card not found"),
            }
        }
    };
    let (from_seq, end_seq) = if r.from.is_empty() && r.to.is_empty() {
        (1, 0)
    } else {
        let (from, to) = range(r, today)?;
        let first = |d: i32| {
            state
                .books
                .days
                .range(d..)
                .map(|(_, b)| b.first_seq)
                .find(|s| *s != 0)
        };
        (
            first(from).unwrap_or(state.seq + 1),
            first(to.saturating_add(1)).unwrap_or(0),
        )
    };
    let from_seq = from_seq.max(r.cursor);
    let seq = |s: u64| int(i64::try_from(s).unwrap_or(i64::MAX));
    let row = vec![seq(from_seq), seq(end_seq), text(card)];
    Ok(section(
        "range",
        &["from_seq", "end_seq", "card"],
        vec![row],
    ))
}

/// The day a card was last seen: its last visit, or (never visited) its
/// last activity (issue or load).
fn last_seen(c: &super::Card) -> i64 {
    if c.last_visit_day >= 0 {
        c.last_visit_day
    } else {
        i64::from(c.last_active_day)
    }
}

/// Cards with a balance and no visit in `--idle-days`, largest balance
/// first (at most `MAX_REPORT_ROWS` rows; the summary counts them all).
fn dormant(state: &BrandState, r: &pb::GetReport, today: i32) -> Vec<pb::ReportSection> {
    let idle = match r.idle_days {
        0 => DEFAULT_IDLE_DAYS,
        n => n,
    };
    let cutoff = i64::from(today) - i64::from(idle);
    let mut found: Vec<(u64, &super::Card)> = state
        .cards
        .iter()
        .filter(|(_, c)| c.status != CardStatus::Replaced && c.balance() > 0)
        .filter(|(_, c)| last_seen(c) < cutoff)
        .map(|(n, c)| (*n, c))
        .collect();
    found.sort_unstable_by_key(|(n, c)| (std::cmp::Reverse(c.balance()), *n));
    let total: i64 = found.iter().map(|(_, c)| c.balance()).sum();
    let summary = vec![vec![int(idle), int(found.len() as i64), int(total)]];
    let rows = found
        .iter()
        .take(MAX_REPORT_ROWS)
        .map(|(n, c)| {
            let last = match c.last_visit_day {
                -1 => "never".to_string(),
                d => day_text(d as i32),
            };
            let tier = rules::tier_of(&state.rules, c, today).0;
            vec![
                text(format_card(*n)),
                int(c.balance()),
                int(c.paid),
                int(c.bonus),
                text(tier),
                text(last),
                int(i64::from(today) - last_seen(c)),
            ]
        })
        .collect();
    let columns = [
        "card",
        "balance_minor",
        "paid_minor",
        "bonus_minor",
        "tier",
        "last_visit",
        "idle_days",
    ];
    vec![
        section("dormant", &columns, rows),
        section("summary", &["idle_days", "cards", "balance_minor"], summary),
    ]
}

/// Days ahead the points-expiring report looks when none is given.
pub const DEFAULT_EXPIRING_DAYS: u32 = 30;

/// Cards with points expiring in the next `idle_days` days (default 30)
/// as of `now_ms` (the request's time): most points expiring first. Points
/// already past their expiry count as gone, as at the card's next record.
fn points_expiring(state: &BrandState, r: &pb::GetReport, now_ms: i64) -> Vec<pb::ReportSection> {
    let days = match r.idle_days {
        0 => DEFAULT_EXPIRING_DAYS,
        n => n.min(super::points::MAX_EXPIRING_REPORT_DAYS),
    };
    let until = now_ms.saturating_add(i64::from(days) * super::points::DAY_MS);
    let mut found: Vec<(u64, i64, i64, i64)> = state
        .cards
        .iter()
        .filter(|(_, c)| c.status != CardStatus::Replaced)
        .filter_map(|(n, c)| {
            let expiring = super::points::expiring(&c.loyalty, now_ms, until);
            let gone = super::points::expiring(&c.loyalty, i64::MIN, now_ms);
            let first = c
                .loyalty
                .as_ref()?
                .lots
                .iter()
                .find(|l| l.expires_ms > now_ms)?;
            (expiring > 0).then_some((*n, c.points - gone, expiring, first.expires_ms))
        })
        .collect();
    found.sort_unstable_by_key(|(n, _, e, _)| (std::cmp::Reverse(*e), *n));
    let total: i64 = found.iter().map(|f| f.2).sum();
    let summary = vec![vec![
        int(i64::from(days)),
        int(found.len() as i64),
        int(total),
    ]];
    let rows = found
        .iter()
        .take(MAX_REPORT_ROWS)
        .map(|(n, points, expiring, first)| {
            vec![
                text(format_card(*n)),
                int(*points),
                int(*expiring),
                text(crate::render::utc_time(*first)),
            ]
        })
        .collect();
    let columns = ["card", "points", "points_expiring", "first_expiry"];
    vec![
        section("points-expiring", &columns, rows),
        section("summary", &["days", "cards", "points_expiring"], summary),
    ]
}

/// Quintile scores 1..=5 of `values` (higher value, higher score), by rank.
fn quintiles(values: &[i64]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by_key(|i| values[*i]);
    let mut score = vec![0u8; values.len()];
    for (rank, i) in order.into_iter().enumerate() {
        score[i] = u8::try_from(1 + rank * 5 / values.len()).expect("1..=5");
    }
    score
}

/// The segment of a card's recency, frequency and monetary scores.
fn segment(r: u8, f: u8, m: u8) -> &'static str {
    match (r, f, m) {
        (4.., 4.., 4..) => "champions",
        (_, 4.., _) if r >= 3 => "loyal",
        (4.., ..=2, _) => "new or promising",
        (..=2, 3.., _) => "at risk",
        (..=2, ..=2, _) => "hibernating",
        _ => "needs attention",
    }
}

/// RFM over the active cards (those with a visit): quintiles of recency
/// (days since the last visit), frequency (visit days) and monetary (net
/// spend), and the named segments with their counts and value. Cards with
/// equal values are ranked by card number (the lower number ranks lower):
/// the card map's order is its hasher's, seeded per process, and would
/// make the same ledger's report change from one start to the next.
fn rfm(state: &BrandState, today: i32) -> Vec<pb::ReportSection> {
    let mut by_number: Vec<(u64, &super::Card)> = state
        .cards
        .iter()
        .filter(|(_, c)| c.status != CardStatus::Replaced && c.last_visit_day >= 0)
        .map(|(n, c)| (*n, c))
        .collect();
    by_number.sort_unstable_by_key(|(n, _)| *n);
    let active: Vec<&super::Card> = by_number.into_iter().map(|(_, c)| c).collect();
    let recency: Vec<i64> = active.iter().map(|c| c.last_visit_day).collect();
    let frequency: Vec<i64> = active.iter().map(|c| i64::from(c.visits)).collect();
    let monetary: Vec<i64> = active.iter().map(|c| c.total_spend).collect();
    let (rs, fs, ms) = (
        quintiles(&recency),
        quintiles(&frequency),
        quintiles(&monetary),
    );
    let mut segments: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for (i, c) in active.iter().enumerate() {
        let s = segments.entry(segment(rs[i], fs[i], ms[i])).or_default();
        s.0 += 1;
        s.1 += c.balance();
        s.2 += c.total_spend;
    }
    let rows = segments
        .into_iter()
        .map(|(name, (n, balance, spend))| vec![text(name), int(n), int(balance), int(spend)])
        .collect();
    let columns = ["segment", "cards", "balance_minor", "spend_minor"];
    let summary = vec![vec![text(day_text(today)), int(active.len() as i64)]];
    vec![
        section("rfm", &columns, rows),
        section("summary", &["as_of", "active_cards"], summary),
    ]
}

/// One day per store against the day before and the same weekday a week
/// earlier.
fn daily(
    state: &BrandState,
    r: &pb::GetReport,
    today: i32,
) -> Result<Vec<pb::ReportSection>, Refusal> {
    let day = match r.date.as_str() {
        "" => today - 1,
        d => parse_day(d, "--date")?,
    };
    if day > today || day - 7 < today - MAX_BOOK_DAYS {
        return bad(format!(
            "--date must be within the last {MAX_BOOK_DAYS} days"
        ));
    }
    let at = |d: i32| state.books.days.get(&d);
    let mut stores: Vec<u32> = [day, day - 1, day - 7]
        .iter()
        .filter_map(|d| at(*d))
        .flat_map(|b| b.stores.keys().copied())
        .filter(|s| store_ok(r, *s))
        .collect();
    stores.sort_unstable();
    stores.dedup();
    let tally = |d: i32, s: u32| {
        at(d)
            .and_then(|b| b.stores.get(&s))
            .copied()
            .unwrap_or_default()
    };
    let rows = stores
        .iter()
        .map(|s| {
            let (t, y, w) = (tally(day, *s), tally(day - 1, *s), tally(day - 7, *s));
            vec![
                int(*s),
                int(t.net_sales_minor()),
                int(y.net_sales_minor()),
                int(w.net_sales_minor()),
                int(t.purchases),
                int(y.purchases),
                int(w.purchases),
                int(t.top_up_paid_minor),
                int(t.visits),
            ]
        })
        .collect();
    let columns = [
        "store_id",
        "net_sales_minor",
        "day_before_net_sales_minor",
        "week_before_net_sales_minor",
        "purchases",
        "day_before_purchases",
        "week_before_purchases",
        "top_up_paid_minor",
        "visits",
    ];
    let mut out = section("daily", &columns, rows);
    out.name = format!("daily {}", day_text(day));
    Ok(vec![out])
}

/// The newest day with a tally for `pick`, as text ("" for none).
fn last_activity(state: &BrandState, pick: impl Fn(&super::books::DayBook) -> bool) -> String {
    state
        .books
        .days
        .iter()
        .rev()
        .find(|(_, b)| pick(b))
        .map_or_else(String::new, |(d, _)| day_text(*d))
}

fn list_stores(state: &BrandState) -> pb::ReportSection {
    let rows = state
        .stores
        .iter()
        .map(|(id, s)| {
            let tills = state.terminals.values().filter(|t| t.store_id == *id);
            let (all, enabled) =
                tills.fold((0, 0), |(a, e), t| (a + 1, e + i64::from(!t.disabled)));
            let last = last_activity(state, |b| b.stores.contains_key(id));
            vec![
                int(*id),
                text(s.name.clone()),
                int(all),
                int(enabled),
                text(last),
            ]
        })
        .collect();
    let columns = [
        "store_id",
        "name",
        "terminals",
        "enabled_terminals",
        "last_activity",
    ];
    section("stores", &columns, rows)
}

fn list_terminals(state: &BrandState, r: &pb::GetReport) -> pb::ReportSection {
    let rows = state
        .terminals
        .iter()
        .filter(|(_, t)| store_ok(r, t.store_id))
        .map(|(id, t)| {
            let status = if t.disabled { "disabled" } else { "enabled" };
            let last = last_activity(state, |b| b.terminals.contains_key(id));
            vec![
                int(*id),
                int(t.store_id),
                text(t.label.clone()),
                text(status),
                int(i64::try_from(t.last_txn_id).unwrap_or(i64::MAX)),
                text(last),
            ]
        })
        .collect();
    let columns = [
        "terminal_id",
        "store_id",
        "label",
        "status",
        "last_txn_id",
        "last_activity",
    ];
    section("terminals", &columns, rows)
}

/// Cards in number order after `cursor`, at most `MAX_REPORT_ROWS`, with
/// the next page's cursor (0 = none).
fn list_cards(state: &BrandState, r: &pb::GetReport) -> Result<(pb::ReportSection, u64), Refusal> {
    let status = match r.status {
        0 => None,
        s => match i32::try_from(s)
            .ok()
            .and_then(|s| CardStatus::try_from(s).ok())
        {
            Some(s) => Some(s),
            None => return bad("unknown card status"),
        },
    };
    let mut page: Vec<u64> = state
        .cards
        .iter()
        .filter(|(n, c)| **n > r.cursor && status.is_none_or(|s| s == c.status))
        .map(|(n, _)| *n)
        .collect();
    let more = page.len() > MAX_REPORT_ROWS;
    if more {
        page.select_nth_unstable(MAX_REPORT_ROWS);
        page.truncate(MAX_REPORT_ROWS);
    }
    page.sort_unstable();
    let next = if more {
        page.last().copied().unwrap_or(0)
    } else {
        0
    };
    let rows = page
        .iter()
        .map(|n| {
            let c = &state.cards[n];
            let status = c.status.as_str_name().to_ascii_lowercase();
            let last = match c.last_visit_day {
                -1 => "never".to_string(),
                d => day_text(d as i32),
            };
            vec![
                text(format_card(*n)),
                text(status),
                int(c.balance()),
                int(c.points),
                text(rules::tier_of(&state.rules, c, state.books.today.day).0),
                text(last),
                text(day_text(c.last_active_day)),
            ]
        })
        .collect();
    let columns = [
        "card",
        "status",
        "balance_minor",
        "points",
        "tier",
        "last_visit",
        "last_activity",
    ];
    Ok((section("cards", &columns, rows), next))
}
