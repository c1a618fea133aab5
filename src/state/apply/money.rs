//! Money operations of a terminal: purchase, top-up, refund, points, shift close.
use super::*;
use crate::pb::Channel;

pub(super) fn purchase(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    p: &pb::Purchase,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    amount_ok(p.amount_minor)?;
    let (number, mut card) = find_active_card(state, ctx, &p.card)?;
    super::holder::require_pin(state, ctx, &card, Some(p.amount_minor))?;
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
    let taken = card.lots.take(paid_out, bonus_out);
    card.points = checked(card.points.checked_add(points))?;
    card.total_spend = checked(card.total_spend.checked_add(approved))?;
    let today = day_of(state, ctx.time_ms);
    super::super::safety::spend_today(state, &mut card, today, approved)?;
    card.last_active_day = today;
    let day = i64::from(today);
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
    let at = place(state, &rec);
    state.books.tally(at, |t| {
        t.purchases = t.purchases.saturating_add(1);
        t.purchase_minor = t.purchase_minor.saturating_add(approved);
        t.purchase_bonus_minor = t.purchase_bonus_minor.saturating_add(bonus_out);
        t.visits = t.visits.saturating_add(u32::from(visit_counted));
    });
    state.books.liability(at.day, &taken, -1);
    state.books.settle(at.day, at.store, &taken, 1);
    effect.lots = taken;
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

/// Commits a money record's card, shift totals and effect together.
pub(super) fn commit_money(
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

/// A load of value: at a till (channel `store`, counted in the shift) or by
/// the owner (head office, online, corporate: store 0, no shift).
pub(super) fn top_up(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    t: &pb::TopUp,
) -> Result<Outcome, Refusal> {
    let channel = load_channel(ctx, t.channel)?;
    amount_ok(t.amount_minor)?;
    let price = load_price(t)?;
    if !reference_ok(&t.reference) {
        return refuse(
            E::InvalidArgument,
            format!("reference must be at most {MAX_REFERENCE_BYTES} printable ASCII bytes"),
        );
    }
    let (number, mut card) = find_active_card(state, ctx, &t.card)?;
    // The bonus rewards the money the buyer put in: on a sale below face
    // value that is the price, not the face value.
    let bonus = if t.no_bonus {
        0
    } else {
        rules::bonus_for(&state.rules, price.unwrap_or(t.amount_minor))
    };
    card.paid = checked(card.paid.checked_add(t.amount_minor))?;
    card.bonus = checked(card.bonus.checked_add(bonus))?;
    balance_ok(&card)?;
    super::super::safety::check_load(state, t.amount_minor, &card)?;
    // The value's store of issue: the till's store, or the head office (0).
    let store = match ctx.principal {
        Principal::Terminal(id) => state.terminals[&id].store_id,
        _ => 0,
    };
    card.lots.add(store, t.amount_minor, bonus)?;
    card.last_active_day = day_of(state, ctx.time_ms);
    let mut rec = base_record(state, ctx, req, RecordKind::TopUp);
    rec.paid_in_minor = t.amount_minor;
    rec.bonus_in_minor = bonus;
    rec.channel = channel as i32;
    rec.reference = t.reference.clone();
    rec.price_minor = price.unwrap_or(0);
    fill_card(state, &mut rec, number, &card);
    let loaded = Lots::from_moves(&[lots::Lot {
        store,
        paid: t.amount_minor,
        bonus,
    }]);
    let Principal::Terminal(tid) = ctx.principal else {
        // An owner load has no till, no shift and no reversal (a till
        // reverses only its own transactions), so it leaves no effect.
        book_load(state, &rec, &loaded);
        state.cards.insert(number, card);
        return Ok(append(state, ctx, rec));
    };
    let shift = shift_add(state, tid, |s| {
        s.top_up_count = s.top_up_count.checked_add(1)?;
        s.top_up_minor = s.top_up_minor.checked_add(t.amount_minor)?;
        Some(())
    })?;
    let mut effect = effect_of(&rec, number, shift_number(state, tid));
    book_load(state, &rec, &loaded);
    effect.lots = loaded;
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

/// A load in the books: its tallies and the liability of its store.
fn book_load(state: &mut BrandState, rec: &Record, loaded: &Lots) {
    let at = place(state, rec);
    let (paid, bonus) = (rec.paid_in_minor, rec.bonus_in_minor);
    state.books.tally(at, |t| {
        t.top_ups = t.top_ups.saturating_add(1);
        t.top_up_paid_minor = t.top_up_paid_minor.saturating_add(paid);
        t.top_up_bonus_minor = t.top_up_bonus_minor.saturating_add(bonus);
    });
    state.books.liability(at.day, loaded, 1);
}

/// The channel of a load, which also says who may sign it: `store` is a
/// till's (the owner's console has no till), the others the owner's.
fn load_channel(ctx: &Context, channel: u32) -> Result<Channel, Refusal> {
    let Some(channel) = i32::try_from(channel)
        .ok()
        .and_then(|c| Channel::try_from(c).ok())
    else {
        return refuse(E::InvalidArgument, "unknown top-up channel");
    };
    match (channel, ctx.principal) {
        (Channel::Store, Principal::Terminal(_)) => Ok(channel),
        (Channel::Store, _) => refuse(
            E::WrongRole,
            "a store top-up must come from a terminal; the owner names a channel",
        ),
        (_, Principal::Owner) => Ok(channel),
        _ => refuse(
            E::WrongRole,
            "only the owner loads through head office, online or corporate",
        ),
    }
}

/// The cash received for a sale below face value, `None` at face value.
fn load_price(t: &pb::TopUp) -> Result<Option<i64>, Refusal> {
    match t.price_minor {
        0 => Ok(None),
        p if p == t.amount_minor => Ok(None),
        p if (1..t.amount_minor).contains(&p) => Ok(Some(p)),
        _ => refuse(
            E::AmountOutOfRange,
            "price must be 1..=amount minor units (0 = face value)",
        ),
    }
}

/// An order or invoice number: short printable ASCII, so that it prints
/// on a receipt and in a CSV as it was typed.
fn reference_ok(r: &str) -> bool {
    r.len() <= MAX_REFERENCE_BYTES && r.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub(super) fn refund(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::Refund,
) -> Result<Outcome, Refusal> {
    let tid = require_terminal(ctx)?;
    amount_ok(r.amount_minor)?;
    let orig = refundable_purchase(state, ctx, tid, r.original_seq)?;
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
    let points_out = points_taken_back(orig, r.amount_minor, card.points);
    card.paid = checked(card.paid.checked_add(paid_in))?;
    card.bonus = checked(card.bonus.checked_add(bonus_in))?;
    card.points -= points_out;
    card.total_spend = (card.total_spend - r.amount_minor).max(0);
    let returned = refund_share(
        &orig.lots,
        (orig.refunded_paid, orig.refunded_bonus),
        paid_in,
        bonus_in,
    );
    card.lots.add_all(&returned)?;
    card.last_active_day = day_of(state, ctx.time_ms);
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
    let mut effect = effect_of(&rec, number, shift_number(state, tid));
    let at = place(state, &rec);
    let amount = r.amount_minor;
    state.books.tally(at, |t| {
        t.refunds = t.refunds.saturating_add(1);
        t.refund_minor = t.refund_minor.saturating_add(amount);
    });
    state.books.liability(at.day, &returned, 1);
    state.books.settle(at.day, at.store, &returned, -1);
    effect.lots = returned;
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

/// The purchase a refund names, if it may be refunded here: kept, within
/// the window, not reversed, and made at this terminal's store.
fn refundable_purchase<'s>(
    state: &'s BrandState,
    ctx: &Context,
    tid: u32,
    seq: u64,
) -> Result<&'s Effect, Refusal> {
    let Some(orig) = state.effects.get(seq) else {
        return missing_original(
            state,
            seq,
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
    Ok(orig)
}

/// Points earned are taken back in proportion to the value refunded,
/// rounded down, and never more than the card still holds.
fn points_taken_back(orig: &Effect, amount: i64, card_points: i64) -> i64 {
    let approved = orig.paid_out + orig.bonus_out;
    let refunded = orig.refunded_paid + orig.refunded_bonus;
    let should_have_removed = i64::try_from(
        i128::from(orig.points_in) * i128::from(refunded + amount) / i128::from(approved),
    )
    .expect("bounded by points_in");
    // Never negative: after a refund is reversed, the points still counted
    // as taken back can exceed the proportional share of what remains
    // refunded (rounding was done refund by refund). Found by fuzzing.
    (should_have_removed - orig.refunded_points).clamp(0, card_points)
}

pub(super) fn redeem_points(
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
    let (number, mut card) = find_active_card(state, ctx, &r.card)?;
    super::holder::require_pin(state, ctx, &card, None)?;
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
    let at = place(state, &rec);
    let points = r.points;
    state.books.tally(at, |t| {
        t.redeemed_points = t.redeemed_points.saturating_add(points)
    });
    let effect = effect_of(&rec, number, shift_number(state, tid));
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

pub(super) fn close_shift(
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
