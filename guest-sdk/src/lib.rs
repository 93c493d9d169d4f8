//! Write portcullis socket services in plain Rust.
//!
//! A service implements [`Service`] and exports it with [`export_service!`]; the
//! host calls its callbacks as connections come and go, and the service pulls
//! bytes with [`Connection::read`]. A program (a `fn main`) opens clients with
//! [`Client::connect`]. Nothing here needs `wit-bindgen` in your own crate.
//!
//! ```no_run
//! use portcullis_sdk::{Connection, Error, Service, export_service};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Service for Echo {
//!     async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
//!         let data = conn.read().await?;
//!         if data.is_empty() {
//!             return conn.close(); // end of stream
//!         }
//!         conn.write_all(&data).await?;
//!         Ok(())
//!     }
//! }
//!
//! export_service!(Echo);
//! ```
//!
//! The map: [`Service`] and [`export_service!`] (callbacks), [`export_program!`]
//! (an async `main`), [`Connection`] (one TCP connection), [`Client`] (open one),
//! [`Listener`] (listen from the guest), [`UdpClient`] (datagrams), [`Error`] and
//! [`ErrorKind`], [`spawn`] (work that goes on after a callback returns),
//! [`warn`] (stderr lines a peer cannot flood).
//!
//! # Backends
//!
//! The same source builds two ways:
//! - by default, against the portcullis WIT (`portcullis:socket`): the host
//!   listens (`portcullis run --listen`), reads ahead and calls the callbacks;
//! - with the cargo feature **`wasi`**, against standard `wasi:sockets@0.3.0`:
//!   the component imports only WASI interfaces and exports `wasi:cli/run`,
//!   so any runtime with WASI 0.3 sockets runs it (portcullis too, under its
//!   grants). The SDK then listens itself, where `PORTCULLIS_LISTEN`
//!   (`ADDR:PORT[,ADDR:PORT...]`) says, with `PORTCULLIS_READ_TIMEOUT_MS` as
//!   the accepted connections' read time-out and `PORTCULLIS_MAX_CONNECTIONS`
//!   as the most it serves at once, and runs the callbacks by the
//!   same rules (at most one `on_read_ready` at a time per connection, again
//!   only after a read or new bytes; `on_close` exactly once).
//!
//! ```toml
//! [dependencies]
//! portcullis-sdk = { path = "../../guest-sdk", features = ["wasi"] }
//! ```
//!
//! (or `cargo build --features portcullis-sdk/wasi` for one build). Under
//! `wasi`, policy and limits are the runtime's: a grant denial is
//! [`ErrorKind::PermissionDenied`] as under portcullis, and a name look-up
//! goes through `wasi:sockets/ip-name-lookup`.
//!
//! Inside, the public types sit on `sys`, the backend (`sys::portcullis` or
//! `sys::wasi`, each with its generated bindings at the bottom); none of them
//! shows a generated type (the bindings and the export glue are reachable
//! only through the hidden paths the macros expand to).

#![warn(missing_docs)]

mod client;
mod connection;
mod error;
mod listener;
mod program;
mod service;
mod sys;
mod udp;

pub use client::{Client, ClientConfig};
pub use connection::{Connection, TlsInfo};
pub use error::{Error, ErrorKind};
pub use listener::Listener;
pub use program::warn;
pub use service::Service;
pub use udp::{ToAddress, UdpClient, UdpConfig};

/// Runs `future` concurrently with the callback (or `main`) that spawned it,
/// in the same instance, also after that callback has returned: work that
/// must not hold up the connection whose callback started it, such as
/// writing to a slow peer. Like tokio's `spawn_local`: one thread, no
/// handle, no cancellation (end it from inside, e.g. when a write fails).
///
/// The host's bounds hold for spawned work as for the callback: its waits
/// are the callback's time-outs, and its CPU is charged like a callback's.
///
/// ```no_run
/// # fn f(conn: portcullis_sdk::Connection) {
/// portcullis_sdk::spawn(async move {
///     // The callback that spawned this has returned by now.
///     let _ = conn.write_all(b"later\n").await;
/// });
/// # }
/// ```
pub fn spawn(future: impl std::future::Future<Output = ()> + 'static) {
    wit_bindgen::spawn_local(future)
}

/// Ballerina's read time-out, the default of clients, listeners and UDP
/// sockets: 300 s.
const DEFAULT_READ_TIMEOUT: std::time::Duration = portcullis_protocol::environment::DEFAULT_TIMEOUT;

/// The generated bindings, for the export macros and for tests that call the
/// WIT directly. Not part of the API: use the types above.
#[cfg(not(feature = "wasi"))]
#[doc(hidden)]
pub use sys::portcullis::bindings as __bindings;

/// What the export macros expand to. Not part of the API.
#[cfg(not(feature = "wasi"))]
#[doc(hidden)]
pub use sys::portcullis::export as __export;

/// The WASI backend's generated bindings, for the export macros.
#[cfg(feature = "wasi")]
#[doc(hidden)]
pub use sys::wasi::bindings as __bindings;

/// What the export macros expand to under the WASI backend.
#[cfg(feature = "wasi")]
#[doc(hidden)]
pub use sys::wasi::export as __export;

/// Exports `$service` (a type implementing [`Service`] and [`Default`]) as this
/// component's callbacks: the component is then a `service`. Call it once, at
/// the crate root of a `cdylib` crate.
///
/// One value of `$service` is created (with `Default`) when the first callback
/// runs and shared by every connection of the instance, like Ballerina's
/// module-level state: all of the service's connections with `--instances
/// shared` (the default), those of one worker thread with `per-worker`, one
/// with `per-connection`; a fresh value after a trap.
///
/// ```no_run
/// use portcullis_sdk::{Connection, Error, Service, export_service};
///
/// #[derive(Default)]
/// struct Discard;
///
/// impl Service for Discard {
///     async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
///         conn.read().await.map(drop)
///     }
/// }
///
/// export_service!(Discard);
/// ```
#[cfg(not(feature = "wasi"))]
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        type __PortcullisCallbacks = $crate::__export::Exported<$service>;
        $crate::__bindings::service::__export_service!(__PortcullisCallbacks with_types_in $crate::__bindings::service);
    };
}

/// Exports an `async fn main() -> Result<(), E>` (any `E: Display`) as this
/// component's `wasi:cli/run`: the component is then a `program`, which
/// `portcullis run` runs to completion (exit code 0, or 1 after printing the
/// error). Call it once, at the crate root of a `cdylib` crate.
///
/// With `callbacks = S`, the component also exports `S` (a [`Service`]) for the
/// clients it opens with [`ClientConfig::callback`] and the connections its own
/// [`Listener`]s accept; the program then lives until those are done too.
///
/// ```no_run
/// use portcullis_sdk::{Client, Error, export_program};
///
/// async fn run() -> Result<(), Error> {
///     let conn = Client::connect("127.0.0.1", 7000).await?;
///     conn.write_all(b"Hello Ballerina").await?;
///     conn.close()
/// }
///
/// export_program!(run);
/// ```
#[cfg(not(feature = "wasi"))]
#[macro_export]
macro_rules! export_program {
    ($main:path) => {
        struct __PortcullisMain;
        impl $crate::__bindings::program::exports::wasi::cli::run::Guest for __PortcullisMain {
            async fn run() -> Result<(), ()> {
                $crate::__export::report($main().await)
            }
        }
        $crate::__bindings::program::__export_program!(__PortcullisMain with_types_in $crate::__bindings::program);
    };
    ($main:path, callbacks = $service:ty) => {
        $crate::export_program!($main);
        $crate::export_service!($service);
    };
}

/// [`export_service!`] under the WASI backend: the component exports
/// `wasi:cli/run`, which listens where `PORTCULLIS_LISTEN` says and serves
/// `$service` on every connection.
#[cfg(feature = "wasi")]
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        struct __PortcullisRun;
        impl $crate::__bindings::exports::wasi::cli::run::Guest for __PortcullisRun {
            async fn run() -> Result<(), ()> {
                $crate::__export::serve::<$service>().await
            }
        }
        $crate::__bindings::__export_run!(__PortcullisRun with_types_in $crate::__bindings);
    };
}

/// [`export_program!`] under the WASI backend: `main` as `wasi:cli/run`; with
/// `callbacks = S`, `S` serves its callback clients and listeners.
#[cfg(feature = "wasi")]
#[macro_export]
macro_rules! export_program {
    ($main:path) => {
        $crate::export_program!(@run $main, None);
    };
    ($main:path, callbacks = $service:ty) => {
        $crate::export_program!(@run $main, Some($crate::__export::callbacks::<$service>()));
    };
    (@run $main:path, $callbacks:expr) => {
        struct __PortcullisMain;
        impl $crate::__bindings::exports::wasi::cli::run::Guest for __PortcullisMain {
            async fn run() -> Result<(), ()> {
                $crate::__export::run_program($main(), $callbacks).await
            }
        }
        $crate::__bindings::__export_run!(__PortcullisMain with_types_in $crate::__bindings);
    };
}
