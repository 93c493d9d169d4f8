//! TLS on `tls://` listeners and for guests' client connections, as real
//! clients see it: `curl --cacert` to `http-hello` (keep-alive included),
//! `openssl s_client`, a tokio-rustls client pushing a megabyte through the
//! echo, client certificates, handshakes that never finish or are junk,
//! the cap on handshakes at once, and a guest's TLS connection to a server
//! whose certificate is right, from another CA, or for another name.
//! Every certificate is made here (`rcgen`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_tests::{HostProcess, connect_when_listening, read_line, root};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// A leaf for `names` (DNS names or IP addresses) with subject CN=`cn`:
    /// its certificate and key, PEM.
    fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

/// The files of one test: a CA, a server certificate for `localhost` and
/// 127.0.0.1, a client CA with a client certificate for `alice`.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(test: &str) -> Files {
        let dir = root().join("target/test-scratch").join(format!("tls-files-{test}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, clients) = (Ca::new("portcullis test CA"), Ca::new("portcullis test client CA"));
        let (cert, key) = ca.leaf("localhost", &["localhost", "127.0.0.1"]);
        let (alice, alice_key) = clients.leaf("alice", &["alice.example"]);
        for (name, text) in [
            ("ca.pem", ca.pem()),
            ("server.pem", cert),
            ("server.key", key),
            ("client-ca.pem", clients.pem()),
            ("alice.pem", alice),
            ("alice.key", alice_key),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// `--tls-cert` and `--tls-key` for the server certificate.
    fn server_args(&self) -> Vec<String> {
        vec!["--tls-cert".into(), self.path("server.pem"), "--tls-key".into(), self.path("server.key")]
    }
}

/// `portcullis run GUEST --listen tls://127.0.0.1:0 --admin 127.0.0.1:0`
/// with the server certificate and `args`; its address and the admin's.
fn serve_tls(test: &str, guest: &str, files: &Files, args: &[&str]) -> (HostProcess, SocketAddr, SocketAddr) {
    let mut all: Vec<String> =
        vec!["--listen".into(), "tls://127.0.0.1:0".into(), "--admin".into(), "127.0.0.1:0".into()];
    all.extend(files.server_args());
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut host = HostProcess::start(test, guest, &all, None);
    let line = host.stdout_line();
    assert!(line.starts_with("listening on tls://"), "the line tells it is TLS: {line:?}");
    let addr = line.trim_start_matches("listening on tls://").parse().unwrap();
    let admin = host.stdout_line();
    let admin = admin.strip_prefix("admin: listening on ").unwrap().parse().unwrap();
    (host, addr, admin)
}

/// `/metrics` of `admin`.
fn metrics(admin: SocketAddr) -> String {
    let out =
        Command::new("curl").args(["-s", "--max-time", "10", &format!("http://{admin}/metrics")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `series` in `/metrics` once it reaches `want`, or as it is
/// after 10 s.
fn metric_when(admin: SocketAddr, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(admin);
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .unwrap_or(-1.0);
        if value >= want || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS client trusting `ca`, with `client` (certificate, key) if given.
fn connector(ca: &Path, client: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn curl_gets_http_hello_over_tls_twice_on_one_connection() {
    let files = Files::new("curl");
    let (_host, addr, admin) = serve_tls("tls-curl", "http-hello", &files, &[]);
    let url = format!("https://localhost:{}/", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert", &files.path("ca.pem"), "--resolve", &resolve])
        .args(["-w", "[%{http_code} %{num_connects}]", &url, &url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, "Hello, world!\n[200 1]Hello, world!\n[200 0]", "the second request reuses the connection");
    assert_eq!(metric_when(admin, "portcullis_tls_handshakes_total{service=\"http_hello.wasm\"}", 1.0), 1.0);
    // A client that does not trust the CA gives up in its handshake.
    let untrusting =
        Command::new("curl").args(["-s", "--max-time", "20", "--resolve", &resolve, &url]).output().unwrap();
    assert_eq!(untrusting.status.code(), Some(60), "curl: peer certificate cannot be authenticated");
}

/// `openssl s_client` to `addr` with `args`: sends `line` and returns what
/// it printed up to the echo of `line` (or all of it, if it ended first).
fn s_client(addr: SocketAddr, args: &[&str], line: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", "localhost", "-quiet"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for text in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push_str(&text);
            seen.push('\n');
            if text == "hello over tls" {
                break;
            }
        }
        seen
    });
    let _ = stdin.write_all(line.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap()
}

#[tokio::test]
async fn openssl_s_client_talks_tls_and_the_guest_sees_what_was_agreed() {
    let files = Files::new("s-client");
    let (_host, addr, _admin) =
        serve_tls("tls-s-client", "scenarios", &files, &["--env", "MODE=tls-info", "--tls-alpn", "echo/1"]);
    let seen = s_client(
        addr,
        &["-CAfile", &files.path("ca.pem"), "-verify_return_error", "-alpn", "echo/1"],
        "hello over tls\n",
    );
    let mut lines = seen.lines();
    let info = lines.next().unwrap_or_default();
    assert!(info.starts_with("tls TLSv1.3 TLS13_"), "{seen}");
    assert!(info.ends_with(" alpn=echo/1 sni=localhost subject=-"), "{seen}");
    assert_eq!(lines.next(), Some("hello over tls"), "the guest echoes plaintext: {seen}");
}

#[tokio::test]
async fn a_megabyte_each_way_goes_through_whole_and_in_order() {
    let files = Files::new("megabyte");
    let (_host, addr, _admin) = serve_tls("tls-megabyte", "scenarios", &files, &["--env", "MODE=tls-info"]);
    let tcp = connect_when_listening(addr).await;
    let tls = connector(Path::new(&files.path("ca.pem")), None)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    let (mut rx, mut tx) = tokio::io::split(tls);
    let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            // In pieces of every size, as a client's writes come.
            for piece in sent.chunks(40_000) {
                tx.write_all(piece).await.unwrap();
            }
            tx.flush().await.unwrap();
            tx
        }
    });
    let mut info = Vec::new();
    while !info.ends_with(b"\n") {
        let mut byte = [0u8; 1];
        rx.read_exact(&mut byte).await.unwrap();
        info.push(byte[0]);
    }
    let mut echoed = vec![0u8; sent.len()];
    tokio::time::timeout(Duration::from_secs(60), rx.read_exact(&mut echoed)).await.expect("echoed in time").unwrap();
    assert!(echoed == sent, "the echo differs from what was sent");
    let mut tx = writer.await.unwrap();
    tx.shutdown().await.unwrap(); // close_notify: the guest reads its end and closes
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(&mut rest)).await.expect("closed");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_client_certificate_is_required_and_its_subject_reaches_the_guest() {
    let files = Files::new("client-cert");
    let client_ca = files.path("client-ca.pem");
    let (host, addr, admin) =
        serve_tls("tls-client-cert", "scenarios", &files, &["--env", "MODE=tls-info", "--tls-client-ca", &client_ca]);
    let ca = files.path("ca.pem");
    let seen = s_client(
        addr,
        &["-CAfile", &ca, "-cert", &files.path("alice.pem"), "-key", &files.path("alice.key")],
        "hello over tls\n",
    );
    assert!(seen.lines().next().unwrap_or_default().ends_with(" subject=CN=alice"), "{seen}");
    // No certificate: refused in the handshake, counted, no callback run.
    let callbacks = "portcullis_guest_callbacks_total{service=\"scenarios.wasm\"}";
    let before = metric_when(admin, callbacks, 0.0);
    let tcp = connect_when_listening(addr).await;
    let refused = connector(Path::new(&ca), None).connect("localhost".try_into().unwrap(), tcp).await;
    if let Ok(mut stream) = refused {
        // TLS 1.3: the client's side finishes first; the refusal comes with the first read.
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.expect("answered");
        assert!(!matches!(read, Ok(n) if n > 0), "a client without a certificate got bytes");
    }
    let failures = "portcullis_tls_handshake_failures_total{service=\"scenarios.wasm\",reason=\"error\"}";
    assert_eq!(metric_when(admin, failures, 1.0), 1.0);
    assert_eq!(metric_when(admin, callbacks, before), before, "no callback for a refused handshake");
    assert!(host.log().contains("TLS handshake failed"), "{}", host.log());
}

#[tokio::test]
async fn handshakes_that_never_finish_or_are_junk_cost_no_instance_and_are_counted() {
    let files = Files::new("stalled");
    let (host, addr, admin) = serve_tls(
        "tls-stalled",
        "scenarios",
        &files,
        &["--env", "MODE=tls-info", "--tls-handshake-timeout-ms", "1000", "--instances", "per-connection"],
    );
    // Silent after connecting, and plain text where a ClientHello belongs.
    let mut silent = connect_when_listening(addr).await;
    let mut junk = connect_when_listening(addr).await;
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), closed(&mut junk)).await.expect("junk closed");
    // While the silent one waits, an honest client is served.
    let tcp = connect_when_listening(addr).await;
    let mut honest =
        connector(Path::new(&files.path("ca.pem")), None).connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let mut info = String::new();
    let mut byte = [0u8; 1];
    while !info.ends_with('\n') {
        honest.read_exact(&mut byte).await.unwrap();
        info.push(byte[0] as char);
    }
    assert!(info.starts_with("tls TLSv1.3"), "{info}");
    tokio::time::timeout(Duration::from_secs(10), closed(&mut silent)).await.expect("silent closed after its time-out");
    let series = |reason: &str| {
        format!("portcullis_tls_handshake_failures_total{{service=\"scenarios.wasm\",reason=\"{reason}\"}}")
    };
    assert_eq!(metric_when(admin, &series("timeout"), 1.0), 1.0);
    assert_eq!(metric_when(admin, &series("error"), 1.0), 1.0);
    // One instance: the honest client's. A handshake costs none.
    let callbacks = metric_when(admin, "portcullis_guest_callbacks_total{service=\"scenarios.wasm\"}", 1.0);
    assert_eq!(callbacks, 1.0, "only the honest client's on-connect ran");
    drop(honest);
    assert!(host.log().contains("TLS handshake not finished in time"), "{}", host.log());
}

#[tokio::test]
async fn at_the_handshake_cap_clients_wait_and_are_served_once_a_place_frees() {
    let files = Files::new("cap");
    let (_host, addr, admin) = serve_tls(
        "tls-cap",
        "scenarios",
        &files,
        &["--env", "MODE=tls-info", "--tls-max-handshakes", "2", "--tls-handshake-timeout-ms", "1500"],
    );
    let _silent: Vec<_> = silent_pair(addr).await;
    let tcp = connect_when_listening(addr).await;
    let handshake = connector(Path::new(&files.path("ca.pem")), None).connect("localhost".try_into().unwrap(), tcp);
    let mut honest = tokio::time::timeout(Duration::from_secs(20), handshake).await.expect("served in time").unwrap();
    let mut first = [0u8; 4];
    honest.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"tls ");
    let overflow = "portcullis_downstream_cx_overflow_total{service=\"scenarios.wasm\",reason=\"handshake_cap\"}";
    assert!(metric_when(admin, overflow, 1.0) >= 1.0, "the wait was counted");
}

/// Reads until the host closes `stream` (an alert may come first).
async fn closed(stream: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Two connections that send nothing (each holds a handshake place).
async fn silent_pair(addr: SocketAddr) -> Vec<tokio::net::TcpStream> {
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(connect_when_listening(addr).await);
    }
    // Their handshakes have begun once the host accepted them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    silent
}

/// A TLS server of the test's own on 127.0.0.1 with a certificate from
/// `ca` for `names`: answers `pong` to each connection's first line.
async fn upstream(ca: &Ca, names: &[&str]) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.leaf(names[0], names);
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = [0u8; 64];
                if matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {
                    let _ = tls.write_all(b"pong\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_guest_tls_client_is_verified_against_the_operators_roots_and_the_name() {
    let files = Files::new("outbound");
    let (ours, strangers) = (Ca::new("operator's CA"), Ca::new("someone else's CA"));
    std::fs::write(files.dir.join("ours.pem"), ours.pem()).unwrap();
    let good = upstream(&ours, &["localhost"]).await;
    let foreign = upstream(&strangers, &["localhost"]).await;
    let ours_path = files.path("ours.pem");
    let mut host = HostProcess::start(
        "tls-outbound",
        "scenarios",
        &[
            "--listen",
            "127.0.0.1:0",
            "--env",
            "MODE=tls-client",
            "--allow-connect",
            "tcp://localhost:*",
            "--allow-connect",
            "tcp://127.0.0.1:*",
            "--tls-ca",
            &ours_path,
        ],
        None,
    );
    let addr = host.listening_on();
    let ask = |target: String| async move {
        let mut client = connect_when_listening(addr).await;
        client.write_all(format!("{target}\n").as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), read_line(&mut client)).await.expect("an answer")
    };
    assert_eq!(ask(format!("localhost {}", good.port())).await, "ok pong subject=CN=localhost\n");
    let refused = ask(format!("localhost {}", foreign.port())).await;
    assert!(
        refused.starts_with("error unable to start the client socket: TLS handshake failed: invalid peer certificate"),
        "{refused}"
    );
    // Granted by IP, but the certificate names `localhost` only.
    let wrong_name = ask(format!("127.0.0.1 {}", good.port())).await;
    assert!(wrong_name.starts_with("error unable to start the client socket: TLS handshake failed"), "{wrong_name}");
    assert!(wrong_name.contains("not valid for name \"127.0.0.1\""), "{wrong_name}");
    let _ = host.log();
}

#[tokio::test]
async fn a_reload_renews_a_certificate_in_place_for_new_connections() {
    let files = Files::new("renew");
    let (host, addr, admin) = serve_tls("tls-renew", "scenarios", &files, &["--env", "MODE=tls-info"]);
    let handshake = |ca: String| async move {
        let tcp = connect_when_listening(addr).await;
        connector(Path::new(&ca), None).connect("localhost".try_into().unwrap(), tcp).await
    };
    let mut before = handshake(files.path("ca.pem")).await.expect("the first certificate");
    // The operator renews the certificate from another CA, in place, and signals.
    let renewed = Ca::new("renewed CA");
    let (cert, key) = renewed.leaf("localhost", &["localhost"]);
    std::fs::write(files.dir.join("renewed-ca.pem"), renewed.pem()).unwrap();
    std::fs::write(files.dir.join("server.pem"), cert).unwrap();
    std::fs::write(files.dir.join("server.key"), key).unwrap();
    assert!(Command::new("kill").args(["-HUP", &host.pid().to_string()]).status().unwrap().success());
    assert_eq!(metric_when(admin, "portcullis_reloads_total{service=\"scenarios.wasm\"}", 1.0), 1.0, "{}", host.log());
    handshake(files.path("renewed-ca.pem")).await.expect("new connections get the renewed certificate");
    assert!(handshake(files.path("ca.pem")).await.is_err(), "the old certificate is no longer served");
    // In place: no new version (a shared instance's state is kept).
    let log = host.log();
    assert!(log.contains("present the renewed certificate"), "{log}");
    assert!(!log.contains("new connections go to the new version"), "{log}");
    // The connection made before the reload goes on.
    let mut line = [0u8; 4];
    before.read_exact(&mut line).await.unwrap();
    before.write_all(b"still here\n").await.unwrap();
    let mut rest = Vec::new();
    while !rest.ends_with(b"still here\n") {
        let mut byte = [0u8; 1];
        before.read_exact(&mut byte).await.unwrap();
        rest.push(byte[0]);
    }
}

/// `portcullis run GUEST` on a `tls://` listener and a plain one, with
/// `args`: the process, the TLS address and the plain one.
fn serve_both(test: &str, guest: &str, files: &Files, args: &[&str]) -> (HostProcess, SocketAddr, SocketAddr) {
    let mut all: Vec<String> =
        vec!["--listen".into(), "tls://127.0.0.1:0".into(), "--listen".into(), "127.0.0.1:0".into()];
    all.extend(files.server_args());
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut host = HostProcess::start(test, guest, &all, None);
    let tls = host.listening_on();
    let plain = host.listening_on();
    (host, tls, plain)
}

/// A TLS client of `addr` trusting the test CA.
async fn tls_client(files: &Files, addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = connect_when_listening(addr).await;
    let connecting = connector(Path::new(&files.path("ca.pem")), None).connect("localhost".try_into().unwrap(), tcp);
    tokio::time::timeout(Duration::from_secs(20), connecting).await.expect("a handshake in time").expect("a handshake")
}

#[tokio::test]
async fn a_client_that_resets_in_the_middle_of_a_download_stalls_nothing() {
    let files = Files::new("abort");
    let (_host, tls, plain) = serve_both("tls-abort", "scenarios", &files, &["--env", "MODE=stream-out"]);
    for _ in 0..3 {
        let mut download = tls_client(&files, tls).await;
        download.write_all(b"go").await.unwrap();
        let mut got = vec![0u8; 4 << 20];
        download.read_exact(&mut got).await.unwrap();
        // Gone with the rest unread: the kernel answers the host's next
        // writes with a reset.
        let (tcp, _) = download.into_inner();
        socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO)).unwrap();
        drop(tcp);
    }
    // The worker is free: both listeners serve a new client at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = tls_client(&files, tls).await;
    again.write_all(b"go").await.unwrap();
    let mut first = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(10), again.read_exact(&mut first)).await.expect("served").unwrap();
    let mut client = connect_when_listening(plain).await;
    client.write_all(b"go").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut first)).await.expect("served").unwrap();
}

#[tokio::test]
async fn one_write_of_twenty_mebibytes_arrives_whole() {
    let files = Files::new("big-write");
    let args = ["--env", "MODE=big-writes", "--env", "COUNT=1", "--env", "WRITE_MIB=20", "--max-memory", "256MiB"];
    let (_host, tls, _plain) = serve_both("tls-big-write", "hostile", &files, &args);
    for _ in 0..2 {
        let mut client = tls_client(&files, tls).await;
        client.write_all(b"go").await.unwrap();
        let mut got = vec![0u8; 20 << 20];
        tokio::time::timeout(Duration::from_secs(60), client.read_exact(&mut got))
            .await
            .expect("all 20 MiB within a minute")
            .unwrap();
    }
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_the_handshakes() {
    let files = Files::new("per-ip");
    let (_host, addr, admin) = serve_tls(
        "tls-per-ip",
        "scenarios",
        &files,
        &["--env", "MODE=tls-info", "--tls-max-handshakes", "8", "--tls-max-handshakes-per-ip", "4"],
    );
    // 127.0.0.2 opens silent connections past its share: the rest are closed at once.
    let mut silent = Vec::new();
    for _ in 0..10 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(addr).await.unwrap());
    }
    let overflow =
        "portcullis_downstream_cx_overflow_total{service=\"scenarios.wasm\",reason=\"handshake_per_address_cap\"}";
    assert_eq!(metric_when(admin, overflow, 6.0), 6.0);
    // Another client is served at once: the silent ones hold 4 of 8 places.
    let mut honest = tls_client(&files, addr).await;
    let mut first = [0u8; 4];
    honest.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"tls ");
}

#[test]
fn tls_settings_that_cannot_work_stop_the_start_with_a_clear_error() {
    let files = Files::new("settings");
    let run = |args: &[&str]| {
        let out = Command::new(portcullis_tests::portcullis_bin())
            .arg("run")
            .arg(portcullis_tests::guest("echo"))
            .args(args)
            .env("PORTCULLIS_CACHE_DIR", portcullis_tests::test_cache())
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(0), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cert = files.path("server.pem");
    let key = files.path("server.key");
    let stderr = run(&["--listen", "tls://127.0.0.1:0"]);
    assert!(stderr.contains("--tls-cert is needed by a tls:// listener"), "{stderr}");
    let stderr = run(&["--listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key]);
    assert!(stderr.contains("no listen address is one"), "{stderr}");
    let stderr = run(&["--listen", "tls://127.0.0.1:0", "--tls-cert", "/nonexistent.pem", "--tls-key", &key]);
    assert!(stderr.contains("tls-cert /nonexistent.pem"), "{stderr}");
    // The key of another certificate.
    let other = files.path("alice.key");
    let stderr = run(&["--listen", "tls://127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &other]);
    assert!(stderr.contains("tls-key does not match the first certificate of tls-cert"), "{stderr}");
    let stderr = run(&["--listen", "udp://127.0.0.1:0"]);
    assert!(stderr.contains("`udp://` is not a listener"), "{stderr}");
    // The WASI backend binds its own sockets: the host has no TLS to add.
    let out = Command::new(portcullis_tests::portcullis_bin())
        .arg("run")
        .arg(portcullis_tests::Backend::Wasi.guest("echo"))
        .args(["--listen", "tls://127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key])
        .env("PORTCULLIS_CACHE_DIR", portcullis_tests::test_cache())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("terminates TLS only for the portcullis backend"), "{stderr}");
}
