//! Bulk loading at restart: the entries of many partitions in one pass over the segments.
//!
//! A batch holds records of every partition a loop turn touched, so one partition's
//! consecutive entries lie far apart (with 64 busy partitions, ~20 KB) and reading a
//! partition through `entries` costs about one O_DIRECT read per entry. Here the wanted
//! records of all partitions are sorted by position and every segment that holds some is read
//! once, front to back, in reads of up to [`BULK_READ_BYTES`]; each record is parsed at the
//! offset the index knows (checksum and all, as `entries` does) and its entry put in its
//! partition's slot. Long stretches holding no wanted record are skipped (see
//! [`BULK_SKIP_BYTES`]).
//!
//! Entries the replay already decoded (`preload`) are taken from there and not read: at a
//! restart, usually all of them.
//!
//! Memory: the decoded entries being returned, one position (~40 bytes) per wanted entry, one
//! planned read (~100 bytes) per [`BULK_READ_BYTES`] of them, and [`BULK_READS_IN_FLIGHT`]
//! read buffers — entries are decoded into their own allocations, never as views of them.

use phalanx_proto::LogEntry;

use super::index::EntryLoc;
use super::segment::gio;
use super::{WalStore, decode_entry};
use crate::error::{Result, StorageError};
use crate::types::{PartitionId, RecoveredPartition};

/// Size of one read of a bulk load. Large enough that per-read overhead (an io_uring round
/// trip, ~40 µs here) is small next to the transfer, small enough that the single buffer held
/// at a time stays modest and fits glommio's usual I/O memory (1 MiB, see
/// [`crate::IO_MEMORY_BYTES`]). A record larger than this is read whole, alone.
pub const BULK_READ_BYTES: u64 = 1 << 20;

/// A stretch of a segment at least this long holding no wanted record is skipped rather than
/// read through (a mostly dead segment). Equal to one read: skipping less would save less
/// than the read it costs, and with this rule a load never issues more reads than reading
/// every wanted segment whole — never one read per entry unless entries are that far apart.
pub(super) const BULK_SKIP_BYTES: u64 = BULK_READ_BYTES;

/// One wanted entry: where it is, and where its entry goes.
#[derive(Clone, Copy, Debug)]
struct Want {
    loc: EntryLoc,
    /// Position of its partition in `slots`.
    slot: usize,
    /// Position of the entry in its partition's entries.
    k: usize,
}

impl Want {
    fn start(&self) -> u64 {
        u64::from(self.loc.offset)
    }

    fn end(&self) -> u64 {
        u64::from(self.loc.offset) + u64::from(self.loc.len)
    }
}

/// Reads of a bulk load in flight at once: the disk reads ahead while entries are decoded.
/// The buffers in flight are this many × [`BULK_READ_BYTES`].
pub const BULK_READS_IN_FLIGHT: usize = 4;

/// One read of a bulk load: a stretch of one segment and the wants it covers.
struct Span {
    /// Where the read starts (block-aligned) and where the last wanted record ends.
    start: u64,
    end: u64,
    /// Bytes read (`end` rounded up to a block, less `start`).
    len: usize,
    /// The wants it covers, all in one segment (their first one's).
    wants: std::ops::Range<usize>,
}

/// A partition being loaded.
struct Slot {
    partition: PartitionId,
    /// First entry index (floor + 1).
    first: u64,
    loaded: Option<RecoveredPartition>,
}

impl WalStore {
    /// [`crate::LogStore::load_partitions`] for the native WAL (see the module docs).
    pub(super) async fn load_bulk(
        &self,
        partitions: &[PartitionId],
    ) -> Result<Vec<(PartitionId, Option<RecoveredPartition>)>> {
        self.poison.check()?;
        // One slot per distinct id, in first-seen order.
        let mut slot_of = std::collections::HashMap::with_capacity(partitions.len());
        let mut slots: Vec<Slot> = Vec::with_capacity(partitions.len());
        for &p in partitions {
            if slot_of.contains_key(&p) {
                continue;
            }
            slot_of.insert(p, slots.len());
            let Some(state) = self.index.state(p) else {
                slots.push(Slot { partition: p, first: 0, loaded: None });
                continue;
            };
            slots.push(Slot {
                partition: p,
                first: state.first_index(),
                loaded: Some(RecoveredPartition {
                    hard_state: state.hard_state,
                    floor: (state.floor.index, state.floor.term),
                    // Placeholders (index 0, which no entry has), each overwritten by its
                    // entry below (the index maps every slot to exactly one record).
                    entries: vec![LogEntry::default(); state.len() as usize],
                }),
            });
        }
        // Entries the replay decoded go to their slots first, in log order: a record is
        // replaced (overwritten, relocated) only by a later one, so the last copy of each
        // index that lands is the one the index points at. A copy of a compacted index, or
        // one past a partition's end (truncated), has no slot.
        for e in self.preloaded.take().into_entries() {
            let Some(slot) = slot_of.get(&e.partition).map(|&s| &mut slots[s]) else { continue };
            let k = e.entry.index.checked_sub(slot.first).and_then(|k| usize::try_from(k).ok());
            if let Some(place) = slot.loaded.as_mut().zip(k).and_then(|(l, k)| l.entries.get_mut(k)) {
                *place = e.entry;
            }
        }
        // Only what is missing, or not of the term the index holds, is read.
        let mut wants = Vec::new();
        for (slot, s) in slots.iter().enumerate() {
            let Some(loaded) = &s.loaded else { continue };
            let end = s.first + loaded.entries.len() as u64;
            let locs = self.index.locs(s.partition, s.first, end);
            wants.extend(
                locs.zip(&loaded.entries)
                    .enumerate()
                    .filter(|(_, (loc, e))| e.index == 0 || e.term != loc.term)
                    .map(|(k, (loc, _))| Want { loc: *loc, slot, k }),
            );
        }
        wants.sort_unstable_by_key(|w| (w.loc.seg, w.loc.offset));
        let mut spans = Vec::new();
        let mut i = 0;
        while i < wants.len() {
            let span = self.plan_span(&wants, i, &slots)?;
            i = span.wants.end;
            spans.push(span);
        }
        // Reads are issued ahead of the decoding, BULK_READS_IN_FLIGHT at a time, so the disk
        // reads the next spans while this one's entries are checked and decoded.
        let start = |s: &Span| -> Result<_> {
            let (file, at, len) = (self.span_segment(&wants, s)?.file.clone(), s.start, s.len);
            Ok(glommio::spawn_local(async move { file.read_at_aligned(at, len).await }))
        };
        let mut reads = std::collections::VecDeque::new();
        for s in spans.iter().take(BULK_READS_IN_FLIGHT) {
            reads.push_back(start(s)?);
        }
        for (k, span) in spans.iter().enumerate() {
            let read = reads.pop_front().ok_or_else(|| StorageError::Backend {
                backend: "wal",
                reason: "bulk load: a planned read was not issued".into(),
            })?;
            if let Some(next) = spans.get(k + BULK_READS_IN_FLIGHT) {
                reads.push_back(start(next)?);
            }
            let path = &self.span_segment(&wants, span)?.path;
            let data = read.await.map_err(|e| gio("read", path, e))?;
            self.decode_span(&wants, span, path, &data, &mut slots)?;
        }
        // Answer in the order asked; an id asked twice gets a copy (walking backwards, so the
        // copies are made before the first occurrence takes the original).
        let mut out = Vec::with_capacity(partitions.len());
        let mut seen = vec![0usize; slots.len()];
        for &p in partitions {
            if let Some(&s) = slot_of.get(&p) {
                seen[s] += 1;
            }
        }
        for &p in partitions.iter().rev() {
            let Some(&s) = slot_of.get(&p) else { continue };
            seen[s] -= 1;
            let loaded = if seen[s] == 0 { slots[s].loaded.take() } else { slots[s].loaded.clone() };
            out.push((slots[s].partition, loaded));
        }
        out.reverse();
        Ok(out)
    }

    /// The span of one segment starting at `wants[i]` that one read covers.
    fn plan_span(&self, wants: &[Want], i: usize, slots: &[Slot]) -> Result<Span> {
        let head = wants[i];
        let seq = head.loc.seg;
        let seg = self.segment(seq).ok_or_else(|| {
            let s = &slots[head.slot];
            StorageError::Corrupt {
                file: self.dir.clone(),
                offset: None,
                reason: format!(
                    "partition {}: entry {} points into missing segment {seq}",
                    s.partition,
                    s.first + head.k as u64
                ),
            }
        })?;
        let block = seg.block;
        let start = head.start() - head.start() % block;
        let mut end = head.end();
        let mut j = i + 1;
        while let Some(w) = wants.get(j) {
            if w.loc.seg != seq
                || w.start().saturating_sub(end) >= BULK_SKIP_BYTES
                || super::align_up(end.max(w.end()), block) - start > BULK_READ_BYTES
            {
                break;
            }
            end = end.max(w.end());
            j += 1;
        }
        let len = (super::align_up(end, block) - start) as usize;
        Ok(Span { start, end, len, wants: i..j })
    }

    /// The segment `span` reads (checked by `plan_span`; the load holds the store, so it
    /// cannot have been recycled since).
    fn span_segment(&self, wants: &[Want], span: &Span) -> Result<&super::segment::Segment> {
        let seq = wants[span.wants.start].loc.seg;
        self.segment(seq).ok_or_else(|| StorageError::Backend {
            backend: "wal",
            reason: format!("bulk load: segment {seq} is no longer in use"),
        })
    }

    /// Puts the entries of `span`, whose bytes `data` holds (read from `path`), in their slots.
    fn decode_span(
        &self,
        wants: &[Want],
        span: &Span,
        path: &std::path::Path,
        data: &[u8],
        slots: &mut [Slot],
    ) -> Result<()> {
        self.entry_reads.set(self.entry_reads.get() + 1);
        if (data.len() as u64) < span.end - span.start {
            return Err(StorageError::corrupt(
                path,
                span.start + data.len() as u64,
                "segment ends inside a record",
            ));
        }
        for w in &wants[span.wants.clone()] {
            let at = (w.start() - span.start) as usize;
            let rec = &data[at..at + w.loc.len as usize];
            let slot = &mut slots[w.slot];
            let index = slot.first + w.k as u64;
            // Decoded from a slice: the entry copies its bytes and does not keep the read
            // buffer (mostly other partitions' records) alive.
            let e = decode_entry(rec, &w.loc, slot.partition, index, |body| {
                LogEntry::decode_from_slice(&rec[body])
            })
            .map_err(|reason| StorageError::corrupt(path, w.start(), reason))?;
            if let Some(place) = slot.loaded.as_mut().and_then(|l| l.entries.get_mut(w.k)) {
                *place = e;
            }
        }
        Ok(())
    }
}
