//! Connections, clients and guest listeners: the SDK face of `portcullis:socket/tcp`.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::__bindings::portcullis::socket::{tcp, types};
use crate::__bindings::service::exports::portcullis::socket::callbacks::Delivery;
use crate::Error;

/// The most bytes the host moves in one `read` or `write` call (see
/// `wit/socket.wit`); `read_exact` and `write_all` go in parts beyond it.
const MAX_IO: usize = 64 * 1024;

/// One TCP connection: accepted by a listener (handed to your [`Service`]
/// callbacks) or opened with [`Client::connect`]. Ballerina's `Client` and
/// `Caller` are this one type.
///
/// A callback receives `&Connection`, valid during that callback. To keep the
/// connection beyond it (to broadcast to it later, say), `clone` it: the clone
/// is a new handle to the same connection.
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
    handle: ManuallyDrop<tcp::Connection>,
    /// False for the host's handle lent to a callback: the host drops that one.
    owned: bool,
    /// Bytes `on-read-ready` brought along that the service has not read yet;
    /// reads serve them first, and the rest goes back to the host when the
    /// callback ends.
    delivered: RefCell<Delivered>,
}

thread_local! {
    /// Connections (by id) a `write_all` is writing in parts right now, with
    /// the tasks waiting to write to them after it.
    static PARTED_WRITES: RefCell<std::collections::HashMap<u64, Vec<std::task::Waker>>> = RefCell::default();
}

/// One `write_all` in parts: other writes to its connection wait until it is
/// dropped (done, failed or cancelled).
struct PartedWrite(u64);

impl PartedWrite {
    fn begin(id: u64) -> Self {
        PARTED_WRITES.with_borrow_mut(|parted| parted.insert(id, Vec::new()));
        PartedWrite(id)
    }
}

impl Drop for PartedWrite {
    fn drop(&mut self) {
        let waiting = PARTED_WRITES.with_borrow_mut(|parted| parted.remove(&self.0)).unwrap_or_default();
        waiting.into_iter().for_each(std::task::Waker::wake);
    }
}

/// The unread part of what the host delivered with `on-read-ready`:
/// `bytes[start..]` (an offset, so that reading a big delivery in small pieces
/// copies each byte once), and whether the stream ends after them.
#[derive(Default)]
struct Delivered {
    bytes: Vec<u8>,
    start: usize,
    end: bool,
    /// A read returned that end.
    end_read: bool,
}

impl Delivered {
    fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Nothing is left but the end of the stream.
    fn at_end(&self) -> bool {
        self.end && self.len() == 0
    }

    /// Up to `max` bytes (all without a limit) from the front.
    fn take(&mut self, max: Option<usize>) -> Vec<u8> {
        let n = max.map_or(self.len(), |max| max.min(self.len()));
        if n == self.len() && self.start == 0 {
            return std::mem::take(&mut self.bytes); // the whole delivery: no copy
        }
        let out = self.bytes[self.start..self.start + n].to_vec();
        self.start += n;
        out
    }

    /// Puts `bytes` (taken by a read that then failed) back in front.
    fn restore(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.bytes[self.start..]);
        *self = Delivered { bytes, start: 0, end: self.end, end_read: false };
    }
}

impl Connection {
    /// Wraps a handle the host lends for the length of one callback.
    ///
    /// # Safety
    /// `handle` must be a live borrowed handle for the duration of the returned value.
    pub(crate) unsafe fn borrowed(handle: u32) -> Self {
        Connection {
            handle: ManuallyDrop::new(unsafe { tcp::Connection::from_handle(handle) }),
            owned: false,
            delivered: RefCell::default(),
        }
    }

    pub(crate) fn owned(handle: tcp::Connection) -> Self {
        Connection { handle: ManuallyDrop::new(handle), owned: true, delivered: RefCell::default() }
    }

    /// This handle with what `on-read-ready` brought, read before anything else.
    pub(crate) fn with_delivery(self, delivery: Delivery) -> Self {
        *self.delivered.borrow_mut() = Delivered { bytes: delivery.data, start: 0, end: delivery.end, end_read: false };
        self
    }

    /// Gives what the service left of the delivery back to the host, which
    /// serves it to the next read (and, if it is all of it, waits for new bytes
    /// before calling `on_read_ready` again). Called as the callback ends.
    pub(crate) fn give_back(&self) {
        let (rest, end_unread) = {
            let mut d = self.delivered.borrow_mut();
            (d.take(None), d.end && !d.end_read)
        };
        if !rest.is_empty() || end_unread {
            // Refused only if the host lent less than this, which the SDK never
            // gives back: nothing to do about it here.
            let _ = self.handle.unread(&rest);
        }
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
        self.read_with(None).await
    }

    /// The delivered bytes (and end) first; then a plain (cheap) call, and
    /// the async one only when it must wait.
    async fn read_with(&self, length: Option<u32>) -> Result<Vec<u8>, Error> {
        let (delivered, at_end) = {
            let mut d = self.delivered.borrow_mut();
            let taken = d.take(length.map(|n| n as usize));
            let at_end = d.at_end() && length != Some(0);
            // As on the host: only an empty answer reads the end (a short one
            // brings the last bytes first).
            if at_end && taken.is_empty() {
                d.end_read = true;
            }
            (taken, at_end)
        };
        let wanted_more = match length {
            None if !delivered.is_empty() || at_end => return Ok(delivered),
            Some(n) if n > 0 && (delivered.len() == n as usize || at_end) => return Ok(delivered),
            None => None,
            Some(n) if delivered.is_empty() => Some(n),
            Some(n) => Some(n - delivered.len() as u32),
        };
        match self.read_from_host(wanted_more).await {
            Ok(more) if delivered.is_empty() => Ok(more),
            Ok(more) => Ok([delivered, more].concat()),
            Err(err) => {
                if !delivered.is_empty() {
                    self.delivered.borrow_mut().restore(delivered);
                }
                Err(err)
            }
        }
    }

    async fn read_from_host(&self, length: Option<u32>) -> Result<Vec<u8>, Error> {
        if let Some(ready) = self.handle.try_read(length).map_err(Error::from)? {
            return Ok(ready);
        }
        self.handle.read(length).await.map_err(Error::from)
    }

    /// Reads exactly `n` bytes, gathering chunks as they come; fewer only at end
    /// of stream. The read time-out restarts with every chunk. `n` of 0 is an
    /// error (`requested byte length need to be 1 or more`).
    ///
    /// ```no_run
    /// # async fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// let header = conn.read_exact(18).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_exact(&self, n: u32) -> Result<Vec<u8>, Error> {
        if n as usize <= MAX_IO {
            return self.read_with(Some(n)).await;
        }
        // The host moves at most MAX_IO bytes per read: gather the parts here,
        // in the guest's own memory, growing only as bytes come (a length a
        // client claims is no reason to allocate it up front).
        let mut out = Vec::new();
        while out.len() < n as usize {
            let part = (n as usize - out.len()).min(MAX_IO) as u32;
            let chunk = self.read_with(Some(part)).await?;
            let ended = chunk.len() < part as usize;
            out.extend_from_slice(&chunk);
            if ended {
                break;
            }
        }
        Ok(out)
    }

    /// Writes every byte of `data`, waiting while the peer is slow; fails rather
    /// than writing part of it. Returns the number of bytes written. Any size
    /// works (the host takes 64 KiB per call; a larger write goes in parts,
    /// and other writes of this guest to the connection wait for the last),
    /// and concurrent `write_all`s to one connection never interleave.
    ///
    /// ```no_run
    /// # async fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.write_all(b"Hello Client").await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_all(&self, data: &[u8]) -> Result<usize, Error> {
        // Another task of this guest writing to this connection in parts goes
        // first (asked only while some connection is written in parts: the
        // id is a host call).
        if PARTED_WRITES.with_borrow(|parted| !parted.is_empty()) {
            let id = self.id();
            std::future::poll_fn(|cx| {
                PARTED_WRITES.with_borrow_mut(|parted| match parted.get_mut(&id) {
                    Some(waiting) => {
                        waiting.push(cx.waker().clone());
                        std::task::Poll::Pending
                    }
                    None => std::task::Poll::Ready(()),
                })
            })
            .await;
        }
        // A plain call first (no copy, no async call); what the socket did not
        // take goes by the async call at once, so no other writer cuts in.
        let now = self.handle.try_write(data).map_err(Error::from)? as usize;
        let rest = &data[now..];
        if rest.len() <= MAX_IO {
            if !rest.is_empty() {
                self.handle.write(rest.to_vec()).await.map_err(Error::from)?;
            }
            return Ok(data.len());
        }
        // The host takes at most MAX_IO bytes per `write`: the rest goes in
        // parts, and other writes of this guest to the connection wait.
        let _parted = PartedWrite::begin(self.id());
        for part in rest.chunks(MAX_IO) {
            self.handle.write(part.to_vec()).await.map_err(Error::from)?;
        }
        Ok(data.len())
    }

    /// Closes the connection both ways. The host then calls `on_close`.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> Result<(), Error> {
        self.handle.close().map_err(Error::from)
    }

    /// Stops reading: later reads return end of stream.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.shutdown_read()?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_read(&self) -> Result<(), Error> {
        self.handle.shutdown_read().map_err(Error::from)
    }

    /// Stops writing (the peer sees end of stream); later writes fail with
    /// `client socket close already.`
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) -> Result<(), portcullis_sdk::Error> {
    /// conn.shutdown_write()?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_write(&self) -> Result<(), Error> {
        self.handle.shutdown_write().map_err(Error::from)
    }

    /// An id unique among the host's connections.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) {
    /// println!("connection {}", conn.id());
    /// # }
    /// ```
    pub fn id(&self) -> u64 {
        self.handle.id()
    }

    /// True for a connection a listener accepted; false for one this component
    /// opened with [`Client::connect`] (a callback client's events reach the same
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
        self.handle.accepted()
    }

    /// The peer's address.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) {
    /// println!("from {}", conn.remote_addr());
    /// # }
    /// ```
    pub fn remote_addr(&self) -> SocketAddr {
        to_socket_addr(self.handle.remote_address())
    }

    /// This side's address.
    ///
    /// ```no_run
    /// # fn f(conn: &portcullis_sdk::Connection) {
    /// println!("on port {}", conn.local_addr().port());
    /// # }
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        to_socket_addr(self.handle.local_address())
    }
}

impl Clone for Connection {
    /// A new handle to the same connection, valid until dropped.
    fn clone(&self) -> Self {
        Connection::owned(self.handle.clone_handle())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: an owned handle is dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.handle) }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id()).finish()
    }
}

/// The host always reports IP literals; anything else would be a host bug, so
/// it maps to the unspecified address rather than panicking.
fn to_socket_addr(addr: types::Address) -> SocketAddr {
    let ip = addr.host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    SocketAddr::new(ip, addr.port)
}

/// How to open a client connection.
///
/// ```no_run
/// use std::time::Duration;
/// use portcullis_sdk::{Client, ClientConfig};
///
/// # async fn f() -> Result<(), portcullis_sdk::Error> {
/// let config = ClientConfig::new("127.0.0.1", 7000)
///     .read_timeout(Duration::from_secs(5))
///     .callback(true); // deliver its events to this component's Service
/// let conn = Client::connect_with(config).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    host: String,
    port: u16,
    read_timeout: Duration,
    connect_timeout: Duration,
    callback: bool,
}

impl ClientConfig {
    /// Connect to `host:port` with Ballerina's defaults: a 300 s read time-out,
    /// a 30 s connect time-out, no callbacks.
    ///
    /// ```
    /// let config = portcullis_sdk::ClientConfig::new("db.internal", 5432);
    /// ```
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ClientConfig {
            host: host.into(),
            port,
            read_timeout: Duration::from_millis(300_000),
            connect_timeout: Duration::from_secs(30),
            callback: false,
        }
    }

    /// Time-out of every read on this connection.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = portcullis_sdk::ClientConfig::new("127.0.0.1", 7000).read_timeout(Duration::from_secs(5));
    /// ```
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Time-out of the connect itself.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = portcullis_sdk::ClientConfig::new("127.0.0.1", 7000).connect_timeout(Duration::from_secs(2));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// With `true`, the host calls this component's exported [`Service`]
    /// (`on_connect`, `on_read_ready`, `on_close`) for this connection.
    ///
    /// [`Service`]: crate::Service
    ///
    /// ```
    /// let config = portcullis_sdk::ClientConfig::new("127.0.0.1", 7000).callback(true);
    /// ```
    pub fn callback(mut self, callback: bool) -> Self {
        self.callback = callback;
        self
    }
}

/// Opens TCP client connections (Ballerina's `socket:Client`).
///
/// ```no_run
/// use portcullis_sdk::Client;
///
/// # async fn f() -> Result<(), portcullis_sdk::Error> {
/// let conn = Client::connect("127.0.0.1", 7000).await?;
/// conn.write_all(b"Hello Ballerina").await?;
/// let echo = conn.read().await?;
/// # Ok(()) }
/// ```
pub struct Client;

impl Client {
    /// Connects to `host:port` with the default [`ClientConfig`]. The host
    /// resolves names. A refused connect fails with
    /// `unable to start the client socket: Connection refused`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let conn = portcullis_sdk::Client::connect("127.0.0.1", 7000).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(host: &str, port: u16) -> Result<Connection, Error> {
        Client::connect_with(ClientConfig::new(host, port)).await
    }

    /// Connects as `config` says.
    ///
    /// ```no_run
    /// use portcullis_sdk::{Client, ClientConfig};
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let conn = Client::connect_with(ClientConfig::new("127.0.0.1", 7000).callback(true)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(config: ClientConfig) -> Result<Connection, Error> {
        let wit_config = types::ClientConfig {
            host: config.host,
            port: config.port,
            read_timeout_ms: config.read_timeout.as_millis() as u64,
            connect_timeout_ms: config.connect_timeout.as_millis() as u64,
            callback: config.callback,
        };
        tcp::Connection::connect(wit_config).await.map(Connection::owned).map_err(Error::from)
    }
}

/// A listener the guest declares itself (Ballerina's `socket:Listener`). Its
/// connections go to this component's exported [`Service`].
///
/// [`Service`]: crate::Service
///
/// ```no_run
/// use portcullis_sdk::Listener;
///
/// # async fn f() -> Result<(), portcullis_sdk::Error> {
/// let listener = Listener::new(61598).interface("127.0.0.1");
/// listener.start().await?;
/// println!("listening on {}", listener.local_addr()?);
/// # Ok(()) }
/// ```
pub struct Listener {
    port: u16,
    interface: Option<String>,
    read_timeout: Duration,
    handle: std::cell::OnceCell<tcp::Listener>,
}

impl Listener {
    /// A listener on `port` (0 picks a free port) on all interfaces.
    ///
    /// ```no_run
    /// # fn f() -> portcullis_sdk::Listener {
    /// let listener = portcullis_sdk::Listener::new(0);
    /// # listener }
    /// ```
    pub fn new(port: u16) -> Self {
        Listener { port, interface: None, read_timeout: Duration::from_millis(300_000), handle: Default::default() }
    }

    /// Binds only `address` (honoured, unlike Ballerina 1.2).
    ///
    /// ```no_run
    /// # fn f() -> portcullis_sdk::Listener {
    /// let listener = portcullis_sdk::Listener::new(7000).interface("127.0.0.1");
    /// # listener }
    /// ```
    pub fn interface(mut self, address: impl Into<String>) -> Self {
        self.interface = Some(address.into());
        self
    }

    /// Time-out of every read on accepted connections.
    ///
    /// ```no_run
    /// # fn f() -> portcullis_sdk::Listener {
    /// # use std::time::Duration;
    /// let listener = portcullis_sdk::Listener::new(7000).read_timeout(Duration::from_secs(10));
    /// # listener }
    /// ```
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    fn handle(&self) -> &tcp::Listener {
        self.handle.get_or_init(|| {
            tcp::Listener::new(
                self.port,
                &types::ListenerConfig {
                    interface: self.interface.clone(),
                    read_timeout_ms: self.read_timeout.as_millis() as u64,
                },
            )
        })
    }

    /// Binds and starts accepting. A port in use fails with
    /// `unable to start the socket service: Address already in use`.
    ///
    /// The operator must grant the address (`--allow-listen tcp://HOST:PORTS`),
    /// or this fails with [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// portcullis_sdk::Listener::new(7000).start().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<(), Error> {
        self.handle().start().await.map_err(Error::from)
    }

    /// The bound address (the real port when 0 was asked).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let listener = portcullis_sdk::Listener::new(0);
    /// listener.start().await?;
    /// println!("port {}", listener.local_addr()?.port());
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.handle().local_address().map(to_socket_addr).map_err(Error::from)
    }

    /// Stops accepting; open connections run until they end.
    ///
    /// ```no_run
    /// # fn f(listener: &portcullis_sdk::Listener) -> Result<(), portcullis_sdk::Error> {
    /// listener.graceful_stop()?;
    /// # Ok(()) }
    /// ```
    pub fn graceful_stop(&self) -> Result<(), Error> {
        self.handle().graceful_stop().map_err(Error::from)
    }

    /// Stops accepting and closes every connection it accepted.
    ///
    /// ```no_run
    /// # fn f(listener: &portcullis_sdk::Listener) -> Result<(), portcullis_sdk::Error> {
    /// listener.immediate_stop()?;
    /// # Ok(()) }
    /// ```
    pub fn immediate_stop(&self) -> Result<(), Error> {
        self.handle().immediate_stop().map_err(Error::from)
    }
}
