//! Which instance runs a callback, and when.
//!
//! One **shared instance** serves every connection of a service, so module state
//! is shared as in Ballerina. Callbacks of different connections run concurrently
//! inside it (component-model async, `run_concurrent`): each connection has a
//! *driver*, a future that waits for the connection to become ready and queues
//! it; the event loop hands all queued connections to the guest in one call
//! (`on-read-ready`, or `on-read-ready-batch` for several), and each driver waits
//! only for its own connection to be served, so one blocked in a guest `read(n)`
//! never holds up the others.
//! Or, with `--instances per-connection` ([`run_per_connection`]), every accepted
//! connection gets an instance of its own, driven the same way in its own task;
//! one such instance is made ahead, so a new connection does not wait for it.
//!
//! - [`supervise`]: which instance serves a connection ([`run_shared`],
//!   [`run_per_connection`]), and a fresh one after a trap;
//! - `event_loop`: one instance's loop inside `run_concurrent` (drivers,
//!   `on-read-ready` calls, new connections, `main`, the stop);
//! - `driver`: one connection from `on-connect` to `on-close`, one callback
//!   at a time, fired again only when something new happened (see
//!   `net::tcp::delivery`).
//!
//! A trap ends the instance: its connections are closed, the trap is logged with
//! the component and connection, and a fresh instance takes over for new
//! connections, after a pause that grows while instances keep ending quickly
//! ([`restart`]). Dispatch knows nothing about address checks.

mod driver;
mod event_loop;
pub mod restart;
pub mod supervise;

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::net::TcpConn;
use crate::net::listener::Route;

pub use supervise::{Spare, instantiate_once, run_per_connection, run_shared};

/// How long a graceful stop lets running callbacks finish before it closes their
/// connections under them.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// When a dispatcher winds down.
///
/// - `retire`: it takes no new connection, and ends once those it serves
///   are done, closing any still open [`STOP_GRACE`] later. A reload
///   retires the old version of a service this way (its connections finish
///   on it); the process's stop does too.
/// - `shutdown`: the process stops: open connections also close at their
///   next turn, busy callbacks get the grace.
///
/// `retire` is cancelled whenever `shutdown` is.
#[derive(Clone)]
pub struct Stop {
    pub retire: CancellationToken,
    pub shutdown: CancellationToken,
    /// Where a retired dispatcher hands the connections it was sent and
    /// never started on (the listeners' route, switched to the next
    /// version); `None`: they are closed.
    pub handoff: Option<watch::Receiver<Route>>,
}

impl Stop {
    /// A dispatcher's stop under the process's `shutdown`.
    pub fn under(shutdown: &CancellationToken) -> Stop {
        Stop { retire: shutdown.child_token(), shutdown: shutdown.clone(), handoff: None }
    }

    /// Empties `conns`, a retired dispatcher's queue: to the next version
    /// when a reload retired it, closed at the process's stop.
    pub(crate) fn hand_over(&self, conns: &mut mpsc::UnboundedReceiver<TcpConn>) {
        let next = match &self.handoff {
            Some(routes) if !self.shutdown.is_cancelled() => Some(routes.borrow().sink.clone()),
            _ => None,
        };
        while let Ok(conn) = conns.try_recv() {
            match &next {
                Some(sink) => {
                    if let Err(mpsc::error::SendError(conn)) = sink.send(conn) {
                        conn.close();
                    }
                }
                None => conn.close(),
            }
        }
    }
}
