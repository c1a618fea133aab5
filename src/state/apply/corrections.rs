//! The owner's corrections (issue 15): an adjustment of a card's value, the
//! void of a till's top-up after its shift closed, closing a card with a
//! cash-out, and a card's validity. Each is a record with the owner's
//! reason and operator, tallied at the head office (store 0) in the books.
use super::*;
use crate::state::safety;

/// The reason every correction carries: required, one short line.
fn reason_ok(reason: &str) -> Result<(), Refusal> {
    if reason.trim().is_empty() || !text_ok(reason) {
        return refuse(
            E::InvalidArgument,
            format!("a reason is required (at most {MAX_TEXT_BYTES} bytes, no control characters)"),
        );
    }
    Ok(())
}

/// A card the owner may correct: issued, not replaced, not closed. Blocked
/// and expired cards may be corrected (that is often why).
fn correctable(state: &BrandState, card: &str) -> Result<(u64, Card), Refusal> {
    let (number, c) = find_card(state, card)?;
    if c.status == CardStatus::Replaced {
        return refuse(
            E::CardBlocked,
            "the card was replaced; correct the new card",
        );
    }
    if c.closed {
        return refuse(E::CardBlocked, "the card is closed");
    }
    Ok((number, c.clone()))
}

pub(super) fn adjust_card(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    a: &pb::AdjustCard,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    reason_ok(&a.reason)?;
    let magnitude = i64::try_from(a.amount_minor.unsigned_abs()).unwrap_or(i64::MAX);
    amount_ok(magnitude)?;
    let (number, mut card) = correctable(state, &a.card)?;
    let (paid, bonus) = if a.bonus {
        (0, magnitude)
    } else {
        (magnitude, 0)
    };
    let moved = if a.amount_minor > 0 {
        card.paid = checked(card.paid.checked_add(paid))?;
        card.bonus = checked(card.bonus.checked_add(bonus))?;
        balance_ok(&card)?;
        safety::check_balance_after(state, &card)?;
        card.lots.add(0, paid, bonus)?;
        Lots::from_moves(&[lots::Lot {
            store: 0,
            paid,
            bonus,
        }])
    } else {
        if card.paid < paid || card.bonus < bonus {
            return refuse(
                E::InsufficientFunds,
                "the adjustment takes more than the card holds of that value",
            );
        }
        card.paid -= paid;
        card.bonus -= bonus;
        card.lots.take(paid, bonus)
    };
    card.last_active_day = day_of(state, ctx.time_ms);
    let mut rec = base_record(state, ctx, req, RecordKind::CardAdjusted);
    let sign = if a.amount_minor > 0 { 1 } else { -1 };
    if sign > 0 {
        (rec.paid_in_minor, rec.bonus_in_minor) = (paid, bonus);
    } else {
        (rec.paid_out_minor, rec.bonus_out_minor) = (paid, bonus);
    }
    rec.reason = a.reason.clone();
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    let at = place(state, &rec);
    state.books.tally(at, |t| {
        t.adjustments = t.adjustments.saturating_add(1);
        if sign > 0 {
            t.adjusted_in_minor = t.adjusted_in_minor.saturating_add(magnitude);
        } else {
            t.adjusted_out_minor = t.adjusted_out_minor.saturating_add(magnitude);
        }
    });
    state.books.liability(at.day, &moved, sign);
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

pub(super) fn void_top_up(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    v: &pb::VoidTopUp,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    reason_ok(&v.reason)?;
    let orig = voidable_top_up(state, ctx, v.original_seq)?;
    let (number, orig_lots) = (orig.card, orig.lots.clone());
    let (paid, bonus) = (orig.paid_in, orig.bonus_in);
    let mut card = match state.cards.get(&number) {
        Some(c) if c.status != CardStatus::Replaced && !c.closed => c.clone(),
        _ => return refuse(E::CardBlocked, "the card was replaced or closed"),
    };
    if card.paid < paid || card.bonus < bonus {
        return refuse(
            E::InsufficientFunds,
            "the loaded value has been spent; adjust the card instead",
        );
    }
    card.paid -= paid;
    card.bonus -= bonus;
    let moved = card.lots.take_back(&orig_lots);
    card.last_active_day = day_of(state, ctx.time_ms);
    let mut rec = base_record(state, ctx, req, RecordKind::TopUpVoided);
    (rec.paid_out_minor, rec.bonus_out_minor) = (paid, bonus);
    rec.original_seq = v.original_seq;
    rec.reason = v.reason.clone();
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    let at = place(state, &rec);
    let value = paid + bonus;
    state.books.tally(at, |t| {
        t.voided_top_ups = t.voided_top_ups.saturating_add(1);
        t.voided_top_up_minor = t.voided_top_up_minor.saturating_add(value);
    });
    state.books.liability(at.day, &moved, -1);
    state
        .effects
        .get_mut(v.original_seq)
        .expect("checked above")
        .reversed = true;
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

/// The till top-up a void names: kept, within the refund window, not
/// reversed or voided. (An owner's own load keeps no effect: it is
/// corrected with an adjustment.)
fn voidable_top_up<'s>(
    state: &'s BrandState,
    ctx: &Context,
    seq: u64,
) -> Result<&'s Effect, Refusal> {
    let orig = kept_original(state, ctx, seq, "no till top-up with that sequence number")?;
    if orig.kind != RecordKind::TopUp {
        return refuse(E::NotReversible, "only a till's top-up can be voided");
    }
    if orig.reversed {
        return refuse(
            E::AlreadyReversed,
            "the top-up was already reversed or voided",
        );
    }
    Ok(orig)
}

pub(super) fn close_card(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    c: &pb::CloseCard,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    reason_ok(&c.reason)?;
    let (number, mut card) = correctable(state, &c.card)?;
    let (paid, bonus, points) = (card.paid, card.bonus, card.points);
    let taken = card.lots.take(paid, bonus);
    (card.paid, card.bonus) = (0, 0);
    // Every point goes, out of its lots too (a closed card earns nothing).
    points::take_back(&mut card.loyalty, &mut card.points, points);
    card.status = CardStatus::Blocked;
    card.closed = true;
    card.last_active_day = day_of(state, ctx.time_ms);
    let mut rec = base_record(state, ctx, req, RecordKind::CardClosed);
    (rec.paid_out_minor, rec.bonus_out_minor) = (paid, bonus);
    rec.points_out = points;
    rec.reason = c.reason.clone();
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    let at = place(state, &rec);
    state.books.tally(at, |t| {
        t.closed_cards = t.closed_cards.saturating_add(1);
        t.cashed_out_minor = t.cashed_out_minor.saturating_add(paid);
        t.forfeited_bonus_minor = t.forfeited_bonus_minor.saturating_add(bonus);
    });
    state.books.liability(at.day, &taken, -1);
    // The head office pays the cash out: each store that sold paid value
    // owes it that much, as if the value had been redeemed there. The
    // forfeited bonus was never paid for and settles nothing.
    let cash: Vec<lots::Lot> = taken
        .as_slice()
        .iter()
        .map(|l| lots::Lot { bonus: 0, ..*l })
        .collect();
    state.books.settle(at.day, 0, &Lots::from_moves(&cash), 1);
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

pub(super) fn set_card_expiry(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    e: &pb::SetCardExpiry,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let (number, mut card) = correctable(state, &e.card)?;
    // Extend only: a shorter validity could cut an anonymous card below
    // the three years the law gives it, and 0 (never) is the longest.
    let extends = e.expires_ms == 0
        || (card.expires_ms != 0
            && e.expires_ms > card.expires_ms
            && e.expires_ms > ctx.time_ms
            && e.expires_ms <= MAX_EXPIRES_MS);
    if !extends {
        return refuse(
            E::InvalidArgument,
            "a card's validity can only be extended (a later expiry, or 0 = never)",
        );
    }
    card.expires_ms = e.expires_ms;
    let mut rec = base_record(state, ctx, req, RecordKind::CardExpirySet);
    rec.expires_ms = e.expires_ms;
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}
