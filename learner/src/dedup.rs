//! De-duplication by `sample_id` within a bounded event-time window.
//!
//! Checked in release order, so it is deterministic: a sample is a
//! duplicate when a released sample with the same id had an event time at
//! most `window_ms` earlier. Ids older than the window are forgotten; if
//! more than `max_ids` ids fall inside the window, the oldest are forgotten
//! early (and a duplicate of one of them would be applied again — size the
//! bound above ids-per-window). Samples without an id are never duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Recently released sample ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dedup {
    window_ms: i64,
    max_ids: usize,
    seen: HashMap<String, i64>,
    by_time: BTreeSet<(i64, String)>,
    /// Since the last `take_changes`: true = added, false = removed (and
    /// stored before).
    changes: BTreeMap<(i64, String), bool>,
}

impl Dedup {
    /// A window of `window_ms` event-time ms holding at most `max_ids` ids.
    pub fn new(window_ms: i64, max_ids: usize) -> Self {
        Self {
            window_ms: window_ms.max(0),
            max_ids: max_ids.max(1),
            seen: HashMap::new(),
            by_time: BTreeSet::new(),
            changes: BTreeMap::new(),
        }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `id` released at `event_ms`; returns true if it is a
    /// duplicate (and then records nothing).
    pub fn check(&mut self, id: &str, event_ms: i64) -> bool {
        self.expire(event_ms.saturating_sub(self.window_ms));
        if self.seen.contains_key(id) {
            return true;
        }
        if self.seen.len() >= self.max_ids
            && let Some(oldest) = self.by_time.pop_first()
        {
            self.seen.remove(&oldest.1);
            self.note_removed(oldest);
        }
        self.seen.insert(id.to_owned(), event_ms);
        self.by_time.insert((event_ms, id.to_owned()));
        self.changes.insert((event_ms, id.to_owned()), true);
        false
    }

    /// Every held (event time, id), oldest first, for checkpoints.
    pub fn entries(&self) -> impl Iterator<Item = &(i64, String)> {
        self.by_time.iter()
    }

    /// Restores held ids from a checkpoint.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (i64, String)>) {
        for (t, id) in entries {
            self.seen.insert(id.clone(), t);
            self.by_time.insert((t, id));
        }
    }

    fn expire(&mut self, before_ms: i64) {
        while let Some((t, _)) = self.by_time.first()
            && *t < before_ms
        {
            let entry = self.by_time.pop_first().expect("first exists");
            self.seen.remove(&entry.1);
            self.note_removed(entry);
        }
    }

    fn note_removed(&mut self, entry: (i64, String)) {
        if self.changes.remove(&entry) != Some(true) {
            self.changes.insert(entry, false);
        }
    }

    /// Additions (true) and removals (false) since the last call, for
    /// incremental checkpoints.
    pub fn take_changes(&mut self) -> BTreeMap<(i64, String), bool> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_only() {
        let mut d = Dedup::new(100, 1_000);
        assert!(!d.check("a", 1_000));
        assert!(d.check("a", 1_050));
        assert!(
            d.check("a", 1_100),
            "exactly window_ms later is still inside"
        );
        assert!(!d.check("a", 1_101), "forgotten after the window");
        assert!(!d.check("b", 1_101));
    }

    #[test]
    fn the_id_bound_forgets_the_oldest() {
        let mut d = Dedup::new(1_000_000, 2);
        assert!(!d.check("a", 1));
        assert!(!d.check("b", 2));
        assert!(!d.check("c", 3));
        assert_eq!(d.len(), 2);
        assert!(!d.check("a", 4), "a was evicted by the bound");
        assert!(d.check("c", 5));
    }
}
