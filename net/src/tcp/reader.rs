//! One inbound connection: decode frames under the frame limit, check every batch, hand it
//! to the shard's sink. Anything else closes the connection with a logged reason.

use std::net::SocketAddr;
use std::rc::Rc;

use phalanx_proto::MessageBatch;
use tracing::{debug, warn};

use super::socket::timeout;
use super::{IDLE_GIVE_BACK_MS, IDLE_KEEP_BYTES, Shard};
use crate::frame::{FRAME_HEADER_BYTES, FrameDecoder, FrameError, FrameKind};
use crate::spare::Spare;
use crate::stats::{OpenConnection, add, inc};
use crate::transport::{BatchError, Inbound, NodeId, check_batch};

/// Why a connection was closed by this side.
#[derive(Debug, thiserror::Error)]
enum Violation {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Reads `stream` (sent by `from` = (node, shard)) until it ends or misbehaves.
pub(super) async fn run(
    shard: &Rc<Shard>,
    mut stream: crate::tls::Conn,
    from: (NodeId, u32),
    leftover: Vec<u8>,
    peer_addr: Option<SocketAddr>,
) {
    inc(&shard.counters.inbound_accepted);
    let _open = OpenConnection::new(&shard.counters);
    let mut decoder = FrameDecoder::new(shard.cfg.max_frame_bytes);
    decoder.push(&leftover);
    let mut frame_started: Option<std::time::Instant> = None;
    let (mut spare, mut last_read) = (Spare::new(), 0);
    loop {
        let delivered = match drain(shard, &mut decoder, from) {
            Ok(n) => n,
            Err(v) => {
                inc(&shard.counters.protocol_errors);
                warn!(
                node = shard.local.node_id,
                shard = shard.shard,
                peer = from.0,
                peer_shard = from.1,
                peer_addr = ?peer_addr,
                reason = %v,
                "closing inbound connection"
                );
                return;
            }
        };
        // A frame's deadline runs from the read that brought its first byte (the last read,
        // when it also completed the frame before).
        if decoder.buffered() == 0 {
            frame_started = None;
            decoder.give_back_spare(&mut spare, last_read, std::time::Instant::now());
        } else if frame_started.is_none() || delivered > 0 {
            frame_started = Some(std::time::Instant::now());
        }
        // Between frames a peer may be quiet for as long as it likes; within one, the rest
        // must arrive within the frame timeout.
        let holding = decoder.memory_bytes();
        let read = decoder.read_from(&mut stream, shard.cfg.read_chunk_bytes);
        let result = if let Some(t0) = frame_started {
            let left = shard.cfg.frame_timeout_ms.saturating_sub(t0.elapsed().as_millis() as u64);
            match timeout(left.max(1), read).await {
                Some(r) => r,
                None => {
                    inc(&shard.counters.frame_timeouts);
                    warn!(
                        node = shard.local.node_id,
                        peer = from.0,
                        peer_addr = ?peer_addr,
                        "closing inbound connection: a frame did not arrive whole within the frame timeout"
                    );
                    return;
                }
            }
        } else if holding > IDLE_KEEP_BYTES {
            // Between frames, holding what a burst grew: given back if the peer stays quiet.
            match timeout(IDLE_GIVE_BACK_MS, read).await {
                Some(r) => r,
                None => {
                    decoder.give_back_spare(&mut spare, 0, std::time::Instant::now());
                    decoder.read_from(&mut stream, shard.cfg.read_chunk_bytes).await
                }
            }
        } else {
            read.await
        };
        match result {
            Ok(0) => {
                if let Err(e) = decoder.finish() {
                    debug!(node = shard.local.node_id, peer = from.0, reason = %e, "peer closed mid-frame");
                } else {
                    debug!(node = shard.local.node_id, peer = from.0, "peer closed the connection");
                }
                return;
            }
            Ok(n) => last_read = n,
            Err(e) => {
                debug!(node = shard.local.node_id, peer = from.0, error = %e, "read failed");
                return;
            }
        }
        // A peer flooding us must not starve the shard's other tasks.
        glommio::yield_if_needed().await;
    }
}

/// Delivers every complete frame buffered; returns how many.
fn drain(shard: &Shard, decoder: &mut FrameDecoder, from: (NodeId, u32)) -> Result<usize, Violation> {
    let mut n = 0;
    while let Some(frame) = decoder.next_frame()? {
        n += 1;
        frame.expect_kind(FrameKind::Batch, "Batch")?;
        let batch: MessageBatch = frame.decode()?;
        check_batch(&batch, from.0, shard.local.node_id)?;
        add(&shard.counters.bytes_received, (FRAME_HEADER_BYTES + frame.payload.len()) as u64);
        drop(frame);
        if (shard.sink)(Inbound { from: from.0, from_shard: from.1, batch }) {
            inc(&shard.counters.batches_received);
        } else {
            inc(&shard.counters.batches_dropped_inbox_full);
        }
    }
    Ok(n)
}
