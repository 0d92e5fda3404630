//! Encodings shared by the key-value adapters (RocksDB, SQLite, raft-engine): checksummed entry values and
//! partition-state records, so that damage inside a backend that does not checksum values
//! itself is still detected on read.

use phalanx_proto::HardState;

use crate::types::{LogPosition, PartitionState};

/// Encoded partition state: floor, last, hard state (7 × u64) and a CRC32C.
pub(crate) const STATE_BYTES: usize = 7 * 8 + 4;
/// The same followed by a flags byte (bit 0: recovering), covered by the CRC: what is
/// written now. A record of `STATE_BYTES` (written before the flag existed) reads with no
/// flag set.
pub(crate) const STATE_BYTES_FLAGGED: usize = STATE_BYTES + 1;

/// Encodes a partition's state.
pub(crate) fn encode_state(s: &PartitionState) -> [u8; STATE_BYTES_FLAGGED] {
    let mut b = [0u8; STATE_BYTES_FLAGGED];
    let vals = [
        s.floor.index,
        s.floor.term,
        s.last.index,
        s.last.term,
        s.hard_state.term,
        s.hard_state.vote,
        s.hard_state.commit,
    ];
    for (i, v) in vals.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b[60] = u8::from(s.hard_state.recovering);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..56]), &b[60..61]);
    b[56..60].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a partition's state, checking its CRC.
pub(crate) fn decode_state(b: &[u8]) -> Result<PartitionState, String> {
    if b.len() != STATE_BYTES && b.len() != STATE_BYTES_FLAGGED {
        return Err(format!("partition state of {} bytes, expected {STATE_BYTES_FLAGGED}", b.len()));
    }
    let u = |i: usize| {
        b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
    };
    let flags = b.get(60..).unwrap_or_default();
    let stored = b.get(56..60).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes);
    if stored != Some(crc32c::crc32c_append(crc32c::crc32c(&b[..56]), flags)) {
        return Err("partition state checksum mismatch".into());
    }
    Ok(PartitionState {
        floor: LogPosition::new(u(0), u(1)),
        last: LogPosition::new(u(2), u(3)),
        hard_state: HardState {
            term: u(4),
            vote: u(5),
            commit: u(6),
            recovering: flags.first().is_some_and(|f| f & 1 != 0),
        },
    })
}

/// CRC32C of an entry's coordinates and protobuf body: ties the value to its key. (The
/// raft-engine adapter needs none: raft-engine checksums every batch's entries itself.)
#[cfg(any(feature = "rocksdb", feature = "sqlite"))]
pub(crate) fn entry_crc(partition: u64, index: u64, term: u64, proto: &[u8]) -> u32 {
    let mut head = [0u8; 24];
    head[0..8].copy_from_slice(&partition.to_le_bytes());
    head[8..16].copy_from_slice(&index.to_le_bytes());
    head[16..24].copy_from_slice(&term.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), proto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_damage() {
        let s = PartitionState {
            floor: LogPosition::new(3, 1),
            last: LogPosition::new(9, 2),
            hard_state: HardState { term: 2, vote: 1, commit: 8, recovering: true },
        };
        let mut b = encode_state(&s);
        assert_eq!(decode_state(&b), Ok(s));
        // A record written before the flag existed reads with no flag set.
        let old = PartitionState { hard_state: HardState { recovering: false, ..s.hard_state }, ..s };
        let mut v1 = b[..56].to_vec();
        v1.extend_from_slice(&crc32c::crc32c(&b[..56]).to_le_bytes());
        assert_eq!(decode_state(&v1), Ok(old));
        b[10] ^= 1;
        assert!(decode_state(&b).is_err());
    }
}
