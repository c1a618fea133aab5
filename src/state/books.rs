//! The owner's books: aggregates the state machine keeps as records apply,
//! so that reports read them instead of scanning the ledger, and replay
//! and snapshots rebuild them exactly.
//!
//! - per day (in the brand's time zone) and per store, terminal and
//!   operator: counts and sums by kind (`Tally`);
//! - per day: the settlement matrix, what each store of issue owes each
//!   redeeming store (value loaded at A and spent at B: A owes B);
//! - per day and store of issue: the change of outstanding value, so that
//!   liability can be told as of an earlier day;
//! - now: outstanding paid and bonus value per store of issue.
//!
//! Days older than `MAX_BOOK_DAYS` before the newest record's day are
//! forgotten (on the records' own time, so replay forgets the same).
//! Sums cannot overflow in practice (fewer than 9·10^9 records of at most
//! 10^9 minor units each); they saturate rather than refuse a sale.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lots::Lots;
use super::FastMap;
use crate::limits::{MAX_BOOK_DAYS, MAX_OPERATORS_PER_BRAND};

const DAY_MS: i64 = 86_400_000;
/// Days from 1970 beyond which every instant shares one day (jiff's own
/// calendar ends before it, at the year 9999).
const MAX_DAY_NUMBER: i64 = 1 << 24;

/// Counts and sums of one day at one store, terminal or operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Purchases.
    pub purchases: u32,
    /// Value they took from cards (paid + bonus).
    pub purchase_minor: i64,
    /// Of which bonus value.
    pub purchase_bonus_minor: i64,
    /// Purchases that were their card's first of the day.
    pub visits: u32,
    /// Loads.
    pub top_ups: u32,
    /// Paid value loaded (face value).
    pub top_up_paid_minor: i64,
    /// Bonus value granted.
    pub top_up_bonus_minor: i64,
    /// Refunds.
    pub refunds: u32,
    /// Value refunds returned to cards.
    pub refund_minor: i64,
    /// Reversals (including tombstones).
    pub reversals: u32,
    /// Purchase value reversals gave back.
    pub reversed_purchase_minor: i64,
    /// Load value (paid + bonus) reversals took back.
    pub reversed_top_up_minor: i64,
    /// Refund value reversals took back.
    pub reversed_refund_minor: i64,
    /// Points redeemed.
    pub redeemed_points: i64,
    /// Owner adjustments (CARD_ADJUSTED).
    pub adjustments: u32,
    /// Value adjustments added to cards.
    pub adjusted_in_minor: i64,
    /// Value adjustments took from cards.
    pub adjusted_out_minor: i64,
    /// Till top-ups the owner voided (TOP_UP_VOIDED).
    pub voided_top_ups: u32,
    /// Their value (paid + bonus) taken back from cards.
    pub voided_top_up_minor: i64,
    /// Cards closed (CARD_CLOSED).
    pub closed_cards: u32,
    /// Paid value paid out in cash by closing cards.
    pub cashed_out_minor: i64,
    /// Bonus value forfeited by closing cards.
    pub forfeited_bonus_minor: i64,
    /// The part of bills paid by points, net of refunds and reversals: a
    /// discount the brand funds, not card value (not in `purchase_minor`,
    /// the liability or the settlement).
    pub points_paid_minor: i64,
}

impl Tally {
    /// Purchases less refunds, net of reversals: the card sales.
    pub fn net_sales_minor(&self) -> i64 {
        self.purchase_minor
            .saturating_sub(self.refund_minor)
            .saturating_sub(self.reversed_purchase_minor)
            .saturating_add(self.reversed_refund_minor)
    }

    /// Adds another tally into this one.
    pub fn add(&mut self, o: &Tally) {
        self.purchases = self.purchases.saturating_add(o.purchases);
        self.purchase_minor = self.purchase_minor.saturating_add(o.purchase_minor);
        self.purchase_bonus_minor = self
            .purchase_bonus_minor
            .saturating_add(o.purchase_bonus_minor);
        self.visits = self.visits.saturating_add(o.visits);
        self.top_ups = self.top_ups.saturating_add(o.top_ups);
        self.top_up_paid_minor = self.top_up_paid_minor.saturating_add(o.top_up_paid_minor);
        self.top_up_bonus_minor = self.top_up_bonus_minor.saturating_add(o.top_up_bonus_minor);
        self.refunds = self.refunds.saturating_add(o.refunds);
        self.refund_minor = self.refund_minor.saturating_add(o.refund_minor);
        self.reversals = self.reversals.saturating_add(o.reversals);
        self.reversed_purchase_minor = self
            .reversed_purchase_minor
            .saturating_add(o.reversed_purchase_minor);
        self.reversed_top_up_minor = self
            .reversed_top_up_minor
            .saturating_add(o.reversed_top_up_minor);
        self.reversed_refund_minor = self
            .reversed_refund_minor
            .saturating_add(o.reversed_refund_minor);
        self.redeemed_points = self.redeemed_points.saturating_add(o.redeemed_points);
        self.points_paid_minor = self.points_paid_minor.saturating_add(o.points_paid_minor);
        self.add_corrections(o);
    }

    fn add_corrections(&mut self, o: &Tally) {
        self.adjustments = self.adjustments.saturating_add(o.adjustments);
        self.adjusted_in_minor = self.adjusted_in_minor.saturating_add(o.adjusted_in_minor);
        self.adjusted_out_minor = self.adjusted_out_minor.saturating_add(o.adjusted_out_minor);
        self.voided_top_ups = self.voided_top_ups.saturating_add(o.voided_top_ups);
        self.voided_top_up_minor = self
            .voided_top_up_minor
            .saturating_add(o.voided_top_up_minor);
        self.closed_cards = self.closed_cards.saturating_add(o.closed_cards);
        self.cashed_out_minor = self.cashed_out_minor.saturating_add(o.cashed_out_minor);
        self.forfeited_bonus_minor = self
            .forfeited_bonus_minor
            .saturating_add(o.forfeited_bonus_minor);
    }
}

/// Paid and bonus value, minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Paid value.
    pub paid: i64,
    /// Bonus value.
    pub bonus: i64,
}

impl Value {
    fn add(&mut self, paid: i64, bonus: i64) {
        self.paid = self.paid.saturating_add(paid);
        self.bonus = self.bonus.saturating_add(bonus);
    }
}

/// Everything the books hold for one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayBook {
    /// By store where the record was made (0 = head office).
    pub stores: BTreeMap<u32, Tally>,
    /// By terminal.
    pub terminals: FastMap<u32, Tally>,
    /// By (store, operator id): the cashier's figures at that store.
    pub operators: FastMap<(u32, u32), Tally>,
    /// (store of issue, redeeming store) -> value the first owes the
    /// second for redemptions that day (net of refunds and reversals).
    pub settlement: BTreeMap<(u32, u32), Value>,
    /// By store of issue: the change of its outstanding value that day.
    pub liability_change: BTreeMap<u32, Value>,
    /// The sequence number of the day's first record: where the activity
    /// report starts reading the day.
    pub first_seq: u64,
}

/// Where one record is tallied.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    /// The brand day.
    pub day: i32,
    /// The store the record was made at.
    pub store: u32,
    /// Its terminal (0 = the owner's console).
    pub terminal: u32,
    /// The operator's id (`Books::operator_id`).
    pub operator: u32,
}

/// The brand day an instant falls in, with the day's bounds, cached so
/// that the time zone is consulted once per day, not per record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCache {
    /// First instant of the day (Unix ms).
    pub start_ms: i64,
    /// First instant of the next day.
    pub end_ms: i64,
    /// Days since 1970-01-01 in the brand's zone.
    pub day: i32,
}

/// The brand's books.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Books {
    /// By brand day, oldest first; at most `MAX_BOOK_DAYS` kept.
    pub days: BTreeMap<i32, DayBook>,
    /// Outstanding value now, by store of issue.
    pub liability: BTreeMap<u32, Value>,
    /// Operator names by id (id = index); bounded by
    /// `MAX_OPERATORS_PER_BRAND`, later names share the last id.
    pub operators: Vec<String>,
    operator_ids: FastMap<String, u32>,
    /// The id of the empty name (a till that sends none), kept apart from
    /// `operator_ids`: comparing two empty strings costs about 250 ns where
    /// glibc's EVEX memcmp is chosen (a masked load from the dangling
    /// pointer of an empty string, page 0), a tenth of a purchase.
    empty_operator: Option<u32>,
    /// The day of the newest record.
    pub today: DayCache,
}

impl Books {
    /// The brand day of `time_ms` in `zone` (an IANA name, "" = UTC),
    /// without changing the cache (a refused request must change nothing).
    pub fn day_of(&self, zone: &str, time_ms: i64) -> i32 {
        if (self.today.start_ms..self.today.end_ms).contains(&time_ms) {
            return self.today.day;
        }
        day_bounds(zone, time_ms).day
    }

    /// Moves the cache to the day of the record `seq` just written, and
    /// forgets the days past `MAX_BOOK_DAYS`.
    pub fn advance(&mut self, zone: &str, time_ms: i64, seq: u64) {
        if (self.today.start_ms..self.today.end_ms).contains(&time_ms) {
            return;
        }
        self.today = day_bounds(zone, time_ms);
        let book = self.days.entry(self.today.day).or_default();
        if book.first_seq == 0 {
            book.first_seq = seq;
        }
        let oldest = self.today.day.saturating_sub(MAX_BOOK_DAYS);
        while self
            .days
            .first_key_value()
            .is_some_and(|(d, _)| *d < oldest)
        {
            self.days.pop_first();
        }
    }

    /// Forgets the cached day (the time zone changed).
    pub fn reset_day(&mut self) {
        self.today = DayCache::default();
    }

    /// The id of an operator name, interning it on first sight.
    pub fn operator_id(&mut self, name: &str) -> u32 {
        let known = if name.is_empty() {
            self.empty_operator
        } else {
            self.operator_ids.get(name).copied()
        };
        if let Some(id) = known {
            return id;
        }
        if self.operators.len() >= MAX_OPERATORS_PER_BRAND {
            // Past the bound, the last name kept stands for every later one.
            return u32::try_from(MAX_OPERATORS_PER_BRAND - 1).expect("bounded");
        }
        let id = u32::try_from(self.operators.len()).expect("bounded");
        self.operators.push(name.to_string());
        if name.is_empty() {
            self.empty_operator = Some(id);
        } else {
            self.operator_ids.insert(name.to_string(), id);
        }
        id
    }

    /// Adds to the tallies of the record's store, terminal and operator.
    pub fn tally(&mut self, at: Place, f: impl Fn(&mut Tally)) {
        let book = self.days.entry(at.day).or_default();
        f(book.stores.entry(at.store).or_default());
        if at.terminal != 0 {
            f(book.terminals.entry(at.terminal).or_default());
        }
        f(book.operators.entry((at.store, at.operator)).or_default());
    }

    /// Value of `moved` entered (`sign` 1) or left (-1) the cards.
    pub fn liability(&mut self, day: i32, moved: &Lots, sign: i64) {
        let book = self.days.entry(day).or_default();
        for l in moved.as_slice() {
            let (p, b) = (sign * l.paid, sign * l.bonus);
            self.liability.entry(l.store).or_default().add(p, b);
            book.liability_change.entry(l.store).or_default().add(p, b);
        }
    }

    /// Value of `moved` was redeemed at `store` (`sign` 1) or given back
    /// there (-1): each store of issue owes the redeeming store that much.
    pub fn settle(&mut self, day: i32, store: u32, moved: &Lots, sign: i64) {
        let book = self.days.entry(day).or_default();
        for l in moved.as_slice() {
            if l.store == store {
                continue;
            }
            let owed = book.settlement.entry((l.store, store)).or_default();
            owed.add(sign * l.paid, sign * l.bonus);
            if *owed == Value::default() {
                book.settlement.remove(&(l.store, store));
            }
        }
    }
}

/// The brand day containing `time_ms` in the zone named `zone`.
pub fn day_bounds(zone: &str, time_ms: i64) -> DayCache {
    let utc = || {
        // Clamped (a time beyond any calendar, seen only in fuzzing, gets
        // the last day), so that day arithmetic in reports cannot overflow.
        let day = time_ms
            .div_euclid(DAY_MS)
            .clamp(-MAX_DAY_NUMBER, MAX_DAY_NUMBER);
        DayCache {
            start_ms: day.saturating_mul(DAY_MS),
            end_ms: (day + 1).saturating_mul(DAY_MS),
            day: i32::try_from(day).expect("clamped"),
        }
    };
    let Ok(tz) = zone_named(zone) else {
        return utc();
    };
    let Ok(ts) = jiff::Timestamp::from_millisecond(time_ms) else {
        return utc();
    };
    let date = ts.to_zoned_datetime(tz.clone()).date();
    let start = date
        .to_zoned_datetime(tz.clone())
        .map(|z| z.timestamp().as_millisecond());
    let end = date
        .tomorrow()
        .and_then(|d| d.to_zoned_datetime(tz))
        .map(|z| z.timestamp().as_millisecond());
    let epoch = jiff::civil::date(1970, 1, 1);
    let day = epoch.until(date).map(|s| s.get_days());
    match (start, end, day) {
        (Ok(start_ms), Ok(end_ms), Ok(day)) => DayCache {
            start_ms,
            end_ms,
            day,
        },
        _ => utc(),
    }
}

/// The time zone named `zone` ("" = UTC) from the tz database bundled in
/// the binary (never the host's, so that every replay agrees).
pub fn zone_named(zone: &str) -> Result<jiff::tz::TimeZone, jiff::Error> {
    if zone.is_empty() {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    jiff::tz::db().get(zone)
}

/// The civil date of a brand day, as `YYYY-MM-DD`.
pub fn day_text(day: i32) -> String {
    let epoch = jiff::civil::date(1970, 1, 1);
    epoch
        .checked_add(jiff::Span::new().days(i64::from(day)))
        .map_or_else(|_| format!("day {day}"), |d| d.to_string())
}

/// The brand day of a civil date `YYYY-MM-DD`.
pub fn day_of_text(text: &str) -> Option<i32> {
    let date: jiff::civil::Date = text.parse().ok()?;
    jiff::civil::date(1970, 1, 1)
        .until(date)
        .ok()
        .map(|s| s.get_days())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06 00:00 in Shanghai (2026-12-05 16:00 UTC).
    const SH_MIDNIGHT: i64 = 1_796_486_400_000;

    #[test]
    fn days_follow_the_brand_zone() {
        // 2026-12-05 17:00 UTC is 2026-12-06 01:00 in Shanghai.
        let t = 1_796_490_000_000;
        let utc = day_bounds("", t);
        let sh = day_bounds("Asia/Shanghai", t);
        assert_eq!(day_text(utc.day), "2026-12-05");
        assert_eq!(day_text(sh.day), "2026-12-06");
        assert_eq!(sh.end_ms - sh.start_ms, DAY_MS);
        assert_eq!(sh.start_ms, SH_MIDNIGHT);
        assert_eq!(day_of_text("2026-12-06"), Some(sh.day));
        // A day with a DST change is 23 hours long.
        let ny = day_bounds("America/New_York", 1_772_985_600_000); // 2026-03-08 16:00 UTC
        assert_eq!(ny.end_ms - ny.start_ms, 23 * 3_600_000);
    }

    #[test]
    fn the_cache_answers_inside_the_day_only() {
        let mut b = Books::default();
        let t = 1_796_490_000_000;
        b.advance("Asia/Shanghai", t, 1);
        assert_eq!(b.day_of("Asia/Shanghai", t + 1), b.today.day);
        assert_eq!(b.day_of("Asia/Shanghai", b.today.end_ms), b.today.day + 1);
    }
}
