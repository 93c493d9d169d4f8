//! Host-side name resolution: guests pass names, the host resolves them (so a
//! grant by name can be enforced on the name and then on every address).
//!
//! The system resolver blocks a thread until it answers, seconds against a
//! slow DNS server. A guest looking names up in a loop must neither take
//! threads without bound nor delay another service's look-ups, so each
//! component has its own [`Resolver`]: at most [`MAX_LOOKUPS`] look-ups under
//! way, each on a thread of its own (not tokio's blocking pool, which every
//! service shares); more wait for a turn, at most [`RESOLVE_TIMEOUT`], and
//! then have their own [`RESOLVE_TIMEOUT`].

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// How long a name look-up may take before it counts as failed; and how
/// long one waits for a turn before that.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most name look-ups one component has under way at once.
pub const MAX_LOOKUPS: usize = 8;

/// One component's name look-ups.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let resolver = portcullis::policy::resolve::Resolver::new();
/// let addrs = resolver.lookup("localhost", 7000).await.unwrap();
/// assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 7000));
/// # });
/// ```
#[derive(Debug)]
pub struct Resolver {
    /// A turn is held by a look-up's thread until the thread ends, even
    /// when the guest has given up on it: at most [`MAX_LOOKUPS`] threads.
    turns: Arc<Semaphore>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Self {
        Resolver { turns: Arc::new(Semaphore::new(MAX_LOOKUPS)) }
    }

    /// The addresses of `name` (a host name, not an IP literal), with `port`.
    /// Fails with `TimedOut` when no turn came within [`RESOLVE_TIMEOUT`] or
    /// the resolver did not answer within [`RESOLVE_TIMEOUT`] of its turn,
    /// or with the resolver's error.
    pub async fn lookup(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, format!("resolving host `{name}` timed out"));
        let turn = match tokio::time::timeout(RESOLVE_TIMEOUT, self.turns.clone().acquire_owned()).await {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) | Err(_) => return Err(timed_out()),
        };
        let (answer, answered) = tokio::sync::oneshot::channel();
        let wanted = name.to_string();
        std::thread::Builder::new().name("portcullis-lookup".into()).spawn(move || {
            let _turn = turn;
            let _ = answer.send((wanted.as_str(), port).to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>()));
        })?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, answered).await {
            Ok(Ok(Ok(addrs))) if !addrs.is_empty() => Ok(addrs),
            Ok(Ok(Ok(_))) => Err(io::Error::new(io::ErrorKind::NotFound, format!("host `{name}` has no address"))),
            Ok(Ok(Err(e))) => Err(io::Error::new(e.kind(), format!("cannot resolve host `{name}`: {e}"))),
            Ok(Err(_)) => Err(io::Error::other(format!("resolving host `{name}` failed"))),
            Err(_) => Err(timed_out()),
        }
    }
}
