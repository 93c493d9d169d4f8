//! What only the WASI backend has: a component on standard `wasi:sockets`,
//! under portcullis's policy and bounds. It listens only where `--listen` (or
//! a listen grant) says; a name grant follows the name to its addresses and
//! no further; Rust's `std::net` in it goes through the grants too; its CPU
//! bound restarts at every true wait; its sockets are bounded; a trap starts
//! a fresh instance, which listens again. (The scenarios both backends share
//! are in the conformance files, through `on_both_backends!`.)

use std::time::Duration;

use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_service_without_listen_addresses_says_what_is_missing() {
    let out = run_program_on(Backend::Wasi, "echo", &[], &[]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: PORTCULLIS_LISTEN is not set"), "{stderr}");

    let out = run_program_on(Backend::Wasi, "echo", &[("PORTCULLIS_LISTEN", "localhost:80")], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`localhost:80` is not ADDR:PORT"), "{stderr}");
}

#[tokio::test]
async fn it_listens_only_where_listen_says() {
    // Without `--listen`, PORTCULLIS_LISTEN set by hand (as on another
    // runtime) grants nothing: the guest's listen is refused.
    let other = free_port();
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-listen-elsewhere",
        "echo",
        &["--env", &format!("PORTCULLIS_LISTEN={other}")],
        None,
    );
    let code = service.exit_code_within(Duration::from_secs(10));
    assert_eq!(code, Some(1), "a service listening where no --listen or grant says must fail");
    let log = service.log();
    assert!(log.contains(&format!("permission denied: listen tcp://{other}")), "{log}");
}

#[tokio::test]
async fn std_net_in_a_wasi_guest_goes_through_the_grants() {
    let echo = native_tcp_echo().await;
    let env = [("MODE", "std-net"), ("TARGET", &echo.to_string() as &str)];
    let granted = format!("tcp://127.0.0.1:{}", echo.port());
    let out = run_program_on(Backend::Wasi, "clients", &env, &["--allow-connect", &granted]).await;
    assert_eq!(stdout_of(&out), "std::net connected\n");
    let out = run_program_on(Backend::Wasi, "clients", &env, &["--allow-connect", "tcp://127.0.0.2:1"]).await;
    assert!(stdout_of(&out).starts_with("std::net refused:"), "{out:?}");
}

#[tokio::test]
async fn a_name_grant_admits_its_addresses_only_for_its_own_ports() {
    let echo = native_tcp_echo().await;
    let target = format!("localhost:{}", echo.port());
    let env = [("MODE", "echo"), ("TARGET", &target as &str)];
    // The name is granted, but for another port: the look-up is allowed, the
    // connect to what it resolved to is not.
    let other_port = format!("tcp://localhost:{}", echo.port().wrapping_add(1).max(1));
    let out = run_program_on(Backend::Wasi, "clients", &env, &["--allow-connect", &other_port]).await;
    assert!(
        stdout_of(&out).starts_with("error: PermissionDenied: permission denied: connect tcp://localhost"),
        "{out:?}"
    );
    // Not named by any grant: not even looked up (the log says so).
    let out = run_program_on(Backend::Wasi, "clients", &env, &["--allow-connect", "tcp://127.0.0.1:*"]).await;
    assert!(stdout_of(&out).starts_with("error: PermissionDenied"), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("look up localhost: no grant names it"), "{stderr}");
}

#[tokio::test]
async fn the_cpu_bound_restarts_at_every_true_wait() {
    // Idle for three times the bound between messages: an idle guest is
    // waiting, not running, and is served each time.
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-cpu-idle",
        "echo",
        &["--listen", "127.0.0.1:0", "--callback-cpu-ms", "200"],
        None,
    );
    let addr = service.listening_on();
    let mut client = connect_when_listening(addr).await;
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let hello = format!("after a wait {i}");
        assert_eq!(round_trip(&mut client, hello.as_bytes()).await, hello.as_bytes());
    }
    assert!(service.running());
}

#[tokio::test]
async fn a_spinning_guest_traps_and_a_fresh_instance_listens_again() {
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-spin",
        "hostile",
        &["--listen", &free_port().to_string(), "--env", "MODE=spin", "--callback-cpu-ms", "300"],
        None,
    );
    let addr = service.listening_on();
    let mut client = connect_when_listening(addr).await;
    client.write_all(b"spin").await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"", "the trapped instance's connection is closed");
    let log = service.log_with("without waiting", 1, Duration::from_secs(5));
    assert!(log.contains("without waiting (--callback-cpu-ms)"), "{log}");
    // The fresh instance binds the same address again.
    assert_eq!(service.stdout_line(), format!("listening on {addr}"));
    let _again = connect_when_listening(addr).await;
    assert!(service.running());
}

#[tokio::test]
async fn a_socket_flood_stops_at_max_sockets_and_the_host_holds() {
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-udp-flood",
        "hostile",
        &[
            "--listen",
            &free_port().to_string(),
            "--env",
            "MODE=udp-flood",
            "--max-sockets",
            "32",
            "--allow-udp",
            "udp://*:*",
        ],
        None,
    );
    let addr = service.listening_on();
    let before = service.descriptors();
    let mut client = connect_when_listening(addr).await;
    client.write_all(b"flood").await.unwrap();
    // The guest meets its table's bound and traps (wasmtime-wasi has no
    // error for a full table); its sockets go with it.
    let _ = read_to_end(&mut client).await;
    let log = service.log_with("guest trapped", 1, Duration::from_secs(5));
    assert!(log.contains("guest trapped"), "{log}");
    assert_eq!(service.stdout_line(), format!("listening on {addr}"));
    let after = service.descriptors();
    assert!(after <= before + 8, "descriptors before {before}, after {after}");
    let mut again = connect_when_listening(addr).await;
    again.write_all(b"x").await.unwrap();
    assert!(service.running());
}

/// The command for another runtime, as docs/wasi.md writes it: the echo
/// example on `wasmtime run`, driven over loopback (a round trip, a large
/// echo in parts, the end of stream closing it).
#[tokio::test]
async fn the_echo_example_runs_on_the_wasmtime_command_line_as_the_docs_say() {
    let addr = free_port();
    let mut wasmtime = tokio::process::Command::new("wasmtime")
        .args(["run", "-S", "inherit-network", "--env", &format!("PORTCULLIS_LISTEN={addr}")])
        .arg(Backend::Wasi.guest("echo"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start `wasmtime` (cargo xtask wasmtime installs it)");
    let mut stdout = tokio::io::BufReader::new(wasmtime.stdout.take().unwrap());
    let mut line = String::new();
    let announced = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncBufReadExt;
        stdout.read_line(&mut line).await
    });
    announced.await.expect("no `listening on` within 30 s").unwrap();
    assert_eq!(line.trim(), format!("listening on {addr}"));

    let mut client = connect_when_listening(addr).await;
    client.set_nodelay(true).unwrap();
    assert_eq!(round_trip(&mut client, b"Hello Ballerina\n").await, b"Hello Ballerina\n");
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read_half, mut write_half) = client.into_split();
    let writer = tokio::spawn(async move {
        write_half.write_all(&large).await.unwrap();
        write_half.shutdown().await.unwrap();
        large
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), read_half.read_to_end(&mut echoed)).await.unwrap().unwrap();
    assert!(echoed == writer.await.unwrap(), "the large echo differs");
    assert!(wasmtime.try_wait().unwrap().is_none(), "the service keeps running after a client ends");
}

/// Clients cannot fill a WASI-backend service's socket table (which would
/// trap it): its listeners accept at most `--max-connections` (by default
/// half of `--max-sockets`) at once, and the rest wait in the backlog.
#[tokio::test]
async fn a_client_flood_waits_in_the_backlog_instead_of_trapping_the_service() {
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-client-flood",
        "echo",
        &["--listen", &free_port().to_string(), "--max-sockets", "40"],
        None,
    );
    let addr = service.listening_on();
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(connect_when_listening(addr).await);
    }
    // The first 20 (40 / 2) are served; the 21st waits.
    for (i, client) in clients.iter_mut().enumerate().take(20) {
        let hello = format!("client {i}");
        assert_eq!(round_trip(client, hello.as_bytes()).await, hello.as_bytes());
    }
    assert_unserved(&mut clients[20], b"waiting", Duration::from_millis(300)).await;
    // Room comes as clients leave; nothing trapped.
    clients.drain(..20);
    assert_eq!(read_n(&mut clients[0], 7).await, b"waiting");
    for (i, client) in clients.iter_mut().enumerate().skip(1).take(19) {
        let hello = format!("late {i}");
        assert_eq!(round_trip(client, hello.as_bytes()).await, hello.as_bytes());
    }
    assert!(!service.log().contains("guest trapped"), "{}", service.log());
    assert!(service.running());
}

/// The connection limits portcullis passes on (`--idle-timeout-ms`,
/// `--max-connections-per-ip`, `--write-timeout-ms`), which the SDK's WASI
/// backend applies as the host does for its own connections.
#[tokio::test]
async fn idle_per_address_and_write_limits_hold_for_a_wasi_service() {
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-connection-limits",
        "scenarios",
        &[
            "--listen",
            &free_port().to_string(),
            "--env",
            "MODE=stream-out",
            "--idle-timeout-ms",
            "600",
            "--max-connections-per-ip",
            "2",
            "--write-timeout-ms",
            "500",
        ],
        None,
    );
    let addr = service.listening_on();
    let mut idle = connect_when_listening(addr).await;
    let mut never_reads = connect_when_listening(addr).await;
    // A third from the same address is closed at once.
    let mut third = connect_when_listening(addr).await;
    let closed_at_once = tokio::time::timeout(Duration::from_secs(2), read_to_end(&mut third)).await;
    assert_eq!(closed_at_once.expect("the third connection was kept"), b"");
    // The one that asks for a stream and never reads: its write times out.
    never_reads.write_all(b"go").await.unwrap();
    let log = service.log_with("write timed out", 1, Duration::from_secs(5));
    assert!(log.contains("stream-out: write failed after") && log.contains("write timed out"), "{log}");
    // The silent one is closed after the idle time-out.
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut idle)).await;
    assert_eq!(closed.expect("the idle connection was kept"), b"");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(service.running());
}

/// The idle time-out restarts with every byte: a client that sends a byte
/// every 200 ms is kept past many idle time-outs of 600 ms (the SDK keeps
/// one timer while the deadline moves on, and arms another for the rest
/// when it fires early), and is closed one time-out after it falls silent.
#[tokio::test]
async fn a_wasi_service_keeps_a_dripping_client_and_closes_it_once_silent() {
    let args = ["--listen", &free_port().to_string(), "--idle-timeout-ms", "600"];
    let mut service = HostProcess::start_on(Backend::Wasi, "wasi-dripping-client", "echo", &args, None);
    let addr = service.listening_on();
    let mut client = connect_when_listening(addr).await;
    for i in 0..10u8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(&[b'0' + i]).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), read_n(&mut client, 1)).await;
        assert_eq!(echoed.unwrap_or_else(|_| panic!("byte {i} was not echoed")), [b'0' + i]);
    }
    // Silent now: closed after the idle time-out (600 ms from the echo; at
    // most a few s on a busy machine), not at once.
    let silent = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut client)).await;
    assert_eq!(closed.expect("the silent connection was kept"), b"");
    let after = silent.elapsed();
    assert!(after >= Duration::from_millis(500), "closed {after:?} after the last byte");
    assert!(service.running());
}

/// A service that reads fixed-size pieces while a client streams without a
/// pause never truly waits (its read-ahead never empties), yet must not meet
/// the CPU bound: the SDK gives the runtime a turn every quarter of the bound
/// portcullis tells it (`PORTCULLIS_CALLBACK_CPU_MS`), a small bound too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_without_pause_does_not_trap_a_read_exact_service() {
    for bound_ms in ["300", "40"] {
        stream_without_pause_under(bound_ms).await;
    }
}

async fn stream_without_pause_under(bound_ms: &str) {
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-streaming-client",
        "scenarios",
        &["--listen", &free_port().to_string(), "--env", "MODE=blocking", "--callback-cpu-ms", bound_ms],
        None,
    );
    let addr = service.listening_on();
    let client = connect_when_listening(addr).await;
    client.set_nodelay(true).unwrap();
    let (mut read_half, mut write_half) = client.into_split();
    // Five times the larger bound of streaming, without a pause.
    let sender = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut sent = 0usize;
        while started.elapsed() < Duration::from_millis(1500) {
            write_half.write_all(&b"ThisIsBlockingRead".repeat(64)).await.unwrap();
            sent += 64;
        }
        write_half.shutdown().await.unwrap();
        sent
    });
    let mut echoed = Vec::new();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), read_half.read_to_end(&mut echoed)).await.unwrap().unwrap();
    let sent = sender.await.unwrap();
    assert_eq!(echoed.len(), sent * 18, "every piece comes back (bound {bound_ms} ms)");
    assert!(echoed.chunks(18).all(|c| c == b"ThisIsBlockingRead"), "the echo differs");
    let log = service.log();
    assert!(!log.contains("guest trapped"), "bound {bound_ms} ms, took {:?}; {log}", started.elapsed());
}

/// A service kept busy by many clients at once — 300 connections pipelining
/// requests as fast as it answers, none reading its replies — always has
/// work; it still must not meet the CPU bound, which counts the instance's
/// work between two returns to the runtime: the SDK's turns park every task
/// until the runtime has run. (A yield alone did not return: the executor
/// took the next ready event instead, and `resp-kv` trapped, its keys lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_pipelining_without_reading_do_not_trap_a_busy_service() {
    let mut service = HostProcess::start_on(
        Backend::Wasi,
        "wasi-pipelining-flood",
        "resp-kv",
        &["--listen", &free_port().to_string(), "--callback-cpu-ms", "1000"],
        None,
    );
    let addr = service.listening_on();
    let mut canary = connect_when_listening(addr).await;
    canary.write_all(b"SET canary alive\r\n").await.unwrap();
    assert_eq!(read_n(&mut canary, 5).await, b"+OK\r\n");
    let pings = b"*1\r\n$4\r\nPING\r\n".repeat(4096);
    let mut flood = Vec::new();
    for _ in 0..300 {
        // A small receive buffer: the replies back up soon, as in the flood
        // that first showed this.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let pings = pings.clone();
        flood.push(tokio::spawn(async move {
            let mut stream = stream;
            // As much as the connection takes in 3 s (it blocks once the
            // service's replies, never read, fill the buffers).
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                loop {
                    if stream.write_all(&pings).await.is_err() {
                        return;
                    }
                }
            })
            .await;
            stream
        }));
    }
    for client in flood {
        drop(client.await.unwrap());
    }
    canary.write_all(b"GET canary\r\n").await.unwrap();
    assert_eq!(read_n(&mut canary, 11).await, b"$5\r\nalive\r\n", "the instance was replaced: {}", service.log());
    assert!(!service.log().contains("guest trapped"), "{}", service.log());
}
