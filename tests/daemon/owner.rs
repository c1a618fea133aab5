//! Owner operations and the split between owner and terminal roles.
use super::*;

// ---------------------------------------------------------------------------
// 10. Owner operations and roles.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn owner_opens_a_store_and_enrols_a_terminal_that_can_sign_on() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let r = ok(&mut o, 11, create_store("Harbour")).await;
    assert_eq!(
        (store_created(&r), seq(&r), receipt(&r).store_id),
        (3, FIRST_SEQ, 3)
    );
    assert_eq!(
        refused(&mut o, 12, create_store("")).await,
        E::InvalidArgument
    );

    let key = generate_key();
    assert_eq!(
        refused(&mut o, 12, enroll(42, &key, "nowhere")).await,
        E::StoreNotFound
    );
    let mut short = enroll(3, &key, "short key");
    if let Op::EnrollTerminal(e) = &mut short {
        e.public_key.truncate(31);
    }
    assert_eq!(refused(&mut o, 12, short).await, E::InvalidArgument);
    let r = ok(&mut o, 12, enroll(3, &key, "Harbour till 1")).await;
    let te = terminal_enrolled(&r);
    assert_eq!(
        (te.terminal_id, te.store_id, seq(&r)),
        (3, 3, FIRST_SEQ + 1)
    );
    // Keys already enrolled (a terminal's, the owner's) are refused.
    let t1_key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    assert_eq!(
        refused(&mut o, 13, enroll(3, &t1_key, "dup")).await,
        E::KeyInUse
    );
    let owner_key = read_key_file(&demo.owner_key_path()).unwrap();
    assert_eq!(
        refused(&mut o, 13, enroll(3, &owner_key, "dup")).await,
        E::KeyInUse
    );
    assert_eq!(
        refused(&mut o, 13, enroll(3, &key, "dup")).await,
        E::KeyInUse
    );

    let mut t = connect(d.addr, key).await;
    let s = &t.session;
    assert_eq!(s.role(), Role::Terminal);
    assert_eq!(
        (
            s.brand_id,
            s.store_id,
            s.store_name.as_str(),
            s.terminal_id,
            s.last_txn_id
        ),
        (1, 3, "Harbour", 3, 0)
    );
    let card = demo.manifest.cards[0].clone();
    let r = ok(&mut t, 1, purchase(&card, 500)).await;
    let rc = receipt(&r);
    assert_eq!((rc.seq, rc.store_id, rc.terminal_id), (FIRST_SEQ + 2, 3, 3));
    assert_money(card_of(&r), 9_500, 0, 5);
}

#[tokio::test]
async fn owner_issues_blocks_and_unblocks_cards() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let cards = &demo.manifest.cards;

    let new = card_number::generate(1);
    assert_eq!(
        refused(&mut o, 11, issue(&bad_check_digit(&new))).await,
        E::InvalidArgument
    );
    assert_eq!(
        refused(&mut o, 11, issue("8000011234")).await,
        E::InvalidArgument
    );
    assert_eq!(refused(&mut o, 11, issue(&cards[0])).await, E::CardExists);
    let r = ok(&mut o, 11, issue(&new)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    let v = card_of(&r);
    assert_eq!(
        (v.card.as_str(), v.status(), v.tier.as_str()),
        (new.as_str(), CardStatus::Active, "silver")
    );
    assert_money(v, 0, 0, 0);
    assert_eq!(refused(&mut o, 12, issue(&new)).await, E::CardExists);
    let r = ok(&mut t, 100, top_up(&new, 1_000)).await;
    assert_money(card_of(&r), 1_000, 0, 0);

    // Blocked: no money moves, but the card can still be looked up.
    let r = ok(&mut o, 12, set_blocked(&cards[0], true)).await;
    assert_eq!(card_of(&r).status(), CardStatus::Blocked);
    assert_eq!(
        refused(&mut t, 101, purchase(&cards[0], 100)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut t, 101, top_up(&cards[0], 100)).await,
        E::CardBlocked
    );
    let v = inquiry(&mut t, &cards[0]).await;
    assert_eq!(v.status(), CardStatus::Blocked);
    assert_money(&v, 10_000, 0, 0);
    assert_eq!(
        refused(&mut o, 13, set_blocked(&card_number::generate(1), true)).await,
        E::CardNotFound
    );

    let r = ok(&mut o, 13, set_blocked(&cards[0], false)).await;
    assert_eq!(card_of(&r).status(), CardStatus::Active);
    let r = ok(&mut t, 101, purchase(&cards[0], 100)).await;
    assert_money(card_of(&r), 9_900, 0, 1);
    assert_eq!(
        inquiry(&mut t, &cards[0]).await.status(),
        CardStatus::Active
    );
}

#[tokio::test]
async fn owner_replaces_a_card_and_its_value_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let old = demo.manifest.cards[3].clone(); // paid 500.00, bonus 50.00
    let r = ok(&mut t, 100, purchase(&old, 1_000)).await;
    assert_money(card_of(&r), 49_000, 5_000, 10);

    let new = card_number::generate(1);
    assert_eq!(
        refused(&mut o, 11, replace(&old, &demo.manifest.cards[0])).await,
        E::CardExists
    );
    assert_eq!(
        refused(&mut o, 11, replace(&old, &bad_check_digit(&new))).await,
        E::InvalidArgument
    );
    let r = ok(&mut o, 11, replace(&old, &new)).await;
    let v = card_of(&r);
    assert_eq!(
        (v.card.as_str(), v.status()),
        (new.as_str(), CardStatus::Active)
    );
    assert_money(v, 49_000, 5_000, 10);
    let v = inquiry(&mut t, &new).await;
    assert_money(&v, 49_000, 5_000, 10);
    assert_eq!((v.total_spend_minor, v.tier.as_str()), (1_000, "silver"));
    let v = inquiry(&mut t, &old).await;
    assert_eq!(v.status(), CardStatus::Replaced);
    assert_money(&v, 0, 0, 0);

    // The old number is dead for good.
    assert_eq!(
        refused(&mut t, 101, purchase(&old, 100)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut t, 101, top_up(&old, 100)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut o, 12, set_blocked(&old, false)).await,
        E::CardBlocked
    );
    assert_eq!(
        refused(&mut o, 12, replace(&old, &card_number::generate(1))).await,
        E::CardBlocked
    );
    assert_eq!(inquiry(&mut t, &old).await.status(), CardStatus::Replaced);
    // The new one spends paid value first, as before.
    let r = ok(&mut t, 101, purchase(&new, 50_000)).await;
    assert_money(card_of(&r), 0, 4_000, 510);
}

#[tokio::test]
async fn owner_rules_take_effect_at_once_in_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;
    let cards = &demo.manifest.cards;
    let r = ok(&mut t1, 100, purchase(&cards[0], 1_000)).await;
    assert_eq!(r.promotion_line, DEMO_PROMO);

    let rules = pb::Rules {
        bonus_tiers: vec![pb::BonusTier {
            min_load_minor: 10_000,
            fixed_bonus_minor: 1_234,
            bonus_bps: 0,
        }],
        points_per_unit: 2,
        tiers: vec![],
        promotion_line: "Double points week".into(),
        time_zone: String::new(),
        ..Default::default()
    };
    ok(
        &mut o,
        11,
        Op::SetRules(pb::SetRules { rules: Some(rules) }),
    )
    .await;

    let r = ok(&mut t1, 101, purchase(&cards[0], 1_000)).await;
    assert_eq!(r.promotion_line, "Double points week");
    assert_eq!(purchased(&r).points_earned, 20);
    assert_eq!(card_of(&r).tier, "member");
    let r = ok(&mut t2, 1, top_up(&cards[1], 10_000)).await;
    assert_eq!(r.promotion_line, "Double points week");
    assert_eq!(topped_up(&r).bonus_minor, 1_234);
    let r = ok(&mut t2, 2, top_up(&cards[1], 9_999)).await;
    assert_eq!(topped_up(&r).bonus_minor, 0);
    let r = ok(&mut t2, 3, top_up(&cards[1], 100_000)).await;
    assert_eq!(
        topped_up(&r).bonus_minor,
        1_234,
        "the demo 15% tier is gone"
    );
    assert_money(card_of(&r), 20_000 + 119_999, 2_468, 0);

    // Invalid rules are refused and the rules in force stay.
    let bad = pb::Rules {
        bonus_tiers: vec![
            pb::BonusTier {
                min_load_minor: 50_000,
                fixed_bonus_minor: 1,
                bonus_bps: 0,
            },
            pb::BonusTier {
                min_load_minor: 10_000,
                fixed_bonus_minor: 1,
                bonus_bps: 0,
            },
        ],
        points_per_unit: 1,
        tiers: vec![],
        promotion_line: "bad".into(),
        time_zone: String::new(),
        ..Default::default()
    };
    assert_eq!(
        refused(&mut o, 12, Op::SetRules(pb::SetRules { rules: Some(bad) })).await,
        E::InvalidArgument
    );
    assert_eq!(
        refused(&mut o, 12, Op::SetRules(pb::SetRules { rules: None })).await,
        E::InvalidArgument
    );
    let r = ok(&mut t1, 102, purchase(&cards[0], 1_000)).await;
    assert_eq!(r.promotion_line, "Double points week");
    assert_eq!(purchased(&r).points_earned, 20);
}

#[tokio::test]
async fn owner_and_terminal_operations_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let mut t = demo.terminal(d.addr, 0).await;
    let card = demo.manifest.cards[0].clone();

    // A terminal asking for owner operations.
    assert_eq!(
        refused(&mut t, 100, create_store("Rogue")).await,
        E::WrongRole
    );
    assert_eq!(
        refused(&mut t, 100, issue(&card_number::generate(1))).await,
        E::WrongRole
    );
    assert_eq!(
        refused(&mut t, 100, set_blocked(&card, true)).await,
        E::WrongRole
    );
    assert_eq!(
        refused(&mut t, 100, enroll(1, &generate_key(), "x")).await,
        E::WrongRole
    );
    let rules = Op::SetRules(pb::SetRules {
        rules: Some(cardd::demo::demo_rules()),
    });
    assert_eq!(refused(&mut t, 100, rules).await, E::WrongRole);
    // The owner asking for cashier operations.
    assert_eq!(
        refused(&mut o, 11, purchase(&card, 100)).await,
        E::WrongRole
    );
    assert_eq!(refused(&mut o, 11, top_up(&card, 100)).await, E::WrongRole);
    assert_eq!(refused(&mut o, 11, redeem(&card, 1)).await, E::WrongRole);
    assert_eq!(refused(&mut o, 11, close_shift(None)).await, E::WrongRole);
    assert_eq!(refused(&mut o, 11, reversal(1)).await, E::WrongRole);

    // Nothing happened.
    let v = inquiry(&mut t, &card).await;
    assert_eq!(v.status(), CardStatus::Active);
    assert_money(&v, 10_000, 0, 0);
    let r = ok(&mut t, 100, purchase(&card, 100)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    let r = ok(&mut o, 11, create_store("Legit")).await;
    assert_eq!((store_created(&r), seq(&r)), (3, FIRST_SEQ + 1));
}
