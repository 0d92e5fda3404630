//! Opening a shard directory: find the segments, replay their batches into the index, and
//! decide where the log ends.
//!
//! The rules:
//! * Segments are replayed in sequence order; their numbers must be consecutive.
//! * Within a segment, batches follow each other at block boundaries. The valid batches end
//!   at the first position holding zeros, a batch of another life of the file (a recycled
//!   segment), or anything that fails its checksums.
//! * If that end is followed — later in the same segment, or as the first batch of a later
//!   segment — by a valid batch with a higher sequence number than the ones replayed, data in
//!   the *middle* of the log is damaged: open fails with [`StorageError::Corrupt`] naming the
//!   file and offset. Otherwise the end is a torn tail (a batch cut short by a crash, never
//!   acknowledged) and is dropped: the next write overwrites it.
//! * A damaged *last* batch looks exactly like a torn one and is dropped too: checksums
//!   cannot tell bit rot from a crash at the very end of the log. But when its header says
//!   it is the batch that came next (this segment's life, the expected sequence number), it
//!   may have been written whole and acknowledged before it was damaged: it is reported
//!   ([`DamagedTail`], with the partitions and entries its readable records held) so the
//!   engine treats those partitions as having lost state rather than drop them silently.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaFile;

use super::format::{
    BATCH_HEADER_BYTES, BATCH_MAGIC, BatchHeader, HeaderAt, Record, SEGMENT_HEADER_BYTES, SegmentHeader,
    SegmentHeaderError, WAL_FORMAT_VERSION, align_up, get_u32, get_u64, parse_record,
};
use super::index::Index;
use super::preload::{PRELOAD_SEGMENTS_IN_FLIGHT, Preloaded, PreloadedEntry, decode_segment};
use super::segment::{FileKind, Segment, classify, gio, open_rw};
use crate::error::{Result, StorageError};
use crate::types::{DamagedTail, PartitionId};

/// Size of one read while replaying a segment.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// Reads of one segment in flight at once while replaying: enough that the device always has
/// the next one queued (one at a time left it idle between reads), few enough that the
/// buffers in flight (this many × [`REPLAY_READ_BYTES`]) stay a fraction of a segment.
const REPLAY_READS_IN_FLIGHT: u64 = 4;

/// Everything recovered from a shard directory.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Segments in sequence order; the last one is where writing continues.
    pub segments: VecDeque<Segment>,
    /// An empty segment already activated after the last one.
    pub next: Option<Segment>,
    /// Spare files, ready to become segments.
    pub spares: Vec<PathBuf>,
    /// Empty segments past `next`, to recycle.
    pub recycle: Vec<Segment>,
    /// The index of every partition and metadata key.
    pub index: Index,
    /// Sequence number of the next batch.
    pub next_batch_seq: u64,
    /// The dropped last batch, when it may have been acknowledged.
    pub damaged_tail: Option<DamagedTail>,
    /// Entries decoded from the replayed segments, for the bulk load (`preload`).
    pub preloaded: Preloaded,
}

/// Recovers the WAL in `dir`. Spares of another size than `segment_bytes` are deleted.
/// Entries are decoded for the bulk load up to `preload_bytes_max` (`preload`).
pub(crate) async fn recover(
    dir: &Path,
    segment_bytes: u64,
    dsync: bool,
    preload_bytes_max: u64,
) -> Result<Recovered> {
    let mut seqs = Vec::new();
    // Bytes of all segment files: the most a record's holes may ask the index to hold.
    let mut log_bytes = 0u64;
    let mut spares = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    for item in listing {
        let item = item.map_err(|e| StorageError::io("list", dir, e))?;
        let path = item.path();
        let name = item.file_name();
        let Some(name) = name.to_str() else {
            return Err(StorageError::Foreign {
                file: path,
                reason: "unexpected file in a WAL directory".into(),
            });
        };
        match classify(name) {
            FileKind::Segment(seq) => {
                seqs.push(seq);
                let len = item.metadata().map_err(|e| StorageError::io("stat", &path, e))?.len();
                log_bytes = log_bytes.saturating_add(len);
            }
            FileKind::Spare(_) => {
                let len = item.metadata().map_err(|e| StorageError::io("stat", &path, e))?.len();
                if len == segment_bytes {
                    spares.push(path);
                } else {
                    std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
                }
            }
            // A spare interrupted while being zero-filled.
            FileKind::Temp => {
                std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?
            }
            FileKind::Lock => {}
            FileKind::Unknown => {
                return Err(StorageError::Foreign {
                    file: path,
                    reason: "unexpected file in a WAL directory".into(),
                });
            }
        }
    }
    seqs.sort_unstable();
    spares.sort();

    let mut rec = Recovered { spares, preloaded: Preloaded::up_to(preload_bytes_max), ..Default::default() };
    rec.index.limit_holes(log_bytes);
    let mut expected: Option<u64> = None;
    // The last segment holding a batch, and where the previous segment's batches ended.
    let mut last_with_batches: Option<usize> = None;
    let mut prev_end: Option<(PathBuf, u64)> = None;
    let mut loaded = Vec::with_capacity(seqs.len());
    // The next segment is read while this one is replayed (see `read_ahead`).
    let mut ahead: Option<glommio::task::JoinHandle<Result<ReadSegment>>> = None;
    // Replayed segments whose entries the blocking thread decodes (`preload`), oldest first.
    let mut decoding: VecDeque<glommio::task::JoinHandle<Vec<PreloadedEntry>>> = VecDeque::new();
    for (i, &seq) in seqs.iter().enumerate() {
        let path = dir.join(super::segment::segment_name(seq));
        let read = match ahead.take() {
            Some(t) => t.await.unwrap_or_else(|| {
                Err(StorageError::Backend {
                    backend: "wal",
                    reason: "the read-ahead of a segment was cancelled".into(),
                })
            }),
            None => open_and_read(path.clone(), seq, dsync).await,
        };
        let ReadSegment { file, header, data } = read?;
        if let Some(&next) = seqs.get(i + 1) {
            ahead = Some(read_ahead(dir.join(super::segment::segment_name(next)), next, dsync).await);
        }
        if i > 0 && seqs[i - 1] + 1 != seq {
            return Err(StorageError::corrupt(path, 0, format!("segment {} is missing", seqs[i - 1] + 1)));
        }
        let scan = scan_segment(&header, &path, &data, &mut rec.index, &mut expected, prev_end.as_ref())?;
        if scan.batches > 0 {
            last_with_batches = Some(i);
        }
        if let Some(d) = scan.damaged_tail {
            rec.damaged_tail = Some(d);
        }
        if decoding.len() >= PRELOAD_SEGMENTS_IN_FLIGHT
            && let Some(task) = decoding.pop_front()
        {
            rec.preloaded.add(task.await.unwrap_or_default());
        }
        if scan.batches > 0 && rec.preloaded.has_room() {
            decoding.push_back(decode_in_background(data, scan.end, u64::from(header.block_bytes)));
        }
        prev_end = Some((path.clone(), scan.end));
        loaded.push(Segment {
            seq,
            path,
            file,
            bytes: header.segment_bytes,
            block: u64::from(header.block_bytes),
            end: scan.end,
        });
    }
    for task in decoding {
        rec.preloaded.add(task.await.unwrap_or_default());
    }
    if let Some((p, index)) = rec.index.find_hole() {
        return Err(StorageError::Corrupt {
            file: dir.to_path_buf(),
            offset: None,
            reason: format!("partition {p}: live entry {index} is in no segment"),
        });
    }
    // Writing continues in the last segment holding a batch; an empty segment after it was
    // already prepared as the next one; any further empty ones are recycled.
    let active = last_with_batches.unwrap_or(0);
    for (i, seg) in loaded.into_iter().enumerate() {
        if i <= active {
            rec.segments.push_back(seg);
        } else if rec.next.is_none() {
            rec.next = Some(seg);
        } else {
            rec.recycle.push(seg);
        }
    }
    rec.next_batch_seq = expected.unwrap_or(1);
    Ok(rec)
}

/// Decodes the entry records of a replayed segment (`data`, valid up to `end`) on the
/// executor's blocking thread, off the replay's core (`preload`).
fn decode_in_background(
    data: Vec<u8>,
    end: u64,
    block: u64,
) -> glommio::task::JoinHandle<Vec<PreloadedEntry>> {
    glommio::spawn_local(async move {
        glommio::executor()
            .spawn_blocking(move || decode_segment(&bytes::Bytes::from(data), end, block))
            .await
    })
    .detach()
}

/// A segment opened and read whole.
struct ReadSegment {
    file: Rc<DmaFile>,
    header: SegmentHeader,
    data: Vec<u8>,
}

async fn open_and_read(path: PathBuf, seq: u64, dsync: bool) -> Result<ReadSegment> {
    let file = Rc::new(open_rw(&path, dsync).await?);
    let (header, data) = read_segment(&file, &path, seq).await?;
    Ok(ReadSegment { file, header, data })
}

/// Starts reading segment `seq` in a task of its own and returns once its reads are
/// submitted, so that the disk reads it while the caller replays the previous segment (the
/// replay is CPU: checksums and the index). Memory: one more segment held, so a recovery
/// holds at most two segments' bytes at a time.
async fn read_ahead(path: PathBuf, seq: u64, dsync: bool) -> glommio::task::JoinHandle<Result<ReadSegment>> {
    let task = glommio::spawn_local(open_and_read(path, seq, dsync)).detach();
    // Lets the task run up to its reads and the reactor submit them: a timer wait parks this
    // task, so the executor runs the new one and then enters the kernel (a plain yield could
    // come back here before the reads left the submission queue).
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
    task
}

/// Reads and checks a segment's header, then the whole segment, with every read of it in
/// flight at once (the device serves them in parallel; one at a time left it idle between
/// them).
async fn read_segment(file: &Rc<DmaFile>, path: &Path, seq: u64) -> Result<(SegmentHeader, Vec<u8>)> {
    let size = file.file_size().await.map_err(|e| gio("stat", path, e))?;
    if size < SEGMENT_HEADER_BYTES {
        return Err(StorageError::corrupt(path, 0, format!("segment file is only {size} bytes")));
    }
    let head =
        file.read_at_aligned(0, SEGMENT_HEADER_BYTES as usize).await.map_err(|e| gio("read", path, e))?;
    let header = decode_header(&head, path)?;
    if header.seq != seq {
        return Err(StorageError::corrupt(
            path,
            0,
            format!("header says segment {}, the name {seq}", header.seq),
        ));
    }
    if size < header.segment_bytes {
        return Err(StorageError::corrupt(
            path,
            size,
            format!("segment is {size} bytes, its header says {}", header.segment_bytes),
        ));
    }
    let len = header.segment_bytes;
    let chunks = len.div_ceil(REPLAY_READ_BYTES as u64);
    let start = |k: u64| {
        let pos = k * REPLAY_READ_BYTES as u64;
        let n = REPLAY_READ_BYTES.min((len - pos) as usize);
        let f = file.clone();
        (pos, n, glommio::spawn_local(async move { f.read_at_aligned(pos, n).await }))
    };
    let mut reads: VecDeque<_> = (0..chunks.min(REPLAY_READS_IN_FLIGHT)).map(start).collect();
    let mut next = reads.len() as u64;
    let mut data = Vec::with_capacity(len as usize);
    while let Some((pos, n, read)) = reads.pop_front() {
        if next < chunks {
            reads.push_back(start(next));
            next += 1;
        }
        let chunk = read.await.map_err(|e| gio("read", path, e))?;
        data.extend_from_slice(&chunk);
        // A short read (not expected of a file this long) is finished one read at a time.
        while (data.len() as u64) < pos + n as u64 {
            let at = data.len() as u64;
            let more = file
                .read_at_aligned(at, (pos + n as u64 - at) as usize)
                .await
                .map_err(|e| gio("read", path, e))?;
            if more.is_empty() {
                return Err(StorageError::corrupt(path, at, "segment ends early"));
            }
            data.extend_from_slice(&more);
        }
    }
    data.truncate(len as usize);
    Ok((header, data))
}

/// A segment's header, checked; the error names the file.
fn decode_header(head: &[u8], path: &Path) -> Result<SegmentHeader> {
    match SegmentHeader::decode(head) {
        Ok(h) => Ok(h),
        Err(SegmentHeaderError::BadMagic) => {
            Err(StorageError::Foreign { file: path.to_path_buf(), reason: "no WAL segment magic".into() })
        }
        Err(SegmentHeaderError::TooNew(v)) => Err(StorageError::FormatTooNew {
            file: path.to_path_buf(),
            found: v,
            supported: WAL_FORMAT_VERSION,
        }),
        Err(SegmentHeaderError::Corrupt(reason)) => Err(StorageError::corrupt(path, 0, reason)),
    }
}

/// [`recover`] of a directory holding one segment, whose bytes (`data`, the whole file) are
/// in memory and whose name is taken to match its header: the header's checks, the replay
/// into a fresh index, the torn-tail and hole rules. Returns the header, what the scan found
/// and the index.
pub(crate) fn replay_image(path: &Path, data: &[u8]) -> Result<(SegmentHeader, SegmentScan, Index)> {
    let size = data.len() as u64;
    let Some(head) = data.get(..SEGMENT_HEADER_BYTES as usize) else {
        return Err(StorageError::corrupt(path, 0, format!("segment file is only {size} bytes")));
    };
    let header = decode_header(head, path)?;
    if size < header.segment_bytes {
        return Err(StorageError::corrupt(
            path,
            size,
            format!("segment is {size} bytes, its header says {}", header.segment_bytes),
        ));
    }
    // As `read_segment`: what lies past the header's size is not part of the segment.
    let data = &data[..header.segment_bytes as usize];
    let mut index = Index::default();
    index.limit_holes(data.len() as u64);
    let scan = scan_segment(&header, path, data, &mut index, &mut None, None)?;
    if let Some((p, index)) = index.find_hole() {
        return Err(StorageError::Corrupt {
            file: path.to_path_buf(),
            offset: None,
            reason: format!("partition {p}: live entry {index} is in no segment"),
        });
    }
    Ok((header, scan, index))
}

/// What replaying one segment found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// Offset just past the last valid batch.
    pub end: u64,
    /// Valid batches.
    pub batches: u64,
    /// The batch at `end`, dropped, when its header says it came next (see the module docs).
    pub damaged_tail: Option<DamagedTail>,
}

/// Whether the bytes at `at` start a batch header of this segment's life carrying
/// `batch_seq` (its own checksum aside): a batch that came next, whatever damaged it.
fn claims_next(at: &[u8], segment_seq: u64, batch_seq: Option<u64>) -> bool {
    get_u32(at, 0) == Some(BATCH_MAGIC)
        && get_u64(at, 8) == Some(segment_seq)
        && batch_seq.is_none_or(|e| get_u64(at, 16) == Some(e))
}

/// The partitions (and entry ranges) a damaged batch's records held, read in order up to
/// the first damaged one, and whether all of them could be read.
fn damaged_partitions(body: &[u8]) -> (BTreeMap<PartitionId, Option<(u64, u64)>>, bool) {
    let mut out: BTreeMap<PartitionId, Option<(u64, u64)>> = BTreeMap::new();
    let mut off = 0usize;
    while off < body.len() {
        let Ok((rec, n)) = parse_record(&body[off..], true) else { return (out, false) };
        off += n;
        match rec {
            Record::Entry { partition, index, .. } => {
                let r = out.entry(partition).or_insert(None);
                *r = Some(r.map_or((index, index), |(lo, hi)| (lo.min(index), hi.max(index))));
            }
            Record::HardState { partition, .. }
            | Record::Snapshot { partition, .. }
            | Record::Compact { partition, .. }
            | Record::Remove { partition } => {
                out.entry(partition).or_insert(None);
            }
            Record::MetaSet { .. } | Record::MetaDelete { .. } => {}
        }
    }
    (out, true)
}

/// Replays the batches of one segment into `index`.
///
/// `expected` is the sequence number the next batch must carry (`None` before the first
/// batch of the oldest segment); `prev_end` where the previous segment's batches ended, to
/// name it when batches are missing between segments.
pub(crate) fn scan_segment(
    header: &SegmentHeader,
    path: &Path,
    data: &[u8],
    index: &mut Index,
    expected: &mut Option<u64>,
    prev_end: Option<&(PathBuf, u64)>,
) -> Result<SegmentScan> {
    let block = u64::from(header.block_bytes);
    let len = data.len() as u64;
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut batches = 0u64;
    let mut damaged: Option<DamagedTail> = None;
    while pos + BATCH_HEADER_BYTES as u64 <= len {
        let at = &data[pos as usize..];
        let h = match BatchHeader::decode(at) {
            HeaderAt::Valid(h) if h.segment_seq == header.seq => h,
            HeaderAt::TooNew(v) => {
                return Err(StorageError::FormatTooNew {
                    file: path.to_path_buf(),
                    found: u32::from(v),
                    supported: WAL_FORMAT_VERSION,
                });
            }
            HeaderAt::Invalid if claims_next(at, header.seq, *expected) => {
                // The header itself is damaged, yet it names the batch that came next.
                damaged = Some(DamagedTail {
                    file: path.to_path_buf(),
                    offset: pos,
                    batch_seq: get_u64(at, 16).unwrap_or(0),
                    partitions: BTreeMap::new(),
                    complete: false,
                });
                break;
            }
            _ => break,
        };
        if let Some(e) = *expected
            && h.batch_seq != e
        {
            return Err(match (batches, prev_end) {
                (0, Some((prev, end))) if h.batch_seq > e => StorageError::corrupt(
                    prev,
                    *end,
                    format!(
                        "batches {e}..{} are missing: the end of this segment is damaged ({} starts with batch {})",
                        h.batch_seq - 1,
                        path.display(),
                        h.batch_seq
                    ),
                ),
                _ => StorageError::corrupt(
                    path,
                    pos,
                    format!("batch {} where batch {e} was expected", h.batch_seq),
                ),
            });
        }
        let body_start = pos + BATCH_HEADER_BYTES as u64;
        let body_end = body_start + u64::from(h.body_len);
        if body_end > len {
            break;
        }
        let body = &data[body_start as usize..body_end as usize];
        if crc32c::crc32c(body) != h.body_crc {
            if expected.is_none_or(|e| h.batch_seq == e) {
                let (partitions, complete) = damaged_partitions(body);
                damaged = Some(DamagedTail {
                    file: path.to_path_buf(),
                    offset: pos,
                    batch_seq: h.batch_seq,
                    partitions,
                    complete,
                });
            }
            break;
        }
        // The batch is whole: from here on any inconsistency is damage, not a torn write.
        // Records are parsed without checking their own CRCs: the body's CRC, just checked,
        // covers every byte of them (the write path applies its batch the same way). Reads
        // check a record's CRC, as they meet it alone.
        let mut off = 0usize;
        let mut count = 0u32;
        while off < body.len() {
            let rec_pos = body_start + off as u64;
            let (rec, n) =
                parse_record(&body[off..], false).map_err(|r| StorageError::corrupt(path, rec_pos, r))?;
            index
                .apply(&rec, header.seq, rec_pos as u32, n as u32)
                .map_err(|r| StorageError::corrupt(path, rec_pos, r))?;
            off += n;
            count += 1;
        }
        if count != h.record_count {
            return Err(StorageError::corrupt(
                path,
                pos,
                format!("batch holds {count} records, its header says {}", h.record_count),
            ));
        }
        // Sequence numbers count batches from 1: the last one leaves no next (damage).
        let next = h.batch_seq.checked_add(1).ok_or_else(|| {
            StorageError::corrupt(
                path,
                pos,
                format!("batch sequence number {} has no successor", h.batch_seq),
            )
        })?;
        *expected = Some(next);
        batches += 1;
        pos = align_up(body_end, block);
    }
    let end = pos.min(len);
    // Anything valid of this segment's life after the end means the end is a hole in the
    // middle of the log, not a torn tail.
    let mut q = end + block;
    while q + BATCH_HEADER_BYTES as u64 <= len {
        if let HeaderAt::Valid(h) = BatchHeader::decode(&data[q as usize..])
            && h.segment_seq == header.seq
            && expected.is_none_or(|e| h.batch_seq >= e)
        {
            return Err(StorageError::corrupt(
                path,
                end,
                format!("damaged batch followed by valid batch {} at offset {q}", h.batch_seq),
            ));
        }
        q += block;
    }
    Ok(SegmentScan { end, batches, damaged_tail: damaged })
}

#[cfg(test)]
mod tests {
    use super::super::format::{BatchHeader, RecordWriter};
    use super::*;
    use crate::types::LogPosition;

    /// A one-batch segment image (blocks of 512) whose batch carries `batch_seq`.
    fn image(batch_seq: u64) -> Vec<u8> {
        let mut img = vec![0u8; 8192];
        SegmentHeader { version: WAL_FORMAT_VERSION, seq: 1, segment_bytes: 8192, block_bytes: 512 }
            .encode(&mut img);
        let body = SEGMENT_HEADER_BYTES as usize + BATCH_HEADER_BYTES;
        let mut w = RecordWriter::new(&mut img[body..]);
        w.compact(1, LogPosition::new(3, 1));
        let (len, record_count) = (w.position(), w.count());
        let body_crc = crc32c::crc32c(&img[body..body + len]);
        BatchHeader { segment_seq: 1, batch_seq, body_len: len as u32, record_count, body_crc }
            .encode(&mut img[SEGMENT_HEADER_BYTES as usize..]);
        img
    }

    /// Regression (found by the `wal` fuzz target): a checksummed batch numbered `u64::MAX`
    /// overflowed the next expected number.
    #[test]
    fn a_batch_numbered_u64_max_is_damage() {
        let (_, scan, index) = replay_image(Path::new("s"), &image(7)).unwrap();
        assert_eq!(scan.batches, 1);
        assert_eq!(index.state(1).map(|s| s.floor.index), Some(3));
        let e = replay_image(Path::new("s"), &image(u64::MAX)).unwrap_err();
        assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
    }
}
