//! [`FlatKeyMap`]: the sharded table, with lookups that can be
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
//! A removal shifts the entries after it back (no tombstones, so probes
//! stay as short as the load). One hash picks the shard and the place in
//! it, so a growth moves 1/`N` of the entries.

use std::hash::BuildHasher;

use super::SHARDS;
use crate::prefetch::prefetch;
use crate::registry::{KeyHasher, ParamKey, VersionId};

/// Slots of a shard before its first growth.
const MIN_SLOTS: usize = 8;

/// A shard grows before it is more than `LOAD_NUM / LOAD_DEN` full: at
/// 3/4 a hit probes 2.5 slots on average (1.6 at the mean load after a
/// doubling), 32-byte slots two to a cache line.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;

/// The load limit of a single-shard map ([`ONE_SHARD`](super::ONE_SHARD),
/// the batcher's pending batches): 1/2. Its lookups often miss (a key
/// without a pending batch) and its keys come and go; a miss probes to
/// the end of a run, and a removal shifts the rest of its run back, which
/// at 3/4 is 8.5 slots on average, at 1/2 2.5. In bench 1 of issue 3 the
/// removals alone were 4 % of a micro-batched Beta profile at 3/4.
const SINGLE_LOAD_NUM: usize = 1;
const SINGLE_LOAD_DEN: usize = 2;

/// `N`'s load limit as (numerator, denominator).
const fn load_limit(shards: usize) -> (usize, usize) {
    if shards == 1 {
        (SINGLE_LOAD_NUM, SINGLE_LOAD_DEN)
    } else {
        (LOAD_NUM, LOAD_DEN)
    }
}

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

    /// Empties slot `i` and moves back the entries of the run after it
    /// that may live closer to their home (backward-shift deletion):
    /// every remaining key stays reachable from its home without gaps.
    fn remove_at(&mut self, mut i: usize, hasher: &KeyHasher) -> (ParamKey, V) {
        let removed = self.slots[i].take().expect("removing an occupied slot");
        self.len -= 1;
        let mask = self.slots.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let Some((k, _)) = &self.slots[j] else {
                break;
            };
            let home = self.home(hasher.hash_one(k));
            // The entry at `j` may move to the hole at `i` when `i` lies
            // on its probe path, i.e. between its home and `j`.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = self.slots[j].take();
                i = j;
            }
        }
        removed
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

/// A map from [`ParamKey`] to `V` in `N` (by default [`SHARDS`]) shards,
/// with [`FlatKeyMap::prefetch`]. Iteration order is unspecified.
#[derive(Debug, Clone)]
pub struct FlatKeyMap<V, const N: usize = SHARDS> {
    shards: Box<[Shard<V>]>,
    hasher: KeyHasher,
    len: usize,
}

impl<V, const N: usize> Default for FlatKeyMap<V, N> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<V, const N: usize> FlatKeyMap<V, N> {
    /// An empty map sized for about `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        // Each shard's share, with room for an uneven split, below the
        // load limit.
        let share = keys / N + keys / N / 8;
        let (num, den) = load_limit(N);
        let slots = (share * den / num + 1).next_power_of_two().max(MIN_SLOTS);
        Self {
            shards: (0..N).map(|_| Shard::with_slots(slots)).collect(),
            hasher: KeyHasher::default(),
            len: 0,
        }
    }

    /// The key's hash and shard.
    #[inline]
    fn locate(&self, key: &ParamKey) -> (u64, usize) {
        super::locate(&self.hasher, key, N)
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

    /// `key` with its hash and shard in this map, for several lookups of
    /// it that hash it once ([`FlatKeyMap::prefetch_located`],
    /// [`FlatKeyMap::get_located`], [`FlatKeyMap::get_mut_located`]).
    /// Valid for this map only (another map hashes with other seeds).
    #[inline]
    pub fn located(&self, key: &ParamKey) -> Located {
        let (hash, shard) = self.locate(key);
        Located {
            key: *key,
            hash,
            shard,
        }
    }

    /// Asks for the cache line where a lookup of `key` starts (see
    /// `crate::prefetch`); a hint only.
    #[inline]
    pub fn prefetch(&self, key: &ParamKey) {
        self.prefetch_located(&self.located(key));
    }

    /// [`FlatKeyMap::prefetch`] of a key located in this map.
    #[inline]
    pub fn prefetch_located(&self, at: &Located) {
        let shard = &self.shards[at.shard];
        let entry: *const Entry<V> = &shard.slots[shard.home(at.hash)];
        prefetch(entry);
        // An entry that does not divide a cache line may end in the next.
        let last = entry.cast::<u8>().wrapping_add(size_of::<Entry<V>>() - 1);
        if (entry.addr() ^ last.addr()) >> 6 != 0 {
            prefetch(last);
        }
    }

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &ParamKey) -> Option<&V> {
        self.get_located(&self.located(key))
    }

    /// [`FlatKeyMap::get`] of a key located in this map.
    #[inline]
    pub fn get_located(&self, at: &Located) -> Option<&V> {
        let shard = &self.shards[at.shard];
        shard.slots[shard.probe(at.hash, &at.key)]
            .as_ref()
            .map(|(_, v)| v)
    }

    /// The value of `key`, mutably.
    #[inline]
    pub fn get_mut(&mut self, key: &ParamKey) -> Option<&mut V> {
        self.get_mut_located(&self.located(key))
    }

    /// [`FlatKeyMap::get_mut`] of a key located in this map.
    #[inline]
    pub fn get_mut_located(&mut self, at: &Located) -> Option<&mut V> {
        let shard = &mut self.shards[at.shard];
        let i = shard.probe(at.hash, &at.key);
        shard.slots[i].as_mut().map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    #[inline]
    pub fn contains_key(&self, key: &ParamKey) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s value; returns the previous one.
    pub fn insert(&mut self, key: ParamKey, value: V) -> Option<V> {
        let mut value = Some(value);
        let slot = self.get_or_insert_with(key, || value.take().expect("taken once"));
        value.map(|value| std::mem::replace(slot, value))
    }

    /// `key`'s value, inserting `make()` first if it has none.
    #[inline]
    pub fn get_or_insert_with(&mut self, key: ParamKey, make: impl FnOnce() -> V) -> &mut V {
        let (hash, shard) = self.locate(&key);
        let hasher = self.hasher;
        let shard = &mut self.shards[shard];
        let mut i = shard.probe(hash, &key);
        if shard.slots[i].is_none() {
            let (num, den) = load_limit(N);
            if (shard.len + 1) * den > shard.slots.len() * num {
                shard.grow(&hasher);
                i = shard.probe(hash, &key);
            }
            shard.slots[i] = Some((key, make()));
            shard.len += 1;
            self.len += 1;
        }
        let (_, v) = shard.slots[i].as_mut().expect("occupied");
        v
    }

    /// Removes `key`; returns its value.
    #[inline]
    pub fn remove(&mut self, key: &ParamKey) -> Option<V> {
        let (hash, shard) = self.locate(key);
        let hasher = self.hasher;
        let shard = &mut self.shards[shard];
        let i = shard.probe(hash, key);
        shard.slots[i].as_ref()?;
        self.len -= 1;
        Some(shard.remove_at(i, &hasher).1)
    }

    /// Removes `key` if `take` says so of its value; returns that value.
    /// One lookup where [`FlatKeyMap::get`] and then
    /// [`FlatKeyMap::remove`] take two.
    #[inline]
    pub fn remove_if(&mut self, key: &ParamKey, take: impl FnOnce(&V) -> bool) -> Option<V> {
        let (hash, shard) = self.locate(key);
        let hasher = self.hasher;
        let shard = &mut self.shards[shard];
        let i = shard.probe(hash, key);
        let (_, value) = shard.slots[i].as_ref()?;
        if !take(value) {
            return None;
        }
        self.len -= 1;
        Some(shard.remove_at(i, &hasher).1)
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

    /// The keys of `version`, sorted (an order that does not depend on the
    /// table's layout, for work on a whole version).
    pub fn sorted_keys_of(&self, version: VersionId) -> Vec<ParamKey> {
        let mut keys: Vec<ParamKey> = self
            .keys()
            .filter(|k| k.version == version)
            .copied()
            .collect();
        keys.sort_unstable();
        keys
    }
}

impl<V: PartialEq, const N: usize> PartialEq for FlatKeyMap<V, N> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// A key, its hash and its shard in one [`FlatKeyMap`] (see
/// [`FlatKeyMap::located`]).
#[derive(Debug, Clone, Copy)]
pub struct Located {
    /// The key.
    pub key: ParamKey,
    hash: u64,
    shard: usize,
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

    /// What a proptest does to a map.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64, i32),
        GetOrInsert(u32, u64, i32),
        Remove(u32, u64),
        /// Removes the key if its value is even.
        RemoveIfEven(u32, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, so that removals hit and runs form.
        let v = 0..3_u32;
        let d = 0..2_000_u64;
        prop_oneof![
            (v.clone(), d.clone(), any::<i32>()).prop_map(|(v, d, x)| Op::Insert(v, d, x)),
            (v.clone(), d.clone(), any::<i32>()).prop_map(|(v, d, x)| Op::GetOrInsert(v, d, x)),
            (v.clone(), d.clone()).prop_map(|(v, d)| Op::Remove(v, d)),
            (v, d).prop_map(|(v, d)| Op::RemoveIfEven(v, d)),
        ]
    }

    /// Runs `ops` on a map of `N` shards and a `BTreeMap`: every answer and
    /// the final contents agree, and every key of the map is found from
    /// its home without crossing an empty slot.
    fn check_ops<const N: usize>(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut map = FlatKeyMap::<i32, N>::default();
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(v, d, x) => {
                    prop_assert_eq!(map.insert(key(v, d), x), model.insert(key(v, d), x));
                }
                Op::GetOrInsert(v, d, x) => {
                    let got = *map.get_or_insert_with(key(v, d), || x);
                    prop_assert_eq!(got, *model.entry(key(v, d)).or_insert(x));
                }
                Op::Remove(v, d) => {
                    prop_assert_eq!(map.remove(&key(v, d)), model.remove(&key(v, d)));
                }
                Op::RemoveIfEven(v, d) => {
                    let even = |x: &i32| x % 2 == 0;
                    let expected = if model.get(&key(v, d)).is_some_and(even) {
                        model.remove(&key(v, d))
                    } else {
                        None
                    };
                    prop_assert_eq!(map.remove_if(&key(v, d), even), expected);
                }
            }
            prop_assert_eq!(map.len(), model.len());
        }
        prop_assert_eq!(map.is_empty(), model.is_empty());
        let entries = map.iter();
        prop_assert_eq!(entries.len(), model.len());
        let mut entries: Vec<_> = entries.map(|(k, v)| (*k, *v)).collect();
        entries.sort_unstable();
        prop_assert_eq!(
            entries,
            model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>()
        );
        for (k, v) in &model {
            prop_assert_eq!(map.get(k), Some(v));
            prop_assert!(map.contains_key(k));
        }
        for shard in map.shards.iter() {
            prop_assert_eq!(shard.len, shard.slots.iter().flatten().count());
        }
        for (k, v) in map.iter_mut() {
            *v = v.wrapping_add(k.doc_id as i32);
        }
        for (k, v) in &model {
            prop_assert_eq!(
                map.get_mut(k).copied(),
                Some(v.wrapping_add(k.doc_id as i32))
            );
        }
        prop_assert_eq!(map.get(&key(3, 0)), None);
        prop_assert!(!map.contains_key(&key(3, 0)));
        prop_assert_eq!(map.keys().count(), model.len());
        Ok(())
    }

    proptest! {
        /// Inserts (new keys and replacements) and removals leave the map
        /// equal to a `BTreeMap` given the same operations, through many
        /// growths and backward shifts, sharded and in one shard.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 0..3_000)) {
            check_ops::<SHARDS>(ops.clone())?;
            check_ops::<1>(ops)?;
        }
    }

    /// Removing from full runs that wrap around the end of a shard: every
    /// other key stays reachable, and the map empties to nothing.
    #[test]
    fn removals_in_wrapping_runs_keep_every_key_reachable() {
        let mut map = FlatKeyMap::<u64, 1>::default();
        let mut model = BTreeMap::new();
        for doc in 0..5_000_u64 {
            map.insert(key(0, doc), doc);
            model.insert(key(0, doc), doc);
        }
        // Remove in a scattered order, checking everything left each time
        // a tenth has gone.
        let mut order: Vec<u64> = (0..5_000).map(|i| (i * 7919) % 5_000).collect();
        order.dedup();
        for (n, doc) in order.into_iter().enumerate() {
            assert_eq!(map.remove(&key(0, doc)), model.remove(&key(0, doc)));
            if n % 500 == 0 {
                for (k, v) in &model {
                    assert_eq!(map.get(k), Some(v), "after {n} removals");
                }
            }
        }
        assert!(map.is_empty());
        assert!(
            map.shards
                .iter()
                .all(|s| s.slots.iter().all(Option::is_none))
        );
    }

    /// A million keys, sequential and strided (a pattern that defeats weak
    /// hashes): every shard stays within its load limit and twice its
    /// share, and a hit probes few slots.
    #[test]
    fn keys_spread_and_probes_stay_short() {
        for stride in [1_u64, 1 << 16] {
            let mut map = FlatKeyMap::<(), SHARDS>::with_capacity(1_000_000);
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
        let mut map = FlatKeyMap::<u64, SHARDS>::with_capacity(100_000);
        let sizes: Vec<usize> = map.shards.iter().map(|s| s.slots.len()).collect();
        for doc in 0..100_000 {
            map.insert(key(1, doc), doc);
        }
        let after: Vec<usize> = map.shards.iter().map(|s| s.slots.len()).collect();
        assert_eq!(sizes, after);
    }
}
