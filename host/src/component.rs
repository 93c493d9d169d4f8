//! A service's component, worked out once: linked against what portcullis
//! provides, its exports looked up (`callbacks`, `main`), with its spec (env,
//! grants, limits) and what all its instances share. Making instances and
//! their stores is here; when to make them, and what runs in them, is
//! `dispatch`'s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Result, bail};
use portcullis_protocol::environment::{self, ServiceEnv};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, Linker, TypedFunc};
use wasmtime::{Engine, Store};

use crate::bindings::exports::portcullis::socket::callbacks::{CallbackUse, Guest as Callbacks, GuestIndices};
use crate::coalesce::Coalesced;
use crate::config::{Instances, ServiceSpec, Transport};
use crate::guest_output::OutputRate;
use crate::limits::{Limits, MemoryAccount, MemoryBudget, SocketCount};
use crate::metrics::{Limit, ServiceMetrics};
use crate::net::admission::Admission;
use crate::net::tls::{ClientTls, ServerTls};
use crate::net::{NetCtx, TcpConn};
use crate::policy::Policy;
use crate::pool::Spares;
use crate::state::{HostState, new_store};
use crate::wasi_sockets::WasiSockets;

/// A program's `main`: `wasi:cli/run`'s `run`.
pub(crate) type MainFunc = TypedFunc<(), (Result<(), ()>,)>;

/// What a component offers, worked out once: its pre-linked form, whether it
/// exports callbacks, whether it has a `main`; with its service's spec (env,
/// grants, limits) and what all its instances share (answers of `unwanted`,
/// coalesced warnings, the service's admission).
pub struct ServiceComponent {
    pub name: String,
    /// The SHA-256 (hex) of the component file's bytes it was made from.
    pub sha256: String,
    backend: Backend,
    /// Standard `wasi:sockets` under the policy, for the WASI backend.
    wasi_sockets: Option<Arc<WasiSockets>>,
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
    pub(crate) unwanted: Unwanted,
    /// Warnings of all this component's instances, coalesced together (with
    /// an instance per connection, a client could otherwise have each new
    /// instance write its first line).
    pub(crate) warnings: Warnings,
    /// The service's connection caps and time-outs, for all its listeners.
    admission: Admission,
    /// The certificate its `tls://` listeners serve (`None`: it has none).
    server_tls: Option<Arc<ServerTls>>,
    /// The roots its guests' TLS client connections are verified against.
    client_tls: Arc<ClientTls>,
    /// The spares of the instance pool this component's instances come from.
    spares: Arc<Spares>,
    /// The service's counters (`/metrics`).
    metrics: Arc<ServiceMetrics>,
}

/// A component's log lines that its instances (or the clients that make
/// them trap) could repeat without end, each coalesced (see `coalesce`).
pub(crate) struct Warnings {
    pub(crate) denials: Arc<Coalesced>,
    pub(crate) udp_refusals: Arc<Coalesced>,
    pub(crate) memory_refusals: Arc<Coalesced>,
    /// An instance ended: a trap (the first with its backtrace), an exit,
    /// a failed start.
    pub(crate) traps: Arc<Coalesced>,
    /// Which connection's callback trapped.
    pub(crate) trapped_connections: Arc<Coalesced>,
    /// Connections closed for want of an instance (a full pool).
    pub(crate) unserved: Arc<Coalesced>,
    /// The component's stdout and stderr, under one rate for all its instances.
    pub(crate) output: Arc<OutputRate>,
}

impl Warnings {
    fn new(component: Arc<str>, metrics: &ServiceMetrics) -> Self {
        let c = || Some(component.clone());
        Warnings {
            denials: Coalesced::new("denials", c()),
            udp_refusals: Coalesced::new("datagrams dropped", c()),
            memory_refusals: Coalesced::counted("memory refusals", c(), metrics.limit_counter(Limit::memory)),
            traps: Coalesced::errors("instances ended", c()),
            trapped_connections: Coalesced::errors("connections whose callback trapped", c()),
            unserved: Coalesced::new("connections without an instance", c()),
            output: OutputRate::new(component.clone()),
        }
    }
}

/// Callbacks the guest answered `unwanted` (it does nothing there).
#[derive(Default)]
pub(crate) struct Unwanted {
    pub(crate) on_connect: AtomicBool,
    pub(crate) on_close: AtomicBool,
}

impl Unwanted {
    pub(crate) fn note(flag: &AtomicBool, answer: CallbackUse) {
        if answer == CallbackUse::Unwanted {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Which sockets a component programs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `portcullis:socket`: the host listens, reads ahead and calls back.
    Portcullis,
    /// Standard `wasi:sockets` (the SDK's WASI backend): the guest listens
    /// where `PORTCULLIS_LISTEN` says, under the policy.
    Wasi,
}

impl Backend {
    /// A component that imports `wasi:sockets` and not `portcullis:socket` is
    /// a WASI one. One that imports `portcullis:socket` keeps WASI without a
    /// network, even if it also imports `wasi:sockets` (Rust's `std::net`
    /// does): its sockets are the host's, under every bound.
    pub fn of(engine: &Engine, component: &Component) -> Backend {
        let imports =
            |prefix: &str| component.component_type().imports(engine).any(|(name, _)| name.starts_with(prefix));
        if imports("wasi:sockets/") && !imports("portcullis:socket/") { Backend::Wasi } else { Backend::Portcullis }
    }
}

/// What a WASI-backend service is told through its environment (replacing
/// any `--env` of the same name): where to listen, if `--listen` says, and
/// the connection limits the host applies to its own connections
/// (`--max-connections` by default half of `--max-sockets`, so that each
/// connection may hold one socket more), and its CPU bound (the SDK paces its
/// turns by it).
fn wasi_env(spec: &ServiceSpec) -> Vec<(&'static str, String)> {
    let limits = &spec.limits;
    ServiceEnv {
        listen: spec.listen_addrs(),
        read_timeout: limits.read_timeout,
        max_connections: Some(limits.max_connections.map_or(limits.max_sockets as u64 / 2, |n| n.get() as u64)),
        max_connections_per_ip: limits.max_connections_per_ip.map(|n| n.get() as u64),
        idle_timeout: limits.idle_timeout,
        write_timeout: limits.write_timeout,
        callback_cpu: Some(limits.callback_cpu),
    }
    .to_vars()
}

/// Every capability a component may import, each through its own
/// `add_to_linker`: WASI p2 and p3 (stdio, env, clocks, random; sockets only
/// for a WASI-backend component, under the policy: see `wasi_sockets`), the
/// blocking WASI calls under the CPU bound, and the portcullis sockets.
fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi::p3::add_to_linker(linker)?;
    crate::blocking::add_to_linker(linker)?;
    crate::wasi_sockets::add_to_linker(linker)?;
    crate::net::host::add_to_linker(linker)
}

/// The export name of `wasi:cli/run`: 0.3 (async, what the SDK exports) or 0.2
/// (sync, what std exports for `fn main`; such a main cannot await socket calls).
const RUN_INTERFACE: &str = "wasi:cli/run@";
const CALLBACKS_INTERFACE: &str = "portcullis:socket/callbacks@0.1.0";

/// The version of a `wasi:cli/run@X.Y.Z` export, as numbers to compare
/// (`0.3.0` after `0.2.12`); text that is no version sorts first.
fn run_version(export: &str) -> Vec<u64> {
    let version = export.strip_prefix(RUN_INTERFACE).unwrap_or("");
    version.split(['.', '-']).map(|part| part.parse().unwrap_or(0)).collect()
}

impl ServiceComponent {
    /// Links `component` against the portcullis and WASI imports. Fails with a
    /// message naming the missing import when the component wants something
    /// portcullis does not provide.
    pub(crate) fn new(
        engine: &Engine,
        component: &Component,
        spec: &ServiceSpec,
        policy: Arc<Policy>,
        budget: Arc<MemoryBudget>,
        spares: Arc<Spares>,
        metrics: Arc<ServiceMetrics>,
    ) -> Result<Self> {
        let name = &spec.name;
        let mut linker = Linker::<HostState>::new(engine);
        link(&mut linker)?;
        let pre = linker.instantiate_pre(component).map_err(|e| anyhow::anyhow!("{name} cannot run here: {e}"))?;
        let callbacks = GuestIndices::new(&pre).ok();
        // A component may export both 0.2's and 0.3's `run`: the newest runs
        // (as `wasmtime run` does), never one at random.
        let main = component
            .component_type()
            .exports(engine)
            .filter(|(export, _)| export.starts_with(RUN_INTERFACE))
            .max_by(|(a, _), (b, _)| run_version(a).cmp(&run_version(b)))
            .and_then(|(export, _)| {
                let iface = component.get_export_index(None, export)?;
                component.get_export_index(Some(&iface), "run")
            });
        let backend = Backend::of(engine, component);
        if main.is_some() && spec.instances != Instances::Shared {
            let mode = spec.instances.flag();
            match backend {
                Backend::Wasi => bail!(
                    "{name} is a WASI-backend component (it binds its own listeners, in one instance): it runs \
                     with `--instances shared` only, not `{mode}`"
                ),
                Backend::Portcullis => bail!(
                    "{name} is a program (it exports wasi:cli/run): `--instances {mode}` is for services, which \
                     export the callbacks"
                ),
            }
        }
        let serves_tls = spec.listen.iter().any(|l| l.transport == Transport::Tls);
        if serves_tls && backend == Backend::Wasi {
            bail!(
                "{name} is a WASI-backend component (it binds its own listeners with wasi:sockets): the host \
                 terminates TLS only for the portcullis backend; build it without the SDK's `wasi` feature, or \
                 listen on plain TCP"
            );
        }
        // Read now (and at every reload): a bad file stops the start.
        // Each error names its file (a reload adds the service's name).
        let server_tls = match serves_tls {
            true => Some(Arc::new(ServerTls::new(&spec.tls)?)),
            false => None,
        };
        let client_tls = Arc::new(ClientTls::new(spec.tls.ca.as_deref())?);
        let warnings = Warnings::new(Arc::from(name.as_str()), &metrics);
        let mut env = spec.env.clone();
        let wasi_sockets = match backend {
            Backend::Portcullis => None,
            Backend::Wasi => {
                let limits = &spec.limits;
                if let Some(max) = limits.max_connections.filter(|n| n.get() > limits.max_sockets as usize / 2) {
                    // Each connection holds a socket and its streams in the
                    // instance's table, which --max-sockets sizes.
                    tracing::warn!(
                        "service `{}`: --max-connections {max} is more than half of --max-sockets {}: a WASI \
                         service's instance traps (and closes every connection) when its connections fill its \
                         socket table; raise --max-sockets",
                        spec.name,
                        limits.max_sockets
                    );
                }
                let told = wasi_env(spec);
                env.retain(|(k, _)| !told.iter().any(|(var, _)| k == var));
                env.extend(told.into_iter().map(|(var, value)| (var.to_string(), value)));
                Some(WasiSockets::new(
                    policy.clone(),
                    spec.listen_addrs(),
                    warnings.denials.clone(),
                    warnings.udp_refusals.clone(),
                    metrics.clone(),
                ))
            }
        };
        Ok(ServiceComponent {
            name: name.to_string(),
            sha256: String::new(),
            backend,
            wasi_sockets,
            pre,
            callbacks,
            main,
            env: env.into(),
            policy,
            instances: spec.instances,
            limits: spec.limits.clone(),
            budget,
            unwanted: Unwanted::default(),
            warnings,
            admission: Admission::new(&spec.limits, Arc::from(name.as_str()), metrics.clone()),
            server_tls,
            client_tls,
            spares,
            metrics,
        })
    }

    /// The spares of the instance pool (see [`crate::pool`]).
    pub(crate) fn spares(&self) -> &Arc<Spares> {
        &self.spares
    }

    /// The service's counters (`/metrics`).
    pub fn metrics(&self) -> &Arc<ServiceMetrics> {
        &self.metrics
    }

    /// A new instance in `store`, with its callbacks looked up.
    pub(crate) async fn instantiate(&self, store: &mut Store<HostState>) -> Result<(Instance, Option<Callbacks>)> {
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

    /// Which sockets the component programs against.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A WASI-backend component told where to listen (`--listen`): a service.
    pub fn serves_listen(&self) -> bool {
        self.env.iter().any(|(k, _)| k == environment::LISTEN)
    }

    /// Connections a WASI-backend component's own listeners accepted so far
    /// (0 for a portcullis one, whose connections the host hands over).
    pub(crate) fn wasi_accepted(&self) -> u64 {
        self.wasi_sockets.as_ref().map_or(0, |s| s.accepted())
    }

    /// Whether a WASI-backend component's instances have ever listened.
    pub(crate) fn wasi_listened(&self) -> bool {
        self.wasi_sockets.as_ref().is_some_and(|s| s.listened())
    }

    pub fn has_main(&self) -> bool {
        self.main.is_some()
    }

    /// The instance's `main` (`wasi:cli/run`), for a program.
    pub(crate) fn main(&self, store: &mut Store<HostState>, instance: &Instance) -> Result<Option<MainFunc>> {
        match &self.main {
            Some(index) => Ok(Some(instance.get_typed_func::<(), (Result<(), ()>,)>(store, index)?)),
            None => Ok(None),
        }
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

    /// What its `tls://` listeners serve; `None` when it has none.
    pub fn server_tls(&self) -> Option<Arc<ServerTls>> {
        self.server_tls.clone()
    }

    /// A store for a new instance of this component: its env, its grants,
    /// where its callback connections go, and the service's admission rules
    /// (for the guest's own listeners). `forced_stop` is cancelled when a
    /// stop's grace period is over (see `blocking`).
    pub(crate) fn new_store(
        &self,
        sink: mpsc::UnboundedSender<TcpConn>,
        active_listeners: Arc<AtomicUsize>,
        admission: Admission,
        forced_stop: CancellationToken,
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
            metrics: self.metrics.clone(),
            client_tls: self.client_tls.clone(),
        };
        // Told where its first instance listened, so a restart keeps the address.
        // (Only what `--listen` set: a PORTCULLIS_LISTEN of `--env` is the operator's.)
        let listen = self.wasi_sockets.as_ref().map(|s| s.listen_addresses()).unwrap_or_default();
        let env = match listen.is_empty() {
            false => {
                let listen = environment::listen_value(&listen);
                self.env
                    .iter()
                    .map(|(k, v)| (k.clone(), if k == environment::LISTEN { listen.clone() } else { v.clone() }))
                    .collect()
            }
            true => self.env.clone(),
        };
        let state = HostState::new(
            env,
            self.warnings.output.clone(),
            net,
            self.wasi_sockets.clone(),
            memory,
            &self.limits,
            forced_stop,
        );
        new_store(self.pre.engine(), state, &self.limits)
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
