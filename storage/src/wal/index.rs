//! The WAL's in-memory index: for every partition its floor, hard state and the location of
//! every entry (segment, offset), so reads never scan; plus how much live data each segment
//! holds, so garbage collection knows when a segment is no longer needed.
//!
//! The same `apply` function replays records at recovery and applies a batch just written,
//! so the running store and a recovered one can never disagree about what a record means.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use phalanx_proto::HardState;

use super::format::Record;
use crate::types::{LogPosition, PartitionId, PartitionState};

/// Term marking a slot whose entry is not known yet. Only exists during recovery, when a
/// garbage-collected segment's live entries are replayed after younger records (their
/// relocated copies come later in the log). Real entries have terms ≥ 1.
const HOLE_TERM: u64 = 0;

/// Most slots a single record may leave unknown below it during recovery.
const HOLES_MAX: u64 = 1 << 24;

/// Largest log index a record may carry (an entry's or a floor's): one less than the largest
/// `u64`, so the index after it, where a partition's next entry or its first one goes, is
/// still a number. Raft's indexes grow by one from 1 and never come near it; a record beyond
/// is damage.
const LAST_INDEX_MAX: u64 = u64::MAX - 1;

/// Bytes of the smallest record that can fill a hole (an entry record with an empty body).
/// Every hole must be filled by such a record later in the log, so a log of `n` bytes can
/// leave at most `n / HOLE_FILLER_BYTES_MIN` holes at once: the bound recovery enforces
/// ([`Index::limit_holes`]), which keeps the memory of a damaged-but-checksummed log's
/// holes proportional to the log (24 bytes of index per 36 bytes of log) instead of
/// [`HOLES_MAX`] slots per record.
pub(crate) const HOLE_FILLER_BYTES_MIN: u64 =
    (super::format::RECORD_HEADER_BYTES + super::format::ENTRY_PREFIX_BYTES) as u64;

/// Where an entry's record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    /// Segment sequence number.
    pub seg: u64,
    /// Offset of the record (its header) in the segment.
    pub offset: u32,
    /// Length of the record, header included.
    pub len: u32,
    /// The entry's term.
    pub term: u64,
}

impl EntryLoc {
    const HOLE: EntryLoc = EntryLoc { seg: 0, offset: 0, len: 0, term: HOLE_TERM };

    fn is_hole(&self) -> bool {
        self.term == HOLE_TERM
    }
}

/// One partition's index.
#[derive(Debug, Default)]
pub(crate) struct PartIndex {
    /// Last discarded position.
    pub floor: LogPosition,
    /// `locs[k]` is the entry at index `floor.index + 1 + k`.
    pub locs: VecDeque<EntryLoc>,
    /// Latest hard state.
    pub hard_state: HardState,
    /// Segment holding the latest hard state record.
    pub hs_seg: Option<u64>,
    /// Segment holding the record that set the floor.
    pub floor_seg: Option<u64>,
}

impl PartIndex {
    fn state(&self) -> PartitionState {
        let last = match self.locs.back() {
            Some(l) => LogPosition::new(self.floor.index + self.locs.len() as u64, l.term),
            None => self.floor,
        };
        PartitionState { floor: self.floor, last, hard_state: self.hard_state }
    }
}

/// How much live data a segment holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegPins {
    /// Live entry records.
    pub entries: u64,
    /// Their bytes.
    pub entry_bytes: u64,
    /// Live non-entry records (latest hard states, floors, metadata values).
    pub records: u64,
}

impl SegPins {
    /// Whether nothing in the segment is needed any more.
    pub fn is_free(&self) -> bool {
        self.entries == 0 && self.records == 0
    }
}

/// The index of one WAL shard.
#[derive(Debug)]
pub(crate) struct Index {
    parts: BTreeMap<PartitionId, PartIndex>,
    meta: BTreeMap<Bytes, (Bytes, u64)>,
    pins: BTreeMap<u64, SegPins>,
    /// Unknown slots (holes) across all partitions now.
    holes: u64,
    /// Most holes at once (see [`HOLE_FILLER_BYTES_MIN`]); unlimited outside recovery, where
    /// no record leaves one.
    holes_max: u64,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            parts: BTreeMap::new(),
            meta: BTreeMap::new(),
            pins: BTreeMap::new(),
            holes: 0,
            holes_max: u64::MAX,
        }
    }
}

fn pin_entry(pins: &mut BTreeMap<u64, SegPins>, l: &EntryLoc) {
    let p = pins.entry(l.seg).or_default();
    p.entries += 1;
    p.entry_bytes += u64::from(l.len);
}

/// Forgets the slot `l` leaving the index: its segment's pin, or the hole it was.
fn unpin_entry(pins: &mut BTreeMap<u64, SegPins>, holes: &mut u64, l: &EntryLoc) {
    if l.is_hole() {
        *holes = holes.saturating_sub(1);
        return;
    }
    if let Some(p) = pins.get_mut(&l.seg) {
        p.entries = p.entries.saturating_sub(1);
        p.entry_bytes = p.entry_bytes.saturating_sub(u64::from(l.len));
    }
}

fn pin_record(pins: &mut BTreeMap<u64, SegPins>, seg: u64) {
    pins.entry(seg).or_default().records += 1;
}

fn unpin_record(pins: &mut BTreeMap<u64, SegPins>, seg: Option<u64>) {
    if let Some(p) = seg.and_then(|s| pins.get_mut(&s)) {
        p.records = p.records.saturating_sub(1);
    }
}

impl Index {
    /// Refuses, from now on, a record that would leave more holes than a log of `log_bytes`
    /// bytes could fill (recovery, before replaying a log of that size).
    pub fn limit_holes(&mut self, log_bytes: u64) {
        self.holes_max = log_bytes / HOLE_FILLER_BYTES_MIN;
    }

    /// Applies one record found (or just written) at `seg`/`offset`, `len` bytes long.
    /// An error means the log contradicts itself (reported as corruption by the caller).
    pub fn apply(&mut self, rec: &Record<'_>, seg: u64, offset: u32, len: u32) -> Result<(), String> {
        let (pins, holes) = (&mut self.pins, &mut self.holes);
        match *rec {
            Record::Entry { partition, index, term, relocated, .. } => {
                let part = self.parts.entry(partition).or_default();
                if index <= part.floor.index {
                    // A relocated copy of an entry compacted since: dead, skip it.
                    return if relocated {
                        Ok(())
                    } else {
                        Err(format!(
                            "partition {partition}: entry {index} at or below the floor {}",
                            part.floor.index
                        ))
                    };
                }
                if term == HOLE_TERM {
                    return Err(format!("partition {partition}: entry {index} with term 0"));
                }
                if index > LAST_INDEX_MAX {
                    return Err(format!("partition {partition}: entry index {index} is out of range"));
                }
                let k = index - part.floor.index - 1;
                let new_holes = k.saturating_sub(part.locs.len() as u64);
                if new_holes > HOLES_MAX || new_holes > self.holes_max.saturating_sub(*holes) {
                    return Err(format!("partition {partition}: entry {index} far past the log end"));
                }
                let k = k as usize;
                let loc = EntryLoc { seg, offset, len, term };
                if relocated && k < part.locs.len() {
                    let old = part.locs[k];
                    if !old.is_hole() && old.term != term {
                        return Err(format!(
                            "partition {partition}: relocated entry {index} has term {term}, the log has {}",
                            old.term
                        ));
                    }
                    unpin_entry(pins, holes, &old);
                    part.locs[k] = loc;
                } else {
                    while part.locs.len() > k {
                        if let Some(old) = part.locs.pop_back() {
                            unpin_entry(pins, holes, &old);
                        }
                    }
                    *holes += new_holes;
                    part.locs.resize(k, EntryLoc::HOLE);
                    if part.locs.capacity() == 0 {
                        // Most partitions of a large node are idle with one entry (their
                        // leader's first): room for 4, the default, was 72 wasted bytes each.
                        part.locs.reserve_exact(1);
                    }
                    part.locs.push_back(loc);
                }
                pin_entry(pins, &loc);
            }
            Record::HardState { partition, hard_state } => {
                let part = self.parts.entry(partition).or_default();
                unpin_record(pins, part.hs_seg);
                pin_record(pins, seg);
                part.hs_seg = Some(seg);
                part.hard_state = hard_state;
            }
            Record::Snapshot { partition, pos, keep_suffix } => {
                Self::set_floor(self.parts.entry(partition).or_default(), pins, holes, pos, keep_suffix, seg)
                    .map_err(|e| format!("partition {partition}: {e}"))?;
            }
            Record::Compact { partition, pos } => {
                Self::set_floor(self.parts.entry(partition).or_default(), pins, holes, pos, true, seg)
                    .map_err(|e| format!("partition {partition}: {e}"))?;
            }
            Record::Remove { partition } => {
                if let Some(part) = self.parts.remove(&partition) {
                    for l in &part.locs {
                        unpin_entry(pins, holes, l);
                    }
                    unpin_record(pins, part.hs_seg);
                    unpin_record(pins, part.floor_seg);
                }
            }
            Record::MetaSet { key, value } => {
                let old = self.meta.insert(Bytes::copy_from_slice(key), (Bytes::copy_from_slice(value), seg));
                unpin_record(pins, old.map(|(_, s)| s));
                pin_record(pins, seg);
            }
            Record::MetaDelete { key } => {
                let old = self.meta.remove(key);
                unpin_record(pins, old.map(|(_, s)| s));
            }
        }
        Ok(())
    }

    fn set_floor(
        part: &mut PartIndex,
        pins: &mut BTreeMap<u64, SegPins>,
        holes: &mut u64,
        pos: LogPosition,
        keep_suffix: bool,
        seg: u64,
    ) -> Result<(), String> {
        if pos.index > LAST_INDEX_MAX {
            return Err(format!("floor index {} is out of range", pos.index));
        }
        if keep_suffix {
            if pos.index < part.floor.index {
                return Err(format!("floor moves back from {} to {}", part.floor.index, pos.index));
            }
            let n = ((pos.index - part.floor.index) as usize).min(part.locs.len());
            for l in part.locs.drain(..n) {
                unpin_entry(pins, holes, &l);
            }
        } else {
            for l in part.locs.drain(..) {
                unpin_entry(pins, holes, &l);
            }
        }
        part.floor = pos;
        unpin_record(pins, part.floor_seg);
        pin_record(pins, seg);
        part.floor_seg = Some(seg);
        Ok(())
    }

    /// The first partition whose log has an unknown slot (a live entry that no segment
    /// holds), after recovery.
    pub fn find_hole(&self) -> Option<(PartitionId, u64)> {
        self.parts.iter().find_map(|(p, part)| {
            part.locs.iter().position(EntryLoc::is_hole).map(|k| (*p, part.floor.index + 1 + k as u64))
        })
    }

    /// State of a partition.
    pub fn state(&self, p: PartitionId) -> Option<PartitionState> {
        self.parts.get(&p).map(PartIndex::state)
    }

    /// Term of the entry at `index` (the floor's term at the floor).
    pub fn term(&self, p: PartitionId, index: u64) -> Option<u64> {
        let part = self.parts.get(&p)?;
        if index == part.floor.index {
            return Some(part.floor.term);
        }
        let k = index.checked_sub(part.floor.index + 1)?;
        part.locs.get(k as usize).map(|l| l.term)
    }

    /// Locations of entries `lo..hi` (which the caller checked are in range).
    pub fn locs(&self, p: PartitionId, lo: u64, hi: u64) -> impl Iterator<Item = &EntryLoc> {
        let part = self.parts.get(&p);
        let (start, end) = match part {
            Some(part) => ((lo - part.floor.index - 1) as usize, (hi - part.floor.index - 1) as usize),
            None => (0, 0),
        };
        part.into_iter().flat_map(move |part| part.locs.range(start..end))
    }

    /// Every partition, ascending.
    pub fn partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        self.parts.keys().copied()
    }

    /// A metadata value.
    pub fn meta(&self, key: &[u8]) -> Option<&Bytes> {
        self.meta.get(key).map(|(v, _)| v)
    }

    /// Number of metadata keys.
    pub fn meta_len(&self) -> usize {
        self.meta.len()
    }

    /// Whether a metadata key exists.
    pub fn has_meta(&self, key: &[u8]) -> bool {
        self.meta.contains_key(key)
    }

    /// What segment `seq` holds that is still needed.
    pub fn pins(&self, seq: u64) -> SegPins {
        self.pins.get(&seq).copied().unwrap_or_default()
    }

    /// Forgets a recycled segment.
    pub fn forget_segment(&mut self, seq: u64) {
        self.pins.remove(&seq);
    }

    /// Whether the entry record at `seg`/`offset` is the live copy of `p`'s entry `index`.
    pub fn entry_is_live(&self, p: PartitionId, index: u64, seg: u64, offset: u32) -> bool {
        let Some(part) = self.parts.get(&p) else { return false };
        let Some(k) = index.checked_sub(part.floor.index + 1) else { return false };
        part.locs.get(k as usize).is_some_and(|l| l.seg == seg && l.offset == offset)
    }

    /// `p`'s hard state, if its latest record lives in `seg`.
    pub fn hard_state_in(&self, p: PartitionId, seg: u64) -> Option<HardState> {
        self.parts.get(&p).filter(|part| part.hs_seg == Some(seg)).map(|part| part.hard_state)
    }

    /// `p`'s floor, if the record that set it lives in `seg`.
    pub fn floor_in(&self, p: PartitionId, seg: u64) -> Option<LogPosition> {
        self.parts.get(&p).filter(|part| part.floor_seg == Some(seg)).map(|part| part.floor)
    }

    /// A metadata value, if its latest record lives in `seg`.
    pub fn meta_in(&self, key: &[u8], seg: u64) -> Option<Bytes> {
        self.meta.get(key).filter(|(_, s)| *s == seg).map(|(v, _)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: u64, index: u64, term: u64, relocated: bool) -> Record<'static> {
        Record::Entry { partition: p, index, term, relocated, proto: b"" }
    }

    #[test]
    fn truncate_compact_and_pins() {
        let mut ix = Index::default();
        for i in 1..=5 {
            ix.apply(&entry(1, i, 1, false), 1, i as u32 * 100, 50).unwrap();
        }
        assert_eq!(ix.pins(1).entries, 5);
        ix.apply(&entry(1, 3, 2, false), 2, 0, 50).unwrap();
        assert_eq!(ix.state(1).unwrap().last, LogPosition::new(3, 2));
        assert_eq!(ix.pins(1).entries, 2);
        ix.apply(&Record::Compact { partition: 1, pos: LogPosition::new(2, 1) }, 2, 60, 36).unwrap();
        assert_eq!(ix.pins(1), SegPins::default());
        assert_eq!(ix.term(1, 2), Some(1));
        assert_eq!(ix.term(1, 3), Some(2));
        ix.apply(&Record::Remove { partition: 1 }, 3, 0, 20).unwrap();
        assert!(ix.pins(2).is_free());
        assert!(ix.state(1).is_none());
    }

    /// Regression (found by the `wal` fuzz target): one checksummed entry record far past
    /// its partition's end made recovery allocate its 2^24 holes (400 MiB), and each further
    /// record as much again. Holes are now bounded by what the log could fill.
    #[test]
    fn holes_are_bounded_by_what_the_log_could_fill() {
        let mut ix = Index::default();
        ix.limit_holes(10 * HOLE_FILLER_BYTES_MIN + 35);
        ix.apply(&entry(1, 8, 1, false), 1, 0, 40).unwrap(); // 7 holes
        ix.apply(&entry(2, 4, 1, false), 1, 40, 40).unwrap(); // 3 more: 10
        let e = ix.apply(&entry(3, 2, 1, false), 1, 80, 40).unwrap_err();
        assert!(e.contains("far past the log end"), "{e}");
        // Filled, truncated or removed holes make room again.
        ix.apply(&entry(1, 1, 1, true), 2, 0, 40).unwrap();
        ix.apply(&entry(3, 2, 1, false), 2, 40, 40).unwrap();
        ix.apply(&entry(2, 2, 1, false), 2, 80, 40).unwrap(); // truncates 2 of partition 2's 3
        ix.apply(&Record::Remove { partition: 3 }, 2, 120, 20).unwrap(); // 1 hole of partition 3
        // Partition 1 is [1, hole × 6, 8]: dropping 1..=4 drops 3 holes.
        ix.apply(&Record::Compact { partition: 1, pos: LogPosition::new(4, 1) }, 2, 140, 36).unwrap();
        assert_eq!(ix.holes, 10 - 1 + 1 - 2 - 1 - 3);
        ix.apply(&entry(4, 7, 1, false), 2, 180, 40).unwrap(); // 6 holes: 10 again
        assert!(ix.apply(&entry(5, 2, 1, false), 2, 220, 40).is_err());
        // Outside recovery nothing is limited (and no record leaves a hole).
        let mut running = Index::default();
        running.apply(&entry(1, 1000, 1, false), 1, 0, 40).unwrap();
    }

    /// Regression (found by the `wal` fuzz target): a floor at `u64::MAX` overflowed the
    /// first index after it when the partition was loaded.
    #[test]
    fn indexes_at_the_end_of_the_range_are_damage() {
        let mut ix = Index::default();
        assert!(ix.apply(&entry(1, u64::MAX, 1, false), 1, 0, 40).is_err());
        let floor = LogPosition::new(u64::MAX, 1);
        assert!(ix.apply(&Record::Compact { partition: 1, pos: floor }, 1, 0, 36).is_err());
        assert!(
            ix.apply(&Record::Snapshot { partition: 1, pos: floor, keep_suffix: false }, 1, 0, 37).is_err()
        );
        ix.apply(&entry(1, LAST_INDEX_MAX, 1, false), 1, 0, 40).unwrap_err(); // far past the end
        let last = LogPosition::new(LAST_INDEX_MAX, 1);
        ix.apply(&Record::Snapshot { partition: 1, pos: last, keep_suffix: false }, 1, 0, 37).unwrap();
        assert_eq!(ix.state(1).unwrap().first_index(), u64::MAX);
    }

    #[test]
    fn relocated_entries_fill_holes_without_truncating() {
        // Segment 1 (collected) held entries 1..=2; segment 2 holds 3; relocated copies of
        // 1..=2 come later in segment 3.
        let mut ix = Index::default();
        ix.apply(&entry(1, 3, 1, false), 2, 0, 10).unwrap();
        assert_eq!(ix.find_hole(), Some((1, 1)));
        ix.apply(&entry(1, 1, 1, true), 3, 0, 10).unwrap();
        ix.apply(&entry(1, 2, 1, true), 3, 10, 10).unwrap();
        assert_eq!(ix.find_hole(), None);
        assert_eq!(ix.state(1).unwrap().last, LogPosition::new(3, 1));
        // A relocated copy of an entry the log holds with another term is a contradiction.
        assert!(ix.apply(&entry(1, 3, 7, true), 3, 20, 10).is_err());
    }
}
