//! Serving one component: bind the operator's listeners, accept, and hand every
//! connection to the dispatcher until shutdown.
//!
//! Shutdown is a parameter (a [`CancellationToken`]): the binary cancels it on
//! SIGINT/SIGTERM, tests cancel it when they are done.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;

use crate::component::ServiceComponent;
use crate::config::{Instances, Listen, ServiceSpec, Transport};
use crate::dispatch;
use crate::engine;
use crate::limits::{self, MemoryBudget};
use crate::metrics::Metrics;
use crate::net::listener::{Route, accept_loop, bind_std};
use crate::pool::Spares;

/// The engines, compile cache and memory budget; load components through
/// it. Instances per connection come from a pooled engine of their own, so
/// that its slots (`--max-instances`) are theirs alone: shared and per-worker
/// instances come from an engine that maps memory on demand.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    /// The pooled engine for `--instances per-connection`, if any.
    pooled: Option<Pooled>,
    cache_dir: Option<std::path::PathBuf>,
    /// `--memory-budget`: what all instances of the process hold together.
    budget: Arc<MemoryBudget>,
    /// The spares made ahead from the pool, by every service and worker.
    spares: Arc<Spares>,
    /// The process's counters, per service (`/metrics`).
    metrics: Arc<Metrics>,
}

/// The pooled engine and how many of its slots are for connections.
#[derive(Clone)]
struct Pooled {
    engine: Engine,
    /// `--max-instances`: the connections the pool serves at once (it has
    /// room for the spares on top).
    slots: u32,
}

impl Runtime {
    /// A runtime with the default cache folder (see [`engine::default_cache_dir`])
    /// and memory budget (half the machine's memory).
    pub fn new() -> Result<Self> {
        Ok(Runtime {
            engine: engine::new_engine()?,
            pooled: None,
            cache_dir: engine::default_cache_dir(),
            budget: MemoryBudget::new(limits::default_memory_budget()),
            spares: Spares::new(usize::MAX, Default::default()),
            metrics: Metrics::new(),
        })
    }

    /// A runtime that can also run instances per connection: a pooled engine
    /// of `max_instances` slots for connections plus `spare_slots` for the
    /// instances made ahead (one per worker per such service), each with
    /// room for `max_memory` bytes of linear memory (see
    /// [`engine::new_pooled_engine`]).
    pub fn pooled(max_instances: u32, spare_slots: u32, max_memory: u64) -> Result<Self> {
        let total = max_instances.saturating_add(spare_slots);
        let pooled = Pooled { engine: engine::new_pooled_engine(total, max_memory)?, slots: max_instances };
        let runtime = Runtime::new()?;
        let spares = Spares::new(max_instances as usize, runtime.metrics.pool_slots_used.clone());
        Ok(Runtime { pooled: Some(pooled), spares, ..runtime })
    }

    /// Uses `dir` for compiled components, or no cache with `None`.
    pub fn with_cache_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    /// Caps what all instances of this runtime hold together at `bytes`
    /// (`--memory-budget`): a growth past it fails in the guest.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.budget = MemoryBudget::new(bytes);
        self
    }

    /// The process's memory budget and what is charged to it now.
    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// The counters of every service this runtime loaded (`/metrics`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads, compiles (or loads from cache) and links `spec`'s component, to
    /// run as `spec` says. With an instance per connection and no
    /// `max_connections`, the pool's size caps the connections (so that a
    /// full pool makes clients wait in the backlog instead of refusing them).
    ///
    /// ```no_run
    /// # fn f() -> anyhow::Result<()> {
    /// let runtime = portcullis::Runtime::new()?;
    /// let loaded = runtime.load(&portcullis::config::ServiceSpec::new("echo.wasm"))?;
    /// # Ok(()) }
    /// ```
    pub fn load(&self, spec: &ServiceSpec) -> Result<Arc<ServiceComponent>> {
        let mut spec = spec.clone();
        let engine = match (spec.instances, &self.pooled) {
            (Instances::PerConnection, Some(pooled)) => {
                if spec.limits.max_connections.is_none() {
                    spec.limits.max_connections = NonZeroUsize::new(pooled.slots as usize);
                }
                &pooled.engine
            }
            (Instances::PerConnection, None) => {
                bail!("{}: `--instances per-connection` needs a pooled runtime (Runtime::pooled)", spec.name)
            }
            _ => &self.engine,
        };
        let (component, sha256) = engine::load_component_hashed(engine, &spec.component, self.cache_dir.as_deref())?;
        let policy = spec.grants.policy()?;
        let (budget, spares, metrics) = (self.budget.clone(), self.spares.clone(), self.metrics.service(&spec.name));
        let mut loaded = ServiceComponent::new(engine, &component, &spec, Arc::new(policy), budget, spares, metrics)?;
        loaded.sha256 = sha256;
        Ok(Arc::new(loaded))
    }
}

/// A bound listener, not yet serving, and what its clients speak.
#[derive(Debug)]
pub struct Listening {
    pub socket: std::net::TcpListener,
    pub transport: Transport,
}

impl Listening {
    /// A plain TCP listener.
    pub fn tcp(socket: std::net::TcpListener) -> Listening {
        Listening { socket, transport: Transport::Tcp }
    }

    /// Another handle to the same socket, for another worker.
    pub fn try_clone(&self) -> std::io::Result<Listening> {
        Ok(Listening { socket: self.socket.try_clone()?, transport: self.transport })
    }
}

/// Binds every address in `addrs`, failing on the first that cannot be bound
/// (`unable to start the socket service: Address already in use`).
///
/// ```no_run
/// let listeners = portcullis::server::bind_all(&["tls://127.0.0.1:8443".parse().unwrap()]).unwrap();
/// ```
pub fn bind_all(addrs: &[Listen]) -> Result<Vec<Listening>> {
    addrs
        .iter()
        .map(|listen| Ok(Listening { socket: bind(listen.addr, false)?, transport: listen.transport }))
        .collect()
}

/// [`bind_std`], its error naming the address.
fn bind(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener> {
    bind_std(addr, reuse_port).map_err(anyhow::Error::from).with_context(|| format!("listen on {addr}"))
}

/// [`bind_all`] `copies` times over, for a service spread over workers: one
/// set of listeners per worker, each address bound `SO_REUSEPORT` by every
/// copy (a port 0 is chosen by the first copy and taken by the others).
///
/// `SO_REUSEPORT` would let these sockets join a group another service or
/// process (of the same user) already listens with, and share its clients:
/// an address in use is refused first, as a plain bind refuses it
/// (`Address already in use`). (A process of the same user started later
/// can still join the group: it could as well signal or trace this one.)
/// Two starting at the same moment could both pass the plain bind before
/// either holds the address: so once bound, the kernel's list of listeners
/// is checked for one that is not ours, and the start fails if it has one.
pub fn bind_spread(addrs: &[Listen], copies: usize) -> Result<Vec<Vec<Listening>>> {
    let mut sets: Vec<Vec<Listening>> = (0..copies.max(1)).map(|_| Vec::new()).collect();
    for &Listen { addr, transport } in addrs {
        if addr.port() != 0 {
            // A plain bind fails on any listener there, a reuse-port group included.
            drop(bind(addr, false)?);
        }
        let first = bind(addr, true)?;
        let bound = first.local_addr().context("reading the bound address")?;
        sets[0].push(Listening { socket: first, transport });
        for set in &mut sets[1..] {
            set.push(Listening { socket: bind(bound, true)?, transport });
        }
        if addr.port() != 0 {
            let ours: Vec<&std::net::TcpListener> =
                sets.iter().filter_map(|set| set.last()).map(|l| &l.socket).collect();
            if others_listen_beside(&ours) {
                bail!("listen on {addr}: Address already in use (another process bound it at the same moment)");
            }
        }
    }
    Ok(sets)
}

/// Whether a listening socket that is none of `ours` shares their local
/// address (`/proc/net/tcp` or `tcp6`: the same address and port, in the
/// listening state); false if that cannot be read.
fn others_listen_beside(ours: &[&std::net::TcpListener]) -> bool {
    use std::os::fd::AsRawFd;
    let inode = |listener: &std::net::TcpListener| {
        // SAFETY: fstat on a descriptor we own, into a zeroed struct.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(listener.as_raw_fd(), &mut stat) } == 0).then_some(stat.st_ino.to_string())
    };
    let inodes: Vec<String> = ours.iter().filter_map(|l| inode(l)).collect();
    let table = match ours.first().and_then(|l| l.local_addr().ok()) {
        Some(SocketAddr::V4(_)) => "/proc/net/tcp",
        Some(SocketAddr::V6(_)) => "/proc/net/tcp6",
        None => return false,
    };
    let Ok(text) = std::fs::read_to_string(table) else { return false };
    // Fields: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    let listening: Vec<(&str, &str)> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 9 && fields[3] == "0A").then(|| (fields[1], fields[9]))
        })
        .collect();
    let Some(local) = listening.iter().find(|(_, inode)| inodes.iter().any(|i| i == inode)).map(|(l, _)| *l) else {
        return false;
    };
    listening.iter().any(|(l, inode)| *l == local && !inodes.iter().any(|i| i == inode))
}

/// Serves `loaded` on `listeners` (already bound) as its [`ServiceSpec`] says,
/// until `shutdown` is cancelled, or, for a program, until its `main` and
/// callback connections are done. Returns the exit code.
pub async fn serve(
    loaded: Arc<ServiceComponent>,
    listeners: Vec<Listening>,
    shutdown: CancellationToken,
) -> Result<i32> {
    let (_unchanging, versions) = watch::channel(loaded);
    serve_versions(versions, listeners, shutdown).await
}

/// [`serve`] of the latest of `versions`: a new version (a reload) takes
/// the listeners over, which stay open throughout. Each connection accepted
/// from then on goes to the new version; the old one is retired (see
/// [`dispatch::Stop`]): the connections it has finish on it, and any still
/// open [`dispatch::STOP_GRACE`] later are closed.
pub async fn serve_versions(
    mut versions: watch::Receiver<Arc<ServiceComponent>>,
    listeners: Vec<Listening>,
    shutdown: CancellationToken,
) -> Result<i32> {
    let loaded = versions.borrow_and_update().clone();
    if !listeners.is_empty() {
        loaded.require_callbacks()?;
    }
    // Taken over by the runtime this runs on (a worker's).
    let listeners = listeners
        .into_iter()
        .map(|l| Ok((TcpListener::from_std(l.socket)?, l.transport)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("taking over a listener")?;
    if listeners.iter().any(|(_, transport)| *transport == Transport::Tls) && loaded.server_tls().is_none() {
        bail!("service `{}`: a tls:// listener, but no tls-cert and tls-key", loaded.name);
    }
    // The listeners' route, made first: every version hands over through it.
    let (unused, _) = mpsc::unbounded_channel();
    let (route, routes) = watch::channel(Route { admission: loaded.admission().clone(), sink: unused, tls: None });
    let (name, metrics) = (loaded.name.clone(), loaded.metrics().clone());
    let mut current = Dispatcher::start(loaded, &shutdown, routes.clone());
    route.send_replace(current.route.clone());
    for (listener, transport) in listeners {
        // Labelled by the address it listens on (the port a 0 became).
        let label = match listener.local_addr() {
            Ok(addr) => Listen { addr, transport }.to_string(),
            Err(_) => "unknown".into(),
        };
        let counted = metrics.listener(&name, &label);
        tokio::spawn(accept_loop(listener, transport, counted, routes.clone(), shutdown.clone(), |_| {}));
    }
    let mut retired = tokio::task::JoinSet::new();
    let mut reloads = true;
    loop {
        tokio::select! {
            ended = &mut current.task => {
                // Retired versions still finish what they serve.
                while retired.join_next().await.is_some() {}
                return ended;
            }
            changed = versions.changed(), if reloads => {
                if changed.is_err() {
                    reloads = false; // no reloads any more
                    continue;
                }
                let next = Dispatcher::start(versions.borrow_and_update().clone(), &shutdown, routes.clone());
                route.send_replace(next.route.clone());
                let Dispatcher { name, stop, task, .. } = std::mem::replace(&mut current, next);
                stop.retire.cancel();
                retired.spawn(async move {
                    if let Err(e) = task.await {
                        tracing::warn!(service = %name, "the version before the reload ended: {e:#}");
                    }
                });
            }
            Some(_) = retired.join_next() => {}
        }
    }
}

/// One version of a service, dispatching: where its connections go, its
/// stop, and the dispatcher itself.
struct Dispatcher {
    name: String,
    route: Route,
    stop: dispatch::Stop,
    task: std::pin::Pin<Box<dyn std::future::Future<Output = Result<i32>> + Send>>,
}

impl Dispatcher {
    /// `handoff`: the listeners' route, where this version hands what it
    /// never started on once a later reload retires it.
    fn start(
        loaded: Arc<ServiceComponent>,
        shutdown: &CancellationToken,
        handoff: watch::Receiver<Route>,
    ) -> Dispatcher {
        let (sink, conns) = mpsc::unbounded_channel();
        let admission = loaded.admission().clone();
        let stop = dispatch::Stop { handoff: Some(handoff), ..dispatch::Stop::under(shutdown) };
        let route = Route { admission: admission.clone(), sink: sink.clone(), tls: loaded.server_tls() };
        let name = loaded.name.clone();
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = Result<i32>> + Send>> = match loaded.instances() {
            // Per worker: each worker runs this with listeners of its own.
            Instances::Shared | Instances::PerWorker => {
                Box::pin(dispatch::run_shared(loaded, conns, sink, admission, stop.clone()))
            }
            Instances::PerConnection => {
                drop(sink);
                Box::pin(dispatch::run_per_connection(loaded, conns, admission, stop.clone()))
            }
        };
        Dispatcher { name, route, stop, task }
    }
}

/// Every connection is a descriptor, and the usual soft limit (1024) would
/// stop a service far below `--max-connections` / `--max-instances`, its
/// accept loop failing with "too many open files". Raises the soft limit to
/// the hard one, as servers (and Go's runtime) do; the hard limit stays the
/// operator's. Returns the soft limit now in force (0 if it cannot be read).
/// `portcullis run` calls it at start; so do the bench and the tests, which
/// hold both ends of thousands of connections.
pub fn raise_open_file_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on this process, with a struct they fill.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        // An unlimited hard limit is not a valid soft one for descriptors: the
        // kernel caps them at `fs.nr_open`, by default 2^20.
        let wanted = limit.rlim_max.min(1 << 20);
        let soft = limit.rlim_cur;
        if soft >= wanted {
            return soft;
        }
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return soft;
        }
        tracing::debug!("open-file limit raised from {soft} to {wanted}");
        wanted
    }
}
