//! The client-side scenarios of Ballerina's socket test suite: `program` guests
//! run by the `portcullis` binary against plain tokio servers in the test.

use std::process::Output;

use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Runs the `guest_name` program with `MODE` and `TARGET` set, allowed to
/// connect to loopback.
async fn run_mode(backend: Backend, guest_name: &str, mode: &str, target: &str) -> Output {
    let env = [("MODE", mode), ("TARGET", target)];
    run_program_on(backend, guest_name, &env, &["--allow-connect", "tcp://127.0.0.1:*"]).await
}

fn stdout(out: &Output) -> String {
    stdout_of(out)
}

/// A one-connection server that records everything it receives until end of
/// stream, echoing it back when `echo` is set.
async fn recording_server(echo: bool) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    received.extend_from_slice(&buf[..n]);
                    if echo {
                        let _ = stream.write_all(&buf[..n]).await;
                    }
                }
            }
        }
        received
    });
    (addr, task)
}

async fn client_one_way_write_reaches_the_server(backend: Backend) {
    let (addr, server) = recording_server(false).await;
    let out = run_mode(backend, "clients", "one-way", &addr).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "wrote 15\n");
    assert_eq!(server.await.unwrap(), b"Hello Ballerina");
}

async fn write_after_shutdown_write_fails_and_the_server_gets_only_the_first(backend: Backend) {
    let (addr, server) = recording_server(false).await;
    let out = run_mode(backend, "clients", "shutdown-write", &addr).await;
    assert_eq!(stdout(&out), "second write: client socket close already.\n");
    assert_eq!(server.await.unwrap(), b"Hello Ballerina1");
}

async fn client_echo_reads_the_echo(backend: Backend) {
    let (addr, _server) = recording_server(true).await;
    let out = run_mode(backend, "clients", "echo", &addr).await;
    assert_eq!(stdout(&out), "read: Hello Ballerina Echo\n");
}

async fn read_of_zero_bytes_is_an_error(backend: Backend) {
    let (addr, _server) = recording_server(false).await;
    let out = run_mode(backend, "clients", "invalid-read", &addr).await;
    assert_eq!(stdout(&out), "read(0): requested byte length need to be 1 or more\n");
}

async fn connect_to_a_closed_port_is_refused(backend: Backend) {
    // Bind then drop: the port is free and nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let out = run_mode(backend, "clients", "connect", &addr).await;
    let text = stdout(&out);
    assert!(text.starts_with("error: Generic: unable to start the client socket: Connection refused"), "got {text:?}");
}

/// Under the portcullis WIT, std's own sockets have no network at all. (A
/// WASI-backend guest's std sockets go through the policy like the SDK's:
/// `tests/wasi_backend.rs`.)
#[tokio::test]
async fn std_net_inside_a_guest_has_no_network() {
    let (addr, _server) = recording_server(false).await;
    let out = run_mode(Backend::Portcullis, "clients", "std-net", &addr).await;
    let text = stdout(&out);
    assert!(text.starts_with("std::net refused:"), "the guest reached the network itself: {text:?}");
}

async fn a_failing_main_exits_with_one(backend: Backend) {
    let (addr, _server) = recording_server(false).await;
    let out = run_mode(backend, "clients", "fail", &addr).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: main failed on purpose"));
}

async fn client_callback_service_reads_the_echo(backend: Backend) {
    let (addr, server) = recording_server(true).await;
    let out = run_mode(backend, "client-callback", "", &addr).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "received: Hello Ballerina\n");
    // The callback closed the connection, which ended the program.
    assert_eq!(server.await.unwrap(), b"Hello Ballerina");
}

on_both_backends!(
    ;
    // All of them also with the WASI programs on the `wasmtime` command line.
    and_on_wasmtime:
    client_one_way_write_reaches_the_server,
    write_after_shutdown_write_fails_and_the_server_gets_only_the_first,
    client_echo_reads_the_echo,
    read_of_zero_bytes_is_an_error,
    connect_to_a_closed_port_is_refused,
    a_failing_main_exits_with_one,
    client_callback_service_reads_the_echo,
);
