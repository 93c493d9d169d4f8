//! Real protocols driven by real clients nobody here wrote: `redis-cli` and
//! `redis-benchmark` against `resp-kv`, `tcp-proxy` in front of a real
//! `redis-server`, `curl` and `wrk` against `http-hello`. Each on both
//! backends (the same service source), and the clients' own runs also with
//! the WASI build on `wasmtime run`.
//!
//! The clients are Debian's `redis-tools`, `redis-server`, `wrk` and `curl`
//! (`.ci/run` installs them); a missing one fails the test with its name.

use std::process::Stdio;
use std::time::Duration;

use portcullis_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// Runs `program args` (at most 120 s) and returns its output.
async fn tool(program: &str, args: &[&str]) -> std::process::Output {
    let run = Command::new(program).args(args).stdin(Stdio::null()).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} took over 120 s"))
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): .ci/run installs redis-tools, redis-server, wrk, curl"))
}

/// `redis-cli -p PORT --no-raw ARGS`: its stdout, as it prints replies to a
/// person (`(integer) 1`, `(nil)`, `(error) ERR ...`).
async fn redis_cli(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str(), "--no-raw"];
    all.extend_from_slice(args);
    let out = tool("redis-cli", &all).await;
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn resp_kv(backend: Backend) -> TestService {
    TestService::builder("resp-kv").on(backend).start()
}

async fn every_resp_kv_command_and_error_through_redis_cli(backend: Backend) {
    let service = resp_kv(backend);
    service.listening().await;
    let port = service.addr.port();
    for (command, expected) in [
        ("PING", "PONG"),
        ("PING hello", "\"hello\""),
        ("ECHO 'two words'", "\"two words\""),
        ("SET k v", "OK"),
        ("GET k", "\"v\""),
        ("GET missing", "(nil)"),
        ("SET k other NX", "(nil)"),
        ("SET fresh v XX", "(nil)"),
        ("SET k v2 XX", "OK"),
        ("SET k v2 NX XX", "(error) ERR syntax error"),
        ("SET k v2 EX", "(error) ERR syntax error"),
        ("SET k v2 EX ten", "(error) ERR value is not an integer or out of range"),
        ("SET k v2 EX 0", "(error) ERR invalid expire time in 'set' command"),
        ("SET k v2 PX -5", "(error) ERR invalid expire time in 'set' command"),
        ("GET k", "\"v2\""),
        ("SET t v EX 100", "OK"),
        ("TTL t", "(integer) 100"),
        ("TTL k", "(integer) -1"),
        ("TTL missing", "(integer) -2"),
        ("EXPIRE k 50", "(integer) 1"),
        ("TTL k", "(integer) 50"),
        ("EXPIRE missing 50", "(integer) 0"),
        ("EXPIRE k soon", "(error) ERR value is not an integer or out of range"),
        ("EXPIRE t 10 NX", "(integer) 0"),
        ("EXPIRE t 1000 GT", "(integer) 1"),
        ("EXPIRE t 100 LT", "(integer) 1"),
        ("EXPIRE t 10 XX GT", "(integer) 0"),
        ("EXPIRE t 10 SOON", "(error) ERR Unsupported option SOON"),
        ("EXPIRE t 10 NX XX", "(error) ERR NX and XX, GT or LT options at the same time are not compatible"),
        ("TTL t", "(integer) 100"),
        ("PEXPIRE t 100000", "(integer) 1"),
        ("PTTL missing", "(integer) -2"),
        ("EXISTS k t missing k", "(integer) 3"),
        ("DEL k missing", "(integer) 1"),
        ("EXISTS k", "(integer) 0"),
        ("INCR n", "(integer) 1"),
        ("INCRBY n 41", "(integer) 42"),
        ("DECR n", "(integer) 41"),
        ("DECRBY n 40", "(integer) 1"),
        ("INCRBY n x", "(error) ERR value is not an integer or out of range"),
        ("INCR t", "(error) ERR value is not an integer or out of range"),
        ("SET big 9223372036854775807", "OK"),
        ("INCR big", "(error) ERR increment or decrement would overflow"),
        ("MSET a 1 b 2", "OK"),
        ("MGET a missing b", "1) \"1\"\n2) (nil)\n3) \"2\""),
        ("MSET a 1 b", "(error) ERR wrong number of arguments for 'mset' command"),
        ("GET", "(error) ERR wrong number of arguments for 'get' command"),
        ("SET empty ''", "OK"),
        ("GET empty", "\"\""),
        ("DBSIZE", "(integer) 6"),
        ("FLUSHALL", "OK"),
        ("DBSIZE", "(integer) 0"),
        ("COMMAND COUNT", "(integer) 24"),
        ("HELLO 3", "(error) NOPROTO unsupported protocol version"),
        ("FROB nicate now", "(error) ERR unknown command 'FROB', with args beginning with: 'nicate' 'now'"),
        ("SELECT 0", "OK"),
        ("SELECT 1", "(error) ERR DB index is out of range"),
        ("CLIENT SETNAME me", "OK"),
        ("CLIENT GETNAME", "(nil)"),
        ("CLIENT KILL me", "(error) ERR unknown subcommand 'KILL'. Try CLIENT HELP."),
        ("CONFIG GET appendonly", "1) \"appendonly\"\n2) \"no\""),
        ("CONFIG SET appendonly yes", "(error) ERR unknown subcommand 'SET'. Try CONFIG HELP."),
        ("COMMAND DOCS", "(empty array)"),
        ("QUIT", "OK"),
    ] {
        let args = split(command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(redis_cli(port, &args).await, expected, "{command}");
    }
    // HELLO 2: the server's details as a RESP2 array, protocol 2.
    let hello = redis_cli(port, &["HELLO", "2"]).await;
    assert!(hello.contains("\"proto\"\n 6) (integer) 2"), "{hello}");
    // COMMAND INFO: as Redis describes GET.
    let info = redis_cli(port, &["COMMAND", "INFO", "get"]).await;
    assert!(info.starts_with("1)  1) \"get\"\n    2) (integer) 2"), "{info}");
    // PTTL counts down in milliseconds.
    assert_eq!(redis_cli(port, &["PEXPIRE", "pt", "5000"]).await, "(integer) 0");
    assert_eq!(redis_cli(port, &["SET", "pt", "v", "PX", "5000"]).await, "OK");
    let pttl = redis_cli(port, &["PTTL", "pt"]).await;
    let ms: i64 = pttl.strip_prefix("(integer) ").and_then(|n| n.parse().ok()).expect("an integer");
    assert!((4000..=5000).contains(&ms), "{pttl}");
    // A key with a deadline is gone after it.
    assert_eq!(redis_cli(port, &["SET", "brief", "v", "PX", "150"]).await, "OK");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(redis_cli(port, &["GET", "brief"]).await, "(nil)");
    assert_eq!(redis_cli(port, &["DBSIZE"]).await, "(integer) 1", "only pt is left");
    service.stop().await;
}

/// `'two words'` stays one argument (as a shell would pass it).
fn split(command: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut rest = command;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('\'') {
            let (word, after) = quoted.split_once('\'').expect("closed quote");
            args.push(word.to_string());
            rest = after.trim_start();
        } else {
            let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
            args.push(word.to_string());
            rest = after.trim_start();
        }
    }
    args
}

/// The two ends of `stream` (known before the service may close it).
fn ends(stream: &TcpStream) -> (std::net::SocketAddr, std::net::SocketAddr) {
    (stream.local_addr().unwrap(), stream.peer_addr().unwrap())
}

/// Returns once the service has read everything sent on the connection
/// with `ends` (see [`unread_by_peer`]); fails after 10 s.
async fn taken_by_the_service((local, peer): (std::net::SocketAddr, std::net::SocketAddr), what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unread_by_peer(local, peer) > 0 {
        assert!(std::time::Instant::now() < deadline, "the service did not read {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The RESP bytes of `reply`s until `want` bytes came (5 s at most).
async fn read_exactly(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), read_n(stream, want)).await.expect("the reply within 5 s")
}

async fn requests_split_across_reads_and_many_in_one_read(backend: Backend) {
    let service = resp_kv(backend);
    let mut client = service.connect().await;
    // One request a byte at a time, each a read of its own: the service has
    // taken a byte before the next is sent.
    for byte in b"*3\r\n$3\r\nSET\r\n$5\r\nsplit\r\n$11\r\nhello world\r\n" {
        client.write_all(&[*byte]).await.unwrap();
        taken_by_the_service(ends(&client), "a byte").await;
    }
    assert_eq!(read_exactly(&mut client, 5).await, b"+OK\r\n");
    // 1000 requests in one write, inline and multibulk mixed.
    let mut burst = Vec::new();
    for _ in 0..500 {
        burst.extend_from_slice(b"INCR counter\r\n*2\r\n$3\r\nGET\r\n$5\r\nsplit\r\n");
    }
    client.write_all(&burst).await.unwrap();
    let mut expected = Vec::new();
    for i in 1..=500 {
        expected.extend_from_slice(format!(":{i}\r\n$11\r\nhello world\r\n").as_bytes());
    }
    assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
    service.stop().await;
}

async fn a_malformed_or_oversized_frame_closes_only_its_connection(backend: Backend) {
    let service = resp_kv(backend);
    let mut bystander = service.connect().await;
    bystander.write_all(b"SET kept yes\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut bystander, 5).await, b"+OK\r\n");
    for (frame, error) in [
        (&b"*1\r\n$x\r\n"[..], &b"-ERR Protocol error: invalid bulk length\r\n"[..]),
        (b"*2\r\n$3\r\nGET\r\n$999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*2\r\n:3\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
        (b"*99999999\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"ECHO \"unbalanced\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    ] {
        let mut attacker = service.connect().await;
        attacker.write_all(frame).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut attacker)).await.expect("closed");
        assert_eq!(reply, error, "{}", String::from_utf8_lossy(frame));
    }
    // A request that never ends grows to the cap (1 MiB), no further: two
    // 512 KiB arguments, the second not finished, pass it by a few bytes.
    let mut attacker = service.connect().await;
    let mut request = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$524288\r\n".to_vec();
    request.extend_from_slice(&[b'x'; 524288]);
    request.extend_from_slice(b"\r\n$524288\r\n");
    request.extend_from_slice(&[b'x'; 524200]);
    attacker.write_all(&request).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut attacker)).await.expect("closed");
    assert_eq!(reply, b"-ERR Protocol error: request larger than 1048576 bytes\r\n");
    // The others go on, with the data.
    bystander.write_all(b"GET kept\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut bystander, 9).await, b"$3\r\nyes\r\n");
    service.stop().await;
}

async fn writes_past_maxmemory_get_oom_and_the_store_survives(backend: Backend) {
    let service = TestService::builder("resp-kv").on(backend).env("MAXMEMORY", "100000").start();
    service.listening().await;
    let port = service.addr.port();
    let value = "v".repeat(30_000);
    for key in ["a", "b", "c"] {
        assert_eq!(redis_cli(port, &["SET", key, &value]).await, "OK");
    }
    let refused = "(error) OOM command not allowed when used memory > 'maxmemory'.";
    assert_eq!(redis_cli(port, &["SET", "d", &value]).await, refused);
    assert_eq!(redis_cli(port, &["MSET", "x", "1", "y", &value]).await, refused);
    assert_eq!(redis_cli(port, &["EXISTS", "x"]).await, "(integer) 0", "MSET is all or nothing");
    assert_eq!(redis_cli(port, &["DEL", "a"]).await, "(integer) 1");
    assert_eq!(redis_cli(port, &["SET", "d", &value]).await, "OK");
    assert_eq!(redis_cli(port, &["DBSIZE"]).await, "(integer) 3");
    service.stop().await;
}

async fn clients_holding_too_much_are_disconnected_not_the_instance(backend: Backend) {
    // 2 MB for all clients' buffers; six clients each hold ~450 KB of an
    // unfinished request. Some are disconnected (the biggest first), the
    // rest keep theirs, and the key space and new clients are untouched.
    let service = TestService::builder("resp-kv").on(backend).env("MAXMEMORY_CLIENTS", "2000000").start();
    service.listening().await;
    let port = service.addr.port();
    assert_eq!(redis_cli(port, &["SET", "canary", "alive"]).await, "OK");
    let mut holders = Vec::new();
    for _ in 0..6 {
        let mut holder = service.connect().await;
        let holder_ends = ends(&holder);
        let mut request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$500000\r\n".to_vec();
        request.extend_from_slice(&[b'x'; 450_000]);
        holder.write_all(&request).await.unwrap();
        // The service has read it all (or disconnected the holder) before the next one comes.
        taken_by_the_service(holder_ends, "a holder's request").await;
        holders.push(holder);
    }
    // A request read after all of theirs is answered once the service has
    // dealt with theirs: whom it disconnects is settled.
    assert_eq!(redis_cli(port, &["PING"]).await, "PONG");
    let mut open = 0;
    for holder in &mut holders {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), holder.read(&mut byte)).await {
            Err(_) => open += 1, // nothing to read: still connected
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("a holder got a reply to an unfinished request"),
        }
    }
    assert!((1..=4).contains(&open), "{open} of 6 holders still connected");
    assert_eq!(redis_cli(port, &["GET", "canary"]).await, "\"alive\"");
    assert_eq!(redis_cli(port, &["SET", "after", "yes"]).await, "OK");
    service.stop().await;
}

async fn an_mset_that_fits_only_in_the_end_is_applied_whole(backend: Backend) {
    let service = TestService::builder("resp-kv").on(backend).env("MAXMEMORY", "400000").start();
    service.listening().await;
    let port = service.addr.port();
    let fill = "f".repeat(100_000);
    for key in ["a", "b", "c"] {
        assert_eq!(redis_cli(port, &["SET", key, &fill]).await, "OK");
    }
    // A 120 KB value for k, then a 1-byte one: only the end state counts.
    let big = "x".repeat(120_000);
    assert_eq!(redis_cli(port, &["MSET", "k", &big, "k", "1"]).await, "OK");
    assert_eq!(redis_cli(port, &["GET", "k"]).await, "\"1\"");
    assert_eq!(
        redis_cli(port, &["MSET", "k", "1", "k", &big]).await,
        "(error) OOM command not allowed when used memory > 'maxmemory'."
    );
    assert_eq!(redis_cli(port, &["DBSIZE"]).await, "(integer) 4");
    service.stop().await;
}

/// `redis-benchmark -t ping,set,get,incr,mset -n 20000 -P 16 -c 50 -q`
/// against `port`: no error, a rate for every test, and every one of the
/// 20000 INCRs counted once.
async fn redis_benchmark_completes(port: u16) {
    let port_text = port.to_string();
    let args = ["-h", "127.0.0.1", "-p", &port_text, "-t", "ping,set,get,incr,mset", "-n", "20000", "-P", "16"];
    let out = tool("redis-benchmark", &[&args[..], &["-c", "50", "-q"]].concat()).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("rror"), "redis-benchmark saw errors: {text}");
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"] {
        let line =
            text.split(['\n', '\r']).find(|l| l.starts_with(&format!("{test}: ")) && l.contains("requests per second"));
        assert!(line.is_some(), "no rate for {test}: {text}");
    }
    assert_eq!(redis_cli(port, &["GET", "counter:__rand_int__"]).await, "\"20000\"");
}

async fn redis_benchmark_runs_against_resp_kv_without_errors(backend: Backend) {
    let service = resp_kv(backend);
    service.listening().await;
    redis_benchmark_completes(service.addr.port()).await;
    service.stop().await;
}

/// A real `redis-server` on a free loopback port, killed when dropped.
struct RedisServer {
    child: tokio::process::Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = free_port().port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (.ci/run installs it)");
        wait_until_listening(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
        RedisServer { child, port }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn tcp_proxy_in_front_of_redis_server_under_redis_benchmark(backend: Backend) {
    let redis = RedisServer::start().await;
    let upstream = format!("127.0.0.1:{}", redis.port);
    let grants = Grants { connect: vec![format!("tcp://{upstream}")], ..Grants::default() };
    let proxy = TestService::builder("tcp-proxy").on(backend).env("UPSTREAM", &upstream).grants(grants).start();
    proxy.listening().await;
    redis_benchmark_completes(proxy.addr.port()).await;
    // Every reply correct: 50 clients pipeline 16 requests at a time through
    // the proxy, each with values of its own, and check each reply exactly.
    let mut clients = Vec::new();
    for c in 0..50 {
        let mut stream = proxy.connect().await;
        clients.push(tokio::spawn(async move {
            for round in 0..10 {
                let mut batch = Vec::new();
                let mut expected = Vec::new();
                for i in 0..8 {
                    let (key, value) = (format!("k:{c}:{round}:{i}"), format!("value {c} {round} {i}"));
                    batch.extend_from_slice(
                        format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len())
                            .as_bytes(),
                    );
                    batch.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
                    expected.extend_from_slice(format!("+OK\r\n${}\r\n{value}\r\n", value.len()).as_bytes());
                }
                stream.write_all(&batch).await.unwrap();
                assert_eq!(read_exactly(&mut stream, expected.len()).await, expected);
            }
        }));
    }
    for client in clients {
        client.await.expect("a client's replies were wrong");
    }
    assert_eq!(redis_cli(redis.port, &["GET", "k:49:9:7"]).await, "\"value 49 9 7\"");
    proxy.stop().await;
}

fn http_hello(backend: Backend) -> TestService {
    TestService::builder("http-hello").on(backend).start()
}

async fn http_hello_answers_curl_and_keeps_connections_alive(backend: Backend) {
    let service = http_hello(backend);
    service.listening().await;
    let url = format!("http://{}/", service.addr);
    let out = tool("curl", &["-sS", "-i", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nHello, world!\n"), "{text}");
    let status = |args: &[&str]| {
        let mut all = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        all.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    for (args, code) in [
        (status(&[&format!("{url}nope")]), "404"),
        (status(&["-X", "POST", "-d", "body", &url]), "405"),
        (status(&["-I", &url]), "200"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tool("curl", &args).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), code, "{args:?}");
    }
    // Three requests, one connection: curl connects for the first only (`-o`
    // covers the first URL; the others' bodies print).
    let out = tool("curl", &["-s", "-o", "/dev/null", "-w", "%{num_connects} ", &url, &url, &url]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 Hello, world!\n0 Hello, world!\n0 ");
    // `Connection: close` is honoured: the answer says so, and the next
    // request needs a new connection.
    let out = tool("curl", &["-s", "-i", "-H", "Connection: close", "-w", "%{num_connects} ", &url, &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert_eq!(text.matches("Hello, world!\n1 ").count(), 2, "{text}");
    service.stop().await;
}

async fn http_hello_answers_pipelined_and_malformed_requests(backend: Backend) {
    let service = http_hello(backend);
    let mut client = service.connect().await;
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    // Each answer's `date: <IMF-fixdate>` line is 37 bytes; the rest is exact.
    let date = "date: Tue, 01 Dec 2026 00:00:00 GMT\r\n";
    let ok = format!("HTTP/1.1 200 OK\r\n{date}content-type: text/plain\r\ncontent-length: 14\r\n\r\n");
    let not_found =
        format!("HTTP/1.1 404 Not Found\r\n{date}content-type: text/plain\r\ncontent-length: 10\r\n\r\nNot found\n");
    let expected = format!("{ok}Hello, world!\n{not_found}{ok}");
    let got = String::from_utf8(read_exactly(&mut client, expected.len()).await).unwrap();
    let dates = date_lines(&got);
    assert_eq!(dates.len(), 3, "{got}");
    assert_eq!(got.replace(&dates[0], date).replace(&dates[1], date).replace(&dates[2], date), expected);
    // A body is skipped, even split, and the next request is answered.
    client.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234").await.unwrap();
    client.write_all(b"56789GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut answers = vec![0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("Hello, world!\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut answers)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&answers[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    for (request, status) in [
        (&b"NOT HTTP AT ALL\r\n\r\n"[..], "400 Bad Request"),
        (b"GET / HTTP/1.1\r\n\r\n", "400 Bad Request"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", "501 Not Implemented"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999\r\n\r\n", "413 Content Too Large"),
    ] {
        let mut client = service.connect().await;
        client.write_all(request).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut client)).await.expect("closed");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }
    // An answer that closes the connection is not lost to the requests
    // pipelined after it: the server drops them and closes at their end.
    let mut client = service.connect().await;
    let mut burst = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(2999);
    burst.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    burst.extend_from_slice(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3000));
    client.write_all(&burst).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the answers wait unread meanwhile
    let answers = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut client)).await.expect("closed");
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(answers.matches("Hello, world!\n").count(), 3000);
    assert!(answers.ends_with("connection: close\r\n\r\nHello, world!\n"));
    // A head that never ends is cut at 8 KiB.
    let mut client = service.connect().await;
    client.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ").await.unwrap();
    client.write_all(&[b'a'; 9000]).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut client)).await.expect("closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431 "));
    service.stop().await;
}

/// The `date: ...\r\n` lines of `answers` (each an IMF-fixdate, 29 bytes).
fn date_lines(answers: &str) -> Vec<String> {
    answers
        .match_indices("\r\ndate: ")
        .map(|(at, _)| answers[at + 2..].split_inclusive("\r\n").next().unwrap().to_string())
        .filter(|line| line.len() == "date: Tue, 01 Dec 2026 00:00:00 GMT\r\n".len() && line.ends_with(" GMT\r\n"))
        .collect()
}

async fn http_hello_under_wrk_answers_every_request(backend: Backend) {
    let service = http_hello(backend);
    service.listening().await;
    let url = format!("http://{}/", service.addr);
    let out = tool("wrk", &["-t", "1", "-c", "50", "-d", "1s", &url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Non-2xx") && !text.contains("Socket errors"), "{text}");
    let rate: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec: {text}"));
    assert!(rate > 0.0, "{text}");
    service.stop().await;
}

on_both_backends!(
    a_malformed_or_oversized_frame_closes_only_its_connection,
    writes_past_maxmemory_get_oom_and_the_store_survives,
    clients_holding_too_much_are_disconnected_not_the_instance,
    an_mset_that_fits_only_in_the_end_is_applied_whole,
    tcp_proxy_in_front_of_redis_server_under_redis_benchmark,
    http_hello_answers_pipelined_and_malformed_requests;
    and_on_wasmtime:
    every_resp_kv_command_and_error_through_redis_cli,
    requests_split_across_reads_and_many_in_one_read,
    redis_benchmark_runs_against_resp_kv_without_errors,
    http_hello_answers_curl_and_keeps_connections_alive,
    http_hello_under_wrk_answers_every_request,
);
