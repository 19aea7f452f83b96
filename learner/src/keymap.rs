//! Hash tables keyed by [`ParamKey`] that grow without stalling.
//!
//! A hash table doubles its bucket array when it fills: it allocates the
//! new array and moves every entry, in one call. For the parameter table
//! of a learner with 10⁶ keys that one call took 45–200 ms in bench 4 of
//! issue 3 (most of it the kernel zeroing the new array's pages), on the
//! ingesting thread; at 10⁸ keys it would take seconds. [`KeyMap`] splits
//! the table into [`SHARDS`] tables chosen by a hash of the key, each
//! growing on its own, so a growth moves 1/[`SHARDS`] of the entries and
//! the peak of old and new arrays alive together is as small.
//!
//! One hash of the key picks both the shard and the place in it (see
//! `SHARD_MIX`).
//!
//! The shard count is a parameter: the tables a micro-batched sample
//! touches several times keep one shard, see [`ONE_SHARD`]. The engine's
//! parameter table, which never removes a key and is read cold, is a
//! [`FlatKeyMap`]: the same shards, with lookups that can be prefetched.

use std::hash::BuildHasher;

use hashbrown::hash_table::{self, Entry, HashTable};

use crate::registry::{KeyHasher, ParamKey};

mod flat;

pub use flat::FlatKeyMap;

/// Number of shards: a power of two, large enough that a shard of a
/// 10⁸-key table grows by moving ~400 k entries.
pub const SHARDS: usize = 256;
const _: () = assert!(SHARDS.is_power_of_two() && SHARDS <= 256);

/// The shard count of the tables touched several times per sample (the
/// batcher's pending batches and the engine's sets of keys with a pending
/// batch): one. Split into [`SHARDS`], they cost 7–13 % of micro-batched
/// Beta throughput in bench 1 of issue 3 (also when the batcher kept
/// emptied entries instead of removing them), where splitting the
/// parameter table alone cost 1–2 %. Their growth stalls remain, bounded
/// by the number of keys with a pending batch.
pub const ONE_SHARD: usize = 1;

/// Picks a shard from the key's hash: the top bits of the hash times an
/// odd constant, which depend on every bit of the hash. (The hash's own
/// middle bits, which the shard's table uses for neither its bucket index
/// nor its tags, are not spread well enough by foldhash: for some seeds
/// they left shards empty and others at 4× their share.) Within a shard,
/// the hash's low bits (bucket) and top bits (tag) stay spread, which
/// `a_shards_keys_spread_over_its_buckets_and_tags` checks.
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// A key's hash and its shard (of `shards`, a power of two ≤ 256).
#[inline]
fn locate(hasher: &KeyHasher, key: &ParamKey, shards: usize) -> (u64, usize) {
    let hash = hasher.hash_one(key);
    (hash, (hash.wrapping_mul(SHARD_MIX) >> 56) as usize % shards)
}

type Shard<V> = HashTable<(ParamKey, V)>;

/// A map from [`ParamKey`] to `V` in `N` (by default [`SHARDS`])
/// independently growing tables. Iteration order is unspecified, as for a
/// `HashMap`.
#[derive(Debug, Clone)]
pub struct KeyMap<V, const N: usize = SHARDS> {
    shards: Box<[Shard<V>]>,
    hasher: KeyHasher,
    len: usize,
}

impl<V, const N: usize> Default for KeyMap<V, N> {
    fn default() -> Self {
        Self {
            shards: (0..N).map(|_| HashTable::new()).collect(),
            hasher: KeyHasher::default(),
            len: 0,
        }
    }
}

impl<V, const N: usize> KeyMap<V, N> {
    /// An empty map sized for about `keys` keys (each shard reserves its
    /// share, with some room for an uneven split).
    pub fn with_capacity(keys: usize) -> Self {
        let mut map = Self::default();
        let share = keys / N + keys / N / 8;
        if share > 0 {
            let hasher = map.hasher;
            for shard in map.shards.iter_mut() {
                shard.reserve(share, |(k, _)| hasher.hash_one(k));
            }
        }
        map
    }

    /// The key's hash and shard.
    #[inline]
    fn locate(&self, key: &ParamKey) -> (u64, usize) {
        locate(&self.hasher, key, N)
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

    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &ParamKey) -> Option<&V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, mutably.
    #[inline]
    pub fn get_mut(&mut self, key: &ParamKey) -> Option<&mut V> {
        let (hash, shard) = self.locate(key);
        self.shards[shard]
            .find_mut(hash, |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    #[inline]
    pub fn contains_key(&self, key: &ParamKey) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s value; returns the previous one.
    #[inline]
    pub fn insert(&mut self, key: ParamKey, value: V) -> Option<V> {
        let (hash, shard) = self.locate(&key);
        let hasher = self.hasher;
        let shard = &mut self.shards[shard];
        if let Some((_, v)) = shard.find_mut(hash, |(k, _)| *k == key) {
            return Some(std::mem::replace(v, value));
        }
        shard.insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(k));
        self.len += 1;
        None
    }

    /// Removes `key`; returns its value.
    #[inline]
    pub fn remove(&mut self, key: &ParamKey) -> Option<V> {
        let (hash, shard) = self.locate(key);
        let ((_, value), _) = self.shards[shard]
            .find_entry(hash, |(k, _)| k == key)
            .ok()?
            .remove();
        self.len -= 1;
        Some(value)
    }

    /// `key`'s value, inserting `make()` first if it has none.
    #[inline]
    pub fn get_or_insert_with(&mut self, key: ParamKey, make: impl FnOnce() -> V) -> &mut V {
        let (hash, shard) = self.locate(&key);
        let hasher = self.hasher;
        let entry =
            match self.shards[shard].entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
                Entry::Occupied(e) => e,
                Entry::Vacant(e) => {
                    self.len += 1;
                    e.insert((key, make()))
                }
            };
        &mut entry.into_mut().1
    }

    /// Every entry.
    pub fn iter(&self) -> Iter<'_, V> {
        let mut shards = self.shards.iter();
        let current = shards.next().map(HashTable::iter);
        Iter {
            shards,
            current,
            left: self.len,
        }
    }

    /// Every entry, values mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ParamKey, &mut V)> {
        self.shards
            .iter_mut()
            .flat_map(HashTable::iter_mut)
            .map(|(k, v)| (&*k, v))
    }

    /// Every key.
    pub fn keys(&self) -> impl Iterator<Item = &ParamKey> {
        self.iter().map(|(k, _)| k)
    }

    /// Removes every entry, keeping the shards' capacity.
    pub fn clear(&mut self) {
        for shard in self.shards.iter_mut() {
            shard.clear();
        }
        self.len = 0;
    }

    /// Removes and returns every entry, keeping the shards' capacity.
    pub fn drain(&mut self) -> Vec<(ParamKey, V)> {
        let mut all = Vec::with_capacity(self.len);
        for shard in self.shards.iter_mut() {
            all.extend(shard.drain());
        }
        self.len = 0;
        all
    }
}

impl<V: PartialEq, const N: usize> PartialEq for KeyMap<V, N> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// The entries of a [`KeyMap`] (see [`KeyMap::iter`]).
pub struct Iter<'a, V> {
    shards: std::slice::Iter<'a, Shard<V>>,
    current: Option<hash_table::Iter<'a, (ParamKey, V)>>,
    left: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a ParamKey, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((k, v)) = self.current.as_mut()?.next() {
                self.left -= 1;
                return Some((k, v));
            }
            self.current = Some(self.shards.next()?.iter());
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

    use super::*;
    use crate::registry::VersionId;

    /// The key of `doc_id` in version `version` (also for `flat`'s tests).
    pub(super) fn key(version: u32, doc_id: u64) -> ParamKey {
        ParamKey {
            version: VersionId(version),
            doc_id,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64, i32),
        Remove(u32, u64),
        Bump(u32, u64),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few versions and docs, so operations meet the same keys.
        let k = (0..3_u32, 0..200_u64);
        prop_oneof![
            8 => (k.clone(), any::<i32>()).prop_map(|((v, d), x)| Op::Insert(v, d, x)),
            3 => k.clone().prop_map(|(v, d)| Op::Remove(v, d)),
            3 => k.prop_map(|(v, d)| Op::Bump(v, d)),
            1 => Just(Op::Drain),
        ]
    }

    /// Applies `ops` to a map of `N` shards and to a `BTreeMap`: the same
    /// answers on the way, the same entries at the end.
    fn check_against_a_btree_map<const N: usize>(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut map = KeyMap::<i32, N>::default();
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(v, d, x) => {
                    prop_assert_eq!(map.insert(key(v, d), x), model.insert(key(v, d), x));
                }
                Op::Remove(v, d) => {
                    prop_assert_eq!(map.remove(&key(v, d)), model.remove(&key(v, d)));
                }
                Op::Bump(v, d) => {
                    *map.get_or_insert_with(key(v, d), || 100) += 1;
                    *model.entry(key(v, d)).or_insert(100) += 1;
                }
                Op::Drain => {
                    let mut drained = map.drain();
                    drained.sort_unstable();
                    let expected: Vec<_> = std::mem::take(&mut model).into_iter().collect();
                    prop_assert_eq!(drained, expected);
                }
            }
            prop_assert_eq!(map.len(), model.len());
            prop_assert_eq!(map.is_empty(), model.is_empty());
        }
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
        Ok(())
    }

    proptest! {
        /// Any sequence of operations leaves the map equal to a `BTreeMap`
        /// given the same sequence, sharded or not.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 0..400)) {
            check_against_a_btree_map::<SHARDS>(ops.clone())?;
            check_against_a_btree_map::<ONE_SHARD>(ops)?;
        }
    }

    /// Keys spread over the shards: with 2^16 sequential docs (and docs
    /// that are multiples of 2^16, a pattern that defeats weak hashes),
    /// no shard holds more than twice its share or less than half.
    #[test]
    fn keys_spread_over_the_shards() {
        for stride in [1_u64, 1 << 16] {
            let mut map = KeyMap::<(), SHARDS>::default();
            for doc in 0..1_u64 << 16 {
                map.insert(key(0, doc * stride), ());
            }
            let share = (1 << 16) / SHARDS;
            let sizes: Vec<usize> = map.shards.iter().map(HashTable::len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), 1 << 16);
            assert!(
                sizes.iter().all(|&n| n > share / 2 && n < share * 2),
                "stride {stride}: shard sizes {:?}",
                (sizes.iter().min(), sizes.iter().max())
            );
        }
    }

    /// The keys of one shard spread over the low bits of their hash (the
    /// bucket index of the shard's table) and its top bits (the tags):
    /// picking the shard from the same hash does not crowd a shard's
    /// table.
    #[test]
    fn a_shards_keys_spread_over_its_buckets_and_tags() {
        for stride in [1_u64, 1 << 16] {
            let map = KeyMap::<(), SHARDS>::default();
            let mut low = [0_usize; 16];
            let mut top = [0_usize; 16];
            for doc in 0..1_u64 << 18 {
                let (hash, shard) = map.locate(&key(0, doc * stride));
                if shard == 0 {
                    low[(hash & 15) as usize] += 1;
                    top[(hash >> 60) as usize] += 1;
                }
            }
            // About 1024 keys in shard 0: 64 per bin, sd 8.
            let n: usize = low.iter().sum();
            assert!(n > 512 && n < 2048, "stride {stride}: {n} keys in shard 0");
            for bins in [low, top] {
                assert!(
                    bins.iter().all(|&b| b > n / 32 && b < n / 8),
                    "stride {stride}: {bins:?}"
                );
            }
        }
    }

    /// Sizing ahead reserves room in every shard, so the first keys
    /// (up to about the size asked for) never grow a shard.
    #[test]
    fn with_capacity_reserves_every_shard() {
        let map: KeyMap<u8> = KeyMap::with_capacity(100 * SHARDS);
        assert!(map.shards.iter().all(|s| s.capacity() >= 100));
        assert!(map.is_empty());
    }
}
