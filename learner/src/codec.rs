//! Byte encodings of the engine's state for the state store: table names,
//! order-preserving keys, and values. Keys sort in the engine's own order
//! (big-endian, sign-flipped event times), so a store's iteration order is
//! the release order. Every decoder validates and returns
//! [`CorruptState`] instead of panicking.

use std::mem::MaybeUninit;

use posterior_proto::v1;
use prost::Message;

use crate::batcher::PendingObservation;
use crate::registry::{ParamKey, VersionId};
use crate::reorder::OrderKey;
use crate::sample::Sample;

/// Format version of the engine state as a whole (meta `format`).
pub const STATE_FORMAT_VERSION: u16 = 3;

/// The oldest state format this build reads. Format 1 kept one reorder
/// entry per buffered sample (keyed by [`order_key`]); format 2 keeps the
/// sample log's blobs, whose records hold `JoinedSample` bytes (12-byte
/// [`log_key`]s); format 3 writes new blobs in [`RecordLayout::Fixed`]
/// (13-byte keys). A format-1 store restores, and its next checkpoint
/// rewrites the buffered samples as blobs and deletes the old entries in
/// the same write; a format-2 store's blobs are read as written and
/// deleted, like any blob, once their samples have all been released.
pub const OLDEST_STATE_FORMAT_VERSION: u16 = 1;

/// The tables (RocksDB column families) of the engine state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// (version, doc) → `KeyState` encoding.
    Params,
    /// (version, doc) → pending micro-batch.
    Pending,
    /// (partition, blob number) → the sample log's records (format 2;
    /// format 1: (event_time, partition, offset) → one sample's bytes).
    Reorder,
    /// (event_time, sample_id) → position in the release order.
    Dedup,
    /// Named entries: format, offsets, clocks, registry, counters.
    Meta,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 5] = [
        Table::Params,
        Table::Pending,
        Table::Reorder,
        Table::Dedup,
        Table::Meta,
    ];

    /// Column-family name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Params => "params",
            Table::Pending => "pending",
            Table::Reorder => "reorder",
            Table::Dedup => "dedup",
            Table::Meta => "meta",
        }
    }
}

/// A stored entry that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {table} entry {key}: {reason}")]
pub struct CorruptState {
    /// Table name.
    pub table: &'static str,
    /// The key, hex-encoded.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl CorruptState {
    /// A corruption report for `key` of `table`.
    pub fn new(table: Table, key: &[u8], reason: impl ToString) -> Self {
        Self {
            table: table.name(),
            key: key.iter().map(|b| format!("{b:02x}")).collect(),
            reason: reason.to_string(),
        }
    }
}

/// i64 → bytes that sort like the integers.
fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// Key of a parameter or pending batch.
pub fn param_key(key: ParamKey) -> Vec<u8> {
    param_key_bytes(key).to_vec()
}

/// [`param_key`] without an allocation.
pub fn param_key_bytes(key: ParamKey) -> [u8; 12] {
    let mut out = [0; 12];
    out[..4].copy_from_slice(&key.version.0.to_be_bytes());
    out[4..].copy_from_slice(&key.doc_id.to_be_bytes());
    out
}

/// Decodes [`param_key`].
pub fn param_key_from(table: Table, bytes: &[u8]) -> Result<ParamKey, CorruptState> {
    let arr: [u8; 12] = bytes
        .try_into()
        .map_err(|_| CorruptState::new(table, bytes, "key is not 12 bytes"))?;
    Ok(ParamKey {
        version: VersionId(u32::from_be_bytes(arr[..4].try_into().expect("4 bytes"))),
        doc_id: u64::from_be_bytes(arr[4..].try_into().expect("8 bytes")),
    })
}

/// Key of a reorder-buffer entry.
pub fn order_key(key: OrderKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&time_bytes(key.event_time_ms));
    out.extend_from_slice(&key.partition.to_be_bytes());
    out.extend_from_slice(&key.offset.to_be_bytes());
    out
}

/// Decodes [`order_key`].
pub fn order_key_from(bytes: &[u8]) -> Result<OrderKey, CorruptState> {
    let arr: [u8; 20] = bytes
        .try_into()
        .map_err(|_| CorruptState::new(Table::Reorder, bytes, "key is not 20 bytes"))?;
    Ok(OrderKey {
        event_time_ms: time_from(arr[..8].try_into().expect("8 bytes")),
        partition: u32::from_be_bytes(arr[8..12].try_into().expect("4 bytes")),
        offset: u64::from_be_bytes(arr[12..].try_into().expect("8 bytes")),
    })
}

/// How the records of a sample log blob lay out their samples, told by
/// the blob's key ([`log_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordLayout {
    /// `JoinedSample` bytes (state format 2; 12-byte keys), read only.
    Protobuf,
    /// The fields at fixed places, lengths as varints ([`put_sample_record`];
    /// 13-byte keys ending in [`FIXED_LAYOUT_TAG`]).
    Fixed,
}

/// The last byte of a [`RecordLayout::Fixed`] blob's key.
pub const FIXED_LAYOUT_TAG: u8 = 1;

/// Key of a blob of the sample log ([`crate::sample_log`]): partition,
/// then the blob's number, big-endian, so a partition's blobs sort in
/// the order they were cut, then [`FIXED_LAYOUT_TAG`].
pub fn log_key(partition: u32, blob: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(13);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&blob.to_be_bytes());
    out.push(FIXED_LAYOUT_TAG);
    out
}

/// Decodes a blob's key — [`log_key`], or the 12 bytes format 2 wrote —
/// into (partition, blob number, layout of its records).
pub fn log_key_from(bytes: &[u8]) -> Result<(u32, u64, RecordLayout), CorruptState> {
    let layout = match bytes.len() {
        12 => RecordLayout::Protobuf,
        13 if bytes[12] == FIXED_LAYOUT_TAG => RecordLayout::Fixed,
        13 => {
            return Err(CorruptState::new(
                Table::Reorder,
                bytes,
                format!("unknown record layout {}", bytes[12]),
            ));
        }
        _ => {
            return Err(CorruptState::new(
                Table::Reorder,
                bytes,
                "key is neither 12 nor 13 bytes",
            ));
        }
    };
    Ok((
        u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")),
        u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
        layout,
    ))
}

/// The partition of a reorder-table key of any format: a sample log
/// blob's ([`log_key`], 13 bytes, or 12 as format 2 wrote them) or a
/// format-1 sample's ([`order_key`], 20 bytes).
pub fn reorder_partition(key: &[u8]) -> Result<u32, CorruptState> {
    match key.len() {
        12 | 13 => log_key_from(key).map(|(partition, _, _)| partition),
        20 => order_key_from(key).map(|k| k.partition),
        _ => Err(CorruptState::new(
            Table::Reorder,
            key,
            "key is not 12 or 13 bytes (a blob) or 20 (a format-1 sample)",
        )),
    }
}

/// Appends one record of the sample log to `out`: the sample's offset
/// (u64) and the length of the rest (u32), then the sample in
/// [`RecordLayout::Fixed`]:
///
/// | field | bytes |
/// |---|---|
/// | event time, doc id, weight | i64, u64, f32 |
/// | context | varint n, then n × f32 |
/// | version | varint length, UTF-8 |
/// | labels, in the sample's (sorted) order | varint count, then per label varint length, UTF-8, f32 |
/// | sample id | varint 0 (none) or length + 1, then UTF-8 |
///
/// Little-endian throughout. Written into room reserved for a bound on
/// the record's size (every varint at ten bytes), the length filled in
/// once the sample is written: every sample that enters the reorder
/// buffer is appended here, on the engine's thread, and its protobuf
/// encoding (varint fields, presence checks, a sizing pass) took twice
/// the instructions (462 against 230 for a bench 1 Beta sample; 190
/// since the writer's room is unchecked).
pub fn put_sample_record(out: &mut Vec<u8>, offset: u64, sample: &Sample) {
    write_bounded(out, fixed_record_bound(sample), |w| {
        // The fields at fixed places, gathered and written at once (the
        // length after the offset is filled in last).
        let mut head = [0_u8; RECORD_HEADER + FIXED_FIELDS];
        head[..8].copy_from_slice(&offset.to_le_bytes());
        head[12..20].copy_from_slice(&sample.event_time_ms.to_le_bytes());
        head[20..28].copy_from_slice(&sample.doc_id.to_le_bytes());
        head[28..32].copy_from_slice(&sample.weight.to_le_bytes());
        w.put(&head);
        w.varint(sample.context.len() as u64);
        w.f32s(&sample.context);
        w.str(&sample.version);
        w.varint(sample.labels.len() as u64);
        for (name, value) in &sample.labels {
            w.str(name);
            w.put(&value.to_le_bytes());
        }
        match &sample.sample_id {
            None => w.byte(0),
            Some(id) => {
                w.varint(id.len() as u64 + 1);
                w.put(id.as_bytes());
            }
        }
        let len = (w.pos - RECORD_HEADER) as u32;
        w.put_at(8, &len.to_le_bytes());
    });
}

/// Bytes of a record's fields at fixed places: event time, doc id, weight.
const FIXED_FIELDS: usize = 8 + 8 + 4;

/// A sample log record's offset and length.
const RECORD_HEADER: usize = 12;

/// At least the bytes [`put_sample_record`] writes for `sample`.
fn fixed_record_bound(sample: &Sample) -> usize {
    const VARINT: usize = 10;
    RECORD_HEADER
        + 8
        + 8
        + 4
        + (VARINT + 4 * sample.context.len())
        + (VARINT + sample.version.len())
        + VARINT
        + sample
            .labels
            .iter()
            .map(|(name, _)| VARINT + name.len() + 4)
            .sum::<usize>()
        + VARINT
        + sample.sample_id.as_ref().map_or(0, |id| id.len())
}

/// Decodes the records of a blob ([`put_sample_record`], or `JoinedSample`
/// bodies as format 2 wrote them) into (offset, sample), in the order
/// they were appended.
pub fn sample_records_from(
    key: &[u8],
    bytes: &[u8],
    layout: RecordLayout,
) -> Result<Vec<(u64, Sample)>, CorruptState> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let truncated = || CorruptState::new(Table::Reorder, key, "truncated sample record");
        let header: [u8; RECORD_HEADER] = rest
            .get(..RECORD_HEADER)
            .ok_or_else(truncated)?
            .try_into()
            .expect("12");
        let offset = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let body = rest
            .get(RECORD_HEADER..RECORD_HEADER + len)
            .ok_or_else(truncated)?;
        let sample = match layout {
            RecordLayout::Fixed => fixed_sample_from(body)
                .ok_or_else(|| CorruptState::new(Table::Reorder, key, "invalid sample record"))?,
            RecordLayout::Protobuf => sample_from(key, body)?,
        };
        records.push((offset, sample));
        rest = &rest[RECORD_HEADER + len..];
    }
    Ok(records)
}

/// Decodes a [`RecordLayout::Fixed`] sample, checked and its labels
/// sorted as a decoded `JoinedSample`'s are: `None` if it is truncated,
/// has bytes left over, or is not a valid sample.
fn fixed_sample_from(body: &[u8]) -> Option<Sample> {
    let mut r = Cursor {
        bytes: body,
        pos: 0,
    };
    let event_time_ms = r.i64()?;
    let doc_id = r.u64()?;
    let weight = r.f32()?;
    let dim = usize::try_from(r.varint()?).ok()?;
    let context: Vec<f32> = r
        .slice(dim.checked_mul(4)?)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let version = r.str()?;
    let count = usize::try_from(r.varint()?).ok()?;
    // Each label takes at least five bytes: a count beyond that is damage,
    // not a reason to reserve room.
    if count > (body.len() - r.pos) / 5 {
        return None;
    }
    let mut labels = crate::sample::Labels::with_capacity(count);
    for _ in 0..count {
        let name = r.str()?;
        labels.push((name.into(), r.f32()?));
    }
    // A sample built by hand may hold its labels in any order: read back
    // as its protobuf record was (sorted, the last of a name kept).
    crate::sample::sort_labels(&mut labels);
    let sample_id = match usize::try_from(r.varint()?).ok()? {
        0 => None,
        n => Some(std::str::from_utf8(r.slice(n - 1)?).ok()?.into()),
    };
    let valid = r.pos == body.len()
        && !version.is_empty()
        && crate::sample::event_time_in_range(event_time_ms)
        && context.iter().all(|x| x.is_finite())
        && labels.iter().all(|(_, v)| v.is_finite())
        && weight.is_finite()
        && weight > 0.0
        && f64::from(weight) <= crate::posterior::MAX_WEIGHT
        && sample_id
            .as_ref()
            .is_none_or(|id: &crate::sample::Name| !id.is_empty());
    valid.then(|| Sample {
        doc_id,
        version: version.into(),
        event_time_ms,
        context,
        labels,
        weight,
        sample_id,
    })
}

/// Key of a de-duplication entry.
pub fn dedup_key(event_ms: i64, id: &str) -> Vec<u8> {
    let mut out = time_bytes(event_ms).to_vec();
    out.extend_from_slice(id.as_bytes());
    out
}

/// Value of a de-duplication entry: its position in the release order
/// (what a restored window orders its ids by), little-endian.
pub fn dedup_value(seq: u64) -> Vec<u8> {
    seq.to_le_bytes().to_vec()
}

/// Decodes [`dedup_value`] of the entry at `key`; an empty value (an
/// entry stored before positions were) reads as 0.
pub fn dedup_value_from(key: &[u8], value: &[u8]) -> Result<u64, CorruptState> {
    match value.len() {
        0 => Ok(0),
        8 => Ok(u64::from_le_bytes(value.try_into().expect("8 bytes"))),
        n => Err(CorruptState::new(
            Table::Dedup,
            key,
            format!("value of {n} bytes, expected 8"),
        )),
    }
}

/// Decodes [`dedup_key`].
pub fn dedup_key_from(bytes: &[u8]) -> Result<(i64, String), CorruptState> {
    if bytes.len() < 8 {
        return Err(CorruptState::new(
            Table::Dedup,
            bytes,
            "key shorter than 8 bytes",
        ));
    }
    let id =
        std::str::from_utf8(&bytes[8..]).map_err(|e| CorruptState::new(Table::Dedup, bytes, e))?;
    Ok((
        time_from(bytes[..8].try_into().expect("8 bytes")),
        id.to_owned(),
    ))
}

/// Appends what `write` writes, at most `bound` bytes, to `out`, into its
/// spare capacity (reserved here; never zeroed first). Returns how many
/// bytes were written.
///
/// The writer does not check each write against the room (those checks
/// were a third of a bench 1 Beta record's instructions): `bound` must
/// be at least what `write` writes, as [`fixed_record_bound`] is by
/// construction (each field at its largest encoding; the proptests check
/// it), and debug builds assert it at every write.
#[allow(unsafe_code)]
fn write_bounded(out: &mut Vec<u8>, bound: usize, write: impl FnOnce(&mut Writer<'_>)) -> usize {
    out.reserve(bound);
    let start = out.len();
    let mut w = Writer {
        buf: &mut out.spare_capacity_mut()[..bound],
        pos: 0,
    };
    write(&mut w);
    let written = w.pos;
    // SAFETY: the writer initialises every byte below `pos` of the spare
    // capacity (`byte`, `put` and `f32s` write each byte they step over;
    // `put_at` rewrites bytes below `pos`), and `pos ≤ bound` fits the
    // reservation.
    unsafe { out.set_len(start + written) };
    written
}

/// Writes into room of `out`'s spare capacity (see [`write_bounded`]),
/// unchecked in release builds: the caller's bound covers every write.
struct Writer<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    pos: usize,
}

#[allow(unsafe_code)]
impl Writer<'_> {
    /// The next `n` bytes of room.
    #[inline]
    fn room(&mut self, n: usize) -> &mut [MaybeUninit<u8>] {
        debug_assert!(self.pos + n <= self.buf.len(), "a write past the bound");
        // SAFETY: `write_bounded`'s caller bounds every record's writes by
        // the room's length (see there).
        unsafe { self.buf.get_unchecked_mut(self.pos..self.pos + n) }
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.room(1)[0].write(b);
        self.pos += 1;
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).write_copy_of_slice(bytes);
        self.pos += bytes.len();
    }

    /// Rewrites bytes already written, at `at`.
    #[inline]
    fn put_at(&mut self, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.pos,
            "only written bytes are rewritten"
        );
        self.buf[at..at + bytes.len()].write_copy_of_slice(bytes);
    }

    #[inline]
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte(value as u8 | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    /// A string: its length as a varint, then its bytes.
    #[inline]
    fn str(&mut self, value: &str) {
        self.varint(value.len() as u64);
        self.put(value.as_bytes());
    }

    /// `values` little-endian, in bulk.
    fn f32s(&mut self, values: &[f32]) {
        let dst = self.room(4 * values.len());
        for (dst, x) in dst.chunks_exact_mut(4).zip(values) {
            dst.write_copy_of_slice(&x.to_le_bytes());
        }
        self.pos += 4 * values.len();
    }
}

/// Decodes a sample from `JoinedSample` bytes: a format-1 reorder entry,
/// or a record of a state format 2 blob ([`RecordLayout::Protobuf`]).
pub fn sample_from(key: &[u8], bytes: &[u8]) -> Result<Sample, CorruptState> {
    let wire =
        v1::JoinedSample::decode(bytes).map_err(|e| CorruptState::new(Table::Reorder, key, e))?;
    Sample::try_from(wire).map_err(|e| CorruptState::new(Table::Reorder, key, e))
}

/// A pending micro-batch: u32 count, then per observation event time,
/// partition, offset, reward, weight, dimension and context.
pub fn pending_bytes(batch: &[PendingObservation]) -> Vec<u8> {
    let mut out = vec![0; pending_len(batch)];
    write_pending(batch, &mut out);
    out
}

/// Event time, partition, offset, reward, weight, context length: an
/// observation's fixed part in [`pending_bytes`].
const PENDING_HEADER: usize = 8 + 4 + 8 + 1 + 8 + 4;

/// Length of [`pending_bytes`]`(batch)`.
pub fn pending_len(batch: &[PendingObservation]) -> usize {
    4 + batch
        .iter()
        .map(|obs| PENDING_HEADER + 4 * obs.context.len())
        .sum::<usize>()
}

/// Writes [`pending_bytes`]`(batch)` into `out`, which is
/// [`pending_len`]`(batch)` long (panics otherwise).
pub fn write_pending(batch: &[PendingObservation], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        pending_len(batch),
        "the sizing and the writing agree"
    );
    let (count, mut rest) = out.split_at_mut(4);
    count.copy_from_slice(&(batch.len() as u32).to_le_bytes());
    for obs in batch {
        let (header, tail) = std::mem::take(&mut rest).split_at_mut(PENDING_HEADER);
        header[..8].copy_from_slice(&obs.origin.event_time_ms.to_le_bytes());
        header[8..12].copy_from_slice(&obs.origin.partition.to_le_bytes());
        header[12..20].copy_from_slice(&obs.origin.offset.to_le_bytes());
        header[20] = u8::from(obs.reward);
        header[21..29].copy_from_slice(&obs.weight.to_le_bytes());
        header[29..].copy_from_slice(&(obs.context.len() as u32).to_le_bytes());
        let (context, tail) = tail.split_at_mut(4 * obs.context.len());
        for (dst, x) in context.chunks_exact_mut(4).zip(&obs.context) {
            dst.copy_from_slice(&x.to_le_bytes());
        }
        rest = tail;
    }
}

/// Decodes [`pending_bytes`].
pub fn pending_from(key: &[u8], bytes: &[u8]) -> Result<Vec<PendingObservation>, CorruptState> {
    let corrupt = |reason: &str| CorruptState::new(Table::Pending, key, reason);
    let mut r = Cursor { bytes, pos: 0 };
    let n = r.u32().ok_or_else(|| corrupt("truncated count"))? as usize;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let event_time_ms = r.i64().ok_or_else(|| corrupt("truncated observation"))?;
        let partition = r.u32().ok_or_else(|| corrupt("truncated observation"))?;
        let offset = r.u64().ok_or_else(|| corrupt("truncated observation"))?;
        let reward = match r.u8() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(corrupt("bad reward byte")),
        };
        let weight = r.f64().ok_or_else(|| corrupt("truncated observation"))?;
        let dim = r.u32().ok_or_else(|| corrupt("truncated observation"))? as usize;
        let context: Option<Vec<f32>> = (0..dim).map(|_| r.f32()).collect();
        let context = context.ok_or_else(|| corrupt("truncated context"))?;
        if !weight.is_finite() || context.iter().any(|x| !x.is_finite()) {
            return Err(corrupt("non-finite value"));
        }
        out.push(PendingObservation {
            origin: OrderKey {
                event_time_ms,
                partition,
                offset,
            },
            context,
            reward,
            weight,
        });
    }
    if r.pos != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(out)
}

/// Little-endian reader returning `None` past the end.
pub(crate) struct Cursor<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let out = self.bytes.get(self.pos..self.pos + N)?.try_into().ok()?;
        self.pos += N;
        Some(out)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    pub(crate) fn f64(&mut self) -> Option<f64> {
        self.take().map(f64::from_le_bytes)
    }
    pub(crate) fn f32(&mut self) -> Option<f32> {
        self.take().map(f32::from_le_bytes)
    }
    /// The next `n` bytes.
    fn slice(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    /// A varint as protobuf writes one.
    fn varint(&mut self) -> Option<u64> {
        let mut rest = self.bytes.get(self.pos..)?;
        let before = rest.len();
        let value = prost::encoding::decode_varint(&mut rest).ok()?;
        self.pos += before - rest.len();
        Some(value)
    }
    /// A string written by `Writer::str`.
    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        std::str::from_utf8(self.slice(len)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_engine_order() {
        let keys = [
            OrderKey {
                event_time_ms: -5,
                partition: 9,
                offset: 0,
            },
            OrderKey {
                event_time_ms: 3,
                partition: 0,
                offset: 7,
            },
            OrderKey {
                event_time_ms: 3,
                partition: 1,
                offset: 0,
            },
            OrderKey {
                event_time_ms: i64::MAX,
                partition: 0,
                offset: 0,
            },
        ];
        let bytes: Vec<Vec<u8>> = keys.iter().map(|k| order_key(*k)).collect();
        let mut sorted = bytes.clone();
        sorted.sort();
        assert_eq!(sorted, bytes);
        for (k, b) in keys.iter().zip(&bytes) {
            assert_eq!(order_key_from(b).unwrap(), *k);
        }
        let pk = ParamKey {
            version: VersionId(3),
            doc_id: u64::MAX,
        };
        assert_eq!(param_key_from(Table::Params, &param_key(pk)).unwrap(), pk);
        assert_eq!(
            dedup_key_from(&dedup_key(-1, "id-1")).unwrap(),
            (-1, "id-1".to_owned())
        );
        let key = dedup_key(-1, "id-1");
        assert_eq!(
            dedup_value_from(&key, &dedup_value(u64::MAX)).unwrap(),
            u64::MAX
        );
        assert_eq!(dedup_value_from(&key, &[]).unwrap(), 0);
        let err = dedup_value_from(&key, &[1, 2, 3]).unwrap_err().to_string();
        assert!(err.contains("3 bytes"), "{err}");
    }

    /// Any valid sample: long names (two-byte lengths), labels of value 0
    /// and −0, contexts of every length up to 40, with and without an id.
    fn any_sample() -> impl proptest::strategy::Strategy<Value = Sample> {
        use proptest::prelude::*;
        (
            any::<u64>(),
            "[a-z-]{1,12}|[a-z]{120,140}",
            -crate::sample::MAX_EVENT_TIME_MS..=crate::sample::MAX_EVENT_TIME_MS,
            proptest::collection::vec(-1e6_f32..1e6, 0..40),
            proptest::collection::btree_map(
                "[a-z_]{0,10}|[a-z]{130}",
                prop_oneof![Just(0.0_f32), Just(-0.0_f32), -1e3_f32..1e3],
                0..4,
            ),
            prop_oneof![Just(1.0_f32), 0.001_f32..100.0],
            proptest::option::of("[a-z0-9]{1,8}|[a-z]{200}"),
        )
            .prop_map(
                |(doc_id, version, event_time_ms, context, labels, weight, sample_id)| Sample {
                    doc_id,
                    version: version.into(),
                    event_time_ms,
                    context,
                    labels: labels
                        .into_iter()
                        .map(|(name, value)| (name.into(), value))
                        .collect(),
                    weight,
                    sample_id: sample_id.map(Into::into),
                },
            )
    }

    /// A record as state format 2 wrote it: offset, length, `JoinedSample`.
    fn protobuf_record(offset: u64, sample: &Sample) -> Vec<u8> {
        let body = v1::JoinedSample::from(sample).encode_to_vec();
        let mut out = offset.to_le_bytes().to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    proptest::proptest! {
        /// Records appended one after another decode back to the same
        /// samples, in order, each behind its offset and its length; the
        /// bound the writer reserves is never exceeded (it panics).
        #[test]
        fn sample_records_round_trip(samples in proptest::collection::vec(any_sample(), 1..4)) {
            let mut log = Vec::new();
            let mut expected = Vec::new();
            for (i, sample) in samples.iter().enumerate() {
                let start = log.len();
                put_sample_record(&mut log, 1_000 + i as u64, sample);
                proptest::prop_assert_eq!(&log[start..start + 8], &(1_000 + i as u64).to_le_bytes());
                let len = u32::from_le_bytes(log[start + 8..start + 12].try_into().unwrap());
                proptest::prop_assert_eq!(len as usize, log.len() - start - RECORD_HEADER);
                proptest::prop_assert!(log.len() - start <= fixed_record_bound(sample));
                expected.push((1_000 + i as u64, sample.clone()));
            }
            proptest::prop_assert_eq!(
                sample_records_from(b"k", &log, RecordLayout::Fixed).unwrap(),
                expected.clone()
            );
            // Format 2's blobs still read.
            let old: Vec<u8> = expected.iter().flat_map(|(o, s)| protobuf_record(*o, s)).collect();
            proptest::prop_assert_eq!(
                sample_records_from(b"k", &old, RecordLayout::Protobuf).unwrap(),
                expected
            );
        }

        /// A damaged record is refused, never decoded into another sample
        /// or a panic: every cut of a record, and any bytes at all.
        #[test]
        fn damaged_records_are_refused(sample in any_sample(), noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut log = Vec::new();
            put_sample_record(&mut log, 5, &sample);
            for cut in 0..log.len() {
                proptest::prop_assert!(sample_records_from(b"k", &log[..cut], RecordLayout::Fixed).is_err() || cut == 0);
            }
            // A record whose length covers one more byte than its sample.
            let mut longer = log.clone();
            let len = u32::from_le_bytes(longer[8..12].try_into().unwrap()) + 1;
            longer[8..12].copy_from_slice(&len.to_le_bytes());
            longer.push(0);
            proptest::prop_assert!(sample_records_from(b"k", &longer, RecordLayout::Fixed).is_err());
            let _ = sample_records_from(b"k", &noise, RecordLayout::Fixed);
        }
    }

    #[test]
    fn fixed_records_refuse_invalid_samples() {
        let valid = Sample {
            doc_id: 3,
            version: "v".into(),
            event_time_ms: 10,
            context: vec![0.5],
            labels: crate::sample::labels([("a", 1.0), ("b", 0.0)]),
            weight: 1.0,
            sample_id: Some("id".into()),
        };
        let decodes = |sample: &Sample| {
            let mut log = Vec::new();
            put_sample_record(&mut log, 0, sample);
            sample_records_from(b"k", &log, RecordLayout::Fixed).is_ok()
        };
        assert!(decodes(&valid));
        let mut bad = Vec::new();
        for change in [
            (|s: &mut Sample| s.version = "".into()) as fn(&mut Sample),
            |s| s.event_time_ms = crate::sample::MAX_EVENT_TIME_MS + 1,
            |s| s.context[0] = f32::NAN,
            |s| s.labels[0].1 = f32::INFINITY,
            |s| s.weight = 0.0,
            |s| s.weight = -1.0,
            |s| s.weight = f32::MAX,
            |s| s.sample_id = Some("".into()),
        ] {
            let mut sample = valid.clone();
            change(&mut sample);
            bad.push(decodes(&sample));
        }
        assert_eq!(bad, vec![false; 8], "each invalid sample refused");
        // Labels out of order (a sample built by hand) read back sorted,
        // the last of a repeated name kept, as from their protobuf record.
        let mut unsorted = valid.clone();
        unsorted.labels.swap(0, 1);
        unsorted.labels.push(("a".into(), 5.0));
        let mut log = Vec::new();
        put_sample_record(&mut log, 0, &unsorted);
        let read = sample_records_from(b"k", &log, RecordLayout::Fixed).unwrap();
        assert_eq!(
            read[0].1.labels,
            crate::sample::labels([("a", 5.0), ("b", 0.0)])
        );
        let old = sample_from(b"k", &v1::JoinedSample::from(&unsorted).encode_to_vec()).unwrap();
        assert_eq!(read[0].1.labels, old.labels);
    }

    #[test]
    fn blob_keys_tell_their_layout() {
        let key = log_key(7, 9);
        assert_eq!(key.len(), 13);
        assert_eq!(log_key_from(&key).unwrap(), (7, 9, RecordLayout::Fixed));
        assert_eq!(
            log_key_from(&key[..12]).unwrap(),
            (7, 9, RecordLayout::Protobuf)
        );
        let mut unknown = key.clone();
        unknown[12] = 2;
        let err = log_key_from(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown record layout 2"), "{err}");
        assert!(log_key_from(&key[..11]).is_err());
        for k in [key.clone(), key[..12].to_vec()] {
            assert_eq!(reorder_partition(&k).unwrap(), 7);
        }
        let sample_key = order_key(OrderKey {
            event_time_ms: 1,
            partition: 4,
            offset: 2,
        });
        assert_eq!(reorder_partition(&sample_key).unwrap(), 4);
        // A partition's blobs sort in the order they were cut.
        assert!(log_key(7, 9) < log_key(7, 10) && log_key(7, 300) < log_key(8, 0));
    }

    #[test]
    fn pending_batches_round_trip_and_reject_damage() {
        let batch = vec![PendingObservation {
            origin: OrderKey {
                event_time_ms: 12,
                partition: 1,
                offset: 99,
            },
            context: vec![0.5, -1.25],
            reward: true,
            weight: 2.0,
        }];
        let bytes = pending_bytes(&batch);
        assert_eq!(pending_from(b"k", &bytes).unwrap(), batch);
        assert!(pending_from(b"k", &bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[4 + 8 + 4 + 8] = 7;
        assert!(
            pending_from(b"k", &bad)
                .unwrap_err()
                .to_string()
                .contains("reward")
        );
    }
}
