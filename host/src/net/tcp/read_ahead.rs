//! The read side of a connection: the bounded read-ahead buffer, how it is
//! filled from the socket, and the guest's reads from it.
//!
//! The dispatcher fills the buffer before firing `on-read-ready` (one wasm
//! call per burst of data rather than one call plus a spurious `WouldBlock`),
//! and `read` serves from it first. It never holds more than
//! [`READ_AHEAD_LIMIT`] bytes, so TCP back-pressure still reaches the sender
//! and host memory per connection stays bounded.

use std::io;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{TcpConn, read_too_long};
use crate::limits::{HostCharge, MAX_IO};
use crate::net::error::{INVALID_READ_LENGTH, SOCKET_CLOSED, SocketError};
use portcullis_protocol::delivery::Mark;

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

/// The read half's state: the read-ahead buffer and what happened at the socket.
pub(super) struct ReadSide {
    pub(super) buf: BytesMut,
    /// Whether and how the stream ended at the socket.
    pub(super) end: ReadEnd,
    /// The guest has seen the end (an empty read at end of stream, or the
    /// error): only then is the read side over for the dispatcher.
    pub(super) end_seen: bool,
    /// The delivery counters: socket reads that brought bytes or end of
    /// stream (`arrived`), guest reads and deliveries that took bytes (`taken`).
    pub(super) mark: Mark,
    /// Bytes the running `on-read-ready`'s delivery brought
    /// ([`TcpConn::deliver`]), as many as the guest may still give back with
    /// `unread`.
    pub(super) delivered: usize,
    /// That delivery also told the guest the stream ends (and so set `end_seen`).
    pub(super) delivered_end: bool,
    /// Bytes the guest's reads took while that callback runs: it may give
    /// them back too (a read that failed after gathering some, in the SDK).
    pub(super) taken_in_delivery: usize,
    /// The callback with a delivery runs (from `deliver` to `end_delivery`).
    pub(super) delivering: bool,
    /// What `unread` put back beyond [`READ_AHEAD_LIMIT`], charged to the
    /// instance until reads bring the buffer under the limit again.
    pub(super) overflow: Option<HostCharge>,
    /// Bytes the last fill brought, to size the next buffer (see [`MIN_FILL`]).
    last_fill: usize,
}

/// How the stream stands at the socket. A failed stream has ended too: no
/// more bytes come either way.
#[derive(Debug)]
pub(super) enum ReadEnd {
    /// More may come.
    Open,
    /// The peer sent FIN.
    Ended,
    /// The socket failed (reset). The error goes to the first guest read that
    /// finds nothing else (then `None`).
    Failed(Option<io::Error>),
}

impl ReadEnd {
    /// No more bytes will come.
    pub(super) fn is_over(&self) -> bool {
        !matches!(self, ReadEnd::Open)
    }

    pub(super) fn is_failed(&self) -> bool {
        matches!(self, ReadEnd::Failed(_))
    }

    /// The failure, for the read that reports it (once).
    fn take_error(&mut self) -> Option<io::Error> {
        match self {
            ReadEnd::Failed(err) => err.take(),
            _ => None,
        }
    }
}

impl Default for ReadSide {
    fn default() -> Self {
        ReadSide {
            buf: BytesMut::new(),
            end: ReadEnd::Open,
            end_seen: false,
            mark: Mark::default(),
            delivered: 0,
            delivered_end: false,
            taken_in_delivery: 0,
            delivering: false,
            overflow: None,
            last_fill: 0,
        }
    }
}

impl ReadSide {
    /// What the guest may give back with `unread` now: what the running
    /// callback's delivery and its reads since brought.
    pub(super) fn unread_allowance(&self) -> usize {
        self.delivered + self.taken_in_delivery
    }

    /// The socket broke: nothing more will come; the next read reports `err`.
    pub(super) fn fail(&mut self, err: io::Error) {
        self.end = ReadEnd::Failed(Some(err));
    }

    /// The first `n` buffered bytes, as the guest gets them. Taking all of a
    /// big buffer hands over the buffer itself (no copy: at 16 KiB messages
    /// the copies were a fifth of the server's time), and the next fill starts
    /// a new one. A few bytes are copied out instead and the buffer is kept
    /// for the next fill: allocating a small vector is the allocator's fast
    /// path, a buffer is not (as native's echo, a connection that goes idle
    /// after a message then keeps a small buffer, untouched beyond its first page).
    pub(super) fn take(&mut self, n: usize) -> Vec<u8> {
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
    /// Returns whether anything happened (bytes, end of stream or an error),
    /// and how many bytes came.
    pub(super) fn fill_from(&mut self, stream: &TcpStream) -> (bool, usize) {
        let mut progressed = false;
        let mut brought = 0;
        while !self.end.is_over() {
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
                self.mark.arrived += 1;
                progressed = true;
                continue;
            }
            match read {
                Ok(_) => self.end = ReadEnd::Ended,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        // Nothing came: an idle connection holds no buffer.
                        self.buf = BytesMut::new();
                    }
                    break;
                }
                Err(e) => self.fail(e),
            }
            self.mark.arrived += 1;
            progressed = true;
        }
        if brought > 0 {
            self.last_fill = brought;
        }
        (progressed, brought)
    }
}

impl TcpConn {
    /// Reads for the guest. `None`: what is available, waiting for at least one
    /// byte. `Some(n)`: exactly `n` bytes, fewer only at end of stream. The
    /// time-out restarts with every chunk. End of stream gives an empty vector.
    /// A read that fails (time-out, closed) takes nothing: what arrived
    /// meanwhile is there for the next read.
    pub async fn read(&self, length: Option<u32>) -> Result<Vec<u8>, SocketError> {
        let want = wanted(length)?;
        let inner = &*self.0;
        let _reading = inner.reader.enter().await;
        if inner.read_shut.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        loop {
            // What the buffer answers now (the lock is never held across an
            // await). Bytes stay in the buffer until the read can return
            // them all (`want` fits: it is at most the buffer's limit), so a
            // read that times out or fails loses none: the next read gets them.
            {
                let mut side = self.side();
                let ready = if want == 0 { !side.buf.is_empty() } else { side.buf.len() >= want };
                if ready {
                    let take = if want == 0 { side.buf.len() } else { want };
                    return Ok(self.take_for_guest(&mut side, take));
                }
                if side.end.is_over() {
                    // What is left comes first; the end (or the error) is
                    // reported by the read that finds nothing.
                    if !side.buf.is_empty() {
                        let take = side.buf.len();
                        return Ok(self.take_for_guest(&mut side, take));
                    }
                    side.end_seen = true;
                    if let Some(err) = side.end.take_error() {
                        return Err(SocketError::from(err));
                    }
                    return Ok(Vec::new());
                }
                if inner.closed.is_closed() {
                    return Err(SocketError::generic(SOCKET_CLOSED));
                }
                // A TLS session may hold plaintext already (what came with
                // the handshake, or beyond a full buffer): no socket wait for it.
                if self.plaintext_pending() && self.fill(&mut side) {
                    continue;
                }
            }
            // Not enough buffered: wait for the socket, bounded by the read time-out.
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
        let want = wanted(length)?;
        let inner = &*self.0;
        if inner.read_shut.load(Ordering::Acquire) {
            return Ok(Some(Vec::new()));
        }
        if inner.reader.busy() {
            return Ok(None);
        }
        let mut side = self.side();
        if !side.end.is_over() && side.buf.len() < want.max(1) {
            self.fill(&mut side);
        }
        let available = side.buf.len();
        let take = match want {
            0 => available,
            n if available >= n => n,
            _ if side.end.is_over() => available, // the last bytes before the end
            _ => 0,
        };
        if take > 0 {
            return Ok(Some(self.take_for_guest(&mut side, take)));
        }
        if side.end.is_over() {
            side.end_seen = true;
            if let Some(err) = side.end.take_error() {
                return Err(SocketError::from(err));
            }
            return Ok(Some(Vec::new()));
        }
        Ok(None)
    }

    /// The first `n` buffered bytes, now the guest's: every read, plain or
    /// waiting, and every delivery takes through here, so each counts as a
    /// take (see [`TcpConn::wait_ready`]) and wakes a dispatcher waiting for
    /// room in a full buffer.
    pub(super) fn take_for_guest(&self, side: &mut ReadSide, n: usize) -> Vec<u8> {
        side.mark.taken += 1;
        if side.delivering {
            side.taken_in_delivery += n;
        }
        self.0.consumed.notify_one();
        let out = side.take(n);
        if side.buf.len() <= READ_AHEAD_LIMIT {
            side.overflow = None;
        }
        out
    }
}

/// How many bytes a read asks for (0: whatever is there), or why it may not.
fn wanted(length: Option<u32>) -> Result<usize, SocketError> {
    match length {
        Some(0) => Err(SocketError::generic(INVALID_READ_LENGTH)),
        Some(n) if n as usize > MAX_IO => Err(SocketError::generic(read_too_long(n))),
        Some(n) => Ok(n as usize),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::super::delivery::EndSeen;
    use super::super::tests::pair;
    use super::*;
    use portcullis_protocol::delivery::{Mark, Readiness};

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
        let _ = conn.wait_ready(Mark::default()).await;
        assert_eq!(conn.try_read(Some(9)).unwrap(), None, "read(9) would wait for 4 more");
        assert_eq!(conn.try_read(Some(2)).unwrap().unwrap(), b"He");
        assert_eq!(conn.try_read(None).unwrap().unwrap(), b"llo");
        peer.write_all(b"end").await.unwrap();
        peer.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conn.try_read(Some(9)).unwrap().unwrap(), b"end", "short only at the end");
        assert_eq!(conn.try_read(None).unwrap().unwrap(), b"");
        assert_eq!(conn.end_seen().await, EndSeen::Ended);
        assert!(conn.try_read(Some(0)).is_err());
    }

    #[tokio::test]
    async fn a_few_bytes_are_copied_out_and_a_big_buffer_is_handed_over() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"small").await.unwrap();
        let Readiness::Deliver(seen) = conn.wait_ready(Mark::default()).await else { panic!("not ready") };
        assert_eq!(conn.deliver().0, b"small");
        let kept = conn.side().buf.capacity();
        assert!(kept >= MIN_FILL, "the buffer stays for the next fill (capacity {kept})");
        // A big burst: the buffer grows to take it, whole and in order.
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&big).await.unwrap();
        let mut got = Vec::new();
        let mut seen = seen;
        while got.len() < big.len() {
            let Readiness::Deliver(now) = conn.wait_ready(seen).await else { panic!("not ready") };
            seen = now;
            let (delivered, _) = conn.deliver();
            if delivered.len() > COPY_OUT_MAX {
                assert_eq!(conn.side().buf.capacity(), 0, "a big delivery takes the buffer along");
            }
            got.extend(delivered);
        }
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn a_buffer_with_room_left_is_not_grown() {
        let (conn, mut peer) = pair().await;
        peer.write_all(&[7u8; 3000]).await.unwrap();
        // Most likely one segment; should it come in two, the second fits too.
        let mut seen = Mark::default();
        while conn.side().buf.len() < 3000 {
            let Readiness::Deliver(now) = conn.wait_ready(seen).await else { panic!("not ready") };
            seen = now;
        }
        let side = conn.side();
        assert_eq!(side.buf.len(), 3000);
        // Growing it would have copied the 3000 bytes for nothing.
        assert_eq!(side.buf.capacity(), MIN_FILL);
    }
}
