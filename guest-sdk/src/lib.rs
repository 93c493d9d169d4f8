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
//! The map: [`Service`] and [`export_service!`] (callbacks), [`Connection`] (one
//! TCP connection), [`Client`] (open one), [`Listener`] (listen from the guest),
//! [`Error`] and [`ErrorKind`], [`block_on`] (await from a synchronous `main`).

mod connection;
mod error;
mod service;

pub use connection::{Client, ClientConfig, Connection, Listener};
pub use error::{Error, ErrorKind};
pub use service::Service;

/// Runs a future to completion from synchronous code, such as a program's `main`.
///
/// ```no_run
/// use portcullis_sdk::{Client, block_on};
///
/// fn main() {
///     let conn = block_on(Client::connect("127.0.0.1", 7000)).expect("connect");
///     block_on(conn.write_all(b"hello")).expect("write");
/// }
/// ```
pub fn block_on<T: 'static>(future: impl std::future::Future<Output = T> + 'static) -> T {
    wit_bindgen::block_on(future)
}

/// The generated bindings. Not part of the API: use the types above.
#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "service",
        pub_export_macro: true,
        export_macro_name: "__export_callbacks",
        default_bindings_module: "portcullis_sdk::__bindings",
        generate_all,
    });
}

#[doc(hidden)]
pub mod __private {
    pub use crate::service::Dispatch;
}

/// Exports `$service` (a type implementing [`Service`] and [`Default`]) as this
/// component's callbacks. Call it once, at the crate root.
///
/// One value of `$service` is created (with `Default`) when the first callback
/// runs and shared by every connection, like Ballerina's module-level state.
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
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        type __PortcullisCallbacks = $crate::__private::Dispatch<$service>;
        $crate::__bindings::__export_callbacks!(__PortcullisCallbacks with_types_in $crate::__bindings);
    };
}
