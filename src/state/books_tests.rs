//! The books on a scripted three-store ledger, against figures computed by
//! hand: lots, settlement, liability, tallies, and their replay.
use super::books::Value;
use super::golden::{card, purchase_op, Script};
use super::lots::Lot;
use super::{BrandState, Principal};
use crate::pb::{self, request::Op};

const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;

/// Stores A, B, C with tills 1, 2, 3; a bonus of 1,000 on loads of 10,000.
fn three_stores() -> Script {
    let mut s = Script::new();
    s.create_brand("Three Shops");
    for (name, till) in [("A", 1), ("B", 2), ("C", 3)] {
        s.owner(Op::CreateStore(pb::CreateStore { name: name.into() }));
        let pk = s.key(Principal::Terminal(till)).verifying_key().to_bytes();
        s.owner(Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: till,
            public_key: pk.to_vec(),
            label: format!("till {name}"),
        }));
    }
    s.owner(Op::SetRules(pb::SetRules {
        rules: Some(pb::Rules {
            bonus_tiers: vec![pb::BonusTier {
                min_load_minor: 10_000,
                fixed_bonus_minor: 1_000,
                bonus_bps: 0,
            }],
            points_per_unit: 1,
            time_zone: "Asia/Shanghai".into(),
            ..Default::default()
        }),
    }));
    s
}

fn number(c: &str) -> u64 {
    crate::card_number::parse_number(c).expect("valid").1
}

/// The script of the issue: loaded at A (and by head office), spent at B
/// and C, a refund at B, a replacement, a reversal at C.
fn scripted() -> (Script, String) {
    let mut s = three_stores();
    let (x, y) = (card(1), card(2));
    s.owner(Op::IssueCard(pb::IssueCard { card: x.clone() }));
    s.top_up(1, &x, 10_000); // lot A: 10,000 paid + 1,000 bonus
    s.owner(Op::TopUp(pb::TopUp {
        card: x.clone(),
        amount_minor: 2_000,
        channel: pb::Channel::HeadOffice as u32,
        ..Default::default()
    })); // lot 0: 2,000 paid
    let at_b = s.purchase(2, &x, 4_000, false); // A owes B 4,000
    s.purchase(3, &x, 7_000, false); // A owes C 6,000, head office owes C 1,000
    s.till(
        2,
        "",
        Op::Refund(pb::Refund {
            original_seq: at_b,
            amount_minor: 1_500,
        }),
    ); // back to lot A: B's claim on A falls to 2,500
    s.owner(Op::ReplaceCard(pb::ReplaceCard {
        old_card: x,
        new_card: y.clone(),
    }));
    let txn = s.till(3, "", purchase_op(&y, 500));
    s.till(
        3,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: txn,
        }),
    );
    (s, y)
}

fn v(paid: i64, bonus: i64) -> Value {
    Value { paid, bonus }
}

#[test]
fn lots_follow_the_value_across_stores() {
    let (s, y) = scripted();
    let held = &s.state.cards[&number(&y)];
    assert_eq!((held.paid, held.bonus), (2_500, 1_000));
    let lots = [
        Lot {
            store: A,
            paid: 1_500,
            bonus: 1_000,
        },
        Lot {
            store: 0,
            paid: 1_000,
            bonus: 0,
        },
    ];
    assert_eq!(held.lots.as_slice(), &lots);
    assert!(s.state.cards[&number(&card(1))].lots.as_slice().is_empty());
}

#[test]
fn settlement_nets_to_zero_and_matches_the_hand_figures() {
    let (s, _) = scripted();
    let book = &s.state.books.days[&s.state.books.today.day];
    let pairs: Vec<_> = book.settlement.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        pairs,
        vec![
            ((0, C), v(1_000, 0)),
            ((A, B), v(2_500, 0)),
            ((A, C), v(6_000, 0))
        ]
    );
    let mut net = std::collections::BTreeMap::<u32, i64>::new();
    for ((from, to), owed) in &book.settlement {
        *net.entry(*from).or_default() -= owed.paid + owed.bonus;
        *net.entry(*to).or_default() += owed.paid + owed.bonus;
    }
    assert_eq!(net.values().sum::<i64>(), 0);
    assert_eq!(net[&A], -8_500);
}

#[test]
fn liability_equals_the_sum_of_balances() {
    let (s, _) = scripted();
    let l = &s.state.books.liability;
    assert_eq!(l[&A], v(1_500, 1_000));
    assert_eq!(l[&0], v(1_000, 0));
    let total: (i64, i64) = l
        .values()
        .fold((0, 0), |t, x| (t.0 + x.paid, t.1 + x.bonus));
    let cards = s.state.liability();
    assert_eq!((i128::from(total.0), i128::from(total.1)), cards);
    // The day's changes add up to the same (the brand began today).
    let book = &s.state.books.days[&s.state.books.today.day];
    assert_eq!(book.liability_change, *l);
}

#[test]
fn tallies_count_each_kind_where_it_happened() {
    let (s, _) = scripted();
    let book = &s.state.books.days[&s.state.books.today.day];
    let (a, b, c) = (&book.stores[&A], &book.stores[&B], &book.stores[&C]);
    assert_eq!(
        (a.top_ups, a.top_up_paid_minor, a.top_up_bonus_minor),
        (1, 10_000, 1_000)
    );
    assert_eq!(
        (b.purchases, b.purchase_minor, b.refunds, b.refund_minor),
        (1, 4_000, 1, 1_500)
    );
    assert_eq!(b.net_sales_minor(), 2_500);
    assert_eq!((c.purchases, c.purchase_minor, c.reversals), (2, 7_500, 1));
    assert_eq!(
        (c.reversed_purchase_minor, c.net_sales_minor()),
        (500, 7_000)
    );
    assert_eq!(book.stores[&0].top_up_paid_minor, 2_000);
    assert_eq!(book.terminals[&3].purchases, 2);
    // Visits: one per card per brand day (the first purchase, at B); the
    // replacement card kept the day of its predecessor's visit.
    assert_eq!((b.visits, c.visits), (1, 0));
}

#[test]
fn replay_rebuilds_the_same_books() {
    let (s, _) = scripted();
    let server = s.key(Principal::Server).verifying_key().to_bytes();
    let mut replayed = BrandState::new(s.state.brand_id);
    for (i, bytes) in s.records.iter().enumerate() {
        let seq = u64::try_from(i + 1).unwrap();
        crate::replay::replay_record(&mut replayed, seq, bytes, &server).expect("replays");
    }
    assert_eq!(replayed.books, s.state.books);
    assert_eq!(replayed, s.state);
}

#[test]
fn a_refused_load_from_a_seventeenth_store_changes_nothing() {
    let mut s = three_stores();
    let x = card(1);
    s.owner(Op::IssueCard(pb::IssueCard { card: x.clone() }));
    s.top_up(1, &x, 100);
    let mut state = s.state.clone();
    let c = state.cards.get_mut(&number(&x)).unwrap();
    for store in 10..(10 + crate::limits::MAX_LOTS_PER_CARD as u32 - 1) {
        c.lots.add(store, 1, 0).unwrap();
        c.paid += 1;
    }
    s.state = state;
    let load = Op::TopUp(pb::TopUp {
        card: x,
        amount_minor: 5,
        ..Default::default()
    });
    assert_eq!(
        s.refused(Principal::Terminal(2), 50, load),
        pb::ErrorCode::LimitExceeded
    );
}

fn ask(s: &mut Script, r: pb::GetReport) -> Result<pb::Report, pb::ErrorCode> {
    match s.request(Principal::Owner, 0, "", Op::Report(r)) {
        Ok(super::Outcome::Answer(reply)) => Ok(reply.report.expect("a report")),
        Ok(other) => panic!("a report answered {other:?}"),
        Err(refusal) => Err(refusal.code),
    }
}

fn rows(section: &pb::ReportSection) -> Vec<Vec<String>> {
    use pb::report_cell::Value as Cell;
    let cell = |c: &pb::ReportCell| match &c.value {
        Some(Cell::Int(i)) => i.to_string(),
        Some(Cell::Text(t)) => t.clone(),
        None => String::new(),
    };
    section
        .rows
        .iter()
        .map(|r| r.cells.iter().map(cell).collect())
        .collect()
}

fn strs(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

#[test]
fn the_reports_answer_the_hand_figures() {
    let (mut s, _) = scripted();
    let today = super::books::day_text(s.state.books.today.day);
    let settle = ask(
        &mut s,
        pb::GetReport {
            kind: "settlement".into(),
            from: today.clone(),
            to: today.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        rows(&settle.sections[0]),
        strs(&[
            &["0", "3", "1000", "0", "1000"],
            &["1", "2", "2500", "0", "2500"],
            &["1", "3", "6000", "0", "6000"],
        ])
    );
    assert_eq!(
        rows(&settle.sections[1]),
        strs(&[
            &["0", "-1000", "0", "-1000"],
            &["1", "-8500", "0", "-8500"],
            &["2", "2500", "0", "2500"],
            &["3", "7000", "0", "7000"],
        ])
    );
    let liability = ask(
        &mut s,
        pb::GetReport {
            kind: "liability".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        rows(&liability.sections[0]),
        strs(&[
            &["0", "1000", "0", "1000", "1", "1000"],
            &["1", "1500", "1000", "2500", "1", "2500"],
        ])
    );
    assert_eq!(
        rows(&liability.sections[1])[0],
        strs(&[&["0-30", "1", "2500", "1000", "3500"]])[0]
    );
    let sales = ask(
        &mut s,
        pb::GetReport {
            kind: "sales".into(),
            store_id: Some(C),
            ..Default::default()
        },
    )
    .unwrap();
    // store C: 2 purchases of 7,500, one reversed (500): net 7,000.
    let c = &rows(&sales.sections[0])[0];
    assert_eq!(
        (c[0].as_str(), c[1].as_str(), c[2].as_str(), c[11].as_str()),
        ("3", "2", "7500", "7000")
    );
}

#[test]
fn bad_report_requests_are_refused_and_change_nothing() {
    let (mut s, _) = scripted();
    let before = s.state.clone();
    let asks = [
        pb::GetReport {
            kind: "profits".into(),
            ..Default::default()
        },
        pb::GetReport {
            kind: "sales".into(),
            from: "2026-02-02".into(),
            to: "2026-02-01".into(),
            ..Default::default()
        },
        pb::GetReport {
            kind: "sales".into(),
            from: "2020-01-01".into(),
            ..Default::default()
        },
        pb::GetReport {
            kind: "settlement".into(),
            ..Default::default()
        },
        pb::GetReport {
            kind: "sales".into(),
            by: "week".into(),
            ..Default::default()
        },
    ];
    for a in asks {
        assert_eq!(ask(&mut s, a), Err(pb::ErrorCode::InvalidArgument));
    }
    let unknown_store = pb::GetReport {
        kind: "sales".into(),
        store_id: Some(99),
        ..Default::default()
    };
    assert_eq!(
        ask(&mut s, unknown_store),
        Err(pb::ErrorCode::StoreNotFound)
    );
    let till = Op::Report(pb::GetReport {
        kind: "sales".into(),
        ..Default::default()
    });
    assert_eq!(
        s.refused(Principal::Terminal(1), 0, till),
        pb::ErrorCode::WrongRole
    );
    assert_eq!(s.state, before);
}

#[test]
fn dormant_daily_and_rfm_follow_the_visits() {
    const DAY: i64 = 86_400_000;
    let mut s = three_stores();
    let cards: Vec<String> = (1..=5).map(card).collect();
    for (i, c) in cards.iter().enumerate() {
        s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
        s.top_up(1, c, 1_000 * (i as i64 + 1));
    }
    // Card 1 visits once, then nobody for 100 days; card 5 visits on
    // three days, the last of them today; cards 2-4 never visit.
    s.purchase(2, &cards[0], 100, false);
    s.time_ms += 100 * DAY;
    for _ in 0..3 {
        s.purchase(3, &cards[4], 500, false);
        s.time_ms += DAY;
    }
    s.time_ms -= DAY;
    let dormant = ask(
        &mut s,
        pb::GetReport {
            kind: "dormant".into(),
            idle_days: 90,
            ..Default::default()
        },
    )
    .unwrap();
    let found: Vec<Vec<String>> = rows(&dormant.sections[0]);
    // Cards 2-4 were loaded 103 days ago and never visited; card 1's
    // visit is 102 days old. Largest balance first.
    let listed: Vec<&str> = found.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(listed, vec![&cards[3], &cards[2], &cards[1], &cards[0]]);
    assert_eq!((found[3][1].as_str(), found[3][6].as_str()), ("900", "102"));
    assert_eq!(rows(&dormant.sections[1]), strs(&[&["90", "4", "9900"]]));
    // Daily for today at store 3 against yesterday and a week before.
    let today = super::books::day_text(s.state.books.today.day);
    let daily = ask(
        &mut s,
        pb::GetReport {
            kind: "daily".into(),
            date: today,
            ..Default::default()
        },
    )
    .unwrap();
    let d = rows(&daily.sections[0]);
    assert_eq!(
        d,
        strs(&[&["3", "500", "500", "0", "1", "1", "0", "0", "1"]])
    );
    // RFM over the two cards that visited.
    let rfm = ask(
        &mut s,
        pb::GetReport {
            kind: "rfm".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let seg = rows(&rfm.sections[0]);
    assert_eq!(
        seg,
        strs(&[
            &["hibernating", "1", "900", "100"],
            &["needs attention", "1", "3500", "1500"]
        ])
    );
}

/// The brand of `three_stores` with an auditor key (id 1) and a store
/// manager key of store B (id 2).
fn with_read_keys() -> Script {
    let mut s = three_stores();
    for (key, role, store) in [
        ([31u8; 32], pb::KeyRole::Auditor, 0),
        ([32u8; 32], pb::KeyRole::StoreManager, B),
    ] {
        let pk = ed25519_dalek::SigningKey::from_bytes(&key)
            .verifying_key()
            .to_bytes();
        s.owner(Op::AddKey(pb::AddKey {
            public_key: pk.to_vec(),
            role: role as u32,
            store_id: store,
            label: String::new(),
        }));
    }
    s
}

#[test]
fn read_only_keys_read_reports_and_change_nothing() {
    let mut s = with_read_keys();
    let auditor = Principal::Auditor(1);
    let manager = Principal::StoreManager(2, B);
    let sales = |store: Option<u32>| {
        Op::Report(pb::GetReport {
            kind: "sales".into(),
            store_id: store,
            ..Default::default()
        })
    };
    assert!(matches!(
        s.request(auditor, 0, "", sales(None)),
        Ok(super::Outcome::Answer(_))
    ));
    assert!(matches!(
        s.request(manager, 0, "", sales(Some(B))),
        Ok(super::Outcome::Answer(_))
    ));
    let x = card(1);
    let writes = [
        Op::IssueCard(pb::IssueCard { card: x.clone() }),
        purchase_op(&x, 1),
        Op::Inquiry(pb::Inquiry { card: x.clone() }),
    ];
    for op in writes {
        assert_eq!(s.refused(auditor, 9, op.clone()), pb::ErrorCode::WrongRole);
        assert_eq!(s.refused(manager, 9, op), pb::ErrorCode::WrongRole);
    }
    // A store manager reads its own store only, and no brand-wide report.
    assert_eq!(
        s.refused(manager, 0, sales(Some(A))),
        pb::ErrorCode::WrongRole
    );
    let rfm = Op::Report(pb::GetReport {
        kind: "rfm".into(),
        ..Default::default()
    });
    assert_eq!(s.refused(manager, 0, rfm), pb::ErrorCode::WrongRole);
    // Removed: every request refused.
    let pk = ed25519_dalek::SigningKey::from_bytes(&[31; 32])
        .verifying_key()
        .to_bytes();
    s.owner(Op::RemoveKey(pb::RemoveKey {
        public_key: pk.to_vec(),
    }));
    assert_eq!(
        s.refused(auditor, 0, sales(None)),
        pb::ErrorCode::UnknownKey
    );
}

/// A card loaded 100 at A, then 50 at B, spends all 150 at C; C refunds
/// 30 (back to B), 30 (20 to B, 10 to A), reverses the first refund, then
/// refunds 30 and 90. Returns the card's lots.
fn refunds_around_a_reversed_one(exact_refunds: bool) -> (Script, Vec<Lot>) {
    let mut s = three_stores();
    if exact_refunds {
        let mut rules = s.state.rules.clone();
        rules.exact_refunds = true;
        s.owner(Op::SetRules(pb::SetRules { rules: Some(rules) }));
    }
    let x = card(1);
    s.owner(Op::IssueCard(pb::IssueCard { card: x.clone() }));
    s.top_up(1, &x, 100);
    s.top_up(2, &x, 50);
    let bought = s.purchase(3, &x, 150, false);
    let refund = |s: &mut Script, amount_minor| {
        s.till(
            3,
            "",
            Op::Refund(pb::Refund {
                original_seq: bought,
                amount_minor,
            }),
        )
    };
    let first = refund(&mut s, 30);
    refund(&mut s, 30);
    s.till(
        3,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: first,
        }),
    );
    refund(&mut s, 30);
    refund(&mut s, 90);
    let lots = s.state.cards[&number(&x)].lots.as_slice().to_vec();
    (s, lots)
}

#[test]
fn refunds_after_a_reversed_refund_give_each_store_back_exactly_what_it_lost() {
    let (s, lots) = refunds_around_a_reversed_one(true);
    let lot = |store, paid| Lot {
        store,
        paid,
        bonus: 0,
    };
    // Everything came back, each store's value to its own lot: 30 to B,
    // then A's 90 (B's 20 and A's 10 were already back).
    assert_eq!(lots, [lot(B, 50), lot(A, 100)]);
    let liability = &s.state.books.liability;
    assert_eq!((liability[&A], liability[&B]), (v(100, 0), v(50, 0)));
    let book = &s.state.books.days[&s.state.books.today.day];
    assert!(book.settlement.is_empty(), "{:?}", book.settlement);
}

#[test]
fn refunds_under_rules_from_before_exact_refunds_return_lots_as_they_were_written() {
    let (_, lots) = refunds_around_a_reversed_one(false);
    let lot = |store, paid| Lot {
        store,
        paid,
        bonus: 0,
    };
    // What older builds booked (A got 110 back of the 100 taken from it);
    // the records themselves carry no lots, so only the books differ.
    assert_eq!(lots, [lot(B, 40), lot(A, 110)]);
}

/// Ten cards with the same recency, frequency and spend, different
/// balances: their RFM ranks, and so the segments' balances, rest on the
/// tie-break alone.
fn ten_tied_cards() -> Script {
    let mut s = three_stores();
    for i in 1..=10 {
        let c = card(i);
        s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
        s.top_up(1, &c, 1_000 + i as i64);
        s.purchase(1, &c, 100, false);
    }
    s
}

#[test]
fn rfm_ranks_ties_by_card_number_whatever_the_map_order() {
    let report = |s: &mut Script| {
        let rfm = pb::GetReport {
            kind: "rfm".into(),
            ..Default::default()
        };
        rows(&ask(s, rfm).unwrap().sections[0])
    };
    // Scores 1,1,2,2,3,3,4,4,5,5 by card number: cards 1-4 hibernate,
    // 5-6 need attention, 7-10 are champions (balance 900 + the card's
    // number each).
    let expected = strs(&[
        &["champions", "4", "3634", "400"],
        &["hibernating", "4", "3610", "400"],
        &["needs attention", "2", "1811", "200"],
    ]);
    // Two states from the same requests: each card map has its own hash
    // seed, so their iteration orders differ.
    for _ in 0..2 {
        assert_eq!(report(&mut ten_tied_cards()), expected);
    }
}

/// A card loaded 100 at A and 50 at B spends all 150 at C; then, as if
/// loaded at 16 other stores since, it holds 16 other lots.
fn a_purchase_then_a_full_card() -> (Script, String) {
    let mut s = three_stores();
    let x = card(1);
    s.owner(Op::IssueCard(pb::IssueCard { card: x.clone() }));
    s.top_up(1, &x, 100);
    s.top_up(2, &x, 50);
    s.till(3, "", purchase_op(&x, 150));
    let mut state = s.state.clone();
    let c = state.cards.get_mut(&number(&x)).unwrap();
    for store in 10..(10 + crate::limits::MAX_LOTS_PER_CARD as u32) {
        c.lots.add(store, 1, 0).unwrap();
        c.paid += 1;
    }
    s.state = state;
    (s, x)
}

#[test]
fn a_refund_and_a_reversal_give_value_back_to_a_card_at_the_lot_bound() {
    let (mut s, x) = a_purchase_then_a_full_card();
    let bought = s.state.seq;
    s.till(
        3,
        "",
        Op::Refund(pb::Refund {
            original_seq: bought,
            amount_minor: 30,
        }),
    );
    let refund = s.last_record.clone().expect("written");
    assert_eq!(
        (refund.paid_in_minor, refund.paid_balance_after_minor),
        (30, 46)
    );
    let held = s.state.cards[&number(&x)].lots.as_slice().to_vec();
    let lot = |store, paid| Lot {
        store,
        paid,
        bonus: 0,
    };
    assert_eq!((held.len(), held[16]), (17, lot(B, 30)));
    // A second purchase, reversed: its 46 go back to all 17 lots.
    let second = s.till(3, "", purchase_op(&x, 46));
    s.till(
        3,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: second,
        }),
    );
    let reversal = s.last_record.clone().expect("written");
    assert_eq!(
        (reversal.paid_in_minor, reversal.paid_balance_after_minor),
        (46, 46)
    );
    assert_eq!(s.state.cards[&number(&x)].lots.as_slice(), &held[..]);
    // Loads from yet another store stay refused while over the bound.
    let load = Op::TopUp(pb::TopUp {
        card: x,
        amount_minor: 5,
        ..Default::default()
    });
    assert_eq!(
        s.refused(Principal::Terminal(1), 90, load),
        pb::ErrorCode::LimitExceeded
    );
}
