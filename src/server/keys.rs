//! Which brand and principal an ed25519 public key belongs to.
//!
//! One key speaks for one brand only. Each brand's state machine keeps keys
//! unique within the brand; this index keeps them unique across brands. An
//! enrolment first *reserves* its key for its brand (atomically, so two
//! brands enrolling one key at the same moment cannot both win); the commit
//! then turns the reservation into an enrolment. A reservation is held by
//! the request that made it ([`Reservation`]) and given back when that
//! request is answered, so a refused enrolment keeps nothing: a key index
//! cannot be grown, nor a key kept from another brand, by refusals. When
//! the commit failed (the brand stopped), the key stays reserved until a
//! restart: its record may be on disk.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::state::{BrandState, Principal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Enrolled(u32, Principal),
    /// Held for a brand's enrolments in flight: how many (the same key
    /// may be sent twice at once; the state machine refuses the second).
    Reserved(u32, u32),
}

/// A key held for one enrolment request of a brand until it is answered:
/// dropping it (the answer written or dropped) gives the key back unless
/// the commit made it an enrolment meanwhile.
pub struct Reservation {
    index: Arc<KeyIndex>,
    key: [u8; 32],
    brand: u32,
    /// Not given back when dropped ([`Reservation::keep`]).
    kept: bool,
}

impl Reservation {
    /// Keeps the key reserved until the daemon restarts: the enrolment's
    /// commit failed, so its record may or may not be on disk, and only a
    /// restart's recovery can tell. Given back now, another brand could
    /// enrol the key and both logs would hold it.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.index.release(&self.key, self.brand);
        }
    }
}

/// The index of enrolled keys, shared by all connections.
#[derive(Default)]
pub struct KeyIndex {
    map: RwLock<HashMap<[u8; 32], Entry>>,
}

impl KeyIndex {
    /// Adds every key enrolled in `state`.
    pub fn add_brand(&self, state: &BrandState) {
        self.insert(state.owner_key, state.brand_id, Principal::Owner);
        for (id, t) in &state.terminals {
            self.insert(t.public_key, state.brand_id, Principal::Terminal(*id));
        }
        for (id, k) in state.read_keys.iter().filter(|(_, k)| !k.removed) {
            self.insert(k.public_key, state.brand_id, k.principal(*id));
        }
    }

    /// Records an enrolment. A key enrolled for another brand keeps its
    /// first owner (start-up checks prevent this; it is logged if seen).
    pub fn insert(&self, key: [u8; 32], brand: u32, principal: Principal) {
        let mut map = self.map.write().expect("key index lock");
        match map.get(&key) {
            Some(Entry::Enrolled(b, p)) if (*b, *p) != (brand, principal) => {
                tracing::error!(
                    brand,
                    ?principal,
                    other_brand = b,
                    "key already enrolled elsewhere; ignored"
                );
            }
            Some(Entry::Reserved(b, _)) if *b != brand => {
                tracing::error!(
                    brand,
                    ?principal,
                    other_brand = b,
                    "key reserved by another brand; ignored"
                );
            }
            _ => {
                map.insert(key, Entry::Enrolled(brand, principal));
            }
        }
    }

    /// Reserves `key` for an enrolment in `brand`, until the returned
    /// reservation drops. None if another brand holds it (enrolled or
    /// reserved). Some if it is free or already this brand's (the brand's
    /// own state machine then decides: a retry is answered from the
    /// ledger, a second enrolment gets KEY_IN_USE).
    pub fn reserve(self: &Arc<Self>, key: [u8; 32], brand: u32) -> Option<Reservation> {
        let mut map = self.map.write().expect("key index lock");
        match map.get_mut(&key) {
            Some(Entry::Enrolled(b, _)) if *b == brand => {}
            Some(Entry::Reserved(b, n)) if *b == brand => *n += 1,
            Some(_) => return None,
            None => {
                map.insert(key, Entry::Reserved(brand, 1));
            }
        }
        Some(Reservation {
            index: self.clone(),
            key,
            brand,
            kept: false,
        })
    }

    /// Gives back one reservation of `key` by `brand`; the key is free
    /// again once none is left. An enrolment is left alone.
    fn release(&self, key: &[u8; 32], brand: u32) {
        let mut map = self.map.write().expect("key index lock");
        if let Some(Entry::Reserved(b, n)) = map.get_mut(key) {
            if *b == brand {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }

    /// Keys reserved and not (yet) enrolled, for tests.
    #[cfg(test)]
    fn reserved(&self) -> usize {
        let map = self.map.read().expect("key index lock");
        map.values()
            .filter(|e| matches!(e, Entry::Reserved(..)))
            .count()
    }

    /// Forgets `key` of `brand` (rotated out): it can no longer sign on.
    /// A key enrolled for another brand is left alone.
    pub fn remove(&self, key: &[u8; 32], brand: u32) {
        let mut map = self.map.write().expect("key index lock");
        if let Some(Entry::Enrolled(b, _) | Entry::Reserved(b, _)) = map.get(key) {
            if *b == brand {
                map.remove(key);
            }
        }
    }

    /// The brand and principal enrolled with `key` (reservations are not
    /// enrolments: they cannot sign on).
    pub fn get(&self, key: &[u8; 32]) -> Option<(u32, Principal)> {
        match self.map.read().expect("key index lock").get(key) {
            Some(Entry::Enrolled(b, p)) => Some((*b, *p)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_belongs_to_one_brand() {
        let idx = Arc::new(KeyIndex::default());
        let k = [7; 32];
        let held = idx.reserve(k, 1);
        assert!(held.is_some());
        assert!(
            idx.reserve(k, 2).is_none(),
            "another brand cannot take a reserved key"
        );
        assert_eq!(idx.get(&k), None, "a reservation cannot sign on");
        idx.insert(k, 1, Principal::Terminal(3));
        drop(held);
        assert_eq!(idx.get(&k), Some((1, Principal::Terminal(3))));
        assert!(
            idx.reserve(k, 1).is_some(),
            "the same brand may retry its enrolment"
        );
        assert!(idx.reserve(k, 2).is_none());
        idx.insert(k, 2, Principal::Terminal(1));
        assert_eq!(idx.get(&k), Some((1, Principal::Terminal(3))));
    }

    #[test]
    fn a_reservation_ends_with_the_last_request_that_holds_it() {
        let idx = Arc::new(KeyIndex::default());
        let k = [8; 32];
        let (first, second) = (idx.reserve(k, 1), idx.reserve(k, 1));
        drop(first);
        assert!(idx.reserve(k, 2).is_none(), "still held by the second");
        drop(second);
        assert_eq!(idx.reserved(), 0);
        assert!(idx.reserve(k, 2).is_some(), "free for another brand");
    }

    #[test]
    fn a_kept_reservation_holds_its_key_until_restart() {
        let idx = Arc::new(KeyIndex::default());
        let k = [9; 32];
        idx.reserve(k, 1).unwrap().keep();
        assert!(idx.reserve(k, 2).is_none(), "kept for brand 1");
        assert_eq!(idx.reserved(), 1);
    }
}
