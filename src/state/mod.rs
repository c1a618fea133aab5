//! The brand state machine: `apply(state, context, request) -> outcome`.
//!
//! No I/O happens here. The server, start-up recovery, the tests and the
//! auditor's replay all drive this same function; given the same state,
//! request bytes, signer and time it produces the same record, byte for byte.
//! A refused request leaves the state exactly as it was: every operation
//! validates fully before it mutates anything.
mod apply;
pub mod books;
#[cfg(test)]
mod books_tests;
pub mod delta;
#[cfg(test)]
mod golden;
pub mod lots;
#[cfg(test)]
mod loyalty_tests;
pub mod points;
mod receipt;
pub mod reports;
mod retention;
pub mod rules;
pub mod safety;
#[cfg(test)]
mod safety_tests;
pub mod tracked;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Hash maps of the state: foldhash is several times faster than SipHash on
/// these small keys and is seeded per process, so keys chosen by a client
/// (transaction ids) cannot be aimed at collisions ahead of time.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use crate::merkle::Frontier;
use crate::pb::{self, CardStatus, RecordKind, ShiftTotals};
use books::Books;
use lots::Lots;
pub use tracked::{Appended, Changed, FastSet, Tracked};

pub use apply::{apply, erase_fate, set_pin_fate, Fate};
pub use receipt::reply_for_record;

/// Who signed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// The server itself (only for the brand's first record).
    Server,
    /// The brand's owner key.
    Owner,
    /// An enrolled terminal, by its id within the brand.
    Terminal(u32),
    /// A read-only key that reads every report (by its id among the
    /// brand's read-only keys).
    Auditor(u32),
    /// A read-only key that reads one store's reports: (key id, store).
    StoreManager(u32, u32),
}

impl Principal {
    /// The id under which this principal's transaction ids are kept:
    /// terminals by their id (from 1), the owner as 0, the server as u32::MAX.
    pub fn txn_namespace(self) -> u32 {
        match self {
            Principal::Owner => 0,
            Principal::Terminal(id) => id,
            Principal::Server => u32::MAX,
            // Read-only keys write nothing; their reads carry no txn id.
            Principal::Auditor(_) | Principal::StoreManager(..) => u32::MAX - 1,
        }
    }

    /// The signer kind written into records.
    pub fn signer(self) -> pb::Signer {
        match self {
            Principal::Server => pb::Signer::Server,
            Principal::Owner => pb::Signer::Owner,
            Principal::Terminal(_) => pb::Signer::Terminal,
            Principal::Auditor(_) | Principal::StoreManager(..) => pb::Signer::Unspecified,
        }
    }
}

/// Everything about a request that is not in its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Server time stamped on the record (Unix ms); the only clock the state
    /// machine sees.
    pub time_ms: i64,
    /// The verified signer.
    pub principal: Principal,
    /// The signer's public key, kept in the record.
    pub signer_key: &'a [u8; 32],
    /// The exact request bytes that were signed.
    pub request: &'a [u8],
    /// The signer's signature over the request (domain-separated).
    pub signature: &'a [u8],
    /// The server opened a PIN block of this request and it matched the
    /// card's PIN (checked outside, on a blocking thread: Argon2 is slow).
    /// On replay it comes from the record's `pin_verified`, trusted as its
    /// time is.
    pub pin_verified: bool,
}

/// A card's state. Card numbers are 19 digits and kept as u64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// Value the customer paid for (minor units).
    pub paid: i64,
    /// Bonus value granted by top-up rules, tracked apart from paid value.
    pub bonus: i64,
    /// Loyalty points.
    pub points: i64,
    /// Cumulative net spend from the card (purchases minus refunds).
    pub total_spend: i64,
    /// Days with at least one purchase.
    pub visits: u32,
    /// Brand day (`books::day_bounds`, in the brand's time zone; UTC days
    /// before a zone was set) of the last visit, -1 for none.
    pub last_visit_day: i64,
    /// Active, blocked or replaced.
    pub status: CardStatus,
    /// Brand day of the last record that moved value on the card or issued
    /// it: liability aging and dormant members read it.
    pub last_active_day: i32,
    /// The card's value by store of issue, in spend order (`lots.rs`);
    /// its totals are always `paid` and `bonus`.
    pub lots: Lots,
    /// The card has a named holder (the holder's data itself lives outside
    /// the ledger): the limits for named cards apply to it.
    pub named: bool,
    /// The card has a PIN (its hash lives in the server's PIN store, never
    /// in the ledger): the brand's PIN rules apply to it.
    pub has_pin: bool,
    /// The server locked the PIN after five wrong tries (PIN_LOCKED): the
    /// spends that need it are refused, whatever verdict comes, until the
    /// owner unlocks it or sets a new PIN.
    pub pin_locked: bool,
    /// When the card stops working (Unix ms, compared with the record's
    /// time); 0 = never.
    pub expires_ms: i64,
    /// Closed for good by the owner (cash-out): blocked, never reopened.
    pub closed: bool,
    /// The brand day `spent_today` counts (the daily spend limit).
    pub spend_day: i32,
    /// Value spent from the card on `spend_day`.
    pub spent_today: i64,
    /// Points lots and spend per day, once the rules need them
    /// (`points.rs`); `None` costs a card one word.
    pub loyalty: points::Loyalty,
}

impl Card {
    fn new() -> Self {
        Card {
            last_visit_day: -1,
            status: CardStatus::Active,
            ..Card::default()
        }
    }

    /// Paid plus bonus value.
    pub fn balance(&self) -> i64 {
        // Both are bounded by MAX_BALANCE_MINOR, so the sum cannot overflow.
        self.paid + self.bonus
    }
}

/// A store of the brand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// The owner's name for it.
    pub name: String,
}

/// An enrolled terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    /// The store it belongs to.
    pub store_id: u32,
    /// Its ed25519 public key.
    pub public_key: [u8; 32],
    /// The owner's label for it.
    pub label: String,
    /// Highest transaction id in its records (0 for none).
    pub last_txn_id: u64,
    /// Counts and totals since the last shift close.
    pub shift: ShiftTotals,
    /// The current shift, from 1.
    pub shift_number: u64,
    /// Revoked by the owner: cannot sign on, every request refused.
    pub disabled: bool,
}

/// A read-only key (`AddKey`): it signs on and reads reports, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadKey {
    /// Its ed25519 public key.
    pub public_key: [u8; 32],
    /// The store a store manager reads; 0 for an auditor.
    pub store_id: u32,
    /// The owner's label for it.
    pub label: String,
    /// Removed by the owner: cannot sign on, every request refused.
    pub removed: bool,
}

impl ReadKey {
    /// The principal that signs with this key.
    pub fn principal(&self, id: u32) -> Principal {
        match self.store_id {
            0 => Principal::Auditor(id),
            store => Principal::StoreManager(id, store),
        }
    }
}

/// What a money-moving record did, kept so that it can be refunded or reversed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// Purchase, top-up, refund or points redemption.
    pub kind: RecordKind,
    /// The card it moved value on.
    pub card: u64,
    /// Where it happened.
    pub store_id: u32,
    /// The terminal that signed it.
    pub terminal_id: u32,
    /// The terminal shift it belongs to (reversal works within a shift).
    pub shift_number: u64,
    /// Paid value added (the record's deltas follow).
    pub paid_in: i64,
    /// Bonus value added.
    pub bonus_in: i64,
    /// Paid value taken.
    pub paid_out: i64,
    /// Bonus value taken.
    pub bonus_out: i64,
    /// Points added.
    pub points_in: i64,
    /// Points taken.
    pub points_out: i64,
    /// A purchase that counted as the card's visit for its day.
    pub visit_counted: bool,
    /// For purchases: paid value refunds returned so far.
    pub refunded_paid: i64,
    /// Bonus value refunds returned.
    pub refunded_bonus: i64,
    /// Points refunds took back.
    pub refunded_points: i64,
    /// For refunds: the purchase refunded.
    pub original_seq: u64,
    /// Set once a reversal undid it.
    pub reversed: bool,
    /// The lots it moved value from (purchase) or to (load, refund).
    pub lots: Lots,
    /// Its server time: refunds and reversals are accepted within
    /// `REFUND_WINDOW_MS` of it.
    pub time_ms: i64,
    /// Points spent as payment or given back, for records that moved
    /// any (boxed: most effects carry one null pointer).
    pub points: Option<Box<EffectPoints>>,
    /// For purchases that took value from several stores, once refunded:
    /// what their refunds not reversed returned to each store. A reversed
    /// refund leaves a gap in the spend order's reverse that the refunded
    /// totals alone cannot show (boxed, as `points`).
    pub refunded_lots: Option<Box<Lots>>,
}

/// What a money record did with points beyond its deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectPoints {
    /// The record's `points_value_minor`: for a purchase the part of the
    /// bill its spent points (`points_out`) paid; for a refund the part it
    /// paid back as points (`points_in`).
    pub value: i64,
    /// For purchases: the points-paid part of the bill refunds gave back.
    pub refunded_value: i64,
    /// For purchases: spent points refunds gave back.
    pub returned: i64,
    /// Purchases and redemptions: the spent points not yet given back, by
    /// the lot (expiry) they came from, so that they return with their
    /// expiry; refunds: the points they gave back, so that a reversal
    /// puts them back among the purchase's spent points.
    pub lots: Vec<points::PointLot>,
}

/// No points moved.
static NO_POINTS: EffectPoints = EffectPoints {
    value: 0,
    refunded_value: 0,
    returned: 0,
    lots: Vec::new(),
};

impl Effect {
    /// A purchase's bill covered by the card and by points together: what
    /// refunds are counted against.
    pub fn covered(&self) -> i64 {
        self.paid_out + self.bonus_out + self.points().value
    }

    /// What refunds of this purchase have given back so far (value and
    /// points' value).
    pub fn refunded(&self) -> i64 {
        self.refunded_paid + self.refunded_bonus + self.points().refunded_value
    }

    /// Its points beyond the deltas (all zero for most records).
    pub fn points(&self) -> &EffectPoints {
        self.points.as_deref().unwrap_or(&NO_POINTS)
    }

    /// Its points beyond the deltas, to change.
    pub fn points_mut(&mut self) -> &mut EffectPoints {
        self.points.get_or_insert_with(Box::default)
    }
}

/// What the ledger holds for a (signer, transaction id) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnEntry {
    /// Written as the record with this sequence number.
    Committed(u64),
    /// Written as the record with this sequence number, later reversed.
    Reversed(u64),
    /// Never received, then reversed by the record with this sequence
    /// number: the original is refused if it arrives late.
    Tombstone(u64),
}

/// A transaction id at or below the newest one its signer's window forgot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

/// The result of applying one request.
// Written is the common case on the hot path, and the answers are made
// once per request: boxing either would allocate per record or per inquiry.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new record was appended; the caller makes it durable, then replies.
    Written(Written),
    /// A read-only answer (inquiry); nothing was written.
    Answer(pb::Reply),
    /// The transaction id was used before, by the record at `seq`. The caller
    /// compares the request bytes with that record: identical means a retry
    /// (answer with the original reply), different means an idempotency
    /// conflict. Nothing was written.
    Seen {
        /// The earlier record.
        seq: u64,
    },
    /// The status of one of the signer's transactions; for committed ones the
    /// caller attaches the original reply from the record at `seq`.
    Status {
        /// What the ledger holds.
        state: pb::TxnState,
        /// The record written for it (0 if none).
        seq: u64,
    },
}

/// A record appended by [`apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The record.
    pub record: pb::Record,
    /// Its exact encoding, as stored.
    pub bytes: Vec<u8>,
    /// SHA-256(0x00 || bytes).
    pub hash: [u8; 32],
    /// Merkle nodes (level, index, hash) this record completed, for storage.
    pub nodes: Vec<(u8, u64, [u8; 32])>,
}

/// The whole state of one brand: everything derivable from its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrandState {
    /// The brand id (1..=99,999).
    pub brand_id: u32,
    /// Set by the first record.
    pub name: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units per major unit = 10^exponent.
    pub exponent: u32,
    /// The owner's public key.
    pub owner_key: [u8; 32],
    /// The server key in force for this chain: the key that signed the
    /// first record, then each SERVER_KEY_ROTATED record's new key.
    /// Checkpoints and snapshots after a rotation are signed by it.
    pub server_key: [u8; 32],
    /// Records in the chain.
    pub seq: u64,
    /// Hash of the newest record (zeros before the first).
    pub head_hash: [u8; 32],
    /// Merkle tree over the records.
    pub merkle: Frontier,
    /// Stores by id (from 1).
    pub stores: BTreeMap<u32, Store>,
    /// Terminals by id (from 1).
    pub terminals: BTreeMap<u32, Terminal>,
    /// Highest transaction id in the owner's records.
    pub owner_last_txn_id: u64,
    /// Cards by number.
    pub cards: Tracked<u64, Card>,
    /// The loyalty rules in force.
    pub rules: pb::Rules,
    /// Idempotency index: (signer namespace, txn id) -> entry, for the
    /// newest `TXN_WINDOW_PER_SIGNER` ids of each signer.
    pub txns: Tracked<(u32, u64), TxnEntry>,
    /// Per signer namespace: which of its ids `txns` holds, oldest first.
    pub txn_windows: Tracked<u32, TxnWindow>,
    /// Refundable and reversible records: those within `REFUND_WINDOW_MS`
    /// and the newest `MAX_REFUNDABLE_RECORDS`.
    pub effects: Effects,
    /// The owner's books: per-day tallies, settlement, liability.
    pub books: Books,
    /// Read-only keys by id (from 1), removed ones kept (a key is never
    /// reused).
    pub read_keys: BTreeMap<u32, ReadKey>,
    /// Each replaced card's new number, so that a till shown the old one
    /// can name the card the value moved to. Only replaced cards are here
    /// (a card replaced twice leads on through its new number).
    pub replaced_by: BTreeMap<u64, u64>,
    /// Every key rotated out (owner, terminal, server), oldest first: none
    /// of them signs again, and none is ever enrolled again (a key keeps
    /// one meaning for the chain's life). At most `MAX_RETIRED_KEYS`.
    pub retired_keys: Vec<[u8; 32]>,
}

/// Refundable money records in sequence order, oldest first: a new one is
/// a push at the back, forgetting is a pop at the front, a lookup (refunds
/// and reversals only) a binary search. No hashing on the hot path, and
/// memory of one entry per record kept (a hash map of millions would
/// round its table up to the next power of two, over twice the entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    kept: VecDeque<(u64, Effect)>,
    forgotten_up_to: u64,
    /// Records kept, and older ones changed (refunded, reversed), since
    /// last asked, when tracking.
    #[serde(skip)]
    changed: Appended<u64, Effect>,
}

impl Effects {
    fn index(&self, seq: u64) -> Option<usize> {
        self.kept.binary_search_by_key(&seq, |(s, _)| *s).ok()
    }

    /// The record at `seq`, if kept.
    pub fn get(&self, seq: u64) -> Option<&Effect> {
        self.index(seq).map(|i| &self.kept[i].1)
    }

    /// The record at `seq`, if kept, to change.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Effect> {
        let i = self.index(seq)?;
        self.changed.touched(seq);
        Some(&mut self.kept[i].1)
    }

    /// Starts tracking the records kept and changed, or stops it.
    pub fn track(&mut self, on: bool) {
        self.changed.track(on);
    }

    /// The records kept since the last call, then those changed in place
    /// and still kept, with their values now.
    pub fn take_changed(&mut self) -> Vec<(u64, Effect)> {
        let Effects { kept, changed, .. } = self;
        changed.take(|seq| {
            let i = kept.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
            Some(kept[i].1.clone())
        })
    }

    /// Kept records in sequence order with the mark below them: what a
    /// snapshot's parts put back together (checked by the caller).
    pub fn from_parts(kept: VecDeque<(u64, Effect)>, forgotten_up_to: u64) -> Self {
        Effects {
            kept,
            forgotten_up_to,
            changed: Appended::default(),
        }
    }

    /// True if the record at `seq` is kept.
    pub fn contains(&self, seq: u64) -> bool {
        self.index(seq).is_some()
    }

    /// Keeps the record at `seq`, newer than every one kept.
    pub fn push(&mut self, seq: u64, effect: Effect) {
        debug_assert!(self.kept.back().is_none_or(|(s, _)| *s < seq));
        self.changed.appended(seq, &effect);
        self.kept.push_back((seq, effect));
    }

    /// Every record kept with its sequence number, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Effect)> {
        self.kept.iter().map(|(s, e)| (*s, e))
    }

    /// Records kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// True if none is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The oldest record kept and its sequence number.
    pub fn oldest(&self) -> Option<(u64, &Effect)> {
        self.kept.front().map(|(s, e)| (*s, e))
    }

    /// Forgets the oldest record kept.
    pub fn forget_oldest(&mut self) {
        if let Some((seq, _)) = self.kept.pop_front() {
            self.forgotten_up_to = seq;
            self.changed.forgot_up_to(seq);
        }
    }

    /// The highest sequence number forgotten (0 for none).
    pub fn forgotten_up_to(&self) -> u64 {
        self.forgotten_up_to
    }

    /// True if the sequence numbers kept increase, lie above the forgotten
    /// ones and below `end` (what lookups and forgetting rely on).
    pub fn is_ordered_below(&self, end: u64) -> bool {
        let mut previous = self.forgotten_up_to;
        self.kept.iter().all(|(seq, _)| {
            let ok = *seq > previous && *seq < end;
            previous = *seq;
            ok
        })
    }
}

/// The transaction ids of one signer that the state still knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnWindow {
    /// Ids in `BrandState::txns`, in the order they were recorded.
    pub ids: VecDeque<u64>,
    /// The highest id forgotten (0 for none): ids at or below it that are
    /// not in the window are refused, since they may have been used.
    pub forgotten_up_to: u64,
    /// Tombstones that left the window while their ids were still above
    /// `forgotten_up_to` (their ids stay in `BrandState::txns`), so that
    /// a late original is refused, not applied; dropped once the mark
    /// passes them (`retention.rs`).
    pub tombstones_ahead: BTreeSet<u64>,
}

impl BrandState {
    /// The empty state of a brand before its first record.
    pub fn new(brand_id: u32) -> Self {
        BrandState {
            brand_id,
            name: String::new(),
            currency: String::new(),
            exponent: 0,
            owner_key: [0; 32],
            server_key: [0; 32],
            seq: 0,
            head_hash: [0; 32],
            merkle: Frontier::new(),
            stores: BTreeMap::new(),
            terminals: BTreeMap::new(),
            owner_last_txn_id: 0,
            cards: Tracked::default(),
            rules: rules::default_rules(),
            txns: Tracked::default(),
            txn_windows: Tracked::default(),
            effects: Effects::default(),
            books: Books::default(),
            read_keys: BTreeMap::new(),
            replaced_by: BTreeMap::new(),
            retired_keys: Vec::new(),
        }
    }

    /// True once the brand's first record exists.
    pub fn is_created(&self) -> bool {
        self.seq > 0
    }

    /// The newest transaction id recorded from `principal`.
    pub fn last_txn_id(&self, principal: Principal) -> u64 {
        match principal {
            Principal::Owner => self.owner_last_txn_id,
            Principal::Terminal(id) => self.terminals.get(&id).map_or(0, |t| t.last_txn_id),
            Principal::Server | Principal::Auditor(_) | Principal::StoreManager(..) => 0,
        }
    }

    /// What the state knows of `txn_id` from the signer namespace `ns`:
    /// an entry, nothing (a new id), or `Err` for an id too old to know.
    pub fn txn_entry(&self, ns: u32, txn_id: u64) -> Result<Option<TxnEntry>, TooOld> {
        if let Some(e) = self.txns.get(&(ns, txn_id)) {
            return Ok(Some(*e));
        }
        let forgotten = self.txn_windows.get(&ns).map_or(0, |w| w.forgotten_up_to);
        // Id 0 is never used, so never forgotten (and the mark starts at 0).
        if txn_id != 0 && txn_id <= forgotten {
            Err(TooOld)
        } else {
            Ok(None)
        }
    }

    /// Sum of every card's paid and bonus value: the brand's outstanding
    /// stored-value liability. i128 so that no sum of cards can overflow.
    pub fn liability(&self) -> (i128, i128) {
        self.cards.values().fold((0, 0), |(p, b), c| {
            (p + i128::from(c.paid), b + i128::from(c.bonus))
        })
    }

    /// A card's view as sent to terminals, as of `now_ms`: its tier of
    /// today, and its points less the lots expired by then (as its next
    /// record will find them).
    pub fn card_view(&self, number: u64, card: &Card, now_ms: i64) -> pb::CardView {
        let today = self.books.day_of(&self.rules.time_zone, now_ms);
        let (tier, _) = rules::tier_of(&self.rules, card, today);
        let expired = points::expiring(&card.loyalty, i64::MIN, now_ms);
        let next = card
            .loyalty
            .as_ref()
            .and_then(|h| h.lots.iter().find(|l| l.expires_ms > now_ms));
        pb::CardView {
            card: format_card(number),
            status: card.status as i32,
            balance_minor: card.balance(),
            paid_balance_minor: card.paid,
            bonus_balance_minor: card.bonus,
            points: card.points - expired,
            points_next_expiring: next.map_or(0, |l| l.points),
            points_next_expiry_ms: next.map_or(0, |l| l.expires_ms),
            tier: tier.to_string(),
            total_spend_minor: card.total_spend,
            visits: card.visits,
            replaced_by: self
                .replaced_by
                .get(&number)
                .map(|n| format_card(*n))
                .unwrap_or_default(),
            named: card.named,
            has_pin: card.has_pin,
            expires_ms: card.expires_ms,
            closed: card.closed,
        }
    }
}

/// The 19-digit text form of a card number kept as u64: the same text as
/// `format!("{number:019}")`, without the formatting machinery (every card
/// record writes one). The 20 digit places of a u64 are filled as four
/// independent five-digit groups, not one chain of 20 dependent divisions.
pub fn format_card(number: u64) -> String {
    const E5: u64 = 100_000;
    const E10: u64 = E5 * E5;
    let mut text = [b'0'; 20];
    let (high, low) = (number / E10, number % E10);
    // high < 1.9 * 10^9, so every group is below 10^5.
    let groups = [high / E5, high % E5, low / E5, low % E5];
    for (digits, group) in text.chunks_exact_mut(5).zip(groups) {
        let mut rest = u32::try_from(group).expect("five digits");
        for d in digits.iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    }
    // A 20th digit only when the number has one.
    let start = usize::from(text[0] == b'0');
    String::from_utf8(text[start..].to_vec()).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_card_pads_like_format() {
        let tens = (0..20).map(|e| 10u64.pow(e));
        for n in tens
            .flat_map(|t| [t - 1, t, t + 1])
            .chain([u64::MAX, 8_000_010_000_000_000_009])
        {
            assert_eq!(super::format_card(n), format!("{n:019}"));
        }
    }
}
