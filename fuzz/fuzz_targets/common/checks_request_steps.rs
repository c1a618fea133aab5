//! How a request_handler input becomes steps: choices read from the input
//! (structured mode) or requests decoded from it as they are (raw mode).
use super::*;

impl World {
    // -- structured mode: choices from the input --------------------------

    pub(super) fn any_principal(&self, p: u8) -> Principal {
        match p % 4 {
            0 => Principal::Server,
            1 => Principal::Owner,
            _ => Principal::Terminal(1 + u32::from(p / 4) % self.terminal_count()),
        }
    }

    /// Mostly the principal the operation belongs to; from 0xE0 any.
    pub(super) fn principal(&self, r: &mut Reader, tag: u8) -> Principal {
        let p = r.byte();
        if p >= 0xE0 {
            return self.any_principal(p);
        }
        match tag {
            tag::CREATE_BRAND => Principal::Server,
            tag::CREATE_STORE..=tag::SET_RULES | tag::EXPORT_LEDGER | tag::CONSISTENCY_PROOF => {
                Principal::Owner
            }
            _ => Principal::Terminal(1 + u32::from(p) % self.terminal_count()),
        }
    }

    pub(super) fn txn(&mut self, r: &mut Reader, p: Principal) -> u64 {
        match r.byte() {
            0..=239 => self.fresh_txn(p),
            240 => 0,
            241 => u64::MAX,
            242 => r.u64(),
            _ => {
                // Reuse one of this signer's earlier ids.
                let last = self.next_txn.get(&p.txn_namespace()).copied().unwrap_or(1);
                last.saturating_sub(1 + u64::from(r.byte() % 8)).max(1)
            }
        }
    }

    pub(super) fn text(&mut self, r: &mut Reader) -> String {
        match r.byte() {
            0..=199 => String::new(),
            200..=219 => "cashier".into(),
            220 => "x".repeat(64),
            221 => "x".repeat(65),
            222 => "é".repeat(32),
            223 => "tab\there".into(),
            224 => "\u{7f}".into(),
            225 => "y".repeat(201),
            _ => {
                let n = usize::from(r.byte() % 80);
                String::from_utf8_lossy(r.take(n)).into_owned()
            }
        }
    }

    pub(super) fn card(&mut self, r: &mut Reader) -> String {
        let c = r.byte();
        match c {
            0..=199 => self.cards[usize::from(c) % self.cards.len()].clone(),
            200..=219 => {
                self.fresh_cards += 1;
                card_for(BRAND, self.fresh_cards)
            }
            220 => card_for(BRAND + 1, 1),
            221 => String::new(),
            222 => {
                // A known number with a wrong check digit.
                let mut s = self.cards[0].clone().into_bytes();
                s[18] = b'0' + (s[18] - b'0' + 1) % 10;
                String::from_utf8(s).expect("digits")
            }
            223 => "8".repeat(19),
            224 => "9".repeat(40),
            225 => format!("{}x", &self.cards[0][..18]),
            226 => "18446744073709551615".into(),
            227 => "-800007000000000000".into(),
            228 => card_for(0, 5),
            229 => card_for(99_999, 5),
            _ => {
                let n = usize::from(r.byte() % 24);
                String::from_utf8_lossy(r.take(n)).into_owned()
            }
        }
    }

    pub(super) fn amount(&mut self, r: &mut Reader) -> i64 {
        match r.byte() {
            // Small sums, where rounding and refund bookkeeping bite.
            0..=99 => 1 + i64::from(r.byte()),
            100..=199 => 1 + i64::from(r.u16()) * 7,
            200 => 0,
            201 => -1,
            202 => i64::MIN,
            203 => i64::MAX,
            204 => MAX_AMOUNT_MINOR,
            205 => MAX_AMOUNT_MINOR + 1,
            206 => MAX_BALANCE_MINOR,
            207 => MAX_BALANCE_MINOR + 1,
            208 => i64::from(r.u32()),
            209 => -i64::from(r.u32()),
            210 => 1,
            // The balance of a known card: the exact boundary.
            211 => {
                let card = self.card(r);
                card.parse::<u64>()
                    .ok()
                    .and_then(|n| self.state.cards.get(&n))
                    .map_or(0, Card::balance)
            }
            _ => r.i64(),
        }
    }

    pub(super) fn points(&mut self, r: &mut Reader) -> i64 {
        match r.byte() {
            0..=199 => 1 + i64::from(r.u16() % 1_000),
            200 => 0,
            201 => -1,
            202 => i64::MIN,
            203 => i64::MAX,
            204 => MAX_POINTS,
            205 => MAX_POINTS + 1,
            _ => r.i64(),
        }
    }

    pub(super) fn u32_extreme(&mut self, r: &mut Reader, normal: u32) -> u32 {
        match r.byte() {
            0..=199 => normal,
            200 => 0,
            201 => u32::MAX,
            202 => i32::MAX as u32,
            _ => r.u32(),
        }
    }

    /// A seq: mostly one of the records written so far.
    pub(super) fn seq(&mut self, r: &mut Reader, want: Option<RecordKind>) -> u64 {
        match r.byte() {
            0..=199 => {
                let pick = usize::from(r.byte());
                let of_kind: Vec<u64> = self
                    .written
                    .iter()
                    .filter(|w| want.is_none_or(|k| w.record.kind() == k))
                    .map(|w| w.record.seq)
                    .collect();
                if of_kind.is_empty() {
                    1
                } else {
                    // Count from the newest: recent purchases are the usual target.
                    of_kind[of_kind.len() - 1 - pick % of_kind.len()]
                }
            }
            200 => 0,
            201 => u64::MAX,
            202 => self.state.seq + 1,
            _ => r.u64(),
        }
    }

    /// A txn id of `p`: mostly one it used, else a fresh or odd one.
    pub(super) fn txn_ref(&mut self, r: &mut Reader, p: Principal, own: u64) -> u64 {
        match r.byte() {
            0..=199 => {
                let last = self.next_txn.get(&p.txn_namespace()).copied().unwrap_or(1);
                last.saturating_sub(2 + u64::from(r.byte() % 8)).max(1)
            }
            200..=219 => {
                self.next_txn.get(&p.txn_namespace()).copied().unwrap_or(1)
                    + 1
                    + u64::from(r.byte())
            }
            220 => 0,
            221 => own,
            222 => u64::MAX,
            _ => r.u64(),
        }
    }

    pub(super) fn public_key(&mut self, r: &mut Reader) -> Vec<u8> {
        let k = keys();
        match r.byte() {
            0..=199 => k.pool[usize::from(r.byte()) % k.pool.len()].to_vec(),
            200 => k.owner.to_vec(),
            201 => k.server.to_vec(),
            202 => vec![],
            203 => k.pool[2][..31].to_vec(),
            204 => [k.pool[2].as_slice(), &[0]].concat(),
            205 => [0u8; 32].to_vec(),
            206 => {
                // The identity point: a small-order (weak) key.
                let mut id = [0u8; 32];
                id[0] = 1;
                id.to_vec()
            }
            207 => [0xffu8; 32].to_vec(),
            _ => r.take(32).to_vec(),
        }
    }

    pub(super) fn shift_totals(&mut self, r: &mut Reader, p: Principal) -> Option<pb::ShiftTotals> {
        let server = match p {
            Principal::Terminal(id) => self.state.terminals[&id].shift,
            _ => pb::ShiftTotals::default(),
        };
        match r.byte() {
            0..=199 => Some(server),
            200 => None,
            201 => Some(pb::ShiftTotals {
                purchase_count: server.purchase_count.wrapping_add(1),
                ..server
            }),
            202 => Some(pb::ShiftTotals {
                top_up_minor: server.top_up_minor.wrapping_sub(1),
                ..server
            }),
            _ => Some(pb::ShiftTotals {
                purchase_count: r.u32(),
                purchase_minor: r.i64(),
                top_up_count: r.u32(),
                top_up_minor: r.i64(),
                refund_count: r.u32(),
                refund_minor: r.i64(),
                reversal_count: r.u32(),
                reversal_minor: r.i64(),
                redeem_count: r.u32(),
                redeem_points: r.i64(),
            }),
        }
    }

    pub(super) fn rules(&mut self, r: &mut Reader) -> Option<pb::Rules> {
        let shape = r.byte();
        if shape >= 250 {
            return None;
        }
        if shape < 100 {
            return Some(cardd::demo::demo_rules());
        }
        // Ascending thresholds unless the input says otherwise.
        let ascending = shape < 200;
        let n_bonus = usize::from(r.byte() % 18);
        let mut bonus_tiers = Vec::with_capacity(n_bonus);
        let mut floor = 0i64;
        for _ in 0..n_bonus {
            let step = self.amount(r);
            let min_load_minor = if ascending {
                floor.saturating_add(step.max(1))
            } else {
                step
            };
            floor = min_load_minor;
            let fixed_bonus_minor = self.amount(r);
            let normal_bps = u32::from(r.u16() % 10_001);
            let bonus_bps = self.u32_extreme(r, normal_bps);
            bonus_tiers.push(pb::BonusTier {
                min_load_minor,
                fixed_bonus_minor,
                bonus_bps,
            });
        }
        let points_per_unit = match r.byte() {
            0..=199 => i64::from(r.byte()) * 4,
            200 => 1_000,
            201 => 1_001,
            202 => -1,
            203 => i64::MAX,
            204 => i64::MIN,
            _ => r.i64(),
        };
        let n_tiers = usize::from(r.byte() % 18);
        let mut tiers = Vec::with_capacity(n_tiers);
        let mut floor = -1i64;
        for i in 0..n_tiers {
            let step = self.amount(r);
            let min_spend_minor = if ascending {
                floor.saturating_add(step.max(1))
            } else {
                step
            };
            floor = min_spend_minor;
            let name = match r.byte() {
                0..=199 => format!("tier{i}"),
                _ => self.text(r),
            };
            let normal_visits = u32::from(r.byte());
            let min_visits = self.u32_extreme(r, normal_visits);
            let multiplier_milli = match r.byte() {
                0..=199 => 1_000 + u32::from(r.u16() % 10_000),
                200 => 0,
                201 => 100_000,
                202 => 100_001,
                203 => u32::MAX,
                _ => r.u32(),
            };
            tiers.push(pb::TierRule {
                name,
                min_spend_minor,
                min_visits,
                multiplier_milli,
                ..Default::default()
            });
        }
        let promotion_line = self.text(r);
        Some(pb::Rules {
            bonus_tiers,
            points_per_unit,
            tiers,
            promotion_line,
            // Not drawn from the input: the corpus keeps its meaning.
            time_zone: String::new(),
            ..Default::default()
        })
    }

    /// One structured step: `tag` picks the operation, the rest of its
    /// fields come from the input.
    pub(super) fn structured_step(&mut self, r: &mut Reader, tag: u8) {
        let tag = tag % tag::COUNT;
        match tag {
            tag::RETRY | tag::CONFLICT => {
                let pick = usize::from(r.byte());
                if self.sent.is_empty() {
                    return;
                }
                let (p, bytes) = self.sent[self.sent.len() - 1 - pick % self.sent.len()].clone();
                let mut req = pb::Request::decode(bytes.as_slice()).expect("sent requests decode");
                let original = self.state.txns[&(p.txn_namespace(), req.txn_id)];
                let (TxnEntry::Committed(seq) | TxnEntry::Reversed(seq)) = original else {
                    panic!("sent txn is not committed")
                };
                let bytes = if tag == tag::RETRY {
                    bytes
                } else {
                    req.operator = format!("other {}", r.byte());
                    req.client_time_ms ^= 1;
                    req.encode_to_vec()
                };
                let out = self.apply_checked(p, &bytes, &req);
                // The state machine answers Seen for both; the server then
                // compares the bytes (retry or idempotency conflict).
                assert_eq!(
                    out,
                    Ok(Outcome::Seen { seq }),
                    "repeat of txn {} by {p:?}",
                    req.txn_id
                );
            }
            tag::CLOCK => {
                self.time_ms = match r.byte() {
                    0..=199 => self
                        .time_ms
                        .saturating_add(86_400_000 * (1 + i64::from(r.byte() % 100))),
                    200 => i64::MAX - 1,
                    201 => i64::MIN,
                    202 => 0,
                    203 => -1,
                    204 => self.time_ms.saturating_sub(86_400_000),
                    _ => r.i64(),
                };
            }
            _ => {
                let p = self.principal(r, tag);
                let txn = self.txn(r, p);
                let flags = r.byte();
                let operator = self.text(r);
                let op = self.structured_op(r, tag, p, txn);
                let req = pb::Request {
                    txn_id: txn,
                    brand_id: if flags & 0x80 != 0 { r.u32() } else { BRAND },
                    operator,
                    client_time_ms: if flags & 0x40 != 0 { r.i64() } else { 0 },
                    want_proof: flags & 1 == 1,
                    op: if flags & 0x20 != 0 { None } else { Some(op) },
                };
                let bytes = req.encode_to_vec();
                let _ = self.apply_checked(p, &bytes, &req);
            }
        }
    }

    pub(super) fn structured_op(&mut self, r: &mut Reader, tag: u8, p: Principal, txn: u64) -> Op {
        match tag {
            tag::INQUIRY => Op::Inquiry(pb::Inquiry { card: self.card(r) }),
            tag::PURCHASE => Op::Purchase(pb::Purchase {
                card: self.card(r),
                amount_minor: self.amount(r),
                allow_partial: r.bool(),
                ..Default::default()
            }),
            tag::TOP_UP => Op::TopUp(pb::TopUp {
                card: self.card(r),
                amount_minor: self.amount(r),
                ..Default::default()
            }),
            tag::REFUND => Op::Refund(pb::Refund {
                original_seq: self.seq(r, Some(RecordKind::Purchase)),
                amount_minor: self.amount(r),
            }),
            tag::REVERSAL => Op::Reversal(pb::Reversal {
                original_txn_id: self.txn_ref(r, p, txn),
            }),
            tag::REDEEM_POINTS => Op::RedeemPoints(pb::RedeemPoints {
                card: self.card(r),
                points: self.points(r),
                reward: self.text(r),
                ..Default::default()
            }),
            tag::CLOSE_SHIFT => Op::CloseShift(pb::CloseShift {
                terminal_totals: self.shift_totals(r, p),
            }),
            tag::TXN_STATUS => Op::TxnStatus(pb::TxnStatus {
                txn_id: self.txn_ref(r, p, txn),
            }),
            tag::CREATE_STORE => Op::CreateStore(pb::CreateStore {
                name: match r.byte() {
                    0..=199 => format!("store {}", self.state.stores.len() + 1),
                    _ => self.text(r),
                },
            }),
            tag::ENROLL_TERMINAL => {
                let store = 1 + u32::from(r.byte()) % (self.state.stores.len() as u32 + 1);
                Op::EnrollTerminal(pb::EnrollTerminal {
                    store_id: self.u32_extreme(r, store),
                    public_key: self.public_key(r),
                    label: self.text(r),
                })
            }
            tag::ISSUE_CARD => Op::IssueCard(pb::IssueCard {
                card: match r.byte() {
                    0..=199 => {
                        self.fresh_cards += 1;
                        card_for(BRAND, self.fresh_cards)
                    }
                    _ => self.card(r),
                },
            }),
            tag::SET_CARD_BLOCKED => Op::SetCardBlocked(pb::SetCardBlocked {
                card: self.card(r),
                blocked: r.bool(),
                reason: self.text(r),
            }),
            tag::REPLACE_CARD => {
                let old_card = self.card(r);
                let new_card = match r.byte() {
                    0..=199 => {
                        self.fresh_cards += 1;
                        card_for(BRAND, self.fresh_cards)
                    }
                    _ => self.card(r),
                };
                Op::ReplaceCard(pb::ReplaceCard { old_card, new_card })
            }
            tag::SET_RULES => Op::SetRules(pb::SetRules {
                rules: self.rules(r),
            }),
            tag::EXPORT_LEDGER => Op::ExportLedger(pb::ExportLedger::default()),
            tag::CONSISTENCY_PROOF => Op::ConsistencyProof(pb::GetConsistencyProof {
                old_size: r.u64(),
                new_size: r.u64(),
            }),
            tag::CREATE_BRAND => Op::CreateBrand(pb::CreateBrand {
                name: match r.byte() {
                    0..=199 => "Again".into(),
                    _ => self.text(r),
                },
                currency: match r.byte() {
                    0..=199 => "CNY".into(),
                    200 => "cny".into(),
                    201 => "CNYX".into(),
                    _ => String::new(),
                },
                currency_exponent: self.u32_extreme(r, 2),
                owner_public_key: self.public_key(r),
            }),
            _ => unreachable!("tag {tag} handled by the caller"),
        }
    }

    /// One raw step: a principal byte, a u16 LE length, then that many bytes
    /// decoded as a `Request` under the daemon's acceptance rule
    /// (`cardd::wire`; skipped if refused, as the daemon refuses them before
    /// the state machine) and applied with exactly those bytes as the signed
    /// request.
    pub(super) fn raw_step(&mut self, r: &mut Reader) {
        let p = self.any_principal(r.byte());
        let len = usize::from(r.u16());
        let bytes = r.take(len);
        match cardd::wire::decode_request(bytes) {
            Ok(req) => {
                let _ = self.apply_checked(p, bytes, &req);
            }
            Err(_) => self.run.raw_undecodable += 1,
        }
    }
}
