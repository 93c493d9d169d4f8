//! A UDP socket on tokio: the state behind the WIT `udp-client`.
//!
//! One datagram per send and per receive (boundaries are kept). Without a local
//! host the socket is dual-stack (`[::]`, IPv4 mapped), so one client can talk
//! to IPv4 and IPv6 peers alike; addresses are reported unmapped.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Mutex;

use super::error::{INVALID_READ_LENGTH, SocketError};
use crate::limits::GuestSocket;
use crate::sync::Closing;

/// The largest UDP payload to or from an IPv4 address: 65535 − 8 (UDP
/// header) − 20 (IPv4 header).
pub const MAX_DATAGRAM_V4: usize = 65_507;
/// The largest UDP payload to or from an IPv6 address (no jumbograms):
/// 65535 − 8 (UDP header); the IPv6 header is not counted in its length.
pub const MAX_DATAGRAM_V6: usize = 65_527;
/// The largest datagram any send may be, checked before the target is known
/// (then [`max_datagram`] of the target's family).
pub const MAX_DATAGRAM: usize = MAX_DATAGRAM_V6;

/// Datagrams from senders the guest may not hear from that one
/// `try-receive-from` drops before it answers "nothing yet".
const REFUSED_PER_TRY: usize = 64;
/// Message of any operation after `close`.
pub const UDP_CLOSED: &str = "udp client is closed";

/// The WIT `udp-client` resource. Cheap to clone (an `Arc`), so async host calls
/// take it out of the resource table and await outside the store.
#[derive(Clone)]
pub struct UdpClient(Arc<Inner>);

/// Where a UDP client binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpBind {
    /// All interfaces (dual-stack where possible) on this port; 0 is ephemeral.
    AllInterfaces(u16),
    /// Exactly this address.
    Addr(SocketAddr),
}

/// How many peers a client remembers having sent to (their replies are let in).
const MAX_PEERS: usize = 1024;

/// What the host keeps for one UDP client at most, charged to its instance's
/// memory: the receive buffer and the remembered peers (~100 bytes each in
/// the set).
pub const HOST_BYTES: usize = 65_536 + MAX_PEERS * 100;

struct Inner {
    socket: UdpSocket,
    /// Bound to an IPv6 (possibly dual-stack) address; known once, not asked of
    /// the socket per datagram (a `getsockname` each).
    ipv6: bool,
    /// Peers this client sent to; a reply from one of them is always let in,
    /// even when the grant was by name (and so covers no IP). Looked up twice
    /// per echoed datagram: hashed with foldhash, not SipHash (2% of a UDP echo).
    peers: std::sync::Mutex<std::collections::HashSet<SocketAddr, foldhash::fast::RandomState>>,
    read_timeout: Duration,
    closed: Closing,
    /// One receive buffer per client, kept (not allocated and zeroed per receive).
    receive_buf: Mutex<Vec<u8>>,
    /// Its place under the instance's socket limit and its buffer's memory
    /// charge, held until the socket is gone.
    _guest_socket: GuestSocket,
}

impl UdpClient {
    /// Binds `local` (already checked against the grants); the client keeps
    /// `socket` (its place under the instance's limits) until it is gone.
    pub async fn bind(local: UdpBind, read_timeout: Duration, guest_socket: GuestSocket) -> Result<Self, SocketError> {
        let socket = match local {
            UdpBind::Addr(addr) => UdpSocket::bind(addr).await,
            UdpBind::AllInterfaces(port) => bind_all_interfaces(port),
        }
        .map_err(|e| SocketError::from_io("unable to bind the udp socket: ", &e))?;
        let ipv6 = socket.local_addr().map_err(SocketError::from)?.is_ipv6();
        Ok(UdpClient(Arc::new(Inner {
            socket,
            ipv6,
            peers: Default::default(),
            read_timeout,
            closed: Closing::default(),
            receive_buf: Mutex::new(vec![0; 65_536]),
            _guest_socket: guest_socket,
        })))
    }

    fn check_open(&self) -> Result<(), SocketError> {
        if self.0.closed.is_closed() {
            return Err(SocketError::generic(UDP_CLOSED));
        }
        Ok(())
    }

    /// Fails for a closed client or an oversized datagram: checked before the
    /// target is resolved.
    pub fn check_send(&self, len: usize) -> Result<(), SocketError> {
        self.check_open()?;
        if len > MAX_DATAGRAM {
            return Err(SocketError::generic(datagram_too_large(len)));
        }
        Ok(())
    }

    /// Sends `data` as one datagram to `target` (already checked against the
    /// grants). Returns the bytes sent.
    pub async fn send_to(&self, data: &[u8], target: SocketAddr) -> Result<u32, SocketError> {
        let target = self.prepare_send(data.len(), target)?;
        tokio::select! {
            sent = self.0.socket.send_to(data, target) => Ok(sent.map_err(SocketError::from)? as u32),
            _ = self.0.closed.closed() => Err(SocketError::generic(UDP_CLOSED)),
        }
    }

    /// [`UdpClient::send_to`] without waiting: `None` when the socket's send
    /// buffer is full.
    pub fn try_send_to(&self, data: &[u8], target: SocketAddr) -> Result<Option<u32>, SocketError> {
        let target = self.prepare_send(data.len(), target)?;
        match self.0.socket.try_send_to(data, target) {
            Ok(sent) => Ok(Some(sent as u32)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(SocketError::from(e)),
        }
    }

    /// Checks a send, remembers the peer (its replies are let in) and returns
    /// the address in the socket's family.
    fn prepare_send(&self, len: usize, target: SocketAddr) -> Result<SocketAddr, SocketError> {
        self.check_send(len)?;
        let target = unmap(target);
        if len > max_datagram(target) {
            return Err(SocketError::generic(datagram_too_large_for(len, target)));
        }
        {
            let mut peers = self.0.peers.lock().unwrap();
            if peers.len() < MAX_PEERS {
                peers.insert(target);
            }
        }
        Ok(self.fit_family(target))
    }

    /// Whether this client sent to `peer` before.
    pub fn sent_to(&self, peer: SocketAddr) -> bool {
        self.0.peers.lock().unwrap().contains(&peer)
    }

    /// Receives one datagram (truncated to `length` when given) and its
    /// sender, from a sender `admit` lets in: any other's datagram is dropped
    /// (`admit` logs it) and the wait goes on, within the one read time-out.
    pub async fn receive_from(
        &self,
        length: Option<u32>,
        admit: impl Fn(SocketAddr) -> bool,
    ) -> Result<(Vec<u8>, SocketAddr), SocketError> {
        self.check_open()?;
        if length == Some(0) {
            return Err(SocketError::generic(INVALID_READ_LENGTH));
        }
        let mut buf = self.0.receive_buf.lock().await;
        // A flood of refused datagrams does not keep the time-out from coming.
        let deadline = tokio::time::Instant::now() + self.0.read_timeout;
        loop {
            let received = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.0.socket.recv_from(&mut buf)) => r,
                _ = self.0.closed.closed() => return Err(SocketError::generic(UDP_CLOSED)),
            };
            match received {
                Err(_) => return Err(SocketError::read_timed_out()),
                Ok(Err(e)) if answers_an_earlier_send(&e) => continue,
                Ok(Err(e)) => return Err(SocketError::from(e)),
                Ok(Ok((n, from))) => {
                    let from = unmap(from);
                    if !admit(from) {
                        continue;
                    }
                    let keep = length.map_or(n, |max| n.min(max as usize));
                    return Ok((buf[..keep].to_vec(), from));
                }
            }
        }
    }

    /// [`UdpClient::receive_from`] without waiting: `None` when no datagram
    /// from an admitted sender is queued (after dropping at most
    /// [`REFUSED_PER_TRY`] others), or while another receive is under way.
    pub fn try_receive_from(
        &self,
        length: Option<u32>,
        admit: impl Fn(SocketAddr) -> bool,
    ) -> Result<Option<(Vec<u8>, SocketAddr)>, SocketError> {
        self.check_open()?;
        if length == Some(0) {
            return Err(SocketError::generic(INVALID_READ_LENGTH));
        }
        let Ok(mut buf) = self.0.receive_buf.try_lock() else {
            return Ok(None);
        };
        for _ in 0..REFUSED_PER_TRY {
            match self.0.socket.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    let from = unmap(from);
                    if !admit(from) {
                        continue;
                    }
                    let keep = length.map_or(n, |max| n.min(max as usize));
                    return Ok(Some((buf[..keep].to_vec(), from)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if answers_an_earlier_send(&e) => continue,
                Err(e) => return Err(SocketError::from(e)),
            }
        }
        Ok(None)
    }

    /// Closes the socket for every handle; waiting receives and sends fail.
    pub fn close(&self) {
        self.0.closed.close();
    }

    pub fn local_addr(&self) -> Result<SocketAddr, SocketError> {
        self.check_open()?;
        self.0.socket.local_addr().map(unmap).map_err(SocketError::from)
    }

    /// A dual-stack socket sends to IPv4 peers through their mapped address.
    fn fit_family(&self, target: SocketAddr) -> SocketAddr {
        match target.ip() {
            IpAddr::V4(v4) if self.0.ipv6 => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), target.port()),
            _ => target,
        }
    }
}

/// A receive error that reports what became of an earlier datagram sent
/// (an ICMP error: port or host unreachable), not a fault of this receive or
/// of the socket: the receive goes on, as for a datagram not sent at all.
fn answers_an_earlier_send(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// The largest datagram to or from `peer`'s address family, in bytes
/// (an IPv4-mapped IPv6 address counts as IPv4).
pub fn max_datagram(peer: SocketAddr) -> usize {
    match unmap(peer) {
        SocketAddr::V4(_) => MAX_DATAGRAM_V4,
        SocketAddr::V6(_) => MAX_DATAGRAM_V6,
    }
}

/// The error of a send past [`MAX_DATAGRAM`] (before the target is known).
pub fn datagram_too_large(len: usize) -> String {
    format!("datagram too large: {len} bytes (at most {MAX_DATAGRAM} over IPv6, {MAX_DATAGRAM_V4} over IPv4)")
}

/// The error of a send past [`max_datagram`] of its target.
fn datagram_too_large_for(len: usize, target: SocketAddr) -> String {
    let family = if target.is_ipv4() { "IPv4" } else { "IPv6" };
    format!("datagram too large: {len} bytes (at most {} over {family})", max_datagram(target))
}

/// Dual-stack `[::]:port`, or `0.0.0.0:port` where IPv6 is unavailable.
fn bind_all_interfaces(port: u16) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let dual = || -> io::Result<std::net::UdpSocket> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, None)?;
        socket.set_only_v6(false)?;
        socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
        Ok(socket.into())
    };
    let std_socket = match dual() {
        Ok(socket) => socket,
        Err(_) => std::net::UdpSocket::bind(("0.0.0.0", port))?,
    };
    std_socket.set_nonblocking(true)?;
    UdpSocket::from_std(std_socket)
}

/// `::ffff:a.b.c.d` back to `a.b.c.d`.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_datagram_by_family() {
        use crate::net::udp::max_datagram;
        assert_eq!(max_datagram("127.0.0.1:53".parse().unwrap()), 65_507);
        assert_eq!(max_datagram("[::ffff:127.0.0.1]:53".parse().unwrap()), 65_507);
        assert_eq!(max_datagram("[::1]:53".parse().unwrap()), 65_527);
    }

    #[tokio::test]
    async fn a_dual_stack_client_talks_to_an_ipv4_peer_and_reports_it_unmapped() {
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let client =
            UdpClient::bind(UdpBind::AllInterfaces(0), Duration::from_secs(5), GuestSocket::for_tests()).await.unwrap();
        assert_eq!(client.send_to(b"ping", peer_addr).await.unwrap(), 4);
        assert!(client.sent_to(peer_addr));
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        peer.send_to(b"pong!", from).await.unwrap();
        let (data, sender) = client.receive_from(Some(4), |_| true).await.unwrap();
        assert_eq!(data, b"pong", "a longer datagram is truncated to the length asked");
        assert_eq!(sender, peer_addr);
    }

    /// A client bound to an ephemeral port on 127.0.0.1.
    async fn loopback_client() -> UdpClient {
        let local = UdpBind::Addr("127.0.0.1:0".parse().unwrap());
        UdpClient::bind(local, Duration::from_secs(5), GuestSocket::for_tests()).await.unwrap()
    }

    #[tokio::test]
    async fn oversized_datagrams_and_zero_lengths_are_errors() {
        let client = loopback_client().await;
        let err = client.send_to(&vec![0; MAX_DATAGRAM_V4 + 1], "127.0.0.1:9".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.message, "datagram too large: 65508 bytes (at most 65507 over IPv4)");
        let err = client.send_to(&vec![0; MAX_DATAGRAM + 1], "[::1]:9".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.message, "datagram too large: 65528 bytes (at most 65527 over IPv6, 65507 over IPv4)");
        let err = client.receive_from(Some(0), |_| true).await.unwrap_err();
        assert_eq!(err.message, INVALID_READ_LENGTH);
        client.close();
        assert_eq!(client.local_addr().unwrap_err().message, UDP_CLOSED);
    }

    #[tokio::test]
    async fn the_largest_datagram_received_over_ipv6_can_be_sent_back() {
        let Ok(peer) = UdpSocket::bind("[::1]:0").await else { return }; // no IPv6 here
        let client =
            UdpClient::bind(UdpBind::AllInterfaces(0), Duration::from_secs(5), GuestSocket::for_tests()).await.unwrap();
        let port = client.local_addr().unwrap().port();
        let big = vec![7u8; MAX_DATAGRAM_V6];
        peer.send_to(&big, ("::1", port)).await.unwrap();
        let (got, from) = client.receive_from(None, |_| true).await.unwrap();
        assert_eq!(got.len(), MAX_DATAGRAM_V6);
        assert_eq!(client.send_to(&got, from).await.unwrap() as usize, MAX_DATAGRAM_V6, "echoed whole");
    }

    #[tokio::test]
    async fn datagrams_from_refused_senders_are_dropped_and_the_wait_goes_on() {
        let client = loopback_client().await;
        let to = client.local_addr().unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let friend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let friend_addr = friend.local_addr().unwrap();
        for _ in 0..200 {
            stranger.send_to(b"noise", to).await.unwrap();
        }
        friend.send_to(b"hello", to).await.unwrap();
        let refused = std::sync::atomic::AtomicUsize::new(0);
        let admit = |from: SocketAddr| {
            let ok = from == friend_addr;
            if !ok {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ok
        };
        // The plain receive gives up after a bounded number of refusals ...
        assert_eq!(client.try_receive_from(None, admit).unwrap(), None);
        // ... and the waiting one goes on to the granted sender's datagram.
        let (data, from) = client.receive_from(None, admit).await.unwrap();
        assert_eq!((data.as_slice(), from), (&b"hello"[..], friend_addr));
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 200);
    }
}
