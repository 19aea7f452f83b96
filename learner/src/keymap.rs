//! Hash tables keyed by [`ParamKey`] that grow without stalling.
//!
//! A hash table doubles its bucket array when it fills: it allocates the
//! new array and moves every entry, in one call. For the parameter table
//! of a learner with 10⁶ keys that one call took 45–200 ms in bench 4 of
//! issue 3 (most of it the kernel zeroing the new array's pages), on the
//! ingesting thread; at 10⁸ keys it would take seconds. [`FlatKeyMap`]
//! splits the table into [`SHARDS`] tables chosen by a hash of the key,
//! each growing on its own, so a growth moves 1/[`SHARDS`] of the entries
//! and the peak of old and new arrays alive together is as small.
//!
//! One hash of the key picks both the shard and the place in it (see
//! `SHARD_MIX`).
//!
//! The shard count is a parameter: the batcher's table of pending
//! batches, touched several times per micro-batched sample, keeps one
//! shard, see [`ONE_SHARD`].

use std::hash::BuildHasher;

use crate::registry::{KeyHasher, ParamKey};

mod flat;

pub use flat::{FlatKeyMap, Located};

/// Number of shards: a power of two, large enough that a shard of a
/// 10⁸-key table grows by moving ~400 k entries.
pub const SHARDS: usize = 256;
const _: () = assert!(SHARDS.is_power_of_two() && SHARDS <= 256);

/// The shard count of the table touched several times per sample (the
/// batcher's pending batches): one. Split into [`SHARDS`], such tables
/// cost 7–13 % of micro-batched Beta throughput in bench 1 of issue 3
/// (measured with hashbrown tables), where splitting the parameter table
/// alone cost 1–2 %. Its growth stalls remain, bounded by the number of
/// keys with a pending batch.
pub const ONE_SHARD: usize = 1;

/// Picks a shard from the key's hash: the top bits of the hash times an
/// odd constant, which depend on every bit of the hash. (The hash's own
/// middle bits, which the shard's table uses for neither its bucket index
/// nor its tags, are not spread well enough by foldhash: for some seeds
/// they left shards empty and others at 4× their share.) Within a shard,
/// the hash's low bits (the home slot) and top bits stay spread, which
/// `a_shards_keys_spread_over_its_buckets_and_tags` checks.
const SHARD_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// A key's hash and its shard (of `shards`, a power of two ≤ 256).
#[inline]
fn locate(hasher: &KeyHasher, key: &ParamKey, shards: usize) -> (u64, usize) {
    let hash = hasher.hash_one(key);
    (hash, (hash.wrapping_mul(SHARD_MIX) >> 56) as usize % shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::VersionId;

    /// The key of `doc_id` in version `version` (also for `flat`'s tests).
    pub(super) fn key(version: u32, doc_id: u64) -> ParamKey {
        ParamKey {
            version: VersionId(version),
            doc_id,
        }
    }

    /// The keys of one shard spread over the low bits of their hash (the
    /// bucket index of the shard's table) and its top bits (the tags):
    /// picking the shard from the same hash does not crowd a shard's
    /// table.
    #[test]
    fn a_shards_keys_spread_over_its_buckets_and_tags() {
        for stride in [1_u64, 1 << 16] {
            let hasher = KeyHasher::default();
            let mut low = [0_usize; 16];
            let mut top = [0_usize; 16];
            for doc in 0..1_u64 << 18 {
                let (hash, shard) = locate(&hasher, &key(0, doc * stride), SHARDS);
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
}
