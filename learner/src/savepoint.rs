//! Savepoints: portable, self-describing copies of a checkpoint.
//!
//! A savepoint is a directory holding one file per state table (the same
//! key/value bytes as the live store, framed as length-prefixed records)
//! and `MANIFEST.json`: format version, creation time, the partitions and
//! the topic's partition count, next offsets, watermarks, versions,
//! counters, and the size and CRC-32 of every file. `MANIFEST.crc32`
//! holds the CRC-32 of the manifest itself (format 2 on; format-1
//! savepoints, which lack it, are still read), so a manifest changed in a
//! way that still parses — a partition count, a partition list — is
//! refused instead of misplacing keys.
//!
//! Writing is atomic: everything goes into `<root>/.tmp-<name>`, every file
//! and the directory are synced, the directory is renamed to `<root>/<name>`
//! and the root is synced. A crash leaves at most a `.tmp-*` directory,
//! which is never listed nor restored; neither is a savepoint whose files
//! do not match its manifest.
//!
//! Restoring may take a subset of the partitions, so a savepoint of one
//! learner can be split between several; and the shares that learners of
//! different partitions wrote of one savepoint (one admin command's,
//! `ID.p0-1` and `ID.p2-3`) merge into one store, each partition taken
//! from the share that holds it ([`restore_shares_into`]), so learners
//! regroup in any number. Keys follow `partitioning::partition_of`; the
//! dedup window is copied whole (a sample id's duplicates share its doc,
//! hence its partition, so ids of other partitions are never looked up)
//! and the shares' windows are joined; counters are kept for a full
//! restore (summed over merged shares) and start from zero for a split
//! (they are not per partition).
//!
//! Shares merge only when they were taken at one point of the event-time
//! order: the same release frontier, versions and applied admin commands
//! ([`check_mergeable`] refuses others, naming what differs; the merged
//! state waits for the commands of the share that has read the `control`
//! topic furthest). A share's
//! stored reorder blobs may still hold samples its learner had released
//! (a restore keeps those at or above the frontier, see
//! `sample_log`), and a learner judges lateness against its own frontier:
//! joining shares of different frontiers would apply some samples twice
//! or accept some its learner had refused. One admin command's savepoint
//! is taken at the command's event time by every learner that reaches it
//! in order, which gives that point.
//! Dead letters are not part of a savepoint: a restored learner starts a
//! new dead-letter file, keeping the earlier one beside it (a dead-letter
//! topic just goes on).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CorruptState, Table};
use crate::engine::{Counters, Entries, Write};
use crate::meta;
use crate::partitioning::partition_of;
use crate::posterior::KeyState;
use crate::store::{RocksStore, StoreError};

/// Version of the savepoint layout written; restore refuses others than
/// it and [`OLDEST_FORMAT_VERSION`].
pub const FORMAT_VERSION: u32 = 2;
/// The oldest layout read: 1, without `MANIFEST.crc32`.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.json";
/// The file holding the manifest's CRC-32 (8 hex digits).
pub const MANIFEST_CRC: &str = "MANIFEST.crc32";
/// Prefix of directories being written.
const TMP_PREFIX: &str = ".tmp-";

/// Why a savepoint could not be written, listed, verified or restored.
#[derive(Debug, thiserror::Error)]
pub enum SavepointError {
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The savepoint's content does not match its manifest, or the
    /// manifest is unreadable.
    #[error("savepoint {dir}: {file}: {reason}")]
    Invalid {
        /// The savepoint directory.
        dir: PathBuf,
        /// The file at fault.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The state it was taken from (or holds) does not decode.
    #[error(transparent)]
    Corrupt(#[from] CorruptState),
    /// The live store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// There is nothing to save, or nowhere to restore to.
    #[error("{0}")]
    Refused(String),
}

/// One data file of a savepoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the savepoint.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the content.
    pub crc32: u32,
    /// Records in the file.
    pub records: u64,
}

/// A version as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionEntry {
    /// Name.
    pub name: String,
    /// `beta`, `logistic-diagonal` or `logistic-full`.
    pub model: String,
    /// Whether it takes samples.
    pub retired: bool,
}

/// `MANIFEST.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Wall-clock creation time, ms since the Unix epoch (informational).
    pub created_unix_ms: u64,
    /// Partitions of the state.
    pub partitions: Vec<u32>,
    /// Partition count of the topic the keys are partitioned over.
    pub partition_count: u32,
    /// Next offset of each partition.
    pub next_offsets: BTreeMap<u32, u64>,
    /// Largest event time delivered per partition.
    pub max_event_ms: BTreeMap<u32, Option<i64>>,
    /// Samples below this event time were released.
    pub released_below_ms: i64,
    /// Versions.
    pub versions: Vec<VersionEntry>,
    /// Samples applied.
    pub applied: u64,
    /// Data files.
    pub files: Vec<FileEntry>,
    /// The admin command that asked for it (its id is the directory's
    /// name), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// The free-text label the command carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// What names a savepoint an admin command asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested<'a> {
    /// The command id: the directory's name (a plain id, see
    /// [`crate::control::check_plain_id`]).
    pub command_id: &'a str,
    /// Its label.
    pub label: &'a str,
}

/// A verified savepoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Savepoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SavepointError + '_ {
    move |source| SavepointError::Io {
        path: path.to_owned(),
        source,
    }
}

fn table_file(table: Table) -> String {
    format!("{}.tbl", table.name())
}

/// Writes a savepoint of the checkpoint held by `store` under `root`,
/// atomically; `partition_count` is the topic's (1 for a file or stdin).
/// Take it right after a checkpoint to capture the newest state.
pub fn write(
    root: &Path,
    store: &RocksStore,
    partition_count: u32,
) -> Result<Savepoint, SavepointError> {
    write_with(root, store, partition_count, || {})
}

/// [`write()`], calling `mid_write` once the table files are in the temp
/// directory and before the manifest and the rename (a crash test's fail
/// point: a savepoint interrupted there must never be listed).
pub fn write_with(
    root: &Path,
    store: &RocksStore,
    partition_count: u32,
    mid_write: impl FnOnce(),
) -> Result<Savepoint, SavepointError> {
    write_as(root, store, partition_count, None, mid_write).map(|(s, _)| s)
}

/// Writes the savepoint an admin command asked for, named by its id —
/// or, when one of that name is there already (written before a crash,
/// and asked for again by the replayed command), verifies and returns
/// that one: a command's savepoint is written once. Returns whether it
/// was written now.
pub fn write_requested(
    root: &Path,
    store: &RocksStore,
    partition_count: u32,
    requested: Requested<'_>,
    mid_write: impl FnOnce(),
) -> Result<(Savepoint, bool), SavepointError> {
    crate::control::check_plain_id(requested.command_id).map_err(|why| {
        SavepointError::Refused(format!("savepoint id {:?} {why}", requested.command_id))
    })?;
    write_as(root, store, partition_count, Some(requested), mid_write)
}

/// The directory name of a savepoint named `base` holding `partitions` of
/// `partition_count`: `base` when it holds them all, else
/// `base.p<first>-<second>-…`. Learners sharing a savepoint root (each
/// with its own partitions) so never write, nor find as already written,
/// another's savepoint of the same command or millisecond.
pub fn instance_name(base: &str, partitions: &[u32], partition_count: u32) -> String {
    let whole = partitions.len() == partition_count as usize
        && partitions.iter().enumerate().all(|(i, &p)| p as usize == i);
    if whole {
        return base.to_owned();
    }
    let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
    format!("{base}.p{}", list.join("-"))
}

/// The savepoint an admin command `command_id` asked for that holds
/// `partitions`: the one of that name, or the shares of it that learners
/// of different partitions wrote ([`instance_name`]) that hold them
/// between them ([`covering`]). Damaged ones are passed over. The error
/// says why there is none.
pub fn find_requested(
    root: &Path,
    command_id: &str,
    partitions: &BTreeSet<u32>,
) -> Result<Vec<Savepoint>, SavepointError> {
    let none = |why: String| {
        SavepointError::Refused(format!(
            "no savepoint {command_id:?} of partitions {partitions:?} under {}: {why}",
            root.display()
        ))
    };
    if !root.is_dir() {
        return Err(none("no such directory".into()));
    }
    let share = format!("{command_id}.p");
    let mut found = Vec::new();
    let mut damaged = Vec::new();
    for dir in dirs_named(root, |n| n == command_id || n.starts_with(&share))? {
        match verify(&dir) {
            // A name alone could be another command's (ids may hold dots).
            Ok(savepoint) if savepoint.manifest.command_id.as_deref() == Some(command_id) => {
                found.push(savepoint);
            }
            Ok(_) => {}
            Err(err) => damaged.push(err.to_string()),
        }
    }
    let skipped = if damaged.is_empty() {
        String::new()
    } else {
        format!(" (passed over: {})", damaged.join("; "))
    };
    if found.is_empty() {
        return Err(none(format!("none was written{skipped}")));
    }
    covering(found, Some(partitions)).map_err(|err| none(format!("{err}{skipped}")))
}

/// Of `candidates` (savepoints of one name or one command, taken at one
/// point), the ones that make up `partitions` (`None`: every partition of
/// their topic): the newest that holds them all, else the fewest shares
/// that hold them between them, one per partition (the newest first among
/// equals): shares of one command rewritten by learners grouped otherwise
/// (`ID.p0-1` beside `ID.p1-2`) overlap. In name order. The error says
/// why there are none.
pub fn covering(
    mut candidates: Vec<Savepoint>,
    partitions: Option<&BTreeSet<u32>>,
) -> Result<Vec<Savepoint>, SavepointError> {
    // Newest first.
    candidates.sort_by_key(|s| std::cmp::Reverse((s.manifest.created_unix_ms, s.dir.clone())));
    if let Some(i) = candidates.iter().position(|s| holds_all(s, partitions)) {
        return Ok(vec![candidates.swap_remove(i)]);
    }
    let Some(first) = candidates.first() else {
        return Err(SavepointError::Refused("no savepoint given".into()));
    };
    let count = first.manifest.partition_count;
    candidates.retain(|s| s.manifest.partition_count == count);
    let wanted: BTreeSet<u32> = partitions.cloned().unwrap_or_else(|| (0..count).collect());
    let mut best = None;
    fewest_disjoint(&candidates, &wanted, &wanted, &mut Vec::new(), &mut best);
    let Some(picked) = best else {
        let held: Vec<String> = candidates
            .iter()
            .map(|s| format!("{} {:?}", s.dir.display(), s.manifest.partitions))
            .collect();
        return Err(SavepointError::Refused(format!(
            "no shares hold partitions {wanted:?} between them, one per partition (given: {})",
            held.join(", ")
        )));
    };
    let mut chosen: Vec<Savepoint> = candidates
        .into_iter()
        .enumerate()
        .filter(|(i, _)| picked.contains(i))
        .map(|(_, s)| s)
        .collect();
    chosen.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(chosen)
}

/// Depth-first search for the fewest of `candidates` that hold `missing`
/// without holding any other of `wanted` twice: each step takes a holder
/// of the lowest missing partition, in the candidates' order. `picked`
/// is the path so far; `best` the fewest found.
fn fewest_disjoint(
    candidates: &[Savepoint],
    wanted: &BTreeSet<u32>,
    missing: &BTreeSet<u32>,
    picked: &mut Vec<usize>,
    best: &mut Option<Vec<usize>>,
) {
    if best.as_ref().is_some_and(|b| picked.len() >= b.len()) {
        return;
    }
    let Some(lowest) = missing.first() else {
        *best = Some(picked.clone());
        return;
    };
    for (i, share) in candidates.iter().enumerate() {
        let held = &share.manifest.partitions;
        if !held.contains(lowest)
            || held
                .iter()
                .any(|p| wanted.contains(p) && !missing.contains(p))
        {
            continue;
        }
        let rest: BTreeSet<u32> = missing
            .iter()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        picked.push(i);
        fewest_disjoint(candidates, wanted, &rest, picked, best);
        picked.pop();
    }
}

/// Whether `savepoint` holds `partitions` (`None`: every partition of its
/// topic).
pub fn holds_all(savepoint: &Savepoint, partitions: Option<&BTreeSet<u32>>) -> bool {
    let held = &savepoint.manifest.partitions;
    match partitions {
        Some(wanted) => wanted.iter().all(|p| held.contains(p)),
        None => (0..savepoint.manifest.partition_count).all(|p| held.contains(&p)),
    }
}

/// What the shares of one savepoint have in common: the admin command's
/// id, or else the directory's name without its share suffix
/// ([`instance_name`]'s `.p0-1`).
pub fn base_name(savepoint: &Savepoint) -> String {
    if let Some(id) = &savepoint.manifest.command_id {
        return format!("command {id}");
    }
    let name = savepoint
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = match name.rsplit_once(".p") {
        Some((base, list))
            if list
                .split('-')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            base
        }
        _ => name.as_str(),
    };
    format!("name {base}")
}

/// A share of a merge: the savepoint and the partitions taken from it.
pub type Supply<'a> = (&'a Savepoint, BTreeSet<u32>);

/// How `shares` make up the state of `partitions` (`None`: every
/// partition of their topic): each share that holds some of them, with
/// those, in the order given. Refused when the shares are of topics of
/// different sizes, or a partition is in none or in two of them. Whether
/// they may be merged is [`check_mergeable`]'s question.
pub fn plan_shares<'a>(
    shares: &'a [Savepoint],
    partitions: Option<&BTreeSet<u32>>,
) -> Result<Vec<Supply<'a>>, SavepointError> {
    let refused = |why: String| Err(SavepointError::Refused(why));
    let Some(first) = shares.first() else {
        return refused("no savepoint given".into());
    };
    let count = first.manifest.partition_count;
    if let Some(other) = shares.iter().find(|s| s.manifest.partition_count != count) {
        return refused(format!(
            "{} and {} partition topics of different sizes ({count} and {} partitions)",
            first.dir.display(),
            other.dir.display(),
            other.manifest.partition_count
        ));
    }
    let wanted: BTreeSet<u32> = partitions.cloned().unwrap_or_else(|| (0..count).collect());
    let mut supplies: Vec<Supply<'a>> = Vec::new();
    for p in wanted {
        let mut holders = shares.iter().filter(|s| s.manifest.partitions.contains(&p));
        let Some(holder) = holders.next() else {
            let held: Vec<String> = shares
                .iter()
                .map(|s| format!("{} {:?}", s.dir.display(), s.manifest.partitions))
                .collect();
            return refused(format!(
                "no savepoint holds partition {p} (given: {})",
                held.join(", ")
            ));
        };
        if let Some(second) = holders.next() {
            return refused(format!(
                "partition {p} is in both {} and {}: give one share of each partition",
                holder.dir.display(),
                second.dir.display()
            ));
        }
        match supplies.iter_mut().find(|(s, _)| std::ptr::eq(*s, holder)) {
            Some((_, taken)) => {
                taken.insert(p);
            }
            None => supplies.push((holder, BTreeSet::from([p]))),
        }
    }
    // In the order given.
    supplies.sort_by_key(|(s, _)| shares.iter().position(|x| std::ptr::eq(x, *s)));
    Ok(supplies)
}

/// Refuses shares that were not taken at one point of the event-time
/// order (see the module doc): their release frontiers, versions, state
/// formats or applied admin commands differ, or none of them has read
/// every command another waits for. The error names two such shares and
/// what differs.
pub fn check_mergeable(supplies: &[Supply<'_>]) -> Result<(), SavepointError> {
    merged_control(supplies).map(|_| ())
}

/// [`check_mergeable`], returning the admin-command backlog of the merged
/// state: that of the share that has read the `control` topic furthest.
/// Learners read that topic at their own pace, so the backlogs of one
/// command's shares may differ in the commands read ahead; the commands
/// applied must be the same, and the furthest one must wait for every
/// command another waits for (a command read again is dropped by its
/// id).
fn merged_control(supplies: &[Supply<'_>]) -> Result<Option<Vec<u8>>, SavepointError> {
    let metas = supplies
        .iter()
        .map(|(s, _)| read_checked(s, Table::Meta))
        .collect::<Result<Vec<_>, _>>()?;
    let [base_meta, rest @ ..] = metas.as_slice() else {
        return Ok(None);
    };
    let refused = |a: usize, b: usize, what: &str| {
        SavepointError::Refused(format!(
            "{} and {} were not taken at one point of the event-time order: {what}; \
             shares merge when one admin command's savepoint took them",
            supplies[a].0.dir.display(),
            supplies[b].0.dir.display()
        ))
    };
    let frontier = |m: &Entries| {
        field_of(m, meta::RELEASED)
            .and_then(|v| v.try_into().ok())
            .map_or_else(|| "?".into(), |b| i64::from_le_bytes(b).to_string())
    };
    for (i, meta) in rest.iter().enumerate() {
        for (name, what) in [
            (meta::FORMAT, "their state formats differ"),
            (meta::RELEASED, "their release frontiers differ"),
            (meta::REGISTRY, "their versions differ"),
        ] {
            if field_of(base_meta, name) != field_of(meta, name) {
                let mut what = what.to_owned();
                if name == meta::RELEASED {
                    what += &format!(" ({} and {})", frontier(base_meta), frontier(meta));
                }
                return Err(refused(0, i + 1, &what));
            }
        }
    }
    let backlogs = metas
        .iter()
        .map(|m| {
            field_of(m, meta::CONTROL)
                .map_or(Ok(meta::ControlBacklog::default()), meta::control_from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let applied =
        |b: &meta::ControlBacklog| -> BTreeSet<String> { b.applied_ids.iter().cloned().collect() };
    let waiting = |b: &meta::ControlBacklog| -> BTreeSet<String> {
        b.scheduled.iter().map(|c| c.id.clone()).collect()
    };
    for (i, backlog) in backlogs.iter().enumerate().skip(1) {
        if applied(backlog) != applied(&backlogs[0]) {
            return Err(refused(0, i, "they applied different admin commands"));
        }
    }
    let furthest = (0..backlogs.len())
        .max_by_key(|&i| {
            (
                backlogs[i].next_offset,
                backlogs[i].scheduled.len(),
                std::cmp::Reverse(i),
            )
        })
        .expect("at least two shares");
    let known = waiting(&backlogs[furthest]);
    if let Some(i) = (0..backlogs.len()).find(|&i| !waiting(&backlogs[i]).is_subset(&known)) {
        return Err(refused(
            furthest,
            i,
            "each waits for an admin command the other has not read",
        ));
    }
    Ok(field_of(&metas[furthest], meta::CONTROL).map(<[u8]>::to_vec))
}

/// The value of meta entry `name` in a savepoint's meta table.
fn field_of<'e>(entries: &'e Entries, name: &[u8]) -> Option<&'e [u8]> {
    entries
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// Writes a savepoint, or, asked for by a command and already written
/// under its name (before a crash), returns that one; with whether it was
/// written now.
fn write_as(
    root: &Path,
    store: &RocksStore,
    partition_count: u32,
    requested: Option<Requested<'_>>,
    mid_write: impl FnOnce(),
) -> Result<(Savepoint, bool), SavepointError> {
    let mut tables = BTreeMap::new();
    for table in Table::ALL {
        let mut entries = store.entries(table)?;
        if table == Table::Meta {
            entries.retain(|(k, _)| is_engine_meta(k));
        }
        tables.insert(table, entries);
    }
    let meta: BTreeMap<Vec<u8>, Vec<u8>> = tables[&Table::Meta].iter().cloned().collect();
    let Some(format) = meta.get(meta::FORMAT) else {
        return Err(SavepointError::Refused(
            "the live store holds no checkpoint to save".into(),
        ));
    };
    meta::check_format(format)?;
    let field = |name: &[u8]| {
        meta.get(name)
            .ok_or_else(|| CorruptState::new(Table::Meta, name, "missing"))
    };
    let next_offsets = meta::offsets_from(field(meta::OFFSETS)?)?;
    let clocks = meta::clocks_from(field(meta::CLOCKS)?)?;
    let registry = meta::registry_from(field(meta::REGISTRY)?)?;
    let counters = meta::counters_from(field(meta::COUNTERS)?)?;
    let released_below_ms = field(meta::RELEASED)?
        .as_slice()
        .try_into()
        .map(i64::from_le_bytes)
        .map_err(|_| CorruptState::new(Table::Meta, meta::RELEASED, "not 8 bytes"))?;

    if !root.is_dir() {
        fs::create_dir_all(root).map_err(io(root))?;
        // The root's own entry, so the first savepoint under a new root
        // survives a crash as the rename's sync makes it look.
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    let created_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let partitions: Vec<u32> = clocks.keys().copied().collect();
    let named = |base: &str| instance_name(base, &partitions, partition_count);
    let name = match requested {
        Some(requested) => {
            let name = named(requested.command_id);
            let dir = root.join(&name);
            if dir.exists() {
                return verify(&dir).map(|s| (s, false));
            }
            name
        }
        None => {
            let mut name = named(&format!("sp-{created_unix_ms:013}"));
            let mut n = 1;
            while root.join(&name).exists() {
                n += 1;
                name = named(&format!("sp-{created_unix_ms:013}-{n}"));
            }
            name
        }
    };
    let tmp = root.join(format!("{TMP_PREFIX}{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    // A failure (a full disk) leaves no partial files behind to hold the
    // space: the temporary directory goes. A crash still leaves it, never
    // listed (see `list`), and a savepoint of the same name replaces it.
    let written = (|| -> Result<Manifest, SavepointError> {
        let mut files = Vec::new();
        for (table, entries) in &tables {
            let file = table_file(*table);
            let bytes = frame(entries);
            write_synced(&tmp.join(&file), &bytes)?;
            files.push(FileEntry {
                name: file,
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(&bytes),
                records: entries.len() as u64,
            });
        }
        mid_write();
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            created_unix_ms,
            partitions: partitions.clone(),
            partition_count,
            next_offsets,
            max_event_ms: clocks.iter().map(|(&p, c)| (p, c.max_event_ms)).collect(),
            released_below_ms,
            versions: registry
                .entries()
                .iter()
                .map(|e| VersionEntry {
                    name: e.spec.name.clone(),
                    model: e.spec.model.kind.name().to_owned(),
                    retired: e.retired,
                })
                .collect(),
            applied: counters.applied,
            files,
            command_id: requested.map(|r| r.command_id.to_owned()),
            label: requested.map(|r| r.label.to_owned()),
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| SavepointError::Invalid {
            dir: tmp.clone(),
            file: MANIFEST.into(),
            reason: e.to_string(),
        })?;
        write_synced(&tmp.join(MANIFEST), &text)?;
        let crc = format!("{:08x}\n", crc32fast::hash(&text));
        write_synced(&tmp.join(MANIFEST_CRC), crc.as_bytes())?;
        sync_dir(&tmp)?;
        Ok(manifest)
    })();
    let manifest = match written {
        Ok(manifest) => manifest,
        Err(error) => {
            if let Err(cleanup) = fs::remove_dir_all(&tmp) {
                tracing::warn!(dir = %tmp.display(), %cleanup, "partial savepoint not removed");
            }
            return Err(error);
        }
    };
    let dir = root.join(&name);
    fs::rename(&tmp, &dir).map_err(io(&dir))?;
    sync_dir(root)?;
    Ok((Savepoint { dir, manifest }, true))
}

/// Reads and checks a savepoint: manifest and its CRC, format version,
/// partitions within the partition count, and the size and CRC of every
/// file. The error names the file at fault.
pub fn verify(dir: &Path) -> Result<Savepoint, SavepointError> {
    let invalid = |file: &str, reason: String| SavepointError::Invalid {
        dir: dir.to_owned(),
        file: file.to_owned(),
        reason,
    };
    let text = fs::read(dir.join(MANIFEST)).map_err(|e| invalid(MANIFEST, e.to_string()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| invalid(MANIFEST, e.to_string()))?;
    if !readable_format(manifest.format_version) {
        return Err(invalid(
            MANIFEST,
            format!(
                "format version {} (this learner reads {OLDEST_FORMAT_VERSION} to \
                 {FORMAT_VERSION})",
                manifest.format_version
            ),
        ));
    }
    match fs::read_to_string(dir.join(MANIFEST_CRC)) {
        Ok(crc) => {
            let stated = u32::from_str_radix(crc.trim(), 16)
                .map_err(|e| invalid(MANIFEST_CRC, format!("not a CRC-32 in hex: {e}")))?;
            if stated != crc32fast::hash(&text) {
                return Err(invalid(MANIFEST, "checksum mismatch".into()));
            }
        }
        // Format 1 had none.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && manifest.format_version == 1 => {}
        Err(e) => return Err(invalid(MANIFEST_CRC, e.to_string())),
    }
    // Even checksummed, what keys are placed by must be possible (a count
    // of 0 would divide by zero).
    if manifest.partition_count == 0 {
        return Err(invalid(MANIFEST, "partition_count is 0".into()));
    }
    if let Some(p) = manifest
        .partitions
        .iter()
        .find(|&&p| p >= manifest.partition_count)
    {
        return Err(invalid(
            MANIFEST,
            format!(
                "partition {p} is outside partition_count {}",
                manifest.partition_count
            ),
        ));
    }
    for table in Table::ALL {
        let name = table_file(table);
        let Some(entry) = manifest.files.iter().find(|f| f.name == name) else {
            return Err(invalid(&name, "not in the manifest".into()));
        };
        let bytes = read_all(&dir.join(&name)).map_err(|e| invalid(&name, e.to_string()))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(invalid(
                &name,
                format!("{} bytes, the manifest says {}", bytes.len(), entry.bytes),
            ));
        }
        if crc32fast::hash(&bytes) != entry.crc32 {
            return Err(invalid(&name, "checksum mismatch".into()));
        }
    }
    Ok(Savepoint {
        dir: dir.to_owned(),
        manifest,
    })
}

/// Whether this build reads savepoints of layout `version`.
fn readable_format(version: u32) -> bool {
    (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version)
}

/// The directories under `root` whose names `keep` accepts, in name order.
fn dirs_named(root: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, SavepointError> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| keep(n.to_string_lossy().as_ref()))
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The savepoints under `root`: the valid ones oldest first, and the
/// invalid ones with why. Directories being written are neither.
pub fn list(root: &Path) -> Result<(Vec<Savepoint>, Vec<SavepointError>), SavepointError> {
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    if !root.exists() {
        return Ok((valid, invalid));
    }
    for dir in dirs_named(root, |n| !n.starts_with('.'))? {
        match verify(&dir) {
            Ok(savepoint) => valid.push(savepoint),
            Err(err) => invalid.push(err),
        }
    }
    valid.sort_by_key(|s| (s.manifest.created_unix_ms, s.dir.clone()));
    Ok((valid, invalid))
}

/// Prefix under which [`prune`] deletes a savepoint (a `.tmp-` name: never
/// listed nor restored once the deletion has begun).
const PRUNED_PREFIX: &str = ".tmp-pruned-";

/// Deletes the oldest savepoints under `root` of the kind `taken` is —
/// taken without an admin command, of the same partitions of a topic of
/// the same size, in this format — beyond the newest `keep` (at least 1;
/// `taken` is never deleted). Savepoints named by an admin command and
/// other learners' are left alone, as is anything whose manifest cannot
/// be read. Each is renamed to a `.tmp-` name before it is removed, so a
/// crash midway never leaves a half-deleted savepoint that could be
/// listed; such leftovers are removed by the next call. The kept ones are
/// verified: a damaged savepoint does not count toward `keep` (it is left
/// alone while it is among the newest). Returns the deleted directories,
/// oldest first.
pub fn prune(root: &Path, taken: &Savepoint, keep: usize) -> Result<Vec<PathBuf>, SavepointError> {
    let mut ours = Vec::new();
    for entry in fs::read_dir(root).map_err(io(root))? {
        let path = entry.map_err(io(root))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(PRUNED_PREFIX) {
            fs::remove_dir_all(&path).map_err(io(&path))?;
            continue;
        }
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let manifest = fs::read(path.join(MANIFEST))
            .ok()
            .and_then(|text| serde_json::from_slice::<Manifest>(&text).ok());
        if let Some(m) = manifest
            && readable_format(m.format_version)
            && m.command_id.is_none()
            && m.partitions == taken.manifest.partitions
            && m.partition_count == taken.manifest.partition_count
        {
            ours.push((m.created_unix_ms, path));
        }
    }
    ours.sort();
    // Newest first: `taken` and the good ones count toward `keep`, verified
    // (a damaged one whose manifest still reads would stand in for a good
    // one); once `keep` are counted, every older one goes. A damaged one
    // among the newest is left alone, for `list` to report.
    let keep = keep.max(1);
    let mut kept = 0;
    let mut doomed = Vec::new();
    for (_, dir) in ours.into_iter().rev() {
        if dir == taken.dir {
            kept += 1;
        } else if kept >= keep {
            doomed.push(dir);
        } else if verify(&dir).is_ok() {
            kept += 1;
        }
    }
    let mut deleted = Vec::new();
    for dir in doomed.into_iter().rev() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let doomed = root.join(format!("{PRUNED_PREFIX}{}", name.unwrap_or_default()));
        fs::rename(&dir, &doomed).map_err(io(&dir))?;
        sync_dir(root)?;
        fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        deleted.push(dir);
    }
    Ok(deleted)
}

/// A version's spec and every (doc id, state) of it.
pub type VersionStates = (crate::version::VersionSpec, Vec<(u64, KeyState)>);

/// One version's keys as a verified savepoint holds them: its spec and
/// every (doc id, state), in doc order. `None` when the savepoint has no
/// version of that name.
pub fn version_states(
    savepoint: &Savepoint,
    version: &str,
) -> Result<Option<VersionStates>, SavepointError> {
    let read = |table: Table| read_checked(savepoint, table);
    let meta = read(Table::Meta)?;
    let registry = meta
        .iter()
        .find(|(k, _)| k == meta::REGISTRY)
        .ok_or_else(|| CorruptState::new(Table::Meta, meta::REGISTRY, "missing"))
        .and_then(|(_, v)| meta::registry_from(v))?;
    let Some(entry) = registry.entries().iter().find(|e| e.spec.name == version) else {
        return Ok(None);
    };
    let mut states = Vec::new();
    for (k, v) in read(Table::Params)? {
        let key = codec::param_key_from(Table::Params, &k)?;
        if key.version == entry.id {
            let state =
                KeyState::decode(&v).map_err(|e| CorruptState::new(Table::Params, &k, e))?;
            states.push((key.doc_id, state));
        }
    }
    states.sort_unstable_by_key(|(doc, _)| *doc);
    Ok(Some((entry.spec.clone(), states)))
}

/// One version's keys of `partitions` as the shares of a savepoint hold
/// them between them (each partition from the share that holds it, see
/// [`plan_shares`]): its spec and every (doc id, state), in doc order.
/// `None` when a contributing share has no version of that name; an error
/// when two hold different specs of it, or when the shares were not taken
/// at one point of the event-time order (see [`check_mergeable`]): the
/// version's keys would be a mix of two moments.
pub fn shares_version_states(
    shares: &[Savepoint],
    version: &str,
    partitions: &BTreeSet<u32>,
) -> Result<Option<VersionStates>, SavepointError> {
    let plan = plan_shares(shares, Some(partitions))?;
    check_mergeable(&plan)?;
    let mut spec = None;
    let mut states = Vec::new();
    for (share, taken) in plan {
        let Some((share_spec, mut share_states)) = version_states(share, version)? else {
            return Ok(None);
        };
        if spec.get_or_insert_with(|| share_spec.clone()) != &share_spec {
            return Err(SavepointError::Refused(format!(
                "{} holds another spec of version {version:?} than the other shares",
                share.dir.display()
            )));
        }
        let count = share.manifest.partition_count;
        share_states.retain(|(doc_id, _)| taken.contains(&partition_of(*doc_id, count)));
        states.append(&mut share_states);
    }
    states.sort_unstable_by_key(|(doc_id, _)| *doc_id);
    Ok(spec.map(|spec| (spec, states)))
}

/// A table file of a verified savepoint, read again and checked again
/// against the manifest's size and CRC: what is restored is what was
/// verified, even if the file changed since.
fn read_checked(savepoint: &Savepoint, table: Table) -> Result<Entries, SavepointError> {
    let name = table_file(table);
    let invalid = |reason: String| SavepointError::Invalid {
        dir: savepoint.dir.clone(),
        file: name.clone(),
        reason,
    };
    let entry = savepoint
        .manifest
        .files
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| invalid("not in the manifest".into()))?;
    let path = savepoint.dir.join(&name);
    let bytes = read_all(&path).map_err(io(&path))?;
    if bytes.len() as u64 != entry.bytes || crc32fast::hash(&bytes) != entry.crc32 {
        return Err(invalid("changed since it was verified".into()));
    }
    unframe(&bytes).ok_or_else(|| invalid("truncated record".into()))
}

/// Restores a verified savepoint into an empty live store: everything, or
/// only `partitions` (see the module doc for what a split keeps).
pub fn restore_into(
    savepoint: &Savepoint,
    partitions: Option<&BTreeSet<u32>>,
    store: &RocksStore,
) -> Result<(), SavepointError> {
    restore_shares_into(std::slice::from_ref(savepoint), partitions, store)
}

/// Restores `partitions` (`None`: every partition of their topic) from
/// the verified shares of one savepoint into an empty live store, in one
/// write: each partition from the share that holds it ([`plan_shares`]),
/// the shares' dedup windows joined, their counters summed (zero when a
/// share is split, see the module doc). One share is a plain restore.
pub fn restore_shares_into(
    shares: &[Savepoint],
    partitions: Option<&BTreeSet<u32>>,
    store: &RocksStore,
) -> Result<(), SavepointError> {
    if !store.entries(Table::Meta)?.is_empty() {
        return Err(SavepointError::Refused(
            "the live store already holds a state; move it away to restore a savepoint".into(),
        ));
    }
    let supplies = plan_shares(shares, partitions)?;
    let control = merged_control(&supplies)?;
    let merging = supplies.len() > 1;
    let split = supplies
        .iter()
        .any(|(s, taken)| taken.len() < s.manifest.partitions.len());
    let mut writes = Vec::new();
    let mut offsets = BTreeMap::new();
    let mut clocks = BTreeMap::new();
    let mut counters = Counters::default();
    for (i, (share, taken)) in supplies.iter().enumerate() {
        let keep = |p: u32| taken.contains(&p);
        let count = share.manifest.partition_count;
        for table in Table::ALL {
            for (k, v) in read_checked(share, table)? {
                let wanted = match table {
                    Table::Params | Table::Pending => keep(partition_of(
                        codec::param_key_from(table, &k)?.doc_id,
                        count,
                    )),
                    Table::Reorder => keep(codec::reorder_partition(&k)?),
                    Table::Dedup => true,
                    Table::Meta => {
                        match k.as_slice() {
                            meta::OFFSETS => offsets.extend(
                                meta::offsets_from(&v)?
                                    .into_iter()
                                    .filter(|(p, _)| keep(*p)),
                            ),
                            meta::CLOCKS => clocks.extend(
                                meta::clocks_from(&v)?.into_iter().filter(|(p, _)| keep(*p)),
                            ),
                            meta::COUNTERS => counters.add(&meta::counters_from(&v)?),
                            meta::CONTROL if merging => {}
                            // Equal in every share (`merged_control`).
                            _ if i == 0 => writes.push(Write::Put(table, k, v)),
                            _ => {}
                        }
                        continue;
                    }
                };
                if wanted {
                    writes.push(Write::Put(table, k, v));
                }
            }
        }
    }
    if split {
        counters = Counters::default();
    }
    for (name, value) in [
        (meta::OFFSETS, meta::offsets_bytes(&offsets)),
        (meta::CLOCKS, meta::clocks_bytes(&clocks)),
        (meta::COUNTERS, meta::counters_bytes(&counters)),
    ] {
        writes.push(Write::Put(Table::Meta, name.to_vec(), value));
    }
    if let Some(control) = control.filter(|_| merging) {
        writes.push(Write::Put(Table::Meta, meta::CONTROL.to_vec(), control));
    }
    store.write(writes)?;
    Ok(())
}

/// Meta entries that belong to the engine state (the runner keeps its own,
/// such as the dead-letter file length, next to them).
fn is_engine_meta(key: &[u8]) -> bool {
    [
        meta::FORMAT,
        meta::OFFSETS,
        meta::CLOCKS,
        meta::RELEASED,
        meta::REGISTRY,
        meta::COUNTERS,
        meta::CONTROL,
    ]
    .contains(&key)
}

fn frame(entries: &Entries) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn unframe(mut bytes: &[u8]) -> Option<Entries> {
    let take = |bytes: &mut &[u8]| -> Option<Vec<u8>> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (item, rest) = rest.split_at(len);
        *bytes = rest;
        Some(item.to_vec())
    };
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        out.push((k, v));
    }
    Some(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SavepointError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), SavepointError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_refuses_truncation() {
        let entries = vec![(b"a".to_vec(), b"".to_vec()), (vec![0, 1, 2], vec![9; 300])];
        let bytes = frame(&entries);
        assert_eq!(unframe(&bytes), Some(entries));
        for cut in 1..bytes.len() {
            if let Some(partial) = unframe(&bytes[..cut]) {
                assert!(partial.len() < 2, "a cut at {cut} decoded every record");
            }
        }
    }
}
