//! A reference model of the [`LogStore`] contract, written independently of the adapters
//! (plainly, with `Vec`s), and a checker comparing a store with it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use phalanx_proto::{EntryKind, HardState, HlcTimestamp, LogEntry};

use crate::store::LogStore;
use crate::types::{LogPosition, PartitionId, PartitionState, RecoveredPartition, WriteBatch};

/// What the model holds for one partition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelPartition {
    /// Compaction floor.
    pub floor: LogPosition,
    /// Entries after the floor.
    pub entries: Vec<LogEntry>,
    /// Hard state.
    pub hard_state: HardState,
}

impl ModelPartition {
    /// The last position.
    #[must_use]
    pub fn last(&self) -> LogPosition {
        self.entries.last().map_or(self.floor, |e| LogPosition::new(e.index, e.term))
    }

    /// The state a store must report.
    #[must_use]
    pub fn state(&self) -> PartitionState {
        PartitionState { floor: self.floor, last: self.last(), hard_state: self.hard_state }
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.floor.index {
            return Some(self.floor.term);
        }
        let k = index.checked_sub(self.floor.index + 1)?;
        self.entries.get(k as usize).map(|e| e.term)
    }
}

/// The expected content of a store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Partitions.
    pub partitions: BTreeMap<PartitionId, ModelPartition>,
    /// Metadata.
    pub meta: BTreeMap<Bytes, Bytes>,
    /// Every metadata key ever written (to check deletions).
    pub meta_keys: BTreeSet<Bytes>,
}

impl Model {
    /// Applies a batch the contract accepts.
    pub fn apply(&mut self, batch: &WriteBatch) {
        for pw in &batch.partitions {
            if pw.is_empty() {
                continue;
            }
            let mp = self.partitions.entry(pw.partition).or_default();
            if let Some(snap) = pw.snapshot {
                let holds = snap == mp.floor
                    || (snap.index > mp.floor.index && mp.term(snap.index) == Some(snap.term));
                if holds {
                    let n = (snap.index - mp.floor.index) as usize;
                    mp.entries.drain(..n.min(mp.entries.len()));
                } else {
                    mp.entries.clear();
                }
                mp.floor = snap;
            }
            if let Some(first) = pw.entries.first() {
                mp.entries.truncate((first.index - mp.floor.index - 1) as usize);
                mp.entries.extend(pw.entries.iter().cloned());
            }
            if let Some(hs) = pw.hard_state {
                mp.hard_state = hs;
            }
            if let Some(c) = pw.compact_to
                && c > mp.floor.index
            {
                let term = mp.term(c).unwrap_or_default();
                mp.entries.drain(..(c - mp.floor.index) as usize);
                mp.floor = LogPosition::new(c, term);
            }
        }
        for m in &batch.meta {
            self.meta_keys.insert(m.key.clone());
            match &m.value {
                Some(v) => self.meta.insert(m.key.clone(), v.clone()),
                None => self.meta.remove(&m.key),
            };
        }
    }

    /// Removes a partition.
    pub fn remove(&mut self, p: PartitionId) {
        self.partitions.remove(&p);
    }
}

impl Model {
    /// The partitions of `store` (not its metadata), as a model, read with the store's bulk
    /// load as a restarting shard reads them.
    pub async fn load_partitions<S: LogStore>(store: &S) -> crate::Result<Model> {
        let mut m = Model::default();
        for (p, r) in store.load_partitions(&store.partitions()?).await? {
            let Some(r) = r else { continue };
            let floor = LogPosition::new(r.floor.0, r.floor.1);
            m.partitions.insert(p, ModelPartition { floor, entries: r.entries, hard_state: r.hard_state });
        }
        Ok(m)
    }
}

/// Compares what a load returned for `p` with what the model holds.
fn same_as_model(
    p: PartitionId,
    got: Option<&RecoveredPartition>,
    want: Option<&ModelPartition>,
) -> Result<(), String> {
    match (got, want) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(format!("partition {p}: loaded, but the store should hold nothing for it")),
        (None, Some(_)) => Err(format!("partition {p}: not loaded")),
        (Some(r), Some(mp)) => {
            if r.hard_state != mp.hard_state || r.floor != (mp.floor.index, mp.floor.term) {
                return Err(format!(
                    "partition {p}: loaded hard state {:?} and floor {:?}, expected {:?} and {:?}",
                    r.hard_state, r.floor, mp.hard_state, mp.floor
                ));
            }
            if r.entries != mp.entries {
                let diff = r.entries.iter().zip(&mp.entries).position(|(a, b)| a != b);
                return Err(format!(
                    "partition {p}: {} entries loaded, {} expected; first difference at position {diff:?}",
                    r.entries.len(),
                    mp.entries.len()
                ));
            }
            Ok(())
        }
    }
}

/// Compares `store` with `model`: partitions, states, every entry, terms, metadata.
pub async fn verify<S: LogStore>(store: &S, model: &Model) -> Result<(), String> {
    let parts = store.partitions().map_err(|e| e.to_string())?;
    let want: Vec<_> = model.partitions.keys().copied().collect();
    if parts != want {
        return Err(format!("partitions {parts:?}, expected {want:?}"));
    }
    for (p, mp) in &model.partitions {
        let st = store.partition(*p).map_err(|e| e.to_string())?;
        if st != Some(mp.state()) {
            return Err(format!("partition {p}: state {st:?}, expected {:?}", mp.state()));
        }
        let last = mp.last().index;
        let got =
            store.entries(*p, mp.floor.index + 1, last + 1, u64::MAX).await.map_err(|e| e.to_string())?;
        if got != mp.entries {
            let diff = got.iter().zip(&mp.entries).position(|(a, b)| a != b);
            return Err(format!(
                "partition {p}: {} entries read, {} expected; first difference at position {diff:?}",
                got.len(),
                mp.entries.len()
            ));
        }
        for i in [mp.floor.index, last, last + 1] {
            let t = store.term(*p, i).await.map_err(|e| e.to_string())?;
            if t != mp.term(i) {
                return Err(format!("partition {p}: term({i}) = {t:?}, expected {:?}", mp.term(i)));
            }
        }
    }
    // The bulk load a restarting shard uses: every partition at once, plus an unknown one.
    let mut ids: Vec<PartitionId> = model.partitions.keys().copied().collect();
    ids.push(ids.last().map_or(1, |p| p + 1));
    let loaded = store.load_partitions(&ids).await.map_err(|e| format!("load_partitions: {e}"))?;
    if loaded.iter().map(|(p, _)| *p).ne(ids.iter().copied()) {
        return Err(format!(
            "load_partitions({ids:?}) answered for {:?}",
            loaded.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        ));
    }
    for (p, r) in &loaded {
        same_as_model(*p, r.as_ref(), model.partitions.get(p))
            .map_err(|e| format!("load_partitions: {e}"))?;
    }
    for k in &model.meta_keys {
        let got = store.get_meta(k).map_err(|e| e.to_string())?;
        if got.as_ref() != model.meta.get(k) {
            return Err(format!("meta {k:?} = {got:?}, expected {:?}", model.meta.get(k)));
        }
    }
    Ok(())
}

/// An entry whose payload is a deterministic function of its coordinates, `len` bytes long.
#[must_use]
pub fn entry(p: PartitionId, index: u64, term: u64, len: usize) -> LogEntry {
    let mut payload = format!("p{p}/i{index}/t{term}/").into_bytes();
    let mut x = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ term;
    while payload.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.push(b'a' + (x % 26) as u8);
    }
    payload.truncate(len.max(1));
    LogEntry {
        term,
        index,
        kind: EntryKind::Normal as i32,
        log_type: "conformance".into(),
        payload: payload.into(),
        ticket: Some(HlcTimestamp { physical_ms: index, logical: term as u32, node_id: p }),
    }
}

/// Entries `lo..=hi` of partition `p`, all of term `term`.
#[must_use]
pub fn entries(p: PartitionId, lo: u64, hi: u64, term: u64, len: usize) -> Vec<LogEntry> {
    (lo..=hi).map(|i| entry(p, i, term, len)).collect()
}
