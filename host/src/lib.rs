//! portcullis: run socket services compiled to WebAssembly components, with the
//! network gated.
//!
//! The map, top to bottom (arrows only go down):
//!
//! - [`cli`]: `portcullis run | inspect`; [`config`]: flags or a manifest to a
//!   [`config::ServiceSpec`]; [`inspect`]: what a component needs.
//! - [`server`]: bind the operator's listeners, accept, hand connections on;
//!   [`server::Runtime`] owns the engine and the compile cache.
//! - [`dispatch`]: one shared instance per service (or one per connection); a
//!   driver per connection fires `on-connect` / `on-read-ready` / `on-error` /
//!   `on-close`; traps restart it. [`component`]: a service's component,
//!   linked and looked up once, and the stores of its instances.
//! - [`net`]: the WIT socket resources on tokio sockets (`net::tcp` is the
//!   connection state machine, `net::host` the generated-trait glue).
//! - [`policy`]: the operator's grants, checked before every connect, bind and send.
//! - [`engine`]: wasmtime configuration and the on-disk component cache.
//! - [`state`]: what one store holds (the composition of the capabilities
//!   below, and the CPU bound); [`blocking`]: blocking WASI calls under that
//!   bound; [`guest_output`]: a guest's stdout and stderr, which never block.
//!   [`bindings`]: generated from `wit/`.
//! - [`limits`]: every bound a guest meets (memory, sockets, CPU), as plain
//!   data with defaults and as the accounts that enforce it.
//!   [`coalesce`]: repeated warnings written as one line per interval.
//!   [`sync`]: the hand-written synchronisation primitives of the message
//!   path, and why tokio's own did not do.

pub mod bindings;
pub mod blocking;
pub mod cli;
pub mod coalesce;
pub mod component;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod guest_output;
pub mod inspect;
pub mod limits;
pub mod net;
pub mod policy;
pub mod server;
pub mod state;
pub mod sync;

pub use server::Runtime;
