//! What the state remembers, and for how long: the bounded windows that
//! keep a brand's memory flat however long its chain grows.
//!
//! - Transaction ids: the newest `TXN_WINDOW_PER_SIGNER` of each signer.
//!   An id at or below the highest one forgotten is refused, so a forgotten
//!   id is never applied twice (tills number their transactions upwards).
//! - Refundable records: those within `REFUND_WINDOW_MS` of the newest
//!   record's time, and at most `MAX_REFUNDABLE_RECORDS` of them.
//!
//! Both are forgotten inside `apply`, on the records' own server time, so an
//! auditor's replay forgets exactly what the live ledger forgot.
use super::{BrandState, Effect, Tracked, TxnEntry, TxnWindow};
use crate::error::{refuse, Refusal};
use crate::limits::{
    MAX_REFUNDABLE_RECORDS, MAX_TOMBSTONES_AHEAD, REFUND_WINDOW_MS, TXN_WINDOW_PER_SIGNER,
};
use crate::pb::ErrorCode as E;

pub(super) const TXN_TOO_OLD: &str =
    "this transaction id is older than the ones the server still knows; use one above the last";
pub(super) const ORIGINAL_EXPIRED: &str = "the original is past the refund window";

/// The cap on refundable records: small in unit tests, so that they can
/// reach it.
const REFUNDABLE_CAP: usize = if cfg!(test) {
    64
} else {
    MAX_REFUNDABLE_RECORDS
};

/// Adds an id to its signer's window, forgetting the oldest beyond
/// `TXN_WINDOW_PER_SIGNER`.
pub(super) fn remember_txn(state: &mut BrandState, ns: u32, txn_id: u64, entry: TxnEntry) {
    let previous = state.txns.insert((ns, txn_id), entry);
    debug_assert!(previous.is_none(), "an id is remembered once");
    let window = state.txn_windows.get_or_default_mut(ns);
    window.ids.push_back(txn_id);
    if window.ids.len() <= TXN_WINDOW_PER_SIGNER {
        return;
    }
    let old = window.ids.pop_front().expect("window is not empty");
    if matches!(state.txns.get(&(ns, old)), Some(TxnEntry::Tombstone(_))) {
        // A tombstone's id was never applied, so it must not raise the mark
        // (a reversal of a mistyped, far-off id would refuse every id below
        // it). The reversal's own id follows it in the window: a tombstone
        // of an id below that one names an original the till really sent
        // before voiding it, which may still arrive, so while the mark is
        // below its id it stays, outside the window. One of an id above
        // (a till voiding an id it had not reached) goes as it always did,
        // so chains written before this rule replay unchanged.
        let voided_earlier = window.ids.front().is_some_and(|own| old < *own);
        if voided_earlier && old > window.forgotten_up_to {
            park_tombstone(&mut state.txns, window, ns, old);
            return;
        }
    } else {
        window.forgotten_up_to = window.forgotten_up_to.max(old);
    }
    state.txns.remove(&(ns, old));
    release_passed_tombstones(&mut state.txns, window, ns);
}

/// Keeps the tombstone of `id` beyond the window, at most
/// `MAX_TOMBSTONES_AHEAD` per signer: past that the highest one goes (a till
/// that numbers upwards never has more than a few ahead of its mark, and
/// only a till reversing ids it never sent can lose one).
fn park_tombstone(txns: &mut Tracked<(u32, u64), TxnEntry>, w: &mut TxnWindow, ns: u32, id: u64) {
    w.tombstones_ahead.insert(id);
    if w.tombstones_ahead.len() > MAX_TOMBSTONES_AHEAD {
        let highest = w.tombstones_ahead.pop_last().expect("not empty");
        txns.remove(&(ns, highest));
    }
}

/// Drops the kept tombstones the mark has reached: their ids are refused
/// as too old from now on, so no original of theirs can be applied.
fn release_passed_tombstones(txns: &mut Tracked<(u32, u64), TxnEntry>, w: &mut TxnWindow, ns: u32) {
    while let Some(&id) = w.tombstones_ahead.first() {
        if id > w.forgotten_up_to {
            break;
        }
        w.tombstones_ahead.pop_first();
        txns.remove(&(ns, id));
    }
}

/// Drops refundable records past the refund window or beyond
/// `MAX_REFUNDABLE_RECORDS`, oldest first. Run after each record, on the
/// record's time, so replay forgets exactly what the live ledger forgot.
pub(super) fn forget_expired_effects(state: &mut BrandState, now_ms: i64) {
    while let Some((_, oldest)) = state.effects.oldest() {
        if state.effects.len() <= REFUNDABLE_CAP
            && now_ms.saturating_sub(oldest.time_ms) <= REFUND_WINDOW_MS
        {
            break;
        }
        state.effects.forget_oldest();
    }
}

/// True if `effect` can no longer be refunded or reversed at `now_ms`.
pub(super) fn expired(effect: &Effect, now_ms: i64) -> bool {
    now_ms.saturating_sub(effect.time_ms) > REFUND_WINDOW_MS
}

/// The refusal for a money record not (or no longer) held: past the window
/// if its sequence number is among the forgotten ones.
pub(super) fn missing_original<T>(
    state: &BrandState,
    seq: u64,
    otherwise: E,
    why: &str,
) -> Result<T, Refusal> {
    if seq != 0 && seq <= state.effects.forgotten_up_to() {
        refuse(E::OriginalExpired, ORIGINAL_EXPIRED)
    } else {
        refuse(otherwise, why.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::golden::{card, purchase_op, Script};
    use super::super::{Outcome, Principal};
    use crate::limits::{REFUND_WINDOW_MS, TXN_WINDOW_PER_SIGNER};
    use crate::pb::{self, request::Op, ErrorCode as E, TxnState};

    const TILL: Principal = Principal::Terminal(1);

    /// A brand with one store, one till and one card holding `balance`.
    fn shop(balance: i64) -> (Script, String) {
        (Script::shop("Window Tea", 1, balance), card(0))
    }

    fn refund(original_seq: u64, amount_minor: i64) -> Op {
        Op::Refund(pb::Refund {
            original_seq,
            amount_minor,
        })
    }

    fn status(s: &mut Script, txn_id: u64) -> (TxnState, u64) {
        match s.request(TILL, 1, "", Op::TxnStatus(pb::TxnStatus { txn_id })) {
            Ok(Outcome::Status { state, seq }) => (state, seq),
            other => panic!("a status query answered {other:?}"),
        }
    }

    #[test]
    fn a_forgotten_txn_id_is_refused_never_applied_again() {
        let (mut s, c) = shop(1_000_000);
        assert_eq!(status(&mut s, 0), (TxnState::Unknown, 0));
        // The top-up was txn 1; purchases 2..=W+1 push it out of the window.
        let first_purchase = s.purchase(1, &c, 1, false);
        for _ in 1..TXN_WINDOW_PER_SIGNER {
            s.purchase(1, &c, 1, false);
        }
        let window = &s.state.txn_windows[&1];
        assert_eq!(window.ids.len(), TXN_WINDOW_PER_SIGNER);
        assert_eq!(window.forgotten_up_to, 1);
        // The server's and the owner's ids (4) are kept too.
        assert_eq!(s.state.txns.len(), 4 + TXN_WINDOW_PER_SIGNER);
        let top_up_again = Op::TopUp(pb::TopUp {
            card: c.clone(),
            amount_minor: 1_000_000,
            ..Default::default()
        });
        assert_eq!(s.refused(TILL, 1, top_up_again), E::TxnTooOld);
        let reverse_it = Op::Reversal(pb::Reversal { original_txn_id: 1 });
        assert_eq!(s.refused(TILL, 999_999, reverse_it), E::TxnTooOld);
        assert_eq!(status(&mut s, 1), (TxnState::Expired, 0));
        assert_eq!(status(&mut s, 0), (TxnState::Unknown, 0));
        // The oldest id still in the window is still a retry.
        assert_eq!(status(&mut s, 2), (TxnState::Committed, first_purchase));
        let retry = s.request(TILL, 2, "cashier 7", purchase_op(&c, 1));
        assert_eq!(
            retry,
            Ok(Outcome::Seen {
                seq: first_purchase
            })
        );
        // Ids above the newest go on being accepted; each forgets one more.
        s.purchase(1, &c, 1, false);
        assert_eq!(s.state.txn_windows[&1].forgotten_up_to, 2);
        assert_eq!(status(&mut s, 2), (TxnState::Expired, 0));
        let balance = 1_000_000 - i64::try_from(TXN_WINDOW_PER_SIGNER).unwrap() - 1;
        assert_eq!(s.state.cards[&card_number(&c)].balance(), balance);
    }

    #[test]
    fn a_forgotten_tombstone_of_a_far_off_id_does_not_lock_the_till_out() {
        let (mut s, c) = shop(1_000_000);
        // A reversal of an id never sent (mistyped): a tombstone.
        s.till(
            1,
            "",
            Op::Reversal(pb::Reversal {
                original_txn_id: u64::MAX,
            }),
        );
        for _ in 0..TXN_WINDOW_PER_SIGNER {
            s.purchase(1, &c, 1, false);
        }
        let window = &s.state.txn_windows[&1];
        assert!(
            !window.ids.contains(&u64::MAX),
            "the tombstone was forgotten"
        );
        assert_eq!(
            window.forgotten_up_to, 2,
            "ids 1 and 2 left; only 1 and 2 count"
        );
        // The till goes on with its next ids.
        s.purchase(1, &c, 1, false);
        assert_eq!(status(&mut s, 3), (TxnState::Expired, 0));
    }

    #[test]
    fn a_late_original_is_refused_however_late_it_comes() {
        let (mut s, c) = shop(1_000_000);
        // Purchase 2 never arrived; the till voided it with reversal 3.
        let void = Op::Reversal(pb::Reversal { original_txn_id: 2 });
        s.request(TILL, 3, "", void).unwrap();
        // Window order: 1, tombstone 2, 3, 4, ...: these purchases push the
        // top-up and the tombstone out, not yet the reversal itself.
        let last = 3 + TXN_WINDOW_PER_SIGNER as u64 - 1;
        for id in 4..=last {
            s.request(TILL, id, "", purchase_op(&c, 1)).unwrap();
        }
        let window = &s.state.txn_windows[&1];
        assert!(!window.ids.contains(&2), "the tombstone left the window");
        assert_eq!(window.forgotten_up_to, 1);
        assert_eq!(window.tombstones_ahead, [2].into());
        assert_eq!(s.refused(TILL, 2, purchase_op(&c, 500)), E::TxnReversed);
        assert_eq!(status(&mut s, 2).0, TxnState::Tombstoned);
        // One more id pushes the reversal out: the mark passes 2.
        s.request(TILL, last + 1, "", purchase_op(&c, 1)).unwrap();
        let window = &s.state.txn_windows[&1];
        assert_eq!(window.forgotten_up_to, 3);
        assert!(window.tombstones_ahead.is_empty());
        assert_eq!(s.refused(TILL, 2, purchase_op(&c, 500)), E::TxnTooOld);
        let spent = i64::try_from(TXN_WINDOW_PER_SIGNER).unwrap();
        assert_eq!(s.state.cards[&card_number(&c)].balance(), 1_000_000 - spent);
    }

    #[test]
    fn a_tombstone_of_an_id_the_till_had_not_reached_goes_with_the_window() {
        let (mut s, c) = shop(1_000_000);
        // Reversal 2 voids id 10,000, which the till had not reached: no
        // original of it can be on its way, so (as in chains written before
        // tombstones were kept) it leaves with the window and never raises
        // the mark.
        let void = Op::Reversal(pb::Reversal {
            original_txn_id: 10_000,
        });
        s.request(TILL, 2, "", void).unwrap();
        for id in 3..3 + TXN_WINDOW_PER_SIGNER as u64 {
            s.request(TILL, id, "", purchase_op(&c, 1)).unwrap();
        }
        let window = &s.state.txn_windows[&1];
        assert!(window.tombstones_ahead.is_empty());
        assert_eq!(window.forgotten_up_to, 2);
        // The till's own id 10,000, when it gets there, is applied.
        s.request(TILL, 10_000, "", purchase_op(&c, 1)).unwrap();
    }

    #[test]
    fn refunds_and_reversals_end_with_the_refund_window() {
        let (mut s, c) = shop(1_000_000);
        let old = s.purchase(1, &c, 5_000, false);
        let old_time = s.time_ms;
        s.time_ms += 86_400_000;
        let recent = s.purchase(1, &c, 7_000, false);
        // The next request is one millisecond past the old purchase's window
        // (every request advances the script's clock by 61 s).
        s.time_ms = old_time + REFUND_WINDOW_MS + 1 - 61_000;
        assert_eq!(s.refused(TILL, 100, refund(old, 5_000)), E::OriginalExpired);
        s.time_ms -= 61_000;
        // The recent one is refundable; writing it forgets the old one.
        s.till(1, "", refund(recent, 7_000));
        assert!(!s.state.effects.contains(old));
        assert!(s.state.effects.contains(recent));
        assert_eq!(s.state.effects.forgotten_up_to(), old);
        assert_eq!(s.refused(TILL, 101, refund(old, 1)), E::OriginalExpired);
        // The old purchase's txn id (2) is still known, its effect is not.
        let reverse_old = Op::Reversal(pb::Reversal { original_txn_id: 2 });
        assert_eq!(s.refused(TILL, 102, reverse_old), E::OriginalExpired);
        // A sequence number never written is still "not found".
        assert_eq!(s.refused(TILL, 103, refund(10_000, 1)), E::OriginalNotFound);
        assert_eq!(s.state.cards[&card_number(&c)].balance(), 1_000_000 - 5_000);
    }

    #[test]
    fn a_refund_cannot_be_reversed_once_its_purchase_is_forgotten() {
        let (mut s, c) = shop(1_000_000);
        let purchase = s.purchase(1, &c, 5_000, false);
        let purchase_time = s.time_ms;
        s.time_ms += REFUND_WINDOW_MS - 86_400_000;
        let refund_txn = s.till(1, "", refund(purchase, 1_000));
        // One more record, past the purchase's window, forgets it.
        s.time_ms = purchase_time + REFUND_WINDOW_MS;
        s.purchase(1, &c, 1, false);
        assert!(!s.state.effects.contains(purchase));
        let undo = Op::Reversal(pb::Reversal {
            original_txn_id: refund_txn,
        });
        assert_eq!(s.refused(TILL, 900, undo), E::OriginalExpired);
        let balance = 1_000_000 - 5_000 + 1_000 - 1;
        assert_eq!(s.state.cards[&card_number(&c)].balance(), balance);
    }

    #[test]
    fn refundable_records_are_capped_oldest_first() {
        let (mut s, c) = shop(1_000_000);
        let cap = super::REFUNDABLE_CAP;
        let purchases: Vec<u64> = (0..=cap).map(|_| s.purchase(1, &c, 10, false)).collect();
        // The top-up and the first purchase made way for the newest.
        assert_eq!(s.state.effects.len(), cap);
        assert_eq!(
            s.state.effects.oldest().map(|(seq, _)| seq),
            Some(purchases[1])
        );
        assert_eq!(s.state.effects.forgotten_up_to(), purchases[0]);
        assert_eq!(
            s.refused(TILL, 500, refund(purchases[0], 10)),
            E::OriginalExpired
        );
        s.till(1, "", refund(purchases[1], 10));
    }

    fn card_number(c: &str) -> u64 {
        crate::card_number::parse_number(c).expect("valid card").1
    }
}
