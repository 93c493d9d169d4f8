//! UDP: the SDK face of `portcullis:socket/udp` (Ballerina's `socket:UdpClient`).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::__bindings::portcullis::socket::{types, udp};
use crate::Error;

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
    #[doc(hidden)]
    fn to_wit(&self) -> types::Address;

    /// The target as an IP and port, when it is one (no name to look up).
    #[doc(hidden)]
    fn socket_addr(&self) -> Option<SocketAddr> {
        None
    }
}

impl ToAddress for SocketAddr {
    fn to_wit(&self) -> types::Address {
        types::Address { host: Some(self.ip().to_string()), port: self.port() }
    }

    fn socket_addr(&self) -> Option<SocketAddr> {
        Some(*self)
    }
}

impl ToAddress for (&str, u16) {
    fn to_wit(&self) -> types::Address {
        types::Address { host: Some(self.0.to_string()), port: self.1 }
    }
}

impl ToAddress for (String, u16) {
    fn to_wit(&self) -> types::Address {
        types::Address { host: Some(self.0.clone()), port: self.1 }
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
    local: Option<types::Address>,
    read_timeout: Duration,
}

impl UdpConfig {
    /// An ephemeral port on all interfaces, Ballerina's 300 s receive time-out.
    ///
    /// ```
    /// let config = portcullis_sdk::UdpConfig::ephemeral();
    /// ```
    pub fn ephemeral() -> Self {
        UdpConfig { local: None, read_timeout: Duration::from_millis(300_000) }
    }

    /// `port` on all interfaces.
    ///
    /// ```
    /// let config = portcullis_sdk::UdpConfig::port(9000);
    /// ```
    pub fn port(port: u16) -> Self {
        UdpConfig { local: Some(types::Address { host: None, port }), ..UdpConfig::ephemeral() }
    }

    /// `host:port` (a name or an IP literal).
    ///
    /// ```
    /// let config = portcullis_sdk::UdpConfig::local("127.0.0.1", 9000);
    /// ```
    pub fn local(host: impl Into<String>, port: u16) -> Self {
        UdpConfig { local: Some(types::Address { host: Some(host.into()), port }), ..UdpConfig::ephemeral() }
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
    handle: udp::UdpClient,
    /// The last peer IP seen, with its text as the host sends and takes it: an
    /// echo answers the IP it just heard from, and then neither side formats
    /// or parses it again (measured: a few % of a UDP echo's time).
    last_peer: RefCell<Option<(IpAddr, types::Address)>>,
}

impl UdpClient {
    /// Binds `local`, or an ephemeral port on all interfaces with `None`.
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

    /// Binds as `config` says.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), portcullis_sdk::Error> {
    /// let udp = portcullis_sdk::UdpClient::bind_with(portcullis_sdk::UdpConfig::port(9000)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind_with(config: UdpConfig) -> Result<UdpClient, Error> {
        let wit_config = udp::UdpClientConfig { read_timeout_ms: config.read_timeout.as_millis() as u64 };
        udp::UdpClient::bind(config.local, wit_config)
            .await
            .map(|handle| UdpClient { handle, last_peer: RefCell::new(None) })
            .map_err(Error::from)
    }

    /// Sends `data` as one datagram; returns the bytes sent. More than 65,507
    /// bytes to an IPv4 address, or 65,527 to an IPv6 one, is an error
    /// (`datagram too large`); anything received can be sent back.
    ///
    /// ```no_run
    /// # async fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// udp.send_to(b"ping", ("localhost", 7000)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_to(&self, data: &[u8], to: impl ToAddress) -> Result<usize, Error> {
        // A plain call first: it sends at once unless the socket is full or the
        // host is a name to look up.
        if let Some(addr) = to.socket_addr() {
            match self.try_send_to_last_peer(data, addr)? {
                LastPeer::Sent(sent) => return Ok(sent),
                LastPeer::Full(known) => {
                    return self.handle.send_to(data.to_vec(), known).await.map(|n| n as usize).map_err(Error::from);
                }
                LastPeer::Other => {}
            }
        }
        let to = to.to_wit();
        if let Some(sent) = self.handle.try_send_to(data, &to).map_err(Error::from)? {
            return Ok(sent as usize);
        }
        self.handle.send_to(data.to_vec(), to).await.map(|n| n as usize).map_err(Error::from)
    }

    /// The plain send to `addr` with the text the host gave for its IP, when
    /// that IP is the last peer seen.
    fn try_send_to_last_peer(&self, data: &[u8], addr: SocketAddr) -> Result<LastPeer, Error> {
        let mut last = self.last_peer.borrow_mut();
        let Some((ip, known)) = &mut *last else { return Ok(LastPeer::Other) };
        if *ip != addr.ip() {
            return Ok(LastPeer::Other);
        }
        known.port = addr.port();
        Ok(match self.handle.try_send_to(data, known).map_err(Error::from)? {
            Some(sent) => LastPeer::Sent(sent as usize),
            None => LastPeer::Full(known.clone()),
        })
    }

    /// Receives one whole datagram and its sender. Times out with
    /// [`ErrorKind::ReadTimedOut`](crate::ErrorKind::ReadTimedOut).
    ///
    /// ```no_run
    /// # async fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// let (data, from) = udp.recv_from().await?;
    /// udp.send_to(&data, from).await?; // echo
    /// # Ok(()) }
    /// ```
    pub async fn recv_from(&self) -> Result<(Vec<u8>, SocketAddr), Error> {
        self.receive(None).await
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
        self.receive(Some(max)).await
    }

    /// A plain (cheap) call first; the async one only when it must wait.
    async fn receive(&self, length: Option<u32>) -> Result<(Vec<u8>, SocketAddr), Error> {
        let (data, from) = match self.handle.try_receive_from(length).map_err(Error::from)? {
            Some(received) => received,
            None => self.handle.receive_from(length).await.map_err(Error::from)?,
        };
        let mut last = self.last_peer.borrow_mut();
        if let Some((ip, known)) = &*last
            && known.host == from.host
        {
            return Ok((data, SocketAddr::new(*ip, from.port)));
        }
        let peer = to_socket_addr(&from);
        if from.host.as_deref().is_some_and(|h| h.parse::<IpAddr>().is_ok()) {
            *last = Some((peer.ip(), from));
        }
        Ok((data, peer))
    }

    /// Closes the socket; later operations fail.
    ///
    /// ```no_run
    /// # fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// udp.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> Result<(), Error> {
        self.handle.close().map_err(Error::from)
    }

    /// The bound address (the real port when 0 was asked).
    ///
    /// ```no_run
    /// # fn f(udp: &portcullis_sdk::UdpClient) -> Result<(), portcullis_sdk::Error> {
    /// println!("bound to {}", udp.local_addr()?);
    /// # Ok(()) }
    /// ```
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.handle.local_address().map(|addr| to_socket_addr(&addr)).map_err(Error::from)
    }
}

/// What a send to the last peer seen came to.
enum LastPeer {
    Sent(usize),
    /// The socket is full: the async send, to this address.
    Full(types::Address),
    /// Another IP: the address needs its text.
    Other,
}

fn to_socket_addr(addr: &types::Address) -> SocketAddr {
    let ip = addr.host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    SocketAddr::new(ip, addr.port)
}
