//! The UDP client: Ballerina's UDP scenarios, its error cases, and volume through
//! the `udp-echo` example, against native tokio peers over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use portcullis_tests::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;

/// A native UDP echo peer on 127.0.0.1; returns its address.
async fn native_echo() -> SocketAddr {
    native_echo_at("127.0.0.1:0").await
}

/// A native UDP echo peer bound to `local`; returns its address.
async fn native_echo_at(local: &str) -> SocketAddr {
    let socket = UdpSocket::bind(local).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn udp_mode(backend: Backend, mode: &str, target: SocketAddr) -> String {
    // `*` rather than 127.0.0.1: the error cases need a name granted so that
    // its failed lookup (not a denial) is what they see.
    let out = run_program_on(
        backend,
        "udp-clients",
        &[("MODE", mode), ("TARGET", &target.to_string())],
        &["--allow-udp", "udp://*:*"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    stdout_of(&out)
}

/// An unbound client reaches an IPv6 peer as well as an IPv4 one.
async fn an_unbound_client_reaches_an_ipv6_peer(backend: Backend) {
    let echo = native_echo_at("[::1]:0").await;
    let text = udp_mode(backend, "echo", echo).await;
    assert_eq!(text, format!("received: Hello Ballerina echo from port {}\n", echo.port()));
}

async fn udp_echo_returns_the_datagram(backend: Backend) {
    let echo = native_echo().await;
    let text = udp_mode(backend, "echo", echo).await;
    assert_eq!(text, format!("received: Hello Ballerina echo from port {}\n", echo.port()));
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts `udp-clients` in `mode` with one UDP grant; returns it, its output
/// lines, and the address it printed (`bound ADDR`).
async fn spawn_bound(backend: Backend, mode: &str, grant: &str) -> (tokio::process::Child, Lines, SocketAddr) {
    let mut program = spawn_program_on(backend, "udp-clients", &[("MODE", mode)], &["--allow-udp", grant]);
    let mut lines = BufReader::new(program.stdout.take().unwrap()).lines();
    let bound = lines.next_line().await.unwrap().expect("the program prints where it is bound");
    let addr = bound.strip_prefix("bound ").expect("`bound ADDR`").parse().unwrap();
    (program, lines, addr)
}

async fn receive_on_a_bound_port_gets_the_peers_datagram(backend: Backend) {
    let (mut program, mut lines, addr) = spawn_bound(backend, "receive", "udp://127.0.0.1:*").await;

    // The peer sends `This is server` until the program has received it.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sender = tokio::spawn(async move {
        for _ in 0..100 {
            let _ = peer.send_to(b"This is server", addr).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let received = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap();
    sender.abort();
    assert_eq!(received.as_deref(), Some("received: This is server"));
    assert!(program.wait().await.unwrap().success());
}

async fn datagrams_from_a_peer_nobody_granted_are_dropped_and_the_receive_waits_on(backend: Backend) {
    // Only binding an ephemeral port is granted (port 0); the peer sends from
    // a real port, which no grant covers. Its datagrams never reach the guest
    // (the host drops and logs them): no error, no data, the receive waits.
    let (mut program, mut lines, addr) = spawn_bound(backend, "stranger", "udp://127.0.0.1:0").await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_port = peer.local_addr().unwrap().port();
    let sender = tokio::spawn(async move {
        for _ in 0..100 {
            // Two at once: one wakes a waiting receive, the next is queued.
            let _ = peer.send_to(b"let me in", addr).await;
            let _ = peer.send_to(b"let me in", addr).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    for i in 1..=2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap();
        assert_eq!(line.as_deref(), Some(format!("{i}: ReadTimedOut: read timed out").as_str()), "peer {peer_port}");
    }
    sender.abort();
    assert!(program.wait().await.unwrap().success());
}

async fn receive_times_out_with_read_timed_out(backend: Backend) {
    let echo = native_echo().await;
    assert_eq!(udp_mode(backend, "timeout", echo).await, "receive: ReadTimedOut: read timed out\n");
}

async fn udp_errors_are_clear(backend: Backend) {
    let echo = native_echo().await;
    let text = udp_mode(backend, "errors", echo).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "length 0: Generic: requested byte length need to be 1 or more");
    assert_eq!(lines[1], "too large: Generic: datagram too large: 65508 bytes (at most 65507 over IPv4)");
    assert_eq!(lines[2], "largest: ok 65507");
    // Not a name at all: refused before any look-up, without repeating the text.
    assert!(lines[3].starts_with("bad host: Generic: invalid host: 13 bytes"), "{}", lines[3]);
    assert_eq!(lines[4], "send after close: Generic: udp client is closed");
    assert_eq!(lines[5], "receive after close: Generic: udp client is closed");
    assert_eq!(lines.len(), 6, "{text}");
}

async fn sends_outside_the_grants_are_refused_to_literals_and_names_alike(backend: Backend) {
    let echo = native_echo().await;
    let out = run_program_on(
        backend,
        "udp-clients",
        &[("MODE", "denied"), ("TARGET", &echo.to_string())],
        &["--allow-udp", "udp://127.0.0.1:0", "--allow-udp", &format!("udp://127.0.0.1:{}", echo.port())],
    )
    .await;
    let port = echo.port();
    assert_eq!(
        stdout_of(&out),
        format!(
            "granted: ok 4\n\
             literal: PermissionDenied: permission denied: send to udp://127.0.0.2:{port} is not granted\n\
             name: PermissionDenied: permission denied: send to udp://localhost:{} is not granted\n",
            port ^ 1
        )
    );
}

async fn two_clients_of_one_instance_work_at_once(backend: Backend) {
    let echo = native_echo().await;
    assert_eq!(udp_mode(backend, "pair", echo).await, "a got: from b from b: true\n");
}

async fn four_clients_ten_thousand_datagrams_through_udp_echo_lose_nothing(backend: Backend) {
    const CLIENTS: u64 = 4;
    const DATAGRAMS: usize = 2_500;
    let mut server = spawn_program_on(backend, "udp-echo", &[("PORT", "0")], &["--allow-udp", "udp://*:*"]);
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("udp-echo prints its address");
    let port: u16 = line.rsplit_once(':').unwrap().1.parse().unwrap();
    let server_addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut clients = Vec::new();
    for seed in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(server_addr).await.unwrap(); // replies must come from the server
            let mut rng = StdRng::seed_from_u64(seed);
            let mut buf = vec![0u8; 2048];
            let mut lost = 0;
            for i in 0..DATAGRAMS {
                let len = rng.random_range(1..=1400);
                let mut datagram: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                datagram[..8.min(len)].copy_from_slice(&(i as u64).to_be_bytes()[..8.min(len)]);
                socket.send(&datagram).await.unwrap();
                match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                    Ok(Ok(n)) => assert!(buf[..n] == datagram[..], "client {seed}, datagram {i}: reply differs"),
                    _ => lost += 1,
                }
            }
            lost
        }));
    }
    let mut lost = 0;
    for client in clients {
        lost += tokio::time::timeout(Duration::from_secs(120), client).await.expect("UDP run took over 120 s").unwrap();
    }
    assert_eq!(lost, 0, "datagrams lost on loopback");

    // SIGTERM stops the program gracefully.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(server.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}

on_both_backends!(
    datagrams_from_a_peer_nobody_granted_are_dropped_and_the_receive_waits_on,
    sends_outside_the_grants_are_refused_to_literals_and_names_alike,
    four_clients_ten_thousand_datagrams_through_udp_echo_lose_nothing,
    an_unbound_client_reaches_an_ipv6_peer,
    ;
    // Also with the WASI programs on the `wasmtime` command line (no grants
    // there, nor a graceful stop: those scenarios are the ones above).
    and_on_wasmtime:
    udp_echo_returns_the_datagram,
    receive_on_a_bound_port_gets_the_peers_datagram,
    receive_times_out_with_read_timed_out,
    udp_errors_are_clear,
    two_clients_of_one_instance_work_at_once,
);
