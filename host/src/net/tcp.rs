//! One TCP connection on a tokio socket: the state behind the WIT `connection`.
//!
//! A [`TcpConn`] is a cheap handle (`Arc`) shared by the guest's handles, the
//! dispatcher that fires the connection's callbacks, and anything that must close
//! it (graceful stop). Reads and writes are independent: one callback may write to
//! a connection while another connection's callback broadcasts to it.
//!
//! The read side keeps a small bounded read-ahead buffer. The dispatcher fills it
//! before firing `on-read-ready` (one wasm call per burst of data rather than one
//! call plus a spurious `WouldBlock`), and `read` serves from it first. It never
//! holds more than [`READ_AHEAD_LIMIT`] bytes, so TCP back-pressure still reaches
//! the sender and host memory per connection stays bounded.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::admission::Admitted;
use super::closing::Closing;
use super::error::{INVALID_READ_LENGTH, SocketError, WRITE_AFTER_CLOSE, WRITE_TIMED_OUT};
use crate::limits::{GuestSocket, MAX_IO};

/// Most bytes the host reads ahead of the guest, per connection.
pub const READ_AHEAD_LIMIT: usize = MAX_IO;

/// The smallest buffer a read-ahead starts with. Buffers are handed to the
/// guest whole, so each fill of an empty buffer allocates a new one: sized to
/// what the connection brought last time (twice that, up to the limit)
/// rather than the limit, small messages cost a small allocation (a 64 KiB
/// one each took the allocator's slow path: ~5% of a 64-byte echo).
const MIN_FILL: usize = 4 * 1024;

/// Up to this many bytes, a guest's read copies them out of the buffer
/// (see `ReadSide::take`).
const COPY_OUT_MAX: usize = 1024;

/// Every connection in the process gets a distinct id (Ballerina's `Caller.id`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The time-outs a connection lives by (see [`crate::limits::Limits`] for
/// the flags and defaults).
///
/// ```
/// use std::time::Duration;
/// use portcullis::net::tcp::Timeouts;
/// let client = Timeouts { write: Some(Duration::from_secs(300)), ..Timeouts::read_only(Duration::from_secs(30)) };
/// assert_eq!(client.idle, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Of every read that waits: `read-timed-out` when nothing came for this long.
    pub read: Duration,
    /// Nothing received or sent for this long, between callbacks: the host
    /// closes the connection (see [`TcpConn::idle_out`]). `None`: never.
    pub idle: Option<Duration>,
    /// A write that sent nothing for this long fails (`write timed out`)
    /// and closes the connection. `None`: never.
    pub write: Option<Duration>,
}

impl Timeouts {
    /// Only a read time-out.
    pub fn read_only(read: Duration) -> Self {
        Timeouts { read, idle: None, write: None }
    }
}

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
    reader: Gate,
    /// Held by a `write` that waits, so that each lands whole, never interleaved.
    writer: Gate,
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
    slot: Mutex<Option<Admitted>>,
    /// For a connection the guest opened: its place under the instance's
    /// socket limit and its buffer's memory charge, held until the socket is
    /// gone (the last handle dropped).
    _guest_socket: Option<GuestSocket>,
}

/// The read half's state: the read-ahead buffer and what happened at the socket.
struct ReadSide {
    buf: BytesMut,
    /// No more bytes will come: the peer sent FIN, or the socket failed.
    eof: bool,
    /// A read error seen by the read-ahead, handed to the next guest read.
    error: Option<io::Error>,
    /// The socket failed (reset); `eof` is set too.
    failed: bool,
    /// The guest has seen the end (an empty read at end of stream, or the
    /// error): only then is the read side over for the dispatcher.
    end_seen: bool,
    /// Counts socket reads that brought bytes or end of stream.
    arrivals: u64,
    /// Counts guest reads that took bytes.
    takes: u64,
    /// Bytes the running `on-read-ready` brought along ([`TcpConn::lend`]),
    /// as many as the guest may still give back with `unread`.
    lent: usize,
    /// That delivery also told the guest the stream ends (and so set `end_seen`).
    lent_end: bool,
    /// Bytes the last fill brought, to size the next buffer (see [`MIN_FILL`]).
    last_fill: usize,
}

/// Where the dispatcher stands with a connection, to tell "new" from "already seen".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadMark {
    arrivals: u64,
    takes: u64,
}

/// The read side after a callback, for the dispatcher.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadState {
    /// More may come (or bytes are still buffered).
    Open,
    /// The peer ended its stream and everything was read.
    Ended,
    /// The connection broke (reset); nothing more will work.
    Failed,
}

/// What the dispatcher should do next for a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Bytes or end of stream wait for the guest: fire `on-read-ready`. The
    /// mark is where things stand now, to pass to the next `wait_ready`.
    Ready(ReadMark),
    /// The connection was closed: fire `on-close` and stop.
    Closed,
}

impl TcpConn {
    /// Wraps a stream a listener accepted from `peer` (as `accept` told it:
    /// asking the socket again would cost a syscall per connection), on
    /// `local` when the listener knows it (bound to one address).
    pub fn from_accept(
        stream: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        timeouts: Timeouts,
    ) -> io::Result<Self> {
        let local = match local {
            Some(local) => local,
            None => stream.local_addr()?,
        };
        Self::new(stream, local, Some(peer), timeouts, None)
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
            reader: Gate::default(),
            writer: Gate::default(),
            read: Mutex::new(ReadSide {
                buf: BytesMut::new(),
                eof: false,
                error: None,
                failed: false,
                end_seen: false,
                arrivals: 0,
                takes: 0,
                lent: 0,
                lent_end: false,
                last_fill: 0,
            }),
            write_shut: AtomicBool::new(false),
            read_shut: AtomicBool::new(false),
            write_done: closed.child_token(),
            closed,
            consumed: Notify::new(),
            slot: Mutex::new(None),
            _guest_socket: guest_socket,
        })))
    }

    /// Connects to the first address of `addrs` that answers, within `timeout`,
    /// for a guest: the connection keeps `socket` (its place under the
    /// instance's limits) until it is gone.
    pub async fn connect(
        addrs: &[SocketAddr],
        connect_timeout: Duration,
        timeouts: Timeouts,
        socket: GuestSocket,
    ) -> Result<Self, SocketError> {
        use super::error::CONNECT_FAILED;
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
        for addr in addrs {
            match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    return stream
                        .local_addr()
                        .and_then(|local| TcpConn::new(stream, local, None, timeouts, Some(socket)))
                        .map_err(|e| SocketError::from_io(CONNECT_FAILED, &e));
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }
        }
        Err(SocketError::from_io(CONNECT_FAILED, &last))
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
        let progressed = side.fill_from(&self.0.stream);
        if progressed {
            self.touch();
        }
        progressed
    }

    /// Records that bytes (or the end) arrived or were sent now.
    fn touch(&self) {
        self.0.last_active.store(clock_ms(), Ordering::Relaxed);
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

    /// Reads for the guest. `None`: what is available, waiting for at least one
    /// byte. `Some(n)`: exactly `n` bytes, fewer only at end of stream. The
    /// time-out restarts with every chunk. End of stream gives an empty vector.
    pub async fn read(&self, length: Option<u32>) -> Result<Vec<u8>, SocketError> {
        let want = match length {
            Some(0) => return Err(SocketError::generic(INVALID_READ_LENGTH)),
            Some(n) if n as usize > MAX_IO => return Err(SocketError::generic(read_too_long(n))),
            Some(n) => n as usize,
            None => 0,
        };
        let inner = &*self.0;
        let _reading = inner.reader.enter().await;
        if inner.read_shut.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        loop {
            // What the buffer answers now (the lock is never held across an await).
            {
                let mut side = self.side();
                let take = if want == 0 { side.buf.len() } else { (want - out.len()).min(side.buf.len()) };
                if take > 0 {
                    let chunk = self.take_for_guest(&mut side, take);
                    if out.is_empty() {
                        out = chunk;
                    } else {
                        out.extend_from_slice(&chunk);
                    }
                }
                let done = if want == 0 { !out.is_empty() } else { out.len() == want };
                if done {
                    return Ok(out);
                }
                if side.eof {
                    // Bytes gathered so far come first; the end (or the error) is
                    // reported by the read that finds nothing.
                    if out.is_empty() {
                        side.end_seen = true;
                        if let Some(err) = side.error.take() {
                            return Err(SocketError::from(err));
                        }
                    }
                    return Ok(out);
                }
                if inner.closed.is_closed() {
                    return Err(SocketError::generic("socket is closed"));
                }
            }
            // Nothing buffered: wait for the socket, bounded by the read time-out.
            let waited = tokio::select! {
                r = tokio::time::timeout(inner.timeouts.read, inner.stream.readable()) => r,
                _ = inner.closed.closed() => continue,
            };
            match waited {
                Err(_) => return Err(SocketError::read_timed_out()),
                Ok(Err(e)) => self.side().fail(e),
                Ok(Ok(())) => {
                    self.fill(&mut self.side());
                }
            }
        }
    }

    /// [`TcpConn::read`] without waiting: `Some` with what it would return now
    /// (bytes, or empty at the end), `None` when it would have to wait or
    /// another read is under way.
    pub fn try_read(&self, length: Option<u32>) -> Result<Option<Vec<u8>>, SocketError> {
        let want = match length {
            Some(0) => return Err(SocketError::generic(INVALID_READ_LENGTH)),
            Some(n) if n as usize > MAX_IO => return Err(SocketError::generic(read_too_long(n))),
            Some(n) => n as usize,
            None => 0,
        };
        let inner = &*self.0;
        if inner.read_shut.load(Ordering::Acquire) {
            return Ok(Some(Vec::new()));
        }
        if inner.reader.busy() {
            return Ok(None);
        }
        let mut side = self.side();
        if !side.eof && side.buf.len() < want.max(1) {
            self.fill(&mut side);
        }
        let available = side.buf.len();
        let take = match want {
            0 => available,
            n if available >= n => n,
            _ if side.eof => available, // the last bytes before the end
            _ => 0,
        };
        if take > 0 {
            return Ok(Some(self.take_for_guest(&mut side, take)));
        }
        if side.eof {
            side.end_seen = true;
            if let Some(err) = side.error.take() {
                return Err(SocketError::from(err));
            }
            return Ok(Some(Vec::new()));
        }
        Ok(None)
    }

    /// Hands everything read ahead to the guest with its `on-read-ready`, and
    /// whether the stream ends right after it: the bytes are the guest's from
    /// now on (a take), and the end counts as seen, except what it gives back
    /// with [`TcpConn::unread`] before the callback ends. Nothing while a
    /// waiting read queues (those bytes are its), or after `shutdown-read`.
    /// A failed socket's end is not handed over: the guest's next read
    /// reports the error.
    pub fn lend(&self) -> (Vec<u8>, bool) {
        let inner = &*self.0;
        if inner.read_shut.load(Ordering::Acquire) || inner.reader.busy() {
            return (Vec::new(), false);
        }
        let mut side = self.side();
        let n = side.buf.len();
        side.lent = n;
        let data = if n == 0 { Vec::new() } else { self.take_for_guest(&mut side, n) };
        let end = side.eof && !side.failed && !side.end_seen;
        if end {
            side.end_seen = true;
            side.lent_end = true;
        }
        (data, end)
    }

    /// Puts back in front the tail of what [`TcpConn::lend`] handed over that
    /// the guest did not read (possibly nothing), and the end of stream with
    /// it if that delivery told of one: the guest did not read that far.
    /// Giving back all the bytes undoes the take, so the dispatcher waits for
    /// new bytes before calling again (a service that never reads costs no
    /// CPU). More than was lent is refused: the guest cannot grow the buffer
    /// past its bound.
    pub fn unread(&self, data: Vec<u8>) -> Result<(), SocketError> {
        let mut side = self.side();
        if data.len() > side.lent {
            return Err(SocketError::generic(format!(
                "unread gives back {} bytes, but on-read-ready brought {} still unread",
                data.len(),
                side.lent
            )));
        }
        if side.lent > 0 && data.len() == side.lent {
            side.takes -= 1;
        }
        if side.lent_end {
            side.end_seen = false;
        }
        side.lent = 0;
        side.lent_end = false;
        if !data.is_empty() {
            let rest = std::mem::take(&mut side.buf);
            let mut joined = BytesMut::with_capacity(data.len() + rest.len());
            joined.extend_from_slice(&data);
            joined.extend_from_slice(&rest);
            side.buf = joined;
        }
        Ok(())
    }

    /// Ends the lending of the callback that just returned: a late `unread`
    /// (from a handle kept beyond it) is refused.
    pub fn settle_lent(&self) {
        let mut side = self.side();
        side.lent = 0;
        side.lent_end = false;
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
                match inner.stream.try_write(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(SocketError::from(e)),
                }
            }
            if written > before {
                self.touch();
            }
            if written == data.len() {
                return Ok(written as u32);
            }
            // The peer is slow: wait for room (back-pressure), or for a
            // close, at most the write time-out (a timer only now, when
            // the socket is full: never on the fast path).
            let room = async {
                match inner.timeouts.write {
                    Some(limit) => tokio::time::timeout(limit, inner.stream.writable()).await,
                    None => Ok(inner.stream.writable().await),
                }
            };
            tokio::select! {
                r = room => match r {
                    Ok(r) => r.map_err(SocketError::from)?,
                    Err(_) => {
                        self.close();
                        return Err(SocketError::generic(WRITE_TIMED_OUT));
                    }
                },
                _ = inner.closed.closed() => {}
            }
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
            match inner.stream.try_write(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) if written > 0 => break,
                Err(e) => return Err(SocketError::from(e)),
            }
        }
        if written > 0 {
            self.touch();
        }
        Ok(written as u32)
    }

    /// Closes both directions and wakes everything waiting on this connection.
    /// Closing twice is harmless.
    pub fn close(&self) {
        let inner = &*self.0;
        inner.write_shut.store(true, Ordering::Release);
        if inner.closed.close() {
            // The socket may already be gone (reset by the peer): nothing to do then.
            let _ = socket2::SockRef::from(&inner.stream).shutdown(Shutdown::Both);
        }
        drop(self.take_slot());
    }

    /// Counts this connection under its service's connection caps until it closes.
    pub fn hold_slot(&self, slot: Admitted) {
        *self.0.slot.lock().unwrap() = Some(slot);
    }

    /// Takes the connection's places under the caps, for a caller that must
    /// keep them past `close` (an instance per connection keeps them until the
    /// instance is gone, so the next connection finds a free pool slot).
    pub fn take_slot(&self) -> Option<Admitted> {
        self.0.slot.lock().unwrap().take()
    }

    /// Stops writing: sends FIN; later writes fail with `client socket close already.`
    pub fn shutdown_write(&self) -> Result<(), SocketError> {
        let inner = &*self.0;
        if inner.closed.is_closed() {
            return Err(SocketError::generic(WRITE_AFTER_CLOSE));
        }
        inner.write_shut.store(true, Ordering::Release);
        inner.write_done.cancel();
        socket2::SockRef::from(&inner.stream).shutdown(Shutdown::Write).map_err(SocketError::from)
    }

    /// Stops reading: later reads see end of stream. The kernel wakes a read
    /// already waiting (`SHUT_RD` makes it see end of stream), so none hangs.
    pub fn shutdown_read(&self) -> Result<(), SocketError> {
        let inner = &*self.0;
        if inner.closed.is_closed() {
            return Err(SocketError::generic("socket is closed"));
        }
        inner.read_shut.store(true, Ordering::Release);
        let _ = socket2::SockRef::from(&inner.stream).shutdown(Shutdown::Read);
        Ok(())
    }

    /// Where the read side stands once a callback returned.
    pub async fn read_state(&self) -> ReadState {
        if self.0.read_shut.load(Ordering::Acquire) {
            return ReadState::Ended;
        }
        self.0.reader.wait_free().await;
        let side = self.side();
        match (side.end_seen, side.failed) {
            (true, true) => ReadState::Failed,
            (true, false) => ReadState::Ended,
            (false, _) => ReadState::Open,
        }
    }

    /// Resolves once this side can write no more: `shutdown-write` or `close`.
    /// A connection whose peer ended its stream lives until then, so a service
    /// can still answer after a half-close.
    pub async fn write_done(&self) {
        self.0.write_done.cancelled().await
    }

    /// Waits until the guest has something new to read, reading ahead from the
    /// socket into the bounded buffer meanwhile.
    ///
    /// "New" is relative to `seen`, the mark taken when the last callback started:
    /// bytes arrived since, or the guest took bytes and some remain. A callback that
    /// returns without reading is therefore not called again until more bytes come,
    /// so a service that never reads costs no CPU.
    pub async fn wait_ready(&self, seen: ReadMark) -> Readiness {
        let inner = &*self.0;
        // The socket is read once it says it is readable, not before: right
        // after a callback took everything, a read would only find it empty.
        let mut readable = false;
        loop {
            if inner.closed.is_closed() {
                return Readiness::Closed;
            }
            inner.reader.wait_free().await;
            // Decided under the lock, waited for without it.
            let socket_done = {
                let mut side = self.side();
                let fresh = side.arrivals != seen.arrivals || side.takes != seen.takes;
                let pending = !side.buf.is_empty() || (side.eof && !side.end_seen);
                if fresh && pending {
                    return Readiness::Ready(ReadMark { arrivals: side.arrivals, takes: side.takes });
                }
                if side.failed {
                    // The guest was told (the failure counted as an arrival)
                    // and did not read: nothing more can come or go.
                    return Readiness::Closed;
                }
                let socket_done = side.eof || side.buf.len() >= READ_AHEAD_LIMIT;
                if !socket_done && readable && self.fill(&mut side) {
                    continue;
                }
                socket_done
            };
            if socket_done {
                // Nothing more to read from the socket: wait for the guest to take
                // bytes (buffer full) or for a close. A take since the lock was
                // released left a permit (`notify_one`), so none is missed.
                // A reset meanwhile (the peer is gone: a client that filled
                // the buffer and left) closes the connection rather than
                // holding its buffer and descriptor until a time-out.
                tokio::select! {
                    _ = inner.consumed.notified() => {}
                    _ = inner.closed.closed() => {}
                    _ = inner.stream.ready(Interest::ERROR) => {
                        let err = inner.stream.take_error().ok().flatten();
                        self.side().fail(err.unwrap_or_else(|| io::ErrorKind::ConnectionReset.into()));
                        return Readiness::Closed;
                    }
                }
                continue;
            }
            // No wait for `closed` beside it (one per message, each registering
            // with a mutex): `close` shuts the socket down, and the kernel then
            // wakes its readers (a socket already reset had woken them).
            if let Err(e) = inner.stream.readable().await {
                self.side().fail(e);
            }
            readable = true;
        }
    }
}

impl TcpConn {
    /// The first `n` buffered bytes, now the guest's: every read, plain or
    /// waiting, and every delivery takes through here, so each counts as a
    /// take (see [`TcpConn::wait_ready`]) and wakes a dispatcher waiting for
    /// room in a full buffer.
    fn take_for_guest(&self, side: &mut ReadSide, n: usize) -> Vec<u8> {
        side.takes += 1;
        self.0.consumed.notify_one();
        side.take(n)
    }

    fn side(&self) -> MutexGuard<'_, ReadSide> {
        // Every update of the read side is complete before it unlocks; a panic
        // elsewhere leaves nothing half done, so a poisoned lock is still sound.
        self.0.read.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serialises the waiting (async) reads, or writes, of one connection, and tells
/// the plain calls (`try-read`, `try-write`, the read-ahead) whether one is queued
/// or under way, so that they keep off: nothing overtakes it or lands inside it.
/// The plain calls, made for every message, then cost one atomic load instead of
/// locking and unlocking an async mutex.
#[derive(Default)]
struct Gate {
    lock: tokio::sync::Mutex<()>,
    /// Async users holding or waiting for `lock`.
    users: AtomicUsize,
    /// Wakes those waiting for the gate to be free.
    freed: Notify,
}

/// One async user's place at the [`Gate`], from queueing to leaving (also when
/// its future is dropped while queued).
struct Queued<'a>(&'a Gate);

/// Holds the [`Gate`]. Fields drop in order: the lock first, then the place.
struct Entered<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    _queued: Queued<'a>,
}

impl Gate {
    async fn enter(&self) -> Entered<'_> {
        self.users.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(self);
        Entered { _lock: self.lock.lock().await, _queued: queued }
    }

    fn busy(&self) -> bool {
        self.users.load(Ordering::Acquire) != 0
    }

    async fn wait_free(&self) {
        while self.busy() {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.busy() {
                return;
            }
            freed.await;
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.0.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.freed.notify_waiters();
        }
    }
}

impl ReadSide {
    /// The socket broke: nothing more will come; the next read reports `err`.
    fn fail(&mut self, err: io::Error) {
        self.error = Some(err);
        self.failed = true;
        self.eof = true;
    }

    /// The first `n` buffered bytes, as the guest gets them. Taking all of a
    /// big buffer hands over the buffer itself (no copy: at 16 KiB messages
    /// the copies were a fifth of the server's time), and the next fill starts
    /// a new one. A few bytes are copied out instead and the buffer is kept
    /// for the next fill: allocating a small vector is the allocator's fast
    /// path, a buffer is not (as native's echo, a connection that goes idle
    /// after a message then keeps a small buffer, untouched beyond its first page).
    fn take(&mut self, n: usize) -> Vec<u8> {
        if n == self.buf.len() {
            if n <= COPY_OUT_MAX {
                let out = self.buf.to_vec();
                self.buf.clear();
                return out;
            }
            return Vec::from(std::mem::take(&mut self.buf));
        }
        self.buf.split_to(n).to_vec()
    }

    /// Reads from the socket until it would block or the buffer is full.
    /// Returns whether anything happened (bytes, end of stream or an error).
    fn fill_from(&mut self, stream: &TcpStream) -> bool {
        let mut progressed = false;
        let mut brought = 0;
        while !self.eof {
            let room = READ_AHEAD_LIMIT.saturating_sub(self.buf.len());
            if room == 0 {
                break;
            }
            // A buffer with no room left gets room for twice what came last
            // time (or in this fill so far), so that one `recv` usually takes
            // it all. Only then: growing a buffer copies what it holds (asking
            // for that much room on every turn had copied each 16 KiB message
            // once more).
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(room.min((self.last_fill.max(brought) * 2).max(MIN_FILL)));
            }
            let window = self.buf.spare_capacity_mut().len().min(room);
            let mut got = 0;
            let read = stream.try_io(Interest::READABLE, || {
                got = socket2::SockRef::from(stream).recv(&mut self.buf.spare_capacity_mut()[..window])?;
                // A short read emptied the socket. Saying "would block" then
                // makes tokio forget the readiness, which saves a `recv` that
                // would only find nothing (one syscall per message): the next
                // turn's `try_io` returns at once, unless more came meanwhile
                // or the end was signalled (tokio keeps "read closed" through
                // the forgetting), and then its `recv` reads that.
                if got > 0 && got < window { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(got) }
            });
            if got > 0 {
                // SAFETY: `recv` initialised `got` bytes of the spare capacity.
                unsafe { self.buf.set_len(self.buf.len() + got) };
                brought += got;
                self.arrivals += 1;
                progressed = true;
                continue;
            }
            match read {
                Ok(_) => self.eof = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        // Nothing came: an idle connection holds no buffer.
                        self.buf = BytesMut::new();
                    }
                    break;
                }
                Err(e) => self.fail(e),
            }
            self.arrivals += 1;
            progressed = true;
        }
        if brought > 0 {
            self.last_fill = brought;
        }
        progressed
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
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpConn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, from) = listener.accept().await.unwrap();
        assert_eq!(from, peer.local_addr().unwrap());
        // No local address given: the connection asks its socket.
        let conn = TcpConn::from_accept(stream, from, None, Timeouts::read_only(Duration::from_secs(5))).unwrap();
        assert_eq!(conn.local_addr(), peer.peer_addr().unwrap());
        assert_eq!(conn.remote_addr(), from);
        (conn, peer)
    }

    #[tokio::test]
    async fn the_end_counts_only_once_the_guest_saw_it() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"last words").await.unwrap();
        peer.shutdown().await.unwrap(); // data and FIN, likely in one read-ahead
        let Readiness::Ready(seen) = conn.wait_ready(ReadMark::default()).await else { panic!("not ready") };
        assert_eq!(conn.read(None).await.unwrap(), b"last words");
        assert_eq!(conn.read_state().await, ReadState::Open, "the guest has not seen the end yet");
        // It took bytes and the end is pending: fire again.
        assert!(matches!(conn.wait_ready(seen).await, Readiness::Ready(_)));
        assert_eq!(conn.read(None).await.unwrap(), b"");
        assert_eq!(conn.read_state().await, ReadState::Ended);
    }

    #[tokio::test]
    async fn read_exact_gathers_and_returns_a_short_read_only_at_the_end() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"Hello").await.unwrap();
        let reader = tokio::spawn({
            let conn = conn.clone();
            async move { conn.read(Some(9)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        peer.write_all(b"from").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b"Hellofrom");
        peer.write_all(b"abc").await.unwrap();
        peer.shutdown().await.unwrap();
        assert_eq!(conn.read(Some(10)).await.unwrap(), b"abc");
        assert_eq!(conn.read(Some(10)).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn try_read_answers_only_what_needs_no_waiting() {
        let (conn, mut peer) = pair().await;
        assert_eq!(conn.try_read(None).unwrap(), None, "nothing there yet");
        peer.write_all(b"Hello").await.unwrap();
        let _ = conn.wait_ready(ReadMark::default()).await;
        assert_eq!(conn.try_read(Some(9)).unwrap(), None, "read(9) would wait for 4 more");
        assert_eq!(conn.try_read(Some(2)).unwrap().unwrap(), b"He");
        assert_eq!(conn.try_read(None).unwrap().unwrap(), b"llo");
        peer.write_all(b"end").await.unwrap();
        peer.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conn.try_read(Some(9)).unwrap().unwrap(), b"end", "short only at the end");
        assert_eq!(conn.try_read(None).unwrap().unwrap(), b"");
        assert_eq!(conn.read_state().await, ReadState::Ended);
        assert!(conn.try_read(Some(0)).is_err());
    }

    #[tokio::test]
    async fn lent_bytes_given_back_are_read_again_and_count_as_unread() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"abcdef").await.unwrap();
        let Readiness::Ready(seen) = conn.wait_ready(ReadMark::default()).await else { panic!("not ready") };
        assert_eq!(conn.lend(), (b"abcdef".to_vec(), false));
        assert!(conn.unread(b"abcdefg".to_vec()).is_err(), "more than was lent");
        conn.unread(b"abcdef".to_vec()).unwrap();
        conn.settle_lent();
        // All given back: nothing new for the guest until more bytes come.
        let not_yet = tokio::time::timeout(Duration::from_millis(100), conn.wait_ready(seen)).await;
        assert!(not_yet.is_err(), "fired again for bytes the guest gave back untouched");
        peer.write_all(b"gh").await.unwrap();
        let Readiness::Ready(seen) = conn.wait_ready(seen).await else { panic!("not ready") };
        assert_eq!(conn.lend(), (b"abcdefgh".to_vec(), false));
        // Part given back: the guest read something, so it is called again at once.
        conn.unread(b"fgh".to_vec()).unwrap();
        assert!(conn.unread(b"h".to_vec()).is_err(), "given back already");
        conn.settle_lent();
        assert!(matches!(conn.wait_ready(seen).await, Readiness::Ready(_)));
        assert_eq!(conn.try_read(None).unwrap().unwrap(), b"fgh");
    }

    #[tokio::test]
    async fn a_few_bytes_are_copied_out_and_a_big_buffer_is_handed_over() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"small").await.unwrap();
        let Readiness::Ready(seen) = conn.wait_ready(ReadMark::default()).await else { panic!("not ready") };
        assert_eq!(conn.lend().0, b"small");
        let kept = conn.side().buf.capacity();
        assert!(kept >= MIN_FILL, "the buffer stays for the next fill (capacity {kept})");
        // A big burst: the buffer grows to take it, whole and in order.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&big).await.unwrap();
        let mut got = Vec::new();
        let mut seen = seen;
        while got.len() < big.len() {
            let Readiness::Ready(now) = conn.wait_ready(seen).await else { panic!("not ready") };
            seen = now;
            let (lent, _) = conn.lend();
            if lent.len() > COPY_OUT_MAX {
                assert_eq!(conn.side().buf.capacity(), 0, "a big delivery takes the buffer along");
            }
            got.extend(lent);
        }
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn the_end_comes_along_and_is_unseen_when_bytes_go_back() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"bye").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut seen = ReadMark::default();
        // The bytes and the end may come in one read-ahead or in two.
        let mut delivered = Vec::new();
        let ended = loop {
            let Readiness::Ready(now) = conn.wait_ready(seen).await else { panic!("not ready") };
            seen = now;
            let (data, end) = conn.lend();
            delivered.extend(data);
            if end {
                break true;
            }
            conn.settle_lent();
        };
        assert!(ended);
        assert_eq!(delivered, b"bye");
        assert_eq!(conn.read_state().await, ReadState::Ended, "the guest was told of the end");
        if conn.side().lent > 0 {
            // Giving the bytes back un-sees the end: it comes after them.
            conn.unread(b"bye".to_vec()).unwrap();
            assert_eq!(conn.read_state().await, ReadState::Open);
            assert_eq!(conn.try_read(None).unwrap().unwrap(), b"bye");
            assert_eq!(conn.try_read(None).unwrap().unwrap(), b"");
            assert_eq!(conn.read_state().await, ReadState::Ended);
        }
    }

    #[tokio::test]
    async fn close_wakes_a_dispatcher_waiting_for_bytes() {
        // Also after the peer ended its side, and after a reset: the wait
        // has no close signal of its own; the socket's shutdown wakes it.
        for ending in ["none", "fin", "reset"] {
            let (conn, peer) = pair().await;
            let waiting = tokio::spawn({
                let conn = conn.clone();
                async move {
                    let mut seen = ReadMark::default();
                    loop {
                        match conn.wait_ready(seen).await {
                            Readiness::Ready(now) => {
                                seen = now;
                                let _ = conn.lend();
                                conn.settle_lent();
                            }
                            Readiness::Closed => return,
                        }
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _peer = match ending {
                "fin" => {
                    let mut peer = peer;
                    peer.shutdown().await.unwrap();
                    Some(peer)
                }
                "reset" => {
                    socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO)).unwrap();
                    drop(peer);
                    None
                }
                _ => Some(peer),
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close();
            let woke = tokio::time::timeout(Duration::from_secs(2), waiting).await;
            assert!(woke.is_ok(), "wait_ready still waiting after close ({ending})");
        }
    }

    #[tokio::test]
    async fn a_buffer_with_room_left_is_not_grown() {
        let (conn, mut peer) = pair().await;
        peer.write_all(&[7u8; 3000]).await.unwrap();
        // Most likely one segment; should it come in two, the second fits too.
        let mut seen = ReadMark::default();
        while conn.side().buf.len() < 3000 {
            let Readiness::Ready(now) = conn.wait_ready(seen).await else { panic!("not ready") };
            seen = now;
        }
        let side = conn.side();
        assert_eq!(side.buf.len(), 3000);
        // Growing it would have copied the 3000 bytes for nothing.
        assert_eq!(side.buf.capacity(), MIN_FILL);
    }

    #[tokio::test]
    async fn nothing_is_lent_past_a_waiting_read() {
        let (conn, mut peer) = pair().await;
        let reader = tokio::spawn({
            let conn = conn.clone();
            async move { conn.read(Some(4)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        peer.write_all(b"ab").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conn.lend(), (Vec::new(), false), "the waiting read owns what comes");
        peer.write_all(b"cd").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b"abcd");
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
