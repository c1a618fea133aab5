//! Purchase, top-up, points redemption and refund: the money rules, and the
//! limits on amounts and balances.
use super::*;

// ---------------------------------------------------------------------------
// 2. Purchase.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn purchase_spends_paid_value_before_bonus_and_earns_floor_points() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone(); // paid 500.00, bonus 50.00
    let mut t = demo.terminal(d.addr, 0).await;

    // 520.99 spent: all 500.00 paid, then 20.99 of bonus; 520 points (floor).
    let r = ok(&mut t, 100, purchase(&card, 52_099)).await;
    let p = purchased(&r);
    assert_eq!(
        (
            p.requested_minor,
            p.approved_minor,
            p.remaining_due_minor,
            p.points_earned
        ),
        (52_099, 52_099, 0, 520)
    );
    assert_money(card_of(&r), 0, 2_901, 520);
    let v = card_of(&r);
    assert_eq!(
        (v.tier.as_str(), v.total_spend_minor, v.visits),
        ("silver", 52_099, 1)
    );
    let rc = receipt(&r);
    assert_eq!(
        (rc.seq, rc.store_id, rc.terminal_id, rc.txn_id),
        (FIRST_SEQ, 1, 1, 100)
    );
    assert_eq!(rc.hash.len(), 32);
    assert_eq!(r.promotion_line, DEMO_PROMO);
    assert!(!r.replayed);
    assert_eq!(
        &inquiry(&mut t, &card).await,
        card_of(&r),
        "inquiry agrees with the receipt"
    );

    // 9.01 more from bonus: 9 points; the next record is the next seq.
    let r = ok(&mut t, 101, purchase(&card, 901)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_eq!(purchased(&r).points_earned, 9);
    assert_money(card_of(&r), 0, 2_000, 529);
    // Below 1.00 earns nothing.
    let r = ok(&mut t, 102, purchase(&card, 99)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 2);
    assert_eq!(purchased(&r).points_earned, 0);
    assert_money(card_of(&r), 0, 1_901, 529);

    // Not enough and no split tender: refused, nothing written.
    assert_eq!(
        refused(&mut t, 103, purchase(&card, 1_902)).await,
        E::InsufficientFunds
    );
    assert_money(&inquiry(&mut t, &card).await, 0, 1_901, 529);

    // Split tender: the card pays what it has, the rest is still due.
    let r = ok(&mut t, 104, partial(&card, 5_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 3, "the refusal wrote no record");
    let p = purchased(&r);
    assert_eq!(
        (
            p.requested_minor,
            p.approved_minor,
            p.remaining_due_minor,
            p.points_earned
        ),
        (5_000, 1_901, 3_099, 19)
    );
    assert_money(card_of(&r), 0, 0, 548);
    // An empty card pays nothing, even with split tender.
    assert_eq!(
        refused(&mut t, 105, partial(&card, 100)).await,
        E::InsufficientFunds
    );
    let v = inquiry(&mut t, &card).await;
    assert_money(&v, 0, 0, 548);
    assert_eq!(v.total_spend_minor, 52_099 + 901 + 99 + 1_901);
    // Only what the card paid of a split-tender bill can be refunded, and
    // bonus comes back as bonus.
    let split = seq(&r);
    assert_eq!(
        refused(&mut t, 106, refund(split, 1_902)).await,
        E::RefundExceedsOriginal
    );
    let r = ok(&mut t, 107, refund(split, 1_901)).await;
    assert_eq!(refunded(&r).points_removed, 19);
    assert_money(card_of(&r), 0, 1_901, 529);
}

#[tokio::test]
async fn tier_upgrades_raise_the_points_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone(); // paid 1000.00, bonus 150.00
    let mut t = demo.terminal(d.addr, 0).await;
    let r = ok(&mut t, 100, top_up(&card, 100_000)).await;
    assert_money(card_of(&r), 200_000, 30_000, 0);
    // 2000.00 at silver (1x): 2000 points, and the card reaches gold.
    let r = ok(&mut t, 101, purchase(&card, 200_000)).await;
    assert_eq!(purchased(&r).points_earned, 2_000);
    assert_money(card_of(&r), 0, 30_000, 2_000);
    assert_eq!(card_of(&r).tier, "gold");
    // Gold earns 2x: 10.50 -> 21 points; 0.99 -> 1.98 -> 1 point.
    let r = ok(&mut t, 102, purchase(&card, 1_050)).await;
    assert_eq!(purchased(&r).points_earned, 21);
    let r = ok(&mut t, 103, purchase(&card, 99)).await;
    assert_eq!(purchased(&r).points_earned, 1);
    assert_money(card_of(&r), 0, 28_851, 2_022);
    // Up to 10,000.00 of spend: diamond, 3.8x, rounded down.
    let r = ok(&mut t, 104, top_up(&card, 1_000_000)).await;
    assert_eq!(topped_up(&r).bonus_minor, 150_000);
    let r = ok(&mut t, 105, purchase(&card, 798_851)).await;
    assert_eq!(
        purchased(&r).points_earned,
        15_977,
        "7988.51 at 2x = 15977.02"
    );
    assert_eq!(
        (card_of(&r).tier.as_str(), card_of(&r).total_spend_minor),
        ("diamond", 1_000_000)
    );
    let r = ok(&mut t, 106, purchase(&card, 1_234)).await;
    assert_eq!(purchased(&r).points_earned, 46, "12.34 at 3.8x = 46.892");
    assert_money(&inquiry(&mut t, &card).await, 199_915, 178_851, 18_045);
}

// ---------------------------------------------------------------------------
// 3. Top-up.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn top_up_applies_the_bonus_rules_and_keeps_bonus_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut t = demo.terminal(d.addr, 0).await;
    let (mut paid, mut bonus) = (10_000, 0);
    // (load, bonus): below 500.00 none; 500.00 up to 999.99 a fixed 50.00;
    // from 1000.00 15%, rounded down.
    let cases = [
        (49_999, 0),
        (50_000, 5_000),
        (99_999, 5_000),
        (100_000, 15_000),
        (100_007, 15_001),
        (1, 0),
    ];
    for (i, (load, expect_bonus)) in cases.into_iter().enumerate() {
        let txn = 100 + i as u64;
        let r = ok(&mut t, txn, top_up(&card, load)).await;
        assert_eq!(seq(&r), FIRST_SEQ + i as u64);
        let tu = topped_up(&r);
        assert_eq!(
            (tu.paid_minor, tu.bonus_minor),
            (load, expect_bonus),
            "top-up of {load}"
        );
        paid += load;
        bonus += expect_bonus;
        assert_money(card_of(&r), paid, bonus, 0);
        assert_eq!(card_of(&r).total_spend_minor, 0, "a top-up is not spend");
    }
    assert_money(&inquiry(&mut t, &card).await, paid, bonus, 0);
    // Spending takes paid value first: the bonus stays as it was.
    let r = ok(&mut t, 200, purchase(&card, 300_000)).await;
    assert_money(card_of(&r), paid - 300_000, bonus, 3_000);
    // The largest single amount is accepted (the bound is inclusive).
    let other = demo.manifest.cards[1].clone();
    let r = ok(&mut t, 201, top_up(&other, MAX_AMOUNT_MINOR)).await;
    assert_eq!(topped_up(&r).bonus_minor, MAX_AMOUNT_MINOR * 15 / 100);
    assert_money(
        card_of(&r),
        20_000 + MAX_AMOUNT_MINOR,
        MAX_AMOUNT_MINOR * 15 / 100,
        0,
    );
}

// ---------------------------------------------------------------------------
// 4. Points redemption.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redeeming_points_lowers_points_and_refuses_more_than_held() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let r = ok(&mut t, 100, purchase(&card, 12_345)).await;
    assert_money(card_of(&r), 87_655, 15_000, 123);
    let r = ok(&mut t, 101, redeem(&card, 100)).await;
    assert_eq!(redeemed(&r).points_redeemed, 100);
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_money(card_of(&r), 87_655, 15_000, 23);
    assert_eq!(
        refused(&mut t, 102, redeem(&card, 24)).await,
        E::InsufficientPoints
    );
    assert_money(&inquiry(&mut t, &card).await, 87_655, 15_000, 23);
    assert_eq!(
        refused(&mut t, 103, redeem(&card, 0)).await,
        E::AmountOutOfRange
    );
    assert_eq!(
        refused(&mut t, 104, redeem(&card, -5)).await,
        E::AmountOutOfRange
    );
    let r = ok(&mut t, 105, redeem(&card, 23)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 2);
    assert_money(card_of(&r), 87_655, 15_000, 0);
    assert_eq!(
        refused(&mut t, 106, redeem(&card, 1)).await,
        E::InsufficientPoints
    );
    assert_money(&inquiry(&mut t, &card).await, 87_655, 15_000, 0);
}

// ---------------------------------------------------------------------------
// 5. Refund.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refunds_return_bonus_first_and_stop_at_the_purchase_amount() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[3].clone(); // paid 500.00, bonus 50.00
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;

    // 520.00: 500.00 paid + 20.00 bonus, 520 points.
    let p = ok(&mut t1, 100, purchase(&card, 52_000)).await;
    let pseq = seq(&p);
    assert_money(card_of(&p), 0, 3_000, 520);

    // The other store cannot refund it.
    assert_eq!(refused(&mut t2, 1, refund(pseq, 1)).await, E::WrongStore);
    // A top-up is not refundable; an unknown seq is not found.
    let tu = ok(&mut t1, 101, top_up(&card, 1_000)).await;
    assert_money(card_of(&tu), 1_000, 3_000, 520);
    assert_eq!(
        refused(&mut t1, 102, refund(seq(&tu), 100)).await,
        E::NotRefundable
    );
    assert_eq!(
        refused(&mut t1, 103, refund(999_999, 100)).await,
        E::OriginalNotFound
    );
    assert_eq!(
        refused(&mut t1, 104, refund(pseq, 52_001)).await,
        E::RefundExceedsOriginal
    );
    assert_money(&inquiry(&mut t1, &card).await, 1_000, 3_000, 520);

    // 30.00 back: the 20.00 of bonus first, then 10.00 paid; 30 points out.
    let r = ok(&mut t1, 105, refund(pseq, 3_000)).await;
    let rf = refunded(&r);
    assert_eq!(
        (
            rf.refunded_minor,
            rf.refundable_left_minor,
            rf.points_removed
        ),
        (3_000, 49_000, 30)
    );
    assert_money(card_of(&r), 2_000, 5_000, 490);
    assert_eq!(receipt(&r).store_id, 1);
    // One minor unit over what is left is refused.
    assert_eq!(
        refused(&mut t1, 106, refund(pseq, 49_001)).await,
        E::RefundExceedsOriginal
    );
    // The rest: all paid value, the remaining points.
    let r = ok(&mut t1, 107, refund(pseq, 49_000)).await;
    let rf = refunded(&r);
    assert_eq!(
        (
            rf.refunded_minor,
            rf.refundable_left_minor,
            rf.points_removed
        ),
        (49_000, 0, 490)
    );
    assert_money(card_of(&r), 51_000, 5_000, 0);
    assert_eq!(card_of(&r).total_spend_minor, 0);
    assert_eq!(
        refused(&mut t1, 108, refund(pseq, 1)).await,
        E::RefundExceedsOriginal
    );
    // Refusals changed nothing.
    assert_money(&inquiry(&mut t1, &card).await, 51_000, 5_000, 0);
    assert_eq!(
        refused(&mut t1, 109, refund(pseq, 0)).await,
        E::AmountOutOfRange
    );
    // A purchase with refunds cannot be reversed any more.
    assert_eq!(refused(&mut t1, 110, reversal(100)).await, E::NotReversible);
    let next = ok(&mut t1, 111, purchase(&card, 1)).await;
    assert_eq!(seq(&next), seq(&r) + 1);
}

#[tokio::test]
async fn reversing_a_refund_or_a_redemption_puts_things_back() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let mut t = demo.terminal(d.addr, 0).await;
    let p = ok(&mut t, 100, purchase(&card, 5_000)).await;
    assert_money(card_of(&p), 25_000, 0, 50);
    let r = ok(&mut t, 101, refund(seq(&p), 2_000)).await;
    assert_eq!(refunded(&r).refundable_left_minor, 3_000);
    assert_money(card_of(&r), 27_000, 0, 30);
    // Reversing the refund takes the value back and makes it refundable again.
    let r = ok(&mut t, 102, reversal(101)).await;
    assert_eq!(reversed(&r).value_minor, 2_000);
    assert_money(card_of(&r), 25_000, 0, 50);
    assert_eq!(card_of(&r).total_spend_minor, 5_000);
    let r = ok(&mut t, 103, refund(seq(&p), 5_000)).await;
    let rf = refunded(&r);
    assert_eq!((rf.refundable_left_minor, rf.points_removed), (0, 50));
    assert_money(card_of(&r), 30_000, 0, 0);
    assert_eq!(
        refused(&mut t, 104, refund(seq(&p), 1)).await,
        E::RefundExceedsOriginal
    );
    // A redemption reversed gives the points back.
    ok(&mut t, 105, purchase(&card, 1_000)).await;
    let r = ok(&mut t, 106, redeem(&card, 10)).await;
    assert_money(card_of(&r), 29_000, 0, 0);
    let r = ok(&mut t, 107, reversal(106)).await;
    assert_money(card_of(&r), 29_000, 0, 10);
    let r = ok(&mut t, 108, reversal(105)).await;
    assert_money(card_of(&r), 30_000, 0, 0);
    assert_eq!(card_of(&r).total_spend_minor, 0);
    assert_money(&inquiry(&mut t, &card).await, 30_000, 0, 0);
}

#[tokio::test]
async fn a_card_balance_never_passes_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let card = card_number::generate(1);
    ok(&mut o, 11, issue(&card)).await;
    // The largest top-up earns the largest bonus: fixed 10,000,000.00 + 100%.
    let rules = pb::Rules {
        bonus_tiers: vec![pb::BonusTier {
            min_load_minor: MAX_AMOUNT_MINOR,
            fixed_bonus_minor: MAX_AMOUNT_MINOR,
            bonus_bps: 10_000,
        }],
        points_per_unit: 1,
        tiers: vec![],
        promotion_line: String::new(),
        time_zone: String::new(),
        ..Default::default()
    };
    ok(
        &mut o,
        12,
        Op::SetRules(pb::SetRules { rules: Some(rules) }),
    )
    .await;
    let mut txn = 100;
    for _ in 0..33 {
        let r = ok(&mut t, txn, top_up(&card, MAX_AMOUNT_MINOR)).await;
        assert_eq!(topped_up(&r).bonus_minor, 2 * MAX_AMOUNT_MINOR);
        txn += 1;
    }
    let max = cardd::limits::MAX_BALANCE_MINOR;
    assert_eq!(
        inquiry(&mut t, &card).await.balance_minor,
        99 * MAX_AMOUNT_MINOR
    );
    assert_eq!(
        refused(&mut t, txn, top_up(&card, MAX_AMOUNT_MINOR)).await,
        E::Overflow
    );
    let r = ok(&mut t, txn + 1, top_up(&card, MAX_AMOUNT_MINOR - 1)).await;
    assert_eq!(card_of(&r).balance_minor, max - 1);
    let r = ok(&mut t, txn + 2, top_up(&card, 1)).await;
    assert_eq!(
        card_of(&r).balance_minor,
        max,
        "the limit itself is allowed"
    );
    assert_eq!(
        refused(&mut t, txn + 3, top_up(&card, 1)).await,
        E::Overflow
    );
    let v = inquiry(&mut t, &card).await;
    assert_money(&v, 34 * MAX_AMOUNT_MINOR, 66 * MAX_AMOUNT_MINOR, 0);
}
