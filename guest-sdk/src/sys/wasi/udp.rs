//! UDP on `wasi:sockets/types@0.3.0`.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use super::bindings::wasi::sockets::types::UdpSocket;
use super::{INVALID_READ_LENGTH, bracketed};
use super::{Race, Signal, family, from_wasi, generic, race, read_timed_out, resolve, socket_error, to_wasi};

/// Ballerina's wording for a closed UDP client (as the native backend's).
const UDP_CLOSED: &str = "udp client is closed";
use crate::error::Error;
use crate::sys::Target;

/// The largest datagram per family (the native backend's bounds).
const MAX_DATAGRAM_V4: usize = 65_507;
const MAX_DATAGRAM_V6: usize = 65_527;

/// One UDP socket.
pub(crate) struct Socket {
    /// Shared with the sends and receives under way: `close` drops this
    /// handle and tells them (they end at once, failing).
    handle: RefCell<Option<Rc<UdpSocket>>>,
    /// Bound by `bind(None)` (an ephemeral port on all interfaces) and not
    /// used yet. wasi:sockets has no dual-stack socket, so such a socket is
    /// made anew in the family of its first send's target: an unbound client
    /// reaches IPv6 peers as on the native backend.
    fresh: Cell<bool>,
    read_timeout: Duration,
    closed: Signal,
}

/// A UDP socket of `addr`'s family, bound to it.
fn bound(addr: SocketAddr) -> Result<Rc<UdpSocket>, super::bindings::wasi::sockets::types::ErrorCode> {
    let handle = UdpSocket::create(family(&addr))?;
    handle.bind(to_wasi(addr))?;
    Ok(Rc::new(handle))
}

impl Socket {
    /// Binds `local` (host, port; `None` host is all interfaces), or an
    /// ephemeral port on all interfaces.
    pub(crate) async fn bind(local: Option<(Option<String>, u16)>, read_timeout: Duration) -> Result<Socket, Error> {
        let fresh = local.is_none();
        let (host, port) = local.unwrap_or((None, 0));
        let host = host.unwrap_or_else(|| "0.0.0.0".to_string());
        let asked = || format!("bind udp://{}:{port}", bracketed(&host));
        let ip = resolve(&host, "unable to bind the UDP socket: ", asked).await?.into_iter().next();
        let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
        let failed = |code| socket_error(code, "unable to bind the UDP socket: ", asked);
        let handle = bound(addr).map_err(failed)?;
        Ok(Socket {
            handle: RefCell::new(Some(handle)),
            fresh: Cell::new(fresh),
            read_timeout,
            closed: Signal::default(),
        })
    }

    fn handle(&self) -> Result<Rc<UdpSocket>, Error> {
        self.handle.borrow().clone().ok_or_else(|| generic(UDP_CLOSED))
    }

    pub(crate) async fn send_to(&self, data: &[u8], to: Target) -> Result<usize, Error> {
        let (host, port) = match &to {
            Target::Ip(addr) => (addr.ip().to_string(), addr.port()),
            Target::Name(host, port) => (host.clone(), *port),
        };
        let asked = || format!("send to udp://{}:{port}", bracketed(&host));
        let ip = match to {
            Target::Ip(addr) => addr.ip(),
            Target::Name(..) => resolve(&host, "unable to send: ", asked)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| generic(format!("unable to send: no address for {host}")))?,
        };
        let max = if ip.is_ipv4() { MAX_DATAGRAM_V4 } else { MAX_DATAGRAM_V6 };
        if data.len() > max {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(generic(format!("datagram too large: {} bytes (at most {max} over {family})", data.len())));
        }
        if self.fresh.replace(false) && ip.is_ipv6() {
            let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
            let handle = bound(any).map_err(|code| socket_error(code, "unable to send: ", asked))?;
            let mut current = self.handle.borrow_mut();
            if current.is_some() {
                *current = Some(handle);
            }
        }
        let handle = self.handle()?;
        let sending = pin!(handle.send(data.to_vec(), Some(to_wasi(SocketAddr::new(ip, port)))));
        match race(sending, &self.closed, None).await {
            Race::Done(sent) => sent.map_err(|code| socket_error(code, "unable to send: ", asked))?,
            Race::Stopped | Race::TimedOut => return Err(generic(UDP_CLOSED)),
        }
        Ok(data.len())
    }

    /// One datagram (truncated to `length`) and its sender, within the read
    /// time-out.
    pub(crate) async fn receive(&self, length: Option<u32>) -> Result<(Vec<u8>, SocketAddr), Error> {
        if length == Some(0) {
            return Err(generic(INVALID_READ_LENGTH));
        }
        self.fresh.set(false);
        let handle = self.handle()?;
        let outcome = race(pin!(handle.receive()), &self.closed, Some(self.read_timeout)).await;
        match outcome {
            Race::Done(Ok((mut data, from))) => {
                if let Some(n) = length {
                    data.truncate(n as usize);
                }
                Ok((data, from_wasi(from)))
            }
            Race::Done(Err(code)) => Err(socket_error(code, "unable to receive: ", || "receive".to_string())),
            Race::Stopped => Err(generic(UDP_CLOSED)),
            Race::TimedOut => Err(read_timed_out()),
        }
    }

    pub(crate) fn close(&self) -> Result<(), Error> {
        self.handle.borrow_mut().take();
        self.closed.set();
        Ok(())
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.fresh.set(false);
        self.handle()?.get_local_address().map(from_wasi).map_err(|code| socket_error(code, "", String::new))
    }
}
