//! The checks after every restart and at the end: statuses, replays,
//! balances against the model, money conservation, the export and the
//! offline audit.
use super::*;

impl CardState {
    pub(crate) fn balance(&self) -> i64 {
        self.paid + self.bonus
    }
}

pub(crate) async fn live_cards(c: &mut Client, cards: &[String]) -> Vec<CardState> {
    let mut out = Vec::new();
    for card in cards {
        let v = bounded(inquiry(c, card)).await;
        assert_eq!(
            v.balance_minor,
            v.paid_balance_minor + v.bonus_balance_minor
        );
        out.push(CardState {
            paid: v.paid_balance_minor,
            bonus: v.bonus_balance_minor,
            points: v.points,
        });
    }
    out
}

impl World {
    pub(crate) fn applied(&self) -> impl Iterator<Item = &Applied> {
        self.workers.iter().flat_map(|w| w.applied.iter())
    }

    /// The model's balance of every card: baseline plus every reply's delta,
    /// checking that each reply's balance after is the one before plus its
    /// own delta (no operation the model does not know touched the card).
    pub(crate) fn model_cards(&self) -> Vec<(i64, Option<pb::CardView>)> {
        let mut per_card: Vec<Vec<&Applied>> = vec![Vec::new(); self.cards.len()];
        for a in self.applied() {
            if let Some(card) = a.card {
                per_card[card].push(a);
            }
        }
        per_card
            .into_iter()
            .enumerate()
            .map(|(i, mut ops)| {
                ops.sort_by_key(|a| a.seq);
                let mut balance = self.baseline[i].balance();
                let mut last = None;
                for a in ops {
                    balance += a.delta;
                    let v = a.view.as_ref().expect("card view");
                    assert_eq!(
                        v.balance_minor, balance,
                        "card {i}: record {} (txn {} of terminal {}) shows {} after, the model {}",
                        a.seq, a.txn, a.terminal_id, v.balance_minor, balance
                    );
                    last = Some(v.clone());
                }
                (balance, last)
            })
            .collect()
    }
}

pub(crate) fn parse_export(bytes: &[u8]) -> Vec<(pb::Record, [u8; 32], Vec<u8>)> {
    let mut reader = ExportReader::new(bytes).expect("export magic");
    let mut out = Vec::new();
    while let Some(item) = reader.next_item().expect("export item") {
        if let Item::Record(b) = item {
            let rec = pb::Record::decode(b.as_slice()).expect("record decodes");
            assert_eq!(rec.seq, out.len() as u64 + 1, "records in order");
            out.push((rec, leaf_hash(&b), b));
        }
    }
    out
}

/// Checks after a restart (and every worker's unknowns settled).
pub(crate) async fn check(world: &mut World, addr: SocketAddr, cycle: u64, totals: &mut Stats) {
    let killed = AtomicBool::new(false);
    let mut sign_on_last_txn: HashMap<u32, u64> = HashMap::new();
    // 1. TxnStatus of every operation acknowledged this cycle: committed
    //    (or reversed, if this test reversed it) with the receipt's seq and
    //    hash; a few are retried and must be replays; tombstones hold.
    for w in &mut world.workers {
        assert!(w.pending.is_empty(), "worker {}: unsettled requests", w.id);
        assert!(
            w.locked.is_empty(),
            "worker {}: locks left: {:?}",
            w.id,
            w.locked
        );
        let mut c = bounded(Client::connect(addr, w.key.clone()))
            .await
            .expect("sign-on");
        sign_on_last_txn.insert(w.terminal_id, c.session.last_txn_id);
        let this_cycle: Vec<Applied> = w
            .applied
            .iter()
            .filter(|a| a.cycle == cycle)
            .cloned()
            .collect();
        for (n, a) in this_cycle.iter().enumerate() {
            let st = w.status(&mut c, a.txn, &killed).await.expect("live");
            let reversed = w.book.get(&a.txn).is_some_and(|o| o.reversed);
            let want = if reversed {
                TxnState::Reversed
            } else {
                TxnState::Committed
            };
            assert_eq!(
                st.state(),
                want,
                "cycle {cycle}: acknowledged txn {} of terminal {} lost or changed",
                a.txn,
                a.terminal_id
            );
            assert_eq!(st.seq, a.seq, "txn {}: moved to another record", a.txn);
            let original = st.original.as_ref().expect("original answer");
            assert_eq!(
                receipt(original).hash,
                a.hash,
                "txn {}: record hash changed",
                a.txn
            );
            if n % 23 == 0 {
                let again = roundtrip(&mut c, a.request.clone(), a.signature.clone(), &killed)
                    .await
                    .expect("live")
                    .unwrap_or_else(|code| panic!("retry of acknowledged txn {}: {code:?}", a.txn));
                assert!(
                    again.replayed,
                    "txn {}: retry of an acknowledged request applied again",
                    a.txn
                );
                assert_eq!(receipt(&again).seq, a.seq);
                assert_eq!(receipt(&again).hash, a.hash);
                w.stats.replays_checked += 1;
            }
        }
        for &t in w.tombstones.iter().rev().take(8) {
            let st = w.status(&mut c, t, &killed).await.expect("live");
            assert_eq!(st.state(), TxnState::Tombstoned, "txn {t}: tombstone lost");
        }
    }

    // 2. The auditor's export, verified and replayed.
    let mut owner = bounded(Client::connect(addr, world.owner_key.clone()))
        .await
        .expect("owner sign-on");
    let mut export = Vec::new();
    bounded(owner.export(&mut export)).await.expect("export");
    let opts = VerifyOptions {
        server_key: owner.server_key,
        old_checkpoint: None,
    };
    let report: VerifyReport = verify_export(export.as_slice(), &opts, |_| {})
        .unwrap_or_else(|e| panic!("cycle {cycle}: the export does not verify: {e}"));
    let records = parse_export(&export);
    assert_eq!(report.records, records.len() as u64);
    assert!(report.records >= world.records, "the ledger shrank");
    world.records = report.records;

    // 3. The ledger holds exactly the model's records, each once.
    let mut seen = HashSet::new();
    for (r, _, _) in &records {
        if r.signer() == pb::Signer::Terminal {
            assert!(
                seen.insert((r.terminal_id, r.txn_id)),
                "cycle {cycle}: terminal {} txn {} is in the ledger twice",
                r.terminal_id,
                r.txn_id
            );
        }
    }
    let mut by_seq: HashMap<u64, &Applied> = HashMap::new();
    for a in world.applied() {
        assert!(
            by_seq.insert(a.seq, a).is_none(),
            "two replies name record {}",
            a.seq
        );
    }
    for (r, hash, _) in &records[world.baseline_seq as usize..] {
        let a = by_seq.remove(&r.seq).unwrap_or_else(|| {
            panic!(
                "cycle {cycle}: record {} ({:?}, terminal {} txn {}) was never acknowledged nor settled",
                r.seq,
                r.kind(),
                r.terminal_id,
                r.txn_id
            )
        });
        assert_eq!(r.kind(), a.kind, "record {}: kind", r.seq);
        assert_eq!(r.terminal_id, a.terminal_id, "record {}: terminal", r.seq);
        assert_eq!(r.txn_id, a.txn, "record {}: txn", r.seq);
        assert_eq!(
            hash.as_slice(),
            a.hash.as_slice(),
            "record {}: receipt hash",
            r.seq
        );
        assert_eq!(r.request, a.request, "record {}: signed bytes", r.seq);
        let delta = r.paid_in_minor + r.bonus_in_minor - r.paid_out_minor - r.bonus_out_minor;
        assert_eq!(delta, a.delta, "record {}: value moved", r.seq);
    }
    assert!(
        by_seq.is_empty(),
        "cycle {cycle}: acknowledged records missing from the ledger: {:?}",
        by_seq.keys().collect::<Vec<_>>()
    );

    // The sign-on tells each till the highest txn id the ledger holds from
    // it (so that a till that crashed knows where it stands).
    let mut max_txn: HashMap<u32, u64> = HashMap::new();
    for (r, _, _) in &records {
        if r.signer() == pb::Signer::Terminal {
            let m = max_txn.entry(r.terminal_id).or_default();
            *m = (*m).max(r.txn_id);
        }
    }
    for (tid, last) in &sign_on_last_txn {
        assert_eq!(
            Some(last),
            max_txn.get(tid),
            "cycle {cycle}: terminal {tid}: sign-on last_txn_id differs from the ledger"
        );
    }

    // 4. Money: flows from the records, the auditor's totals, the cards.
    let (mut loads, mut spends, mut refunds, mut reversals) = (0i128, 0i128, 0i128, 0i128);
    for (r, _, _) in &records {
        let (pi, bi, po, bo) = (
            i128::from(r.paid_in_minor),
            i128::from(r.bonus_in_minor),
            i128::from(r.paid_out_minor),
            i128::from(r.bonus_out_minor),
        );
        match r.kind() {
            RecordKind::TopUp => loads += pi + bi,
            RecordKind::Purchase => spends += po + bo,
            RecordKind::Refund => refunds += pi + bi,
            RecordKind::Reversal => reversals += pi + bi - po - bo,
            _ => assert_eq!(pi + bi + po + bo, 0, "record {}: money moved", r.seq),
        }
    }
    let t = &report.totals;
    assert_eq!(loads, t.loaded_paid_minor + t.bonus_granted_minor);
    assert_eq!(spends, t.spent_minor);
    assert_eq!(refunds, t.refunded_minor);
    assert_eq!(reversals, t.reversed_net_minor);
    let outstanding = t.outstanding_paid_minor + t.outstanding_bonus_minor;
    assert_eq!(
        loads - spends + refunds + reversals,
        outstanding,
        "cycle {cycle}: money not conserved"
    );

    let live = live_cards(&mut owner, &world.cards).await;
    let model = world.model_cards();
    let report_cards: HashMap<&str, &cardd::audit::CardSummary> =
        report.cards.iter().map(|c| (c.card.as_str(), c)).collect();
    let mut live_sum = 0i128;
    for (i, card) in world.cards.iter().enumerate() {
        let l = live[i];
        let (balance, view) = &model[i];
        assert_eq!(
            l.balance(),
            *balance,
            "cycle {cycle}: card {i} holds {}, the model {balance}",
            l.balance()
        );
        if let Some(v) = view {
            assert_eq!(
                (l.paid, l.bonus, l.points),
                (v.paid_balance_minor, v.bonus_balance_minor, v.points),
                "cycle {cycle}: card {i} differs from its newest receipt"
            );
        }
        let r = report_cards[card.as_str()];
        assert_eq!(
            (r.paid_minor, r.bonus_minor, r.points),
            (l.paid, l.bonus, l.points),
            "cycle {cycle}: card {i}: the auditor's replay differs from the daemon"
        );
        live_sum += i128::from(l.balance());
    }
    // Every card of the brand is one of ours, so their sum is the liability.
    assert_eq!(report.cards.len(), world.cards.len());
    assert_eq!(
        live_sum, outstanding,
        "cycle {cycle}: cards do not sum to the liability"
    );

    for w in &world.workers {
        totals.add(&w.stats);
    }
}

/// Keeps every card funded and spends the bonus card's paid value to zero,
/// so that the next storm never runs a card dry and moves bonus value too.
pub(crate) async fn between_storms(world: &mut World, addr: SocketAddr) {
    let killed = AtomicBool::new(false);
    let w = &mut world.workers[0];
    let mut c = bounded(Client::connect(addr, w.key.clone()))
        .await
        .expect("sign-on");
    let cards = world.cards.clone();
    let live = live_cards(&mut c, &cards).await;
    for (i, l) in live.iter().enumerate() {
        // Purchases spend paid value first: normal cards must keep paid
        // value (so that reversing a top-up never meets spent value), the
        // bonus card bonus value.
        let low = if i == BONUS_CARD {
            l.bonus < LOW_BALANCE
        } else {
            l.paid < LOW_BALANCE
        };
        if low {
            w.direct(
                &mut c,
                Planned::TopUp {
                    card: i,
                    amount: REFILL,
                },
                &killed,
            )
            .await;
        }
    }
    let paid = bounded(inquiry(&mut c, &cards[BONUS_CARD]))
        .await
        .paid_balance_minor;
    if paid > 0 {
        w.direct(
            &mut c,
            Planned::Purchase {
                card: BONUS_CARD,
                amount: paid,
            },
            &killed,
        )
        .await;
    }
}

/// The end: the daemon stopped, the auditor's CLI exports the ledger from
/// the data directory and verifies it; its report must match the model.
pub(crate) fn final_offline_audit(world: &World, dir: &Path) -> serde_json::Value {
    let out = dir.join("final.export");
    let v = run::export_and_verify(&world.data, world.brand, &out);
    run::cardd_check(&world.data);
    assert_eq!(
        v["records"].as_u64(),
        Some(world.records),
        "records after the last restart"
    );
    let model = world.model_cards();
    let cards = v["cards"].as_array().expect("cards");
    assert_eq!(cards.len(), world.cards.len());
    let mut sum = 0i64;
    for (i, number) in world.cards.iter().enumerate() {
        let c = cards
            .iter()
            .find(|c| c["card"].as_str() == Some(number.as_str()))
            .unwrap_or_else(|| panic!("card {i} missing from the audit report"));
        let paid = c["paid_minor"].as_i64().expect("paid");
        let bonus = c["bonus_minor"].as_i64().expect("bonus");
        assert_eq!(paid + bonus, model[i].0, "card {i}: audit report vs model");
        if let Some(view) = &model[i].1 {
            assert_eq!(
                (paid, bonus, c["points"].as_i64().expect("points")),
                (
                    view.paid_balance_minor,
                    view.bonus_balance_minor,
                    view.points
                ),
                "card {i}: audit report vs its newest receipt"
            );
        }
        sum += paid + bonus;
    }
    let t = &v["totals"];
    let n = |k: &str| t[k].as_i64().unwrap_or_else(|| panic!("totals.{k}"));
    assert_eq!(
        n("loaded_paid_minor") + n("bonus_granted_minor") - n("spent_minor")
            + n("refunded_minor")
            + n("reversed_net_minor"),
        sum,
        "final: money not conserved"
    );
    assert_eq!(
        n("outstanding_paid_minor") + n("outstanding_bonus_minor"),
        sum
    );
    v
}
