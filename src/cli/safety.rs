//! `cardd admin` commands of issue 15: corrections (adjust, void-topup,
//! close-card), a card's validity (extend-card) and key rotation
//! (rotate-owner-key, rekey-terminal).
use anyhow::Context;
use ed25519_dalek::Signer;

use cardd::crypto::read_key_file;
use cardd::pb::{self, request::Op};

use super::amount_arg;
use crate::AdminOp;

/// The request for one of these commands, or the command back (`Err`)
/// when it is another.
pub fn build_op(op: AdminOp, session: &pb::SignOnOk) -> anyhow::Result<Result<Op, AdminOp>> {
    Ok(Ok(match op {
        AdminOp::Adjust {
            card,
            amount,
            bonus,
            reason,
        } => Op::AdjustCard(pb::AdjustCard {
            card,
            amount_minor: signed_amount(&amount, session.currency_exponent)?,
            bonus,
            reason,
        }),
        AdminOp::VoidTopup { seq, reason } => Op::VoidTopUp(pb::VoidTopUp {
            original_seq: seq,
            reason,
        }),
        AdminOp::CloseCard { card, reason } => Op::CloseCard(pb::CloseCard { card, reason }),
        AdminOp::ExtendCard { card, until, never } => Op::SetCardExpiry(pb::SetCardExpiry {
            card,
            expires_ms: if never {
                0
            } else {
                end_of_day(until.as_deref())?
            },
        }),
        AdminOp::RotateOwnerKey { new_key } => {
            let key = read_key_file(&new_key)?;
            let public = key.verifying_key().to_bytes();
            let proof = key.sign(&cardd::crypto::owner_key_message(session.brand_id, &public));
            Op::RotateOwnerKey(pb::RotateOwnerKey {
                new_public_key: public.to_vec(),
                new_key_signature: proof.to_bytes().to_vec(),
            })
        }
        AdminOp::RekeyTerminal {
            terminal,
            public_key,
            key_out,
        } => Op::RekeyTerminal(pb::RekeyTerminal {
            terminal_id: terminal,
            new_public_key: super::admin::terminal_public_key(public_key, key_out)?,
        }),
        other => return Ok(Err(other)),
    }))
}

/// A signed decimal amount (`-20.00`, `+5`, `5.00`) in minor units.
fn signed_amount(text: &str, exponent: u32) -> anyhow::Result<i64> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    Ok(sign * amount_arg("--amount", digits, exponent)?)
}

/// The first instant after the UTC day `date` (YYYY-MM-DD): a card valid
/// through that day expires then.
fn end_of_day(date: Option<&str>) -> anyhow::Result<i64> {
    let date: jiff::civil::Date = date
        .context("give --until YYYY-MM-DD or --never")?
        .parse()
        .context("--until is not a date YYYY-MM-DD")?;
    let next = date
        .tomorrow()
        .context("--until is the last day of the calendar")?;
    let start = next
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .context("--until is out of range")?;
    Ok(start.timestamp().as_millisecond())
}
