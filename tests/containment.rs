//! Containment: a hostile guest (`tests/guests/hostile`) hits each bound of
//! the sandbox, and a neighbour service in the same `portcullis` process is
//! served while it happens and right after. Each test runs the real binary
//! with a manifest of the two services, and reads the child's memory and
//! descriptors from `/proc`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::std_client::line;
use portcullis_tests::{HostProcess, guest, portcullis_bin, test_cache, unread_by_peer};

const MIB: u64 = 1 << 20;

/// A `portcullis run --manifest` with the `hostile` guest and an echo
/// neighbour, both on 127.0.0.1:0.
struct Host {
    process: HostProcess,
    hostile: String,
    neighbour: String,
}

/// Starts the pair: `hostile_keys` are extra manifest lines for the hostile
/// service (its env included), `args` extra command-line flags.
fn start(test: &str, hostile_keys: &str, args: &[&str]) -> Host {
    start_guest("hostile", test, hostile_keys, args)
}

/// [`start`] with the hostile service built from guest crate `hostile_guest`.
fn start_guest(hostile_guest: &str, test: &str, hostile_keys: &str, args: &[&str]) -> Host {
    let manifest = format!(
        "[[service]]\nname = \"hostile\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\n{hostile_keys}\n\n\
         [[service]]\nname = \"neighbour\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\n",
        guest(hostile_guest),
        guest("echo"),
    );
    // Its stdout stays open but is no longer read after this: a pipe that fills up.
    let mut process = HostProcess::start_manifest(&format!("containment-{test}"), &manifest, args);
    let (mut hostile, mut neighbour) = (String::new(), String::new());
    for _ in 0..2 {
        let line = process.stdout_line();
        let (name, addr) = line.split_once(": listening on ").expect("NAME: listening on ADDR");
        match name {
            "hostile" => hostile = addr.to_string(),
            _ => neighbour = addr.to_string(),
        }
    }
    Host { process, hostile, neighbour }
}

impl Host {
    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: the peak).
    fn memory(&self, field: &str) -> u64 {
        self.process.memory(field)
    }

    fn open_descriptors(&self) -> usize {
        self.process.descriptors()
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// The log once it has `needle` (log lines are written by a thread of
    /// their own, a moment after the event), or as it is after 3 s.
    fn log_with(&self, needle: &str) -> String {
        self.log_with_times(needle, 1)
    }

    /// The log once it has `needle` `times` times, or as it is after 3 s.
    fn log_with_times(&self, needle: &str, times: usize) -> String {
        self.process.log_with(needle, times, Duration::from_secs(3))
    }

    /// Connects to the hostile service and sends `message`.
    fn attack(&self, message: &[u8]) -> TcpStream {
        let mut client = TcpStream::connect(&self.hostile).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(message).unwrap();
        client
    }

    /// Waits (at most 10 s) until the hostile service has read what
    /// `attacker` sent: its callback is then under way.
    fn taken(&self, attacker: &TcpStream) {
        let (local, peer) = (attacker.local_addr().unwrap(), attacker.peer_addr().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while unread_by_peer(local, peer) > 0 {
            assert!(Instant::now() < deadline, "the hostile service did not read its message within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One echo round trip with the neighbour; returns how long it took.
    fn neighbour_round_trip(&self) -> Duration {
        let started = Instant::now();
        let mut client = TcpStream::connect(&self.neighbour).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(b"neighbour\n").unwrap();
        let mut echoed = [0u8; 10];
        client.read_exact(&mut echoed).expect("the neighbour answers");
        assert_eq!(&echoed, b"neighbour\n");
        started.elapsed()
    }

    /// SIGTERM; returns the exit code, how long the stop took, and the log.
    fn terminate(mut self) -> (i32, Duration, String) {
        let (code, took) = self.process.terminate(Duration::from_secs(20));
        (code, took, self.log())
    }
}

/// Asserts that the host closes `stream` (a trapped instance's connection).
fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(read.is_ok() || rest.is_empty(), "closed, got {read:?}");
}

/// Prints a measured figure (`cargo test --release -p portcullis-tests --test
/// containment -- --nocapture` lists them all).
fn report(what: &str, figure: impl std::fmt::Display) {
    eprintln!("measured: {what}: {figure}");
}

/// The stop deadline of `portcullis run`: the 5 s grace plus one second.
const STOP_DEADLINE: Duration = Duration::from_secs(6);

#[test]
fn a_guest_hoarding_memory_stops_at_its_limit() {
    let host = start("hoard", "env = { MODE = \"hoard\" }\nmax-memory = \"100MiB\"", &[]);
    let base = host.memory("VmRSS");
    let mut attacker = host.attack(b"more\n");
    assert_eq!(line(&mut attacker), "held 64 MiB\n");
    host.neighbour_round_trip();
    // The second 64 MiB would pass 100 MiB: the allocation fails in the guest,
    // which traps; only its instance ends.
    attacker.write_all(b"more\n").unwrap();
    assert_closed(&mut attacker);
    host.neighbour_round_trip();
    let peak = host.memory("VmHWM");
    report("hoard, max-memory 100 MiB: peak RSS above start", format!("{} MiB", (peak - base) / MIB));
    assert!(peak < base + 100 * MIB + 48 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
    // A fresh instance serves the next client.
    let mut next = host.attack(b"more\n");
    assert_eq!(line(&mut next), "held 64 MiB\n");
    let log = host.log_with("guest trapped");
    assert!(log.contains("memory limit reached"), "{log}");
    assert!(log.contains("service=hostile") && log.contains("guest trapped"), "{log}");
    assert_eq!(log.matches("memory limit reached").count(), 1, "one line per instance: {log}");
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0);
}

#[test]
fn the_memory_budget_caps_all_instances_together() {
    // Instances per connection of 256 MiB each, 200 MiB used by each, in a
    // process with 500 MiB for all: two fit, the others fail.
    let host = start(
        "budget",
        "env = { MODE = \"alloc\", ALLOC_MIB = \"200\" }\ninstances = \"per-connection\"\nmax-memory = \"256MiB\"",
        &["--memory-budget", "500MiB", "--max-instances", "16"],
    );
    let base = host.memory("VmRSS");
    let mut clients = Vec::new();
    let mut served = 0;
    for _ in 0..6 {
        let mut client = TcpStream::connect(&host.hostile).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if line(&mut client) == "ok\n" {
            served += 1;
        }
        clients.push(client);
    }
    assert_eq!(served, 2, "two instances fit the budget: {}", host.log());
    host.neighbour_round_trip();
    let peak = host.memory("VmHWM");
    report(
        "6 x 200 MiB per connection, budget 500 MiB: served, peak RSS above start",
        format!("{served}, {} MiB", (peak - base) / MIB),
    );
    assert!(peak < base + 500 * MIB + 48 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
    let log = host.log_with("memory budget reached");
    assert!(log.contains("memory budget reached"), "{log}");
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0);
}

#[test]
fn a_flood_of_udp_sockets_stops_at_the_socket_limit() {
    let host = start(
        "udp-flood",
        "env = { MODE = \"udp-flood\" }\nmax-sockets = 50\nallow-udp = [\"udp://127.0.0.1:9\"]",
        &[],
    );
    let base = host.open_descriptors();
    let mut attacker = host.attack(b"flood\n");
    assert_eq!(line(&mut attacker), "opened 50: socket limit reached (50)\n");
    let fds = host.open_descriptors();
    report("UDP flood, max-sockets 50: descriptors above start", fds - base);
    assert!(fds <= base + 50 + 4, "{fds} descriptors open, {base} before");
    host.neighbour_round_trip();
    let log = host.log_with("socket limit reached (50)");
    assert_eq!(log.matches("socket limit reached (50)").count(), 1, "{log}");
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0);
}

#[test]
fn a_flood_of_client_connections_stops_at_the_socket_limit() {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let keys = format!(
        "env = {{ MODE = \"connect-flood\", TARGET = \"127.0.0.1:{port}\" }}\nmax-sockets = 40\n\
         allow-connect = [\"tcp://127.0.0.1:{port}\"]"
    );
    let host = start("connect-flood", &keys, &[]);
    let base = host.open_descriptors();
    let mut attacker = host.attack(b"flood\n");
    assert_eq!(line(&mut attacker), "opened 40: socket limit reached (40)\n");
    let fds = host.open_descriptors();
    report("connect flood, max-sockets 40: descriptors above start", fds - base);
    assert!(fds <= base + 40 + 4, "{fds} descriptors open, {base} before");
    host.neighbour_round_trip();
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0);
}

/// A guest in `mode` that never truly waits is trapped after its CPU bound,
/// and the neighbour answers promptly all the while.
fn a_guest_that_never_waits_is_trapped(mode: &str) {
    let host = start(mode, &format!("env = {{ MODE = \"{mode}\" }}\ncallback-cpu-ms = 400"), &[]);
    let mut attacker = host.attack(b"go\n");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(300) {
        slowest = slowest.max(host.neighbour_round_trip());
    }
    assert!(slowest < Duration::from_millis(250), "{mode}: the neighbour waited {slowest:?}");
    assert_closed(&mut attacker);
    report(
        &format!("{mode}, callback-cpu-ms 400: trapped after; slowest neighbour round trip"),
        format!("{:?}; {slowest:?}", started.elapsed()),
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{mode}: trapped only after {:?}", started.elapsed());
    host.neighbour_round_trip();
    let log = host.log_with("guest trapped");
    assert!(log.contains("without waiting") || log.contains("blocked in wasi:io/poll"), "{mode}: {log}");
    assert!(log.contains("service=hostile"), "{log}");
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0, "{mode}");
}

#[test]
fn a_guest_making_cheap_async_calls_in_a_loop_is_trapped() {
    // The raw async `write` of nothing: it completes at once (tokio's
    // cooperative budget must not make it look like a wait).
    a_raw_guest_that_never_waits_is_trapped("async-write-empty");
}

#[test]
fn a_guest_filling_memory_in_bulk_is_trapped_on_time() {
    // Each `memory.fill` of 64 MiB runs long between two epoch checks: time
    // is measured, not ticks counted.
    a_raw_guest_that_never_waits_is_trapped("fill-loop");
}

fn a_raw_guest_that_never_waits_is_trapped(mode: &str) {
    let keys = format!("env = {{ MODE = \"{mode}\" }}\ncallback-cpu-ms = 400");
    let host = start_guest("raw-hostile", mode, &keys, &[]);
    let started = Instant::now();
    let mut attacker = host.attack(b"go\n");
    assert_closed(&mut attacker);
    report(&format!("raw {mode}, callback-cpu-ms 400: trapped after"), format!("{:?}", started.elapsed()));
    assert!(started.elapsed() < Duration::from_secs(3), "{mode}: trapped only after {:?}", started.elapsed());
    host.neighbour_round_trip();
    let log = host.log_with("without waiting");
    assert!(log.contains("without waiting"), "{mode}: {log}");
}

#[test]
fn a_service_calling_exit_ends_only_its_instance() {
    let host = start_guest("raw-hostile", "exit", "env = { MODE = \"exit\" }", &[]);
    let mut leaver = host.attack(b"go\n");
    assert_closed(&mut leaver);
    // A fresh instance takes the next client (which exits it again).
    let mut next = host.attack(b"go\n");
    assert_closed(&mut next);
    host.neighbour_round_trip();
    let log = host.log_with_times("a fresh instance in", 2);
    assert_eq!(log.matches("a fresh instance in").count(), 2, "{log}");
    assert!(log.contains("guest exited with status"), "{log}");
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0);
}

#[test]
fn a_host_name_cannot_forge_log_lines() {
    let host = start_guest("raw-hostile", "log-inject", "env = { MODE = \"log-inject\" }", &[]);
    let mut attacker = host.attack(b"go\n");
    let answer = line(&mut attacker);
    assert!(answer.contains("invalid host"), "{answer}");
    let (code, _, log) = host.terminate();
    assert!(!log.contains("FORGED"), "{log}");
    assert_eq!(code, 0);
}

#[test]
fn long_listener_interfaces_are_not_kept_in_the_host() {
    // 20 listeners with a 16 MiB interface string each, kept by the guest:
    // the host copies each once (from guest memory, bounded by it) and keeps none.
    let host = start_guest("raw-hostile", "long-interface", "env = { MODE = \"long-interface\" }", &[]);
    let base = host.memory("VmRSS");
    let mut attacker = host.attack(b"go\n");
    let answer = line(&mut attacker);
    assert!(answer.contains("invalid host"), "{answer}");
    let now = host.memory("VmRSS");
    report("20 listeners with a 16 MiB interface: RSS above start", format!("{} MiB", now.saturating_sub(base) / MIB));
    assert!(now < base + 64 * MIB, "{} MiB from {} MiB", now / MIB, base / MIB);
}

#[test]
fn an_oversized_datagram_is_refused_before_the_host_copies_it() {
    let host =
        start_guest("raw-hostile", "udp-big", "env = { MODE = \"udp-big\" }\nallow-udp = [\"udp://127.0.0.1:9\"]", &[]);
    let base = host.memory("VmRSS");
    let mut attacker = host.attack(b"go\n");
    let answer = line(&mut attacker);
    assert_eq!(answer, "datagram too large: 67108864 bytes (at most 65527 over IPv6, 65507 over IPv4)\n");
    // The guest's own 64 MiB list is in its memory; no second copy in the host.
    let peak = host.memory("VmHWM");
    report("UDP send-to of a 64 MiB list: peak RSS above start", format!("{} MiB", (peak - base) / MIB));
    assert!(peak < base + 64 * MIB + 24 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
}

#[test]
fn handles_are_charged_to_the_instance() {
    // 200,000 handles of 256 bytes each would be ~49 MiB: past 16 MiB the
    // clone traps (the WIT gives clone-handle no error) and only that instance ends.
    let host =
        start_guest("raw-hostile", "clone-flood", "env = { MODE = \"clone-flood\" }\nmax-memory = \"16MiB\"", &[]);
    let mut attacker = host.attack(b"go\n");
    assert_closed(&mut attacker);
    host.neighbour_round_trip();
    let log = host.log_with("guest trapped");
    assert!(log.contains("memory limit reached: a handle"), "{log}");
}

#[test]
fn pending_calls_are_charged_to_the_instance() {
    // 100,000 reads pending at once: each holds host memory, charged to the
    // instance (24 MiB here: the guest's own 100,000 futures take ~10 MiB of
    // it), so most are refused at once.
    let host =
        start_guest("raw-hostile", "pending-reads", "env = { MODE = \"pending-reads\" }\nmax-memory = \"24MiB\"", &[]);
    let base = host.memory("VmRSS");
    let mut attacker = host.attack(b"go\n");
    let answer = line(&mut attacker);
    let refused: usize = answer.trim().strip_prefix("refused ").and_then(|n| n.parse().ok()).expect(&answer);
    let peak = host.memory("VmHWM");
    report(
        "100,000 pending reads, max-memory 24 MiB: refused, peak RSS above start",
        format!("{refused}, {} MiB", (peak - base) / MIB),
    );
    assert!(refused > 90_000, "{answer}");
    assert!(peak < base + 48 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
    host.neighbour_round_trip();
}

#[test]
fn a_guest_spinning_is_trapped() {
    a_guest_that_never_waits_is_trapped("spin");
}

#[test]
fn a_guest_writing_nothing_in_a_loop_is_trapped() {
    a_guest_that_never_waits_is_trapped("spin-write");
}

#[test]
fn a_guest_reading_nothing_in_a_loop_is_trapped() {
    a_guest_that_never_waits_is_trapped("spin-read0");
}

/// A callback that sleeps (`std::thread::sleep`, an hour) waits: its CPU
/// bound does not run down, the instance is not trapped, and the thread
/// serves the neighbour all the while.
#[test]
fn a_guest_sleeping_in_a_callback_waits_and_holds_up_no_other_service() {
    let host = start("sleep", "env = { MODE = \"sleep\" }\ncallback-cpu-ms = 400", &[]);
    let mut attacker = host.attack(b"go\n");
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(1500) {
        slowest = slowest.max(host.neighbour_round_trip());
    }
    report("sleep, callback-cpu-ms 400: slowest neighbour round trip over 1.5 s", format!("{slowest:?}"));
    assert!(slowest < Duration::from_millis(250), "the neighbour waited {slowest:?}");
    attacker.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut byte = [0u8; 1];
    let still_open = matches!(attacker.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(still_open, "the sleeping guest's connection was closed");
    assert!(!host.log().contains("guest trapped"), "{}", host.log());
}

#[test]
fn eight_spinning_instances_do_not_stall_the_neighbour() {
    let host = start(
        "eight-spinners",
        "env = { MODE = \"spin\" }\ninstances = \"per-connection\"\ncallback-cpu-ms = 3000",
        &["--max-instances", "16"],
    );
    let spinners: Vec<TcpStream> = (0..8).map(|_| host.attack(b"go\n")).collect();
    // Every spinner's instance has its message: they all spin.
    spinners.iter().for_each(|spinner| host.taken(spinner));
    let mut times: Vec<Duration> = (0..20).map(|_| host.neighbour_round_trip()).collect();
    times.sort();
    let (median, slowest) = (times[times.len() / 2], times[times.len() - 1]);
    report("8 spinning instances: neighbour round trip median, slowest", format!("{median:?}, {slowest:?}"));
    assert!(median < Duration::from_millis(100), "median {median:?}, all {times:?}");
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}, all {times:?}");
}

/// SIGTERM ends the process within the grace period plus one second while
/// the hostile guest is in `mode` (with a CPU bound far beyond that).
fn sigterm_ends_the_process_in_time(mode: &str, expected_code: i32, expected_log: &str) {
    let host = start(mode, &format!("env = {{ MODE = \"{mode}\" }}\ncallback-cpu-ms = 60000"), &[]);
    let attacker = host.attack(b"go\n");
    host.taken(&attacker);
    host.neighbour_round_trip();
    let (code, took, log) = host.terminate();
    report(&format!("SIGTERM with a {mode} guest: exit code, time to exit"), format!("{code}, {took:?}"));
    assert!(took < STOP_DEADLINE + Duration::from_millis(500), "{mode}: the stop took {took:?}: {log}");
    assert_eq!(code, expected_code, "{mode}: {log}");
    assert!(log.contains(expected_log), "{mode}: {log}");
}

#[test]
fn sigterm_ends_the_process_in_time_with_a_spinning_guest() {
    // The guest never gives the thread back in time: the stop is cut short.
    sigterm_ends_the_process_in_time("spin", 1, "did not finish");
}

#[test]
fn sigterm_ends_the_process_in_time_with_a_sleeping_guest() {
    // The sleep is ended when the grace period is over: a clean stop.
    sigterm_ends_the_process_in_time("sleep", 0, "stopped while the guest waited in wasi:io/poll");
}

#[test]
fn a_second_signal_exits_at_once() {
    let host = start("second-signal", "env = { MODE = \"spin\" }\ncallback-cpu-ms = 60000", &[]);
    let attacker = host.attack(b"go\n");
    host.taken(&attacker);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(host.pid() as i32, libc::SIGINT) };
    // The first signal's stop has begun.
    let stopping = "stopping: no new connections, letting callbacks finish";
    assert!(host.process.log_with(stopping, 1, Duration::from_secs(10)).contains(stopping), "{}", host.log());
    let (code, took, log) = host.terminate();
    assert!(took < Duration::from_secs(2), "the second signal took {took:?} to end it: {log}");
    assert_eq!(code, 1, "{log}");
    assert!(log.contains("second signal"), "{log}");
}

#[test]
fn sigterm_stops_the_process_when_stderr_is_a_closed_pipe() {
    let mut child = Command::new(portcullis_bin())
        .args(["run", guest("echo").to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("PORTCULLIS_CACHE_DIR", test_cache())
        .env("RUST_LOG", "portcullis=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.strip_prefix("listening on ").unwrap().trim().to_string();
    drop(child.stderr.take()); // every log line now fails to write
    for _ in 0..3 {
        let mut client = TcpStream::connect(&addr).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.write_all(b"hi").unwrap();
        let mut echoed = [0u8; 2];
        client.read_exact(&mut echoed).expect("still served with its log gone");
    }
    let started = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    report(
        "SIGTERM with stderr a closed pipe: exit code, time to exit",
        format!("{:?}, {:?}", status.code(), started.elapsed()),
    );
    assert!(started.elapsed() < STOP_DEADLINE, "the stop took {:?}", started.elapsed());
    assert_eq!(status.code(), Some(0));
}

#[test]
fn concurrent_huge_writes_to_a_silent_client_hold_little_host_memory() {
    // Ten write_alls of 100 MiB each (one buffer in the guest) to a client
    // that never reads: the host holds at most 64 KiB of each at a time.
    let host = start("big-writes", "env = { MODE = \"big-writes\", WRITE_MIB = \"100\", COUNT = \"10\" }", &[]);
    let base = host.memory("VmRSS");
    let silent = host.attack(b"go\n");
    // The writes are under way once bytes reach the silent client ...
    let (local, peer) = (silent.local_addr().unwrap(), silent.peer_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread_by_peer(peer, local) == 0 {
        assert!(Instant::now() < deadline, "no bytes reached the silent client within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... and a copy of each write would have grown the host by now: a check
    // that something does not happen waits.
    std::thread::sleep(Duration::from_secs(2));
    host.neighbour_round_trip();
    let peak = host.memory("VmHWM");
    report("10 x write_all(100 MiB) to a silent client: peak RSS above start", format!("{} MiB", (peak - base) / MIB));
    assert!(peak < base + 100 * MIB + 48 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
    let (code, _, _) = host.terminate();
    assert_eq!(code, 0);
}

#[test]
fn a_guest_printing_to_a_full_pipe_stalls_nobody() {
    // The host's stdout is a pipe nobody reads (it holds 64 KiB): of the
    // guest's 8 MiB, its component's 64 KiB a second go to a bounded queue,
    // the rest is dropped, and nobody waits.
    let host = start("print-flood", "env = { MODE = \"print-flood\" }", &[]);
    let base = host.memory("VmRSS");
    let started = Instant::now();
    let mut attacker = host.attack(b"go\n");
    assert_eq!(line(&mut attacker), "printed\n");
    let took = started.elapsed();
    let slowest = (0..5).map(|_| host.neighbour_round_trip()).max().unwrap();
    let peak = host.memory("VmHWM");
    report(
        "8 MiB printed to a full stdout pipe: time to print, neighbour's slowest, peak RSS above start",
        format!("{took:?}, {slowest:?}, {} MiB", (peak - base) / MIB),
    );
    assert!(slowest < Duration::from_millis(250), "the neighbour waited {slowest:?}");
    assert!(peak < base + 32 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
    let log = host.log_with("guest output dropped: over 65536 bytes or 100 writes a second");
    assert!(log.contains("guest output dropped: over 65536 bytes or 100 writes a second"), "{log}");
}

/// Tenants one after another each leave a secret in their instance's memory
/// and report the earlier ones they find in it.
fn tenants_find(instances: &str) -> Vec<String> {
    let host = start(
        &format!("residue-{instances}"),
        &format!("env = {{ MODE = \"residue\" }}\ninstances = \"{instances}\""),
        // The tenants' pool has one slot for a connection and one per worker
        // for the instance made ahead: a few slots, each going from one
        // tenant to a later one many times over.
        &["--max-instances", "1", "--workers", "2"],
    );
    let mut found = Vec::new();
    for tenant in 1..=12 {
        // Per connection, the instance before it ends a moment after its
        // connection: until it has, its slot is taken and a tenant is
        // refused (closed unanswered, before any instance saw it): it comes again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let mut client = TcpStream::connect(&host.hostile).unwrap();
            client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = client.write_all(format!("SECRET-{tenant}.\n").as_bytes());
            let answer = line(&mut client);
            if !answer.is_empty() {
                break answer;
            }
            assert!(Instant::now() < deadline, "tenant {tenant} was refused for 10 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        found.push(answer);
    }
    found
}

#[test]
fn an_instance_never_sees_the_memory_of_the_tenant_before_it() {
    let per_connection = tenants_find("per-connection");
    assert!(per_connection.iter().all(|l| l == "found []\n"), "{per_connection:?}");
    // The check can fail: one shared instance does see what came before.
    let shared = tenants_find("shared");
    assert_eq!(shared[1], "found [SECRET-1.]\n", "{shared:?}");
}
