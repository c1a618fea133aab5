//! `apply`: one request against one brand's state.
//!
//! Shape of every state-changing operation: check everything (role, ranges,
//! card, funds, overflow) on copies, then build the record, then commit the
//! copies and the record together in `append`. Nothing is mutated on a path
//! that can still return a refusal.
//!
//! This file holds the dispatch and the helpers every operation shares;
//! the operations themselves are in `money.rs` (a terminal's value and
//! points), `reversal.rs` and `owner.rs` (brand creation and the owner's
//! operations), one function per operation.
mod corrections;
mod holder;
mod keys;
mod money;
mod owner;
mod reversal;

use prost::Message;

use corrections::{adjust_card, close_card, set_card_expiry, void_top_up};
pub use holder::{erase_fate, set_pin_fate, Fate};
use holder::{erase_holder, lock_pin, set_holder, set_pin, unlock_pin};
use keys::{rekey_terminal, rotate_owner_key, rotate_server_key};
use money::{close_shift, purchase, redeem_points, refund, top_up};
use owner::{
    add_key, create_brand, create_store, enroll_terminal, issue_card, remove_key, replace_card,
    set_card_blocked, set_rules, set_terminal_disabled,
};
use reversal::reversal;

use super::books::Place;
use super::lots::{refund_share, refund_share_exact, Lots};
use super::retention::{expired, forget_expired_effects, missing_original, remember_txn};
use super::retention::{ORIGINAL_EXPIRED, TXN_TOO_OLD};
use super::*;
use super::{points, rules};
use crate::card_number;
use crate::crypto::{leaf_hash, parse_public_key};
use crate::error::{refuse, Refusal};
use crate::limits::*;
use crate::pb::request::Op;
use crate::pb::{ErrorCode as E, Record, Request, TxnState};

/// Applies `req` (whose exact signed bytes and signer are in `ctx`) to
/// `state`. Returns what happened, or a refusal that changed nothing.
pub fn apply(state: &mut BrandState, ctx: &Context, req: &Request) -> Result<Outcome, Refusal> {
    let Some(op) = &req.op else {
        return refuse(E::InvalidArgument, "request has no operation");
    };
    addressed(state, req)?;
    if let Op::CreateBrand(cb) = op {
        return create_brand(state, ctx, req, cb);
    }
    created(state)?;
    enrolled(state, ctx)?;
    if let Principal::Auditor(id) | Principal::StoreManager(id, _) = ctx.principal {
        return read_key_request(state, ctx, id, op);
    }
    signer_key_current(state, ctx)?;
    // The server's PIN verdict stands only on a request that carried a PIN
    // block for it: a record claiming one without (a server that says the
    // PIN was checked when none was typed) does not replay.
    if ctx.pin_verified && !holder::pin_typed(op) {
        return refuse(
            E::InvalidArgument,
            "a PIN verdict on a request that carries no PIN block",
        );
    }
    // The server's own lock keeps no transaction id (it has no window).
    if let (Principal::Server, Op::SetPinLock(l)) = (ctx.principal, op) {
        return lock_pin(state, ctx, req, l);
    }
    if let Some(answer) = read_only(state, ctx, op) {
        return answer;
    }
    if let Some(seen) = already_seen(state, ctx, req)? {
        return Ok(seen);
    }
    // Each operation returns its Outcome itself: the record (~500 bytes) is
    // then built in place instead of copied out of a Result at each layer.
    match op {
        Op::Purchase(p) => purchase(state, ctx, req, p),
        Op::TopUp(t) => top_up(state, ctx, req, t),
        Op::Refund(r) => refund(state, ctx, req, r),
        Op::Reversal(r) => reversal(state, ctx, req, r),
        Op::RedeemPoints(r) => redeem_points(state, ctx, req, r),
        Op::CloseShift(c) => close_shift(state, ctx, req, c),
        Op::CreateStore(c) => create_store(state, ctx, req, c),
        Op::EnrollTerminal(e) => enroll_terminal(state, ctx, req, e),
        Op::IssueCard(i) => issue_card(state, ctx, req, i),
        Op::SetCardBlocked(b) => set_card_blocked(state, ctx, req, b),
        Op::ReplaceCard(r) => replace_card(state, ctx, req, r),
        Op::SetRules(s) => set_rules(state, ctx, req, s),
        Op::SetTerminalDisabled(s) => set_terminal_disabled(state, ctx, req, s),
        Op::AddKey(a) => add_key(state, ctx, req, a),
        Op::RemoveKey(r) => remove_key(state, ctx, req, r),
        Op::AdjustCard(a) => adjust_card(state, ctx, req, a),
        Op::VoidTopUp(v) => void_top_up(state, ctx, req, v),
        Op::CloseCard(c) => close_card(state, ctx, req, c),
        Op::SetCardExpiry(e) => set_card_expiry(state, ctx, req, e),
        Op::RotateOwnerKey(r) => rotate_owner_key(state, ctx, req, r),
        Op::RekeyTerminal(r) => rekey_terminal(state, ctx, req, r),
        Op::RotateServerKey(r) => rotate_server_key(state, ctx, req, r),
        Op::SetHolder(h) => set_holder(state, ctx, req, h),
        Op::EraseHolder(e) => erase_holder(state, ctx, req, e),
        Op::SetPin(p) => set_pin(state, ctx, req, p),
        Op::SetPinLock(l) => unlock_pin(state, ctx, req, l),
        Op::HolderData(_)
        | Op::FindCard(_)
        | Op::Inquiry(_)
        | Op::TxnStatus(_)
        | Op::CreateBrand(_)
        | Op::ExportLedger(_)
        | Op::ConsistencyProof(_)
        | Op::WebLogin(_)
        | Op::Report(_) => {
            unreachable!("handled above")
        }
    }
}

/// A till signs only while enrolled in the brand and not disabled.
fn enrolled(state: &BrandState, ctx: &Context) -> Result<(), Refusal> {
    let Principal::Terminal(id) = ctx.principal else {
        return Ok(());
    };
    match state.terminals.get(&id) {
        None => refuse(E::UnknownKey, "terminal not enrolled in this brand"),
        Some(t) if t.disabled => refuse(
            E::TerminalDisabled,
            "this terminal was disabled by the owner",
        ),
        Some(_) => Ok(()),
    }
}

/// The signing key must be the one in force for its principal now: a
/// request verified under a key that a rotation (or re-keying) has since
/// replaced is refused, even if it was in flight when the rotation was
/// written.
fn signer_key_current(state: &BrandState, ctx: &Context) -> Result<(), Refusal> {
    let current = match ctx.principal {
        Principal::Owner => state.owner_key,
        Principal::Server => state.server_key,
        Principal::Terminal(id) => state.terminals[&id].public_key,
        Principal::Auditor(_) | Principal::StoreManager(..) => return Ok(()),
    };
    if *ctx.signer_key != current {
        return refuse(
            E::UnknownKey,
            "this key was rotated out and no longer signs",
        );
    }
    Ok(())
}

/// Answers a read-only operation (no transaction id, no record), or `None`
/// for an operation that changes state.
fn read_only(state: &BrandState, ctx: &Context, op: &Op) -> Option<Result<Outcome, Refusal>> {
    match op {
        Op::Inquiry(q) => Some(inquiry(state, ctx, q)),
        Op::TxnStatus(s) => Some(Ok(txn_status(state, ctx, s.txn_id))),
        Op::Report(r) => Some(report(state, ctx, r)),
        // Audit reads are served from durable storage by the server, never
        // through the state machine.
        Op::ExportLedger(_) | Op::ConsistencyProof(_) => Some(refuse(
            E::InvalidArgument,
            "audit operations are not state changes",
        )),
        // The person never reaches the ledger: the server's holder store
        // answers these before the state machine.
        Op::HolderData(_) | Op::FindCard(_) => Some(refuse(
            E::InvalidArgument,
            "holder data is kept by the server's holder store, not the ledger",
        )),
        // Web login links are the server's (`server::web_login`): they live
        // in its memory, never in the state.
        Op::WebLogin(_) => Some(refuse(
            E::InvalidArgument,
            "web login is answered by the server, not the state machine",
        )),
        _ => None,
    }
}

fn inquiry(state: &BrandState, ctx: &Context, q: &pb::Inquiry) -> Result<Outcome, Refusal> {
    require_cashier_or_owner(ctx)?;
    let (number, card) = find_card(state, &q.card)?;
    let view = state.card_view(number, card, ctx.time_ms);
    Ok(Outcome::Answer(pb::Reply {
        card: Some(view),
        promotion_line: state.rules.promotion_line.clone(),
        ..Default::default()
    }))
}

/// A read-only key's request: a report, or `WRONG_ROLE`; a removed key's
/// anything: `UNKNOWN_KEY`. Nothing is ever written.
fn read_key_request(
    state: &BrandState,
    ctx: &Context,
    id: u32,
    op: &Op,
) -> Result<Outcome, Refusal> {
    if state.read_keys.get(&id).is_none_or(|k| k.removed) {
        return refuse(E::UnknownKey, "this read-only key was removed by the owner");
    }
    match op {
        Op::Report(r) => report(state, ctx, r),
        _ => refuse(
            E::WrongRole,
            "a read-only key reads reports and nothing else",
        ),
    }
}

/// A report from the books (`reports.rs`) for the owner or a read-only
/// key (a store manager: its own store's only); nothing is written.
fn report(state: &BrandState, ctx: &Context, r: &pb::GetReport) -> Result<Outcome, Refusal> {
    let scope = match ctx.principal {
        Principal::Owner | Principal::Auditor(_) => None,
        Principal::StoreManager(_, store) => Some(store),
        _ => {
            return refuse(
                E::WrongRole,
                "reports need the owner key or a read-only key",
            )
        }
    };
    let today = day_of(state, ctx.time_ms);
    let report = super::reports::report(state, r, ctx.time_ms, today, scope)?;
    Ok(Outcome::Answer(pb::Reply {
        report: Some(report),
        ..Default::default()
    }))
}

/// The idempotency check: `Some(Seen)` for a transaction id already applied,
/// a refusal for a zero, tombstoned or forgotten id, `None` for a new one.
fn already_seen(
    state: &BrandState,
    ctx: &Context,
    req: &Request,
) -> Result<Option<Outcome>, Refusal> {
    if req.txn_id == 0 {
        return refuse(E::InvalidArgument, "txn_id must be non-zero");
    }
    match state.txn_entry(ctx.principal.txn_namespace(), req.txn_id) {
        Ok(Some(TxnEntry::Committed(seq) | TxnEntry::Reversed(seq))) => {
            Ok(Some(Outcome::Seen { seq }))
        }
        Ok(Some(TxnEntry::Tombstone(_))) => refuse(
            E::TxnReversed,
            "this transaction id was reversed before it arrived",
        ),
        Err(TooOld) => refuse(E::TxnTooOld, TXN_TOO_OLD),
        Ok(None) => Ok(None),
    }
}

/// The request names this brand and its operator is text a record keeps
/// (the first checks of every request).
fn addressed(state: &BrandState, req: &Request) -> Result<(), Refusal> {
    if req.brand_id != state.brand_id {
        return refuse(E::WrongBrand, "request names another brand");
    }
    if !text_ok(&req.operator) {
        return refuse(
            E::InvalidArgument,
            "operator too long or has control characters",
        );
    }
    Ok(())
}

/// The brand exists (every request but its creation).
fn created(state: &BrandState) -> Result<(), Refusal> {
    if !state.is_created() {
        return refuse(E::WrongBrand, "brand does not exist");
    }
    Ok(())
}

fn text_ok(s: &str) -> bool {
    s.len() <= MAX_TEXT_BYTES && !s.chars().any(char::is_control)
}

fn amount_ok(amount: i64) -> Result<(), Refusal> {
    if (1..=MAX_AMOUNT_MINOR).contains(&amount) {
        Ok(())
    } else {
        refuse(
            E::AmountOutOfRange,
            format!("amount must be 1..={MAX_AMOUNT_MINOR} minor units"),
        )
    }
}

fn require_terminal(ctx: &Context) -> Result<u32, Refusal> {
    match ctx.principal {
        Principal::Terminal(id) => Ok(id),
        _ => refuse(
            E::WrongRole,
            "a cashier operation must come from a terminal",
        ),
    }
}

fn require_owner(ctx: &Context) -> Result<(), Refusal> {
    match ctx.principal {
        Principal::Owner => Ok(()),
        _ => refuse(
            E::WrongRole,
            "an owner operation must be signed by the brand's owner key",
        ),
    }
}

fn require_cashier_or_owner(ctx: &Context) -> Result<(), Refusal> {
    match ctx.principal {
        Principal::Server => refuse(E::WrongRole, "the server does not make inquiries"),
        _ => Ok(()),
    }
}

/// Parses a card number and finds it in this brand. A malformed number and
/// an unknown one get the same answer, so probing learns nothing.
fn parse_card(state: &BrandState, card: &str) -> Result<u64, Refusal> {
    match card_number::parse_number(card) {
        None => refuse(E::CardNotFound, "card not found"),
        Some((brand, _)) if brand != state.brand_id => {
            refuse(E::CardOtherBrand, "card belongs to another brand")
        }
        Some((_, number)) => Ok(number),
    }
}

fn find_card<'s>(state: &'s BrandState, card: &str) -> Result<(u64, &'s Card), Refusal> {
    let number = parse_card(state, card)?;
    match state.cards.get(&number) {
        Some(c) => Ok((number, c)),
        None => refuse(E::CardNotFound, "card not found"),
    }
}

/// A card that may load, spend or redeem now: active and not expired at
/// the record's time.
/// The money record `seq` while it may still be refunded or voided: kept
/// and inside the refund window at the request's time (`ORIGINAL_EXPIRED`
/// past it, `ORIGINAL_NOT_FOUND` with `why` for a sequence never kept).
fn kept_original<'s>(
    state: &'s BrandState,
    ctx: &Context,
    seq: u64,
    why: &str,
) -> Result<&'s Effect, Refusal> {
    let Some(orig) = state.effects.get(seq) else {
        return missing_original(state, seq, E::OriginalNotFound, why);
    };
    if expired(orig, ctx.time_ms) {
        return refuse(E::OriginalExpired, ORIGINAL_EXPIRED);
    }
    Ok(orig)
}

fn find_active_card(state: &BrandState, ctx: &Context, card: &str) -> Result<(u64, Card), Refusal> {
    let (number, c) = find_card(state, card)?;
    match c.status {
        CardStatus::Active => {
            super::safety::check_not_expired(c, ctx.time_ms)?;
            Ok((number, c.clone()))
        }
        _ if c.closed => refuse(E::CardBlocked, "card is closed"),
        _ => refuse(E::CardBlocked, "card is blocked"),
    }
}

fn checked(v: Option<i64>) -> Result<i64, Refusal> {
    v.ok_or_else(|| Refusal::new(E::Overflow, "arithmetic overflow"))
}

fn balance_ok(card: &Card) -> Result<(), Refusal> {
    if card.paid < 0 || card.bonus < 0 || card.points < 0 || card.total_spend < 0 {
        return refuse(E::InsufficientFunds, "would make a balance negative");
    }
    if card
        .paid
        .checked_add(card.bonus)
        .is_none_or(|b| b > MAX_BALANCE_MINOR)
    {
        return refuse(
            E::Overflow,
            format!("card balance would exceed {MAX_BALANCE_MINOR} minor units"),
        );
    }
    if card.points > MAX_POINTS {
        return refuse(E::Overflow, "points would exceed the limit");
    }
    Ok(())
}

/// A record pre-filled with everything common to all kinds.
fn base_record(state: &BrandState, ctx: &Context, req: &Request, kind: RecordKind) -> Record {
    let (terminal_id, store_id) = match ctx.principal {
        Principal::Terminal(id) => (id, state.terminals.get(&id).map_or(0, |t| t.store_id)),
        _ => (0, 0),
    };
    Record {
        seq: state.seq + 1,
        prev_hash: state.head_hash.to_vec(),
        time_ms: ctx.time_ms,
        brand_id: state.brand_id,
        store_id,
        terminal_id,
        signer: ctx.principal.signer() as i32,
        operator: req.operator.clone(),
        txn_id: req.txn_id,
        kind: kind as i32,
        request: ctx.request.to_vec(),
        request_signature: ctx.signature.to_vec(),
        signer_public_key: ctx.signer_key.to_vec(),
        pin_verified: ctx.pin_verified,
        ..Default::default()
    }
}

/// Writes the card's state after the operation into the record.
fn fill_card(state: &BrandState, rec: &mut Record, number: u64, card: &Card, today: i32) {
    rec.card = format_card(number);
    rec.paid_balance_after_minor = card.paid;
    rec.bonus_balance_after_minor = card.bonus;
    rec.points_after = card.points;
    rec.tier_after = rules::tier_of(&state.rules, card, today).0.to_string();
    rec.card_status_after = card.status as i32;
    rec.total_spend_after_minor = card.total_spend;
    rec.visits_after = card.visits;
}

/// Appends `rec`: the single place where the chain, the Merkle tree, the
/// idempotency index and the signer's last transaction id advance.
fn append(state: &mut BrandState, ctx: &Context, rec: Record) -> Outcome {
    debug_assert_eq!(rec.seq, state.seq + 1);
    let bytes = encode_record(&rec);
    let hash = leaf_hash(&bytes);
    state.seq = rec.seq;
    state.head_hash = hash;
    let mut nodes = Vec::with_capacity(2);
    state
        .merkle
        .push_with(hash, |level, index, node| nodes.push((level, index, node)));
    debug_assert_eq!(state.merkle.size(), state.seq);
    if rec.txn_id != 0 {
        remember_txn(
            state,
            ctx.principal.txn_namespace(),
            rec.txn_id,
            TxnEntry::Committed(rec.seq),
        );
        match ctx.principal {
            // The highest id, not the newest: pipelined requests may reach
            // the writer out of order, and a till picks max + 1 next.
            Principal::Owner => state.owner_last_txn_id = state.owner_last_txn_id.max(rec.txn_id),
            Principal::Terminal(id) => {
                let t = state.terminals.get_mut(&id).expect("signer is enrolled");
                t.last_txn_id = t.last_txn_id.max(rec.txn_id);
            }
            Principal::Server | Principal::Auditor(_) | Principal::StoreManager(..) => {}
        }
    }
    forget_expired_effects(state, ctx.time_ms);
    state
        .books
        .advance(&state.rules.time_zone, rec.time_ms, rec.seq);
    Outcome::Written(Written {
        record: rec,
        bytes,
        hash,
        nodes,
    })
}

/// The record's prost encoding: the bytes `encode_to_vec` gives (the golden
/// tests pin them), without its `encoded_len` pass over all 39 fields,
/// which cost as much as the encoding itself. The buffer is sized from an
/// upper bound instead; were it short, the Vec would just grow.
fn encode_record(rec: &Record) -> Vec<u8> {
    // Every scalar field at its longest (key + 10-byte varint) fits in 400
    // bytes; each length-delimited field adds its key, length and content.
    let delimited = [
        rec.prev_hash.len(),
        rec.operator.len(),
        rec.card.len(),
        rec.tier_after.len(),
        rec.request.len(),
        rec.request_signature.len(),
        rec.signer_public_key.len(),
        rec.other_card.len(),
        rec.reference.len(),
        rec.shift_totals.as_ref().map_or(0, Message::encoded_len),
    ];
    let bound = 400 + delimited.iter().map(|n| n + 8).sum::<usize>();
    let mut bytes = Vec::with_capacity(bound);
    rec.encode_raw(&mut bytes);
    debug_assert_eq!(bytes.len(), rec.encoded_len());
    bytes
}

fn effect_of(rec: &Record, card: u64, shift_number: u64) -> Effect {
    Effect {
        kind: rec.kind(),
        card,
        store_id: rec.store_id,
        terminal_id: rec.terminal_id,
        shift_number,
        paid_in: rec.paid_in_minor,
        bonus_in: rec.bonus_in_minor,
        paid_out: rec.paid_out_minor,
        bonus_out: rec.bonus_out_minor,
        points_in: rec.points_in,
        points_out: rec.points_out,
        visit_counted: false,
        refunded_paid: 0,
        refunded_bonus: 0,
        refunded_points: 0,
        original_seq: rec.original_seq,
        reversed: false,
        time_ms: rec.time_ms,
        lots: Lots::Empty,
        points: (rec.points_value_minor != 0).then(|| {
            Box::new(EffectPoints {
                value: rec.points_value_minor,
                ..EffectPoints::default()
            })
        }),
        refunded_lots: None,
    }
}

/// The brand day of a request at `time_ms` (no change to the state).
fn day_of(state: &BrandState, time_ms: i64) -> i32 {
    state.books.day_of(&state.rules.time_zone, time_ms)
}

/// Where the books tally `rec` (interning its operator: call only once
/// the record will be written).
fn place(state: &mut BrandState, rec: &Record) -> Place {
    Place {
        day: day_of(state, rec.time_ms),
        store: rec.store_id,
        terminal: rec.terminal_id,
        operator: state.books.operator_id(&rec.operator),
    }
}

fn shift_number(state: &BrandState, terminal_id: u32) -> u64 {
    state.terminals[&terminal_id].shift_number
}

/// Adds to the terminal's shift totals; fails on overflow before any mutation.
fn shift_add(
    state: &BrandState,
    terminal_id: u32,
    f: impl FnOnce(&mut ShiftTotals) -> Option<()>,
) -> Result<ShiftTotals, Refusal> {
    let mut totals = state.terminals[&terminal_id].shift;
    f(&mut totals)
        .ok_or_else(|| Refusal::new(E::Overflow, "shift totals would overflow; close the shift"))?;
    Ok(totals)
}

fn txn_status(state: &BrandState, ctx: &Context, txn_id: u64) -> Outcome {
    let (state, seq) = match state.txn_entry(ctx.principal.txn_namespace(), txn_id) {
        Err(TooOld) => (TxnState::Expired, 0),
        Ok(None) => (TxnState::Unknown, 0),
        Ok(Some(TxnEntry::Tombstone(seq))) => (TxnState::Tombstoned, seq),
        Ok(Some(TxnEntry::Committed(seq))) => (TxnState::Committed, seq),
        Ok(Some(TxnEntry::Reversed(seq))) => (TxnState::Reversed, seq),
    };
    Outcome::Status { state, seq }
}
