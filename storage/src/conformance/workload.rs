//! A deterministic random workload: operation `k` is a pure function of the seed, `k` and the
//! model state before it, so a crashed writer and its checker can both regenerate it.

use bytes::Bytes;
use phalanx_proto::HardState;

use super::model::{Model, ModelPartition, entry};
use crate::types::{LogPosition, MetaWrite, PartitionId, PartitionWrite, WriteBatch};

/// Metadata key holding the number of the last batch operation applied.
pub const OP_KEY: &[u8] = b"workload/op";

/// One operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A write batch (which also sets [`OP_KEY`] to the operation number).
    Batch(WriteBatch),
    /// `remove_partition`.
    Remove(PartitionId),
}

/// Shape of the workload.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Seed.
    pub seed: u64,
    /// Partitions used: `1..=partitions`.
    pub partitions: u64,
    /// Entries kept per partition before the workload compacts (bounds the live data).
    pub compact_above: u64,
    /// Largest entry payload.
    pub payload_max: usize,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and dependency-free.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

impl Workload {
    /// Operation number `k` (from 1) given the model after operations `1..k`.
    #[must_use]
    pub fn op(&self, k: u64, model: &Model) -> Op {
        let mut rng = Rng((self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        if rng.below(100) < 2 && !model.partitions.is_empty() {
            let keys: Vec<_> = model.partitions.keys().copied().collect();
            return Op::Remove(keys[rng.below(keys.len() as u64) as usize]);
        }
        let touched = 1 + rng.below(self.partitions.min(4));
        let mut batch = WriteBatch::default();
        for _ in 0..touched {
            // The last partition is almost idle: its old entries pin old segments, which makes
            // the native WAL relocate them (garbage collection under crashes).
            let p = if self.partitions == 1 || rng.below(50) == 0 {
                self.partitions
            } else {
                1 + rng.below(self.partitions - 1)
            };
            if batch.partitions.iter().any(|w| w.partition == p) {
                continue;
            }
            let empty = ModelPartition::default();
            let mp = model.partitions.get(&p).unwrap_or(&empty);
            let (floor, last) = (mp.floor, mp.last());
            let mut term = mp.hard_state.term.max(last.term).max(1);
            let mut pw = PartitionWrite::new(p);
            let mut next = last.index + 1;
            let roll = rng.below(100);
            if roll < 6 && last.index > floor.index {
                // Conflict: replace a suffix with entries of a newer term.
                next = floor.index + 1 + rng.below(last.index - floor.index);
                term += 1;
            } else if roll < 9 {
                // Snapshot install: sometimes matching the log (keep the suffix), sometimes not.
                let at = floor.index + rng.below(last.index - floor.index + 1);
                let t = if at == floor.index {
                    floor.term
                } else {
                    mp.entries[(at - floor.index - 1) as usize].term
                };
                let pos = if rng.below(2) == 0 && t > 0 {
                    LogPosition::new(at, t)
                } else {
                    term += 1;
                    LogPosition::new(last.index + 1 + rng.below(3), term)
                };
                pw.snapshot = Some(pos);
                next = if pos.index >= last.index || pos.term != t { pos.index + 1 } else { last.index + 1 };
            }
            let n = rng.below(5);
            for i in next..next + n {
                let len = if rng.below(20) == 0 {
                    self.payload_max
                } else {
                    1 + rng.below(self.payload_max.min(300) as u64) as usize
                };
                pw.entries.push(entry(p, i, term, len));
            }
            let new_last = pw.entries.last().map_or(
                match pw.snapshot {
                    Some(s) if next == s.index + 1 => s.index,
                    _ => last.index,
                },
                |e| e.index,
            );
            pw.hard_state =
                Some(HardState { term, vote: rng.below(4), commit: new_last, recovering: rng.below(2) == 1 });
            let new_floor = pw.snapshot.map_or(floor.index, |s| s.index);
            if new_last > new_floor + self.compact_above {
                pw.compact_to = Some(new_last - self.compact_above / 2);
            }
            batch.partitions.push(pw);
        }
        if rng.below(5) == 0 {
            let key = Bytes::from(format!("workload/k{}", rng.below(4)));
            let value = (rng.below(4) != 0).then(|| Bytes::from(format!("v{k}")));
            batch.meta.push(MetaWrite { key, value });
        }
        batch.meta.push(MetaWrite {
            key: Bytes::from_static(OP_KEY),
            value: Some(Bytes::from(k.to_be_bytes().to_vec())),
        });
        Op::Batch(batch)
    }

    /// Applies operation `k` to `model`, returning it.
    pub fn advance(&self, k: u64, model: &mut Model) -> Op {
        let op = self.op(k, model);
        match &op {
            Op::Batch(b) => model.apply(b),
            Op::Remove(p) => model.remove(*p),
        }
        op
    }

    /// The model after operations `1..=k`.
    #[must_use]
    pub fn model_at(&self, k: u64) -> Model {
        let mut m = Model::default();
        for i in 1..=k {
            self.advance(i, &mut m);
        }
        m
    }
}

/// Decodes the [`OP_KEY`] value.
#[must_use]
pub fn decode_op(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes)
}
