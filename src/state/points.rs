//! A card's loyalty history: points lots (points by expiry) and spend per
//! brand day (for window and single-day tiers).
//!
//! Only points awarded while `points_expire_after_days` is set go into a
//! lot; the rest of `Card::points` never expires ("free" points). Spending
//! (as payment or for a reward) takes the soonest-expiring lot first, free
//! points last: under one expiry rule that is the oldest award first, and
//! after a change of the rule no point expires earlier than it would have.
//! Taking earned points back (a refund, a reversal) takes the latest-expiring
//! lot first, then free points: the award being undone went to the newest lot.
//!
//! Expiry happens only at a record of the card (`expire`, on the record's
//! time) and in reports as of a time (`expiring`), never on a clock of its
//! own: replay sees exactly what the live daemon saw. A lot expires at its
//! `expires_ms` exactly: at `expires_ms - 1` it is still there.
//!
//! Bound: `MAX_POINT_LOTS_PER_CARD`. An award that would make one lot more
//! joins the latest-expiring lot, which keeps the later of the two expiries.
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_POINT_LOTS_PER_CARD, MAX_TIER_WINDOW_DAYS};

/// Milliseconds in one expiry day (expiry counts whole 24-hour days from
/// the award, not brand days).
pub const DAY_MS: i64 = 86_400_000;

/// Days ahead the points-expiring report may look, at most.
pub const MAX_EXPIRING_REPORT_DAYS: u32 = crate::limits::MAX_POINTS_EXPIRE_DAYS;

/// Points that expire together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointLot {
    /// Unix ms at which they expire; `i64::MAX` in a taken list = free points.
    pub expires_ms: i64,
    /// How many.
    pub points: i64,
}

/// The net spend of one brand day (purchases minus refunds of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySpend {
    /// The brand day.
    pub day: i32,
    /// Net spend from the card's value that day, minor units.
    pub spend: i64,
}

/// What a card keeps beyond its balances, only once a rule needs it (boxed:
/// a card of a brand without expiry or day tiers carries one null pointer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardLoyalty {
    /// Expiring points, soonest expiry first; their sum is at most
    /// `Card::points`.
    pub lots: Vec<PointLot>,
    /// Spend per day with a purchase, oldest first, the newest
    /// `MAX_TIER_WINDOW_DAYS` days at most.
    pub days: Vec<DaySpend>,
    /// The highest net spend of a day that left `days`.
    pub best_forgotten_day: i64,
}

impl CardLoyalty {
    /// Points in lots.
    pub fn in_lots(&self) -> i64 {
        self.lots.iter().map(|l| l.points).sum()
    }

    fn is_empty(&self) -> bool {
        self.lots.is_empty() && self.days.is_empty() && self.best_forgotten_day == 0
    }
}

/// A card's optional loyalty history.
pub type Loyalty = Option<Box<CardLoyalty>>;

fn history(l: &mut Loyalty) -> &mut CardLoyalty {
    l.get_or_insert_with(Box::default)
}

fn tidy(l: &mut Loyalty) {
    if l.as_ref().is_some_and(|h| h.is_empty()) {
        *l = None;
    }
}

/// Removes the lots expired at `now_ms` from the card's points; returns
/// how many points expired.
pub fn expire(l: &mut Loyalty, points: &mut i64, now_ms: i64) -> i64 {
    let Some(h) = l.as_mut() else { return 0 };
    let gone = h.lots.iter().take_while(|x| x.expires_ms <= now_ms).count();
    if gone == 0 {
        return 0;
    }
    let expired: i64 = h.lots.drain(..gone).map(|x| x.points).sum();
    *points -= expired;
    tidy(l);
    expired
}

/// Adds `points` expiring at `expires_ms` (awarded at a record of the card).
pub fn award(l: &mut Loyalty, points: i64, expires_ms: i64) {
    if points == 0 {
        return;
    }
    let lots = &mut history(l).lots;
    let at = lots.partition_point(|x| x.expires_ms <= expires_ms);
    if at > 0 && lots[at - 1].expires_ms == expires_ms {
        lots[at - 1].points += points;
    } else if lots.len() >= MAX_POINT_LOTS_PER_CARD && at == lots.len() {
        // Full: join the latest lot, which takes the later expiry.
        let last = lots.last_mut().expect("full");
        last.points += points;
        last.expires_ms = expires_ms;
    } else if lots.len() >= MAX_POINT_LOTS_PER_CARD {
        // Full, and earlier than the latest: join the next later lot (its
        // expiry is later, so these points live longer, never shorter).
        lots[at].points += points;
    } else {
        lots.insert(at, PointLot { expires_ms, points });
    }
}

/// Takes `n` points (at most the card's) for spending: soonest expiry
/// first, free points last. Returns what was taken, free points as a lot
/// expiring at `i64::MAX`.
pub fn spend(l: &mut Loyalty, points: &mut i64, n: i64) -> Vec<PointLot> {
    debug_assert!(n <= *points);
    let mut taken = Vec::new();
    let mut left = n;
    if let Some(h) = l.as_mut() {
        while left > 0 && !h.lots.is_empty() {
            let lot = &mut h.lots[0];
            let t = left.min(lot.points);
            taken.push(PointLot {
                expires_ms: lot.expires_ms,
                points: t,
            });
            lot.points -= t;
            left -= t;
            if lot.points == 0 {
                h.lots.remove(0);
            }
        }
    }
    if left > 0 {
        taken.push(PointLot {
            expires_ms: i64::MAX,
            points: left,
        });
    }
    *points -= n;
    tidy(l);
    taken
}

/// Takes `n` earned points back (at most the card's): the latest-expiring
/// lot first, then free points.
pub fn take_back(l: &mut Loyalty, points: &mut i64, n: i64) {
    debug_assert!(n <= *points);
    let mut left = n;
    if let Some(h) = l.as_mut() {
        while left > 0 {
            let Some(lot) = h.lots.last_mut() else { break };
            let t = left.min(lot.points);
            lot.points -= t;
            left -= t;
            if lot.points == 0 {
                h.lots.pop();
            }
        }
    }
    *points -= n;
    tidy(l);
}

/// Gives back up to `n` spent points from `taken` (what a record took and
/// has not given back yet), the latest expiry first, each to a lot with its
/// own expiry (or free). Returns what was given back, latest expiry first.
pub fn give_back(
    l: &mut Loyalty,
    points: &mut i64,
    taken: &mut Vec<PointLot>,
    n: i64,
) -> Vec<PointLot> {
    let mut given = Vec::new();
    let mut left = n;
    while left > 0 {
        let Some(lot) = taken.last_mut() else { break };
        let t = left.min(lot.points);
        if lot.expires_ms != i64::MAX {
            award(l, t, lot.expires_ms);
        }
        given.push(PointLot {
            expires_ms: lot.expires_ms,
            points: t,
        });
        *points += t;
        lot.points -= t;
        left -= t;
        if lot.points == 0 {
            taken.pop();
        }
    }
    given
}

/// Puts lots given back (as `give_back` returned them) back into `taken`,
/// when what gave them back is itself undone.
pub fn untake(taken: &mut Vec<PointLot>, given: &[PointLot]) {
    for g in given.iter().rev() {
        match taken.last_mut() {
            Some(last) if last.expires_ms == g.expires_ms => last.points += g.points,
            _ => taken.push(*g),
        }
    }
}

/// Points in a list of lots.
pub fn total(lots: &[PointLot]) -> i64 {
    lots.iter().map(|x| x.points).sum()
}

/// Points of the card expiring after `from_ms` and at or before `to_ms`
/// (a lot whose instant is `from_ms` has already expired then).
pub fn expiring(l: &Loyalty, from_ms: i64, to_ms: i64) -> i64 {
    l.as_ref().map_or(0, |h| {
        h.lots
            .iter()
            .filter(|x| x.expires_ms > from_ms && x.expires_ms <= to_ms)
            .map(|x| x.points)
            .sum()
    })
}

/// Adds `delta` (negative for a refund) to the net spend of `day`, keeping
/// `keep_days` days (ending at `today`); a day no longer kept leaves its
/// spend in `best_forgotten_day`. A day already forgotten is not changed.
pub fn add_day_spend(l: &mut Loyalty, day: i32, today: i32, keep_days: u32, delta: i64) {
    let keep = i32::try_from(keep_days.clamp(1, MAX_TIER_WINDOW_DAYS)).expect("small");
    let h = history(l);
    let first_kept = today - keep + 1;
    let gone = h.days.iter().take_while(|d| d.day < first_kept).count();
    for d in h.days.drain(..gone) {
        h.best_forgotten_day = h.best_forgotten_day.max(d.spend);
    }
    if day >= first_kept {
        match h.days.binary_search_by_key(&day, |d| d.day) {
            Ok(i) => h.days[i].spend = (h.days[i].spend + delta).max(0),
            Err(i) if delta > 0 => h.days.insert(i, DaySpend { day, spend: delta }),
            Err(_) => {}
        }
    }
    tidy(l);
}

/// Spend, visit days and best day in the `window` days ending at `today`
/// (0 = every day kept, and the best forgotten day).
pub fn window(l: &Loyalty, today: i32, window_days: u32) -> (i64, u32, i64) {
    let Some(h) = l.as_ref() else {
        return (0, 0, 0);
    };
    let from = match window_days {
        0 => i32::MIN,
        w => today - i32::try_from(w).unwrap_or(i32::MAX) + 1,
    };
    let best = if window_days == 0 {
        h.best_forgotten_day
    } else {
        0
    };
    h.days
        .iter()
        .filter(|d| d.day >= from && d.day <= today)
        .fold((0, 0, best), |(s, v, b), d| {
            (s + d.spend, v + 1, b.max(d.spend))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lots(l: &Loyalty) -> Vec<(i64, i64)> {
        l.as_ref().map_or(vec![], |h| {
            h.lots.iter().map(|x| (x.expires_ms, x.points)).collect()
        })
    }

    #[test]
    fn a_lot_expires_at_its_instant_not_a_millisecond_before() {
        let (mut l, mut p) = (None, 0);
        award(&mut l, 40, 1_000);
        p += 40;
        p += 5; // free points (awarded without expiry)
        assert_eq!(expire(&mut l, &mut p, 999), 0);
        assert_eq!(p, 45);
        assert_eq!(expire(&mut l, &mut p, 1_000), 40);
        assert_eq!((p, lots(&l)), (5, vec![]));
        assert!(l.is_none(), "an empty history is dropped");
    }

    #[test]
    fn spending_takes_the_oldest_lot_first_and_free_points_last() {
        let (mut l, mut p) = (None, 100);
        award(&mut l, 30, 2_000);
        award(&mut l, 50, 1_000);
        // 20 free points.
        let taken = spend(&mut l, &mut p, 60);
        assert_eq!(
            taken,
            vec![
                PointLot {
                    expires_ms: 1_000,
                    points: 50
                },
                PointLot {
                    expires_ms: 2_000,
                    points: 10
                }
            ]
        );
        assert_eq!((p, lots(&l)), (40, vec![(2_000, 20)]));
        let taken = spend(&mut l, &mut p, 30);
        assert_eq!(taken.last().unwrap().expires_ms, i64::MAX);
        assert_eq!((p, lots(&l)), (10, vec![]));
    }

    #[test]
    fn given_back_points_keep_their_expiry_and_take_back_is_newest_first() {
        let (mut l, mut p) = (None, 80);
        award(&mut l, 30, 1_000);
        award(&mut l, 50, 2_000);
        let mut taken = spend(&mut l, &mut p, 40);
        let before = taken.clone();
        let given = give_back(&mut l, &mut p, &mut taken, 15);
        assert_eq!(total(&given), 15);
        let mut again = taken.clone();
        untake(&mut again, &given);
        assert_eq!(again, before);
        assert_eq!((p, lots(&l)), (55, vec![(1_000, 5), (2_000, 50)]));
        take_back(&mut l, &mut p, 52);
        assert_eq!((p, lots(&l)), (3, vec![(1_000, 3)]));
    }

    #[test]
    fn a_full_card_joins_the_latest_lot_with_the_later_expiry() {
        let mut l = None;
        for i in 0..MAX_POINT_LOTS_PER_CARD as i64 {
            award(&mut l, 1, 1_000 + i);
        }
        award(&mut l, 7, 5_000);
        let all = lots(&l);
        assert_eq!(all.len(), MAX_POINT_LOTS_PER_CARD);
        assert_eq!(*all.last().unwrap(), (5_000, 8));
        // Never earlier than promised: an early award joins a later lot.
        award(&mut l, 2, 1_000);
        assert_eq!(lots(&l)[0], (1_000, 3));
        award(&mut l, 2, 999);
        assert_eq!(lots(&l)[0], (1_000, 5));
    }

    #[test]
    fn day_spend_keeps_the_window_and_the_best_forgotten_day() {
        let mut l = None;
        add_day_spend(&mut l, 10, 10, 3, 500);
        add_day_spend(&mut l, 11, 11, 3, 100);
        add_day_spend(&mut l, 10, 11, 3, -200);
        assert_eq!(window(&l, 11, 3), (400, 2, 300));
        add_day_spend(&mut l, 14, 14, 3, 50);
        // Days 10 and 11 left the window: their best stays for good tiers.
        assert_eq!(window(&l, 14, 3), (50, 1, 50));
        assert_eq!(window(&l, 14, 0), (50, 1, 300));
    }
}
