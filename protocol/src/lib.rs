//! What the portcullis host and the SDK's WASI backend must agree on, in one
//! place: a service behaves the same whichever of them serves it.
//!
//! The host serves a component's connections itself (`host/src/net`, the
//! portcullis WIT); the SDK's WASI backend serves them inside the guest, on
//! standard `wasi:sockets` (`guest-sdk/src/sys/wasi`). Both follow
//! [`delivery::next`] to decide when `on_read_ready` runs, count connections
//! per client by [`address_key`], fail with the [`messages`] Ballerina's
//! socket module uses, and the host tells the WASI backend its limits through
//! the [`environment`] variables. What a guest learns of a connection's TLS
//! is one [`tls::TlsInfo`] on both sides.
//!
//! Plain data and pure functions: no I/O, no wasmtime, no tokio, no
//! dependencies, so it builds for the host and for `wasm32-wasip2`.

pub mod delivery;
pub mod environment;
pub mod messages;
pub mod tls;

use std::net::{IpAddr, Ipv6Addr};

/// The key a client address is counted under for `--max-connections-per-ip`:
/// an IPv4 address as it is (an IPv4-mapped IPv6 address as its IPv4
/// address), an IPv6 address by its /64 (one host commonly holds a whole /64,
/// so counting single addresses would let it open 2^64 connections).
///
/// ```
/// use portcullis_protocol::address_key;
/// let key = |s: &str| address_key(s.parse().unwrap()).to_string();
/// assert_eq!(key("10.0.0.7"), "10.0.0.7");
/// assert_eq!(key("::ffff:10.0.0.7"), "10.0.0.7");
/// assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
/// ```
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
