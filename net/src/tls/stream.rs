//! A connection through a rustls session over a glommio (io_uring) socket.
//!
//! The session lives in a [`Session`] that can leave its socket and thread: the Raft port
//! accepts and completes the TLS handshake on shard 0, then passes the socket (as an fd) and
//! the session (by value) to the shard that reads the connection, which puts them together
//! again ([`TlsStream::into_parts`] / [`TlsStream::from_parts`]). Bytes already read from
//! the socket but not yet decrypted travel inside the session, so none is lost.
//!
//! While a [`TlsStream`] is in use its session is shared (`Rc<RefCell<_>>`, borrowed only
//! inside one poll, never across an await) with the Raft transport's write-through path
//! ([`Session::write_through`]): a frame queued while the dialer is idle is encrypted into
//! the same session and sent with a non-blocking `send(2)`, so every byte on the wire is a
//! TLS record of that one session, in order.
//!
//! Reads go through a buffer of [`TLS_READ_BYTES`] (one `recv` per record's worth instead of
//! rustls's 4 KiB reads); writes leave rustls's own outgoing buffer (bounded at 64 KiB by
//! rustls) straight to the socket.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

/// Bytes read from the socket per `recv`: one TLS record of the largest size (16 KiB of
/// plaintext, its header and tag) with room to spare.
pub const TLS_READ_BYTES: usize = 17 << 10;

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The TLS state of one connection: the rustls session and the socket bytes it has not
/// consumed yet. `Send`, so it can move to another shard with its socket.
pub struct Session {
    conn: Connection,
    /// Bytes read from the socket, `inb[in_at..in_len]` not yet given to the session.
    inb: Vec<u8>,
    in_at: usize,
    in_len: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("handshaking", &self.conn.is_handshaking()).finish_non_exhaustive()
    }
}

/// Reads the socket through a poll: `Pending` becomes `WouldBlock` for rustls.
struct PollIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for PollIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(Ok(0)) if !buf.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Every record rustls holds in one `sendmsg(2)` (rustls hands its records over as one
    /// vector; `write` alone would cost a syscall per 16 KiB record). When the socket is
    /// full, the stream's own write registers the wake-up (and may send the first record).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match try_sendmsg(self.tcp.as_raw_fd(), bufs)? {
            0 => match bufs.iter().find(|b| !b.is_empty()) {
                Some(first) => self.write(first),
                None => Ok(0),
            },
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A non-blocking writer on a (duplicate) socket fd, for the write-through path.
struct FdWriter<'a>(BorrowedFd<'a>);

/// One non-blocking `sendmsg(2)` of `bufs`: the bytes the socket took, 0 when it is full.
/// Never raises `SIGPIPE`.
fn try_sendmsg(fd: std::os::fd::RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // At most what one call may pass (`UIO_MAXIOV`); the rest goes with the next call.
    const MAX_IOV: usize = 1024;
    let iov = &bufs[..bufs.len().min(MAX_IOV)];
    // SAFETY: a zeroed msghdr is valid; it points at `iov`, which outlives the call, and
    // `IoSlice` is ABI-compatible with `iovec`.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if let Ok(n) = usize::try_from(rc) {
        return Ok(n);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}

impl Write for FdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match crate::tcp::try_send(self.0, buf)? {
            0 if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match try_sendmsg(self.0.as_raw_fd(), bufs)? {
            0 if bufs.iter().any(|b| !b.is_empty()) => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Session {
    fn new(conn: Connection) -> Session {
        Session { conn, inb: Vec::new(), in_at: 0, in_len: 0 }
    }

    /// Ciphertext the session holds that the socket has not taken yet.
    #[must_use]
    pub fn has_unsent(&self) -> bool {
        self.conn.wants_write()
    }

    /// The peer's certificate chain (leaf first), once the handshake is done.
    #[must_use]
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Writes ciphertext to the socket until it is all sent (`Ready(Ok)`) or the socket is
    /// full (`Pending`, woken when it has room).
    fn poll_send(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut PollIo { tcp, cx }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Sends what the socket takes now, without waiting.
    fn send_now(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut FdWriter(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The write-through path: when the socket took all earlier ciphertext, encrypts as much
    /// of `plain` as the session's outgoing buffer holds and sends what the socket takes
    /// now. Returns the plaintext bytes the session took (0 when the socket is still full):
    /// they will reach the peer on this connection or not at all, like bytes a plain
    /// `send(2)` took. Ciphertext left unsent is the dialer's to flush
    /// ([`has_unsent`](Self::has_unsent)). Never blocks.
    pub fn write_through(&mut self, fd: BorrowedFd<'_>, plain: &[u8]) -> io::Result<usize> {
        self.send_now(fd)?;
        if self.conn.wants_write() {
            return Ok(0);
        }
        let n = self.conn.writer().write(plain)?;
        self.send_now(fd)?;
        Ok(n)
    }

    /// Decrypts into `buf`: what is ready now, reading the socket only when nothing is.
    fn poll_read(
        &mut self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut filled = 0;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                // A clean end (the peer's close_notify), or `buf` is full.
                Ok(0) => return Poll::Ready(Ok(filled)),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Poll::Ready(Ok(filled));
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if filled > 0 => {
                    let _ = e; // reported by the next read
                    return Poll::Ready(Ok(filled));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            // Alerts, key-update answers: sent when the socket takes them, never waited for.
            if self.conn.wants_write()
                && let Poll::Ready(Err(e)) = self.poll_send(tcp, cx)
            {
                return Poll::Ready(Err(e));
            }
            if self.in_at < self.in_len {
                self.feed(tcp, cx)?;
                continue;
            }
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
            if ready!(self.poll_fill(tcp, cx))? == 0 {
                // The end of the socket: rustls tells a clean close from a truncation.
                self.conn.read_tls(&mut io::empty())?;
                self.conn.process_new_packets().map_err(tls_error)?;
            }
        }
    }

    /// Drives the handshake to its end.
    fn poll_handshake(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(tcp, cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.in_at < self.in_len {
                self.feed(tcp, cx)?;
                continue;
            }
            if ready!(self.poll_fill(tcp, cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Gives the session the socket bytes `inb` holds (as many as it takes) and processes
    /// them. On a TLS error rustls has queued an alert telling the peer why: sent if the
    /// socket takes it now.
    fn feed(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> io::Result<()> {
        let mut rest = &self.inb[self.in_at..self.in_len];
        let n = self.conn.read_tls(&mut rest)?;
        self.in_at += n;
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.poll_send(tcp, cx);
            return Err(tls_error(e));
        }
        Ok(())
    }

    /// Reads the socket into `inb` (which must be consumed); the bytes read, 0 at its end.
    fn poll_fill(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.inb.len() < TLS_READ_BYTES {
            self.inb.resize(TLS_READ_BYTES, 0);
        }
        let n = ready!(Pin::new(&mut *tcp).poll_read(cx, &mut self.inb))?;
        (self.in_at, self.in_len) = (0, n);
        Poll::Ready(Ok(n))
    }
}

/// A glommio TCP stream carrying a TLS session.
pub struct TlsStream {
    tcp: TcpStream,
    session: Rc<RefCell<Session>>,
}

impl TlsStream {
    /// Completes a client handshake with `name` on `tcp`.
    pub async fn connect(
        tcp: TcpStream,
        config: std::sync::Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let conn = ClientConnection::new(config, name).map_err(tls_error)?;
        TlsStream::handshake(tcp, Connection::Client(conn)).await
    }

    /// Completes a server handshake on `tcp`.
    pub async fn accept(tcp: TcpStream, config: std::sync::Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = ServerConnection::new(config).map_err(tls_error)?;
        TlsStream::handshake(tcp, Connection::Server(conn)).await
    }

    async fn handshake(mut tcp: TcpStream, conn: Connection) -> io::Result<TlsStream> {
        let mut session = Session::new(conn);
        std::future::poll_fn(|cx| session.poll_handshake(&mut tcp, cx)).await?;
        Ok(TlsStream { tcp, session: Rc::new(RefCell::new(session)) })
    }

    /// Puts a stream back together on this thread (see [`into_parts`](Self::into_parts)).
    #[must_use]
    pub fn from_parts(tcp: TcpStream, session: Session) -> TlsStream {
        TlsStream { tcp, session: Rc::new(RefCell::new(session)) }
    }

    /// Takes the stream apart so that its socket and session can move to another thread.
    /// Fails (closing the connection) while another handle on the session is alive.
    pub fn into_parts(self) -> io::Result<(TcpStream, Session)> {
        match Rc::try_unwrap(self.session) {
            Ok(s) => Ok((self.tcp, s.into_inner())),
            Err(_) => Err(io::Error::other("the TLS session is still in use elsewhere")),
        }
    }

    /// The session, shared with the write-through path.
    #[must_use]
    pub fn session(&self) -> Rc<RefCell<Session>> {
        self.session.clone()
    }

    /// The socket underneath.
    #[must_use]
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.session.borrow_mut().poll_read(&mut this.tcp, cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut s = this.session.borrow_mut();
        loop {
            let n = s.conn.writer().write(buf)?;
            // Start sending now; the rest leaves on the next write or the flush.
            let sent = s.poll_send(&mut this.tcp, cx);
            if let Poll::Ready(Err(e)) = sent {
                return Poll::Ready(Err(e));
            }
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
            // The session's buffer was full: wait for the socket to take some of it.
            ready!(sent)?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.session.borrow_mut().poll_send(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        {
            let mut s = this.session.borrow_mut();
            s.conn.send_close_notify();
            ready!(s.poll_send(&mut this.tcp, cx))?;
        }
        Pin::new(&mut this.tcp).poll_close(cx)
    }
}

/// A connection, plain or through TLS: what the Raft transport and the client port read and
/// write.
pub enum Conn {
    /// No TLS.
    Plain(TcpStream),
    /// Through a TLS session.
    Tls(TlsStream),
}

impl Conn {
    /// The socket underneath.
    #[must_use]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(t) => t.tcp(),
        }
    }

    /// The TLS session, when there is one.
    #[must_use]
    pub fn session(&self) -> Option<Rc<RefCell<Session>>> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(t) => Some(t.session()),
        }
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp().as_raw_fd()
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is open and owned by the socket, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Conn::Tls(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_close(cx),
            Conn::Tls(t) => Pin::new(t).poll_close(cx),
        }
    }
}
