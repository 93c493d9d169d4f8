//! Capability-scoped permissions, end to end: real guests, the real host,
//! loopback peers. Deny by default; grants by name and IP hold as documented.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

async fn client_echo(backend: Backend, target: &str, grants: &[&str]) -> std::process::Output {
    run_program_on(backend, "clients", &[("MODE", "echo"), ("TARGET", target)], grants).await
}

async fn without_a_grant_connect_is_denied_clearly_and_logged(backend: Backend) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let out = client_echo(backend, &addr.to_string(), &[]).await;
    let expected = format!("permission denied: connect tcp://{addr} is not granted");
    assert_eq!(stdout_of(&out), format!("error: PermissionDenied: {expected}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARN") && stderr.contains(&expected), "the denial is logged at warn: {stderr}");
    // Nothing reached the server.
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a denied connect must not reach the network");
}

async fn a_granted_connect_works_and_an_odd_spelling_is_the_same_address(backend: Backend) {
    let echo = native_tcp_echo().await;
    let grant = format!("tcp://127.0.0.1:{}", echo.port());
    let out = client_echo(backend, &echo.to_string(), &["--allow-connect", &grant]).await;
    assert_eq!(stdout_of(&out), "read: Hello Ballerina Echo\n");
    // 0x7f.1 is 127.0.0.1: same grant, same result.
    let out = client_echo(backend, &format!("0x7f.1:{}", echo.port()), &["--allow-connect", &grant]).await;
    assert_eq!(stdout_of(&out), "read: Hello Ballerina Echo\n");
    // Another port of the same host is not granted.
    let other = format!("127.0.0.1:{}", echo.port().wrapping_add(1).max(1));
    let out = client_echo(backend, &other, &["--allow-connect", &grant]).await;
    assert!(stdout_of(&out).starts_with("error: PermissionDenied: permission denied: connect"), "{out:?}");
}

async fn a_name_grant_holds_for_the_name_and_not_for_its_address(backend: Backend) {
    let echo = native_tcp_echo().await;
    let grant = format!("tcp://LOCALHOST.:{}", echo.port());
    let by_name = client_echo(backend, &format!("localhost:{}", echo.port()), &["--allow-connect", &grant]).await;
    assert_eq!(stdout_of(&by_name), "read: Hello Ballerina Echo\n");
    let by_ip = client_echo(backend, &echo.to_string(), &["--allow-connect", &grant]).await;
    assert_eq!(
        stdout_of(&by_ip),
        format!("error: PermissionDenied: permission denied: connect tcp://{echo} is not granted\n")
    );
}

async fn a_name_resolving_into_a_blocked_network_is_refused(backend: Backend) {
    let echo = native_tcp_echo().await;
    let grant = format!("tcp://localhost:{}", echo.port());
    let out =
        client_echo(backend, &format!("localhost:{}", echo.port()), &["--allow-connect", &grant, "--block-private"])
            .await;
    let text = stdout_of(&out);
    let denied = format!("error: PermissionDenied: permission denied: connect tcp://localhost:{}", echo.port());
    assert!(text.starts_with(&denied), "{text}");
    // The blocked addresses are named: to the guest on the portcullis WIT,
    // in the log under WASI (whose look-up answers only `access-denied`).
    let named = match backend {
        Backend::Portcullis => text.clone(),
        Backend::Wasi | Backend::Wasmtime => String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(named.contains("resolves") && named.contains("blocked addresses"), "{named}");
    assert!(named.contains("127.0.0.1") || named.contains("::1"), "{named}");
}

async fn udp_and_guest_listeners_are_denied_by_default(backend: Backend) {
    let out = run_program_on(backend, "udp-clients", &[("MODE", "echo"), ("TARGET", "127.0.0.1:9")], &[]).await;
    assert_eq!(stdout_of(&out), "error: PermissionDenied: permission denied: bind udp://0.0.0.0:0 is not granted\n");

    let out = run_program_on(backend, "listener-program", &[], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: permission denied: listen tcp://127.0.0.1:0 is not granted"), "{stderr}");
}

async fn the_proxy_pipes_both_ways_with_its_grant(backend: Backend) {
    let echo = native_tcp_echo().await;
    let grants = Grants { connect: vec![format!("tcp://127.0.0.1:{}", echo.port())], ..Grants::default() };
    let proxy = TestService::builder("tcp-proxy").on(backend).env("UPSTREAM", &echo.to_string()).grants(grants).start();
    let mut client = proxy.connect().await;
    assert_eq!(round_trip(&mut client, b"through the proxy").await, b"through the proxy");
    // Half-close: the answer still comes back after the client ended its stream.
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"last words");
    assert_eq!(proxy.stop().await, 0);
}

async fn without_its_grant_the_proxy_closes_every_client(backend: Backend) {
    let echo = native_tcp_echo().await;
    let proxy = TestService::builder("tcp-proxy").on(backend).env("UPSTREAM", &echo.to_string()).start();
    for _ in 0..3 {
        let mut client = proxy.connect().await;
        let _ = client.write_all(b"let me through").await;
        assert_eq!(read_to_end(&mut client).await, b"", "the client connection is closed");
    }
    assert_eq!(proxy.stop().await, 0);
}

#[test]
fn a_manifest_runs_two_services_at_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo_upstream = runtime.block_on(native_tcp_echo());
    let dir = root().join("target/permissions-test-manifest");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("portcullis.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[[service]]
name = "echo"
component = "{echo}"
listen = ["127.0.0.1:0"]
max-connections = 100

[[service]]
name = "proxy"
component = "{proxy}"
listen = ["127.0.0.1:0"]
env = {{ UPSTREAM = "{echo_upstream}" }}
allow-connect = ["tcp://127.0.0.1:{port}"]
"#,
            echo = guest("echo").display(),
            proxy = guest("tcp-proxy").display(),
            port = echo_upstream.port()
        ),
    )
    .unwrap();
    let mut child = Command::new(portcullis_bin())
        .args(["run", "--manifest", manifest.to_str().unwrap()])
        .env("PORTCULLIS_CACHE_DIR", test_cache())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut addrs = std::collections::HashMap::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let (name, addr) = line.trim().split_once(": listening on ").expect("NAME: listening on ADDR");
        addrs.insert(name.to_string(), addr.to_string());
    }
    for name in ["echo", "proxy"] {
        let mut stream = StdTcpStream::connect(&addrs[name]).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"both at once").unwrap();
        let mut reply = [0u8; 12];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"both at once", "through {name}");
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[test]
fn inspect_names_the_world_and_the_grants_a_component_may_need() {
    let out = Command::new(portcullis_bin())
        .args(["inspect", guest("tcp-proxy").to_str().unwrap()])
        .env("PORTCULLIS_CACHE_DIR", test_cache())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("backend: portcullis"), "{text}");
    assert!(text.contains("world: service"), "{text}");
    assert!(text.contains("portcullis:socket/callbacks@0.1.0"), "{text}");
    assert!(text.contains("--allow-connect tcp://HOST:PORTS"), "{text}");
    assert!(!text.contains("--allow-udp"), "{text}");

    // The same source built with the SDK's WASI backend.
    let out = Command::new(portcullis_bin())
        .args(["inspect", Backend::Wasi.guest("tcp-proxy").to_str().unwrap()])
        .env("PORTCULLIS_CACHE_DIR", test_cache())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("backend: wasi"), "{text}");
    assert!(text.contains("wasi:sockets/types@0.3.0"), "{text}");
    assert!(!text.contains("portcullis:socket"), "{text}");
    assert!(text.contains("--allow-connect tcp://HOST:PORTS"), "{text}");
}

#[test]
fn inspect_names_the_grants_of_standard_components() {
    let inspect = |path: std::path::PathBuf| {
        let out = Command::new(portcullis_bin())
            .args(["inspect", path.to_str().unwrap()])
            .env("PORTCULLIS_CACHE_DIR", test_cache())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A plain std::net program (WASI 0.2): it connects by name and listens.
    let text = inspect(guest("std-programs"));
    assert!(text.contains("wasi:sockets/tcp@0.2"), "{text}");
    assert!(text.contains("--allow-connect tcp://HOST:PORTS"), "{text}");
    assert!(text.contains("--listen ADDR:PORT"), "{text}");
    assert!(text.contains("a grant by name"), "{text}");
    assert!(!text.contains("none (it reaches no network"), "{text}");
    // A program built with the SDK's WASI backend (WASI 0.3) that listens itself.
    let text = inspect(Backend::Wasi.guest("listener-program"));
    assert!(text.contains("wasi:sockets/types@0.3"), "{text}");
    assert!(text.contains("--listen ADDR:PORT"), "{text}");
    assert!(!text.contains("none (it reaches no network"), "{text}");
}

#[test]
fn bad_grants_stop_the_start_up_with_the_bad_part_named() {
    let out = Command::new(portcullis_bin())
        .args([
            "run",
            guest("echo").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--allow-connect",
            "tcp://db.internal:80-70",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: bad grant `tcp://db.internal:80-70`: port range `80-70` runs backwards");
}

on_both_backends!(
    without_a_grant_connect_is_denied_clearly_and_logged,
    a_granted_connect_works_and_an_odd_spelling_is_the_same_address,
    a_name_grant_holds_for_the_name_and_not_for_its_address,
    a_name_resolving_into_a_blocked_network_is_refused,
    udp_and_guest_listeners_are_denied_by_default,
    the_proxy_pipes_both_ways_with_its_grant,
    without_its_grant_the_proxy_closes_every_client,
);
