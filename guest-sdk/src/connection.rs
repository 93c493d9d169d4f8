//! One TCP connection, whichever side opened it: the SDK face of
//! `portcullis:socket/tcp`'s `connection`.

use std::net::SocketAddr;

use crate::Error;
use crate::sys;

/// One TCP connection: accepted by a listener (handed to your [`Service`]
/// callbacks) or opened with [`Client::connect`](crate::Client::connect). Ballerina's `Client` and
/// `Caller` are this one type.
///
/// A callback receives `&Connection`, valid during that callback. To keep the
/// connection beyond it (to broadcast to it later, say), `clone` it: the clone
/// is a new handle to the same connection. Under portcullis each clone (and
/// its drop) is a host call: keep a clone you look up for every message in
/// an `Rc` (as `examples/tcp-proxy` does) rather than cloning it each time.
///
/// [`Service`]: crate::Service
///
/// ```no_run
/// # async fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
/// let head = conn.read_exact(4).await?; // exactly 4 bytes (fewer only at end of stream)
/// conn.write_all(&head).await?;
/// let kept = conn.clone(); // outlives the callback
/// # Ok(()) }
/// ```
pub struct Connection {
    sys: sys::tcp::Conn,
}

impl Connection {
    pub(crate) fn from_sys(sys: sys::tcp::Conn) -> Self {
        Connection { sys }
    }

    #[cfg_attr(feature = "wasi", allow(dead_code))] // the native backend's
    pub(crate) fn sys(&self) -> &sys::tcp::Conn {
        &self.sys
    }

    /// Reads whatever bytes are available, waiting for at least one. An empty
    /// vector means the peer ended the stream.
    ///
    /// ```no_run
    /// # async fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// let data = conn.read().await?;
    /// if data.is_empty() {
    ///     conn.close()?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read(&self) -> Result<Vec<u8>, Error> {
        self.sys.read(None).await
    }

    /// Reads exactly `n` bytes, gathering chunks as they come. The read
    /// time-out restarts with every chunk. If the stream ends first, fails
    /// with [`ErrorKind::UnexpectedEof`](crate::ErrorKind::UnexpectedEof) (as
    /// std's `read_exact` does), and the bytes that did arrive are what the
    /// next read returns. `n` of 0 is an error (`requested byte length need
    /// to be 1 or more`). A read that fails otherwise (`ReadTimedOut`, say)
    /// loses nothing either: a service may simply try again.
    ///
    /// ```no_run
    /// # async fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// use portcullis_sdk::ErrorKind;
    /// match conn.read_exact(18).await {
    ///     Ok(header) => assert_eq!(header.len(), 18),
    ///     Err(e) if e.kind() == ErrorKind::UnexpectedEof => conn.close()?, // the peer left
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_exact(&self, n: u32) -> Result<Vec<u8>, Error> {
        if n as usize <= sys::MAX_IO {
            let data = self.sys.read(Some(n)).await?;
            return self.exactly(n, data);
        }
        // The backend moves at most MAX_IO bytes per read: gather the parts here,
        // in the guest's own memory, growing only as bytes come (a length a
        // client claims is no reason to allocate it up front).
        let mut out = Vec::new();
        while out.len() < n as usize {
            let part = (n as usize - out.len()).min(sys::MAX_IO) as u32;
            let chunk = match self.sys.read(Some(part)).await {
                Ok(chunk) => chunk,
                Err(err) => {
                    // The parts gathered so far go back, for the next read.
                    if !out.is_empty() {
                        self.sys.restore(out);
                    }
                    return Err(err);
                }
            };
            let ended = chunk.len() < part as usize;
            out.extend_from_slice(&chunk);
            if ended {
                break;
            }
        }
        self.exactly(n, out)
    }

    /// `data` if it is the `n` bytes asked for; else (the stream ended) it
    /// goes back for the next read, and the read fails.
    fn exactly(&self, n: u32, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        if data.len() == n as usize {
            return Ok(data);
        }
        let got = data.len();
        if got > 0 {
            self.sys.restore(data);
        }
        Err(Error::unexpected_eof(n, got))
    }

    /// Writes every byte of `data`, waiting while the peer is slow; fails rather
    /// than writing part of it (as std's `write_all`). Any size works (the
    /// host takes 64 KiB per call; a larger write goes in parts, and other
    /// writes of this guest to the connection wait for the last), and
    /// concurrent `write_all`s to one connection never interleave.
    ///
    /// ```no_run
    /// # async fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.write_all(b"Hello Client").await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_all(&self, data: &[u8]) -> Result<(), Error> {
        self.sys.write_all(data).await
    }

    /// Closes the connection both ways. The host then calls `on_close`. Never
    /// fails (closing a closed connection does nothing); the `Result` is
    /// Ballerina's shape.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> Result<(), Error> {
        self.sys.close()
    }

    /// Stops reading: later reads return end of stream. Fails only on a
    /// connection already closed (`socket is closed`).
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.shutdown_read()?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_read(&self) -> Result<(), Error> {
        self.sys.shutdown_read()
    }

    /// Stops writing (the peer sees end of stream); later writes fail with
    /// `client socket close already.`, as does this on a closed connection.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.shutdown_write()?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_write(&self) -> Result<(), Error> {
        self.sys.shutdown_write()
    }

    /// An id unique among the host's connections.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) {
    /// println!("connection {}", conn.id());
    /// # }
    /// ```
    pub fn id(&self) -> u64 {
        self.sys.id()
    }

    /// True for a connection a listener accepted; false for one this component
    /// opened with [`Client::connect`](crate::Client::connect) (a callback client's events reach the same
    /// [`Service`](crate::Service), so this tells them apart).
    ///
    /// ```no_run
    /// # async fn on_connect(conn: &portcullis_sdk::Connection) {
    /// if !conn.is_accepted() {
    ///     return; // our own upstream connection announcing itself
    /// }
    /// # }
    /// ```
    pub fn is_accepted(&self) -> bool {
        self.sys.is_accepted()
    }

    /// The peer's address.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) {
    /// println!("from {}", conn.remote_addr());
    /// # }
    /// ```
    pub fn remote_addr(&self) -> SocketAddr {
        self.sys.remote_addr()
    }

    /// This side's address.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) {
    /// println!("on port {}", conn.local_addr().port());
    /// # }
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.sys.local_addr()
    }

    /// What the connection's TLS agreed on, when it has TLS: accepted on a
    /// `tls://` listener (the host terminates TLS: you read and write
    /// plaintext), or opened with [`ClientConfig::tls`](crate::ClientConfig::tls).
    /// `None` for plain TCP, and always under the SDK's `wasi` backend,
    /// whose runtime gives it plain sockets.
    ///
    /// ```no_run
    /// # async fn on_connect(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// match conn.tls().and_then(|tls| tls.peer_subject) {
    ///     Some(subject) => conn.write_all(format!("hello {subject}\n").as_bytes()).await?,
    ///     None => conn.write_all(b"hello stranger\n").await?,
    /// };
    /// # Ok(()) }
    /// ```
    pub fn tls(&self) -> Option<TlsInfo> {
        self.sys.tls()
    }
}

/// What a TLS connection's handshake agreed on ([`Connection::tls`]).
pub use portcullis_protocol::tls::TlsInfo;

impl Clone for Connection {
    /// A new handle to the same connection, valid until dropped.
    fn clone(&self) -> Self {
        Connection::from_sys(self.sys.clone_handle())
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id()).finish()
    }
}
