//! Reversal: undo a transaction of the open shift exactly, or tombstone the
//! id of one that never arrived.
//!
//! The steps, each its own function: find the original (or tombstone),
//! check that it may still be reversed, compute the deltas the other way,
//! apply them to a copy of the card, then commit everything together.
use super::*;

/// What a reversal moves: the original's deltas the other way round.
struct Deltas {
    paid_in: i64,
    bonus_in: i64,
    paid_out: i64,
    bonus_out: i64,
    points_in: i64,
    points_out: i64,
    /// Points a reversed refund gives back beyond its own (see `refund_excess`).
    extra_points: i64,
}

pub(super) fn reversal(
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
        Ok(None) => return tombstone(state, ctx, req, r, tid),
    };
    let orig = reversible_original(state, ctx, tid, orig_seq)?;
    let number = orig.card;
    let mut card = match state.cards.get(&number) {
        Some(c) if c.closed => return refuse(E::CardBlocked, "the card is closed"),
        Some(c) if c.status != CardStatus::Replaced => c.clone(),
        _ => {
            return refuse(
                E::CardBlocked,
                "the card was replaced; its value moved to the new card",
            )
        }
    };
    let today = day_of(state, ctx.time_ms);
    let mut expired = points::expire(&mut card.loyalty, &mut card.points, ctx.time_ms);
    let deltas = deltas_of(state, orig, &card)?;
    reverse_on_card(&mut card, orig, &deltas, day_of(state, orig.time_ms))?;
    expired += points::expire(&mut card.loyalty, &mut card.points, ctx.time_ms);
    reverse_day_spend(state, &mut card, orig, today);
    let moved = reverse_lots(&mut card, orig);
    card.last_active_day = today;
    let (orig_kind, orig_store, orig_lots) = (orig.kind, orig.store_id, orig.lots.clone());
    let by_points = orig.points().value;
    let value = deltas.paid_in + deltas.bonus_in + deltas.paid_out + deltas.bonus_out;
    let shift = shift_add(state, tid, |s| {
        s.reversal_count = s.reversal_count.checked_add(1)?;
        s.reversal_minor = s.reversal_minor.checked_add(value)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::Reversal);
    rec.paid_in_minor = deltas.paid_in;
    rec.bonus_in_minor = deltas.bonus_in;
    rec.paid_out_minor = deltas.paid_out;
    rec.bonus_out_minor = deltas.bonus_out;
    rec.points_in = deltas.points_in;
    rec.points_out = deltas.points_out;
    rec.original_seq = orig_seq;
    rec.original_txn_id = r.original_txn_id;
    rec.points_expired = expired;
    fill_card(state, &mut rec, number, &card, today);
    book_reversal(
        state,
        &rec,
        (orig_kind, by_points),
        orig_store,
        &orig_lots,
        &moved,
    );
    mark_reversed(state, ns, r.original_txn_id, orig_seq, deltas.extra_points);
    state.cards.insert(number, card);
    state.terminals.get_mut(&tid).expect("checked").shift = shift;
    Ok(append(state, ctx, rec))
}

/// The original was never received: leave a tombstone so that, if it
/// arrives late, it is refused instead of applied.
fn tombstone(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::Reversal,
    tid: u32,
) -> Result<Outcome, Refusal> {
    let shift = shift_add(state, tid, |s| {
        s.reversal_count = s.reversal_count.checked_add(1)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::Reversal);
    rec.original_txn_id = r.original_txn_id;
    let at = place(state, &rec);
    state
        .books
        .tally(at, |t| t.reversals = t.reversals.saturating_add(1));
    state.terminals.get_mut(&tid).expect("checked").shift = shift;
    let ns = ctx.principal.txn_namespace();
    remember_txn(state, ns, r.original_txn_id, TxnEntry::Tombstone(rec.seq));
    Ok(append(state, ctx, rec))
}

/// The original's effect, if it may still be reversed: kept, within the
/// window, not reversed, in the terminal's open shift, and (a purchase)
/// without refunds.
fn reversible_original<'s>(
    state: &'s BrandState,
    ctx: &Context,
    tid: u32,
    orig_seq: u64,
) -> Result<&'s Effect, Refusal> {
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
    if orig.kind == RecordKind::Purchase && orig.refunded() > 0 {
        return refuse(
            E::NotReversible,
            "the purchase has refunds; refund the rest instead",
        );
    }
    Ok(orig)
}

/// The reversal moves exactly the original's deltas the other way (points
/// taken back only as far as the card still holds them).
fn deltas_of(state: &BrandState, orig: &Effect, card: &Card) -> Result<Deltas, Refusal> {
    let extra_points = refund_excess(state, orig)?;
    let points_in = checked(orig.points_out.checked_add(extra_points))?;
    // Where points pay bills they are money: a reversal that could take
    // back only part of the points its original put on the card (the rest
    // spent since) would leave them with the customer, and a refund reversed
    // then refunded again would give them twice. Refused instead, as value
    // is. (Without points payments, points stay taken back as far as held,
    // as chains written before them replay.)
    let points_are_money =
        state.rules.points_redemption.is_some() || orig.kind == RecordKind::Refund;
    if points_are_money && orig.points_in > card.points.saturating_add(points_in) {
        return refuse(
            E::InsufficientPoints,
            "the points the original put on the card were spent since; it cannot be reversed",
        );
    }
    Ok(Deltas {
        paid_in: orig.paid_out,
        bonus_in: orig.bonus_out,
        paid_out: orig.paid_in,
        bonus_out: orig.bonus_in,
        points_in,
        points_out: orig.points_in.min(card.points.saturating_add(points_in)),
        extra_points,
    })
}

/// Refunds take points back refund by refund, each rounded down; once one
/// is reversed, what stays counted as taken back can exceed the rounded
/// share of the value that stays refunded. A reversed refund gives that
/// excess back too, so the purchase always counts exactly its share.
/// (Found by fuzzing.) Zero for anything but a refund.
fn refund_excess(state: &BrandState, orig: &Effect) -> Result<i64, Refusal> {
    if orig.kind != RecordKind::Refund {
        return Ok(0);
    }
    // The purchase is older than its refund, so it leaves the window
    // first; its refunded amounts can no longer be given back.
    let Some(p) = state.effects.get(orig.original_seq) else {
        return refuse(
            E::OriginalExpired,
            "the refunded purchase is past the refund window",
        );
    };
    let refunded_after = p.refunded_paid + p.refunded_bonus - orig.paid_in - orig.bonus_in;
    let approved = p.paid_out + p.bonus_out;
    if approved == 0 {
        return Ok(0);
    }
    let share = i128::from(p.points_in) * i128::from(refunded_after) / i128::from(approved);
    let share = i64::try_from(share).expect("bounded by points_in");
    Ok((p.refunded_points - orig.points_out - share).max(0))
}

/// Applies the deltas to the card copy, with the spend and visit history
/// the original changed, and checks the balances.
/// `day` is the original's brand day (its daily spend is given back).
fn reverse_on_card(card: &mut Card, orig: &Effect, d: &Deltas, day: i32) -> Result<(), Refusal> {
    if card.paid < d.paid_out || card.bonus < d.bonus_out {
        return refuse(
            E::InsufficientFunds,
            "the value to take back has been spent",
        );
    }
    card.paid = checked(card.paid.checked_add(d.paid_in))? - d.paid_out;
    card.bonus = checked(card.bonus.checked_add(d.bonus_in))? - d.bonus_out;
    reverse_points(card, orig, d)?;
    let approved = orig.paid_out + orig.bonus_out;
    let refunded_value = orig.paid_in + orig.bonus_in;
    match orig.kind {
        RecordKind::Purchase => {
            card.total_spend = (card.total_spend - approved).max(0);
            super::super::safety::unspend(card, day, approved);
            if orig.visit_counted {
                card.visits = card.visits.saturating_sub(1);
            }
        }
        RecordKind::Refund => {
            card.total_spend = checked(card.total_spend.checked_add(refunded_value))?
        }
        _ => {}
    }
    balance_ok(card)
}

/// Points: what the original spent goes back to the lots it came from
/// (with its expiry), anything else given back is free; what it added is
/// taken back from the latest-expiring lots first.
fn reverse_points(card: &mut Card, orig: &Effect, d: &Deltas) -> Result<(), Refusal> {
    let mut spent = orig.points().lots.clone();
    let given = if orig.kind == RecordKind::Refund {
        // A refund's lots are what it gave back, not what it spent.
        Vec::new()
    } else {
        points::give_back(&mut card.loyalty, &mut card.points, &mut spent, d.points_in)
    };
    let free = d.points_in - points::total(&given);
    card.points = checked(card.points.checked_add(free))?;
    points::take_back(&mut card.loyalty, &mut card.points, d.points_out);
    Ok(())
}

/// The spend per day a purchase or a refund changed, undone.
fn reverse_day_spend(state: &BrandState, card: &mut Card, orig: &Effect, today: i32) {
    let keep = rules::day_history(&state.rules);
    let delta = match orig.kind {
        RecordKind::Purchase => -(orig.paid_out + orig.bonus_out),
        RecordKind::Refund => orig.paid_in + orig.bonus_in,
        _ => 0,
    };
    if keep > 0 && delta != 0 {
        let day = match orig.kind {
            RecordKind::Refund => state
                .effects
                .get(orig.original_seq)
                .map_or(today, |p| day_of(state, p.time_ms)),
            _ => day_of(state, orig.time_ms),
        };
        points::add_day_spend(&mut card.loyalty, day, today, keep, delta);
    }
}

/// Moves the original's lots back on the card copy: a purchase's value
/// returns to the lots it came from; a load's or a refund's is taken back
/// from the lots it went to (`Lots::take_back`). Returns what moved.
/// Never refused for the lot bound: a reversed purchase gives back value.
fn reverse_lots(card: &mut Card, orig: &Effect) -> Lots {
    match orig.kind {
        RecordKind::Purchase => {
            card.lots.join_all(&orig.lots);
            orig.lots.clone()
        }
        RecordKind::TopUp | RecordKind::Refund => card.lots.take_back(&orig.lots),
        _ => Lots::Empty,
    }
}

/// A reversal in the books: its tally, the liability it moved and the
/// settlement of the original undone exactly.
fn book_reversal(
    state: &mut BrandState,
    rec: &Record,
    (kind, by_points): (RecordKind, i64),
    orig_store: u32,
    orig_lots: &Lots,
    moved: &Lots,
) {
    let at = place(state, rec);
    // The points' part of the original's bill (a purchase's, or a refund's
    // given back), undone.
    let by_points = match kind {
        RecordKind::Refund => by_points,
        _ => -by_points,
    };
    let value_in = rec.paid_in_minor + rec.bonus_in_minor;
    let value_out = rec.paid_out_minor + rec.bonus_out_minor;
    state.books.tally(at, |t| {
        t.reversals = t.reversals.saturating_add(1);
        t.points_paid_minor = t.points_paid_minor.saturating_add(by_points);
        match kind {
            RecordKind::Purchase => {
                t.reversed_purchase_minor = t.reversed_purchase_minor.saturating_add(value_in)
            }
            RecordKind::TopUp => {
                t.reversed_top_up_minor = t.reversed_top_up_minor.saturating_add(value_out)
            }
            RecordKind::Refund => {
                t.reversed_refund_minor = t.reversed_refund_minor.saturating_add(value_out)
            }
            _ => {}
        }
    });
    match kind {
        RecordKind::Purchase => {
            state.books.liability(at.day, moved, 1);
            state.books.settle(at.day, orig_store, orig_lots, -1);
        }
        RecordKind::Refund => {
            state.books.liability(at.day, moved, -1);
            state.books.settle(at.day, orig_store, orig_lots, 1);
        }
        RecordKind::TopUp => state.books.liability(at.day, moved, -1),
        _ => {}
    }
}

/// Commit: the original is marked reversed; a reversed refund gives its
/// amount back to the purchase's refundable balance.
fn mark_reversed(state: &mut BrandState, ns: u32, txn_id: u64, orig_seq: u64, extra_points: i64) {
    let orig = state.effects.get_mut(orig_seq).expect("checked above");
    orig.reversed = true;
    let (kind, refund_of) = (orig.kind, orig.original_seq);
    let (refund_paid, refund_bonus, refund_points) = (orig.paid_in, orig.bonus_in, orig.points_out);
    let refund_lots = match kind {
        RecordKind::Refund => orig.lots.clone(),
        _ => Lots::Empty,
    };
    *state.txns.get_mut(&(ns, txn_id)).expect("found above") = TxnEntry::Reversed(orig_seq);
    let points_given = orig.points_in;
    let (points_value, given) = match orig.points.take() {
        Some(p) => (p.value, p.lots),
        None => (0, Vec::new()),
    };
    if kind == RecordKind::Refund {
        let purchase = state
            .effects
            .get_mut(refund_of)
            .expect("a refund names its purchase");
        purchase.refunded_paid -= refund_paid;
        purchase.refunded_bonus -= refund_bonus;
        purchase.refunded_points -= refund_points + extra_points;
        // What it returned to each store is no longer returned.
        if let Some(back) = purchase.refunded_lots.as_mut() {
            back.remove_all(&refund_lots);
        }
        // The points it gave back are spent again, with their expiry.
        if points_value != 0 || points_given != 0 {
            let p = purchase.points_mut();
            p.refunded_value -= points_value;
            p.returned -= points_given;
            points::untake(&mut p.lots, &given);
        }
    }
}
