//! TCP on `wasi:sockets/types@0.3.0`: a connection's read-ahead and reads,
//! its writes and shutdowns, client connects and listeners, and the delivery
//! rules a connection's dispatch follows ([`Conn::next_delivery`], by
//! `portcullis_protocol::delivery`, as the host's does).
//!
//! A connection is shared by its handles (`Rc`): the dispatch, the service's
//! `&Connection` and any clones. Its receive stream is read by one task at a
//! time (an async lock): the dispatch while it waits for bytes, or a read
//! that needs more than was read ahead. What was read and not yet taken is in
//! `inbox`, which reads take from first, so nothing read is ever lost. Its
//! send stream is written by one `write_all` at a time (another async lock),
//! so concurrent writes never interleave.
//!
//! Beside it: `listen.rs` (listeners and their accept loop) and
//! `admission.rs` (the caps on accepted connections: how many, how many per
//! client address, and the time-outs they start with).

mod admission;
mod listen;

use admission::{AcceptedSlot, LIMITS};
pub(crate) use admission::{Limits, set_limits};
pub(crate) use listen::{Listener, listen_at};

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures::lock::Mutex;
use portcullis_protocol::delivery::{self, Mark, Next, Readiness, Stream};
use wit_bindgen::{FutureReader, StreamReader, StreamResult, StreamWriter};

use super::bindings::wasi::sockets::types::{ErrorCode, TcpSocket};
use super::bindings::wit_stream;
use super::{
    CONNECT_FAILED, INVALID_READ_LENGTH, LISTEN_FAILED, MAX_IO, SOCKET_CLOSED, WRITE_AFTER_CLOSE, WRITE_TIMED_OUT,
};
use super::{
    LazyTimer, Live, Race, Signal, Waiters, bracketed, family, from_wasi, generic, race, race_deadline, race_until,
    read_timed_out, reason, resolve, socket_error, take_turns, to_wasi,
};
use crate::error::Error;
use crate::sys::Unread;

/// How a connection is served: the export glue's dispatch for the exported
/// service (set once the component exports one).
pub(crate) type ServeFn = fn(Conn) -> Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    static CALLBACKS: Cell<Option<ServeFn>> = const { Cell::new(None) };
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}
/// Makes `serve` the dispatch of callback clients and listeners' connections.
pub(crate) fn set_callbacks(serve: ServeFn) {
    CALLBACKS.set(Some(serve));
}

fn serve(conn: Conn) -> Result<(), Error> {
    let serve = CALLBACKS.get().ok_or_else(|| {
        generic("this component exports no service for callbacks (export_program!(main, callbacks = Service))")
    })?;
    // Alive from now, not from its first poll: a program's `main` may end first.
    let live = Live::enter();
    let serving = serve(conn);
    wit_bindgen::spawn_local(async move {
        serving.await;
        drop(live);
    });
    Ok(())
}

/// One connection handle (cheap to clone: the connection is shared).
#[derive(Clone)]
pub(crate) struct Conn(Rc<Shared>);

struct Shared {
    id: u64,
    accepted: bool,
    remote: SocketAddr,
    local: SocketAddr,
    read_timeout: Duration,
    /// Accepted connections: closed after this long without a byte either way.
    idle_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// When a byte last came or went.
    last_active: Cell<Instant>,
    /// The time-out of the stream read under way (one at a time: under `receive`).
    read_timer: LazyTimer,
    /// Kept until the connection closes (the streams outlive it otherwise).
    socket: RefCell<Option<TcpSocket>>,
    inbox: RefCell<Inbox>,
    receive: Mutex<Option<Receive>>,
    send: Mutex<Option<StreamWriter<u8>>>,
    /// How the send stream ended, if it failed.
    sent: RefCell<Option<FutureReader<Result<(), ErrorCode>>>>,
    closed: Signal,
    /// Closed, or its writing shut: the end of a connection whose peer ended.
    write_done: Signal,
    /// Woken when a read takes bytes: a dispatch whose read-ahead is full
    /// waits for that.
    took: Waiters,
    /// An accepted connection's place under the cap, until it closes.
    slot: RefCell<Option<AcceptedSlot>>,
}

/// The receive stream and how it ended.
struct Receive {
    stream: StreamReader<u8>,
    result: FutureReader<Result<(), ErrorCode>>,
}

/// What was read ahead, and counters that tell the dispatch whether anything
/// is new since a callback began.
#[derive(Default)]
struct Inbox {
    unread: Unread,
    /// The stream broke: reads report this (after the bytes before it).
    failed: Option<Error>,
    read_shut: bool,
    /// Times bytes (or the end, or a failure) arrived, and times a read took
    /// bytes (or the end): what the delivery rule compares.
    mark: Mark,
}

impl Inbox {
    /// The read side as the delivery rule sees it (a failure stays to be
    /// read: every read reports it).
    fn for_delivery(&self) -> delivery::ReadSide {
        let stream = match (&self.failed, self.unread.end) {
            (Some(_), _) => Stream::Failed,
            (None, true) => Stream::Ended,
            (None, false) => Stream::Open,
        };
        delivery::ReadSide {
            mark: self.mark,
            buffered: self.unread.len(),
            stream,
            end_seen: self.unread.end_read && self.failed.is_none(),
            read_shut: self.read_shut,
        }
    }
}

impl Conn {
    fn new(socket: TcpSocket, slot: Option<AcceptedSlot>, read_timeout: Duration) -> Conn {
        let accepted = slot.is_some();
        let limits = LIMITS.get();
        let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let remote = socket.get_remote_address().map(from_wasi).unwrap_or(unknown);
        let local = socket.get_local_address().map(from_wasi).unwrap_or(unknown);
        let (stream, result) = socket.receive();
        let (writer, reader) = wit_stream::new::<u8>();
        let sent = socket.send(reader);
        let id = NEXT_ID.get();
        NEXT_ID.set(id + 1);
        Conn(Rc::new(Shared {
            id,
            accepted,
            remote,
            local,
            read_timeout,
            idle_timeout: if accepted { limits.idle } else { None },
            write_timeout: limits.write,
            last_active: Cell::new(Instant::now()),
            read_timer: LazyTimer::default(),
            socket: RefCell::new(Some(socket)),
            inbox: RefCell::default(),
            receive: Mutex::new(Some(Receive { stream, result })),
            send: Mutex::new(Some(writer)),
            sent: RefCell::new(Some(sent)),
            closed: Signal::default(),
            write_done: Signal::default(),
            took: Waiters::default(),
            slot: RefCell::new(slot),
        }))
    }

    /// `None`: whatever is there, waiting for at least a byte; `Some(n)`
    /// (1 to [`MAX_IO`]): exactly `n` bytes, fewer only at the end. The read
    /// time-out restarts with every chunk that arrives.
    pub(crate) async fn read(&self, length: Option<u32>) -> Result<Vec<u8>, Error> {
        if length == Some(0) {
            return Err(generic(INVALID_READ_LENGTH));
        }
        loop {
            if let Some(out) = self.take(length.map(|n| n as usize))? {
                take_turns().await;
                return Ok(out);
            }
            if !self.fill(Some(Instant::now() + self.0.read_timeout)).await? {
                return Err(read_timed_out());
            }
        }
    }

    /// Puts `bytes` (taken by reads that then failed) back in front of the
    /// inbox, for the next read.
    pub(crate) fn restore(&self, bytes: Vec<u8>) {
        self.0.inbox.borrow_mut().unread.restore(bytes);
    }

    /// What a read returns at once, if anything.
    fn take(&self, length: Option<usize>) -> Result<Option<Vec<u8>>, Error> {
        if self.0.closed.is_set() {
            return Err(generic(SOCKET_CLOSED));
        }
        let mut inbox = self.0.inbox.borrow_mut();
        if inbox.read_shut {
            return Ok(Some(Vec::new()));
        }
        let have = inbox.unread.len();
        let enough = match length {
            None => have > 0,
            Some(n) => have >= n,
        };
        if enough || (have > 0 && (inbox.unread.end || inbox.failed.is_some())) {
            inbox.mark.taken += 1;
            let out = inbox.unread.take(length);
            drop(inbox);
            self.0.took.wake_all();
            return Ok(Some(out));
        }
        if let Some(err) = &inbox.failed {
            return Err(err.clone());
        }
        if inbox.unread.end {
            inbox.unread.end_read = true;
            inbox.mark.taken += 1;
            return Ok(Some(Vec::new()));
        }
        Ok(None)
    }

    /// Reads what the stream has (up to [`MAX_IO`] more) into the inbox, waiting
    /// at most until `deadline`. False: it timed out with nothing. A fill by
    /// another task while this one waited for the stream counts.
    async fn fill(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        let shared = &self.0;
        let before = shared.inbox.borrow().mark.arrived;
        let mut receive = match race_deadline(pin!(shared.receive.lock()), &shared.closed, deadline).await {
            Race::Done(guard) => guard,
            Race::Stopped => return Err(generic(SOCKET_CLOSED)),
            Race::TimedOut => return Ok(false),
        };
        if shared.inbox.borrow().mark.arrived != before {
            return Ok(true);
        }
        let Some(Receive { stream, .. }) = receive.as_mut() else {
            // Shut or ended: the inbox says so.
            return Ok(true);
        };
        let outcome = {
            let mut read = pin!(stream.read(Vec::with_capacity(MAX_IO)));
            let raced = match deadline {
                Some(deadline) => race_until(read.as_mut(), &shared.closed, &shared.read_timer, deadline).await,
                None => race(read.as_mut(), &shared.closed, None).await,
            };
            match raced {
                Race::Done(done) => Some(done),
                Race::Stopped => None,
                // Bytes may have come after all: a cancelled read returns them.
                Race::TimedOut => Some(read.as_mut().cancel()),
            }
        };
        let Some((status, bytes)) = outcome else {
            *receive = None;
            return Err(generic(SOCKET_CLOSED));
        };
        if bytes.is_empty() && status != StreamResult::Dropped && deadline.is_some() {
            return Ok(false);
        }
        if !bytes.is_empty() {
            shared.last_active.set(Instant::now());
            let mut inbox = shared.inbox.borrow_mut();
            inbox.unread.append(bytes);
            inbox.mark.arrived += 1;
        }
        if status == StreamResult::Dropped {
            let Receive { result, .. } = receive.take().expect("the stream was read");
            let ended = result.await;
            let mut inbox = shared.inbox.borrow_mut();
            match ended {
                Ok(()) => inbox.unread.end = true,
                Err(code) => inbox.failed = Some(generic(reason(&code))),
            }
            inbox.mark.arrived += 1;
        }
        Ok(true)
    }

    /// Waits until the dispatch should call `on_read_ready` again, by the
    /// delivery rules (the portcullis WIT, `callbacks`): something is there
    /// to read and it is new since `seen` (bytes arrived, or the last
    /// callback took some and some remain). A connection whose end the
    /// service read (or that it shut for reading) ends when it is closed or
    /// its writing shut, or after the read time-out; so does one whose
    /// failure or end the service left unread, with nothing more to come.
    pub(crate) async fn next_delivery(&self, seen: Mark) -> Readiness {
        let shared = &self.0;
        loop {
            if shared.closed.is_set() {
                return Readiness::Closed;
            }
            let (next, now) = {
                let inbox = shared.inbox.borrow();
                (delivery::next(seen, &inbox.for_delivery()), inbox.mark)
            };
            match next {
                Next::Deliver => return Readiness::Deliver(now),
                Next::ReadOver => {
                    let _ = race(pin!(shared.write_done.wait()), &shared.closed, Some(shared.read_timeout)).await;
                    return Readiness::Closed;
                }
                Next::ReadOn => {}
            }
            // Idle for the idle time-out (accepted connections): closed. (No
            // clock read here: the connection's timer tells when it passed.)
            let idle_until = shared.idle_timeout.map(|idle| shared.last_active.get() + idle);
            // A full read-ahead the service does not read: no more is read
            // (the peer meets back-pressure) until a read takes some.
            let taken = shared.inbox.borrow().mark.taken;
            if shared.inbox.borrow().unread.len() >= MAX_IO {
                let took = shared.took.until(|| shared.inbox.borrow().mark.taken != taken);
                match race_deadline(pin!(took), &shared.closed, idle_until).await {
                    Race::Done(()) => continue,
                    Race::Stopped | Race::TimedOut => return Readiness::Closed,
                }
            }
            match self.fill(idle_until).await {
                Ok(true) => {}
                // Closed, failed, or idle until the deadline.
                Ok(false) | Err(_) => return Readiness::Closed,
            }
        }
    }

    /// Writes all of `data`, waiting while the peer is slow; concurrent
    /// writes to the connection go one after another, whole.
    pub(crate) async fn write_all(&self, data: &[u8]) -> Result<(), Error> {
        let shared = &self.0;
        let mut send = shared.send.lock().await;
        if shared.write_done.is_set() {
            *send = None; // shut while an earlier write held the stream
        }
        let Some(writer) = send.as_mut() else { return Err(generic(WRITE_AFTER_CLOSE)) };
        if data.is_empty() {
            return Ok(());
        }
        // In parts, each within the write time-out: a peer that reads
        // slowly is waited for, one that does not read is given up on.
        let mut left = Vec::new();
        for part in data.chunks(MAX_IO) {
            let written = race(pin!(writer.write_all(part.to_vec())), &shared.closed, shared.write_timeout).await;
            match written {
                Race::Done(rest) if rest.is_empty() => {
                    shared.last_active.set(Instant::now());
                    take_turns().await;
                }
                Race::Done(rest) => {
                    left = rest;
                    break;
                }
                Race::Stopped => {
                    *send = None;
                    return Err(generic(WRITE_AFTER_CLOSE));
                }
                Race::TimedOut => {
                    *send = None;
                    drop(send);
                    let _ = self.close();
                    return Err(generic(WRITE_TIMED_OUT));
                }
            }
        }
        if left.is_empty() {
            if shared.write_done.is_set() {
                *send = None;
            }
            return Ok(());
        }
        // The runtime dropped the stream: the connection broke.
        *send = None;
        let sent = shared.sent.borrow_mut().take();
        let why = match sent {
            Some(sent) => match sent.await {
                Err(code) => reason(&code),
                Ok(()) => "Broken pipe".to_string(),
            },
            None => "Broken pipe".to_string(),
        };
        Err(generic(why))
    }

    /// Closes both ways, now: pending reads and writes fail, the dispatch
    /// ends (and calls `on_close`).
    pub(crate) fn close(&self) -> Result<(), Error> {
        let shared = &self.0;
        shared.closed.set();
        shared.write_done.set();
        // Whatever no task holds now goes at once; a task that holds a
        // stream drops it as it sees the close.
        if let Some(mut send) = shared.send.try_lock() {
            *send = None;
        }
        if let Some(mut receive) = shared.receive.try_lock() {
            *receive = None;
        }
        shared.socket.borrow_mut().take();
        shared.slot.borrow_mut().take();
        Ok(())
    }

    /// Stops reading: later reads return the end of the stream.
    pub(crate) fn shutdown_read(&self) -> Result<(), Error> {
        if self.0.closed.is_set() {
            return Err(generic(SOCKET_CLOSED));
        }
        self.0.inbox.borrow_mut().read_shut = true;
        if let Some(mut receive) = self.0.receive.try_lock() {
            *receive = None;
        }
        Ok(())
    }

    /// Stops writing (the peer sees the end once what was written is sent).
    pub(crate) fn shutdown_write(&self) -> Result<(), Error> {
        if self.0.closed.is_set() {
            return Err(generic(WRITE_AFTER_CLOSE));
        }
        self.0.write_done.set();
        match self.0.send.try_lock() {
            Some(mut send) => {
                *send = None;
                Ok(())
            }
            // A write in parts is under way: it ends the stream when done.
            None => Ok(()),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn is_accepted(&self) -> bool {
        self.0.accepted
    }

    pub(crate) fn remote_addr(&self) -> SocketAddr {
        self.0.remote
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.0.local
    }

    /// `wasi:sockets` gives plain TCP only.
    pub(crate) fn tls(&self) -> Option<crate::TlsInfo> {
        None
    }

    pub(crate) fn clone_handle(&self) -> Conn {
        self.clone()
    }

    /// The read side broke (the service was told, or will be by its next read).
    pub(crate) fn failed(&self) -> bool {
        self.0.inbox.borrow().failed.is_some()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.0.closed.is_set()
    }
}

/// Opens a client connection: `host` resolved through the runtime (which
/// checks the name), each address tried in turn within `connect_timeout`.
pub(crate) async fn connect(
    host: String,
    port: u16,
    read_timeout: Duration,
    connect_timeout: Duration,
    callback: bool,
    tls: bool,
) -> Result<Conn, Error> {
    if tls {
        return Err(generic(format!(
            "{CONNECT_FAILED}TLS needs the portcullis backend (wasi:sockets has plain TCP only): build without the \
             SDK's `wasi` feature"
        )));
    }
    let asked = || format!("connect tcp://{}:{port}", bracketed(&host));
    let ips = resolve(&host, CONNECT_FAILED, asked).await?;
    let mut last = generic(format!("{CONNECT_FAILED}no address for {host}"));
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match connect_one(addr, connect_timeout).await {
            Ok(socket) => {
                let conn = Conn::new(socket, None, read_timeout);
                if callback {
                    serve(conn.clone())?;
                }
                return Ok(conn);
            }
            Err(code) => last = socket_error(code, CONNECT_FAILED, asked),
        }
    }
    Err(last)
}

async fn connect_one(addr: SocketAddr, timeout: Duration) -> Result<TcpSocket, ErrorCode> {
    let socket = TcpSocket::create(family(&addr))?;
    let never = Signal::default();
    let outcome = race(pin!(socket.connect(to_wasi(addr))), &never, Some(timeout)).await;
    match outcome {
        Race::Done(result) => result.map(|()| socket),
        Race::Stopped | Race::TimedOut => Err(ErrorCode::Timeout),
    }
}
