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

use crate::Error;
use crate::raft::{Membership, Snapshot, SnapshotMeta};
use crate::state_machine::PartitionId;

const MAGIC: &[u8; 8] = b"PHXSNAP1";
/// Magic and body length.
const HEADER_BYTES: usize = 16;
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

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, p: PartitionId) -> PathBuf {
        self.dir.join(format!("p{p}.snap"))
    }

    /// Makes `s` the durable snapshot of `partition`.
    pub fn save(&self, partition: PartitionId, s: &Snapshot) -> std::io::Result<()> {
        self.save_all([(partition, s)])
    }

    /// Makes each snapshot the durable one of its partition: every file written and synced
    /// under a temporary name, renamed into place, then one directory sync for all of them
    /// (a checkpoint turn on many partitions costs one, not one each).
    pub fn save_all<'a>(
        &self,
        snapshots: impl IntoIterator<Item = (PartitionId, &'a Snapshot)>,
    ) -> std::io::Result<()> {
        let mut renamed = false;
        for (partition, s) in snapshots {
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
            // Encoded in place after the header: the image is not copied a second time.
            let body_len = msg.encoded_len();
            let mut buf = Vec::with_capacity(HEADER_BYTES + body_len + 4);
            buf.extend_from_slice(MAGIC);
            buf.extend_from_slice(&(body_len as u64).to_le_bytes());
            msg.encode(&mut buf).map_err(std::io::Error::other)?;
            let crc = crc32c::crc32c(&buf[HEADER_BYTES..]);
            buf.extend_from_slice(&crc.to_le_bytes());
            let tmp = self.dir.join(format!("p{partition}.snap.tmp"));
            {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&buf)?;
                f.sync_data()?;
            }
            std::fs::rename(&tmp, self.path(partition))?;
            renamed = true;
        }
        if renamed {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The snapshot of `partition`, if one was saved. A damaged or foreign file is an error
    /// naming the file, never a panic.
    pub fn load(&self, partition: PartitionId) -> Result<Option<Snapshot>, Error> {
        let path = self.path(partition);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
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

/// Decodes the bytes of a snapshot file (`path` only names it in errors): a damaged or
/// foreign file is an error, never a panic.
///
/// Public, but not part of the API, for the fuzz targets (`tests/fuzz`), which feed it
/// arbitrary bytes; [`SnapshotStore::load`] is the way to read a snapshot.
#[doc(hidden)]
pub fn decode(path: &Path, b: &[u8]) -> Result<Snapshot, Error> {
    let bad = |what: &str, offset: usize| Error::Snapshot {
        path: path.to_path_buf(),
        reason: format!("{what} at offset {offset}"),
    };
    if b.len() < HEADER_BYTES + 4 || &b[..8] != MAGIC {
        return Err(bad("not a Phalanx snapshot (bad magic)", 0));
    }
    let len = u64::from_le_bytes(b[8..16].try_into().map_err(|_| bad("truncated header", 8))?);
    if len > MAX_SNAPSHOT_FILE_BYTES || HEADER_BYTES + len as usize + 4 != b.len() {
        return Err(bad("length does not match the file", 8));
    }
    let body = &b[HEADER_BYTES..HEADER_BYTES + len as usize];
    let crc = u32::from_le_bytes(
        b[HEADER_BYTES + len as usize..].try_into().map_err(|_| bad("truncated checksum", b.len()))?,
    );
    if crc32c::crc32c(body) != crc {
        return Err(bad("checksum mismatch", HEADER_BYTES));
    }
    let m =
        InstallSnapshotChunk::decode(body).map_err(|e| bad(&format!("undecodable ({e})"), HEADER_BYTES))?;
    let membership = m
        .conf_state
        .as_ref()
        .map(Membership::from_proto)
        .ok_or_else(|| bad("no membership", HEADER_BYTES))?;
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
        assert_eq!(store.load(3).unwrap(), Some(s.clone()));
        let path = dir.path().join("p3.snap");
        let mut b = std::fs::read(&path).unwrap();
        let n = b.len();
        b[n / 2] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let err = store.load(3).unwrap_err().to_string();
        assert!(err.contains("p3.snap"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(store.load(3).unwrap_err().to_string().contains("magic"));

        // Several at once, one directory sync: each partition gets its own, the last wins.
        let at = |index: u64| Snapshot { meta: SnapshotMeta { index, ..s.meta.clone() }, ..s.clone() };
        let (a, b, c) = (at(10), at(20), at(30));
        store.save_all([(3, &a), (4, &b), (4, &c)]).unwrap();
        assert_eq!(store.load(3).unwrap(), Some(a));
        assert_eq!(store.load(4).unwrap(), Some(c));
        store.save_all([]).unwrap();
    }
}
