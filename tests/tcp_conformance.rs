//! The listener-side scenarios of Ballerina's socket test suite, against the real
//! host and the `scenarios` guest, over loopback: each on both backends
//! (`on_both_backends!`), most also on the `wasmtime` command line.

use std::time::{Duration, Instant};

use portcullis_tests::*;

use tokio::io::AsyncWriteExt;

async fn server_echo_returns_the_bytes_exactly(backend: Backend) {
    let service = TestService::scenario("echo").on(backend).start();
    let mut client = service.connect().await;
    assert_eq!(round_trip(&mut client, b"Hello Ballerina\n").await, b"Hello Ballerina\n");
    // End of stream: the service closes, the client sees end of stream.
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"");
    assert_eq!(service.stop().await, 0);
}

async fn bytes_and_the_end_sent_together_are_both_served(backend: Backend) {
    let service = TestService::scenario("echo").on(backend).start();
    let mut client = service.connect().await;
    // Likely one delivery with the end: the echo reads once per callback, so
    // it must be called again for the end, and then it closes.
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"last words");
    assert_eq!(service.stop().await, 0);
}

async fn partial_reads_gather_exact_lengths(backend: Backend) {
    let service = TestService::scenario("partial").on(backend).start();
    let mut client = service.connect().await;
    // Each part a read of its own: the service has taken it before the next.
    for part in ["Hello", "from", "client"] {
        client.write_all(part.as_bytes()).await.unwrap();
        taken_by_the_service(&client).await;
    }
    let reply = read_n(&mut client, "Hello Client 15".len()).await;
    assert_eq!(String::from_utf8_lossy(&reply), "Hello Client 15");
    service.stop().await;
}

async fn bytes_a_callback_leaves_unread_come_first_in_the_next(backend: Backend) {
    let service = TestService::scenario("byte-at-a-time").on(backend).start();
    let mut client = service.connect().await;
    // One write, so the host likely delivers it whole; the service takes one
    // byte per call and gives the rest back each time.
    let message = b"portcullis gives back what it was not asked for";
    client.write_all(message).await.unwrap();
    assert_eq!(read_n(&mut client, message.len()).await, message);
    client.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut client).await, b"", "the end comes after the last byte");
    service.stop().await;
}

async fn a_connection_knows_both_its_ends(backend: Backend) {
    let service = TestService::scenario("addresses").on(backend).start();
    let mut client = service.connect().await;
    client.write_all(b"where?").await.unwrap();
    let ends = read_line(&mut client).await;
    // The listener is on 127.0.0.1: its address is the connection's own.
    assert_eq!(ends.trim_end(), format!("{} {}", service.addr, client.local_addr().unwrap()));
    service.stop().await;
}

async fn blocking_read_waits_for_all_eighteen_bytes(backend: Backend) {
    let service = TestService::scenario("blocking").on(backend).start();
    let mut client = service.connect().await;
    client.write_all(b"ThisIs").await.unwrap();
    taken_by_the_service(&client).await; // the read now waits for the rest ...
    tokio::time::sleep(Duration::from_millis(1000)).await; // ... through a pause of the client's
    client.write_all(b"BlockingRead").await.unwrap();
    assert_eq!(read_n(&mut client, 18).await, b"ThisIsBlockingRead");
    service.stop().await;
}

async fn on_error_receives_the_error_on_read_ready_returned(backend: Backend) {
    let service = TestService::scenario("read-error").on(backend).start();
    let mut client = service.connect().await;
    client.write_all(b"anything").await.unwrap();
    assert_eq!(read_line(&mut client).await, "on_error: Error while on read\n");
    service.stop().await;
}

async fn on_error_receives_the_error_on_connect_returned(backend: Backend) {
    let service = TestService::scenario("connect-error").on(backend).start();
    let mut client = service.connect().await;
    assert_eq!(read_line(&mut client).await, "on_error: Error while on connect\n");
    service.stop().await;
}

async fn a_second_listener_on_the_same_port_fails(backend: Backend) {
    let first = portcullis::server::bind_all(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let taken = first[0].socket.local_addr().unwrap().to_string();
    let out = run_program_on(backend, "scenarios", &[], &["--listen", &taken]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unable to start the socket service: Address already in use"), "{stderr}");
}

async fn five_joins_are_counted_in_shared_state(backend: Backend) {
    let service = TestService::scenario("join-count").on(backend).start();
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(service.connect().await);
    }
    // Each answer is sent after all five joined, so every one of them sees
    // all five joins. They have once the first is told so (a join comes a
    // moment after its connect).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        clients[0].write_all(b"Hello Ballerina\n").await.unwrap();
        let answer = read_line(&mut clients[0]).await;
        let joins: Option<u32> = answer.trim_end().strip_prefix("joins ").and_then(|n| n.parse().ok());
        let joins = joins.unwrap_or_else(|| panic!("not `joins N`: {answer:?}"));
        if joins >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{answer:?} 10 s after five connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for client in &mut clients {
        client.write_all(b"Hello Ballerina\n").await.unwrap();
        assert_eq!(read_line(client).await, "joins 5\n");
    }
    service.stop().await;
}

async fn read_times_out_with_read_timed_out(backend: Backend) {
    let timeout = Duration::from_millis(400);
    let service = TestService::scenario("blocking").on(backend).read_timeout(timeout).start();
    let mut client = service.connect().await;
    let started = Instant::now();
    client.write_all(b"fifteen bytes!!").await.unwrap(); // 15 of the 18 it waits for
    let reply = read_to_end(&mut client).await;
    assert_eq!(String::from_utf8_lossy(&reply), "error: ReadTimedOut: read timed out");
    assert!(started.elapsed() >= timeout, "the read gave up before its time-out");
    service.stop().await;
}

/// A read that times out loses nothing: the client sends a part, more while
/// the read waits, pauses past the read time-out, then the rest; a service
/// that tries again gets every byte, in order. With `len` over 64 KiB the SDK
/// gathers parts of its own, and gives them back too.
async fn a_read_tried_again_after_a_time_out_gets_every_byte(backend: Backend, len: usize) {
    let timeout = Duration::from_millis(400);
    let service =
        TestService::scenario("retrying").on(backend).env("LEN", &len.to_string()).read_timeout(timeout).start();
    let mut client = service.connect().await;
    let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (first, rest) = sent.split_at(len * 2 / 5);
    let (second, third) = rest.split_at(len * 2 / 5);
    client.write_all(first).await.unwrap();
    taken_by_the_service(&client).await; // the read now waits for the rest
    client.write_all(second).await.unwrap();
    tokio::time::sleep(timeout * 2).await; // past the time-out: the service reads again
    client.write_all(third).await.unwrap();
    let echoed = read_to_end(&mut client).await;
    assert_eq!(echoed.len(), len, "bytes lost or added across the time-out");
    assert!(echoed == sent, "the stream came back out of order or changed");
    service.stop().await;
}

async fn a_short_read_tried_again_after_a_time_out_gets_every_byte(backend: Backend) {
    a_read_tried_again_after_a_time_out_gets_every_byte(backend, 18).await;
}

async fn a_read_over_64_kib_tried_again_after_a_time_out_gets_every_byte(backend: Backend) {
    a_read_tried_again_after_a_time_out_gets_every_byte(backend, 200_000).await;
}

async fn on_close_fires_once_and_kept_handles_outlive_their_callback(backend: Backend) {
    let service = TestService::scenario("close-log").on(backend).start();
    let mut watcher = service.connect().await;
    let mut leaver = service.connect().await;
    // Both on-connects have run once each is echoed (a callback comes after
    // its on-connect); then find out the leaver's id by its absence: the
    // watcher learns of it only through on-close.
    assert_eq!(round_trip(&mut watcher, b"watching").await, b"watching");
    assert_eq!(round_trip(&mut leaver, b"leaving").await, b"leaving");
    drop(leaver);
    let line = read_line(&mut watcher).await;
    assert!(line.starts_with("closed ") && line.ends_with('\n'), "got {line:?}");
    // Exactly once: nothing more arrives.
    let more = tokio::time::timeout(Duration::from_millis(500), read_line(&mut watcher)).await;
    assert!(more.is_err() || more.as_deref() == Ok(""), "on-close fired again: {more:?}");
    service.stop().await;
}

/// A service that keeps the default (empty) `on_connect` tells the host so, and
/// the host stops calling it; its own `on_close` must still run for every
/// connection, the third included.
async fn a_default_on_connect_is_skipped_but_on_close_still_fires_every_time(backend: Backend) {
    let service = TestService::builder("close-counter").on(backend).start();
    for expected in 0..3 {
        let mut client = service.connect().await;
        // on-close runs a moment after the connection before closed: until
        // then the count is one short, and this connection asks again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut answer = read_line_after(&mut client, b"count?").await;
        while expected > 0 && answer == format!("closed {}\n", expected - 1) {
            assert!(Instant::now() < deadline, "on-close of connection {} did not run within 10 s", expected - 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = read_line_after(&mut client, b"count?").await;
        }
        assert_eq!(answer, format!("closed {expected}\n"));
        client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut client).await, b"", "the service closes at the end of stream");
    }
    service.stop().await;
}

/// Returns once the service has read everything sent on `stream` (see
/// [`unread_by_peer`]); fails after 10 s.
async fn taken_by_the_service(stream: &tokio::net::TcpStream) {
    let (local, peer) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread_by_peer(local, peer) > 0 {
        assert!(Instant::now() < deadline, "the service did not read what was sent within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn read_line_after(stream: &mut tokio::net::TcpStream, message: &[u8]) -> String {
    stream.write_all(message).await.unwrap();
    read_line(stream).await
}

async fn graceful_stop_closes_open_connections_and_returns(backend: Backend) {
    let service = TestService::scenario("echo").on(backend).start();
    let mut client = service.connect().await;
    assert_eq!(round_trip(&mut client, b"before stop").await, b"before stop");
    assert_eq!(service.stop().await, 0);
    assert_eq!(read_to_end(&mut client).await, b"", "the connection is closed at stop");
}

async fn graceful_stop_bounds_a_callback_stuck_in_read(backend: Backend) {
    // The callback waits in read(18) with a 60 s time-out; the stop must not.
    let service = TestService::scenario("blocking").on(backend).read_timeout(Duration::from_secs(60)).start();
    let mut client = service.connect().await;
    client.write_all(b"only six").await.unwrap();
    taken_by_the_service(&client).await; // the callback now waits in read(18)
    let started = Instant::now();
    assert_eq!(service.stop().await, 0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "stop took {took:?}, more than its 5 s grace and a margin");
    // The stuck read was ended by closing its connection.
    let rest = read_to_end(&mut client).await;
    assert!(!String::from_utf8_lossy(&rest).contains("BlockingRead"));
}

on_both_backends!(
    a_second_listener_on_the_same_port_fails,
    graceful_stop_closes_open_connections_and_returns,
    graceful_stop_bounds_a_callback_stuck_in_read,
    ;
    // Also with the WASI guest on the `wasmtime` command line (`--listen` and
    // a graceful stop are portcullis's: those scenarios are the ones above).
    and_on_wasmtime:
    server_echo_returns_the_bytes_exactly,
    bytes_and_the_end_sent_together_are_both_served,
    partial_reads_gather_exact_lengths,
    bytes_a_callback_leaves_unread_come_first_in_the_next,
    a_connection_knows_both_its_ends,
    blocking_read_waits_for_all_eighteen_bytes,
    on_error_receives_the_error_on_read_ready_returned,
    on_error_receives_the_error_on_connect_returned,
    five_joins_are_counted_in_shared_state,
    read_times_out_with_read_timed_out,
    on_close_fires_once_and_kept_handles_outlive_their_callback,
    a_default_on_connect_is_skipped_but_on_close_still_fires_every_time,
    a_short_read_tried_again_after_a_time_out_gets_every_byte,
    a_read_over_64_kib_tried_again_after_a_time_out_gets_every_byte,
);
