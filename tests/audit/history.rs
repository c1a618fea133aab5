//! The mixed history every export test starts from, and what it booked.
use super::*;

/// What the mixed history did, as the replies told it.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Sequence number of the last record written.
    pub(crate) last_seq: u64,
    pub(crate) loaded: i128,
    pub(crate) bonus: i128,
    pub(crate) spent: i128,
    pub(crate) refunded: i128,
    pub(crate) reversed_net: i128,
    /// The card that replaced demo card 2.
    pub(crate) new_card: String,
}

impl History {
    /// Checks that `r` wrote exactly the next record, and books its money.
    #[track_caller]
    pub(crate) fn book(&mut self, r: &pb::Reply) {
        assert_eq!(seq(r), self.last_seq + 1, "records are written in sequence");
        self.last_seq += 1;
        match &r.detail {
            Some(Detail::Purchase(p)) => self.spent += i128::from(p.approved_minor),
            Some(Detail::TopUp(t)) => {
                self.loaded += i128::from(t.paid_minor);
                self.bonus += i128::from(t.bonus_minor);
            }
            Some(Detail::Refund(x)) => self.refunded += i128::from(x.refunded_minor),
            // Only purchases (value restored) and unknown txns (nothing)
            // are reversed here.
            Some(Detail::Reversal(x)) => self.reversed_net += i128::from(x.value_minor),
            _ => {}
        }
    }
}

/// Per-signer transaction ids.
pub(crate) struct Txns {
    pub(crate) t1: u64,
    pub(crate) t2: u64,
    pub(crate) owner: u64,
}

impl Txns {
    pub(crate) fn new() -> Self {
        Txns {
            t1: 100,
            t2: 1,
            owner: 11,
        }
    }
}

pub(crate) fn next(n: &mut u64) -> u64 {
    *n += 1;
    *n - 1
}

/// A few dozen mixed operations on the demo brand: purchases at both
/// stores, top-ups (with bonus), a refund, a reversal, a tombstone reversal,
/// a points redemption, owner block/unblock/replace, new rules, shift closes.
pub(crate) async fn mixed_history(d: &Daemon, demo: &Demo, filler: usize) -> History {
    let c = demo.manifest.cards.clone();
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;
    let mut o = demo.owner(d.addr).await;
    let mut n = Txns::new();
    let mut h = History {
        last_seq: DEMO_RECORDS,
        loaded: 210_000,
        bonus: 20_000,
        ..Default::default()
    };

    h.book(&ok(&mut t1, next(&mut n.t1), purchase(&c[0], 1_234)).await);
    h.book(&ok(&mut t2, next(&mut n.t2), purchase(&c[1], 5_000)).await);
    let r = ok(&mut t1, next(&mut n.t1), top_up(&c[2], 50_000)).await;
    assert!(matches!(&r.detail, Some(Detail::TopUp(t)) if t.bonus_minor == 5_000));
    h.book(&r);
    let r = ok(&mut t2, next(&mut n.t2), top_up(&c[0], 100_000)).await;
    assert!(matches!(&r.detail, Some(Detail::TopUp(t)) if t.bonus_minor == 15_000));
    h.book(&r);
    // A purchase at store 1, partly refunded.
    let p = ok(&mut t1, next(&mut n.t1), purchase(&c[3], 52_000)).await;
    h.book(&p);
    let refund = Op::Refund(pb::Refund {
        original_seq: seq(&p),
        amount_minor: 3_000,
    });
    h.book(&ok(&mut t1, next(&mut n.t1), refund).await);
    // A purchase at store 2, reversed.
    let txn = next(&mut n.t2);
    h.book(&ok(&mut t2, txn, purchase(&c[4], 10_000)).await);
    let rev = Op::Reversal(pb::Reversal {
        original_txn_id: txn,
    });
    let r = ok(&mut t2, next(&mut n.t2), rev).await;
    assert!(
        matches!(&r.detail, Some(Detail::Reversal(x)) if x.original_found && x.value_minor == 10_000)
    );
    h.book(&r);
    // A reversal of a txn the server never saw: a tombstone.
    let tomb = Op::Reversal(pb::Reversal {
        original_txn_id: 9_000,
    });
    let r = ok(&mut t1, next(&mut n.t1), tomb).await;
    assert!(matches!(&r.detail, Some(Detail::Reversal(x)) if !x.original_found));
    h.book(&r);
    // Points redemption (card 3 earned 520 and lost 30 to the refund).
    let redeem = Op::RedeemPoints(pb::RedeemPoints {
        card: c[3].clone(),
        points: 100,
        reward: "coffee".into(),
        ..Default::default()
    });
    let r = ok(&mut t1, next(&mut n.t1), redeem).await;
    assert_eq!(r.card.as_ref().expect("card").points, 390);
    h.book(&r);
    // Small purchases at both stores, sent at once over several connections
    // so that the writer may commit several records under one checkpoint.
    let mut tills = Vec::new();
    for i in 0..filler {
        let txn = if i % 2 == 0 {
            next(&mut n.t1)
        } else {
            next(&mut n.t2)
        };
        tills.push((demo.terminal(d.addr, i % 2).await, txn));
    }
    let wave = tills.iter_mut().enumerate().map(|(i, (till, txn))| {
        let op = purchase(&c[i % 5], 300 + 37 * i as i64);
        ok(till, *txn, op)
    });
    let mut replies = futures::future::join_all(wave).await;
    replies.sort_by_key(seq);
    for r in &replies {
        h.book(r);
    }
    // Owner: block (a purchase is refused and writes nothing), unblock.
    h.book(&ok(&mut o, next(&mut n.owner), set_blocked(&c[1], true)).await);
    assert_eq!(
        call(&mut t2, next(&mut n.t2), purchase(&c[1], 100)).await,
        Err(pb::ErrorCode::CardBlocked)
    );
    h.book(&ok(&mut o, next(&mut n.owner), set_blocked(&c[1], false)).await);
    // Replace card 2 and spend from the new card.
    h.new_card = cardd::card_number::generate(demo.manifest.brand_id);
    let replace = Op::ReplaceCard(pb::ReplaceCard {
        old_card: c[2].clone(),
        new_card: h.new_card.clone(),
    });
    h.book(&ok(&mut o, next(&mut n.owner), replace).await);
    h.book(&ok(&mut t1, next(&mut n.t1), purchase(&h.new_card, 2_000)).await);
    // Card 4 stays blocked.
    h.book(&ok(&mut o, next(&mut n.owner), set_blocked(&c[4], true)).await);
    // New rules: more points, a low gold threshold.
    let mut rules = cardd::demo::demo_rules();
    rules.points_per_unit = 3;
    rules.tiers[1].min_spend_minor = 5_000;
    rules.promotion_line = "audit week".into();
    let set = Op::SetRules(pb::SetRules { rules: Some(rules) });
    h.book(&ok(&mut o, next(&mut n.owner), set).await);
    let r = ok(&mut t2, next(&mut n.t2), purchase(&c[0], 4_321)).await;
    assert_eq!(r.promotion_line, "audit week");
    h.book(&r);
    h.book(&ok(&mut t1, next(&mut n.t1), top_up(&c[1], 60_000)).await);
    // Both shifts closed.
    let close = || {
        Op::CloseShift(pb::CloseShift {
            terminal_totals: None,
        })
    };
    h.book(&ok(&mut t2, next(&mut n.t2), close()).await);
    h.book(&ok(&mut t1, next(&mut n.t1), close()).await);
    h
}

/// A demo daemon after the mixed history, its export and the server key.
pub(crate) async fn mixed_export(
    dir: &Path,
    filler: usize,
) -> (Daemon, Demo, History, Vec<u8>, [u8; 32]) {
    let (d, demo) = Daemon::demo(dir);
    let h = mixed_history(&d, &demo, filler).await;
    let bytes = export_online(d.addr, &demo).await;
    let key = demo.owner(d.addr).await.server_key;
    (d, demo, h, bytes, key)
}
