//! Listeners a guest declares itself (Ballerina's `socket:Listener`).

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::time::Duration;

use crate::{Error, sys};

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
    handle: OnceCell<sys::tcp::Listener>,
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
        Listener { port, interface: None, read_timeout: crate::DEFAULT_READ_TIMEOUT, handle: OnceCell::new() }
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

    fn handle(&self) -> &sys::tcp::Listener {
        self.handle.get_or_init(|| sys::tcp::Listener::new(self.port, self.interface.clone(), self.read_timeout))
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
        self.handle().start().await
    }

    /// The bound address (the real port when 0 was asked). Fails before
    /// [`Listener::start`] has succeeded (`listener is not started`).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let listener = portcullis_sdk::Listener::new(0);
    /// listener.start().await?;
    /// println!("port {}", listener.local_addr()?.port());
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.handle().local_addr()
    }

    /// Stops accepting; open connections run until they end.
    ///
    /// ```no_run
    /// # fn f(listener: &portcullis_sdk::Listener) -> Result<(), portcullis_sdk::Error> {
    /// listener.graceful_stop()?;
    /// # Ok(()) }
    /// ```
    pub fn graceful_stop(&self) -> Result<(), Error> {
        self.handle().graceful_stop()
    }

    /// Stops accepting and closes every connection it accepted.
    ///
    /// ```no_run
    /// # fn f(listener: &portcullis_sdk::Listener) -> Result<(), portcullis_sdk::Error> {
    /// listener.immediate_stop()?;
    /// # Ok(()) }
    /// ```
    pub fn immediate_stop(&self) -> Result<(), Error> {
        self.handle().immediate_stop()
    }
}
