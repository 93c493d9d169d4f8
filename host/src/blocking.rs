//! Blocking WASI calls under the guest's CPU bound.
//!
//! A guest's `std::thread::sleep` or blocking poll is a plain (sync) call to
//! `wasi:io/poll`, which wasmtime runs by suspending the guest while the
//! instance keeps its store: the thread goes on (other services run), but the
//! instance does nothing else until the call returns, and a stop cannot reach
//! it. So these calls count as running: they may last what is left of the
//! guest's `--callback-cpu-ms` bound, and then the instance traps, as a
//! guest that computes too long does.
//!
//! The WASI implementation itself stays wasmtime-wasi's; this module only
//! shadows the two entry points that block (`poll` and `pollable.block`) with
//! the same calls under a time-out.

use wasmtime::component::{Linker, Resource};
use wasmtime::{StoreContextMut, format_err};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};

use crate::state::HostState;

/// The `wasi:io/poll` version that wasmtime-wasi links (guests' older 0.2
/// imports resolve to it).
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// Shadows `wasi:io/poll`'s blocking calls in `linker` (after
/// `wasmtime_wasi::p2::add_to_linker_async`).
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap_async(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let left = store.data().cpu.remaining();
                let outcome = tokio::time::timeout(left, store.data_mut().ctx().table.block(pollable)).await;
                finish(&mut store, "pollable.block", outcome)?;
                Ok(())
            })
        },
    )?;
    poll.func_wrap_async(
        "poll",
        |mut store: StoreContextMut<'_, HostState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            Box::new(async move {
                let left = store.data().cpu.remaining();
                let outcome = tokio::time::timeout(left, store.data_mut().ctx().table.poll(pollables)).await;
                Ok((finish(&mut store, "poll", outcome)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Turns running out of the bound in a blocking call into a trap. (The time
/// the call took counts by itself: it was no true wait, so the guest's clock
/// ran on.)
fn finish<R>(
    store: &mut StoreContextMut<'_, HostState>,
    what: &str,
    outcome: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
) -> wasmtime::Result<R> {
    let cpu = &store.data().cpu;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(format_err!(
            "the guest blocked in wasi:io/poll ({what}) until its {:?} without waiting were used up \
             (--callback-cpu-ms)",
            cpu.limit
        )),
    }
}
