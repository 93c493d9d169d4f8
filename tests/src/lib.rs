//! Helpers shared by the integration tests: where the built guests are, one
//! runtime per test binary, and starting a service on `127.0.0.1:0`.
//!
//! Guests are built by `cargo xtask build` (which `cargo xtask test` runs first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis::Runtime;
pub use portcullis::config::{Grants, Instances, ServiceSpec};
use portcullis::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The component built from guest crate `name` (an example or a test guest).
pub fn guest(name: &str) -> PathBuf {
    let path = root().join("target/wasm32-wasip2/guest").join(format!("{}.wasm", name.replace('-', "_")));
    assert!(path.exists(), "{} is missing: run `cargo xtask build` first", path.display());
    path
}

/// The `portcullis` binary built by `cargo xtask build`.
pub fn portcullis_bin() -> PathBuf {
    let path = root().join("target/release/portcullis");
    assert!(path.exists(), "{} is missing: run `cargo xtask build` first", path.display());
    path
}

/// One runtime (engine + compile cache) per test binary.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new().expect("engine").with_cache_dir(Some(root().join("target/portcullis-test-cache")))
    })
}

/// A service running in this process on an ephemeral loopback port.
pub struct TestService {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<i32>>,
}

/// The spec of guest `name` with `env`, as the tests start it: the defaults
/// of [`ServiceSpec::new`] (no grants, one shared instance, default limits)
/// with `read_timeout`; tests change what they need before [`start_spec`].
pub fn spec(name: &str, env: &[(&str, &str)], read_timeout: Duration) -> ServiceSpec {
    let mut spec = ServiceSpec::new(guest(name));
    spec.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    spec.limits.read_timeout = read_timeout;
    spec
}

/// Starts guest `name` with `env`, listening on 127.0.0.1:0, with no grants.
pub async fn start(name: &str, env: &[(&str, &str)], read_timeout: Duration) -> TestService {
    start_spec(runtime(), spec(name, env, read_timeout))
}

/// Starts guest `name` with `env` under `grants`, listening on 127.0.0.1:0.
pub async fn start_with_grants(
    name: &str,
    env: &[(&str, &str)],
    read_timeout: Duration,
    grants: Grants,
) -> TestService {
    let mut spec = spec(name, env, read_timeout);
    spec.grants = grants;
    start_spec(runtime(), spec)
}

/// A runtime with a pool of `slots` instances (as `--instances per-connection`
/// uses), its own engine: a test can exhaust it without touching the others.
pub fn pooled_runtime(slots: u32) -> Runtime {
    Runtime::pooled(slots, portcullis::limits::DEFAULT_MAX_MEMORY)
        .expect("pooled engine")
        .with_cache_dir(Some(root().join("target/portcullis-test-cache")))
}

/// Starts guest `name` with `env` in `runtime`, with `instances`, listening on
/// 127.0.0.1:0, with no grants.
pub fn start_on(
    runtime: &Runtime,
    name: &str,
    env: &[(&str, &str)],
    read_timeout: Duration,
    instances: Instances,
) -> TestService {
    let mut spec = spec(name, env, read_timeout);
    spec.instances = instances;
    start_spec(runtime, spec)
}

/// Starts `spec` in `runtime`, listening on 127.0.0.1:0 (whatever
/// `spec.listen` says).
pub fn start_spec(runtime: &Runtime, spec: ServiceSpec) -> TestService {
    let loaded = runtime.load(&spec).expect("load guest");
    let listeners = server::bind_all(&["127.0.0.1:0".parse().unwrap()]).expect("bind");
    let addr = listeners[0].local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::serve(loaded, listeners, shutdown.clone()));
    TestService { addr, shutdown, task }
}

/// Starts a scenario of the `scenarios` guest (its `MODE`).
pub async fn start_mode(mode: &str) -> TestService {
    start("scenarios", &[("MODE", mode)], Duration::from_secs(30)).await
}

impl TestService {
    pub async fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).await.expect("connect to the service");
        stream.set_nodelay(true).unwrap();
        stream
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
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(ended.is_ok(), "no end of stream within 5 s (got {:?} so far)", String::from_utf8_lossy(&out));
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

/// Runs `portcullis run <guest> --env K=V ... ARGS` to completion (at most 30 s).
pub async fn run_program(guest_name: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(portcullis_bin());
    cmd.arg("run").arg(guest(guest_name)).args(args);
    for (k, v) in env {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    let child =
        cmd.env("PORTCULLIS_CACHE_DIR", root().join("target/portcullis-test-cache")).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(30), child).await.expect("program did not finish in 30 s").unwrap()
}

/// Starts `portcullis run <guest> --env K=V ... ARGS` with stdout piped, for
/// tests that talk to a program while it runs.
pub fn spawn_program(guest_name: &str, env: &[(&str, &str)], args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(portcullis_bin());
    cmd.arg("run").arg(guest(guest_name)).args(args);
    for (k, v) in env {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    cmd.env("PORTCULLIS_CACHE_DIR", root().join("target/portcullis-test-cache"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start portcullis")
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
        use std::os::unix::process::CommandExt;
        let dir = root().join("target/test-scratch").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("stderr.log");
        let mut command = std::process::Command::new(portcullis_bin());
        command
            .arg("run")
            .arg(guest(guest_name))
            .args(args)
            .env("PORTCULLIS_CACHE_DIR", root().join("target/portcullis-test-cache"))
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
        line.strip_prefix("listening on ").unwrap_or_else(|| panic!("not `listening on`: {line:?}")).parse().unwrap()
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
