//! Binding TCP listeners: the operator's (`--listen`) and the guest's own.
//!
//! Both fail the way Ballerina does (`unable to start the socket service: Address
//! already in use`). A guest listener accepts on its own tokio task and hands each
//! connection to the dispatcher, which fires the guest's callbacks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use crate::config::Transport;
use crate::limits::{HostCharge, SocketSlot};
use crate::metrics::{ListenerMetrics, Overflow};

use super::admission::{Admission, Admitted};
use super::error::{LISTEN_FAILED, SocketError};
use super::tcp::{TcpConn, WeakConn};
use super::tls::ServerTls;

/// Connections the kernel queues for a listener before they are accepted
/// (tokio's default; std's is 128, which a burst of idle clients fills).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Where a listener's connections go: the admission they are accepted under,
/// the dispatcher that serves them, and the TLS a `tls://` listener's
/// connections are served with.
#[derive(Clone)]
pub struct Route {
    pub admission: Admission,
    pub sink: mpsc::UnboundedSender<TcpConn>,
    /// The service's certificate and handshake bounds; `None` when it has
    /// no `tls://` listener.
    pub tls: Option<Arc<ServerTls>>,
}

impl Route {
    /// A route that never changes (a guest's own listener: plain TCP).
    pub fn fixed(admission: Admission, sink: mpsc::UnboundedSender<TcpConn>) -> watch::Receiver<Route> {
        watch::channel(Route { admission, sink, tls: None }).1
    }
}

/// The pause after a failed accept (at the open-file limit, mostly) before
/// the next try, for the host's listeners and a WASI 0.2 guest's.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Binds `addr` for listening. Must run inside a tokio runtime.
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, SocketError> {
    let listener = bind_std(addr, false)?;
    TcpListener::from_std(listener).map_err(|e| SocketError::from_io(LISTEN_FAILED, &e))
}

/// Binds `addr` for listening, non-blocking, for a runtime to take over
/// later (`TcpListener::from_std` on the worker that serves it). With
/// `reuse_port`, other sockets bound the same way may listen on the same
/// address, and the kernel spreads new connections over them (one per
/// worker).
pub fn bind_std(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, SocketError> {
    let listen = || -> std::io::Result<std::net::TcpListener> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // As std does: a restarted service can bind while old connections linger.
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    listen().map_err(|e| SocketError::from_io(LISTEN_FAILED, &e))
}

/// Accepts on `listener` until `stop`, handing each connection to `sink`.
/// Accept errors (too many open files, say) are logged (coalesced) and
/// retried after a pause: one bad moment must not end the listener.
///
/// A connection is accepted only when `admission`'s `--max-connections` has
/// room for it: at the cap, new connections wait in the kernel's listen
/// backlog (and their clients wait) until one of the service's connections
/// closes. One from an address at its `--max-connections-per-ip` is closed
/// at once.
///
/// `route` says where connections go and under which admission: a reload
/// switches it to the new version of the service, and each connection
/// accepted after that goes there (see `server::serve_versions`).
///
/// On a [`Transport::Tls`] listener, each admitted connection's handshake
/// runs on a task of its own, under the route's handshake time-out and
/// its cap of handshakes at once (at the cap, the loop waits as at
/// `--max-connections`); only a finished handshake reaches the dispatcher,
/// so a client that never finishes costs no instance. `on_accept` sees
/// plain connections only (a guest's own listeners are plain).
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    counted: Arc<ListenerMetrics>,
    route: watch::Receiver<Route>,
    stop: CancellationToken,
    mut on_accept: impl FnMut(&TcpConn),
) {
    // A listener on one address gives every connection that address as its
    // own, so each need not ask the kernel (a syscall per connection); one on
    // all interfaces does not know which a client came in on.
    let local = listener.local_addr().ok().filter(|addr| !addr.ip().is_unspecified());
    // One wait for the stop, kept across connections.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.as_mut() => return,
        };
        // This connection's admission and dispatcher (cloned: the permit wait
        // below must not hold the route).
        let admission = route.borrow().admission.clone();
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                admission.accept_failures.warn(|| format!("accept failed: {e}"));
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // The cap's place is taken after the accept, not before: a service's
        // listeners on several workers share the cap, and a loop that held a
        // place while no client came would keep it from a worker that has
        // one. So at the cap each loop holds one accepted connection,
        // unserved, and the rest wait in the kernel's backlog.
        let permit = match &admission.limit {
            Some(limit) => match place(limit, Overflow::connection_cap, &admission, stopped.as_mut()).await {
                Some(slot) => Some(slot),
                None => return,
            },
            None => None,
        };
        // Refused: dropping the stream closes it.
        let Some(admitted) = admission.admit(peer.ip(), permit) else { continue };
        let admitted = admitted.on_listener(&counted);
        if transport == Transport::Tls {
            let Some(tls) = route.borrow().tls.clone() else {
                admission.accept_failures.warn(|| "a tls:// listener with no TLS settings: closed".into());
                continue;
            };
            // One client address holds a share of the places at most.
            let Some(address_place) = tls.per_address.take(peer.ip()) else {
                admission.metrics.overflow(Overflow::handshake_per_address_cap);
                let max = tls.per_address.max();
                admission.handshake_failures.warn(|| {
                    format!("TLS handshake from {peer} refused: it has {max} under way (--tls-max-handshakes-per-ip)")
                });
                continue;
            };
            let Some(place) = place(&tls.handshakes, Overflow::handshake_cap, &admission, stopped.as_mut()).await
            else {
                return;
            };
            let (route, stop) = (route.clone(), stop.clone());
            tokio::spawn(async move {
                let _places = (place, address_place);
                let finished = tokio::select! {
                    r = tls.handshake(stream) => r,
                    _ = stop.cancelled() => return,
                };
                match finished {
                    Ok((stream, session)) => {
                        admission.metrics.tls_handshakes.inc();
                        let Some(conn) = wrap(stream, peer, local, &admission, admitted, Some(session)) else { return };
                        let _ = route.borrow().sink.send(conn);
                    }
                    Err(e) => {
                        admission.metrics.handshake_failed(e.reason());
                        admission.handshake_failures.warn(|| format!("{e} (from {peer})"));
                    }
                }
            });
            continue;
        }
        let Some(conn) = wrap(stream, peer, local, &admission, admitted, None) else { continue };
        on_accept(&conn);
        // Read now, after any wait above: a reload meanwhile sends it
        // to the new version (an old one drains what it was sent).
        if route.borrow().sink.send(conn).is_err() {
            return; // the dispatcher is gone
        }
    }
}

/// A place under `cap`: at once, or (counted as an `overflow` of
/// `reason`) once one frees, the accept loop waiting meanwhile. `None`
/// when `stopped` comes first.
async fn place(
    cap: &Arc<Semaphore>,
    reason: Overflow,
    admission: &Admission,
    stopped: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(place) = cap.clone().try_acquire_owned() {
        return Some(place);
    }
    admission.metrics.overflow(reason);
    tokio::select! {
        place = cap.clone().acquire_owned() => place.ok(),
        _ = stopped => None,
    }
}

/// The connection of an accepted `stream` (with its TLS session, if any),
/// holding its places under the caps until it closes; `None` (logged,
/// coalesced) if the socket is unusable.
fn wrap(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    admission: &Admission,
    admitted: Admitted,
    session: Option<rustls::Connection>,
) -> Option<TcpConn> {
    match TcpConn::from_accept(stream, peer, local, admission.timeouts, admission.metrics.clone(), session) {
        Ok(conn) => {
            conn.hold_permit(admitted);
            Some(conn)
        }
        Err(e) => {
            admission.accept_failures.warn(|| format!("accepted connection unusable: {e}"));
            None
        }
    }
}

/// The WIT `listener` resource: a listener the guest declared itself.
pub struct GuestListener {
    port: u16,
    /// The interface to bind, or the error that `start` reports for one
    /// that is not a host (kept as the error: a guest's long string is not
    /// kept in the host).
    interface: Result<Option<String>, SocketError>,
    /// The table entry's memory charge (see `net::host`).
    _charge: HostCharge,
    read_timeout: Duration,
    state: ListenerState,
}

enum ListenerState {
    /// Created, not started.
    New,
    /// Accepting on its own task until `stop` is cancelled.
    Listening {
        local: SocketAddr,
        stop: CancellationToken,
        /// What it accepted, to close at a stop with `close_connections`;
        /// weak, so a closed connection's socket is not kept.
        accepted: Arc<std::sync::Mutex<Vec<WeakConn>>>,
        /// The store's count of accepting listeners, decremented at stop (not
        /// when the accept task notices), so a program ends right after its
        /// last listener stops.
        active: Arc<AtomicUsize>,
        /// Its place under the instance's `--max-sockets`.
        _socket: SocketSlot,
    },
    /// Stopped; cannot be started again.
    Stopped,
}

impl GuestListener {
    pub fn new(port: u16, interface: Option<String>, read_timeout: Duration, charge: HostCharge) -> Self {
        let interface = match interface {
            Some(host) => crate::policy::check_host_text(&host).map(|()| Some(host)).map_err(SocketError::from),
            None => Ok(None),
        };
        GuestListener { port, interface, _charge: charge, read_timeout, state: ListenerState::New }
    }

    /// The port asked for (0: ephemeral).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The interface asked for; `None` is all interfaces (honoured, unlike
    /// Ballerina 1.2). An error for one that is not a host.
    pub fn interface(&self) -> Result<Option<&str>, SocketError> {
        self.interface.as_ref().map(Option::as_deref).map_err(Clone::clone)
    }

    /// Binds `addr` (already checked against the grants) and spawns the accept
    /// loop, which sends connections to `sink`, under the service's
    /// `admission` (its caps and time-outs, with this listener's read time-out).
    /// `socket` is the listener's place under the instance's socket limit,
    /// held until it stops.
    pub fn start(
        &mut self,
        addr: SocketAddr,
        sink: mpsc::UnboundedSender<TcpConn>,
        active: Arc<AtomicUsize>,
        mut admission: Admission,
        socket: SocketSlot,
    ) -> Result<(), SocketError> {
        match self.state {
            ListenerState::New => {}
            ListenerState::Listening { .. } => return Err(SocketError::generic("listener already started")),
            ListenerState::Stopped => return Err(SocketError::generic("listener was stopped")),
        }
        let listener = bind_tcp(addr)?;
        let local = listener.local_addr().map_err(SocketError::from)?;
        let stop = CancellationToken::new();
        let accepted = Arc::new(std::sync::Mutex::new(Vec::<WeakConn>::new()));
        let remember = accepted.clone();
        active.fetch_add(1, Ordering::SeqCst);
        admission.timeouts.read = self.read_timeout;
        let counted = admission.metrics.listener(&admission.component, "guest");
        let route = Route::fixed(admission, sink);
        tokio::spawn(accept_loop(listener, Transport::Tcp, counted, route, stop.clone(), move |conn| {
            let mut list = remember.lock().unwrap();
            list.retain(|c| c.open().is_some());
            list.push(conn.downgrade());
        }));
        tracing::info!(%local, "guest listener started");
        self.state = ListenerState::Listening { local, stop, accepted, active, _socket: socket };
        Ok(())
    }

    pub fn local_addr(&self) -> Result<SocketAddr, SocketError> {
        match &self.state {
            ListenerState::Listening { local, .. } => Ok(*local),
            _ => Err(SocketError::generic("listener is not started")),
        }
    }

    /// Stops accepting; with `close_connections`, also closes what it accepted.
    pub fn stop(&mut self, close_connections: bool) {
        if let ListenerState::Listening { stop, accepted, active, .. } = &self.state {
            stop.cancel();
            active.fetch_sub(1, Ordering::SeqCst);
            if close_connections {
                for conn in accepted.lock().unwrap().drain(..).filter_map(|c| c.open()) {
                    conn.close();
                }
            }
        }
        self.state = ListenerState::Stopped;
    }
}

impl Drop for GuestListener {
    fn drop(&mut self) {
        // A dropped handle stops accepting; its connections live on.
        self.stop(false);
    }
}
