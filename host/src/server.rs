//! Serving one component: bind the operator's listeners, accept, and hand every
//! connection to the dispatcher until shutdown.
//!
//! Shutdown is a parameter (a [`CancellationToken`]): the binary cancels it on
//! SIGINT/SIGTERM, tests cancel it when they are done.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;

use crate::config::Instances;
use crate::dispatch::{self, Loaded};
use crate::engine;
use crate::net::listener::{accept_loop, bind_tcp};
use crate::policy::Policy;

/// The shared engine and compile cache; load components through it.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<std::path::PathBuf>,
}

impl Runtime {
    /// A runtime with the default cache folder (see [`engine::default_cache_dir`]).
    pub fn new() -> Result<Self> {
        Ok(Runtime { engine: engine::new_engine()?, cache_dir: engine::default_cache_dir() })
    }

    /// A runtime on a pooled engine (see [`engine::new_pooled_engine`]).
    pub fn pooled(max_instances: u32) -> Result<Self> {
        Ok(Runtime { engine: engine::new_pooled_engine(max_instances)?, cache_dir: engine::default_cache_dir() })
    }

    /// Uses `dir` for compiled components, or no cache with `None`.
    pub fn with_cache_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, compiles (or loads from cache) and links the component at `path`,
    /// to run with `env` under `policy`.
    pub fn load(&self, path: &Path, env: Vec<(String, String)>, policy: Policy) -> Result<Arc<Loaded>> {
        let component = self.compile(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Arc::new(Loaded::new(&self.engine, &component, &name, env, Arc::new(policy))?))
    }

    /// Reads and compiles (or loads from cache) the component at `path`.
    pub fn compile(&self, path: &Path) -> Result<wasmtime::component::Component> {
        engine::load_component(&self.engine, path, self.cache_dir.as_deref())
    }
}

/// Binds every address in `addrs`, failing on the first that cannot be bound
/// (`unable to start the socket service: Address already in use`).
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    addrs.iter().map(|addr| bind_tcp(*addr).map_err(anyhow::Error::from)).collect()
}

/// How a service treats what its listeners accept.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Read time-out of accepted connections.
    pub read_timeout: Duration,
    /// Which instance serves an accepted connection.
    pub instances: Instances,
    /// The most connections served at once, over all the listeners (the
    /// guest's own included); further ones wait in the listen backlog until
    /// one closes. `None`: no limit.
    pub max_connections: Option<NonZeroUsize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            read_timeout: crate::net::DEFAULT_READ_TIMEOUT,
            instances: Instances::Shared,
            max_connections: None,
        }
    }
}

/// Serves `loaded` on `listeners` (already bound) until `shutdown` is cancelled,
/// or, for a program, until its `main` and callback connections are done.
/// Returns the exit code.
pub async fn serve(
    loaded: Arc<Loaded>,
    listeners: Vec<TcpListener>,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<i32> {
    if !listeners.is_empty() {
        loaded.require_callbacks()?;
    }
    let (sink, conns) = mpsc::unbounded_channel();
    // Beyond tokio's permit ceiling (2^61) a cap is no cap at all.
    let limit = options.max_connections.map(|n| Arc::new(Semaphore::new(n.get().min(Semaphore::MAX_PERMITS))));
    for listener in listeners {
        let accepting =
            accept_loop(listener, options.read_timeout, sink.clone(), limit.clone(), shutdown.clone(), |_| {});
        tokio::spawn(accepting);
    }
    match options.instances {
        Instances::Shared => dispatch::run(loaded, conns, sink, limit, shutdown).await,
        Instances::PerConnection => {
            drop(sink);
            dispatch::run_per_connection(loaded, conns, limit, shutdown).await
        }
    }
}

/// Every connection is a descriptor, and the usual soft limit (1024) would
/// stop a service far below `--max-connections` / `--max-instances`, its
/// accept loop failing with "too many open files". Raises the soft limit to
/// the hard one, as servers (and Go's runtime) do; the hard limit stays the
/// operator's. Returns the soft limit now in force (0 if it cannot be read).
/// `portcullis run` calls it at start; so do the bench and the tests, which
/// hold both ends of thousands of connections.
pub fn raise_open_file_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on this process, with a struct they fill.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        // An unlimited hard limit is not a valid soft one for descriptors: the
        // kernel caps them at `fs.nr_open`, by default 2^20.
        let wanted = limit.rlim_max.min(1 << 20);
        let soft = limit.rlim_cur;
        if soft >= wanted {
            return soft;
        }
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return soft;
        }
        tracing::debug!("open-file limit raised from {soft} to {wanted}");
        wanted
    }
}
