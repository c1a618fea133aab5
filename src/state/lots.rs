//! Settlement lots: every unit of stored value on a card knows the store
//! that sold it (store 0 is the brand's head office, for owner loads).
//!
//! Spend order (the README's domain rules): paid value before bonus value,
//! and within each, the oldest lot first. A load at a store that already
//! holds a lot on the card joins that lot (so it is spent at that lot's
//! place in the order); a lot that reaches zero is dropped. A card holds at
//! most `MAX_LOTS_PER_CARD` lots: a load from yet another store is refused
//! (`LIMIT_EXCEEDED`) until one of them is spent. Value given back (a
//! refund, a purchase reversed) returns to its lots whatever the card
//! holds, as no limit refuses it (safety.rs): the card may then hold more
//! lots, still one per store of the brand at most
//! (`MAX_STORES_PER_BRAND`), and takes no load from a new store until it
//! is under the bound again.
//!
//! A money record keeps the lots it moved (its `Effect::lots`), so that a
//! refund returns value to the lots it came from, and a reversal moves the
//! same value back exactly.
use serde::{Deserialize, Serialize};

use crate::error::{refuse, Refusal};
use crate::limits::MAX_LOTS_PER_CARD;
use crate::pb::ErrorCode as E;

/// Value on a card sold by one store (or moved by one record from it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// The store of issue (0 = head office).
    pub store: u32,
    /// Paid value, minor units.
    pub paid: i64,
    /// Bonus value, minor units.
    pub bonus: i64,
}

/// A list of lots, oldest first. One lot (the common case) is kept inline,
/// so cloning a card or an effect does not allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lots {
    /// No value.
    #[default]
    Empty,
    /// Value from one store.
    One(Lot),
    /// Value from several stores, oldest first (never fewer than two).
    Many(Vec<Lot>),
}

impl Lots {
    /// The lots, oldest first.
    pub fn as_slice(&self) -> &[Lot] {
        match self {
            Lots::Empty => &[],
            Lots::One(lot) => std::slice::from_ref(lot),
            Lots::Many(v) => v,
        }
    }

    /// Lots built from a list, dropping empty ones, merging same-store ones.
    pub fn from_moves(moves: &[Lot]) -> Lots {
        let mut lots = Lots::Empty;
        for m in moves {
            // Merging never adds a lot beyond those listed, so no bound hit.
            lots.add_unbounded(*m);
        }
        lots
    }

    fn add_unbounded(&mut self, m: Lot) {
        if m.paid == 0 && m.bonus == 0 {
            return;
        }
        // The common cases without a Vec: no allocation per record.
        match self {
            Lots::Empty => {
                *self = Lots::One(m);
                return;
            }
            Lots::One(l) if l.store == m.store => {
                l.paid += m.paid;
                l.bonus += m.bonus;
                return;
            }
            _ => {}
        }
        let mut v = self.take_vec();
        match v.iter_mut().find(|l| l.store == m.store) {
            Some(l) => {
                l.paid += m.paid;
                l.bonus += m.bonus;
            }
            None => v.push(m),
        }
        *self = Lots::from_vec(v);
    }

    fn take_vec(&mut self) -> Vec<Lot> {
        match std::mem::take(self) {
            Lots::Empty => Vec::new(),
            Lots::One(l) => vec![l],
            Lots::Many(v) => v,
        }
    }

    fn from_vec(mut v: Vec<Lot>) -> Lots {
        v.retain(|l| l.paid != 0 || l.bonus != 0);
        match v.len() {
            0 => Lots::Empty,
            1 => Lots::One(v[0]),
            _ => Lots::Many(v),
        }
    }

    /// Adds value sold by `store`, joining its lot if the card has one.
    /// Refused when the card already holds `MAX_LOTS_PER_CARD` other lots.
    pub fn add(&mut self, store: u32, paid: i64, bonus: i64) -> Result<(), Refusal> {
        match self {
            Lots::One(l) if l.store == store => {
                l.paid += paid;
                l.bonus += bonus;
                return Ok(());
            }
            Lots::Empty => {
                self.add_unbounded(Lot { store, paid, bonus });
                return Ok(());
            }
            _ => {}
        }
        let lots = self.as_slice();
        if !lots.iter().any(|l| l.store == store) && lots.len() >= MAX_LOTS_PER_CARD {
            return refuse(
                E::LimitExceeded,
                format!("the card holds value from {MAX_LOTS_PER_CARD} stores; spend some first"),
            );
        }
        self.add_unbounded(Lot { store, paid, bonus });
        Ok(())
    }

    /// Takes `paid` then `bonus` value in spend order (oldest lot first,
    /// paid before bonus); returns what was taken from each lot. The
    /// caller has checked that the card holds enough.
    pub fn take(&mut self, paid: i64, bonus: i64) -> Lots {
        if let Lots::One(l) = self {
            let taken = Lot {
                store: l.store,
                paid,
                bonus,
            };
            l.paid -= paid;
            l.bonus -= bonus;
            debug_assert!(l.paid >= 0 && l.bonus >= 0, "caller checked the funds");
            if l.paid == 0 && l.bonus == 0 {
                *self = Lots::Empty;
            }
            return Lots::from_moves(std::slice::from_ref(&taken));
        }
        let mut v = self.take_vec();
        let mut taken: Vec<Lot> = v
            .iter()
            .map(|l| Lot {
                store: l.store,
                ..Lot::default()
            })
            .collect();
        let (mut paid, mut bonus) = (paid, bonus);
        for (l, t) in v.iter_mut().zip(taken.iter_mut()) {
            let p = paid.min(l.paid);
            (l.paid, t.paid, paid) = (l.paid - p, p, paid - p);
        }
        for (l, t) in v.iter_mut().zip(taken.iter_mut()) {
            let b = bonus.min(l.bonus);
            (l.bonus, t.bonus, bonus) = (l.bonus - b, b, bonus - b);
        }
        debug_assert!(paid == 0 && bonus == 0, "caller checked the funds");
        *self = Lots::from_vec(v);
        Lots::from_vec(taken)
    }

    /// Takes back exactly `moves` (a reversal undoing what a record put
    /// in). When a lot has been spent since, the rest comes from the
    /// card's other lots in spend order; the result says what was taken.
    pub fn take_back(&mut self, moves: &Lots) -> Lots {
        let mut taken = Vec::new();
        let (mut paid_left, mut bonus_left) = (0, 0);
        let mut v = self.take_vec();
        for m in moves.as_slice() {
            let (p, b) = match v.iter_mut().find(|l| l.store == m.store) {
                Some(l) => {
                    let (p, b) = (m.paid.min(l.paid), m.bonus.min(l.bonus));
                    (l.paid, l.bonus) = (l.paid - p, l.bonus - b);
                    (p, b)
                }
                None => (0, 0),
            };
            taken.push(Lot {
                store: m.store,
                paid: p,
                bonus: b,
            });
            paid_left += m.paid - p;
            bonus_left += m.bonus - b;
        }
        *self = Lots::from_vec(v);
        let rest = self.take(paid_left, bonus_left);
        taken.extend_from_slice(rest.as_slice());
        Lots::from_moves(&taken)
    }

    /// Joins `moves` into these lots, store by store, with no bound: value
    /// given back (a refund, a reversal) or what a purchase's refunds
    /// returned; never a store the brand does not have.
    pub fn join_all(&mut self, moves: &Lots) {
        for m in moves.as_slice() {
            self.add_unbounded(*m);
        }
    }

    /// Takes `moves` off these lots, store by store (a reversed refund no
    /// longer counts as returned); each move is within its store's lot.
    pub fn remove_all(&mut self, moves: &Lots) {
        let mut v = self.take_vec();
        for m in moves.as_slice() {
            if let Some(l) = v.iter_mut().find(|l| l.store == m.store) {
                (l.paid, l.bonus) = (l.paid - m.paid, l.bonus - m.bonus);
                debug_assert!(l.paid >= 0 && l.bonus >= 0, "{m:?} was returned");
            }
        }
        *self = Lots::from_vec(v);
    }

    /// Sum of paid and of bonus value over the lots.
    pub fn totals(&self) -> (i64, i64) {
        self.as_slice()
            .iter()
            .fold((0, 0), |(p, b), l| (p + l.paid, b + l.bonus))
    }
}

/// The lots a refund of `paid` and `bonus` returns value to, given what
/// the purchase `taken` and what its earlier refunds returned. Refunds
/// give back in the reverse of the spend order: bonus first, newest lot
/// first; each earlier refund has used up the same order before this one.
pub fn refund_share(taken: &Lots, refunded: (i64, i64), paid: i64, bonus: i64) -> Lots {
    if let Lots::One(l) = taken {
        // All of it came from one lot: it all goes back there (no Vec).
        return Lots::from_moves(&[Lot {
            store: l.store,
            paid,
            bonus,
        }]);
    }
    let lots = taken.as_slice();
    let mut out: Vec<Lot> = Vec::with_capacity(lots.len());
    let mut give = |pick: fn(&Lot) -> i64, mut skip: i64, mut want: i64, is_paid: bool| {
        for l in lots.iter().rev() {
            let used = skip.min(pick(l));
            skip -= used;
            let g = want.min(pick(l) - used);
            want -= g;
            if g > 0 {
                let (p, b) = if is_paid { (g, 0) } else { (0, g) };
                out.push(Lot {
                    store: l.store,
                    paid: p,
                    bonus: b,
                });
            }
        }
    };
    give(|l| l.bonus, refunded.1, bonus, false);
    give(|l| l.paid, refunded.0, paid, true);
    Lots::from_moves(&out)
}

/// The lots an exact refund (`exact_refunds`) returns value to: what the
/// purchase `taken` from each store less what its refunds not reversed
/// `returned` there, in the same order as `refund_share` (bonus first,
/// newest lot first). Unlike `refund_share` it does not assume that the
/// earlier refunds used that order up: a reversed one leaves a gap, and
/// no store ever gets back more than was taken from it.
pub fn refund_share_exact(taken: &Lots, returned: &Lots, paid: i64, bonus: i64) -> Lots {
    let back = returned.as_slice();
    let left: Vec<Lot> = taken
        .as_slice()
        .iter()
        .map(|l| {
            let r = back.iter().find(|r| r.store == l.store);
            let (p, b) = r.map_or((0, 0), |r| (r.paid, r.bonus));
            Lot {
                store: l.store,
                paid: l.paid - p,
                bonus: l.bonus - b,
            }
        })
        .collect();
    refund_share(&Lots::from_vec(left), (0, 0), paid, bonus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(store: u32, paid: i64, bonus: i64) -> Lot {
        Lot { store, paid, bonus }
    }

    #[test]
    fn spends_paid_oldest_first_then_bonus_oldest_first() {
        let mut lots = Lots::default();
        lots.add(1, 100, 10).unwrap();
        lots.add(2, 50, 5).unwrap();
        lots.add(1, 20, 0).unwrap(); // joins store 1's lot
        assert_eq!(lots.as_slice(), &[lot(1, 120, 10), lot(2, 50, 5)]);
        let taken = lots.take(150, 12);
        assert_eq!(taken.as_slice(), &[lot(1, 120, 10), lot(2, 30, 2)]);
        assert_eq!(lots.as_slice(), &[lot(2, 20, 3)]);
        assert_eq!(lots.totals(), (20, 3));
    }

    #[test]
    fn the_lot_bound_refuses_a_new_store_only() {
        let mut lots = Lots::default();
        for s in 0..MAX_LOTS_PER_CARD as u32 {
            lots.add(s, 1, 0).unwrap();
        }
        let full = lots.clone();
        assert_eq!(lots.add(999, 1, 0).unwrap_err().code, E::LimitExceeded);
        assert_eq!(lots, full);
        lots.add(3, 1, 0).unwrap();
        assert_eq!(lots.as_slice()[3], lot(3, 2, 0));
    }

    #[test]
    fn refunds_return_bonus_first_newest_lot_first() {
        let taken = Lots::from_moves(&[lot(1, 100, 10), lot(2, 30, 2)]);
        // First refund of 20: bonus 2 (store 2) + 10 (store 1), then paid 8 from store 2.
        let first = refund_share(&taken, (0, 0), 8, 12);
        assert_eq!(first.as_slice(), &[lot(2, 8, 2), lot(1, 0, 10)]);
        // Second refund of 50 paid: 22 left at store 2, then 28 at store 1.
        let second = refund_share(&taken, (8, 12), 50, 0);
        assert_eq!(second.as_slice(), &[lot(2, 22, 0), lot(1, 28, 0)]);
    }

    #[test]
    fn take_back_falls_back_to_other_lots() {
        let mut lots = Lots::from_moves(&[lot(1, 5, 0), lot(2, 100, 0)]);
        let taken = lots.take_back(&Lots::One(lot(1, 20, 0)));
        assert_eq!(taken.as_slice(), &[lot(1, 5, 0), lot(2, 15, 0)]);
        assert_eq!(lots.as_slice(), &[lot(2, 85, 0)]);
    }
}
