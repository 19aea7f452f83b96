//! Drives the engine over a bounded source (a file or stdin) with the
//! RocksDB store and a JSONL dead-letter file: restore, read from the
//! checkpointed offset, checkpoint every N records, finish at the end.
//!
//! The dead-letter file is exactly-once too: each checkpoint records the
//! file's length, and a restore truncates the file to it, so letters
//! written after the last checkpoint are written again by the replay, once.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::{Context, Result};

use crate::codec::Table;
use crate::config::{Config, SourceConfig};
use crate::deadletter::DeadLetter;
use crate::engine::{Counters, Engine, Write};
use crate::file_source::FileSource;
use crate::registry::Registry;
use crate::store::RocksStore;

/// Meta entry: length of the dead-letter file at the checkpoint.
const DEAD_LETTER_BYTES: &[u8] = b"dead_letter_bytes";
/// The single partition of a file or stdin source.
const FILE_PARTITION: u32 = 0;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Whether the engine was restored from a checkpoint.
    pub restored: bool,
    /// Records read in this run.
    pub records: u64,
    /// Checkpoints written in this run.
    pub checkpoints: u64,
    /// Counters since the state began.
    pub counters: Counters,
}

/// Opens the store and rebuilds the engine, or starts a fresh one from the
/// config's versions. Versions in the config that the stored registry
/// lacks are added, so adding a version never invalidates a checkpoint.
pub fn open_engine(config: &Config, store: &RocksStore) -> Result<(Engine, bool, Option<u64>)> {
    let mut tables = Vec::new();
    for table in Table::ALL {
        tables.push((table, store.entries(table).context("read state")?));
    }
    let dead_letter_bytes = tables
        .iter()
        .find(|(t, _)| *t == Table::Meta)
        .and_then(|(_, entries)| entries.iter().find(|(k, _)| k == DEAD_LETTER_BYTES))
        .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes);
    let restored = Engine::restore(config.engine(), |t| {
        tables
            .iter()
            .find(|(table, _)| *table == t)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    })
    .context("restore state")?;
    Ok(match restored {
        Some(mut engine) => {
            for spec in config.version_specs() {
                if engine.registry().live(&spec.name).is_none()
                    && engine
                        .registry()
                        .entries()
                        .iter()
                        .all(|e| e.spec.name != spec.name)
                {
                    engine
                        .create_version(spec)
                        .context("add configured version")?;
                }
            }
            (engine, true, dead_letter_bytes)
        }
        None => {
            let registry =
                Registry::with_versions(config.version_specs()).context("configured versions")?;
            (
                Engine::new(config.engine(), registry, [FILE_PARTITION]),
                false,
                None,
            )
        }
    })
}

/// Runs a file or stdin source to its end.
pub fn run_bounded(config: &Config) -> Result<RunSummary> {
    let store = RocksStore::open(&config.state.dir).context("open state store")?;
    let (mut engine, restored, dead_len) = open_engine(config, &store)?;
    let mut dead = DeadLetterFile::open(&config.dead_letter.path, dead_len)?;
    let offset = engine
        .next_offsets()
        .get(&FILE_PARTITION)
        .copied()
        .unwrap_or(0);
    let mut source = match &config.source {
        SourceConfig::File { path, format } => FileSource::open(path, *format, offset)
            .with_context(|| format!("open {}", path.display()))?,
        SourceConfig::Stdin { format } => FileSource::stdin(*format),
    };
    let failpoint = Failpoint::from_env();
    let (mut records, mut checkpoints) = (0_u64, 0_u64);
    while let Some((offset, payload)) = source.next_record().context("read source")? {
        engine.ingest_at(FILE_PARTITION, offset, source.position(), payload);
        records += 1;
        failpoint.hit("after_ingest", records);
        if records % config.state.checkpoint_every_records == 0 {
            checkpoint(&mut engine, &store, &mut dead, &failpoint, records)?;
            checkpoints += 1;
        }
    }
    engine.finish();
    checkpoint(&mut engine, &store, &mut dead, &failpoint, records)?;
    checkpoints += 1;
    Ok(RunSummary {
        restored,
        records,
        checkpoints,
        counters: engine.counters().clone(),
    })
}

fn checkpoint(
    engine: &mut Engine,
    store: &RocksStore,
    dead: &mut DeadLetterFile,
    failpoint: &Failpoint,
    records: u64,
) -> Result<()> {
    let dead_bytes = dead.append(&engine.take_dead_letters())?;
    // No publishing sink yet (it comes with the params topic): the keys
    // changed since the last checkpoint are not sent anywhere.
    let _ = engine.take_changed();
    let mut writes = engine.checkpoint_delta();
    writes.push(Write::Put(
        Table::Meta,
        DEAD_LETTER_BYTES.to_vec(),
        dead_bytes.to_le_bytes().to_vec(),
    ));
    failpoint.hit("before_checkpoint", records);
    store.write(writes).context("write checkpoint")?;
    failpoint.hit("after_checkpoint", records);
    Ok(())
}

/// Append-only JSONL dead-letter file, synced before each checkpoint.
struct DeadLetterFile {
    out: BufWriter<File>,
    len: u64,
}

impl DeadLetterFile {
    fn open(path: &Path, truncate_to: Option<u64>) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open dead-letter file {}", path.display()))?;
        let len = match truncate_to {
            Some(len) => {
                file.set_len(len)
                    .context("truncate dead-letter file to checkpoint")?;
                len
            }
            None => {
                file.set_len(0)
                    .context("truncate dead-letter file for a fresh state")?;
                0
            }
        };
        Ok(Self {
            out: BufWriter::new(file),
            len,
        })
    }

    /// Appends letters and syncs; returns the file length.
    fn append(&mut self, letters: &[DeadLetter]) -> Result<u64> {
        for letter in letters {
            let mut line = serde_json::to_vec(letter).context("encode dead letter")?;
            line.push(b'\n');
            self.out.write_all(&line).context("write dead letter")?;
            self.len += line.len() as u64;
        }
        self.out.flush().context("flush dead letters")?;
        self.out
            .get_ref()
            .sync_data()
            .context("sync dead letters")?;
        Ok(self.len)
    }
}

/// Test hook: `POSTERIOR_FAILPOINT=name:n` aborts the process (as a crash
/// would) the first time fail point `name` is reached after `n` records.
struct Failpoint(Option<(String, u64)>);

impl Failpoint {
    fn from_env() -> Self {
        let parsed = std::env::var("POSTERIOR_FAILPOINT").ok().and_then(|v| {
            let (name, n) = v.split_once(':')?;
            Some((name.to_owned(), n.parse().ok()?))
        });
        Self(parsed)
    }

    fn hit(&self, name: &str, records: u64) {
        if let Some((point, after)) = &self.0
            && point == name
            && records >= *after
        {
            std::process::abort();
        }
    }
}
