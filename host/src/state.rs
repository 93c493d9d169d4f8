//! What one store holds: the resource table, the WASI context, the networking
//! context and the instance's limits. One store (and so one `HostState`) per
//! instance.
//!
//! The store also keeps a guest from hogging its thread: the engine's epoch
//! ticks every [`crate::engine::EPOCH_TICK`]; a guest that has run a whole
//! tick of CPU time yields to tokio (which polls sockets and timers before it
//! resumes the guest, so other services go on), and its CPU time counts
//! against [`Limits::callback_cpu`] (`limits::CpuUse`, the thread's CPU
//! clock). Only a true wait resets the count: the start of a callback, or a
//! host or WASI call that suspended the guest (a blocking `poll` or `sleep`
//! included: see `blocking`). A host call that completes at once
//! (`try-write`, an empty `write`, `id`) does not, so no loop of cheap calls
//! escapes the bound. Past the bound the instance traps (and is replaced, as
//! for any trap).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use wasmtime::component::ResourceTable;
use wasmtime::{CallHook, Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::guest_output::{GuestOutput, OutputRate};
use crate::limits::{AtEpoch, CpuUse, InstanceLimiter, Limits, MemoryAccount};
use crate::metrics::LiveInstance;
use crate::net::NetCtx;
use crate::net::view::{NetHost, NetView};
use crate::wasi_sockets::WasiSockets;

pub struct HostState {
    /// Every resource the guest holds a handle to (connections, listeners, WASI streams).
    pub table: ResourceTable,
    /// WASI for what Rust's std needs (stdio, env, clocks, random), made at the
    /// guest's first WASI call (see [`wasi_ctx`]).
    wasi: Option<WasiCtx>,
    /// The environment the guest sees (`--env`, the manifest's `env`).
    env: Arc<[(String, String)]>,
    /// The component's stdout and stderr rate, for the WASI context.
    output: Arc<OutputRate>,
    pub net: NetCtx,
    /// Standard `wasi:sockets` under the policy, for a component that
    /// imports them; `None`: its WASI context has no network.
    pub wasi_sockets: Option<Arc<WasiSockets>>,
    /// The instance's memories and tables, charged to its memory account.
    limiter: InstanceLimiter,
    /// CPU time the guest has run since it last truly waited.
    pub cpu: CpuUse,
    /// Cancelled when a stop's grace period is over: a guest still waiting
    /// in a blocking WASI call then ends (see `blocking`).
    pub forced_stop: CancellationToken,
    /// This instance in `instances_live`, until the store goes.
    _live: LiveInstance,
}

impl HostState {
    pub fn new(
        env: Arc<[(String, String)]>,
        output: Arc<OutputRate>,
        net: NetCtx,
        wasi_sockets: Option<Arc<WasiSockets>>,
        memory: Arc<MemoryAccount>,
        limits: &Limits,
        forced_stop: CancellationToken,
    ) -> Self {
        let live = net.metrics.instance_made();
        let cpu = CpuUse::new(limits.callback_cpu, net.metrics.guest_cpu_seconds.clone());
        HostState {
            table: ResourceTable::new(),
            wasi: None,
            env,
            output,
            net,
            wasi_sockets,
            limiter: InstanceLimiter::new(memory),
            cpu,
            forced_stop,
            _live: live,
        }
    }

    /// Whether this instance was refused memory (a trap then is memory's).
    pub fn memory_refused(&self) -> bool {
        self.limiter.account().was_refused()
    }

    /// Whether the process's memory budget refused this instance something.
    pub fn budget_refused(&self) -> bool {
        self.limiter.account().budget_refused()
    }

    /// A blocking WASI call truly waited (see `limits::cpu`).
    pub fn waited(&mut self) {
        self.cpu.wait_ended();
    }
}

impl crate::blocking::BlockingHost for HostState {
    fn forced_stop(&self) -> &CancellationToken {
        &self.forced_stop
    }

    fn waited(&mut self) {
        HostState::waited(self)
    }
}

impl crate::wasi_sockets::WasiSocketsHost for HostState {
    fn standard_sockets(&self) -> Option<&Arc<WasiSockets>> {
        self.wasi_sockets.as_ref()
    }

    fn accept_failures(&self) -> &Arc<crate::coalesce::Coalesced> {
        &self.net.admission.accept_failures
    }
}

impl NetHost for HostState {
    fn net(&mut self) -> NetView<'_> {
        NetView { table: &mut self.table, net: &self.net, memory: self.limiter.account(), cpu: &mut self.cpu }
    }

    fn net_ref(&self) -> (&wasmtime::component::ResourceTable, &NetCtx) {
        (&self.table, &self.net)
    }
}

/// Table entries of a WASI-backend instance beyond `--max-sockets`: its
/// stdio streams, pollables and the like.
const TABLE_SLACK: usize = 64;

/// A store for one instance, with its memory limit and CPU bound in force.
///
/// A call hook tells the CPU bound when the guest is entered and when it
/// is inside a host call: an entry from the event loop (a callback starts, a
/// task resumes) starts the bound over (see `limits::cpu`), for both the
/// portcullis interface and standard `wasi:sockets`.
pub fn new_store(engine: &Engine, mut state: HostState, limits: &Limits) -> Store<HostState> {
    let standard_sockets = state.wasi_sockets.is_some();
    if standard_sockets {
        // wasmtime-wasi keeps each socket in the table: its size bounds them
        // (past it a socket call traps, and a service starts afresh).
        state.table.set_max_capacity(limits.max_sockets as usize + TABLE_SLACK);
    }
    let mut store = Store::new(engine, state);
    if standard_sockets {
        // Streams, futures and calls under way cost the host too.
        let handles = limits.max_sockets as usize * crate::wasi_sockets::HANDLES_PER_SOCKET;
        store.set_max_component_handles(handles.max(1024));
    }
    store.call_hook(move |mut ctx, hook| {
        let cpu = &mut ctx.data_mut().cpu;
        match hook {
            CallHook::CallingHost => cpu.calling_host(),
            CallHook::ReturningFromHost => cpu.returning_from_host(),
            CallHook::CallingWasm => cpu.entering_guest(),
            CallHook::ReturningFromWasm => cpu.leaving_guest(),
        }
        Ok(())
    });
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let cpu = &mut ctx.data_mut().cpu;
        match cpu.at_epoch() {
            AtEpoch::Continue => Ok(UpdateDeadline::Continue(1)),
            AtEpoch::Yield => Ok(UpdateDeadline::YieldCustom(1, Box::pin(cpu.yield_turn()))),
            AtEpoch::Exceeded => Err(wasmtime::format_err!(
                "the guest ran for {:?} of CPU time without waiting (--callback-cpu-ms)",
                cpu.limit
            )),
        }
    });
    store
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (env, output, sockets) = (&self.env, &self.output, &self.wasi_sockets);
        let ctx = self.wasi.get_or_insert_with(|| wasi_ctx(env, output, sockets.as_ref()));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

/// The guest's WASI context, made at its first WASI call: most instances (one
/// per connection, say) make none, and building the context was about a
/// twentieth of what instantiating costs (callgrind, `portcullis-instantiate`).
/// It has no network, unless the component imports standard `wasi:sockets`:
/// then every address goes through the policy (`wasi_sockets`), and name
/// look-ups only through its shadow of `resolve-addresses` (wasmtime-wasi's
/// own, and 0.2's, stay off). Its stdout and stderr never block (see
/// `guest_output`).
fn wasi_ctx(env: &[(String, String)], output: &Arc<OutputRate>, sockets: Option<&Arc<WasiSockets>>) -> WasiCtx {
    let mut builder = WasiCtx::builder();
    if let Some(sockets) = sockets {
        let sockets = sockets.clone();
        builder.allow_tcp(true).allow_udp(true).socket_addr_check(move |addr, use_| {
            let allowed = sockets.check(addr, use_);
            Box::pin(async move { allowed })
        });
    } else {
        builder.allow_tcp(false).allow_udp(false);
    }
    builder
        .stdout(GuestOutput::stdout(output.clone()))
        .stderr(GuestOutput::stderr(output.clone()))
        .envs(env)
        // wasmtime-wasi fills a host buffer of the size asked for, on this
        // thread (64 MiB took ~0.4 s): a guest gets its random bytes in parts.
        .max_random_size(64 * 1024)
        .allow_ip_name_lookup(false)
        .build()
}
