//! Checks a batch against the contract and works out its effect, once, for every adapter.
//!
//! Each adapter then stores the *decided* effect (keep or drop the suffix at a snapshot, the
//! term at a compaction point) rather than recomputing it at recovery, so recovery never
//! depends on data that garbage collection may have moved.

use std::collections::HashSet;

use phalanx_proto::Message;

use crate::error::{Result, StorageError};
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_PARTITIONS_MAX, ENTRY_BYTES_MAX, META_KEY_BYTES_MAX, META_VALUE_BYTES_MAX,
};
use crate::types::{LogPosition, PartitionId, PartitionState, PartitionWrite, WriteBatch};

/// The decided effect of one [`PartitionWrite`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartitionPlan {
    /// The snapshot position and whether the entries after it are kept.
    pub snapshot: Option<(LogPosition, bool)>,
    /// Stored entries at or after this index are replaced by the batch's entries.
    pub truncate_from: Option<u64>,
    /// The compaction that takes effect (None when absent or at/below the floor).
    pub compact: Option<LogPosition>,
    /// The partition's state after the batch.
    pub after: PartitionState,
}

/// The decided effect of a whole batch, one plan per `batch.partitions` element.
#[derive(Clone, Debug)]
pub(crate) struct BatchPlan {
    pub partitions: Vec<PartitionPlan>,
    /// Sum of the encoded sizes of the batch's entries.
    pub entry_bytes: u64,
}

/// Checks `batch` and decides its effect.
///
/// `state` gives a partition's state before the batch; `term_at` the term of a stored entry
/// before the batch (only asked for indexes in `floor + 1 ..= last`).
pub(crate) fn plan_batch(
    batch: &WriteBatch,
    mut state: impl FnMut(PartitionId) -> Result<Option<PartitionState>>,
    mut term_at: impl FnMut(PartitionId, u64) -> Result<Option<u64>>,
) -> Result<BatchPlan> {
    if batch.partitions.len() > BATCH_PARTITIONS_MAX {
        return Err(StorageError::LimitExceeded {
            what: "partitions in a batch",
            value: batch.partitions.len() as u64,
            max: BATCH_PARTITIONS_MAX as u64,
        });
    }
    let mut seen = HashSet::with_capacity(batch.partitions.len());
    let mut entry_bytes = 0u64;
    let mut plans = Vec::with_capacity(batch.partitions.len());
    for pw in &batch.partitions {
        if !seen.insert(pw.partition) {
            return Err(StorageError::invalid(pw.partition, "partition appears twice in one batch"));
        }
        let before = state(pw.partition)?.unwrap_or_default();
        let plan = plan_partition(pw, before, &mut term_at, &mut entry_bytes)?;
        plans.push(plan);
    }
    if entry_bytes > BATCH_BYTES_MAX {
        return Err(StorageError::LimitExceeded {
            what: "entry bytes in a batch",
            value: entry_bytes,
            max: BATCH_BYTES_MAX,
        });
    }
    for m in &batch.meta {
        if m.key.len() > META_KEY_BYTES_MAX {
            return Err(StorageError::LimitExceeded {
                what: "metadata key bytes",
                value: m.key.len() as u64,
                max: META_KEY_BYTES_MAX as u64,
            });
        }
        if let Some(v) = &m.value
            && v.len() > META_VALUE_BYTES_MAX
        {
            return Err(StorageError::LimitExceeded {
                what: "metadata value bytes",
                value: v.len() as u64,
                max: META_VALUE_BYTES_MAX as u64,
            });
        }
    }
    Ok(BatchPlan { partitions: plans, entry_bytes })
}

fn plan_partition(
    pw: &PartitionWrite,
    before: PartitionState,
    term_at: &mut impl FnMut(PartitionId, u64) -> Result<Option<u64>>,
    entry_bytes: &mut u64,
) -> Result<PartitionPlan> {
    let p = pw.partition;
    let mut floor = before.floor;
    let mut last = before.last;
    let mut snapshot = None;
    if let Some(snap) = pw.snapshot {
        if snap.index < floor.index {
            return Err(StorageError::invalid(
                p,
                format!("snapshot at index {} is below the floor {}", snap.index, floor.index),
            ));
        }
        if snap.index > 0 && snap.term == 0 {
            return Err(StorageError::invalid(p, "snapshot with term 0"));
        }
        let holds = snap == floor
            || (snap.index > floor.index
                && snap.index <= last.index
                && term_at(p, snap.index)? == Some(snap.term));
        floor = snap;
        if !holds {
            last = snap;
        }
        snapshot = Some((snap, holds));
    }
    let mut truncate_from = None;
    if let (Some(first), Some(tail)) = (pw.entries.first(), pw.entries.last()) {
        if first.index <= floor.index || first.index > last.index + 1 {
            return Err(StorageError::invalid(
                p,
                format!(
                    "entries start at {} but must start in {}..={} (floor {}, last {})",
                    first.index,
                    floor.index + 1,
                    last.index + 1,
                    floor.index,
                    last.index
                ),
            ));
        }
        let mut prev: Option<(u64, u64)> = None;
        for e in &pw.entries {
            if e.term == 0 {
                return Err(StorageError::invalid(p, format!("entry {} has term 0", e.index)));
            }
            if let Some((pi, pt)) = prev {
                if e.index != pi + 1 {
                    return Err(StorageError::invalid(
                        p,
                        format!("entries not contiguous: {} after {}", e.index, pi),
                    ));
                }
                if e.term < pt {
                    return Err(StorageError::invalid(
                        p,
                        format!("entry {} has a lower term than entry {}", e.index, pi),
                    ));
                }
            }
            prev = Some((e.index, e.term));
            let len = e.encoded_len() as u64;
            if len > ENTRY_BYTES_MAX {
                return Err(StorageError::LimitExceeded {
                    what: "encoded entry bytes",
                    value: len,
                    max: ENTRY_BYTES_MAX,
                });
            }
            *entry_bytes += len;
        }
        if first.index <= last.index {
            truncate_from = Some(first.index);
        }
        last = LogPosition::new(tail.index, tail.term);
    }
    let mut compact = None;
    if let Some(c) = pw.compact_to
        && c > floor.index
    {
        if c > last.index {
            return Err(StorageError::invalid(
                p,
                format!("compact_to {c} is past the last index {}", last.index),
            ));
        }
        let term = match pw.entries.first() {
            Some(first) if c >= first.index => pw.entries.get((c - first.index) as usize).map(|e| e.term),
            _ => term_at(p, c)?,
        };
        let Some(term) = term else {
            return Err(StorageError::invalid(p, format!("no term known for compaction index {c}")));
        };
        floor = LogPosition::new(c, term);
        compact = Some(floor);
    }
    let hard_state = pw.hard_state.unwrap_or(before.hard_state);
    Ok(PartitionPlan { snapshot, truncate_from, compact, after: PartitionState { floor, last, hard_state } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phalanx_proto::LogEntry;

    fn e(index: u64, term: u64) -> LogEntry {
        LogEntry { index, term, ..Default::default() }
    }

    fn plan1(
        pw: PartitionWrite,
        before: Option<PartitionState>,
        terms: &[(u64, u64)],
    ) -> Result<PartitionPlan> {
        let batch = WriteBatch { partitions: vec![pw], meta: vec![] };
        let t = terms.to_vec();
        plan_batch(
            &batch,
            |_| Ok(before),
            move |_, i| Ok(t.iter().find(|(ti, _)| *ti == i).map(|(_, tt)| *tt)),
        )
        .map(|mut b| b.partitions.remove(0))
    }

    fn st(floor: (u64, u64), last: (u64, u64)) -> PartitionState {
        PartitionState {
            floor: LogPosition::new(floor.0, floor.1),
            last: LogPosition::new(last.0, last.1),
            hard_state: Default::default(),
        }
    }

    #[test]
    fn append_to_empty_must_start_at_one() {
        let mut pw = PartitionWrite::new(1);
        pw.entries = vec![e(2, 1)];
        assert!(plan1(pw.clone(), None, &[]).is_err());
        pw.entries = vec![e(1, 1), e(2, 1)];
        let p = plan1(pw, None, &[]).unwrap();
        assert_eq!(p.after.last, LogPosition::new(2, 1));
        assert_eq!(p.truncate_from, None);
    }

    #[test]
    fn replace_suffix_and_compact_in_batch() {
        let mut pw = PartitionWrite::new(1);
        pw.entries = vec![e(3, 2), e(4, 2)];
        pw.compact_to = Some(3);
        let p = plan1(pw, Some(st((0, 0), (5, 1))), &[(1, 1), (2, 1), (3, 1)]).unwrap();
        assert_eq!(p.truncate_from, Some(3));
        assert_eq!(p.compact, Some(LogPosition::new(3, 2)));
        assert_eq!(p.after.last, LogPosition::new(4, 2));
    }

    #[test]
    fn snapshot_keeps_or_drops() {
        let mut pw = PartitionWrite::new(1);
        pw.snapshot = Some(LogPosition::new(3, 1));
        let keep = plan1(pw.clone(), Some(st((0, 0), (5, 1))), &[(3, 1)]).unwrap();
        assert_eq!(keep.snapshot, Some((LogPosition::new(3, 1), true)));
        assert_eq!(keep.after.last, LogPosition::new(5, 1));
        let drop = plan1(pw, Some(st((0, 0), (5, 1))), &[(3, 2)]).unwrap();
        assert_eq!(drop.snapshot, Some((LogPosition::new(3, 1), false)));
        assert_eq!(drop.after.last, LogPosition::new(3, 1));
    }

    #[test]
    fn rejects_bad_input() {
        let mut pw = PartitionWrite::new(1);
        pw.compact_to = Some(9);
        assert!(plan1(pw, Some(st((0, 0), (5, 1))), &[]).is_err());
        let mut pw = PartitionWrite::new(1);
        pw.entries = vec![e(1, 1), e(3, 1)];
        assert!(plan1(pw, None, &[]).is_err());
        let mut pw = PartitionWrite::new(1);
        pw.entries = vec![e(1, 0)];
        assert!(plan1(pw, None, &[]).is_err());
        let batch =
            WriteBatch { partitions: vec![PartitionWrite::new(1), PartitionWrite::new(1)], meta: vec![] };
        assert!(plan_batch(&batch, |_| Ok(None), |_, _| Ok(None)).is_err());
    }
}
