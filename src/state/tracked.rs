//! Maps of the state that can say which keys changed since they were last
//! asked: what an incremental snapshot (`snapshot/parts.rs`) writes.
//!
//! Tracking is off unless the live writer turns it on: replay, the
//! auditor's verify and the tests pay one branch per change. A map's only
//! ways to change are the methods here (it derefs to the map for reading
//! only), so a change cannot slip past the tracking.
use std::hash::Hash;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use super::FastMap;

/// A set of hash keys, with the state's hasher.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Keys changed since the last [`take`](Changed::take), when tracking is
/// on. Equal to any other: what changed is not part of a state.
#[derive(Debug, Clone)]
pub struct Changed<K>(Option<FastSet<K>>);

impl<K> Default for Changed<K> {
    fn default() -> Self {
        Changed(None)
    }
}

impl<K> PartialEq for Changed<K> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<K> Eq for Changed<K> {}

impl<K: Eq + Hash> Changed<K> {
    /// Notes `key` as changed, if tracking.
    #[inline]
    pub fn note(&mut self, key: K) {
        if let Some(set) = &mut self.0 {
            set.insert(key);
        }
    }

    /// Starts tracking from nothing changed (`true`) or stops it.
    pub fn track(&mut self, on: bool) {
        self.0 = on.then(FastSet::default);
    }

    /// True while tracking.
    pub fn is_tracking(&self) -> bool {
        self.0.is_some()
    }

    /// The keys changed since the last call (or since tracking began);
    /// tracking goes on from nothing changed. Empty when not tracking.
    pub fn take(&mut self) -> FastSet<K> {
        match &mut self.0 {
            Some(set) => std::mem::take(set),
            None => FastSet::default(),
        }
    }
}

/// A hash map of the state whose changes can be tracked. It encodes
/// exactly as the bare map.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
#[serde(bound(
    serialize = "K: Serialize + Eq + Hash, V: Serialize",
    deserialize = "K: Deserialize<'de> + Eq + Hash, V: Deserialize<'de>"
))]
pub struct Tracked<K, V> {
    map: FastMap<K, V>,
    #[serde(skip)]
    changed: Changed<K>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: FastMap::default(),
            changed: Changed::default(),
        }
    }
}

impl<K: Eq + Hash, V: PartialEq> PartialEq for Tracked<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Eq + Hash, V: Eq> Eq for Tracked<K, V> {}

impl<'a, K, V> IntoIterator for &'a Tracked<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::hash_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K, V> Deref for Tracked<K, V> {
    type Target = FastMap<K, V>;

    fn deref(&self) -> &FastMap<K, V> {
        &self.map
    }
}

impl<K: Eq + Hash + Copy, V> Tracked<K, V> {
    /// Inserts or replaces the value under `key`, returning the old one.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.changed.note(key);
        self.map.insert(key, value)
    }

    /// Removes the value under `key`.
    #[inline]
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.changed.note(*key);
        self.map.remove(key)
    }

    /// The value under `key`, to change.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let value = self.map.get_mut(key)?;
        self.changed.note(*key);
        Some(value)
    }

    /// The value under `key`, inserted as its default if absent, to change.
    #[inline]
    pub fn get_or_default_mut(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.changed.note(key);
        self.map.entry(key).or_default()
    }

    /// True while this map's changes are tracked.
    pub fn is_tracking(&self) -> bool {
        self.changed.is_tracking()
    }

    /// The tracking of this map's changes.
    pub fn changes(&mut self) -> &mut Changed<K> {
        &mut self.changed
    }
}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for Tracked<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Tracked {
            map: iter.into_iter().collect(),
            changed: Changed::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_tracked_once_on_and_nothing_when_off() {
        let mut map: Tracked<u64, i64> = Tracked::default();
        map.insert(1, 10);
        assert!(map.changes().take().is_empty(), "off: nothing tracked");
        map.changes().track(true);
        map.insert(2, 20);
        *map.get_mut(&1).unwrap() += 1;
        assert!(map.get_mut(&9).is_none());
        *map.get_or_default_mut(3) += 3;
        map.remove(&2);
        let mut changed: Vec<u64> = map.changes().take().into_iter().collect();
        changed.sort_unstable();
        assert_eq!(changed, [1, 2, 3]);
        assert!(map.changes().take().is_empty(), "taken: tracking restarts");
        assert_eq!((map[&1], map[&3], map.get(&2)), (11, 3, None));
    }

    #[test]
    fn a_tracked_map_encodes_as_the_bare_map_and_compares_by_content() {
        let mut tracked: Tracked<u64, i64> = [(5, 50)].into_iter().collect();
        tracked.changes().track(true);
        tracked.insert(6, 60);
        let bare: FastMap<u64, i64> = [(5, 50), (6, 60)].into_iter().collect();
        let mut one = postcard::to_stdvec(&tracked).unwrap();
        let mut two = postcard::to_stdvec(&bare).unwrap();
        // Hash order differs between maps: compare decoded.
        let back: Tracked<u64, i64> = postcard::from_bytes(&one).unwrap();
        let bare_back: FastMap<u64, i64> = postcard::from_bytes(&two).unwrap();
        assert_eq!(*back, bare_back);
        one.sort_unstable();
        two.sort_unstable();
        assert_eq!(one, two);
        let untracked: Tracked<u64, i64> = bare.into_iter().collect();
        assert_eq!(tracked, untracked);
    }
}
