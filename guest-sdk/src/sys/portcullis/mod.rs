//! The native backend: the portcullis WIT (`wit/socket.wit`), whose host
//! does the listening and calls the callbacks.
//!
//! - [`bindings`]: generated, at the bottom; nothing outside `sys` sees them.
//! - [`tcp`]: connections (with the guest half of the delivery protocol),
//!   client connects, guest listeners; [`udp`]: UDP sockets.
//! - [`export`]: the exported `callbacks` and `wasi:cli/run` glue the export
//!   macros expand to; the one file here that looks up, to the [`Service`].
//!
//! [`Service`]: crate::Service

pub mod bindings;
pub mod export;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::net::{IpAddr, SocketAddr};

use bindings::portcullis::socket::types;

use crate::error::{Error, ErrorKind};

/// The most bytes the host moves in one `read` or `write` call (see
/// `wit/socket.wit`); reads and writes beyond it go in parts.
pub(crate) const MAX_IO: usize = 64 * 1024;

/// The host always reports IP literals; anything else would be a host bug, so
/// it maps to the unspecified address rather than panicking.
fn to_socket_addr(addr: &types::Address) -> SocketAddr {
    let ip = addr.host.as_deref().and_then(|h| h.parse::<IpAddr>().ok()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    SocketAddr::new(ip, addr.port)
}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Self {
        let kind = match e.kind {
            types::ErrorKind::Generic => ErrorKind::Generic,
            types::ErrorKind::ReadTimedOut => ErrorKind::ReadTimedOut,
            types::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        };
        Error::from_parts(kind, e.message, e.cause)
    }
}

impl From<Error> for types::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::Generic => types::ErrorKind::Generic,
            ErrorKind::ReadTimedOut => types::ErrorKind::ReadTimedOut,
            ErrorKind::PermissionDenied => types::ErrorKind::PermissionDenied,
        };
        let (message, cause) = e.into_parts();
        types::Error { kind, message, cause }
    }
}
