//! Issue 15 at the state machine: limits, expiry, corrections and key
//! rotation on a scripted brand (CNY, two decimals), each refusal checked
//! to leave the state exactly as it was (`Script::refused`).
use ed25519_dalek::{Signer as _, SigningKey};

use super::golden::{card, purchase_op, Script};
use super::{BrandState, Principal};
use crate::pb::{self, request::Op, ErrorCode as E};

const OWNER: Principal = Principal::Owner;
const TILL: Principal = Principal::Terminal(1);

/// One store with till 1, rules with the currency's default limits (the
/// MOFCOM figures for CNY) plus `extra`, and card 1 issued.
fn shop(extra: pb::Rules) -> (Script, String) {
    let mut s = Script::new();
    s.create_brand("Safe Tea");
    s.owner(Op::CreateStore(pb::CreateStore { name: "A".into() }));
    let pk = s.key(TILL).verifying_key().to_bytes();
    s.owner(Op::EnrollTerminal(pb::EnrollTerminal {
        store_id: 1,
        public_key: pk.to_vec(),
        label: "till".into(),
    }));
    s.owner(Op::SetRules(pb::SetRules {
        rules: Some(pb::Rules {
            points_per_unit: 1,
            currency_default_limits: true,
            ..extra
        }),
    }));
    let c = card(1);
    s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
    (s, c)
}

fn number(c: &str) -> u64 {
    crate::card_number::parse_number(c).expect("valid").1
}

fn load(c: &str, amount: i64) -> Op {
    Op::TopUp(pb::TopUp {
        card: c.into(),
        amount_minor: amount,
        ..Default::default()
    })
}

fn refusal(s: &mut Script, p: Principal, txn: u64, op: Op) -> (E, String) {
    let before = s.state.clone();
    let r = s.request(p, txn, "", op).expect_err("refused");
    assert_eq!(s.state, before, "a refusal changed the state");
    (r.code, r.message)
}

fn balance(s: &Script, c: &str) -> (i64, i64) {
    let card = &s.state.cards[&number(c)];
    (card.paid, card.bonus)
}

#[test]
fn an_anonymous_card_stops_at_1000_yuan_and_a_named_one_at_5000() {
    let (mut s, c) = shop(pb::Rules::default());
    s.top_up(1, &c, 100_000);
    let (code, why) = refusal(&mut s, TILL, 100, load(&c, 1));
    assert_eq!(code, E::LimitExceeded);
    assert!(why.contains("max_balance_anonymous_minor"), "{why}");
    assert_eq!(balance(&s, &c), (100_000, 0));
    // Part B's set-holder makes a card named; here the field is set directly.
    s.state.cards.get_mut(&number(&c)).unwrap().named = true;
    s.top_up(1, &c, 400_000);
    let (code, why) = refusal(&mut s, TILL, 101, load(&c, 1));
    assert_eq!(code, E::LimitExceeded);
    assert!(why.contains("max_balance_named_minor"), "{why}");
    assert_eq!(balance(&s, &c), (500_000, 0));
}

#[test]
fn the_bonus_counts_toward_the_limit_and_a_single_top_up_has_its_own() {
    let rules = pb::Rules {
        bonus_tiers: vec![pb::BonusTier {
            min_load_minor: 50_000,
            fixed_bonus_minor: 5_000,
            bonus_bps: 0,
        }],
        max_top_up_minor: 60_000,
        ..Default::default()
    };
    let (mut s, c) = shop(rules);
    s.top_up(1, &c, 50_000); // 500 + 50 bonus
    let (code, why) = refusal(&mut s, TILL, 100, load(&c, 45_001));
    assert!(why.contains("max_balance_anonymous_minor"), "{why}");
    assert_eq!(code, E::LimitExceeded);
    let (code, why) = refusal(&mut s, TILL, 101, load(&c, 60_001));
    assert_eq!(code, E::LimitExceeded);
    assert!(why.contains("max_top_up_minor"), "{why}");
}

#[test]
fn a_refund_may_take_a_card_over_a_limit_lowered_since() {
    let (mut s, c) = shop(pb::Rules::default());
    s.top_up(1, &c, 100_000);
    let sale = s.purchase(1, &c, 50_000, false);
    s.owner(Op::SetRules(pb::SetRules {
        rules: Some(pb::Rules {
            points_per_unit: 1,
            currency_default_limits: true,
            max_balance_anonymous_minor: 60_000,
            ..Default::default()
        }),
    }));
    s.till(
        1,
        "",
        Op::Refund(pb::Refund {
            original_seq: sale,
            amount_minor: 50_000,
        }),
    );
    assert_eq!(balance(&s, &c), (100_000, 0));
}

#[test]
fn the_daily_spend_limit_resets_at_midnight_in_the_brand_zone() {
    let rules = pb::Rules {
        time_zone: "Asia/Shanghai".into(),
        max_daily_spend_minor: 30_000,
        ..Default::default()
    };
    let (mut s, c) = shop(rules);
    // 2026-12-05 23:50 in Shanghai (15:50 UTC): 10 minutes before midnight.
    s.time_ms = 1_796_486_400_000 - 10 * 60_000;
    s.top_up(1, &c, 100_000);
    s.purchase(1, &c, 20_000, false);
    let (code, why) = refusal(&mut s, TILL, 100, purchase_op(&c, 10_001));
    assert_eq!(code, E::LimitExceeded);
    assert!(why.contains("max_daily_spend_minor"), "{why}");
    // Each request moves the script's clock 61 s: still the same day.
    s.purchase(1, &c, 10_000, false);
    assert_eq!(balance(&s, &c), (70_000, 0));
    // Past midnight in Shanghai (still 2026-12-05 in UTC): a new day.
    s.time_ms = 1_796_486_400_000;
    s.purchase(1, &c, 30_000, false);
    refusal(&mut s, TILL, 101, purchase_op(&c, 1));
    assert_eq!(balance(&s, &c), (40_000, 0));
}

#[test]
fn a_reversed_purchase_gives_its_daily_spend_back() {
    let rules = pb::Rules {
        max_daily_spend_minor: 30_000,
        ..Default::default()
    };
    let (mut s, c) = shop(rules);
    s.top_up(1, &c, 100_000);
    let txn = s.till(1, "", purchase_op(&c, 30_000));
    s.till(
        1,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: txn,
        }),
    );
    s.purchase(1, &c, 30_000, false);
    assert_eq!(balance(&s, &c), (70_000, 0));
}

#[test]
fn validity_is_at_least_three_years_and_an_expired_card_is_refused_until_extended() {
    let too_short = pb::Rules {
        card_validity_days: 1_095,
        ..Default::default()
    };
    let (mut s, _) = shop(pb::Rules::default());
    let (code, _) = refusal(
        &mut s,
        OWNER,
        900,
        Op::SetRules(pb::SetRules {
            rules: Some(too_short),
        }),
    );
    assert_eq!(code, E::InvalidArgument);
    let (mut s, _) = shop(pb::Rules {
        card_validity_days: 1_096,
        ..Default::default()
    });
    let c = card(2);
    s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
    let expires = s.state.cards[&number(&c)].expires_ms;
    assert_eq!(expires, s.time_ms + 1_096 * 86_400_000);
    s.top_up(1, &c, 10_000);
    s.time_ms = expires - 61_000; // the next request lands exactly on it
    let (code, _) = refusal(&mut s, TILL, 100, purchase_op(&c, 100));
    assert_eq!(code, E::CardExpired);
    let (code, _) = refusal(&mut s, TILL, 100, load(&c, 100));
    assert_eq!(code, E::CardExpired);
    let expiry = |ms| {
        Op::SetCardExpiry(pb::SetCardExpiry {
            card: c.clone(),
            expires_ms: ms,
        })
    };
    let (code, _) = refusal(&mut s, OWNER, 901, expiry(expires - 1));
    assert_eq!(code, E::InvalidArgument, "never shortened");
    s.owner(expiry(expires + 365 * 86_400_000));
    s.purchase(1, &c, 100, false);
    assert_eq!(balance(&s, &c), (9_900, 0));
}

/// The liability the books hold for every store of issue, paid + bonus.
fn books_liability(s: &Script) -> i64 {
    s.state
        .books
        .liability
        .values()
        .map(|v| v.paid + v.bonus)
        .sum()
}

fn adjust(c: &str, amount: i64, bonus: bool) -> Op {
    Op::AdjustCard(pb::AdjustCard {
        card: c.into(),
        amount_minor: amount,
        bonus,
        reason: "mis-keyed load".into(),
    })
}

#[test]
fn adjustments_and_a_close_card_move_the_liability_and_keep_money_conserved() {
    let (mut s, c) = shop(pb::Rules::default());
    s.top_up(1, &c, 50_000);
    s.owner(adjust(&c, -20_000, false));
    s.owner(adjust(&c, 3_000, true));
    assert_eq!(balance(&s, &c), (30_000, 3_000));
    assert_eq!(books_liability(&s), 33_000);
    let rec = s.records.last().unwrap();
    let rec = <pb::Record as prost::Message>::decode(rec.as_slice()).unwrap();
    assert_eq!(rec.kind(), pb::RecordKind::CardAdjusted);
    assert_eq!(
        (rec.reason.as_str(), rec.bonus_in_minor),
        ("mis-keyed load", 3_000)
    );
    s.owner(Op::CloseCard(pb::CloseCard {
        card: c.clone(),
        reason: "member left".into(),
    }));
    assert_eq!(balance(&s, &c), (0, 0));
    assert_eq!(books_liability(&s), 0);
    assert_eq!(s.state.liability(), (0, 0));
    let day = s.state.books.today.day;
    let book = &s.state.books.days[&day];
    let head_office = book.stores[&0];
    assert_eq!(head_office.adjustments, 2);
    assert_eq!(
        (
            head_office.adjusted_in_minor,
            head_office.adjusted_out_minor
        ),
        (3_000, 20_000)
    );
    assert_eq!(head_office.closed_cards, 1);
    assert_eq!(head_office.cashed_out_minor, 30_000);
    assert_eq!(head_office.forfeited_bonus_minor, 3_000);
    // The head office paid out the cash for value store 1 sold.
    assert_eq!(book.settlement[&(1, 0)].paid, 30_000);
    // A closed card takes nothing more and cannot be reopened.
    let (code, why) = refusal(&mut s, TILL, 100, load(&c, 100));
    assert_eq!((code, why.as_str()), (E::CardBlocked, "card is closed"));
    let unblock = Op::SetCardBlocked(pb::SetCardBlocked {
        card: c.clone(),
        blocked: false,
        reason: String::new(),
    });
    assert_eq!(refusal(&mut s, OWNER, 900, unblock).0, E::CardBlocked);
    assert_eq!(
        refusal(&mut s, OWNER, 901, adjust(&c, 1, false)).0,
        E::CardBlocked
    );
}

#[test]
fn an_adjustment_beyond_the_balance_or_without_a_reason_is_refused() {
    let (mut s, c) = shop(pb::Rules::default());
    s.top_up(1, &c, 10_000);
    assert_eq!(
        refusal(&mut s, OWNER, 900, adjust(&c, -10_001, false)).0,
        E::InsufficientFunds
    );
    assert_eq!(
        refusal(&mut s, OWNER, 900, adjust(&c, -1, true)).0,
        E::InsufficientFunds
    );
    assert_eq!(
        refusal(&mut s, OWNER, 900, adjust(&c, i64::MIN, false)).0,
        E::AmountOutOfRange
    );
    assert_eq!(
        refusal(&mut s, OWNER, 900, adjust(&c, 0, false)).0,
        E::AmountOutOfRange
    );
    let no_reason = Op::AdjustCard(pb::AdjustCard {
        card: c.clone(),
        amount_minor: 1,
        bonus: false,
        reason: " ".into(),
    });
    assert_eq!(refusal(&mut s, OWNER, 900, no_reason).0, E::InvalidArgument);
    // Over the anonymous card's limit, as a load would be.
    let (code, why) = refusal(&mut s, OWNER, 900, adjust(&c, 90_001, false));
    assert_eq!(code, E::LimitExceeded, "{why}");
    // Only the owner corrects.
    assert_eq!(
        refusal(&mut s, TILL, 900, adjust(&c, 1, false)).0,
        E::WrongRole
    );
    assert_eq!(balance(&s, &c), (10_000, 0));
}

#[test]
fn the_owner_voids_a_till_top_up_after_its_shift_closed() {
    let (mut s, c) = shop(pb::Rules::default());
    let txn = s.till(1, "", load(&c, 20_000));
    let load_seq = s.state.seq;
    s.top_up(1, &c, 5_000);
    s.till(
        1,
        "",
        Op::CloseShift(pb::CloseShift {
            terminal_totals: None,
        }),
    );
    // The till can no longer reverse it...
    let reverse = Op::Reversal(pb::Reversal {
        original_txn_id: txn,
    });
    assert_eq!(
        refusal(&mut s, TILL, 100, reverse.clone()).0,
        E::NotReversible
    );
    // ...the owner voids it, with a reason.
    let void = Op::VoidTopUp(pb::VoidTopUp {
        original_seq: load_seq,
        reason: "cashier keyed 200.00 for 20.00".into(),
    });
    s.owner(void.clone());
    assert_eq!(balance(&s, &c), (5_000, 0));
    assert_eq!(books_liability(&s), 5_000);
    let day = s.state.books.today.day;
    assert_eq!(
        s.state.books.days[&day].stores[&0].voided_top_up_minor,
        20_000
    );
    assert_eq!(refusal(&mut s, OWNER, 900, void).0, E::AlreadyReversed);
    let not_a_load = Op::VoidTopUp(pb::VoidTopUp {
        original_seq: 1,
        reason: "r".into(),
    });
    assert_eq!(
        refusal(&mut s, OWNER, 901, not_a_load).0,
        E::OriginalNotFound
    );
}

#[test]
fn a_void_of_spent_value_is_refused() {
    let (mut s, c) = shop(pb::Rules::default());
    s.top_up(1, &c, 20_000);
    let load_seq = s.state.seq;
    s.purchase(1, &c, 15_000, false);
    let void = Op::VoidTopUp(pb::VoidTopUp {
        original_seq: load_seq,
        reason: "r".into(),
    });
    assert_eq!(refusal(&mut s, OWNER, 900, void).0, E::InsufficientFunds);
}

fn rotate_owner(s: &Script, new: &SigningKey, prover: &SigningKey) -> Op {
    let pk = new.verifying_key().to_bytes();
    let proof = prover.sign(&crate::crypto::owner_key_message(s.state.brand_id, &pk));
    Op::RotateOwnerKey(pb::RotateOwnerKey {
        new_public_key: pk.to_vec(),
        new_key_signature: proof.to_bytes().to_vec(),
    })
}

#[test]
fn an_owner_key_rotation_retires_the_old_key_at_once() {
    let (mut s, c) = shop(pb::Rules::default());
    let old = s.key(OWNER).clone();
    let new = SigningKey::from_bytes(&[77; 32]);
    // A proof made by another key than the new one: refused.
    let bad = rotate_owner(&s, &new, &old);
    assert_eq!(refusal(&mut s, OWNER, 900, bad).0, E::BadSignature);
    // A key already in use (the till's): refused.
    let till = s.key(TILL).clone();
    let taken = rotate_owner(&s, &till, &till);
    assert_eq!(refusal(&mut s, OWNER, 900, taken).0, E::KeyInUse);
    // A rotation signed by the wrong key (here a stranger posing as the
    // owner): refused, nothing written.
    s.set_key(OWNER, SigningKey::from_bytes(&[78; 32]));
    let op = rotate_owner(&s, &new, &new);
    assert_eq!(refusal(&mut s, OWNER, 900, op.clone()).0, E::UnknownKey);
    s.set_key(OWNER, old.clone());
    s.owner(op);
    assert_eq!(s.state.owner_key, new.verifying_key().to_bytes());
    // The old key signs nothing any more; the new one does.
    let issue = Op::IssueCard(pb::IssueCard { card: card(3) });
    assert_eq!(refusal(&mut s, OWNER, 901, issue.clone()).0, E::UnknownKey);
    s.set_key(OWNER, new);
    s.owner(issue);
    s.owner(adjust(&c, 100, false));
    replays_from_the_first_server_key(&s);
}

#[test]
fn a_terminal_is_rekeyed_under_its_id_and_keeps_its_txn_ids() {
    let (mut s, c) = shop(pb::Rules::default());
    s.top_up(1, &c, 1_000);
    let new = SigningKey::from_bytes(&[79; 32]);
    let rekey = Op::RekeyTerminal(pb::RekeyTerminal {
        terminal_id: 1,
        new_public_key: new.verifying_key().to_bytes().to_vec(),
    });
    s.owner(rekey.clone());
    assert_eq!(refusal(&mut s, OWNER, 900, rekey).0, E::KeyInUse);
    assert_eq!(
        refusal(&mut s, TILL, 50, purchase_op(&c, 100)).0,
        E::UnknownKey
    );
    s.set_key(TILL, new);
    // The txn id already used under the old key is still a retry, not new.
    assert!(matches!(
        s.request(TILL, 1, "", load(&c, 1_000)),
        Ok(super::Outcome::Seen { .. })
    ));
    s.purchase(1, &c, 100, false);
    assert_eq!(s.state.terminals[&1].last_txn_id, 2);
    replays_from_the_first_server_key(&s);
}

#[test]
fn a_server_key_rotation_is_endorsed_by_the_old_key_in_the_chain() {
    let (mut s, c) = shop(pb::Rules::default());
    let first = s.key(Principal::Server).verifying_key().to_bytes();
    let new = SigningKey::from_bytes(&[80; 32]);
    let rotate = |k: &SigningKey| {
        Op::RotateServerKey(pb::RotateServerKey {
            new_public_key: k.verifying_key().to_bytes().to_vec(),
        })
    };
    // Only the server rotates its key.
    assert_eq!(refusal(&mut s, OWNER, 900, rotate(&new)).0, E::WrongRole);
    s.send(Principal::Server, 2, "", rotate(&new));
    assert_eq!(s.state.server_key, new.verifying_key().to_bytes());
    // The old key can no longer sign for the server; the new one can.
    let newer = SigningKey::from_bytes(&[81; 32]);
    assert_eq!(
        refusal(&mut s, Principal::Server, 3, rotate(&newer)).0,
        E::UnknownKey
    );
    s.set_key(Principal::Server, new);
    s.send(Principal::Server, 3, "", rotate(&newer));
    s.top_up(1, &c, 100);
    let replayed = replays_from_the_first_server_key(&s);
    assert_eq!(replayed.server_key, newer.verifying_key().to_bytes());
    assert_ne!(replayed.server_key, first);
}

/// Replays the script's records trusting only the first server key, and
/// demands the same state.
fn replays_from_the_first_server_key(s: &Script) -> BrandState {
    let record = <pb::Record as prost::Message>::decode(s.records[0].as_slice()).unwrap();
    let first: [u8; 32] = record.signer_public_key.as_slice().try_into().unwrap();
    let mut replayed = BrandState::new(s.state.brand_id);
    for (i, bytes) in s.records.iter().enumerate() {
        let seq = u64::try_from(i + 1).unwrap();
        crate::replay::replay_record(&mut replayed, seq, bytes, &first).expect("replays");
    }
    assert_eq!(replayed, s.state);
    replayed
}

#[test]
fn every_correction_replays_byte_for_byte() {
    let (mut s, c) = shop(pb::Rules {
        card_validity_days: 2_000,
        ..Default::default()
    });
    s.top_up(1, &c, 30_000);
    let seq = s.state.seq;
    s.owner(Op::VoidTopUp(pb::VoidTopUp {
        original_seq: seq,
        reason: "r".into(),
    }));
    s.top_up(1, &c, 30_000);
    s.owner(adjust(&c, -1_000, false));
    let expires = s.state.cards[&number(&c)].expires_ms;
    s.owner(Op::SetCardExpiry(pb::SetCardExpiry {
        card: c.clone(),
        expires_ms: expires + 1,
    }));
    s.owner(Op::CloseCard(pb::CloseCard {
        card: c,
        reason: "r".into(),
    }));
    replays_from_the_first_server_key(&s);
}
