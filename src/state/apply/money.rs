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
    if !text_ok(&p.category) {
        return refuse(
            E::InvalidArgument,
            "category too long or has control characters",
        );
    }
    let (number, mut card) = find_active_card(state, ctx, &p.card)?;
    super::holder::require_pin(state, ctx, &card, Some(p.amount_minor))?;
    let today = day_of(state, ctx.time_ms);
    let expired = points::expire(&mut card.loyalty, &mut card.points, ctx.time_ms);
    let pay = points_payment(&state.rules, p, card.points)?;
    let due = p.amount_minor - pay.value;
    let approved = approve(&card, due, p.allow_partial)?;
    // Paid value is spent first, then bonus; refunds return in reverse order.
    let paid_out = approved.min(card.paid);
    let bonus_out = approved - paid_out;
    let keep = rules::day_history(&state.rules);
    let (tier_now, tier_before) = tiers_before(&state.rules, &card, today, keep);
    let store = state.terminals[&tid].store_id;
    let points = earn(state, ctx, p, tier_now, approved, store)?;
    let spent_lots = match pay.points {
        0 => Vec::new(),
        n => points::spend(&mut card.loyalty, &mut card.points, n),
    };
    card.paid -= paid_out;
    card.bonus -= bonus_out;
    let taken = card.lots.take(paid_out, bonus_out);
    card.points = checked(card.points.checked_add(points))?;
    award(&state.rules, &mut card, points, ctx.time_ms)?;
    card.total_spend = checked(card.total_spend.checked_add(approved))?;
    super::super::safety::spend_today(state, &mut card, today, approved)?;
    if keep > 0 {
        points::add_day_spend(&mut card.loyalty, today, today, keep, approved);
    }
    card.last_active_day = today;
    let visit_counted = count_visit(&mut card, today)?;
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
    rec.points_out = pay.points;
    rec.points_value_minor = pay.value;
    rec.points_expired = expired;
    rec.requested_minor = p.amount_minor;
    rec.remaining_minor = due - approved;
    fill_card(state, &mut rec, number, &card, today);
    name_tier_change(&state.rules, &mut rec, &card, today, tier_before);
    let mut effect = effect_of(&rec, number, shift_number(state, tid));
    effect.visit_counted = visit_counted;
    if !spent_lots.is_empty() {
        effect.points_mut().lots = spent_lots;
    }
    book_purchase(state, &rec, visit_counted, &taken);
    effect.lots = taken;
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

/// The value the card pays of `due`: all of it, or with `partial` what the
/// card holds (`INSUFFICIENT_FUNDS` otherwise).
fn approve(card: &Card, due: i64, partial: bool) -> Result<i64, Refusal> {
    let balance = card.balance();
    if balance >= due {
        Ok(due)
    } else if partial && balance > 0 {
        Ok(balance)
    } else {
        refuse(E::InsufficientFunds, "card balance is less than the amount")
    }
}

/// The card's tier now (before the purchase) and the tier of its last
/// record: a window tier it has since lost falls at this record, which
/// names the fall. Without day rules (`keep` 0) the two are the same.
fn tiers_before(
    rules: &pb::Rules,
    card: &Card,
    today: i32,
    keep: u32,
) -> (Option<usize>, Option<usize>) {
    let now = rules::tier_index(rules, card, today);
    match keep {
        0 => (now, now),
        _ => (now, rules::tier_index(rules, card, card.last_active_day)),
    }
}

/// Names the tier the purchase moved the card from, under rules that use
/// the loyalty keys (older ledgers keep their bytes).
fn name_tier_change(
    rules: &pb::Rules,
    rec: &mut Record,
    card: &Card,
    today: i32,
    before: Option<usize>,
) {
    let after = rules::tier_index(rules, card, today);
    if after != before && rules::names_tier_changes(rules) {
        rec.tier_before = rules::tier_name(rules, before).to_string();
        rec.tier_fell = after < before;
    }
}

/// A purchase in the books: card value only (points paid are a discount
/// the brand funds, outside the liability and the settlement).
fn book_purchase(state: &mut BrandState, rec: &Record, visit_counted: bool, taken: &Lots) {
    let at = place(state, rec);
    let approved = rec.paid_out_minor + rec.bonus_out_minor;
    let (bonus_out, by_points) = (rec.bonus_out_minor, rec.points_value_minor);
    state.books.tally(at, |t| {
        t.points_paid_minor = t.points_paid_minor.saturating_add(by_points);
        t.purchases = t.purchases.saturating_add(1);
        t.purchase_minor = t.purchase_minor.saturating_add(approved);
        t.purchase_bonus_minor = t.purchase_bonus_minor.saturating_add(bonus_out);
        t.visits = t.visits.saturating_add(u32::from(visit_counted));
    });
    state.books.liability(at.day, taken, -1);
    state.books.settle(at.day, at.store, taken, 1);
}

/// Points spent as payment and the part of the bill they pay.
struct PointsPayment {
    points: i64,
    value: i64,
}

/// Checks `--points`: the brand takes points as payment, a positive
/// multiple of its unit, held by the card, worth no more than the bill.
fn points_payment(
    rules: &pb::Rules,
    p: &pb::Purchase,
    card_points: i64,
) -> Result<PointsPayment, Refusal> {
    if p.points == 0 {
        return Ok(PointsPayment {
            points: 0,
            value: 0,
        });
    }
    let Some(r) = &rules.points_redemption else {
        return refuse(
            E::InvalidArgument,
            "points: this brand's rules do not let points pay bills",
        );
    };
    if !(1..=MAX_POINTS).contains(&p.points) || p.points % r.points != 0 {
        return refuse(
            E::AmountOutOfRange,
            format!("points must be a positive multiple of {}", r.points),
        );
    }
    if p.points > card_points {
        return refuse(E::InsufficientPoints, "the card has fewer points");
    }
    let value = i128::from(r.value_minor) * i128::from(p.points / r.points);
    if value > i128::from(p.amount_minor) {
        return refuse(
            E::AmountOutOfRange,
            "the points are worth more than the bill",
        );
    }
    let value = i64::try_from(value).expect("at most the bill");
    Ok(PointsPayment {
        points: p.points,
        value,
    })
}

/// Points a purchase earns on the value it took from the card, at the
/// card's tier before it (`tier`, an index in the rules), times every
/// campaign covering it.
fn earn(
    state: &BrandState,
    ctx: &Context,
    p: &pb::Purchase,
    tier: Option<usize>,
    approved: i64,
    store: u32,
) -> Result<i64, Refusal> {
    let multiplier = tier.map_or(1_000, |i| state.rules.tiers[i].multiplier_milli);
    let sale = rules::Sale {
        store,
        time_ms: ctx.time_ms,
        category: &p.category,
    };
    rules::earned(&state.rules, state.exponent, approved, multiplier, &sale)
}

/// Puts `points` just earned into a lot when the rules make points expire.
pub(super) fn award(
    rules: &pb::Rules,
    card: &mut Card,
    points: i64,
    time_ms: i64,
) -> Result<(), Refusal> {
    if rules.points_expire_after_days == 0 || points == 0 {
        return Ok(());
    }
    let life = i64::from(rules.points_expire_after_days) * points::DAY_MS;
    let expires = checked(time_ms.checked_add(life))?;
    points::award(&mut card.loyalty, points, expires);
    Ok(())
}

/// Counts the card's visit of `day` if it is its first purchase that day.
fn count_visit(card: &mut Card, today: i32) -> Result<bool, Refusal> {
    let day = i64::from(today);
    if day == card.last_visit_day {
        return Ok(false);
    }
    card.visits = card
        .visits
        .checked_add(1)
        .ok_or_else(|| Refusal::new(E::Overflow, "visits overflow"))?;
    card.last_visit_day = day;
    Ok(true)
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
    let expired = points::expire(&mut card.loyalty, &mut card.points, ctx.time_ms);
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
    rec.points_expired = expired;
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
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
    let left = orig.covered() - orig.refunded();
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
    let today = day_of(state, ctx.time_ms);
    let share = refund_share_of(orig, r.amount_minor, state.rules.exact_refunds);
    // Bonus was spent last, so it is returned first.
    let bonus_in = share.value.min(orig.bonus_out - orig.refunded_bonus);
    let paid_in = share.value - bonus_in;
    let moved = refund_points(&mut card, orig, &share, ctx.time_ms, strict_points(state))?;
    card.paid = checked(card.paid.checked_add(paid_in))?;
    card.bonus = checked(card.bonus.checked_add(bonus_in))?;
    card.total_spend = (card.total_spend - share.value).max(0);
    let keep = rules::day_history(&state.rules);
    if keep > 0 {
        let day = day_of(state, orig.time_ms);
        points::add_day_spend(&mut card.loyalty, day, today, keep, -share.value);
    }
    let returned = if state.rules.exact_refunds {
        let back = orig.refunded_lots.as_deref().unwrap_or(&Lots::Empty);
        refund_share_exact(&orig.lots, back, paid_in, bonus_in)
    } else {
        // Rules from before: as older builds returned it, so their chains
        // (and their books) replay unchanged.
        refund_share(
            &orig.lots,
            (orig.refunded_paid, orig.refunded_bonus),
            paid_in,
            bonus_in,
        )
    };
    // Never refused for the lot bound: a refund gives back value.
    card.lots.join_all(&returned);
    card.last_active_day = today;
    balance_ok(&card)?;
    let shift = shift_add(state, tid, |s| {
        s.refund_count = s.refund_count.checked_add(1)?;
        s.refund_minor = s.refund_minor.checked_add(share.value)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::Refund);
    rec.paid_in_minor = paid_in;
    rec.bonus_in_minor = bonus_in;
    rec.points_out = moved.taken_back;
    rec.points_in = points::total(&moved.given);
    rec.points_value_minor = share.points_value;
    rec.points_expired = moved.expired;
    rec.original_seq = r.original_seq;
    rec.remaining_minor = left - r.amount_minor;
    fill_card(state, &mut rec, number, &card, today);
    let mut effect = effect_of(&rec, number, shift_number(state, tid));
    if !moved.given.is_empty() {
        effect.points_mut().lots = moved.given;
    }
    book_refund(state, &rec, &returned);
    effect.lots = returned;
    let orig = state
        .effects
        .get_mut(r.original_seq)
        .expect("checked above");
    // Kept under any rules (it moves nothing), so that rules turning
    // `exact_refunds` on find every refund counted.
    if let Lots::Many(_) = orig.lots {
        let back = orig.refunded_lots.get_or_insert_with(Box::default);
        back.join_all(&effect.lots);
    }
    orig.refunded_paid += paid_in;
    orig.refunded_bonus += bonus_in;
    orig.refunded_points += moved.taken_back;
    if orig.points.is_some() {
        let p = orig.points_mut();
        p.refunded_value += share.points_value;
        p.returned += rec.points_in;
        p.lots = moved.still_spent;
    }
    commit_money(state, tid, number, card, shift, effect, &rec);
    Ok(append(state, ctx, rec))
}

/// The points a refund moves on the card.
struct RefundPoints {
    /// Earned points taken back.
    taken_back: i64,
    /// Spent points given back, by lot.
    given: Vec<points::PointLot>,
    /// The purchase's spent points not given back yet.
    still_spent: Vec<points::PointLot>,
    /// Points that expired at the refund's record.
    expired: i64,
}

/// True if a refund must take back in full the points its part of the
/// purchase earned: where points pay bills they are money, and leaving
/// spent ones with the customer would give value back twice (the reversal
/// of a refund refuses the same case). Under `exact_refunds` only: rules
/// written before it took back as far as the card held, and their chains
/// replay so.
fn strict_points(state: &BrandState) -> bool {
    state.rules.exact_refunds && state.rules.points_redemption.is_some()
}

/// Expires what is due, takes back earned points in proportion, and gives
/// back the share of spent points with their expiry (expiring at once if
/// that has passed). With `strict`, earned points the card no longer
/// holds come out of the points given back, and beyond those the refund
/// is refused (`INSUFFICIENT_POINTS`).
fn refund_points(
    card: &mut Card,
    orig: &Effect,
    share: &RefundShare,
    now_ms: i64,
    strict: bool,
) -> Result<RefundPoints, Refusal> {
    let mut expired = points::expire(&mut card.loyalty, &mut card.points, now_ms);
    let owed = points_owed_back(orig, share.value);
    let first = owed.min(card.points);
    points::take_back(&mut card.loyalty, &mut card.points, first);
    let mut still_spent = orig.points().lots.clone();
    let given = points::give_back(
        &mut card.loyalty,
        &mut card.points,
        &mut still_spent,
        share.points,
    );
    let rest = if strict { owed - first } else { 0 };
    if strict {
        // Points given back that expired already are worth nothing: they
        // cannot stand in for the earned points the card spent.
        expired += points::expire(&mut card.loyalty, &mut card.points, now_ms);
    }
    if rest > card.points {
        return refuse(
            E::InsufficientPoints,
            "the points this part of the purchase earned were spent since; it cannot be refunded",
        );
    }
    points::take_back(&mut card.loyalty, &mut card.points, rest);
    expired += points::expire(&mut card.loyalty, &mut card.points, now_ms);
    Ok(RefundPoints {
        taken_back: first + rest,
        given,
        still_spent,
        expired,
    })
}

/// A refund in the books: the card value returned, back to its lots.
fn book_refund(state: &mut BrandState, rec: &Record, returned: &Lots) {
    let at = place(state, rec);
    let amount = rec.paid_in_minor + rec.bonus_in_minor;
    let by_points = rec.points_value_minor;
    state.books.tally(at, |t| {
        t.points_paid_minor = t.points_paid_minor.saturating_sub(by_points);
        t.refunds = t.refunds.saturating_add(1);
        t.refund_minor = t.refund_minor.saturating_add(amount);
    });
    state.books.liability(at.day, returned, 1);
    state.books.settle(at.day, at.store, returned, -1);
}

/// How a refund of part of a bill splits between the card's value and
/// the points that paid part of it.
struct RefundShare {
    /// Value returned to the card.
    value: i64,
    /// The part of the refund paid back as points.
    points_value: i64,
    /// Spent points given back.
    points: i64,
}

/// Points and their value are given back in proportion to the bill
/// refunded so far (rounded down, so the card's value takes the rest);
/// at the last refund everything taken has come back, never more.
///
/// With `exact` (the rules' `exact_refunds`) each form gives back only
/// what it has left: once a refund is reversed, what stays counted as
/// given back (rounded refund by refund) can exceed the rounded share of
/// what stays refunded, and the points' value would go negative, the card
/// then getting more than the refund. Rules from before keep the
/// unbounded share, so their chains replay unchanged.
fn refund_share_of(orig: &Effect, amount: i64, exact: bool) -> RefundShare {
    let p = orig.points();
    if p.value == 0 {
        return RefundShare {
            value: amount,
            points_value: 0,
            points: 0,
        };
    }
    let (covered, after) = (orig.covered(), orig.refunded() + amount);
    let share = |whole: i64| {
        let s = i128::from(whole) * i128::from(after) / i128::from(covered);
        i64::try_from(s).expect("at most whole")
    };
    let mut points_value = share(p.value) - p.refunded_value;
    let points = if exact {
        let card_left = orig.paid_out + orig.bonus_out - orig.refunded_paid - orig.refunded_bonus;
        let points_left = p.value - p.refunded_value;
        // `amount` is at most both left together (checked by the caller).
        points_value = points_value
            .min(amount.min(points_left))
            .max(amount - card_left)
            .max(0);
        points_for_value(orig, points_value)
    } else {
        share(orig.points_out) - p.returned
    };
    RefundShare {
        value: amount - points_value,
        points_value,
        points,
    }
}

/// Under `exact_refunds`: the points given back with `points_value` of
/// their value, so that what has come back in points never stands for
/// more than what has come back in value (rounded down; the last of the
/// value brings the last of the points). Counted from the totals given
/// back so far, not refund by refund, so reversed refunds cannot make
/// the two drift apart.
fn points_for_value(orig: &Effect, points_value: i64) -> i64 {
    let p = orig.points();
    let points_left = orig.points_out - p.returned;
    if points_value >= p.value - p.refunded_value {
        return points_left.max(0);
    }
    let value_back = i128::from(p.refunded_value + points_value);
    let due = value_back * i128::from(orig.points_out) / i128::from(p.value);
    let due = i64::try_from(due).expect("at most the points paid");
    (due - p.returned).clamp(0, points_left.max(0))
}

/// The purchase a refund names, if it may be refunded here: kept, within
/// the window, not reversed, and made at this terminal's store.
fn refundable_purchase<'s>(
    state: &'s BrandState,
    ctx: &Context,
    tid: u32,
    seq: u64,
) -> Result<&'s Effect, Refusal> {
    let orig = kept_original(state, ctx, seq, "no purchase with that sequence number")?;
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
/// rounded down (the caller decides what happens when the card holds
/// fewer).
fn points_owed_back(orig: &Effect, amount: i64) -> i64 {
    let approved = orig.paid_out + orig.bonus_out;
    if approved == 0 {
        // Paid by points alone: it earned nothing.
        return 0;
    }
    let refunded = orig.refunded_paid + orig.refunded_bonus;
    let should_have_removed = i64::try_from(
        i128::from(orig.points_in) * i128::from(refunded + amount) / i128::from(approved),
    )
    .expect("bounded by points_in");
    // Never negative: after a refund is reversed, the points still counted
    // as taken back can exceed the proportional share of what remains
    // refunded (rounding was done refund by refund). Found by fuzzing.
    (should_have_removed - orig.refunded_points).max(0)
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
    let expired = points::expire(&mut card.loyalty, &mut card.points, ctx.time_ms);
    if card.points < r.points {
        return refuse(E::InsufficientPoints, "the card has fewer points");
    }
    let spent_lots = points::spend(&mut card.loyalty, &mut card.points, r.points);
    let shift = shift_add(state, tid, |s| {
        s.redeem_count = s.redeem_count.checked_add(1)?;
        s.redeem_points = s.redeem_points.checked_add(r.points)?;
        Some(())
    })?;
    let mut rec = base_record(state, ctx, req, RecordKind::PointsRedeemed);
    rec.points_out = r.points;
    rec.points_expired = expired;
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    let at = place(state, &rec);
    let points = r.points;
    state.books.tally(at, |t| {
        t.redeemed_points = t.redeemed_points.saturating_add(points)
    });
    let mut effect = effect_of(&rec, number, shift_number(state, tid));
    effect.points_mut().lots = spent_lots;
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
