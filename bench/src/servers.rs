//! The servers under test, each started in a process of its own pinned to core
//! 0 (the native baseline, and `portcullis run` on a guest), and the pinning of
//! the load generator to core 1: how the bench keeps the two apart.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::layout;

/// A server under test, in its own process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
}

/// Where a load goes and whose CPU time it is charged to: a server's address
/// and process.
#[derive(Clone, Copy)]
pub struct Target {
    pub addr: SocketAddr,
    pub pid: u32,
}

impl Server {
    /// Its TCP address and process.
    pub fn tcp_target(&self) -> Target {
        Target { addr: self.tcp.expect("a TCP server"), pid: self.child.id() }
    }

    /// Its UDP address and process.
    pub fn udp_target(&self) -> Target {
        Target { addr: self.udp.expect("a UDP server"), pid: self.child.id() }
    }
}

/// User plus system CPU time of process `pid` so far (all its threads), in
/// seconds, from `/proc` (10 ms ticks).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .context("reading the server's CPU time (needs Linux's /proc)")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').context("unexpected /proc stat")?.1.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("utime")?.parse::<f64>()? + fields.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `taskset -c 0 PROGRAM ARGS` where taskset exists, else the program alone.
fn on_core_0(program: &Path, args: &[&str]) -> Command {
    if Path::new("/usr/bin/taskset").exists() {
        let mut cmd = Command::new("/usr/bin/taskset");
        cmd.arg("-c").arg("0").arg(program).args(args);
        cmd
    } else {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

/// `PROGRAM ARGS` free to run on every core of the machine: not on the
/// cores of the bench (pinned to core 1), whose affinity a child inherits.
fn on_every_core(program: &Path, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: sysconf only reads a system constant; CPU_SET fills a set we
    // own, within its size.
    let every = unsafe {
        let mut every: libc::cpu_set_t = std::mem::zeroed();
        let cores = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        for core in 0..cores.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(core, &mut every);
        }
        every
    };
    // SAFETY: sched_setaffinity on the child, between fork and exec, with a
    // set built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &every);
            Ok(())
        });
    }
    cmd
}

/// Pins the calling thread to `core` (the load generator takes core 1).
pub fn pin_to_core(core: usize) {
    // SAFETY: sched_setaffinity on this thread with a set we built.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn spawn(mut cmd: Command) -> Result<(Child, BufReader<ChildStdout>)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting a server")?;
    let stdout = BufReader::new(child.stdout.take().unwrap());
    Ok((child, stdout))
}

fn line(reader: &mut BufReader<ChildStdout>) -> Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("the server exited before announcing its address");
    }
    Ok(line.trim().to_string())
}

/// The native baseline: this binary's `native-server`.
pub fn native_server() -> Result<Server> {
    let exe = std::env::current_exe()?;
    let (child, mut out) = spawn(on_core_0(&exe, &["native-server"]))?;
    let tcp = line(&mut out)?.strip_prefix("tcp ").context("tcp line")?.parse()?;
    let udp = line(&mut out)?.strip_prefix("udp ").context("udp line")?.parse()?;
    Ok(Server { child, tcp: Some(tcp), udp: Some(udp) })
}

/// `portcullis run echo` with `--instances MODE` (`shared` or `per-connection`).
pub fn portcullis_tcp(root: &Path, cache: &Path, mode: &str) -> Result<Server> {
    portcullis_server(&layout::portcullis_bin(root), &layout::guest(root, "echo"), cache, mode)
}

/// `portcullis run` of the echo built with the SDK's WASI backend (it binds
/// `--listen` itself and announces it the same way).
pub fn portcullis_wasi_tcp(root: &Path, cache: &Path) -> Result<Server> {
    portcullis_server(&layout::portcullis_bin(root), &layout::wasi_guest(root, "echo"), cache, "shared")
}

/// `BIN run GUEST` on an ephemeral loopback port, with `--instances MODE`.
pub fn portcullis_server(bin: &Path, guest: &Path, cache: &Path, mode: &str) -> Result<Server> {
    portcullis_with(bin, guest, cache, &["--instances", mode])
}

/// `portcullis run` of example `name` (`resp-kv`, `http-hello`, `tcp-proxy`)
/// with `args` added (grants, `--env`).
pub fn portcullis_example(root: &Path, cache: &Path, name: &str, args: &[&str]) -> Result<Server> {
    portcullis_with(&layout::portcullis_bin(root), &layout::guest(root, name), cache, args)
}

/// `portcullis run` of guest `name` on every core (not pinned) with
/// `--workers N --instances MODE`: the scenarios that measure the workers.
pub fn portcullis_on_workers(root: &Path, cache: &Path, name: &str, workers: usize, mode: &str) -> Result<Server> {
    let workers = workers.to_string();
    let args = ["--workers", workers.as_str(), "--instances", mode];
    portcullis_placed(&layout::portcullis_bin(root), &layout::guest(root, name), cache, &args, false)
}

fn portcullis_with(bin: &Path, guest: &Path, cache: &Path, args: &[&str]) -> Result<Server> {
    portcullis_placed(bin, guest, cache, args, true)
}

/// `portcullis run` of example `name` on core 0 with a `tls://` listener
/// (and `args`): its certificate and key made by `openssl` in `dir`.
pub fn portcullis_example_tls(root: &Path, cache: &Path, name: &str, dir: &Path) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !made.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&made.stderr));
    }
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let args = ["--listen", "tls://127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key];
    let guest = layout::guest(root, name).display().to_string();
    let mut all = vec!["run", guest.as_str()];
    all.extend_from_slice(&args);
    spawn_portcullis(&layout::portcullis_bin(root), cache, &all, true)
}

/// `BIN run GUEST --listen 127.0.0.1:0 ARGS`, on core 0 if `pinned` (then it
/// has one worker: the default is the cores it may use).
fn portcullis_placed(bin: &Path, guest: &Path, cache: &Path, args: &[&str], pinned: bool) -> Result<Server> {
    let guest = guest.display().to_string();
    let mut all = vec!["run", guest.as_str(), "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    spawn_portcullis(bin, cache, &all, pinned)
}

/// `BIN ARGS` (a `run` with one listener), announced by its `listening on` line.
fn spawn_portcullis(bin: &Path, cache: &Path, all: &[&str], pinned: bool) -> Result<Server> {
    let mut cmd = if pinned { on_core_0(bin, all) } else { on_every_core(bin, all) };
    cmd.env("PORTCULLIS_CACHE_DIR", cache);
    let (child, mut out) = spawn(cmd)?;
    let line = line(&mut out)?;
    let addr = line.strip_prefix("listening on ").context("listening line")?;
    let addr = addr.strip_prefix("tls://").unwrap_or(addr).parse()?;
    Ok(Server { child, tcp: Some(addr), udp: None })
}

/// `portcullis run udp-echo` on an ephemeral port (the guest announces it).
pub fn portcullis_udp(root: &Path, cache: &Path) -> Result<Server> {
    let guest = layout::guest(root, "udp-echo").display().to_string();
    let mut cmd =
        on_core_0(&layout::portcullis_bin(root), &["run", &guest, "--env", "PORT=0", "--allow-udp", "udp://*:*"]);
    cmd.env("PORTCULLIS_CACHE_DIR", cache);
    let (child, mut out) = spawn(cmd)?;
    let announced = line(&mut out)?;
    let port: u16 = announced.rsplit_once(':').context("udp-echo line")?.1.parse()?;
    Ok(Server { child, tcp: None, udp: Some(SocketAddr::from(([127, 0, 0, 1], port))) })
}

/// The bench binary's own `MODE ARGS` server (`hyper-server`,
/// `native-proxy UPSTREAM`), announcing `KIND ADDR` on its first line.
fn bench_mode(args: &[&str], kind: &str) -> Result<Server> {
    let exe = std::env::current_exe()?;
    let (child, mut out) = spawn(on_core_0(&exe, args))?;
    let addr = line(&mut out)?.strip_prefix(kind).context("address line")?.trim().parse()?;
    Ok(Server { child, tcp: Some(addr), udp: None })
}

/// The native HTTP baseline: hyper (this binary's `hyper-server`).
pub fn hyper_server() -> Result<Server> {
    bench_mode(&["hyper-server"], "http ")
}

/// The native proxy baseline to `upstream` (this binary's `native-proxy`).
pub fn native_proxy(upstream: SocketAddr) -> Result<Server> {
    bench_mode(&["native-proxy", &upstream.to_string()], "tcp ")
}

/// A free loopback port (for a server that takes its port on the command line).
fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Waits (5 s at most) until `addr` accepts a connection.
fn wait_for(addr: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited with {status} before listening on {addr}");
        }
        if std::time::Instant::now() > deadline {
            bail!("nothing listens on {addr} after 5 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// A real `redis-server` (Debian's), no persistence, on a free loopback port.
pub fn redis_server() -> Result<Server> {
    let addr = free_port()?;
    let port = addr.port().to_string();
    let args = ["--bind", "127.0.0.1", "--port", &port, "--save", "", "--appendonly", "no"];
    let redis = which("redis-server").context("redis-server is not installed (Debian's redis-server)")?;
    let mut cmd = on_core_0(&redis, &args);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting redis-server")?;
    wait_for(addr, &mut child)?;
    Ok(Server { child, tcp: Some(addr), udp: None })
}

/// `wasmtime serve` of the bench's `wasi-http-hello` component, on a free
/// loopback port.
pub fn wasmtime_serve(root: &Path) -> Result<Server> {
    let addr = free_port()?;
    let guest = layout::guest(root, "wasi-http-hello").display().to_string();
    let wasmtime = which("wasmtime").context("wasmtime is not installed (cargo xtask wasmtime)")?;
    let listen = addr.to_string();
    // `-S cli=y`: the component is built with std, which imports wasi:cli.
    let mut cmd = on_core_0(&wasmtime, &["serve", "-S", "cli=y", "--addr", &listen, &guest]);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting wasmtime serve")?;
    wait_for(addr, &mut child)?;
    Ok(Server { child, tcp: Some(addr), udp: None })
}

/// Where `program` is on the PATH.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}
