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

/// A cashier's receipt a person can read. Card numbers are masked.
pub fn receipt_text(reply: &pb::Reply, session: &pb::SignOnOk) -> String {
    let e = session.currency_exponent;
    let amt = |m: i64| format!("{} {}", format_amount(m, e), session.currency);
    let store = if session.store_name.is_empty() {
        "owner"
    } else {
        &session.store_name
    };
    let mut out = vec![
        format!("{} - {store}", session.brand_name),
        receipt_title(reply).to_string(),
    ];
    if let Some(c) = &reply.card {
        out.push(format!("Card        {}", mask(&c.card)));
    }
    if let Some(d) = &reply.detail {
        detail_lines(&mut out, d, &amt);
    }
    footer_lines(&mut out, reply, &amt);
    out.join("\n")
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
        None if reply.receipt.is_none() => "BALANCE INQUIRY",
        None => "RECORDED",
    }
}

/// The lines of an operation's own result.
fn detail_lines(out: &mut Vec<String>, detail: &Detail, amt: &dyn Fn(i64) -> String) {
    match detail {
        Detail::Purchase(p) => {
            out.push(format!("Bill        {}", amt(p.requested_minor)));
            out.push(format!("Paid by card {}", amt(p.approved_minor)));
            if p.remaining_due_minor > 0 {
                out.push(format!("STILL DUE   {}", amt(p.remaining_due_minor)));
            }
            out.push(format!("Points earned {}", p.points_earned));
        }
        Detail::TopUp(t) => {
            out.push(format!("Loaded      {}", amt(t.paid_minor)));
            out.push(format!("Bonus       {}", amt(t.bonus_minor)));
            if t.price_minor != 0 {
                out.push(format!("Price paid  {}", amt(t.price_minor)));
            }
            if t.channel != pb::Channel::Store as i32 {
                out.push(format!("Sold via    {}", channel_name(t.channel())));
                if !t.reference.is_empty() {
                    out.push(format!("Reference   {}", t.reference));
                }
            }
        }
        Detail::Refund(r) => {
            out.push(format!("Refunded    {}", amt(r.refunded_minor)));
            out.push(format!("Refundable left {}", amt(r.refundable_left_minor)));
        }
        Detail::Reversal(r) if r.original_found => {
            out.push(format!(
                "Voided txn  {} (record {})",
                r.original_txn_id, r.original_seq
            ));
            out.push(format!("Value moved {}", amt(r.value_minor)));
        }
        Detail::Reversal(r) => out.push(format!(
            "Txn {} never reached the server; it is now void",
            r.original_txn_id
        )),
        Detail::Points(p) => out.push(format!("Points used {}", p.points_redeemed)),
        Detail::Shift(s) => shift_lines(out, s, amt),
        Detail::Status(s) => out.push(format!(
            "State       {}",
            pb::TxnState::try_from(s.state).map_or("UNKNOWN", |t| t.as_str_name())
        )),
        Detail::Store(s) => out.push(format!("Store id    {}", s.store_id)),
        Detail::Terminal(t) => out.push(format!(
            "Terminal id {} (store {})",
            t.terminal_id, t.store_id
        )),
    }
}

/// A shift close: the server's totals and whether the terminal's matched.
fn shift_lines(out: &mut Vec<String>, s: &pb::ShiftResult, amt: &dyn Fn(i64) -> String) {
    let t = s.server_totals.unwrap_or_default();
    out.push(format!("Shift       {}", s.shift_number));
    for (label, count, minor) in [
        ("Purchases  ", t.purchase_count, t.purchase_minor),
        ("Top-ups    ", t.top_up_count, t.top_up_minor),
        ("Refunds    ", t.refund_count, t.refund_minor),
        ("Reversals  ", t.reversal_count, t.reversal_minor),
    ] {
        out.push(format!("{label} {count} / {}", amt(minor)));
    }
    out.push(format!(
        "Redemptions {} / {} points",
        t.redeem_count, t.redeem_points
    ));
    out.push(if s.balanced {
        "BALANCED".into()
    } else {
        "DOES NOT BALANCE WITH THE TERMINAL".into()
    });
}

/// The card after the operation, the record, and the promotion line.
fn footer_lines(out: &mut Vec<String>, reply: &pb::Reply, amt: &dyn Fn(i64) -> String) {
    if let Some(c) = &reply.card {
        out.push(format!("Balance     {}", amt(c.balance_minor)));
        if c.bonus_balance_minor > 0 {
            out.push(format!("  of which bonus {}", amt(c.bonus_balance_minor)));
        }
        out.push(format!("Points      {}", c.points));
        out.push(format!("Tier        {}", c.tier));
    }
    if let Some(r) = &reply.receipt {
        out.push(format!(
            "Record      #{} {}",
            r.seq,
            &hex::encode(&r.hash)[..16]
        ));
        out.push(format!("Txn         {}", r.txn_id));
    }
    if reply.replayed {
        out.push("(repeat of an earlier answer)".into());
    }
    if !reply.promotion_line.is_empty() {
        out.push(reply.promotion_line.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

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
            ..Default::default()
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
            })),
            promotion_line: "VIP 6x points".into(),
            replayed: true,
            ..Default::default()
        };
        let got = receipt_text(&reply, &session("Downtown"));
        let want = "Demo Coffee - Downtown\nPURCHASE\nCard        RECEIPT_MASK\n\
            Bill        50.00 CNY\nPaid by card 40.00 CNY\nSTILL DUE   10.00 CNY\n\
            Points earned 40\nBalance     123.45 CNY\n  of which bonus 3.45 CNY\n\
            Points      17\nTier        gold\nRecord      #42 abababababababab\n\
            Txn         7\n(repeat of an earlier answer)\nVIP 6x points"
            .replace("RECEIPT_MASK", &mask("6000010000000000001"));
        assert_eq!(got, want);
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
        assert_eq!(
            receipt_text(&shift, &session("Airport")),
            "Demo Coffee - Airport\nSHIFT CLOSE\nShift       3\n\
             Purchases   2 / 10.50 CNY\nTop-ups     1 / 100.00 CNY\n\
             Refunds     0 / 0.00 CNY\nReversals   0 / 0.00 CNY\n\
             Redemptions 1 / 30 points\nDOES NOT BALANCE WITH THE TERMINAL\n\
             Record      #42 abababababababab\nTxn         7"
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
        assert_eq!(
            receipt_text(&void, &session("")),
            "Demo Coffee - owner\nREVERSAL\n\
             Txn 9 never reached the server; it is now void\n\
             Record      #42 abababababababab\nTxn         7"
        );
        let inquiry = pb::Reply {
            card: Some(pb::CardView {
                bonus_balance_minor: 0,
                ..card()
            }),
            ..Default::default()
        };
        let text = receipt_text(&inquiry, &session("Downtown"));
        assert!(
            text.starts_with("Demo Coffee - Downtown\nBALANCE INQUIRY\nCard "),
            "{text}"
        );
        assert!(
            text.ends_with("Balance     123.45 CNY\nPoints      17\nTier        gold"),
            "{text}"
        );
    }

    #[test]
    fn amounts_format_exactly() {
        assert_eq!(format_amount(1250, 2), "12.50");
        assert_eq!(format_amount(-5, 2), "-0.05");
        assert_eq!(format_amount(7, 0), "7");
    }
}
