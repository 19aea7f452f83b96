//! One version's Beta or diagonal-Gaussian keys in flat memory.
//!
//! - A **slab** of fixed-size slots, one per key, in chunks that never
//!   move: `[lock, seq, sample_count, updated_event_time_ms, body…]`, all
//!   `AtomicU64` words (floats as their bits). The body is α, β for Beta,
//!   the d means then the d precisions for a diagonal Gaussian.
//! - An open-addressing **index** doc id → slot (linear probing, at most
//!   half full), two words per entry: the doc id, then slot + 1 (0: empty).
//!
//! A read is then two cache misses (the index entry, the slot), and a
//! batch read prefetches both for a group of docs before reading any, so
//! a request's misses overlap instead of following each other. A
//! pointer-per-key map (papaya) costs three to four dependent misses per
//! key (its metadata byte, the entry pointer, the entry, the value's heap
//! slice): see BENCHMARKS.md.
//!
//! **Torn-free reads** (a sequence lock, all in atomics): the single
//! writer makes the slot's lock odd, writes the words, makes it even
//! again; a reader copies the words between two loads of the lock and
//! retries unless both saw the same even value. Writers are serialised
//! by a mutex (one feed per server; a restore builds a new table).
//! A key's seq can never go back for a reader: a slot only ever receives
//! higher seqs, and an index entry, once published, keeps its slot.
//!
//! **Growth**: a new key's slot is written before its index entry is
//! published (release store of slot + 1). When the index would pass half
//! full, the writer builds one twice the size and swaps it in; a reader
//! still on the old index finds every key that existed when it loaded it,
//! and reads their current slots.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use posterior_learner::prefetch::{prefetch, prefetch_slice};
use posterior_learner::{KeyState, Posterior};

use crate::stored::{BodyView, StateView};
use crate::table::{ApplyOutcome, DocHasher};

/// Words before the body: lock, seq, sample count, event time.
const HEADER: usize = 4;
/// Slots per slab chunk.
const CHUNK_SLOTS: usize = 1024;
/// Docs whose index entries and slots a batch read prefetches together.
const GROUP: usize = 32;
/// No slot.
const EMPTY: u64 = 0;

/// Which posterior the slots hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// α, β.
    Beta,
    /// d means, d precisions.
    Diagonal { dim: usize },
}

impl Shape {
    fn body_words(self) -> usize {
        match self {
            Shape::Beta => 2,
            Shape::Diagonal { dim } => 2 * dim,
        }
    }

    /// The shape of `state`, if a flat table can hold it.
    fn of(state: &KeyState) -> Option<Self> {
        match &state.posterior {
            Posterior::Beta(_) => Some(Shape::Beta),
            Posterior::Diagonal(g) => Some(Shape::Diagonal { dim: g.dim() }),
            Posterior::Full(_) => None,
        }
    }
}

/// Doc id → slot, open addressing.
#[derive(Debug)]
struct Index {
    mask: usize,
    /// Entry i: `words[2i]` the doc id, `words[2i + 1]` its slot + 1.
    words: Box<[AtomicU64]>,
}

impl Index {
    fn with_entries(entries: usize) -> Self {
        let entries = entries.next_power_of_two().max(16);
        Self {
            mask: entries - 1,
            words: (0..2 * entries).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn entries(&self) -> usize {
        self.mask + 1
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    fn prefetch(&self, position: usize) {
        prefetch(&self.words[2 * position]);
    }

    /// The slot of `doc_id`, probing from `position`.
    fn find(&self, doc_id: u64, mut position: usize) -> Option<usize> {
        loop {
            let slot = self.words[2 * position + 1].load(Ordering::Acquire);
            if slot == EMPTY {
                return None;
            }
            if self.words[2 * position].load(Ordering::Relaxed) == doc_id {
                return Some(slot as usize - 1);
            }
            position = (position + 1) & self.mask;
        }
    }

    /// Publishes `doc_id` → `slot` (the writer's; `doc_id` is absent).
    fn insert(&self, doc_id: u64, slot: usize, mut position: usize) {
        while self.words[2 * position + 1].load(Ordering::Relaxed) != EMPTY {
            position = (position + 1) & self.mask;
        }
        self.words[2 * position].store(doc_id, Ordering::Relaxed);
        self.words[2 * position + 1].store(slot as u64 + 1, Ordering::Release);
    }

    /// Every (doc id, slot) published.
    fn entries_iter(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.words.chunks_exact(2).filter_map(|entry| {
            let slot = entry[1].load(Ordering::Acquire);
            (slot != EMPTY).then(|| (entry[0].load(Ordering::Relaxed), slot as usize - 1))
        })
    }
}

type Chunks = Vec<Arc<[AtomicU64]>>;

/// A flat table (see the module docs).
#[derive(Debug)]
pub(crate) struct FlatTable {
    shape: Shape,
    stride: usize,
    hasher: DocHasher,
    index: ArcSwap<Index>,
    chunks: ArcSwap<Chunks>,
    /// Serialises writers; holds the number of slots in use.
    writer: Mutex<usize>,
    len: AtomicUsize,
}

impl FlatTable {
    /// An empty table of `shape` sized for `capacity` keys.
    pub(crate) fn new(shape: Shape, capacity: usize) -> Self {
        Self {
            shape,
            stride: HEADER + shape.body_words(),
            hasher: DocHasher::default(),
            index: ArcSwap::from_pointee(Index::with_entries(2 * capacity)),
            chunks: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(0),
            len: AtomicUsize::new(0),
        }
    }

    /// The shape a flat table of `state`'s kind would have.
    pub(crate) fn shape_of(state: &KeyState) -> Option<Shape> {
        Shape::of(state)
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn hash(&self, doc_id: u64) -> u64 {
        self.hasher.hash_one(doc_id)
    }

    fn slot<'c>(&self, chunks: &'c Chunks, slot: usize) -> &'c [AtomicU64] {
        let start = (slot % CHUNK_SLOTS) * self.stride;
        &chunks[slot / CHUNK_SLOTS][start..start + self.stride]
    }

    /// Stores `state` for `doc_id` unless the stored seq is equal or
    /// higher. `state` must have the table's shape (the store checks the
    /// version's model first); another shape is refused as `None`.
    pub(crate) fn apply(&self, doc_id: u64, state: &KeyState) -> Option<ApplyOutcome> {
        if Shape::of(state) != Some(self.shape) {
            return None;
        }
        let mut used = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let hash = self.hash(doc_id);
        let index = self.index.load();
        if let Some(slot) = index.find(doc_id, index.home(hash)) {
            let chunks = self.chunks.load();
            let words = self.slot(&chunks, slot);
            let stored_seq = words[1].load(Ordering::Relaxed);
            if state.seq <= stored_seq {
                return Some(ApplyOutcome::Stale { stored_seq });
            }
            write_slot(words, state);
            return Some(ApplyOutcome::Applied);
        }
        // A doc never seen is at the prior, whose seq is 0.
        if state.seq == 0 {
            return Some(ApplyOutcome::Stale { stored_seq: 0 });
        }
        let slot = *used;
        if slot.is_multiple_of(CHUNK_SLOTS) {
            let mut grown = Chunks::clone(&self.chunks.load());
            grown.push(
                (0..CHUNK_SLOTS * self.stride)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            );
            self.chunks.store(Arc::new(grown));
        }
        write_slot(self.slot(&self.chunks.load(), slot), state);
        *used += 1;
        let index = if 2 * *used > index.entries() {
            let grown = Index::with_entries(2 * index.entries());
            for (doc, slot) in index.entries_iter() {
                grown.insert(doc, slot, grown.home(self.hash(doc)));
            }
            self.index.store(Arc::new(grown));
            self.index.load()
        } else {
            index
        };
        index.insert(doc_id, slot, index.home(hash));
        self.len.store(*used, Ordering::Release);
        Some(ApplyOutcome::Applied)
    }

    /// Calls `read` for every doc of `doc_ids`, in order, with its stored
    /// state or `None`. The index entries, then the slots, of each group
    /// of docs are prefetched before any of them is read.
    pub(crate) fn read_each(
        &self,
        doc_ids: &[u64],
        mut read: impl FnMut(u64, Option<StateView<'_>>),
    ) {
        let index = self.index.load();
        let mut chunks = self.chunks.load_full();
        let mut words = vec![0.0_f64; self.stride];
        let mut positions = [0_usize; GROUP];
        let mut slots = [None; GROUP];
        for group in doc_ids.chunks(GROUP) {
            for (position, &doc_id) in positions.iter_mut().zip(group) {
                *position = index.home(self.hash(doc_id));
                index.prefetch(*position);
            }
            for ((slot, &position), &doc_id) in slots.iter_mut().zip(&positions).zip(group) {
                *slot = index.find(doc_id, position);
                if let Some(slot) = *slot {
                    if slot / CHUNK_SLOTS >= chunks.len() {
                        // Published after this read loaded the chunk list.
                        chunks = self.chunks.load_full();
                    }
                    prefetch_slice(self.slot(&chunks, slot));
                }
            }
            for (&slot, &doc_id) in slots.iter().zip(group) {
                match slot {
                    Some(slot) => {
                        read_slot(self.slot(&chunks, slot), &mut words);
                        read(doc_id, Some(self.view(&words)));
                    }
                    None => read(doc_id, None),
                }
            }
        }
    }

    /// The view of a slot copied into `words`.
    fn view<'w>(&self, words: &'w [f64]) -> StateView<'w> {
        let body = &words[HEADER..];
        StateView {
            seq: words[1].to_bits(),
            sample_count: words[2],
            updated_event_time_ms: words[3].to_bits() as i64,
            body: match self.shape {
                Shape::Beta => BodyView::Beta {
                    alpha: body[0],
                    beta: body[1],
                },
                Shape::Diagonal { dim } => {
                    let (mean, precision) = body.split_at(dim);
                    BodyView::Diagonal { mean, precision }
                }
            },
        }
    }

    /// Every doc id present now (keys added during the scan may or may not
    /// appear).
    pub(crate) fn doc_ids(&self) -> Vec<u64> {
        self.index
            .load()
            .entries_iter()
            .map(|(doc, _)| doc)
            .collect()
    }
}

/// The writer's store of `state` into a slot, under its sequence lock.
fn write_slot(words: &[AtomicU64], state: &KeyState) {
    let lock = words[0].load(Ordering::Relaxed);
    words[0].store(lock + 1, Ordering::Relaxed);
    fence(Ordering::Release);
    words[1].store(state.seq, Ordering::Relaxed);
    words[2].store(state.sample_count.to_bits(), Ordering::Relaxed);
    words[3].store(state.updated_event_time_ms as u64, Ordering::Relaxed);
    let body = &words[HEADER..];
    match &state.posterior {
        Posterior::Beta(b) => {
            body[0].store(b.alpha().to_bits(), Ordering::Relaxed);
            body[1].store(b.beta().to_bits(), Ordering::Relaxed);
        }
        Posterior::Diagonal(g) => {
            let values = g.mean().iter().chain(g.precision().iter());
            for (word, value) in body.iter().zip(values) {
                word.store(value.to_bits(), Ordering::Relaxed);
            }
        }
        Posterior::Full(_) => unreachable!("the shape was checked"),
    }
    words[0].store(lock + 2, Ordering::Release);
}

/// Copies a slot into `out` (floats; the integer header words keep their
/// bits), retrying while a write is in progress or happened meanwhile.
fn read_slot(words: &[AtomicU64], out: &mut [f64]) {
    loop {
        let before = words[0].load(Ordering::Acquire);
        if before.is_multiple_of(2) {
            for (value, word) in out.iter_mut().zip(words) {
                *value = f64::from_bits(word.load(Ordering::Relaxed));
            }
            fence(Ordering::Acquire);
            if words[0].load(Ordering::Relaxed) == before {
                return;
            }
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use posterior_learner::posterior::{BetaPosterior, DiagonalGaussian, FullGaussian};
    use posterior_learner::posterior::{CovarianceForm, LogisticPrior};
    use proptest::prelude::*;

    use super::*;

    fn beta(seq: u64) -> KeyState {
        let s = seq as f64;
        KeyState {
            seq,
            sample_count: s,
            updated_event_time_ms: -(seq as i64),
            posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + s, 2.0 + s).unwrap()),
        }
    }

    fn diagonal(seq: u64, dim: usize) -> KeyState {
        let s = seq as f64;
        let mean = (0..dim).map(|i| s + i as f64).collect();
        let g = DiagonalGaussian::from_parts(mean, vec![1.0 + s; dim]).unwrap();
        KeyState {
            seq,
            sample_count: s,
            updated_event_time_ms: seq as i64 * 1000,
            posterior: Posterior::Diagonal(g),
        }
    }

    fn read_all(table: &FlatTable, docs: &[u64]) -> Vec<Option<KeyState>> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        table.read_each(docs, |doc, state| {
            seen.push(doc);
            out.push(state.map(|s| s.to_key_state()));
        });
        assert_eq!(seen, docs, "read in request order");
        out
    }

    #[test]
    fn keys_survive_index_and_slab_growth_bit_for_bit() {
        // From an index of 16 entries and no chunk to 5000 keys: the index
        // doubles nine times, the slab takes five chunks.
        let table = FlatTable::new(Shape::Diagonal { dim: 3 }, 0);
        for doc in 0..5_000_u64 {
            let key = doc.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(
                table.apply(key, &diagonal(doc + 1, 3)),
                Some(ApplyOutcome::Applied)
            );
        }
        assert_eq!(table.len(), 5_000);
        let keys: Vec<u64> = (0..5_000_u64)
            .map(|doc| doc.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        for (doc, state) in read_all(&table, &keys).into_iter().enumerate() {
            assert_eq!(
                state.unwrap().encode(),
                diagonal(doc as u64 + 1, 3).encode()
            );
        }
        let mut ids = table.doc_ids();
        ids.sort_unstable();
        let mut want = keys.clone();
        want.sort_unstable();
        assert_eq!(ids, want);
        assert_eq!(read_all(&table, &[1, 2]), [None, None]);
    }

    #[test]
    fn a_state_of_another_shape_is_refused_and_changes_nothing() {
        let table = FlatTable::new(Shape::Diagonal { dim: 4 }, 8);
        assert_eq!(table.apply(1, &diagonal(1, 3)), None);
        assert_eq!(table.apply(1, &beta(1)), None);
        let prior = LogisticPrior::isotropic(CovarianceForm::Full, 4, 1.0).unwrap();
        let full = KeyState {
            posterior: Posterior::Full(Box::new(FullGaussian::prior(&prior))),
            ..beta(1)
        };
        assert_eq!(table.apply(1, &full), None);
        assert_eq!(table.len(), 0);
        assert_eq!(read_all(&table, &[1]), [None]);
    }

    proptest! {
        /// The table against a map holding, per doc, the state of the
        /// highest seq applied: every outcome, every read, the key set.
        #[test]
        fn the_table_is_a_map_of_highest_seqs(
            updates in prop::collection::vec((0_u64..300, 0_u64..20), 0..600),
            use_beta in any::<bool>(),
        ) {
            let state = |seq| if use_beta { beta(seq) } else { diagonal(seq, 2) };
            let shape = if use_beta { Shape::Beta } else { Shape::Diagonal { dim: 2 } };
            let table = FlatTable::new(shape, 4);
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for &(doc, seq) in &updates {
                let stored = model.get(&doc).copied().unwrap_or(0);
                let want = if seq > stored {
                    model.insert(doc, seq);
                    ApplyOutcome::Applied
                } else {
                    ApplyOutcome::Stale { stored_seq: stored }
                };
                prop_assert_eq!(table.apply(doc, &state(seq)), Some(want));
            }
            prop_assert_eq!(table.len(), model.len());
            let docs: Vec<u64> = (0..310).collect();
            for (doc, got) in docs.iter().zip(read_all(&table, &docs)) {
                let want = model.get(doc).map(|&seq| state(seq).encode());
                prop_assert_eq!(got.map(|s| s.encode()), want);
            }
            let mut ids = table.doc_ids();
            ids.sort_unstable();
            prop_assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
        }
    }

    /// Readers while the writer adds keys (growing the index and the slab)
    /// and updates old ones: no torn state, no seq going back, and a key
    /// once seen is never missing from a later read.
    #[test]
    fn readers_see_whole_states_while_the_table_grows() {
        const DIM: usize = 8;
        let table = Arc::new(FlatTable::new(Shape::Diagonal { dim: DIM }, 0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (table, done) = (Arc::clone(&table), Arc::clone(&done));
                std::thread::spawn(move || {
                    let docs: Vec<u64> = (0..3_000).map(|d| (d * 7 + r) % 3_000).collect();
                    let mut last = vec![0_u64; 3_000];
                    let mut reads = 0_u64;
                    while !done.load(Ordering::Acquire) {
                        table.read_each(&docs, |doc, state| {
                            let seen = &mut last[doc as usize];
                            let Some(state) = state else {
                                assert_eq!(*seen, 0, "doc {doc} vanished");
                                return;
                            };
                            let s = state.seq as f64;
                            let BodyView::Diagonal { mean, precision } = state.body else {
                                panic!("not diagonal");
                            };
                            for (i, &m) in mean.iter().enumerate() {
                                assert_eq!(m, s + i as f64, "torn mean");
                            }
                            assert!(precision.iter().all(|&q| q == 1.0 + s), "torn precision");
                            assert_eq!(state.sample_count, s);
                            assert_eq!(state.updated_event_time_ms, state.seq as i64 * 1000);
                            assert!(state.seq >= *seen, "seq went back");
                            *seen = state.seq;
                            reads += 1;
                        });
                    }
                    reads
                })
            })
            .collect();
        let mut seqs = vec![0_u64; 3_000];
        for round in 0..30_000_u64 {
            // Adds doc `round` while there are new ones, and updates an
            // older doc every time.
            let doc = if round < 3_000 {
                round
            } else {
                (round * 13) % 3_000
            };
            seqs[doc as usize] += 1;
            table
                .apply(doc, &diagonal(seqs[doc as usize], DIM))
                .unwrap();
            if round % 5 == 0 {
                let old = (round * 31) % (round.min(2_999) + 1);
                let seq = seqs[old as usize] + 1;
                seqs[old as usize] = seq;
                table.apply(old, &diagonal(seq, DIM)).unwrap();
            }
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        assert_eq!(table.len(), 3_000);
    }
}
