//! Which partition a doc's samples and parameters live on.
//!
//! The `samples` topic is partitioned by doc id, and so is the `params`
//! topic, with one rule that every producer must follow:
//! `partition = doc_id mod partition_count`. It lets the learner split a
//! savepoint between any number of instances (each takes the keys of its
//! partitions) and a param-server replica find a key's partition.

/// The partition of `doc_id` in a topic of `partitions` partitions.
///
/// # Panics
/// When `partitions` is 0 (a topic has at least one partition).
pub fn partition_of(doc_id: u64, partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (doc_id % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::partition_of;

    #[test]
    fn docs_spread_over_every_partition_and_stay_put() {
        let mut seen = [0_u32; 4];
        for doc in 0..1_000_u64 {
            let p = partition_of(doc, 4);
            assert_eq!(p, partition_of(doc, 4));
            seen[p as usize] += 1;
        }
        assert_eq!(seen, [250; 4]);
        assert_eq!(partition_of(u64::MAX, 7), (u64::MAX % 7) as u32);
    }
}
