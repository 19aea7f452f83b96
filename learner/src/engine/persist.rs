//! The engine's state as store writes (incremental, for checkpoints) and
//! back (restore). Which bytes go where is `codec` and `meta`; this file
//! only decides what changed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::{ControlState, Dirty, Engine, EngineConfig, EngineStats, Slot};
use crate::batcher::Batcher;
use crate::codec::{self, CorruptState, Table};
use crate::dedup::Dedup;
use crate::keymap::FlatKeyMap;
use crate::meta;
use crate::posterior::{KeyState, SharedState};
use crate::registry::ParamKey;
use crate::reorder::ReorderBuffer;
use crate::sample_log::SampleLog;
use crate::watermark::Watermarks;

/// One write of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Set `key` of a table.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove `key` of a table.
    Delete(Table, Vec<u8>),
    /// Set a key of [`Table::Params`] to a state. The state is shared with
    /// the engine (copy on write) and encoded by whoever applies the write
    /// — the checkpoint's writer thread, not the ingesting one.
    PutParams(ParamKey, SharedState),
    /// Set a key of [`Table::Pending`] to an encoded batch
    /// ([`codec::pending_bytes`]), cut from the engine's reused value
    /// chunks, reused from one checkpoint to the next.
    PutPending(ParamKey, Bytes),
    /// Remove a key of [`Table::Pending`].
    DeletePending(ParamKey),
}

impl Write {
    /// The write as table, key and value bytes (`None`: a delete).
    pub fn into_bytes(self) -> (Table, Vec<u8>, Option<Vec<u8>>) {
        match self {
            Write::Put(table, k, v) => (table, k, Some(v)),
            Write::Delete(table, k) => (table, k, None),
            Write::PutParams(key, state) => {
                (Table::Params, codec::param_key(key), Some(state.encode()))
            }
            Write::PutPending(key, value) => {
                (Table::Pending, codec::param_key(key), Some(value.to_vec()))
            }
            Write::DeletePending(key) => (Table::Pending, codec::param_key(key), None),
        }
    }
}

/// Meta entries every checkpoint writes.
const META_WRITES: usize = 7;

/// Parameter puts taken ahead of a delta ([`Engine::store_ahead`]), in the
/// segments they were taken in, to lead the delta's writes. The runner
/// hands them to its writer thread with the delta, so joining them (a
/// copy of up to ~10⁶ writes into a new list) happens there, not on the
/// ingesting thread.
#[derive(Debug, Default)]
pub struct Ahead {
    segments: Vec<Vec<Write>>,
}

impl Ahead {
    /// Writes held.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Vec::len).sum()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(Vec::is_empty)
    }

    /// Puts these writes, in the order taken, in front of `writes`.
    pub fn lead(self, writes: &mut Vec<Write>) {
        let ahead = self.len();
        if ahead == 0 {
            return;
        }
        let mut joined = Vec::with_capacity(ahead + writes.len());
        for segment in self.segments {
            joined.extend(segment);
        }
        joined.append(writes);
        *writes = joined;
    }
}

/// The puts and deletes [`Engine::checkpoint_delta_into`] leaves unsorted
/// at the front of the write list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeltaPuts {
    /// Parameter puts, first.
    pub params: usize,
    /// Pending-batch deletes, right after them.
    pub deletes: usize,
    /// Pending-batch puts, right after the deletes.
    pub pending: usize,
}

/// Sorts each run of puts and deletes at the front of `writes` by key (see
/// [`Engine::checkpoint_delta_into`]): RocksDB inserts a batch's keys into
/// its memtable faster in order. Off the ingesting thread, on the
/// checkpoint writer. The runs stay in their order, so a pending batch's
/// delete still precedes the put of the key's next batch.
///
/// A key whose state was taken ahead ([`Engine::store_ahead`]) and changed
/// again is put twice: the parameter puts are sorted stably (the later
/// put stays after the earlier) and only the later is kept.
pub fn sort_puts(writes: &mut Vec<Write>, puts: DeltaPuts) {
    let param_key = |w: &Write| match w {
        Write::PutParams(key, _) => Some(*key),
        _ => None,
    };
    let (params, rest) = writes.split_at_mut(puts.params);
    params.sort_by_key(param_key);
    let (deletes, rest) = rest.split_at_mut(puts.deletes);
    deletes.sort_unstable_by_key(pending_key);
    rest[..puts.pending].sort_unstable_by_key(pending_key);
    // Keep the last of each run of equal keys, in place.
    let mut kept = 0;
    for i in 0..params.len() {
        let superseded = i + 1 < params.len() && param_key(&params[i]) == param_key(&params[i + 1]);
        if !superseded {
            params.swap(kept, i);
            kept += 1;
        }
    }
    if kept < puts.params {
        writes.drain(kept..puts.params);
    }
}

/// The key of a pending batch's put or delete (`None` for the other
/// writes). Keys sort as their bytes do ([`codec::param_key`]).
fn pending_key(write: &Write) -> Option<ParamKey> {
    match write {
        Write::PutPending(key, _) | Write::DeletePending(key) => Some(*key),
        _ => None,
    }
}

/// Size of the chunks [`ValueChunks`] cuts values from.
const VALUE_CHUNK: usize = 1 << 20;

/// Most chunks [`ValueChunks`] keeps for reuse.
const MAX_KEPT_CHUNKS: usize = 64;

/// The memory a checkpoint's pending-batch values are encoded into,
/// reused from one checkpoint to the next.
///
/// A value per changed batch, each its own allocation, freed on the writer
/// thread once written: the allocator handed that memory back to the
/// system between checkpoints, and faulting it in afresh on the
/// ingesting thread was about half the cost of encoding the values. Here
/// the values are cut from 1 MiB chunks ([`Bytes`] sharing the chunk); a
/// chunk whose values have all been written and dropped is reused, so a
/// steady stream of checkpoints writes into memory that stays mapped.
/// Chunks still held by a write in progress are left alone; at most
/// [`MAX_KEPT_CHUNKS`] are kept, and those beyond what the recent
/// checkpoints used are let go after [`SPARE_IDLE_CHECKPOINTS`]
/// checkpoints in a row that used less than a quarter of them.
#[derive(Debug, Default)]
pub(super) struct ValueChunks {
    /// Where the next value goes.
    open: BytesMut,
    /// Chunks filled before `open`, oldest first.
    filled: VecDeque<BytesMut>,
    /// `open` is a chunk (not the empty buffer of a new engine).
    opened_any: bool,
    /// Chunks opened since the last [`Self::checkpoint_done`].
    opened: usize,
    /// Checkpoints in a row that opened less than a quarter of the kept
    /// chunks.
    idle: u32,
}

impl ValueChunks {
    /// A value of `len` bytes written by `write`.
    pub(super) fn value(&mut self, len: usize, write: impl FnOnce(&mut [u8])) -> Bytes {
        if self.open.capacity() < len {
            self.open_chunk(len);
        }
        self.open.resize(len, 0);
        write(&mut self.open);
        self.open.split().freeze()
    }

    /// Replaces the open chunk with the oldest filled one if every value
    /// cut from that has been dropped, else with a new chunk.
    fn open_chunk(&mut self, len: usize) {
        let size = VALUE_CHUNK.max(len);
        let reusable = self
            .filled
            .front_mut()
            .is_some_and(|chunk| chunk.try_reclaim(size));
        let next = match reusable {
            true => self.filled.pop_front().expect("a front chunk"),
            false => BytesMut::with_capacity(size),
        };
        let full = std::mem::replace(&mut self.open, next);
        if self.opened_any {
            self.filled.push_back(full);
        }
        self.opened_any = true;
        if self.filled.len() > MAX_KEPT_CHUNKS {
            // Freed once the values cut from it are.
            self.filled.pop_front();
        }
        self.opened += 1;
    }

    /// Ends a checkpoint's values: lets go of chunks the recent
    /// checkpoints have not needed (keeping about twice what the last one
    /// opened).
    pub(super) fn checkpoint_done(&mut self) {
        let kept = self.filled.len() + 1;
        if 4 * self.opened < kept {
            self.idle += 1;
        } else {
            self.idle = 0;
        }
        if self.idle >= SPARE_IDLE_CHECKPOINTS {
            self.filled.truncate(2 * self.opened);
            self.idle = 0;
        }
        self.opened = 0;
    }

    /// Chunks kept (the open one included), for tests.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.filled.len() + usize::from(self.opened_any)
    }
}

/// Stored entries of one table, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Checkpoints in a row that may use less than a quarter of the spare
/// write list before [`SpareWrites`] lets it go.
pub const SPARE_IDLE_CHECKPOINTS: u32 = 16;

/// The emptied write list of the last checkpoint, kept for the next delta
/// to fill: its pages are already mapped, so a large delta does not fault
/// fresh memory in on the ingesting thread. The list only grows with the
/// deltas it holds, until [`SPARE_IDLE_CHECKPOINTS`] checkpoints in a row
/// used less than a quarter of it; then it shrinks to twice the last use,
/// so one burst does not pin its memory for the process's lifetime.
#[derive(Debug, Default)]
pub struct SpareWrites {
    list: Vec<Write>,
    small_in_a_row: u32,
}

impl SpareWrites {
    /// The list to fill (empty, with the kept capacity).
    pub fn take(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.list)
    }

    /// Gives back the list taken, after its `used` writes were applied.
    pub fn give_back(&mut self, mut list: Vec<Write>, used: usize) {
        list.clear();
        if used.saturating_mul(4) < list.capacity() {
            self.small_in_a_row += 1;
            if self.small_in_a_row >= SPARE_IDLE_CHECKPOINTS {
                list.shrink_to(used.saturating_mul(2));
                self.small_in_a_row = 0;
            }
        } else {
            self.small_in_a_row = 0;
        }
        self.list = list;
    }

    /// Capacity kept for the next delta.
    pub fn capacity(&self) -> usize {
        self.list.capacity()
    }
}

impl Engine {
    /// The writes that bring a store holding the previous checkpoint up to
    /// the current state: changed keys only, plus the small meta entries.
    /// Applied atomically, they make a consistent checkpoint (offsets and
    /// the state they produced together).
    pub fn checkpoint_delta(&mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        let puts = self.checkpoint_delta_into(&mut writes);
        sort_puts(&mut writes, puts);
        writes
    }

    /// [`Self::checkpoint_delta_into`] with the puts taken ahead returned
    /// apart, for the caller to put in front of `writes`
    /// ([`Ahead::lead`]) before [`sort_puts`], off the ingesting thread.
    pub fn checkpoint_delta_apart(&mut self, writes: &mut Vec<Write>) -> (DeltaPuts, Ahead) {
        let ahead = Ahead {
            segments: std::mem::take(&mut self.dirty.ahead),
        };
        let mut puts = self.checkpoint_delta_rest(writes);
        puts.params += ahead.len();
        (puts, ahead)
    }

    /// [`Self::checkpoint_delta`] appended to `writes`, whose capacity a
    /// caller can keep from one checkpoint to the next: a checkpoint of
    /// 10⁵ keys otherwise fills megabytes of freshly mapped memory, and
    /// the page faults were most of its cost. `writes` comes empty. The
    /// parameter puts come first, then the pending batches' deletes, then
    /// their puts, each in no particular order (sorting them is left to the
    /// writer thread: [`sort_puts`]); returns their numbers.
    pub fn checkpoint_delta_into(&mut self, writes: &mut Vec<Write>) -> DeltaPuts {
        // The puts taken ahead lead (their keys' later puts follow).
        let (puts, ahead) = self.checkpoint_delta_apart(writes);
        ahead.lead(writes);
        puts
    }

    /// The delta's writes but the puts taken ahead, appended to `writes`;
    /// `params` counts only the parameter puts appended.
    fn checkpoint_delta_rest(&mut self, writes: &mut Vec<Write>) -> DeltaPuts {
        let mut dirty_params = std::mem::take(&mut self.dirty.params);
        let log = self.log.take_changes(self.released_below_ms);
        writes.reserve(
            dirty_params.len()
                + log.deletes.len()
                + log.puts.len()
                + self.dedup.as_ref().map_or(0, Dedup::changes_len)
                + self.batcher.changes_bound()
                + META_WRITES
                + 1,
        );
        self.for_each_slot(&dirty_params, |key, slot| {
            slot.unstored = false;
            writes.push(Write::PutParams(key, slot.state.clone()));
        });
        let params = dirty_params.len();
        dirty_params.clear();
        self.dirty.params = dirty_params;
        // A batch applied without ever being stored (every batch of one)
        // leaves nothing to delete. A key's delete goes before its new
        // batch's put (see `Batcher::take_changes`).
        let (mut deletes, mut pending) = (0, 0);
        let values = &mut self.values;
        self.batcher.take_changes(|key, batch| {
            writes.push(match batch {
                None => {
                    deletes += 1;
                    Write::DeletePending(key)
                }
                Some(batch) => {
                    pending += 1;
                    let value = values.value(codec::pending_len(batch), |out| {
                        codec::write_pending(batch, out)
                    });
                    Write::PutPending(key, value)
                }
            });
        });
        values.checkpoint_done();
        writes.extend(
            log.deletes
                .into_iter()
                .map(|k| Write::Delete(Table::Reorder, k)),
        );
        writes.extend(
            log.puts
                .into_iter()
                .map(|(k, v)| Write::Put(Table::Reorder, k, v)),
        );
        if let Some(dedup) = self.dedup.as_mut() {
            dedup.take_changes(|change| {
                let key = codec::dedup_key(change.event_ms, change.id);
                writes.push(if change.added {
                    Write::Put(Table::Dedup, key, codec::dedup_value(change.seq))
                } else {
                    Write::Delete(Table::Dedup, key)
                });
            });
        }
        let released = self.released_below_ms.to_le_bytes().to_vec();
        writes.extend([
            Write::Put(Table::Meta, meta::FORMAT.to_vec(), meta::format_bytes()),
            Write::Put(
                Table::Meta,
                meta::OFFSETS.to_vec(),
                meta::offsets_bytes(&self.next_offsets),
            ),
            Write::Put(
                Table::Meta,
                meta::CLOCKS.to_vec(),
                meta::clocks_bytes(self.watermarks.clocks()),
            ),
            Write::Put(Table::Meta, meta::RELEASED.to_vec(), released),
            Write::Put(
                Table::Meta,
                meta::REGISTRY.to_vec(),
                meta::registry_bytes(&self.registry),
            ),
            Write::Put(
                Table::Meta,
                meta::COUNTERS.to_vec(),
                meta::counters_bytes(&self.counters),
            ),
            Write::Put(
                Table::Meta,
                meta::CONTROL.to_vec(),
                meta::control_bytes(
                    // A held barrier goes first: restored, the engine
                    // stops at it again.
                    self.control
                        .barrier
                        .iter()
                        .chain(self.control.scheduled.values()),
                    self.control.applied_ids.iter(),
                    self.control.next_offset,
                ),
            ),
        ]);
        DeltaPuts {
            params,
            deletes,
            pending,
        }
    }

    /// Takes the states of up to `max_keys` changed parameters ahead of
    /// the next [`Self::checkpoint_delta_into`], which leads with them;
    /// returns how many it took. For a checkpoint that is put off while
    /// the previous one is written: its delta would otherwise grow with
    /// the wait, and so would the time it blocks ingestion (bench 4 on a
    /// slow disk: 407 k keys, 130 ms). Taken a share at a time, the work
    /// is spread over the wait. A key that changes again before the
    /// checkpoint is listed again and put twice; [`sort_puts`] keeps the
    /// later put. The states are shared (copy on write), as a delta's are;
    /// each call's puts are a list of their own ([`Ahead`]).
    pub fn store_ahead(&mut self, max_keys: usize) -> usize {
        let mut dirty = std::mem::take(&mut self.dirty.params);
        let from = dirty.len().saturating_sub(max_keys);
        let mut segment = Vec::with_capacity(dirty.len() - from);
        self.for_each_slot(&dirty[from..], |key, slot| {
            slot.unstored = false;
            segment.push(Write::PutParams(key, slot.state.clone()));
        });
        let taken = segment.len();
        dirty.truncate(from);
        self.dirty.params = dirty;
        if taken > 0 {
            self.dirty.ahead.push(segment);
        }
        taken
    }

    /// Changed parameters not yet in a delta or taken ahead.
    pub fn unstored_params(&self) -> usize {
        self.dirty.params.len()
    }

    /// Every write of a complete checkpoint, whatever changed: for an
    /// empty store (a new live store, or a savepoint). From here on the
    /// engine's change tracking refers to the store these writes go to: a
    /// store written before misses the deletes of what changed since its
    /// last delta, so the next deltas must go to the new store.
    pub fn full_checkpoint(&mut self) -> Vec<Write> {
        let mut params = Vec::with_capacity(self.params.len());
        for (key, slot) in self.params.iter_mut() {
            slot.unstored = true;
            params.push(*key);
        }
        // Every key is put below: what was taken ahead is superseded.
        self.dirty = Dirty {
            params,
            ahead: Vec::new(),
        };
        self.batcher.mark_all_unstored();
        self.log.rewrite(&self.buffer, self.released_below_ms);
        let mut writes = self.checkpoint_delta();
        if let Some(dedup) = self.dedup.as_ref() {
            writes.retain(|w| {
                !matches!(
                    w,
                    Write::Put(Table::Dedup, ..) | Write::Delete(Table::Dedup, ..)
                )
            });
            writes.extend(dedup.entries().map(|(t, id, seq)| {
                Write::Put(
                    Table::Dedup,
                    codec::dedup_key(t, id),
                    codec::dedup_value(seq),
                )
            }));
        }
        writes
    }

    /// Rebuilds an engine from stored tables (`read` returns a table's
    /// entries in key order; it is called once per table). Returns
    /// `Ok(None)` for an empty store.
    /// Anything that does not decode is reported, never repaired.
    pub fn restore(
        config: EngineConfig,
        mut read: impl FnMut(Table) -> Entries,
    ) -> Result<Option<Engine>, CorruptState> {
        let params = read(Table::Params);
        let hint = params.len();
        Self::restore_streaming(config, read, hint, |visit| {
            params.iter().try_for_each(|(k, v)| visit(k, v))
        })
    }

    /// [`Self::restore`] with the parameter table — by far the largest,
    /// ~0.5 GB at 1 M keys and d = 32 — streamed instead of handed over as
    /// entries: `params` calls its argument with each entry in key order,
    /// from the store's own buffers, and stops at its first error, which
    /// it returns. `params_hint` (an estimate of its entries) sizes the
    /// table. A restore from RocksDB then allocates nothing per entry but
    /// the state.
    pub fn restore_streaming(
        config: EngineConfig,
        mut read: impl FnMut(Table) -> Entries,
        params_hint: usize,
        params: impl FnOnce(
            &mut dyn FnMut(&[u8], &[u8]) -> Result<(), CorruptState>,
        ) -> Result<(), CorruptState>,
    ) -> Result<Option<Engine>, CorruptState> {
        let meta: HashMap<Vec<u8>, Vec<u8>> = read(Table::Meta).into_iter().collect();
        let Some(format) = meta.get(meta::FORMAT) else {
            return Ok(None);
        };
        meta::check_format(format)?;
        let entry = |name: &[u8]| {
            meta.get(name)
                .ok_or_else(|| CorruptState::new(Table::Meta, name, "missing"))
        };
        let registry = meta::registry_from(entry(meta::REGISTRY)?)?;
        let clocks = meta::clocks_from(entry(meta::CLOCKS)?)?;
        let next_offsets = meta::offsets_from(entry(meta::OFFSETS)?)?;
        let counters = meta::counters_from(entry(meta::COUNTERS)?)?;
        let backlog = match meta.get(meta::CONTROL) {
            Some(bytes) => meta::control_from(bytes)?,
            None => meta::ControlBacklog::default(),
        };
        let released = entry(meta::RELEASED)?;
        let released_below_ms = i64::from_le_bytes(
            released
                .as_slice()
                .try_into()
                .map_err(|_| CorruptState::new(Table::Meta, meta::RELEASED, "not 8 bytes"))?,
        );

        let mut table = FlatKeyMap::with_capacity(params_hint);
        params(&mut |k, v| {
            let key = codec::param_key_from(Table::Params, k)?;
            let state = KeyState::decode(v).map_err(|e| CorruptState::new(Table::Params, k, e))?;
            if registry.get(key.version).is_none() {
                return Err(CorruptState::new(
                    Table::Params,
                    k,
                    "unregistered version id",
                ));
            }
            table.insert(key, Slot::clean(state));
            Ok(())
        })?;
        let params = table;
        let mut batcher = Batcher::new(config.batch);
        for (k, v) in read(Table::Pending) {
            let key = codec::param_key_from(Table::Pending, &k)?;
            // Checked as the params are: a batch of an unregistered version
            // would be applied against no spec later.
            if registry.get(key.version).is_none() {
                return Err(CorruptState::new(
                    Table::Pending,
                    &k,
                    "unregistered version id",
                ));
            }
            batcher.restore(key, codec::pending_from(&k, &v)?);
        }
        let mut buffer = ReorderBuffer::new(config.reorder_capacity);
        let log = SampleLog::restore(read(Table::Reorder), released_below_ms, &mut buffer)?;
        let dedup = match config.dedup {
            Some((window_ms, max_ids)) => {
                let mut dedup = Dedup::new(window_ms, max_ids);
                let entries: Result<Vec<_>, _> = read(Table::Dedup)
                    .iter()
                    .map(|(k, v)| {
                        let (t, id) = codec::dedup_key_from(k)?;
                        Ok::<_, CorruptState>((t, id, codec::dedup_value_from(k, v)?))
                    })
                    .collect();
                dedup.restore(entries?);
                Some(dedup)
            }
            None => None,
        };
        let mut engine = Engine {
            watermarks: Watermarks::from_clocks(config.out_of_orderness_ms, clocks),
            buffer,
            log,
            dedup,
            batcher,
            registry,
            params,
            next_offsets,
            released_below_ms,
            releasing: Vec::new(),
            resolved: Vec::new(),
            ready: Vec::new(),
            changed: Vec::new(),
            dead_letters: Vec::new(),
            counters,
            stats: EngineStats::default(),
            dirty: Dirty::default(),
            values: ValueChunks::default(),
            control: ControlState::restore(backlog, released_below_ms),
            contexts: None,
        };
        for key in engine.params.keys() {
            engine.stats.count_key(key.version);
        }
        if engine.control.first_barrier_at().is_some() {
            // A checkpoint taken while the release was held at a barrier
            // (a savepoint's): hold it again, before any new record.
            engine.release(engine.watermarks.instance_watermark());
        }
        Ok(Some(engine))
    }
}

/// An in-memory state store: the tables as sorted maps. The unit-test fake
/// of the RocksDB store, with the same semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    /// Applies a checkpoint's writes.
    pub fn apply(&mut self, writes: Vec<Write>) {
        for write in writes {
            let (table, k, v) = write.into_bytes();
            let table = self.tables.entry(table).or_default();
            match v {
                Some(v) => table.insert(k, v),
                None => table.remove(&k),
            };
        }
    }

    /// A table's entries in key order.
    pub fn entries(&self, table: Table) -> Entries {
        self.tables
            .get(&table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod spare_tests {
    use super::*;

    fn filled(mut list: Vec<Write>, n: usize) -> Vec<Write> {
        list.extend((0..n).map(|i| Write::Delete(Table::Meta, vec![i as u8])));
        list
    }

    #[test]
    fn a_burst_is_kept_until_small_checkpoints_outlast_it() {
        let mut spare = SpareWrites::default();
        let list = filled(spare.take(), 4000);
        spare.give_back(list, 4000);
        let burst = spare.capacity();
        assert!(burst >= 4000);
        for round in 1..SPARE_IDLE_CHECKPOINTS {
            let list = spare.take();
            assert!(list.is_empty());
            let list = filled(list, 100);
            spare.give_back(list, 100);
            assert_eq!(
                spare.capacity(),
                burst,
                "kept after {round} small checkpoints"
            );
        }
        let list = filled(spare.take(), 100);
        spare.give_back(list, 100);
        assert!(
            (200..burst).contains(&spare.capacity()),
            "shrunk to about twice the last use: {}",
            spare.capacity()
        );
    }

    #[test]
    fn a_large_checkpoint_resets_the_count() {
        let mut spare = SpareWrites::default();
        let list = filled(spare.take(), 4000);
        spare.give_back(list, 4000);
        let burst = spare.capacity();
        for i in 0..3 * SPARE_IDLE_CHECKPOINTS {
            // Every fifth checkpoint uses the whole list again.
            let used = if i % 5 == 4 { 4000 } else { 100 };
            let list = filled(spare.take(), used);
            spare.give_back(list, used);
            assert_eq!(spare.capacity(), burst, "checkpoint {i}");
        }
    }
}

#[cfg(test)]
mod value_tests {
    use super::*;

    /// A value of `len` bytes, each `seed` plus its index.
    fn cut(chunks: &mut ValueChunks, len: usize, seed: u8) -> Bytes {
        chunks.value(len, |out| {
            for (i, b) in out.iter_mut().enumerate() {
                *b = seed.wrapping_add(i as u8);
            }
        })
    }

    fn intact(value: &Bytes, seed: u8) -> bool {
        value
            .iter()
            .enumerate()
            .all(|(i, &b)| b == seed.wrapping_add(i as u8))
    }

    #[test]
    fn values_held_stay_intact_while_chunks_turn_over() {
        let mut chunks = ValueChunks::default();
        // Round 1 is held throughout (a write in progress); round 2 is
        // dropped, so its chunks come back for round 3.
        let lens = [1, 37, 3000, VALUE_CHUNK / 3, VALUE_CHUNK + 5, 0, 200];
        let held: Vec<(Bytes, u8)> = (0..40)
            .map(|i| {
                let seed = i as u8;
                (cut(&mut chunks, lens[i % lens.len()], seed), seed)
            })
            .collect();
        chunks.checkpoint_done();
        for round in 2..=3 {
            let dropped: Vec<Bytes> = (0..40)
                .map(|i| cut(&mut chunks, lens[i % lens.len()], 100 + round))
                .collect();
            assert!(dropped.iter().all(|v| intact(v, 100 + round)));
            chunks.checkpoint_done();
        }
        for (i, (value, seed)) in held.iter().enumerate() {
            assert_eq!(value.len(), lens[i % lens.len()]);
            assert!(intact(value, *seed), "value {i} overwritten");
        }
    }

    #[test]
    fn chunks_are_reused_once_their_values_are_dropped() {
        let mut chunks = ValueChunks::default();
        for round in 0..50_u8 {
            // About 3.5 chunks of values, written and dropped before the
            // next checkpoint.
            let values: Vec<Bytes> = (0..700).map(|_| cut(&mut chunks, 5000, round)).collect();
            assert!(values.iter().all(|v| intact(v, round)));
            drop(values);
            chunks.checkpoint_done();
            assert!(
                chunks.kept() <= 6,
                "round {round}: {} chunks",
                chunks.kept()
            );
        }
    }

    #[test]
    fn a_burst_of_chunks_is_let_go_after_small_checkpoints() {
        let mut chunks = ValueChunks::default();
        let burst: Vec<Bytes> = (0..40)
            .map(|_| cut(&mut chunks, VALUE_CHUNK / 2, 1))
            .collect();
        drop(burst);
        chunks.checkpoint_done();
        let big = chunks.kept();
        assert!(big >= 20);
        for round in 1..=SPARE_IDLE_CHECKPOINTS {
            let small: Vec<Bytes> = (0..600).map(|_| cut(&mut chunks, 5000, 2)).collect();
            drop(small);
            chunks.checkpoint_done();
            if round < SPARE_IDLE_CHECKPOINTS {
                assert_eq!(chunks.kept(), big, "kept after {round} small checkpoints");
            }
        }
        assert!(chunks.kept() <= 8, "let go: {} chunks kept", chunks.kept());
    }
}
