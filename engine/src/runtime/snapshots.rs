//! Snapshot files: one per partition, `DATA/snapshots/shard-<i>/p<partition>.snap`.
//!
//! Layout (version 1): magic `PHXSNAP1`, then a u64 length (little-endian), then the snapshot
//! encoded as a protobuf `InstallSnapshotChunk` (index, term, membership, pending two-step
//! entries, data — the same message that carries snapshots between nodes), then the
//! CRC32C of those bytes. A file is written to a temporary name, fsynced, renamed over the
//! old one, and the directory fsynced: a crash leaves either the old snapshot or the new
//! one, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use phalanx_proto::{InstallSnapshotChunk, Message};

use crate::raft::{Membership, Snapshot, SnapshotMeta};
use crate::state_machine::PartitionId;

const MAGIC: &[u8; 8] = b"PHXSNAP1";
/// Largest snapshot file accepted when loading (bad input must not exhaust memory).
pub const MAX_SNAPSHOT_FILE_BYTES: u64 = 4 << 30;

/// Snapshot files of one shard.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Snapshots under `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(SnapshotStore { dir })
    }

    fn path(&self, p: PartitionId) -> PathBuf {
        self.dir.join(format!("p{p}.snap"))
    }

    /// Makes `s` the durable snapshot of `partition`.
    pub fn save(&self, partition: PartitionId, s: &Snapshot) -> std::io::Result<()> {
        let msg = InstallSnapshotChunk {
            term: 0,
            last_included_index: s.meta.index,
            last_included_term: s.meta.term,
            conf_state: Some(s.meta.membership.to_proto()),
            offset: 0,
            data: s.data.clone(),
            done: true,
            pending_two_step: s.meta.pending_two_step.clone(),
            total_size: s.data.len() as u64,
        };
        let body = msg.encode_to_vec();
        let mut buf = Vec::with_capacity(body.len() + 20);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
        buf.extend_from_slice(&body);
        buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        let tmp = self.dir.join(format!("p{partition}.snap.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, self.path(partition))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The snapshot of `partition`, if one was saved. A damaged or foreign file is an error
    /// naming the file, never a panic.
    pub fn load(&self, partition: PartitionId) -> Result<Option<Snapshot>, String> {
        let path = self.path(partition);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        decode(&path, &bytes).map(Some)
    }

    /// Deletes the snapshot of `partition`.
    pub fn remove(&self, partition: PartitionId) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(partition)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn decode(path: &Path, b: &[u8]) -> Result<Snapshot, String> {
    let bad = |what: &str, offset: usize| format!("{}: {what} at offset {offset}", path.display());
    if b.len() < 20 || &b[..8] != MAGIC {
        return Err(bad("not a Phalanx snapshot (bad magic)", 0));
    }
    let len = u64::from_le_bytes(b[8..16].try_into().map_err(|_| bad("truncated header", 8))?);
    if len > MAX_SNAPSHOT_FILE_BYTES || 16 + len as usize + 4 != b.len() {
        return Err(bad("length does not match the file", 8));
    }
    let body = &b[16..16 + len as usize];
    let crc = u32::from_le_bytes(
        b[16 + len as usize..].try_into().map_err(|_| bad("truncated checksum", b.len()))?,
    );
    if crc32c::crc32c(body) != crc {
        return Err(bad("checksum mismatch", 16));
    }
    let m = InstallSnapshotChunk::decode(body).map_err(|e| bad(&format!("undecodable ({e})"), 16))?;
    let membership =
        m.conf_state.as_ref().map(Membership::from_proto).ok_or_else(|| bad("no membership", 16))?;
    Ok(Snapshot {
        meta: SnapshotMeta {
            index: m.last_included_index,
            term: m.last_included_term,
            membership,
            pending_two_step: m.pending_two_step,
        },
        data: m.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(store.load(3).unwrap().is_none());
        let s = Snapshot {
            meta: SnapshotMeta {
                index: 9,
                term: 2,
                membership: Membership::with_voters([1, 2]),
                pending_two_step: vec![],
            },
            data: bytes::Bytes::from_static(b"image"),
        };
        store.save(3, &s).unwrap();
        assert_eq!(store.load(3).unwrap(), Some(s));
        let path = dir.path().join("p3.snap");
        let mut b = std::fs::read(&path).unwrap();
        let n = b.len();
        b[n / 2] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let err = store.load(3).unwrap_err();
        assert!(err.contains("p3.snap"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(store.load(3).unwrap_err().contains("magic"));
    }
}
