//! The generated WIT host traits for `portcullis:socket/{tcp,udp}`, implemented on
//! the store's [`NetView`] (any state that is a [`NetHost`]): look the resource
//! up, convert, delegate to `tcp` or `listener`. A handle the guest does not own is a trap (a broken guest), every
//! socket failure is an `error` value (an ordinary outcome). Both go up with
//! `?` as a [`HostError`]; `types::Host::convert_error` tells them apart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Accessor, Linker, Resource, ResourceTable};

use super::error::{CONNECT_FAILED, ErrorKind, HostError, HostResult, SocketError};
use super::tcp::{Timeouts, read_too_long, write_too_long};
use super::udp::{HOST_BYTES as UDP_HOST_BYTES, MAX_DATAGRAM, UdpBind, datagram_too_large};
use super::view::{Net, NetHost, NetView};
use super::{Connection, GuestListener, NetCtx, TcpConn, UdpClient};
use crate::bindings::tcp::{HostConnection, HostConnectionWithStore, HostListener, HostListenerWithStore};
use crate::bindings::types::{self, Address, ClientConfig, ListenerConfig};
use crate::bindings::udp::{HostUdpClient, HostUdpClientWithStore, UdpClientConfig};
use crate::coalesce::Coalesced;
use crate::limits::{GuestSocket, HostCharge, MAX_IO, SOCKET_BUFFER};
use crate::policy::{Policy, PolicyError, Use, target_text};

impl From<SocketError> for types::Error {
    fn from(e: SocketError) -> Self {
        types::Error {
            kind: match e.kind {
                ErrorKind::Generic => types::ErrorKind::Generic,
                ErrorKind::ReadTimedOut => types::ErrorKind::ReadTimedOut,
                ErrorKind::PermissionDenied => types::ErrorKind::PermissionDenied,
            },
            message: e.message,
            cause: e.cause,
        }
    }
}

pub fn to_address(addr: SocketAddr) -> Address {
    Address { host: Some(ip_text(addr.ip())), port: addr.port() }
}

/// `ip.to_string()`, with IPv4 (every received datagram's sender, mostly)
/// written digit by digit instead of through `fmt` (4% of a UDP echo).
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

fn policy_of<T>(acc: &Accessor<T, Net>) -> std::sync::Arc<Policy> {
    acc.with(|mut access| access.get().net.policy.clone())
}

/// Awaits `work`; if it had to wait (the guest was suspended), the guest truly
/// waited and its CPU bound starts over (see `limits::cpu`). A call that completes
/// at once resets nothing, so a loop of cheap calls is still bounded. The work
/// runs outside tokio's cooperative budget: that budget makes a future that
/// is ready say "pending" now and then (to let others run), which would count
/// as a wait; a guest that computes gives the thread away at epoch ticks
/// instead.
async fn wait_in_host<T, F: Future>(acc: &Accessor<T, Net>, work: F) -> F::Output {
    let mut work = std::pin::pin!(tokio::task::coop::unconstrained(work));
    let mut suspended = false;
    let out = std::future::poll_fn(|cx| {
        let poll = work.as_mut().poll(cx);
        suspended |= poll.is_pending();
        poll
    })
    .await;
    if suspended {
        acc.with(|mut access| access.get().wait_ended());
    }
    out
}

/// A place for one more socket of this instance (`--max-sockets`) and the
/// charge for what the host keeps for it (`host_bytes`, against
/// `--max-memory`), or the guest's error.
fn guest_socket<T>(acc: &Accessor<T, Net>, host_bytes: usize) -> Result<GuestSocket, SocketError> {
    acc.with(|mut access| {
        let state = access.get();
        let slot = state.net.sockets.take().map_err(|e| state.net.limited(e))?;
        let charge = state.memory.charge(host_bytes, "a socket's buffers").map_err(SocketError::generic)?;
        Ok(GuestSocket { slot, charge })
    })
}

/// What the host holds for a pending async call (wasmtime's task and the
/// call's own state: ~1.7 KB measured), charged to the instance while the call
/// runs, so that the number of calls a guest keeps pending is bounded by its
/// memory limit too.
const PENDING_CALL_BYTES: usize = 4096;

/// What one resource-table entry holds in the host (a handle or a listener
/// not started: ~100–230 bytes measured), charged while it exists.
const TABLE_ENTRY_BYTES: usize = 256;

/// The charge for one async call, or the guest's error past its limit.
fn pending_call<T>(acc: &Accessor<T, Net>) -> Result<HostCharge, SocketError> {
    acc.with(|mut access| access.get().memory.charge(PENDING_CALL_BYTES, "a pending call"))
        .map_err(SocketError::generic)
}

/// Logs a denial at warn level (see `NetCtx::logged`) and passes it on.
fn logged<T>(acc: &Accessor<T, Net>, err: impl Into<SocketError>) -> SocketError {
    acc.with(|mut access| access.get().net.logged(err.into()))
}

/// Writes `data` (already out of the guest) whole. Its bytes are charged to
/// the instance while the write waits: at most [`MAX_IO`] per call, and all
/// pending writes of an instance within its memory limit.
async fn write_held<T>(acc: &Accessor<T, Net>, this: &Resource<Connection>, data: Vec<u8>) -> HostResult<u32> {
    if data.len() > MAX_IO {
        return Err(SocketError::generic(write_too_long(data.len())).into());
    }
    let (conn, charge) = acc.with(|mut access| -> wasmtime::Result<_> {
        let state = access.get();
        let bytes = PENDING_CALL_BYTES + data.len();
        Ok((state.table.get(this)?.conn.clone(), state.memory.charge(bytes, "a pending write")))
    })?;
    let _charge = charge.map_err(SocketError::generic)?;
    Ok(wait_in_host(acc, conn.write_all(&data)).await?)
}

impl types::Host for NetView<'_> {
    fn convert_error(&mut self, err: HostError) -> wasmtime::Result<types::Error> {
        Ok(err.into_guest_error()?.into())
    }
}
impl crate::bindings::tcp::Host for NetView<'_> {}
impl crate::bindings::udp::Host for NetView<'_> {}

impl<T: NetHost> HostConnectionWithStore<T> for Net {
    async fn connect(acc: &Accessor<T, Self>, config: ClientConfig) -> HostResult<Resource<Connection>> {
        let (has_callbacks, sink, policy, service_timeouts) = acc.with(|mut access| {
            let net = &access.get().net;
            (net.has_callbacks, net.new_connections.clone(), net.policy.clone(), net.admission.timeouts)
        });
        if config.callback && !has_callbacks {
            let needs = "a callback client needs the component to export portcullis:socket/callbacks";
            return Err(SocketError::generic(needs).into());
        }
        // Counted from before the connect: a flood of connects in flight is capped too.
        let socket = guest_socket(acc, SOCKET_BUFFER as usize)?;
        let resolving = policy.resolve_outbound(Use::TcpConnect, &config.host, config.port);
        let addrs = match wait_in_host(acc, resolving).await {
            Ok(addrs) => addrs,
            Err(e @ PolicyError::Denied(_)) => return Err(logged(acc, e).into()),
            Err(e) => {
                let reason = SocketError::from(e).message;
                return Err(SocketError::generic(format!("{CONNECT_FAILED}{reason}")).into());
            }
        };
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        // The service's write time-out; its idle time-out too when the host
        // drives the connection's callbacks (a guest reading in a loop has
        // its read time-out instead).
        let timeouts = Timeouts {
            read: Duration::from_millis(config.read_timeout_ms.max(1)),
            idle: if config.callback { service_timeouts.idle } else { None },
            write: service_timeouts.write,
        };
        let connecting = TcpConn::connect(&addrs, connect_timeout, timeouts, socket);
        let conn = wait_in_host(acc, connecting).await?;
        tracing::debug!(id = conn.id(), remote = %conn.remote_addr(), "client connection open");
        if config.callback {
            // The dispatcher fires on-connect / on-read-ready / on-close for it.
            let _ = sink.send(conn.clone());
        }
        Ok(acc.with(|mut access| access.get().table.push(Connection::new(conn)))?)
    }

    // What the bindings require; `add_bounded_lists` links a twin that checks
    // the length before copying anything out of the guest.
    async fn write(acc: &Accessor<T, Self>, this: Resource<Connection>, data: Vec<u8>) -> HostResult<u32> {
        write_held(acc, &this, data).await
    }

    async fn read(acc: &Accessor<T, Self>, this: Resource<Connection>, length: Option<u32>) -> HostResult<Vec<u8>> {
        let (conn, _charge) = acc.with(|mut access| -> HostResult<_> {
            let state = access.get();
            let conn = state.table.get(&this)?.conn.clone();
            // What a read gathers is held in the host until it completes.
            let gathered = match length {
                Some(n) if n as usize > MAX_IO => return Err(SocketError::generic(read_too_long(n)).into()),
                Some(n) => n as usize,
                None => 0,
            };
            let charge = state.memory.charge(PENDING_CALL_BYTES + gathered, "a read").map_err(SocketError::generic)?;
            Ok((conn, charge))
        })?;
        Ok(wait_in_host(acc, conn.read(length)).await?)
    }
}

impl HostConnection for NetView<'_> {
    fn close(&mut self, this: Resource<Connection>) -> HostResult<()> {
        self.table.get(&this)?.conn.close();
        Ok(())
    }

    fn try_read(&mut self, this: Resource<Connection>, length: Option<u32>) -> HostResult<Option<Vec<u8>>> {
        Ok(self.table.get(&this)?.conn.try_read(length)?)
    }

    fn unread(&mut self, this: Resource<Connection>, data: Vec<u8>) -> HostResult<()> {
        Ok(self.table.get(&this)?.conn.unread(data, self.memory)?)
    }

    // What the bindings require; `add_bounded_lists` links a copy-free twin instead.
    fn try_write(&mut self, this: Resource<Connection>, data: Vec<u8>) -> HostResult<u32> {
        Ok(self.table.get(&this)?.conn.try_write(&data)?)
    }

    fn shutdown_read(&mut self, this: Resource<Connection>) -> HostResult<()> {
        Ok(self.table.get(&this)?.conn.shutdown_read()?)
    }

    fn shutdown_write(&mut self, this: Resource<Connection>) -> HostResult<()> {
        Ok(self.table.get(&this)?.conn.shutdown_write()?)
    }

    fn id(&mut self, this: Resource<Connection>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.conn.id())
    }

    fn clone_handle(&mut self, this: Resource<Connection>) -> wasmtime::Result<Resource<Connection>> {
        let conn = self.table.get(&this)?.conn.clone();
        // A handle costs the host a table entry: charged, so that a guest
        // cloning in a loop meets its memory limit (the call cannot fail in
        // the WIT, so past the limit it traps).
        let charge = self.memory.charge(TABLE_ENTRY_BYTES, "a handle").map_err(wasmtime::Error::msg)?;
        Ok(self.table.push(Connection { conn, served: None, charge: Some(charge) })?)
    }

    fn accepted(&mut self, this: Resource<Connection>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.conn.accepted())
    }

    fn remote_address(&mut self, this: Resource<Connection>) -> wasmtime::Result<Address> {
        Ok(to_address(self.table.get(&this)?.conn.remote_addr()))
    }

    fn local_address(&mut self, this: Resource<Connection>) -> wasmtime::Result<Address> {
        Ok(to_address(self.table.get(&this)?.conn.local_addr()))
    }

    fn drop(&mut self, this: Resource<Connection>) -> wasmtime::Result<()> {
        // Dropping a handle does not close the connection: other handles (and the
        // dispatcher) may still use it.
        let handle = self.table.delete(this)?;
        if handle.served.is_some() {
            // The guest is done with one connection of an `on-read-ready-batch`:
            // the next one's work gets the bound a callback of its own would
            // (once per lent handle, so a batch of N gets at most N bounds).
            self.next_of_batch();
        }
        Ok(())
    }
}

impl<T: NetHost> HostListenerWithStore<T> for Net {
    async fn start(acc: &Accessor<T, Self>, this: Resource<GuestListener>) -> HostResult<()> {
        let (port, interface, policy, has_callbacks) = acc.with(|mut access| -> wasmtime::Result<_> {
            let state = access.get();
            let listener = state.table.get(&this)?;
            let interface = listener.interface().map(|i| i.map(str::to_string));
            Ok((listener.port(), interface, state.net.policy.clone(), state.net.has_callbacks))
        })?;
        let interface = interface?;
        let _call = pending_call(acc)?;
        if !has_callbacks {
            let needs = "a listener needs the component to export portcullis:socket/callbacks";
            return Err(SocketError::generic(needs).into());
        }
        let resolving = policy.resolve_bind(Use::TcpListen, interface.as_deref(), port);
        let addr = match wait_in_host(acc, resolving).await {
            Ok(Some(addr)) => addr,
            Ok(None) => SocketAddr::from(([0, 0, 0, 0], port)),
            Err(e) => return Err(logged(acc, e).into()),
        };
        acc.with(|mut access| {
            let state = access.get();
            let net = &state.net;
            let socket = net.sockets.take().map_err(|e| net.limited(e))?;
            let (sink, active, admission) =
                (net.new_connections.clone(), net.active_listeners.clone(), net.admission.clone());
            Ok(state.table.get_mut(&this)?.start(addr, sink, active, admission, socket)?)
        })
    }
}

impl HostListener for NetView<'_> {
    fn new(&mut self, port: u16, config: ListenerConfig) -> wasmtime::Result<Resource<GuestListener>> {
        let read_timeout = Duration::from_millis(config.read_timeout_ms.max(1));
        // Charged like a handle (see `clone_handle`).
        let charge = self.memory.charge(TABLE_ENTRY_BYTES, "a listener").map_err(wasmtime::Error::msg)?;
        Ok(self.table.push(GuestListener::new(port, config.interface, read_timeout, charge))?)
    }

    fn graceful_stop(&mut self, this: Resource<GuestListener>) -> HostResult<()> {
        self.table.get_mut(&this)?.stop(false);
        Ok(())
    }

    fn immediate_stop(&mut self, this: Resource<GuestListener>) -> HostResult<()> {
        self.table.get_mut(&this)?.stop(true);
        Ok(())
    }

    fn local_address(&mut self, this: Resource<GuestListener>) -> HostResult<Address> {
        Ok(to_address(self.table.get(&this)?.local_addr()?))
    }

    fn drop(&mut self, this: Resource<GuestListener>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

fn udp_of<T>(acc: &Accessor<T, Net>, handle: &Resource<UdpClient>) -> wasmtime::Result<UdpClient> {
    acc.with(|mut access| Ok(access.get().table.get(handle)?.clone()))
}

impl<T: NetHost> HostUdpClientWithStore<T> for Net {
    async fn bind(
        acc: &Accessor<T, Self>,
        local: Option<Address>,
        config: UdpClientConfig,
    ) -> HostResult<Resource<UdpClient>> {
        let policy = policy_of(acc);
        let (host, port) = match &local {
            Some(address) => (address.host.as_deref(), address.port),
            None => (None, 0),
        };
        let socket = guest_socket(acc, UDP_HOST_BYTES)?;
        let bind = match wait_in_host(acc, policy.resolve_bind(Use::UdpBind, host, port)).await {
            Ok(Some(addr)) => UdpBind::Addr(addr),
            Ok(None) => UdpBind::AllInterfaces(port),
            Err(e) => return Err(logged(acc, e).into()),
        };
        let read_timeout = Duration::from_millis(config.read_timeout_ms.max(1));
        let client = wait_in_host(acc, UdpClient::bind(bind, read_timeout, socket)).await?;
        Ok(acc.with(|mut access| access.get().table.push(client))?)
    }

    // What the bindings require; `add_bounded_lists` links a twin that checks
    // the datagram's size before copying it out of the guest.
    async fn send_to(
        acc: &Accessor<T, Self>,
        this: Resource<UdpClient>,
        data: Vec<u8>,
        address: Address,
    ) -> HostResult<u32> {
        send_datagram(acc, &this, data, address).await
    }

    async fn receive_from(
        acc: &Accessor<T, Self>,
        this: Resource<UdpClient>,
        length: Option<u32>,
    ) -> HostResult<(Vec<u8>, Address)> {
        let client = udp_of(acc, &this)?;
        let _call = pending_call(acc)?;
        let (policy, refusals) = acc.with(|mut a| {
            let net = &a.get().net;
            (net.policy.clone(), net.udp_refusals.clone())
        });
        let admit = |from| admit_sender(&client, &policy, &refusals, from);
        let (data, from) = wait_in_host(acc, client.receive_from(length, admit)).await?;
        Ok((data, to_address(from)))
    }
}

/// `send-to` of `data` (already out of the guest, at most one datagram).
async fn send_datagram<T>(
    acc: &Accessor<T, Net>,
    this: &Resource<UdpClient>,
    data: Vec<u8>,
    address: Address,
) -> HostResult<u32> {
    let client = udp_of(acc, this)?;
    let _call = pending_call(acc)?;
    let host = send_host(&client, data.len(), address.host)?;
    let policy = policy_of(acc);
    let resolving = policy.resolve_outbound(Use::UdpSend, &host, address.port);
    let target = match wait_in_host(acc, resolving).await {
        Ok(addrs) => addrs[0],
        Err(e) => return Err(logged(acc, e).into()),
    };
    Ok(wait_in_host(acc, client.send_to(&data, target)).await?)
}

/// `try-send-to` of `data`, read where it lies (guest memory, for the twin).
fn try_send_datagram(
    table: &ResourceTable,
    net: &NetCtx,
    this: &Resource<UdpClient>,
    data: &[u8],
    address: Address,
) -> HostResult<Option<u32>> {
    let client = table.get(this)?.clone();
    let host = send_host(&client, data.len(), address.host)?;
    let target = match net.policy.check_literal(Use::UdpSend, &host, address.port) {
        Some(Ok(target)) => target,
        Some(Err(denied)) => return Err(net.logged(denied.into()).into()),
        None => return Ok(None), // a name: `send-to` looks it up
    };
    Ok(client.try_send_to(data, target)?)
}

/// What `send-to` and `try-send-to` check before the target: the client is
/// open, the datagram fits, and there is a host to send to (returned).
fn send_host(client: &UdpClient, len: usize, host: Option<String>) -> Result<String, SocketError> {
    client.check_send(len)?;
    host.ok_or_else(|| SocketError::generic("send-to needs an address with a host"))
}

/// Replies from peers a client sent to are in; anyone else needs a grant.
/// A datagram from anyone else is dropped, never an error to the guest (a
/// stranger must not be able to end a receiving program), and logged
/// (coalesced: a flood writes a line a second).
fn admit_sender(client: &UdpClient, policy: &Policy, refusals: &Arc<Coalesced>, from: SocketAddr) -> bool {
    if client.sent_to(from) || policy.check_addr(from, Use::UdpReceive) {
        return true;
    }
    refusals.warn(|| {
        format!(
            "dropped a datagram from {}: receiving from it is not granted",
            target_text(Use::UdpReceive, &from.ip().to_string(), from.port())
        )
    });
    false
}

impl HostUdpClient for NetView<'_> {
    // What the bindings require; `add_bounded_lists` links a copy-free twin.
    fn try_send_to(&mut self, this: Resource<UdpClient>, data: Vec<u8>, address: Address) -> HostResult<Option<u32>> {
        try_send_datagram(self.table, self.net, &this, &data, address)
    }

    fn try_receive_from(
        &mut self,
        this: Resource<UdpClient>,
        length: Option<u32>,
    ) -> HostResult<Option<(Vec<u8>, Address)>> {
        let client = self.table.get(&this)?.clone();
        let admit = |from| admit_sender(&client, &self.net.policy, &self.net.udp_refusals, from);
        let received = client.try_receive_from(length, admit)?;
        Ok(received.map(|(data, from)| (data, to_address(from))))
    }

    fn close(&mut self, this: Resource<UdpClient>) -> HostResult<()> {
        self.table.get(&this)?.close();
        Ok(())
    }

    fn local_address(&mut self, this: Resource<UdpClient>) -> HostResult<Address> {
        Ok(to_address(self.table.get(&this)?.local_addr()?))
    }

    fn drop(&mut self, this: Resource<UdpClient>) -> wasmtime::Result<()> {
        self.table.delete(this)?.close();
        Ok(())
    }
}

/// What the generated glue does with a [`HostResult`] (see
/// `types::Host::convert_error`), for the twins linked by hand: the guest's
/// error as a value, a trap as a trap.
fn guest_result<T>(result: HostResult<T>) -> wasmtime::Result<Result<T, types::Error>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(err) => Ok(Err(err.into_guest_error()?.into())),
    }
}

/// The portcullis sockets (`portcullis:socket/types`, `tcp`, `udp`), added
/// to `linker`: the generated glue, then the copy-free twins of the functions
/// that take a `list<u8>`.
pub fn add_to_linker<T: NetHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    crate::bindings::Service::add_to_linker::<T, Net>(linker, T::net)?;
    add_bounded_lists(linker)
}

/// Replaces generated functions that take a `list<u8>` with twins that read
/// it straight from guest memory (`WasmList`) instead of having it copied into
/// a `Vec` first:
/// - `try-write` writes from guest memory (at 16 KiB messages the copy was a
///   fifth of the host's work per message);
/// - `write` and `unread` check the length first, so a guest cannot make the
///   host copy a list larger than [`MAX_IO`] (a write) or than it may give
///   back (`TcpConn::unread_allowance`);
/// - UDP `send-to` checks the datagram's size first, and `try-send-to` sends
///   from guest memory.
///
/// Same checks, same results as the [`HostConnection`] methods they shadow.
fn add_bounded_lists<T: NetHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime::component::WasmList;
    linker.allow_shadowing(true);
    let mut tcp = linker.instance("portcullis:socket/tcp@0.1.0")?;
    tcp.func_wrap(
        "[method]connection.try-write",
        |store: wasmtime::StoreContextMut<'_, T>, (this, data): (Resource<Connection>, WasmList<u8>)| {
            let conn = &store.data().net_ref().0.get(&this)?.conn;
            Ok((conn.try_write(data.as_le_slice(&store)).map_err(types::Error::from),))
        },
    )?;
    tcp.func_wrap(
        "[method]connection.unread",
        |mut store: wasmtime::StoreContextMut<'_, T>, (this, data): (Resource<Connection>, WasmList<u8>)| {
            let memory = store.data_mut().net().memory.clone();
            let conn = &store.data().net_ref().0.get(&this)?.conn;
            // Never more than the delivery and the reads since brought.
            let allowed = conn.unread_allowance();
            let result = if data.len() > allowed {
                Err(SocketError::generic(format!(
                    "unread gives back {} bytes, but on-read-ready and the reads since brought {allowed}",
                    data.len()
                )))
            } else {
                conn.unread(data.as_le_slice(&store).to_vec(), &memory)
            };
            Ok((result.map_err(types::Error::from),))
        },
    )?;
    let mut udp = linker.instance("portcullis:socket/udp@0.1.0")?;
    udp.func_wrap(
        "[method]udp-client.try-send-to",
        |store: wasmtime::StoreContextMut<'_, T>,
         (this, data, address): (Resource<UdpClient>, WasmList<u8>, Address)| {
            let (table, net) = store.data().net_ref();
            Ok((guest_result(try_send_datagram(table, net, &this, data.as_le_slice(&store), address))?,))
        },
    )?;
    udp.func_wrap_concurrent(
        "[method]udp-client.send-to",
        |acc: &Accessor<T>, (this, data, address): (Resource<UdpClient>, WasmList<u8>, Address)| {
            Box::pin(async move {
                if data.len() > MAX_DATAGRAM {
                    return Ok((Err(types::Error::from(SocketError::generic(datagram_too_large(data.len())))),));
                }
                let bytes = acc.with(|access| data.as_le_slice(&access).to_vec());
                let net = acc.with_getter::<Net>(T::net);
                Ok((guest_result(send_datagram(&net, &this, bytes, address).await)?,))
            })
        },
    )?;
    let mut tcp = linker.instance("portcullis:socket/tcp@0.1.0")?;
    tcp.func_wrap_concurrent(
        "[method]connection.write",
        |acc: &Accessor<T>, (this, data): (Resource<Connection>, WasmList<u8>)| {
            Box::pin(async move {
                if data.len() > MAX_IO {
                    return Ok((Err(types::Error::from(SocketError::generic(write_too_long(data.len())))),));
                }
                let bytes = acc.with(|access| data.as_le_slice(&access).to_vec());
                let net = acc.with_getter::<Net>(T::net);
                Ok((guest_result(write_held(&net, &this, bytes).await)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn ip_text_writes_what_to_string_writes() {
        for octet in 0..=255u8 {
            let ip = IpAddr::V4(Ipv4Addr::new(octet, 255 - octet, octet / 3, 10));
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
        for ip in ["::1", "fe80::1:2", "::ffff:127.0.0.1", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
