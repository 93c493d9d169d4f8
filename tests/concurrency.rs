//! Many connections in one shared instance: volume, and fairness while one
//! connection is parked in a read.

use std::time::{Duration, Instant};

use portcullis::dispatch::STOP_GRACE;
use portcullis_tests::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn hundred_connections_thousand_random_messages_each_echo_exactly(backend: Backend) {
    const CONNECTIONS: u64 = 100;
    const MESSAGES: usize = 1000;
    let service = TestService::builder("echo").on(backend).start();
    let mut clients = Vec::new();
    for seed in 0..CONNECTIONS {
        let mut stream = service.connect().await;
        clients.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut bytes = 0;
            for i in 0..MESSAGES {
                let len = rng.random_range(1..=2048);
                let message: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let echoed = round_trip(&mut stream, &message).await;
                assert!(echoed == message, "connection {seed}, message {i}: echo differs");
                bytes += len;
            }
            bytes
        }));
    }
    let mut total = 0;
    for client in clients {
        total +=
            tokio::time::timeout(Duration::from_secs(120), client).await.expect("echo run took over 120 s").unwrap();
    }
    assert!(total > 0);
    assert_eq!(service.stop().await, 0);
}

async fn a_connection_parked_in_read_n_does_not_delay_the_others(backend: Backend) {
    let service = TestService::scenario("blocking").on(backend).start();
    let mut parked = parked_in_read(&service).await;

    // Each is served while the parked read still waits: it is released only
    // after them (a connection held up behind it would get nothing within
    // `round_trip`'s 5 s and fail; no speed is asserted).
    for i in 0..10 {
        let mut other = service.connect().await;
        let message = format!("other connection{i:>2}"); // 18 bytes
        assert_eq!(round_trip(&mut other, message.as_bytes()).await, message.as_bytes(), "connection {i}");
    }

    parked.write_all(b"BlockingRead").await.unwrap();
    assert_eq!(read_n(&mut parked, 18).await, b"ThisIsBlockingRead");
    service.stop().await;
}

/// A connection whose callback waits in `read(18)`: it sent 6 of the 18
/// bytes, and the service has taken them.
async fn parked_in_read(service: &TestService) -> tokio::net::TcpStream {
    let mut parked = service.connect().await;
    parked.write_all(b"ThisIs").await.unwrap();
    taken_by_the_service(&parked, "the parked connection's 6 bytes").await;
    parked
}

/// Returns once the service has read everything sent on `stream` (see
/// [`unread_by_peer`]); fails after 10 s.
async fn taken_by_the_service(stream: &tokio::net::TcpStream, what: &str) {
    let (local, peer) = (stream.local_addr().unwrap(), stream.peer_addr().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while unread_by_peer(local, peer) > 0 {
        assert!(Instant::now() < deadline, "the service did not read {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stop lets a callback that is still running finish, but not forever:
/// after the grace period the host closes its connection and the service ends.
/// (The portcullis backend only: a WASI-backend service's callbacks run in
/// the guest, which the host can only end as a whole, at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_a_connection_still_busy_after_the_grace_period() {
    let service = TestService::scenario("blocking").start();
    let mut parked = parked_in_read(&service).await;

    let started = Instant::now();
    assert_eq!(service.stop().await, 0);
    let waited = started.elapsed();
    assert!(
        waited >= STOP_GRACE - Duration::from_millis(500),
        "stopped after {waited:?}, before the grace period ran out"
    );

    // The host closed the parked connection: its peer sees the end (or a reset).
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), parked.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the parked connection was left open");
}

/// Connections that become ready together are served by one `on-read-ready`
/// batch. One of them waiting in `read(18)` must hold up none of the others,
/// not even their *next* message: the host learns that a connection is done
/// when the guest drops its handle, not when the whole batch returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_parked_in_a_batch_holds_up_none_of_the_others() {
    const OTHERS: usize = 11;
    let service = TestService::scenario("blocking").start();
    let mut parked = service.connect().await;
    let mut others = Vec::new();
    for _ in 0..OTHERS {
        others.push(service.connect().await);
    }
    // Connected last: connections are accepted and set up in the order they
    // came, so once the host has taken the staller's message (below), the
    // others are set up too and wait for bytes.
    let mut staller = service.connect().await;

    // While the instance computes, the first 6 bytes of an 18-byte message
    // reach every connection; afterwards they are all ready at once.
    staller.write_all(b"stall-for-a-moment").await.unwrap();
    taken_by_the_service(&staller, "the staller's message").await;
    parked.write_all(b"ThisIs").await.unwrap();
    for other in &mut others {
        other.write_all(b"ThisIs").await.unwrap();
    }
    assert_eq!(read_n(&mut staller, 18).await, b"stall-for-a-moment");

    // The others complete their message; `parked` stays in read(18).
    for (i, other) in others.iter_mut().enumerate() {
        other.write_all(b"BlockingRead").await.unwrap();
        assert_eq!(read_n(other, 18).await, b"ThisIsBlockingRead", "connection {i}");
    }
    // And are served again, still while `parked` waits.
    for (i, other) in others.iter_mut().enumerate() {
        let message = format!("second message {i:>3}");
        let started = Instant::now();
        assert_eq!(round_trip(other, message.as_bytes()).await, message.as_bytes(), "connection {i}");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(1), "connection {i} waited {waited:?} behind the parked read");
    }

    parked.write_all(b"BlockingRead").await.unwrap();
    assert_eq!(read_n(&mut parked, 18).await, b"ThisIsBlockingRead");
    service.stop().await;
}

/// A large echo to a reader that drains slowly: the socket takes only part of
/// each write (`try-write` writes what fits, `write` the rest under
/// back-pressure), and every byte still arrives once, in order.
async fn a_slow_reader_gets_every_byte_of_a_large_echo(backend: Backend) {
    const TOTAL: usize = 8 << 20;
    let service = TestService::builder("echo").on(backend).start();
    let stream = service.connect().await;
    let (mut reader, mut writer) = stream.into_split();
    let mut rng = StdRng::seed_from_u64(7);
    let sent: Vec<u8> = (0..TOTAL).map(|_| rng.random()).collect();
    let to_send = sent.clone();
    let sending = tokio::spawn(async move {
        for chunk in to_send.chunks(256 * 1024) {
            writer.write_all(chunk).await.unwrap();
        }
        writer
    });
    let mut received = Vec::with_capacity(TOTAL);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < TOTAL {
        assert!(Instant::now() < deadline, "only {} of {TOTAL} bytes came back", received.len());
        let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut reader, &mut buf))
            .await
            .expect("the echo stalled")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&buf[..n]);
        if received.len() < TOTAL / 2 {
            // Slow at first, so the server's socket buffer fills up.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(received == sent, "the echo differs from what was sent");
    drop(sending.await.unwrap());
    assert_eq!(service.stop().await, 0);
}

/// A chat that writes each sender's lines to every other member from that
/// sender's callback (the `broadcast` scenario; the `chat` example queues
/// them instead): with several senders at once, writes to one member race.
/// Each write must land whole: no line may be cut by another.
async fn broadcasts_from_many_senders_never_interleave(backend: Backend) {
    const SENDERS: usize = 4;
    const LINES: usize = 200;
    let service = TestService::scenario("broadcast").on(backend).start();
    // A small receive buffer, and no reading for a while: the service's writes
    // to this member fill its socket and go out in parts.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    service.listening().await;
    let mut listener = socket.connect(service.addr).await.unwrap();
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(service.connect().await);
    }
    // Every member is in the room before anyone speaks: the listener (the
    // member whose lines are counted) gets a probe line from a sender. (Each
    // sender's own lines come after its own on-connect.)
    senders[0].write_all(b"probe\n").await.unwrap();
    assert_eq!(read_n(&mut listener, 6).await, b"probe\n", "the listener is in the room");
    let (reader, _keep) = listener.into_split();
    let reading = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(reader));
        let mut got = Vec::new();
        while got.len() < SENDERS * LINES {
            match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
                Ok(Ok(Some(line))) => got.push(line),
                other => panic!("after {} lines: {other:?}", got.len()),
            }
        }
        got
    });
    let mut tasks = Vec::new();
    for (s, sender) in senders.into_iter().enumerate() {
        // Senders are members too: they get the others' lines, and must read
        // them, or the service's writes to them would wait forever.
        let (mut incoming, mut sender) = sender.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut incoming, &mut tokio::io::sink()).await });
        tasks.push(tokio::spawn(async move {
            for i in 0..LINES {
                // Long lines (up to ~40 KiB), so writes to the listener are partial.
                let filler = char::from(b'a' + s as u8).to_string().repeat(1 + (i * 211) % 40_000);
                sender.write_all(format!("{s} {i} {filler}\n").as_bytes()).await.unwrap();
            }
            sender
        }));
    }
    let _senders: Vec<_> = futures_join(tasks).await;
    let got = reading.await.unwrap();
    let mut next = [0usize; SENDERS];
    for line in got {
        let mut parts = line.splitn(3, ' ');
        let s: usize = parts.next().unwrap().parse().expect("a line starts with its sender");
        let i: usize = parts.next().unwrap().parse().expect("then its number");
        let filler = parts.next().unwrap();
        let letter = char::from(b'a' + s as u8);
        assert_eq!(i, next[s], "sender {s}'s lines arrive in order");
        assert_eq!(filler.len(), 1 + (i * 211) % 40_000, "line {s} {i} is whole");
        assert!(filler.chars().all(|c| c == letter), "line {s} {i} has bytes of another line in it");
        next[s] += 1;
    }
    assert_eq!(next, [LINES; SENDERS]);
    assert_eq!(service.stop().await, 0);
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

on_both_backends!(
    ;
    // All of them also with the WASI guests on the `wasmtime` command line.
    and_on_wasmtime:
    hundred_connections_thousand_random_messages_each_echo_exactly,
    a_connection_parked_in_read_n_does_not_delay_the_others,
    a_slow_reader_gets_every_byte_of_a_large_echo,
    broadcasts_from_many_senders_never_interleave,
);
