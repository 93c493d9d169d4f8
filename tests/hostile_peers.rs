//! Hostile peers: an honest guest, and whoever is on the other end of the
//! socket is the adversary. Each test runs the real `portcullis` binary and
//! attacks it over loopback the way the hostile-peers issue found it could
//! be: idle connections holding every slot, a client dripping bytes, one
//! address opening many connections, a length prefix claiming 4 GiB, a client
//! that never reads, datagrams from strangers, the open-file limit, and the
//! `chat` example's members that do not read or never end a line. Each
//! asserts the outcome (closed, bounded, the legitimate client served, the
//! program still running), never a speed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use portcullis_tests::HostProcess;
use portcullis_tests::std_client::{closed_within, connect_from, echoed};

const MIB: u64 = 1 << 20;

/// Prints a measured figure (`-- --nocapture` lists them).
fn report(what: &str, figure: impl std::fmt::Display) {
    eprintln!("measured: {what}: {figure}");
}

/// `portcullis run <guest> --listen 127.0.0.1:0 ARGS` for test `test`, and
/// the address it listens on.
fn serve(test: &str, guest: &str, args: &[&str]) -> (HostProcess, SocketAddr) {
    let mut listen = vec!["--listen", "127.0.0.1:0"];
    listen.extend_from_slice(args);
    let mut host = HostProcess::start(test, guest, &listen, None);
    let addr = host.listening_on();
    (host, addr)
}

/// Connects from 127.0.0.2, sends a byte and resets, for `seconds`;
/// returns how many connections that was.
fn reset_loop(addr: SocketAddr, seconds: u64) -> usize {
    let started = Instant::now();
    let mut resets = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut stream = connect_from("127.0.0.2", addr);
        let _ = stream.write_all(b"x");
        reset(stream);
        resets += 1;
    }
    resets
}

#[test]
fn idle_connections_are_closed_and_a_legitimate_client_is_then_served() {
    // The first row: 150 silent connections against 100 slots.
    let (host, addr) = serve("slowloris", "echo", &["--max-connections", "100", "--idle-timeout-ms", "1000"]);
    let base = host.descriptors();
    let mut attackers: Vec<TcpStream> = (0..150).map(|_| connect_from("127.0.0.2", addr)).collect();
    // The host has taken them up to its limit: every slot is held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.descriptors() < base + 100 {
        assert!(
            Instant::now() < deadline,
            "the host holds {} of the 100 connections",
            host.descriptors().saturating_sub(base)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let mut legitimate = connect_from("127.0.0.3", addr);
    echoed(&mut legitimate, b"hello\n").expect("the legitimate client is served once idle ones are closed");
    report(
        "legitimate client served after (idle time-out 1 s, 150 idle of 100 slots)",
        format!("{:?}", started.elapsed()),
    );
    let closed =
        attackers.iter_mut().map(|a| closed_within(a, Duration::from_secs(5))).filter(|closed| *closed).count();
    assert_eq!(closed, 150, "every idle connection is closed in its turn");
    let log = host.log();
    assert!(!log.contains('\x1b'), "no colour codes in a log that is not a terminal");
}

#[test]
fn a_client_dripping_bytes_is_kept_only_while_it_is_not_idle() {
    let (_host, addr) = serve("drip", "echo", &["--idle-timeout-ms", "1000"]);
    // One byte every 300 ms for 2.4 s: never idle for 1 s, so kept.
    let mut dripping = connect_from("127.0.0.2", addr);
    for _ in 0..8 {
        echoed(&mut dripping, b".").expect("kept while it sends within the idle time-out");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Then silent: closed.
    assert!(closed_within(&mut dripping, Duration::from_secs(5)), "closed once idle");
    // One byte every 2 s: closed before the second.
    let mut slow = connect_from("127.0.0.2", addr);
    echoed(&mut slow, b".").unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    let second = echoed(&mut slow, b".");
    assert!(second.is_err(), "a connection idle for 2 s of a 1 s time-out was kept");
}

#[test]
fn one_address_holds_at_most_its_share_of_connections() {
    let (host, addr) = serve("per-ip", "echo", &["--max-connections-per-ip", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", addr)).collect();
    for stream in &mut held {
        echoed(stream, b"mine\n").unwrap();
    }
    // A fourth from that address is closed at once, unserved ...
    let mut fourth = connect_from("127.0.0.2", addr);
    let _ = fourth.write_all(b"more\n");
    assert!(closed_within(&mut fourth, Duration::from_secs(5)), "a fourth connection from one address");
    // ... also in a burst, which the log reports in a line or two, not one
    // line per connection.
    for _ in 0..50 {
        let mut again = connect_from("127.0.0.2", addr);
        assert!(closed_within(&mut again, Duration::from_secs(5)));
    }
    // Another address is served, and so is the first once it has room.
    echoed(&mut connect_from("127.0.0.3", addr), b"other\n").unwrap();
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut retry = connect_from("127.0.0.2", addr);
        if echoed(&mut retry, b"back\n").is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "room given back when a connection closes");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = host.log_with("connections refused at --max-connections-per-ip: ", 1, Duration::from_secs(3));
    let lines = log.lines().filter(|l| l.contains("--max-connections-per-ip")).count();
    assert!(log.contains("connection from 127.0.0.2 refused: it has 3 open"), "{log}");
    assert!((2..=10).contains(&lines), "51 refusals in {lines} log lines:\n{log}");
}

#[test]
fn a_guest_listener_applies_the_per_address_cap_and_the_idle_time_out() {
    let mut host = HostProcess::start(
        "guest-listener",
        "listener-program",
        &["--allow-listen", "tcp://127.0.0.1:*", "--max-connections-per-ip", "1", "--idle-timeout-ms", "500"],
        None,
    );
    let line = host.stdout_line();
    let addr: SocketAddr =
        line.strip_prefix("guest listening on ").unwrap_or_else(|| panic!("{line}")).parse().unwrap();
    let mut first = connect_from("127.0.0.2", addr);
    echoed(&mut first, b"one\n").unwrap();
    let mut second = connect_from("127.0.0.2", addr);
    let _ = second.write_all(b"two\n");
    assert!(closed_within(&mut second, Duration::from_secs(5)), "a second connection from one address");
    // The first goes idle: the host closes it, its on_close stops the
    // listener, and the program ends.
    assert!(closed_within(&mut first, Duration::from_secs(5)), "closed once idle");
    assert_eq!(host.exit_code_within(Duration::from_secs(10)), Some(0));
}

/// Closes `stream` with a reset (no FIN): the client is gone at once.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

#[test]
fn clients_resetting_in_a_loop_do_not_flood_the_log() {
    // Each reset is a read error for the guest; echo keeps the SDK's default
    // `on_error`, which prints it: at most a line a second.
    let (host, addr) = serve("reset-loop", "echo", &[]);
    let resets = reset_loop(addr, 2);
    // A bound on what the log holds: give the lines that would flood it the
    // time to come (a check that something does not happen waits).
    std::thread::sleep(Duration::from_millis(1200));
    let log = host.log();
    report("connections reset in 2 s, and the log lines they made", format!("{resets}, {}", log.lines().count()));
    assert!(log.lines().count() <= 8, "{resets} resets made {} log lines:\n{log}", log.lines().count());
    echoed(&mut connect_from("127.0.0.3", addr), b"still\n").unwrap();
}

#[test]
fn clients_resetting_in_a_loop_do_not_flood_the_log_with_an_instance_each() {
    // Each connection's own instance prints its reset once: the component's
    // output rate bounds them together.
    let (host, addr) =
        serve("reset-loop-per-connection", "echo", &["--instances", "per-connection", "--max-instances", "64"]);
    let started = Instant::now();
    let resets = reset_loop(addr, 2);
    // As above: the time for lines that would flood the log to come.
    std::thread::sleep(Duration::from_millis(1200));
    let lines = host.log().lines().count();
    // 100 writes in each one-second window the output could touch, and the
    // host's own lines about it (coalesced: a few a second).
    let windows = started.elapsed().as_secs() as usize + 1;
    report("connections reset in 2 s with an instance each, and the log lines they made", format!("{resets}, {lines}"));
    assert!(lines <= windows * (100 + 5), "{resets} resets made {lines} log lines in {windows} windows");
    let log = host.log();
    assert!(!log.contains("no instance for connection"), "a connection found no instance: {log}");
}

#[test]
fn a_client_that_fills_the_read_ahead_and_resets_holds_nothing() {
    // A service that does not read (back-pressure): the host's read-ahead
    // fills, and then the client resets. The host notices at once, instead
    // of keeping the buffer and the descriptor until the idle time-out.
    let (host, addr) = serve("ghosts", "scenarios", &["--env", "MODE=never-read"]);
    let base = host.descriptors();
    for _ in 0..200 {
        let mut stream = connect_from("127.0.0.2", addr);
        stream.write_all(&[7u8; 70_000]).unwrap();
        reset(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.descriptors() > base + 10 {
        assert!(Instant::now() < deadline, "{} descriptors held for gone clients", host.descriptors() - base);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_half_closed_connection_meets_the_idle_time_out() {
    // `partial` does not close at the end of the stream; the client sends
    // its FIN and then nothing: the idle time-out, not the read time-out
    // (300 s), ends it.
    let (_host, addr) = serve("half-closed", "scenarios", &["--env", "MODE=partial", "--idle-timeout-ms", "500"]);
    let mut stream = connect_from("127.0.0.2", addr);
    stream.write_all(b"Hel").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_within(&mut stream, Duration::from_secs(5)));
}

#[test]
fn a_length_prefix_claiming_4_gib_meets_the_guest_memory_limit_not_the_host() {
    let (host, addr) = serve("length-prefix", "scenarios", &["--env", "MODE=length-prefixed", "--max-memory", "64MiB"]);
    let base = host.memory("VmRSS");
    let mut client = connect_from("127.0.0.2", addr);
    client.write_all(&[0xff; 4]).unwrap();
    // Then up to 1 GiB, until the host closes the connection.
    let chunk = vec![0u8; MIB as usize];
    let mut sent = 0u64;
    while sent < 1024 * MIB {
        if client.write_all(&chunk).is_err() {
            break;
        }
        sent += MIB;
    }
    assert!(sent < 1024 * MIB, "a 4 GiB claim was still being read after 1 GiB");
    let peak = host.memory("VmHWM");
    report("4 GiB length prefix, max-memory 64 MiB: sent before closed", format!("{} MiB", sent / MIB));
    report("4 GiB length prefix: peak RSS above start", format!("{} MiB", (peak - base) / MIB));
    assert!(peak < base + 64 * MIB + 48 * MIB, "peak {} MiB from {} MiB", peak / MIB, base / MIB);
    // A fresh instance serves the next client.
    let mut next = connect_from("127.0.0.3", addr);
    next.write_all(&[0, 0, 0, 5]).unwrap();
    next.write_all(b"hello").unwrap();
    let mut answer = [0u8; 12];
    next.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"got 5 bytes\n");
    // The claim again and again: one trap after another, and the log says
    // so in a line a second, not a backtrace each.
    for _ in 0..8 {
        let mut again = connect_from("127.0.0.2", addr);
        again.write_all(&[0xff; 4]).unwrap();
        while again.write_all(&chunk).is_ok() {}
    }
    let log = host.log_with("instances ended: ", 1, Duration::from_secs(3));
    let full = log.lines().filter(|l| l.contains("ERROR") && l.contains("guest trapped (")).count();
    let counted = log.lines().filter(|l| l.contains("instances ended: ")).count();
    report("9 traps: full trap lines, count lines", format!("{}, {counted}", full - counted));
    assert!(counted >= 1 && full - counted <= 3, "{log}");
}

#[test]
fn a_write_to_a_client_that_never_reads_times_out_and_closes() {
    let (host, addr) = serve("write-timeout", "scenarios", &["--env", "MODE=stream-out", "--write-timeout-ms", "1000"]);
    let base = host.memory("VmRSS");
    let mut client = connect_from("127.0.0.2", addr);
    client.write_all(b"go\n").unwrap();
    // Never read: the kernel's buffers fill, the guest's write waits, and
    // after a second without progress it fails.
    let log = host.log_with("write timed out", 1, Duration::from_secs(15));
    let line = log.lines().find(|l| l.contains("stream-out: write failed")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("write timed out"), "{line}");
    let grown = host.memory("VmRSS").saturating_sub(base);
    report("client never reads: host memory grown while the write waited", format!("{} KiB", grown / 1024));
    assert!(grown < 16 * MIB, "the host kept {} MiB for one stalled connection", grown / MIB);
    // The connection was closed: what was in flight, then the end.
    assert!(closed_within(&mut client, Duration::from_secs(10)));
}

/// `udp-echo` with only `granted`'s address (and any `::1` sender) granted.
fn udp_echo(test: &str, granted: SocketAddr) -> (HostProcess, u16) {
    let grants = [format!("udp://127.0.0.1:{}", granted.port()), "udp://[::1]:*".to_string()];
    let mut host = HostProcess::start(
        test,
        "udp-echo",
        &["--env", "PORT=0", "--allow-udp", &grants[0], "--allow-udp", &grants[1]],
        None,
    );
    let line = host.stdout_line();
    let port = line.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    (host, port)
}

#[test]
fn udp_echo_drops_strangers_and_echoes_the_largest_datagram_of_each_family() {
    let friend = UdpSocket::bind("127.0.0.1:0").unwrap();
    friend.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut host, port) = udp_echo("udp-strangers", friend.local_addr().unwrap());
    // A stranger (another port) floods: dropped, never the program's end.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    // In bursts the socket's receive buffer holds (UDP drops the rest), each
    // taken (and dropped) before the next; then the granted sender's
    // datagram finds room.
    for _ in 0..5 {
        for _ in 0..100 {
            stranger.send_to(b"who am I", ("127.0.0.1", port)).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while udp_unread(port) > 0 {
            assert!(Instant::now() < deadline, "udp-echo left {} bytes unread for 10 s", udp_unread(port));
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut buf = vec![0u8; 70_000];
    // The largest IPv4 datagram, from the granted sender, comes back whole.
    let big = vec![4u8; 65_507];
    friend.send_to(&big, ("127.0.0.1", port)).unwrap();
    let (n, _) = friend.recv_from(&mut buf).expect("the echo of the granted sender's datagram");
    assert_eq!(n, 65_507);
    assert!(host.running(), "the stranger's datagrams ended udp-echo");
    // The largest IPv6 datagram (20 bytes more) too.
    if let Ok(v6) = UdpSocket::bind("[::1]:0") {
        v6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let big = vec![6u8; 65_527];
        v6.send_to(&big, ("::1", port)).unwrap();
        let (n, _) = v6.recv_from(&mut buf).expect("the echo of a 65,527-byte IPv6 datagram");
        assert_eq!(n, 65_527);
    }
    stranger.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(stranger.recv_from(&mut buf).is_err(), "a stranger got an answer");
    assert!(host.running());
    let log = host.log_with("datagrams dropped: ", 1, Duration::from_secs(3));
    let lines = log.lines().filter(|l| l.contains("datagram")).count();
    assert!(
        log.contains(&format!("dropped a datagram from udp://127.0.0.1:{}", stranger.local_addr().unwrap().port()))
    );
    assert!((2..=5).contains(&lines), "500 dropped datagrams in {lines} log lines:\n{log}");
}

/// Bytes waiting in the receive queues of the UDP sockets on `port`
/// (`/proc/net/udp{,6}`): 0 once the program has taken every datagram.
fn udp_unread(port: u16) -> usize {
    let port = format!(":{port:04X}");
    let mut unread = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 4 && fields[1].ends_with(&port) {
                let rx = fields[4].split_once(':').map_or("0", |(_, rx)| rx);
                unread += usize::from_str_radix(rx, 16).unwrap_or(0);
            }
        }
    }
    unread
}

/// Descriptors for the child: few, so that accepting meets the limit soon.
fn few_descriptors() -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
    // SAFETY: setrlimit on the child itself, with a filled struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn accept_failures_at_the_open_file_limit_are_coalesced() {
    let mut host = HostProcess::start("fd-limit", "echo", &["--listen", "127.0.0.1:0"], Some(few_descriptors));
    let addr = host.listening_on();
    // More clients than descriptors: the backlog holds the rest, and each
    // accept fails (every 50 ms) while they wait.
    let clients: Vec<TcpStream> = (0..100).map(|_| connect_from("127.0.0.2", addr)).collect();
    std::thread::sleep(Duration::from_millis(2500));
    let log = host.log();
    // The count lines end with the last message: told apart by their start.
    let counts = log.lines().filter(|l| l.contains("accept failures: ")).count();
    let full = log.lines().filter(|l| l.contains("accept failed: ")).count() - counts;
    report("2.5 s at the open-file limit: log lines", full + counts);
    assert_eq!(full, 1, "{log}");
    assert!((1..=4).contains(&counts), "{log}");
    // Room again: a client is served.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(10);
    while echoed(&mut connect_from("127.0.0.3", addr), b"after\n").is_err() {
        assert!(Instant::now() < deadline, "not served after the descriptors came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A chat member: its connection, read by a thread that counts lines.
struct Member {
    stream: TcpStream,
    received: std::thread::JoinHandle<usize>,
}

/// Counts the lines `stream` (a member's connection) receives from now on.
fn count_lines(stream: TcpStream, lines_expected: usize) -> Member {
    let mut reader = stream.try_clone().unwrap();
    let received = std::thread::spawn(move || {
        let mut lines = 0;
        let mut buf = vec![0u8; 64 * 1024];
        reader.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        while lines < lines_expected {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => lines += buf[..n].iter().filter(|b| **b == b'\n').count(),
            }
        }
        lines
    });
    Member { stream, received }
}

/// Returns once `from` and `to` are both in the chat room: a line `from`
/// sends reaches `to`. (Members join in the order they came: `to` must have
/// come first, or the line may go out before it joined.)
fn joined(from: &mut TcpStream, to: &mut TcpStream) {
    from.write_all(b"joined\n").unwrap();
    let mut line = [0u8; 7];
    to.read_exact(&mut line).expect("the line of a member that joined");
    assert_eq!(&line, b"joined\n");
}

#[test]
fn a_chat_member_that_never_reads_is_dropped_and_the_others_keep_receiving() {
    let (host, addr) = serve("chat-silent", "chat", &[]);
    // 8 MiB of 1 KiB lines: more than the kernel buffers on the silent
    // member's way hold (the issue saw the room stall after ~2.7 MiB).
    const LINES: usize = 8 * 1024;
    let mut reader = connect_from("127.0.0.2", addr);
    let mut silent = connect_from("127.0.0.2", addr);
    let mut sender = connect_from("127.0.0.2", addr);
    // All three joined: the silent member's line reaches the reader (and the
    // sender's own lines come after its own join).
    joined(&mut silent, &mut reader);
    let reader = count_lines(reader, LINES);
    let mut line = vec![b'x'; 1023];
    line.push(b'\n');
    for _ in 0..LINES {
        sender.write_all(&line).unwrap();
    }
    let got = reader.received.join().unwrap();
    assert_eq!(got, LINES, "a reading member got every line while another did not read");
    assert!(closed_within(&mut silent, Duration::from_secs(10)), "the silent member was dropped");
    assert!(
        host.log_with("bytes behind; disconnecting it", 1, Duration::from_secs(3)).contains("fell 131072 bytes behind")
    );
    drop(reader.stream);
}

#[test]
fn a_full_chat_room_closes_further_connections() {
    let (host, addr) = serve("chat-full", "chat", &[]);
    let mut members: Vec<TcpStream> = (0..256).map(|_| connect_from("127.0.0.2", addr)).collect();
    // The room is full: the last member's line reaches every other one.
    let (last, others) = members.split_last_mut().unwrap();
    last.write_all(b"joined\n").unwrap();
    for (i, member) in others.iter_mut().enumerate() {
        let mut line = [0u8; 7];
        member.read_exact(&mut line).unwrap_or_else(|e| panic!("member {i} is not in the room: {e}"));
        assert_eq!(&line, b"joined\n");
    }
    let mut one_more = connect_from("127.0.0.3", addr);
    assert!(closed_within(&mut one_more, Duration::from_secs(5)), "a 257th member");
    assert!(host.log_with("the room is full", 1, Duration::from_secs(3)).contains("the room is full (256)"));
    // The room still works for its members: a line reaches another member.
    members[0].write_all(b"hello room\n").unwrap();
    let mut line = [0u8; 11];
    members[1].read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello room\n");
}

#[test]
fn a_chat_line_over_64_kib_closes_its_sender_only() {
    let (host, addr) = serve("chat-long-line", "chat", &[]);
    let base = host.memory("VmRSS");
    let mut reader = connect_from("127.0.0.2", addr);
    let mut streamer = connect_from("127.0.0.2", addr);
    joined(&mut streamer, &mut reader);
    let reader = count_lines(reader, 1);
    // Up to 64 MiB with no newline: closed after the first 64 KiB or so.
    let chunk = vec![b'y'; 64 * 1024];
    let mut sent = 0u64;
    while sent < 64 * MIB && streamer.write_all(&chunk).is_ok() {
        sent += chunk.len() as u64;
    }
    assert!(sent < 64 * MIB, "a line of 64 MiB was taken");
    report("chat, a line with no end: sent before closed", format!("{} KiB", sent / 1024));
    assert!(host.memory("VmHWM") < base + 32 * MIB);
    // The room still works.
    let mut sender = connect_from("127.0.0.3", addr);
    sender.write_all(b"still here\n").unwrap();
    assert_eq!(reader.received.join().unwrap(), 1);
}
