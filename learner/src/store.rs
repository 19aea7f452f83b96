//! The live state store: RocksDB on disk, one column family per
//! [`Table`].
//!
//! Delivery guarantee: a checkpoint is one `WriteBatch` holding every
//! changed key *and* the next offset of every partition, written to the
//! memtables without the write-ahead log and then flushed to table files,
//! all tables in one commit ([`RocksStore::write_flushed_from`]); it counts
//! once that flush returns, and a crash before leaves the checkpoint
//! before it, whole. (Other writes, such as a savepoint's restore into an
//! empty store, are synced log writes.) After a crash the learner reopens
//! the store, rebuilds the engine from it and re-reads each partition from
//! its stored offset. The records after that offset were either never
//! applied or applied only to state that was lost with the process; the
//! engine is deterministic in the log, so re-applying them reproduces the
//! same state, sequence numbers and dead letters. Nothing is lost, nothing
//! counts twice.
//!
//! RocksDB runs with paranoid checks and verified block checksums, so a
//! damaged file is reported at open or read, and every value is validated
//! again when decoded (see `codec`). Corruption is an error, never repaired.

use std::path::Path;
use std::time::Instant;

use rocksdb::{
    ColumnFamilyDescriptor, DB, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::codec::{self, CorruptState, Table};
use crate::engine::{Entries, Write};

/// How many writes ahead of the one being encoded a checkpoint's write
/// asks for the memory of a state (see [`RocksStore::write_from`]).
const PREFETCH_AHEAD: usize = 8;

/// Bound of the write-ahead log kept for recovery, a backstop for logged
/// writes (checkpoints skip the log; see [`RocksStore::open`]).
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

/// Size at which RocksDB's info log (`LOG` in the state directory) is
/// rolled over to a new file, and how many rolled-over files (`LOG.old.*`,
/// also one per open) are kept. RocksDB's defaults never roll the log and
/// keep 1 000 old ones: with a flush after every checkpoint, a learner
/// run with `config/learner-embedded.toml` (simulator source) wrote
/// 12.8 MB of it in 9 minutes (about 2 GB a day), more than its whole
/// state. Small in tests, so that a test sees the roll-over (but above the
/// ~100 KB of options that start every file).
const INFO_LOG_BYTES: usize = if cfg!(test) { 512 << 10 } else { 16 << 20 };
/// Rolled-over info logs kept (see [`INFO_LOG_BYTES`]).
const INFO_LOGS_KEPT: usize = 4;

/// Size past which RocksDB starts a new MANIFEST (the log of table-file
/// changes, one entry per flush and compaction, replayed at every open);
/// RocksDB's default is 1 GiB. Small in tests, as above.
const MANIFEST_BYTES: usize = if cfg!(test) { 16 << 10 } else { 64 << 20 };

/// Bytes a `WriteBatch` of `writes` takes, within a few per entry (its
/// header, and per entry a type byte, a column family id and two length
/// varints).
fn batch_bytes(writes: &[Write]) -> usize {
    const ENTRY_OVERHEAD: usize = 16;
    12 + writes
        .iter()
        .map(|w| {
            ENTRY_OVERHEAD
                + match w {
                    Write::Put(_, k, v) => k.len() + v.len(),
                    Write::Delete(_, k) => k.len(),
                    Write::PutParams(_, state) => 12 + state.encoded_len(),
                    Write::PutPending(_, v) => 12 + v.len(),
                    Write::DeletePending(_) => 12,
                }
        })
        .sum::<usize>()
}

/// Bytes of write-ahead log in the store directory `dir`: what the next
/// open reads back (0 when there is none or `dir` cannot be read).
pub fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB refused an operation (I/O error, disk full, corruption it
    /// detected itself). A retry can help for transient I/O, not for
    /// corruption.
    #[error("rocksdb at {path}: {source}")]
    Rocks {
        /// Store directory.
        path: String,
        /// The RocksDB error.
        source: rocksdb::Error,
    },
    /// A stored value does not decode.
    #[error(transparent)]
    Corrupt(#[from] CorruptState),
}

/// Sizes of one checkpoint write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStats {
    /// Puts and deletes written.
    pub writes: usize,
    /// Key + value bytes written.
    pub bytes: usize,
    /// Time spent in the synced write, in microseconds.
    pub write_us: u64,
}

/// RocksDB option of the tables keyed by (version, doc): a memtable
/// insert starts from where the last insert of the same version (the key's
/// first 4 bytes) ended, instead of from the skip list's head. A
/// checkpoint's keys are sorted, so each lands just after the previous one:
/// with Beta-sized values a batch of 100 000 keys is inserted in 0.62–0.70×
/// the time, and the runner's writer thread used half the CPU
/// (BENCHMARKS.md, "Memtable inserts from the previous key"). Performance
/// only: neither the stored bytes nor the reads change.
pub const MEMTABLE_INSERT_HINT: &str =
    "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.4";

/// Compression by level of the tables that take a checkpoint's bulk:
/// none where flushes and the first compaction write (levels 0 and 1),
/// LZ4 below, where the data settles. A flush follows every checkpoint
/// and the end of a run; compressing it with LZ4 was half the flush
/// thread's time in bench 3 (issue 3), and the runner's shutdown waits
/// for it.
const FLUSHED_UNCOMPRESSED: [rocksdb::DBCompressionType; 7] = {
    use rocksdb::DBCompressionType::{Lz4, None};
    [None, None, Lz4, Lz4, Lz4, Lz4, Lz4]
};

/// Options of `table`'s column family. The reorder and de-duplication
/// tables are not compressed at any level: their entries live until the
/// samples they hold are released or their ids leave the window, a
/// checkpoint or two, so compressing them is work for nothing — in bench 3
/// (issue 3) LZ4 on the sample log's blobs was half the flush thread's
/// time and about a fifth of the compaction thread's.
fn table_options(table: Table) -> Result<Options, rocksdb::Error> {
    match table {
        Table::Params | Table::Pending => {
            let mut opts = Options::default().get_options_from_string(MEMTABLE_INSERT_HINT)?;
            opts.set_compression_per_level(&FLUSHED_UNCOMPRESSED);
            Ok(opts)
        }
        Table::Reorder | Table::Dedup => {
            let mut opts = Options::default();
            opts.set_compression_type(rocksdb::DBCompressionType::None);
            Ok(opts)
        }
        Table::Meta => Ok(Options::default()),
    }
}

/// Whether a checkpoint's batch goes through the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logging {
    /// Synced to the log: durable when the write returns.
    Logged,
    /// Memtables only: durable once flushed (see
    /// [`RocksStore::write_flushed_from`]).
    Unlogged,
}

/// The RocksDB-backed state store.
pub struct RocksStore {
    db: DB,
    path: String,
}

impl RocksStore {
    /// Opens (creating if missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // Every checkpoint is a synced write, so only a torn last record (a
        // write that was never acknowledged) may be dropped on recovery;
        // corruption anywhere else is an error, never a silent rewind.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // A logged write to a small table whose memtable never fills
        // would pin its WAL files: past this size RocksDB flushes the
        // tables that pin the oldest WAL. (Checkpoints skip the log and
        // flush every table.)
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // Checkpoints are written without the log and then flushed
        // (`write_flushed_from`): all tables' flushes commit at once, or a
        // crash in between could leave some tables at it and the others
        // at the checkpoint before.
        opts.set_atomic_flush(true);
        // Bounded diagnostics: see `INFO_LOG_BYTES` and `MANIFEST_BYTES`.
        opts.set_max_log_file_size(INFO_LOG_BYTES);
        opts.set_keep_log_file_num(INFO_LOGS_KEPT);
        opts.set_max_manifest_file_size(MANIFEST_BYTES);
        let display = path.display().to_string();
        let rocks = |source| StoreError::Rocks {
            path: display.clone(),
            source,
        };
        let mut cfs = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            cfs.push(ColumnFamilyDescriptor::new(
                table.name(),
                table_options(table).map_err(rocks)?,
            ));
        }
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(rocks)?;
        Ok(Self { db, path: display })
    }

    /// Writes one checkpoint atomically and durably.
    pub fn write(&self, mut writes: Vec<Write>) -> Result<CheckpointStats, StoreError> {
        self.write_from(&mut writes)
    }

    /// Like [`Self::write`], leaving `writes` empty with its capacity, for
    /// the next checkpoint to fill (see `Engine::checkpoint_delta_into`).
    pub fn write_from(&self, writes: &mut Vec<Write>) -> Result<CheckpointStats, StoreError> {
        self.write_batch(writes, Logging::Logged)
    }

    /// A checkpoint's write as the runner makes it. Like
    /// [`Self::write_from`], but the batch goes to the memtables without
    /// the write-ahead log, and the call returns once every table is
    /// flushed to table files, all in one commit (`atomic_flush`).
    /// Durable when it returns `Ok`, as a logged write is; a crash or an
    /// error before that leaves the previous checkpoint, whole. The
    /// state's bytes are written and synced once instead of twice (log,
    /// then table files: a flush followed every logged checkpoint anyway,
    /// so that an open would not replay the log), and an open after a
    /// crash has no log to replay. `before_flush` runs between the two
    /// steps (a test's fail point). Leaves `writes` empty with its
    /// capacity, as [`Self::write_from`] does.
    pub fn write_flushed_from(
        &self,
        writes: &mut Vec<Write>,
        before_flush: impl FnOnce(),
    ) -> Result<CheckpointStats, StoreError> {
        let mut stats = self.write_batch(writes, Logging::Unlogged)?;
        before_flush();
        let start = Instant::now();
        self.flush(true)?;
        stats.write_us += start.elapsed().as_micros() as u64;
        Ok(stats)
    }

    fn write_batch(
        &self,
        writes: &mut Vec<Write>,
        logging: Logging,
    ) -> Result<CheckpointStats, StoreError> {
        let mut stats = CheckpointStats {
            writes: writes.len(),
            ..Default::default()
        };
        // Sized once (a batch grown entry by entry copies itself over and
        // over), and parameters encoded into one reused buffer instead of
        // a vector per key.
        let mut batch = WriteBatch::with_capacity_bytes(batch_bytes(writes));
        let mut value = Vec::new();
        let params = self.cf(Table::Params);
        let mut drain = writes.drain(..);
        while let Some(write) = drain.next() {
            // The states are scattered over the heap and out of the
            // caches: ask for the state `2 × PREFETCH_AHEAD` writes on,
            // and for the vectors of the one `PREFETCH_AHEAD` on (its
            // state fetched by then), so that their misses overlap the
            // encoding of this one.
            let ahead = drain.as_slice();
            if let Some(Write::PutParams(_, state)) = ahead.get(2 * PREFETCH_AHEAD - 1) {
                crate::prefetch::prefetch(state.as_ptr());
            }
            if let Some(Write::PutParams(_, state)) = ahead.get(PREFETCH_AHEAD - 1) {
                state.prefetch_parts();
            }
            match write {
                Write::PutParams(key, state) => {
                    let k = codec::param_key_bytes(key);
                    value.clear();
                    state.encode_into(&mut value);
                    stats.bytes += k.len() + value.len();
                    batch.put_cf(params, k, &value);
                }
                // Pending batches' keys without an allocation each.
                Write::PutPending(key, v) => {
                    let k = codec::param_key_bytes(key);
                    stats.bytes += k.len() + v.len();
                    batch.put_cf(self.cf(Table::Pending), k, &v);
                }
                Write::DeletePending(key) => {
                    let k = codec::param_key_bytes(key);
                    stats.bytes += k.len();
                    batch.delete_cf(self.cf(Table::Pending), k);
                }
                write => {
                    let (table, k, v) = write.into_bytes();
                    match v {
                        Some(v) => {
                            stats.bytes += k.len() + v.len();
                            batch.put_cf(self.cf(table), k, v);
                        }
                        None => {
                            stats.bytes += k.len();
                            batch.delete_cf(self.cf(table), k);
                        }
                    }
                }
            }
        }
        let mut opts = WriteOptions::default();
        match logging {
            Logging::Logged => opts.set_sync(true),
            Logging::Unlogged => opts.disable_wal(true),
        }
        let start = Instant::now();
        self.db.write_opt(batch, &opts).map_err(|e| self.rocks(e))?;
        stats.write_us = start.elapsed().as_micros() as u64;
        Ok(stats)
    }

    /// Writes every table's memtable out to table files, so that an open
    /// no longer replays the log up to here. With `wait` it returns once
    /// they are written; without, it only starts RocksDB's background
    /// flush. The durability of a logged write does not depend on it (it
    /// is a synced log write); only the time of the next open does: that
    /// open replays, and writes out again, everything not yet flushed. (A
    /// checkpoint flushes itself: [`Self::write_flushed_from`].)
    pub fn flush(&self, wait: bool) -> Result<(), StoreError> {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(wait);
        let cfs: Vec<_> = Table::ALL.iter().map(|&t| self.cf(t)).collect();
        self.db
            .flush_cfs_opt(&cfs, &opts)
            .map_err(|e| self.rocks(e))
    }

    /// A table's entries in key order, with checksums verified.
    pub fn entries(&self, table: Table) -> Result<Entries, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(true);
        self.db
            .iterator_cf_opt(self.cf(table), opts, IteratorMode::Start)
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(|e| self.rocks(e))
            })
            .collect()
    }

    /// Calls `f` with each entry of `table` in key order, borrowed from
    /// RocksDB's buffers (no copy per entry, unlike [`Self::entries`]),
    /// until `f` fails; returns `f`'s error inside, a read error outside.
    pub fn for_each<E>(
        &self,
        table: Table,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let mut opts = ReadOptions::default();
        opts.set_verify_checksums(true);
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(table), opts);
        iter.seek_to_first();
        while iter.valid() {
            if let (Some(k), Some(v)) = (iter.key(), iter.value())
                && let Err(e) = f(k, v)
            {
                return Ok(Err(e));
            }
            iter.next();
        }
        iter.status().map_err(|e| self.rocks(e))?;
        Ok(Ok(()))
    }

    /// RocksDB's estimate of the entries of `table` (0 when it has none):
    /// a size hint, which may be off either way.
    pub fn estimated_entries(&self, table: Table) -> usize {
        self.db
            .property_int_value_cf(self.cf(table), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }

    /// True when the store holds no state (no checkpoint was written).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Table::Meta));
        iter.seek_to_first();
        let empty = !iter.valid();
        iter.status().map_err(|e| self.rocks(e))?;
        Ok(empty)
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(table.name())
            .expect("every table's column family is created at open")
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest `OPTIONS-*` file RocksDB wrote in `dir`.
    fn newest_options(dir: &Path) -> String {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-"))
            })
            .max()
            .unwrap();
        std::fs::read_to_string(newest).unwrap()
    }

    /// The column families' sections of the newest `OPTIONS-*` file
    /// RocksDB wrote in `dir`, by name.
    fn options_sections(dir: &Path) -> Vec<(String, String)> {
        newest_options(dir)
            .split("\n[")
            .filter_map(|section| {
                let name = section.strip_prefix("CFOptions \"")?.split('"').next()?;
                Some((name.to_owned(), section.to_owned()))
            })
            .collect()
    }

    /// `for_each` visits a table's entries in key order, borrowed, and
    /// stops at the visitor's first error, which it returns.
    #[test]
    fn for_each_visits_in_key_order_and_stops_at_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let put = |k: &[u8], v: &[u8]| Write::Put(Table::Meta, k.to_vec(), v.to_vec());
        store
            .write(vec![put(b"c", b"3"), put(b"a", b"1"), put(b"b", b"2")])
            .unwrap();
        let mut seen = Vec::new();
        let all = store.for_each(Table::Meta, |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok::<(), String>(())
        });
        assert_eq!(all.unwrap(), Ok(()));
        assert_eq!(seen, store.entries(Table::Meta).unwrap());
        assert_eq!(seen.len(), 3);
        let mut visited = 0;
        let stopped = store.for_each(Table::Meta, |k, _| {
            visited += 1;
            if k == b"b" {
                Err(format!("refused {k:?}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(stopped.unwrap(), Err("refused [98]".to_owned()));
        assert_eq!(visited, 2, "nothing after the error");
        assert!(store.estimated_entries(Table::Meta) > 0);
    }

    /// Without a flush the log holds the checkpoint and the next open
    /// replays it; after a waited flush the open has no log to replay,
    /// and the state is the same.
    #[test]
    fn a_flushed_store_leaves_no_log_to_replay() {
        let value = vec![7_u8; 1_000];
        let writes = || {
            (0..500_u32)
                .map(|i| Write::Put(Table::Meta, i.to_be_bytes().to_vec(), value.clone()))
                .collect::<Vec<_>>()
        };
        let unflushed = tempfile::tempdir().unwrap();
        let store = RocksStore::open(unflushed.path()).unwrap();
        let stats = store.write(writes()).unwrap();
        let expected = store.entries(Table::Meta).unwrap();
        drop(store);
        assert!(
            log_bytes(unflushed.path()) >= stats.bytes as u64,
            "an unflushed checkpoint stays in the log: {} < {}",
            log_bytes(unflushed.path()),
            stats.bytes
        );

        let flushed = tempfile::tempdir().unwrap();
        let store = RocksStore::open(flushed.path()).unwrap();
        store.write(writes()).unwrap();
        store.flush(true).unwrap();
        drop(store);
        assert!(
            log_bytes(flushed.path()) < 4_096,
            "log left after a waited flush: {} bytes",
            log_bytes(flushed.path())
        );
        let reopened = RocksStore::open(flushed.path()).unwrap();
        assert_eq!(reopened.entries(Table::Meta).unwrap(), expected);
        // A flush without waiting is accepted too (it only starts one).
        reopened.flush(false).unwrap();
    }

    /// Bytes and count of the state directory's files whose names start
    /// with `prefix`.
    fn files_named(dir: &Path, prefix: &str) -> (u64, usize) {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .fold((0, 0), |(bytes, n), e| {
                (bytes + e.metadata().unwrap().len(), n + 1)
            })
    }

    /// The name of the state directory's one MANIFEST.
    fn manifest(dir: &Path) -> String {
        let mut found = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("MANIFEST-"));
        let name = found.next().expect("a MANIFEST");
        assert!(found.next().is_none(), "old MANIFESTs are deleted");
        name
    }

    /// A long run's checkpoints (each a write and a flush) and restarts
    /// leave a bounded info log and MANIFEST behind, not ones that grow
    /// with every flush and open.
    #[test]
    fn the_info_log_and_the_manifest_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        // Without the bounds: one info log per open (~100 KB of options,
        // then ~37 KB a flush here), and a MANIFEST that grows by ~1 KB a
        // flush until the next open.
        let (opens, flushes) = (6, 40_u32);
        let mut rolled = false;
        for _ in 0..opens {
            let store = RocksStore::open(dir.path()).unwrap();
            let opened = manifest(dir.path());
            for i in 0..flushes {
                let writes = Table::ALL
                    .iter()
                    .map(|&t| Write::Put(t, i.to_be_bytes().to_vec(), vec![1; 64]))
                    .collect();
                store.write(writes).unwrap();
                store.flush(true).unwrap();
            }
            rolled |= manifest(dir.path()) != opened;
        }
        let (log_bytes, logs) = files_named(dir.path(), "LOG");
        assert!(logs <= INFO_LOGS_KEPT + 1, "{logs} info logs kept");
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with("LOG") {
                // A rolled-over file may pass the bound by the lines that
                // crossed it; a new file starts with the options (~100 KB).
                let bytes = entry.metadata().unwrap().len();
                assert!(
                    bytes <= (INFO_LOG_BYTES + (256 << 10)) as u64,
                    "{:?}: {bytes} bytes ({log_bytes} in {logs} files)",
                    entry.file_name()
                );
            }
        }
        assert!(rolled, "the MANIFEST never rolled over within an open");
        // Still the same store.
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(store.entries(Table::Meta).unwrap().len(), flushes as usize);
    }

    #[test]
    fn tables_keyed_by_version_and_doc_insert_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksStore::open(dir.path()).unwrap());
        let sections = options_sections(dir.path());
        for table in Table::ALL {
            let (_, section) = sections
                .iter()
                .find(|(name, _)| name == table.name())
                .unwrap_or_else(|| panic!("no section for {}", table.name()));
            let hinted = section
                .contains("memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.4");
            let want = matches!(table, Table::Params | Table::Pending);
            assert_eq!(hinted, want, "{}: {section}", table.name());
        }
    }

    /// The tables whose entries live a checkpoint or two (the sample
    /// log's blobs, de-duplication ids) are written uncompressed at every
    /// level; the parameter and pending-batch tables compress from level
    /// 2 on, where their data settles.
    #[test]
    fn only_tables_that_keep_their_data_compress_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksStore::open(dir.path()).unwrap());
        let sections = options_sections(dir.path());
        let setting = |section: &str, name: &str| {
            section
                .lines()
                .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("")
                .to_owned()
        };
        for table in Table::ALL {
            let (_, section) = sections
                .iter()
                .find(|(name, _)| name == table.name())
                .unwrap_or_else(|| panic!("no section for {}", table.name()));
            let (whole, per_level) = (
                setting(section, "compression"),
                setting(section, "compression_per_level"),
            );
            match table {
                Table::Reorder | Table::Dedup => {
                    assert_eq!(whole, "kNoCompression", "{}", table.name());
                    assert!(!per_level.contains("LZ4"), "{}: {per_level}", table.name());
                }
                Table::Params | Table::Pending => assert!(
                    per_level.starts_with("kNoCompression:kNoCompression:kLZ4Compression"),
                    "{}: {per_level}",
                    table.name()
                ),
                Table::Meta => assert_eq!(whole, "kLZ4Compression"),
            }
        }
    }

    /// A checkpoint goes to the tables without the log, is readable
    /// after a reopen (flushed before the call returns), and
    /// the store commits flushes of all tables at once, which keeps a
    /// crash between that write and its flush from leaving some tables
    /// ahead of the others.
    #[test]
    fn a_checkpoint_is_flushed_without_the_log() {
        let put = |i: u32| Write::Put(Table::Meta, i.to_be_bytes().to_vec(), vec![7; 1024]);
        let batch = || (0..2_000).map(put).collect::<Vec<_>>();
        let (logged, unlogged) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        RocksStore::open(logged.path())
            .unwrap()
            .write(batch())
            .unwrap();
        let store = RocksStore::open(unlogged.path()).unwrap();
        store.write(vec![put(u32::MAX)]).unwrap();
        let mut log_before_flush = None;
        store
            .write_flushed_from(&mut batch(), || {
                log_before_flush = Some(log_bytes(unlogged.path()));
            })
            .unwrap();
        let (logged_bytes, unlogged_bytes) = (log_bytes(logged.path()), log_before_flush.unwrap());
        assert!(logged_bytes > 2_000 * 1024, "{logged_bytes}");
        assert!(unlogged_bytes < 16 << 10, "{unlogged_bytes}");
        drop(store);
        let reopened = RocksStore::open(unlogged.path()).unwrap();
        assert_eq!(reopened.entries(Table::Meta).unwrap().len(), 2_001);

        assert!(
            newest_options(unlogged.path())
                .lines()
                .any(|l| l.trim() == "atomic_flush=true"),
            "flushes commit all tables at once"
        );
    }
}
