//! Replaying a stored record through the state machine. Start-up recovery
//! and the auditor both use it: a record is accepted only if applying its
//! signed request to the state before it reproduces it byte for byte.
use prost::Message;

use crate::pb::{Record, Signer};
use crate::state::{apply, BrandState, Context, Outcome, Principal, Written};

/// Why a stored record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {seq}: {what}")]
pub struct ReplayError {
    /// The record's sequence number (its position in the chain).
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}

/// The principal that signed `rec`, from the record's own fields.
pub fn principal_of(rec: &Record) -> Option<Principal> {
    match rec.signer() {
        Signer::Terminal => Some(Principal::Terminal(rec.terminal_id)),
        Signer::Owner => Some(Principal::Owner),
        Signer::Server => Some(Principal::Server),
        Signer::Unspecified => None,
    }
}

/// What every record satisfies against the chain before it: it takes the
/// next seq, names the chain's head as its previous hash, and leaves
/// balances and points in range. The ledger asserts it on every record the
/// state machine makes (a violation is a bug: stop before writing it);
/// replay checks it on every stored record (a violation is corruption).
pub fn check_link(prev_seq: u64, prev_head: &[u8; 32], rec: &Record) -> Result<(), String> {
    use crate::limits::{MAX_BALANCE_MINOR, MAX_POINTS};
    if prev_seq.checked_add(1) != Some(rec.seq) {
        return Err(format!(
            "holds sequence number {} after {prev_seq}",
            rec.seq
        ));
    }
    if rec.prev_hash.as_slice() != prev_head {
        return Err("its previous hash is not the chain's head".into());
    }
    let ranges = [
        (
            "paid balance",
            rec.paid_balance_after_minor,
            MAX_BALANCE_MINOR,
        ),
        (
            "bonus balance",
            rec.bonus_balance_after_minor,
            MAX_BALANCE_MINOR,
        ),
        ("points", rec.points_after, MAX_POINTS),
    ];
    for (what, value, max) in ranges {
        if !(0..=max).contains(&value) {
            return Err(format!("{what} after is {value}, outside 0..={max}"));
        }
    }
    let deltas = [
        rec.paid_in_minor,
        rec.bonus_in_minor,
        rec.paid_out_minor,
        rec.bonus_out_minor,
        rec.points_in,
        rec.points_out,
    ];
    if deltas.iter().any(|d| *d < 0) {
        return Err("a negative delta".into());
    }
    Ok(())
}

/// A record's server time never goes back: the ledger stamps each batch
/// with the later of the clock and the previous batch's time, and a record
/// moved back in time could land in an earlier brand day (day-spend
/// limits, visits, tiers) or before a card's expiry. `prev_time_ms` is the
/// time of the record before it (0 before the first).
pub fn check_time(prev_time_ms: i64, rec: &Record) -> Result<(), String> {
    if rec.time_ms < prev_time_ms {
        return Err(format!(
            "its time {} ms is before the previous record's {prev_time_ms} ms (time goes backwards)",
            rec.time_ms
        ));
    }
    Ok(())
}

/// Re-applies the record `bytes`, expected at position `seq`, to `state`.
/// `server_key` is the key expected on the brand's first record.
pub fn replay_record(
    state: &mut BrandState,
    seq: u64,
    bytes: &[u8],
    server_key: &[u8; 32],
) -> Result<Written, ReplayError> {
    let rec = Record::decode(bytes).map_err(|e| ReplayError {
        seq,
        what: format!("does not decode: {e}"),
    })?;
    replay_decoded(state, seq, &rec, bytes, server_key)
}

/// [`replay_record`] for a record the caller has already decoded from `bytes`.
pub fn replay_decoded(
    state: &mut BrandState,
    seq: u64,
    rec: &Record,
    bytes: &[u8],
    server_key: &[u8; 32],
) -> Result<Written, ReplayError> {
    let fail = |what: String| ReplayError { seq, what };
    if rec.seq != seq {
        return Err(fail(format!("holds sequence number {}", rec.seq)));
    }
    check_link(state.seq, &state.head_hash, rec).map_err(fail)?;
    let principal = principal_of(rec).ok_or_else(|| fail("has no signer".into()))?;
    // The key must be the one enrolled for that signer at that point.
    let enrolled: Option<[u8; 32]> = match principal {
        // The trusted key signs the first record; a SERVER_KEY_ROTATED
        // record, signed by the key in force, names the next one.
        Principal::Server if state.is_created() => Some(state.server_key),
        Principal::Server => Some(*server_key),
        Principal::Owner => state.is_created().then_some(state.owner_key),
        Principal::Terminal(id) => state.terminals.get(&id).map(|t| t.public_key),
        // Read-only keys sign no record.
        Principal::Auditor(_) | Principal::StoreManager(..) => None,
    };
    let signer_key: [u8; 32] = rec
        .signer_public_key
        .as_slice()
        .try_into()
        .map_err(|_| fail("signer key is not 32 bytes".into()))?;
    if enrolled != Some(signer_key) {
        return Err(fail(format!(
            "signer {principal:?} is not enrolled with the key in the record"
        )));
    }
    // The daemon's acceptance rule: an auditor accepts exactly what it served.
    let request = crate::wire::decode_request(&rec.request)
        .map_err(|e| fail(format!("request refused: {e}")))?;
    let ctx = Context {
        time_ms: rec.time_ms,
        principal,
        signer_key: &signer_key,
        request: &rec.request,
        signature: &rec.request_signature,
        pin_verified: rec.pin_verified,
    };
    match apply(state, &ctx, &request) {
        Ok(Outcome::Written(w)) if w.bytes == bytes => Ok(w),
        Ok(Outcome::Written(_)) => Err(fail(
            "differs from what its request produces when replayed".into(),
        )),
        Ok(other) => Err(fail(format!(
            "its request no longer writes a record ({other:?})"
        ))),
        Err(refusal) => Err(fail(format!(
            "its request is refused when replayed: {refusal}"
        ))),
    }
}
