//! The native segment WAL: the default [`LogStore`], on glommio DMA files (O_DIRECT,
//! io_uring).
//!
//! One store per shard, in `DATA/shard-<i>/` (see [`crate::shard_dir`]). Every `write` becomes
//! one batch — one aligned `O_DSYNC` write, durable when it completes — holding all records of all partitions
//! (entries, hard states, snapshot/compaction floors, removals, metadata), so the group commit
//! of a shard's loop turn costs a single sync. See [`format`] for the layout, `recovery` for
//! what `open` accepts, `gc` for how segments are reclaimed, and `load` (with `preload`) for
//! how a restart gets every partition's entries without reading each one apart.

pub mod format;
mod gc;
mod index;
pub mod inspect;
mod load;
mod preload;
mod recovery;
pub(crate) mod segment;

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use glommio::Task;
use phalanx_proto::{HardState, LogEntry, Message};

use self::format::{
    BATCH_HEADER_BYTES, BatchHeader, ENTRY_PREFIX_BYTES, Record, SEGMENT_HEADER_BYTES, align_up, kind,
    parse_record, record_len,
};
use self::gc::{GcCursor, Relocation};
use self::index::{EntryLoc, Index};
use self::segment::{Prepared, Segment, SegmentShape, Urgency, gio, prepare_next};
use crate::error::{Poison, Result, StorageError};
use crate::faults::{WriteFault, injected};
use crate::limits::META_KEYS_MAX;
use crate::memory::{check_range, take_budget};
use crate::plan::plan_batch;
use crate::store::{LogStore, StoreOptions};
use crate::types::{LogPosition, PartitionId, PartitionState, RecoveredPartition, StoreStats, WriteBatch};

pub use self::format::WAL_FORMAT_VERSION;
pub use self::load::BULK_READ_BYTES;
pub use self::preload::PRELOAD_BYTES_MAX;

// The shared cost model (`limits::batch_cost`) must cover this format's records.
const _: () = assert!(
    crate::limits::ENTRY_RECORD_OVERHEAD_BYTES
        == (format::RECORD_HEADER_BYTES + format::ENTRY_PREFIX_BYTES) as u64
);
const _: () =
    assert!(crate::limits::PARTITION_RECORDS_BYTES >= 3 * format::RECORD_HEADER_BYTES as u64 + 32 + 25 + 24);

/// Smallest allowed segment.
pub const SEGMENT_BYTES_MIN: u64 = 128 << 10;
/// Largest allowed segment (offsets in the index are 32-bit).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Records further apart than this in one segment are read with separate reads (by
/// `entries`; the bulk load at restart reads whole stretches instead, see `load`).
const READ_GAP_BYTES_MAX: u64 = 4096;
/// Largest single read when fetching a range of entries.
const READ_SPAN_BYTES_MAX: u64 = 1 << 20;

/// Options of the native WAL.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Options shared by every adapter.
    pub store: StoreOptions,
    /// Size of each segment file, a multiple of 4096 in
    /// [`SEGMENT_BYTES_MIN`]..=[`SEGMENT_BYTES_MAX`]. A batch must fit in one segment.
    pub segment_bytes: u64,
    /// Segment count above which the oldest segment's live records are relocated forward so
    /// it can be recycled (at least 3).
    pub segments_soft_max: usize,
    /// Relocate only when at most this percentage of the oldest segment is live entries:
    /// copying a mostly-live segment forward frees nothing and costs a segment's worth of
    /// writes; the engine's compaction will free it instead.
    pub gc_live_percent_max: u64,
    /// Bytes of live records copied forward per batch, at most (bounds the extra latency).
    /// Clamped to 4096..=`segment_bytes / 4`.
    pub gc_bytes_per_batch: u64,
    /// Spare (recycled, fully written) segment files kept for reuse.
    pub spare_segments_max: usize,
    /// Entries decoded while the log is replayed at open, for the first bulk load, in bytes
    /// at most (see `preload`; beyond it the load reads them). 0: none, every entry is read.
    pub preload_bytes_max: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            store: StoreOptions::default(),
            segment_bytes: 64 << 20,
            segments_soft_max: 16,
            gc_live_percent_max: 25,
            gc_bytes_per_batch: 256 << 10,
            spare_segments_max: 2,
            preload_bytes_max: preload::PRELOAD_BYTES_MAX,
        }
    }
}

impl WalOptions {
    fn check(&self) -> Result<()> {
        let bad =
            |what: &'static str, value: u64, max: u64| Err(StorageError::LimitExceeded { what, value, max });
        if self.segment_bytes > SEGMENT_BYTES_MAX {
            return bad("segment_bytes", self.segment_bytes, SEGMENT_BYTES_MAX);
        }
        if self.segment_bytes < SEGMENT_BYTES_MIN || self.segment_bytes % 4096 != 0 {
            return Err(StorageError::invalid(
                0,
                format!(
                    "segment_bytes {} must be a multiple of 4096 ≥ {SEGMENT_BYTES_MIN}",
                    self.segment_bytes
                ),
            ));
        }
        if self.segments_soft_max < 3 {
            return Err(StorageError::invalid(0, "segments_soft_max must be at least 3"));
        }
        Ok(())
    }
}

/// The next segment: ready, being prepared in the background, or not asked for yet.
enum NextSegment {
    None,
    Ready(Segment),
    Pending(Task<Result<Prepared>>),
}

/// One record to encode into a batch.
enum Rec<'a> {
    Entry { p: PartitionId, e: &'a LogEntry, proto_len: usize },
    Relocated(&'a gc::RelocEntry),
    HardState(PartitionId, HardState),
    Snapshot(PartitionId, LogPosition, bool),
    Compact(PartitionId, LogPosition),
    Remove(PartitionId),
    MetaSet(&'a [u8], &'a [u8]),
    MetaDelete(&'a [u8]),
}

impl Rec<'_> {
    fn len(&self) -> usize {
        record_len(match self {
            Rec::Entry { proto_len, .. } => ENTRY_PREFIX_BYTES + proto_len,
            Rec::Relocated(r) => ENTRY_PREFIX_BYTES + r.proto.len(),
            Rec::HardState(..) => 32,
            Rec::Snapshot(..) => 25,
            Rec::Compact(..) => 24,
            Rec::Remove(_) => 8,
            Rec::MetaSet(k, v) => 4 + k.len() + v.len(),
            Rec::MetaDelete(k) => k.len(),
        })
    }

    fn encode(&self, w: &mut format::RecordWriter<'_>) {
        match self {
            Rec::Entry { p, e, proto_len } => {
                w.entry(kind::ENTRY, *p, e.index, e.term, *proto_len, |b| {
                    // The buffer is sized from `encoded_len`, so encoding cannot run out of room.
                    let _ = e.encode_to_slice(b);
                })
            }
            Rec::Relocated(r) => {
                w.entry(kind::ENTRY_RELOCATED, r.partition, r.index, r.term, r.proto.len(), |b| {
                    b.copy_from_slice(&r.proto);
                })
            }
            Rec::HardState(p, hs) => w.hard_state(*p, hs),
            Rec::Snapshot(p, pos, keep) => w.snapshot(*p, *pos, *keep),
            Rec::Compact(p, pos) => w.compact(*p, *pos),
            Rec::Remove(p) => w.remove(*p),
            Rec::MetaSet(k, v) => w.meta_set(k, v),
            Rec::MetaDelete(k) => w.meta_delete(k),
        }
    }
}

/// The native segment WAL of one shard.
pub struct WalStore {
    dir: PathBuf,
    opts: WalOptions,
    /// Held (with `flock`) for the store's life — and by its background task, which may
    /// outlive a dropped store for a moment: two writers on one directory would corrupt it.
    lock: Rc<File>,
    /// Segments in use, oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    next: NextSegment,
    /// Whether the segment being prepared is needed soon (see `segment::Urgency`).
    next_urgency: Urgency,
    spares: Vec<PathBuf>,
    recycle: Vec<Segment>,
    index: Index,
    next_batch_seq: u64,
    gc: Option<GcCursor>,
    poison: Poison,
    stats: StoreStats,
    /// `StoreStats::entry_reads`, counted by reads (which take `&self`).
    entry_reads: Cell<u64>,
    /// The last batch dropped at open because it may have been acknowledged.
    damaged_tail: Option<crate::types::DamagedTail>,
    /// Entries the replay decoded, until the first bulk load (or write) takes them
    /// (`preload`).
    preloaded: Cell<preload::Preloaded>,
}

impl std::fmt::Debug for WalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalStore")
            .field("dir", &self.dir)
            .field("segments", &self.segments.iter().map(|s| s.seq).collect::<Vec<_>>())
            .field("next_batch_seq", &self.next_batch_seq)
            .finish_non_exhaustive()
    }
}

/// How long `open` waits for the directory lock. A store dropped without `close` (a shard
/// torn down after a failure) releases it only when its background task has wound down,
/// which takes a moment; another live store keeps it, and `open` then fails with `Locked`.
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Size of the `LOCK` file: one block of zeros, so it can prime glommio's device probe
/// (see `segment::prime_iopoll_probe`).
const LOCK_FILE_BYTES: u64 = 4096;

async fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io("open", &path, e))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            // Written blocks (not a hole): the probe must reach the device.
            let mut content = b"phalanx WAL lock\n".to_vec();
            content.resize(LOCK_FILE_BYTES as usize, b'\n');
            std::io::Write::write_all(&mut &file, &content)
                .map_err(|e| StorageError::io("write", &path, e))?;
            file.sync_data().map_err(|e| StorageError::io("fdatasync", &path, e))?;
            segment::prime_iopoll_probe(&path).await?;
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StorageError::io("lock", &path, err));
        }
        if std::time::Instant::now() >= deadline {
            return Err(StorageError::Locked { dir: dir.to_path_buf() });
        }
        // Let other tasks (a dropped store's background task) run, then nap briefly. No
        // glommio timer here: timers have been reported to hang on some VMs, and this loop
        // must stay bounded by the deadline whatever happens.
        YieldOnce(false).await;
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// A future that lets every other ready task run once before it completes.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl WalStore {
    /// Opens (creating if needed) the WAL in `dir`, recovering every partition. Must run
    /// inside a glommio executor, which then owns the store.
    pub async fn open(dir: impl AsRef<Path>, mut opts: WalOptions) -> Result<WalStore> {
        opts.check()?;
        opts.gc_bytes_per_batch = opts.gc_bytes_per_batch.clamp(4096, opts.segment_bytes / 4);
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create directory", &dir, e))?;
        let lock = Rc::new(lock_dir(&dir).await?);
        let rec = recovery::recover(&dir, opts.segment_bytes, opts.store.sync_writes, opts.preload_bytes_max)
            .await?;
        let mut store = WalStore {
            dir,
            opts,
            lock,
            segments: rec.segments,
            next: rec.next.map_or(NextSegment::None, NextSegment::Ready),
            next_urgency: Urgency::default(),
            spares: rec.spares,
            recycle: rec.recycle,
            index: rec.index,
            next_batch_seq: rec.next_batch_seq,
            gc: None,
            poison: Poison::default(),
            stats: StoreStats::default(),
            entry_reads: Cell::new(0),
            damaged_tail: rec.damaged_tail,
            preloaded: Cell::new(rec.preloaded),
        };
        if store.segments.is_empty() {
            let p = prepare_next(
                store.dir.clone(),
                1,
                store.segment_shape(),
                Vec::new(),
                std::mem::take(&mut store.spares),
                Urgency::now(),
            )
            .await?;
            let seg = store.finish_prepare(p);
            store.segments.push_back(seg);
        }
        store.housekeeping();
        Ok(store)
    }

    /// The directory this store lives in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sequence numbers of the segments in use, oldest first (for tests and tools).
    #[must_use]
    pub fn segment_seqs(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.seq).collect()
    }

    fn segment(&self, seq: u64) -> Option<&Segment> {
        let front = self.segments.front()?.seq;
        self.segments.get(seq.checked_sub(front)? as usize).filter(|s| s.seq == seq)
    }

    fn active(&self) -> Result<&Segment> {
        self.segments
            .back()
            .ok_or_else(|| StorageError::Backend { backend: "wal", reason: "no active segment".into() })
    }

    /// Usable bytes of a new segment.
    fn capacity(&self) -> u64 {
        self.opts.segment_bytes - SEGMENT_HEADER_BYTES
    }

    /// Encodes `recs` (after any relocated records) as one batch, writes and syncs it, and
    /// applies it to the index. Any failure after the first byte may have reached the disk
    /// poisons the store.
    async fn commit(&mut self, recs: &[Rec<'_>], entries: u64) -> Result<()> {
        let user_len: usize = recs.iter().map(Rec::len).sum();
        let block = self.active()?.block;
        let user_total = align_up((BATCH_HEADER_BYTES + user_len) as u64, block);
        if user_total > self.capacity() {
            return Err(StorageError::LimitExceeded {
                what: "WAL batch bytes (segment_bytes minus header)",
                value: user_total,
                max: self.capacity(),
            });
        }
        self.poison.begin()?;
        let r = self.commit_inner(recs, entries, user_len, user_total).await;
        self.poison.end();
        r
    }

    async fn commit_inner(
        &mut self,
        recs: &[Rec<'_>],
        entries: u64,
        user_len: usize,
        user_total: u64,
    ) -> Result<()> {
        let relocation = match self.collect_garbage(user_total).await {
            Ok(r) => r,
            Err(e) => return Err(self.poison.poison(e)),
        };
        let mut all: Vec<Rec<'_>> = Vec::with_capacity(recs.len() + relocation.entries.len());
        all.extend(relocation.entries.iter().map(Rec::Relocated));
        all.extend(relocation.hard_states.iter().map(|(p, hs)| Rec::HardState(*p, *hs)));
        all.extend(relocation.floors.iter().map(|(p, f)| Rec::Compact(*p, *f)));
        all.extend(relocation.meta.iter().map(|(k, v)| Rec::MetaSet(k, v)));
        let body_len = user_len + relocation.bytes;
        let block = self.active()?.block;
        if self.active()?.end + align_up((BATCH_HEADER_BYTES + body_len) as u64, block) > self.active()?.bytes
            && let Err(e) = self.roll().await
        {
            return Err(self.poison.poison(e));
        }
        let seg = self.active()?;
        let total = align_up((BATCH_HEADER_BYTES + body_len) as u64, seg.block);
        let (seq, pos, path, file) = (seg.seq, seg.end, seg.path.clone(), seg.file.clone());
        let mut buf = file.alloc_dma_buffer(total as usize);
        {
            let bytes = buf.as_bytes_mut();
            let (head, rest) = bytes.split_at_mut(BATCH_HEADER_BYTES);
            let (body, pad) = rest.split_at_mut(body_len);
            let mut w = format::RecordWriter::new(body);
            for r in all.iter().chain(recs) {
                r.encode(&mut w);
            }
            debug_assert_eq!(w.position(), body_len);
            let record_count = w.count();
            pad.fill(0);
            BatchHeader {
                segment_seq: seq,
                batch_seq: self.next_batch_seq,
                body_len: body_len as u32,
                record_count,
                body_crc: crc32c::crc32c(body),
            }
            .encode(head);
        }
        let fault = self.opts.store.faults.as_ref().and_then(|f| f.take_write_fault());
        if fault == Some(WriteFault::Fail) {
            return Err(self.poison.poison(StorageError::io("write", &path, injected("write"))));
        }
        if fault == Some(WriteFault::Tear) {
            // What a crash mid-write leaves: the start of the batch on disk, the rest not.
            let b = buf.as_bytes_mut();
            let keep = (b.len() / 2).max(BATCH_HEADER_BYTES + 1);
            b[keep..].fill(0);
        }
        let buf = Rc::new(buf);
        let written = file.write_rc_at(buf.clone(), pos).await;
        match written {
            Ok(n) if n as u64 == total => {}
            Ok(n) => {
                let e = std::io::Error::other(format!("short write: {n} of {total} bytes"));
                return Err(self.poison.poison(StorageError::io("write", &path, e)));
            }
            Err(e) => return Err(self.poison.poison(gio("write", &path, e))),
        }
        if fault == Some(WriteFault::Tear) {
            return Err(self.poison.poison(StorageError::io("write", &path, injected("torn write"))));
        }
        if self.opts.store.sync_writes {
            // The segment is open O_DSYNC (`segment::open_rw`): the write above returned once
            // the batch was on stable storage, a device flush included. An injected fault
            // stands for that flush failing.
            if self.opts.store.faults.as_ref().is_some_and(|f| f.take_sync_fault()) {
                return Err(self.poison.poison(StorageError::io("fdatasync", &path, injected("fdatasync"))));
            }
            self.stats.write_syncs += 1;
        }
        // Durable: apply exactly what was written, with the code recovery uses.
        let body = &buf.as_bytes()[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + body_len];
        let mut off = 0usize;
        while off < body.len() {
            let rec_pos = pos + (BATCH_HEADER_BYTES + off) as u64;
            let applied = parse_record(&body[off..], false)
                .and_then(|(rec, n)| self.index.apply(&rec, seq, rec_pos as u32, n as u32).map(|()| n));
            match applied {
                Ok(n) => off += n,
                // A bug: the batch was planned against this index. Stop rather than diverge
                // from what recovery will rebuild.
                Err(reason) => return Err(self.poison.poison(StorageError::corrupt(&path, rec_pos, reason))),
            }
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.end = pos + total;
        }
        self.next_batch_seq += 1;
        self.stats.batches += 1;
        self.stats.bytes_written += total;
        self.stats.entries_written += entries;
        self.stats.entries_relocated += relocation.entries.len() as u64;
        self.housekeeping();
        Ok(())
    }

    /// Switches writing to the next segment.
    async fn roll(&mut self) -> Result<()> {
        let seg = match std::mem::replace(&mut self.next, NextSegment::None) {
            NextSegment::Ready(s) => s,
            NextSegment::Pending(task) => {
                self.next_urgency.set();
                let p = task.await?;
                self.finish_prepare(p)
            }
            NextSegment::None => {
                let fut = self.start_prepare();
                self.next_urgency.set();
                let p = fut.await?;
                self.finish_prepare(p)
            }
        };
        self.segments.push_back(seg);
        Ok(())
    }

    fn finish_prepare(&mut self, p: Prepared) -> Segment {
        self.stats.background_syncs += p.syncs;
        self.stats.segments_created += u64::from(p.created);
        self.stats.segments_recycled += p.recycled;
        self.spares.extend(p.spares);
        p.segment
    }

    fn start_prepare(&mut self) -> impl std::future::Future<Output = Result<Prepared>> + 'static {
        let seq = self.segments.back().map_or(1, |s| s.seq + 1);
        self.next_urgency = Urgency::default();
        prepare_next(
            self.dir.clone(),
            seq,
            self.segment_shape(),
            std::mem::take(&mut self.recycle),
            std::mem::take(&mut self.spares),
            self.next_urgency.clone(),
        )
    }

    /// Whether the segment being prepared was told to hurry (tests).
    #[cfg(test)]
    pub(crate) fn next_is_urgent(&self) -> bool {
        self.next_urgency.is_set()
    }

    fn segment_shape(&self) -> SegmentShape {
        SegmentShape {
            bytes: self.opts.segment_bytes,
            spares_max: self.opts.spare_segments_max,
            dsync: self.opts.store.sync_writes,
        }
    }

    /// After a batch: hand free segments to recycling, start relocating the oldest one if
    /// the log grew too long, and make sure the next segment is being prepared.
    fn housekeeping(&mut self) {
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else { break };
            if !self.index.pins(front.seq).is_free() {
                break;
            }
            if self.gc.is_some_and(|c| c.seq == front.seq) {
                self.gc = None;
            }
            self.index.forget_segment(front.seq);
            if let Some(seg) = self.segments.pop_front() {
                self.recycle.push(seg);
            }
        }
        if let Some(c) = self.gc
            && self.segment(c.seq).is_none_or(|s| c.pos >= s.end)
        {
            // Walked the whole segment; if something is still pinned (written while walking
            // is impossible, so this means a liveness bug) start over later rather than lose it.
            self.gc = None;
        }
        if self.gc.is_none()
            && self.segments.len() > self.opts.segments_soft_max
            && let Some(front) = self.segments.front()
        {
            let pins = self.index.pins(front.seq);
            if pins.entry_bytes * 100 <= front.bytes * self.opts.gc_live_percent_max {
                self.gc = Some(GcCursor { seq: front.seq, pos: SEGMENT_HEADER_BYTES });
            }
        }
        if matches!(self.next, NextSegment::Pending(_))
            && let Some(active) = self.segments.back()
            && active.end.saturating_mul(2) >= active.bytes
        {
            self.next_urgency.set();
        }
        if matches!(self.next, NextSegment::None) {
            let fut = self.start_prepare();
            let lock = self.lock.clone();
            self.next = NextSegment::Pending(glommio::spawn_local(async move {
                let _lock = lock;
                fut.await
            }));
        }
    }

    /// Collects live records of the segment being emptied, if any, within what fits beside a
    /// user batch of `user_total` bytes.
    async fn collect_garbage(&mut self, user_total: u64) -> Result<Relocation> {
        let Some(mut cursor) = self.gc else { return Ok(Relocation::default()) };
        let room = self.capacity().saturating_sub(user_total + 2 * self.active()?.block) as usize;
        let budget = (self.opts.gc_bytes_per_batch as usize).min(room);
        if budget < BATCH_HEADER_BYTES {
            return Ok(Relocation::default());
        }
        let Some(seg) = self.segment(cursor.seq) else {
            self.gc = None;
            return Ok(Relocation::default());
        };
        let r = gc::collect(seg, &mut cursor, &self.index, budget, room).await?;
        self.gc = Some(cursor);
        Ok(r)
    }

    /// Reads the records at `locs` (all in segment `seq`, ascending offsets).
    async fn read_run(
        &self,
        seq: u64,
        locs: &[EntryLoc],
        p: PartitionId,
        first: u64,
        out: &mut Vec<LogEntry>,
    ) -> Result<()> {
        let (Some(a), Some(z)) = (locs.first(), locs.last()) else { return Ok(()) };
        let seg = self.segment(seq).ok_or_else(|| StorageError::Corrupt {
            file: self.dir.clone(),
            offset: None,
            reason: format!("partition {p}: entry {first} points into missing segment {seq}"),
        })?;
        let start = u64::from(a.offset);
        let span = u64::from(z.offset) + u64::from(z.len) - start;
        let data = seg.file.read_at(start, span as usize).await.map_err(|e| gio("read", &seg.path, e))?;
        self.entry_reads.set(self.entry_reads.get() + 1);
        if (data.len() as u64) < span {
            return Err(StorageError::corrupt(
                &seg.path,
                start + data.len() as u64,
                "segment ends inside a record",
            ));
        }
        let data = Bytes::copy_from_slice(&data[..span as usize]);
        for (k, loc) in locs.iter().enumerate() {
            let at = (u64::from(loc.offset) - start) as usize;
            let rec = &data[at..at + loc.len as usize];
            // Zero-copy: the entries share `data`, which holds only close neighbours.
            let e = decode_entry(rec, loc, p, first + k as u64, |body| {
                LogEntry::decode(data.slice(at + body.start..at + body.end))
            })
            .map_err(|reason| StorageError::corrupt(&seg.path, u64::from(loc.offset), reason))?;
            out.push(e);
        }
        Ok(())
    }
}

/// Checks that `rec` — exactly the bytes the index says `loc` spans — is partition `p`'s entry
/// `index` (record checksum, kind, coordinates, length), then decodes its protobuf body with
/// `decode` (given the body's range within `rec`) and checks the body agrees. The error is the
/// reason for a [`StorageError::Corrupt`] at the record's offset.
/// What [`replay_segment_image`] found.
#[doc(hidden)]
#[derive(Debug)]
pub struct SegmentImage {
    /// The segment's header.
    pub header: format::SegmentHeader,
    /// Offset just past the last valid batch.
    pub end: u64,
    /// Valid batches replayed.
    pub batches: u64,
    /// The dropped last batch, when it may have been acknowledged.
    pub damaged_tail: Option<crate::types::DamagedTail>,
    /// Every partition the segment holds, ascending, with its live entries decoded.
    pub partitions: Vec<(PartitionId, RecoveredPartition)>,
}

/// Recovers one segment file whose bytes are in memory the way [`WalStore::open`] and a
/// restart's load do: the header's checks, every batch replayed into a fresh index under
/// the torn-tail and hole rules, then every live entry read at the offset the index gives
/// and decoded. Errors are the ones `open` or the load would report, naming `path`.
///
/// Public, but not part of the API, for the fuzz targets (`tests/fuzz`): the store proper
/// reads with O_DIRECT inside a glommio executor, far too slow to run once per input.
#[doc(hidden)]
pub fn replay_segment_image(path: &Path, data: &[u8]) -> Result<SegmentImage> {
    let (header, scan, index) = recovery::replay_image(path, data)?;
    let mut partitions = Vec::new();
    for p in index.partitions() {
        let Some(state) = index.state(p) else { continue };
        let first = state.first_index();
        let mut entries = Vec::new();
        for (k, loc) in index.locs(p, first, state.last.index + 1).enumerate() {
            let at = u64::from(loc.offset);
            let corrupt = |reason: String| StorageError::corrupt(path, at, reason);
            let rec = data
                .get(at as usize..at as usize + loc.len as usize)
                .ok_or_else(|| corrupt("segment ends inside a record".into()))?;
            let e =
                decode_entry(rec, loc, p, first + k as u64, |body| LogEntry::decode_from_slice(&rec[body]))
                    .map_err(corrupt)?;
            entries.push(e);
        }
        let floor = (state.floor.index, state.floor.term);
        partitions.push((p, RecoveredPartition { hard_state: state.hard_state, floor, entries }));
    }
    Ok(SegmentImage {
        header,
        end: scan.end,
        batches: scan.batches,
        damaged_tail: scan.damaged_tail,
        partitions,
    })
}

fn decode_entry(
    rec: &[u8],
    loc: &EntryLoc,
    p: PartitionId,
    index: u64,
    decode: impl FnOnce(std::ops::Range<usize>) -> std::result::Result<LogEntry, prost::DecodeError>,
) -> std::result::Result<LogEntry, String> {
    let (parsed, n) = parse_record(rec, true)?;
    let Record::Entry { partition, index: ri, term, proto, .. } = parsed else {
        return Err("index points at a record that is not an entry".into());
    };
    if partition != p || ri != index || term != loc.term || n != loc.len as usize {
        return Err(format!("expected partition {p} entry {index}, found partition {partition} entry {ri}"));
    }
    let body_at = format::RECORD_HEADER_BYTES + ENTRY_PREFIX_BYTES;
    let e = decode(body_at..body_at + proto.len()).map_err(|err| format!("entry does not decode: {err}"))?;
    if e.index != index || e.term != term {
        return Err(format!("entry body says {}/{}, its record {index}/{term}", e.index, e.term));
    }
    Ok(e)
}

impl LogStore for WalStore {
    fn name(&self) -> &'static str {
        "wal"
    }

    async fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        self.poison.check()?;
        // Decoded at open for a bulk load that has not come: not worth their memory any more.
        self.preloaded.take();
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(e) = self.opts.store.faults.as_ref().and_then(|f| f.refusal(batch)) {
            return Err(e);
        }
        let index = &self.index;
        let plan = plan_batch(batch, |p| Ok(index.state(p)), |p, i| Ok(index.term(p, i)))?;
        let new_keys = batch.meta.iter().filter(|m| m.value.is_some() && !index.has_meta(&m.key)).count();
        if index.meta_len() + new_keys > META_KEYS_MAX {
            return Err(StorageError::LimitExceeded {
                what: "metadata keys",
                value: (index.meta_len() + new_keys) as u64,
                max: META_KEYS_MAX as u64,
            });
        }
        let mut recs =
            Vec::with_capacity(batch.entry_count() + 2 * batch.partitions.len() + batch.meta.len());
        for (pw, plan) in batch.partitions.iter().zip(&plan.partitions) {
            if pw.is_empty() {
                continue;
            }
            let p = pw.partition;
            if let Some((pos, keep)) = plan.snapshot {
                recs.push(Rec::Snapshot(p, pos, keep));
            }
            recs.extend(pw.entries.iter().map(|e| Rec::Entry { p, e, proto_len: e.encoded_len() }));
            if let Some(hs) = pw.hard_state {
                recs.push(Rec::HardState(p, hs));
            }
            if let Some(c) = plan.compact {
                recs.push(Rec::Compact(p, c));
            }
        }
        for m in &batch.meta {
            recs.push(match &m.value {
                Some(v) => Rec::MetaSet(&m.key, v),
                None => Rec::MetaDelete(&m.key),
            });
        }
        self.commit(&recs, batch.entry_count() as u64).await
    }

    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        max_bytes: u64,
    ) -> Result<Vec<LogEntry>> {
        self.poison.check()?;
        let state = self.index.state(partition).unwrap_or_default();
        check_range(partition, lo, hi, &state)?;
        // Choose the entries within budget from the index (record sizes approximate entry
        // sizes), then read runs of neighbouring records with one read each.
        let mut locs = Vec::new();
        let mut budget = 0u64;
        for l in self.index.locs(partition, lo, hi) {
            if !locs.is_empty() && budget + u64::from(l.len) > max_bytes.saturating_add(max_bytes / 4 + 64) {
                break;
            }
            budget += u64::from(l.len);
            locs.push(*l);
        }
        let mut out = Vec::with_capacity(locs.len());
        let mut run_start = 0usize;
        for k in 1..=locs.len() {
            let split = k == locs.len() || {
                let (prev, cur) = (&locs[k - 1], &locs[k]);
                let prev_end = u64::from(prev.offset) + u64::from(prev.len);
                cur.seg != prev.seg
                    || u64::from(cur.offset) < prev_end
                    || u64::from(cur.offset) - prev_end > READ_GAP_BYTES_MAX
                    || u64::from(cur.offset) + u64::from(cur.len) - u64::from(locs[run_start].offset)
                        > READ_SPAN_BYTES_MAX
            };
            if split {
                let run = &locs[run_start..k];
                self.read_run(run[0].seg, run, partition, lo + run_start as u64, &mut out).await?;
                run_start = k;
            }
        }
        Ok(take_budget(out.into_iter(), max_bytes))
    }

    async fn term(&self, partition: PartitionId, index: u64) -> Result<Option<u64>> {
        self.poison.check()?;
        Ok(self.index.term(partition, index))
    }

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionState>> {
        self.poison.check()?;
        Ok(self.index.state(partition))
    }

    fn partitions(&self) -> Result<Vec<PartitionId>> {
        self.poison.check()?;
        Ok(self.index.partitions().collect())
    }

    async fn remove_partition(&mut self, partition: PartitionId) -> Result<()> {
        self.poison.check()?;
        if self.index.state(partition).is_none() {
            return Ok(());
        }
        self.commit(&[Rec::Remove(partition)], 0).await
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.poison.check()?;
        Ok(self.index.meta(key).cloned())
    }

    async fn load_partitions(
        &self,
        partitions: &[PartitionId],
    ) -> Result<Vec<(PartitionId, Option<RecoveredPartition>)>> {
        self.load_bulk(partitions).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats { entry_reads: self.entry_reads.get(), ..self.stats }
    }

    fn damaged_tail(&self) -> Option<&crate::types::DamagedTail> {
        self.damaged_tail.as_ref()
    }

    fn max_batch_cost(&self) -> u64 {
        // A batch is one aligned write inside one segment: its records, the batch header and
        // at most one block of padding must fit in a segment's usable bytes. Record bytes are
        // at most the batch's cost (`limits::batch_cost` counts every record header).
        // (A block is at most 4096 bytes, the segment header's size: `segment.rs` refuses
        // larger devices.)
        let fits = self.capacity().saturating_sub(BATCH_HEADER_BYTES as u64 + SEGMENT_HEADER_BYTES);
        fits.min(crate::limits::BATCH_BYTES_MAX)
    }

    fn sync_writes(&self) -> bool {
        self.opts.store.sync_writes
    }

    async fn close(mut self) -> Result<()> {
        // Let a segment being prepared finish, so a clean close leaves no half-made files.
        let mut segs: Vec<Segment> = self.segments.drain(..).chain(self.recycle.drain(..)).collect();
        // Without pauses: nothing is written any more, and the close waits for it.
        self.next_urgency.set();
        let prepared = match std::mem::replace(&mut self.next, NextSegment::None) {
            NextSegment::Pending(task) => task.await.map(|p| segs.push(self.finish_prepare(p))),
            NextSegment::Ready(s) => {
                segs.push(s);
                Ok(())
            }
            NextSegment::None => Ok(()),
        };
        // Close every file explicitly: a dropped glommio file is only queued for closing on
        // the next I/O cycle, and if the executor ends first its descriptor leaks.
        let mut closed = Ok(());
        for seg in segs {
            if let Ok(file) = Rc::try_unwrap(seg.file)
                && let Err(e) = file.close().await
                && closed.is_ok()
            {
                closed = Err(gio("close", &seg.path, e));
            }
        }
        self.poison.check()?;
        prepared?;
        closed
    }
}
