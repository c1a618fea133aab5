//! Pins the exact output of `apply` for a fixed script of operations.
//!
//! Records are signed, stored and replayed by auditors who compare them byte
//! for byte, so a change that makes `apply` faster must not change a single
//! byte of any record, hash or Merkle node, nor any outcome. The constants
//! below were computed with the code as it stood before the state machine
//! was optimised; any change to them is a change of the ledger format.
use ed25519_dalek::SigningKey;
use prost::Message;
use sha2::{Digest, Sha256};

use super::*;
use crate::crypto::{leaf_hash, sign_request};
use crate::error::Refusal;
use crate::pb::request::Op;

const BRAND: u32 = 42;

/// SHA-256 over the description of every outcome of the script (record
/// hashes with their Merkle nodes, refusal codes, answers, statuses).
const OUTCOMES: &str = "7d3561e11c3dd5de402a04547bc44e172612d2d4dd2d49e62aa6a6d800fe0023";
/// The hash of the last record: it chains every record's exact bytes.
const HEAD: &str = "baa1a2b0be00e435cffc526f5b5b2b3c31662ec0ff7347de0ad41e4aa9067e3d";
/// The Merkle tree head over all the records.
const ROOT: &str = "9fc0ce500f2907aef877c5177f339899c6825ad7b7ceec7e9232d7aae5a10871";
/// Number of records the script writes.
const RECORDS: u64 = 72;

pub(super) struct Script {
    pub(super) state: BrandState,
    pub(super) time_ms: i64,
    owner_txn: u64,
    keys: Vec<(Principal, SigningKey)>,
    next_txn: Vec<u64>,
    digest: Sha256,
    /// Seq of the newest record written.
    last_seq: u64,
    /// The newest record written.
    pub(super) last_record: Option<pb::Record>,
    /// Every record's bytes, in order (for replay tests).
    pub(super) records: Vec<Vec<u8>>,
}

/// A valid card number of `BRAND` from a counter.
/// A whole-amount purchase of `amount_minor` from `card`.
pub(super) fn purchase_op(card: &str, amount_minor: i64) -> Op {
    Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor,
        allow_partial: false,
        ..Default::default()
    })
}

pub(super) fn card(i: u64) -> String {
    let body = format!("8{BRAND:05}{i:012}");
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|n| crate::card_number::parse(n) == Some(BRAND))
        .expect("one check digit fits")
}

impl Script {
    pub(super) fn new() -> Script {
        Script {
            state: BrandState::new(BRAND),
            time_ms: 1_790_000_000_000,
            owner_txn: 0,
            keys: vec![
                (Principal::Server, SigningKey::from_bytes(&[11; 32])),
                (Principal::Owner, SigningKey::from_bytes(&[12; 32])),
                (Principal::Terminal(1), SigningKey::from_bytes(&[13; 32])),
                (Principal::Terminal(2), SigningKey::from_bytes(&[14; 32])),
                (Principal::Terminal(3), SigningKey::from_bytes(&[15; 32])),
                (Principal::Auditor(1), SigningKey::from_bytes(&[31; 32])),
                (
                    Principal::StoreManager(2, 2),
                    SigningKey::from_bytes(&[32; 32]),
                ),
            ],
            next_txn: vec![1, 1, 1],
            digest: Sha256::new(),
            last_seq: 0,
            last_record: None,
            records: Vec::new(),
        }
    }

    /// The brand's first record, signed by the server, naming the owner key.
    pub(super) fn create_brand(&mut self, name: &str) {
        let owner_pk = self.key(Principal::Owner).verifying_key().to_bytes();
        self.send(
            Principal::Server,
            1,
            "",
            Op::CreateBrand(pb::CreateBrand {
                name: name.into(),
                currency: "CNY".into(),
                currency_exponent: 2,
                owner_public_key: owner_pk.to_vec(),
            }),
        );
    }

    pub(super) fn key(&self, p: Principal) -> &SigningKey {
        &self.keys.iter().find(|(k, _)| *k == p).expect("known").1
    }

    /// Signs `p`'s later requests with `key` (a rotated or a wrong key).
    pub(super) fn set_key(&mut self, p: Principal, key: SigningKey) {
        self.keys.retain(|(k, _)| *k != p);
        self.keys.push((p, key));
    }

    /// Applies one request and folds its outcome into the digest.
    pub(super) fn request(
        &mut self,
        p: Principal,
        txn_id: u64,
        operator: &str,
        op: Op,
    ) -> Result<Outcome, Refusal> {
        let req = pb::Request {
            txn_id,
            brand_id: BRAND,
            operator: operator.into(),
            op: Some(op),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        let sig = sign_request(self.key(p), &bytes);
        let pk = self.key(p).verifying_key().to_bytes();
        self.time_ms += 61_000;
        let ctx = Context {
            time_ms: self.time_ms,
            principal: p,
            signer_key: &pk,
            request: &bytes,
            signature: &sig,
            pin_verified: false,
        };
        let out = apply(&mut self.state, &ctx, &req);
        let line = match &out {
            Ok(Outcome::Written(w)) => {
                // The record, its bytes and its hash agree with each other.
                assert_eq!(w.bytes, w.record.encode_to_vec());
                assert_eq!(pb::Record::decode(w.bytes.as_slice()).unwrap(), w.record);
                assert_eq!(w.hash, leaf_hash(&w.bytes));
                self.last_seq = w.record.seq;
                self.last_record = Some(w.record.clone());
                self.records.push(w.bytes.clone());
                format!("W {} {} {:?}", w.record.seq, hex::encode(w.hash), w.nodes)
            }
            Ok(Outcome::Answer(r)) => format!("A {}", hex::encode(r.encode_to_vec())),
            Ok(Outcome::Seen { seq }) => format!("S {seq}"),
            Ok(Outcome::Status { state, seq }) => format!("T {state:?} {seq}"),
            Err(r) => format!("R {:?} {}", r.code, r.message),
        };
        self.digest.update(line.as_bytes());
        self.digest.update(b"\n");
        out
    }

    pub(super) fn send(&mut self, p: Principal, txn_id: u64, operator: &str, op: Op) -> Outcome {
        self.request(p, txn_id, operator, op)
            .expect("the script expects this request to succeed")
    }

    /// A request that must be refused, leaving the state as it was.
    pub(super) fn refused(&mut self, p: Principal, txn_id: u64, op: Op) -> pb::ErrorCode {
        let before = self.state.clone();
        let refusal = self
            .request(p, txn_id, "", op)
            .expect_err("the script expects a refusal");
        assert_eq!(self.state, before, "a refusal changed the state");
        refusal.code
    }

    pub(super) fn owner(&mut self, op: Op) -> u64 {
        self.owner_txn += 1;
        let txn = self.owner_txn;
        self.send(Principal::Owner, txn, "", op);
        self.last_seq
    }

    /// A terminal operation with the terminal's next txn id; returns the
    /// txn id used.
    pub(super) fn till(&mut self, t: u32, operator: &str, op: Op) -> u64 {
        let txn = self.next_txn[t as usize - 1];
        self.next_txn[t as usize - 1] += 1;
        self.send(Principal::Terminal(t), txn, operator, op);
        txn
    }

    pub(super) fn purchase(&mut self, t: u32, card: &str, amount: i64, partial: bool) -> u64 {
        self.till(
            t,
            "cashier 7",
            Op::Purchase(pb::Purchase {
                card: card.into(),
                amount_minor: amount,
                allow_partial: partial,
                ..Default::default()
            }),
        );
        self.last_seq
    }

    /// A brand `name` with one store and till 1, and `cards` cards
    /// (`card(0..cards)`) each holding `balance`.
    pub(super) fn shop(name: &str, cards: u64, balance: i64) -> Script {
        let mut s = Script::new();
        s.create_brand(name);
        s.owner(Op::CreateStore(pb::CreateStore {
            name: "North".into(),
        }));
        let till_pk = s.key(Principal::Terminal(1)).verifying_key().to_bytes();
        s.owner(Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: 1,
            public_key: till_pk.to_vec(),
            label: "till".into(),
        }));
        for i in 0..cards {
            s.owner(Op::IssueCard(pb::IssueCard { card: card(i) }));
            s.top_up(1, &card(i), balance);
        }
        s
    }

    pub(super) fn top_up(&mut self, t: u32, card: &str, amount: i64) {
        self.till(
            t,
            "",
            Op::TopUp(pb::TopUp {
                card: card.into(),
                amount_minor: amount,
                ..Default::default()
            }),
        );
    }
}

#[test]
fn a_fixed_script_writes_exactly_the_pinned_records() {
    use pb::ErrorCode as E;
    let mut s = Script::new();
    s.create_brand("Golden Tea");
    s.owner(Op::SetRules(pb::SetRules {
        rules: Some(crate::demo::demo_rules()),
    }));
    for name in ["North", "South"] {
        s.owner(Op::CreateStore(pb::CreateStore { name: name.into() }));
    }
    for t in 1..=2u32 {
        let pk = s.key(Principal::Terminal(t)).verifying_key().to_bytes();
        s.owner(Op::EnrollTerminal(pb::EnrollTerminal {
            store_id: t,
            public_key: pk.to_vec(),
            label: format!("till {t}"),
        }));
    }
    let cards: Vec<String> = (0..5).map(card).collect();
    for c in &cards[..4] {
        s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
    }
    // Top-ups with both kinds of bonus, purchases whole and partial.
    s.top_up(1, &cards[0], 100_000);
    s.top_up(1, &cards[1], 50_000);
    s.top_up(2, &cards[2], 1_234);
    let p1 = s.purchase(1, &cards[0], 12_345, false);
    s.purchase(1, &cards[0], 250_000, true);
    assert_eq!(
        s.refused(Principal::Terminal(1), 99, purchase_op(&cards[0], 1)),
        E::InsufficientFunds
    );
    // Reaching the gold tier by spend: later purchases earn double points.
    s.top_up(1, &cards[0], 1_000_000);
    s.purchase(1, &cards[0], 300_000, false);
    s.purchase(1, &cards[0], 777, false);
    // A retry of the same txn id is seen, not applied again.
    let txn = s.till(1, "", purchase_op(&cards[1], 1_000));
    s.send(
        Principal::Terminal(1),
        txn,
        "",
        purchase_op(&cards[1], 1_000),
    );
    s.send(
        Principal::Terminal(1),
        0,
        "",
        Op::Inquiry(pb::Inquiry {
            card: cards[0].clone(),
        }),
    );
    // Refunds, then a reversal of the second refund.
    s.till(
        1,
        "",
        Op::Refund(pb::Refund {
            original_seq: p1,
            amount_minor: 2_000,
        }),
    );
    let refund_txn = s.till(
        1,
        "",
        Op::Refund(pb::Refund {
            original_seq: p1,
            amount_minor: 345,
        }),
    );
    s.till(
        1,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: refund_txn,
        }),
    );
    // A reversal of a purchase within the shift.
    let p_txn = s.till(1, "", purchase_op(&cards[1], 2_500));
    s.till(
        1,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: p_txn,
        }),
    );
    // A reversal of a transaction never received leaves a tombstone.
    s.till(
        1,
        "",
        Op::Reversal(pb::Reversal {
            original_txn_id: 500,
        }),
    );
    assert_eq!(
        s.refused(
            Principal::Terminal(1),
            500,
            Op::TopUp(pb::TopUp {
                card: cards[0].clone(),
                amount_minor: 1,
                ..Default::default()
            })
        ),
        E::TxnReversed
    );
    s.till(
        1,
        "",
        Op::RedeemPoints(pb::RedeemPoints {
            card: cards[0].clone(),
            points: 50,
            reward: "a cup of tea".into(),
            ..Default::default()
        }),
    );
    for txn in [1, p_txn, 500, 400] {
        s.send(
            Principal::Terminal(1),
            0,
            "",
            Op::TxnStatus(pb::TxnStatus { txn_id: txn }),
        );
    }
    // Blocking, replacing.
    s.owner(Op::SetCardBlocked(pb::SetCardBlocked {
        card: cards[1].clone(),
        blocked: true,
        reason: "lost".into(),
    }));
    assert_eq!(
        s.refused(Principal::Terminal(2), 98, purchase_op(&cards[1], 1)),
        E::CardBlocked
    );
    s.owner(Op::SetCardBlocked(pb::SetCardBlocked {
        card: cards[1].clone(),
        blocked: false,
        reason: String::new(),
    }));
    s.owner(Op::ReplaceCard(pb::ReplaceCard {
        old_card: cards[1].clone(),
        new_card: cards[4].clone(),
    }));
    // Visits on later days, across both tills, enough records for a Merkle
    // tree several levels deep.
    for i in 0..40i64 {
        if i % 4 == 0 {
            s.time_ms += 86_400_000;
        }
        let t = 1 + (i % 2) as u32;
        let c = &cards[[0, 4, 2][(i % 3) as usize]].clone();
        if i % 5 == 4 {
            s.top_up(t, c, 10_000 + i * 1_001);
        } else {
            s.purchase(t, c, 100 + i * 37, true);
        }
    }
    assert_eq!(
        s.refused(
            Principal::Terminal(2),
            97,
            Op::Refund(pb::Refund {
                original_seq: p1,
                amount_minor: 1,
            })
        ),
        E::WrongStore
    );
    // Shift closes: one balanced, one not.
    let totals = s.state.terminals[&2].shift;
    s.till(
        2,
        "",
        Op::CloseShift(pb::CloseShift {
            terminal_totals: Some(totals),
        }),
    );
    s.till(
        1,
        "",
        Op::CloseShift(pb::CloseShift {
            terminal_totals: Some(pb::ShiftTotals::default()),
        }),
    );
    s.owner(Op::SetTerminalDisabled(pb::SetTerminalDisabled {
        terminal_id: 2,
        disabled: true,
        reason: "stolen".into(),
    }));
    assert_eq!(
        s.refused(
            Principal::Terminal(2),
            96,
            Op::TopUp(pb::TopUp {
                card: cards[0].clone(),
                amount_minor: 1,
                ..Default::default()
            })
        ),
        E::TerminalDisabled
    );

    let outcomes = hex::encode(s.digest.finalize());
    let head = hex::encode(s.state.head_hash);
    let root = hex::encode(s.state.merkle.root());
    let got = (outcomes.as_str(), head.as_str(), root.as_str(), s.state.seq);
    assert_eq!(got, (OUTCOMES, HEAD, ROOT, RECORDS));
}

/// The head hash after `owner_loads_write_exactly_the_pinned_records`.
const OWNER_LOADS_HEAD: &str = "0dfa74e9116cb8cbc031e1e527c90891f392de95731296197fe5da449dff48fb";

/// Owner loads and sales below face value (issue 25): the record fields and
/// the exact bytes, pinned like the main script's.
#[test]
fn owner_loads_write_exactly_the_pinned_records() {
    use pb::{Channel, ErrorCode as E};
    let mut s = Script::new();
    s.create_brand("Golden Tea");
    s.owner(Op::SetRules(pb::SetRules {
        rules: Some(crate::demo::demo_rules()),
    }));
    s.owner(Op::CreateStore(pb::CreateStore {
        name: "North".into(),
    }));
    let pk = s.key(Principal::Terminal(1)).verifying_key().to_bytes();
    s.owner(Op::EnrollTerminal(pb::EnrollTerminal {
        store_id: 1,
        public_key: pk.to_vec(),
        label: "till 1".into(),
    }));
    let cards: Vec<String> = (0..3).map(card).collect();
    for c in &cards {
        s.owner(Op::IssueCard(pb::IssueCard { card: c.clone() }));
    }
    let load = |card: &str, channel: Channel, no_bonus: bool, price_minor: i64| {
        Op::TopUp(pb::TopUp {
            card: card.into(),
            amount_minor: 100_000,
            channel: channel as u32,
            reference: "INV-1".into(),
            no_bonus,
            price_minor,
        })
    };
    let expect = [
        (load(&cards[0], Channel::HeadOffice, false, 0), 15_000, 0),
        (load(&cards[1], Channel::Corporate, true, 0), 0, 0),
        (
            load(&cards[2], Channel::Online, false, 90_000),
            5_000,
            90_000,
        ),
    ];
    for (op, bonus, price) in expect {
        let seq = s.owner(op);
        let rec = last_record(&s, seq);
        assert_eq!((rec.store_id, rec.terminal_id), (0, 0));
        assert_eq!((rec.paid_in_minor, rec.bonus_in_minor), (100_000, bonus));
        assert_eq!((rec.price_minor, rec.reference.as_str()), (price, "INV-1"));
    }
    let mut below = load(&cards[0], Channel::Store, false, 45_000);
    if let Op::TopUp(t) = &mut below {
        t.amount_minor = 50_000;
    }
    s.till(1, "", below);
    assert_eq!(
        s.refused(
            Principal::Owner,
            99,
            load(&cards[0], Channel::Store, false, 0)
        ),
        E::WrongRole
    );
    assert_eq!(
        s.refused(
            Principal::Terminal(1),
            99,
            load(&cards[0], Channel::Online, false, 0)
        ),
        E::WrongRole
    );
    s.owner(Op::SetCardBlocked(pb::SetCardBlocked {
        card: cards[1].clone(),
        blocked: true,
        reason: String::new(),
    }));
    assert_eq!(
        s.refused(
            Principal::Owner,
            99,
            load(&cards[1], Channel::HeadOffice, false, 0)
        ),
        E::CardBlocked
    );
    assert_eq!(hex::encode(s.state.head_hash), OWNER_LOADS_HEAD);
}

/// The record the script wrote as `seq`, its newest (the state keeps no
/// records).
fn last_record(s: &Script, seq: u64) -> pb::Record {
    s.last_record
        .clone()
        .filter(|r| r.seq == seq)
        .expect("the newest record")
}
