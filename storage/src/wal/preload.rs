//! Entries decoded while the replay reads the segments, so that the bulk load at restart
//! (`load`) need not read them a second time.
//!
//! A restart used to read the log twice: the replay (`recovery`) read every segment to
//! rebuild the index, then the bulk load read the live records again to decode their
//! entries, ~450 MB twice for a million 256-byte entries. Now, once the replay has checked a
//! segment (every batch's checksum, every record parsed into the index), its bytes go to the
//! executor's blocking thread, which decodes the segment's entry records while the replay
//! goes on with the next segment: the two run on two cores instead of one after the other.
//! The bulk load takes every entry it wants from here and reads only what is missing.
//!
//! What is decoded here is a cache, never the truth: the index decides which record holds a
//! partition's entry. The load places the decoded entries in log order, so a later copy of
//! an index (an overwrite, a relocation) replaces an earlier one, as it did in the log; a
//! copy of a compacted index, or past a partition's end, has no place; and an entry whose
//! term is not the one the index holds is read instead. A segment that cannot be decoded
//! whole (a record that does not decode: damage the bulk load's read reports with its file
//! and offset) keeps what was decoded before it; the rest is read as before.
//!
//! Memory: the decoded entries until the load ends (the live ones are what the load returns
//! anyway; the dead ones are at most what the segments hold), plus
//! [`PRELOAD_SEGMENTS_IN_FLIGHT`] segments' bytes waiting for or being decoded. Past
//! [`PRELOAD_BYTES_MAX`] of decoded entries no more segments are handed over (those already
//! handed over, at most [`PRELOAD_SEGMENTS_IN_FLIGHT`], are still decoded).

use bytes::Bytes;
use phalanx_proto::LogEntry;

use super::format::{
    BATCH_HEADER_BYTES, BatchHeader, HeaderAt, RECORD_HEADER_BYTES, Record, SEGMENT_HEADER_BYTES, align_up,
    parse_record,
};
use crate::types::PartitionId;

/// Segments handed to the decoding thread and not yet back: one. Decoding a segment takes
/// less than replaying the next one, so the decoder rarely waits; each more in flight held
/// another segment's bytes (64 MiB by default; measured: ~60 MiB more peak memory for two,
/// no faster) on top of the two the replay holds.
pub(crate) const PRELOAD_SEGMENTS_IN_FLIGHT: usize = 1;

/// Decoded entries (their payload and type bytes, plus [`ENTRY_OVERHEAD_BYTES`] each) above
/// which later segments are not decoded: the bulk load reads their entries (the default of
/// `WalOptions::preload_bytes_max`). 1 GiB: a log larger than that is read the slower way
/// rather than held in memory twice over (decoded, and as the partitions' entries being
/// built from it) beyond that size.
pub const PRELOAD_BYTES_MAX: u64 = 1 << 30;

/// What one decoded entry costs in memory besides its payload and type bytes: the entry
/// itself, its place in the segment's list and the two buffers' headers.
pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 160;

/// One entry record, decoded.
#[derive(Debug)]
pub(crate) struct PreloadedEntry {
    /// Its partition.
    pub partition: PartitionId,
    /// The entry (its index and term are the record's).
    pub entry: LogEntry,
}

/// Decodes the entry records of the batches in `data[..end]`, a segment the replay checked
/// (`end` is where its valid batches end; `block` its block size). Stops at the first thing
/// that does not parse or decode and returns what came before it (see the module docs).
///
/// The entries' byte fields are views of `data`: no allocation per entry on this thread,
/// whose allocations the shard's thread would otherwise free one by one when the entries go
/// (mimalloc's cross-thread frees showed in the profile of applying a restart's million
/// entries). [`Preloaded::add`] copies them out on the shard's thread.
pub(crate) fn decode_segment(data: &Bytes, end: u64, block: u64) -> Vec<PreloadedEntry> {
    let end = end.min(data.len() as u64);
    // Sized once from the batch headers' record counts, which the replay checked (growing
    // it copied every entry decoded so far, over and over); never more than records fit.
    let records: usize = batches(data, end, block).map(|(_, h)| h.record_count as usize).sum();
    let mut out = Vec::with_capacity(records.min(data.len() / RECORD_HEADER_BYTES));
    for (body_start, h) in batches(data, end, block) {
        let body = &data[body_start as usize..(body_start + u64::from(h.body_len)) as usize];
        let mut off = 0usize;
        while off < body.len() {
            // The replay checked the body's checksum, which covers every record.
            let Ok((rec, n)) = parse_record(&body[off..], false) else { return out };
            if let Record::Entry { partition, index, term, proto, .. } = rec {
                match LogEntry::decode_from_bytes(&data.slice_ref(proto)) {
                    Ok(entry) if entry.index == index && entry.term == term => {
                        out.push(PreloadedEntry { partition, entry });
                    }
                    _ => return out,
                }
            }
            off += n;
        }
    }
    out
}

/// The batches wholly in `data[..end]`, in order: where each one's body starts, and its
/// header. (The replay's scan walks them too; handing its list of them over instead measured
/// ~90 MiB more peak memory at a 1M-entry restart, 9 runs against 8, for a reason not found:
/// this walk over the headers is cheap.)
fn batches(data: &[u8], end: u64, block: u64) -> impl Iterator<Item = (u64, BatchHeader)> + '_ {
    let mut pos = SEGMENT_HEADER_BYTES;
    std::iter::from_fn(move || {
        if pos + BATCH_HEADER_BYTES as u64 > end {
            return None;
        }
        let HeaderAt::Valid(h) = BatchHeader::decode(&data[pos as usize..]) else { return None };
        let body_start = pos + BATCH_HEADER_BYTES as u64;
        let body_end = body_start + u64::from(h.body_len);
        if body_end > end {
            return None;
        }
        pos = align_up(body_end, block.max(1));
        Some((body_start, h))
    })
}

/// Decoded entries, a list per segment, in log order.
#[derive(Debug, Default)]
pub(crate) struct Preloaded {
    segments: Vec<Vec<PreloadedEntry>>,
    /// Memory they hold, estimated as [`PRELOAD_BYTES_MAX`] counts it.
    bytes: u64,
    /// Most bytes decoded (`WalOptions::preload_bytes_max`, [`PRELOAD_BYTES_MAX`] by default).
    bytes_max: u64,
}

/// Memory one decoded entry holds, as [`PRELOAD_BYTES_MAX`] counts it.
fn cost(e: &PreloadedEntry) -> u64 {
    (e.entry.payload.len() + e.entry.log_type.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

impl Preloaded {
    /// Nothing yet; segments are decoded while their entries stay under `bytes_max`.
    pub fn up_to(bytes_max: u64) -> Self {
        Preloaded { bytes_max, ..Preloaded::default() }
    }

    /// Whether more segments may be decoded.
    pub fn has_room(&self) -> bool {
        self.bytes < self.bytes_max
    }

    /// Adds the next segment's decoded entries (from [`decode_segment`]), on the shard's
    /// thread: their byte fields become allocations of their own, made here, so the segment's
    /// bytes go now rather than with the last entry that views them.
    pub fn add(&mut self, mut entries: Vec<PreloadedEntry>) {
        for e in &mut entries {
            e.entry.payload = Bytes::copy_from_slice(&e.entry.payload);
            if !e.entry.log_type.is_empty() {
                e.entry.log_type = Bytes::copy_from_slice(&e.entry.log_type);
            }
        }
        self.bytes += entries.iter().map(cost).sum::<u64>();
        if !entries.is_empty() {
            self.segments.push(entries);
        }
    }

    /// The decoded entries, in log order (each segment's list freed once it is taken).
    pub fn into_entries(self) -> impl Iterator<Item = PreloadedEntry> {
        self.segments.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use phalanx_proto::Message;

    use super::super::format::{RecordWriter, SegmentHeader, WAL_FORMAT_VERSION, kind};
    use super::*;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry { index, term, payload: Bytes::from(vec![index as u8; 40]), ..Default::default() }
    }

    /// A segment image (blocks of 512) with one batch per list of (partition, entry).
    fn image(batches: &[Vec<(PartitionId, LogEntry)>]) -> (Vec<u8>, u64) {
        let mut img = vec![0u8; 16384];
        SegmentHeader { version: WAL_FORMAT_VERSION, seq: 1, segment_bytes: 16384, block_bytes: 512 }
            .encode(&mut img);
        let mut pos = SEGMENT_HEADER_BYTES as usize;
        for (k, batch) in batches.iter().enumerate() {
            let body = pos + BATCH_HEADER_BYTES;
            let mut w = RecordWriter::new(&mut img[body..]);
            for (p, e) in batch {
                w.entry(kind::ENTRY, *p, e.index, e.term, e.encoded_len(), |mut b| {
                    e.encode(&mut b).expect("fits");
                });
            }
            let (len, record_count) = (w.position(), w.count());
            let body_crc = crc32c::crc32c(&img[body..body + len]);
            BatchHeader {
                segment_seq: 1,
                batch_seq: k as u64 + 1,
                body_len: len as u32,
                record_count,
                body_crc,
            }
            .encode(&mut img[pos..]);
            pos = align_up((body + len) as u64, 512) as usize;
        }
        (img, pos as u64)
    }

    #[test]
    fn decodes_every_entry_record_of_the_checked_batches() {
        let (img, end) = image(&[vec![(1, entry(1, 1)), (2, entry(1, 1))], vec![(1, entry(2, 1))]]);
        let got = decode_segment(&Bytes::from(img.clone()), end, 512);
        let seen: Vec<(PartitionId, u64)> = got.iter().map(|e| (e.partition, e.entry.index)).collect();
        assert_eq!(seen, vec![(1, 1), (2, 1), (1, 2)]);
        assert_eq!(got[2].entry, entry(2, 1));
        // Only what lies before `end` (the replay's valid batches) is decoded.
        let (body, h) = batches(&img, end, 512).next().expect("a batch");
        let first_batch_end = body + u64::from(h.body_len);
        let got = decode_segment(&Bytes::from(img.clone()), first_batch_end, 512);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_record_that_does_not_decode_ends_the_segment_with_what_came_before() {
        let (mut img, end) = image(&[vec![(1, entry(1, 1)), (1, entry(2, 1)), (1, entry(3, 1))]]);
        let (body, _) = batches(&img, end, 512).next().expect("a batch");
        let (_, first_len) = parse_record(&img[body as usize..], false).expect("a record");
        let second = body as usize + first_len;
        // The entry body's index no longer matches its record's.
        let at =
            second + super::super::format::RECORD_HEADER_BYTES + super::super::format::ENTRY_PREFIX_BYTES;
        let mut wrong = Vec::new();
        entry(9, 1).encode(&mut wrong).expect("encodes");
        img[at..at + wrong.len()].copy_from_slice(&wrong);
        let got = decode_segment(&Bytes::from(img.clone()), end, 512);
        assert_eq!(got.iter().map(|e| e.entry.index).collect::<Vec<_>>(), vec![1]);
    }
}
