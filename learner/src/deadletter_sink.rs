//! Where dead letters go: a JSONL file or a Kafka topic. The runner hands
//! each checkpoint's letters to the sink and writes the checkpoint only
//! once the sink says they are durable, so a letter is never lost. A
//! topic's acknowledgements are waited for by the checkpoint writer
//! ([`DeadLetterSink::delivered_later`]), not by the ingesting thread.
//!
//! - **File, exactly once.** Each checkpoint records the file's length,
//!   and a restore truncates the file to it: the letters written after the
//!   last checkpoint are written again by the replay, once.
//! - **Topic, at least once.** A topic cannot be truncated: after a crash
//!   the letters after the last checkpoint are produced again. Each record
//!   is keyed `partition/offset` (of the source record) and its value is
//!   the letter's JSON, the same bytes on every replay (the engine is
//!   deterministic), so a consumer that keeps one record per key sees
//!   every letter exactly once. A source partition's letters go to topic
//!   partition `partition mod n`, in order.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::DeadLetterConfig;
use crate::deadletter::DeadLetter;
use crate::producer::{CheckedProducer, DeliveryBarrier, ProducerError};

/// Why dead letters could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The file failed.
    #[error("dead-letter file {path}: {what}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The topic failed.
    #[error("dead-letter {0}")]
    Kafka(#[from] ProducerError),
}

/// A destination for the letters of each checkpoint.
pub trait DeadLetterSink {
    /// Writes `letters`: durable when this returns, or, for a sink that
    /// returns a barrier from [`Self::delivered_later`], once that barrier
    /// passes — either way before the checkpoint that covers them is
    /// written. Returns what the checkpoint must record to restore the
    /// sink exactly: the file's length, or `None`.
    fn commit(&mut self, letters: &[DeadLetter]) -> Result<Option<u64>, DeadLetterError>;

    /// The deliveries the letters committed so far still wait for, to be
    /// waited on before the checkpoint is written (on the writer's thread);
    /// `None` when [`Self::commit`] made them durable itself.
    fn delivered_later(&mut self) -> Option<DeliveryBarrier> {
        None
    }
}

/// Opens the sink `config` names. `checkpointed` is the mark the last
/// checkpoint recorded (`None` for a fresh state, which starts an empty
/// file).
pub fn open(
    config: &DeadLetterConfig,
    checkpointed: Option<u64>,
) -> Result<Box<dyn DeadLetterSink>, DeadLetterError> {
    Ok(match config {
        DeadLetterConfig::File { path } => Box::new(DeadLetterFile::open(path, checkpointed)?),
        DeadLetterConfig::Kafka(kafka) => Box::new(DeadLetterTopic::open(
            &kafka.brokers,
            &kafka.topic,
            Duration::from_millis(kafka.flush_timeout_ms),
        )?),
    })
}

/// The JSON of a letter: a file's line without its newline, a topic
/// record's value.
fn encode(letter: &DeadLetter) -> Vec<u8> {
    serde_json::to_vec(letter).expect("a dead letter (strings and numbers) encodes as JSON")
}

/// Maps an I/O error of the file at `path`.
fn file_error<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(io::Error) -> DeadLetterError + 'a {
    move |source| DeadLetterError::File {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Append-only JSONL dead-letter file, synced at each commit that wrote
/// letters (and at the first, after the truncation of `open`).
pub struct DeadLetterFile {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// Whether bytes were written (or the file truncated) since the last
    /// sync. A commit with nothing new skips the sync: on a disk busy with
    /// the store's writes an `fdatasync` of an unchanged file still costs
    /// a device flush, which stalled checkpoints by hundreds of ms.
    unsynced: bool,
    /// Syncs done, for tests.
    syncs: u64,
}

impl DeadLetterFile {
    /// Opens `path`, truncated to `truncate_to` (a checkpointed length).
    /// Without one (a fresh state, or one restored from a savepoint, which
    /// holds no dead letters) a new file is started, and a non-empty file
    /// found at `path` is kept beside it as `NAME.<unix ms>.prev`: its
    /// letters are of records before the state began. So is a file shorter
    /// than the checkpointed length (truncated or replaced since: padding
    /// it would write zero bytes into the JSONL), with a warning, and a
    /// new file is started.
    pub fn open(path: &Path, truncate_to: Option<u64>) -> Result<Self, DeadLetterError> {
        let found = std::fs::metadata(path).map_or(0, |m| m.len());
        let truncate_to = match truncate_to {
            Some(len) if len > found => {
                tracing::warn!(
                    path = %path.display(),
                    "the dead-letter file holds {found} bytes, fewer than the {len} the \
                     checkpoint recorded (truncated or replaced since): kept aside, and a \
                     new file started"
                );
                None
            }
            other => other,
        };
        if truncate_to.is_none() && found > 0 {
            let mut aside = path.as_os_str().to_owned();
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            aside.push(format!(".{ms}.prev"));
            std::fs::rename(path, &aside)
                .map_err(file_error(path, "move the earlier letters aside"))?;
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            File::open(parent.unwrap_or(Path::new(".")))
                .and_then(|dir| dir.sync_all())
                .map_err(file_error(path, "sync its directory"))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(file_error(path, "open"))?;
        let len = truncate_to.unwrap_or(0);
        file.set_len(len)
            .map_err(file_error(path, "truncate to the checkpointed length"))?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::new(file),
            len,
            unsynced: true,
            syncs: 0,
        })
    }
}

impl DeadLetterSink for DeadLetterFile {
    fn commit(&mut self, letters: &[DeadLetter]) -> Result<Option<u64>, DeadLetterError> {
        for letter in letters {
            let mut line = encode(letter);
            line.push(b'\n');
            self.out
                .write_all(&line)
                .map_err(file_error(&self.path, "write"))?;
            self.len += line.len() as u64;
            self.unsynced = true;
        }
        if self.unsynced {
            self.out.flush().map_err(file_error(&self.path, "flush"))?;
            self.out
                .get_ref()
                .sync_data()
                .map_err(file_error(&self.path, "sync"))?;
            self.unsynced = false;
            self.syncs += 1;
        }
        Ok(Some(self.len))
    }
}

/// A Kafka dead-letter topic: key `partition/offset`, value the letter's
/// JSON, topic partition `partition mod n`.
pub struct DeadLetterTopic {
    producer: CheckedProducer,
}

impl DeadLetterTopic {
    /// Connects to `brokers` and reads the partition count of `topic`.
    pub fn open(
        brokers: &str,
        topic: &str,
        flush_timeout: Duration,
    ) -> Result<Self, DeadLetterError> {
        Ok(Self {
            producer: CheckedProducer::open(brokers, topic, flush_timeout)?,
        })
    }
}

impl DeadLetterSink for DeadLetterTopic {
    fn commit(&mut self, letters: &[DeadLetter]) -> Result<Option<u64>, DeadLetterError> {
        for letter in letters {
            let key = format!("{}/{}", letter.partition, letter.offset);
            let partition = letter.partition % self.producer.partitions();
            self.producer
                .send(partition, key.as_bytes(), &encode(letter))?;
        }
        self.producer.poll();
        Ok(None)
    }

    fn delivered_later(&mut self) -> Option<DeliveryBarrier> {
        Some(self.producer.delivered_later())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: u64) -> DeadLetter {
        DeadLetter {
            partition: 0,
            offset,
            reason: "late",
            detail: "event time 1 is below watermark 2".into(),
            doc_id: Some(7),
            version: Some("v".into()),
            event_time_ms: Some(1),
        }
    }

    /// The content of the one `.prev` file kept under `dir`.
    fn kept_aside(dir: &Path) -> String {
        let kept: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "prev"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        std::fs::read_to_string(&kept[0]).unwrap()
    }

    #[test]
    fn a_reopened_file_keeps_exactly_the_checkpointed_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut file = DeadLetterFile::open(&path, None).unwrap();
        let mark = file.commit(&[letter(1), letter(2)]).unwrap().unwrap();
        file.commit(&[letter(3)]).unwrap();
        drop(file);
        // A crash after the second commit, before its checkpoint: the
        // restore truncates to the first mark and the replay writes 3 again.
        let mut file = DeadLetterFile::open(&path, Some(mark)).unwrap();
        let end = file.commit(&[letter(3)]).unwrap().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(end, text.len() as u64);
        let offsets: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(offsets, [1, 2, 3]);
        // A fresh state (or one from a savepoint) starts an empty file,
        // and the letters before it are kept beside it.
        DeadLetterFile::open(&path, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(kept_aside(dir.path()), text);
        // An empty file is not kept.
        DeadLetterFile::open(&path, None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// A file shorter than the checkpointed length (cut or replaced since
    /// the checkpoint) is kept aside, not padded with zero bytes, and a new
    /// file is started.
    #[test]
    fn a_file_shorter_than_the_checkpointed_length_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut file = DeadLetterFile::open(&path, None).unwrap();
        let mark = file.commit(&[letter(1), letter(2)]).unwrap().unwrap();
        drop(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = &text[..=text.find('\n').unwrap()];
        std::fs::write(&path, first).unwrap();
        let mut file = DeadLetterFile::open(&path, Some(mark)).unwrap();
        file.commit(&[letter(3)]).unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(!now.contains('\0'), "padded: {now:?}");
        assert_eq!(now.lines().count(), 1, "{now}");
        assert_eq!(kept_aside(dir.path()), first);
    }

    #[test]
    fn only_commits_that_wrote_something_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut file = DeadLetterFile::open(&path, None).unwrap();
        assert_eq!(file.commit(&[]).unwrap(), Some(0));
        assert_eq!(file.syncs, 1, "the first commit syncs the truncation");
        let mark = file.commit(&[letter(1)]).unwrap().unwrap();
        assert_eq!(file.syncs, 2);
        assert_eq!(file.commit(&[]).unwrap(), Some(mark), "same mark");
        assert_eq!(file.commit(&[]).unwrap(), Some(mark));
        assert_eq!(file.syncs, 2, "nothing new, no sync");
        let end = file.commit(&[letter(2)]).unwrap().unwrap();
        assert_eq!(file.syncs, 3);
        assert_eq!(end, std::fs::metadata(&path).unwrap().len());
    }
}
