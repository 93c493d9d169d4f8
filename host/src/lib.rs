//! portcullis: run socket services compiled to WebAssembly components, with the
//! network gated.
//!
//! **To embed it**: describe a service with a [`config::ServiceSpec`] (or
//! from [`settings::ServiceSettings`] / a [`manifest`]), its bounds in
//! [`limits::Limits`] and its grants in [`policy`]; [`server::Runtime`]
//! loads it and [`server::serve`] runs it. [`cli`] is the `portcullis`
//! binary. [`component`], [`dispatch`], [`engine`] and [`guest_text`] are
//! public for the tests and the bench; everything else is the crate's own.
//!
//! The map, top to bottom (arrows go down; the one exception is `bindings`,
//! whose `with:` names `net`'s types; ARCHITECTURE.md draws them):
//!
//! - [`cli`]: `portcullis run | inspect | new`; [`admin`]: the admin
//!   endpoint (`/metrics`, `/healthz`, `/readyz`); `reload`: SIGHUP;
//!   `activation`: listeners from systemd; [`manifest`] and
//!   [`settings`]: a manifest or the flags to a [`config::ServiceSpec`];
//!   `inspect`: what a component needs; `scaffold`: a service crate of
//!   one's own.
//! - [`server`]: bind the operator's listeners, accept, hand connections on;
//!   [`server::Runtime`] owns the engine and the compile cache.
//! - [`dispatch`]: one shared instance per service (or one per connection); a
//!   driver per connection fires `on-connect` / `on-read-ready` / `on-error` /
//!   `on-close`; traps restart it.
//! - [`component`]: a service's component, linked (each capability's
//!   `add_to_linker`) and looked up once, and the stores of its instances.
//! - `blocking`: blocking WASI calls, waits like any other (and the stop
//!   that ends them); `wasi_sockets`: standard `wasi:sockets` (the SDK's
//!   WASI backend) under the policy.
//! - `state`: what one store holds (the composition root: the table, WASI,
//!   the net context, the limiter, the CPU clock) and the epoch callback.
//! - `net`: the WIT socket resources on tokio sockets (`net::tcp` is the
//!   connection state machine, `net::host` the generated-trait glue over
//!   `net::view`). `bindings`: generated from `wit/`.
//! - [`policy`]: the operator's grants, checked before every connect, bind and
//!   send; it imports nothing from the crate.
//! - [`engine`]: wasmtime configuration and the on-disk component cache;
//!   `guest_output`: a guest's stdout and stderr, which never block;
//!   [`guest_text`]: text a guest chose (trap messages, backtrace names),
//!   escaped and bounded for a host log line.
//! - [`limits`]: every bound a guest meets (memory, sockets, CPU), as plain
//!   data with defaults and as the accounts that enforce it.
//!   `coalesce`: repeated warnings written as one line per interval.
//!   [`metrics`]: the counters per service that `/metrics` shows.
//!   `sync`: the hand-written synchronisation primitives of the message
//!   path, and why tokio's own did not do.
//!
//! What the host and the SDK's WASI backend must agree on (the delivery
//! rule, messages, `PORTCULLIS_*`) is the `portcullis-protocol` crate.

pub(crate) mod activation;
pub mod admin;
pub(crate) mod bindings;
pub(crate) mod blocking;
pub mod cli;
pub(crate) mod coalesce;
pub mod component;
pub mod config;
pub mod dispatch;
pub mod engine;
pub(crate) mod guest_output;
pub mod guest_text;
pub(crate) mod inspect;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub(crate) mod net;
pub mod oci;
pub(crate) mod partial_file;
pub mod policy;
pub(crate) mod pool;
pub(crate) mod reload;
pub(crate) mod scaffold;
pub mod server;
pub mod settings;
pub(crate) mod state;
pub(crate) mod sync;
pub(crate) mod wasi_sockets;
pub mod workers;

pub use server::Runtime;
