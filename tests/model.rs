//! Model test of the state machine: random operation sequences run against
//! `apply` and against a deliberately simple model of card balances. After
//! every step: the two agree on acceptance and on every balance, no balance
//! is negative, money is conserved (loads - spends + refunds +/- reversals =
//! sum of balances), and at the end the state rebuilt from the records alone
//! equals the live state. Each run draws the rules' `exact_refunds`: on, as
//! an owner sets rules now; off, as rules written before it replay (their
//! refunds split as older builds split them, which the model then takes
//! from the record; the checks only the exact split keeps are skipped).
use std::collections::HashMap;

use cardd::crypto::sign_request;
use cardd::limits::REFUND_WINDOW_MS;
use cardd::pb::{self, request::Op, ErrorCode, RecordKind};
use cardd::replay::replay_record;
use cardd::state::{apply, BrandState, Context, Outcome, Principal, Written};
use cardd::testing;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use prost::Message;

const BRAND: u32 = 7;
const CARDS: usize = 4;

/// What the test asks for, in terms of indexes into what exists.
#[derive(Debug, Clone)]
enum Step {
    TopUp {
        term: usize,
        card: usize,
        amount: i64,
    },
    Purchase {
        term: usize,
        card: usize,
        amount: i64,
        partial: bool,
        /// Points offered as payment (a multiple of `REDEEM_UNIT`, or 0).
        points: i64,
        /// The till names the campaign's category.
        bakery: bool,
    },
    Refund {
        term: usize,
        purchase: usize,
        amount: i64,
    },
    Reverse {
        term: usize,
        back: usize,
        unknown: bool,
    },
    Redeem {
        term: usize,
        card: usize,
        points: i64,
    },
    Block {
        card: usize,
        blocked: bool,
    },
    Replace {
        card: usize,
    },
    CloseShift {
        term: usize,
    },
    Retry {
        back: usize,
    },
    /// Days pass with no request (refund windows run out).
    Wait {
        days: i64,
    },
    /// The owner adjusts a card's paid or bonus value (issue 15).
    Adjust {
        card: usize,
        amount: i64,
        bonus: bool,
    },
    /// The owner voids one of the recent till top-ups.
    VoidTopUp {
        back: usize,
    },
    /// The owner closes a card: paid value cashed out, bonus forfeited.
    Close {
        card: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let term = 0..2usize;
    let card = 0..CARDS;
    prop_oneof![
        4 => (term.clone(), card.clone(), 1..200_000i64).prop_map(|(term, card, amount)| Step::TopUp { term, card, amount }),
        6 => (term.clone(), card.clone(), 1..60_000i64, any::<bool>(), points_offered(), any::<bool>())
            .prop_map(|(term, card, amount, partial, points, bakery)| Step::Purchase { term, card, amount, partial, points, bakery }),
        2 => (term.clone(), 0..8usize, 1..40_000i64).prop_map(|(term, purchase, amount)| Step::Refund { term, purchase, amount }),
        2 => (term.clone(), 0..4usize, any::<bool>()).prop_map(|(term, back, unknown)| Step::Reverse { term, back, unknown }),
        1 => (term.clone(), card.clone(), 1..500i64).prop_map(|(term, card, points)| Step::Redeem { term, card, points }),
        1 => (card.clone(), any::<bool>()).prop_map(|(card, blocked)| Step::Block { card, blocked }),
        1 => card.clone().prop_map(|card| Step::Replace { card }),
        1 => term.prop_map(|term| Step::CloseShift { term }),
        1 => (0..6usize).prop_map(|back| Step::Retry { back }),
        1 => (0..100i64).prop_map(|days| Step::Wait { days }),
        1 => (card.clone(), -60_000..60_000i64, any::<bool>())
            .prop_map(|(card, amount, bonus)| Step::Adjust { card, amount, bonus }),
        1 => (0..4usize).prop_map(|back| Step::VoidTopUp { back }),
        1 => card.prop_map(|card| Step::Close { card }),
    ]
}

/// Points offered as payment: mostly none, else a few units of the rules'
/// `points_redemption`.
fn points_offered() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 1 => (1..40i64).prop_map(|n| n * REDEEM_UNIT)]
}

/// The model's rules: `points_redemption` pays `REDEEM_VALUE` for every
/// `REDEEM_UNIT` points.
const REDEEM_UNIT: i64 = 10;
const REDEEM_VALUE: i64 = 50;
/// Points expire this many days after their award.
const EXPIRE_DAYS: u32 = 30;

/// The demo's rules with the loyalty programme: a 6x campaign at store 2
/// for the first ten days, a 3.8x bakery campaign, expiry, points as
/// payment, a rolling window on gold and a day's spend into diamond;
/// refunds `exact` or as before `exact_refunds`.
fn model_rules(exact: bool) -> pb::Rules {
    let mut r = cardd::demo::demo_rules();
    let start = 1_790_000_000_000;
    r.campaigns = vec![
        pb::Campaign {
            name: "store 2 weekend".into(),
            multiplier_milli: 6_000,
            starts_ms: start,
            ends_ms: start + 10 * 86_400_000,
            stores: vec![pb::StoreRef { store_id: 2 }],
            category: String::new(),
        },
        pb::Campaign {
            name: "bakery".into(),
            multiplier_milli: 3_800,
            starts_ms: 0,
            ends_ms: i64::MAX,
            stores: vec![],
            category: "bakery".into(),
        },
    ];
    r.points_expire_after_days = EXPIRE_DAYS;
    r.points_redemption = Some(pb::PointsRedemption {
        points: REDEEM_UNIT,
        value_minor: REDEEM_VALUE,
    });
    r.tiers[1].window_days = 30;
    r.tiers[2].min_day_spend_minor = 50_000;
    r.exact_refunds = exact;
    r
}

/// The simple model: what a card should hold, computed independently.
#[derive(Debug, Clone, Default)]
struct ModelCard {
    paid: i64,
    bonus: i64,
    blocked: bool,
    replaced: bool,
    closed: bool,
}

#[derive(Debug, Clone)]
struct ModelPurchase {
    card: String,
    store: u32,
    paid_out: i64,
    bonus_out: i64,
    /// The part of the bill paid by points.
    points_value: i64,
    /// Points the purchase earned.
    points_in: i64,
    refunded_paid: i64,
    refunded_bonus: i64,
    refunded_points_value: i64,
    reversed: bool,
    time_ms: i64,
}

struct World {
    /// The rules' `exact_refunds`.
    exact: bool,
    state: BrandState,
    server: SigningKey,
    owner: SigningKey,
    terminals: Vec<SigningKey>,
    next_txn: Vec<u64>,
    owner_txn: u64,
    time_ms: i64,
    records: Vec<Written>,
    cards: Vec<String>,
    model: HashMap<String, ModelCard>,
    /// Purchases by record seq.
    purchases: Vec<(u64, ModelPurchase)>,
    /// Money that entered or left through the till, to check conservation.
    external_net: i128,
    /// (terminal index, txn id, request bytes, signature) of recorded ops.
    sent: Vec<(usize, u64, Vec<u8>, Vec<u8>)>,
}

impl World {
    fn new(exact: bool) -> World {
        let server = testing::key(1);
        let owner = testing::owner_key();
        let terminals = vec![testing::terminal_key(), testing::key(4)];
        let mut w = World {
            exact,
            state: BrandState::new(BRAND),
            server,
            owner,
            terminals,
            next_txn: vec![1, 1],
            owner_txn: 1,
            time_ms: 1_790_000_000_000,
            records: vec![],
            cards: vec![],
            model: HashMap::new(),
            purchases: vec![],
            external_net: 0,
            sent: vec![],
        };
        let owner_key = w.owner.verifying_key().to_bytes();
        let create = Op::CreateBrand(testing::create_brand("Model", &owner_key));
        let server = w.server.clone();
        w.submit(Principal::Server, &server, 1, create)
            .expect("brand");
        for name in ["A", "B"] {
            w.owner_op(testing::create_store(name));
        }
        for (i, key) in w.terminals.clone().iter().enumerate() {
            let key = key.verifying_key().to_bytes();
            w.owner_op(testing::enroll_terminal(i as u32 + 1, &key, ""));
        }
        // After the stores: the campaign names store 2.
        w.owner_op(Op::SetRules(pb::SetRules {
            rules: Some(model_rules(exact)),
        }));
        for i in 0..CARDS {
            let card = card_for(i as u64);
            w.owner_op(testing::issue_card(&card));
            w.model.insert(card.clone(), ModelCard::default());
            w.cards.push(card);
        }
        w
    }

    fn submit(
        &mut self,
        principal: Principal,
        key: &SigningKey,
        txn: u64,
        op: Op,
    ) -> Result<Outcome, ErrorCode> {
        let req = testing::request_as(BRAND, txn, "t", op);
        let bytes = req.encode_to_vec();
        let sig = sign_request(key, &bytes);
        self.time_ms += 61_000;
        let signer_key = key.verifying_key().to_bytes();
        let ctx = Context {
            time_ms: self.time_ms,
            principal,
            signer_key: &signer_key,
            request: &bytes,
            signature: &sig,
            pin_verified: false,
        };
        let before = self.state.clone();
        let out = apply(&mut self.state, &ctx, &req);
        match &out {
            Ok(Outcome::Written(w)) => {
                self.records.push(w.clone());
                if let Principal::Terminal(t) = principal {
                    self.sent.push((t as usize - 1, txn, bytes, sig));
                }
            }
            // A refusal, and any answer that writes nothing, leaves the
            // state exactly as it was.
            _ => assert_eq!(
                self.state, before,
                "state changed without a record: {out:?}"
            ),
        }
        out.map_err(|r| r.code)
    }

    fn owner_op(&mut self, op: Op) -> pb::Record {
        let owner = self.owner.clone();
        self.owner_txn += 1;
        match self.submit(Principal::Owner, &owner, self.owner_txn, op) {
            Ok(Outcome::Written(w)) => w.record,
            other => panic!("owner op failed: {other:?}"),
        }
    }

    fn term_op(&mut self, term: usize, op: Op) -> Result<pb::Record, ErrorCode> {
        let key = self.terminals[term].clone();
        let txn = self.next_txn[term];
        self.next_txn[term] += 1;
        match self.submit(Principal::Terminal(term as u32 + 1), &key, txn, op)? {
            Outcome::Written(w) => Ok(w.record),
            other => panic!("unexpected outcome {other:?}"),
        }
    }

    fn run(&mut self, s: &Step) {
        match s.clone() {
            Step::TopUp { term, card, amount } => {
                let number = self.cards[card].clone();
                let m = self.model[&number].clone();
                let bonus = cardd::state::rules::bonus_for(&model_rules(self.exact), amount);
                let r = self.term_op(
                    term,
                    Op::TopUp(pb::TopUp {
                        card: number.clone(),
                        amount_minor: amount,
                        ..Default::default()
                    }),
                );
                if m.blocked || m.replaced {
                    assert_eq!(r.unwrap_err(), ErrorCode::CardBlocked);
                    return;
                }
                let rec = r.expect("top-up of an active card");
                assert_eq!((rec.paid_in_minor, rec.bonus_in_minor), (amount, bonus));
                let mc = self.model.get_mut(&number).unwrap();
                mc.paid += amount;
                mc.bonus += bonus;
                self.external_net += i128::from(amount + bonus);
            }
            Step::Purchase {
                term,
                card,
                amount,
                partial,
                points,
                bakery,
            } => {
                let number = self.cards[card].clone();
                let m = self.model[&number].clone();
                let held = self.points_at(&number, self.time_ms + 61_000);
                let r = self.term_op(
                    term,
                    Op::Purchase(pb::Purchase {
                        card: number.clone(),
                        amount_minor: amount,
                        allow_partial: partial,
                        category: if bakery {
                            "bakery".into()
                        } else {
                            String::new()
                        },
                        points,
                        ..Default::default()
                    }),
                );
                let balance = m.paid + m.bonus;
                if m.blocked || m.replaced {
                    assert_eq!(r.unwrap_err(), ErrorCode::CardBlocked);
                    return;
                }
                let value = points / REDEEM_UNIT * REDEEM_VALUE;
                if points > held {
                    assert_eq!(r.unwrap_err(), ErrorCode::InsufficientPoints);
                    return;
                }
                if value > amount {
                    assert_eq!(r.unwrap_err(), ErrorCode::AmountOutOfRange);
                    return;
                }
                let due = amount - value;
                let approved = if balance >= due {
                    due
                } else if partial && balance > 0 {
                    balance
                } else {
                    assert_eq!(r.unwrap_err(), ErrorCode::InsufficientFunds);
                    return;
                };
                let rec = r.expect("purchase within balance");
                let paid_out = approved.min(m.paid);
                let bonus_out = approved - paid_out;
                assert_eq!(
                    (rec.paid_out_minor, rec.bonus_out_minor),
                    (paid_out, bonus_out)
                );
                assert_eq!(rec.remaining_minor, due - approved);
                assert_eq!((rec.points_out, rec.points_value_minor), (points, value));
                assert_eq!(rec.points_after, held - points + rec.points_in);
                let mc = self.model.get_mut(&number).unwrap();
                mc.paid -= paid_out;
                mc.bonus -= bonus_out;
                self.external_net -= i128::from(approved);
                self.purchases.push((
                    rec.seq,
                    ModelPurchase {
                        card: number,
                        store: term as u32 + 1,
                        paid_out,
                        bonus_out,
                        points_value: value,
                        points_in: rec.points_in,
                        refunded_paid: 0,
                        refunded_bonus: 0,
                        refunded_points_value: 0,
                        reversed: false,
                        time_ms: rec.time_ms,
                    },
                ));
            }
            Step::Refund {
                term,
                purchase,
                amount,
            } => {
                let Some(idx) =
                    (!self.purchases.is_empty()).then(|| purchase % self.purchases.len())
                else {
                    let r = self.term_op(
                        term,
                        Op::Refund(pb::Refund {
                            original_seq: 999_999,
                            amount_minor: amount,
                        }),
                    );
                    assert_eq!(r.unwrap_err(), ErrorCode::OriginalNotFound);
                    return;
                };
                let (seq, p) = self.purchases[idx].clone();
                let held = self.points_at(&p.card, self.time_ms + 61_000);
                let r = self.term_op(
                    term,
                    Op::Refund(pb::Refund {
                        original_seq: seq,
                        amount_minor: amount,
                    }),
                );
                let covered = p.paid_out + p.bonus_out + p.points_value;
                let left = covered - p.refunded_paid - p.refunded_bonus - p.refunded_points_value;
                let m = self.model[&p.card].clone();
                let expected = if self.time_ms - p.time_ms > REFUND_WINDOW_MS {
                    Err(ErrorCode::OriginalExpired)
                } else if p.reversed {
                    Err(ErrorCode::NotRefundable)
                } else if p.store != term as u32 + 1 {
                    Err(ErrorCode::WrongStore)
                } else if amount > left {
                    Err(ErrorCode::RefundExceedsOriginal)
                } else if m.blocked || m.replaced {
                    Err(ErrorCode::CardBlocked)
                } else {
                    Ok(())
                };
                match expected {
                    Err(code) => assert_eq!(r.unwrap_err(), code),
                    // Points pay bills here: a refund whose earned points
                    // were spent since is refused (the state machine
                    // judges the share; the card must hold fewer than the
                    // purchase earned).
                    Ok(()) if r == Err(ErrorCode::InsufficientPoints) => {
                        // Rules from before took back only what the card
                        // held, and never refused for it.
                        assert!(self.exact, "refused under rules from before: {p:?}");
                        assert!(held < p.points_in, "refused holding {held} points: {p:?}");
                    }
                    Ok(()) => {
                        let rec = r.expect("refund within limits");
                        let pv = if self.exact {
                            exact_points_value(&p, amount, &rec)
                        } else {
                            // Rules from before: the share alone, unbounded
                            // (a reversed refund can turn it negative; old
                            // chains replay so).
                            points_share(&p, amount)
                        };
                        let value = amount - pv;
                        let bonus_in = value.min(p.bonus_out - p.refunded_bonus);
                        assert_eq!(
                            (
                                rec.paid_in_minor,
                                rec.bonus_in_minor,
                                rec.points_value_minor
                            ),
                            (value - bonus_in, bonus_in, pv)
                        );
                        let mc = self.model.get_mut(&p.card).unwrap();
                        mc.paid += value - bonus_in;
                        mc.bonus += bonus_in;
                        let mp = &mut self.purchases[idx].1;
                        mp.refunded_paid += value - bonus_in;
                        mp.refunded_bonus += bonus_in;
                        mp.refunded_points_value += pv;
                        self.external_net += i128::from(value);
                    }
                }
            }
            Step::Reverse {
                term,
                back,
                unknown,
            } => {
                let original = if unknown {
                    // A txn id this terminal has not used yet: a tombstone.
                    self.next_txn[term] + 1_000
                } else {
                    self.next_txn[term].saturating_sub(1 + back as u64).max(1)
                };
                let r = self.term_op(
                    term,
                    Op::Reversal(pb::Reversal {
                        original_txn_id: original,
                    }),
                );
                // The state machine is the judge here; the model follows the
                // record's deltas and checks them against the original.
                if let Ok(rec) = r {
                    let net = rec.paid_in_minor + rec.bonus_in_minor
                        - rec.paid_out_minor
                        - rec.bonus_out_minor;
                    if rec.original_seq != 0 {
                        let orig = self
                            .records
                            .iter()
                            .find(|w| w.record.seq == rec.original_seq)
                            .unwrap();
                        let o = &orig.record;
                        assert_eq!(rec.paid_in_minor, o.paid_out_minor);
                        assert_eq!(rec.bonus_in_minor, o.bonus_out_minor);
                        assert_eq!(rec.paid_out_minor, o.paid_in_minor);
                        assert_eq!(rec.bonus_out_minor, o.bonus_in_minor);
                        let mc = self.model.get_mut(&rec.card).unwrap();
                        mc.paid += rec.paid_in_minor - rec.paid_out_minor;
                        mc.bonus += rec.bonus_in_minor - rec.bonus_out_minor;
                        if let Some((_, p)) = self
                            .purchases
                            .iter_mut()
                            .find(|(s, _)| *s == rec.original_seq)
                        {
                            p.reversed = true;
                        }
                        if o.kind() == RecordKind::Refund {
                            let (_, p) = self
                                .purchases
                                .iter_mut()
                                .find(|(s, _)| *s == o.original_seq)
                                .unwrap();
                            p.refunded_paid -= o.paid_in_minor;
                            p.refunded_bonus -= o.bonus_in_minor;
                            p.refunded_points_value -= o.points_value_minor;
                        }
                    } else {
                        // A tombstone (the original never arrived, or was
                        // declined) moves no value.
                        assert_eq!(net, 0);
                    }
                    self.external_net += i128::from(net);
                }
            }
            Step::Redeem { term, card, points } => {
                let number = self.cards[card].clone();
                let before = self.points_at(&number, self.time_ms + 61_000);
                let r = self.term_op(
                    term,
                    Op::RedeemPoints(pb::RedeemPoints {
                        card: number,
                        points,
                        reward: "cup".into(),
                        ..Default::default()
                    }),
                );
                match r {
                    Ok(rec) => assert_eq!(rec.points_after, before - points),
                    Err(ErrorCode::InsufficientPoints) => assert!(before < points),
                    Err(code) => assert_eq!(code, ErrorCode::CardBlocked),
                }
            }
            Step::Block { card, blocked } => {
                let number = self.cards[card].clone();
                if self.model[&number].replaced || self.model[&number].closed {
                    return;
                }
                self.owner_op(Op::SetCardBlocked(pb::SetCardBlocked {
                    card: number.clone(),
                    blocked,
                    reason: String::new(),
                }));
                self.model.get_mut(&number).unwrap().blocked = blocked;
            }
            Step::Replace { card } => {
                let old = self.cards[card].clone();
                if self.model[&old].replaced || self.model[&old].closed {
                    return;
                }
                let new = card_for(1_000 + self.records.len() as u64);
                self.owner_op(Op::ReplaceCard(pb::ReplaceCard {
                    old_card: old.clone(),
                    new_card: new.clone(),
                }));
                let m = self.model.get_mut(&old).unwrap();
                let moved = ModelCard {
                    paid: m.paid,
                    bonus: m.bonus,
                    blocked: false,
                    replaced: false,
                    closed: false,
                };
                *m = ModelCard {
                    replaced: true,
                    ..ModelCard::default()
                };
                self.model.insert(new.clone(), moved);
                self.cards[card] = new;
            }
            Step::CloseShift { term } => {
                let server_totals = self.state.terminals[&(term as u32 + 1)].shift;
                let rec = self
                    .term_op(
                        term,
                        Op::CloseShift(pb::CloseShift {
                            terminal_totals: Some(server_totals),
                        }),
                    )
                    .expect("shift close");
                assert!(rec.shift_balanced);
                assert_eq!(rec.shift_totals, Some(server_totals));
                assert_eq!(
                    self.state.terminals[&(term as u32 + 1)].shift,
                    pb::ShiftTotals::default()
                );
            }
            Step::Wait { days } => self.time_ms += days * 86_400_000,
            Step::Adjust {
                card,
                amount,
                bonus,
            } => self.adjust(card, amount, bonus),
            Step::VoidTopUp { back } => self.void_top_up(back),
            Step::Close { card } => self.close(card),
            Step::Retry { back } => {
                let Some(i) = self
                    .sent
                    .len()
                    .checked_sub(1 + back % self.sent.len().max(1))
                else {
                    return;
                };
                let (term, txn, bytes, sig) = self.sent[i].clone();
                let req = pb::Request::decode(bytes.as_slice()).unwrap();
                let key = self.terminals[term].verifying_key().to_bytes();
                let ctx = Context {
                    time_ms: self.time_ms,
                    principal: Principal::Terminal(term as u32 + 1),
                    signer_key: &key,
                    request: &bytes,
                    signature: &sig,
                    pin_verified: false,
                };
                let before = self.state.clone();
                let out = apply(&mut self.state, &ctx, &req);
                let seq = self
                    .records
                    .iter()
                    .find(|w| w.record.terminal_id == term as u32 + 1 && w.record.txn_id == txn)
                    .unwrap()
                    .record
                    .seq;
                assert_eq!(out, Ok(Outcome::Seen { seq }), "retry of txn {txn}");
                assert_eq!(self.state, before);
            }
        }
    }

    /// An owner's request that the model judges itself.
    fn owner_try(&mut self, op: Op) -> Result<pb::Record, ErrorCode> {
        self.owner_txn += 1;
        let (key, txn) = (self.owner.clone(), self.owner_txn);
        match self.submit(Principal::Owner, &key, txn, op) {
            Ok(Outcome::Written(w)) => Ok(w.record),
            Ok(other) => panic!("an owner correction answered {other:?}"),
            Err(code) => Err(code),
        }
    }

    fn adjust(&mut self, card: usize, amount: i64, bonus: bool) {
        let number = self.cards[card].clone();
        let r = self.owner_try(Op::AdjustCard(pb::AdjustCard {
            card: number.clone(),
            amount_minor: amount,
            bonus,
            reason: "model".into(),
        }));
        let m = self.model[&number].clone();
        let held = if bonus { m.bonus } else { m.paid };
        let expected = if amount == 0 {
            Err(ErrorCode::AmountOutOfRange)
        } else if m.replaced || m.closed {
            Err(ErrorCode::CardBlocked)
        } else if held + amount < 0 {
            Err(ErrorCode::InsufficientFunds)
        } else {
            Ok(())
        };
        match expected {
            Err(code) => assert_eq!(r.unwrap_err(), code),
            Ok(()) => {
                let rec = r.expect("an adjustment within the balance");
                let net = rec.paid_in_minor + rec.bonus_in_minor
                    - rec.paid_out_minor
                    - rec.bonus_out_minor;
                assert_eq!(net, amount);
                let mc = self.model.get_mut(&number).unwrap();
                if bonus {
                    mc.bonus += amount;
                } else {
                    mc.paid += amount;
                }
                self.external_net += i128::from(amount);
            }
        }
    }

    /// The state machine judges whether the top-up may be voided; the model
    /// checks that a void takes back exactly what the load put in.
    fn void_top_up(&mut self, back: usize) {
        let loads: Vec<pb::Record> = self
            .records
            .iter()
            .filter(|w| w.record.kind() == RecordKind::TopUp)
            .map(|w| w.record.clone())
            .collect();
        let Some(load) = loads.len().checked_sub(1 + back).map(|i| loads[i].clone()) else {
            return;
        };
        let r = self.owner_try(Op::VoidTopUp(pb::VoidTopUp {
            original_seq: load.seq,
            reason: "model".into(),
        }));
        if let Ok(rec) = r {
            assert_eq!(rec.card, load.card);
            assert_eq!(
                (rec.paid_out_minor, rec.bonus_out_minor),
                (load.paid_in_minor, load.bonus_in_minor)
            );
            let mc = self.model.get_mut(&rec.card).unwrap();
            mc.paid -= rec.paid_out_minor;
            mc.bonus -= rec.bonus_out_minor;
            self.external_net -= i128::from(rec.paid_out_minor + rec.bonus_out_minor);
        }
    }

    fn close(&mut self, card: usize) {
        let number = self.cards[card].clone();
        let r = self.owner_try(Op::CloseCard(pb::CloseCard {
            card: number.clone(),
            reason: "model".into(),
        }));
        let m = self.model[&number].clone();
        if m.replaced || m.closed {
            assert_eq!(r.unwrap_err(), ErrorCode::CardBlocked);
            return;
        }
        let rec = r.expect("close of an open card");
        assert_eq!((rec.paid_out_minor, rec.bonus_out_minor), (m.paid, m.bonus));
        self.external_net -= i128::from(m.paid + m.bonus);
        let mc = self.model.get_mut(&number).unwrap();
        (mc.paid, mc.bonus, mc.blocked, mc.closed) = (0, 0, true, true);
    }

    /// The card's points at `now_ms`: what it holds less the lots expired
    /// by then (as its next record will find).
    fn points_at(&self, number: &str, now_ms: i64) -> i64 {
        let card = &self.state.cards[&number.parse::<u64>().unwrap()];
        let gone = cardd::state::points::expiring(&card.loyalty, i64::MIN, now_ms);
        card.points - gone
    }

    /// Points lots: ordered by expiry, none empty, bounded, within the
    /// card's points; each expires `EXPIRE_DAYS` after an award at most.
    fn check_points(&self) {
        for card in self.state.cards.values() {
            let Some(h) = &card.loyalty else { continue };
            assert!(h.lots.len() <= cardd::limits::MAX_POINT_LOTS_PER_CARD);
            assert!(h.lots.windows(2).all(|w| w[0].expires_ms < w[1].expires_ms));
            assert!(h.lots.iter().all(|l| l.points > 0), "{h:?}");
            assert!(h.in_lots() <= card.points, "{card:?}");
            let latest = self.time_ms + i64::from(EXPIRE_DAYS) * 86_400_000;
            assert!(h.lots.iter().all(|l| l.expires_ms <= latest), "{h:?}");
            assert!(h.days.len() <= cardd::limits::MAX_TIER_WINDOW_DAYS as usize);
        }
    }

    fn check_invariants(&self) {
        self.check_points();
        let mut sum: i128 = 0;
        for (number, card) in &self.state.cards {
            assert!(
                card.paid >= 0 && card.bonus >= 0 && card.points >= 0,
                "negative card {card:?}"
            );
            let m = &self.model[&cardd::state::format_card(*number)];
            assert_eq!(
                (card.paid, card.bonus),
                (m.paid, m.bonus),
                "card {number} differs from the model"
            );
            sum += i128::from(card.paid + card.bonus);
        }
        let (paid, bonus) = self.state.liability();
        assert_eq!(paid + bonus, sum);
        assert_eq!(sum, self.external_net, "money not conserved");
        // Conservation from the records alone (a replacement moves value
        // between two cards and adds none).
        let from_records: i128 = self
            .records
            .iter()
            .filter(|w| w.record.kind() != RecordKind::CardReplaced)
            .map(|w| {
                let r = &w.record;
                i128::from(
                    r.paid_in_minor + r.bonus_in_minor - r.paid_out_minor - r.bonus_out_minor,
                )
            })
            .sum();
        assert_eq!(from_records, sum, "records do not add up to the balances");
        self.check_books();
    }

    /// The books (issue 13): every card's lots add up to its balances; the
    /// liability by store of issue is the sum of the cards' lots and of
    /// the days' changes; the settlement nets to zero across the brand.
    fn check_books(&self) {
        use std::collections::BTreeMap;
        let mut by_store: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
        for card in self.state.cards.values() {
            assert_eq!(
                card.lots.totals(),
                (card.paid, card.bonus),
                "lots of {card:?}"
            );
            assert!(card.lots.as_slice().len() <= cardd::limits::MAX_LOTS_PER_CARD);
            for lot in card.lots.as_slice() {
                assert!(lot.paid >= 0 && lot.bonus >= 0, "negative lot {lot:?}");
                let e = by_store.entry(lot.store).or_default();
                (e.0, e.1) = (e.0 + lot.paid, e.1 + lot.bonus);
            }
        }
        // (`exact_refunds`) A purchase's refunds give each store back at
        // most what the purchase took from it. Rules from before need not:
        // after a reversed refund their split can give a store more than
        // it lost (`state::books_tests`, refunds under rules from before),
        // and their chains replay as written.
        let effects = self.state.effects.iter().filter(|_| self.exact);
        for (seq, e) in effects {
            for r in e.refunded_lots.as_deref().map_or(&[][..], |l| l.as_slice()) {
                let t = e.lots.as_slice().iter().find(|t| t.store == r.store);
                let (paid, bonus) = t.map_or((0, 0), |t| (t.paid, t.bonus));
                assert!(r.paid <= paid && r.bonus <= bonus, "record {seq}: {e:?}");
            }
        }
        let books = &self.state.books;
        let mut liability: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
        let mut changes: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
        for (store, v) in &books.liability {
            liability.insert(*store, (v.paid, v.bonus));
        }
        for book in books.days.values() {
            for (store, v) in &book.liability_change {
                let e = changes.entry(*store).or_default();
                (e.0, e.1) = (e.0 + v.paid, e.1 + v.bonus);
            }
            for ((from, to), owed) in &book.settlement {
                assert_ne!(from, to, "a store never owes itself");
                assert!(owed.paid != 0 || owed.bonus != 0, "a zero entry is dropped");
            }
        }
        liability.retain(|_, v| *v != (0, 0));
        changes.retain(|_, v| *v != (0, 0));
        assert_eq!(
            liability, by_store,
            "liability by store is not the cards' lots"
        );
        // Once the first day is past the books' window, its changes are
        // forgotten (by design): the days then add up to less.
        let kept = i64::from(cardd::limits::MAX_BOOK_DAYS) * 86_400_000;
        if self.time_ms - 1_790_000_000_000 < kept - 86_400_000 {
            assert_eq!(
                changes, by_store,
                "the days' changes do not add up to the liability"
            );
        }
        let nets = cardd::state::reports::settlement_pairs(&self.state, i32::MIN, i32::MAX);
        let mut per_store: BTreeMap<u32, i64> = BTreeMap::new();
        for (debtor, creditor, v) in nets {
            *per_store.entry(debtor).or_default() -= v.paid + v.bonus;
            *per_store.entry(creditor).or_default() += v.paid + v.bonus;
        }
        assert_eq!(
            per_store.values().sum::<i64>(),
            0,
            "netted settlement sums to zero"
        );
    }

    fn check_replay(&self) {
        let mut rebuilt = BrandState::new(BRAND);
        let server = self.server.verifying_key().to_bytes();
        for w in &self.records {
            replay_record(&mut rebuilt, w.record.seq, &w.bytes, &server).expect("replay");
        }
        assert_eq!(
            rebuilt, self.state,
            "state rebuilt from records differs from live state"
        );
    }
}

/// The points' value of an `exact_refunds` refund of `amount` from `p`:
/// the points' share of the bill refunded so far, rounded down, the
/// card's value taking the rest; each form gives back at most what it has
/// left, never a negative share (asserted of `rec`, the refund's record).
fn exact_points_value(p: &ModelPurchase, amount: i64, rec: &pb::Record) -> i64 {
    let card_left = p.paid_out + p.bonus_out - p.refunded_paid - p.refunded_bonus;
    let points_left = p.points_value - p.refunded_points_value;
    let pv = points_share(p, amount)
        .min(amount.min(points_left))
        .max(amount - card_left)
        .max(0);
    assert!(
        (0..=points_left).contains(&rec.points_value_minor),
        "{rec:?}"
    );
    assert!((0..=card_left).contains(&(amount - pv)), "{rec:?}");
    pv
}

/// The points' share of a refund of `amount` from `p`, as the rules
/// before `exact_refunds` give it back whole: the points' part of the bill
/// refunded so far (this refund included), rounded down, less what came
/// back in points before.
fn points_share(p: &ModelPurchase, amount: i64) -> i64 {
    if p.points_value == 0 {
        return 0;
    }
    let covered = p.paid_out + p.bonus_out + p.points_value;
    let after = p.refunded_paid + p.refunded_bonus + p.refunded_points_value + amount;
    let share = i128::from(p.points_value) * i128::from(after) / i128::from(covered);
    i64::try_from(share).expect("at most the points' value") - p.refunded_points_value
}

/// A valid card number of the brand from a counter.
fn card_for(i: u64) -> String {
    let body = format!("8{BRAND:05}{i:012}");
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|n| cardd::card_number::parse(n) == Some(BRAND))
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_the_invariants(
        exact in any::<bool>(),
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut w = World::new(exact);
        w.check_invariants();
        for s in &steps {
            w.run(s);
            w.check_invariants();
        }
        w.check_replay();
    }
}

/// Fields such as the server's time are taken from the record itself, so a
/// changed record can replay on its own; the chain catches it at the next
/// record (whose prev_hash no longer matches) and the signed checkpoint
/// catches it at the head. Here: any flipped byte of a record that is not
/// the last one makes replaying the chain fail.
#[test]
fn a_record_changed_by_one_byte_breaks_replay_of_the_chain() {
    let mut w = World::new(true);
    w.run(&Step::TopUp {
        term: 0,
        card: 0,
        amount: 10_000,
    });
    w.run(&Step::Purchase {
        term: 0,
        card: 0,
        amount: 2_500,
        partial: false,
        points: 0,
        bakery: false,
    });
    w.run(&Step::Purchase {
        term: 1,
        card: 0,
        amount: 100,
        partial: false,
        points: 0,
        bakery: false,
    });
    let target = w.records.len() - 2;
    let server = w.server.verifying_key().to_bytes();
    for i in 0..w.records[target].bytes.len() {
        let mut rebuilt = BrandState::new(BRAND);
        let mut failed = false;
        for (n, rec) in w.records.iter().enumerate() {
            let mut bytes = rec.bytes.clone();
            if n == target {
                bytes[i] ^= 0x01;
            }
            if replay_record(&mut rebuilt, rec.record.seq, &bytes, &server).is_err() {
                failed = true;
                break;
            }
        }
        assert!(
            failed,
            "byte {i} of record {} flipped and the chain still replayed",
            target + 1
        );
    }
}

/// Regression (found by the request_handler fuzz target): points taken back
/// by refunds are rounded refund by refund; after one refund is reversed
/// the purchase must count exactly the rounded share of what stays
/// refunded: never a negative take-back, never a point kept too many.
#[test]
fn a_refund_after_a_reversed_refund_never_gives_points_back() {
    let mut w = World::new(true);
    w.run(&Step::TopUp {
        term: 0,
        card: 0,
        amount: 100_000,
    });
    // 100.00 at 1 point per unit = 100 points; use amounts in whole units.
    let purchase = w
        .term_op(
            0,
            Op::Purchase(pb::Purchase {
                card: w.cards[0].clone(),
                amount_minor: 10_000,
                allow_partial: false,
                ..Default::default()
            }),
        )
        .expect("purchase");
    assert_eq!(purchase.points_in, 100);
    let seq = purchase.seq;
    let refund = |w: &mut World, amount: i64| {
        w.term_op(
            0,
            Op::Refund(pb::Refund {
                original_seq: seq,
                amount_minor: amount,
            }),
        )
        .expect("refund")
    };
    let a = refund(&mut w, 150); // 1.50: floor(100 * 150 / 10000) = 1 point
    assert_eq!(a.points_out, 1);
    let b = refund(&mut w, 50); // cumulative 2.00: floor(2) - 1 = 1 point
    assert_eq!(b.points_out, 1);
    // Reversing A leaves 0.50 refunded, whose share is floor(100 * 50 /
    // 10000) = 0 points, while B's point is still counted: the reversal
    // gives back A's point and that one too.
    let reversal = w
        .term_op(
            0,
            Op::Reversal(pb::Reversal {
                original_txn_id: a.txn_id,
            }),
        )
        .expect("reversal");
    assert_eq!(reversal.points_in, 2);
    // Refunded now 0.60: floor(100 * 60 / 10000) = 0 points to take.
    let c = refund(&mut w, 10);
    assert_eq!(
        c.points_out, 0,
        "a refund must neither give points back nor over-take"
    );
    let points = w.state.cards[&w.cards[0].parse::<u64>().unwrap()].points;
    assert_eq!(
        points, 100,
        "0.60 of 100.00 refunded: floor share is 0 points"
    );
    // (term_op bypasses the balance model, so only replay is checked here.)
    w.check_replay();
}
