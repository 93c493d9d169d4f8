//! Listeners: bind, listen, and accept in a task of their own, each accepted
//! connection under the caps (`admission.rs`) and handed to the exported
//! service.

use super::*;

/// A listener; its connections go to the exported service.
pub(crate) struct Listener {
    port: u16,
    interface: Option<String>,
    read_timeout: Duration,
    started: RefCell<Option<Rc<Accepting>>>,
}

/// A started listener, shared with its accept loop.
struct Accepting {
    local: SocketAddr,
    stop: Signal,
    /// What it accepted, to close at an immediate stop.
    accepted: RefCell<Vec<Weak<Shared>>>,
}

impl Listener {
    pub(crate) fn new(port: u16, interface: Option<String>, read_timeout: Duration) -> Self {
        Listener { port, interface, read_timeout, started: RefCell::new(None) }
    }

    /// Binds and starts accepting (in a task of its own).
    pub(crate) async fn start(&self) -> Result<(), Error> {
        let host = self.interface.clone().unwrap_or_else(|| "0.0.0.0".to_string());
        let asked = || format!("listen tcp://{}:{}", bracketed(&host), self.port);
        let ip = resolve(&host, LISTEN_FAILED, asked).await?.into_iter().next();
        let ip = ip.ok_or_else(|| generic(format!("{LISTEN_FAILED}no address for {host}")))?;
        let accepting = listen(SocketAddr::new(ip, self.port), self.read_timeout)?;
        *self.started.borrow_mut() = Some(accepting);
        Ok(())
    }

    fn accepting(&self) -> Result<Rc<Accepting>, Error> {
        self.started.borrow().clone().ok_or_else(|| generic("listener is not started"))
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.accepting()?.local)
    }

    pub(crate) fn graceful_stop(&self) -> Result<(), Error> {
        self.accepting()?.stop.set();
        Ok(())
    }

    pub(crate) fn immediate_stop(&self) -> Result<(), Error> {
        let accepting = self.accepting()?;
        accepting.stop.set();
        for conn in accepting.accepted.take().iter().filter_map(Weak::upgrade) {
            let _ = Conn(conn).close();
        }
        Ok(())
    }
}

/// Binds `addr`, listens, and accepts in a task of its own until stopped
/// (or the runtime ends the stream); returns the listener's address.
pub(crate) fn listen_at(addr: SocketAddr, read_timeout: Duration) -> Result<SocketAddr, Error> {
    Ok(listen(addr, read_timeout)?.local)
}

fn listen(addr: SocketAddr, read_timeout: Duration) -> Result<Rc<Accepting>, Error> {
    let asked = || format!("listen tcp://{addr}");
    let failed = |code| socket_error(code, LISTEN_FAILED, asked);
    let socket = TcpSocket::create(family(&addr)).map_err(failed)?;
    socket.bind(to_wasi(addr)).map_err(failed)?;
    let incoming = socket.listen().map_err(failed)?;
    let local = socket.get_local_address().map(from_wasi).unwrap_or(addr);
    let accepting = Rc::new(Accepting { local, stop: Signal::default(), accepted: RefCell::default() });
    CALLBACKS.get().ok_or_else(|| {
        generic("this component exports no service for its listener (export_program!(main, callbacks = Service))")
    })?;
    let live = Live::enter();
    wit_bindgen::spawn_local(accept_loop(socket, incoming, accepting.clone(), read_timeout, live));
    Ok(accepting)
}

/// The pause after a failed accept before the next (as the host's own
/// listeners wait), in nanoseconds.
const ACCEPT_RETRY_NS: u64 = 50_000_000;

async fn accept_loop(
    _socket: TcpSocket,
    mut incoming: StreamReader<TcpSocket>,
    accepting: Rc<Accepting>,
    read_timeout: Duration,
    _live: Live,
) {
    loop {
        // At the cap, wait for a connection to close before taking the next.
        let mut slot = match race(pin!(AcceptedSlot::take()), &accepting.stop, None).await {
            Race::Done(slot) => slot,
            Race::Stopped | Race::TimedOut => return,
        };
        let next = match race(pin!(incoming.next()), &accepting.stop, None).await {
            Race::Done(Some(socket)) => socket,
            Race::Done(None) | Race::Stopped | Race::TimedOut => return,
        };
        // A connection with no peer address cannot be counted: closed too.
        // Mostly it is an accept that failed (at the open-file limit): the
        // next would fail at once as well, so wait a moment first.
        let Ok(remote) = next.get_remote_address().map(from_wasi) else {
            crate::program::warn("accept failed (at the open-file limit?); retrying in 50 ms");
            drop(next);
            if let Race::Stopped =
                race(pin!(crate::sys::wasi::monotonic_clock::wait_for(ACCEPT_RETRY_NS)), &accepting.stop, None).await
            {
                return;
            }
            continue;
        };
        if !slot.admit(remote.ip()) {
            crate::program::warn(&format!("{remote}: closed at once: its address has its most connections open"));
            continue; // `next` and `slot` drop: the connection closes
        }
        let conn = Conn::new(next, Some(slot), read_timeout);
        let mut accepted = accepting.accepted.borrow_mut();
        // Closed ones are dropped when the list is full, not at every accept.
        if accepted.len() == accepted.capacity() {
            accepted.retain(|c| c.strong_count() > 0);
        }
        accepted.push(Rc::downgrade(&conn.0));
        drop(accepted);
        if serve(conn).is_err() {
            return;
        }
    }
}
