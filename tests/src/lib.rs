//! Helpers shared by the integration tests: where the built guests are, one
//! runtime per test binary, and starting a service on `127.0.0.1:0`
//! ([`TestService::builder`]) or the `portcullis` binary ([`HostProcess`],
//! [`run_program`]).
//!
//! Guests are built by `cargo xtask build` (which `cargo xtask test` runs first).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use portcullis::Runtime;
pub use portcullis::config::{Grants, Instances, ServiceSpec};
use portcullis::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod std_client;

#[path = "../../xtask/src/layout.rs"]
mod layout;

/// The workspace root.
pub fn root() -> PathBuf {
    layout::root_from(env!("CARGO_MANIFEST_DIR"))
}

/// The component built from guest crate `name` (an example or a test guest).
pub fn guest(name: &str) -> PathBuf {
    Backend::Portcullis.guest(name)
}

/// Which of the SDK's backends a guest is built with: one conformance list
/// runs on both (see [`on_both_backends!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The portcullis WIT: the host listens and calls back.
    Portcullis,
    /// Standard `wasi:sockets` (`target/wasi-backend/`): the guest listens
    /// where `PORTCULLIS_LISTEN` says.
    Wasi,
    /// The same WASI-backend build, run by the `wasmtime` command-line
    /// runtime instead of portcullis (`wasmtime run -S inherit-network`):
    /// portcullis's flags (grants, limits) do not apply there.
    Wasmtime,
}

impl Backend {
    /// Guest crate `name` built with this backend.
    pub fn guest(self, name: &str) -> PathBuf {
        let path = match self {
            Backend::Portcullis => layout::guest(&root(), name),
            Backend::Wasi | Backend::Wasmtime => layout::wasi_guest(&root(), name),
        };
        assert!(path.exists(), "{} is missing: run `cargo xtask build` first", path.display());
        path
    }
}

/// Runs each listed test, an `async fn(Backend)`, once per backend: as
/// `portcullis_backend::NAME` and `wasi_backend::NAME` (docs/conformance.md's
/// conformance table is made from those names). Those listed after
/// `and_on_wasmtime:` run on both backends too, and also with the WASI
/// guest on the `wasmtime` command line, as `on_wasmtime::NAME`.
///
/// ```ignore
/// on_both_backends!(a_denial_is_logged; and_on_wasmtime: echo_returns_the_bytes);
/// ```
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::on_both_backends!($($name),* ; and_on_wasmtime:);
    };
    ($($both:ident),* $(,)? ; and_on_wasmtime: $($all:ident),* $(,)?) => {
        mod portcullis_backend {
            $( $crate::__backend_test!($both, Portcullis); )*
            $( $crate::__backend_test!($all, Portcullis); )*
        }
        mod wasi_backend {
            $( $crate::__backend_test!($both, Wasi); )*
            $( $crate::__backend_test!($all, Wasi); )*
        }
        mod on_wasmtime {
            $( $crate::__backend_test!($all, Wasmtime); )*
        }
    };
}

/// One test of [`on_both_backends!`]: `super::$name` on `$backend`.
#[doc(hidden)]
#[macro_export]
macro_rules! __backend_test {
    ($name:ident, $backend:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            super::$name($crate::Backend::$backend).await
        }
    };
}

/// `wasmtime run` of `guest` with the network whole (what a WASI guest may
/// reach is that runtime's business) and `env`.
pub fn wasmtime_run(guest: &std::path::Path, env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("wasmtime");
    cmd.args(["run", "-S", "inherit-network", "-S", "allow-ip-name-lookup"]);
    for (k, v) in env {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    cmd.arg(guest).kill_on_drop(true);
    cmd
}

/// The `portcullis` binary built by `cargo xtask build`.
pub fn portcullis_bin() -> PathBuf {
    let path = layout::portcullis_bin(&root());
    assert!(path.exists(), "{} is missing: run `cargo xtask build` first", path.display());
    path
}

/// The compile cache the tests share.
pub fn test_cache() -> PathBuf {
    layout::test_cache(&root())
}

/// One runtime (engine + compile cache) per test binary.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().expect("engine").with_cache_dir(Some(test_cache())))
}

/// A service running in this process on an ephemeral loopback port.
pub struct TestService {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<i32>>,
    backend: Backend,
}

/// A runtime with a pool of `slots` instances (as `--instances per-connection`
/// uses), its own engine: a test can exhaust it without touching the others.
pub fn pooled_runtime(slots: u32) -> Runtime {
    Runtime::pooled(slots, 0, portcullis::limits::DEFAULT_MAX_MEMORY)
        .expect("pooled engine")
        .with_cache_dir(Some(test_cache()))
}

/// A [`TestService`] being set up: guest `name`'s spec as the tests use it
/// (the defaults of [`ServiceSpec::new`]: no grants, one shared instance,
/// default limits; with a 30 s read time-out), in the test binary's
/// [`runtime`], then whatever the test changes.
///
/// ```no_run
/// # async fn f() {
/// use portcullis_tests::{TestService, pooled_runtime};
/// let pool = pooled_runtime(2);
/// let service = TestService::scenario("echo").per_connection(&pool).max_connections(2).start();
/// # }
/// ```
pub struct TestServiceBuilder<'r> {
    spec: ServiceSpec,
    runtime: &'r Runtime,
    name: String,
    backend: Backend,
}

impl<'r> TestServiceBuilder<'r> {
    /// Adds `key=value` to the guest's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.spec.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Every read's time-out (default 30 s).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.spec.limits.read_timeout = timeout;
        self
    }

    /// What the service may reach (default: nothing).
    pub fn grants(mut self, grants: Grants) -> Self {
        self.spec.grants = grants;
        self
    }

    /// `--max-connections`.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.spec.limits.max_connections = std::num::NonZeroUsize::new(n);
        self
    }

    /// An instance per connection, from `pool` (see [`pooled_runtime`]).
    pub fn per_connection<'p>(self, pool: &'p Runtime) -> TestServiceBuilder<'p> {
        let mut spec = self.spec;
        spec.instances = Instances::PerConnection;
        TestServiceBuilder { spec, runtime: pool, name: self.name, backend: self.backend }
    }

    /// The guest built with `backend` (default: the portcullis WIT).
    pub fn on(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self.spec.component = backend.guest(&self.name);
        self
    }

    /// Starts it in its runtime, listening on 127.0.0.1 (an ephemeral port).
    /// A WASI-backend guest binds it itself (as `--listen` tells it), a
    /// moment after this returns: [`TestService::connect`] waits for it.
    pub fn start(mut self) -> TestService {
        let listen: SocketAddr = match self.backend {
            Backend::Portcullis => "127.0.0.1:0".parse().unwrap(),
            Backend::Wasi | Backend::Wasmtime => free_port(),
        };
        self.spec.listen = vec![portcullis::config::Listen::tcp(listen)];
        if self.backend == Backend::Wasmtime {
            return self.start_on_wasmtime(listen);
        }
        let loaded = self.runtime.load(&self.spec).expect("load guest");
        let (listeners, addr) = match self.backend {
            Backend::Portcullis => {
                let listeners = server::bind_all(&self.spec.listen).expect("bind");
                let addr = listeners[0].socket.local_addr().unwrap();
                (listeners, addr)
            }
            Backend::Wasi | Backend::Wasmtime => (Vec::new(), listen),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(loaded, listeners, shutdown.clone()));
        TestService { addr, shutdown, task, backend: self.backend }
    }
}

/// Runs `test` on a current-thread runtime of its own, like the
/// `portcullis` binary's (for tests of what one thread must not block).
pub async fn on_current_thread(test: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(test)
    })
    .await
    .expect("the test panicked")
}

impl TestServiceBuilder<'_> {
    /// The service as a `wasmtime run` child, told where to listen and its
    /// read time-out as portcullis would tell it; its stop kills the child.
    fn start_on_wasmtime(self, listen: SocketAddr) -> TestService {
        let mut env = self.spec.env.clone();
        env.push(("PORTCULLIS_LISTEN".into(), listen.to_string()));
        env.push(("PORTCULLIS_READ_TIMEOUT_MS".into(), self.spec.limits.read_timeout.as_millis().to_string()));
        let mut child = wasmtime_run(&self.spec.component, &env)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start `wasmtime` (cargo xtask wasmtime installs it)");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {
                    child.kill().await?;
                    Ok(0)
                }
                status = child.wait() => anyhow::bail!("wasmtime exited by itself: {:?}", status?),
            }
        });
        TestService { addr: listen, shutdown, task, backend: Backend::Wasmtime }
    }
}

/// A loopback port free a moment ago (for a guest that binds it itself).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl TestService {
    /// Guest `name` as the tests start it (see [`TestServiceBuilder`]).
    pub fn builder(name: &str) -> TestServiceBuilder<'static> {
        let mut spec = ServiceSpec::new(guest(name));
        spec.limits.read_timeout = Duration::from_secs(30);
        TestServiceBuilder { spec, runtime: runtime(), name: name.to_string(), backend: Backend::Portcullis }
    }

    /// The `scenarios` guest in mode `mode` (its `MODE`).
    pub fn scenario(mode: &str) -> TestServiceBuilder<'static> {
        TestService::builder("scenarios").env("MODE", mode)
    }

    /// A client connection (for a WASI-backend guest, once it listens:
    /// refused connects are retried for up to 10 s).
    pub async fn connect(&self) -> TcpStream {
        self.listening().await;
        let stream = TcpStream::connect(self.addr).await.expect("connect to the service");
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Returns once the service listens (a WASI-backend guest binds its own
    /// listener a moment after it starts), without connecting to it.
    pub async fn listening(&self) {
        if self.backend != Backend::Portcullis {
            wait_until_listening(self.addr).await;
        }
    }

    /// Stops gracefully and returns the exit code; fails if it takes too long.
    pub async fn stop(self) -> i32 {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("service did not stop within 10 s")
            .expect("service task panicked")
            .expect("service failed")
    }
}

/// Waits (up to 10 s) until a socket listens on `addr`'s port, as the
/// kernel's `/proc/net/tcp{,6}` says: unlike a probing connect, the service
/// sees nothing.
pub async fn wait_until_listening(addr: SocketAddr) {
    const LISTEN: &str = "0A";
    let port = format!("{:04X}", addr.port());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            let listens = text.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 3 && fields[1].ends_with(&format!(":{port}")) && fields[3] == LISTEN
            });
            if listens {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing listens on {addr} after 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many bytes written on the TCP connection from `local` to `peer` the
/// process at `peer` has not read yet, as the kernel's `/proc/net/tcp{,6}`
/// says: those `local`'s socket has not had acknowledged, plus those
/// waiting in `peer`'s socket's receive queue. 0 once that process took
/// them all (or when the connection is gone). A test waits for 0, with a
/// deadline of its own, where it must know that the other end has read
/// what was sent: a service is now in its callback, or waits in a read for
/// the rest. (For what was sent the other way, swap the two addresses.)
pub fn unread_by_peer(local: SocketAddr, peer: SocketAddr) -> usize {
    // The kernel prints an address as 32-bit words in the host's byte
    // order; an IPv4 socket may also sit in the IPv6 table, as ::ffff:a.b.c.d.
    fn spellings(addr: SocketAddr) -> Vec<String> {
        let words = |octets: &[u8]| -> String {
            octets.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap()))).collect()
        };
        let port = addr.port();
        match addr.ip() {
            std::net::IpAddr::V4(ip) => vec![
                format!("{}:{port:04X}", words(&ip.octets())),
                format!("{}:{port:04X}", words(&ip.to_ipv6_mapped().octets())),
            ],
            std::net::IpAddr::V6(ip) => vec![format!("{}:{port:04X}", words(&ip.octets()))],
        }
    }
    let (local, peer) = (spellings(local), spellings(peer));
    let hex = |field: &str| usize::from_str_radix(field, 16).unwrap_or(0);
    let mut unread = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some((tx, rx)) = fields.get(4).and_then(|queues| queues.split_once(':')) else { continue };
            let (from, to) = (fields[1].to_string(), fields[2].to_string());
            if local.contains(&from) && peer.contains(&to) {
                unread += hex(tx);
            } else if peer.contains(&from) && local.contains(&to) {
                unread += hex(rx);
            }
        }
    }
    unread
}

/// A native (tokio) TCP echo server on loopback, for any number of
/// connections: the peer a guest's clients are granted to reach.
pub async fn native_tcp_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Connects to `addr`, retrying while it is refused, for up to 10 s: a guest
/// that binds its own listener does so a moment after it starts.
pub async fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => return stream,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("nothing listens on {addr} after 10 s: {e}"),
        }
    }
}

/// Reads until `want` bytes came, end of stream, or 5 s passed.
pub async fn read_n(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut out = vec![0; want];
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got < want {
        match tokio::time::timeout_at(deadline, stream.read(&mut out[got..])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => got += n,
            Ok(Err(_)) => break,
        }
    }
    out.truncate(got);
    out
}

/// Reads one line (through `\n`), or what came before end of stream / 5 s.
pub async fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(1)) = tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Reads everything until end of stream, which must come within 5 s (a
/// service that missed the end would only close at its read time-out, 30 s in
/// these tests). A reset counts as an end.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    read_to_end_within(stream, Duration::from_secs(5)).await
}

/// [`read_to_end`], the end within `limit` (for an end that waits on a
/// bound of CPU time, which a busy machine stretches in wall time).
pub async fn read_to_end_within(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let ended = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    assert!(ended.is_ok(), "no end of stream within {limit:?} (got {:?} so far)", String::from_utf8_lossy(&out));
    out
}

/// Connects `n` clients and checks that each is served (an echo round trip).
pub async fn echoing_clients(service: &TestService, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for i in 0..n {
        let mut client = service.connect().await;
        let hello = format!("client {i}");
        assert_eq!(round_trip(&mut client, hello.as_bytes()).await, hello.as_bytes());
        clients.push(client);
    }
    clients
}

/// Sends `data` on a connection that should be waiting for its turn, and
/// checks that nothing comes back (neither bytes nor the end) within `wait`.
pub async fn assert_unserved(stream: &mut TcpStream, data: &[u8], wait: Duration) {
    stream.write_all(data).await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(wait, stream.read(&mut byte)).await;
    assert!(early.is_err(), "the connection was answered (or closed) while it should wait: {early:?}");
}

/// Writes `data` then reads exactly as many bytes back.
pub async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.expect("write");
    read_n(stream, data.len()).await
}

/// `portcullis run <guest> --env K=V ... ARGS`, with the tests' compile cache.
/// On `Backend::Wasmtime`, `wasmtime run` instead, without `args` (they are
/// portcullis's: grants and limits do not exist there).
fn program(backend: Backend, guest_name: &str, env: &[(&str, &str)], args: &[&str]) -> tokio::process::Command {
    if backend == Backend::Wasmtime {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        return wasmtime_run(&backend.guest(guest_name), &env);
    }
    let mut cmd = tokio::process::Command::new(portcullis_bin());
    cmd.arg("run").arg(backend.guest(guest_name)).args(args);
    for (k, v) in env {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    cmd.env("PORTCULLIS_CACHE_DIR", test_cache()).kill_on_drop(true);
    cmd
}

/// Runs `portcullis run <guest> --env K=V ... ARGS` to completion (at most 30 s).
pub async fn run_program(guest_name: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    run_program_on(Backend::Portcullis, guest_name, env, args).await
}

/// [`run_program`] with the guest built with `backend`.
pub async fn run_program_on(
    backend: Backend,
    guest_name: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let child = program(backend, guest_name, env, args).output();
    tokio::time::timeout(Duration::from_secs(30), child).await.expect("program did not finish in 30 s").unwrap()
}

/// Starts `portcullis run <guest> --env K=V ... ARGS` with stdout piped, for
/// tests that talk to a program while it runs.
pub fn spawn_program(guest_name: &str, env: &[(&str, &str)], args: &[&str]) -> tokio::process::Child {
    spawn_program_on(Backend::Portcullis, guest_name, env, args)
}

/// [`spawn_program`] with the guest built with `backend`.
pub fn spawn_program_on(
    backend: Backend,
    guest_name: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> tokio::process::Child {
    program(backend, guest_name, env, args).stdout(std::process::Stdio::piped()).spawn().expect("start portcullis")
}

/// The program's stdout as text.
pub fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `portcullis run` as a child process, with its log (stderr) in a file: for
/// tests that read the log, the process's memory, or set its resource limits.
pub struct HostProcess {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    log_path: PathBuf,
}

impl HostProcess {
    /// Starts `portcullis run <guest> ARGS` (add `--listen 127.0.0.1:0` to
    /// serve, then [`HostProcess::listening_on`]); `before_exec` runs in the
    /// child before it starts (to set resource limits).
    pub fn start(
        test: &str,
        guest_name: &str,
        args: &[&str],
        before_exec: Option<fn() -> std::io::Result<()>>,
    ) -> Self {
        HostProcess::start_on(Backend::Portcullis, test, guest_name, args, before_exec)
    }

    /// [`HostProcess::start`] with the guest built with `backend` (a
    /// WASI-backend service prints its own `listening on ADDR`).
    pub fn start_on(
        backend: Backend,
        test: &str,
        guest_name: &str,
        args: &[&str],
        before_exec: Option<fn() -> std::io::Result<()>>,
    ) -> Self {
        let _ = std::fs::remove_dir_all(root().join("target/test-scratch").join(test));
        let mut all = vec!["run".to_string(), backend.guest(guest_name).to_str().unwrap().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        HostProcess::spawn(test, &all, before_exec)
    }

    /// `portcullis run --manifest M ARGS`, with `manifest` (TOML) written to
    /// the test's scratch folder as M.
    pub fn start_manifest(test: &str, manifest: &str, args: &[&str]) -> Self {
        let dir = root().join("target/test-scratch").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("portcullis.toml");
        std::fs::write(&path, manifest).unwrap();
        let mut all = vec!["run".to_string(), "--manifest".to_string(), path.to_str().unwrap().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        HostProcess::spawn(test, &all, None)
    }

    /// `portcullis ARGS` (`run ...` with a component that is no guest of
    /// this workspace, an `oci://` one), its cache in `cache`.
    pub fn start_args(test: &str, args: &[&str], cache: &Path) -> Self {
        HostProcess::start_args_env(test, args, cache, &[])
    }

    /// [`HostProcess::start_args`] with `env` (`NAME`, `VALUE`) set for it.
    pub fn start_args_env(test: &str, args: &[&str], cache: &Path, env: &[(&str, &str)]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        HostProcess::spawn_cached(test, &args, None, cache, env)
    }

    fn spawn(test: &str, args: &[String], before_exec: Option<fn() -> std::io::Result<()>>) -> Self {
        HostProcess::spawn_cached(test, args, before_exec, &test_cache(), &[])
    }

    fn spawn_cached(
        test: &str,
        args: &[String],
        before_exec: Option<fn() -> std::io::Result<()>>,
        cache: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = root().join("target/test-scratch").join(test);
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("stderr.log");
        let mut command = std::process::Command::new(portcullis_bin());
        command
            .args(args)
            .env("PORTCULLIS_CACHE_DIR", cache)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap());
        if let Some(hook) = before_exec {
            // SAFETY: the hook only makes async-signal-safe calls (setrlimit).
            unsafe { command.pre_exec(hook) };
        }
        let mut child = command.spawn().expect("start portcullis");
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        HostProcess { child, stdout, log_path }
    }

    /// CPU time the process has used so far (user and system, from `/proc`).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf with a valid name.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// The next line the process prints on stdout (its own or its guest's).
    pub fn stdout_line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("a line on stdout");
        line.trim_end().to_string()
    }

    /// The address of its `listening on ADDR` line.
    pub fn listening_on(&mut self) -> SocketAddr {
        let line = self.stdout_line();
        let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("not `listening on`: {line:?}"));
        // A tls:// listener's line says so.
        addr.trim_start_matches("tls://").parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in bytes (`VmRSS`; `VmHWM`, the peak).
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// How many descriptors the process has open.
    pub fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).unwrap().count()
    }

    /// SIGTERM, then waits for the exit (at most `wait`, else the test
    /// fails): the exit code and how long the stop took.
    pub fn terminate(&mut self, wait: Duration) -> (i32, Duration) {
        let started = std::time::Instant::now();
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let code = self.exit_code_within(wait);
        let code = code.unwrap_or_else(|| panic!("portcullis did not stop within {wait:?} of SIGTERM"));
        (code, started.elapsed())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit code once it has exited, waiting at most `wait`.
    pub fn exit_code_within(&mut self, wait: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log once `needle` is in it `times` times (log lines are written
    /// by a thread of their own, a moment after the event), or as it is
    /// after `wait`.
    pub fn log_with(&self, needle: &str, times: usize, wait: Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= times || std::time::Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::unread_by_peer;

    /// The waits built on it would pass vacuously if it always said 0.
    #[test]
    fn unread_by_peer_counts_what_the_other_end_has_not_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(unread_by_peer(local, peer), 0);
        client.write_all(b"twelve bytes").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while unread_by_peer(local, peer) != 12 {
            assert!(std::time::Instant::now() < deadline, "{} unread, not 12", unread_by_peer(local, peer));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(unread_by_peer(peer, local), 0, "nothing was sent the other way");
        let mut got = [0u8; 12];
        server.read_exact(&mut got).unwrap();
        assert_eq!(unread_by_peer(local, peer), 0);
    }
}
