//! The error messages a service sees, worded as Ballerina 1.2's socket
//! module words them (its `GenericError` and `ReadTimedOutError` texts), so
//! code that matches on them works on either backend.

/// A write (or `shutdown-write`) after the connection was closed.
pub const WRITE_AFTER_CLOSE: &str = "client socket close already.";
/// A write that could send nothing for the write time-out.
pub const WRITE_TIMED_OUT: &str = "write timed out";
/// A read that got nothing for the read time-out (a `ReadTimedOutError`).
pub const READ_TIMED_OUT: &str = "read timed out";
/// A read asked for 0 bytes.
pub const INVALID_READ_LENGTH: &str = "requested byte length need to be 1 or more";
/// A call on a connection or UDP client after it was closed.
pub const SOCKET_CLOSED: &str = "socket is closed";
/// The start of a failed connect's message; the system's reason follows.
pub const CONNECT_FAILED: &str = "unable to start the client socket: ";
/// The start of a failed listen's message; the system's reason follows.
pub const LISTEN_FAILED: &str = "unable to start the socket service: ";
