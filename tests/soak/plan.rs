//! A till's planning: which operation next, what it should answer, and
//! how a reply updates what the till knows.
use super::*;

impl Worker {
    pub(crate) fn fresh_txn(&mut self) -> u64 {
        self.next_txn += 1;
        self.txn_base + self.next_txn
    }

    pub(crate) fn make(&mut self, txn: u64, planned: Planned, expect: Expect) -> Sent {
        let card_no = |i: usize| self.cards[i].clone();
        let (op, locks) = match planned {
            Planned::Purchase { card, amount } | Planned::Late { card, amount } => {
                (purchase(&card_no(card), amount), vec![])
            }
            Planned::TopUp { card, amount } => (top_up(&card_no(card), amount), vec![]),
            Planned::Refund {
                purchase: p,
                amount,
            } => (
                Op::Refund(pb::Refund {
                    original_seq: self.book[&p].seq,
                    amount_minor: amount,
                }),
                vec![p],
            ),
            Planned::Reversal { target, .. } => {
                let mut locks = vec![target];
                if let Some(o) = self.book.get(&target) {
                    if o.kind == OwnKind::Refund {
                        locks.push(o.purchase);
                    }
                }
                (
                    Op::Reversal(pb::Reversal {
                        original_txn_id: target,
                    }),
                    locks,
                )
            }
        };
        let req = pb::Request {
            txn_id: txn,
            brand_id: self.brand,
            operator: self.operator.clone(),
            client_time_ms: now_ms(),
            want_proof: false,
            op: Some(op),
        };
        let request = req.encode_to_vec();
        let signature = sign_request(&self.key, &request);
        Sent {
            txn,
            planned,
            expect,
            request,
            signature,
            locks,
        }
    }

    pub(crate) fn random_card(&self, rng: &mut StdRng) -> usize {
        rng.gen_range(0..self.cards.len())
    }

    pub(crate) fn plan_purchase(&mut self, rng: &mut StdRng) -> Sent {
        let card = self.random_card(rng);
        let amount = rng.gen_range(1..=2_000);
        let txn = self.fresh_txn();
        self.make(txn, Planned::Purchase { card, amount }, OK)
    }

    pub(crate) fn plan_top_up(&mut self, rng: &mut StdRng) -> Sent {
        let card = self.random_card(rng);
        // Mostly small loads; one in five earns bonus under the demo rules.
        let amount = if rng.gen_bool(0.8) {
            rng.gen_range(1_000..=10_000)
        } else {
            rng.gen_range(50_000..=120_000)
        };
        let txn = self.fresh_txn();
        self.make(txn, Planned::TopUp { card, amount }, OK)
    }

    pub(crate) fn recent_unlocked(&self) -> Vec<u64> {
        let from = self.recent.len().saturating_sub(RECENT);
        self.recent[from..]
            .iter()
            .copied()
            .filter(|t| !self.locked.contains(t))
            .filter(|t| {
                // A refund also locks its purchase.
                let o = &self.book[t];
                o.kind != OwnKind::Refund || !self.locked.contains(&o.purchase)
            })
            .collect()
    }

    pub(crate) fn plan_refund(&mut self, rng: &mut StdRng) -> Option<Sent> {
        let candidates: Vec<u64> = self
            .recent_unlocked()
            .into_iter()
            .filter(|t| {
                let o = &self.book[t];
                o.kind == OwnKind::Purchase && !o.reversed && o.value > o.refunded
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let p = candidates[rng.gen_range(0..candidates.len())];
        let left = self.book[&p].value - self.book[&p].refunded;
        let amount = rng.gen_range(1..=left);
        let txn = self.fresh_txn();
        Some(self.make(
            txn,
            Planned::Refund {
                purchase: p,
                amount,
            },
            OK,
        ))
    }

    /// What reversing own, settled `target` must answer.
    pub(crate) fn predict_reversal(&self, target: u64) -> Expect {
        let o = &self.book[&target];
        if o.reversed {
            return expect_refusal(ErrorCode::AlreadyReversed);
        }
        if o.kind == OwnKind::Purchase && o.refunded > 0 {
            return expect_refusal(ErrorCode::NotReversible);
        }
        if o.card == BONUS_CARD && o.kind != OwnKind::Purchase {
            // Taking value back needs it on the card: the bonus card's
            // paid value is spent to zero each cycle, and other tills spend
            // from it concurrently.
            return Expect {
                ok: true,
                refusal: Some(ErrorCode::InsufficientFunds),
            };
        }
        OK
    }

    pub(crate) fn plan_reversal(&mut self, rng: &mut StdRng) -> Sent {
        let pick = rng.gen_range(0..100);
        if pick < 55 {
            let candidates = self.recent_unlocked();
            if !candidates.is_empty() {
                let target = candidates[rng.gen_range(0..candidates.len())];
                let expect = self.predict_reversal(target);
                let found = expect.ok.then_some(true);
                let txn = self.fresh_txn();
                return self.make(txn, Planned::Reversal { target, found }, expect);
            }
        } else if pick >= 85 && !self.tombstones.is_empty() {
            // A second reversal of a tombstoned id.
            let target = self.tombstones[rng.gen_range(0..self.tombstones.len())];
            if !self.locked.contains(&target) {
                let txn = self.fresh_txn();
                return self.make(
                    txn,
                    Planned::Reversal {
                        target,
                        found: None,
                    },
                    expect_refusal(ErrorCode::AlreadyReversed),
                );
            }
        }
        // Reversal of a txn id this till skipped and never sent: a tombstone.
        let target = self.fresh_txn();
        let txn = self.fresh_txn();
        self.make(
            txn,
            Planned::Reversal {
                target,
                found: Some(false),
            },
            OK,
        )
    }

    pub(crate) fn plan_late(&mut self, rng: &mut StdRng) -> Option<Sent> {
        if self.tombstones_unsent.is_empty() {
            return None;
        }
        let i = rng.gen_range(0..self.tombstones_unsent.len());
        let txn = self.tombstones_unsent.swap_remove(i);
        let card = self.random_card(rng);
        let amount = rng.gen_range(1..=2_000);
        Some(self.make(
            txn,
            Planned::Late { card, amount },
            expect_refusal(ErrorCode::TxnReversed),
        ))
    }

    pub(crate) fn plan(&mut self, rng: &mut StdRng) -> Sent {
        let r = rng.gen_range(0..100);
        let planned = if r < 60 {
            None
        } else if r < 75 {
            Some(self.plan_top_up(rng))
        } else if r < 85 {
            self.plan_refund(rng)
        } else if r < 95 {
            Some(self.plan_reversal(rng))
        } else {
            self.plan_late(rng)
        };
        let s = planned.unwrap_or_else(|| self.plan_purchase(rng));
        self.locked.extend(s.locks.iter().copied());
        s
    }

    pub(crate) fn unlock(&mut self, s: &Sent) {
        for t in &s.locks {
            self.locked.remove(t);
        }
    }

    pub(crate) fn check_refusal(&self, s: &Sent, code: ErrorCode) {
        assert_eq!(
            s.expect.refusal,
            Some(code),
            "worker {} txn {} ({:?}) refused with {code:?}, expected {:?}",
            self.id,
            s.txn,
            s.planned,
            s.expect
        );
    }

    /// Folds a result (fresh, replayed or read back by TxnStatus) into the
    /// model, checking it says what the request asked.
    pub(crate) fn settle(&mut self, s: &Sent, reply: &pb::Reply) {
        assert!(
            s.expect.ok,
            "worker {} txn {} ({:?}) succeeded, expected {:?}",
            self.id, s.txn, s.planned, s.expect
        );
        let r = receipt(reply);
        assert_eq!(r.txn_id, s.txn, "receipt for another txn");
        assert_eq!(
            r.terminal_id, self.terminal_id,
            "receipt of another terminal"
        );
        let view = reply.card.clone();
        let card_of = |view: &Option<pb::CardView>, card: usize| {
            let v = view.as_ref().expect("a money reply shows the card");
            assert_eq!(v.card, self.cards[card], "reply shows another card");
            card
        };
        let (kind, card, delta) = match (s.planned, &reply.detail) {
            (Planned::Purchase { card, amount }, Some(Detail::Purchase(p))) => {
                assert_eq!(p.requested_minor, amount);
                assert_eq!(p.approved_minor, amount, "txn {}: partial purchase", s.txn);
                let card = card_of(&view, card);
                self.own(s.txn, OwnKind::Purchase, r.seq, card, amount, 0);
                (RecordKind::Purchase, Some(card), -amount)
            }
            (Planned::TopUp { card, amount }, Some(Detail::TopUp(t))) => {
                assert_eq!(t.paid_minor, amount);
                assert!(t.bonus_minor >= 0);
                let card = card_of(&view, card);
                let value = t.paid_minor + t.bonus_minor;
                self.own(s.txn, OwnKind::TopUp, r.seq, card, value, 0);
                (RecordKind::TopUp, Some(card), value)
            }
            (
                Planned::Refund {
                    purchase: p,
                    amount,
                },
                Some(Detail::Refund(f)),
            ) => {
                assert_eq!(f.refunded_minor, amount, "txn {}: refund amount", s.txn);
                let orig = self.book.get_mut(&p).expect("refund of a known purchase");
                assert!(!orig.reversed, "refund of a reversed purchase applied");
                orig.refunded += amount;
                assert_eq!(
                    f.refundable_left_minor,
                    orig.value - orig.refunded,
                    "txn {}: refundable left",
                    s.txn
                );
                let card = card_of(&view, orig.card);
                self.own(s.txn, OwnKind::Refund, r.seq, card, amount, p);
                (RecordKind::Refund, Some(card), amount)
            }
            (Planned::Reversal { target, found }, Some(Detail::Reversal(v))) => {
                assert_eq!(v.original_txn_id, target);
                if let Some(f) = found {
                    assert_eq!(v.original_found, f, "txn {}: reversal of {target}", s.txn);
                }
                if v.original_found {
                    let o = self
                        .book
                        .get_mut(&target)
                        .expect("a reversal that found the original: original settled first");
                    assert!(!o.reversed, "txn {target} reversed twice");
                    assert_eq!(v.original_seq, o.seq, "reversal names another record");
                    assert_eq!(v.value_minor, o.value, "txn {}: reversal value", s.txn);
                    o.reversed = true;
                    let (okind, ocard, ovalue, opurchase) = (o.kind, o.card, o.value, o.purchase);
                    let delta = match okind {
                        OwnKind::Purchase => ovalue,
                        OwnKind::TopUp | OwnKind::Refund => -ovalue,
                    };
                    if okind == OwnKind::Refund {
                        self.book
                            .get_mut(&opurchase)
                            .expect("refund's purchase")
                            .refunded -= ovalue;
                    }
                    let card = card_of(&view, ocard);
                    (RecordKind::Reversal, Some(card), delta)
                } else {
                    assert!(view.is_none(), "a tombstone shows a card");
                    assert!(
                        !self.book.contains_key(&target),
                        "tombstone for an applied txn"
                    );
                    self.tombstones.push(target);
                    self.tombstones_unsent.push(target);
                    (RecordKind::Reversal, None, 0)
                }
            }
            (planned, detail) => panic!("txn {}: {planned:?} answered with {detail:?}", s.txn),
        };
        self.applied.push(Applied {
            terminal_id: self.terminal_id,
            txn: s.txn,
            seq: r.seq,
            hash: r.hash.clone(),
            request: s.request.clone(),
            signature: s.signature.clone(),
            kind,
            card,
            delta,
            view,
            cycle: self.cycle,
        });
    }

    pub(crate) fn own(
        &mut self,
        txn: u64,
        kind: OwnKind,
        seq: u64,
        card: usize,
        value: i64,
        purchase: u64,
    ) {
        let prev = self.book.insert(
            txn,
            Own {
                kind,
                seq,
                card,
                value,
                purchase,
                refunded: 0,
                reversed: false,
            },
        );
        assert!(prev.is_none(), "txn {txn} applied twice");
        self.recent.push(txn);
    }
}
