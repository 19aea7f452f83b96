//! File and stdin sources: JSONL (the format of `DESIGN.md`) or
//! length-delimited protobuf `JoinedSample`s. A record's offset is the byte
//! position where it starts, so a restart seeks straight to a checkpointed
//! offset. Bad records become `Payload::Invalid` with the reason
//! `undecodable` (or the validation reason), never an error of the source.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use posterior_proto::v1::JoinedSample;
use prost::Message;
use serde::Deserialize;

use crate::engine::Payload;
use crate::sample::Sample;

/// Longest record accepted; a longer one is dead-lettered and skipped.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// How records are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Varint length prefix, then a `JoinedSample`.
    Protobuf,
}

/// The JSONL form of a sample.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSample {
    doc_id: u64,
    version: String,
    event_time_ms: i64,
    #[serde(default)]
    context: Vec<f32>,
    #[serde(default)]
    labels: BTreeMap<String, f32>,
    #[serde(default)]
    weight: Option<f32>,
    #[serde(default)]
    sample_id: Option<String>,
}

/// Decodes one JSONL line.
pub fn decode_json(line: &[u8]) -> Payload {
    match serde_json::from_slice::<JsonSample>(line) {
        Ok(j) => validated(JoinedSample {
            doc_id: j.doc_id,
            version: j.version,
            event_time_ms: j.event_time_ms,
            context: j.context,
            labels: j.labels.into_iter().collect(),
            weight: j.weight.unwrap_or(1.0),
            sample_id: j.sample_id.unwrap_or_default(),
        }),
        Err(e) => Payload::Invalid {
            reason: "undecodable",
            detail: format!("json: {e}"),
        },
    }
}

/// Decodes one protobuf `JoinedSample`: [`Sample::from_wire_fast`] when it
/// can, prost and [`Sample::try_from`] otherwise (the same sample, or the
/// error naming what is wrong).
pub fn decode_protobuf(bytes: &[u8]) -> Payload {
    if let Some(sample) = Sample::from_wire_fast(bytes) {
        return Payload::Sample(sample);
    }
    decode_protobuf_general(bytes)
}

/// [`decode_protobuf`] without the fast path.
pub fn decode_protobuf_general(bytes: &[u8]) -> Payload {
    match JoinedSample::decode(bytes) {
        Ok(wire) => validated(wire),
        Err(e) => Payload::Invalid {
            reason: "undecodable",
            detail: format!("protobuf: {e}"),
        },
    }
}

fn validated(wire: JoinedSample) -> Payload {
    match Sample::try_from(wire) {
        Ok(sample) => Payload::Sample(sample),
        Err(e) => Payload::Invalid {
            reason: e.reason(),
            detail: e.to_string(),
        },
    }
}

/// Reads records from a file or stdin.
pub struct FileSource {
    reader: Box<dyn BufRead + Send>,
    format: Format,
    position: u64,
    /// Standard input: a read may wait for ever, and its end is only known
    /// once a read reports it.
    stdin: bool,
}

impl FileSource {
    /// Opens `path` and seeks to byte `offset` (a checkpointed next offset).
    pub fn open(path: &Path, format: Format, offset: u64) -> io::Result<Self> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            reader: Box::new(BufReader::with_capacity(1 << 16, file)),
            format,
            position: offset,
            stdin: false,
        })
    }

    /// Reads standard input from its start (stdin cannot seek, so a
    /// restarted learner cannot resume it: use a file for exactly-once).
    pub fn stdin(format: Format) -> Self {
        Self {
            reader: Box::new(BufReader::new(io::stdin())),
            format,
            position: 0,
            stdin: true,
        }
    }

    /// True when a file has no byte left after the last record read, so
    /// the next read reports its end; always false for standard input
    /// (asking could block). Looks at the read buffer, reading into it
    /// when it is empty; consumes nothing.
    pub fn at_end(&mut self) -> io::Result<bool> {
        if self.stdin {
            return Ok(false);
        }
        Ok(self.reader.fill_buf()?.is_empty())
    }

    /// Byte position after the last record read: where the next starts.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next record as (offset, payload), `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<(u64, Payload)>> {
        match self.format {
            Format::Jsonl => self.next_line(),
            Format::Protobuf => self.next_delimited(),
        }
    }

    fn next_line(&mut self) -> io::Result<Option<(u64, Payload)>> {
        loop {
            let offset = self.position;
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_RECORD_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(None);
            }
            self.position += n as u64;
            if line.len() > MAX_RECORD_BYTES && line.last() != Some(&b'\n') {
                // Skip the rest of the oversized line.
                let mut rest = Vec::new();
                self.position += self.reader.read_until(b'\n', &mut rest)? as u64;
                return Ok(Some((offset, too_long())));
            }
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            return Ok(Some((offset, decode_json(trimmed))));
        }
    }

    fn next_delimited(&mut self) -> io::Result<Option<(u64, Payload)>> {
        let offset = self.position;
        let mut len: u64 = 0;
        for shift in (0..64).step_by(7) {
            let mut byte = [0_u8];
            if self.reader.read(&mut byte)? == 0 {
                if shift == 0 {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated length prefix",
                ));
            }
            self.position += 1;
            len |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_RECORD_BYTES {
            // A corrupt prefix cannot be skipped reliably: stop loudly.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record at byte {offset} declares {len} bytes (max {MAX_RECORD_BYTES})"),
            ));
        }
        let mut bytes = vec![0; len];
        self.reader.read_exact(&mut bytes)?;
        self.position += len as u64;
        Ok(Some((offset, decode_protobuf(&bytes))))
    }
}

fn too_long() -> Payload {
    Payload::Invalid {
        reason: "undecodable",
        detail: format!("record longer than {MAX_RECORD_BYTES} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    #[test]
    fn jsonl_records_carry_byte_offsets_and_bad_lines_become_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        let lines = [
            r#"{"doc_id": 42, "version": "ctr-ts", "event_time_ms": 1700000000000, "context": [0.1, -0.3], "labels": {"click": 1}, "weight": 1.0, "sample_id": "a"}"#,
            r#"{"doc_id": "not a number"}"#,
            "",
            r#"{"doc_id": 1, "version": "v", "event_time_ms": 5, "context": [1e39]}"#,
            r#"{"doc_id": 1, "version": "v", "event_time_ms": 5, "surprise": true}"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut source = FileSource::open(&path, Format::Jsonl, 0).unwrap();
        let mut records = Vec::new();
        while let Some(r) = source.next_record().unwrap() {
            records.push(r);
        }
        assert_eq!(records.len(), 4, "the blank line is skipped");
        let Payload::Sample(s) = &records[0].1 else {
            panic!("{:?}", records[0])
        };
        assert_eq!(
            (s.doc_id, s.label("click"), s.sample_id.as_deref()),
            (42, Some(1.0), Some("a"))
        );
        assert!(matches!(
            records[1].1,
            Payload::Invalid {
                reason: "undecodable",
                ..
            }
        ));
        assert!(
            matches!(records[2].1, Payload::Invalid { .. }),
            "1e39 is not an f32: {:?}",
            records[2].1
        );
        assert!(
            matches!(&records[3].1, Payload::Invalid { detail, .. } if detail.contains("surprise"))
        );
        // Resuming at a record's offset reads that record again, and the
        // position after a record is the next record's offset.
        let mut resumed = FileSource::open(&path, Format::Jsonl, records[3].0).unwrap();
        assert_eq!(resumed.next_record().unwrap().unwrap(), records[3]);
        let mut source = FileSource::open(&path, Format::Jsonl, 0).unwrap();
        source.next_record().unwrap();
        assert_eq!(source.position(), records[1].0);
    }

    /// Writes `dir/samples.pb`: `n` length-delimited samples, doc and event
    /// time `i`, weight `weight(i)`.
    fn write_protobuf(dir: &Path, n: u64, weight: impl Fn(u64) -> f32) -> PathBuf {
        let path = dir.join("samples.pb");
        let mut file = File::create(&path).unwrap();
        for i in 0..n {
            let wire = JoinedSample {
                doc_id: i,
                version: "v".into(),
                event_time_ms: i as i64,
                weight: weight(i),
                ..Default::default()
            };
            file.write_all(&wire.encode_length_delimited_to_vec())
                .unwrap();
        }
        path
    }

    /// `at_end` is true once no byte is left after the last record read
    /// (for a protobuf file exactly its last record; a JSONL file's
    /// trailing blank line still counts as a byte left), consumes nothing,
    /// and is never asked of standard input.
    #[test]
    fn a_file_knows_when_no_byte_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_protobuf(dir.path(), 2, |_| 1.0);
        let mut source = FileSource::open(&path, Format::Protobuf, 0).unwrap();
        assert!(!source.at_end().unwrap());
        assert!(source.next_record().unwrap().is_some());
        assert!(!source.at_end().unwrap());
        assert!(!source.at_end().unwrap(), "asking consumes nothing");
        assert!(source.next_record().unwrap().is_some());
        assert!(source.at_end().unwrap());
        assert!(source.next_record().unwrap().is_none());

        let path = dir.path().join("samples.jsonl");
        let line = r#"{"doc_id": 1, "version": "v", "event_time_ms": 5}"#;
        std::fs::write(&path, format!("{line}\n\n")).unwrap();
        let mut source = FileSource::open(&path, Format::Jsonl, 0).unwrap();
        assert!(source.next_record().unwrap().is_some());
        assert!(!source.at_end().unwrap(), "a blank line is left");
        assert!(source.next_record().unwrap().is_none());
        assert!(source.at_end().unwrap());

        assert!(!FileSource::stdin(Format::Jsonl).at_end().unwrap());
    }

    #[test]
    fn length_delimited_protobuf_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_protobuf(dir.path(), 3, |i| if i == 1 { f32::NAN } else { 1.0 });
        let mut source = FileSource::open(&path, Format::Protobuf, 0).unwrap();
        let mut records = Vec::new();
        while let Some(r) = source.next_record().unwrap() {
            records.push(r);
        }
        assert_eq!(records.len(), 3);
        assert!(matches!(
            records[1].1,
            Payload::Invalid {
                reason: "non_finite",
                ..
            }
        ));
        let mut resumed = FileSource::open(&path, Format::Protobuf, records[2].0).unwrap();
        assert_eq!(resumed.next_record().unwrap().unwrap(), records[2]);
    }

    /// Raw fields appended to an encoded sample.
    fn extra_fields(extras: &[(u8, String, u32)]) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let mut out = Vec::new();
        for (kind, name, bits) in extras {
            match kind % 5 {
                // A label entry (names repeat: the last must win).
                0 => {
                    let mut entry = Vec::new();
                    encode_key(1, WireType::LengthDelimited, &mut entry);
                    encode_varint(name.len() as u64, &mut entry);
                    entry.extend_from_slice(name.as_bytes());
                    encode_key(2, WireType::ThirtyTwoBit, &mut entry);
                    entry.extend_from_slice(&bits.to_le_bytes());
                    encode_key(5, WireType::LengthDelimited, &mut out);
                    encode_varint(entry.len() as u64, &mut out);
                    out.extend_from_slice(&entry);
                }
                // An unpacked context value.
                1 => {
                    encode_key(4, WireType::ThirtyTwoBit, &mut out);
                    out.extend_from_slice(&bits.to_le_bytes());
                }
                // The version again (the last wins).
                2 => {
                    encode_key(2, WireType::LengthDelimited, &mut out);
                    encode_varint(name.len() as u64, &mut out);
                    out.extend_from_slice(name.as_bytes());
                }
                // An unknown field.
                3 => {
                    encode_key(9, WireType::Varint, &mut out);
                    encode_varint(u64::from(*bits), &mut out);
                }
                // The weight again.
                _ => {
                    encode_key(6, WireType::ThirtyTwoBit, &mut out);
                    out.extend_from_slice(&bits.to_le_bytes());
                }
            }
        }
        out
    }

    fn float() -> impl proptest::strategy::Strategy<Value = f32> {
        use proptest::prelude::*;
        prop_oneof![
            8 => -10.0_f32..10.0,
            1 => Just(0.0_f32),
            1 => Just(-0.0_f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
        ]
    }

    proptest::proptest! {
        /// The fast decoder accepts only what the general one accepts,
        /// as the same sample; plain encodings of valid samples take it.
        #[test]
        fn the_fast_decoder_agrees_with_prost(
            doc_id in proptest::num::u64::ANY,
            version in "(|v|ctr-ts|ÿ)",
            event_time_ms in proptest::num::i64::ANY,
            context in proptest::collection::vec(float(), 0..6),
            labels in proptest::collection::vec(("(|click|cart|dwell)", float()), 0..4),
            weight in float(),
            sample_id in "(|id-1|x)",
            extras in proptest::collection::vec((0_u8..5, "(|click|v2)", proptest::num::u32::ANY), 0..4),
            cut in proptest::option::of(0_usize..200),
            flip in proptest::option::of((0_usize..200, 1_u8..=255)),
        ) {
            let wire = JoinedSample {
                doc_id,
                version,
                event_time_ms,
                context,
                labels: labels.into_iter().collect(),
                weight,
                sample_id,
            };
            let mut bytes = wire.encode_to_vec();
            bytes.extend(extra_fields(&extras));
            let plain = cut.is_none() && flip.is_none() && extras.is_empty();
            if let Some(at) = cut {
                bytes.truncate(at);
            }
            if let Some((at, mask)) = flip
                && let Some(b) = bytes.get_mut(at)
            {
                *b ^= mask;
            }
            let general = decode_protobuf_general(&bytes);
            match Sample::from_wire_fast(&bytes) {
                Some(fast) => proptest::prop_assert_eq!(&Payload::Sample(fast), &general),
                None => proptest::prop_assert!(
                    !plain || !matches!(general, Payload::Sample(_)),
                    "a plain valid sample missed the fast path: {general:?}"
                ),
            }
            proptest::prop_assert_eq!(decode_protobuf(&bytes), general);
        }
    }
}
