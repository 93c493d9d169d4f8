//! UDP: the SDK face of `portcullis:socket/udp` (Ballerina's `socket:UdpClient`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::Error;
use crate::sys::{self, Target};

/// Something to send a datagram to: a [`SocketAddr`] or a `(host, port)` pair
/// (the host resolves names).
///
/// ```no_run
/// # async fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
/// udp.send_to(b"ping", ("127.0.0.1", 7000)).await?;
/// udp.send_to(b"ping", "127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap()).await?;
/// # Ok(()) }
/// ```
pub trait ToAddress {
    /// The target as the backend takes it.
    #[doc(hidden)]
    fn target(&self) -> Target;
}

impl ToAddress for SocketAddr {
    fn target(&self) -> Target {
        Target::Ip(*self)
    }
}

impl ToAddress for (&str, u16) {
    fn target(&self) -> Target {
        Target::Name(self.0.to_string(), self.1)
    }
}

impl ToAddress for (String, u16) {
    fn target(&self) -> Target {
        Target::Name(self.0.clone(), self.1)
    }
}

/// How to bind a [`UdpClient`].
///
/// ```no_run
/// use std::time::Duration;
/// use portcullis_sdk::{UdpClient, UdpConfig};
///
/// # async fn f() -> Result<(), portcullis_sdk::Error> {
/// let udp = UdpClient::bind_with(UdpConfig::port(9000).read_timeout(Duration::from_secs(2))).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// Host (`None`: all interfaces) and port; `None`: an ephemeral port.
    local: Option<(Option<String>, u16)>,
    read_timeout: Duration,
}

impl UdpConfig {
    /// An ephemeral port on all interfaces, Ballerina's 300 s receive time-out.
    ///
    /// ```
    /// let config = portcullis_sdk::UdpConfig::ephemeral();
    /// ```
    pub fn ephemeral() -> Self {
        UdpConfig { local: None, read_timeout: crate::DEFAULT_READ_TIMEOUT }
    }

    /// `port` on all interfaces.
    ///
    /// ```
    /// let config = portcullis_sdk::UdpConfig::port(9000);
    /// ```
    pub fn port(port: u16) -> Self {
        UdpConfig { local: Some((None, port)), ..UdpConfig::ephemeral() }
    }

    /// `host:port` (a name or an IP literal).
    ///
    /// ```
    /// let config = portcullis_sdk::UdpConfig::local("127.0.0.1", 9000);
    /// ```
    pub fn local(host: impl Into<String>, port: u16) -> Self {
        UdpConfig { local: Some((Some(host.into()), port)), ..UdpConfig::ephemeral() }
    }

    /// Time-out of every receive.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let config = portcullis_sdk::UdpConfig::ephemeral().read_timeout(Duration::from_secs(1));
    /// ```
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }
}

/// A UDP socket (Ballerina's `socket:UdpClient`): one datagram per send and per
/// receive.
///
/// ```no_run
/// use portcullis_sdk::UdpClient;
///
/// # async fn f() -> Result<(), portcullis_sdk::Error> {
/// let udp = UdpClient::bind(None).await?; // ephemeral port
/// udp.send_to(b"Hello Ballerina echo", ("127.0.0.1", 7000)).await?;
/// let (reply, from) = udp.recv_from().await?;
/// # Ok(()) }
/// ```
pub struct UdpClient {
    sys: sys::udp::Socket,
}

impl UdpClient {
    /// Binds `local`, or an ephemeral port on all interfaces with `None`.
    ///
    /// Binding needs a grant (`--allow-udp udp://HOST:PORTS` covering the
    /// address; for `None`, an ephemeral port on all interfaces, any UDP
    /// grant will do), or it fails with
    /// [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied):
    /// `permission denied: bind udp://0.0.0.0:9000 is not granted`.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let udp = portcullis_sdk::UdpClient::bind(Some("127.0.0.1:9000".parse().unwrap())).await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind(local: Option<SocketAddr>) -> Result<UdpClient, Error> {
        let config = match local {
            Some(addr) => UdpConfig::local(addr.ip().to_string(), addr.port()),
            None => UdpConfig::ephemeral(),
        };
        UdpClient::bind_with(config).await
    }

    /// Binds as `config` says; needs the grant [`UdpClient::bind`] does.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let udp = portcullis_sdk::UdpClient::bind_with(portcullis_sdk::UdpConfig::port(9000)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind_with(config: UdpConfig) -> Result<UdpClient, Error> {
        Ok(UdpClient { sys: sys::udp::Socket::bind(config.local, config.read_timeout).await? })
    }

    /// Sends `data` as one datagram; returns the bytes sent. More than 65,507
    /// bytes to an IPv4 address, or 65,527 to an IPv6 one, is an error
    /// (`datagram too large`); anything received can be sent back.
    ///
    /// The target needs a grant (`--allow-udp udp://HOST:PORTS`; a name grant
    /// covers the name, never an IP literal), or the send fails with
    /// [`ErrorKind::PermissionDenied`](crate::ErrorKind::PermissionDenied):
    /// `permission denied: send to udp://10.0.0.5:53 is not granted`.
    ///
    /// ```no_run
    /// # async fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// udp.send_to(b"ping", ("localhost", 7000)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_to(&self, data: &[u8], to: impl ToAddress) -> Result<usize, Error> {
        self.sys.send_to(data, to.target()).await
    }

    /// Receives one whole datagram and its sender. Times out with
    /// [`ErrorKind::ReadTimedOut`](crate::ErrorKind::ReadTimedOut).
    ///
    /// Datagrams come from peers this socket sent to, or that a UDP grant
    /// covers; the host drops any other sender's (and logs it), and the
    /// receive goes on waiting within its time-out.
    ///
    /// ```no_run
    /// # async fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// let (data, from) = udp.recv_from().await?;
    /// udp.send_to(&data, from).await?; // echo
    /// # Ok(()) }
    /// ```
    pub async fn recv_from(&self) -> Result<(Vec<u8>, SocketAddr), Error> {
        self.sys.receive(None).await
    }

    /// Receives one datagram, truncated to `max` bytes (the rest of a longer
    /// datagram is discarded). `max` of 0 is an error.
    ///
    /// ```no_run
    /// # async fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// let (header, from) = udp.recv_from_max(8).await?;
    /// # Ok(()) }
    /// ```
    pub async fn recv_from_max(&self, max: u32) -> Result<(Vec<u8>, SocketAddr), Error> {
        self.sys.receive(Some(max)).await
    }

    /// Closes the socket; later operations fail.
    ///
    /// ```no_run
    /// # fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// udp.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> Result<(), Error> {
        self.sys.close()
    }

    /// The bound address (the real port when 0 was asked).
    ///
    /// ```no_run
    /// # fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// println!("bound to {}", udp.local_addr()?);
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.sys.local_addr()
    }
}
