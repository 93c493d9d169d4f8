//! One connection's driver: `on-connect`, then a delivery each time the
//! connection has something new (queued for the event loop, which calls
//! `on-read-ready`), then `on-close`, exactly once. At most one callback per
//! connection runs at a time; the idle and read time-outs and the stop end it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{Accessor, Resource};

use super::event_loop::{EventLoop, Ready};
use crate::bindings::exports::portcullis::socket::callbacks::Guest as Callbacks;
use crate::component::Unwanted;
use crate::metrics::Limit;
use crate::net::tcp::{EndSeen, Mark, Readiness};
use crate::net::{Connection, TcpConn};
use crate::state::HostState;
use crate::sync::{self, Served};

impl EventLoop<'_> {
    /// Drives one connection from `on-connect` to `on-close`.
    pub(super) async fn drive(
        &self,
        acc: &Accessor<HostState>,
        conn: TcpConn,
        shutdown: &CancellationToken,
    ) -> wasmtime::Result<()> {
        let Some(callbacks) = self.callbacks else {
            conn.close();
            return Ok(());
        };
        self.live.insert(&conn);
        let (id, remote) = (conn.id(), conn.remote_addr());
        tracing::debug!(
            service = %self.component.name,
            connection = id,
            %remote,
            worker = %std::thread::current().name().unwrap_or("main"),
            "connection open"
        );
        let result = self.drive_callbacks(acc, callbacks, &conn, shutdown).await;
        self.live.remove(&conn);
        conn.close();
        match &result {
            Ok(()) => tracing::debug!(service = %self.component.name, connection = id, %remote, "connection closed"),
            // Which connection: the trap itself (with its backtrace) is logged
            // once, when the instance ends (`run`, `serve_alone`).
            Err(_) => self
                .component
                .warnings
                .trapped_connections
                .warn(|| format!("guest trapped in a callback of connection {id} from {remote}")),
        }
        result
    }

    /// The callbacks of one connection, in order: `on-connect`, then a
    /// delivery each time something is new (see `net::tcp::delivery`), then
    /// `on-close`.
    async fn drive_callbacks(
        &self,
        acc: &Accessor<HostState>,
        callbacks: &Callbacks,
        conn: &TcpConn,
        shutdown: &CancellationToken,
    ) -> wasmtime::Result<()> {
        // The dispatcher's own handle; each callback borrows it.
        let handle = acc.with(|mut a| a.get().table.push(Connection::new(conn.clone())))?;
        let borrow = || Resource::<Connection>::new_borrow(handle.rep());

        let counted = &self.component.metrics().callbacks;
        if !self.component.unwanted.on_connect.load(Ordering::Relaxed) {
            counted.inc();
            match callbacks.call_on_connect(acc, borrow()).await? {
                Ok(answer) => Unwanted::note(&self.component.unwanted.on_connect, answer),
                Err(err) => {
                    counted.inc();
                    callbacks.call_on_error(acc, borrow(), err).await?;
                }
            }
        }
        let served = Arc::new(Served::default());
        let mut seen = Mark::default();
        // One wait for the stop per connection, not one per message: each new
        // one registers with the token (a mutex) and unregisters when dropped;
        // and behind a gate, since each poll of it takes two mutexes.
        let mut stop = sync::cancelled(shutdown);
        // One timer per connection, armed once and moved on only when it
        // fires (see `TcpConn::idle_out`).
        let mut idle = std::pin::pin!(tokio::time::sleep(conn.idle_timeout().unwrap_or(Duration::MAX / 4)));
        loop {
            let readiness = tokio::select! {
                r = conn.wait_ready(seen) => r,
                _ = &mut stop => Readiness::Closed,
                _ = conn.idle_out(idle.as_mut()) => {
                    tracing::debug!(service = %self.component.name, connection = conn.id(), remote = %conn.remote_addr(),
                        "closing an idle connection (--idle-timeout-ms)");
                    conn.count_limit(Limit::idle_timeout);
                    Readiness::Closed
                }
            };
            match readiness {
                Readiness::Deliver(now) => seen = now,
                Readiness::Closed => break,
            }
            // Queue for the next `on-read-ready` and wait until the guest is done
            // with this connection (the whole batch need not be).
            served.reset();
            counted.inc();
            self.ready.push(Ready { conn: conn.clone(), handle: handle.rep(), served: served.clone() });
            served.wait().await;
            conn.end_delivery();
            match conn.end_seen().await {
                EndSeen::No => {}
                EndSeen::Failed => break,
                EndSeen::Ended => {
                    // The peer is done sending. The service may still write (a
                    // half-close, as a proxy needs): the connection ends when it
                    // closes or shuts its writing, at stop, or after the idle
                    // or the read time-out, so a service that ignores the end
                    // cannot leak it.
                    // Biased: a service that already closed (the usual case)
                    // never arms the timer; arming one wakes tokio's driver
                    // through its eventfd, a syscall per connection.
                    tokio::select! {
                        biased;
                        _ = conn.write_done() => {}
                        _ = &mut stop => {}
                        _ = conn.idle_out(idle.as_mut()) => {}
                        _ = tokio::time::sleep(conn.read_timeout()) => {}
                    }
                    break;
                }
            }
        }
        conn.close();
        if !self.component.unwanted.on_close.load(Ordering::Relaxed) {
            counted.inc();
            Unwanted::note(&self.component.unwanted.on_close, callbacks.call_on_close(acc, borrow()).await?);
        }
        acc.with(|mut a| a.get().table.delete(handle))?;
        Ok(())
    }
}
