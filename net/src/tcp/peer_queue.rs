//! One peer's bounded outgoing queue, and the write-through path to its connection.
//!
//! Batches are encoded into frames at `send` time, straight into one pending buffer. The
//! dialer task swaps that buffer out whole and writes it with one `write_all`: every batch
//! queued since its last write leaves in one syscall (write coalescing) with no copy beyond
//! the encoding itself. But the dialer runs only when the shard loop yields, and the runtime's
//! loop does not yield while its inbox has work: under load a third of the frames waited more
//! than 100 µs for it, some milliseconds. So `send` bounds that wait itself (**write-through**):
//! when the oldest queued frame has waited `coalesce_max` (at once when it is zero), the
//! connection is up and the dialer is not writing, `send` writes everything queued with one
//! non-blocking `send(2)`. A frame queued within `coalesce_max` of the last write waits for
//! the dialer (or the next send past the deadline), so the frames of one loop turn can leave
//! together, costing one syscall and one wake-up of the receiver instead of one per frame.
//! The default `coalesce_max` is zero (see `DEFAULT_COALESCE_MAX_US` for the measurements).
//!
//! Ordering holds because writes always start at the head of the buffer and never overlap
//! the dialer's. A write the socket takes only in part leaves the rest of its last frame at
//! the head of the buffer, **bound** to that connection: the dialer (or the next write-through)
//! writes it next, and if the connection dies first the rest is discarded with it (a partial
//! frame must never open the next connection).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use phalanx_proto::MessageBatch;

use super::socket::try_send;
use crate::frame::{FRAME_HEADER_BYTES, FrameKind, encode_frame_sized};
use crate::spare::Spare;
use crate::tls::stream::Session;

/// Where a write-through goes: a duplicate of the connected socket, and the connection's TLS
/// session when it has one. With TLS, "the socket took `n` bytes" means the session encrypted
/// them and they leave on this connection or never (as for `send(2)`); ciphertext the socket
/// did not take yet stays in the session, and the dialer is woken to flush it.
pub(crate) enum Target {
    /// Plaintext: bytes go to the socket as they are.
    Plain(OwnedFd),
    /// Through the connection's TLS session, shared with the dialer's stream.
    Tls(OwnedFd, Rc<RefCell<Session>>),
}

impl Target {
    /// Hands the socket (or session) as much of `buf` as it takes now; never blocks.
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Target::Plain(fd) => try_send(fd.as_fd(), buf),
            Target::Tls(fd, session) => session.borrow_mut().write_through(fd.as_fd(), buf),
        }
    }

    /// Ciphertext is waiting for the socket to take it.
    fn has_unsent(&self) -> bool {
        match self {
            Target::Plain(_) => false,
            Target::Tls(_, session) => session.borrow().has_unsent(),
        }
    }
}

/// What happened to a pushed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Accepted. A write-through may have sent it and frames queued before it: `frames` whole
    /// frames and `bytes` bytes (a partly written frame's share included) left at once.
    Queued {
        /// Frames written whole by this push.
        frames: usize,
        /// Bytes written by this push.
        bytes: usize,
    },
    /// The queue is at its batch or byte bound.
    Full,
    /// The batch's encoding exceeds the frame limit.
    Oversize(usize),
}

pub(crate) struct PeerQueue {
    pending: RefCell<Vec<u8>>,
    /// Bytes at the start of `pending` already written through: skipped, not moved, so a
    /// socket that takes a large queue in small parts does not cost a move of the rest per
    /// write (dropped when the dialer takes the queue, or when it empties). The byte bound
    /// counts what is after it.
    head: Cell<usize>,
    /// Frames in `pending`, a bound partial frame included.
    frames: Cell<usize>,
    /// Bytes after `head` that finish a frame begun on the current connection.
    bound: Cell<usize>,
    /// A duplicate of the connected socket while the dialer's pump runs (the write-through
    /// target). A duplicate, not the number of the dialer's fd: whatever the order in which
    /// the dialer's futures are dropped, this fd stays valid (never a reused number) until
    /// [`Attached`] is dropped.
    conn: RefCell<Option<Target>>,
    /// A write-through left ciphertext in the TLS session: the dialer must flush it.
    flush: Cell<bool>,
    /// The dialer has taken bytes it has not finished writing.
    writing: Cell<bool>,
    /// When the oldest frame in `pending` was queued (`None` while it is empty).
    oldest: Cell<Option<Instant>>,
    /// How long a frame may wait for the dialer before a send writes it through.
    coalesce_max: Duration,
    /// The largest recent writes through `pending`: what its capacity keeps (`spare.rs`).
    /// A burst's larger allocation is released after it, but not while the burst goes on: a
    /// fixed 1 MiB cap once made every snapshot chunk (1 MiB by default) grow the buffer past
    /// it and the write shrink it back, so each chunk mapped, zeroed and copied fresh memory —
    /// page zeroing alone was 38 % of the leaders' time while a 1 GiB join streamed snapshots.
    spare: RefCell<Spare>,
    waker: Cell<Option<Waker>>,
    max_frames: usize,
    max_bytes: usize,
    max_frame_bytes: usize,
}

impl PeerQueue {
    pub(crate) fn new(
        max_frames: usize,
        max_bytes: usize,
        max_frame_bytes: usize,
        coalesce_max: Duration,
    ) -> Self {
        PeerQueue {
            pending: RefCell::new(Vec::new()),
            head: Cell::new(0),
            frames: Cell::new(0),
            bound: Cell::new(0),
            conn: RefCell::new(None),
            flush: Cell::new(false),
            writing: Cell::new(false),
            oldest: Cell::new(None),
            coalesce_max,
            spare: RefCell::new(Spare::new()),
            waker: Cell::new(None),
            max_frames,
            max_bytes,
            max_frame_bytes,
        }
    }

    /// Encodes `batch` as a frame at the end of the queue, unless a bound forbids it, and
    /// writes the queue through to the connection when its oldest frame is due.
    pub(crate) fn push(&self, batch: &MessageBatch) -> Push {
        // Sized before encoding so the limits are checked before a byte is written.
        let len = prost::Message::encoded_len(batch);
        if len > self.max_frame_bytes {
            return Push::Oversize(len);
        }
        let mut pending = self.pending.borrow_mut();
        let head = self.head.get();
        if self.frames.get() >= self.max_frames
            || pending.len() - head + FRAME_HEADER_BYTES + len > self.max_bytes
        {
            return Push::Full;
        }
        if encode_frame_sized(FrameKind::Batch, batch, len, self.max_frame_bytes, &mut pending).is_err() {
            return Push::Oversize(len);
        }
        self.frames.set(self.frames.get() + 1);
        // Without coalescing there is no deadline to track (and no clock to read).
        let due = self.coalesce_max.is_zero() || {
            let now = Instant::now();
            let oldest = self.oldest.get().unwrap_or(now);
            self.oldest.set(Some(oldest));
            now.duration_since(oldest) >= self.coalesce_max
        };
        let (mut frames, mut bytes) = (0, 0);
        if due && !self.writing.get() {
            let mut conn = self.conn.borrow_mut();
            if let Some(target) = conn.as_ref() {
                let sent = target.send(&pending[head..]);
                if target.has_unsent() {
                    self.flush.set(true);
                }
                match sent {
                    Ok(n) => {
                        let (done, bound) = written_frames(&pending[head..], self.bound.get(), n);
                        if head + n == pending.len() {
                            // Keeps the capacity recent writes needed: the next frame
                            // encodes without allocating.
                            let used = pending.len();
                            pending.clear();
                            self.spare.borrow_mut().trim(&mut pending, used, Instant::now());
                            self.head.set(0);
                            self.oldest.set(None);
                        } else {
                            self.head.set(head + n);
                        }
                        self.bound.set(bound);
                        self.frames.set(self.frames.get() - done);
                        (frames, bytes) = (done, n);
                    }
                    // The dialer finds the error on its own write (or its watch read) and
                    // reconnects; the frames, untouched, wait for the next connection.
                    Err(_) => *conn = None,
                }
            }
        }
        if (self.frames.get() > 0 || self.flush.get())
            && let Some(w) = self.waker.take()
        {
            w.wake();
        }
        Push::Queued { frames, bytes }
    }

    /// Makes `target` (a duplicate of the connected socket, with its TLS session if any) the
    /// write-through target until the returned guard is dropped.
    pub(crate) fn attach(&self, target: Target) -> Attached<'_> {
        *self.conn.borrow_mut() = Some(target);
        Attached(self)
    }

    /// Waits until at least one frame is queued, or ciphertext a write-through left in the
    /// TLS session needs flushing.
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            if self.frames.get() > 0 || self.flush.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }

    /// Moves every queued frame into `out` (which must be empty) for the dialer to write;
    /// returns how many. Until [`written`](Self::written), frames are not written through.
    pub(crate) fn take(&self, out: &mut Vec<u8>) -> usize {
        debug_assert!(out.is_empty());
        let mut pending = self.pending.borrow_mut();
        pending.drain(..self.head.replace(0));
        std::mem::swap(&mut *pending, out);
        // The bound bytes now travel in `out`, which dies with the connection anyway.
        self.bound.set(0);
        self.oldest.set(None);
        // The dialer flushes the session after writing what it took.
        self.flush.set(false);
        self.writing.set(!out.is_empty());
        self.frames.replace(0)
    }

    /// Capacity of the pending buffer, in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.pending.borrow().capacity()
    }

    /// The connection has been idle: gives back the pending buffer's spare capacity
    /// (nothing while frames wait or a write is under way).
    pub(crate) fn give_back_spare(&self) {
        if self.frames.get() == 0 && !self.writing.get() {
            let mut pending = self.pending.borrow_mut();
            if pending.is_empty() {
                self.spare.borrow_mut().trim(&mut pending, 0, Instant::now());
            }
        }
    }

    /// The dialer finished writing what it took.
    pub(crate) fn written(&self) {
        self.writing.set(false);
    }

    /// Drops every queued frame; returns how many.
    pub(crate) fn clear(&self) -> usize {
        let mut pending = self.pending.borrow_mut();
        let used = pending.len();
        pending.clear();
        self.spare.borrow_mut().trim(&mut pending, used, Instant::now());
        self.head.set(0);
        self.bound.set(0);
        self.oldest.set(None);
        self.frames.replace(0)
    }
}

/// The write-through target is attached while this lives; dropping it (the connection ends,
/// or the dialer is cancelled) detaches and closes the duplicate fd, and discards the rest of
/// a frame begun on that connection.
pub(crate) struct Attached<'a>(&'a PeerQueue);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let q = self.0;
        *q.conn.borrow_mut() = None;
        q.writing.set(false);
        q.flush.set(false);
        let bound = q.bound.replace(0);
        let head = q.head.replace(0);
        q.pending.borrow_mut().drain(..head + bound);
        if bound > 0 {
            q.frames.set(q.frames.get().saturating_sub(1));
        }
    }
}

/// After `n` bytes of `pending` were written: how many frames were completed, and how many
/// bytes of the last one, begun but not finished, remain (its bound rest). `pending` starts
/// with `bound` bytes that finish a frame begun earlier, then whole frames.
fn written_frames(pending: &[u8], bound: usize, n: usize) -> (usize, usize) {
    let mut done = 0;
    let mut pos = 0;
    if bound > 0 {
        if n < bound {
            return (0, bound - n);
        }
        done = 1;
        pos = bound;
    }
    while pos < n {
        // Every frame after the bound part was encoded here, so its header is whole.
        let len =
            pending.get(pos..pos + 4).map_or(0, |h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
        let end = pos + FRAME_HEADER_BYTES + len;
        if end > n {
            return (done, end - n);
        }
        done += 1;
        pos = end;
    }
    (done, 0)
}

/// Empties a written buffer for reuse, releasing what recent writes did not need
/// (`spare` follows this buffer's uses).
pub(crate) fn recycle(buf: &mut Vec<u8>, spare: &mut Spare) {
    let used = buf.len();
    buf.clear();
    spare.trim(buf, used, Instant::now());
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use phalanx_proto::RaftMessage;

    use super::*;
    use crate::frame::FrameDecoder;

    fn batch(n: usize) -> MessageBatch {
        MessageBatch { messages: vec![RaftMessage { group: 1, from: 1, to: 2, body: None }; n] }
    }

    fn frames_in(bytes: &[u8]) -> Vec<MessageBatch> {
        let mut d = FrameDecoder::new(1 << 20);
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f.decode::<MessageBatch>().unwrap());
        }
        d.finish().unwrap();
        out
    }

    const NO_DELAY: Duration = Duration::ZERO;
    const Q: Push = Push::Queued { frames: 0, bytes: 0 };

    fn sent(frames: usize) -> impl Fn(Push) -> bool {
        move |p| matches!(p, Push::Queued { frames: f, bytes } if f == frames && bytes > 0)
    }

    #[test]
    fn bounds_and_coalescing() {
        let q = PeerQueue::new(3, 1 << 20, 1 << 10, NO_DELAY);
        assert_eq!(q.push(&batch(1)), Q);
        assert_eq!(q.push(&batch(2)), Q);
        assert_eq!(q.push(&batch(500)), Push::Oversize(4000));
        assert_eq!(q.push(&batch(3)), Q);
        assert_eq!(q.push(&batch(1)), Push::Full);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 3);
        assert_eq!(frames_in(&out), vec![batch(1), batch(2), batch(3)]);
        assert_eq!(q.push(&batch(1)), Q, "taking frees the queue");
        assert_eq!(q.clear(), 1);

        let q = PeerQueue::new(100, 30, 1 << 10, NO_DELAY);
        assert_eq!(q.push(&batch(2)), Q); // 5 + 16 bytes
        assert_eq!(q.push(&batch(2)), Push::Full, "byte bound");
    }

    /// Without coalescing, an attached connection gets everything queued at once, unless the
    /// dialer is writing (order).
    #[test]
    fn write_through_when_not_writing() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let q = PeerQueue::new(100, 1 << 20, 1 << 10, NO_DELAY);
        assert_eq!(q.push(&batch(1)), Q, "not attached yet");
        let attached = q.attach(Target::Plain(a.into()));
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 1);
        assert_eq!(q.push(&batch(2)), Q, "the dialer is writing");
        assert_eq!(q.push(&batch(3)), Q);
        q.written();
        assert!(sent(3)(q.push(&batch(4))), "batches 2 and 3 go first, then 4");
        assert!(sent(1)(q.push(&batch(5))));
        drop(attached);
        assert_eq!(q.push(&batch(6)), Q, "detached");
        let mut got = vec![0; 1024];
        let n = b.read(&mut got).unwrap();
        assert_eq!(frames_in(&got[..n]), vec![batch(2), batch(3), batch(4), batch(5)]);
    }

    /// With coalescing, frames wait for the dialer until the oldest one is due; then the next
    /// send writes them all.
    #[test]
    fn coalesced_until_due() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let q = PeerQueue::new(100, 1 << 20, 1 << 10, Duration::from_millis(20));
        let _attached = q.attach(Target::Plain(a.into()));
        assert_eq!(q.push(&batch(1)), Q);
        assert_eq!(q.push(&batch(2)), Q, "within the delay");
        std::thread::sleep(Duration::from_millis(25));
        assert!(sent(3)(q.push(&batch(3))), "the oldest is due: everything leaves");
        assert_eq!(q.push(&batch(4)), Q, "a new delay starts");
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 1);
        assert_eq!(frames_in(&out), vec![batch(4)]);
        let mut got = vec![0; 1024];
        let n = b.read(&mut got).unwrap();
        assert_eq!(frames_in(&got[..n]), vec![batch(1), batch(2), batch(3)]);
    }

    /// A frame the socket takes in part: its rest goes first to the dialer, or is discarded
    /// with the connection, never reaching the next one.
    #[test]
    fn partial_write_is_bound_to_its_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let q = PeerQueue::new(1 << 20, 64 << 20, 8 << 20, NO_DELAY);
        let attached = q.attach(Target::Plain(a.into()));
        // Fill the socket until a frame does not fit whole.
        let big = batch(20_000);
        let mut sent_whole = 0;
        let written = loop {
            match q.push(&big) {
                Push::Queued { frames: 1, .. } if q.frames.get() == 0 => sent_whole += 1,
                Push::Queued { frames: 0, bytes } => break bytes,
                other => panic!("{other:?}"),
            }
        };
        assert!(sent_whole < 1000, "the socket buffer is finite");
        assert!(written > 0, "socket buffers take what fits, so a frame this size is split");
        assert!(q.bound.get() > 0);
        assert_eq!(q.push(&batch(1)), Q, "the socket is full");
        drop(attached);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 1, "the partial frame went with its connection");
        assert_eq!(frames_in(&out), vec![batch(1)]);
        drop(b);
    }

    /// A socket that takes a long queue in parts: each write-through continues where the
    /// last one stopped (the written part skipped, not moved), and the dialer's take hands
    /// over only what is left; the peer reads every frame once, in order.
    #[test]
    fn write_through_continues_after_a_partial_write() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let dup = a.try_clone().unwrap();
        let q = PeerQueue::new(1 << 20, 64 << 20, 8 << 20, NO_DELAY);
        let attached = q.attach(Target::Plain(a.into()));
        let big = batch(20_000);
        let (mut pushed, mut written) = (0, 0);
        while q.head.get() == 0 {
            let Push::Queued { bytes, .. } = q.push(&big) else { panic!("refused") };
            written += bytes;
            pushed += 1;
            assert!(pushed < 1000, "the socket buffer is finite");
        }
        // The socket is full; a few more frames queue behind the written part.
        for _ in 0..3 {
            assert!(matches!(q.push(&big), Push::Queued { frames: 0, .. }));
            pushed += 1;
        }
        let frame_len = FRAME_HEADER_BYTES + prost::Message::encoded_len(&big);
        assert_eq!(
            q.pending.borrow().len() - q.head.get(),
            q.bound.get() + 3 * frame_len,
            "the byte bound counts what is left: the rest of the partial frame and the 3 queued"
        );
        // The peer makes room: the next push writes through from where the last write stopped.
        let mut got = vec![0; written];
        b.read_exact(&mut got).unwrap();
        let head = q.head.get();
        assert!(matches!(q.push(&batch(1)), Push::Queued { bytes, .. } if bytes > 0));
        pushed += 1;
        assert!(q.head.get() > head, "written on from the head, nothing moved");
        // The peer reads the rest: what the dialer takes, written here as it would.
        let reader = std::thread::spawn(move || {
            b.read_to_end(&mut got).unwrap();
            frames_in(&got)
        });
        let mut out = Vec::new();
        assert!(q.take(&mut out) >= 1);
        assert_eq!(q.head.get(), 0, "taking drops the written part");
        let mut rest = &out[..];
        while !rest.is_empty() {
            match (&dup).write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        q.written();
        drop(attached);
        drop(dup);
        let frames = reader.join().unwrap();
        assert_eq!(frames.len(), pushed);
        assert!(frames[..pushed - 1].iter().all(|f| *f == big));
        assert_eq!(frames[pushed - 1], batch(1));
    }

    #[test]
    fn written_frames_finds_boundaries() {
        let mut buf = Vec::new();
        for n in [1, 2, 3] {
            crate::frame::encode_frame(FrameKind::Batch, &batch(n), 1 << 10, &mut buf).unwrap();
        }
        let (l1, l2) = (5 + 8, 5 + 16);
        assert_eq!(written_frames(&buf, 0, 0), (0, 0));
        assert_eq!(written_frames(&buf, 0, 3), (0, l1 - 3));
        assert_eq!(written_frames(&buf, 0, l1), (1, 0));
        assert_eq!(written_frames(&buf, 0, l1 + 1), (1, l2 - 1));
        assert_eq!(written_frames(&buf, 0, buf.len()), (3, 0));
        // A buffer that starts with the 4-byte rest of a frame begun earlier.
        let mut rest = vec![0; 4];
        rest.extend_from_slice(&buf);
        assert_eq!(written_frames(&rest, 4, 2), (0, 2));
        assert_eq!(written_frames(&rest, 4, 4), (1, 0));
        assert_eq!(written_frames(&rest, 4, 4 + l1), (2, 0));
    }
}
