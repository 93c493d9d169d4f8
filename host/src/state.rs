//! What one store holds: the resource table, the WASI context and the
//! networking context. One store (and so one `HostState`) per instance.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::net::NetCtx;

pub struct HostState {
    /// Every resource the guest holds a handle to (connections, listeners, WASI streams).
    pub table: ResourceTable,
    /// WASI for what Rust's std needs (stdio, env, clocks, random). It has no
    /// network: `wasi:sockets` would bypass the operator's grants.
    pub wasi: WasiCtx,
    pub net: NetCtx,
}

impl HostState {
    pub fn new(env: &[(String, String)], net: NetCtx) -> Self {
        let wasi = WasiCtx::builder()
            .inherit_stdout()
            .inherit_stderr()
            .envs(env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState { table: ResourceTable::new(), wasi, net }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
