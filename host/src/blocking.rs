//! Blocking WASI calls are waits, as any other.
//!
//! A guest's `std::thread::sleep`, a blocking `accept` or `read` of a
//! `std::net` program, are plain (sync) calls to `wasi:io/poll`, which
//! wasmtime runs by suspending the guest while the instance keeps its store:
//! the thread goes on (other services run), but this instance does nothing
//! else until the call returns. Such a call is a true wait: while it waits
//! no CPU bound runs down, and one that had to wait restarts the bound when
//! it returns (one that found its pollables ready at once restarts nothing,
//! so a loop of polls is still computation).
//!
//! Since the instance's event loop cannot run meanwhile, the call itself
//! watches for the stop: once a stop's grace period is over
//! ([`BlockingHost::forced_stop`]), it ends the instance with [`Stopped`].
//!
//! The WASI implementation itself stays wasmtime-wasi's; this module only
//! shadows the two entry points that block (`poll` and `pollable.block`).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};

/// The `wasi:io/poll` version that wasmtime-wasi links (guests' older 0.2
/// imports resolve to it).
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";

/// The trap that ends an instance waiting in a blocking call when a stop's
/// grace period is over (not a failure of the guest: the supervisor ends
/// quietly on it).
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped while the guest waited in wasi:io/poll")
    }
}

impl std::error::Error for Stopped {}

/// What a store's data gives the blocking calls: WASI's own view, the stop's
/// end of grace, and where a true wait is told (it restarts the CPU bound).
pub trait BlockingHost: WasiView + 'static {
    /// Cancelled when a stop's grace period is over.
    fn forced_stop(&self) -> &CancellationToken;
    /// The guest truly waited.
    fn waited(&mut self);
}

/// Shadows `wasi:io/poll`'s blocking calls in `linker` (after
/// `wasmtime_wasi::p2::add_to_linker_async`).
pub fn add_to_linker<T: BlockingHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap_async(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, T>, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let stop = store.data().forced_stop().clone();
                let state = store.data_mut();
                let (result, waited) = waiting(&stop, state.ctx().table.block(pollable)).await?;
                if waited {
                    state.waited();
                }
                result
            })
        },
    )?;
    poll.func_wrap_async("poll", |mut store: StoreContextMut<'_, T>, (pollables,): (Vec<Resource<DynPollable>>,)| {
        Box::new(async move {
            let stop = store.data().forced_stop().clone();
            let state = store.data_mut();
            let (ready, waited) = waiting(&stop, state.ctx().table.poll(pollables)).await?;
            if waited {
                state.waited();
            }
            Ok((ready?,))
        })
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Awaits `work` unless `stop` comes first (then [`Stopped`]); says whether
/// it had to wait.
async fn waiting<F: Future>(stop: &CancellationToken, work: F) -> wasmtime::Result<(F::Output, bool)> {
    let mut work = std::pin::pin!(work);
    let waited = AtomicBool::new(false);
    let polled = std::future::poll_fn(|cx| {
        let poll = work.as_mut().poll(cx);
        if poll.is_pending() {
            waited.store(true, Ordering::Relaxed);
        }
        poll
    });
    tokio::select! {
        biased;
        out = polled => Ok((out, waited.load(Ordering::Relaxed))),
        _ = stop.cancelled() => Err(wasmtime::Error::new(Stopped)),
    }
}
