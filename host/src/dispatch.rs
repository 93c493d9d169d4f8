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
//! The `on-read-ready` rules live in `Instance::callbacks_for`: at most one
//! callback per connection at a time, fired again only when something new
//! happened (see `TcpConn::wait_ready`), `on-close` exactly once at the end.
//!
//! A trap ends the instance: its connections are closed, the trap is logged with
//! the component and connection, and a fresh instance takes over for new
//! connections. Dispatch knows nothing about address checks.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use anyhow::{Result, bail};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{
    Accessor, Component, ComponentExportIndex, HasSelf, InstancePre, Linker, Resource, TypedFunc,
};
use wasmtime::{Engine, Store};

use crate::bindings::Service;
use crate::bindings::exports::portcullis::socket::callbacks::{
    CallbackUse, Delivery, Guest as Callbacks, GuestIndices,
};
use crate::coalesce::Coalesced;
use crate::config::{Instances, ServiceSpec};
use crate::guest_output::OutputRate;
use crate::limits::{Limits, MemoryAccount, MemoryBudget, SocketCount};
use crate::net::admission::Admission;
use crate::net::tcp::{EndSeen, ReadMark, Readiness};
use crate::net::{Connection, NetCtx, TcpConn};
use crate::policy::Policy;
use crate::state::{HostState, new_store};
use crate::sync::{self, Served, WakeGate};

/// How long a graceful stop lets running callbacks finish before it closes their
/// connections under them.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// An instance from [`Loaded::instantiate_once`], kept until dropped.
pub struct FreshInstance {
    _standby: Standby,
}

/// What a component offers, worked out once: its pre-linked form, whether it
/// exports callbacks, whether it has a `main`.
pub struct Loaded {
    pub name: String,
    pre: InstancePre<HostState>,
    callbacks: Option<GuestIndices>,
    main: Option<ComponentExportIndex>,
    env: Arc<[(String, String)]>,
    policy: Arc<Policy>,
    instances: Instances,
    limits: Limits,
    /// The process's memory budget, which every instance's account draws on.
    budget: Arc<MemoryBudget>,
    /// Callbacks the guest answered `unwanted` (it does nothing there): not
    /// called again, in any instance of this component.
    unwanted: Unwanted,
    /// Warnings of all this component's instances, coalesced together (with
    /// an instance per connection, a client could otherwise have each new
    /// instance write its first line).
    warnings: Warnings,
    /// The service's connection caps and time-outs, for all its listeners.
    admission: Admission,
}

/// A component's log lines that its instances (or the clients that make
/// them trap) could repeat without end, each coalesced (see `coalesce`).
struct Warnings {
    denials: Arc<Coalesced>,
    udp_refusals: Arc<Coalesced>,
    memory_refusals: Arc<Coalesced>,
    /// An instance ended by a trap (the first with its backtrace).
    traps: Arc<Coalesced>,
    /// Which connection's callback trapped.
    trapped_connections: Arc<Coalesced>,
    /// Connections closed for want of an instance (a full pool).
    unserved: Arc<Coalesced>,
    /// The component's stdout and stderr, under one rate for all its instances.
    output: Arc<OutputRate>,
}

impl Warnings {
    fn new(component: Arc<str>) -> Self {
        let c = || Some(component.clone());
        Warnings {
            denials: Coalesced::new("denials", c()),
            udp_refusals: Coalesced::new("datagrams dropped", c()),
            memory_refusals: Coalesced::new("memory refusals", c()),
            traps: Coalesced::errors("guest traps", c()),
            trapped_connections: Coalesced::errors("connections whose callback trapped", c()),
            unserved: Coalesced::new("connections without an instance", c()),
            output: OutputRate::new(component.clone()),
        }
    }
}

#[derive(Default)]
struct Unwanted {
    on_connect: AtomicBool,
    on_close: AtomicBool,
}

impl Unwanted {
    fn note(flag: &AtomicBool, answer: CallbackUse) {
        if answer == CallbackUse::Unwanted {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// The export name of `wasi:cli/run`: 0.3 (async, what the SDK exports) or 0.2
/// (sync, what std exports for `fn main`; such a main cannot await socket calls).
const RUN_INTERFACE: &str = "wasi:cli/run@";
const CALLBACKS_INTERFACE: &str = "portcullis:socket/callbacks@0.1.0";

impl Loaded {
    /// Links `component` against the portcullis and WASI imports. Fails with a
    /// message naming the missing import when the component wants something
    /// portcullis does not provide.
    pub fn new(
        engine: &Engine,
        component: &Component,
        spec: &ServiceSpec,
        policy: Arc<Policy>,
        budget: Arc<MemoryBudget>,
    ) -> Result<Self> {
        let name = &spec.name;
        let mut linker = Linker::<HostState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::blocking::add_to_linker(&mut linker)?;
        Service::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        crate::net::host::add_bounded_lists(&mut linker)?;
        let pre = linker.instantiate_pre(component).map_err(|e| anyhow::anyhow!("{name} cannot run here: {e}"))?;
        let callbacks = GuestIndices::new(&pre).ok();
        let main =
            component.component_type().exports(engine).find(|(export, _)| export.starts_with(RUN_INTERFACE)).and_then(
                |(export, _)| {
                    let iface = component.get_export_index(None, export)?;
                    component.get_export_index(Some(&iface), "run")
                },
            );
        if main.is_some() && spec.instances == Instances::PerConnection {
            bail!("{name} is a program (it exports wasi:cli/run): `--instances per-connection` is for services");
        }
        Ok(Loaded {
            name: name.to_string(),
            pre,
            callbacks,
            main,
            env: spec.env.clone().into(),
            policy,
            instances: spec.instances,
            limits: spec.limits.clone(),
            budget,
            unwanted: Unwanted::default(),
            warnings: Warnings::new(Arc::from(name.as_str())),
            admission: Admission::new(&spec.limits, Arc::from(name.as_str())),
        })
    }

    /// Creates a fresh store and instance, as a per-connection instance gets,
    /// with its callbacks looked up: what a new instance costs (the bench
    /// measures it). Dropping the result tears it down and frees its pool slot.
    pub async fn instantiate_once(&self) -> Result<FreshInstance> {
        Ok(FreshInstance { _standby: self.standby(self.admission.clone()).await? })
    }

    /// A fresh store and instance for one connection, made before it arrives.
    async fn standby(&self, admission: Admission) -> Result<Standby> {
        let (sink, conns) = mpsc::unbounded_channel();
        let active_listeners = Arc::new(AtomicUsize::new(0));
        let mut store = self.new_store(sink.clone(), active_listeners.clone(), admission);
        let (_instance, callbacks) = self.instantiate(&mut store).await?;
        Ok(Standby { store, callbacks, sink, conns, active_listeners })
    }

    /// A new instance in `store`, with its callbacks looked up.
    async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> Result<(wasmtime::component::Instance, Option<Callbacks>)> {
        let instance = self
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(|e| anyhow::Error::from(e).context(format!("instantiating {}", self.name)))?;
        let callbacks = match &self.callbacks {
            Some(indices) => Some(indices.load(&mut *store, &instance)?),
            None => None,
        };
        Ok((instance, callbacks))
    }

    pub fn has_main(&self) -> bool {
        self.main.is_some()
    }

    /// How the service is instantiated (as its spec said).
    pub fn instances(&self) -> Instances {
        self.instances
    }

    /// The service's bounds (as its spec said; `max_connections` filled in
    /// from the pool for an instance per connection).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What the service's listeners apply to each connection (its caps and
    /// time-outs): one for the service, shared by all its listeners.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// A store for a new instance of this component: its env, its grants,
    /// where its callback connections go, and the service's admission rules
    /// (for the guest's own listeners).
    fn new_store(
        &self,
        sink: mpsc::UnboundedSender<TcpConn>,
        active_listeners: Arc<AtomicUsize>,
        admission: Admission,
    ) -> Store<HostState> {
        let component: Arc<str> = Arc::from(self.name.as_str());
        let memory =
            MemoryAccount::new(self.limits.max_memory, self.budget.clone(), self.warnings.memory_refusals.clone());
        let net = NetCtx {
            new_connections: sink,
            has_callbacks: self.callbacks.is_some(),
            active_listeners,
            policy: self.policy.clone(),
            component,
            admission,
            sockets: SocketCount::new(self.limits.max_sockets),
            limit_logged: AtomicBool::new(false),
            denials: self.warnings.denials.clone(),
            udp_refusals: self.warnings.udp_refusals.clone(),
        };
        new_store(self.pre.engine(), self.env.clone(), self.warnings.output.clone(), net, memory, &self.limits)
    }

    /// Runs the event loop of the instance in `store` (see [`Instance::serve`])
    /// until it ends. Returns how it ended and the connections it was still
    /// driving, for the caller to close after a trap.
    #[allow(clippy::too_many_arguments)]
    async fn serve_instance(
        &self,
        store: &mut Store<HostState>,
        callbacks: Option<&Callbacks>,
        main: Option<MainFunc>,
        conns: &mut mpsc::UnboundedReceiver<TcpConn>,
        active_listeners: &AtomicUsize,
        until_idle: bool,
        shutdown: &CancellationToken,
    ) -> (wasmtime::Result<i32>, Live) {
        let live = Live::default();
        let instance = Instance {
            name: &self.name,
            warnings: &self.warnings,
            callbacks,
            unwanted: &self.unwanted,
            live: &live,
            active_listeners,
            until_idle,
            ready: Mutex::default(),
        };
        let ended = store
            .run_concurrent(async |acc| instance.serve(acc, main, conns, shutdown).await)
            .await
            .and_then(|inner| inner);
        (ended, live)
    }

    /// A service must export the callbacks; the error names what is missing.
    pub fn require_callbacks(&self) -> Result<()> {
        if self.callbacks.is_none() {
            bail!(
                "{} does not export {CALLBACKS_INTERFACE}, so it cannot serve connections \
                 (a Rust service exports it with portcullis_sdk::export_service!)",
                self.name
            );
        }
        Ok(())
    }
}

/// Runs `loaded` until it is done: a program until its `main` returned and its
/// callback connections and listeners are gone, a service until `shutdown`.
/// Connections arrive on `conns`; the guest's own listeners accept under
/// `admission` (the service's connection caps and time-outs). Returns the program's exit code
/// (0 for a service).
pub async fn run(
    loaded: Arc<Loaded>,
    mut conns: mpsc::UnboundedReceiver<TcpConn>,
    sink: mpsc::UnboundedSender<TcpConn>,
    admission: Admission,
    shutdown: CancellationToken,
) -> Result<i32> {
    let active_listeners = Arc::new(AtomicUsize::new(0));
    let mut run_main = loaded.main.is_some();
    loop {
        let mut store = loaded.new_store(sink.clone(), active_listeners.clone(), admission.clone());
        let (instance, callbacks) = loaded.instantiate(&mut store).await?;
        let main = match (&loaded.main, run_main) {
            (Some(index), true) => Some(instance.get_typed_func::<(), (Result<(), ()>,)>(&mut store, index)?),
            _ => None,
        };
        let (ended, live) = loaded
            .serve_instance(&mut store, callbacks.as_ref(), main, &mut conns, &active_listeners, false, &shutdown)
            .await;
        match ended {
            Ok(code) => return Ok(code),
            Err(trap) => {
                if let Some(exit) = trap.downcast_ref::<wasmtime_wasi::I32Exit>()
                    && main.is_some()
                {
                    return Ok(exit.0);
                }
                // A service has no exit status: its `exit` ends only its
                // instance, as a trap does (and is logged as one).
                let closed = live.close_all();
                if main.is_some() {
                    // A program whose main trapped has failed; nothing to restart.
                    tracing::error!(component = %loaded.name, "guest trapped: {trap:#}; closed its {closed} connection(s)");
                    return Ok(1);
                }
                // What happened first: a count line keeps only the first line.
                loaded.warnings.traps.warn(|| {
                    format!("guest trapped (closed its {closed} connection(s), starting a fresh instance): {trap:#}")
                });
                run_main = false;
                if shutdown.is_cancelled() {
                    return Ok(0);
                }
            }
        }
    }
}

/// Runs `loaded` with a fresh instance for every connection that arrives on
/// `conns`, until `shutdown`; then waits for those instances to finish (each
/// stops as a shared instance does: [`STOP_GRACE`], then its connection is
/// closed). A trap ends only the instance of its own connection. Guest
/// listeners accept under `admission`, as in [`run`].
pub async fn run_per_connection(
    loaded: Arc<Loaded>,
    mut conns: mpsc::UnboundedReceiver<TcpConn>,
    admission: Admission,
    shutdown: CancellationToken,
) -> Result<i32> {
    let mut instances = tokio::task::JoinSet::new();
    // One instance is made ahead, in the time between connections, so that the
    // next connection is served at once instead of after its instantiation.
    // Every instance is made here, in this one task, so the spare can never
    // take the last pool slot from a connection that is being set up.
    let mut spare: Option<Standby> = None;
    // After a failed attempt (typically a full pool), try again only once an
    // instance has ended, instead of spinning on a full pool.
    let mut may_prepare = true;
    let mut stop = sync::cancelled(&shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            conn = conns.recv() => match conn {
                Some(conn) => {
                    let standby = match spare.take() {
                        Some(standby) => Ok(standby),
                        None => loaded.standby(admission.clone()).await,
                    };
                    match standby {
                        Ok(standby) => {
                            instances.spawn(serve_alone(loaded.clone(), standby, conn, shutdown.clone()));
                        }
                        Err(e) => {
                            // Typically the instance pool is exhausted: refuse this
                            // connection, keep serving the others.
                            loaded.warnings.unserved.warn(|| {
                                format!("no instance for connection {} from {}: {e:#}", conn.id(), conn.remote_addr())
                            });
                            conn.close();
                        }
                    }
                }
                None => break,
            },
            Some(_) = instances.join_next() => may_prepare = true,
            made = async {
                // Let the connection just handed over (and whatever else is
                // ready) go first: the spare is for the time nothing is.
                tokio::task::yield_now().await;
                loaded.standby(admission.clone()).await
            }, if spare.is_none() && may_prepare => match made {
                Ok(standby) => spare = Some(standby),
                Err(_) => may_prepare = false,
            },
        }
    }
    drop(spare);
    conns.close();
    while let Ok(conn) = conns.try_recv() {
        conn.close();
    }
    while instances.join_next().await.is_some() {}
    Ok(0)
}

/// A fresh instance waiting for its connection (`--instances per-connection`),
/// with the channel its driver loop takes connections from.
struct Standby {
    store: Store<HostState>,
    callbacks: Option<Callbacks>,
    sink: mpsc::UnboundedSender<TcpConn>,
    conns: mpsc::UnboundedReceiver<TcpConn>,
    active_listeners: Arc<AtomicUsize>,
}

/// One connection in an instance of its own, from instantiation to `on-close`
/// (and to the end of any client connection the instance opened meanwhile).
async fn serve_alone(loaded: Arc<Loaded>, standby: Standby, conn: TcpConn, shutdown: CancellationToken) {
    // The connection's place under `--max-connections` is given back after the
    // store (declared later, dropped earlier) has returned its pool slot.
    let _permit = conn.take_permit();
    let Standby { mut store, callbacks, sink, mut conns, active_listeners } = standby;
    let (id, remote) = (conn.id(), conn.remote_addr());
    let _ = sink.send(conn);
    let (ended, live) = loaded
        .serve_instance(&mut store, callbacks.as_ref(), None, &mut conns, &active_listeners, true, &shutdown)
        .await;
    if let Err(trap) = ended {
        let closed = live.close_all();
        loaded.warnings.traps.warn(|| {
            format!(
                "guest trapped (closed the instance of connection {id} from {remote}, {closed} connection(s)): {trap:#}"
            )
        });
    }
}

/// The connections an instance is driving, to close them all at a forced stop
/// or after a trap.
#[derive(Default)]
struct Live(Mutex<HashMap<u64, TcpConn>>);

impl Live {
    fn insert(&self, conn: &TcpConn) {
        self.0.lock().unwrap().insert(conn.id(), conn.clone());
    }
    fn remove(&self, conn: &TcpConn) {
        self.0.lock().unwrap().remove(&conn.id());
    }
    fn close_all(&self) -> usize {
        let conns: Vec<TcpConn> = self.0.lock().unwrap().drain().map(|(_, c)| c).collect();
        conns.iter().for_each(TcpConn::close);
        conns.len()
    }
}

/// One instance's view while it serves.
struct Instance<'a> {
    name: &'a str,
    warnings: &'a Warnings,
    callbacks: Option<&'a Callbacks>,
    unwanted: &'a Unwanted,
    live: &'a Live,
    active_listeners: &'a AtomicUsize,
    /// Done once no connection, listener or queued connection is left (an
    /// instance per connection); otherwise a service runs until shutdown.
    until_idle: bool,
    /// Connections ready for `on-read-ready`; the event loop sends all that are
    /// waiting in one call. Only drivers fill it, and the event loop looks at it
    /// right after polling them, so it needs no waker of its own (and costs no
    /// extra wake-up per message).
    ready: Mutex<Vec<Ready>>,
}

/// A connection waiting for `on-read-ready`.
struct Ready {
    conn: TcpConn,
    /// The dispatcher's own handle to it (the plain call borrows it).
    handle: u32,
    served: Arc<Served>,
}

type MainFunc = TypedFunc<(), (Result<(), ()>,)>;

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
                Ok((table.push(Connection { conn: ready.conn, served: Some(ready.served), charge: None })?, delivery))
            })
            .collect::<Result<Vec<_>, wasmtime::component::ResourceTableError>>()
    })?;
    callbacks.call_on_read_ready_batch(acc, lent).await
}

/// What `on-read-ready` brings along for `conn` (see `TcpConn::deliver`).
fn delivery(conn: &TcpConn) -> Delivery {
    let (data, end) = conn.deliver();
    Delivery { data, end }
}

impl Instance<'_> {
    /// The instance's event loop, inside `run_concurrent`: start a driver per new
    /// connection, run `main` if there is one, and stop when done or told to.
    async fn serve(
        &self,
        acc: &Accessor<HostState>,
        main: Option<MainFunc>,
        conns: &mut mpsc::UnboundedReceiver<TcpConn>,
        shutdown: &CancellationToken,
    ) -> wasmtime::Result<i32> {
        let mut drivers = FuturesUnordered::new();
        // `on-read-ready` calls under way; each is done when all its connections are.
        let mut batches = FuturesUnordered::new();
        let mut main_call = std::pin::pin!(async {
            match main {
                Some(main) => Some(main.call_concurrent(acc, ()).await),
                None => std::future::pending().await,
            }
        });
        let mut main_running = main.is_some();
        let mut exit_code = 0;
        let mut stopping = shutdown.is_cancelled();
        // Whether `force_timer` is running: a stop began (it ends the grace).
        let mut armed = false;
        let mut forced = false;
        // The loop turns at least once per message: the waits that cost work
        // on every poll are polled again only once they woke (see `sync::WakeGate`).
        let mut cancelled = sync::cancelled(shutdown);
        let conns_gate = WakeGate::default();
        // Made once and re-armed at a stop, not made anew on every turn.
        let mut force_timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(3600)));
        let ready_batch = || {
            std::future::poll_fn(|_| {
                let mut ready = self.ready.lock().unwrap();
                // Drained, not taken: the queue keeps its capacity.
                if ready.is_empty() { Poll::Pending } else { Poll::Ready(ready.drain(..).collect::<Vec<_>>()) }
            })
        };
        loop {
            let idle = (main.is_some() || self.until_idle)
                && !main_running
                && self.active_listeners.load(Ordering::SeqCst) == 0
                && conns.is_empty();
            if (idle || stopping) && drivers.is_empty() {
                return Ok(exit_code);
            }
            tokio::select! {
                // In this order: `ready_batch` relies on the drivers having just been polled.
                biased;
                Some(ended) = drivers.next() => ended?,
                batch = ready_batch() => {
                    if let Some(callbacks) = self.callbacks {
                        acc.with(|mut a| a.get().waited());
                        batches.push(call_on_read_ready(acc, callbacks, batch));
                    }
                }
                Some(served) = batches.next() => served?,
                Some(conn) = poll_fn(|cx| conns_gate.poll(cx, |cx| conns.poll_recv(cx))), if !stopping => {
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
                        tracing::warn!(component = %self.name, "callbacks still running after a forced stop; abandoning them");
                        return Ok(exit_code);
                    }
                    let n = self.live.close_all();
                    tracing::warn!(component = %self.name, "{n} connection(s) still busy after {STOP_GRACE:?}; closing them");
                    forced = true;
                    // Within the process's own deadline (grace + 1 s, `cli::STOP_DEADLINE`).
                    force_timer.as_mut().reset(Instant::now() + Duration::from_millis(500));
                }
            }
        }
    }

    /// Drives one connection from `on-connect` to `on-close`.
    async fn drive(
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
        tracing::debug!(component = %self.name, id, %remote, "connection open");
        let result = self.callbacks_for(acc, callbacks, &conn, shutdown).await;
        self.live.remove(&conn);
        conn.close();
        match &result {
            Ok(()) => tracing::debug!(component = %self.name, id, %remote, "connection closed"),
            // Which connection: the trap itself (with its backtrace) is logged
            // once, when the instance ends (`run`, `serve_alone`).
            Err(_) => self
                .warnings
                .trapped_connections
                .warn(|| format!("guest trapped in a callback of connection {id} from {remote}")),
        }
        result
    }

    async fn callbacks_for(
        &self,
        acc: &Accessor<HostState>,
        callbacks: &Callbacks,
        conn: &TcpConn,
        shutdown: &CancellationToken,
    ) -> wasmtime::Result<()> {
        // The dispatcher's own handle; each callback borrows it.
        let handle = acc.with(|mut a| a.get().table.push(Connection::new(conn.clone())))?;
        let borrow = || Resource::<Connection>::new_borrow(handle.rep());

        // A callback starts with its whole CPU bound.
        let start_callback = || acc.with(|mut a| a.get().waited());
        if !self.unwanted.on_connect.load(Ordering::Relaxed) {
            start_callback();
            match callbacks.call_on_connect(acc, borrow()).await? {
                Ok(answer) => Unwanted::note(&self.unwanted.on_connect, answer),
                Err(err) => {
                    start_callback();
                    callbacks.call_on_error(acc, borrow(), err).await?;
                }
            }
        }
        let served = Arc::new(Served::default());
        let mut seen = ReadMark::default();
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
                    tracing::debug!(component = %self.name, id = conn.id(), remote = %conn.remote_addr(),
                        "closing an idle connection (--idle-timeout-ms)");
                    Readiness::Closed
                }
            };
            match readiness {
                Readiness::Ready(now) => seen = now,
                Readiness::Closed => break,
            }
            // Queue for the next `on-read-ready` and wait until the guest is done
            // with this connection (the whole batch need not be).
            served.reset();
            self.ready.lock().unwrap().push(Ready { conn: conn.clone(), handle: handle.rep(), served: served.clone() });
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
        if !self.unwanted.on_close.load(Ordering::Relaxed) {
            start_callback();
            Unwanted::note(&self.unwanted.on_close, callbacks.call_on_close(acc, borrow()).await?);
        }
        acc.with(|mut a| a.get().table.delete(handle))?;
        Ok(())
    }
}
