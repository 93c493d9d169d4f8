//! The generated WIT host traits for `portcullis:socket/{tcp,udp}`, implemented on
//! the store's [`NetView`] (any state that is a [`NetHost`]): look the resource
//! up, convert, delegate to `tcp` or `listener`. A handle the guest does not own is a trap (a broken guest), every
//! socket failure is an `error` value (an ordinary outcome). Both go up with
//! `?` as a [`HostError`]; `types::Host::convert_error` tells them apart.
//!
//! Here: the helpers every call shares (waits, charges, the policy) and
//! `add_to_linker`; the connection and listener traits are in `tcp.rs`, the
//! UDP client's in `udp.rs`.

mod tcp;
mod udp;

use udp::{send_datagram, try_send_datagram};

use std::net::SocketAddr;

use wasmtime::component::{Accessor, Linker, Resource};

use super::error::{ErrorKind, HostError, HostResult, SocketError};
use super::tcp::write_too_long;
use super::udp::{MAX_DATAGRAM, datagram_too_large};
use super::view::{Net, NetHost, NetView};
use super::{Connection, UdpClient};
use crate::bindings::types::{self, Address};
use crate::limits::{GuestSocket, HostCharge, MAX_IO};
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
fn logged<T>(acc: &Accessor<T, Net>, err: PolicyError) -> SocketError {
    acc.with(|mut access| access.get().net.logged(err))
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
/// Same checks, same results as the `HostConnection` methods they shadow.
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
