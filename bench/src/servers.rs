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
    let guest = guest.display().to_string();
    let mut cmd = on_core_0(bin, &["run", &guest, "--listen", "127.0.0.1:0", "--instances", mode]);
    cmd.env("PORTCULLIS_CACHE_DIR", cache);
    let (child, mut out) = spawn(cmd)?;
    let addr = line(&mut out)?.strip_prefix("listening on ").context("listening line")?.parse()?;
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
