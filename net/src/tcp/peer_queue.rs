//! One peer's bounded outgoing queue, and the write-through path to its connection.
//!
//! Batches are encoded into frames at `send` time, straight into one pending buffer. When
//! the peer's connection is up and idle (nothing queued, the dialer not writing), the frame
//! is written to the socket right there with one non-blocking `send(2)` (**write-through**):
//! it leaves at once instead of waiting until the shard loop yields and the executor gets
//! round to the dialer task, which under load took hundreds of microseconds to milliseconds
//! per frame. Otherwise the frame waits in the buffer; the dialer swaps the buffer out whole
//! and writes it with one `write_all`: every batch queued since the last write leaves in one
//! syscall (write coalescing) with no copy beyond the encoding itself.
//!
//! Ordering holds because a frame is written through only when nothing is ahead of it: the
//! buffer is empty and no bytes taken by the dialer are still being written. A write-through
//! that the socket takes only in part leaves the rest of the frame at the head of the buffer,
//! **bound** to that connection: the dialer writes it next, and if the connection dies first
//! the rest is discarded with it (a partial frame must never open the next connection).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Poll, Waker};

use phalanx_proto::MessageBatch;

use super::socket::try_send;
use crate::frame::{FRAME_HEADER_BYTES, FrameKind, encode_frame_sized};

/// Capacity kept by an idle buffer; a burst's larger allocation is released after it.
const RETAINED_BUFFER_BYTES: usize = 1 << 20;

/// What happened to a pushed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Written whole to the connection; the frame's bytes.
    Sent(usize),
    /// Queued for the dialer; how many of its bytes were already written (a write-through
    /// the socket took only in part), usually 0.
    Queued(usize),
    /// The queue is at its batch or byte bound.
    Full,
    /// The batch's encoding exceeds the frame limit.
    Oversize(usize),
}

pub(crate) struct PeerQueue {
    pending: RefCell<Vec<u8>>,
    /// Frames in `pending`, a bound partial frame included.
    frames: Cell<usize>,
    /// Bytes at the head of `pending` that finish a frame begun on the current connection.
    bound: Cell<usize>,
    /// A duplicate of the connected socket while the dialer's pump runs (the write-through
    /// target). A duplicate, not the number of the dialer's fd: whatever the order in which
    /// the dialer's futures are dropped, this fd stays valid (never a reused number) until
    /// [`Attached`] is dropped.
    conn: RefCell<Option<OwnedFd>>,
    /// The dialer has taken bytes it has not finished writing.
    writing: Cell<bool>,
    waker: Cell<Option<Waker>>,
    max_frames: usize,
    max_bytes: usize,
    max_frame_bytes: usize,
}

impl PeerQueue {
    pub(crate) fn new(max_frames: usize, max_bytes: usize, max_frame_bytes: usize) -> Self {
        PeerQueue {
            pending: RefCell::new(Vec::new()),
            frames: Cell::new(0),
            bound: Cell::new(0),
            conn: RefCell::new(None),
            writing: Cell::new(false),
            waker: Cell::new(None),
            max_frames,
            max_bytes,
            max_frame_bytes,
        }
    }

    /// Encodes `batch` as a frame and writes it through to the connection when it is idle,
    /// else queues it, unless a bound forbids it.
    pub(crate) fn push(&self, batch: &MessageBatch) -> Push {
        // Sized before encoding so the limits are checked before a byte is written.
        let len = prost::Message::encoded_len(batch);
        if len > self.max_frame_bytes {
            return Push::Oversize(len);
        }
        let mut pending = self.pending.borrow_mut();
        if self.frames.get() >= self.max_frames || pending.len() + FRAME_HEADER_BYTES + len > self.max_bytes {
            return Push::Full;
        }
        let idle = pending.is_empty() && !self.writing.get();
        if encode_frame_sized(FrameKind::Batch, batch, len, self.max_frame_bytes, &mut pending).is_err() {
            return Push::Oversize(len);
        }
        let mut written = 0;
        if idle {
            let mut conn = self.conn.borrow_mut();
            if let Some(fd) = conn.as_ref() {
                match try_send(fd.as_fd(), &pending) {
                    Ok(n) if n == pending.len() => {
                        // Keeps the buffer's capacity: the next frame encodes without allocating.
                        pending.clear();
                        return Push::Sent(n);
                    }
                    Ok(n) => {
                        pending.drain(..n);
                        if n > 0 {
                            self.bound.set(pending.len());
                        }
                        written = n;
                    }
                    // The dialer finds the error on its own write (or its watch read) and
                    // reconnects; the frame, untouched, waits for the next connection.
                    Err(_) => *conn = None,
                }
            }
        }
        self.frames.set(self.frames.get() + 1);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Push::Queued(written)
    }

    /// Makes `fd` (a duplicate of the connected socket) the write-through target until the
    /// returned guard is dropped.
    pub(crate) fn attach(&self, fd: OwnedFd) -> Attached<'_> {
        *self.conn.borrow_mut() = Some(fd);
        Attached(self)
    }

    /// Waits until at least one frame is queued.
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            if self.frames.get() > 0 {
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
        std::mem::swap(&mut *self.pending.borrow_mut(), out);
        // The bound bytes now travel in `out`, which dies with the connection anyway.
        self.bound.set(0);
        self.writing.set(!out.is_empty());
        self.frames.replace(0)
    }

    /// The dialer finished writing what it took.
    pub(crate) fn written(&self) {
        self.writing.set(false);
    }

    /// Drops every queued frame; returns how many.
    pub(crate) fn clear(&self) -> usize {
        let mut pending = self.pending.borrow_mut();
        pending.clear();
        pending.shrink_to(RETAINED_BUFFER_BYTES);
        self.bound.set(0);
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
        let bound = q.bound.replace(0);
        if bound > 0 {
            q.pending.borrow_mut().drain(..bound);
            q.frames.set(q.frames.get().saturating_sub(1));
        }
    }
}

/// Empties a written buffer for reuse, releasing a burst's excess capacity.
pub(crate) fn recycle(buf: &mut Vec<u8>) {
    buf.clear();
    buf.shrink_to(RETAINED_BUFFER_BYTES);
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

    #[test]
    fn bounds_and_coalescing() {
        let q = PeerQueue::new(3, 1 << 20, 1 << 10);
        assert_eq!(q.push(&batch(1)), Push::Queued(0));
        assert_eq!(q.push(&batch(2)), Push::Queued(0));
        assert_eq!(q.push(&batch(500)), Push::Oversize(4000));
        assert_eq!(q.push(&batch(3)), Push::Queued(0));
        assert_eq!(q.push(&batch(1)), Push::Full);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 3);
        assert_eq!(frames_in(&out), vec![batch(1), batch(2), batch(3)]);
        assert_eq!(q.push(&batch(1)), Push::Queued(0), "taking frees the queue");
        assert_eq!(q.clear(), 1);

        let q = PeerQueue::new(100, 30, 1 << 10);
        assert_eq!(q.push(&batch(2)), Push::Queued(0)); // 5 + 16 bytes
        assert_eq!(q.push(&batch(2)), Push::Full, "byte bound");
    }

    /// An idle attached connection gets frames at once; while the dialer writes, or anything
    /// is queued, frames queue behind (order).
    #[test]
    fn write_through_only_when_idle() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let q = PeerQueue::new(100, 1 << 20, 1 << 10);
        assert_eq!(q.push(&batch(1)), Push::Queued(0), "not attached yet");
        let attached = q.attach(a.into());
        assert_eq!(q.push(&batch(2)), Push::Queued(0), "a frame is ahead of it");
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 2);
        assert_eq!(q.push(&batch(3)), Push::Queued(0), "the dialer is writing");
        q.written();
        assert_eq!(q.push(&batch(4)), Push::Queued(0), "batch 3 is still queued");
        let mut rest = Vec::new();
        assert_eq!(q.take(&mut rest), 2);
        q.written();
        assert!(matches!(q.push(&batch(5)), Push::Sent(_)));
        assert!(matches!(q.push(&batch(6)), Push::Sent(_)));
        drop(attached);
        assert_eq!(q.push(&batch(7)), Push::Queued(0), "detached");
        let mut got = vec![0; 1024];
        let n = b.read(&mut got).unwrap();
        assert_eq!(frames_in(&got[..n]), vec![batch(5), batch(6)]);
    }

    /// A frame the socket takes in part: its rest goes first to the dialer, or is discarded
    /// with the connection, never reaching the next one.
    #[test]
    fn partial_write_is_bound_to_its_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let q = PeerQueue::new(1 << 20, 64 << 20, 8 << 20);
        let attached = q.attach(a.into());
        // Fill the socket until a frame does not fit whole.
        let big = batch(20_000);
        let mut sent = 0;
        let written = loop {
            match q.push(&big) {
                Push::Sent(_) => sent += 1,
                Push::Queued(w) => break w,
                other => panic!("{other:?}"),
            }
        };
        assert!(sent < 1000, "the socket buffer is finite");
        assert!(written > 0, "socket buffers take what fits, so a frame this size is split");
        assert_eq!(q.push(&batch(1)), Push::Queued(0));
        drop(attached);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 1, "the partial frame went with its connection");
        assert_eq!(frames_in(&out), vec![batch(1)]);
        drop(b);
    }
}
