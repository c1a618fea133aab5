//! Target 2, request_handler: the starting world, the invariants checked
//! after every step, and the replay at the end. How an input becomes steps
//! is in `checks_request_steps.rs`.
use super::*;

#[path = "checks_request_steps.rs"]
mod steps;

/// The brand the request_handler world runs.
pub const BRAND: u32 = 7;
/// Cards issued and funded in the starting state.
pub const START_CARDS: usize = 4;
/// Steps taken from one input at most.
pub const MAX_STEPS: usize = 256;
/// Signature bytes kept in records (the state machine does not check them).
const SIGNATURE: [u8; 64] = [0x5a; 64];

struct Keys {
    server: [u8; 32],
    owner: [u8; 32],
    /// Valid keys for terminals (the first two are enrolled at the start).
    pool: Vec<[u8; 32]>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        server: cardd::testing::key(1).verifying_key().to_bytes(),
        owner: cardd::testing::key(2).verifying_key().to_bytes(),
        pool: (3..11)
            .map(|s| cardd::testing::key(s).verifying_key().to_bytes())
            .collect(),
    })
}

/// A valid card number (prefix and Luhn digit) of `brand` from a counter.
pub fn card_for(brand: u32, i: u64) -> String {
    let body = format!("8{brand:05}{:012}", i % 1_000_000_000_000);
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|n| cardd::card_number::parse(n) == Some(brand))
        .expect("one check digit fits")
}

/// Step tags of the structured mode (tag byte < `RAW_TAG`, modulo 20).
pub mod tag {
    pub const INQUIRY: u8 = 0;
    pub const PURCHASE: u8 = 1;
    pub const TOP_UP: u8 = 2;
    pub const REFUND: u8 = 3;
    pub const REVERSAL: u8 = 4;
    pub const REDEEM_POINTS: u8 = 5;
    pub const CLOSE_SHIFT: u8 = 6;
    pub const TXN_STATUS: u8 = 7;
    pub const CREATE_STORE: u8 = 8;
    pub const ENROLL_TERMINAL: u8 = 9;
    pub const ISSUE_CARD: u8 = 10;
    pub const SET_CARD_BLOCKED: u8 = 11;
    pub const REPLACE_CARD: u8 = 12;
    pub const SET_RULES: u8 = 13;
    pub const EXPORT_LEDGER: u8 = 14;
    pub const CONSISTENCY_PROOF: u8 = 15;
    pub const CREATE_BRAND: u8 = 16;
    /// Send an earlier written request again, byte for byte.
    pub const RETRY: u8 = 17;
    /// Send a different request under an earlier request's txn id.
    pub const CONFLICT: u8 = 18;
    /// Move the clock (a day, or to an extreme).
    pub const CLOCK: u8 = 19;
    pub const COUNT: u8 = 20;
    /// A tag byte at or above this is a raw step: principal byte, u16 LE
    /// length, then that many bytes decoded with `Request::decode`.
    pub const RAW: u8 = 0xC0;
}

/// What one request_handler input did (for the test's coverage checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRun {
    pub steps: usize,
    pub raw_undecodable: usize,
    pub refused: BTreeMap<i32, usize>,
    pub written: BTreeMap<i32, usize>,
    pub answers: usize,
}

/// The state machine plus everything the invariants are checked against.
#[derive(Clone)]
pub struct World {
    pub state: BrandState,
    /// Every record written, in order (`written[i].record.seq == i + 1`).
    pub written: Vec<Written>,
    /// (principal, exact request bytes) of written requests with a txn id.
    pub sent: Vec<(Principal, Vec<u8>)>,
    /// Next fresh txn id per principal namespace.
    next_txn: BTreeMap<u32, u64>,
    pub time_ms: i64,
    /// Card numbers named so far (issued, replaced, or tried).
    pub cards: Vec<String>,
    fresh_cards: u64,
    /// Net value and points the records moved (replacements excluded).
    net_paid: i128,
    net_bonus: i128,
    net_points: i128,
    /// Each terminal's shift totals recomputed from its records.
    shifts: BTreeMap<u32, pb::ShiftTotals>,
    pub run: RequestRun,
}

impl World {
    /// The starting world: a brand with the demo rules, two stores, one
    /// terminal in each, four cards (three funded, one with a purchase).
    pub fn start() -> World {
        static START: OnceLock<World> = OnceLock::new();
        START.get_or_init(World::build_start).clone()
    }

    fn build_start() -> World {
        let k = keys();
        let mut w = World {
            state: BrandState::new(BRAND),
            written: vec![],
            sent: vec![],
            next_txn: BTreeMap::new(),
            time_ms: 1_790_000_000_000,
            cards: vec![],
            fresh_cards: 1_000,
            net_paid: 0,
            net_bonus: 0,
            net_points: 0,
            shifts: BTreeMap::new(),
            run: RequestRun::default(),
        };
        let must = |w: &mut World, p: Principal, op: Op| {
            let txn = w.fresh_txn(p);
            match w.submit(p, txn, String::new(), op) {
                Ok(Outcome::Written(_)) => {}
                other => panic!("start-up step failed: {other:?}"),
            }
        };
        must(
            &mut w,
            Principal::Server,
            Op::CreateBrand(testing::create_brand("Fuzz", &k.owner)),
        );
        must(
            &mut w,
            Principal::Owner,
            Op::SetRules(pb::SetRules {
                rules: Some(cardd::demo::demo_rules()),
            }),
        );
        for name in ["A", "B"] {
            must(&mut w, Principal::Owner, testing::create_store(name));
        }
        for (i, key) in k.pool[..2].iter().enumerate() {
            must(
                &mut w,
                Principal::Owner,
                testing::enroll_terminal(i as u32 + 1, key, &format!("till {}", i + 1)),
            );
        }
        for i in 0..START_CARDS {
            let card = card_for(BRAND, i as u64);
            must(&mut w, Principal::Owner, testing::issue_card(&card));
        }
        for (card, term, amount) in [(0, 1, 120_000), (1, 2, 50_000), (2, 1, 1_000)] {
            let card = w.cards[card].clone();
            must(
                &mut w,
                Principal::Terminal(term),
                testing::top_up(&card, amount),
            );
        }
        let card = w.cards[0].clone();
        must(
            &mut w,
            Principal::Terminal(1),
            testing::purchase(&card, 12_345, false),
        );
        w.run = RequestRun::default();
        w
    }

    fn fresh_txn(&mut self, p: Principal) -> u64 {
        let next = self.next_txn.entry(p.txn_namespace()).or_insert(1);
        let t = *next;
        *next = next.wrapping_add(1).max(1);
        t
    }

    fn terminal_count(&self) -> u32 {
        self.state.terminals.len() as u32
    }

    /// The key enrolled for `p` (the server checks it before the state
    /// machine runs; records keep it and replay compares it).
    fn signer_key(&self, p: Principal) -> [u8; 32] {
        match p {
            Principal::Server => keys().server,
            Principal::Owner => self.state.owner_key,
            Principal::Terminal(id) => self.state.terminals[&id].public_key,
            // The fuzzer signs as the server, the owner or a terminal only.
            Principal::Auditor(id) | Principal::StoreManager(id, _) => {
                self.state.read_keys[&id].public_key
            }
        }
    }

    fn submit(
        &mut self,
        p: Principal,
        txn: u64,
        operator: String,
        op: Op,
    ) -> Result<Outcome, Refusal> {
        let req = testing::request_as(BRAND, txn, &operator, op);
        let bytes = req.encode_to_vec();
        self.apply_checked(p, &bytes, &req)
    }

    /// Applies `req` (whose exact bytes are `bytes`) as `p` and checks every
    /// invariant against the state before.
    pub fn apply_checked(
        &mut self,
        p: Principal,
        bytes: &[u8],
        req: &pb::Request,
    ) -> Result<Outcome, Refusal> {
        self.run.steps += 1;
        self.time_ms = self.time_ms.saturating_add(61_000);
        let key = self.signer_key(p);
        let ctx = Context {
            time_ms: self.time_ms,
            principal: p,
            signer_key: &key,
            request: bytes,
            signature: &SIGNATURE,
            pin_verified: false,
        };
        let before = self.state.clone();
        let out = apply(&mut self.state, &ctx, req);
        match &out {
            Err(refusal) => {
                assert!(
                    self.state == before,
                    "refusal {refusal:?} changed the state"
                );
                assert!(
                    !matches!(
                        refusal.code,
                        ErrorCode::Unspecified | ErrorCode::Internal | ErrorCode::StorageFailure
                    ),
                    "refusal without a proper code: {refusal:?}"
                );
                *self.run.refused.entry(refusal.code as i32).or_default() += 1;
            }
            Ok(Outcome::Written(w)) => {
                self.check_written(&before, &ctx, req, w);
                *self.run.written.entry(w.record.kind).or_default() += 1;
                if req.txn_id != 0 && p != Principal::Server {
                    self.sent.push((p, bytes.to_vec()));
                }
                self.written.push(w.clone());
            }
            Ok(Outcome::Seen { seq }) => {
                assert!(self.state == before, "a seen txn changed the state");
                assert!(
                    (1..=self.state.seq).contains(seq),
                    "seen seq {seq} out of range"
                );
                let rec = &self.written[*seq as usize - 1].record;
                assert_eq!(rec.txn_id, req.txn_id, "seen record has another txn id");
                let rp = cardd::replay::principal_of(rec).expect("record has a signer");
                assert_eq!(
                    rp.txn_namespace(),
                    p.txn_namespace(),
                    "seen record of another signer"
                );
            }
            Ok(Outcome::Status { state: s, seq }) => {
                assert!(self.state == before, "a status query changed the state");
                assert!(
                    matches!(req.op, Some(Op::TxnStatus(_))),
                    "status answer to {:?}",
                    req.op
                );
                match s {
                    pb::TxnState::Unknown | pb::TxnState::Expired => assert_eq!(*seq, 0),
                    _ => assert!(
                        (1..=self.state.seq).contains(seq),
                        "status seq {seq} out of range"
                    ),
                }
                self.run.answers += 1;
            }
            Ok(Outcome::Answer(reply)) => {
                assert!(self.state == before, "an inquiry changed the state");
                let Some(Op::Inquiry(q)) = &req.op else {
                    panic!("answer to {:?}", req.op)
                };
                let view = reply.card.as_ref().expect("inquiry answer has the card");
                let number: u64 = q.card.parse().expect("an answered card number parses");
                assert_eq!(
                    view,
                    &self
                        .state
                        .card_view(number, &self.state.cards[&number], self.time_ms)
                );
                self.run.answers += 1;
            }
        }
        self.check_state();
        out
    }

    fn check_written(
        &mut self,
        before: &BrandState,
        ctx: &Context,
        req: &pb::Request,
        w: &Written,
    ) {
        let rec = &w.record;
        assert_eq!(rec.seq, before.seq + 1, "record seq does not follow");
        assert_eq!(self.state.seq, rec.seq);
        assert_eq!(
            rec.prev_hash,
            before.head_hash.to_vec(),
            "record does not link to the one before"
        );
        assert_eq!(w.hash, cardd::crypto::leaf_hash(&w.bytes), "record hash");
        assert_eq!(self.state.head_hash, w.hash);
        assert_eq!(self.state.merkle.size(), self.state.seq);
        assert_eq!(
            rec.encode_to_vec(),
            w.bytes,
            "record bytes are not its encoding"
        );
        assert_eq!(
            &pb::Record::decode(w.bytes.as_slice()).expect("record decodes"),
            rec
        );
        assert_eq!(
            rec.request, ctx.request,
            "record does not keep the signed bytes"
        );
        assert_eq!(rec.request_signature, ctx.signature);
        assert_eq!(rec.signer_public_key, ctx.signer_key.to_vec());
        assert_eq!(rec.signer, ctx.principal.signer() as i32);
        assert_eq!(
            (rec.time_ms, rec.brand_id, rec.txn_id),
            (ctx.time_ms, BRAND, req.txn_id)
        );
        assert_eq!(rec.operator, req.operator);
        for (name, v) in [
            ("paid_in", rec.paid_in_minor),
            ("bonus_in", rec.bonus_in_minor),
            ("paid_out", rec.paid_out_minor),
            ("bonus_out", rec.bonus_out_minor),
            ("points_in", rec.points_in),
            ("points_out", rec.points_out),
            // Rules from before `exact_refunds` could write -1 here after
            // a reversed refund; their chains keep it.
            (
                "points_value",
                if before.rules.exact_refunds {
                    rec.points_value_minor
                } else {
                    0
                },
            ),
        ] {
            assert!(
                v >= 0,
                "record {} ({:?}) has negative {name} = {v}",
                rec.seq,
                rec.kind()
            );
        }
        if rec.txn_id != 0 && ctx.principal != Principal::Server {
            assert_eq!(
                self.state
                    .txns
                    .get(&(ctx.principal.txn_namespace(), rec.txn_id)),
                Some(&TxnEntry::Committed(rec.seq)),
                "written txn is not in the idempotency index"
            );
        }
        let kind = rec.kind();
        // The card the record names holds what the record says.
        let mut touched = vec![];
        if !rec.card.is_empty() {
            let number: u64 = rec.card.parse().expect("record card parses");
            let card = &self.state.cards[&number];
            assert_eq!(
                (
                    rec.paid_balance_after_minor,
                    rec.bonus_balance_after_minor,
                    rec.points_after,
                    rec.card_status_after,
                    rec.total_spend_after_minor,
                    rec.visits_after
                ),
                (
                    card.paid,
                    card.bonus,
                    card.points,
                    card.status as i32,
                    card.total_spend,
                    card.visits
                ),
                "record {} disagrees with its card",
                rec.seq
            );
            let old = before.cards.get(&number).cloned().unwrap_or_default();
            if kind == RecordKind::CardReplaced {
                let other: u64 = rec.other_card.parse().expect("replaced card parses");
                let was = &before.cards[&other];
                assert!(old == Card::default(), "replacement onto an existing card");
                assert_eq!(
                    (card.paid, card.bonus, card.points),
                    (was.paid, was.bonus, was.points)
                );
                assert_eq!(
                    (rec.paid_in_minor, rec.bonus_in_minor, rec.points_in),
                    (was.paid, was.bonus, was.points)
                );
                let retired = &self.state.cards[&other];
                assert_eq!((retired.paid, retired.bonus, retired.points), (0, 0, 0));
                touched.push(other);
            } else {
                assert_eq!(
                    i128::from(card.paid) - i128::from(old.paid),
                    i128::from(rec.paid_in_minor) - i128::from(rec.paid_out_minor),
                    "paid delta of record {}",
                    rec.seq
                );
                assert_eq!(
                    i128::from(card.bonus) - i128::from(old.bonus),
                    i128::from(rec.bonus_in_minor) - i128::from(rec.bonus_out_minor),
                    "bonus delta of record {}",
                    rec.seq
                );
                assert_eq!(
                    i128::from(card.points) - i128::from(old.points),
                    i128::from(rec.points_in) - i128::from(rec.points_out),
                    "points delta of record {}",
                    rec.seq
                );
            }
            touched.push(number);
            if matches!(kind, RecordKind::CardIssued | RecordKind::CardReplaced)
                && !self.cards.contains(&rec.card)
            {
                self.cards.push(rec.card.clone());
            }
        } else {
            let net =
                rec.paid_in_minor | rec.bonus_in_minor | rec.paid_out_minor | rec.bonus_out_minor;
            assert_eq!(
                net | rec.points_in | rec.points_out,
                0,
                "a record without a card moves value"
            );
        }
        // No other card changed.
        assert_eq!(
            self.state.cards.len(),
            before.cards.len()
                + usize::from(matches!(
                    kind,
                    RecordKind::CardIssued | RecordKind::CardReplaced
                ))
        );
        for (number, card) in &self.state.cards {
            if !touched.contains(number) {
                assert!(
                    before.cards.get(number) == Some(card),
                    "record {} changed card {number} it does not name",
                    rec.seq
                );
            }
        }
        if kind != RecordKind::CardReplaced {
            self.net_paid += i128::from(rec.paid_in_minor) - i128::from(rec.paid_out_minor);
            self.net_bonus += i128::from(rec.bonus_in_minor) - i128::from(rec.bonus_out_minor);
            self.net_points += i128::from(rec.points_in) - i128::from(rec.points_out);
        }
        // Shift totals recomputed from the terminal's own records.
        if kind == RecordKind::TerminalEnrolled {
            self.shifts.insert(rec.new_id, pb::ShiftTotals::default());
        }
        if let Principal::Terminal(t) = ctx.principal {
            let s = self.shifts.entry(t).or_default();
            let value = |a: i64, b: i64| a.checked_add(b).expect("record values fit");
            match kind {
                RecordKind::Purchase => {
                    s.purchase_count += 1;
                    s.purchase_minor += value(rec.paid_out_minor, rec.bonus_out_minor);
                }
                RecordKind::TopUp => {
                    s.top_up_count += 1;
                    s.top_up_minor += rec.paid_in_minor;
                }
                RecordKind::Refund => {
                    s.refund_count += 1;
                    s.refund_minor += value(rec.paid_in_minor, rec.bonus_in_minor);
                }
                RecordKind::Reversal => {
                    s.reversal_count += 1;
                    s.reversal_minor += value(
                        value(rec.paid_in_minor, rec.bonus_in_minor),
                        value(rec.paid_out_minor, rec.bonus_out_minor),
                    );
                }
                RecordKind::PointsRedeemed => {
                    s.redeem_count += 1;
                    s.redeem_points += rec.points_out;
                }
                RecordKind::ShiftClosed => {
                    assert_eq!(
                        rec.shift_totals.as_ref(),
                        Some(&*s),
                        "shift close totals differ from the records"
                    );
                    let asked = match &req.op {
                        Some(Op::CloseShift(c)) => c.terminal_totals.as_ref(),
                        _ => None,
                    };
                    assert_eq!(
                        rec.shift_balanced,
                        asked == Some(&*s),
                        "shift_balanced is wrong"
                    );
                    *s = pb::ShiftTotals::default();
                }
                other => panic!("a terminal wrote a {other:?} record"),
            }
        }
    }

    /// Invariants of the whole state, checked after every step.
    fn check_state(&self) {
        let (mut paid, mut bonus, mut points) = (0i128, 0i128, 0i128);
        for (number, c) in &self.state.cards {
            assert!(
                c.paid >= 0 && c.bonus >= 0 && c.points >= 0 && c.total_spend >= 0,
                "card {number} is negative: {c:?}"
            );
            assert!(
                c.paid + c.bonus <= MAX_BALANCE_MINOR,
                "card {number} over the balance limit: {c:?}"
            );
            assert!(
                c.points <= MAX_POINTS,
                "card {number} over the points limit: {c:?}"
            );
            if c.status == pb::CardStatus::Replaced {
                assert_eq!(
                    (c.paid, c.bonus, c.points),
                    (0, 0, 0),
                    "a replaced card holds value"
                );
            }
            paid += i128::from(c.paid);
            bonus += i128::from(c.bonus);
            points += i128::from(c.points);
        }
        assert_eq!(self.state.liability(), (paid, bonus));
        assert_eq!(
            paid, self.net_paid,
            "paid balances differ from the records' net paid deltas"
        );
        assert_eq!(
            bonus, self.net_bonus,
            "bonus balances differ from the records' net bonus deltas"
        );
        assert_eq!(
            points, self.net_points,
            "points differ from the records' net points deltas"
        );
        // A purchase's refund bookkeeping: never more than it spent, and
        // points taken back in proportion to the value refunded, rounded
        // down (the rule in src/state/apply.rs, `refund`).
        for (seq, e) in self.state.effects.iter() {
            if e.kind != RecordKind::Purchase {
                continue;
            }
            assert!(
                (0..=e.paid_out).contains(&e.refunded_paid)
                    && (0..=e.bonus_out).contains(&e.refunded_bonus)
                    && e.refunded_points >= 0,
                "purchase {seq} refund bookkeeping out of range: {e:?}"
            );
            let approved = i128::from(e.paid_out) + i128::from(e.bonus_out);
            let refunded = i128::from(e.refunded_paid) + i128::from(e.refunded_bonus);
            let at_most = i128::from(e.points_in) * refunded / approved;
            assert!(
                i128::from(e.refunded_points) <= at_most,
                "purchase {seq}: {} points taken back for {refunded} of {approved} refunded \
                 (at most {at_most}): {e:?}",
                e.refunded_points
            );
        }
        for (id, t) in &self.state.terminals {
            assert_eq!(
                Some(&t.shift),
                self.shifts.get(id),
                "terminal {id} shift totals differ from its records"
            );
        }
    }

    /// Replays every written record into a fresh state: each must come out
    /// byte for byte, and the result must equal the live state.
    pub fn check_replay(&self) {
        let mut rebuilt = BrandState::new(BRAND);
        for w in &self.written {
            let again = replay_record(&mut rebuilt, w.record.seq, &w.bytes, &keys().server)
                .unwrap_or_else(|e| panic!("replay failed: {e}"));
            assert!(&again == w, "replayed record {} differs", w.record.seq);
        }
        assert!(
            rebuilt == self.state,
            "state rebuilt from the records differs from the live state"
        );
    }
}

/// Runs a request_handler input from the starting world: a sequence of
/// steps, each a tag byte then its fields (see `tag`), checking every
/// invariant after every step and the replay at the end.
pub fn check_request_input(data: &[u8]) -> RequestRun {
    let mut w = World::start();
    let mut r = Reader::new(data);
    let mut steps = 0;
    while !r.is_empty() && steps < MAX_STEPS {
        steps += 1;
        let t = r.byte();
        if t >= tag::RAW {
            w.raw_step(&mut r);
        } else {
            w.structured_step(&mut r, t);
        }
    }
    w.check_replay();
    w.run
}

/// A raw step's bytes, for building seeds.
pub fn raw_step_bytes(principal_byte: u8, req: &pb::Request) -> Vec<u8> {
    let enc = req.encode_to_vec();
    let len = u16::try_from(enc.len()).expect("seed request fits a raw step");
    let mut out = vec![tag::RAW, principal_byte];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&enc);
    out
}

/// Principal bytes for raw steps (`any_principal`).
pub mod principal_byte {
    pub const SERVER: u8 = 0;
    pub const OWNER: u8 = 1;
    /// Terminal 1 (store 1); TERMINAL_1 + 4 is terminal 2 (store 2).
    pub const TERMINAL_1: u8 = 2;
    pub const TERMINAL_2: u8 = 6;
}
