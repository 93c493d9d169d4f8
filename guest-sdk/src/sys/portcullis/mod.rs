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

/// The generated error as the SDK's. A function, not a `From` impl: no
/// public item of the SDK shows a generated type.
fn from_wit(e: types::Error) -> Error {
    let kind = match e.kind {
        types::ErrorKind::Generic => ErrorKind::Generic,
        types::ErrorKind::ReadTimedOut => ErrorKind::ReadTimedOut,
        types::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
    };
    Error::from_parts(kind, e.message, e.cause)
}

/// The SDK's error as the generated one (a callback's error, for the host).
fn to_wit(e: Error) -> types::Error {
    let kind = match e.kind() {
        ErrorKind::ReadTimedOut => types::ErrorKind::ReadTimedOut,
        ErrorKind::PermissionDenied => types::ErrorKind::PermissionDenied,
        // The WIT has no end-of-stream kind: the SDK's own (read_exact's).
        _ => types::ErrorKind::Generic,
    };
    let (message, cause) = e.into_parts();
    types::Error { kind, message, cause }
}

/// `.sdk()?` on what a generated call returns.
trait IntoSdk<T> {
    fn sdk(self) -> Result<T, Error>;
}

impl<T> IntoSdk<T> for Result<T, types::Error> {
    fn sdk(self) -> Result<T, Error> {
        self.map_err(from_wit)
    }
}
