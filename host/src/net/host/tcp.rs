//! `portcullis:socket/tcp`: the `connection` and `listener` resources, on
//! [`TcpConn`] and [`GuestListener`].

use std::net::SocketAddr;
use std::time::Duration;

use wasmtime::component::{Accessor, Resource};

use super::*;
use crate::bindings::tcp::{HostConnection, HostConnectionWithStore, HostListener, HostListenerWithStore};
use crate::bindings::types::{Address, ClientConfig, ListenerConfig, TlsInfo};
use crate::limits::{MAX_IO, SOCKET_BUFFER, TLS_SESSION};
use crate::net::error::{CONNECT_FAILED, HostResult, SocketError};
use crate::net::tcp::{Timeouts, read_too_long};
use crate::net::view::{Net, NetHost, NetView};
use crate::net::{Connection, GuestListener, TcpConn};

impl<T: NetHost> HostConnectionWithStore<T> for Net {
    async fn connect(acc: &Accessor<T, Self>, config: ClientConfig) -> HostResult<Resource<Connection>> {
        let (has_callbacks, sink, policy, service_timeouts, client_tls) = acc.with(|mut access| {
            let net = &access.get().net;
            let client_tls = net.client_tls.clone();
            (net.has_callbacks, net.new_connections.clone(), net.policy.clone(), net.admission.timeouts, client_tls)
        });
        if config.callback && !has_callbacks {
            let needs = "a callback client needs the component to export portcullis:socket/callbacks";
            return Err(SocketError::generic(needs).into());
        }
        // Counted from before the connect: a flood of connects in flight is capped too.
        let host_bytes = if config.tls { SOCKET_BUFFER + TLS_SESSION } else { SOCKET_BUFFER };
        let socket = guest_socket(acc, host_bytes as usize)?;
        let resolving = policy.resolve_outbound(Use::TcpConnect, &config.host, config.port);
        let addrs = match wait_in_host(acc, resolving).await {
            Ok(addrs) => addrs,
            Err(e @ PolicyError::Denied { .. }) => return Err(logged(acc, e).into()),
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
        let tls = config.tls.then_some((&*client_tls, config.host.as_str()));
        let connecting = TcpConn::connect(&addrs, connect_timeout, timeouts, socket, tls);
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
        Ok(self.table.push(Connection { conn, served: None, _charge: Some(charge) })?)
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

    fn tls(&mut self, this: Resource<Connection>) -> wasmtime::Result<Option<TlsInfo>> {
        Ok(self.table.get(&this)?.conn.tls_info().map(|info| TlsInfo {
            protocol: info.protocol.clone(),
            cipher_suite: info.cipher_suite.clone(),
            alpn: info.alpn.clone(),
            server_name: info.server_name.clone(),
            peer_subject: info.peer_subject.clone(),
        }))
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
