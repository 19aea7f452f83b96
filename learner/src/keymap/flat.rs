//! The parameter table: a [`KeyMap`](super::KeyMap) whose lookups can be
//! prefetched.
//!
//! A lookup in hashbrown's layout reads the key's group of control bytes,
//! then its slot: two dependent misses in a table of 10⁶ keys, and the
//! table gives no address to ask for ahead of time. In bench 1 of issue 3
//! the release's warm-up and the publish spent 17–20 % of their time in
//! those lookups. [`FlatKeyMap`] keeps the entries themselves in open
//! addressing with linear probing, so the first slot a lookup reads
//! follows from the key's hash: [`FlatKeyMap::prefetch`] asks for it
//! ahead, and the lookup then usually reads one line, already cached.
//!
//! Keys are never removed (the engine's parameter table only grows),
//! which keeps linear probing simple: no tombstones. The table is sharded
//! as [`KeyMap`](super::KeyMap) is, with the same hash picking the shard
//! and the place in it, so a growth moves 1/[`SHARDS`] of the entries.

use std::hash::BuildHasher;

use super::SHARDS;
use crate::prefetch::prefetch;
use crate::registry::{KeyHasher, ParamKey};

/// Slots of a shard before its first growth.
const MIN_SLOTS: usize = 8;

/// A shard grows before it is more than `LOAD_NUM / LOAD_DEN` full: at
/// 3/4 a hit probes 2.5 slots on average (1.6 at the mean load after a
/// doubling), 32-byte slots two to a cache line.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

type Entry<V> = Option<(ParamKey, V)>;

#[derive(Debug, Clone)]
struct Shard<V> {
    /// A power of two long.
    slots: Box<[Entry<V>]>,
    len: usize,
}

impl<V> Shard<V> {
    fn with_slots(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| None).collect(),
            len: 0,
        }
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.slots.len() - 1)
    }

    /// The slot holding `key`, or the empty one where it would go.
    #[inline]
    fn probe(&self, hash: u64, key: &ParamKey) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        while let Some((k, _)) = &self.slots[i]
            && k != key
        {
            i = (i + 1) & mask;
        }
        i
    }

    fn grow(&mut self, hasher: &KeyHasher) {
        let bigger = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, (0..bigger).map(|_| None).collect());
        for (key, value) in old.into_iter().flatten() {
            let i = self.probe(hasher.hash_one(key), &key);
            self.slots[i] = Some((key, value));
        }
    }
}

/// A map from [`ParamKey`] to `V` that only grows, with
/// [`FlatKeyMap::prefetch`]. Iteration order is unspecified.
#[derive(Debug, Clone)]
pub struct FlatKeyMap<V> {
    shards: Box<[Shard<V>]>,
    hasher: KeyHasher,
    len: usize,
}

impl<V> Default for FlatKeyMap<V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<V> FlatKeyMap<V> {
    /// An empty map sized for about `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        // Each shard's share, with room for an uneven split, below the
        // load limit.
        let share = keys / SHARDS + keys / SHARDS / 8;
        let slots = (share * LOAD_DEN / LOAD_NUM + 1)
            .next_power_of_two()
            .max(MIN_SLOTS);
        Self {
            shards: (0..SHARDS).map(|_| Shard::with_slots(slots)).collect(),
            hasher: KeyHasher::default(),
            len: 0,
        }
    }

    /// The key's hash and shard.
    #[inline]
    fn locate(&self, key: &ParamKey) -> (u64, usize) {
        super::locate(&self.hasher, key, SHARDS)
    }

    /// Number of keys.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no keys.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Asks for the cache line where a lookup of `key` starts (see
    /// `crate::prefetch`); a hint only.
    #[inline]
    pub fn prefetch(&self, key: &ParamKey) {
        let (hash, shard) = self.locate(key);
        let shard = &self.shards[shard];
        prefetch(&shard.slots[shard.home(hash)]);
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &ParamKey) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        let shard = &self.shards[shard];
        shard.slots[shard.probe(hash, key)].as_ref().map(|(_, v)| v)
    }

    /// The value of `key`, mutably.
    #[inline]
    pub fn get_mut(&mut self, key: &ParamKey) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        let shard = &mut self.shards[shard];
        let i = shard.probe(hash, key);
        shard.slots[i].as_mut().map(|(_, v)| v)
    }

    /// Sets `key`'s value; returns the previous one.
    pub fn insert(&mut self, key: ParamKey, value: V) -> Option<V> {
        let (hash, shard) = self.locate(&key);
        let hasher = self.hasher;
        let shard = &mut self.shards[shard];
        let mut i = shard.probe(hash, &key);
        if let Some((_, v)) = &mut shard.slots[i] {
            return Some(std::mem::replace(v, value));
        }
        if (shard.len + 1) * LOAD_DEN > shard.slots.len() * LOAD_NUM {
            shard.grow(&hasher);
            i = shard.probe(hash, &key);
        }
        shard.slots[i] = Some((key, value));
        shard.len += 1;
        self.len += 1;
        None
    }

    /// Every entry.
    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            shards: self.shards.iter(),
            current: [].iter(),
            left: self.len,
        }
    }

    /// Every entry, values mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ParamKey, &mut V)> {
        self.shards
            .iter_mut()
            .flat_map(|s| s.slots.iter_mut().flatten())
            .map(|(k, v)| (&*k, v))
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &ParamKey> {
        self.iter().map(|(k, _)| k)
    }
}

/// The entries of a [`FlatKeyMap`] (see [`FlatKeyMap::iter`]).
pub struct Iter<'a, V> {
    shards: std::slice::Iter<'a, Shard<V>>,
    current: std::slice::Iter<'a, Entry<V>>,
    left: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a ParamKey, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.current.by_ref().flatten().next() {
                self.left -= 1;
                return Some((k, v));
            }
            self.current = self.shards.next()?.slots.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::tests::key;
    use super::*;

    proptest! {
        /// Inserts (new keys and replacements) leave the map equal to a
        /// `BTreeMap` given the same inserts, through many growths.
        #[test]
        fn behaves_as_a_map(
            inserts in proptest::collection::vec((0..3_u32, 0..5_000_u64, any::<i32>()), 0..3_000),
        ) {
            let mut map = FlatKeyMap::default();
            let mut model = BTreeMap::new();
            for (v, d, x) in inserts {
                prop_assert_eq!(map.insert(key(v, d), x), model.insert(key(v, d), x));
                prop_assert_eq!(map.len(), model.len());
            }
            prop_assert_eq!(map.is_empty(), model.is_empty());
            let entries = map.iter();
            prop_assert_eq!(entries.len(), model.len());
            let mut entries: Vec<_> = entries.map(|(k, v)| (*k, *v)).collect();
            entries.sort_unstable();
            prop_assert_eq!(entries, model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
            for (k, v) in &model {
                prop_assert_eq!(map.get(k), Some(v));
            }
            for (k, v) in map.iter_mut() {
                *v = v.wrapping_add(k.doc_id as i32);
            }
            for (k, v) in &model {
                prop_assert_eq!(map.get_mut(k).copied(), Some(v.wrapping_add(k.doc_id as i32)));
            }
            prop_assert_eq!(map.get(&key(3, 0)), None);
            prop_assert_eq!(map.keys().count(), model.len());
        }
    }

    /// A million keys, sequential and strided (a pattern that defeats weak
    /// hashes): every shard stays within its load limit and twice its
    /// share, and a hit probes few slots.
    #[test]
    fn keys_spread_and_probes_stay_short() {
        for stride in [1_u64, 1 << 16] {
            let mut map = FlatKeyMap::with_capacity(1_000_000);
            for doc in 0..1_000_000_u64 {
                map.insert(key(0, doc * stride), ());
            }
            let share = 1_000_000 / SHARDS;
            let mut probes = 0_usize;
            for shard in map.shards.iter() {
                assert!(shard.len < 2 * share, "stride {stride}: {}", shard.len);
                assert!(shard.len * LOAD_DEN <= shard.slots.len() * LOAD_NUM);
                let mask = shard.slots.len() - 1;
                for (i, entry) in shard.slots.iter().enumerate() {
                    if let Some((k, _)) = entry {
                        let home = shard.home(map.hasher.hash_one(k));
                        probes += ((i + shard.slots.len() - home) & mask) + 1;
                    }
                }
            }
            let mean = probes as f64 / 1e6;
            assert!(mean < 2.5, "stride {stride}: {mean} slots per hit");
        }
    }

    /// Sizing ahead: the first keys, up to about the size asked for, never
    /// grow a shard.
    #[test]
    fn with_capacity_avoids_growth() {
        let mut map = FlatKeyMap::with_capacity(100_000);
        let sizes: Vec<usize> = map.shards.iter().map(|s| s.slots.len()).collect();
        for doc in 0..100_000 {
            map.insert(key(1, doc), doc);
        }
        let after: Vec<usize> = map.shards.iter().map(|s| s.slots.len()).collect();
        assert_eq!(sizes, after);
    }
}
