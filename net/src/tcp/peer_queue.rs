//! One peer's bounded outgoing queue.
//!
//! Batches are encoded into frames at `send` time, straight into one pending buffer. The
//! writer swaps that buffer out whole and writes it with one `write_all`: every batch queued
//! since the last write leaves in one syscall (write coalescing) with no copy beyond the
//! encoding itself.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

use phalanx_proto::MessageBatch;

use crate::frame::{FRAME_HEADER_BYTES, FrameKind, encode_frame};

/// Capacity kept by an idle buffer; a burst's larger allocation is released after it.
const RETAINED_BUFFER_BYTES: usize = 1 << 20;

/// What happened to a pushed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// The queue is at its batch or byte bound.
    Full,
    /// The batch's encoding exceeds the frame limit.
    Oversize(usize),
}

pub(crate) struct PeerQueue {
    pending: RefCell<Vec<u8>>,
    frames: Cell<usize>,
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
            waker: Cell::new(None),
            max_frames,
            max_bytes,
            max_frame_bytes,
        }
    }

    /// Encodes `batch` as a frame at the end of the queue, unless a bound forbids it.
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
        if encode_frame(FrameKind::Batch, batch, self.max_frame_bytes, &mut pending).is_err() {
            return Push::Oversize(len);
        }
        self.frames.set(self.frames.get() + 1);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Push::Queued
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

    /// Moves every queued frame into `out` (which must be empty); returns how many.
    pub(crate) fn take(&self, out: &mut Vec<u8>) -> usize {
        debug_assert!(out.is_empty());
        std::mem::swap(&mut *self.pending.borrow_mut(), out);
        self.frames.replace(0)
    }

    /// Drops every queued frame; returns how many.
    pub(crate) fn clear(&self) -> usize {
        let mut pending = self.pending.borrow_mut();
        pending.clear();
        pending.shrink_to(RETAINED_BUFFER_BYTES);
        self.frames.replace(0)
    }
}

/// Empties a written buffer for reuse, releasing a burst's excess capacity.
pub(crate) fn recycle(buf: &mut Vec<u8>) {
    buf.clear();
    buf.shrink_to(RETAINED_BUFFER_BYTES);
}

#[cfg(test)]
mod tests {
    use phalanx_proto::RaftMessage;

    use super::*;
    use crate::frame::FrameDecoder;

    fn batch(n: usize) -> MessageBatch {
        MessageBatch { messages: vec![RaftMessage { group: 1, from: 1, to: 2, body: None }; n] }
    }

    #[test]
    fn bounds_and_coalescing() {
        let q = PeerQueue::new(3, 1 << 20, 1 << 10);
        assert_eq!(q.push(&batch(1)), Push::Queued);
        assert_eq!(q.push(&batch(2)), Push::Queued);
        assert_eq!(q.push(&batch(500)), Push::Oversize(4000));
        assert_eq!(q.push(&batch(3)), Push::Queued);
        assert_eq!(q.push(&batch(1)), Push::Full);
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 3);
        let mut d = FrameDecoder::new(1 << 10);
        d.push(&out);
        for n in 1..=3 {
            assert_eq!(d.next_frame().unwrap().unwrap().decode::<MessageBatch>().unwrap(), batch(n));
        }
        assert_eq!(q.push(&batch(1)), Push::Queued, "taking frees the queue");
        assert_eq!(q.clear(), 1);

        let q = PeerQueue::new(100, 30, 1 << 10);
        assert_eq!(q.push(&batch(2)), Push::Queued); // 5 + 16 bytes
        assert_eq!(q.push(&batch(2)), Push::Full, "byte bound");
    }
}
