//! The host half of the delivery protocol: what the dispatcher and
//! `on-read-ready` use. The protocol's specification is the WIT
//! (`wit/socket.wit`, interface `callbacks`, record `delivery`); when a
//! callback runs is `portcullis_protocol::delivery::next` (which the SDK's
//! WASI backend follows too); the guest half is the SDK's
//! `sys/portcullis/tcp.rs`.
//!
//! One connection's cycle, as its driver runs it (`dispatch::driver`):
//!
//! 1. [`TcpConn::wait_ready`] reads ahead until something is new for the
//!    guest since the last [`Mark`] (bytes or the end arrived, or the
//!    guest took bytes) and something is there for it (bytes, or an end it
//!    has not seen).
//! 2. [`TcpConn::deliver`] hands the guest everything buffered (and the end,
//!    if it follows) with `on-read-ready`.
//! 3. The guest reads what it wants of it and gives the rest back with
//!    `unread` ([`TcpConn::unread`]) before the callback returns.
//! 4. [`TcpConn::end_delivery`]: a late `unread` of any bytes is refused
//!    from now on.
//!    [`TcpConn::end_seen`] says whether the read side is over.
//!
//! Host-side invariants: at most [`READ_AHEAD_LIMIT`] bytes read ahead; a
//! guest gives back at most what the delivery and its reads since brought,
//! so it cannot grow the buffer with bytes of its own (what goes past the
//! bound is charged to its memory); all
//! bytes given back untouched mean nothing new, so a service that never reads
//! is not called again until more bytes come; nothing is delivered while an
//! async read waits (those bytes are its).

use std::io;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::Interest;

use std::sync::Arc;

use portcullis_protocol::delivery::{self, Mark, Next, Readiness, Stream};

use super::TcpConn;
use super::read_ahead::{READ_AHEAD_LIMIT, ReadEnd, ReadSide};
use crate::limits::MemoryAccount;
use crate::net::error::SocketError;

/// Whether the guest has seen the end of the stream, once a delivery ended.
#[derive(Debug, PartialEq, Eq)]
pub enum EndSeen {
    /// Not yet: more may come (or bytes are still buffered).
    No,
    /// The peer ended its stream and the guest read everything.
    Ended,
    /// The connection broke (reset), and the guest was told.
    Failed,
}

impl ReadSide {
    /// The read side as the delivery rule sees it.
    fn for_delivery(&self, read_shut: bool) -> delivery::ReadSide {
        let stream = match self.end {
            ReadEnd::Open => Stream::Open,
            ReadEnd::Ended => Stream::Ended,
            ReadEnd::Failed(_) => Stream::Failed,
        };
        delivery::ReadSide { mark: self.mark, buffered: self.buf.len(), stream, end_seen: self.end_seen, read_shut }
    }
}

impl TcpConn {
    /// How many bytes the next [`TcpConn::deliver`] would hand over (what is
    /// read ahead), for the dispatcher's budget of bytes in the guest.
    pub fn buffered(&self) -> usize {
        self.side().buf.len()
    }

    /// The delivery for an `on-read-ready`: everything read ahead, and
    /// whether the stream ends right after it. The bytes are the guest's from
    /// now on (a take), and the end counts as seen, except what it gives back
    /// with [`TcpConn::unread`] before the callback ends. Nothing while a
    /// waiting read queues (those bytes are its), or after `shutdown-read`.
    /// A failed socket's end is not handed over: the guest's next read
    /// reports the error.
    pub fn deliver(&self) -> (Vec<u8>, bool) {
        let inner = &*self.0;
        if inner.read_shut.load(Ordering::Acquire) || inner.reader.busy() {
            return (Vec::new(), false);
        }
        let mut side = self.side();
        let n = side.buf.len();
        side.delivered = n;
        let data = if n == 0 { Vec::new() } else { self.take_for_guest(&mut side, n) };
        side.delivering = true;
        side.taken_in_delivery = 0;
        let end = side.end.is_over() && !side.end.is_failed() && !side.end_seen;
        if end {
            side.end_seen = true;
            side.delivered_end = true;
        }
        (data, end)
    }

    /// Puts back in front the tail of what [`TcpConn::deliver`] handed over that
    /// the guest did not read (possibly nothing), and the end of stream with
    /// it if that delivery told of one: the guest did not read that far.
    /// Giving back all the bytes undoes the take, so the dispatcher waits for
    /// new bytes before calling again (a service that never reads costs no
    /// CPU). The guest may also give back what its reads took during the
    /// callback (the SDK does, for a read that failed after gathering some):
    /// no byte a client sent is lost. More than that is refused: the guest
    /// cannot grow the buffer with bytes of its own. What goes past the
    /// read-ahead bound is charged to `memory` until reads take it (past the
    /// instance's memory limit: refused).
    pub fn unread(&self, data: Vec<u8>, memory: &Arc<MemoryAccount>) -> Result<(), SocketError> {
        let mut side = self.side();
        let allowed = side.unread_allowance();
        if data.len() > allowed {
            return Err(SocketError::generic(format!(
                "unread gives back {} bytes, but on-read-ready and the reads since brought {allowed}",
                data.len(),
            )));
        }
        let over = (side.buf.len() + data.len()).saturating_sub(READ_AHEAD_LIMIT);
        if over > 0 {
            let charge = memory.charge(over, "bytes given back (unread)").map_err(SocketError::generic)?;
            side.overflow = Some(charge);
        }
        if side.delivered > 0 && side.taken_in_delivery == 0 && data.len() == side.delivered {
            side.mark.taken -= 1;
        }
        if side.delivered_end {
            side.end_seen = false;
        }
        side.delivered = 0;
        side.delivered_end = false;
        side.taken_in_delivery = 0;
        if !data.is_empty() {
            let rest = std::mem::take(&mut side.buf);
            let mut joined = BytesMut::with_capacity(data.len() + rest.len());
            joined.extend_from_slice(&data);
            joined.extend_from_slice(&rest);
            side.buf = joined;
        }
        Ok(())
    }

    /// The most bytes [`TcpConn::unread`] takes now (checked before a guest's
    /// list is copied).
    pub fn unread_allowance(&self) -> usize {
        self.side().unread_allowance()
    }

    /// Ends the delivery of the callback that just returned: a late `unread`
    /// (from a handle kept beyond it) is refused.
    pub fn end_delivery(&self) {
        let mut side = self.side();
        side.delivered = 0;
        side.delivered_end = false;
        side.delivering = false;
        side.taken_in_delivery = 0;
    }

    /// Whether the guest has seen the end, once a delivery ended (after any
    /// read still under way).
    pub async fn end_seen(&self) -> EndSeen {
        if self.0.read_shut.load(Ordering::Acquire) {
            return EndSeen::Ended;
        }
        self.0.reader.wait_free().await;
        let side = self.side();
        match (side.end_seen, side.end.is_failed()) {
            (true, true) => EndSeen::Failed,
            (true, false) => EndSeen::Ended,
            (false, _) => EndSeen::No,
        }
    }

    /// Waits until the guest has something new to read, reading ahead from the
    /// socket into the bounded buffer meanwhile.
    ///
    /// "New" is relative to `seen`, the mark taken when the last callback started:
    /// bytes arrived since, or the guest took bytes and some remain. A callback that
    /// returns without reading is therefore not called again until more bytes come,
    /// so a service that never reads costs no CPU.
    pub async fn wait_ready(&self, seen: Mark) -> Readiness {
        let inner = &*self.0;
        // The socket is read once it says it is readable, not before: right
        // after a callback took everything, a read would only find it empty.
        // A TLS session may hold plaintext already (what came with the
        // handshake): look before waiting.
        let mut readable = self.session().is_some();
        loop {
            if inner.closed.is_closed() {
                return Readiness::Closed;
            }
            inner.reader.wait_free().await;
            // Decided under the lock, waited for without it.
            let socket_done = {
                let mut side = self.side();
                let read_shut = inner.read_shut.load(Ordering::Acquire);
                let socket_done = match delivery::next(seen, &side.for_delivery(read_shut)) {
                    Next::Deliver => return Readiness::Deliver(side.mark),
                    // The guest was told of the failure (it counted as an
                    // arrival) and did not read: nothing more can come or go.
                    Next::ReadOver if side.end.is_failed() => return Readiness::Closed,
                    Next::ReadOver => true,
                    Next::ReadOn => side.buf.len() >= READ_AHEAD_LIMIT,
                };
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::super::tests::pair;
    use super::*;

    #[tokio::test]
    async fn the_end_counts_only_once_the_guest_saw_it() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"last words").await.unwrap();
        peer.shutdown().await.unwrap(); // data and FIN, likely in one read-ahead
        let Readiness::Deliver(seen) = conn.wait_ready(Mark::default()).await else { panic!("not ready") };
        assert_eq!(conn.read(None).await.unwrap(), b"last words");
        assert_eq!(conn.end_seen().await, EndSeen::No, "the guest has not seen the end yet");
        // It took bytes and the end is pending: fire again.
        assert!(matches!(conn.wait_ready(seen).await, Readiness::Deliver(_)));
        assert_eq!(conn.read(None).await.unwrap(), b"");
        assert_eq!(conn.end_seen().await, EndSeen::Ended);
    }

    #[tokio::test]
    async fn delivered_bytes_given_back_are_read_again_and_count_as_unread() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"abcdef").await.unwrap();
        let Readiness::Deliver(seen) = conn.wait_ready(Mark::default()).await else { panic!("not ready") };
        assert_eq!(conn.deliver(), (b"abcdef".to_vec(), false));
        assert!(
            conn.unread(b"abcdefg".to_vec(), &crate::limits::MemoryAccount::unlimited()).is_err(),
            "more than was delivered"
        );
        conn.unread(b"abcdef".to_vec(), &crate::limits::MemoryAccount::unlimited()).unwrap();
        conn.end_delivery();
        // All given back: nothing new for the guest until more bytes come.
        let not_yet = tokio::time::timeout(Duration::from_millis(100), conn.wait_ready(seen)).await;
        assert!(not_yet.is_err(), "fired again for bytes the guest gave back untouched");
        peer.write_all(b"gh").await.unwrap();
        let Readiness::Deliver(seen) = conn.wait_ready(seen).await else { panic!("not ready") };
        assert_eq!(conn.deliver(), (b"abcdefgh".to_vec(), false));
        // Part given back: the guest read something, so it is called again at once.
        conn.unread(b"fgh".to_vec(), &crate::limits::MemoryAccount::unlimited()).unwrap();
        assert!(conn.unread(b"h".to_vec(), &crate::limits::MemoryAccount::unlimited()).is_err(), "given back already");
        conn.end_delivery();
        assert!(matches!(conn.wait_ready(seen).await, Readiness::Deliver(_)));
        assert_eq!(conn.try_read(None).unwrap().unwrap(), b"fgh");
    }

    #[tokio::test]
    async fn the_end_comes_along_and_is_unseen_when_bytes_go_back() {
        let (conn, mut peer) = pair().await;
        peer.write_all(b"bye").await.unwrap();
        peer.shutdown().await.unwrap();
        let mut seen = Mark::default();
        // The bytes and the end may come in one read-ahead or in two.
        let mut delivered = Vec::new();
        let ended = loop {
            let Readiness::Deliver(now) = conn.wait_ready(seen).await else { panic!("not ready") };
            seen = now;
            let (data, end) = conn.deliver();
            delivered.extend(data);
            if end {
                break true;
            }
            conn.end_delivery();
        };
        assert!(ended);
        assert_eq!(delivered, b"bye");
        assert_eq!(conn.end_seen().await, EndSeen::Ended, "the guest was told of the end");
        if conn.side().delivered > 0 {
            // Giving the bytes back un-sees the end: it comes after them.
            conn.unread(b"bye".to_vec(), &crate::limits::MemoryAccount::unlimited()).unwrap();
            assert_eq!(conn.end_seen().await, EndSeen::No);
            assert_eq!(conn.try_read(None).unwrap().unwrap(), b"bye");
            assert_eq!(conn.try_read(None).unwrap().unwrap(), b"");
            assert_eq!(conn.end_seen().await, EndSeen::Ended);
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
                    let mut seen = Mark::default();
                    loop {
                        match conn.wait_ready(seen).await {
                            Readiness::Deliver(now) => {
                                seen = now;
                                let _ = conn.deliver();
                                conn.end_delivery();
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
    async fn nothing_is_delivered_past_a_waiting_read() {
        let (conn, mut peer) = pair().await;
        let reader = tokio::spawn({
            let conn = conn.clone();
            async move { conn.read(Some(4)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        peer.write_all(b"ab").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conn.deliver(), (Vec::new(), false), "the waiting read owns what comes");
        peer.write_all(b"cd").await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), b"abcd");
    }
}
