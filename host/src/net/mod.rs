//! The native backend: WIT socket resources on tokio sockets.
//!
//! - [`tcp`]: one connection's state machine (read-ahead, reads, writes, close).
//! - [`listener`]: binding listeners, for the operator's `--listen` and for guests.
//! - [`tls`]: TLS with rustls: `tls://` listeners' handshakes, guests'
//!   TLS clients, what a guest may learn of a connection's TLS.
//! - [`udp`]: one UDP socket (datagrams kept whole, dual-stack by default).
//! - [`view`]: what the glue sees of a store ([`view::NetView`]), and the
//!   trait a store's state implements to provide it.
//! - [`host`]: the generated WIT traits, implemented by looking up the resource,
//!   converting, and delegating to `tcp` / `listener`.
//! - [`error`]: the errors a guest sees.
//!
//! Nothing here knows about instances or callbacks: new connections that need
//! callbacks are handed to the dispatcher through [`NetCtx::new_connections`].

pub mod admission;
pub mod error;
pub mod host;
pub mod listener;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod view;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use self::admission::Admission;
use crate::coalesce::Coalesced;
use crate::limits::{HostCharge, SocketCount};
use crate::metrics::{Limit, Operation, ServiceMetrics};
use crate::policy::{Policy, PolicyError, Use};
use crate::sync::Served;

pub use error::SocketError;
pub use listener::GuestListener;
pub use tcp::TcpConn;
pub use udp::UdpClient;

/// The WIT `connection` resource: one guest handle to a shared [`TcpConn`].
/// Several handles may point to one connection (`clone-handle`).
pub struct Connection {
    pub conn: TcpConn,
    /// Set on a handle lent to `on-read-ready-batch`: when the guest drops the
    /// handle (it is done with that connection), the dispatcher hears of it.
    pub served: Option<Arc<Served>>,
    /// For a handle the guest made (`clone-handle`): the table entry's charge,
    /// held until the handle is dropped.
    pub _charge: Option<HostCharge>,
}

impl Connection {
    /// A handle of the guest's own (a client it opened, or a clone).
    pub fn new(conn: TcpConn) -> Self {
        Connection { conn, served: None, _charge: None }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(served) = &self.served {
            served.finish();
        }
    }
}

/// The metrics' name of a use a grant refused.
pub fn operation_of(use_: Use) -> Operation {
    match use_ {
        Use::TcpConnect => Operation::connect,
        Use::TcpListen => Operation::listen,
        Use::UdpBind | Use::UdpSend | Use::UdpReceive => Operation::udp,
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
    pub active_listeners: Arc<AtomicUsize>,
    /// The operator's grants: every address a guest asks for is checked here first.
    pub policy: Arc<Policy>,
    /// The component's name, for log lines (denials are logged at warn level).
    pub component: Arc<str>,
    /// The service's connection caps and time-outs: what the guest's own
    /// listeners accept is under them too, and its client connections take
    /// the write time-out.
    pub admission: Admission,
    /// The sockets this instance holds open, under `--max-sockets`.
    pub sockets: Arc<SocketCount>,
    /// Whether a refusal at a socket limit was logged for this instance (one
    /// line per instance, not one per attempt: a guest may retry in a loop).
    pub limit_logged: AtomicBool,
    /// Denials this instance provoked, for the log (coalesced: a guest
    /// asking in a loop writes a line a second).
    pub denials: Arc<Coalesced>,
    /// Datagrams dropped because their sender is not granted, for the log.
    pub udp_refusals: Arc<Coalesced>,
    /// The service's counters (denials, socket refusals).
    pub metrics: Arc<ServiceMetrics>,
    /// The roots the guest's TLS client connections are verified against.
    pub client_tls: Arc<tls::ClientTls>,
}

impl NetCtx {
    /// The guest's error for `err`; a denial is counted under its use and
    /// logged (at warn, visible with the default log settings; coalesced
    /// per instance).
    pub fn logged(&self, err: PolicyError) -> SocketError {
        if let PolicyError::Denied { use_, message } = &err {
            self.metrics.denied(operation_of(*use_));
            self.denials.warn(|| message.clone());
        }
        err.into()
    }

    /// A refusal at a socket limit, as the guest gets it; logged at warn the
    /// first time for this instance.
    pub fn limited(&self, message: String) -> SocketError {
        self.metrics.limit_hit(Limit::sockets);
        if !self.limit_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(service = %self.component, "{message} (further refusals of this instance are not logged)");
        }
        SocketError::generic(message)
    }
}
