//! The engine's small named state (the `meta` table): format version,
//! next offsets, partition clocks, released watermark, version registry,
//! counters. The registry is stored as `posterior.v1` messages, so adding a
//! field to a version spec never invalidates a checkpoint.

use std::collections::BTreeMap;

use posterior_proto::v1;
use prost::Message;

use crate::codec::{
    CorruptState, Cursor, OLDEST_STATE_FORMAT_VERSION, STATE_FORMAT_VERSION, Table,
};
use crate::control::Scheduled;
use crate::engine::Counters;
use crate::registry::Registry;
use crate::version::VersionSpec;
use crate::watermark::PartitionClock;

/// Meta entry names.
pub const FORMAT: &[u8] = b"format";
/// Next offset per partition.
pub const OFFSETS: &[u8] = b"offsets";
/// Partition clocks.
pub const CLOCKS: &[u8] = b"clocks";
/// Everything below this event time was released.
pub const RELEASED: &[u8] = b"released_below_ms";
/// The version registry.
pub const REGISTRY: &[u8] = b"registry";
/// Outcome counters.
pub const COUNTERS: &[u8] = b"counters";
/// Admin commands waiting and applied (absent in states written before
/// the control path existed, which read as empty).
pub const CONTROL: &[u8] = b"control";

/// Encodes the state format version.
pub fn format_bytes() -> Vec<u8> {
    STATE_FORMAT_VERSION.to_le_bytes().to_vec()
}

/// Checks the stored format version: this build's, or an older one it
/// still reads.
pub fn check_format(bytes: &[u8]) -> Result<(), CorruptState> {
    match <[u8; 2]>::try_from(bytes).map(u16::from_le_bytes) {
        Ok(OLDEST_STATE_FORMAT_VERSION..=STATE_FORMAT_VERSION) => Ok(()),
        Ok(other) => Err(CorruptState::new(
            Table::Meta,
            FORMAT,
            format!(
                "state format {other}, this build reads {OLDEST_STATE_FORMAT_VERSION} to \
                 {STATE_FORMAT_VERSION}"
            ),
        )),
        Err(_) => Err(CorruptState::new(Table::Meta, FORMAT, "not 2 bytes")),
    }
}

/// Encodes next offsets.
pub fn offsets_bytes(offsets: &BTreeMap<u32, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(offsets.len() * 12);
    for (p, o) in offsets {
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&o.to_le_bytes());
    }
    out
}

/// Decodes [`offsets_bytes`].
pub fn offsets_from(bytes: &[u8]) -> Result<BTreeMap<u32, u64>, CorruptState> {
    if !bytes.len().is_multiple_of(12) {
        return Err(CorruptState::new(
            Table::Meta,
            OFFSETS,
            "length not a multiple of 12",
        ));
    }
    let mut r = Cursor { bytes, pos: 0 };
    let mut out = BTreeMap::new();
    while r.pos < bytes.len() {
        let p = r.u32().expect("length checked");
        out.insert(p, r.u64().expect("length checked"));
    }
    Ok(out)
}

/// Encodes partition clocks.
pub fn clocks_bytes(clocks: &BTreeMap<u32, PartitionClock>) -> Vec<u8> {
    let mut out = Vec::with_capacity(clocks.len() * 14);
    for (p, c) in clocks {
        out.extend_from_slice(&p.to_le_bytes());
        out.push(u8::from(c.max_event_ms.is_some()) | (u8::from(c.idle) << 1));
        out.extend_from_slice(&c.max_event_ms.unwrap_or(0).to_le_bytes());
    }
    out
}

/// Decodes [`clocks_bytes`].
pub fn clocks_from(bytes: &[u8]) -> Result<BTreeMap<u32, PartitionClock>, CorruptState> {
    if !bytes.len().is_multiple_of(13) {
        return Err(CorruptState::new(
            Table::Meta,
            CLOCKS,
            "length not a multiple of 13",
        ));
    }
    let mut r = Cursor { bytes, pos: 0 };
    let mut out = BTreeMap::new();
    while r.pos < bytes.len() {
        let p = r.u32().expect("length checked");
        let flags = r.u8().expect("length checked");
        let t = r.i64().expect("length checked");
        out.insert(
            p,
            PartitionClock {
                max_event_ms: (flags & 1 == 1).then_some(t),
                idle: flags & 2 == 2,
            },
        );
    }
    Ok(out)
}

/// Encodes the registry as a `ListVersionsResponse`, in creation order.
pub fn registry_bytes(registry: &Registry) -> Vec<u8> {
    v1::ListVersionsResponse {
        versions: registry
            .entries()
            .iter()
            .map(|e| v1::VersionInfo {
                spec: Some(v1::VersionSpec::from(&e.spec)),
                retired: e.retired,
                keys: 0,
            })
            .collect(),
    }
    .encode_to_vec()
}

/// Decodes [`registry_bytes`], re-creating versions in order so their ids
/// are the stored ones.
pub fn registry_from(bytes: &[u8]) -> Result<Registry, CorruptState> {
    let corrupt = |e: &dyn std::fmt::Display| CorruptState::new(Table::Meta, REGISTRY, e);
    let list = v1::ListVersionsResponse::decode(bytes).map_err(|e| corrupt(&e))?;
    let mut registry = Registry::default();
    for info in list.versions {
        let spec = VersionSpec::try_from(info.spec.unwrap_or_default()).map_err(|e| corrupt(&e))?;
        let name = spec.name.clone();
        registry.create(spec).map_err(|e| corrupt(&e))?;
        if info.retired {
            registry.retire(&name).map_err(|e| corrupt(&e))?;
        }
    }
    Ok(registry)
}

/// Encodes counters: applied, updates, then (reason, count) pairs.
pub fn counters_bytes(counters: &Counters) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&counters.applied.to_le_bytes());
    out.extend_from_slice(&counters.updates.to_le_bytes());
    for (reason, n) in &counters.dead {
        out.push(reason.len() as u8);
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

/// Decodes [`counters_bytes`]; reasons must be ones this build knows.
pub fn counters_from(bytes: &[u8]) -> Result<Counters, CorruptState> {
    let corrupt = |r: &str| CorruptState::new(Table::Meta, COUNTERS, r);
    let mut r = Cursor { bytes, pos: 0 };
    let applied = r.u64().ok_or_else(|| corrupt("truncated"))?;
    let updates = r.u64().ok_or_else(|| corrupt("truncated"))?;
    let mut dead = BTreeMap::new();
    while r.pos < bytes.len() {
        let len = r.u8().ok_or_else(|| corrupt("truncated"))? as usize;
        let name = bytes
            .get(r.pos..r.pos + len)
            .ok_or_else(|| corrupt("truncated reason"))?;
        r.pos += len;
        let reason = crate::deadletter::REASONS
            .iter()
            .find(|known| known.as_bytes() == name)
            .ok_or_else(|| corrupt("unknown dead-letter reason"))?;
        dead.insert(*reason, r.u64().ok_or_else(|| corrupt("truncated"))?);
    }
    Ok(Counters {
        applied,
        updates,
        dead,
    })
}

/// Encodes the control backlog: waiting commands in application order,
/// applied ids, the `control` topic's next offset.
pub fn control_bytes<'a>(
    scheduled: impl Iterator<Item = &'a Scheduled>,
    applied_ids: impl Iterator<Item = &'a String>,
    next_offset: Option<u64>,
) -> Vec<u8> {
    v1::ControlBacklog {
        scheduled: scheduled.map(|c| c.wire.clone()).collect(),
        applied_ids: applied_ids.cloned().collect(),
        next_offset,
    }
    .encode_to_vec()
}

/// Decodes [`control_bytes`]: the waiting commands in order, the applied
/// ids, the next offset.
pub fn control_from(bytes: &[u8]) -> Result<ControlBacklog, CorruptState> {
    let corrupt = |e: &dyn std::fmt::Display| CorruptState::new(Table::Meta, CONTROL, e);
    let backlog = v1::ControlBacklog::decode(bytes).map_err(|e| corrupt(&e))?;
    let scheduled = backlog
        .scheduled
        .into_iter()
        .map(|wire| Scheduled::try_from(wire).map_err(|e| corrupt(&e)))
        .collect::<Result<_, _>>()?;
    Ok(ControlBacklog {
        scheduled,
        applied_ids: backlog.applied_ids,
        next_offset: backlog.next_offset,
    })
}

/// The decoded control backlog.
#[derive(Debug, Default)]
pub struct ControlBacklog {
    /// Waiting commands, in application order.
    pub scheduled: Vec<Scheduled>,
    /// Ids applied so far.
    pub applied_ids: Vec<String>,
    /// Next offset of the `control` topic.
    pub next_offset: Option<u64>,
}
