//! The load generator: closed-loop echo, connection churn, fixed-rate latency,
//! UDP echo and idle connections. Each function drives one server for a while
//! and returns what it measured; it knows nothing about which server it is.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect to the server under test");
    stream.set_nodelay(true).unwrap();
    stream
}

/// Runs `workers` copies of a counting task until they finish; returns their
/// total count per second of wall time.
async fn rate<F, Fut>(workers: usize, task: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let tasks: Vec<_> = (0..workers).map(|_| tokio::spawn(task())).collect();
    let started = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// `conns` connections each sending `size`-byte messages and reading the echo,
/// back to back, for `duration`. Returns messages per second.
pub async fn tcp_echo(addr: SocketAddr, conns: usize, size: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    rate(conns, || async move {
        let mut stream = connect(addr).await;
        let message = vec![0x5a; size];
        let mut reply = vec![0; size];
        let mut count = 0u64;
        while Instant::now() < deadline {
            stream.write_all(&message).await.unwrap();
            stream.read_exact(&mut reply).await.unwrap();
            count += 1;
        }
        count
    })
    .await
}

/// Connect, one 64-byte round trip, close; `workers` at a time, for `duration`.
/// Returns connections per second. The client ends its stream and waits for
/// the server to close (a clean end, no error on either side); it then drops
/// its socket with linger 0 so that TIME_WAIT does not exhaust the ephemeral
/// ports over many rounds.
pub async fn churn(addr: SocketAddr, workers: usize, duration: Duration) -> f64 {
    let deadline = Instant::now() + duration;
    rate(workers, || async move {
        let mut count = 0u64;
        let mut reply = [0u8; 64];
        while Instant::now() < deadline {
            let mut stream = connect(addr).await;
            stream.write_all(&[7u8; 64]).await.unwrap();
            stream.read_exact(&mut reply).await.unwrap();
            stream.shutdown().await.unwrap();
            assert_eq!(stream.read(&mut reply).await.unwrap(), 0, "the server echoes nothing after the end");
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
            drop(stream);
            count += 1;
        }
        count
    })
    .await
}

/// Round-trip latency percentiles (µs) at a fixed total `rate` over `conns`
/// connections, open loop: message `j` is due at `start + j / rate` on
/// connection `j % conns` and goes out then whether or not earlier replies came
/// back, so a slow server cannot slow the sends down (no coordinated
/// omission); its latency counts from when it was sent.
///
/// The sender paces itself on the clock, yielding between checks (each yield
/// lets tokio poll its sockets, so replies are read at once): tokio's timer has
/// a 1 ms resolution, and sleeping on it sent the messages of each millisecond
/// in one burst, which measured queueing within the burst rather than the
/// server's latency. The client's core is busy for the whole run.
pub async fn fixed_rate(addr: SocketAddr, conns: usize, rate: f64, duration: Duration) -> (f64, f64, f64) {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..conns {
        let (mut read, write) = connect(addr).await.into_split();
        let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
        writers.push((write, sent.clone()));
        readers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).unwrap();
            let mut reply = [0u8; 64];
            while read.read_exact(&mut reply).await.is_ok() {
                let Some(sent) = sent.lock().unwrap().pop_front() else { break };
                histogram.record(sent.elapsed().as_micros() as u64).unwrap();
            }
            histogram
        }));
    }

    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let total = (duration.as_secs_f64() * rate) as u32;
    for j in 0..total {
        let due = start + interval * j;
        if let Some(ahead) = due.checked_duration_since(Instant::now())
            && ahead > Duration::from_millis(2)
        {
            tokio::time::sleep(ahead - Duration::from_millis(2)).await;
        }
        while Instant::now() < due {
            tokio::task::yield_now().await;
        }
        let (write, queue) = &mut writers[j as usize % conns];
        queue.lock().unwrap().push_back(Instant::now());
        write.write_all(&[1u8; 64]).await.unwrap();
    }
    // Every reply is in once the servers have answered; then end the streams.
    let settle = Instant::now() + Duration::from_secs(5);
    while writers.iter().any(|(_, queue)| !queue.lock().unwrap().is_empty()) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (mut write, _) in writers {
        let _ = write.shutdown().await;
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    for reader in readers {
        all.add(reader.await.unwrap()).unwrap();
    }
    (all.value_at_quantile(0.5) as f64, all.value_at_quantile(0.99) as f64, all.value_at_quantile(0.999) as f64)
}

/// `clients` UDP sockets, one 64-byte datagram in flight each, for `duration`.
/// Returns datagrams per second, and how many went unanswered: a lost datagram
/// counts nothing and is resent after 100 ms, so a few losses weigh heavily.
pub async fn udp_echo(addr: SocketAddr, clients: usize, duration: Duration) -> (f64, u64) {
    let deadline = Instant::now() + duration;
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = lost.clone();
    let rate = rate(clients, move || {
        let lost = counted.clone();
        async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(addr).await.unwrap();
            let mut buf = [0u8; 128];
            let mut count = 0u64;
            while Instant::now() < deadline {
                socket.send(&[3u8; 64]).await.unwrap();
                match tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
                    Ok(Ok(_)) => count += 1,
                    _ => {
                        lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            count
        }
    })
    .await;
    (rate, lost.load(std::sync::atomic::Ordering::Relaxed))
}

/// Opens `n` idle connections, waits for the server to settle, and returns the
/// growth of its resident memory per connection, in bytes.
pub async fn idle_memory(addr: SocketAddr, pid: u32, n: usize) -> f64 {
    let before = rss_bytes(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes(pid);
    // Each must have been served, or this measured refused connections: one
    // byte echoed on each, after the measurement (so they were idle for it).
    let mut unserved = 0;
    for conn in &mut conns {
        let mut byte = [0u8; 1];
        let echoed = async {
            conn.write_all(b"?").await?;
            conn.read_exact(&mut byte).await
        };
        if !matches!(tokio::time::timeout(Duration::from_secs(5), echoed).await, Ok(Ok(_))) {
            unserved += 1;
        }
    }
    assert_eq!(unserved, 0, "{unserved} of {n} idle connections were not served");
    drop(conns);
    tokio::time::sleep(Duration::from_millis(300)).await;
    (after as f64 - before as f64) / n as f64
}

/// VmRSS of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
