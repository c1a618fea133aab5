//! The loyalty programme on scripted ledgers, against points computed by
//! hand: campaigns, expiry, points as payment, window and day tiers.
use super::golden::{card, Script};
use super::points::DAY_MS;
use super::{reply_for_record, Principal};
use crate::pb::{self, reply::Detail, request::Op, ErrorCode as E};

/// Start of a UTC day well inside the script's time range.
const DAY0: i64 = 20_718 * DAY_MS;

/// Stores 1 and 2 with tills 1 and 2, one card holding 1,000.00.
fn brand(rules: pb::Rules) -> (Script, String) {
    let mut s = Script::new();
    s.create_brand("Loyal Tea");
    for (name, till) in [("One", 1), ("Two", 2)] {
        s.owner(Op::CreateStore(pb::CreateStore { name: name.into() }));
        let pk = s.key(Principal::Terminal(till)).verifying_key().to_bytes();
        s.owner(Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: till,
            public_key: pk.to_vec(),
            label: format!("till {name}"),
        }));
    }
    s.owner(Op::SetRules(pb::SetRules { rules: Some(rules) }));
    let c = card(1);
    s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
    s.top_up(1, &c, 100_000);
    (s, c)
}

fn rules() -> pb::Rules {
    pb::Rules {
        points_per_unit: 1,
        ..Default::default()
    }
}

fn campaign(multiplier_milli: u32, starts_ms: i64, ends_ms: i64, stores: &[u32]) -> pb::Campaign {
    pb::Campaign {
        name: "VIP".into(),
        multiplier_milli,
        starts_ms,
        ends_ms,
        stores: stores
            .iter()
            .map(|&store_id| pb::StoreRef { store_id })
            .collect(),
        category: String::new(),
    }
}

fn tier(name: &str, min_spend_minor: i64, multiplier_milli: u32) -> pb::TierRule {
    pb::TierRule {
        name: name.into(),
        min_spend_minor,
        multiplier_milli,
        ..Default::default()
    }
}

/// The next request runs at `time_ms` (the script adds 61 s before each).
fn at(s: &mut Script, time_ms: i64) {
    s.time_ms = time_ms - 61_000;
}

fn last(s: &Script) -> pb::Record {
    s.last_record.clone().expect("a record")
}

fn buy(s: &mut Script, till: u32, c: &str, amount: i64, points: i64) -> pb::Record {
    s.till(
        till,
        "",
        Op::Purchase(pb::Purchase {
            card: c.into(),
            amount_minor: amount,
            points,
            ..Default::default()
        }),
    );
    last(s)
}

/// The books' purchase value and points-paid value over every day and store.
fn points_paid(s: &Script) -> (i64, i64) {
    let tallies = s.state.books.days.values().flat_map(|d| d.stores.values());
    tallies.fold((0, 0), |(v, p), t| {
        (v + t.purchase_minor, p + t.points_paid_minor)
    })
}

fn purchase_result(rec: &pb::Record) -> pb::PurchaseResult {
    match reply_for_record(rec, &[0; 32], "").detail {
        Some(Detail::Purchase(p)) => p,
        other => panic!("not a purchase reply: {other:?}"),
    }
}

#[test]
fn a_six_times_campaign_at_one_store_only() {
    let mut r = rules();
    r.campaigns = vec![campaign(6_000, 0, i64::MAX, &[2])];
    let (mut s, c) = brand(r);
    // 12.34 at store 2: 12.34 x 6 = 74.04 -> 74; at store 1: 12.
    assert_eq!(buy(&mut s, 2, &c, 1_234, 0).points_in, 74);
    assert_eq!(buy(&mut s, 1, &c, 1_234, 0).points_in, 12);
    assert_eq!(last(&s).points_after, 86);
}

#[test]
fn a_tier_and_a_campaign_multiply_together() {
    let mut r = rules();
    r.tiers = vec![tier("gold", 0, 2_000), tier("diamond", 50_000, 3_800)];
    r.campaigns = vec![campaign(6_000, 0, i64::MAX, &[])];
    let (mut s, c) = brand(r);
    // 12.34 x 2 x 6 = 148.08 -> 148 (rounding each step would say 144).
    assert_eq!(buy(&mut s, 1, &c, 1_234, 0).points_in, 148);
    // Diamond is reached by this purchase: it earns at gold, later ones at
    // diamond: 500.00 x 2 x 6 = 6000; then 12.34 x 3.8 x 6 = 281.352 -> 281.
    let up = buy(&mut s, 1, &c, 50_000, 0);
    assert_eq!(up.points_in, 6_000);
    let p = purchase_result(&up);
    assert_eq!(
        (p.tier_before.as_str(), p.tier.as_str()),
        ("gold", "diamond")
    );
    assert_eq!(buy(&mut s, 1, &c, 1_234, 0).points_in, 281);
}

#[test]
fn a_campaign_ending_mid_day_stops_at_its_instant() {
    let noon = DAY0 + DAY_MS / 2;
    let mut r = rules();
    r.campaigns = vec![campaign(6_000, DAY0, noon, &[])];
    let (mut s, c) = brand(r);
    at(&mut s, noon - 1);
    assert_eq!(buy(&mut s, 1, &c, 1_000, 0).points_in, 60);
    at(&mut s, noon);
    assert_eq!(buy(&mut s, 1, &c, 1_000, 0).points_in, 10);
}

#[test]
fn points_expire_at_their_instant_not_a_millisecond_before() {
    let mut r = rules();
    r.points_expire_after_days = 1;
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    buy(&mut s, 1, &c, 1_000, 0); // 10 points, expiring at DAY0 + 1 day
    at(&mut s, DAY0 + DAY_MS - 1);
    s.top_up(1, &c, 100);
    assert_eq!((last(&s).points_expired, last(&s).points_after), (0, 10));
    at(&mut s, DAY0 + DAY_MS);
    s.top_up(1, &c, 100);
    assert_eq!((last(&s).points_expired, last(&s).points_after), (10, 0));
    // An inquiry shows nothing expiring now: the card holds no lot.
    assert!(s.state.cards.values().all(|c| c.loyalty.is_none()));
}

#[test]
fn spending_takes_the_oldest_lot_first() {
    let mut r = rules();
    r.points_expire_after_days = 30;
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    buy(&mut s, 1, &c, 1_000, 0); // lot 1: 10 points, expires DAY0 + 30 days
    at(&mut s, DAY0 + DAY_MS);
    buy(&mut s, 1, &c, 2_000, 0); // lot 2: 20 points, expires a day later
    s.till(
        1,
        "",
        Op::RedeemPoints(pb::RedeemPoints {
            card: c.clone(),
            points: 15,
            reward: "cake".into(),
            ..Default::default()
        }),
    );
    // Lot 1 is spent whole, lot 2 keeps 15.
    at(&mut s, DAY0 + 30 * DAY_MS);
    s.top_up(1, &c, 100);
    assert_eq!((last(&s).points_expired, last(&s).points_after), (0, 15));
    at(&mut s, DAY0 + 31 * DAY_MS);
    s.top_up(1, &c, 100);
    assert_eq!((last(&s).points_expired, last(&s).points_after), (15, 0));
}

#[test]
fn points_pay_part_of_a_bill_then_a_partial_refund_returns_both_in_proportion() {
    let mut r = rules();
    r.points_per_unit = 10;
    r.points_redemption = Some(pb::PointsRedemption {
        points: 100,
        value_minor: 500,
    });
    let (mut s, c) = brand(r);
    buy(&mut s, 1, &c, 3_000, 0); // 300 points
                                  // A bill of 20.00: 200 points pay 10.00, the card 10.00, which earns 100.
    let p = buy(&mut s, 1, &c, 2_000, 200);
    assert_eq!(
        (
            p.points_out,
            p.points_value_minor,
            p.paid_out_minor,
            p.points_in
        ),
        (200, 1_000, 1_000, 100)
    );
    assert_eq!(p.points_after, 200);
    let pr = purchase_result(&p);
    assert_eq!((pr.points_spent, pr.points_value_minor), (200, 1_000));
    // The books: card value in purchase_minor, the points' part apart.
    assert_eq!(points_paid(&s), (4_000, 1_000));
    // Refund half the bill: 5.00 to the card, 100 points back, 50 of the
    // earned 100 taken back.
    let refund = |s: &mut Script, amount| {
        s.till(
            1,
            "",
            Op::Refund(pb::Refund {
                original_seq: p.seq,
                amount_minor: amount,
            }),
        );
        last(s)
    };
    let half = refund(&mut s, 1_000);
    assert_eq!(
        (
            half.paid_in_minor,
            half.points_value_minor,
            half.points_in,
            half.points_out
        ),
        (500, 500, 100, 50)
    );
    assert_eq!((half.points_after, half.remaining_minor), (250, 1_000));
    let rest = refund(&mut s, 1_000);
    assert_eq!(
        (rest.paid_in_minor, rest.points_in, rest.points_out),
        (500, 100, 50)
    );
    // Everything taken came back, nothing more: 300 points, 970.00.
    assert_eq!(
        (rest.points_after, rest.paid_balance_after_minor),
        (300, 97_000)
    );
    assert_eq!(points_paid(&s), (4_000, 0));
    let more = Op::Refund(pb::Refund {
        original_seq: p.seq,
        amount_minor: 1,
    });
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, more),
        E::RefundExceedsOriginal
    );
}

#[test]
fn points_payment_is_refused_unless_the_rules_and_the_card_allow_it() {
    let mut r = rules();
    let (mut s, c) = brand(r.clone());
    buy(&mut s, 1, &c, 10_000, 0); // 100 points
    let pay = |points| {
        Op::Purchase(pb::Purchase {
            card: c.clone(),
            amount_minor: 1_000,
            points,
            ..Default::default()
        })
    };
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, pay(100)),
        E::InvalidArgument
    );
    r.points_redemption = Some(pb::PointsRedemption {
        points: 50,
        value_minor: 600,
    });
    s.owner(Op::SetRules(pb::SetRules { rules: Some(r) }));
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, pay(70)),
        E::AmountOutOfRange
    );
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, pay(150)),
        E::InsufficientPoints
    );
    // 100 points are worth 12.00, more than the bill of 10.00.
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, pay(100)),
        E::AmountOutOfRange
    );
    let p = buy(&mut s, 1, &c, 1_000, 50);
    assert_eq!((p.points_value_minor, p.paid_out_minor), (600, 400));
}

#[test]
fn a_reversed_points_purchase_gives_the_points_back_with_their_expiry() {
    let mut r = rules();
    r.points_expire_after_days = 10;
    r.points_redemption = Some(pb::PointsRedemption {
        points: 10,
        value_minor: 100,
    });
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    buy(&mut s, 1, &c, 5_000, 0); // 50 points expiring DAY0 + 10 days
    let txn = s.till(
        1,
        "",
        Op::Purchase(pb::Purchase {
            card: c.clone(),
            amount_minor: 1_000,
            points: 30,
            ..Default::default()
        }),
    );
    assert_eq!(last(&s).points_after, 20 + 7);
    s.till(
        1,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: txn,
        }),
    );
    let rev = last(&s);
    assert_eq!(
        (rev.points_in, rev.points_out, rev.points_after),
        (30, 7, 50)
    );
    let card = &s.state.cards[&crate::card_number::parse_number(&c).unwrap().1];
    let lots = &card.loyalty.as_ref().expect("lots").lots;
    assert_eq!(lots.len(), 1);
    assert_eq!(
        (lots[0].expires_ms, lots[0].points),
        (DAY0 + 10 * DAY_MS, 50)
    );
}

#[test]
fn a_refund_whose_points_were_spent_since_cannot_be_reversed() {
    let mut r = rules();
    r.points_redemption = Some(pb::PointsRedemption {
        points: 10,
        value_minor: 100,
    });
    let (mut s, c) = brand(r);
    buy(&mut s, 1, &c, 5_000, 0); // 50 points
    let p = buy(&mut s, 1, &c, 1_000, 50); // 50 points pay 5.00
    let refund = s.till(
        1,
        "",
        Op::Refund(pb::Refund {
            original_seq: p.seq,
            amount_minor: 1_000,
        }),
    );
    assert_eq!(last(&s).points_in, 50, "the refund gave the points back");
    // The customer spends them again at once.
    let spent = buy(&mut s, 1, &c, 500, 50);
    assert_eq!(spent.points_out, 50);
    let before = s.state.cards[&crate::card_number::parse_number(&c).unwrap().1].clone();
    // Reversing the refund would take back only what is left, and the
    // purchase could then be refunded (and its points given) again.
    let reverse = Op::Reversal(pb::Reversal {
        original_txn_id: refund,
    });
    assert_eq!(
        s.refused(Principal::Terminal(1), 900, reverse),
        E::InsufficientPoints
    );
    let after = &s.state.cards[&crate::card_number::parse_number(&c).unwrap().1];
    assert_eq!(after, &before, "a refusal changes nothing");
}

#[test]
fn a_rolling_window_tier_falls_at_the_card_s_next_record() {
    let mut r = rules();
    r.tiers = vec![pb::TierRule {
        window_days: 7,
        ..tier("gold", 10_000, 2_000)
    }];
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    let up = buy(&mut s, 1, &c, 10_000, 0);
    assert_eq!(
        (up.tier_before.as_str(), up.tier_after.as_str()),
        ("member", "gold")
    );
    // Six days later the window still holds day 0: gold, at 2x.
    at(&mut s, DAY0 + 6 * DAY_MS);
    let still = buy(&mut s, 1, &c, 100, 0);
    assert_eq!((still.tier_after.as_str(), still.points_in), ("gold", 2));
    // On day 7 day 0 has left the window: the record names the fall.
    at(&mut s, DAY0 + 7 * DAY_MS);
    let down = buy(&mut s, 1, &c, 100, 0);
    assert_eq!(
        (
            down.tier_before.as_str(),
            down.tier_after.as_str(),
            down.points_in
        ),
        ("gold", "member", 1)
    );
}

#[test]
fn a_single_day_s_spend_upgrades_the_card_in_that_purchase() {
    let mut r = rules();
    r.tiers = vec![
        tier("member", 0, 1_000),
        pb::TierRule {
            min_day_spend_minor: 50_000,
            ..tier("vip", 0, 2_000)
        },
    ];
    let (mut s, c) = brand(r);
    at(&mut s, DAY0 + 1_000);
    assert_eq!(buy(&mut s, 1, &c, 30_000, 0).tier_after, "member");
    // The next day starts again from zero.
    at(&mut s, DAY0 + DAY_MS);
    assert_eq!(buy(&mut s, 1, &c, 30_000, 0).tier_after, "member");
    let up = buy(&mut s, 1, &c, 20_000, 0);
    let p = purchase_result(&up);
    assert_eq!((p.tier_before.as_str(), p.tier.as_str()), ("member", "vip"));
    // Earned at the tier it walked in with; later purchases at 2x, for good.
    assert_eq!(up.points_in, 200);
    at(&mut s, DAY0 + 40 * DAY_MS);
    assert_eq!(buy(&mut s, 1, &c, 1_000, 0).points_in, 20);
}

#[test]
fn the_reply_to_set_rules_and_to_a_purchase_carry_the_new_line() {
    let mut r = rules();
    r.promotion_line = "brand line".into();
    r.store_promotions = vec![pb::StorePromotion {
        store_id: 2,
        line: "store two".into(),
    }];
    let (mut s, c) = brand(r);
    let p = buy(&mut s, 2, &c, 100, 0);
    let line = super::rules::promotion_for(&s.state.rules, p.store_id, &p.tier_after);
    assert_eq!(line, "store two");
    let p = buy(&mut s, 1, &c, 100, 0);
    let line = super::rules::promotion_for(&s.state.rules, p.store_id, &p.tier_after);
    assert_eq!(line, "brand line");
}

#[test]
fn the_points_expiring_report_lists_the_next_n_days_as_of_its_time() {
    let mut r = rules();
    r.points_expire_after_days = 10;
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    buy(&mut s, 1, &c, 1_000, 0); // 10 points expiring DAY0 + 10 days
    at(&mut s, DAY0 + 5 * DAY_MS);
    buy(&mut s, 1, &c, 2_000, 0); // 20 points expiring DAY0 + 15 days
    let report = |now_ms: i64, days: u32| {
        let req = pb::GetReport {
            kind: "points-expiring".into(),
            idle_days: days,
            ..Default::default()
        };
        let out = super::reports::report(&s.state, &req, now_ms, 0, None).expect("a report");
        let cell = |row: &pb::ReportRow, i: usize| match &row.cells[i].value {
            Some(pb::report_cell::Value::Int(v)) => *v,
            other => panic!("{other:?}"),
        };
        let summary = &out.sections[1].rows[0];
        (cell(summary, 1), cell(summary, 2))
    };
    // As of day 9, the next 3 days hold the first lot only.
    assert_eq!(report(DAY0 + 9 * DAY_MS, 3), (1, 10));
    // The lot expires at DAY0 + 10 days exactly: one ms before it is in.
    assert_eq!(report(DAY0 + 10 * DAY_MS - 1, 1), (1, 10));
    assert_eq!(report(DAY0 + 10 * DAY_MS, 1), (0, 0));
    assert_eq!(report(DAY0 + 10 * DAY_MS, 30), (1, 20));
}

#[test]
fn an_inquiry_shows_the_points_of_its_time_and_the_next_to_expire() {
    let mut r = rules();
    r.points_expire_after_days = 1;
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    buy(&mut s, 1, &c, 1_000, 0); // 10 points expiring DAY0 + 1 day
    at(&mut s, DAY0 + 3_600_000);
    buy(&mut s, 1, &c, 2_000, 0); // 20 points an hour later
    let number = crate::card_number::parse_number(&c).unwrap().1;
    let view = |now_ms| s.state.card_view(number, &s.state.cards[&number], now_ms);
    let v = view(DAY0 + DAY_MS - 1);
    assert_eq!(
        (v.points, v.points_next_expiring, v.points_next_expiry_ms),
        (30, 10, DAY0 + DAY_MS)
    );
    // No record since, yet the first lot is gone as of the inquiry.
    let v = view(DAY0 + DAY_MS);
    assert_eq!(
        (v.points, v.points_next_expiring, v.points_next_expiry_ms),
        (20, 20, DAY0 + DAY_MS + 3_600_000)
    );
    let v = view(DAY0 + 2 * DAY_MS);
    assert_eq!((v.points, v.points_next_expiring), (0, 0));
}

/// Rules where one point pays one minor unit and a purchase earns one
/// point per minor unit, with refunds exact or as before `exact_refunds`.
fn points_are_money(exact_refunds: bool) -> pb::Rules {
    pb::Rules {
        points_per_unit: 100,
        points_redemption: Some(pb::PointsRedemption {
            points: 1,
            value_minor: 1,
        }),
        exact_refunds,
        ..rules()
    }
}

fn refund_op(seq: u64, amount_minor: i64) -> Op {
    Op::Refund(pb::Refund {
        original_seq: seq,
        amount_minor,
    })
}

#[test]
fn a_refund_whose_earned_points_paid_a_bill_since_is_refused() {
    let (mut s, c) = brand(points_are_money(true));
    let first = buy(&mut s, 1, &c, 10_000, 0);
    assert_eq!(first.points_in, 10_000);
    // The earned points pay the whole of a second bill.
    let second = buy(&mut s, 1, &c, 10_000, 10_000);
    assert_eq!(
        (second.points_value_minor, second.points_after),
        (10_000, 0)
    );
    let before = s.state.clone();
    let op = refund_op(first.seq, 10_000);
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, op),
        E::InsufficientPoints
    );
    assert_eq!(s.state, before, "a refusal changes nothing");
    // Half of the bill again on the card's points: that refund goes
    // through and takes back all 5,000 points it earned.
    buy(&mut s, 1, &c, 5_000, 0);
    let op = refund_op(first.seq, 5_000);
    s.till(1, "", op);
    let r = last(&s);
    assert_eq!(
        (r.paid_in_minor, r.points_out, r.points_after),
        (5_000, 5_000, 0)
    );
    assert_eq!(r.paid_balance_after_minor, 90_000);
}

/// The points a refund gives back keep their expiry: once past it they
/// cannot pay back earned points the card spent.
#[test]
fn expired_points_given_back_do_not_stand_in_for_spent_earned_ones() {
    let mut r = points_are_money(true);
    r.points_expire_after_days = 30;
    let (mut s, c) = brand(r);
    at(&mut s, DAY0);
    buy(&mut s, 1, &c, 9_000, 0); // 9,000 points
    let p = buy(&mut s, 1, &c, 10_000, 9_000); // earns 1,000
    assert_eq!((p.points_value_minor, p.points_in), (9_000, 1_000));
    buy(&mut s, 1, &c, 1_000, 1_000); // the earned 1,000 spent
    at(&mut s, DAY0 + 31 * DAY_MS);
    let before = s.state.clone();
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, refund_op(p.seq, 10_000)),
        E::InsufficientPoints
    );
    assert_eq!(s.state, before, "a refusal changes nothing");
}

#[test]
fn a_refund_under_rules_from_before_exact_refunds_replays_as_it_was_written() {
    let (mut s, c) = brand(points_are_money(false));
    let first = buy(&mut s, 1, &c, 10_000, 0);
    buy(&mut s, 1, &c, 10_000, 10_000);
    let op = refund_op(first.seq, 10_000);
    s.till(1, "", op);
    let r = last(&s);
    // What older builds wrote: the value back, no point taken back.
    assert_eq!(
        (r.paid_in_minor, r.points_out, r.points_after),
        (10_000, 0, 0)
    );
    assert_eq!(r.paid_balance_after_minor, 100_000);
}

/// A bill of 1.00 paid 0.09 by points and 0.91 by the card; refunds of
/// 0.11 and 0.01, the first reversed, then a refund of 0.01: the rounded
/// shares counted so far exceed the share of what stays refunded.
fn refund_after_a_reversed_refund(exact_refunds: bool) -> (Script, u64, pb::Record) {
    let (mut s, c) = brand(points_are_money(exact_refunds));
    buy(&mut s, 1, &c, 1_000, 0); // 1,000 points
    let p = buy(&mut s, 1, &c, 100, 9);
    assert_eq!((p.points_value_minor, p.paid_out_minor), (9, 91));
    let first = s.till(1, "", refund_op(p.seq, 11));
    assert_eq!(
        (last(&s).paid_in_minor, last(&s).points_value_minor),
        (11, 0)
    );
    s.till(1, "", refund_op(p.seq, 1));
    assert_eq!(
        (last(&s).paid_in_minor, last(&s).points_value_minor),
        (0, 1)
    );
    let reversal = Op::Reversal(pb::Reversal {
        original_txn_id: first,
    });
    s.till(1, "", reversal);
    s.till(1, "", refund_op(p.seq, 1));
    let r = last(&s);
    (s, p.seq, r)
}

/// Points given back follow the value they stand for (1 point = 0.01
/// here), refund by refund, also after reversed refunds whose rounding
/// stays counted; the last refund gives back exactly what is left.
#[test]
fn points_given_back_never_outrun_their_value() {
    let (mut s, c) = brand(points_are_money(true));
    buy(&mut s, 1, &c, 1_000, 0);
    let p = buy(&mut s, 1, &c, 100, 9);
    let given = |s: &Script| {
        let r = last(s);
        assert!(r.points_in <= r.points_value_minor, "{r:?}");
    };
    let mut small = Vec::new();
    for amount in [11, 1, 10, 1, 10] {
        let txn = s.till(1, "", refund_op(p.seq, amount));
        given(&s);
        if amount == 1 {
            small.push(txn);
        }
    }
    for txn in small {
        s.till(
            1,
            "",
            Op::Reversal(pb::Reversal {
                original_txn_id: txn,
            }),
        );
    }
    s.till(1, "", refund_op(p.seq, 1));
    given(&s);
    let kept = s.state.effects.get(p.seq).expect("kept");
    let left = 100 - kept.refunded_paid - kept.points().refunded_value;
    s.till(1, "", refund_op(p.seq, left));
    let kept = s.state.effects.get(p.seq).expect("kept");
    assert_eq!(
        (kept.points().refunded_value, kept.points().returned),
        (9, 9)
    );
}

#[test]
fn a_refund_after_a_reversed_refund_gives_back_no_more_than_each_form_paid() {
    let (mut s, seq, r) = refund_after_a_reversed_refund(true);
    // The points' 0.01 is already back: this refund is card value only.
    assert_eq!(
        (r.paid_in_minor, r.points_value_minor, r.points_in),
        (1, 0, 0)
    );
    assert_eq!(r.paid_balance_after_minor, 98_910);
    // The rest: exactly what each form has left, 0.08 and 0.90.
    s.till(1, "", refund_op(seq, 98));
    let rest = last(&s);
    assert_eq!((rest.paid_in_minor, rest.points_value_minor), (90, 8));
    assert_eq!(rest.paid_balance_after_minor, 99_000);
    let kept = s.state.effects.get(seq).expect("kept");
    assert_eq!((kept.refunded_paid, kept.points().refunded_value), (91, 9));
}

#[test]
fn a_negative_points_share_under_rules_from_before_exact_refunds_replays_as_written() {
    let (_, _, r) = refund_after_a_reversed_refund(false);
    // What older builds wrote: -0.01 of points, 0.02 to the card.
    assert_eq!((r.paid_in_minor, r.points_value_minor), (2, -1));
}
