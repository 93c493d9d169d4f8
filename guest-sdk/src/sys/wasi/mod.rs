//! The WASI backend: the SDK's API over standard `wasi:sockets@0.3.0`.
//!
//! Here the SDK does what the portcullis host does for the native backend: it
//! binds the listeners (`PORTCULLIS_LISTEN`), accepts, reads ahead and calls
//! the [`Service`] for each connection by the delivery rules the portcullis
//! WIT specifies (interface `callbacks`), so that a service behaves the same
//! on both backends.
//!
//! - [`bindings`]: generated, at the bottom.
//! - [`tcp`]: connections (read-ahead, reads, writes, shutdowns), client
//!   connects, listeners and the per-connection dispatch; [`udp`]: sockets.
//! - [`export`]: the `wasi:cli/run` glue the export macros expand to.
//! - here: addresses, errors, time-outs, and the count of what keeps a
//!   program alive.
//!
//! Policy and limits belong to the runtime: under portcullis, the operator's
//! grants and bounds; elsewhere, whatever that runtime enforces.
//!
//! [`Service`]: crate::Service

pub mod bindings;
pub mod export;
pub(crate) mod tcp;
pub(crate) mod udp;

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bindings::wasi::clocks::monotonic_clock;
use bindings::wasi::sockets::ip_name_lookup;
use bindings::wasi::sockets::types::{ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress};
use bindings::wasi::sockets::types::{Ipv4SocketAddress, Ipv6SocketAddress};

use crate::error::{Error, ErrorKind};

/// The most bytes one read returns (and the read-ahead per connection).
pub(crate) const MAX_IO: usize = 64 * 1024;

/// Ballerina's wording of the errors, as the host words them.
pub(crate) use portcullis_protocol::messages::{
    CONNECT_FAILED, INVALID_READ_LENGTH, LISTEN_FAILED, READ_TIMED_OUT, SOCKET_CLOSED, WRITE_AFTER_CLOSE,
    WRITE_TIMED_OUT,
};

fn generic(message: impl Into<String>) -> Error {
    Error::from_parts(ErrorKind::Generic, message.into(), None)
}

fn read_timed_out() -> Error {
    Error::from_parts(ErrorKind::ReadTimedOut, READ_TIMED_OUT.into(), None)
}

/// The OS's words for a WASI error code, as the native backend reports them.
fn reason(code: &ErrorCode) -> String {
    match code {
        ErrorCode::AccessDenied => "Permission denied".into(),
        ErrorCode::NotSupported => "Operation not supported".into(),
        ErrorCode::InvalidArgument => "Invalid argument".into(),
        ErrorCode::OutOfMemory => "Out of memory".into(),
        ErrorCode::Timeout => "Connection timed out".into(),
        ErrorCode::InvalidState => "Invalid state".into(),
        ErrorCode::AddressNotBindable => "Cannot assign requested address".into(),
        ErrorCode::AddressInUse => "Address already in use".into(),
        ErrorCode::RemoteUnreachable => "No route to host".into(),
        ErrorCode::ConnectionRefused => "Connection refused".into(),
        ErrorCode::ConnectionBroken => "Broken pipe".into(),
        ErrorCode::ConnectionReset => "Connection reset by peer".into(),
        ErrorCode::ConnectionAborted => "Software caused connection abort".into(),
        ErrorCode::DatagramTooLarge => "Message too long".into(),
        ErrorCode::Other(Some(text)) => text.clone(),
        ErrorCode::Other(None) => "unknown error".into(),
    }
}

/// A refusal by the runtime's policy (`access-denied`) as the native
/// backend's `permission-denied`, naming what was asked (`connect
/// tcp://HOST:PORT`); any other code as a generic error after `prefix`.
fn socket_error(code: ErrorCode, prefix: &str, asked: impl FnOnce() -> String) -> Error {
    match code {
        ErrorCode::AccessDenied => Error::from_parts(
            ErrorKind::PermissionDenied,
            format!("permission denied: {} is not granted", asked()),
            None,
        ),
        code => generic(format!("{prefix}{}", reason(&code))),
    }
}

fn to_wasi(addr: SocketAddr) -> IpSocketAddress {
    match addr {
        SocketAddr::V4(a) => {
            let [x, y, z, w] = a.ip().octets();
            IpSocketAddress::Ipv4(Ipv4SocketAddress { port: a.port(), address: (x, y, z, w) })
        }
        SocketAddr::V6(a) => {
            let s = a.ip().segments();
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: a.port(),
                flow_info: a.flowinfo(),
                address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                scope_id: a.scope_id(),
            })
        }
    }
}

fn from_wasi(addr: IpSocketAddress) -> SocketAddr {
    match addr {
        IpSocketAddress::Ipv4(a) => {
            let (x, y, z, w) = a.address;
            SocketAddr::new(Ipv4Addr::new(x, y, z, w).into(), a.port)
        }
        IpSocketAddress::Ipv6(a) => {
            let (s0, s1, s2, s3, s4, s5, s6, s7) = a.address;
            SocketAddr::new(Ipv6Addr::new(s0, s1, s2, s3, s4, s5, s6, s7).into(), a.port)
        }
    }
}

fn from_wasi_ip(ip: IpAddress) -> IpAddr {
    match ip {
        IpAddress::Ipv4((x, y, z, w)) => Ipv4Addr::new(x, y, z, w).into(),
        IpAddress::Ipv6((s0, s1, s2, s3, s4, s5, s6, s7)) => Ipv6Addr::new(s0, s1, s2, s3, s4, s5, s6, s7).into(),
    }
}

fn family(addr: &SocketAddr) -> IpAddressFamily {
    if addr.is_ipv4() { IpAddressFamily::Ipv4 } else { IpAddressFamily::Ipv6 }
}

/// `[::1]` for an IPv6 literal, the text as it is otherwise (as denials
/// name a target).
fn bracketed(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_string(),
    }
}

/// The longest host text: a DNS name's 253 characters.
const MAX_HOST_LEN: usize = 253;

/// `host` as addresses: an IP literal as itself, a name through
/// `wasi:sockets/ip-name-lookup` (which the runtime may refuse). Text that
/// is no name or IP literal fails first, as under the native backend.
async fn resolve(host: &str, prefix: &str, asked: impl Fn() -> String) -> Result<Vec<IpAddr>, Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%');
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.chars().all(allowed) {
        return Err(generic(format!(
            "invalid host: {} bytes; a name or IP literal of at most {MAX_HOST_LEN} letters, digits and `.-_:[]%`",
            host.len()
        )));
    }
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    match ip_name_lookup::resolve_addresses(host.to_string()).await {
        Ok(ips) => Ok(ips.into_iter().map(from_wasi_ip).collect()),
        Err(ip_name_lookup::ErrorCode::AccessDenied) => Err(Error::from_parts(
            ErrorKind::PermissionDenied,
            format!("permission denied: {} is not granted", asked()),
            None,
        )),
        Err(e) => Err(generic(format!("{prefix}cannot resolve {host}: {e:?}"))),
    }
}

/// A flag some tasks wait for (a connection closed, a listener stopped):
/// set once, never cleared.
#[derive(Default)]
pub(crate) struct Signal {
    set: Cell<bool>,
    waiting: RefCell<Vec<Waker>>,
}

impl Signal {
    pub(crate) fn set(&self) {
        if !self.set.replace(true) {
            self.waiting.take().into_iter().for_each(Waker::wake);
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.get()
    }

    fn poll_set(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.get() {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    pub(crate) async fn wait(&self) {
        poll_fn(|cx| self.poll_set(cx)).await
    }
}

/// Tasks waiting for something to change (a read took bytes), woken all at
/// once; unlike [`Signal`], it fires again and again.
#[derive(Default)]
pub(crate) struct Waiters {
    waiting: RefCell<Vec<Waker>>,
}

impl Waiters {
    pub(crate) fn wake_all(&self) {
        self.waiting.take().into_iter().for_each(Waker::wake);
    }

    /// Wakes the task of `cx` at the next [`Waiters::wake_all`].
    pub(crate) fn register(&self, cx: &Context<'_>) {
        let mut waiting = self.waiting.borrow_mut();
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
    }

    /// Waits until `changed()` is true, checked at each wake.
    pub(crate) async fn until(&self, changed: impl Fn() -> bool) {
        poll_fn(|cx| {
            if changed() {
                return Poll::Ready(());
            }
            self.register(cx);
            Poll::Pending
        })
        .await
    }
}

/// How long the SDK runs without giving the runtime a turn, if the runtime
/// tells no CPU bound ([`set_turn_every`]).
const DEFAULT_TURN_EVERY: Duration = Duration::from_millis(100);

/// [`take_turns`] reads the clock (a host call) once in this many calls: a
/// call is a read or a write, far shorter than a turn's time apart.
const CLOCK_EVERY: u32 = 8;

thread_local! {
    static TURN_EVERY: Cell<Duration> = const { Cell::new(DEFAULT_TURN_EVERY) };
    static LAST_TURN: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Calls of [`take_turns`] since it last read the clock.
    static UNCLOCKED: Cell<u32> = const { Cell::new(0) };
    /// The turn under way, if any: every task that comes to [`take_turns`]
    /// waits for it to end.
    static TURN: RefCell<Option<Rc<Signal>>> = const { RefCell::new(None) };
}

/// Paces [`take_turns`] by the runtime's CPU bound (`PORTCULLIS_CALLBACK_CPU_MS`):
/// under portcullis a turn restarts it, and a busy but honest service (a
/// read-ahead that never empties, writes a fast peer takes at once: it never
/// truly waits) would otherwise run past it. A turn every quarter of the
/// bound keeps well within it, and seldom parks the guest (a turn waits for
/// the runtime's next timer tick, about a millisecond). Without a bound
/// told: every [`DEFAULT_TURN_EVERY`].
pub(crate) fn set_turn_every(callback_cpu: Option<Duration>) {
    TURN_EVERY.set(callback_cpu.map_or(DEFAULT_TURN_EVERY, |bound| bound / 4));
}

/// Gives the runtime a turn if the last one was a turn's time ago or more
/// (see [`set_turn_every`]; as seen every [`CLOCK_EVERY`] calls).
///
/// A yield alone would not do: woken, wit-bindgen's executor takes the next
/// ready event before it returns to the runtime, and a busy service always
/// has one. So a turn parks every task that comes here until a 1 ns timer
/// has fired, which can only happen once the guest has returned to the
/// runtime (every task then waits, here or on I/O; a timer of 0 would
/// complete at once, without a return).
pub(crate) async fn take_turns() {
    if let Some(turn) = TURN.with_borrow(Clone::clone) {
        return turn.wait().await;
    }
    let unclocked = UNCLOCKED.get() + 1;
    if unclocked < CLOCK_EVERY {
        UNCLOCKED.set(unclocked);
        return;
    }
    UNCLOCKED.set(0);
    let now = Instant::now();
    match LAST_TURN.get() {
        Some(last) if now.duration_since(last) < TURN_EVERY.get() => {}
        Some(_) => {
            LAST_TURN.set(Some(now));
            let turn = Rc::new(Signal::default());
            TURN.set(Some(turn.clone()));
            monotonic_clock::wait_for(1).await;
            TURN.set(None);
            turn.set();
        }
        None => LAST_TURN.set(Some(now)),
    }
}

/// How a [`race`] ended.
pub(crate) enum Race<T> {
    Done(T),
    /// The signal was set first.
    Stopped,
    TimedOut,
}

/// `work` until it is done, `stop` is set, or `timeout` passes (never without
/// one). `work` is left pinned where it is, so the caller can still cancel it
/// properly (a cancelled stream read may have read bytes).
pub(crate) async fn race<F: Future>(work: Pin<&mut F>, stop: &Signal, timeout: Option<Duration>) -> Race<F::Output> {
    let mut timer = timeout.map(|t| Box::pin(monotonic_clock::wait_for(nanos(t))));
    race_with(work, stop, |cx| match timer.as_mut() {
        Some(timer) => timer.as_mut().poll(cx),
        None => Poll::Pending,
    })
    .await
}

/// [`race`] until `deadline`, reading the clock only if `work` is not done
/// at once (a clock read is a host call).
pub(crate) async fn race_deadline<F: Future>(
    work: Pin<&mut F>,
    stop: &Signal,
    deadline: Option<Instant>,
) -> Race<F::Output> {
    match deadline {
        // A timer of this wait's own, armed at its first poll.
        Some(deadline) => race_until(work, stop, &LazyTimer::default(), deadline).await,
        None => race(work, stop, None).await,
    }
}

/// [`race`] against `deadline` on `timer`, which outlives this wait (see
/// [`LazyTimer`]).
pub(crate) async fn race_until<F: Future>(
    work: Pin<&mut F>,
    stop: &Signal,
    timer: &LazyTimer,
    deadline: Instant,
) -> Race<F::Output> {
    race_with(work, stop, |cx| timer.poll_until(deadline, cx)).await
}

async fn race_with<F: Future>(
    mut work: Pin<&mut F>,
    stop: &Signal,
    mut timed_out: impl FnMut(&mut Context<'_>) -> Poll<()>,
) -> Race<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Race::Done(out));
        }
        if stop.poll_set(cx).is_ready() {
            return Poll::Ready(Race::Stopped);
        }
        if timed_out(cx).is_ready() {
            return Poll::Ready(Race::TimedOut);
        }
        Poll::Pending
    })
    .await
}

fn nanos(t: Duration) -> u64 {
    t.as_nanos().min(u64::MAX as u128) as u64
}

/// A time-out timer kept from one wait to the next, for waits that each
/// restart a time-out (a connection's reads: the idle and read time-outs).
/// A host timer costs an async call to start and another to cancel, and a
/// busy connection started one per message; this one keeps its timer while
/// the deadlines move later, and when it fires before the current deadline
/// starts another for the rest. One task at a time may wait on it (its
/// timer wakes the last waiter only).
#[derive(Default)]
pub(crate) struct LazyTimer(RefCell<Option<(Instant, Timer)>>);

/// A running host timer (`monotonic-clock.wait-for`).
type Timer = Pin<Box<dyn Future<Output = ()>>>;

impl LazyTimer {
    /// Ready once `deadline` has passed.
    fn poll_until(&self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let mut armed = self.0.borrow_mut();
        loop {
            match armed.as_mut() {
                // Running for this deadline or an earlier one.
                Some((at, timer)) if *at <= deadline => {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *armed = None;
                }
                // None, or running for a later one than this wait has.
                _ => {
                    let now = Instant::now();
                    if now >= deadline {
                        *armed = None;
                        return Poll::Ready(());
                    }
                    *armed = Some((deadline, Box::pin(monotonic_clock::wait_for(nanos(deadline - now)))));
                }
            }
        }
    }
}

thread_local! {
    /// Callback connections and listeners alive: a program runs until its
    /// `main` returned and this is 0 (as under the native backend).
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static LIVE_ENDED: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// One callback connection or listener alive, while this is held.
pub(crate) struct Live(());

impl Live {
    pub(crate) fn enter() -> Live {
        LIVE.set(LIVE.get() + 1);
        Live(())
    }

    /// Waits until nothing is alive.
    pub(crate) async fn all_ended() {
        poll_fn(|cx| {
            if LIVE.get() == 0 {
                return Poll::Ready(());
            }
            LIVE_ENDED.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.set(LIVE.get() - 1);
        if LIVE.get() == 0
            && let Some(waker) = LIVE_ENDED.take()
        {
            waker.wake();
        }
    }
}
