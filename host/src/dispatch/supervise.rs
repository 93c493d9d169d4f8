//! The supervisors: which instance serves a connection, and a fresh one after
//! a trap. [`run_shared`] keeps one instance for all of a service's
//! connections (a new one after a trap); [`run_per_connection`] gives each
//! connection an instance of its own, made ahead while none is waiting.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::{Result, bail};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wasmtime::Store;

use super::Stop;
use super::event_loop::{EventLoop, Live};
use super::restart::Backoff;
use crate::bindings::exports::portcullis::socket::callbacks::Guest as Callbacks;
use crate::blocking::Stopped;
use crate::component::{Backend, MainFunc, ServiceComponent};
use crate::metrics::{Overflow, TrapCause};
use crate::net::TcpConn;
use crate::net::admission::Admission;
use crate::pool::{self, SpareHeld};
use crate::state::HostState;
use crate::{guest_text, sync};

/// Runs `loaded` until it is done: a program until its `main` returned and its
/// callback connections and listeners are gone, a service until `stop`
/// retires it (see [`Stop`]).
/// Connections arrive on `conns`; the guest's own listeners accept under
/// `admission` (the service's connection caps and time-outs). Returns the program's exit code
/// (0 for a service).
pub async fn run_shared(
    loaded: Arc<ServiceComponent>,
    mut conns: mpsc::UnboundedReceiver<TcpConn>,
    sink: mpsc::UnboundedSender<TcpConn>,
    admission: Admission,
    stop: Stop,
) -> Result<i32> {
    let active_listeners = Arc::new(AtomicUsize::new(0));
    let forced_stop = forced_stop(&stop.retire);
    // A WASI-backend service's `main` is its accept loop: it runs in every
    // instance, and its end (a return, an `exit`) ends only that instance.
    let wasi_service = loaded.backend() == Backend::Wasi && loaded.serves_listen();
    let program = loaded.has_main() && !wasi_service;
    let mut run_main = loaded.has_main();
    let mut backoff = Backoff::default();
    loop {
        let born = Instant::now();
        let accepted_before = loaded.wasi_accepted();
        let mut store =
            loaded.new_store(sink.clone(), active_listeners.clone(), admission.clone(), forced_stop.clone());
        // How the instance ended, the connections it took along, and the
        // error's line (for the log).
        let mut started = true;
        let mut served = false;
        let (end, closed, error) = match loaded.instantiate(&mut store).await {
            Ok((instance, callbacks)) => {
                let main = if run_main { loaded.main(&mut store, &instance)? } else { None };
                let sources = Sources {
                    callbacks: callbacks.as_ref(),
                    main,
                    conns: &mut conns,
                    active_listeners: &active_listeners,
                };
                let (ended, live) = serve_instance(&loaded, &mut store, sources, false, &stop).await;
                let closed = live.close_all();
                served = live.served_any() || loaded.wasi_accepted() > accepted_before;
                // A WASI service that ends (returns or exits) before it ever
                // listened could not start (`Address already in use`): its
                // status is the process's, as a program's is.
                let failed_start = wasi_service && !loaded.wasi_listened();
                match ended {
                    Ok(code) if stop.retire.is_cancelled() || !wasi_service || failed_start => {
                        stop.hand_over(&mut conns);
                        return Ok(code);
                    }
                    Ok(code) => {
                        loaded.metrics().trapped(TrapCause::exit);
                        (format!("exited with status {code}"), closed, None)
                    }
                    Err(trap) if trap.is::<Stopped>() => {
                        // Still waiting in a blocking WASI call when the stop's grace ran out.
                        tracing::info!(service = %loaded.name, "{Stopped}");
                        return Ok(0);
                    }
                    Err(trap) => match trap.downcast_ref::<wasmtime_wasi::I32Exit>() {
                        Some(exit) if program || failed_start => return Ok(exit.0),
                        Some(exit) => {
                            loaded.metrics().trapped(TrapCause::exit);
                            (format!("exited with status {}", exit.0), closed, None)
                        }
                        None if program => {
                            // A program whose main trapped has failed; nothing to restart.
                            let trap = guest_text::error_line(&trap);
                            tracing::error!(service = %loaded.name, "guest trapped: {trap}; closed its {closed} connection(s)");
                            return Ok(1);
                        }
                        None => {
                            loaded.metrics().trapped(trap_cause(&trap, store.data().memory_refused()));
                            ("trapped".to_string(), closed, Some(guest_text::error_line(&trap)))
                        }
                    },
                }
            }
            // A program that cannot start has failed; a service tries again.
            Err(e) if program => bail!("{}", guest_text::anyhow_line(&e)),
            Err(e) => {
                loaded.metrics().trapped(TrapCause::start);
                started = false;
                ("failed to start".to_string(), 0, Some(guest_text::anyhow_line(&e)))
            }
        };
        // Gone before the pause: its memory, and its sockets (a WASI
        // service's listener: clients are refused, not accepted and reset).
        drop(store);
        if stop.retire.is_cancelled() {
            stop.hand_over(&mut conns);
            return Ok(0);
        }
        let pause = backoff.next(born.elapsed(), served);
        // What happened first, in full; then a count line a second while it goes on.
        loaded.warnings.traps.warn(|| {
            let connections = match (started, wasi_service) {
                (false, _) => None,
                // Its connections are the guest's own, gone with it.
                (true, true) => Some("its connections closed with it".to_string()),
                (true, false) => Some(format!("closed its {closed} connection(s)")),
            };
            let quick = match backoff.quick_ends() {
                0 | 1 => None,
                n => Some(format!("{n} quick ends in a row")),
            };
            let next = Some(format!("a fresh instance in {pause:?}"));
            let notes: Vec<String> = [connections, quick, next].into_iter().flatten().collect();
            let error = error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
            format!("guest {end} ({}){error}", notes.join("; "))
        });
        run_main = wasi_service;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.retire.cancelled() => {
                // Retired while no instance ran (a reload during the pause):
                // what waited goes to the next version.
                stop.hand_over(&mut conns);
                return Ok(0);
            }
        }
    }
}

/// Runs `loaded` with a fresh instance for every connection that arrives on
/// `conns`, until `shutdown`; then waits for those instances to finish (each
/// stops as a shared instance does: [`STOP_GRACE`](super::STOP_GRACE), then its connection is
/// closed). A trap ends only the instance of its own connection. Guest
/// listeners accept under `admission`, as in [`run_shared`].
pub async fn run_per_connection(
    loaded: Arc<ServiceComponent>,
    mut conns: mpsc::UnboundedReceiver<TcpConn>,
    admission: Admission,
    stop: Stop,
) -> Result<i32> {
    let mut instances = tokio::task::JoinSet::new();
    // One instance is made ahead, in the time between connections, so that the
    // next connection is served at once instead of after its instantiation.
    // Every instance of this worker is made here, in this one task, so its
    // spare can never take the last pool slot from a connection it is setting
    // up; a spare of another worker or service that does is asked back
    // (see `pool`).
    let mut spare: Option<Spare> = None;
    // After a failed attempt (typically a full pool), try again only once an
    // instance has ended, instead of spinning on a full pool.
    let mut may_prepare = true;
    // After an instance failed to start (its start function trapped, not a
    // full pool), connections are refused for a pause that grows while it
    // goes on: a client's connection must not buy a failing start each time.
    let mut backoff = Backoff::default();
    let mut refuse_until: Option<Instant> = None;
    let forced_stop = forced_stop(&stop.retire);
    let mut retiring = sync::cancelled(&stop.retire);
    // Retired by a reload: the connections already handed over are still
    // served; then it ends.
    let mut retired = false;
    let mut calls = loaded.spares().calls();
    loop {
        tokio::select! {
            biased;
            _ = &mut retiring, if !retired => {
                if stop.shutdown.is_cancelled() {
                    break;
                }
                retired = true;
                drop(spare.take());
            }
            _ = std::future::ready(()), if retired && conns.is_empty() => break,
            // Before connections: in a flood they are always ready.
            Ok(()) = calls.changed() => if let Some(given) = spare.take() {
                // A connection elsewhere found the pool full: this slot is its.
                drop(given);
                loaded.spares().gave_back();
                may_prepare = false;
            },
            conn = conns.recv() => match conn {
                Some(conn) => {
                    // One of the connections served at once (`--max-instances`,
                    // over every service and worker), or none after a wait.
                    let Some(serving) = loaded.spares().serve_slot().await else {
                        loaded.metrics().overflow(Overflow::pool);
                        loaded.warnings.unserved.warn(|| {
                            format!(
                                "no instance for connection {} from {}: --max-instances connections are served \
                                 at once",
                                conn.id(),
                                conn.remote_addr()
                            )
                        });
                        conn.close();
                        continue;
                    };
                    let tried = Instant::now();
                    let made = match (spare.take(), refuse_until) {
                        (Some(spare), _) => Ok(spare),
                        (None, Some(until)) if Instant::now() < until => {
                            Err(anyhow::anyhow!("instances fail to start; the next try at most {:?} from now", until - Instant::now()))
                        }
                        (None, _) => instance_for(&loaded, &admission, &forced_stop).await,
                    };
                    match made {
                        Ok(spare) => {
                            backoff = Backoff::default();
                            instances.spawn(serve_alone(loaded.clone(), spare, conn, serving, stop.clone()));
                        }
                        Err(e) => {
                            if !short_of_room(&e) && refuse_until.is_none_or(|t| Instant::now() >= t) {
                                refuse_until = Some(Instant::now() + backoff.next(tried.elapsed(), false));
                            }
                            // Typically the instance pool is exhausted: refuse this
                            // connection, keep serving the others.
                            let reason =
                                if e.downcast_ref::<BudgetFull>().is_some() { Overflow::memory_budget } else { Overflow::pool };
                            loaded.metrics().overflow(reason);
                            loaded.warnings.unserved.warn(|| {
                                let e = guest_text::anyhow_line(&e);
                                format!("no instance for connection {} from {}: {e}", conn.id(), conn.remote_addr())
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
                if let Some(until) = refuse_until {
                    tokio::time::sleep_until(until).await;
                }
                let tried = Instant::now();
                (tried, Spare::new(&loaded, admission.clone(), forced_stop.clone()).await)
            }, if spare.is_none() && may_prepare && !retired && loaded.spares().wanted() => match made {
                (_, Ok(made)) => {
                    refuse_until = None;
                    if loaded.spares().wanted() {
                        spare = Some(made);
                    } else {
                        // Made while a connection waited for a slot: it is that one's.
                        drop(made);
                        loaded.spares().gave_back();
                        may_prepare = false;
                    }
                }
                (tried, Err(e)) => {
                    if !short_of_room(&e) {
                        refuse_until = Some(Instant::now() + backoff.next(tried.elapsed(), false));
                    }
                    may_prepare = false;
                }
            },
        }
    }
    drop(spare);
    conns.close();
    stop.hand_over(&mut conns);
    while instances.join_next().await.is_some() {}
    Ok(0)
}

/// An instance for a connection that found no spare ready. If the pool is
/// full while spares (of other workers or services) hold slots, they are
/// asked back, again if another takes the freed slot first, for at most
/// [`pool::ASK_BACK_WAIT`].
async fn instance_for(
    loaded: &ServiceComponent,
    admission: &Admission,
    forced_stop: &CancellationToken,
) -> Result<Spare> {
    let deadline = Instant::now() + pool::ASK_BACK_WAIT;
    let mut asking = None;
    loop {
        match Spare::new(loaded, admission.clone(), forced_stop.clone()).await {
            Err(e) if short_of_room(&e) && Instant::now() < deadline => {
                let asking = asking.get_or_insert_with(|| loaded.spares().asking());
                if !asking.ask_back().await {
                    // None held: one last try, for a spare that was just
                    // handed to a connection of its own worker (its slot
                    // comes under that connection's place in the cap).
                    return Spare::new(loaded, admission.clone(), forced_stop.clone()).await;
                }
            }
            made => return made,
        }
    }
}

/// Whether an instantiation failed for want of room another instance may
/// give back (a pool slot, or the process's `--memory-budget`), not for
/// what the component did: then spares are asked back, and a failure is no
/// failed start.
fn short_of_room(error: &anyhow::Error) -> bool {
    error.downcast_ref::<BudgetFull>().is_some()
        || error.chain().any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
}

/// An instance could not be made within the process's `--memory-budget`.
#[derive(Debug)]
struct BudgetFull;

impl std::fmt::Display for BudgetFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the process's --memory-budget has no room for another instance")
    }
}

/// A fresh instance waiting for its connection (`--instances per-connection`),
/// with the channel its event loop takes connections from. Made ahead, in
/// the time between connections; dropping it tears the instance down and
/// frees its pool slot.
pub struct Spare {
    store: Store<HostState>,
    callbacks: Option<Callbacks>,
    sink: mpsc::UnboundedSender<TcpConn>,
    conns: mpsc::UnboundedReceiver<TcpConn>,
    active_listeners: Arc<AtomicUsize>,
    /// Counts it among the pool's spares (dropped after the store).
    held: SpareHeld,
}

impl Spare {
    /// A fresh store and instance for one connection, made before it arrives.
    async fn new(component: &ServiceComponent, admission: Admission, forced_stop: CancellationToken) -> Result<Spare> {
        // Held from before the slot is taken: a connection that finds the
        // pool full meanwhile knows to wait for this one.
        let held = component.spares().hold();
        let (sink, conns) = mpsc::unbounded_channel();
        let active_listeners = Arc::new(AtomicUsize::new(0));
        let mut store = component.new_store(sink.clone(), active_listeners.clone(), admission, forced_stop);
        let (_instance, callbacks) = match component.instantiate(&mut store).await {
            Ok(made) => made,
            Err(e) if store.data().budget_refused() => return Err(e.context(BudgetFull)),
            Err(e) => return Err(e),
        };
        Ok(Spare { store, callbacks, sink, conns, active_listeners, held })
    }
}

/// A fresh store and instance, as a per-connection instance gets, with its
/// callbacks looked up: what a new instance costs (the bench's
/// `portcullis-instantiate` measures it). Dropping the result tears it down
/// and frees its pool slot.
#[doc(hidden)]
pub async fn instantiate_once(component: &ServiceComponent) -> Result<Spare> {
    Spare::new(component, component.admission().clone(), CancellationToken::new()).await
}

/// A token cancelled [`STOP_GRACE`](super::STOP_GRACE) after `shutdown`: the
/// end of the grace for guests that wait in a blocking WASI call (the event
/// loop, which enforces the grace for everything else, cannot run while
/// they do).
fn forced_stop(shutdown: &CancellationToken) -> CancellationToken {
    let forced = CancellationToken::new();
    let (shutdown, token) = (shutdown.clone(), forced.clone());
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tokio::time::sleep(super::STOP_GRACE).await;
        token.cancel();
    });
    forced
}

/// What an instance's event loop serves: its callbacks, its `main` (a
/// program's first instance), and where connections come from.
struct Sources<'a> {
    callbacks: Option<&'a Callbacks>,
    main: Option<MainFunc>,
    conns: &'a mut mpsc::UnboundedReceiver<TcpConn>,
    active_listeners: &'a AtomicUsize,
}

/// Runs the event loop of the instance in `store` (see [`EventLoop::run`])
/// until it ends. Returns how it ended and the connections it was still
/// driving, for the caller to close after a trap.
async fn serve_instance(
    component: &ServiceComponent,
    store: &mut Store<HostState>,
    sources: Sources<'_>,
    until_idle: bool,
    stop: &Stop,
) -> (wasmtime::Result<i32>, Live) {
    let live = Live::default();
    let Sources { callbacks, main, conns, active_listeners } = sources;
    let event_loop = EventLoop::new(component, callbacks, &live, active_listeners, until_idle);
    let ended =
        store.run_concurrent(async |acc| event_loop.run(acc, main, conns, stop).await).await.and_then(|inner| inner);
    (ended, live)
}

/// One connection in an instance of its own, from instantiation to `on-close`
/// (and to the end of any client connection the instance opened meanwhile).
async fn serve_alone(loaded: Arc<ServiceComponent>, spare: Spare, conn: TcpConn, serving: pool::ServeSlot, stop: Stop) {
    // The connection's place under `--max-connections` and among those
    // served at once is given back after the store (declared later, dropped
    // earlier) has returned its pool slot.
    let _permit = conn.take_permit();
    let _serving = serving;
    let Spare { mut store, callbacks, sink, mut conns, active_listeners, held } = spare;
    // A spare no longer: it serves its connection.
    drop(held);
    let (id, remote) = (conn.id(), conn.remote_addr());
    let _ = sink.send(conn);
    let sources =
        Sources { callbacks: callbacks.as_ref(), main: None, conns: &mut conns, active_listeners: &active_listeners };
    let (ended, live) = serve_instance(&loaded, &mut store, sources, true, &stop).await;
    if let Err(trap) = ended {
        let closed = live.close_all();
        if trap.is::<Stopped>() {
            // Still waiting in a blocking WASI call when the stop's grace ran out.
            tracing::info!(service = %loaded.name, "{Stopped}");
            return;
        }
        loaded.metrics().trapped(trap_cause(&trap, store.data().memory_refused()));
        loaded.warnings.traps.warn(|| {
            let trap = guest_text::error_line(&trap);
            format!(
                "guest trapped (closed the instance of connection {id} from {remote}, {closed} connection(s)): {trap}"
            )
        });
    }
}

/// Why an instance trapped, for the metrics: its CPU bound (the epoch
/// callback's error says the flag), memory (it was refused some before it
/// aborted), or a guest fault of its own (a panic, `unreachable`).
fn trap_cause(trap: &wasmtime::Error, memory_refused: bool) -> TrapCause {
    if format!("{trap:#}").contains("(--callback-cpu-ms)") {
        TrapCause::cpu
    } else if memory_refused {
        TrapCause::memory
    } else {
        TrapCause::panic
    }
}
