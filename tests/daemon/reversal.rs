//! Reversal, transaction status and shift close.
use super::*;

// ---------------------------------------------------------------------------
// 6. Reversal and transaction status.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reversal_restores_value_and_tombstones_missing_txns() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let mut t = demo.terminal(d.addr, 0).await;

    let p = ok(&mut t, 100, purchase(&card, 1_234)).await;
    assert_money(card_of(&p), 28_766, 0, 12);
    let r = ok(&mut t, 101, reversal(100)).await;
    let rv = reversed(&r);
    assert_eq!(
        (
            rv.original_txn_id,
            rv.original_found,
            rv.original_seq,
            rv.value_minor
        ),
        (100, true, seq(&p), 1_234)
    );
    assert_eq!(seq(&r), seq(&p) + 1);
    let v = card_of(&r);
    assert_money(v, 30_000, 0, 0);
    assert_eq!((v.total_spend_minor, v.visits), (0, 0));
    assert_eq!(&inquiry(&mut t, &card).await, v);

    // Once only; a reversed purchase cannot be refunded; a reversal itself
    // cannot be reversed.
    assert_eq!(
        refused(&mut t, 102, reversal(100)).await,
        E::AlreadyReversed
    );
    assert_eq!(
        refused(&mut t, 103, refund(seq(&p), 100)).await,
        E::NotRefundable
    );
    assert_eq!(refused(&mut t, 104, reversal(101)).await, E::NotReversible);
    assert_eq!(
        refused(&mut t, 105, reversal(105)).await,
        E::InvalidArgument
    );
    assert_money(&inquiry(&mut t, &card).await, 30_000, 0, 0);

    // A txn id the server never saw: acknowledged, and tombstoned.
    let r = ok(&mut t, 106, reversal(150)).await;
    let rv = reversed(&r);
    assert_eq!(
        (
            rv.original_txn_id,
            rv.original_found,
            rv.original_seq,
            rv.value_minor
        ),
        (150, false, 0, 0)
    );
    assert!(r.card.is_none());
    assert_eq!(seq(&r), seq(&p) + 2);
    // Its late arrival is refused and changes nothing.
    assert_eq!(
        refused(&mut t, 150, purchase(&card, 500)).await,
        E::TxnReversed
    );
    assert_eq!(
        refused(&mut t, 150, top_up(&card, 500)).await,
        E::TxnReversed
    );
    assert_money(&inquiry(&mut t, &card).await, 30_000, 0, 0);
    assert_eq!(
        refused(&mut t, 107, reversal(150)).await,
        E::AlreadyReversed
    );
    assert_eq!(refused(&mut t, 108, reversal(106)).await, E::NotReversible);

    // A top-up reversed takes back its paid value and its bonus.
    let tu = ok(&mut t, 109, top_up(&card, 50_000)).await;
    assert_money(card_of(&tu), 80_000, 5_000, 0);
    let r = ok(&mut t, 110, reversal(109)).await;
    assert_eq!(reversed(&r).value_minor, 55_000);
    assert_money(card_of(&r), 30_000, 0, 0);
    assert_eq!(seq(&r), seq(&p) + 4, "refusals wrote nothing");
    assert_eq!(t.session.last_txn_id, 6);
    let again = demo.terminal(d.addr, 0).await;
    assert_eq!(again.session.last_txn_id, 110);
}

#[tokio::test]
async fn txn_status_reports_committed_reversed_tombstoned_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone();
    let mut t = demo.terminal(d.addr, 0).await;

    let p = ok(&mut t, 100, purchase(&card, 700)).await;
    let s = status_of(&mut t, 100).await;
    assert_eq!((s.state(), s.seq), (TxnState::Committed, seq(&p)));
    assert_eq!(
        s.original.as_deref(),
        Some(&p),
        "the original answer, as first sent"
    );

    let p2 = ok(&mut t, 101, purchase(&card, 800)).await;
    let rv = ok(&mut t, 102, reversal(101)).await;
    let s = status_of(&mut t, 101).await;
    assert_eq!((s.state(), s.seq), (TxnState::Reversed, seq(&p2)));
    assert_eq!(s.original.as_ref().map(|o| seq(o)), Some(seq(&p2)));
    // The reversal itself is committed.
    let s = status_of(&mut t, 102).await;
    assert_eq!((s.state(), s.seq), (TxnState::Committed, seq(&rv)));

    let tomb = ok(&mut t, 103, reversal(120)).await;
    let s = status_of(&mut t, 120).await;
    assert_eq!((s.state(), s.seq), (TxnState::Tombstoned, seq(&tomb)));

    let s = status_of(&mut t, 9_999).await;
    assert_eq!(
        (s.state(), s.seq, s.original.is_none()),
        (TxnState::Unknown, 0, true)
    );
    // A refused request left no trace.
    assert_eq!(
        refused(&mut t, 104, purchase(&card, 10_000_000)).await,
        E::InsufficientFunds
    );
    assert_eq!(status_of(&mut t, 104).await.state(), TxnState::Unknown);
    // Transaction ids belong to their terminal.
    let mut t2 = demo.terminal(d.addr, 1).await;
    assert_eq!(status_of(&mut t2, 100).await.state(), TxnState::Unknown);
    // The demo top-ups are terminal 1's txn ids 1..=5.
    let s = status_of(&mut t, 5).await;
    assert_eq!((s.state(), s.seq), (TxnState::Committed, 16));
    let orig = s.original.expect("original");
    assert_eq!(topped_up(&orig).paid_minor, 100_000);
}

// ---------------------------------------------------------------------------
// 7. Shift close.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shift_close_compares_totals_and_starts_the_next_shift_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[1].clone(); // paid 200.00
    let mut t = demo.terminal(d.addr, 1).await; // store 2, nothing done yet

    ok(&mut t, 1, top_up(&card, 10_000)).await;
    let p = ok(&mut t, 2, purchase(&card, 5_000)).await;
    ok(&mut t, 3, purchase(&card, 2_550)).await;
    let rf = ok(&mut t, 4, refund(seq(&p), 1_000)).await;
    assert_eq!(refunded(&rf).points_removed, 10);
    let rv = ok(&mut t, 5, reversal(3)).await;
    assert_eq!(reversed(&rv).value_minor, 2_550);
    ok(&mut t, 6, reversal(50)).await; // tombstone: counted, no value
    ok(&mut t, 7, redeem(&card, 10)).await;
    // Refusals are not counted.
    assert_eq!(
        refused(&mut t, 8, purchase(&card, 10_000_000)).await,
        E::InsufficientFunds
    );
    assert_money(&inquiry(&mut t, &card).await, 26_000, 0, 30);

    let expected = ShiftTotals {
        purchase_count: 2,
        purchase_minor: 7_550,
        top_up_count: 1,
        top_up_minor: 10_000,
        refund_count: 1,
        refund_minor: 1_000,
        reversal_count: 2,
        reversal_minor: 2_550,
        redeem_count: 1,
        redeem_points: 10,
    };
    let r = ok(&mut t, 9, close_shift(Some(expected))).await;
    let s = shift_of(&r);
    assert_eq!(s.server_totals.as_ref(), Some(&expected));
    assert!(s.balanced);
    assert_eq!(s.shift_number, 1);
    assert_eq!(receipt(&r).store_id, 2);

    // The closed shift's transactions can no longer be reversed.
    assert_eq!(refused(&mut t, 10, reversal(1)).await, E::NotReversible);

    // The next shift starts from zero; a mismatch is reported, not refused.
    ok(&mut t, 11, purchase(&card, 300)).await;
    let r = ok(&mut t, 12, close_shift(Some(expected))).await;
    let s = shift_of(&r);
    let only_purchase = ShiftTotals {
        purchase_count: 1,
        purchase_minor: 300,
        ..Default::default()
    };
    assert_eq!(s.server_totals.as_ref(), Some(&only_purchase));
    assert!(!s.balanced);
    assert_eq!(s.shift_number, 2);
    let r = ok(&mut t, 13, close_shift(Some(ShiftTotals::default()))).await;
    let s = shift_of(&r);
    assert_eq!(s.server_totals.as_ref(), Some(&ShiftTotals::default()));
    assert!(s.balanced);
    assert_eq!(s.shift_number, 3);

    // Terminal 1's first shift held the five demo top-ups and was closed
    // by the demo (txn 6); its second shift holds nothing yet.
    let mut t1 = demo.terminal(d.addr, 0).await;
    let demo_loads = ShiftTotals {
        top_up_count: 5,
        top_up_minor: 210_000,
        ..Default::default()
    };
    let first = status_of(&mut t1, 6)
        .await
        .original
        .expect("the demo's shift close");
    let s = shift_of(&first);
    assert_eq!(
        (s.server_totals.as_ref(), s.balanced, s.shift_number),
        (Some(&demo_loads), true, 1)
    );
    let r = ok(&mut t1, 100, close_shift(Some(ShiftTotals::default()))).await;
    let s = shift_of(&r);
    assert_eq!(
        (s.server_totals.as_ref(), s.balanced, s.shift_number),
        (Some(&ShiftTotals::default()), true, 2)
    );
    // Terminal 2's totals were not touched by terminal 1.
    let r = ok(&mut t, 14, close_shift(Some(ShiftTotals::default()))).await;
    assert_eq!(
        (shift_of(&r).balanced, shift_of(&r).shift_number),
        (true, 4)
    );
}
