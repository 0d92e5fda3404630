//! The native WAL's on-disk layout, format version 2: explicit, fixed, little-endian.
//! Version 2 adds one flag to hard-state records (bit 0 of the record flags: the replica is
//! recovering from lost state); a version-1 file reads as version 2 with no flag set.
//!
//! ```text
//! segment file (segment_bytes long, fully written before use: zero-filled or recycled)
//! ┌──────────────────────────── block 0..SEGMENT_HEADER_BYTES ───────────────────────────┐
//! │ segment header (64 bytes, rest of the 4 KiB zero)                                    │
//! │   0 magic "PHXWALSG"  8 format u32  12 header_len u32  16 segment_seq u64            │
//! │  24 segment_bytes u64  32 block_bytes u32  36..60 zero  60 crc32c(0..60) u32         │
//! ├──────────────────────────── batches, each at a block_bytes-aligned offset ───────────┤
//! │ batch header (40 bytes)                                                              │
//! │   0 magic "PXB1"  4 format u16  6 header_len u16  8 segment_seq u64                  │
//! │  16 batch_seq u64  24 body_len u32  28 record_count u32  32 crc32c(body) u32         │
//! │  36 crc32c(0..36) u32                                                                │
//! │ body: record_count records, back to back                                             │
//! │   record header (12 bytes): 0 len u32 (of the record body)  4 kind u8  5 flags u8    │
//! │     6 reserved u16  8 crc32c(header 0..8 ‖ body) u32                                 │
//! │ zero padding up to the next block_bytes boundary                                     │
//! └──────────────────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Why each field:
//! * `segment_seq` in every batch header ties a batch to this *use* of the file: a recycled
//!   segment still holds batches of its previous life, which must read as "end of log".
//! * `batch_seq` increases by one per batch across segments, so recovery can tell a torn tail
//!   (nothing valid follows) from a hole in the middle (a later batch continues the sequence).
//! * The body CRC makes a batch all-or-nothing: a torn write that left part of an older batch
//!   under a new header fails it. The per-record CRC lets a random read verify one record
//!   without reading its whole batch.
//! * Batches start on block boundaries so every write is one aligned O_DIRECT write that
//!   never rewrites a block holding acknowledged data.
//!
//! Log entries are stored as their protobuf encoding (`phalanx.v1.LogEntry`, the project's
//! stable wire format) behind a fixed prefix (partition, index, term) so recovery indexes
//! them without decoding.

use phalanx_proto::HardState;

use crate::types::{LogPosition, PartitionId};

/// The WAL format version this build writes and the newest it reads.
pub const WAL_FORMAT_VERSION: u32 = 2;
/// Segment header magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PHXWALSG";
/// Bytes reserved at the start of every segment for its header (one 4 KiB block, so it is
/// aligned for any device).
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
const SEGMENT_HEADER_LEN: usize = 64;
/// Batch header magic ("PXB1" little-endian).
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"PXB1");
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 40;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 12;
/// Fixed prefix of an entry record body: partition, index, term.
pub const ENTRY_PREFIX_BYTES: usize = 24;

/// Record kinds. A version-1 reader knows all of them; a new kind means a new version.
pub mod kind {
    /// A log entry: replaces the partition's entries at or after its index, then appends.
    pub const ENTRY: u8 = 1;
    /// A log entry rewritten forward by garbage collection: fills its index without
    /// truncating anything (it was live when copied).
    pub const ENTRY_RELOCATED: u8 = 2;
    /// Hard state (term, vote, commit) of a partition; record flag bit 0: recovering.
    pub const HARD_STATE: u8 = 3;
    /// Snapshot install: floor := (index, term), keeping the suffix or dropping everything as
    /// decided at write time.
    pub const SNAPSHOT: u8 = 4;
    /// Compaction: drop entries ≤ index, floor := (index, term).
    pub const COMPACT: u8 = 5;
    /// Remove every trace of a partition.
    pub const REMOVE_PARTITION: u8 = 6;
    /// Set a metadata key.
    pub const META_SET: u8 = 7;
    /// Delete a metadata key.
    pub const META_DELETE: u8 = 8;
}

/// Hard-state record flag: the replica is recovering from lost state (version 2).
pub const HARD_STATE_RECOVERING: u8 = 1;

/// Rounds `v` up to a multiple of `block` (a power of two).
#[must_use]
pub fn align_up(v: u64, block: u64) -> u64 {
    v.div_ceil(block) * block
}

pub(crate) fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u32,
    /// Sequence number of this use of the file.
    pub seq: u64,
    /// Size of the file.
    pub segment_bytes: u64,
    /// Alignment of batches.
    pub block_bytes: u32,
}

/// Why a segment header was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// Not a WAL segment at all.
    BadMagic,
    /// Written by a newer format.
    TooNew(u32),
    /// Damaged.
    Corrupt(String),
}

impl SegmentHeader {
    /// Encodes into the first `SEGMENT_HEADER_LEN` bytes of `b` (which must be zeroed to
    /// `SEGMENT_HEADER_BYTES`).
    pub fn encode(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        put_u32(b, 8, self.version);
        put_u32(b, 12, SEGMENT_HEADER_LEN as u32);
        put_u64(b, 16, self.seq);
        put_u64(b, 24, self.segment_bytes);
        put_u32(b, 32, self.block_bytes);
        b[36..60].fill(0);
        let crc = crc32c::crc32c(&b[0..60]);
        put_u32(b, 60, crc);
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        if b.get(0..8) != Some(&SEGMENT_MAGIC[..]) {
            return Err(SegmentHeaderError::BadMagic);
        }
        let bad = || SegmentHeaderError::Corrupt("segment header truncated".into());
        let version = get_u32(b, 8).ok_or_else(bad)?;
        let stored_crc = get_u32(b, 60).ok_or_else(bad)?;
        if crc32c::crc32c(&b[0..60]) != stored_crc {
            return Err(SegmentHeaderError::Corrupt("segment header checksum mismatch".into()));
        }
        // Checked after the CRC so a bit flip is reported as damage, not as a new version.
        if version > WAL_FORMAT_VERSION {
            return Err(SegmentHeaderError::TooNew(version));
        }
        if version == 0 || get_u32(b, 12) != Some(SEGMENT_HEADER_LEN as u32) {
            return Err(SegmentHeaderError::Corrupt(format!("bad segment header (version {version})")));
        }
        let seq = get_u64(b, 16).ok_or_else(bad)?;
        let segment_bytes = get_u64(b, 24).ok_or_else(bad)?;
        let block_bytes = get_u32(b, 32).ok_or_else(bad)?;
        if !block_bytes.is_power_of_two()
            || block_bytes < 512
            || u64::from(block_bytes) > SEGMENT_HEADER_BYTES
            || segment_bytes <= SEGMENT_HEADER_BYTES
            || segment_bytes % u64::from(block_bytes) != 0
        {
            return Err(SegmentHeaderError::Corrupt(format!(
                "bad segment geometry: {segment_bytes} bytes, blocks of {block_bytes}"
            )));
        }
        Ok(SegmentHeader { version, seq, segment_bytes, block_bytes })
    }
}

/// A decoded batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// The segment use this batch belongs to.
    pub segment_seq: u64,
    /// Global batch sequence number.
    pub batch_seq: u64,
    /// Bytes of records after the header.
    pub body_len: u32,
    /// Number of records.
    pub record_count: u32,
    /// CRC32C of the body.
    pub body_crc: u32,
}

/// What lies at a batch position.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderAt {
    /// Zeros: never written.
    Zero,
    /// A checksummed header (its version already checked).
    Valid(BatchHeader),
    /// A checksummed header of a newer format.
    TooNew(u16),
    /// Anything else: a torn header, garbage, or damage.
    Invalid,
}

impl BatchHeader {
    /// Encodes into `b[0..BATCH_HEADER_BYTES]`.
    pub fn encode(&self, b: &mut [u8]) {
        put_u32(b, 0, BATCH_MAGIC);
        put_u16(b, 4, WAL_FORMAT_VERSION as u16);
        put_u16(b, 6, BATCH_HEADER_BYTES as u16);
        put_u64(b, 8, self.segment_seq);
        put_u64(b, 16, self.batch_seq);
        put_u32(b, 24, self.body_len);
        put_u32(b, 28, self.record_count);
        put_u32(b, 32, self.body_crc);
        let crc = crc32c::crc32c(&b[0..36]);
        put_u32(b, 36, crc);
    }

    /// Classifies the bytes at a batch position.
    #[must_use]
    pub fn decode(b: &[u8]) -> HeaderAt {
        let Some(h) = b.get(0..BATCH_HEADER_BYTES) else { return HeaderAt::Invalid };
        if h.iter().all(|&x| x == 0) {
            return HeaderAt::Zero;
        }
        let (Some(magic), Some(version), Some(len), Some(crc)) =
            (get_u32(h, 0), get_u16(h, 4), get_u16(h, 6), get_u32(h, 36))
        else {
            return HeaderAt::Invalid;
        };
        if magic != BATCH_MAGIC || crc32c::crc32c(&h[0..36]) != crc {
            return HeaderAt::Invalid;
        }
        if u32::from(version) > WAL_FORMAT_VERSION {
            return HeaderAt::TooNew(version);
        }
        if usize::from(len) != BATCH_HEADER_BYTES || version == 0 {
            return HeaderAt::Invalid;
        }
        match (get_u64(h, 8), get_u64(h, 16), get_u32(h, 24), get_u32(h, 28), get_u32(h, 32)) {
            (Some(segment_seq), Some(batch_seq), Some(body_len), Some(record_count), Some(body_crc)) => {
                HeaderAt::Valid(BatchHeader { segment_seq, batch_seq, body_len, record_count, body_crc })
            }
            _ => HeaderAt::Invalid,
        }
    }
}

/// A decoded record, borrowing its variable parts from the buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Record<'a> {
    /// `kind::ENTRY` or `kind::ENTRY_RELOCATED`.
    Entry {
        /// Partition.
        partition: PartitionId,
        /// Log index.
        index: u64,
        /// Term.
        term: u64,
        /// Whether it is a relocated copy.
        relocated: bool,
        /// The protobuf-encoded `LogEntry`.
        proto: &'a [u8],
    },
    /// `kind::HARD_STATE`.
    HardState {
        /// Partition.
        partition: PartitionId,
        /// Term, vote, commit.
        hard_state: HardState,
    },
    /// `kind::SNAPSHOT`.
    Snapshot {
        /// Partition.
        partition: PartitionId,
        /// The new floor.
        pos: LogPosition,
        /// Whether entries after `pos` are kept.
        keep_suffix: bool,
    },
    /// `kind::COMPACT`.
    Compact {
        /// Partition.
        partition: PartitionId,
        /// The new floor.
        pos: LogPosition,
    },
    /// `kind::REMOVE_PARTITION`.
    Remove {
        /// Partition.
        partition: PartitionId,
    },
    /// `kind::META_SET`.
    MetaSet {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// `kind::META_DELETE`.
    MetaDelete {
        /// Key.
        key: &'a [u8],
    },
}

/// Body length of a fixed-size record kind, `None` for variable ones.
fn fixed_body_len(kind: u8) -> Option<usize> {
    match kind {
        kind::HARD_STATE => Some(32),
        kind::SNAPSHOT => Some(25),
        kind::COMPACT => Some(24),
        kind::REMOVE_PARTITION => Some(8),
        _ => None,
    }
}

/// Parses the record at the start of `b`, checking its CRC when `verify` (skipped only for
/// a batch this process just encoded). Returns it and its total length.
pub fn parse_record(b: &[u8], verify: bool) -> Result<(Record<'_>, usize), String> {
    // Byte 5 holds flags (only hard-state records have one, since version 2), bytes 6..8 are
    // reserved (zero); the CRC covers them.
    let (Some(len), Some(&k), Some(&flags), Some(stored_crc)) =
        (get_u32(b, 0), b.get(4), b.get(5), get_u32(b, 8))
    else {
        return Err("record header truncated".into());
    };
    let total = RECORD_HEADER_BYTES + len as usize;
    let Some(body) = b.get(RECORD_HEADER_BYTES..total) else {
        return Err(format!("record of {len} bytes runs past its batch"));
    };
    if verify && crc32c::crc32c_append(crc32c::crc32c(&b[0..8]), body) != stored_crc {
        return Err("record checksum mismatch".into());
    }
    if let Some(n) = fixed_body_len(k)
        && n != body.len()
    {
        return Err(format!("record kind {k} has {} bytes, expected {n}", body.len()));
    }
    let u = |at: usize| get_u64(body, at).ok_or_else(|| format!("record kind {k} truncated"));
    let rec = match k {
        kind::ENTRY | kind::ENTRY_RELOCATED => {
            if body.len() < ENTRY_PREFIX_BYTES {
                return Err("entry record truncated".into());
            }
            Record::Entry {
                partition: u(0)?,
                index: u(8)?,
                term: u(16)?,
                relocated: k == kind::ENTRY_RELOCATED,
                proto: &body[ENTRY_PREFIX_BYTES..],
            }
        }
        kind::HARD_STATE => Record::HardState {
            partition: u(0)?,
            hard_state: HardState {
                term: u(8)?,
                vote: u(16)?,
                commit: u(24)?,
                recovering: flags & HARD_STATE_RECOVERING != 0,
            },
        },
        kind::SNAPSHOT => Record::Snapshot {
            partition: u(0)?,
            pos: LogPosition::new(u(8)?, u(16)?),
            keep_suffix: body.get(24) == Some(&1),
        },
        kind::COMPACT => Record::Compact { partition: u(0)?, pos: LogPosition::new(u(8)?, u(16)?) },
        kind::REMOVE_PARTITION => Record::Remove { partition: u(0)? },
        kind::META_SET => {
            let klen = get_u32(body, 0).ok_or("meta record truncated")? as usize;
            let key = body.get(4..4 + klen).ok_or("meta key runs past its record")?;
            Record::MetaSet { key, value: &body[4 + klen..] }
        }
        kind::META_DELETE => Record::MetaDelete { key: body },
        other => return Err(format!("unknown record kind {other}")),
    };
    Ok((rec, total))
}

/// Writes records into a buffer sized in advance.
pub struct RecordWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    count: u32,
}

impl<'a> RecordWriter<'a> {
    /// Writes records into `buf` from offset 0.
    pub fn new(buf: &'a mut [u8]) -> Self {
        RecordWriter { buf, pos: 0, count: 0 }
    }

    /// Bytes written so far.
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Records written so far.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Appends one record of `kind` (with `flags`) whose `body_len`-byte body `fill` writes.
    fn record(&mut self, kind: u8, flags: u8, body_len: usize, fill: impl FnOnce(&mut [u8])) {
        let start = self.pos;
        let end = start + RECORD_HEADER_BYTES + body_len;
        let rec = &mut self.buf[start..end];
        put_u32(rec, 0, body_len as u32);
        rec[4] = kind;
        rec[5] = flags;
        rec[6..8].fill(0);
        fill(&mut rec[RECORD_HEADER_BYTES..]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[0..8]), &rec[RECORD_HEADER_BYTES..]);
        put_u32(rec, 8, crc);
        self.pos = end;
        self.count += 1;
    }

    /// An entry record whose protobuf body `encode` writes into exactly `proto_len` bytes.
    pub fn entry(
        &mut self,
        kind: u8,
        partition: PartitionId,
        index: u64,
        term: u64,
        proto_len: usize,
        encode: impl FnOnce(&mut [u8]),
    ) {
        self.record(kind, 0, ENTRY_PREFIX_BYTES + proto_len, |b| {
            put_u64(b, 0, partition);
            put_u64(b, 8, index);
            put_u64(b, 16, term);
            encode(&mut b[ENTRY_PREFIX_BYTES..]);
        });
    }

    /// A hard state record.
    pub fn hard_state(&mut self, partition: PartitionId, hs: &HardState) {
        let flags = if hs.recovering { HARD_STATE_RECOVERING } else { 0 };
        self.record(kind::HARD_STATE, flags, 32, |b| {
            put_u64(b, 0, partition);
            put_u64(b, 8, hs.term);
            put_u64(b, 16, hs.vote);
            put_u64(b, 24, hs.commit);
        });
    }

    /// A snapshot-install record.
    pub fn snapshot(&mut self, partition: PartitionId, pos: LogPosition, keep_suffix: bool) {
        self.record(kind::SNAPSHOT, 0, 25, |b| {
            put_u64(b, 0, partition);
            put_u64(b, 8, pos.index);
            put_u64(b, 16, pos.term);
            b[24] = u8::from(keep_suffix);
        });
    }

    /// A compaction record.
    pub fn compact(&mut self, partition: PartitionId, pos: LogPosition) {
        self.record(kind::COMPACT, 0, 24, |b| {
            put_u64(b, 0, partition);
            put_u64(b, 8, pos.index);
            put_u64(b, 16, pos.term);
        });
    }

    /// A partition removal record.
    pub fn remove(&mut self, partition: PartitionId) {
        self.record(kind::REMOVE_PARTITION, 0, 8, |b| put_u64(b, 0, partition));
    }

    /// A metadata set record.
    pub fn meta_set(&mut self, key: &[u8], value: &[u8]) {
        self.record(kind::META_SET, 0, 4 + key.len() + value.len(), |b| {
            put_u32(b, 0, key.len() as u32);
            b[4..4 + key.len()].copy_from_slice(key);
            b[4 + key.len()..].copy_from_slice(value);
        });
    }

    /// A metadata delete record.
    pub fn meta_delete(&mut self, key: &[u8]) {
        self.record(kind::META_DELETE, 0, key.len(), |b| b.copy_from_slice(key));
    }
}

/// Total size of a record with a `body_len`-byte body.
#[must_use]
pub const fn record_len(body_len: usize) -> usize {
    RECORD_HEADER_BYTES + body_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trip_and_checks() {
        let mut b = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        let h = SegmentHeader { version: 1, seq: 7, segment_bytes: 1 << 20, block_bytes: 512 };
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut flipped = b.clone();
        flipped[20] ^= 1;
        assert!(matches!(SegmentHeader::decode(&flipped), Err(SegmentHeaderError::Corrupt(_))));
        // Version 1 files (no hard-state flags) still read.
        let current = SegmentHeader { version: WAL_FORMAT_VERSION, ..h };
        current.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(current));
        let newer = SegmentHeader { version: WAL_FORMAT_VERSION + 1, ..h };
        newer.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Err(SegmentHeaderError::TooNew(WAL_FORMAT_VERSION + 1)));
        assert_eq!(
            SegmentHeader::decode(b"not a wal at all, not at all....."),
            Err(SegmentHeaderError::BadMagic)
        );
    }

    #[test]
    fn records_round_trip_and_detect_flips() {
        let mut buf = vec![0u8; 512];
        let mut w = RecordWriter::new(&mut buf);
        w.entry(kind::ENTRY, 3, 10, 2, 4, |b| b.copy_from_slice(b"abcd"));
        w.hard_state(3, &HardState { term: 2, vote: 1, commit: 9, recovering: true });
        w.meta_set(b"k", b"value");
        let end = w.position();
        let (r, n) = parse_record(&buf, true).unwrap();
        assert_eq!(r, Record::Entry { partition: 3, index: 10, term: 2, relocated: false, proto: b"abcd" });
        let (r2, n2) = parse_record(&buf[n..], true).unwrap();
        assert!(
            matches!(r2, Record::HardState { partition: 3, hard_state } if hard_state.commit == 9 && hard_state.recovering)
        );
        let (r3, n3) = parse_record(&buf[n + n2..], true).unwrap();
        assert_eq!(r3, Record::MetaSet { key: b"k", value: b"value" });
        assert_eq!(n + n2 + n3, end);
        for bit in 0..(n * 8) {
            let mut c = buf.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_record(&c, true).is_err(), "flipped bit {bit} went unnoticed");
        }
    }

    #[test]
    fn batch_header_classification() {
        let mut b = [0u8; BATCH_HEADER_BYTES];
        assert_eq!(BatchHeader::decode(&b), HeaderAt::Zero);
        let h = BatchHeader { segment_seq: 1, batch_seq: 2, body_len: 3, record_count: 4, body_crc: 5 };
        h.encode(&mut b);
        assert_eq!(BatchHeader::decode(&b), HeaderAt::Valid(h));
        b[17] ^= 4;
        assert_eq!(BatchHeader::decode(&b), HeaderAt::Invalid);
    }
}
