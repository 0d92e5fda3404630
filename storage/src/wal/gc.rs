//! Segment garbage collection.
//!
//! A segment can be recycled once nothing in it is needed: no live entry, and no latest hard
//! state, floor or metadata value of anyone. Compaction and truncation free most segments by
//! themselves, oldest first. When an idle partition pins the oldest segment while the log
//! keeps growing, the collector *relocates* that segment's few live records forward: it
//! walks the segment a bounded chunk per write and copies what is still live into the batch
//! being written (before the batch's own records, so the batch's changes apply on top).
//! Relocated entries use the `ENTRY_RELOCATED` kind, which fills its slot without truncating
//! the younger entries that recovery will already have replayed when the oldest segment is
//! gone. Once the walk is done the segment is free and recycled at the next segment switch.

use std::collections::HashSet;

use bytes::Bytes;
use phalanx_proto::HardState;

use super::format::{BATCH_HEADER_BYTES, BatchHeader, HeaderAt, Record, align_up, parse_record, record_len};
use super::index::Index;
use super::segment::{Segment, gio};
use crate::error::{Result, StorageError};
use crate::types::{LogPosition, PartitionId};

/// Where the collector is in the segment it is emptying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GcCursor {
    /// The segment being emptied (the oldest).
    pub seq: u64,
    /// Offset of the next batch to walk.
    pub pos: u64,
}

/// A live entry copied forward: its fixed fields and protobuf body.
#[derive(Clone, Debug)]
pub(crate) struct RelocEntry {
    pub partition: PartitionId,
    pub index: u64,
    pub term: u64,
    pub proto: Bytes,
}

/// Live records to copy into the next batch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Relocation {
    pub entries: Vec<RelocEntry>,
    pub hard_states: Vec<(PartitionId, HardState)>,
    pub floors: Vec<(PartitionId, LogPosition)>,
    pub meta: Vec<(Bytes, Bytes)>,
    /// Encoded size of all of the above.
    pub bytes: usize,
}

impl Relocation {
    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.hard_states.is_empty()
            && self.floors.is_empty()
            && self.meta.is_empty()
    }
}

/// Walks batches of `seg` from the cursor and collects what is still live, stopping after
/// about `budget` bytes of copies; never returns more than `hard_max` bytes (then it returns
/// nothing and leaves the cursor, so a big user batch simply skips collection this time).
pub(crate) async fn collect(
    seg: &Segment,
    cursor: &mut GcCursor,
    index: &Index,
    budget: usize,
    hard_max: usize,
) -> Result<Relocation> {
    let mut out = Relocation::default();
    let mut seen_hs = HashSet::new();
    let mut seen_floor = HashSet::new();
    let mut seen_meta = HashSet::new();
    let mut pos = cursor.pos;
    // Read about one budget of the segment at a time; a batch larger than that is read whole.
    while pos < seg.end && out.bytes < budget {
        let want = align_up(budget.max(BATCH_HEADER_BYTES) as u64, seg.block).min(seg.end - pos);
        let chunk =
            seg.file.read_at_aligned(pos, want as usize).await.map_err(|e| gio("read", &seg.path, e))?;
        let h = match BatchHeader::decode(&chunk) {
            HeaderAt::Valid(h) if h.segment_seq == seg.seq => h,
            _ => {
                return Err(StorageError::corrupt(
                    &seg.path,
                    pos,
                    "batch unreadable during garbage collection",
                ));
            }
        };
        let batch_len = align_up(BATCH_HEADER_BYTES as u64 + u64::from(h.body_len), seg.block);
        let whole;
        let data: &[u8] = if batch_len as usize <= chunk.len() {
            &chunk
        } else {
            whole = seg
                .file
                .read_at_aligned(pos, batch_len as usize)
                .await
                .map_err(|e| gio("read", &seg.path, e))?;
            &whole
        };
        // Walk every whole batch in `data`.
        let mut off = 0u64;
        let mut progressed = false;
        while off + BATCH_HEADER_BYTES as u64 <= data.len() as u64 && pos + off < seg.end {
            let h = match BatchHeader::decode(&data[off as usize..]) {
                HeaderAt::Valid(h) if h.segment_seq == seg.seq => h,
                _ => {
                    return Err(StorageError::corrupt(
                        &seg.path,
                        pos + off,
                        "batch unreadable during garbage collection",
                    ));
                }
            };
            let body_start = off + BATCH_HEADER_BYTES as u64;
            let body_end = body_start + u64::from(h.body_len);
            if body_end > data.len() as u64 {
                break;
            }
            let mut batch = Relocation::default();
            let body = &data[body_start as usize..body_end as usize];
            let mut r = 0usize;
            while r < body.len() {
                let rec_pos = pos + body_start + r as u64;
                let (rec, n) = parse_record(&body[r..], true)
                    .map_err(|reason| StorageError::corrupt(&seg.path, rec_pos, reason))?;
                live_part(
                    &rec,
                    seg.seq,
                    rec_pos as u32,
                    index,
                    &mut batch,
                    (&mut seen_hs, &mut seen_floor, &mut seen_meta),
                );
                r += n;
            }
            if out.bytes + batch.bytes > hard_max {
                if !progressed && out.is_empty() {
                    // This batch alone does not fit beside the user's batch: try next time.
                    return Ok(Relocation::default());
                }
                break;
            }
            out.entries.extend(batch.entries);
            out.hard_states.extend(batch.hard_states);
            out.floors.extend(batch.floors);
            out.meta.extend(batch.meta);
            out.bytes += batch.bytes;
            off = align_up(body_end, seg.block);
            progressed = true;
            if out.bytes >= budget {
                break;
            }
        }
        if !progressed {
            break;
        }
        pos += off;
    }
    cursor.pos = pos.min(seg.end);
    Ok(out)
}

type Seen<'a> = (&'a mut HashSet<PartitionId>, &'a mut HashSet<PartitionId>, &'a mut HashSet<Bytes>);

/// Adds `rec` to `out` if it is still live.
fn live_part(rec: &Record<'_>, seg: u64, offset: u32, index: &Index, out: &mut Relocation, seen: Seen<'_>) {
    let (seen_hs, seen_floor, seen_meta) = seen;
    match *rec {
        Record::Entry { partition, index: i, term, proto, .. } => {
            if index.entry_is_live(partition, i, seg, offset) {
                out.bytes += record_len(super::format::ENTRY_PREFIX_BYTES + proto.len());
                out.entries.push(RelocEntry {
                    partition,
                    index: i,
                    term,
                    proto: Bytes::copy_from_slice(proto),
                });
            }
        }
        Record::HardState { partition, .. } => {
            if let Some(hs) = index.hard_state_in(partition, seg).filter(|_| seen_hs.insert(partition)) {
                out.bytes += record_len(32);
                out.hard_states.push((partition, hs));
            }
        }
        Record::Snapshot { partition, .. } | Record::Compact { partition, .. } => {
            if let Some(f) = index.floor_in(partition, seg).filter(|_| seen_floor.insert(partition)) {
                out.bytes += record_len(24);
                out.floors.push((partition, f));
            }
        }
        Record::MetaSet { key, .. } => {
            let key = Bytes::copy_from_slice(key);
            if let Some(v) = index.meta_in(&key, seg).filter(|_| seen_meta.insert(key.clone())) {
                out.bytes += record_len(4 + key.len() + v.len());
                out.meta.push((key, v));
            }
        }
        Record::Remove { .. } | Record::MetaDelete { .. } => {}
    }
}
