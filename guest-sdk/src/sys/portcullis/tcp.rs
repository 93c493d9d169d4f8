//! Connections and listeners on `portcullis:socket/tcp`: the guest half of
//! the delivery protocol (`wit/socket.wit`, interface `callbacks`, is its
//! specification) and writes in parts.
//!
//! The guest's side of a delivery: bytes `on-read-ready` brought are served
//! to reads first, and what the callback left of them goes back with
//! `unread` when it ends ([`Conn::end_delivery`]), together with the end of
//! the stream if no read returned it. Nothing delivered is ever dropped here:
//! a read that fails puts what it took back in front.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::task::{Poll, Waker};
use std::time::Duration;

use super::bindings::portcullis::socket::{tcp, types};
use super::bindings::service::exports::portcullis::socket::callbacks::Delivery;
use super::{IntoSdk, MAX_IO, to_socket_addr};
use crate::error::Error;
use crate::sys::Unread;

/// One connection handle, with what was delivered and not yet read.
pub(crate) struct Conn {
    handle: ManuallyDrop<tcp::Connection>,
    /// False for the host's handle lent to a callback: the host drops that one.
    owned: bool,
    delivery: RefCell<Unread>,
    /// The connection's id once asked (it never changes; asking is a host call).
    id: Cell<Option<u64>>,
}

thread_local! {
    /// Connections (by id) a `write_all` is writing in parts right now, with
    /// the tasks waiting to write to them after it.
    static PARTED_WRITES: RefCell<HashMap<u64, Vec<Waker>>> = RefCell::default();
}

/// One `write_all` in parts: other writes to its connection wait until it is
/// dropped (done, failed or cancelled).
struct PartedWrite(u64);

impl PartedWrite {
    fn begin(id: u64) -> Self {
        PARTED_WRITES.with_borrow_mut(|parted| parted.insert(id, Vec::new()));
        PartedWrite(id)
    }
}

impl Drop for PartedWrite {
    fn drop(&mut self) {
        let waiting = PARTED_WRITES.with_borrow_mut(|parted| parted.remove(&self.0)).unwrap_or_default();
        waiting.into_iter().for_each(Waker::wake);
    }
}

impl Conn {
    /// Wraps a handle the host lends for the length of one callback.
    ///
    /// # Safety
    /// `handle` must be a live borrowed handle for the duration of the returned value.
    pub(crate) unsafe fn borrowed(handle: &tcp::Connection) -> Self {
        Conn {
            handle: ManuallyDrop::new(unsafe { tcp::Connection::from_handle(handle.handle()) }),
            owned: false,
            delivery: RefCell::default(),
            id: Cell::new(None),
        }
    }

    pub(crate) fn owned(handle: tcp::Connection) -> Self {
        Conn { handle: ManuallyDrop::new(handle), owned: true, delivery: RefCell::default(), id: Cell::new(None) }
    }

    /// This handle with what `on-read-ready` brought, read before anything else.
    pub(crate) fn with_delivery(self, delivery: Delivery) -> Self {
        *self.delivery.borrow_mut() = Unread::new(delivery.data, delivery.end);
        self.id.set(Some(delivery.id));
        self
    }

    /// Gives what the service left of the delivery back to the host
    /// (`unread`), which serves it to the next read (and, if it is all of it,
    /// waits for new bytes before calling `on-read-ready` again). Called as
    /// the callback ends.
    pub(crate) fn end_delivery(&self) {
        let (rest, end_unread) = {
            let mut d = self.delivery.borrow_mut();
            (d.take(None), d.end && !d.end_read)
        };
        if !rest.is_empty() || end_unread {
            // Refused only if the host delivered less than this, which the SDK
            // never gives back: nothing to do about it here.
            let _ = self.handle.unread(&rest);
        }
    }

    /// `None`: whatever is there, waiting for at least a byte; `Some(n)`
    /// (at most [`MAX_IO`]): exactly `n` bytes, fewer only at the end. The
    /// delivered bytes (and end) first; then a plain (cheap) call, and the
    /// async one only when it must wait.
    pub(crate) async fn read(&self, length: Option<u32>) -> Result<Vec<u8>, Error> {
        let (delivered, at_end) = {
            let mut d = self.delivery.borrow_mut();
            let taken = d.take(length.map(|n| n as usize));
            let at_end = d.at_end() && length != Some(0);
            // As on the host: only an empty answer reads the end (a short one
            // brings the last bytes first).
            if at_end && taken.is_empty() {
                d.end_read = true;
            }
            (taken, at_end)
        };
        let wanted_more = match length {
            None if !delivered.is_empty() || at_end => return Ok(delivered),
            Some(n) if n > 0 && (delivered.len() == n as usize || at_end) => return Ok(delivered),
            None => None,
            Some(n) if delivered.is_empty() => Some(n),
            Some(n) => Some(n - delivered.len() as u32),
        };
        match self.read_from_host(wanted_more).await {
            Ok(more) if delivered.is_empty() => Ok(more),
            Ok(more) => Ok([delivered, more].concat()),
            Err(err) => {
                if !delivered.is_empty() {
                    self.delivery.borrow_mut().restore(delivered);
                }
                Err(err)
            }
        }
    }

    /// Puts `bytes` (taken by reads that then failed) back in front, for the
    /// next read; what is left when the callback ends goes back to the host.
    pub(crate) fn restore(&self, bytes: Vec<u8>) {
        self.delivery.borrow_mut().restore(bytes);
    }

    async fn read_from_host(&self, length: Option<u32>) -> Result<Vec<u8>, Error> {
        if let Some(ready) = self.handle.try_read(length).sdk()? {
            return Ok(ready);
        }
        self.handle.read(length).await.sdk()
    }

    /// Writes all of `data`: a plain call first (no copy, no async call), and
    /// what the socket did not take by the async call at once, so no other
    /// writer cuts in; beyond [`MAX_IO`], in parts, while other writes of
    /// this guest to the connection wait.
    pub(crate) async fn write_all(&self, data: &[u8]) -> Result<(), Error> {
        // Another task of this guest writing to this connection in parts goes
        // first (asked only while some connection is written in parts: the
        // first `id` is a host call).
        if PARTED_WRITES.with_borrow(|parted| !parted.is_empty()) {
            let id = self.id();
            std::future::poll_fn(|cx| {
                PARTED_WRITES.with_borrow_mut(|parted| match parted.get_mut(&id) {
                    Some(waiting) => {
                        waiting.push(cx.waker().clone());
                        Poll::Pending
                    }
                    None => Poll::Ready(()),
                })
            })
            .await;
        }
        let now = self.handle.try_write(data).sdk()? as usize;
        let rest = &data[now..];
        if rest.len() <= MAX_IO {
            if !rest.is_empty() {
                self.handle.write(rest.to_vec()).await.sdk()?;
            }
            return Ok(());
        }
        let _parted = PartedWrite::begin(self.id());
        for part in rest.chunks(MAX_IO) {
            self.handle.write(part.to_vec()).await.sdk()?;
        }
        Ok(())
    }

    pub(crate) fn close(&self) -> Result<(), Error> {
        self.handle.close().sdk()
    }

    pub(crate) fn shutdown_read(&self) -> Result<(), Error> {
        self.handle.shutdown_read().sdk()
    }

    pub(crate) fn shutdown_write(&self) -> Result<(), Error> {
        self.handle.shutdown_write().sdk()
    }

    pub(crate) fn id(&self) -> u64 {
        if let Some(id) = self.id.get() {
            return id;
        }
        let id = self.handle.id();
        self.id.set(Some(id));
        id
    }

    pub(crate) fn is_accepted(&self) -> bool {
        self.handle.accepted()
    }

    pub(crate) fn remote_addr(&self) -> SocketAddr {
        to_socket_addr(&self.handle.remote_address())
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        to_socket_addr(&self.handle.local_address())
    }

    pub(crate) fn tls(&self) -> Option<crate::TlsInfo> {
        self.handle.tls().map(|tls| crate::TlsInfo {
            protocol: tls.protocol,
            cipher_suite: tls.cipher_suite,
            alpn: tls.alpn,
            server_name: tls.server_name,
            peer_subject: tls.peer_subject,
        })
    }

    /// A new handle to the same connection, valid until dropped.
    pub(crate) fn clone_handle(&self) -> Conn {
        let clone = Conn::owned(self.handle.clone_handle());
        clone.id.set(self.id.get());
        clone
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: an owned handle is dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.handle) }
        }
    }
}

/// Opens a client connection (the host resolves names and checks the grant).
pub(crate) async fn connect(
    host: String,
    port: u16,
    read_timeout: Duration,
    connect_timeout: Duration,
    callback: bool,
    tls: bool,
) -> Result<Conn, Error> {
    let config = types::ClientConfig {
        host,
        port,
        read_timeout_ms: read_timeout.as_millis() as u64,
        connect_timeout_ms: connect_timeout.as_millis() as u64,
        callback,
        tls,
    };
    tcp::Connection::connect(config).await.map(Conn::owned).sdk()
}

/// A guest's listener; its connections reach the exported callbacks.
pub(crate) struct Listener {
    handle: tcp::Listener,
}

impl Listener {
    /// Declares (does not yet bind) a listener.
    pub(crate) fn new(port: u16, interface: Option<String>, read_timeout: Duration) -> Self {
        let config = types::ListenerConfig { interface, read_timeout_ms: read_timeout.as_millis() as u64 };
        Listener { handle: tcp::Listener::new(port, &config) }
    }

    fn handle(&self) -> &tcp::Listener {
        &self.handle
    }

    pub(crate) async fn start(&self) -> Result<(), Error> {
        self.handle().start().await.sdk()
    }

    pub(crate) fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(to_socket_addr(&self.handle().local_address().sdk()?))
    }

    pub(crate) fn graceful_stop(&self) -> Result<(), Error> {
        self.handle().graceful_stop().sdk()
    }

    pub(crate) fn immediate_stop(&self) -> Result<(), Error> {
        self.handle().immediate_stop().sdk()
    }
}
