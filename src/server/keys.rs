//! Which brand and principal an ed25519 public key belongs to.
//!
//! One key speaks for one brand only. Each brand's state machine keeps keys
//! unique within the brand; this index keeps them unique across brands. An
//! enrolment first *reserves* its key for its brand (atomically, so two
//! brands enrolling one key at the same moment cannot both win); the commit
//! then turns the reservation into an enrolment.
use std::collections::HashMap;
use std::sync::RwLock;

use crate::state::{BrandState, Principal};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Enrolled(u32, Principal),
    /// Held for a brand's enrolment in flight (or refused: then it stays
    /// with that brand until restart, which harms no one).
    Reserved(u32),
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
            Some(Entry::Reserved(b)) if *b != brand => {
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

    /// Reserves `key` for an enrolment in `brand`. False if another brand
    /// holds it (enrolled or reserved). True if it is free or already this
    /// brand's (the brand's own state machine then decides: a retry is
    /// answered from the ledger, a second enrolment gets KEY_IN_USE).
    pub fn reserve(&self, key: [u8; 32], brand: u32) -> bool {
        let mut map = self.map.write().expect("key index lock");
        match map.get(&key) {
            Some(Entry::Enrolled(b, _) | Entry::Reserved(b)) => *b == brand,
            None => {
                map.insert(key, Entry::Reserved(brand));
                true
            }
        }
    }

    /// Forgets `key` of `brand` (rotated out): it can no longer sign on.
    /// A key enrolled for another brand is left alone.
    pub fn remove(&self, key: &[u8; 32], brand: u32) {
        let mut map = self.map.write().expect("key index lock");
        if let Some(Entry::Enrolled(b, _) | Entry::Reserved(b)) = map.get(key) {
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
        let idx = KeyIndex::default();
        let k = [7; 32];
        assert!(idx.reserve(k, 1));
        assert!(
            !idx.reserve(k, 2),
            "another brand cannot take a reserved key"
        );
        assert_eq!(idx.get(&k), None, "a reservation cannot sign on");
        idx.insert(k, 1, Principal::Terminal(3));
        assert_eq!(idx.get(&k), Some((1, Principal::Terminal(3))));
        assert!(idx.reserve(k, 1), "the same brand may retry its enrolment");
        assert!(!idx.reserve(k, 2));
        idx.insert(k, 2, Principal::Terminal(1));
        assert_eq!(idx.get(&k), Some((1, Principal::Terminal(3))));
    }
}
