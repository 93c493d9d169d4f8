//! Operating portcullis: the admin endpoint (`--admin`, a manifest's
//! `[admin]`) as an operator's tools see it — `curl` on each path, a real
//! Prometheus scraping `/metrics` — and the counters it shows moving with
//! what clients and guests do.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_tests::{HostProcess, connect_when_listening, guest, read_line, read_n, read_to_end, round_trip};
use tokio::io::AsyncWriteExt;

/// `curl -s URL` (with `-X METHOD`): the status and the body.
fn curl(method: &str, url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-X", method, "-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `series` (`name{labels}`) in a `/metrics` text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `/metrics` of `admin` once `series` reads `want` (the host counts a
/// close a moment after the client's), or as it is after 10 s.
fn metrics_when(admin: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = curl("GET", &format!("http://{admin}/metrics"));
        assert_eq!(status, 200, "{body}");
        if sample(&body, series) == Some(want) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address of the `admin: listening on ADDR` line.
fn admin_address(host: &mut HostProcess) -> SocketAddr {
    let line = host.stdout_line();
    line.strip_prefix("admin: listening on ").unwrap_or_else(|| panic!("not the admin line: {line:?}")).parse().unwrap()
}

#[tokio::test]
async fn curl_reads_the_metrics_health_and_readiness() {
    let mut host =
        HostProcess::start("admin-curl", "echo", &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], None);
    let addr = host.listening_on();
    let admin = admin_address(&mut host);
    for i in 0..5 {
        let mut client = connect_when_listening(addr).await;
        let hello = format!("hello {i}\n");
        assert_eq!(round_trip(&mut client, hello.as_bytes()).await, hello.as_bytes());
    }
    let metrics = metrics_when(admin, "portcullis_downstream_cx_destroy_total{service=\"echo.wasm\"}", 5.0);
    let value = |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    assert_eq!(value("portcullis_downstream_cx_total{service=\"echo.wasm\"}"), 5.0);
    assert_eq!(value("portcullis_downstream_cx_destroy_total{service=\"echo.wasm\"}"), 5.0);
    assert_eq!(value("portcullis_downstream_cx_active{service=\"echo.wasm\"}"), 0.0);
    // "hello N\n" is 8 bytes, each way.
    assert_eq!(value("portcullis_downstream_cx_rx_bytes_total{service=\"echo.wasm\"}"), 40.0);
    assert_eq!(value("portcullis_downstream_cx_tx_bytes_total{service=\"echo.wasm\"}"), 40.0);
    assert!(value("portcullis_guest_callbacks_total{service=\"echo.wasm\"}") >= 5.0, "{metrics}");
    assert_eq!(value("portcullis_instances_live{service=\"echo.wasm\"}"), 1.0);
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    // No label carries a client's address (the listener's own is one).
    let without_listener = metrics.replace(&format!("listener=\"{addr}\""), "");
    assert!(!without_listener.contains("127.0.0.1"), "{metrics}");

    // docs/operations.md's table names every series, and no other.
    let doc = std::fs::read_to_string(portcullis_tests::root().join("docs/operations.md")).unwrap();
    let mut documented: Vec<&str> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once('`').map(|(name, _)| name))
        .filter(|name| name.starts_with("portcullis_"))
        .collect();
    let mut served: Vec<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split([' ', '{']).next())
        .collect();
    documented.sort();
    served.sort();
    served.dedup();
    assert_eq!(documented, served, "docs/operations.md and /metrics disagree");

    assert_eq!(curl("GET", &format!("http://{admin}/healthz")), (200, "ok\n".into()));
    assert_eq!(curl("GET", &format!("http://{admin}/readyz")), (200, "ready\n".into()));
    assert_eq!(curl("GET", &format!("http://{admin}/nothing")).0, 404);
    assert_eq!(curl("POST", &format!("http://{admin}/metrics")).0, 405);

    // One address holding its share of admin connections keeps no one else out.
    let held: Vec<_> = (0..8).map(|_| portcullis_tests::std_client::connect_from("127.0.0.2", admin)).collect();
    let mut ninth = portcullis_tests::std_client::connect_from("127.0.0.2", admin);
    assert!(portcullis_tests::std_client::closed_within(&mut ninth, Duration::from_secs(5)), "a ninth was kept");
    assert_eq!(curl("GET", &format!("http://{admin}/healthz")), (200, "ok\n".into()), "a probe from elsewhere");
    drop(held);
}

#[tokio::test]
async fn prometheus_scrapes_the_connection_counter() {
    let mut host =
        HostProcess::start("admin-prometheus", "echo", &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], None);
    let addr = host.listening_on();
    let admin = admin_address(&mut host);
    for _ in 0..7 {
        let mut client = connect_when_listening(addr).await;
        assert_eq!(round_trip(&mut client, b"ping").await, b"ping");
    }
    let prometheus = Prometheus::start("admin-prometheus", admin);
    // Scraped every second: within 60 s it has the counter, and it says 7.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = prometheus.query("portcullis_downstream_cx_total");
        if last.contains("\"service\":\"echo.wasm\"") && last.contains(",\"7\"]") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(last.contains(",\"7\"]"), "Prometheus never saw 7 connections: {last}\n{}", prometheus.log());
    let up = prometheus.query("up");
    assert!(up.contains(",\"1\"]"), "the scrape is not up: {up}");
}

/// Debian's `prometheus` on a free loopback port, scraping one target every
/// second, its data in the test's scratch folder; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    web: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(test: &str, target: SocketAddr) -> Prometheus {
        let dir = portcullis_tests::root().join("target/test-scratch").join(test).join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: portcullis\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let web = portcullis_tests::free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus runs (apt-get install prometheus; .ci/run installs it)");
        Prometheus { child, web, log }
    }

    /// The query API's JSON answer to `query` (empty while it starts).
    fn query(&self, query: &str) -> String {
        curl("GET", &format!("http://{}/api/v1/query?query={query}", self.web)).1
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn traps_refusals_and_denials_are_counted_by_cause() {
    // Three hostile services and an echo with a per-address cap of 1, in
    // one process with the admin endpoint in the manifest.
    let hostile = guest("hostile");
    let manifest = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"spin\"\ncomponent = {hostile:?}\nlisten = [\"127.0.0.1:0\"]\n\
         env = {{ MODE = \"spin\" }}\ncallback-cpu-ms = 200\n\n\
         [[service]]\nname = \"hoard\"\ncomponent = {hostile:?}\nlisten = [\"127.0.0.1:0\"]\n\
         env = {{ MODE = \"hoard\" }}\nmax-memory = \"100MiB\"\n\n\
         [[service]]\nname = \"connect\"\ncomponent = {hostile:?}\nlisten = [\"127.0.0.1:0\"]\n\
         env = {{ MODE = \"connect-flood\", TARGET = \"127.0.0.1:9\" }}\n\n\
         [[service]]\nname = \"echo\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\nmax-connections-per-ip = 1\n",
        guest("echo")
    );
    let mut host = HostProcess::start_manifest("admin-causes", &manifest, &[]);
    let mut addrs = std::collections::HashMap::new();
    for _ in 0..4 {
        let line = host.stdout_line();
        let (name, addr) = line.split_once(": listening on ").expect("NAME: listening on ADDR");
        addrs.insert(name.to_string(), addr.parse::<SocketAddr>().unwrap());
    }
    let admin = admin_address(&mut host);

    // A spin past the CPU bound, and an allocation past --max-memory: each
    // ends its instance (the client sees its connection closed).
    let mut spin = connect_when_listening(addrs["spin"]).await;
    spin.write_all(b"go\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut spin)).await;
    let mut hoard = connect_when_listening(addrs["hoard"]).await;
    hoard.write_all(b"more\n").await.unwrap();
    assert_eq!(read_line(&mut hoard).await, "held 64 MiB\n");
    hoard.write_all(b"more\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut hoard)).await;
    // A connect nobody granted: denied, and the guest says so.
    let mut client = connect_when_listening(addrs["connect"]).await;
    client.write_all(b"go\n").await.unwrap();
    let answer = read_line(&mut client).await;
    assert!(answer.contains("permission denied"), "{answer}");
    // A second connection from the address that holds one: closed at once.
    let mut first = connect_when_listening(addrs["echo"]).await;
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    let mut second = connect_when_listening(addrs["echo"]).await;
    assert_eq!(read_to_end(&mut second).await, b"");

    let metrics = metrics_when(admin, "portcullis_guest_traps_total{service=\"hoard\",cause=\"memory\"}", 1.0);
    for series in [
        "portcullis_guest_traps_total{service=\"spin\",cause=\"cpu\"}",
        "portcullis_guest_traps_total{service=\"hoard\",cause=\"memory\"}",
        "portcullis_limit_hits_total{service=\"hoard\",limit=\"memory\"}",
        "portcullis_denials_total{service=\"connect\",operation=\"connect\"}",
        "portcullis_downstream_cx_overflow_total{service=\"echo\",reason=\"per_address_cap\"}",
    ] {
        let value = sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
        assert!(value >= 1.0, "{series} is {value}\n{metrics}\n{}", host.log());
    }
    for series in [
        "portcullis_guest_traps_total{service=\"spin\",cause=\"panic\"}",
        "portcullis_guest_traps_total{service=\"echo\",cause=\"cpu\"}",
    ] {
        assert_eq!(sample(&metrics, series), Some(0.0), "{series}\n{metrics}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_the_service() {
    let mut host = HostProcess::start(
        "log-json",
        "echo",
        &["--listen", "127.0.0.1:0", "--max-connections-per-ip", "1", "--log-format", "json"],
        None,
    );
    let addr = host.listening_on();
    let mut first = connect_when_listening(addr).await;
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    let mut second = connect_when_listening(addr).await;
    assert_eq!(read_to_end(&mut second).await, b"");
    let log = host.log_with("--max-connections-per-ip", 1, Duration::from_secs(10));
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let refusal = lines
        .iter()
        .find(|line| line["message"].as_str().is_some_and(|m| m.contains("--max-connections-per-ip")))
        .unwrap_or_else(|| panic!("no refusal line in\n{log}"));
    assert_eq!(refusal["level"], "WARN", "{refusal}");
    assert_eq!(refusal["service"], "echo.wasm", "{refusal}");
    assert!(refusal["timestamp"].as_str().is_some_and(|t| t.starts_with("20")), "{refusal}");
    assert!(refusal["target"].as_str().is_some_and(|t| t.starts_with("portcullis")), "{refusal}");
}

/// `systemd-socket-activate` (systemd's own test tool) listening on
/// `sockets` with their `names`, starting `portcullis ARGS` at the first
/// connection with the sockets passed (`LISTEN_FDS`); its stderr in a file.
struct Activated {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Activated {
    fn start(test: &str, sockets: &[SocketAddr], names: &[&str], args: &[&str]) -> Activated {
        let dir = portcullis_tests::root().join("target/test-scratch").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("stderr.log");
        let mut command = Command::new("systemd-socket-activate");
        for socket in sockets {
            command.arg("-l").arg(socket.to_string());
        }
        if !names.is_empty() {
            command.arg(format!("--fdname={}", names.join(":")));
        }
        command.arg("-E").arg("PORTCULLIS_CACHE_DIR").env("PORTCULLIS_CACHE_DIR", portcullis_tests::test_cache());
        let child = command
            .arg(portcullis_tests::portcullis_bin())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("systemd-socket-activate runs (Debian's systemd)");
        // It listens before it prints; a connect before that is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().matches("Listening on").count().eq(&sockets.len()) {
            assert!(Instant::now() < deadline, "systemd-socket-activate did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Activated { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        // SAFETY: SIGTERM to our own child (portcullis, once exec'd).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_socket_passed_by_systemd_serves_without_listen() {
    // One unnamed socket, matched by order; spread over two workers.
    let socket = portcullis_tests::free_port();
    let echo = guest("echo");
    let args = ["run", echo.to_str().unwrap(), "--workers", "2", "--instances", "per-worker"];
    let activated = Activated::start("activation-one", &[socket], &[], &args);
    // The first client starts portcullis and waits in the backlog meanwhile.
    for i in 0..4 {
        let mut client = tokio::net::TcpStream::connect(socket).await.unwrap();
        let hello = format!("passed {i}");
        let echoed = tokio::time::timeout(Duration::from_secs(30), round_trip(&mut client, hello.as_bytes())).await;
        assert_eq!(echoed.expect("an echo within 30 s"), hello.as_bytes(), "{}", activated.log());
    }
}

#[tokio::test]
async fn named_sockets_go_to_the_services_of_their_names() {
    let (first, second) = (portcullis_tests::free_port(), portcullis_tests::free_port());
    let manifest = format!(
        "[[service]]\nname = \"kv\"\ncomponent = {:?}\n\n[[service]]\nname = \"echo\"\ncomponent = {:?}\n",
        guest("resp-kv"),
        guest("echo")
    );
    let dir = portcullis_tests::root().join("target/test-scratch/activation-named-manifest");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, manifest).unwrap();
    // In the other order than the manifest's: the names decide.
    let activated = Activated::start(
        "activation-named",
        &[first, second],
        &["echo", "kv"],
        &["run", "--manifest", path.to_str().unwrap()],
    );
    let mut echo = tokio::net::TcpStream::connect(first).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(30), round_trip(&mut echo, b"to echo")).await;
    assert_eq!(echoed.expect("an echo within 30 s"), b"to echo", "{}", activated.log());
    let mut kv = tokio::net::TcpStream::connect(second).await.unwrap();
    kv.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(read_n(&mut kv, 7).await, b"+PONG\r\n", "{}", activated.log());
}

#[tokio::test]
async fn a_passed_unix_socket_is_refused_as_not_tcp() {
    let dir = portcullis_tests::root().join("target/test-scratch/activation-unix-socket");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let echo = guest("echo");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&path)
        .arg(portcullis_tests::portcullis_bin())
        .args(["run", echo.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no socket file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first client starts portcullis, which refuses the socket.
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        let mut text = String::new();
        use std::io::Read;
        child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
        (status, text)
    });
    let (status, text) = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    assert_eq!(status.unwrap().code(), Some(1), "{text}");
    assert!(text.contains("LISTEN_FDS: descriptor 3 is not an IP socket"), "{text}");
}

#[tokio::test]
async fn a_passed_socket_no_service_takes_stops_the_start() {
    let (first, second) = (portcullis_tests::free_port(), portcullis_tests::free_port());
    let echo = guest("echo");
    let activated = Activated::start("activation-left-over", &[first, second], &[], &["run", echo.to_str().unwrap()]);
    // The connection that starts it is closed with it.
    let mut client = tokio::net::TcpStream::connect(first).await.unwrap();
    let _ = client.write_all(b"x").await;
    let _ = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut client)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !activated.log().contains("no service took") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = activated.log();
    assert!(log.contains("error: LISTEN_FDS: no service took an unnamed one (127.0.0.1:"), "{log}");
}

/// One client's round trip on a connection of its own: the reply, or why
/// there was none (refused, reset, cut short).
fn one_round(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut reply = vec![0u8; 512];
    let n = stream.read(&mut reply).map_err(|e| format!("read: {e}"))?;
    reply.truncate(n);
    Ok(reply)
}

/// `kill -HUP`.
fn hang_up(host: &HostProcess) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(host.pid() as i32, libc::SIGHUP) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_component_for_new_connections_and_refuses_none() {
    for mode in ["per-worker", "shared", "per-connection"] {
        reload_under_load(mode).await;
    }
}

async fn reload_under_load(mode: &str) {
    // The service's component is a file the test replaces: echo, then
    // http-hello (which answers an HTTP request instead of echoing it).
    let dir = portcullis_tests::root().join(format!("target/test-scratch/reload-files-{mode}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let component = dir.join("svc.wasm");
    std::fs::copy(guest("echo"), &component).unwrap();
    let manifest = format!(
        "workers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[service]]\nname = \"svc\"\ncomponent = {component:?}\n\
         listen = [\"127.0.0.1:0\"]\ninstances = \"{mode}\"\n"
    );
    let mut host = HostProcess::start_manifest(&format!("reload-{mode}"), &manifest, &[]);
    let line = host.stdout_line();
    let addr: SocketAddr = line.strip_prefix("svc: listening on ").expect(&line).parse().unwrap();
    let admin = admin_address(&mut host);
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(one_round(addr, request).unwrap(), request, "echo before the reload");

    // A connection open across the reload finishes on the old version.
    let mut open = connect_when_listening(addr).await;
    assert_eq!(round_trip(&mut open, b"before").await, b"before");

    // Clients all through the reload, each on a connection of its own.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut echoes, mut answers, mut wrong) = (0, 0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match one_round(addr, request) {
                        Ok(reply) if reply == request => echoes += 1,
                        Ok(reply) if reply.starts_with(b"HTTP/1.1 200") => answers += 1,
                        Ok(reply) => wrong.push(format!("reply {:?}", String::from_utf8_lossy(&reply))),
                        Err(e) => wrong.push(e),
                    }
                }
                (echoes, answers, wrong)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::copy(guest("http-hello"), &component).unwrap();
    hang_up(&host);
    let log = host.log_with("reloaded", 1, Duration::from_secs(30));
    assert!(log.contains("service=svc") && log.contains("reloaded"), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut echoes, mut answers, mut wrong) = (0, 0, Vec::new());
    for client in clients {
        let (e, a, w) = client.join().unwrap();
        (echoes, answers) = (echoes + e, answers + a);
        wrong.extend(w);
    }
    assert!(
        wrong.is_empty(),
        "{} clients refused, reset or answered wrong: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(echoes > 0 && answers > 0, "echoes {echoes}, answers {answers}: both versions served");
    assert!(one_round(addr, request).unwrap().starts_with(b"HTTP/1.1 200"), "the new version serves new clients");
    // The connection opened before the reload is still the old version's.
    assert_eq!(round_trip(&mut open, b"after").await, b"after");
    let metrics = metrics_when(admin, "portcullis_reloads_total{service=\"svc\"}", 1.0);
    assert_eq!(sample(&metrics, "portcullis_reloads_total{service=\"svc\"}"), Some(1.0), "{metrics}");

    // A component that does not load changes nothing.
    std::fs::write(&component, b"not a component").unwrap();
    hang_up(&host);
    let log = host.log_with("reload refused", 1, Duration::from_secs(30));
    assert!(log.contains("reload refused, every service goes on as it was"), "{log}");
    assert!(one_round(addr, request).unwrap().starts_with(b"HTTP/1.1 200"), "the running version goes on");
    let metrics = metrics_when(admin, "portcullis_reload_failures_total", 1.0);
    assert_eq!(sample(&metrics, "portcullis_reload_failures_total"), Some(1.0), "{metrics}");
    assert!(host.running());
}

#[tokio::test]
async fn a_reload_that_would_add_a_service_or_move_a_listener_is_refused() {
    let manifest_for = |port: &str| {
        format!("[[service]]\nname = \"svc\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:{port}\"]\n", guest("echo"))
    };
    let mut host = HostProcess::start_manifest("reload-refused", &manifest_for("0"), &[]);
    let line = host.stdout_line();
    let addr: SocketAddr = line.strip_prefix("svc: listening on ").expect(&line).parse().unwrap();
    let path = portcullis_tests::root().join("target/test-scratch/reload-refused/portcullis.toml");
    // Another listen address: refused, the old one serves on.
    std::fs::write(&path, manifest_for(&(addr.port().wrapping_add(1)).to_string())).unwrap();
    hang_up(&host);
    let log = host.log_with("reload refused", 1, Duration::from_secs(30));
    assert!(log.contains("a change of its listen addresses or instance mode needs a restart"), "{log}");
    // A manifest with an error: refused, named.
    std::fs::write(&path, "[[service]]\nname = \"svc\"\ncomponent = 7\n").unwrap();
    hang_up(&host);
    let log = host.log_with("reload refused", 2, Duration::from_secs(30));
    assert_eq!(log.matches("reload refused").count(), 2, "{log}");
    // A version that loads but cannot start (echo needs more than 1 MiB):
    // refused before anything switches.
    std::fs::write(&path, format!("{}max-memory = \"1MiB\"\n", manifest_for("0"))).unwrap();
    hang_up(&host);
    let log = host.log_with("reload refused", 3, Duration::from_secs(30));
    assert!(log.contains("the new version does not start"), "{log}");
    assert!(!log.contains("reloaded"), "{log}");
    assert_eq!(one_round(addr, b"still here").unwrap(), b"still here");
}

#[tokio::test]
async fn the_pool_gauge_counts_instances_serving_and_spares() {
    let args = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--instances", "per-connection", "--workers", "1"];
    let mut host = HostProcess::start("admin-pool", "echo", &args, None);
    let addr = host.listening_on();
    let admin = admin_address(&mut host);
    // One spare made ahead on the one worker.
    metrics_when(admin, "portcullis_pool_slots_used", 1.0);
    let mut held = Vec::new();
    for i in 0..3 {
        let mut client = connect_when_listening(addr).await;
        let hello = format!("held {i}");
        assert_eq!(round_trip(&mut client, hello.as_bytes()).await, hello.as_bytes());
        held.push(client);
    }
    // Three serving, and the next spare.
    let metrics = metrics_when(admin, "portcullis_pool_slots_used", 4.0);
    assert_eq!(sample(&metrics, "portcullis_pool_slots_used"), Some(4.0), "{metrics}");
    assert_eq!(sample(&metrics, "portcullis_instances_live{service=\"echo.wasm\"}"), Some(4.0), "{metrics}");
    drop(held);
    let metrics = metrics_when(admin, "portcullis_pool_slots_used", 1.0);
    assert_eq!(sample(&metrics, "portcullis_pool_slots_used"), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn clients_waiting_on_a_version_that_cannot_start_are_served_by_the_reload_that_fixes_it() {
    // Echo under 1 MiB of memory cannot start: its instance is retried,
    // with a growing pause, and accepted clients wait. A reload that lifts
    // the limit serves them, not closes them.
    let manifest_with = |extra: &str| {
        format!("[[service]]\nname = \"svc\"\ncomponent = {:?}\nlisten = [\"127.0.0.1:0\"]\n{extra}", guest("echo"))
    };
    let mut host = HostProcess::start_manifest("reload-waiting", &manifest_with("max-memory = \"1MiB\"\n"), &[]);
    let line = host.stdout_line();
    let addr: SocketAddr = line.strip_prefix("svc: listening on ").expect(&line).parse().unwrap();
    let log = host.log_with("failed to start", 2, Duration::from_secs(30));
    assert!(log.contains("failed to start"), "{log}");
    let mut waiting = Vec::new();
    for i in 0..3 {
        let mut client = connect_when_listening(addr).await;
        client.write_all(format!("waiting {i}").as_bytes()).await.unwrap();
        waiting.push(client);
    }
    let path = portcullis_tests::root().join("target/test-scratch/reload-waiting/portcullis.toml");
    std::fs::write(&path, manifest_with("")).unwrap();
    hang_up(&host);
    for (i, client) in waiting.iter_mut().enumerate() {
        let echoed = tokio::time::timeout(Duration::from_secs(30), read_n(client, 9)).await;
        let echoed = echoed.unwrap_or_else(|_| panic!("client {i} was not served: {}", host.log()));
        assert_eq!(echoed, format!("waiting {i}").as_bytes(), "{}", host.log());
    }
}

#[tokio::test]
async fn a_connection_the_memory_budget_cannot_fit_is_counted_as_such() {
    // A process budget of 1 MiB: no echo instance (about 1.1 MiB) fits, so
    // a connection is closed, counted under its reason (a guest that fits
    // and then asks for too much traps instead: `guest_traps{cause="memory"}`).
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--instances",
        "per-connection",
        "--memory-budget",
        "1MiB",
        "--workers",
        "1",
    ];
    let mut host = HostProcess::start("admin-budget", "echo", &args, None);
    let addr = host.listening_on();
    let admin = admin_address(&mut host);
    let mut client = connect_when_listening(addr).await;
    let _ = client.write_all(b"no room").await;
    assert_eq!(read_to_end(&mut client).await, b"", "served without room: {}", host.log());
    let series = "portcullis_downstream_cx_overflow_total{service=\"echo.wasm\",reason=\"memory_budget\"}";
    let metrics = metrics_when(admin, series, 1.0);
    assert_eq!(sample(&metrics, series), Some(1.0), "{metrics}\n{}", host.log());
}

#[tokio::test]
async fn guest_cpu_seconds_count_the_guests_work_and_not_its_waits() {
    let args = ["--env", "MODE=work", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut host = HostProcess::start("admin-cpu", "scenarios", &args, None);
    let addr = host.listening_on();
    let admin = admin_address(&mut host);
    let series = "portcullis_guest_cpu_seconds_total{service=\"scenarios.wasm\"}";
    let read = || sample(&curl("GET", &format!("http://{admin}/metrics")).1, series).expect("the series");
    // A client that connects and sends nothing for a while costs no guest time.
    let mut client = connect_when_listening(addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = read();
    assert!(idle < 0.2, "{idle} s counted for a guest that only waited");
    // `work 400` computes for 400 ms of wall time: at least a third of a
    // core's worth even beside two busy loops.
    assert_eq!(round_trip(&mut client, b"work 400").await, b"work 400");
    let worked = read() - idle;
    assert!((0.1..10.0).contains(&worked), "{worked} s counted for 400 ms of work");
}

#[tokio::test]
async fn each_listener_counts_its_own_connections() {
    let args = ["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut host = HostProcess::start("admin-listeners", "echo", &args, None);
    let (first, second) = (host.listening_on(), host.listening_on());
    let admin = admin_address(&mut host);
    for (addr, count) in [(first, 2), (second, 1)] {
        for _ in 0..count {
            let mut client = connect_when_listening(addr).await;
            assert_eq!(round_trip(&mut client, b"hi\n").await, b"hi\n");
        }
    }
    let series = |addr: SocketAddr, name: &str| {
        format!("portcullis_listener_downstream_cx{name}{{service=\"echo.wasm\",listener=\"{addr}\"}}")
    };
    let metrics = metrics_when(admin, &series(second, "_destroy_total"), 1.0);
    assert_eq!(sample(&metrics, &series(first, "_total")), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, &series(second, "_total")), Some(1.0), "{metrics}");
    let metrics = metrics_when(admin, &series(first, "_active"), 0.0);
    assert_eq!(sample(&metrics, &series(first, "_active")), Some(0.0), "{metrics}");
    // The service's own counter has them all.
    assert_eq!(sample(&metrics, "portcullis_downstream_cx_total{service=\"echo.wasm\"}"), Some(3.0), "{metrics}");
}
