//! Offline inspection of a WAL directory with plain (blocking) file reads: for tests, tools
//! and operators. Never used by a running store.

use std::path::{Path, PathBuf};

use super::format::{
    BATCH_HEADER_BYTES, BatchHeader, HeaderAt, SEGMENT_HEADER_BYTES, SegmentHeader, align_up, get_u32,
};
use super::segment::{FileKind, classify};

/// One valid batch found in a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the batch header.
    pub offset: u64,
    /// Length including header and padding.
    pub len: u64,
    /// Batch sequence number.
    pub batch_seq: u64,
    /// Number of records.
    pub records: u32,
}

/// Segment files of `dir`, in sequence order.
pub fn segment_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut segs = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if let Some(FileKind::Segment(seq)) = item.file_name().to_str().map(classify) {
            segs.push((seq, item.path()));
        }
    }
    segs.sort();
    Ok(segs.into_iter().map(|(_, p)| p).collect())
}

/// Every valid batch of every segment in `dir`, in log order (stops at each segment's end
/// the way recovery does, without judging what lies beyond).
pub fn list_batches(dir: &Path) -> std::io::Result<Vec<BatchInfo>> {
    let mut out = Vec::new();
    for path in segment_files(dir)? {
        let data = std::fs::read(&path)?;
        let Ok(h) = SegmentHeader::decode(&data) else { continue };
        let block = u64::from(h.block_bytes);
        let mut pos = SEGMENT_HEADER_BYTES;
        while let Some(at) = data.get(pos as usize..) {
            let HeaderAt::Valid(b) = BatchHeader::decode(at) else { break };
            let body_end = pos + BATCH_HEADER_BYTES as u64 + u64::from(b.body_len);
            let Some(body) = data.get((pos as usize + BATCH_HEADER_BYTES)..body_end as usize) else { break };
            if b.segment_seq != h.seq || crc32c::crc32c(body) != b.body_crc {
                break;
            }
            let len = align_up(body_end, block) - pos;
            out.push(BatchInfo {
                segment: path.clone(),
                offset: pos,
                len,
                batch_seq: b.batch_seq,
                records: b.record_count,
            });
            pos += len;
        }
    }
    Ok(out)
}

/// Rewrites the format version in a segment header, keeping its checksum valid (tests of
/// version refusal).
pub fn set_segment_format_version(segment: &Path, version: u32) -> std::io::Result<()> {
    let mut data = std::fs::read(segment)?;
    let Ok(mut h) = SegmentHeader::decode(&data) else {
        return Err(std::io::Error::other("not a valid segment"));
    };
    h.version = version;
    h.encode(&mut data);
    debug_assert_eq!(get_u32(&data, 8), Some(version));
    std::fs::write(segment, &data)
}
