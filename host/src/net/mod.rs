//! The native backend: WIT socket resources on tokio sockets.
//!
//! - [`tcp`]: one connection's state machine (read-ahead, reads, writes, close).
//! - [`listener`]: binding listeners, for the operator's `--listen` and for guests.
//! - [`udp`]: one UDP socket (datagrams kept whole, dual-stack by default).
//! - [`resolve`]: host-side name resolution with a time-out.
//! - [`host`]: the generated WIT traits, implemented by looking up the resource,
//!   converting, and delegating to `tcp` / `listener`.
//! - [`error`]: the errors a guest sees.
//!
//! Nothing here knows about instances or callbacks: new connections that need
//! callbacks are handed to the dispatcher through [`NetCtx::new_connections`].

pub mod error;
pub mod host;
pub mod listener;
pub mod resolve;
pub mod tcp;
pub mod udp;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

pub use error::SocketError;
pub use listener::GuestListener;
pub use tcp::TcpConn;
pub use udp::UdpClient;

/// Ballerina's default read time-out: 300000 ms.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(300_000);

/// The WIT `connection` resource: one guest handle to a shared [`TcpConn`].
/// Several handles may point to one connection (`clone-handle`).
pub struct Connection {
    pub conn: TcpConn,
    /// Set on the handle lent to `on-read-ready`: dropping the handle (the guest
    /// is done with that callback) drops the sender, which wakes the dispatcher.
    pub served: Option<oneshot::Sender<()>>,
}

impl Connection {
    /// A handle of the guest's own (a client it opened, or a clone).
    pub fn new(conn: TcpConn) -> Self {
        Connection { conn, served: None }
    }
}

/// The networking part of a store: what the socket resources need from outside.
pub struct NetCtx {
    /// Connections whose events go to the guest's callbacks: accepted by a guest
    /// listener, or opened by the guest with `callback: true`.
    pub new_connections: mpsc::UnboundedSender<TcpConn>,
    /// Whether the component exports `callbacks` (a `callback` client or a guest
    /// listener needs them).
    pub has_callbacks: bool,
    /// How many guest listeners accept right now (a program lives while any does).
    pub active_listeners: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The operator's grants: every address a guest asks for is checked here first.
    pub policy: std::sync::Arc<crate::policy::Policy>,
    /// The component's name, for log lines (denials are logged at warn level).
    pub component: std::sync::Arc<str>,
}

impl NetCtx {
    /// Logs a denial (visible with the default log settings) and passes it on.
    pub fn logged(&self, err: SocketError) -> SocketError {
        if err.kind == error::ErrorKind::PermissionDenied {
            tracing::warn!(component = %self.component, "{}", err.message);
        }
        err
    }
}
