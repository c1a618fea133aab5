//! What the cashier (or a script) sees: one JSON object per line with
//! `--json`, otherwise a receipt on stdout and refusals on stderr. Amounts
//! in words are in major units with the currency; JSON keeps minor units.
use std::process::ExitCode;

use cardd::error::Refusal;
use cardd::pb::{self, reply::Detail, request::Op};
use cardd::render::{
    error_json, failure_json, human_message, money, receipt_text, reply_json, shift_json,
    shift_totals_lines, Printer,
};
use serde_json::Value;

use crate::proof::ProofCheck;
use crate::state::Counting;
use crate::terminal::{Outcome, Terminal};

/// Exit code of a refusal by the server.
pub const EXIT_REFUSED: u8 = 2;
/// Exit code of a failed call (usage, key, connection, no answer).
pub const EXIT_FAILED: u8 = 1;

/// Writes one line to standard output (see `cardd::stdout`).
pub fn print_line(args: std::fmt::Arguments) {
    cardd::stdout::print_line("terminal-sim", args);
}

/// A failure on this side (usage, amount, key, connection), with the code
/// `--json` prints for it.
#[derive(Debug)]
pub struct Failure {
    /// The code, e.g. `AMOUNT_OUT_OF_RANGE` or `USAGE`.
    pub code: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The `--json` code of a failed call.
pub fn failure_code(e: &anyhow::Error) -> &'static str {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.code;
    }
    if e.downcast_ref::<cardd::crypto::KeyFileError>().is_some() {
        return "KEY_FILE";
    }
    if e.downcast_ref::<cardd::client::ConnectError>().is_some() {
        return "CONNECTION_FAILED";
    }
    "FAILED"
}

/// Prints a failed call: the message on stderr and, with `--json`, one
/// JSON object on stdout, so that a script always reads one.
pub fn failed(json: bool, code: &str, message: &str) -> ExitCode {
    eprintln!("terminal-sim: {message}");
    if json {
        outln!("{}", failure_json(code, message));
    }
    ExitCode::from(EXIT_FAILED)
}

/// What the cashier is told besides the server's refusal (and what a
/// script reads in the JSON object).
#[derive(Debug, Default)]
pub struct Advice {
    /// The card's balance, when it explains the refusal.
    pub balance_minor: Option<i64>,
    /// What to do, in words.
    pub hint: String,
}

/// Prints a refusal and returns the refusal exit code. Human text speaks
/// the session's currency; JSON keeps the server's message and adds the
/// advice's fields.
pub fn refused(
    json: bool,
    r: &Refusal,
    session: Option<&pb::SignOnOk>,
    advice: Option<&Advice>,
) -> ExitCode {
    if json {
        let mut v = error_json(r.code as i32, &r.message);
        if let (Some(a), Value::Object(m)) = (advice, &mut v) {
            if let Some(b) = a.balance_minor {
                m.insert("balance_minor".into(), b.into());
            }
            m.insert("hint".into(), a.hint.clone().into());
        }
        outln!("{v}");
    } else {
        let message = match session {
            Some(s) => human_message(&r.message, s.currency_exponent, &s.currency),
            None => r.message.clone(),
        };
        let hint = advice.map_or(String::new(), |a| format!("; {}", a.hint));
        eprintln!("refused: {} ({message}{hint})", r.code.as_str_name());
    }
    ExitCode::from(EXIT_REFUSED)
}

/// The advice for INSUFFICIENT_FUNDS: the card's balance, and `--partial`.
pub fn short_of_funds(balance: i64, bill: i64, s: &pb::SignOnOk) -> Advice {
    let m = |v: i64| money(v, s.currency_exponent, &s.currency);
    Advice {
        balance_minor: Some(balance),
        hint: format!(
            "the card holds {}, the bill is {}: add --partial to take {} from the card \
             and collect the other {} another way",
            m(balance),
            m(bill),
            m(balance),
            m(bill.saturating_sub(balance))
        ),
    }
}

/// The advice for CARD_BLOCKED, from the card's status.
pub fn not_active(card: &pb::CardView) -> Option<Advice> {
    let hint = match card.status() {
        pb::CardStatus::Replaced if !card.replaced_by.is_empty() => format!(
            "this number was REPLACED by card {}: its value moved there; take that card",
            card.replaced_by
        ),
        pb::CardStatus::Replaced => "this number was REPLACED: its value moved to a new card \
                                     number; ask the customer for the new card (the owner's \
                                     replace-card receipt names it)"
            .to_string(),
        pb::CardStatus::Blocked => "the card is BLOCKED by the owner".to_string(),
        _ => return None,
    };
    Some(Advice {
        balance_minor: None,
        hint,
    })
}

/// How the answer is printed: for a customer (receipts of card operations
/// carry the promotion line) or the shop, by which cashier.
pub struct Copy<'a> {
    /// A customer's receipt.
    pub customer: bool,
    /// The cashier on the request.
    pub cashier: &'a str,
}

/// Prints an approved answer: one JSON line, or the receipt; with the
/// result of the inclusion proof check when `--proof` asked.
pub fn print_reply(
    json: bool,
    reply: &pb::Reply,
    outcome: &Outcome,
    term: &Terminal,
    proof: Option<&ProofCheck>,
    copy: &Copy,
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
        outln!("{v}");
        return;
    }
    let printer = Printer {
        session,
        cashier: copy.cashier,
        customer: copy.customer,
        now_ms: now_ms(),
    };
    outln!("{}", receipt_text(reply, &printer));
    if let Some(p) = proof {
        outln!("{}", p.receipt_line());
    }
    if reply.replayed {
        outln!(
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
            let amt = |m: i64| money(m, session.currency_exponent, &session.currency);
            outln!("This terminal counted:");
            for line in shift_totals_lines(t, &amt) {
                outln!("{line}");
            }
        }
        Some(Detail::Status(s)) => {
            if let Some(original) = &s.original {
                outln!("--- original answer ---");
                outln!("{}", receipt_text(original, &printer));
            }
        }
        _ => {}
    }
}

/// The terminal's clock, Unix ms (printed on an inquiry, which has no record).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
