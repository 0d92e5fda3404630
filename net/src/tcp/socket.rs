//! Socket plumbing: options, address resolution, timeouts, fd handoff.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use glommio::net::TcpStream;

use crate::tls::stream::Session;
use crate::tls::{Conn, TlsStream};

/// Runs `fut` for at most `ms` milliseconds; `None` on timeout (the future is dropped).
pub(crate) async fn timeout<T>(ms: u64, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(Duration::from_millis(ms)).await;
        None
    })
    .await
}

/// Resolves `host:port`. Literal addresses resolve in place; names go through the blocking
/// pool because `getaddrinfo` blocks and this runs on a shard thread.
pub(crate) async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let name = addr.to_string();
    glommio::executor()
        .spawn_blocking(move || {
            name.to_socket_addrs()?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} resolves to nothing")))
        })
        .await
}

/// Options every Raft connection gets: no Nagle delay (heartbeats and acks are small and
/// latency-bound), a bounded blocked write, and a bounded wait for unacknowledged data.
pub(crate) fn configure(
    stream: &TcpStream,
    write_timeout_ms: u64,
    tcp_user_timeout_ms: u64,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_millis(write_timeout_ms.max(1))))?;
    if tcp_user_timeout_ms > 0 {
        let ms = libc::c_uint::try_from(tcp_user_timeout_ms).unwrap_or(libc::c_uint::MAX);
        // SAFETY: `fd` is an open socket owned by `stream` for the duration of the call; the
        // option value is a `c_uint` passed with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                (&raw const ms).cast::<libc::c_void>(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Detaches the connection from this executor so another shard's executor can own it: a
/// duplicate fd (same connection) is returned with the TLS session (by value, with any
/// bytes it read and not yet decrypted), and the stream is dropped, closing only its fd.
///
/// glommio's `TcpStream` cannot give up its fd, hence the duplicate. Must be called with no
/// read or write in flight on the stream (the handshake has completed), so no byte is lost.
pub(crate) fn detach(conn: Conn) -> io::Result<(OwnedFd, Option<Session>)> {
    let (tcp, session) = match conn {
        Conn::Plain(tcp) => (tcp, None),
        Conn::Tls(t) => {
            let (tcp, s) = t.into_parts()?;
            (tcp, Some(s))
        }
    };
    let fd = duplicate(&tcp)?;
    drop(tcp);
    Ok((fd, session))
}

/// A duplicate of `stream`'s fd (same connection), for writing to it outside the stream.
pub(crate) fn duplicate(stream: &TcpStream) -> io::Result<OwnedFd> {
    // SAFETY: the fd is open and owned by `stream`, which outlives this borrow.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()
}

/// One non-blocking `send(2)` of `buf`: the bytes the socket took, 0 when its buffer is
/// full. Never blocks, never raises `SIGPIPE` (a closed peer is an `EPIPE` error instead).
pub(crate) fn try_send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `fd` is open for the duration of the borrow; `buf` is valid for reads of
        // `buf.len()` bytes.
        let rc = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast::<libc::c_void>(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if let Ok(n) = usize::try_from(rc) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => {}
            _ => return Err(e),
        }
    }
}

/// Adopts a connection detached by [`detach`] on the current executor.
pub(crate) fn adopt(fd: OwnedFd, session: Option<Session>) -> Conn {
    // SAFETY: `fd` is an owned, open, connected TCP socket; ownership moves into the stream.
    let tcp: TcpStream = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd.into_raw_fd()) };
    match session {
        None => Conn::Plain(tcp),
        Some(s) => Conn::Tls(TlsStream::from_parts(tcp, s)),
    }
}

/// A small xorshift generator for reconnect jitter (not security relevant; keeps dialers of
/// many shards from reconnecting in lockstep).
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// A delay in `[ms/2, ms]`.
    pub(crate) fn delay_ms(&mut self, ms: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let half = ms / 2;
        half + self.0 % (ms - half + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new(42);
        for ms in [0, 1, 2, 10, 1000] {
            for _ in 0..100 {
                let d = j.delay_ms(ms);
                assert!(d >= ms / 2 && d <= ms, "{d} for {ms}");
            }
        }
    }
}
