//! Which brand and principal an ed25519 public key belongs to.
use std::collections::HashMap;
use std::sync::RwLock;

use crate::state::{BrandState, Principal};

/// The index of enrolled keys, shared by all connections.
#[derive(Default)]
pub struct KeyIndex {
    map: RwLock<HashMap<[u8; 32], (u32, Principal)>>,
}

impl KeyIndex {
    /// Adds every key enrolled in `state`.
    pub fn add_brand(&self, state: &BrandState) {
        self.insert(state.owner_key, state.brand_id, Principal::Owner);
        for (id, t) in &state.terminals {
            self.insert(t.public_key, state.brand_id, Principal::Terminal(*id));
        }
    }

    /// Adds one key. A key already enrolled elsewhere keeps its first owner:
    /// one key never speaks for two brands.
    pub fn insert(&self, key: [u8; 32], brand: u32, principal: Principal) {
        let mut map = self.map.write().expect("key index lock");
        if let Some(existing) = map.get(&key) {
            if *existing != (brand, principal) {
                tracing::error!(
                    brand,
                    ?principal,
                    ?existing,
                    "key already enrolled elsewhere; ignored"
                );
            }
            return;
        }
        map.insert(key, (brand, principal));
    }

    /// Looks up a key.
    pub fn get(&self, key: &[u8; 32]) -> Option<(u32, Principal)> {
        self.map.read().expect("key index lock").get(key).copied()
    }
}
