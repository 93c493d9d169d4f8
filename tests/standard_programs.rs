//! Standard programs (plain `std::net`, no SDK, built for `wasm32-wasip2`)
//! under `portcullis run`, as a user would run them: waits are waits, the CPU
//! bound traps only computation, a stop ends a sleeping guest, names resolve
//! under the grants, and the memory and socket bounds hold as for SDK guests.
//! Each test runs the `portcullis` binary (`HostProcess`) with the
//! `std-programs` guest (see its crate doc for the requests it answers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use portcullis_tests::*;

/// One request on `stream`, and its answer (what one read brings, waiting
/// at most 30 s).
fn ask(stream: &mut TcpStream, request: &str) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => panic!("connect {addr}: {err}"),
        }
    }
}

fn std_server(test: &str, args: &[&str]) -> (HostProcess, SocketAddr) {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut host = HostProcess::start(test, "std-programs", &all, None);
    let addr = host.listening_on();
    (host, addr)
}

#[test]
fn a_server_idle_for_ten_times_the_cpu_bound_is_still_served() {
    let (host, addr) = std_server("idle-std-server", &["--callback-cpu-ms", "200"]);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "first"), "first");
    // Waiting in `read` (and the next client's `accept`) for 2 s: no CPU.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(ask(&mut client, "second"), "second");
    drop(client);
    std::thread::sleep(Duration::from_millis(2000));
    let mut next = connect(addr);
    assert_eq!(ask(&mut next, "third"), "third");
    assert!(!host.log().contains("trapped"), "an idle program was trapped:\n{}", host.log());
}

#[test]
fn a_one_second_sleep_is_answered_under_a_half_second_bound() {
    let (host, addr) = std_server("sleeping-std-server", &["--callback-cpu-ms", "500"]);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "sleep 1000"), "slept\n");
    assert_eq!(ask(&mut client, "after"), "after");
    assert!(!host.log().contains("trapped"), "a sleeping program was trapped:\n{}", host.log());
}

#[test]
fn a_spinning_server_is_trapped_and_listens_again() {
    let (mut host, addr) = std_server("spinning-std-server", &["--callback-cpu-ms", "300"]);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "spin"), "", "the connection ends with the trapped instance");
    let log = host.log_with("CPU time", 1, Duration::from_secs(30));
    assert!(log.contains("without waiting (--callback-cpu-ms)"), "{log}");
    // A fresh instance is told the port the first one got: the service keeps its address.
    let again = host.listening_on();
    assert_eq!(again, addr, "a restart moved the service");
    let mut client = connect(again);
    assert_eq!(ask(&mut client, "still here"), "still here");
}

#[test]
fn a_service_that_exits_is_logged_and_replaced_at_the_same_address() {
    let (mut host, addr) = std_server("exiting-std-server", &[]);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "exit 3"), "", "the connection ends with the instance");
    // WASI 0.2's `exit` passes success or failure only: status 3 is a 1.
    let log = host.log_with("guest exited with status 1", 1, Duration::from_secs(30));
    assert!(log.contains("guest exited with status 1"), "{log}");
    assert_eq!(host.listening_on(), addr);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "still here"), "still here");
    assert!(host.running());
}

#[test]
fn a_client_that_traps_a_service_again_and_again_does_not_grow_its_pauses() {
    let (host, addr) = std_server("client-traps-std-server", &["--max-memory", "32MiB"]);
    for _ in 0..6 {
        let mut attacker = connect(addr);
        assert_eq!(ask(&mut attacker, "grow 64"), "", "past the bound the instance ends");
    }
    // Each instance served a client before it ended: no crash loop, so no
    // growing pause keeps the honest client out.
    let mut honest = connect(addr);
    assert_eq!(ask(&mut honest, "hello"), "hello");
    let log = host.log_with("instances ended:", 1, Duration::from_secs(5));
    assert!(log.contains("a fresh instance in 10ms"), "{log}");
    assert!(!log.contains("quick ends in a row"), "{log}");
}

#[test]
fn a_service_that_cannot_start_is_logged_at_once_and_tried_again_with_pauses() {
    // Its memory's minimum (17 pages, 1.06 MiB) is over the least bound
    // accepted (1 MiB, 16 pages): every instantiation fails.
    let mut host = HostProcess::start(
        "unstartable-std-server",
        "std-programs",
        &["--listen", "127.0.0.1:0", "--max-memory", "1MiB"],
        None,
    );
    let log = host.log_with("quick ends in a row", 1, Duration::from_secs(30));
    assert!(log.contains("guest failed to start (a fresh instance in "), "{log}");
    assert!(log.contains("instantiating std_programs.wasm: memory minimum size"), "{log}");
    assert!(log.contains("quick ends in a row"), "tried again, with growing pauses: {log}");
    assert!(host.running(), "the process serves on: {log}");
}

#[test]
fn a_program_that_panics_at_once_backs_off_and_its_neighbour_answers_throughout() {
    let manifest = format!(
        "[[service]]\nname = \"crasher\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\nenv = {{ MODE = \"panic\" }}\n\n\
         [[service]]\nname = \"neighbour\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\n",
        guest("std-programs"),
        guest("echo"),
    );
    let mut host = HostProcess::start_manifest("crash-loop", &manifest, &[]);
    let neighbour: SocketAddr = loop {
        let line = host.stdout_line();
        if let Some(addr) = line.strip_prefix("neighbour: listening on ") {
            break addr.parse().unwrap();
        }
    };
    let (cpu_before, wall) = (host.cpu_time(), Instant::now());
    // Three seconds of probes while the crasher panics again and again:
    // every one answered (each may wait 5 s: a loaded machine is slow, not stuck).
    let mut probes = 0;
    while wall.elapsed() < Duration::from_secs(3) {
        let mut echo = connect(neighbour);
        echo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        echo.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        echo.read_exact(&mut answer).unwrap_or_else(|e| panic!("probe {probes}: {e}\n{}", host.log()));
        assert_eq!(&answer, b"ping");
        probes += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // CPU time is the feature: a restart without a pause held a whole core.
    let share = (host.cpu_time() - cpu_before).as_secs_f64() / wall.elapsed().as_secs_f64();
    let log = host.log_with("quick ends in a row", 1, Duration::from_secs(5));
    assert!(share < 0.5, "the host used {share:.2} of a core during the crash loop\n{log}");
    assert!(log.contains("a program that panics before it listens"), "the guest's own panic message: {log}");
    assert!(log.contains("quick ends in a row"), "the crash loop is counted: {log}");
    // Coalesced: the first end in full, then count lines, not a line a restart.
    let full = log.lines().filter(|l| l.contains("guest trapped (")).count();
    assert!(full <= 6, "{full} full trap lines in 3 s:\n{log}");
    assert!(host.running());
}

/// The trap's backtrace names functions as the component's name section
/// does: a name holding a line break, and names of 100 KB.
#[test]
fn guest_chosen_names_stay_inside_one_bounded_host_line() {
    let forged = "x\\n2026-12-06T00:00:00.000000Z  INFO portcullis::cli: listening on 127.0.0.1:1";
    let long = "n".repeat(100_000);
    // $f0 calls $f1 ... $f19 calls $boom: twenty frames of long names.
    let calls: String = (0..20)
        .map(|i| {
            let next = if i == 19 { "$boom".to_string() } else { format!("$f{}", i + 1) };
            format!("(func $f{i} (@name \"{long}{i}\") call {next})\n")
        })
        .collect();
    let wat = format!(
        r#"(component
          (core module $m (@name "{forged}")
            (func $boom (@name "{forged}") unreachable)
            {calls}
            (func (export "run") (result i32) call $f0 i32.const 0))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $cli (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $cli)))"#
    );
    let dir = root().join("target/test-scratch/forged-names");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("forged-names.wasm");
    std::fs::write(&path, wat::parse_str(&wat).unwrap()).unwrap();
    let out = std::process::Command::new(portcullis_bin())
        .args(["run", path.to_str().unwrap()])
        .env("PORTCULLIS_CACHE_DIR", test_cache())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a program whose main trapped has failed");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("guest trapped"), "{log}");
    for line in log.lines() {
        let record = line.split_whitespace().nth(1).unwrap_or("");
        assert!(
            line.starts_with("20") && ["ERROR", "WARN", "INFO", "DEBUG"].contains(&record),
            "not one host record: {line:.200}"
        );
        assert!(line.len() <= portcullis::guest_text::MAX_LINE + 512, "a line of {} bytes", line.len());
    }
    assert!(log.contains(r"x\n2026-12-06"), "the line break is escaped, not dropped: {log:.2000}");
}

#[test]
fn a_stop_ends_a_sleeping_program_within_the_grace_period_and_a_second() {
    let (mut host, addr) = std_server("stopped-std-server", &[]);
    let mut client = connect(addr);
    client.write_all(b"sleep 600000").unwrap();
    // It has read the request: it now sleeps.
    let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread_by_peer(local, peer) > 0 {
        assert!(Instant::now() < deadline, "the program did not read its request within 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let asked = Instant::now();
    // SAFETY: kill(2) with our child's pid.
    unsafe { libc::kill(host.pid() as i32, libc::SIGTERM) };
    // The time is the feature here: the grace period (5 s) and a second, with
    // a margin for a loaded machine.
    let code = host.exit_code_within(portcullis::cli::STOP_DEADLINE + Duration::from_secs(3));
    assert!(code.is_some(), "still running {:?} after SIGTERM", asked.elapsed());
    let log = host.log();
    assert!(log.contains("stopped while the guest waited in wasi:io/poll"), "not ended by the grace period: {log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn a_client_connects_by_name_under_a_grant_and_is_refused_without_one() {
    let echo = native_tcp_echo().await;
    let target = format!("localhost:{}", echo.port());
    let grant = format!("tcp://localhost:{}", echo.port());
    let env = [("MODE", "client"), ("TARGET", target.as_str())];
    let granted = run_program("std-programs", &env, &["--allow-connect", &grant]).await;
    assert_eq!(stdout_of(&granted).trim(), "reply: hello", "{}", String::from_utf8_lossy(&granted.stderr));
    assert!(granted.status.success());

    let refused = run_program("std-programs", &env, &[]).await;
    assert!(!refused.status.success(), "{}", stdout_of(&refused));
    assert!(stdout_of(&refused).starts_with("error:"), "{}", stdout_of(&refused));
    let log = String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("permission denied: look up localhost: no grant names it"), "{log}");
}

#[test]
fn max_memory_holds_for_a_standard_program() {
    let (mut host, addr) = std_server("memory-std-server", &["--max-memory", "32MiB"]);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "grow 8"), "grew\n", "within the bound");
    assert_eq!(ask(&mut client, "grow 64"), "", "past the bound the instance ends");
    let again = host.listening_on();
    let mut client = connect(again);
    assert_eq!(ask(&mut client, "grow 8"), "grew\n");
    assert!(host.running());
}

#[test]
fn max_sockets_holds_for_a_standard_program() {
    let (mut host, addr) =
        std_server("sockets-std-server", &["--max-sockets", "8", "--allow-connect", "tcp://127.0.0.1:*"]);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "sockets 2"), "held 2\n", "within the bound");
    drop(client);
    let mut client = connect(addr);
    let answer = ask(&mut client, "sockets 50");
    assert!(answer.is_empty() || answer.starts_with("failed after"), "{answer}");
    // Refused or trapped: either way it serves again.
    let addr = if answer.is_empty() { host.listening_on() } else { addr };
    drop(client);
    let mut client = connect(addr);
    assert_eq!(ask(&mut client, "echo"), "echo");
    assert!(host.running());
}
