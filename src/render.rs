//! Turning replies into what people and scripts read: amounts as decimal
//! text (parsed and printed with integer arithmetic only), JSON objects
//! with `_minor` fields, and a cashier's receipt.
use serde_json::{json, Map, Value};

use crate::card_number::mask;
use crate::pb::{self, reply::Detail};

/// Parses a decimal amount like "12.50" into minor units for a currency
/// with `exponent` decimals. No sign, no exponent notation, no more
/// decimals than the currency has.
pub fn parse_amount(text: &str, exponent: u32) -> Result<i64, String> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if text.starts_with('-') {
        return Err(format!("'{text}' is below zero: give an amount like 12.50"));
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (text.contains('.') && !digits(frac)) {
        return Err(format!("'{text}' is not an amount like 12.50"));
    }
    if frac.len() > exponent as usize {
        return Err(format!("'{text}' has more than {exponent} decimals"));
    }
    let scale = 10i64.pow(exponent);
    let frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().map_err(|e| e.to_string())?
    };
    let frac_minor = frac_value * 10i64.pow(exponent - frac.len() as u32);
    whole
        .parse::<i64>()
        .ok()
        .and_then(|w| w.checked_mul(scale))
        .and_then(|w| w.checked_add(frac_minor))
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Formats minor units as a decimal ("-12.50").
pub fn format_amount(minor: i64, exponent: u32) -> String {
    if exponent == 0 {
        return minor.to_string();
    }
    let scale = 10u64.pow(exponent);
    let abs = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = exponent as usize
    )
}

/// Formats minor units as a decimal with the currency ("12.50 CNY").
pub fn money(minor: i64, exponent: u32, currency: &str) -> String {
    format!("{} {currency}", format_amount(minor, exponent))
}

/// Unix milliseconds as a UTC date and time ("2026-03-01 09:30:00 UTC").
/// Receipts print UTC until a brand has a time zone of its own.
pub fn utc_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// A server's message with every amount in minor units ("at most 3000
/// minor units", "1..=1000000000 minor units") rewritten in major units
/// with the currency, for a cashier; `--json` keeps the original.
pub fn human_message(message: &str, exponent: u32, currency: &str) -> String {
    const UNIT: &str = " minor units";
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(UNIT) {
        let before = &rest[..at];
        let start = before.rfind(' ').map_or(0, |i| i + 1);
        let token = &before[start..];
        let minor = |s: &str| s.parse::<i64>().ok().map(|v| format_amount(v, exponent));
        let converted = match token.split_once("..=") {
            Some((lo, hi)) => minor(lo)
                .zip(minor(hi))
                .map(|(lo, hi)| format!("{lo} to {hi} {currency}")),
            None => minor(token).map(|v| format!("{v} {currency}")),
        };
        match converted {
            Some(text) => {
                out.push_str(&before[..start]);
                out.push_str(&text);
            }
            None => out.push_str(&rest[..at + UNIT.len()]),
        }
        rest = &rest[at + UNIT.len()..];
    }
    out.push_str(rest);
    out
}

fn error_name(code: i32) -> String {
    pb::ErrorCode::try_from(code).map_or_else(
        |_| format!("UNKNOWN_{code}"),
        |c| c.as_str_name().to_string(),
    )
}

/// One JSON object for a reply: amounts in `_minor` fields, the card's
/// balance, points and tier, and the receipt's `record_seq`/`record_hash`.
pub fn reply_json(reply: &pb::Reply) -> Value {
    let mut m = Map::new();
    m.insert("ok".into(), json!(true));
    if let Some(c) = &reply.card {
        card_fields(&mut m, c);
    }
    if let Some(r) = &reply.receipt {
        receipt_fields(&mut m, r);
    }
    if let Some(d) = &reply.detail {
        detail_fields(&mut m, d);
    }
    if !reply.promotion_line.is_empty() {
        m.insert("promotion_line".into(), json!(reply.promotion_line));
    }
    m.insert("replayed".into(), json!(reply.replayed));
    Value::Object(m)
}

/// The card after the operation.
fn card_fields(m: &mut Map<String, Value>, c: &pb::CardView) {
    m.insert("card".into(), json!(c.card));
    m.insert(
        "card_status".into(),
        json!(pb::CardStatus::try_from(c.status).map_or("UNKNOWN", |s| s.as_str_name())),
    );
    m.insert("balance_minor".into(), json!(c.balance_minor));
    m.insert("paid_balance_minor".into(), json!(c.paid_balance_minor));
    m.insert("bonus_balance_minor".into(), json!(c.bonus_balance_minor));
    m.insert("points".into(), json!(c.points));
    m.insert("tier".into(), json!(c.tier));
    m.insert("total_spend_minor".into(), json!(c.total_spend_minor));
    m.insert("visits".into(), json!(c.visits));
    // Issue 15: only when set, so that every other answer keeps its shape.
    if c.expires_ms != 0 {
        m.insert("expires_ms".into(), json!(c.expires_ms));
    }
    if c.closed {
        m.insert("closed".into(), json!(true));
    }
    if c.points_next_expiring != 0 {
        m.insert("points_next_expiring".into(), json!(c.points_next_expiring));
        m.insert(
            "points_next_expiry_ms".into(),
            json!(c.points_next_expiry_ms),
        );
    }
}

/// The record written: where it sits in the chain and who made it.
fn receipt_fields(m: &mut Map<String, Value>, r: &pb::Receipt) {
    m.insert("record_seq".into(), json!(r.seq));
    m.insert("record_hash".into(), json!(hex::encode(&r.hash)));
    m.insert("time_ms".into(), json!(r.time_ms));
    m.insert("store_id".into(), json!(r.store_id));
    m.insert("terminal_id".into(), json!(r.terminal_id));
    m.insert("txn_id".into(), json!(r.txn_id));
}

/// The operation's own result.
fn detail_fields(m: &mut Map<String, Value>, detail: &Detail) {
    match detail {
        Detail::Purchase(p) => {
            m.insert("requested_minor".into(), json!(p.requested_minor));
            m.insert("approved_minor".into(), json!(p.approved_minor));
            m.insert("remaining_due_minor".into(), json!(p.remaining_due_minor));
            m.insert("points_earned".into(), json!(p.points_earned));
            // Only a purchase with points or a change of tier says more,
            // so an ordinary one prints as it always did.
            if p.points_spent != 0 {
                m.insert("points_spent".into(), json!(p.points_spent));
                m.insert("points_value_minor".into(), json!(p.points_value_minor));
            }
            if p.tier_before != p.tier {
                m.insert("tier_before".into(), json!(p.tier_before));
                m.insert("tier_fell".into(), json!(p.tier_fell));
            }
        }
        Detail::TopUp(t) => {
            m.insert("paid_minor".into(), json!(t.paid_minor));
            m.insert("bonus_minor".into(), json!(t.bonus_minor));
            // Only an owner's load or a sale below face value says more,
            // so a till's ordinary top-up prints as it always did.
            if t.channel != pb::Channel::Store as i32 {
                m.insert("channel".into(), json!(t.channel().as_str_name()));
                m.insert("reference".into(), json!(t.reference));
            }
            if t.price_minor != 0 {
                m.insert("price_minor".into(), json!(t.price_minor));
            }
        }
        Detail::Refund(r) => {
            m.insert("refunded_minor".into(), json!(r.refunded_minor));
            m.insert(
                "refundable_left_minor".into(),
                json!(r.refundable_left_minor),
            );
            m.insert("points_removed".into(), json!(r.points_removed));
            if r.points_returned != 0 {
                m.insert("points_returned".into(), json!(r.points_returned));
                m.insert("points_value_minor".into(), json!(r.points_value_minor));
            }
        }
        Detail::Reversal(r) => {
            m.insert("original_txn_id".into(), json!(r.original_txn_id));
            m.insert("original_found".into(), json!(r.original_found));
            m.insert("original_seq".into(), json!(r.original_seq));
            m.insert("value_minor".into(), json!(r.value_minor));
        }
        Detail::Points(p) => {
            m.insert("points_redeemed".into(), json!(p.points_redeemed));
        }
        Detail::Shift(s) => {
            m.insert("balanced".into(), json!(s.balanced));
            m.insert("shift_number".into(), json!(s.shift_number));
            m.insert("server_totals".into(), shift_json(s.server_totals.as_ref()));
        }
        Detail::Status(s) => {
            m.insert(
                "txn_state".into(),
                json!(pb::TxnState::try_from(s.state).map_or("UNKNOWN", |t| t.as_str_name())),
            );
            m.insert("status_seq".into(), json!(s.seq));
            if let Some(o) = &s.original {
                m.insert("original".into(), reply_json(o));
            }
        }
        Detail::Store(s) => {
            m.insert("store_id".into(), json!(s.store_id));
        }
        Detail::Terminal(t) => {
            m.insert("new_terminal_id".into(), json!(t.terminal_id));
            m.insert("store_id".into(), json!(t.store_id));
        }
        // The token is a secret: `web-login` prints the link itself.
        Detail::WebLogin(w) => {
            m.insert("expires_ms".into(), json!(w.expires_ms));
            m.insert("store_id".into(), json!(w.store_id));
        }
    }
}

/// Shift totals as JSON.
pub fn shift_json(t: Option<&pb::ShiftTotals>) -> Value {
    let t = t.cloned().unwrap_or_default();
    json!({
        "purchase_count": t.purchase_count, "purchase_minor": t.purchase_minor,
        "top_up_count": t.top_up_count, "top_up_minor": t.top_up_minor,
        "refund_count": t.refund_count, "refund_minor": t.refund_minor,
        "reversal_count": t.reversal_count, "reversal_minor": t.reversal_minor,
        "redeem_count": t.redeem_count, "redeem_points": t.redeem_points,
    })
}

/// One JSON object for a refusal: `{"ok": false, "error": "CODE", "message": ...}`.
pub fn error_json(code: i32, message: &str) -> Value {
    json!({ "ok": false, "error": error_name(code), "message": message })
}

/// One JSON object for a failure on the client's side (usage, key file,
/// connection): the same shape as a refusal, with the client's own code.
pub fn failure_json(code: &str, message: &str) -> Value {
    json!({ "ok": false, "error": code, "message": message })
}

/// Who prints a receipt, for whom, and when.
pub struct Printer<'a> {
    /// The signed-on session: brand, store, terminal, currency.
    pub session: &'a pb::SignOnOk,
    /// The cashier (or the owner's operator) recorded on the request.
    pub cashier: &'a str,
    /// A customer's copy: only it carries the brand's promotion line.
    pub customer: bool,
    /// The time printed when the answer has no record (an inquiry), Unix ms.
    pub now_ms: i64,
}

/// Width of a receipt's label column; values are right-aligned so that the
/// whole line fits a 40-column receipt printer.
const LABEL: usize = 16;
/// Width of a receipt's value column.
const VALUE: usize = 24;

/// One receipt line: the label, then the value right-aligned.
fn line(label: &str, value: impl std::fmt::Display) -> String {
    format!("{label:<LABEL$}{value:>VALUE$}")
}

/// A receipt a person can read: who, where and when, what happened, the
/// card afterwards. Card numbers are masked; amounts are in major units
/// with the currency.
pub fn receipt_text(reply: &pb::Reply, p: &Printer) -> String {
    let s = p.session;
    let amt = |m: i64| money(m, s.currency_exponent, &s.currency);
    let mut out = head_lines(reply, p);
    out.push(receipt_title(reply).to_string());
    if let Some(c) = &reply.card {
        out.push(line("Card", mask(&c.card)));
    }
    if let Some(d) = &reply.detail {
        detail_lines(&mut out, d, &amt);
    }
    footer_lines(&mut out, reply, &amt);
    if p.customer && !reply.promotion_line.is_empty() {
        out.push(reply.promotion_line.clone());
    }
    out.join("\n")
}

/// The brand, the store, the terminal, the cashier and the time.
fn head_lines(reply: &pb::Reply, p: &Printer) -> Vec<String> {
    let s = p.session;
    let mut out = vec![s.brand_name.clone()];
    if s.store_id == 0 {
        out.push(line("Store", "head office"));
    } else {
        out.push(line("Store", format!("{} (#{})", s.store_name, s.store_id)));
        out.push(line("Terminal", format!("#{}", s.terminal_id)));
    }
    out.push(line("Cashier", p.cashier));
    let ms = reply.receipt.as_ref().map_or(p.now_ms, |r| r.time_ms);
    out.push(line("Date", utc_time(ms)));
    out
}

/// The receipt's title: what happened.
fn receipt_title(reply: &pb::Reply) -> &'static str {
    match &reply.detail {
        Some(Detail::Purchase(_)) => "PURCHASE",
        Some(Detail::TopUp(_)) => "TOP-UP",
        Some(Detail::Refund(_)) => "REFUND",
        Some(Detail::Reversal(_)) => "REVERSAL",
        Some(Detail::Points(_)) => "POINTS REDEEMED",
        Some(Detail::Shift(_)) => "SHIFT CLOSE",
        Some(Detail::Status(_)) => "TRANSACTION STATUS",
        Some(Detail::Store(_)) => "STORE CREATED",
        Some(Detail::Terminal(_)) => "TERMINAL ENROLLED",
        Some(Detail::WebLogin(_)) => "WEB LOGIN",
        None if reply.receipt.is_none() => "BALANCE INQUIRY",
        None => "RECORDED",
    }
}

/// The lines of an operation's own result.
fn detail_lines(out: &mut Vec<String>, detail: &Detail, amt: &dyn Fn(i64) -> String) {
    match detail {
        Detail::Purchase(p) => {
            out.push(line("Bill", amt(p.requested_minor)));
            if p.points_spent != 0 {
                let spent = format!("{} points", p.points_spent);
                out.push(line("Paid by points", amt(p.points_value_minor)));
                out.push(line("Points spent", spent));
            }
            out.push(line("Paid by card", amt(p.approved_minor)));
            if p.remaining_due_minor > 0 {
                out.push(line("STILL DUE", amt(p.remaining_due_minor)));
            }
            out.push(line("Points earned", p.points_earned));
            if !p.tier_before.is_empty() && p.tier_before != p.tier {
                let change = if p.tier_fell { "Tier lost" } else { "Upgraded" };
                out.push(format!("{change}: {} \u{2192} {}", p.tier_before, p.tier));
            }
        }
        Detail::TopUp(t) => {
            out.push(line("Loaded", amt(t.paid_minor)));
            out.push(line("Bonus", amt(t.bonus_minor)));
            if t.price_minor != 0 {
                out.push(line("Price paid", amt(t.price_minor)));
            }
            if t.channel != pb::Channel::Store as i32 {
                out.push(line("Sold via", channel_name(t.channel())));
                if !t.reference.is_empty() {
                    out.push(line("Reference", &t.reference));
                }
            }
        }
        Detail::Refund(r) => {
            out.push(line("Refunded", amt(r.refunded_minor)));
            if r.points_returned != 0 {
                let back = format!("{} points", r.points_returned);
                out.push(line("Points given back", back));
            }
            out.push(line("Refundable left", amt(r.refundable_left_minor)));
        }
        Detail::Reversal(r) if r.original_found => {
            out.push(line(
                "Voided txn",
                format!("{} (record #{})", r.original_txn_id, r.original_seq),
            ));
            out.push(line("Value moved", amt(r.value_minor)));
        }
        Detail::Reversal(r) => out.push(format!(
            "Txn {} never reached the server; it is now void",
            r.original_txn_id
        )),
        Detail::Points(p) => out.push(line("Points used", p.points_redeemed)),
        Detail::Shift(s) => shift_lines(out, s, amt),
        Detail::Status(s) => out.push(line(
            "State",
            pb::TxnState::try_from(s.state).map_or("UNKNOWN", |t| t.as_str_name()),
        )),
        Detail::Store(s) => out.push(line("Store id", s.store_id)),
        Detail::Terminal(t) => out.push(line(
            "Terminal id",
            format!("{} (store {})", t.terminal_id, t.store_id),
        )),
        Detail::WebLogin(w) => out.push(line("Link valid until", utc_time(w.expires_ms as i64))),
    }
}

/// A shift close: the server's totals and whether the terminal's matched.
fn shift_lines(out: &mut Vec<String>, s: &pb::ShiftResult, amt: &dyn Fn(i64) -> String) {
    let t = s.server_totals.unwrap_or_default();
    out.push(line("Shift", s.shift_number));
    out.extend(shift_totals_lines(&t, amt));
    out.push(if s.balanced {
        "BALANCED".into()
    } else {
        "DOES NOT BALANCE WITH THE TERMINAL".into()
    });
}

/// Shift totals, one line per kind: "count / value".
pub fn shift_totals_lines(t: &pb::ShiftTotals, amt: &dyn Fn(i64) -> String) -> Vec<String> {
    vec![
        line(
            "Purchases",
            format!("{} / {}", t.purchase_count, amt(t.purchase_minor)),
        ),
        line(
            "Top-ups",
            format!("{} / {}", t.top_up_count, amt(t.top_up_minor)),
        ),
        line(
            "Refunds",
            format!("{} / {}", t.refund_count, amt(t.refund_minor)),
        ),
        line(
            "Reversals",
            format!("{} / {}", t.reversal_count, amt(t.reversal_minor)),
        ),
        line(
            "Redemptions",
            format!("{} / {} points", t.redeem_count, t.redeem_points),
        ),
    ]
}

/// The card after the operation (its status when it cannot be used), the
/// record, and whether this answer repeats an earlier one.
fn footer_lines(out: &mut Vec<String>, reply: &pb::Reply, amt: &dyn Fn(i64) -> String) {
    if let Some(c) = &reply.card {
        out.extend(status_lines(c));
        out.push(line("Balance", amt(c.balance_minor)));
        if c.bonus_balance_minor > 0 {
            out.push(line("  of which bonus", amt(c.bonus_balance_minor)));
        }
        out.push(line("Points", c.points));
        if c.points_next_expiring != 0 {
            // The date only: "120 expire 2027-01-05".
            let day = &utc_time(c.points_next_expiry_ms)[..10];
            let text = format!("{} expire {day}", c.points_next_expiring);
            out.push(line("  of which", text));
        }
        out.push(line("Tier", &c.tier));
    }
    if let Some(r) = &reply.receipt {
        out.push(line(
            "Record",
            format!("#{} {}", r.seq, &hex::encode(&r.hash)[..16]),
        ));
        out.push(line("Txn", r.txn_id));
    }
    if reply.replayed {
        out.push("(repeat of an earlier answer)".into());
    }
}

/// What a cashier must see about a card that is not active.
fn status_lines(card: &pb::CardView) -> Vec<String> {
    match card.status() {
        pb::CardStatus::Blocked => vec![
            line("Status", "BLOCKED"),
            "Card is BLOCKED: no payments or loads until the owner unblocks it".into(),
        ],
        pb::CardStatus::Replaced if !card.replaced_by.is_empty() => vec![
            line("Status", "REPLACED"),
            line("New card", &card.replaced_by),
            format!(
                "Card was REPLACED by {}: its value and points moved there; this number \
                 holds nothing",
                card.replaced_by
            ),
        ],
        pb::CardStatus::Replaced => vec![
            line("Status", "REPLACED"),
            "Card was REPLACED: its value and points moved to a new card number; \
             this number holds nothing"
                .into(),
        ],
        _ => Vec::new(),
    }
}

/// A sales channel as the receipt prints it.
fn channel_name(c: pb::Channel) -> &'static str {
    match c {
        pb::Channel::Store => "store",
        pb::Channel::HeadOffice => "head office",
        pb::Channel::Online => "online",
        pb::Channel::Corporate => "corporate",
    }
}

/// A text cell as a spreadsheet will not run it: one that begins like a
/// formula (`=`, `+`, `-`, `@`, a tab or a carriage return; operator
/// names, reasons and rewards come from tills and owners) gets a leading
/// `'`, as OWASP advises against CSV injection.
/// Text for a CSV cell: quoted where it holds a separator, and kept from
/// being read as a formula by a spreadsheet (a leading `'`) where it
/// starts like one: tier, store and operator names are the owner's or a
/// till's words.
pub fn csv_text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        csv_field(&format!("'{s}"))
    } else {
        csv_field(s)
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A report as CSV: per section a `# name` line, the header, the rows
/// (amounts in minor units), then a blank line. `cardd admin report --csv`
/// and the web page's downloads print it.
pub fn report_csv(report: &pb::Report) -> String {
    use pb::report_cell::Value as Cell;
    let mut out = String::new();
    for s in &report.sections {
        out.push_str(&format!("# {}\n", s.name));
        let header: Vec<String> = s.columns.iter().map(|c| csv_field(c)).collect();
        out.push_str(&(header.join(",") + "\n"));
        for r in &s.rows {
            let cells: Vec<String> = r
                .cells
                .iter()
                .map(|v| match &v.value {
                    Some(Cell::Int(i)) => i.to_string(),
                    Some(Cell::Text(t)) => csv_text(t),
                    None => String::new(),
                })
                .collect();
            out.push_str(&(cells.join(",") + "\n"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_text_that_looks_like_a_formula_is_not_one() {
        let text = |t: &str| pb::ReportCell {
            value: Some(pb::report_cell::Value::Text(t.into())),
        };
        let report = pb::Report {
            sections: vec![pb::ReportSection {
                name: "s".into(),
                columns: vec!["operator".into(), "n".into()],
                rows: vec![pb::ReportRow {
                    cells: vec![
                        text("=HYPERLINK(\"http://x\",\"a\")"),
                        pb::ReportCell {
                            value: Some(pb::report_cell::Value::Int(-5)),
                        },
                    ],
                }],
            }],
            ..Default::default()
        };
        let csv = report_csv(&report);
        assert_eq!(
            csv,
            "# s\noperator,n\n\"'=HYPERLINK(\"\"http://x\"\",\"\"a\"\")\",-5\n\n"
        );
        for t in ["+1", "-x", "@a", "\tx"] {
            assert!(csv_text(t).starts_with('\''), "{t}");
        }
        assert_eq!(csv_text("Ann"), "Ann");
    }

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(parse_amount("12.50", 2), Ok(1250));
        assert_eq!(parse_amount("12.5", 2), Ok(1250));
        assert_eq!(parse_amount("12", 2), Ok(1200));
        assert_eq!(parse_amount("0.01", 2), Ok(1));
        assert_eq!(parse_amount("7", 0), Ok(7));
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1.234",
            "1e3",
            "abc",
            "99999999999999999999",
        ] {
            assert!(parse_amount(bad, 2).is_err(), "{bad}");
        }
    }

    fn session(store: &str) -> pb::SignOnOk {
        pb::SignOnOk {
            brand_name: "Demo Coffee".into(),
            store_name: store.into(),
            currency: "CNY".into(),
            currency_exponent: 2,
            store_id: 1,
            terminal_id: 2,
            ..Default::default()
        }
    }

    fn card() -> pb::CardView {
        pb::CardView {
            card: "6000010000000000001".into(),
            balance_minor: 12_345,
            bonus_balance_minor: 345,
            points: 17,
            tier: "gold".into(),
            ..Default::default()
        }
    }

    fn receipt() -> pb::Receipt {
        pb::Receipt {
            seq: 42,
            hash: vec![0xab; 32],
            txn_id: 7,
            time_ms: 1_709_285_400_000,
            ..Default::default()
        }
    }

    fn printer<'a>(session: &'a pb::SignOnOk, customer: bool) -> Printer<'a> {
        Printer {
            session,
            cashier: "ann",
            customer,
            now_ms: 951_782_400_000,
        }
    }

    #[test]
    fn a_purchase_receipt_reads_line_by_line() {
        let reply = pb::Reply {
            receipt: Some(receipt()),
            card: Some(card()),
            detail: Some(Detail::Purchase(pb::PurchaseResult {
                requested_minor: 5_000,
                approved_minor: 4_000,
                remaining_due_minor: 1_000,
                points_earned: 40,
                ..Default::default()
            })),
            promotion_line: "VIP 6x points".into(),
            replayed: true,
            ..Default::default()
        };
        let session = session("Downtown");
        let got = receipt_text(&reply, &printer(&session, true));
        let want = [
            "Demo Coffee",
            "Store                      Downtown (#1)",
            "Terminal                              #2",
            "Cashier                              ann",
            "Date             2024-03-01 09:30:00 UTC",
            "PURCHASE",
            "Card            MASKED",
            "Bill                           50.00 CNY",
            "Paid by card                   40.00 CNY",
            "STILL DUE                      10.00 CNY",
            "Points earned                         40",
            "Balance                       123.45 CNY",
            "  of which bonus                3.45 CNY",
            "Points                                17",
            "Tier                                gold",
            "Record              #42 abababababababab",
            "Txn                                    7",
            "(repeat of an earlier answer)",
            "VIP 6x points",
        ]
        .join("\n")
        .replace("MASKED", &format!("{:>24}", mask("6000010000000000001")));
        assert_eq!(got, want);
        // The owner's copy of the same answer: no promotion line.
        let owner = receipt_text(&reply, &printer(&session, false));
        assert!(!owner.contains("VIP"), "{owner}");
        assert_eq!(owner.lines().count(), want.lines().count() - 1);
    }

    #[test]
    fn a_points_purchase_that_upgrades_prints_both_tiers() {
        let mut reply = pb::Reply {
            receipt: Some(receipt()),
            card: Some(card()),
            detail: Some(Detail::Purchase(pb::PurchaseResult {
                requested_minor: 5_000,
                approved_minor: 4_000,
                points_earned: 40,
                tier_before: "silver".into(),
                tier: "gold".into(),
                points_spent: 200,
                points_value_minor: 1_000,
                ..Default::default()
            })),
            ..Default::default()
        };
        let session = session("Downtown");
        let got = receipt_text(&reply, &printer(&session, true));
        let lines: Vec<&str> = got.lines().collect();
        let at = lines.iter().position(|l| l.starts_with("Bill")).unwrap();
        assert_eq!(
            lines[at..at + 6],
            [
                "Bill                           50.00 CNY",
                "Paid by points                 10.00 CNY",
                "Points spent                  200 points",
                "Paid by card                   40.00 CNY",
                "Points earned                         40",
                "Upgraded: silver \u{2192} gold",
            ]
        );
        let json = reply_json(&reply);
        assert_eq!(json["tier_before"], "silver");
        assert_eq!(json["points_spent"], 200);
        // A fall says so; no change prints no line.
        let Some(Detail::Purchase(p)) = &mut reply.detail else {
            unreachable!()
        };
        (p.tier_before, p.tier, p.tier_fell) = ("gold".into(), "member".into(), true);
        let got = receipt_text(&reply, &printer(&session, true));
        assert!(got.contains("Tier lost: gold \u{2192} member"), "{got}");
        let Some(Detail::Purchase(p)) = &mut reply.detail else {
            unreachable!()
        };
        p.tier_before = "member".into();
        let got = receipt_text(&reply, &printer(&session, true));
        assert!(!got.contains('\u{2192}'), "{got}");
    }

    #[test]
    fn shift_reversal_and_inquiry_receipts_read_line_by_line() {
        let shift = pb::Reply {
            receipt: Some(receipt()),
            detail: Some(Detail::Shift(pb::ShiftResult {
                server_totals: Some(pb::ShiftTotals {
                    purchase_count: 2,
                    purchase_minor: 1_050,
                    top_up_count: 1,
                    top_up_minor: 10_000,
                    redeem_count: 1,
                    redeem_points: 30,
                    ..Default::default()
                }),
                balanced: false,
                shift_number: 3,
            })),
            ..Default::default()
        };
        let airport = session("Airport");
        let text = receipt_text(&shift, &printer(&airport, false));
        let body: Vec<&str> = text.lines().skip(5).collect();
        assert_eq!(
            body,
            [
                "SHIFT CLOSE",
                "Shift                                  3",
                "Purchases                  2 / 10.50 CNY",
                "Top-ups                   1 / 100.00 CNY",
                "Refunds                     0 / 0.00 CNY",
                "Reversals                   0 / 0.00 CNY",
                "Redemptions                1 / 30 points",
                "DOES NOT BALANCE WITH THE TERMINAL",
                "Record              #42 abababababababab",
                "Txn                                    7",
            ]
        );
        let void = pb::Reply {
            receipt: Some(receipt()),
            detail: Some(Detail::Reversal(pb::ReversalResult {
                original_txn_id: 9,
                original_found: false,
                ..Default::default()
            })),
            ..Default::default()
        };
        let owner = pb::SignOnOk {
            store_id: 0,
            terminal_id: 0,
            ..session("")
        };
        assert_eq!(
            receipt_text(&void, &printer(&owner, false)),
            "Demo Coffee\n\
             Store                        head office\n\
             Cashier                              ann\n\
             Date             2024-03-01 09:30:00 UTC\n\
             REVERSAL\n\
             Txn 9 never reached the server; it is now void\n\
             Record              #42 abababababababab\n\
             Txn                                    7"
        );
        let inquiry = pb::Reply {
            card: Some(pb::CardView {
                bonus_balance_minor: 0,
                ..card()
            }),
            ..Default::default()
        };
        let downtown = session("Downtown");
        let text = receipt_text(&inquiry, &printer(&downtown, true));
        assert!(
            text.contains(&format!(
                "{}\nBALANCE INQUIRY\nCard ",
                line("Date", "2000-02-29 00:00:00 UTC")
            )),
            "an inquiry has no record: the time of printing: {text}"
        );
        assert!(
            text.ends_with(
                "Balance                       123.45 CNY\n\
                 Points                                17\n\
                 Tier                                gold"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_blocked_or_replaced_card_says_so() {
        let downtown = session("Downtown");
        let text = |status: pb::CardStatus| {
            let reply = pb::Reply {
                card: Some(pb::CardView {
                    status: status as i32,
                    ..card()
                }),
                ..Default::default()
            };
            receipt_text(&reply, &printer(&downtown, true))
        };
        let blocked = text(pb::CardStatus::Blocked);
        assert!(
            blocked.contains(&format!("{}\nCard is BLOCKED", line("Status", "BLOCKED"))),
            "{blocked}"
        );
        let replaced = text(pb::CardStatus::Replaced);
        assert!(
            replaced.contains(&format!(
                "{}\nCard was REPLACED",
                line("Status", "REPLACED")
            )),
            "{replaced}"
        );
        assert!(
            replaced.contains("moved to a new card number"),
            "{replaced}"
        );
        let active = text(pb::CardStatus::Active);
        assert!(!active.contains("Status"), "{active}");
    }

    #[test]
    fn server_messages_read_in_major_units() {
        assert_eq!(
            human_message("amount must be 1..=1000000000 minor units", 2, "CNY"),
            "amount must be 0.01 to 10000000.00 CNY"
        );
        assert_eq!(
            human_message("at most 3000 minor units are left to refund", 2, "CNY"),
            "at most 30.00 CNY are left to refund"
        );
        assert_eq!(
            human_message(
                "card balance would exceed 100000000000 minor units",
                0,
                "JPY"
            ),
            "card balance would exceed 100000000000 JPY"
        );
        // Nothing to convert: the message as it was.
        assert_eq!(
            human_message("card is blocked", 2, "CNY"),
            "card is blocked"
        );
        assert_eq!(human_message("x minor units", 2, "CNY"), "x minor units");
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(1_709_285_400_000), "2024-03-01 09:30:00 UTC");
        assert_eq!(utc_time(951_782_400_999), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(-86_400_000), "1969-12-31 00:00:00 UTC");
    }

    #[test]
    fn amounts_format_exactly() {
        assert_eq!(format_amount(1250, 2), "12.50");
        assert_eq!(format_amount(-5, 2), "-0.05");
        assert_eq!(format_amount(7, 0), "7");
    }
}
