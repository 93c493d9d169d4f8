//! `portcullis:socket/udp`: the `udp-client` resource, on [`UdpClient`]
//! (every datagram sent or admitted under the policy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Accessor, Resource, ResourceTable};

use super::*;
use crate::bindings::types::Address;
use crate::bindings::udp::{HostUdpClient, HostUdpClientWithStore, UdpClientConfig};
use crate::coalesce::Coalesced;
use crate::net::error::{HostResult, SocketError};
use crate::net::udp::{HOST_BYTES as UDP_HOST_BYTES, UdpBind};
use crate::net::view::{Net, NetHost, NetView};
use crate::net::{NetCtx, UdpClient};

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
pub(super) async fn send_datagram<T>(
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
pub(super) fn try_send_datagram(
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
        Some(Err(denied)) => return Err(net.logged(denied).into()),
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
