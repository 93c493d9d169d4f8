//! UDP sockets on `portcullis:socket/udp`.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::bindings::portcullis::socket::{types, udp};
use super::{IntoSdk, to_socket_addr};
use crate::error::Error;
use crate::sys::Target;

/// One UDP socket.
pub(crate) struct Socket {
    handle: udp::UdpClient,
    /// The last peer IP seen, with its text as the host sends and takes it: an
    /// echo answers the IP it just heard from, and then neither side formats
    /// or parses it again (bench/README: "UDP per datagram").
    last_peer: RefCell<Option<(IpAddr, types::Address)>>,
}

/// What a send to the last peer seen came to.
enum LastPeer {
    Sent(usize),
    /// The socket is full: the async send, to this address.
    Full(types::Address),
    /// Another IP: the address needs its text.
    Other,
}

impl Socket {
    /// Binds `local` (host, port; `None` host is all interfaces), or an
    /// ephemeral port on all interfaces.
    pub(crate) async fn bind(local: Option<(Option<String>, u16)>, read_timeout: Duration) -> Result<Socket, Error> {
        let local = local.map(|(host, port)| types::Address { host, port });
        let config = udp::UdpClientConfig { read_timeout_ms: read_timeout.as_millis() as u64 };
        let handle = udp::UdpClient::bind(local, config).await.sdk()?;
        Ok(Socket { handle, last_peer: RefCell::new(None) })
    }

    /// A plain call first: it sends at once unless the socket is full or the
    /// host is a name to look up.
    pub(crate) async fn send_to(&self, data: &[u8], to: Target) -> Result<usize, Error> {
        if let Target::Ip(addr) = &to {
            match self.try_send_to_last_peer(data, *addr)? {
                LastPeer::Sent(sent) => return Ok(sent),
                LastPeer::Full(known) => return Ok(self.handle.send_to(data.to_vec(), known).await.sdk()? as usize),
                LastPeer::Other => {}
            }
        }
        let to = match to {
            Target::Ip(addr) => types::Address { host: Some(addr.ip().to_string()), port: addr.port() },
            Target::Name(host, port) => types::Address { host: Some(host), port },
        };
        if let Some(sent) = self.handle.try_send_to(data, &to).sdk()? {
            return Ok(sent as usize);
        }
        Ok(self.handle.send_to(data.to_vec(), to).await.sdk()? as usize)
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
        Ok(match self.handle.try_send_to(data, known).sdk()? {
            Some(sent) => LastPeer::Sent(sent as usize),
            None => LastPeer::Full(known.clone()),
        })
    }

    /// One datagram (truncated to `length`), and its sender: a plain (cheap)
    /// call first, the async one only when it must wait.
    pub(crate) async fn receive(&self, length: Option<u32>) -> Result<(Vec<u8>, SocketAddr), Error> {
        let (data, from) = match self.handle.try_receive_from(length).sdk()? {
            Some(received) => received,
            None => self.handle.receive_from(length).await.sdk()?,
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

    pub(crate) fn close(&self) -> Result<(), Error> {
        self.handle.close().sdk()
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(to_socket_addr(&self.handle.local_address().sdk()?))
    }
}
