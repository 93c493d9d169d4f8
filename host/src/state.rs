//! What one store holds: the resource table, the WASI context and the
//! networking context. One store (and so one `HostState`) per instance.
//!
//! The store also keeps a guest from hogging its thread: the engine's epoch
//! ticks every [`engine::EPOCH_TICK`]; while wasm runs, each tick yields to the
//! async runtime (so other services, timers and signals go on) and counts
//! against [`GUEST_SLICE_BUDGET`]. Any call into the host, and every callback
//! the dispatcher starts, resets the count. A guest that computes longer than
//! the budget without once returning to the host is trapped (and its instance
//! replaced, as for any trap).

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::engine;
use crate::net::NetCtx;

/// The longest a guest may run without returning to the host.
pub const GUEST_SLICE_BUDGET: Duration = Duration::from_secs(2);

pub struct HostState {
    /// Every resource the guest holds a handle to (connections, listeners, WASI streams).
    pub table: ResourceTable,
    /// WASI for what Rust's std needs (stdio, env, clocks, random), made at the
    /// guest's first WASI call (see [`wasi_ctx`]).
    wasi: Option<WasiCtx>,
    /// The environment the guest sees (`--env`, the manifest's `env`).
    env: Arc<[(String, String)]>,
    pub net: NetCtx,
    /// Epoch ticks the guest has run since it last entered or called the host.
    pub busy_ticks: u32,
}

impl HostState {
    pub fn new(env: Arc<[(String, String)]>, net: NetCtx) -> Self {
        HostState { table: ResourceTable::new(), wasi: None, env, net, busy_ticks: 0 }
    }

    /// The guest is back in the host (or about to be called): its slice starts over.
    pub fn touch(&mut self) {
        self.busy_ticks = 0;
    }
}

/// A store for one instance, with the slice budget in force.
pub fn new_store(engine: &Engine, env: Arc<[(String, String)]>, net: NetCtx) -> Store<HostState> {
    let mut store = Store::new(engine, HostState::new(env, net));
    let budget_ticks = (GUEST_SLICE_BUDGET.as_millis() / engine::EPOCH_TICK.as_millis()) as u32;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        let state = ctx.data_mut();
        state.busy_ticks += 1;
        if state.busy_ticks > budget_ticks {
            return Err(wasmtime::format_err!(
                "the guest ran for {GUEST_SLICE_BUDGET:?} without returning to the host"
            ));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let env = &self.env;
        let ctx = self.wasi.get_or_insert_with(|| wasi_ctx(env));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

/// The guest's WASI context, made at its first WASI call: most instances (one
/// per connection, say) make none, and building the context was about a
/// twentieth of what instantiating costs (callgrind, `portcullis-instantiate`).
/// It has no network: `wasi:sockets` would bypass the operator's grants.
fn wasi_ctx(env: &[(String, String)]) -> WasiCtx {
    WasiCtx::builder()
        .inherit_stdout()
        .inherit_stderr()
        .envs(env)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}
