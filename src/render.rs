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
    if let Some(r) = &reply.receipt {
        m.insert("record_seq".into(), json!(r.seq));
        m.insert("record_hash".into(), json!(hex::encode(&r.hash)));
        m.insert("time_ms".into(), json!(r.time_ms));
        m.insert("store_id".into(), json!(r.store_id));
        m.insert("terminal_id".into(), json!(r.terminal_id));
        m.insert("txn_id".into(), json!(r.txn_id));
    }
    match &reply.detail {
        Some(Detail::Purchase(p)) => {
            m.insert("requested_minor".into(), json!(p.requested_minor));
            m.insert("approved_minor".into(), json!(p.approved_minor));
            m.insert("remaining_due_minor".into(), json!(p.remaining_due_minor));
            m.insert("points_earned".into(), json!(p.points_earned));
        }
        Some(Detail::TopUp(t)) => {
            m.insert("paid_minor".into(), json!(t.paid_minor));
            m.insert("bonus_minor".into(), json!(t.bonus_minor));
        }
        Some(Detail::Refund(r)) => {
            m.insert("refunded_minor".into(), json!(r.refunded_minor));
            m.insert(
                "refundable_left_minor".into(),
                json!(r.refundable_left_minor),
            );
            m.insert("points_removed".into(), json!(r.points_removed));
        }
        Some(Detail::Reversal(r)) => {
            m.insert("original_txn_id".into(), json!(r.original_txn_id));
            m.insert("original_found".into(), json!(r.original_found));
            m.insert("original_seq".into(), json!(r.original_seq));
            m.insert("value_minor".into(), json!(r.value_minor));
        }
        Some(Detail::Points(p)) => {
            m.insert("points_redeemed".into(), json!(p.points_redeemed));
        }
        Some(Detail::Shift(s)) => {
            m.insert("balanced".into(), json!(s.balanced));
            m.insert("shift_number".into(), json!(s.shift_number));
            m.insert("server_totals".into(), shift_json(s.server_totals.as_ref()));
        }
        Some(Detail::Status(s)) => {
            m.insert(
                "txn_state".into(),
                json!(pb::TxnState::try_from(s.state).map_or("UNKNOWN", |t| t.as_str_name())),
            );
            m.insert("status_seq".into(), json!(s.seq));
            if let Some(o) = &s.original {
                m.insert("original".into(), reply_json(o));
            }
        }
        Some(Detail::Store(s)) => {
            m.insert("store_id".into(), json!(s.store_id));
        }
        Some(Detail::Terminal(t)) => {
            m.insert("new_terminal_id".into(), json!(t.terminal_id));
            m.insert("store_id".into(), json!(t.store_id));
        }
        None => {}
    }
    if !reply.promotion_line.is_empty() {
        m.insert("promotion_line".into(), json!(reply.promotion_line));
    }
    m.insert("replayed".into(), json!(reply.replayed));
    Value::Object(m)
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
    let mut out = Vec::new();
    out.push(format!(
        "{} - {}",
        session.brand_name,
        if session.store_name.is_empty() {
            "owner"
        } else {
            &session.store_name
        }
    ));
    let title = match &reply.detail {
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
    };
    out.push(title.to_string());
    if let Some(c) = &reply.card {
        out.push(format!("Card        {}", mask(&c.card)));
    }
    match &reply.detail {
        Some(Detail::Purchase(p)) => {
            out.push(format!("Bill        {}", amt(p.requested_minor)));
            out.push(format!("Paid by card {}", amt(p.approved_minor)));
            if p.remaining_due_minor > 0 {
                out.push(format!("STILL DUE   {}", amt(p.remaining_due_minor)));
            }
            out.push(format!("Points earned {}", p.points_earned));
        }
        Some(Detail::TopUp(t)) => {
            out.push(format!("Loaded      {}", amt(t.paid_minor)));
            out.push(format!("Bonus       {}", amt(t.bonus_minor)));
        }
        Some(Detail::Refund(r)) => {
            out.push(format!("Refunded    {}", amt(r.refunded_minor)));
            out.push(format!("Refundable left {}", amt(r.refundable_left_minor)));
        }
        Some(Detail::Reversal(r)) => {
            if r.original_found {
                out.push(format!(
                    "Voided txn  {} (record {})",
                    r.original_txn_id, r.original_seq
                ));
                out.push(format!("Value moved {}", amt(r.value_minor)));
            } else {
                out.push(format!(
                    "Txn {} never reached the server; it is now void",
                    r.original_txn_id
                ));
            }
        }
        Some(Detail::Points(p)) => out.push(format!("Points used {}", p.points_redeemed)),
        Some(Detail::Shift(s)) => {
            let t = s.server_totals.unwrap_or_default();
            out.push(format!("Shift       {}", s.shift_number));
            out.push(format!(
                "Purchases   {} / {}",
                t.purchase_count,
                amt(t.purchase_minor)
            ));
            out.push(format!(
                "Top-ups     {} / {}",
                t.top_up_count,
                amt(t.top_up_minor)
            ));
            out.push(format!(
                "Refunds     {} / {}",
                t.refund_count,
                amt(t.refund_minor)
            ));
            out.push(format!(
                "Reversals   {} / {}",
                t.reversal_count,
                amt(t.reversal_minor)
            ));
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
        Some(Detail::Status(s)) => {
            out.push(format!(
                "State       {}",
                pb::TxnState::try_from(s.state).map_or("UNKNOWN", |t| t.as_str_name())
            ));
        }
        Some(Detail::Store(s)) => out.push(format!("Store id    {}", s.store_id)),
        Some(Detail::Terminal(t)) => out.push(format!(
            "Terminal id {} (store {})",
            t.terminal_id, t.store_id
        )),
        None => {}
    }
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
    out.join("\n")
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

    #[test]
    fn amounts_format_exactly() {
        assert_eq!(format_amount(1250, 2), "12.50");
        assert_eq!(format_amount(-5, 2), "-0.05");
        assert_eq!(format_amount(7, 0), "7");
    }
}
