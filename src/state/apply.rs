//! `apply`: one request against one brand's state.
//!
//! Shape of every state-changing operation: check everything (role, ranges,
//! card, funds, overflow) on copies, then build the record, then commit the
//! copies and the record together in `append`. Nothing is mutated on a path
//! that can still return a refusal.
use prost::Message;

use super::retention::{expired, forget_expired_effects, missing_original, remember_txn};
use super::retention::{ORIGINAL_EXPIRED, TXN_TOO_OLD};
use super::rules;
use super::*;
use crate::card_number;
use crate::crypto::{leaf_hash, parse_public_key};
use crate::error::{refuse, Refusal};
use crate::limits::*;
use crate::pb::request::Op;
use crate::pb::{ErrorCode as E, Record, Request, TxnState};

const DAY_MS: i64 = 86_400_000;

/// Applies `req` (whose exact signed bytes and signer are in `ctx`) to
/// `state`. Returns what happened, or a refusal that changed nothing.
pub fn apply(state: &mut BrandState, ctx: &Context, req: &Request) -> Result<Outcome, Refusal> {
    let Some(op) = &req.op else {
        return refuse(E::InvalidArgument, "request has no operation");
    };
    if req.brand_id != state.brand_id {
        return refuse(E::WrongBrand, "request names another brand");
    }
    if !text_ok(&req.operator) {
        return refuse(
            E::InvalidArgument,
            "operator too long or has control characters",
        );
    }
    if let Op::CreateBrand(cb) = op {
        return create_brand(state, ctx, req, cb);
    }
    if !state.is_created() {
        return refuse(E::WrongBrand, "brand does not exist");
    }
    if let Principal::Terminal(id) = ctx.principal {
        match state.terminals.get(&id) {
            None => return refuse(E::UnknownKey, "terminal not enrolled in this brand"),
            Some(t) if t.disabled => {
                return refuse(
                    E::TerminalDisabled,
                    "this terminal was disabled by the owner",
                )
            }
            Some(_) => {}
        }
    }
    // Read-only operations: no transaction id, no record.
    match op {
        Op::Inquiry(q) => {
            require_cashier_or_owner(ctx)?;
            let (number, card) = find_card(state, &q.card)?;
            let view = state.card_view(number, card);
            return Ok(Outcome::Answer(pb::Reply {
                card: Some(view),
                promotion_line: state.rules.promotion_line.clone(),
                ..Default::default()
            }));
        }
        Op::TxnStatus(s) => return Ok(txn_status(state, ctx, s.txn_id)),
        // Audit reads are served from durable storage by the server, never
        // through the state machine.
        Op::ExportLedger(_) | Op::ConsistencyProof(_) => {
            return refuse(E::InvalidArgument, "audit operations are not state changes")
        }
        _ => {}
    }
    if req.txn_id == 0 {
        return refuse(E::InvalidArgument, "txn_id must be non-zero");
    }
    match state.txn_entry(ctx.principal.txn_namespace(), req.txn_id) {
        Ok(Some(TxnEntry::Committed(seq) | TxnEntry::Reversed(seq))) => {
            return Ok(Outcome::Seen { seq })
        }
        Ok(Some(TxnEntry::Tombstone(_))) => {
            return refuse(
                E::TxnReversed,
                "this transaction id was reversed before it arrived",
            )
        }
        Err(TooOld) => return refuse(E::TxnTooOld, TXN_TOO_OLD),
        Ok(None) => {}
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
        Op::Inquiry(_)
        | Op::TxnStatus(_)
        | Op::CreateBrand(_)
        | Op::ExportLedger(_)
        | Op::ConsistencyProof(_) => {
            unreachable!("handled above")
        }
    }
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

fn find_active_card(state: &BrandState, card: &str) -> Result<(u64, Card), Refusal> {
    let (number, c) = find_card(state, card)?;
    match c.status {
        CardStatus::Active => Ok((number, c.clone())),
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
        ..Default::default()
    }
}

/// Writes the card's state after the operation into the record.
fn fill_card(state: &BrandState, rec: &mut Record, number: u64, card: &Card) {
    rec.card = format_card(number);
    rec.paid_balance_after_minor = card.paid;
    rec.bonus_balance_after_minor = card.bonus;
    rec.points_after = card.points;
    rec.tier_after = rules::tier_of(&state.rules, card).0.to_string();
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
            Principal::Server => {}
        }
    }
    forget_expired_effects(state, ctx.time_ms);
    Outcome::Written(Written {
        record: rec,
        bytes,
        hash,
        nodes,
    })
}

/// The record's prost encoding: the bytes `encode_to_vec` gives (the golden
/// tests pin them), without its `encoded_len` pass over all 36 fields,
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

fn create_brand(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    cb: &pb::CreateBrand,
) -> Result<Outcome, Refusal> {
    if ctx.principal != Principal::Server {
        return refuse(E::WrongRole, "only the server creates brands");
    }
    if state.is_created() {
        return refuse(E::InvalidArgument, "brand already exists");
    }
    if cb.name.is_empty() || !text_ok(&cb.name) {
        return refuse(E::InvalidArgument, "brand name empty or too long");
    }
    if cb.currency.len() != 3 || !cb.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return refuse(E::InvalidArgument, "currency must be an ISO 4217 code");
    }
    if cb.currency_exponent > 4 {
        return refuse(E::InvalidArgument, "currency exponent must be 0..=4");
    }
    let Some(owner) = parse_public_key(&cb.owner_public_key) else {
        return refuse(
            E::InvalidArgument,
            "owner key is not a valid ed25519 public key",
        );
    };
    if !(1..=MAX_BRAND_ID).contains(&state.brand_id) {
        return refuse(E::InvalidArgument, "brand id out of range");
    }
    let rec = base_record(state, ctx, req, RecordKind::BrandCreated);
    state.name = cb.name.clone();
    state.currency = cb.currency.clone();
    state.exponent = cb.currency_exponent;
    state.owner_key = owner.to_bytes();
    Ok(append(state, ctx, rec))
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

fn purchase(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    p: &pb::Purchase,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    amount_ok(p.amount_minor)?;
    let (number, mut card) = find_active_card(state, &p.card)?;
    let balance = card.balance();
    let approved = if balance >= p.amount_minor {
        p.amount_minor
    } else if p.allow_partial && balance > 0 {
        balance
    } else {
        return refuse(E::InsufficientFunds, "card balance is less than the amount");
    };
    // Paid value is spent first, then bonus; refunds return in reverse order.
    let paid_out = approved.min(card.paid);
    let bonus_out = approved - paid_out;
    let (_, multiplier) = rules::tier_of(&state.rules, &card);
    let points = rules::points_for(&state.rules, state.exponent, approved, multiplier);
    card.paid -= paid_out;
    card.bonus -= bonus_out;
    card.points = checked(card.points.checked_add(points))?;
    card.total_spend = checked(card.total_spend.checked_add(approved))?;
    let day = ctx.time_ms.div_euclid(DAY_MS);
    let visit_counted = day != card.last_visit_day;
    if visit_counted {
        card.visits = card
            .visits
            .checked_add(1)
            .ok_or_else(|| Refusal::new(E::Overflow, "visits overflow"))?;
        card.last_visit_day = day;
    }
    balance_ok(&card)?;
    let shift = shift_add(state, tid, |s| {
        s.purchase_count = s.purchase_count.checked_add(1)?;
        s.purchase_minor = s.purchase_minor.checked_add(approved)?;
        Some(())
    })?;

    let mut rec = base_record(state, ctx, req, RecordKind::Purchase);
    rec.paid_out_minor = paid_out;
    rec.bonus_out_minor = bonus_out;
    rec.points_in = points;
    rec.requested_minor = p.amount_minor;
    rec.remaining_minor = p.amount_minor - approved;
    fill_card(state, &mut rec, number, &card);
    let mut effect = effect_of(&rec, number, shift_number(state, tid));
    effect.visit_counted = visit_counted;
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

/// Commits a money record's card, shift totals and effect together.
fn commit_money(
    state: &mut BrandState,
    tid: u32,
    number: u64,
    card: Card,
    shift: ShiftTotals,
    effect: Effect,
    rec: &Record,
) {
    state.cards.insert(number, card);
    state
        .terminals
        .get_mut(&tid)
        .expect("terminal checked")
        .shift = shift;
    state.effects.push(rec.seq, effect);
}

fn top_up(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    t: &pb::TopUp,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    amount_ok(t.amount_minor)?;
    let (number, mut card) = find_active_card(state, &t.card)?;
    let bonus = rules::bonus_for(&state.rules, t.amount_minor);
    card.paid = checked(card.paid.checked_add(t.amount_minor))?;
    card.bonus = checked(card.bonus.checked_add(bonus))?;
    balance_ok(&card)?;
    let shift = shift_add(state, tid, |s| {
        s.top_up_count = s.top_up_count.checked_add(1)?;
        s.top_up_minor = s.top_up_minor.checked_add(t.amount_minor)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::TopUp);
    rec.paid_in_minor = t.amount_minor;
    rec.bonus_in_minor = bonus;
    fill_card(state, &mut rec, number, &card);
    let effect = effect_of(&rec, number, shift_number(state, tid));
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

fn refund(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::Refund,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    amount_ok(r.amount_minor)?;
    let Some(orig) = state.effects.get(r.original_seq) else {
        return missing_original(
            state,
            r.original_seq,
            E::OriginalNotFound,
            "no purchase with that sequence number",
        );
    };
    if expired(orig, ctx.time_ms) {
        return refuse(E::OriginalExpired, ORIGINAL_EXPIRED);
    }
    if orig.kind != RecordKind::Purchase || orig.reversed {
        return refuse(
            E::NotRefundable,
            "only a purchase that was not reversed can be refunded",
        );
    }
    if orig.store_id != state.terminals[&tid].store_id {
        return refuse(
            E::WrongStore,
            "a purchase is refunded at the store where it was made",
        );
    }
    let approved = orig.paid_out + orig.bonus_out;
    let refunded = orig.refunded_paid + orig.refunded_bonus;
    let left = approved - refunded;
    if r.amount_minor > left {
        return refuse(
            E::RefundExceedsOriginal,
            format!("at most {left} minor units are left to refund"),
        );
    }
    let number = orig.card;
    let mut card = match state.cards.get(&number) {
        Some(c) if c.status == CardStatus::Active => c.clone(),
        _ => return refuse(E::CardBlocked, "the purchase's card is blocked or replaced"),
    };
    // Bonus was spent last, so it is returned first.
    let bonus_in = r.amount_minor.min(orig.bonus_out - orig.refunded_bonus);
    let paid_in = r.amount_minor - bonus_in;
    // Points earned are taken back in proportion to the value refunded,
    // rounded down, and never more than the card still holds.
    let should_have_removed = i64::try_from(
        i128::from(orig.points_in) * i128::from(refunded + r.amount_minor) / i128::from(approved),
    )
    .expect("bounded by points_in");
    // Never negative: after a refund is reversed, the points still counted
    // as taken back can exceed the proportional share of what remains
    // refunded (rounding was done refund by refund). Found by fuzzing.
    let points_out = (should_have_removed - orig.refunded_points).clamp(0, card.points);
    card.paid = checked(card.paid.checked_add(paid_in))?;
    card.bonus = checked(card.bonus.checked_add(bonus_in))?;
    card.points -= points_out;
    card.total_spend = (card.total_spend - r.amount_minor).max(0);
    balance_ok(&card)?;
    let shift = shift_add(state, tid, |s| {
        s.refund_count = s.refund_count.checked_add(1)?;
        s.refund_minor = s.refund_minor.checked_add(r.amount_minor)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::Refund);
    rec.paid_in_minor = paid_in;
    rec.bonus_in_minor = bonus_in;
    rec.points_out = points_out;
    rec.original_seq = r.original_seq;
    rec.remaining_minor = left - r.amount_minor;
    fill_card(state, &mut rec, number, &card);
    let effect = effect_of(&rec, number, shift_number(state, tid));
    let orig = state
        .effects
        .get_mut(r.original_seq)
        .expect("checked above");
    orig.refunded_paid += paid_in;
    orig.refunded_bonus += bonus_in;
    orig.refunded_points += points_out;
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

fn reversal(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::Reversal,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    if r.original_txn_id == 0 || r.original_txn_id == req.txn_id {
        return refuse(
            E::InvalidArgument,
            "original_txn_id must name another transaction",
        );
    }
    let ns = ctx.principal.txn_namespace();
    let orig_seq = match state.txn_entry(ns, r.original_txn_id) {
        Ok(Some(TxnEntry::Tombstone(_) | TxnEntry::Reversed(_))) => {
            return refuse(E::AlreadyReversed, "already reversed")
        }
        Ok(Some(TxnEntry::Committed(seq))) => seq,
        Err(TooOld) => return refuse(E::TxnTooOld, TXN_TOO_OLD),
        Ok(None) => {
            // Never received: leave a tombstone so the original, if it
            // arrives late, is refused instead of applied.
            let shift = shift_add(state, tid, |s| {
                s.reversal_count = s.reversal_count.checked_add(1)?;
                Some(())
            })?;
            let mut rec = base_record(state, ctx, req, RecordKind::Reversal);
            rec.original_txn_id = r.original_txn_id;
            state.terminals.get_mut(&tid).expect("checked").shift = shift;
            remember_txn(state, ns, r.original_txn_id, TxnEntry::Tombstone(rec.seq));
            return Ok(append(state, ctx, rec));
        }
    };
    let Some(orig) = state.effects.get(orig_seq) else {
        return missing_original(
            state,
            orig_seq,
            E::NotReversible,
            "only purchases, top-ups, refunds and redemptions can be reversed",
        );
    };
    if expired(orig, ctx.time_ms) {
        return refuse(E::OriginalExpired, ORIGINAL_EXPIRED);
    }
    if orig.reversed {
        return refuse(E::AlreadyReversed, "already reversed");
    }
    if orig.shift_number != state.terminals[&tid].shift_number {
        return refuse(
            E::NotReversible,
            "the shift of the original is closed; refund instead",
        );
    }
    if orig.kind == RecordKind::Purchase && orig.refunded_paid + orig.refunded_bonus > 0 {
        return refuse(
            E::NotReversible,
            "the purchase has refunds; refund the rest instead",
        );
    }
    let number = orig.card;
    let mut card = match state.cards.get(&number) {
        Some(c) if c.status != CardStatus::Replaced => c.clone(),
        _ => {
            return refuse(
                E::CardBlocked,
                "the card was replaced; its value moved to the new card",
            )
        }
    };
    // The reversal moves exactly the original's deltas the other way (points
    // taken back only as far as the card still holds them).
    let paid_in = orig.paid_out;
    let bonus_in = orig.bonus_out;
    let paid_out = orig.paid_in;
    let bonus_out = orig.bonus_in;
    // Refunds take points back refund by refund, each rounded down; once one
    // is reversed, what stays counted as taken back can exceed the rounded
    // share of the value that stays refunded. A reversed refund gives that
    // excess back too, so the purchase always counts exactly its share.
    // (Found by fuzzing.)
    let extra_points = if orig.kind == RecordKind::Refund {
        // The purchase is older than its refund, so it leaves the window
        // first; its refunded amounts can no longer be given back.
        let Some(p) = state.effects.get(orig.original_seq) else {
            return refuse(
                E::OriginalExpired,
                "the refunded purchase is past the refund window",
            );
        };
        let refunded_after = p.refunded_paid + p.refunded_bonus - orig.paid_in - orig.bonus_in;
        let share = i128::from(p.points_in) * i128::from(refunded_after)
            / i128::from(p.paid_out + p.bonus_out);
        let share = i64::try_from(share).expect("bounded by points_in");
        (p.refunded_points - orig.points_out - share).max(0)
    } else {
        0
    };
    let points_in = checked(orig.points_out.checked_add(extra_points))?;
    let points_out = orig.points_in.min(card.points.saturating_add(points_in));
    if card.paid < paid_out || card.bonus < bonus_out {
        return refuse(
            E::InsufficientFunds,
            "the value to take back has been spent",
        );
    }
    card.paid = checked(card.paid.checked_add(paid_in))? - paid_out;
    card.bonus = checked(card.bonus.checked_add(bonus_in))? - bonus_out;
    card.points = checked(card.points.checked_add(points_in))? - points_out;
    let approved = orig.paid_out + orig.bonus_out;
    let refunded_value = orig.paid_in + orig.bonus_in;
    match orig.kind {
        RecordKind::Purchase => {
            card.total_spend = (card.total_spend - approved).max(0);
            if orig.visit_counted {
                card.visits = card.visits.saturating_sub(1);
            }
        }
        RecordKind::Refund => {
            card.total_spend = checked(card.total_spend.checked_add(refunded_value))?
        }
        _ => {}
    }
    balance_ok(&card)?;
    let value = paid_in + bonus_in + paid_out + bonus_out;
    let shift = shift_add(state, tid, |s| {
        s.reversal_count = s.reversal_count.checked_add(1)?;
        s.reversal_minor = s.reversal_minor.checked_add(value)?;
        Some(())
    })?;
    let (orig_kind, orig_refund_of) = (orig.kind, orig.original_seq);
    let mut rec = base_record(state, ctx, req, RecordKind::Reversal);
    rec.paid_in_minor = paid_in;
    rec.bonus_in_minor = bonus_in;
    rec.paid_out_minor = paid_out;
    rec.bonus_out_minor = bonus_out;
    rec.points_in = points_in;
    rec.points_out = points_out;
    rec.original_seq = orig_seq;
    rec.original_txn_id = r.original_txn_id;
    fill_card(state, &mut rec, number, &card);
    // Commit: the original is marked reversed; a reversed refund gives its
    // amount back to the purchase's refundable balance.
    let orig = state.effects.get_mut(orig_seq).expect("checked above");
    orig.reversed = true;
    *state
        .txns
        .get_mut(&(ns, r.original_txn_id))
        .expect("found above") = TxnEntry::Reversed(orig_seq);
    let (refund_paid, refund_bonus, refund_points) = (orig.paid_in, orig.bonus_in, orig.points_out);
    if orig_kind == RecordKind::Refund {
        let purchase = state
            .effects
            .get_mut(orig_refund_of)
            .expect("a refund names its purchase");
        purchase.refunded_paid -= refund_paid;
        purchase.refunded_bonus -= refund_bonus;
        purchase.refunded_points -= refund_points + extra_points;
    }
    state.cards.insert(number, card);
    state.terminals.get_mut(&tid).expect("checked").shift = shift;
    Ok(append(state, ctx, rec))
}

fn redeem_points(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::RedeemPoints,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    if !(1..=MAX_POINTS).contains(&r.points) {
        return refuse(E::AmountOutOfRange, "points out of range");
    }
    if !text_ok(&r.reward) {
        return refuse(E::InvalidArgument, "reward text too long");
    }
    let (number, mut card) = find_active_card(state, &r.card)?;
    if card.points < r.points {
        return refuse(E::InsufficientPoints, "the card has fewer points");
    }
    card.points -= r.points;
    let shift = shift_add(state, tid, |s| {
        s.redeem_count = s.redeem_count.checked_add(1)?;
        s.redeem_points = s.redeem_points.checked_add(r.points)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::PointsRedeemed);
    rec.points_out = r.points;
    fill_card(state, &mut rec, number, &card);
    let effect = effect_of(&rec, number, shift_number(state, tid));
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

fn close_shift(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    c: &pb::CloseShift,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    let terminal = &state.terminals[&tid];
    let server = terminal.shift;
    let balanced = c.terminal_totals.as_ref() == Some(&server);
    let mut rec = base_record(state, ctx, req, RecordKind::ShiftClosed);
    rec.shift_totals = Some(server);
    rec.shift_number = terminal.shift_number;
    rec.shift_balanced = balanced;
    let t = state.terminals.get_mut(&tid).expect("checked");
    t.shift = ShiftTotals::default();
    t.shift_number += 1;
    Ok(append(state, ctx, rec))
}

fn create_store(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    c: &pb::CreateStore,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if c.name.is_empty() || !text_ok(&c.name) {
        return refuse(E::InvalidArgument, "store name empty or too long");
    }
    if state.stores.len() >= MAX_STORES_PER_BRAND {
        return refuse(E::LimitExceeded, "too many stores");
    }
    let id = u32::try_from(state.stores.len() + 1).expect("bounded by limit");
    let mut rec = base_record(state, ctx, req, RecordKind::StoreCreated);
    rec.new_id = id;
    rec.store_id = id;
    state.stores.insert(
        id,
        Store {
            name: c.name.clone(),
        },
    );
    Ok(append(state, ctx, rec))
}

fn enroll_terminal(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    e: &pb::EnrollTerminal,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if !state.stores.contains_key(&e.store_id) {
        return refuse(E::StoreNotFound, "no such store");
    }
    let Some(key) = parse_public_key(&e.public_key) else {
        return refuse(E::InvalidArgument, "not a valid ed25519 public key");
    };
    let key = key.to_bytes();
    if key == state.owner_key || state.terminals.values().any(|t| t.public_key == key) {
        return refuse(E::KeyInUse, "this key is already enrolled");
    }
    if !text_ok(&e.label) {
        return refuse(E::InvalidArgument, "label too long");
    }
    if state.terminals.len() >= MAX_TERMINALS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many terminals");
    }
    let id = u32::try_from(state.terminals.len() + 1).expect("bounded by limit");
    let mut rec = base_record(state, ctx, req, RecordKind::TerminalEnrolled);
    rec.new_id = id;
    rec.store_id = e.store_id;
    state.terminals.insert(
        id,
        Terminal {
            store_id: e.store_id,
            public_key: key,
            label: e.label.clone(),
            last_txn_id: 0,
            shift: ShiftTotals::default(),
            shift_number: 1,
            disabled: false,
        },
    );
    Ok(append(state, ctx, rec))
}

fn issue_card(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    i: &pb::IssueCard,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let number = parse_card(state, &i.card).map_err(|r| match r.code {
        E::CardNotFound => {
            Refusal::new(E::InvalidArgument, "not a valid card number for this brand")
        }
        _ => r,
    })?;
    if state.cards.contains_key(&number) {
        return refuse(E::CardExists, "card number already issued");
    }
    if state.cards.len() >= MAX_CARDS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many cards");
    }
    let card = Card::new();
    let mut rec = base_record(state, ctx, req, RecordKind::CardIssued);
    fill_card(state, &mut rec, number, &card);
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

fn set_card_blocked(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    b: &pb::SetCardBlocked,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if !text_ok(&b.reason) {
        return refuse(E::InvalidArgument, "reason too long");
    }
    let (number, card) = find_card(state, &b.card)?;
    if card.status == CardStatus::Replaced {
        return refuse(E::CardBlocked, "a replaced card stays blocked");
    }
    let mut card = card.clone();
    card.status = if b.blocked {
        CardStatus::Blocked
    } else {
        CardStatus::Active
    };
    let mut rec = base_record(state, ctx, req, RecordKind::CardBlockedChanged);
    fill_card(state, &mut rec, number, &card);
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

fn replace_card(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::ReplaceCard,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let (old_number, old) = find_card(state, &r.old_card)?;
    if old.status == CardStatus::Replaced {
        return refuse(E::CardBlocked, "card was already replaced");
    }
    let new_number = parse_card(state, &r.new_card).map_err(|r| match r.code {
        E::CardNotFound => {
            Refusal::new(E::InvalidArgument, "not a valid card number for this brand")
        }
        _ => r,
    })?;
    if state.cards.contains_key(&new_number) {
        return refuse(E::CardExists, "the new card number is already issued");
    }
    if state.cards.len() >= MAX_CARDS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many cards");
    }
    // Everything moves: value, points, spend history and visits.
    let new = Card {
        status: CardStatus::Active,
        ..old.clone()
    };
    let retired = Card {
        paid: 0,
        bonus: 0,
        points: 0,
        status: CardStatus::Replaced,
        ..old.clone()
    };
    let mut rec = base_record(state, ctx, req, RecordKind::CardReplaced);
    rec.paid_in_minor = old.paid;
    rec.bonus_in_minor = old.bonus;
    rec.points_in = old.points;
    rec.other_card = format_card(old_number);
    fill_card(state, &mut rec, new_number, &new);
    state.cards.insert(old_number, retired);
    state.cards.insert(new_number, new);
    Ok(append(state, ctx, rec))
}

fn set_rules(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    s: &pb::SetRules,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let Some(new_rules) = &s.rules else {
        return refuse(E::InvalidArgument, "rules missing");
    };
    rules::validate(new_rules)?;
    let rec = base_record(state, ctx, req, RecordKind::RulesSet);
    state.rules = new_rules.clone();
    Ok(append(state, ctx, rec))
}

fn set_terminal_disabled(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    s: &pb::SetTerminalDisabled,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if !text_ok(&s.reason) {
        return refuse(E::InvalidArgument, "reason too long");
    }
    let Some(store_id) = state.terminals.get(&s.terminal_id).map(|t| t.store_id) else {
        return refuse(E::TerminalNotFound, "no such terminal");
    };
    let mut rec = base_record(state, ctx, req, RecordKind::TerminalStatusChanged);
    rec.new_id = s.terminal_id;
    rec.store_id = store_id;
    state
        .terminals
        .get_mut(&s.terminal_id)
        .expect("checked")
        .disabled = s.disabled;
    Ok(append(state, ctx, rec))
}
