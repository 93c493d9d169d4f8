//! The errors a guest sees from socket operations.
//!
//! Every socket operation fails with a [`SocketError`]: a kind the guest can act on
//! (generic, read time-out, permission denied) and the message Ballerina's API
//! documents. The WIT host impls convert it to the generated `error` record in one
//! place (`net::host`), so the socket core never touches generated types.

use std::fmt;
use std::io;

use crate::policy::PolicyError;

/// The coarse kind of a [`SocketError`]; mirrors the WIT `error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Generic,
    ReadTimedOut,
    PermissionDenied,
}

/// An error returned to the guest: kind, message and an optional cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketError {
    pub kind: ErrorKind,
    pub message: String,
    pub cause: Option<String>,
}

// Ballerina's wording, shared with the SDK's WASI backend.
pub use portcullis_protocol::messages::{
    CONNECT_FAILED, INVALID_READ_LENGTH, LISTEN_FAILED, READ_TIMED_OUT, SOCKET_CLOSED, WRITE_AFTER_CLOSE,
    WRITE_TIMED_OUT,
};

impl SocketError {
    pub fn generic(message: impl Into<String>) -> Self {
        SocketError { kind: ErrorKind::Generic, message: message.into(), cause: None }
    }

    pub fn read_timed_out() -> Self {
        SocketError { kind: ErrorKind::ReadTimedOut, message: READ_TIMED_OUT.into(), cause: None }
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        SocketError { kind: ErrorKind::PermissionDenied, message: message.into(), cause: None }
    }

    /// `prefix` followed by the OS reason, with the full error kept as the cause.
    pub fn from_io(prefix: &str, err: &io::Error) -> Self {
        SocketError {
            kind: ErrorKind::Generic,
            message: format!("{prefix}{}", os_reason(err)),
            cause: Some(err.to_string()),
        }
    }
}

/// What a host function fails with: a [`SocketError`] that the guest gets as
/// its `error` value, or a trap (a handle the guest does not own, a host
/// failure). Both go up with `?`; the generated glue sorts them through
/// `types::Host::convert_error` (wasmtime's `trappable_error_type`). Which
/// one it is, is decided when it is made, never by looking inside.
#[derive(Debug)]
pub enum HostError {
    /// The guest's error.
    Guest(SocketError),
    /// The guest's instance ends.
    Trap(wasmtime::Error),
}

/// The result of a host function whose WIT result carries an `error`.
pub type HostResult<T> = Result<T, HostError>;

impl HostError {
    /// A trap: the guest's instance ends.
    pub fn trap(err: impl Into<wasmtime::Error>) -> Self {
        HostError::Trap(err.into())
    }

    /// The guest's error, or (as `Err`) the trap.
    pub fn into_guest_error(self) -> wasmtime::Result<SocketError> {
        match self {
            HostError::Guest(err) => Ok(err),
            HostError::Trap(trap) => Err(trap),
        }
    }
}

impl From<SocketError> for HostError {
    fn from(err: SocketError) -> Self {
        HostError::Guest(err)
    }
}

impl From<PolicyError> for HostError {
    fn from(err: PolicyError) -> Self {
        HostError::Guest(err.into())
    }
}

impl From<wasmtime::Error> for HostError {
    fn from(err: wasmtime::Error) -> Self {
        HostError::Trap(err)
    }
}

impl From<wasmtime::component::ResourceTableError> for HostError {
    fn from(err: wasmtime::component::ResourceTableError) -> Self {
        HostError::trap(err)
    }
}

impl From<PolicyError> for SocketError {
    fn from(err: PolicyError) -> Self {
        match err {
            PolicyError::Denied { message, .. } => SocketError::permission_denied(message),
            PolicyError::InvalidHost(message) => SocketError::generic(message),
            PolicyError::Lookup(err) => SocketError::from_io("", &err),
        }
    }
}

impl From<io::Error> for SocketError {
    fn from(err: io::Error) -> Self {
        SocketError::from_io("", &err)
    }
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SocketError {}

/// The OS's wording without Rust's " (os error N)" suffix, so messages read like
/// Ballerina's (`Connection refused`, `Address already in use`).
pub fn os_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_reason_drops_the_error_number() {
        let err = io::Error::from_raw_os_error(111);
        assert_eq!(os_reason(&err), "Connection refused");
        let msg = SocketError::from_io(CONNECT_FAILED, &err).message;
        assert_eq!(msg, "unable to start the client socket: Connection refused");
    }

    #[test]
    fn custom_errors_keep_their_text() {
        let err = io::Error::other("boom");
        assert_eq!(os_reason(&err), "boom");
    }

    #[test]
    fn a_host_error_is_the_guests_error_or_a_trap() {
        let guest = HostError::from(SocketError::read_timed_out());
        assert_eq!(guest.into_guest_error().unwrap(), SocketError::read_timed_out());
        let message = "permission denied: connect tcp://10.0.0.5:1".to_string();
        let denied = HostError::from(PolicyError::Denied { use_: crate::policy::Use::TcpConnect, message });
        assert_eq!(denied.into_guest_error().unwrap().kind, ErrorKind::PermissionDenied);
        let trap = HostError::from(wasmtime::component::ResourceTableError::NotPresent);
        assert!(trap.into_guest_error().is_err(), "a handle the guest does not own traps");
        let wrapped = HostError::trap(wasmtime::Error::new(SocketError::generic("made a trap")));
        assert!(wrapped.into_guest_error().is_err(), "a trap stays a trap whatever it carries");
    }
}
