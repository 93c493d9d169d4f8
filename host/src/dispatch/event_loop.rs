//! One instance's event loop, inside `run_concurrent`: a driver per
//! connection (see `driver`), the `on-read-ready` calls under way, new
//! connections, a program's `main`, and the stop with its grace period.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wasmtime::component::{Accessor, Resource};

use super::{STOP_GRACE, Stop};
use crate::bindings::exports::portcullis::socket::callbacks::{Delivery, Guest as Callbacks};
use crate::component::{MainFunc, ServiceComponent};
use crate::net::{Connection, TcpConn};
use crate::state::HostState;
use crate::sync::{self, Served, WakeGate};

/// The connections an instance is driving, to close them all at a forced stop
/// or after a trap.
#[derive(Default)]
pub(super) struct Live {
    conns: Mutex<HashMap<u64, TcpConn>>,
    /// Connections the instance was handed, ever.
    served: AtomicUsize,
}

impl Live {
    pub(super) fn insert(&self, conn: &TcpConn) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap().insert(conn.id(), conn.clone());
    }
    pub(super) fn remove(&self, conn: &TcpConn) {
        self.conns.lock().unwrap().remove(&conn.id());
    }
    pub(super) fn close_all(&self) -> usize {
        let conns: Vec<TcpConn> = self.conns.lock().unwrap().drain().map(|(_, c)| c).collect();
        conns.iter().for_each(TcpConn::close);
        conns.len()
    }
    /// Whether the instance was handed any connection.
    pub(super) fn served_any(&self) -> bool {
        self.served.load(Ordering::Relaxed) > 0
    }
}

/// One instance's event loop: its connections' drivers, the `on-read-ready`
/// calls under way, new connections, `main`, and the stop.
pub(super) struct EventLoop<'a> {
    pub(super) component: &'a ServiceComponent,
    pub(super) callbacks: Option<&'a Callbacks>,
    pub(super) live: &'a Live,
    active_listeners: &'a AtomicUsize,
    /// Done once no connection, listener or queued connection is left (an
    /// instance per connection); otherwise a service runs until shutdown.
    until_idle: bool,
    /// Connections ready for `on-read-ready`, queued by their drivers.
    pub(super) ready: ReadyQueue,
}

/// Connections ready for `on-read-ready`: the event loop sends all that are
/// waiting in one call. Only drivers fill it, and only [`next_from_drivers`]
/// polls them and looks at it right after, so it needs no waker of its own
/// (and costs no extra wake-up per message).
#[derive(Default)]
pub(super) struct ReadyQueue(Mutex<Vec<Ready>>);

impl ReadyQueue {
    pub(super) fn push(&self, ready: Ready) {
        self.0.lock().unwrap().push(ready);
    }

    /// Everything queued, if anything (drained, not taken: the queue keeps
    /// its capacity).
    fn take(&self) -> Option<Vec<Ready>> {
        let mut ready = self.0.lock().unwrap();
        if ready.is_empty() { None } else { Some(ready.drain(..).collect()) }
    }
}

/// What polling the drivers brought.
enum FromDrivers {
    /// A driver finished (its connection closed, or a callback trapped).
    Ended(wasmtime::Result<()>),
    /// Connections that became ready together.
    Ready(Vec<Ready>),
}

/// Polls the drivers, then takes what they queued: the one place that fills
/// the ready queue and the one that drains it are polled together, so the
/// queue needs no waker and nothing depends on the order of the event loop's
/// branches.
fn next_from_drivers<'d, F>(
    drivers: &'d mut FuturesUnordered<F>,
    ready: &'d ReadyQueue,
) -> impl Future<Output = FromDrivers> + 'd
where
    F: Future<Output = wasmtime::Result<()>>,
{
    poll_fn(move |cx| {
        if let Poll::Ready(Some(ended)) = drivers.poll_next_unpin(cx) {
            return Poll::Ready(FromDrivers::Ended(ended));
        }
        match ready.take() {
            Some(batch) => Poll::Ready(FromDrivers::Ready(batch)),
            None => Poll::Pending,
        }
    })
}

/// A connection waiting for `on-read-ready`.
pub(super) struct Ready {
    pub(super) conn: TcpConn,
    /// The dispatcher's own handle to it (the plain call borrows it).
    pub(super) handle: u32,
    pub(super) served: Arc<Served>,
}

/// Fires `on-read-ready` for the connections in `batch`: the plain export for a
/// lone connection (it borrows the dispatcher's handle: no handle to create, no
/// list to lower, no drop call from the guest), the batch export for several,
/// each with a handle of its own that the guest drops when done with it.
async fn call_on_read_ready(
    acc: &Accessor<HostState>,
    callbacks: &Callbacks,
    batch: Vec<Ready>,
) -> wasmtime::Result<()> {
    if let [one] = &batch[..] {
        let result = callbacks.call_on_read_ready(acc, Resource::new_borrow(one.handle), delivery(&one.conn)).await;
        one.served.finish();
        return result;
    }
    tracing::trace!(connections = batch.len(), "on-read-ready-batch");
    let lent = acc.with(|mut a| {
        let table = &mut a.get().table;
        batch
            .into_iter()
            .map(|ready| {
                let delivery = delivery(&ready.conn);
                Ok((table.push(Connection { conn: ready.conn, served: Some(ready.served), _charge: None })?, delivery))
            })
            .collect::<Result<Vec<_>, wasmtime::component::ResourceTableError>>()
    })?;
    callbacks.call_on_read_ready_batch(acc, lent).await
}

/// The bytes a shared instance is handed at once, in deliveries whose
/// callbacks have not returned: this share of its `--max-memory` (at least
/// one full read-ahead). Connections ready past it wait, their bytes in the
/// host's read-ahead (TCP holds the rest back), until earlier callbacks
/// return: no number of clients sending at once makes a service trap on
/// what it was handed.
pub(crate) const DELIVERY_BUDGET_SHARE: u64 = 4;

/// Connections ready for `on-read-ready` that wait for room in the
/// instance's delivery budget (see [`DELIVERY_BUDGET_SHARE`]).
struct Deliveries {
    waiting: std::collections::VecDeque<Ready>,
    in_guest: usize,
    budget: usize,
}

impl Deliveries {
    fn new(max_memory: u64) -> Self {
        let budget = (max_memory / DELIVERY_BUDGET_SHARE).max(crate::limits::MAX_IO as u64);
        Deliveries { waiting: Default::default(), in_guest: 0, budget: usize::try_from(budget).unwrap_or(usize::MAX) }
    }

    /// The next batch that fits in what is left of the budget (at least one
    /// connection when nothing is in the guest), and its bytes.
    fn next_batch(&mut self) -> Option<(Vec<Ready>, usize)> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.waiting.front() {
            let size = next.conn.buffered();
            let fits = self.in_guest + bytes + size <= self.budget;
            if !(fits || batch.is_empty() && self.in_guest == 0) {
                break;
            }
            bytes += size;
            batch.push(self.waiting.pop_front().expect("looked at"));
        }
        if batch.is_empty() {
            return None;
        }
        self.in_guest += bytes;
        Some((batch, bytes))
    }
}

/// What `on-read-ready` brings along for `conn` (see `TcpConn::deliver`).
fn delivery(conn: &TcpConn) -> Delivery {
    let (data, end) = conn.deliver();
    Delivery { data, end, id: conn.id() }
}

impl<'a> EventLoop<'a> {
    pub(super) fn new(
        component: &'a ServiceComponent,
        callbacks: Option<&'a Callbacks>,
        live: &'a Live,
        active_listeners: &'a AtomicUsize,
        until_idle: bool,
    ) -> Self {
        EventLoop { component, callbacks, live, active_listeners, until_idle, ready: ReadyQueue::default() }
    }

    /// The instance's event loop, inside `run_concurrent`: start a driver per new
    /// connection, run `main` if there is one, and stop when done or told to.
    pub(super) async fn run(
        &self,
        acc: &Accessor<HostState>,
        main: Option<MainFunc>,
        conns: &mut mpsc::UnboundedReceiver<TcpConn>,
        stop: &Stop,
    ) -> wasmtime::Result<i32> {
        let shutdown = &stop.shutdown;
        let mut drivers = FuturesUnordered::new();
        // `on-read-ready` calls under way; each is done when all its
        // connections are, and gives back its bytes of the delivery budget.
        let mut batches = FuturesUnordered::new();
        let mut deliveries = Deliveries::new(self.component.limits().max_memory);
        let mut main_call = std::pin::pin!(async {
            match main {
                Some(main) => Some(main.call_concurrent(acc, ()).await),
                None => std::future::pending().await,
            }
        });
        let mut main_running = main.is_some();
        let mut exit_code = 0;
        let mut stopping = stop.retire.is_cancelled();
        // Whether `force_timer` is running: a stop began (it ends the grace).
        let mut armed = false;
        let mut forced = false;
        // The loop turns at least once per message: the waits that cost work
        // on every poll are polled again only once they woke (see `sync::WakeGate`).
        let mut cancelled = sync::cancelled(&stop.retire);
        let conns_gate = WakeGate::default();
        // Made once and re-armed at a stop, not made anew on every turn.
        let mut force_timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
        loop {
            let idle = (main.is_some() || self.until_idle)
                && !main_running
                && self.active_listeners.load(Ordering::SeqCst) == 0
                && conns.is_empty();
            // Retired (not stopped): connections handed over before the
            // reload switched listeners are still served.
            let draining = stopping && !shutdown.is_cancelled();
            if (idle || stopping) && drivers.is_empty() && (!draining || conns.is_empty()) {
                return Ok(exit_code);
            }
            if let Some(callbacks) = self.callbacks {
                while let Some((batch, bytes)) = deliveries.next_batch() {
                    batches.push(async move { (call_on_read_ready(acc, callbacks, batch).await, bytes) });
                }
            }
            tokio::select! {
                biased;
                from_drivers = next_from_drivers(&mut drivers, &self.ready) => match from_drivers {
                    FromDrivers::Ended(ended) => ended?,
                    FromDrivers::Ready(batch) => {
                        if self.callbacks.is_some() {
                            deliveries.waiting.extend(batch);
                        }
                    }
                },
                Some((served, bytes)) = batches.next() => {
                    deliveries.in_guest -= bytes;
                    served?;
                }
                Some(conn) = poll_fn(|cx| conns_gate.poll(cx, |cx| conns.poll_recv(cx))), if !stopping || draining => {
                    drivers.push(self.drive(acc, conn, shutdown));
                }
                result = &mut main_call, if main_running => {
                    main_running = false;
                    if let Some(result) = result {
                        let (status,) = result?;
                        exit_code = if status.is_ok() { 0 } else { 1 };
                    }
                }
                _ = &mut cancelled, if !stopping => {
                    stopping = true;
                    force_timer.as_mut().reset(Instant::now() + STOP_GRACE);
                    armed = true;
                }
                _ = &mut force_timer, if armed => {
                    if forced {
                        tracing::warn!(service = %self.component.name, "callbacks still running after a forced stop; abandoning them");
                        return Ok(exit_code);
                    }
                    let n = self.live.close_all();
                    tracing::warn!(service = %self.component.name, "{n} connection(s) still open after {STOP_GRACE:?}; closing them");
                    forced = true;
                    // Within the process's own deadline (grace + 1 s, `cli::STOP_DEADLINE`).
                    force_timer.as_mut().reset(Instant::now() + Duration::from_millis(500));
                }
            }
        }
    }
}
