//! A TLS connection's bytes: the same read-ahead and writes as plain TCP,
//! through its `rustls::Connection`.
//!
//! - Reading: ciphertext from the socket into rustls, plaintext from rustls
//!   into the read-ahead, never more than its bound (rustls itself holds at
//!   most 16 KiB of plaintext beyond it, and stops reading the socket then).
//! - Writing: plaintext goes into rustls only once what it held before has
//!   left for the socket, so rustls holds at most one write's ciphertext.
//!   A `try-write` that leaves some behind starts a flush in the background
//!   ([`TcpConn::flush_later`]): nothing accepted is left unsent.
//! - A peer that ends its TCP stream without TLS's `close_notify` ends the
//!   guest's stream as a plain close would (as nginx and HAProxy take it).
//! - At a close, what the session still holds goes out before its
//!   `close_notify` and the FIN, as the kernel sends a plain socket's
//!   buffer after a close.
//!
//! Lock order: the read side's lock, then the session's; never the other way.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::TcpConn;
use super::read_ahead::{READ_AHEAD_LIMIT, ReadEnd, ReadSide};
use crate::net::error::SocketError;
use crate::net::tls::{TlsInfo, info_of};

/// A connection's TLS session and what its handshake agreed on.
pub(super) struct Session {
    tls: Mutex<rustls::Connection>,
    pub(super) info: TlsInfo,
    /// A background flush is under way (at most one per connection).
    flushing: AtomicBool,
}

impl Session {
    pub(super) fn new(tls: rustls::Connection) -> Session {
        let info = info_of(&tls);
        Session { tls: Mutex::new(tls), info, flushing: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rustls::Connection> {
        // rustls leaves no half-done state behind a panic that matters here:
        // a poisoned session only fails its next operation.
        self.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The socket as rustls reads and writes it: non-blocking, "would block"
/// clearing tokio's readiness as a plain read or write does.
struct Sock<'a>(&'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends what `tls` holds for the socket: `Ok` once nothing is left,
/// "would block" when the socket is full first.
fn flush(tls: &mut rustls::Connection, stream: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(&mut Sock(stream))?;
    }
    Ok(())
}

impl ReadSide {
    /// [`ReadSide::fill_from`] for a TLS connection: plaintext rustls holds
    /// first, then ciphertext from the socket, until the socket would block
    /// or the buffer is full. Returns whether anything happened, how many
    /// plaintext bytes came, and whether rustls has something to send (an
    /// alert, a key update's answer).
    fn fill_tls(&mut self, stream: &TcpStream, tls: &mut rustls::Connection) -> (bool, usize) {
        let mut progressed = false;
        let mut brought = 0;
        let mut socket_ended = false;
        while !self.end.is_over() {
            let room = READ_AHEAD_LIMIT.saturating_sub(self.buf.len());
            if room == 0 {
                break;
            }
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    self.fail(io::Error::new(io::ErrorKind::InvalidData, e));
                    self.mark.arrived += 1;
                    progressed = true;
                    break;
                }
            };
            let ready = state.plaintext_bytes_to_read().min(room);
            if ready > 0 {
                let start = self.buf.len();
                self.buf.resize(start + ready, 0);
                let got = tls.reader().read(&mut self.buf[start..]).unwrap_or(0);
                self.buf.truncate(start + got);
                brought += got;
                self.mark.arrived += 1;
                progressed = true;
                continue;
            }
            if state.peer_has_closed() || socket_ended {
                self.end = ReadEnd::Ended;
                self.mark.arrived += 1;
                progressed = true;
                break;
            }
            match tls.read_tls(&mut Sock(stream)) {
                Ok(0) => socket_ended = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::new();
                    }
                    break;
                }
                Err(e) => {
                    self.fail(e);
                    self.mark.arrived += 1;
                    progressed = true;
                }
            }
        }
        (progressed, brought)
    }
}

impl TcpConn {
    pub(super) fn session(&self) -> Option<&Session> {
        self.0.tls.as_ref()
    }

    /// What the handshake agreed on; `None` for plain TCP.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.session().map(|s| &s.info)
    }

    /// Fills `side` through the session (see [`ReadSide::fill_tls`]) and
    /// sends what rustls has to say meanwhile.
    pub(super) fn fill_encrypted(&self, session: &Session, side: &mut ReadSide) -> (bool, usize) {
        let mut tls = session.lock();
        let filled = side.fill_tls(&self.0.stream, &mut tls);
        if tls.wants_write() {
            match flush(&mut tls, &self.0.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(tls);
                    self.flush_later();
                }
                // A broken socket shows on the next read or write.
                _ => {}
            }
        }
        filled
    }

    /// Whether rustls holds plaintext the read-ahead has not taken (so a
    /// read must not wait for the socket first).
    pub(super) fn plaintext_pending(&self) -> bool {
        self.session().is_some_and(|s| {
            let mut tls = s.lock();
            tls.process_new_packets()
                .map(|state| state.plaintext_bytes_to_read() > 0 || state.peer_has_closed())
                .unwrap_or(true)
        })
    }

    /// Whether ciphertext waits for room in the socket.
    pub(super) fn ciphertext_pending(&self) -> bool {
        self.session().is_some_and(|s| s.lock().wants_write())
    }

    /// Writes what it can of `data` through the session now: the plaintext
    /// bytes rustls took (0 while earlier ciphertext still waits for room:
    /// "would block"). What it took is encrypted and sent as far as the
    /// socket takes it; the rest waits in rustls for [`TcpConn::flush_later`]
    /// or the next write.
    pub(super) fn send_encrypted(&self, session: &Session, data: &[u8]) -> io::Result<usize> {
        let mut tls = session.lock();
        flush(&mut tls, &self.0.stream)?;
        let taken = tls.writer().write(data)?;
        match flush(&mut tls, &self.0.stream) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(taken),
        }
    }

    /// Sends what the session still holds in the background, waiting for
    /// room under the write time-out (then the connection closes, as a
    /// write that times out closes it). One flush at a time per connection.
    pub(super) fn flush_later(&self) {
        let Some(session) = self.session() else { return };
        if session.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let conn = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = conn.flush_all().await {
                    // The peer is gone (reset, broken pipe): nothing more
                    // can be sent. Closed, so that nothing tries again.
                    tracing::debug!(id = conn.id(), "TLS flush failed: {}", e.message);
                    conn.close();
                    return;
                }
                let session = conn.session().expect("a TLS connection");
                session.flushing.store(false, Ordering::Release);
                // A write meanwhile may have left more and seen this flush
                // under way: take it on.
                if conn.is_closed() || !conn.ciphertext_pending() || session.flushing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Waits until the session holds nothing for the socket, under the write
    /// time-out.
    pub(super) async fn flush_all(&self) -> Result<(), SocketError> {
        let Some(session) = self.session() else { return Ok(()) };
        let inner = &*self.0;
        loop {
            let flushed = flush(&mut session.lock(), &inner.stream);
            match flushed {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.write_failed(e)),
            }
            if inner.closed.is_closed() {
                return Ok(());
            }
            self.wait_for_room().await?;
        }
    }

    /// Ends the session's sending: `close_notify`, then the socket's FIN
    /// once everything before it has gone (in the background if the socket
    /// is full now).
    pub(super) fn shutdown_encrypted(&self, session: &Session) -> io::Result<()> {
        let mut tls = session.lock();
        tls.send_close_notify();
        match flush(&mut tls, &self.0.stream) {
            Ok(()) => socket2::SockRef::from(&self.0.stream).shutdown(Shutdown::Write),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drop(tls);
                let conn = self.clone();
                tokio::spawn(async move {
                    if conn.flush_all().await.is_ok() && !conn.is_closed() {
                        let _ = socket2::SockRef::from(&conn.0.stream).shutdown(Shutdown::Write);
                    }
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// At `close`: `close_notify` after what the session holds. Returns
    /// whether it all went out now; if not, it goes out in the background
    /// (the caller shuts only the read side): for at most the write
    /// time-out (60 s without one), then the write side is shut. Nothing
    /// a write was told it sent is lost at a close.
    pub(super) fn close_encrypted(&self, session: &Session) -> bool {
        let flushed = {
            let mut tls = session.lock();
            tls.send_close_notify();
            flush(&mut tls, &self.0.stream)
        };
        match flushed {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // All sent, or the socket is broken: nothing more to wait for.
            _ => return true,
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return true };
        let conn = self.clone();
        runtime.spawn(async move {
            let limit = conn.0.timeouts.write.unwrap_or(Duration::from_secs(60));
            let drained = tokio::time::timeout(limit, async {
                loop {
                    let flushed = flush(&mut conn.session().expect("a TLS connection").lock(), &conn.0.stream);
                    match flushed {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        _ => return,
                    }
                    if conn.0.stream.writable().await.is_err() {
                        return;
                    }
                }
            });
            let _ = drained.await;
            let _ = socket2::SockRef::from(&conn.0.stream).shutdown(Shutdown::Write);
        });
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::net::tcp::Timeouts;

    /// A TLS connection as a `tls://` listener accepts it, and the client's end.
    async fn tls_pair() -> (TcpConn, tokio_rustls::client::TlsStream<TcpStream>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
        let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], private)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let connecting = connector.connect("localhost".try_into().unwrap(), tcp);
        let accepting = async {
            let (stream, peer) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(stream).await.unwrap();
            let (stream, session) = tls.into_inner();
            let timeouts =
                Timeouts { write: Some(Duration::from_secs(10)), ..Timeouts::read_only(Duration::from_secs(10)) };
            let metrics = crate::metrics::ServiceMetrics::detached("test");
            TcpConn::from_accept(stream, peer, None, timeouts, metrics, Some(rustls::Connection::Server(session)))
                .unwrap()
        };
        let (conn, client) = tokio::join!(accepting, connecting);
        (conn, client.unwrap())
    }

    #[tokio::test]
    async fn a_close_sends_what_try_write_took_and_then_close_notify() {
        let (conn, mut client) = tls_pair().await;
        // Writes without waiting until one leaves ciphertext behind in the
        // session (the socket is full): the guest was told those bytes went.
        let chunk: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut told = 0usize;
        for _ in 0..100_000 {
            told += conn.try_write(&chunk).unwrap() as usize;
            if conn.ciphertext_pending() {
                break;
            }
        }
        assert!(conn.ciphertext_pending(), "the socket never filled");
        conn.close();
        // The client reads everything the guest was told was written, then
        // a clean end (close_notify: rustls reports a truncation otherwise).
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut received))
            .await
            .expect("the end came")
            .expect("a clean end, with close_notify");
        assert_eq!(received.len(), told);
        assert!(received.chunks(chunk.len()).all(|piece| chunk.starts_with(piece)), "the bytes, in order");
    }
}
