//! `--instances per-connection`: every accepted connection gets a fresh
//! instance of its own, dropped when the connection ends.

use std::time::Duration;

use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLOTS: u32 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_is_shared_between_connections() {
    let runtime = pooled_runtime(SLOTS);
    let service = TestService::scenario("join-count").per_connection(&runtime).start();
    // In a shared instance the third client would see `joins 3`
    // (tcp_conformance: five_joins_are_counted_in_shared_state).
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(service.connect().await);
    }
    for client in &mut clients {
        client.write_all(b"count?").await.unwrap();
        assert_eq!(read_line(client).await, "joins 1\n");
    }
    assert_eq!(service.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_ends_only_its_own_connection() {
    let runtime = pooled_runtime(SLOTS);
    let service = TestService::scenario("trap").per_connection(&runtime).start();

    let mut bystander = service.connect().await;
    assert_eq!(round_trip(&mut bystander, b"hello").await, b"hello");

    let mut trapper = service.connect().await;
    trapper.write_all(b"please trap").await.unwrap();
    assert_eq!(read_to_end(&mut trapper).await, b"");

    // Unlike a shared instance (robustness: after_a_trap_the_next_connection_is_still_served),
    // the other connection lives on.
    assert_eq!(round_trip(&mut bystander, b"still open").await, b"still open");
    let mut next = service.connect().await;
    assert_eq!(round_trip(&mut next, b"new").await, b"new");
    assert_eq!(service.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_each_echo_byte_exact() {
    let runtime = pooled_runtime(SLOTS);
    let service = TestService::scenario("echo").per_connection(&runtime).start();
    let mut tasks = Vec::new();
    for c in 0..40u32 {
        let mut stream = service.connect().await;
        tasks.push(tokio::spawn(async move {
            for m in 0..50u32 {
                let message = format!("connection {c} message {m} {}", "x".repeat((c * 37 + m * 11) as usize % 300));
                assert_eq!(round_trip(&mut stream, message.as_bytes()).await, message.as_bytes());
            }
            stream.shutdown().await.unwrap();
            assert_eq!(read_to_end(&mut stream).await, b"", "the service closes after the end");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(service.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_pool_is_full_new_connections_are_refused_until_a_slot_frees() {
    let runtime = pooled_runtime(2);
    // A cap above the pool's size (as when several services share one pool):
    // connections then reach a full pool instead of waiting in the backlog.
    let service = TestService::scenario("echo").per_connection(&runtime).max_connections(100).start();
    let mut first = service.connect().await;
    let mut second = service.connect().await;
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    assert_eq!(round_trip(&mut second, b"two").await, b"two");

    // No third instance: the connection is closed at once, the others go on.
    let mut third = service.connect().await;
    let _ = third.write_all(b"three").await;
    assert_eq!(read_to_end(&mut third).await, b"");
    assert_eq!(round_trip(&mut first, b"one again").await, b"one again");

    // Once a connection ends, its slot serves the next one.
    second.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut second).await, b"");
    let mut served = None;
    for _ in 0..50 {
        let mut fourth = service.connect().await;
        fourth.write_all(b"four").await.unwrap();
        let mut reply = [0u8; 4];
        if let Ok(Ok(4)) = tokio::time::timeout(Duration::from_secs(2), fourth.read_exact(&mut reply)).await {
            served = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served.as_ref().map(|r| &r[..]), Some(&b"four"[..]), "the freed slot was never reused");
    assert_eq!(service.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_of_a_large_pool_serves_a_connection_at_once() {
    // More instances than wasmtime's default pool has async stacks (1000):
    // each live instance keeps one.
    const CONNECTIONS: usize = 1100;
    // Both ends of every connection live in this process.
    let limit = portcullis::server::raise_open_file_limit();
    assert!(limit >= 4 * CONNECTIONS as u64, "the open-file limit {limit} is below {}", 4 * CONNECTIONS);
    let runtime = pooled_runtime(CONNECTIONS as u32 + 1);
    let service = TestService::scenario("echo").per_connection(&runtime).start();
    let mut open = Vec::new();
    for i in 0..CONNECTIONS {
        let mut conn = service.connect().await;
        let message = format!("connection {i}");
        assert_eq!(round_trip(&mut conn, message.as_bytes()).await, message.as_bytes(), "connection {i}");
        open.push(conn);
    }
    assert_eq!(service.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_limit_at_the_pool_size_new_connections_wait_for_a_free_instance() {
    // As `portcullis run --instances per-connection` does by default:
    // `--max-connections` is `--max-instances`.
    let runtime = pooled_runtime(2);
    let service = TestService::scenario("echo").per_connection(&runtime).max_connections(2).start();
    let mut clients = echoing_clients(&service, 2).await;
    let (mut first, mut second) = (clients.remove(0), clients.remove(0));

    // Not refused (as without a limit): it waits for an instance.
    let mut third = service.connect().await;
    assert_unserved(&mut third, b"three", Duration::from_millis(300)).await;

    // Every time one ends, the next waiting connection gets its instance.
    for round in 0..3 {
        drop(second);
        assert_eq!(read_n(&mut third, 5).await, b"three", "round {round}");
        second = third;
        third = service.connect().await;
        assert_unserved(&mut third, b"three", Duration::from_millis(100)).await;
    }
    assert_eq!(round_trip(&mut first, b"one again").await, b"one again");
    assert_eq!(service.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_every_instance_with_its_idle_connection() {
    let runtime = pooled_runtime(SLOTS);
    let service = TestService::scenario("echo").per_connection(&runtime).start();
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut conn = service.connect().await;
        assert_eq!(round_trip(&mut conn, b"hi").await, b"hi");
        idle.push(conn);
    }
    assert_eq!(service.stop().await, 0);
    for mut conn in idle {
        assert_eq!(read_to_end(&mut conn).await, b"", "closed at stop");
    }
}
