//! Many connections in one shared instance: volume, and fairness while one
//! connection is parked in a read.

use std::time::{Duration, Instant};

use portcullis_tests::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_connections_thousand_random_messages_each_echo_exactly() {
    const CONNECTIONS: u64 = 100;
    const MESSAGES: usize = 1000;
    let service = start("echo", &[], Duration::from_secs(30)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_parked_in_read_n_does_not_delay_the_others() {
    let service = start_mode("blocking").await;
    let mut parked = service.connect().await;
    parked.write_all(b"ThisIs").await.unwrap(); // 6 of 18: its callback waits in read(18)
    tokio::time::sleep(Duration::from_millis(100)).await;

    for i in 0..10 {
        let mut other = service.connect().await;
        let message = format!("other connection{i:>2}"); // 18 bytes
        let started = Instant::now();
        assert_eq!(round_trip(&mut other, message.as_bytes()).await, message.as_bytes());
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(100), "connection {i} waited {waited:?} behind the parked read");
    }

    parked.write_all(b"BlockingRead").await.unwrap();
    assert_eq!(read_n(&mut parked, 18).await, b"ThisIsBlockingRead");
    service.stop().await;
}
