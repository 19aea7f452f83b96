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
pub const STATE_FORMAT_VERSION: u16 = 2;

/// The oldest state format this build reads. Format 1 kept one reorder
/// entry per buffered sample (keyed by [`order_key`]); format 2 keeps the
/// sample log's blobs (keyed by [`log_key`]). A format-1 store restores,
/// and its next checkpoint rewrites the buffered samples as blobs and
/// deletes the old entries in the same write.
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

/// Key of a blob of the sample log ([`crate::sample_log`]): partition,
/// then the blob's number, big-endian, so a partition's blobs sort in
/// the order they were cut.
pub fn log_key(partition: u32, blob: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&blob.to_be_bytes());
    out
}

/// Decodes [`log_key`] into (partition, blob number).
pub fn log_key_from(bytes: &[u8]) -> Result<(u32, u64), CorruptState> {
    let arr: [u8; 12] = bytes
        .try_into()
        .map_err(|_| CorruptState::new(Table::Reorder, bytes, "key is not 12 bytes"))?;
    Ok((
        u32::from_be_bytes(arr[..4].try_into().expect("4 bytes")),
        u64::from_be_bytes(arr[4..].try_into().expect("8 bytes")),
    ))
}

/// The partition of a reorder-table key of either format: a sample log
/// blob's ([`log_key`], 12 bytes) or a format-1 sample's ([`order_key`],
/// 20 bytes).
pub fn reorder_partition(key: &[u8]) -> Result<u32, CorruptState> {
    match key.len() {
        12 => log_key_from(key).map(|(partition, _)| partition),
        20 => order_key_from(key).map(|k| k.partition),
        _ => Err(CorruptState::new(
            Table::Reorder,
            key,
            "key is neither 12 bytes (a blob) nor 20 (a format-1 sample)",
        )),
    }
}

/// Appends one record of the sample log to `out`: the sample's offset
/// (u64), the length of its bytes (u32), both little-endian, then its
/// [`sample_bytes`]. Written into room reserved for a bound on the
/// record's size, the length filled in once the sample is written: no
/// sizing pass and no zeroing (every sample that enters the reorder
/// buffer is appended here, on the engine's thread).
pub fn put_sample_record(out: &mut Vec<u8>, offset: u64, sample: &Sample) {
    let bound = RECORD_HEADER + sample_len_bound(sample);
    write_bounded(out, bound, |w| {
        w.put(&offset.to_le_bytes());
        let len_at = w.pos;
        w.put(&[0; 4]);
        write_sample_into(sample, w);
        let len = (w.pos - RECORD_HEADER) as u32;
        w.put_at(len_at, &len.to_le_bytes());
    });
}

/// A sample log record's offset and length.
const RECORD_HEADER: usize = 12;

/// Decodes the records of a blob ([`put_sample_record`]) into
/// (offset, sample), in the order they were appended.
pub fn sample_records_from(key: &[u8], bytes: &[u8]) -> Result<Vec<(u64, Sample)>, CorruptState> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let truncated = || CorruptState::new(Table::Reorder, key, "truncated sample record");
        let header: [u8; 12] = rest
            .get(..12)
            .ok_or_else(truncated)?
            .try_into()
            .expect("12");
        let offset = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        let body = rest.get(12..12 + len).ok_or_else(truncated)?;
        records.push((offset, sample_from(key, body)?));
        rest = &rest[12 + len..];
    }
    Ok(records)
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

/// A sample as stored in the reorder table: its wire form, a
/// `JoinedSample`.
pub fn sample_bytes(sample: &Sample) -> Vec<u8> {
    let mut out = Vec::new();
    write_sample(sample, &mut out);
    out
}

/// Appends [`sample_bytes`] to `out`: the `JoinedSample` fields written
/// straight from the sample (no message with its own copies of the strings
/// and a label map built first; every sample that enters the reorder
/// buffer is written once). Labels go out in the sample's order (sorted by
/// name), so equal samples give equal bytes; prost writes the same fields,
/// and a map's entries in whatever order its `HashMap` has.
pub fn write_sample(sample: &Sample, out: &mut Vec<u8>) {
    write_sized(out, sample_len(sample), |w| write_sample_into(sample, w));
}

/// Appends `len` bytes to `out` written by `write`: sized once and written
/// in place, one capacity check per record rather than one per field and
/// byte. Panics if `write` writes more or fewer than `len` (a bug of the
/// sizing), rather than store a record with a wrong length.
fn write_sized(out: &mut Vec<u8>, len: usize, write: impl FnOnce(&mut Writer<'_>)) {
    let written = write_bounded(out, len, write);
    assert_eq!(written, len, "the sizing and the writing agree");
}

/// Appends what `write` writes, at most `bound` bytes, to `out`, into its
/// spare capacity (reserved here; never zeroed first). Returns how many
/// bytes were written. Writing past `bound` panics before anything is
/// appended.
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

/// `JoinedSample` field keys: (field number << 3) | wire type, one byte
/// each (every field number is below 16).
mod field {
    pub const DOC_ID: u8 = 1 << 3;
    pub const VERSION: u8 = (2 << 3) | 2;
    pub const EVENT_TIME: u8 = 3 << 3;
    pub const CONTEXT: u8 = (4 << 3) | 2;
    pub const LABEL: u8 = (5 << 3) | 2;
    pub const WEIGHT: u8 = (6 << 3) | 5;
    pub const SAMPLE_ID: u8 = (7 << 3) | 2;
    /// In a label entry.
    pub const LABEL_NAME: u8 = (1 << 3) | 2;
    /// In a label entry.
    pub const LABEL_VALUE: u8 = (2 << 3) | 5;
}

/// Bytes of a length-delimited field holding `len` bytes (key included);
/// an empty one is left out, as proto3 does.
fn delimited_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(len as u64) + len
    }
}

/// Bytes of a varint field (key included); 0 is left out.
fn varint_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(value)
    }
}

/// Bytes of a `float` field (key included); 0 is left out.
fn f32_field_len(value: f32) -> usize {
    if value == 0.0 { 0 } else { 5 }
}

/// Bytes of a label entry's body (the map entry message).
fn label_body_len(name: &str, value: f32) -> usize {
    delimited_len(name.len()) + f32_field_len(value)
}

/// Bytes [`write_sample`] writes for `sample`.
fn sample_len(sample: &Sample) -> usize {
    varint_field_len(sample.doc_id)
        + delimited_len(sample.version.len())
        + varint_field_len(sample.event_time_ms as u64)
        + delimited_len(4 * sample.context.len())
        + sample
            .labels
            .iter()
            .map(|(name, value)| {
                1 + {
                    let body = label_body_len(name, *value);
                    prost::encoding::encoded_len_varint(body as u64) + body
                }
            })
            .sum::<usize>()
        + f32_field_len(sample.weight)
        + sample
            .sample_id
            .as_ref()
            .map_or(0, |id| delimited_len(id.len()))
}

/// At least [`sample_len`]`(sample)`, cheaper to compute: every varint
/// counted at its longest.
fn sample_len_bound(sample: &Sample) -> usize {
    const VARINT: usize = 10;
    let delimited = |len: usize| 1 + VARINT + len;
    (1 + VARINT)
        + delimited(sample.version.len())
        + (1 + VARINT)
        + delimited(4 * sample.context.len())
        + sample
            .labels
            .iter()
            .map(|(name, _)| 1 + VARINT + delimited(name.len()) + 5)
            .sum::<usize>()
        + 5
        + sample
            .sample_id
            .as_ref()
            .map_or(0, |id| delimited(id.len()))
}

/// Writes the fields [`sample_len`] counted, in field order.
fn write_sample_into(sample: &Sample, w: &mut Writer<'_>) {
    if sample.doc_id != 0 {
        w.byte(field::DOC_ID);
        w.varint(sample.doc_id);
    }
    w.str_field(field::VERSION, &sample.version);
    if sample.event_time_ms != 0 {
        w.byte(field::EVENT_TIME);
        w.varint(sample.event_time_ms as u64);
    }
    if !sample.context.is_empty() {
        w.byte(field::CONTEXT);
        w.varint(4 * sample.context.len() as u64);
        w.f32s(&sample.context);
    }
    for (name, value) in &sample.labels {
        // A label is a map entry: present even when both of its fields
        // are defaults (an empty name and 0).
        w.byte(field::LABEL);
        w.varint(label_body_len(name, *value) as u64);
        w.str_field(field::LABEL_NAME, name);
        w.f32_field(field::LABEL_VALUE, *value);
    }
    w.f32_field(field::WEIGHT, sample.weight);
    if let Some(id) = &sample.sample_id {
        w.str_field(field::SAMPLE_ID, id);
    }
}

/// Writes into room of `out`'s spare capacity (see [`write_bounded`]);
/// writing past its end panics.
struct Writer<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    pos: usize,
}

impl Writer<'_> {
    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf[self.pos].write(b);
        self.pos += 1;
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].write_copy_of_slice(bytes);
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

    /// A length-delimited string field; an empty one is left out.
    #[inline]
    fn str_field(&mut self, key: u8, value: &str) {
        if !value.is_empty() {
            self.byte(key);
            self.varint(value.len() as u64);
            self.put(value.as_bytes());
        }
    }

    /// A `float` field; 0 is left out.
    #[inline]
    fn f32_field(&mut self, key: u8, value: f32) {
        if value != 0.0 {
            self.byte(key);
            self.put(&value.to_le_bytes());
        }
    }

    /// `values` little-endian, in bulk.
    fn f32s(&mut self, values: &[f32]) {
        let dst = &mut self.buf[self.pos..self.pos + 4 * values.len()];
        for (dst, x) in dst.chunks_exact_mut(4).zip(values) {
            dst.write_copy_of_slice(&x.to_le_bytes());
        }
        self.pos += 4 * values.len();
    }
}

/// Decodes [`sample_bytes`].
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

impl Cursor<'_> {
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

    proptest::proptest! {
        /// `sample_bytes` decodes, by prost, to the message prost would have
        /// written, and back to the sample; with at most one label (no map
        /// order to differ) the bytes are prost's own.
        #[test]
        fn sample_bytes_are_a_joined_sample(
            doc_id in proptest::prelude::any::<u64>(),
            // Names past 127 bytes take a two-byte length.
            version in "[a-z-]{1,12}|[a-z]{120,140}",
            event_time_ms in -crate::sample::MAX_EVENT_TIME_MS..=crate::sample::MAX_EVENT_TIME_MS,
            context in proptest::collection::vec(-1e6_f32..1e6, 0..40),
            labels in proptest::collection::btree_map("[a-z_]{0,10}", proptest::prop_oneof![
                proptest::prelude::Just(0.0_f32),
                proptest::prelude::Just(-0.0_f32),
                -1e3_f32..1e3,
            ], 0..4),
            weight in proptest::prop_oneof![proptest::prelude::Just(1.0_f32), 0.001_f32..100.0],
            sample_id in proptest::option::of("[a-z0-9]{0,8}"),
        ) {
            let sample = Sample {
                doc_id,
                version: version.into(),
                event_time_ms,
                context,
                labels: labels.into_iter().map(|(name, value)| (name.into(), value)).collect(),
                weight,
                sample_id: sample_id.filter(|id| !id.is_empty()).map(Into::into),
            };
            let bytes = sample_bytes(&sample);
            let wire = v1::JoinedSample::decode(bytes.as_slice()).unwrap();
            proptest::prop_assert_eq!(&wire, &v1::JoinedSample::from(&sample));
            proptest::prop_assert_eq!(sample_from(b"k", &bytes).unwrap(), sample.clone());
            // A log record is offset, length and the same bytes; records
            // appended one after another decode back in order.
            let mut log = Vec::new();
            put_sample_record(&mut log, doc_id, &sample);
            proptest::prop_assert_eq!(&log[..8], &doc_id.to_le_bytes());
            proptest::prop_assert_eq!(&log[8..12], &(bytes.len() as u32).to_le_bytes());
            proptest::prop_assert_eq!(&log[12..], bytes.as_slice());
            put_sample_record(&mut log, 7, &sample);
            proptest::prop_assert_eq!(
                sample_records_from(b"k", &log).unwrap(),
                vec![(doc_id, sample.clone()), (7, sample.clone())]
            );
            if sample.labels.len() <= 1 {
                proptest::prop_assert_eq!(bytes, v1::JoinedSample::from(&sample).encode_to_vec());
            }
        }
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
