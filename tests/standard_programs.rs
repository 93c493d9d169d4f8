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
    // A fresh instance binds again (port 0: a port of its own).
    let again = host.listening_on();
    let mut client = connect(again);
    assert_eq!(ask(&mut client, "still here"), "still here");
}

#[test]
fn a_stop_ends_a_sleeping_program_within_the_grace_period_and_a_second() {
    let (mut host, addr) = std_server("stopped-std-server", &[]);
    let mut client = connect(addr);
    client.write_all(b"sleep 600000").unwrap();
    std::thread::sleep(Duration::from_millis(300)); // it now sleeps
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
