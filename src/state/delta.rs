//! What changed in a brand's state since a point, and the state cut into
//! slices: the pieces an incremental snapshot (`snapshot/parts.rs`) is
//! made of. Pure data; no I/O.
//!
//! The four big collections (cards, the transaction index and its
//! windows, the refundable records) are written entity by entity; the
//! rest of the state (stores, terminals, rules, books, keys, the Merkle
//! frontier) is small and written whole each time.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{BrandState, Card, Effect, Effects, FastMap, FastSet, Tracked, TxnEntry, TxnWindow};

/// Entities of the four big collections, each with its value as of one
/// point of the chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entities {
    /// Cards by number.
    pub cards: Vec<(u64, Card)>,
    /// Refundable records by sequence number.
    pub effects: Vec<(u64, Effect)>,
    /// Transaction index entries; `None`: the entry was removed.
    pub txns: Vec<((u32, u64), Option<TxnEntry>)>,
    /// Transaction windows by signer namespace.
    pub windows: Vec<(u32, TxnWindow)>,
}

/// The keys an [`Entities`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// Card numbers.
    pub cards: FastSet<u64>,
    /// Sequence numbers of refundable records.
    pub effects: FastSet<u64>,
    /// Transaction index keys.
    pub txns: FastSet<(u32, u64)>,
    /// Signer namespaces.
    pub windows: FastSet<u32>,
}

impl Entities {
    /// The keys held.
    pub fn keys(&self) -> Keys {
        Keys {
            cards: self.cards.iter().map(|(k, _)| *k).collect(),
            effects: self.effects.iter().map(|(k, _)| *k).collect(),
            txns: self.txns.iter().map(|(k, _)| *k).collect(),
            windows: self.windows.iter().map(|(k, _)| *k).collect(),
        }
    }

    /// Entities held in all.
    pub fn len(&self) -> usize {
        self.cards.len() + self.effects.len() + self.txns.len() + self.windows.len()
    }

    /// True if none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What changed since a point, with the values now, and the rest of the
/// state whole. Taken in the applier's stead, so it is only swapped out
/// of the state there: [`into_parts`](Delta::into_parts) lays it out on
/// whichever thread writes it.
#[derive(Debug, Clone)]
pub struct Delta {
    /// The state without its four big collections (the refundable
    /// records' mark kept).
    pub rest: BrandState,
    /// How many cards, refundable records, index entries and windows the
    /// whole state holds (what a start reserves room for).
    pub sizes: [u64; 4],
    cards: FastMap<u64, Option<Card>>,
    txns: FastMap<(u32, u64), Option<TxnEntry>>,
    windows: FastMap<u32, Option<TxnWindow>>,
    effects: Vec<(u64, Effect)>,
}

impl Delta {
    /// Entities changed.
    pub fn len(&self) -> usize {
        self.cards.len() + self.txns.len() + self.windows.len() + self.effects.len()
    }

    /// True if nothing but the rest changed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rest of the state, and the changed entities laid out.
    pub fn into_parts(self) -> (BrandState, [u64; 4], Entities) {
        // Cards and windows are never removed (a removal would need a mark
        // in the part, as the index's have, or an older copy would return).
        debug_assert!(
            self.cards.values().all(Option::is_some) && self.windows.values().all(Option::is_some),
            "a card or a transaction window was removed"
        );
        let changed = Entities {
            cards: (self.cards.into_iter())
                .filter_map(|(k, c)| Some((k, c?)))
                .collect(),
            effects: self.effects,
            txns: self.txns.into_iter().collect(),
            windows: (self.windows.into_iter())
                .filter_map(|(k, w)| Some((k, w?)))
                .collect(),
        };
        (self.rest, self.sizes, changed)
    }
}

impl BrandState {
    /// Starts tracking changes (from nothing changed) or stops it. While
    /// on, each change of the four big collections keeps a copy of the
    /// new value until taken.
    pub fn track_changes(&mut self, on: bool) {
        self.cards.track(on);
        self.txns.track(on);
        self.txn_windows.track(on);
        self.effects.track(on);
    }

    /// True while changes are tracked.
    pub fn tracks_changes(&self) -> bool {
        self.cards.is_tracking()
    }

    /// What changed since tracking began or since the last call;
    /// tracking goes on from here.
    pub fn take_delta(&mut self) -> Delta {
        Delta {
            sizes: self.sizes(),
            cards: self.cards.take_changed(),
            txns: self.txns.take_changed(),
            windows: self.txn_windows.take_changed(),
            effects: self.effects.take_changed(),
            rest: self.rest(),
        }
    }

    /// How many cards, refundable records, index entries and windows the
    /// state holds.
    pub fn sizes(&self) -> [u64; 4] {
        [
            self.cards.len(),
            self.effects.len(),
            self.txns.len(),
            self.txn_windows.len(),
        ]
        .map(|n| n as u64)
    }

    /// The state without its four big collections: the refundable
    /// records' mark is kept, their records are not.
    pub fn rest(&self) -> BrandState {
        BrandState {
            brand_id: self.brand_id,
            name: self.name.clone(),
            currency: self.currency.clone(),
            exponent: self.exponent,
            owner_key: self.owner_key,
            server_key: self.server_key,
            seq: self.seq,
            head_hash: self.head_hash,
            merkle: self.merkle.clone(),
            stores: self.stores.clone(),
            terminals: self.terminals.clone(),
            owner_last_txn_id: self.owner_last_txn_id,
            cards: Tracked::default(),
            rules: self.rules.clone(),
            txns: Tracked::default(),
            txn_windows: Tracked::default(),
            effects: Effects::from_parts(VecDeque::new(), self.effects.forgotten_up_to()),
            books: self.books.clone(),
            read_keys: self.read_keys.clone(),
            replaced_by: self.replaced_by.clone(),
            retired_keys: self.retired_keys.clone(),
        }
    }

    /// The entities of slice `index` of `count`: every entity is in
    /// exactly one slice (by its key), so the slices together are the
    /// four collections whole.
    pub fn slice(&self, index: u64, count: u64) -> Entities {
        assert!(index < count, "slice {index} of {count}");
        let mine = |key: u64| key % count == index;
        Entities {
            cards: (self.cards.iter())
                .filter(|(k, _)| mine(**k))
                .map(|(k, c)| (*k, c.clone()))
                .collect(),
            effects: (self.effects.iter())
                .filter(|(s, _)| mine(*s))
                .map(|(s, e)| (s, e.clone()))
                .collect(),
            txns: (self.txns.iter())
                .filter(|((ns, id), _)| mine(u64::from(*ns) ^ *id))
                .map(|(k, e)| (*k, Some(*e)))
                .collect(),
            windows: (self.txn_windows.iter())
                .filter(|(ns, _)| mine(u64::from(**ns)))
                .map(|(ns, w)| (*ns, w.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::golden::{card, purchase_op, Script};
    use super::super::{Outcome, Principal};
    use crate::pb::{self, request::Op};
    use crate::snapshot::parts::{self, WINDOW};
    use ed25519_dalek::SigningKey;

    const TILL: Principal = Principal::Terminal(1);
    const CARDS: u64 = 20;

    /// The request of step `step`: mostly purchases, with refunds,
    /// reversals of sent and of never-sent ids, and new cards among them.
    fn op(s: &mut Script, step: u64, txn: &mut u64, purchases: &[u64]) -> Option<Op> {
        *txn += 1;
        Some(match step % 50 {
            // Older than the last part, within the test build's cap.
            7 | 8 if purchases.len() > 20 => Op::Refund(pb::Refund {
                original_seq: purchases[purchases.len() - 20],
                amount_minor: 1,
            }),
            13 => Op::Reversal(pb::Reversal {
                original_txn_id: *txn - 1,
            }),
            29 => {
                // An id skipped, then voided: its tombstone outlives the
                // window while the mark is below it.
                *txn += 1;
                Op::Reversal(pb::Reversal {
                    original_txn_id: *txn - 1,
                })
            }
            41 => {
                s.owner(Op::IssueCard(pb::IssueCard {
                    card: card(1_000 + step),
                }));
                return None;
            }
            _ => purchase_op(&card(step % CARDS), 1),
        })
    }

    #[test]
    fn a_window_of_parts_rebuilds_the_state_through_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[5; 32]);
        let read = |dir: &std::path::Path| {
            parts::read(dir, s_brand(), &key.verifying_key(), &|_, _| true)
                .unwrap()
                .expect("parts were written")
        };
        let mut s = Script::shop("Parts Tea", CARDS, 1_000_000);
        s.state.track_changes(true);
        let mut chain = parts::write_generation(dir.path(), &s.state, &key, 1).unwrap();
        assert_eq!(read(dir.path()).0, s.state);
        let (mut txn, mut purchases, mut written) = (100, vec![], 0);
        let mut parked = false;
        // Past the till's window of ids (ids forgotten, tombstones kept
        // beyond it) and the test build's cap of 64 refundable records.
        for step in 0..4_700u64 {
            if let Some(op) = op(&mut s, step, &mut txn, &purchases) {
                if let Ok(Outcome::Written(w)) = s.request(TILL, txn, "", op) {
                    if w.record.kind == pb::RecordKind::Purchase as i32 {
                        purchases.push(w.record.seq);
                    }
                }
            }
            parked |= !s.state.txn_windows[&1].tombstones_ahead.is_empty();
            if step % 37 == 36 {
                chain.write_next(s.state.take_delta(), &key).unwrap();
                written += 1;
                let (back, resumed) = read(dir.path());
                assert_eq!(back, s.state, "the parts after step {step}");
                assert_eq!(resumed.seq(), s.state.seq);
            }
        }
        assert!(s.state.txn_windows[&1].forgotten_up_to > 0 && parked);
        assert!(s.state.effects.forgotten_up_to() > 0);
        assert!(written > 2 * WINDOW, "parts carried more than once");
        let files = std::fs::read_dir(parts::brand_dir(dir.path(), s_brand())).unwrap();
        assert_eq!(files.count() as u64, WINDOW, "older parts are deleted");
    }

    fn s_brand() -> u32 {
        Script::new().state.brand_id
    }
}
