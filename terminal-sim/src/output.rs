//! What the cashier (or a script) sees: one JSON object per line with
//! `--json`, otherwise a receipt on stdout and refusals on stderr.
use std::process::ExitCode;

use cardd::error::Refusal;
use cardd::pb::{self, reply::Detail, request::Op};
use cardd::render::{error_json, format_amount, receipt_text, reply_json, shift_json};
use serde_json::Value;

use crate::proof::ProofCheck;
use crate::state::Counting;
use crate::terminal::{Outcome, Terminal};

/// Exit code of a refusal by the server.
pub const EXIT_REFUSED: u8 = 2;
/// Exit code of a failed call (usage, key, connection, no answer).
pub const EXIT_FAILED: u8 = 1;

/// Prints a refusal and returns the refusal exit code.
pub fn refused(json: bool, r: &Refusal) -> ExitCode {
    if json {
        println!("{}", error_json(r.code as i32, &r.message));
    } else {
        eprintln!("refused: {} ({})", r.code.as_str_name(), r.message);
    }
    ExitCode::from(EXIT_REFUSED)
}

/// Prints an approved answer: one JSON line, or the cashier's receipt;
/// with the result of the inclusion proof check when `--proof` asked.
pub fn print_reply(
    json: bool,
    reply: &pb::Reply,
    outcome: &Outcome,
    term: &Terminal,
    proof: Option<&ProofCheck>,
) {
    // What this terminal said at a shift close, next to the server's totals.
    let none = pb::ShiftTotals::default();
    let sent_totals = match &outcome.request.op {
        Some(Op::CloseShift(c)) => Some(c.terminal_totals.as_ref().unwrap_or(&none)),
        _ => None,
    };
    let session = &term.client.session;
    if json {
        let mut v = reply_json(reply);
        if let (Some(t), Value::Object(m)) = (sent_totals, &mut v) {
            m.insert("terminal_totals".into(), shift_json(Some(t)));
        }
        if let Some(p) = proof {
            p.add_to_json(&mut v);
        }
        println!("{v}");
        return;
    }
    println!("{}", receipt_text(reply, session));
    if let Some(p) = proof {
        println!("{}", p.receipt_line());
    }
    if reply.replayed {
        println!(
            "{}",
            match outcome.counting {
                Counting::Counted =>
                    "Counted in this shift now (the first answer never reached this terminal)",
                _ => "Already counted in this shift",
            }
        );
    }
    match &reply.detail {
        Some(Detail::Shift(s)) if !s.balanced => {
            let t = sent_totals.unwrap_or(&none);
            let amt = |m: i64| {
                let amount = format_amount(m, session.currency_exponent);
                format!("{amount} {}", session.currency)
            };
            println!("This terminal counted:");
            for (label, count, value) in [
                ("Purchases  ", t.purchase_count, amt(t.purchase_minor)),
                ("Top-ups    ", t.top_up_count, amt(t.top_up_minor)),
                ("Refunds    ", t.refund_count, amt(t.refund_minor)),
                ("Reversals  ", t.reversal_count, amt(t.reversal_minor)),
                (
                    "Redemptions",
                    t.redeem_count,
                    format!("{} points", t.redeem_points),
                ),
            ] {
                println!("{label} {count} / {value}");
            }
        }
        Some(Detail::Status(s)) => {
            if let Some(original) = &s.original {
                println!("--- original answer ---");
                println!("{}", receipt_text(original, session));
            }
        }
        _ => {}
    }
}
