//! What the socket glue sees of a store, as wasmtime-wasi's sockets do
//! (`WasiSocketsView`): the resource table, the networking context, the
//! instance's memory account (host buffers are charged to it) and its CPU
//! clock (a host call that truly waited restarts the bound). The store's
//! state provides it ([`NetHost`]); [`super::host::add_to_linker`] links the
//! socket interfaces over it, so `net` needs nothing else of the store.

use std::sync::Arc;

use wasmtime::component::{HasData, ResourceTable};

use super::NetCtx;
use crate::limits::{CpuUse, MemoryAccount};

/// The socket glue's part of a store, borrowed for one host call.
pub struct NetView<'a> {
    pub table: &'a mut ResourceTable,
    pub net: &'a NetCtx,
    pub memory: &'a Arc<MemoryAccount>,
    pub cpu: &'a mut CpuUse,
}

impl NetView<'_> {
    /// A host call truly waited: the waiting task's CPU bound starts over
    /// (now if the call held the guest, else when the task enters the guest
    /// again; see `limits::cpu`).
    pub fn wait_ended(&mut self) {
        self.cpu.wait_ended();
    }

    /// The guest is done with one connection of a batch: the next one's work
    /// gets a bound of its own, from now (the task runs on).
    pub fn next_of_batch(&mut self) {
        self.cpu.restart();
    }
}

/// A store's state that carries the sockets capability.
pub trait NetHost: Send + 'static {
    /// The view the generated glue works on.
    fn net(&mut self) -> NetView<'_>;
    /// What the copy-free twins read beside guest memory (borrowed shared,
    /// as the guest's memory is).
    fn net_ref(&self) -> (&ResourceTable, &NetCtx);
}

/// The [`HasData`] marker for the sockets' generated glue.
pub struct Net;

impl HasData for Net {
    type Data<'a> = NetView<'a>;
}
