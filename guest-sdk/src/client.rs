//! Opening TCP client connections (Ballerina's `socket:Client`).

use std::time::Duration;

use crate::{Connection, Error, sys};

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
    tls: bool,
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
            read_timeout: crate::DEFAULT_READ_TIMEOUT,
            connect_timeout: Duration::from_secs(30),
            callback: false,
            tls: false,
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

    /// With `true`, the host speaks TLS to the server, and you read and
    /// write plaintext. The server's certificate must be valid for `host`
    /// (the name your grant covers) and chain to the operator's roots
    /// (`--tls-ca`, or the system's); if not, the connect fails with
    /// `unable to start the client socket: TLS ...`. The connect time-out
    /// covers the handshake. Under the SDK's `wasi` backend the connect
    /// fails: its runtime gives it plain sockets only.
    ///
    /// ```
    /// let config = portcullis_sdk::ClientConfig::new("db.internal", 5433).tls(true);
    /// ```
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
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
    /// The operator must grant the target (`--allow-connect tcp://HOST:PORTS`;
    /// a name grant covers the name, never an IP literal), or this fails with
    /// [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied):
    /// `permission denied: connect tcp://10.0.0.5:5432 is not granted`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let conn = portcullis_sdk::Client::connect("127.0.0.1", 7000).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(host: &str, port: u16) -> Result<Connection, Error> {
        Client::connect_with(ClientConfig::new(host, port)).await
    }

    /// Connects as `config` says; needs the same grant as [`Client::connect`].
    ///
    /// ```no_run
    /// use portcullis_sdk::{Client, ClientConfig};
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let conn = Client::connect_with(ClientConfig::new("127.0.0.1", 7000).callback(true)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(config: ClientConfig) -> Result<Connection, Error> {
        let ClientConfig { host, port, read_timeout, connect_timeout, callback, tls } = config;
        let conn = sys::tcp::connect(host, port, read_timeout, connect_timeout, callback, tls).await?;
        Ok(Connection::from_sys(conn))
    }
}
