//! Maps of the state that can say which keys changed since they were last
//! asked: what an incremental snapshot (`snapshot/parts.rs`) writes.
//!
//! Tracking is off unless the live writer turns it on: replay, the
//! auditor's verify and the tests pay one branch per change. A map's only
//! ways to change are the methods here (it derefs to the map for reading
//! only), so a change cannot slip past the tracking.
use std::collections::VecDeque;
use std::hash::Hash;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use super::FastMap;

/// A set of hash keys, with the state's hasher.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// What changed in a map since it was last taken, when tracking is on:
/// the values written, cloned as they were written (so that taking them
/// at a snapshot is a swap, not a walk through the map), and the keys
/// handed out to change in place (read when taken). Equal to any other:
/// what changed is not part of a state.
#[derive(Debug, Clone)]
pub struct Changed<K, V>(Option<Journal<K, V>>);

#[derive(Debug, Clone)]
struct Journal<K, V> {
    written: FastMap<K, Option<V>>,
    touched: FastSet<K>,
}

impl<K, V> Default for Journal<K, V> {
    fn default() -> Self {
        Journal {
            written: FastMap::default(),
            touched: FastSet::default(),
        }
    }
}

impl<K, V> Default for Changed<K, V> {
    fn default() -> Self {
        Changed(None)
    }
}

impl<K, V> PartialEq for Changed<K, V> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<K, V> Eq for Changed<K, V> {}

impl<K: Eq + Hash + Copy, V: Clone> Changed<K, V> {
    /// Notes that `key` now holds `value` (None: removed), if tracking.
    #[inline]
    fn wrote(&mut self, key: K, value: Option<&V>) {
        if let Some(j) = &mut self.0 {
            j.written.insert(key, value.cloned());
        }
    }

    /// Notes that `key` is being changed in place, if tracking.
    #[inline]
    fn touched(&mut self, key: K) {
        if let Some(j) = &mut self.0 {
            j.touched.insert(key);
        }
    }

    /// Starts tracking from nothing changed (`true`) or stops it.
    pub fn track(&mut self, on: bool) {
        self.0 = on.then(Journal::default);
    }

    /// True while tracking.
    pub fn is_tracking(&self) -> bool {
        self.0.is_some()
    }

    /// Every key changed since the last call (or since tracking began)
    /// with its value in `map` now (None: removed); tracking goes on from
    /// nothing changed. Empty when not tracking.
    fn take(&mut self, map: &FastMap<K, V>) -> FastMap<K, Option<V>> {
        let Some(j) = &mut self.0 else {
            return FastMap::default();
        };
        let mut written = std::mem::take(&mut j.written);
        for key in std::mem::take(&mut j.touched) {
            written.insert(key, map.get(&key).cloned());
        }
        written
    }
}

/// Changes to an append-only sequence of the state (the refundable
/// records), when tracking is on: entries appended, cloned as appended,
/// and keys changed in place (read when taken). Equal to any other.
#[derive(Debug, Clone)]
pub struct Appended<K, V>(Option<AppendJournal<K, V>>);

/// The entries appended (in key order) and the keys changed in place.
type AppendJournal<K, V> = (VecDeque<(K, V)>, FastSet<K>);

impl<K, V> Default for Appended<K, V> {
    fn default() -> Self {
        Appended(None)
    }
}

impl<K, V> PartialEq for Appended<K, V> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<K, V> Eq for Appended<K, V> {}

impl<K: Eq + Hash + Copy, V: Clone> Appended<K, V> {
    /// Notes `value` appended under `key`, if tracking.
    #[inline]
    pub fn appended(&mut self, key: K, value: &V) {
        if let Some((added, _)) = &mut self.0 {
            added.push_back((key, value.clone()));
        }
    }

    /// Notes that `key` is being changed in place, if tracking.
    #[inline]
    pub fn touched(&mut self, key: K) {
        if let Some((_, touched)) = &mut self.0 {
            touched.insert(key);
        }
    }

    /// Forgets the appended entries at or below `key` (the sequence
    /// dropped them: they need no copy, and the copies must not pile up
    /// past the sequence's own bound).
    #[inline]
    pub fn forgot_up_to(&mut self, key: K)
    where
        K: Ord,
    {
        if let Some((added, _)) = &mut self.0 {
            while added.front().is_some_and(|(k, _)| *k <= key) {
                added.pop_front();
            }
        }
    }

    /// Starts tracking from nothing changed (`true`) or stops it.
    pub fn track(&mut self, on: bool) {
        self.0 = on.then(|| (VecDeque::new(), FastSet::default()));
    }

    /// True while tracking.
    pub fn is_tracking(&self) -> bool {
        self.0.is_some()
    }

    /// The entries appended since the last call, then those changed in
    /// place with their values now (`now` reads one; None: no longer
    /// kept), so that a later copy of a key follows an earlier one.
    pub fn take(&mut self, now: impl Fn(K) -> Option<V>) -> Vec<(K, V)> {
        let Some((added, touched)) = &mut self.0 else {
            return Vec::new();
        };
        let mut out = Vec::from(std::mem::take(added));
        out.extend(
            std::mem::take(touched)
                .into_iter()
                .filter_map(|k| Some((k, now(k)?))),
        );
        out
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
    changed: Changed<K, V>,
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

impl<K: Eq + Hash + Copy, V: Clone> Tracked<K, V> {
    /// Inserts or replaces the value under `key`, returning the old one.
    #[inline]
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.changed.wrote(key, Some(&value));
        self.map.insert(key, value)
    }

    /// Removes the value under `key`.
    #[inline]
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.changed.wrote(*key, None);
        self.map.remove(key)
    }

    /// The value under `key`, to change.
    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let value = self.map.get_mut(key)?;
        self.changed.touched(*key);
        Some(value)
    }

    /// The value under `key`, inserted as its default if absent, to change.
    #[inline]
    pub fn get_or_default_mut(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.changed.touched(key);
        self.map.entry(key).or_default()
    }

    /// True while this map's changes are tracked.
    pub fn is_tracking(&self) -> bool {
        self.changed.is_tracking()
    }

    /// Starts tracking this map's changes from nothing changed, or stops.
    pub fn track(&mut self, on: bool) {
        self.changed.track(on);
    }

    /// Every key changed since the last call with its value now (None:
    /// removed); tracking goes on from nothing changed.
    pub fn take_changed(&mut self) -> FastMap<K, Option<V>> {
        self.changed.take(&self.map)
    }
}

impl<K, V> From<FastMap<K, V>> for Tracked<K, V> {
    fn from(map: FastMap<K, V>) -> Self {
        Tracked {
            map,
            changed: Changed::default(),
        }
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
    fn every_change_is_tracked_with_its_value_now_and_nothing_when_off() {
        let mut map: Tracked<u64, i64> = Tracked::default();
        map.insert(1, 10);
        assert!(map.take_changed().is_empty(), "off: nothing tracked");
        map.track(true);
        map.insert(2, 20);
        *map.get_mut(&1).unwrap() += 1;
        assert!(map.get_mut(&9).is_none());
        *map.get_or_default_mut(3) += 3;
        map.insert(4, 40);
        *map.get_mut(&4).unwrap() += 1;
        map.remove(&2);
        let mut changed: Vec<(u64, Option<i64>)> = map.take_changed().into_iter().collect();
        changed.sort_unstable();
        assert_eq!(
            changed,
            [(1, Some(11)), (2, None), (3, Some(3)), (4, Some(41))]
        );
        assert!(map.take_changed().is_empty(), "taken: tracking restarts");
        map.insert(2, 22);
        assert_eq!(
            map.take_changed().into_iter().collect::<Vec<_>>(),
            [(2, Some(22))]
        );
    }

    #[test]
    fn a_tracked_map_encodes_as_the_bare_map_and_compares_by_content() {
        let mut tracked: Tracked<u64, i64> = [(5, 50)].into_iter().collect();
        tracked.track(true);
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
