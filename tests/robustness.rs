//! A guest that traps or loops must not take the host down.

use std::time::Duration;

use portcullis_tests::*;
use tokio::io::AsyncWriteExt;

async fn after_a_trap_the_next_connection_is_still_served(backend: Backend) {
    let service = TestService::scenario("trap").on(backend).start();

    let mut first = service.connect().await;
    assert_eq!(round_trip(&mut first, b"hello").await, b"hello");

    let mut trapper = service.connect().await;
    trapper.write_all(b"please trap").await.unwrap();
    // The trapping connection is closed by the host...
    assert_eq!(read_to_end(&mut trapper).await, b"");
    // ...and so is every connection of the instance that trapped: its state is gone.
    assert_eq!(read_to_end(&mut first).await, b"");

    // A fresh instance serves the next connection.
    let mut next = service.connect().await;
    assert_eq!(round_trip(&mut next, b"still here").await, b"still here");
    assert_eq!(service.stop().await, 0);
}

async fn repeated_traps_never_stop_the_service(backend: Backend) {
    let service = TestService::scenario("trap").on(backend).start();
    for round in 0..5 {
        let mut trapper = service.connect().await;
        trapper.write_all(b"trap").await.unwrap();
        assert_eq!(read_to_end(&mut trapper).await, b"", "round {round}");
    }
    // A fresh instance serves: the round trip shows it, and the stop needs no pause after it.
    let mut next = service.connect().await;
    assert_eq!(round_trip(&mut next, b"alive").await, b"alive");
    assert_eq!(service.stop().await, 0);
}

/// Current-thread, like the `portcullis` binary: a looping guest must not
/// freeze the thread for everyone else, and is stopped after its budget.
async fn a_guest_stuck_in_a_loop_neither_freezes_the_host_nor_lives_on(backend: Backend) {
    on_current_thread(async move {
        let looping = TestService::scenario("trap").on(backend).start();
        let neighbour = TestService::builder("echo").on(backend).start();

        let mut spinner = looping.connect().await;
        let (local, peer) = (spinner.local_addr().unwrap(), spinner.peer_addr().unwrap());
        spinner.write_all(b"spin").await.unwrap();
        // The looping service has taken the message: it spins.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while unread_by_peer(local, peer) > 0 {
            assert!(std::time::Instant::now() < deadline, "the looping service did not read `spin` within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Meanwhile another service on the same thread still answers.
        let mut other = neighbour.connect().await;
        assert_eq!(round_trip(&mut other, b"still served").await, b"still served");

        // The spinning instance is stopped (its connection closed) and
        // replaced: after 2 s of its CPU time, which two busy loops beside
        // it stretch to several seconds of wall time.
        let closed = read_to_end_within(&mut spinner, Duration::from_secs(30)).await;
        assert_eq!(closed, b"", "the looping guest was never stopped");
        let mut next = looping.connect().await;
        assert_eq!(round_trip(&mut next, b"fresh instance").await, b"fresh instance");
        assert_eq!(looping.stop().await, 0);
        assert_eq!(neighbour.stop().await, 0);
    })
    .await
}

async fn at_the_connection_limit_a_new_client_waits_until_one_closes(backend: Backend) {
    let service = TestService::scenario("echo").on(backend).max_connections(2).start();
    let mut clients = echoing_clients(&service, 2).await;

    // The third handshake completes in the kernel's backlog, but nobody serves it...
    let mut third = service.connect().await;
    assert_unserved(&mut third, b"three", Duration::from_millis(300)).await;
    // ...and the two below the limit go on meanwhile.
    assert_eq!(round_trip(&mut clients[1], b"again").await, b"again");

    // A connection that ends makes room: the waiting one is served, with what it sent.
    drop(clients.remove(0));
    assert_eq!(read_n(&mut third, 5).await, b"three");
    assert_eq!(service.stop().await, 0);
}

/// Connections ready together are served by one call into the guest (a
/// batch); each one's work still gets the CPU bound a call of its own
/// would: eight connections needing 100 ms each, against a 400 ms bound,
/// all served, nothing trapped. (Before, the batch's 700-800 ms counted as
/// one call's: a flood of costly requests trapped the instance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_of_a_batch_gets_its_own_cpu_bound() {
    let args = ["--listen", "127.0.0.1:0", "--env", "MODE=work", "--callback-cpu-ms", "400"];
    let mut host = HostProcess::start("batch-cpu-bound", "scenarios", &args, None);
    let addr = host.listening_on();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect_when_listening(addr).await);
    }
    for client in &mut clients {
        client.write_all(b"work 100").await.unwrap();
    }
    for client in &mut clients {
        assert_eq!(read_n(client, 8).await, b"work 100", "{}", host.log());
    }
    assert!(!host.log().contains("guest trapped"), "{}", host.log());
}

/// Callbacks whose waits end together each get the whole bound when they
/// run, and so does each callback that starts while another of the same
/// instance is computing: but none of that frees a callback that computes
/// without end. Here one connection spins while twenty others keep the
/// shared instance busy with calls of their own: the spinner is still
/// trapped by its 300 ms bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_callback_is_trapped_while_other_connections_keep_calling() {
    let args = ["--listen", "127.0.0.1:0", "--env", "MODE=trap", "--callback-cpu-ms", "300"];
    let mut host = HostProcess::start("spin-among-callers", "scenarios", &args, None);
    let addr = host.listening_on();
    let mut spinner = connect_when_listening(addr).await;
    spinner.write_all(b"spin").await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let stop = stop.clone();
        callers.spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(mut caller) = tokio::net::TcpStream::connect(addr).await {
                    let _ = caller.write_all(b"hello").await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), read_to_end(&mut spinner)).await;
    stop.cancel();
    while callers.join_next().await.is_some() {}
    assert!(ended.is_ok(), "the spinning callback was never trapped\n{}", host.log());
    let log = host.log_with("of CPU time without waiting", 1, Duration::from_secs(5));
    assert!(log.contains("of CPU time without waiting"), "{log}");
}

/// 6,000 clients each sending 64 KiB at once to a default echo (one shared
/// instance, 128 MiB): the host hands the instance only what its delivery
/// budget allows at a time, so nothing traps and every client gets its bytes
/// back. (Before, one batch carried all their read-ahead, the instance ran
/// out of memory, and all 6,000 connections were closed with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_thousand_clients_sending_64_kib_at_once_leave_a_default_echo_serving() {
    const CLIENTS: usize = 6000;
    const EACH: usize = 64 * 1024;
    raise_open_file_limit(CLIENTS + 512);
    let mut host = HostProcess::start("six-thousand-clients", "echo", &["--listen", "127.0.0.1:0"], None);
    let addr = host.listening_on();
    // All connect first, then all send at the same moment: the instance's
    // drivers see them ready together.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let start = start.clone();
        clients.spawn(async move {
            let sent: Vec<u8> = (0..EACH).map(|b| (b + i) as u8).collect();
            let mut stream = connect_when_listening(addr).await;
            start.wait().await;
            let (mut reader, mut writer) = stream.split();
            let (wrote, echoed) = tokio::join!(writer.write_all(&sent), async {
                let mut echoed = vec![0u8; EACH];
                tokio::io::AsyncReadExt::read_exact(&mut reader, &mut echoed).await.map(|_| echoed)
            });
            wrote.is_ok() && echoed.is_ok_and(|echoed| echoed == sent)
        });
    }
    let served = tokio::time::timeout(Duration::from_secs(240), async {
        let mut served = 0;
        while let Some(ok) = clients.join_next().await {
            served += ok.unwrap() as usize;
        }
        served
    })
    .await
    .expect("the clients did not finish in 240 s");
    let log = host.log();
    assert!(!log.contains("trapped"), "{log}");
    assert_eq!(served, CLIENTS, "clients whose 64 KiB did not come back whole\n{log}");
    let mut after = connect_when_listening(addr).await;
    assert_eq!(round_trip(&mut after, b"still serving").await, b"still serving");
}

/// Raises this process's open-file limit to at least `want` (up to the hard
/// limit), for tests that hold thousands of sockets.
fn raise_open_file_limit(want: usize) {
    // SAFETY: getrlimit/setrlimit on a struct of our own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(limit.rlim_cur.max(want as u64));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

on_both_backends!(
    at_the_connection_limit_a_new_client_waits_until_one_closes,
    after_a_trap_the_next_connection_is_still_served,
    repeated_traps_never_stop_the_service,
    a_guest_stuck_in_a_loop_neither_freezes_the_host_nor_lives_on,
);
