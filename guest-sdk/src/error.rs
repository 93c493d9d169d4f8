//! The SDK's error type: what a socket operation returns when it fails.

use std::fmt;

/// What kind of failure an [`Error`] is (Ballerina's `GenericError` and
/// `ReadTimedOutError`, plus permission denials and the end of a stream
/// before [`Connection::read_exact`](crate::Connection::read_exact) had its
/// bytes). More kinds may come: match with a `_` arm.
///
/// ```
/// use portcullis_sdk::{Error, ErrorKind};
///
/// let err = Error::new("bad request");
/// assert_eq!(err.kind(), ErrorKind::Generic);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Any socket failure that is not a time-out or a denial.
    Generic,
    /// A read got no data within the configured read time-out.
    ReadTimedOut,
    /// The operator did not grant the address the operation needed.
    PermissionDenied,
    /// The peer ended the stream before `read_exact(n)` had `n` bytes (std's
    /// `UnexpectedEof`); the bytes it had are what the next read returns.
    UnexpectedEof,
}

/// A socket error: a kind, a message (Ballerina's wording where it has one) and
/// an optional cause.
///
/// A callback may return its own error; the host then calls `on_error` with it.
///
/// ```
/// use portcullis_sdk::Error;
///
/// let err = Error::new("Error while on read");
/// assert_eq!(err.to_string(), "Error while on read");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    cause: Option<String>,
}

impl Error {
    /// A generic error with `message`.
    ///
    /// ```
    /// let err = portcullis_sdk::Error::new("Error while on read");
    /// assert_eq!(err.message(), "Error while on read");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Generic, message: message.into(), cause: None }
    }

    /// What kind of failure this is.
    ///
    /// ```
    /// use portcullis_sdk::{Error, ErrorKind};
    /// assert_eq!(Error::new("x").kind(), ErrorKind::Generic);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, e.g. `read timed out`.
    ///
    /// ```
    /// assert_eq!(portcullis_sdk::Error::new("boom").message(), "boom");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying reason, if any (e.g. the OS error text).
    ///
    /// ```
    /// assert_eq!(portcullis_sdk::Error::new("boom").cause(), None);
    /// ```
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// True for a read that timed out.
    ///
    /// ```no_run
    /// # async fn f(conn: &portcullis_sdk::Connection) {
    /// match conn.read_exact(18).await {
    ///     Err(e) if e.is_timeout() => println!("peer too slow"),
    ///     other => println!("{other:?}"),
    /// }
    /// # }
    /// ```
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::ReadTimedOut
    }

    /// The stream ended after `got` of the `wanted` bytes of a `read_exact`.
    pub(crate) fn unexpected_eof(wanted: u32, got: usize) -> Self {
        Error {
            kind: ErrorKind::UnexpectedEof,
            message: format!("the stream ended after {got} of {wanted} bytes"),
            cause: None,
        }
    }

    /// For a backend turning its own errors into this one.
    pub(crate) fn from_parts(kind: ErrorKind, message: String, cause: Option<String>) -> Self {
        Error { kind, message, cause }
    }

    /// The message and cause, for a backend handing this error back down.
    #[cfg_attr(feature = "wasi", allow(dead_code))] // the native backend's
    pub(crate) fn into_parts(self) -> (String, Option<String>) {
        (self.message, self.cause)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
