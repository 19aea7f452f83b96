//! A replica's local snapshot: every served version (spec, retired) and
//! key state, with the next offset of every partition of the `params`
//! topic, in one checksummed file.
//!
//! Why a restart from it is exact: the feed records the next offsets at a
//! record boundary, so every record below them has been applied; the
//! store is scanned after that, so it holds those records' states or newer
//! ones (seqs per key only grow). Resuming the topic at the stored offsets
//! replays records whose seqs the store already has (ignored as stale)
//! and then the rest: nothing is skipped, nothing goes backwards.
//!
//! The file is written atomically: a temporary file is written, fsynced,
//! renamed over the old snapshot, and the directory fsynced, so a crash
//! leaves the old snapshot or the new one, never a mix. A file whose
//! checksum, format or topic does not match is reported and ignored (the
//! replica then rebuilds from the topic); it is never half loaded: tables
//! are built aside and installed only once the whole file is checked.
//!
//! Layout (little-endian), checksummed by the CRC-32 at its end:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `PRSN` |
//! | 2 | format version ([`FORMAT_VERSION`]) |
//! | 4 + n | topic name (u32 length, UTF-8) |
//! | 8 | written at (Unix ms, informational) |
//! | 4 + 12 × p | partitions: count, then (partition u32, next offset u64) |
//! | 4 + … | versions: count, then per version: spec (u32 length, protobuf `VersionSpec`), retired (u8), keys (u64), then per key: doc id (u64), state (u32 length, the learner's `KeyState` encoding) |
//! | 4 | CRC-32 of every byte before it |

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use posterior_learner::{KeyState, VersionSpec};
use posterior_proto::v1;
use prost::Message as _;

use crate::error::StoreError;
use crate::store::ParamStore;
use crate::table::ParamTable;

/// Current format version of the snapshot file.
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"PRSN";
/// The snapshot's file name in its directory.
pub const FILE_NAME: &str = "replica.snapshot";
const TEMP_NAME: &str = "replica.snapshot.tmp";
/// Longest encoded version spec accepted.
const MAX_SPEC_BYTES: u64 = 1 << 20;
/// Longest encoded key state accepted (a full Gaussian of d = 4096).
const MAX_STATE_BYTES: u64 = 1 << 27;
/// Bytes of the smallest key record (doc id, length, state header).
const MIN_KEY_BYTES: u64 = 8 + 4 + 32;
const IO_BUFFER_BYTES: usize = 1 << 20;
/// Docs read from a table per batch when writing it (see `ParamTable::read_each`).
const READ_CHUNK: usize = 1024;

/// Why a snapshot could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is damaged (checksum, length, undecodable content).
    #[error("snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is sound but does not fit this replica (another topic,
    /// format version or version specs).
    #[error("snapshot {path} does not match this replica: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
}

/// One version of a loaded snapshot, its table built but not served yet.
#[derive(Debug)]
pub struct SnapshotVersion {
    /// The version's spec.
    pub spec: VersionSpec,
    /// Whether the learners retired it.
    pub retired: bool,
    /// Its keys.
    pub table: ParamTable,
}

/// A snapshot read and checked, not yet installed.
#[derive(Debug)]
pub struct Snapshot {
    /// The file it came from.
    pub path: PathBuf,
    /// The `params` topic it follows.
    pub topic: String,
    /// Next offset to read, per partition.
    pub next_offsets: BTreeMap<u32, u64>,
    /// The versions and their keys.
    pub versions: Vec<SnapshotVersion>,
}

/// What writing a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Versions written.
    pub versions: usize,
    /// Keys written.
    pub keys: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Time taken, fsyncs included.
    pub elapsed: Duration,
}

/// The snapshot file of directory `dir`.
pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes every version and key of `store`, with `next_offsets` of
/// `topic`, to `dir` atomically. `next_offsets` must have been taken
/// before this call, at a record boundary of the feed (see the module
/// doc).
pub fn write(
    dir: &Path,
    topic: &str,
    next_offsets: &BTreeMap<u32, u64>,
    store: &ParamStore,
) -> Result<WriteStats, SnapshotError> {
    let start = Instant::now();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = dir.join(TEMP_NAME);
    let file = File::create(&temp).map_err(io(&temp))?;
    let mut out = Checksummed::new(BufWriter::with_capacity(IO_BUFFER_BYTES, file));
    let (versions, keys) = write_body(&mut out, topic, next_offsets, store).map_err(io(&temp))?;
    let crc = out.crc.clone().finalize();
    let mut buffered = out.inner;
    buffered.write_all(&crc.to_le_bytes()).map_err(io(&temp))?;
    let file = buffered
        .into_inner()
        .map_err(|e| io(&temp)(e.into_error()))?;
    file.sync_all().map_err(io(&temp))?;
    let bytes = file.metadata().map_err(io(&temp))?.len();
    drop(file);
    let path = path_in(dir);
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(WriteStats {
        versions,
        keys,
        bytes,
        elapsed: start.elapsed(),
    })
}

fn write_body<W: Write>(
    out: &mut Checksummed<W>,
    topic: &str,
    next_offsets: &BTreeMap<u32, u64>,
    store: &ParamStore,
) -> std::io::Result<(usize, u64)> {
    out.put(MAGIC)?;
    out.put(&FORMAT_VERSION.to_le_bytes())?;
    out.put_bytes(topic.as_bytes())?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    out.put(&now_ms.to_le_bytes())?;
    out.put(&(next_offsets.len() as u32).to_le_bytes())?;
    for (&partition, &next) in next_offsets {
        out.put(&partition.to_le_bytes())?;
        out.put(&next.to_le_bytes())?;
    }
    let versions = store.versions();
    out.put(&(versions.len() as u32).to_le_bytes())?;
    let mut keys = 0;
    for version in &versions {
        out.put_bytes(&v1::VersionSpec::from(version.spec()).encode_to_vec())?;
        out.put(&[u8::from(version.is_retired())])?;
        // The keys are collected first so that the count written is the
        // count of records that follow (keys may be added meanwhile).
        let table = version.table();
        let mut records: Vec<(u64, Vec<u8>)> = Vec::with_capacity(table.len());
        for chunk in table.doc_ids().chunks(READ_CHUNK) {
            // A doc removed since the listing reads as None and is left
            // out.
            table.read_each(chunk, |doc_id, state| {
                if let Some(state) = state {
                    records.push((doc_id, state.to_key_state().encode()));
                }
            });
        }
        out.put(&(records.len() as u64).to_le_bytes())?;
        for (doc_id, state) in &records {
            out.put(&doc_id.to_le_bytes())?;
            out.put_bytes(state)?;
        }
        keys += records.len() as u64;
    }
    Ok((versions.len(), keys))
}

/// Reads and checks the snapshot of `dir` for `topic`: `None` when there
/// is none. A damaged or foreign file is an error, and nothing of it is
/// served.
pub fn load(dir: &Path, topic: &str) -> Result<Option<Snapshot>, SnapshotError> {
    let path = path_in(dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    let len = file
        .metadata()
        .map_err(|source| SnapshotError::Io {
            path: path.clone(),
            source,
        })?
        .len();
    let mut input = Checksummed::new(BufReader::with_capacity(IO_BUFFER_BYTES, file));
    let corrupt = |path: &Path, reason: String| SnapshotError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let snapshot = read_body(&mut input, &path, topic, len)?;
    let want = input.crc.clone().finalize();
    let mut tail = [0_u8; 4];
    input
        .inner
        .read_exact(&mut tail)
        .map_err(|e| corrupt(&path, format!("no checksum: {e}")))?;
    if u32::from_le_bytes(tail) != want {
        return Err(corrupt(&path, "checksum mismatch".into()));
    }
    let mut extra = [0_u8; 1];
    if input.inner.read(&mut extra).unwrap_or(0) != 0 {
        return Err(corrupt(&path, "bytes after the checksum".into()));
    }
    Ok(Some(snapshot))
}

fn read_body<R: Read>(
    input: &mut Checksummed<R>,
    path: &Path,
    topic: &str,
    file_len: u64,
) -> Result<Snapshot, SnapshotError> {
    let corrupt = |reason: String| SnapshotError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mismatch = |reason: String| SnapshotError::Mismatch {
        path: path.to_owned(),
        reason,
    };
    let short = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| corrupt(format!("{what}: {e}"))
    };
    if input.take::<4>().map_err(short("magic"))? != *MAGIC {
        return Err(corrupt("not a replica snapshot (bad magic)".into()));
    }
    let format = u16::from_le_bytes(input.take().map_err(short("format version"))?);
    if format != FORMAT_VERSION {
        return Err(mismatch(format!(
            "format version {format}, this build reads {FORMAT_VERSION}"
        )));
    }
    let name = input.take_bytes(256).map_err(short("topic"))?;
    let name = String::from_utf8(name).map_err(|_| corrupt("topic is not UTF-8".into()))?;
    if name != topic {
        return Err(mismatch(format!(
            "it follows topic {name:?}, the config says {topic:?}"
        )));
    }
    input.take::<8>().map_err(short("written at"))?;
    let partitions = u32::from_le_bytes(input.take().map_err(short("partitions"))?);
    let mut next_offsets = BTreeMap::new();
    for _ in 0..partitions {
        let partition = u32::from_le_bytes(input.take().map_err(short("partition"))?);
        let next = u64::from_le_bytes(input.take().map_err(short("offset"))?);
        next_offsets.insert(partition, next);
    }
    let count = u32::from_le_bytes(input.take().map_err(short("versions"))?);
    let mut versions = Vec::new();
    for index in 0..count {
        let spec = input
            .take_bytes(MAX_SPEC_BYTES)
            .map_err(short("version spec"))?;
        let spec = v1::VersionSpec::decode(spec.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|wire| VersionSpec::try_from(wire).map_err(|e| e.to_string()))
            .map_err(|e| corrupt(format!("version {index}: {e}")))?;
        let retired = input.take::<1>().map_err(short("retired"))?[0] != 0;
        let keys = u64::from_le_bytes(input.take().map_err(short("key count"))?);
        let table = ParamTable::new(
            &spec.model.kind,
            keys.min(file_len / MIN_KEY_BYTES) as usize,
        );
        let prior = crate::version::ServedVersion::new(0, spec.clone(), 1);
        for _ in 0..keys {
            let doc_id = u64::from_le_bytes(input.take().map_err(short("doc id"))?);
            let bytes = input.take_bytes(MAX_STATE_BYTES).map_err(short("state"))?;
            let state = KeyState::decode(&bytes)
                .map_err(|e| corrupt(format!("{}/{doc_id}: {e}", spec.name)))?;
            prior.check_model(&state).map_err(|(got, want)| {
                corrupt(format!(
                    "{}/{doc_id} holds a {got} state, the version is {want}",
                    spec.name
                ))
            })?;
            table
                .apply(doc_id, &state)
                .map_err(|e| corrupt(format!("{}/{doc_id}: {e}", spec.name)))?;
        }
        versions.push(SnapshotVersion {
            spec,
            retired,
            table,
        });
    }
    Ok(Snapshot {
        path: path.to_owned(),
        topic: name,
        next_offsets,
        versions,
    })
}

impl Snapshot {
    /// Keys over all versions.
    pub fn keys(&self) -> usize {
        self.versions.iter().map(|v| v.table.len()).sum()
    }

    /// Serves the snapshot's versions and keys from `store`, which must not
    /// serve any of its keys yet (a replica at start). A version the store
    /// serves under another spec (the config changed) refuses the whole
    /// snapshot before anything is changed.
    pub fn install(self, store: &ParamStore) -> Result<(), SnapshotError> {
        for version in &self.versions {
            if let Ok(served) = store.version(&version.spec.name)
                && *served.spec() != version.spec
            {
                return Err(SnapshotError::Mismatch {
                    path: self.path.clone(),
                    reason: format!(
                        "version {:?} is configured with another spec",
                        version.spec.name
                    ),
                });
            }
        }
        for version in self.versions {
            let served = store
                .register_announced(version.spec)
                .map_err(|e: StoreError| SnapshotError::Mismatch {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            served.swap_table(version.table);
            if version.retired {
                served.retire();
            }
        }
        Ok(())
    }
}

/// A reader or writer that keeps the CRC-32 of the bytes passing through.
struct Checksummed<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T> Checksummed<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Checksummed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }

    /// A u32 length, then the bytes.
    fn put_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)
    }
}

impl<R: Read> Checksummed<R> {
    fn take<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut out = [0; N];
        self.inner.read_exact(&mut out)?;
        self.crc.update(&out);
        Ok(out)
    }

    /// A u32 length of at most `max`, then that many bytes.
    fn take_bytes(&mut self, max: u64) -> std::io::Result<Vec<u8>> {
        let len = u64::from(u32::from_le_bytes(self.take()?));
        if len > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("length {len} exceeds {max}"),
            ));
        }
        let mut out = Vec::new();
        (&mut self.inner).take(len).read_to_end(&mut out)?;
        if out.len() as u64 != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.crc.update(&out);
        Ok(out)
    }
}

/// A store's content, for comparisons: version → (spec, retired, doc →
/// encoded state).
pub type Content = BTreeMap<String, (VersionSpec, bool, BTreeMap<u64, Vec<u8>>)>;

/// Everything `store` serves, in a comparable form.
pub fn content(store: &ParamStore) -> Content {
    store
        .versions()
        .iter()
        .map(|version| {
            let table = version.table();
            let keys = table
                .doc_ids()
                .into_iter()
                .filter_map(|doc| table.get(doc).map(|s| (doc, s.encode())))
                .collect();
            (
                version.name().to_owned(),
                (version.spec().clone(), version.is_retired(), keys),
            )
        })
        .collect()
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
