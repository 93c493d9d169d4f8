//! Rust types generated from `wit/socket.wit`, and nothing else.
//!
//! The generated traits are implemented in `net::host`; the socket state machine in
//! `net::tcp` never sees generated types. Functions whose WIT result carries an
//! `error` return [`HostError`](crate::net::error::HostError), a guest error or
//! a trap.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "service",
    imports: { default: trappable },
    exports: { default: async | store },
    trappable_error_type: { "portcullis:socket/types.error" => crate::net::error::HostError },
    with: {
        "portcullis:socket/tcp.connection": crate::net::Connection,
        "portcullis:socket/tcp.listener": crate::net::GuestListener,
        "portcullis:socket/udp.udp-client": crate::net::UdpClient,
    },
});

pub use self::portcullis::socket::{tcp, types, udp};
