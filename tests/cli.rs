//! The `portcullis` command line: what an operator sees, errors first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{Backend, guest, on_both_backends, portcullis_bin, root, test_cache};

fn portcullis(args: &[&str], cache: &Path) -> Output {
    Command::new(portcullis_bin()).args(args).env("PORTCULLIS_CACHE_DIR", cache).output().expect("run portcullis")
}

/// A scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/cli-test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts a failed run: exit code 1 and exactly one line on stderr with `needle`.
fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one clear line, got: {stderr}");
}

#[test]
fn a_missing_file_is_one_clear_error() {
    let out = portcullis(&["run", "/nonexistent/service.wasm", "--listen", "127.0.0.1:0"], &test_cache());
    assert_fails_with(&out, "cannot read /nonexistent/service.wasm");
}

#[test]
fn a_file_that_is_not_wasm_is_rejected() {
    let dir = scratch("not-wasm");
    let file = dir.join("notes.wasm");
    std::fs::write(&file, "just text").unwrap();
    let out = portcullis(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"], &test_cache());
    assert_fails_with(&out, "is not a WebAssembly file");
}

#[test]
fn a_core_module_is_not_a_component() {
    let dir = scratch("core-module");
    let file = dir.join("core.wasm");
    std::fs::write(&file, wat::parse_str("(module)").unwrap()).unwrap();
    let out = portcullis(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"], &test_cache());
    assert_fails_with(&out, "is a core WebAssembly module, not a component");
}

#[test]
fn a_component_needing_an_unknown_import_names_it() {
    let dir = scratch("unknown-import");
    let file = dir.join("wants-more.wasm");
    let component = wat::parse_str(r#"(component (import "acme:db/query" (instance (export "run" (func)))))"#).unwrap();
    std::fs::write(&file, component).unwrap();
    let out = portcullis(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"], &dir);
    assert_fails_with(&out, "acme:db/query");
}

#[test]
fn a_component_without_callbacks_cannot_serve() {
    let dir = scratch("no-callbacks");
    let file = dir.join("empty.wasm");
    std::fs::write(&file, wat::parse_str("(component)").unwrap()).unwrap();
    let out = portcullis(&["run", file.to_str().unwrap(), "--listen", "127.0.0.1:0"], &dir);
    assert_fails_with(&out, "does not export portcullis:socket/callbacks@0.1.0");
}

#[test]
fn a_program_cannot_take_listeners_without_callbacks() {
    let clients = guest("clients");
    let out = portcullis(&["run", clients.to_str().unwrap(), "--listen", "127.0.0.1:0"], &test_cache());
    assert_fails_with(&out, "does not export portcullis:socket/callbacks@0.1.0");
}

#[test]
fn a_program_cannot_have_an_instance_per_connection() {
    let clients = guest("clients");
    let out = portcullis(&["run", clients.to_str().unwrap(), "--instances", "per-connection"], &test_cache());
    assert_fails_with(&out, "is a program (it exports wasi:cli/run): `--instances per-connection` is for services");
}

#[test]
fn a_wasi_backend_service_runs_shared_only_and_says_so() {
    let echo = portcullis_tests::Backend::Wasi.guest("echo");
    for mode in ["per-worker", "per-connection"] {
        let out =
            portcullis(&["run", echo.to_str().unwrap(), "--listen", "127.0.0.1:0", "--instances", mode], &test_cache());
        assert_fails_with(
            &out,
            &format!(
                "is a WASI-backend component (it binds its own listeners, in one instance): it runs with `--instances shared` only, not `{mode}`"
            ),
        );
    }
}

#[test]
fn a_service_needs_a_listener() {
    let echo = guest("echo");
    let out = portcullis(&["run", echo.to_str().unwrap()], &test_cache());
    assert_fails_with(&out, "is a service: give it at least one --listen ADDR:PORT");
}

#[test]
fn a_port_in_use_is_reported_as_ballerina_does() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let echo = guest("echo");
    let out = portcullis(&["run", echo.to_str().unwrap(), "--listen", &addr], &test_cache());
    assert_fails_with(&out, "unable to start the socket service: Address already in use");
}

/// A running `portcullis run echo.wasm --listen 127.0.0.1:0` and the address it printed.
struct Running {
    child: Child,
    addr: String,
    stderr_log: PathBuf,
}

/// A test that fails midway leaves no server behind.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_echo(cache: &Path, log_level: &str) -> Running {
    serve_echo_with(cache, log_level, &[])
}

fn serve_echo_with(cache: &Path, log_level: &str, extra: &[&str]) -> Running {
    serve(echo_command(cache, log_level, extra), cache)
}

/// `portcullis run` of the echo example on a free port, not started yet.
fn echo_command(cache: &Path, log_level: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(portcullis_bin());
    command
        .args(["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("PORTCULLIS_CACHE_DIR", cache)
        .env("RUST_LOG", log_level);
    command
}

/// Starts `command` and waits for its `listening on` line.
fn serve(mut command: Command, cache: &Path) -> Running {
    let stderr_log = cache.join(format!("stderr-{}.log", std::process::id()));
    let mut child = command.stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr_log).unwrap()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.strip_prefix("listening on ").expect("first line is `listening on ADDR`").trim().to_string();
    Running { child, addr, stderr_log }
}

impl Running {
    /// SIGTERM, then wait (at most 10 s) for the exit code.
    fn terminate(mut self) -> (i32, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
                return (status.code().unwrap_or(-1), log);
            }
            assert!(Instant::now() < deadline, "portcullis did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Connects to `addr`, sends `message` and checks it comes back; returns the
/// connection, still open.
fn echo_once(addr: &str, message: &[u8]) -> TcpStream {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.write_all(message).unwrap();
    let mut echoed = vec![0u8; message.len()];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, message);
    client
}

#[test]
fn port_zero_prints_the_real_port_and_sigterm_stops_gracefully() {
    let dir = scratch("sigterm");
    let running = serve_echo(&dir, "portcullis=debug");
    assert!(!running.addr.ends_with(":0"), "printed {}", running.addr);

    let mut client = echo_once(&running.addr, b"Hello Ballerina\n");

    let (code, log) = running.terminate();
    assert_eq!(code, 0, "log: {log}");
    // The open connection was closed (on-close ran) before the exit.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(log.contains("connection open"), "debug log has the open line: {log}");
    assert!(log.contains("connection closed"), "debug log has the close line: {log}");
}

#[test]
fn every_stop_says_so_in_the_log() {
    // A stop with nothing to finish is over at once; its line was lost about
    // one time in three (written after the stop began, it raced the exit).
    for i in 0..5 {
        let dir = scratch(&format!("stop-line-{i}"));
        let running = serve_echo(&dir, "info");
        let (code, log) = running.terminate();
        assert_eq!(code, 0, "log: {log}");
        assert!(log.contains("stopping: no new connections"), "stop {i}: {log:?}");
    }
}

#[test]
fn instances_per_connection_from_the_command_line() {
    let dir = scratch("per-connection");
    let running = serve_echo_with(&dir, "portcullis=debug", &["--instances", "per-connection"]);
    // All three open at once, each in an instance of its own.
    let _clients: Vec<TcpStream> = (0..3).map(|i| echo_once(&running.addr, format!("client {i}").as_bytes())).collect();
    let (code, log) = running.terminate();
    assert_eq!(code, 0, "log: {log}");
    assert_eq!(log.matches("connection closed").count(), 3, "log: {log}");
}

#[test]
fn max_instances_bounds_the_connections_served_at_once() {
    let dir = scratch("max-instances");
    // Over two workers, each making its next instance ahead from the one
    // slot: the kernel picks the worker of each connection.
    let args = ["--instances", "per-connection", "--max-instances", "1", "--workers", "2"];
    let running = serve_echo_with(&dir, "info", &args);
    for round in 0..4 {
        let first = echo_once(&running.addr, format!("one {round}").as_bytes());

        // The only slot is taken: the next connection waits in the listen
        // backlog, unserved (`--max-connections` defaults to `--max-instances`)...
        let mut second = TcpStream::connect(&running.addr).unwrap();
        second.write_all(b"two").unwrap();
        second.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut reply = [0u8; 3];
        assert!(second.read_exact(&mut reply).is_err(), "round {round}: served while the only instance was busy");
        // ...until the first one ends.
        drop(first);
        second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        second
            .read_exact(&mut reply)
            .unwrap_or_else(|e| panic!("round {round}: the waiting connection was not served: {e}"));
        assert_eq!(&reply, b"two");
    }

    let (code, log) = running.terminate();
    assert_eq!(code, 0, "log: {log}");
    assert!(!log.contains("no instance for connection"), "log: {log}");
}

#[test]
fn a_low_open_file_limit_does_not_cap_the_connections() {
    const SOFT_LIMIT: libc::rlim_t = 64;
    let dir = scratch("open-file-limit");
    let mut command = echo_command(&dir, "info", &[]);
    // SAFETY: only getrlimit/setrlimit, in the child between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let mut limit: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = SOFT_LIMIT;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let running = serve(command, &dir);
    // Each open at once: past the soft limit the accept loop would fail with
    // "too many open files" and these would wait unserved.
    let clients: Vec<TcpStream> =
        (0..SOFT_LIMIT * 2).map(|i| echo_once(&running.addr, format!("client {i}").as_bytes())).collect();
    assert_eq!(clients.len() as libc::rlim_t, SOFT_LIMIT * 2);
    let (code, log) = running.terminate();
    assert_eq!(code, 0, "log: {log}");
    assert!(!log.contains("accept failed"), "log: {log}");
}

#[test]
fn max_connections_must_be_at_least_one() {
    let dir = scratch("max-connections-zero");
    let out = portcullis(
        &["run", &guest("echo").display().to_string(), "--listen", "127.0.0.1:0", "--max-connections", "0"],
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with --max-connections 0");
    assert!(stderr.contains("--max-connections"), "stderr: {stderr}");
}

#[test]
fn the_second_start_loads_the_compiled_component_from_the_cache() {
    let dir = scratch("cache");
    let (code, _) = serve_echo(&dir, "portcullis=debug").terminate();
    assert_eq!(code, 0);
    let cached: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache");

    let (code, log) = serve_echo(&dir, "portcullis=debug").terminate();
    assert_eq!(code, 0);
    assert!(log.contains("component loaded from cache"), "log: {log}");
}

async fn a_program_declares_its_own_listener_and_ends_when_it_stops(backend: Backend) {
    tokio::task::spawn_blocking(move || program_with_its_own_listener(backend)).await.unwrap()
}

fn program_with_its_own_listener(backend: Backend) {
    let (mut child, addr, mut stdout) = start_listener_program_on(backend, &[]);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "second listener: unable to start the socket service: Address already in use\n");

    let mut client = TcpStream::connect(&addr).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.write_all(b"guest-made listener").unwrap();
    let mut echoed = [0u8; 19];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"guest-made listener");
    drop(client);

    // on-close stops the listener; with main done and nothing listening, the program ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the program did not end after its listener stopped");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

/// Starts `listener-program` with `extra` flags and returns it with the address
/// its own listener took (and its stdout, kept open: the guest prints to it).
fn start_listener_program(extra: &[&str]) -> (Child, String, BufReader<std::process::ChildStdout>) {
    start_listener_program_on(Backend::Portcullis, extra)
}

fn start_listener_program_on(
    backend: Backend,
    extra: &[&str],
) -> (Child, String, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(portcullis_bin())
        .args(["run", backend.guest("listener-program").to_str().unwrap(), "--allow-listen", "tcp://127.0.0.1:*"])
        .args(extra)
        .env("PORTCULLIS_CACHE_DIR", test_cache())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.strip_prefix("guest listening on ").expect("the guest prints its address").trim().to_string();
    (child, addr, stdout)
}

/// Whether a second client, connected while a first one is open, gets its
/// echo within 1 s.
fn second_client_is_served(extra: &[&str]) -> bool {
    let (mut child, addr, _stdout) = start_listener_program(extra);
    let mut first = TcpStream::connect(&addr).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    first.write_all(b"one").unwrap();
    let mut echoed = [0u8; 3];
    first.read_exact(&mut echoed).unwrap();
    // Accepted by the kernel either way (the listen backlog); served only
    // when the listener has room under the cap.
    let mut second = TcpStream::connect(&addr).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    second.write_all(b"two").unwrap();
    let served = second.read_exact(&mut echoed).is_ok();
    child.kill().unwrap();
    child.wait().unwrap();
    served
}

#[test]
fn max_connections_caps_what_a_guests_own_listener_accepts() {
    assert!(second_client_is_served(&[]), "without a cap both clients are served");
    assert!(!second_client_is_served(&["--max-connections", "1"]), "the cap let a second connection in");
}

on_both_backends!(a_program_declares_its_own_listener_and_ends_when_it_stops);

/// `portcullis new` as a newcomer uses it, outside this repository: the
/// crate it writes builds with one command into a component that serves.
#[test]
fn a_new_service_crate_builds_and_serves() {
    let dir = scratch("new-service");
    let out = Command::new(portcullis_bin()).args(["new", "my-echo"]).current_dir(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let next = String::from_utf8_lossy(&out.stdout);
    assert!(next.contains("cargo build --release"), "{next}");
    let again = Command::new(portcullis_bin()).args(["new", "my-echo"]).current_dir(&dir).output().unwrap();
    assert_fails_with(&again, "already exists");

    // One build command, as the output says (its target folder shared between
    // runs of this test, so that only the first compiles the SDK's dependencies).
    let crate_dir = dir.join("my-echo");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", root().join("target/scaffold-test"))
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let wasm = root().join("target/scaffold-test/wasm32-wasip2/release/my_echo.wasm");
    assert!(wasm.exists(), "{} is missing", wasm.display());

    let mut command = Command::new(portcullis_bin());
    command.args(["run", wasm.to_str().unwrap(), "--listen", "127.0.0.1:0"]).env("PORTCULLIS_CACHE_DIR", test_cache());
    let running = serve(command, &dir);
    echo_once(&running.addr, b"mine");
    let (code, log) = running.terminate();
    assert_eq!(code, 0, "log: {log}");
}

/// A service of a manifest that fails (here a WASI service whose address the
/// other service holds) stops the process with its status and its name in
/// the log, instead of leaving the others running without it.
#[test]
fn a_failing_service_of_a_manifest_stops_the_process_and_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    drop(taken);
    let manifest = format!(
        "[[service]]\nname = \"first\"\ncomponent = {:?}\nlisten = [\"{addr}\"]\n\n\
         [[service]]\nname = \"second\"\ncomponent = {:?}\nlisten = [\"{addr}\"]\n",
        guest("echo"),
        Backend::Wasi.guest("echo"),
    );
    let mut host = portcullis_tests::HostProcess::start_manifest("failing-service", &manifest, &[]);
    let code = host.exit_code_within(Duration::from_secs(30));
    let log = host.log();
    assert_eq!(code, Some(1), "still running (or another status) after 30 s: {log}");
    assert!(log.contains("service `second` ended with status 1; stopping the other services"), "{log}");
}

/// Two services on one address: the error names the service and the address.
#[test]
fn a_port_clash_between_services_names_both() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    drop(taken);
    let dir = scratch("port-clash");
    let manifest = dir.join("portcullis.toml");
    let echo = guest("echo");
    let text = format!(
        "[[service]]\nname = \"a\"\ncomponent = {echo:?}\nlisten = [\"{addr}\"]\n\n\
         [[service]]\nname = \"b\"\ncomponent = {echo:?}\nlisten = [\"{addr}\"]\n"
    );
    std::fs::write(&manifest, text).unwrap();
    let out = portcullis(&["run", "--manifest", manifest.to_str().unwrap()], &test_cache());
    assert_fails_with(&out, &format!("service `b`: listen on {addr}: unable to start the socket service: Address"));
}

/// `--instances per-worker --workers 2`: one instance per worker thread, the
/// connections spread over them by the kernel (`SO_REUSEPORT`), and each
/// instance counts only the connections its worker accepted: over 32
/// connections, the share each sees adds up to two instances (one, if all
/// had gone to one worker: a chance of 1 in 2^31).
#[test]
fn per_worker_instances_keep_state_per_worker() {
    let args = ["--listen", "127.0.0.1:0", "--env", "MODE=join-count", "--instances", "per-worker", "--workers", "2"];
    let mut host = portcullis_tests::HostProcess::start("per-worker", "scenarios", &args, None);
    let addr = host.listening_on();
    let mut conns: Vec<BufReader<TcpStream>> =
        (0..32).map(|_| BufReader::new(TcpStream::connect(addr).unwrap())).collect();
    let mut ask = |conn: &mut BufReader<TcpStream>| -> u32 {
        conn.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        conn.get_mut().write_all(b"count?").unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        line.trim_end().strip_prefix("joins ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?}"))
    };
    // A reply comes after the connection's on-connect: once each has replied,
    // every join is counted, and the second round reads the totals.
    for conn in &mut conns {
        ask(conn);
    }
    let totals: Vec<u32> = conns.iter_mut().map(&mut ask).collect();
    let instances: f64 = totals.iter().map(|&n| 1.0 / f64::from(n)).sum();
    assert!((instances - 2.0).abs() < 1e-9, "counts {totals:?} make {instances} instances, not 2\n{}", host.log());
}

/// Caps are per service, not per worker: `--max-connections 2` over two
/// `per-worker` instances serves two connections at once, wherever the
/// kernel put them; a third waits in the backlog until one closes.
#[test]
fn max_connections_holds_over_all_workers() {
    let args = ["--instances", "per-worker", "--workers", "2", "--max-connections", "2"];
    let dir = scratch("max-connections-workers");
    let running = serve_echo_with(&dir, "info", &args);
    let mut held: Vec<TcpStream> = (0..2).map(|i| echo_once(&running.addr, format!("{i}").as_bytes())).collect();
    let mut third = TcpStream::connect(&running.addr).unwrap();
    third.write_all(b"three").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut reply = [0u8; 5];
    assert!(third.read_exact(&mut reply).is_err(), "a third connection was served beside two at the cap");
    drop(held.remove(0));
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    third.read_exact(&mut reply).expect("the waiting connection was not served once one closed");
    assert_eq!(&reply, b"three");
    let (code, log) = running.terminate();
    assert_eq!(code, 0, "log: {log}");
}
