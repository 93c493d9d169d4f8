//! One TCP connection on a tokio socket: the state behind the WIT `connection`.
//!
//! A [`TcpConn`] is a cheap handle (`Arc`) shared by the guest's handles, the
//! dispatcher that fires the connection's callbacks, and anything that must close
//! it (graceful stop). Reads and writes are independent: one callback may write to
//! a connection while another connection's callback broadcasts to it.
//!
//! - this file: the handle, its identity and addresses, its places under the
//!   caps (permits), the time-outs, the write side, close and shutdowns;
//! - [`read_ahead`]: the bounded read-ahead buffer and the guest's reads;
//! - [`delivery`]: the host half of the delivery protocol (what the
//!   dispatcher and `on-read-ready` use);
//! - [`encrypted`]: the same reads and writes through a TLS session.
//!
//! Waiting reads, and waiting writes, each queue in an [`OpQueue`]: they
//! complete in order, and the plain calls (`try-read`, `try-write`, the
//! read-ahead) keep off while one is under way.

mod delivery;
mod encrypted;
mod read_ahead;

pub use delivery::EndSeen;
pub use portcullis_protocol::delivery::{Mark, Readiness};

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::encrypted::Session;
use self::read_ahead::{ReadEnd, ReadSide};
use super::admission::Admitted;
pub use super::admission::Timeouts;
use super::error::{SOCKET_CLOSED, SocketError, WRITE_AFTER_CLOSE, WRITE_TIMED_OUT};
use crate::limits::{GuestSocket, MAX_IO};
use crate::metrics::{Limit, ServiceMetrics};
use crate::net::tls::ClientTls;
use crate::sync::{Closing, OpQueue};

/// Every connection in the process gets a distinct id (Ballerina's `Caller.id`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Milliseconds since the first connection of the process: what a
/// connection's last activity is recorded in (one atomic store per event).
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// A shared handle to one TCP connection.
#[derive(Clone)]
pub struct TcpConn(Arc<Inner>);

/// A handle that does not keep the connection (its socket and buffer) alive.
pub struct WeakConn(std::sync::Weak<Inner>);

impl WeakConn {
    /// The connection, if something else still holds it and it is open.
    pub fn open(&self) -> Option<TcpConn> {
        self.0.upgrade().map(TcpConn).filter(|conn| !conn.is_closed())
    }
}

struct Inner {
    id: u64,
    /// Accepted by a listener (true) or opened by the guest (false).
    accepted: bool,
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    timeouts: Timeouts,
    /// When bytes (or the end) last arrived or were sent ([`clock_ms`]).
    last_active: AtomicU64,
    /// The buffer and what is known of the read side; locked only briefly,
    /// never across an await.
    read: Mutex<ReadSide>,
    /// Held by a guest `read` that waits, for as long as it gathers: reads
    /// complete in order, and no plain read or read-ahead overtakes one.
    reader: OpQueue,
    /// Held by a `write` that waits, so that each lands whole, never interleaved.
    writer: OpQueue,
    write_shut: AtomicBool,
    read_shut: AtomicBool,
    /// Set by `close`, which wakes every read, write and dispatcher waiting on it.
    closed: Closing,
    /// Cancelled by `shutdown-write` and by `close` (a child of `closed`).
    write_done: CancellationToken,
    /// Wakes the dispatcher when the guest consumed bytes from a full buffer.
    consumed: Notify,
    /// This connection's places under its service's `--max-connections` and
    /// `--max-connections-per-ip`, given back at `close` (or when the last
    /// handle goes).
    permit: Mutex<Option<Admitted>>,
    /// For a connection the guest opened: its place under the instance's
    /// socket limit and its buffer's memory charge, held until the socket is
    /// gone (the last handle dropped).
    _guest_socket: Option<GuestSocket>,
    /// A client's connection: its service's counters of bytes in and out.
    traffic: Option<Arc<ServiceMetrics>>,
    /// The TLS session every byte goes through, for a `tls://` listener's
    /// connection or a guest's TLS client; `None`: plain TCP.
    tls: Option<Session>,
}

impl TcpConn {
    /// Wraps a stream a listener accepted from `peer` (as `accept` told it:
    /// asking the socket again would cost a syscall per connection), on
    /// `local` when the listener knows it (bound to one address); `tls`: the
    /// session of a `tls://` listener's finished handshake.
    pub fn from_accept(
        stream: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        timeouts: Timeouts,
        traffic: Arc<ServiceMetrics>,
        tls: Option<rustls::Connection>,
    ) -> io::Result<Self> {
        let local = match local {
            Some(local) => local,
            None => stream.local_addr()?,
        };
        Self::new(stream, local, Some(peer), timeouts, None, Some(traffic), tls)
    }

    /// Wraps a connected stream, accepted by a listener (`peer` known) or
    /// opened by a guest (`None`). `TCP_NODELAY` is set: services answer small
    /// messages and must not wait for Nagle.
    fn new(
        stream: TcpStream,
        local: SocketAddr,
        peer: Option<SocketAddr>,
        timeouts: Timeouts,
        guest_socket: Option<GuestSocket>,
        traffic: Option<Arc<ServiceMetrics>>,
        tls: Option<rustls::Connection>,
    ) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let accepted = peer.is_some();
        let remote = match peer {
            Some(peer) => peer,
            None => stream.peer_addr()?,
        };
        let closed = Closing::default();
        Ok(TcpConn(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            accepted,
            stream,
            local,
            remote,
            timeouts,
            last_active: AtomicU64::new(clock_ms()),
            reader: OpQueue::default(),
            writer: OpQueue::default(),
            read: Mutex::new(ReadSide::default()),
            write_shut: AtomicBool::new(false),
            read_shut: AtomicBool::new(false),
            write_done: closed.child_token(),
            closed,
            consumed: Notify::new(),
            permit: Mutex::new(None),
            _guest_socket: guest_socket,
            traffic,
            tls: tls.map(Session::new),
        })))
    }

    /// Connects to the first address of `addrs` that answers, within `timeout`,
    /// for a guest: the connection keeps `socket` (its place under the
    /// instance's limits) until it is gone. With `tls`, a TLS handshake
    /// follows, verifying the server for the host name given (within what
    /// is left of the time-out).
    pub async fn connect(
        addrs: &[SocketAddr],
        connect_timeout: Duration,
        timeouts: Timeouts,
        socket: GuestSocket,
        tls: Option<(&ClientTls, &str)>,
    ) -> Result<Self, SocketError> {
        use super::error::CONNECT_FAILED;
        let started = tokio::time::Instant::now();
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        let mut tls_failure = None;
        for addr in addrs {
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let (stream, session) = match tls {
                        Some((client, host)) => {
                            let left = connect_timeout.saturating_sub(started.elapsed());
                            match client.handshake(stream, host, left).await {
                                Ok((stream, session)) => (stream, Some(session)),
                                // The next address may be another server.
                                Err(e) => {
                                    tls_failure = Some(e);
                                    continue;
                                }
                            }
                        }
                        None => (stream, None),
                    };
                    return stream
                        .local_addr()
                        .and_then(|local| TcpConn::new(stream, local, None, timeouts, Some(socket), None, session))
                        .map_err(|e| SocketError::from_io(CONNECT_FAILED, &e));
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }
        }
        Err(tls_failure.unwrap_or_else(|| SocketError::from_io(CONNECT_FAILED, &last)))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// A handle that does not keep this connection alive.
    pub fn downgrade(&self) -> WeakConn {
        WeakConn(Arc::downgrade(&self.0))
    }

    pub fn accepted(&self) -> bool {
        self.0.accepted
    }

    pub fn read_timeout(&self) -> Duration {
        self.0.timeouts.read
    }

    /// Reads from the socket into `side` (see `ReadSide::fill_from`);
    /// whatever came counts as activity for the idle time-out.
    fn fill(&self, side: &mut ReadSide) -> bool {
        let (progressed, bytes) = match self.session() {
            Some(session) => self.fill_encrypted(session, side),
            None => side.fill_from(&self.0.stream),
        };
        if progressed {
            self.touch();
        }
        if let Some(traffic) = self.0.traffic.as_ref().filter(|_| bytes > 0) {
            traffic.rx_bytes.inc_by(bytes as u64);
        }
        progressed
    }

    /// Records that bytes (or the end) arrived or were sent now.
    fn touch(&self) {
        self.0.last_active.store(clock_ms(), Ordering::Relaxed);
    }

    /// Counts a client connection's meeting with `limit` for its service.
    pub fn count_limit(&self, limit: Limit) {
        if let Some(traffic) = &self.0.traffic {
            traffic.limit_hit(limit);
        }
    }

    /// Records that `bytes` were sent now.
    fn sent(&self, bytes: usize) {
        self.touch();
        if let Some(traffic) = &self.0.traffic {
            traffic.tx_bytes.inc_by(bytes as u64);
        }
    }

    /// Resolves once the connection has been idle (nothing received or sent)
    /// for its idle time-out; never without one. `timer` is the caller's,
    /// kept across calls so that waiting costs no new timer per message.
    pub async fn idle_out(&self, mut timer: std::pin::Pin<&mut tokio::time::Sleep>) {
        let Some(idle) = self.0.timeouts.idle else {
            return std::future::pending().await;
        };
        loop {
            timer.as_mut().await;
            let quiet = Duration::from_millis(clock_ms().saturating_sub(self.0.last_active.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
            timer.as_mut().reset(tokio::time::Instant::now() + (idle - quiet));
        }
    }

    /// The idle time-out, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.0.timeouts.idle
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.0.local
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.0.remote
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.is_closed()
    }

    /// Writes every byte of `data` or fails; never a silent partial write.
    pub async fn write_all(&self, data: &[u8]) -> Result<u32, SocketError> {
        let inner = &*self.0;
        let _writing = inner.writer.enter().await;
        let mut written = 0;
        loop {
            if inner.write_shut.load(Ordering::Acquire) || inner.closed.is_closed() {
                return Err(SocketError::generic(WRITE_AFTER_CLOSE));
            }
            let before = written;
            while written < data.len() {
                match self.send(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(self.write_failed(e)),
                }
            }
            if written > before {
                self.sent(written - before);
            }
            if written == data.len() {
                // A TLS write is done once its ciphertext has left too
                // (waiting for room as it must).
                self.flush_all().await?;
                return Ok(written as u32);
            }
            // The peer is slow: wait for room (back-pressure), or for a
            // close, at most the write time-out (a timer only now, when
            // the socket is full: never on the fast path).
            self.wait_for_room().await?;
        }
    }

    /// Waits for room in the socket, or for a close, at most the write
    /// time-out: past it the connection closes, and the write fails with
    /// `write timed out`.
    async fn wait_for_room(&self) -> Result<(), SocketError> {
        let inner = &*self.0;
        let room = async {
            match inner.timeouts.write {
                Some(limit) => tokio::time::timeout(limit, inner.stream.writable()).await,
                None => Ok(inner.stream.writable().await),
            }
        };
        tokio::select! {
            r = room => match r {
                Ok(r) => r.map_err(|e| self.write_failed(e)),
                Err(_) => {
                    // Counted once per connection (a TLS flush in the
                    // background may time out beside a write).
                    if !self.is_closed() {
                        self.count_limit(Limit::write_timeout);
                    }
                    self.close();
                    Err(SocketError::generic(WRITE_TIMED_OUT))
                }
            },
            _ = inner.closed.closed() => Ok(()),
        }
    }

    /// [`TcpConn::write_all`] without waiting: writes what the socket takes now
    /// and returns how many bytes that was; 0 when it would wait or another
    /// write holds the connection. An error after some bytes went out is left
    /// for the write of the rest to report.
    pub fn try_write(&self, data: &[u8]) -> Result<u32, SocketError> {
        let inner = &*self.0;
        if inner.write_shut.load(Ordering::Acquire) || inner.closed.is_closed() {
            return Err(SocketError::generic(WRITE_AFTER_CLOSE));
        }
        if inner.writer.busy() {
            return Ok(0);
        }
        let mut written = 0;
        while written < data.len() {
            match self.send(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) if written > 0 => break,
                Err(e) => return Err(self.write_failed(e)),
            }
        }
        if written > 0 {
            self.sent(written);
            // Ciphertext the socket had no room for goes out in the background.
            if self.ciphertext_pending() {
                self.flush_later();
            }
        }
        Ok(written as u32)
    }

    /// One non-blocking write of `data`'s start: to the socket, or through
    /// the TLS session.
    fn send(&self, data: &[u8]) -> io::Result<usize> {
        match self.session() {
            Some(session) => self.send_encrypted(session, data),
            None => self.0.stream.try_write(data),
        }
    }

    /// A write found the connection broken (reset, or gone): the kernel
    /// handed its error to the write and will not report it again (no
    /// `EPOLLERR` after that), so the read side records it: the guest's next
    /// read reports it, and a dispatcher waiting for room in a full buffer
    /// hears of it and closes the connection instead of holding it until the
    /// idle time-out.
    fn write_failed(&self, err: io::Error) -> SocketError {
        let recorded = match err.raw_os_error() {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(err.kind(), err.to_string()),
        };
        {
            // Only a stream still open: after the peer's FIN the guest reads
            // to a clean end, as before.
            let mut side = self.side();
            if matches!(side.end, ReadEnd::Open) {
                side.fail(recorded);
            }
        }
        self.0.consumed.notify_one();
        SocketError::from(err)
    }

    /// Closes both directions and wakes everything waiting on this connection.
    /// Closing twice is harmless.
    pub fn close(&self) {
        let inner = &*self.0;
        inner.write_shut.store(true, Ordering::Release);
        if inner.closed.close() {
            // A TLS session's last records and its close_notify go out
            // first, as the kernel sends a plain socket's buffer after a
            // close (in the background if the socket is full now).
            let drained = self.session().is_none_or(|session| self.close_encrypted(session));
            // The socket may already be gone (reset by the peer): nothing to do then.
            let _ =
                socket2::SockRef::from(&inner.stream).shutdown(if drained { Shutdown::Both } else { Shutdown::Read });
        }
        drop(self.take_permit());
    }

    /// Counts this connection under its service's connection caps until it closes.
    pub fn hold_permit(&self, permit: Admitted) {
        *self.0.permit.lock().unwrap() = Some(permit);
    }

    /// Takes the connection's places under the caps, for a caller that must
    /// keep them past `close` (an instance per connection keeps them until the
    /// instance is gone, so the next connection finds a free pool slot).
    pub fn take_permit(&self) -> Option<Admitted> {
        self.0.permit.lock().unwrap().take()
    }

    /// Stops writing: sends FIN; later writes fail with `client socket close already.`
    pub fn shutdown_write(&self) -> Result<(), SocketError> {
        let inner = &*self.0;
        if inner.closed.is_closed() {
            return Err(SocketError::generic(WRITE_AFTER_CLOSE));
        }
        inner.write_shut.store(true, Ordering::Release);
        inner.write_done.cancel();
        match self.session() {
            Some(session) => self.shutdown_encrypted(session).map_err(SocketError::from),
            None => socket2::SockRef::from(&inner.stream).shutdown(Shutdown::Write).map_err(SocketError::from),
        }
    }

    /// Stops reading: later reads see end of stream. The kernel wakes a read
    /// already waiting (`SHUT_RD` makes it see end of stream), so none hangs.
    pub fn shutdown_read(&self) -> Result<(), SocketError> {
        let inner = &*self.0;
        if inner.closed.is_closed() {
            return Err(SocketError::generic(SOCKET_CLOSED));
        }
        inner.read_shut.store(true, Ordering::Release);
        let _ = socket2::SockRef::from(&inner.stream).shutdown(Shutdown::Read);
        Ok(())
    }

    /// Resolves once this side can write no more: `shutdown-write` or `close`.
    /// A connection whose peer ended its stream lives until then, so a service
    /// can still answer after a half-close.
    pub async fn write_done(&self) {
        self.0.write_done.cancelled().await
    }

    fn side(&self) -> MutexGuard<'_, ReadSide> {
        // Every update of the read side is complete before it unlocks; a panic
        // elsewhere leaves nothing half done, so a poisoned lock is still sound.
        self.0.read.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error of a `read(n)` past [`MAX_IO`].
pub fn read_too_long(n: u32) -> String {
    format!("read length {n} is over the limit of {MAX_IO} bytes per call (read in parts)")
}

/// The error of a `write` past [`MAX_IO`].
pub fn write_too_long(n: usize) -> String {
    format!("write of {n} bytes is over the limit of {MAX_IO} bytes per call (write in parts)")
}

impl std::fmt::Debug for TcpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConn")
            .field("id", &self.0.id)
            .field("local", &self.0.local)
            .field("remote", &self.0.remote)
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tokio::net::TcpListener;

    use super::read_ahead::READ_AHEAD_LIMIT;
    use super::*;

    /// A connection as a listener accepts it, and the client's end.
    pub async fn pair() -> (TcpConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, from) = listener.accept().await.unwrap();
        assert_eq!(from, peer.local_addr().unwrap());
        // No local address given: the connection asks its socket.
        let conn = TcpConn::from_accept(
            stream,
            from,
            None,
            Timeouts::read_only(Duration::from_secs(5)),
            crate::metrics::ServiceMetrics::detached("test"),
            None,
        )
        .unwrap();
        assert_eq!(conn.local_addr(), peer.peer_addr().unwrap());
        assert_eq!(conn.remote_addr(), from);
        (conn, peer)
    }

    #[tokio::test]
    async fn a_reset_seen_by_a_write_closes_a_connection_with_a_full_buffer() {
        use std::io::Write;
        let (conn, peer) = pair().await;
        let mut peer = peer.into_std().unwrap();
        peer.set_nonblocking(false).unwrap();
        peer.write_all(&[7u8; 70_000]).unwrap_or(()); // the rest waits in the peer's buffer
        let Readiness::Deliver(seen) = conn.wait_ready(Mark::default()).await else { panic!("not ready") };
        let (delivered, _) = conn.deliver();
        assert_eq!(delivered.len(), READ_AHEAD_LIMIT, "the read-ahead is full");
        conn.unread(delivered, &crate::limits::MemoryAccount::unlimited()).unwrap(); // a service that does not read
        conn.end_delivery();
        // The peer resets, and a write takes the error before the runtime's
        // driver looks at the socket (nothing awaits in between): epoll then
        // never reports the error.
        socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        assert!(conn.try_write(b"late").is_err(), "the write sees the reset");
        let waited = tokio::time::timeout(Duration::from_secs(2), conn.wait_ready(seen)).await;
        assert_eq!(waited.ok(), Some(Readiness::Closed), "a dispatcher waiting for room hears of the reset");
        assert_eq!(conn.read(None).await.unwrap().len(), READ_AHEAD_LIMIT, "the bytes read ahead come first");
        assert!(conn.read(None).await.is_err(), "then the guest's read reports the reset");
    }

    #[tokio::test]
    async fn writes_after_shutdown_write_fail_with_ballerinas_message() {
        let (conn, _peer) = pair().await;
        assert_eq!(conn.write_all(b"one").await.unwrap(), 3);
        conn.shutdown_write().unwrap();
        assert_eq!(conn.write_all(b"two").await.unwrap_err().message, WRITE_AFTER_CLOSE);
        conn.close();
        assert_eq!(conn.write_all(b"").await.unwrap_err().message, WRITE_AFTER_CLOSE);
    }
}
