//! The backend seam, as std's `sys`: the public types ([`Connection`],
//! [`Client`], [`Listener`], [`UdpClient`], the export macros) are written
//! over what this module offers, and a backend is one module beneath it.
//! There are two, chosen by the cargo feature `wasi`:
//! - `portcullis` (the default): the portcullis WIT, whose host listens,
//!   reads ahead and calls the callbacks;
//! - `wasi`: standard `wasi:sockets@0.3.0`, on which the SDK itself listens
//!   (where `PORTCULLIS_LISTEN` says), reads ahead and calls the service, so
//!   the component runs on any WASI 0.3 runtime.
//!
//! What a backend offers: `tcp::Conn` (read up to or exactly `n` bytes, write
//! all, close and shut down, addresses, a new handle), `tcp::connect`,
//! `tcp::Listener`, `udp::Socket`, `MAX_IO` (the most one read moves), and
//! `export` (the glue the macros expand to). Types both sides share are
//! here.
//!
//! [`Connection`]: crate::Connection
//! [`Client`]: crate::Client
//! [`Listener`]: crate::Listener
//! [`UdpClient`]: crate::UdpClient

#[cfg(not(feature = "wasi"))]
pub mod portcullis;
#[cfg(not(feature = "wasi"))]
pub(crate) use portcullis::{MAX_IO, tcp, udp};

#[cfg(feature = "wasi")]
pub mod wasi;
#[cfg(feature = "wasi")]
pub(crate) use wasi::{MAX_IO, tcp, udp};

mod unread;
pub(crate) use unread::Unread;

use std::net::SocketAddr;

/// Where a datagram goes, as the public API hands it down.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Target {
    /// An IP and port: nothing to look up.
    Ip(SocketAddr),
    /// A host name (or IP text) and port, which the host resolves.
    Name(String, u16),
}
