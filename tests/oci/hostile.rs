//! Registries that do not play fair, and one that asks for a token as
//! public registries do. No real registry misbehaves on request, so these
//! are small HTTP servers of the test's own, on loopback: each answers a
//! request as its test says and counts the bytes it sent, so a test can
//! show where portcullis stopped reading.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{digest_of, fails, fresh_cache, serves_echo};
use portcullis_tests::{HostProcess, guest};

/// What the registry was asked.
struct Request {
    /// The path and query, e.g. `/v2/team/echo/manifests/v1`.
    target: String,
    authorization: Option<String>,
    /// The registry's own address.
    local: SocketAddr,
}

/// What it answers.
enum Answer {
    /// A 200 of `length` bytes of which only `sent` come, then silence
    /// (for at most a minute).
    Stalled {
        length: usize,
        sent: Vec<u8>,
    },
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `start`, then `x` until the client goes (or 1 GiB), with no length.
    Endless {
        status: u16,
        content_type: String,
        start: Vec<u8>,
    },
}

impl Answer {
    fn ok(content_type: &str, body: Vec<u8>) -> Answer {
        Answer::Full { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body }
    }

    fn redirect(location: String) -> Answer {
        Answer::Full { status: 307, headers: vec![("Location".into(), location)], body: Vec::new() }
    }
}

/// A registry on `ip`, answering with `answer`; it stops with the test.
struct FakeRegistry {
    addr: SocketAddr,
    /// Every request's target, in order.
    asked: Arc<Mutex<Vec<String>>>,
    /// Body bytes sent, all requests together.
    sent: Arc<AtomicU64>,
}

impl FakeRegistry {
    fn start(ip: &str, answer: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> FakeRegistry {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let answer = Arc::new(answer);
        let (asked_, sent_) = (asked.clone(), sent.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (answer, asked, sent) = (answer.clone(), asked_.clone(), sent_.clone());
                std::thread::spawn(move || serve(stream, addr, &*answer, &asked, &sent));
            }
        });
        FakeRegistry { addr, asked, sent }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Answers the requests of one connection (keep-alive) until it closes.
fn serve(
    stream: TcpStream,
    local: SocketAddr,
    answer: &dyn Fn(&Request) -> Answer,
    asked: &Mutex<Vec<String>>,
    sent: &AtomicU64,
) {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut first = String::new();
        if reader.read_line(&mut first).unwrap_or(0) == 0 {
            return;
        }
        let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut authorization = None;
        for _ in 0..100 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("authorization")
            {
                authorization = Some(value.trim().to_string());
            }
        }
        asked.lock().unwrap().push(target.clone());
        match answer(&Request { target, authorization, local }) {
            Answer::Full { status, headers, body } => {
                let mut head = format!("HTTP/1.1 {status} X\r\n");
                if !headers.iter().any(|(name, _)| name == "Content-Length") {
                    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
                }
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&body)).is_err() {
                    return;
                }
                sent.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
            Answer::Stalled { length, sent: bytes } => {
                let head = format!("HTTP/1.1 200 X\r\nContent-Length: {length}\r\n\r\n");
                if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&bytes)).is_ok() {
                    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(60));
                }
                return;
            }
            Answer::Endless { status, content_type, start } => {
                let head = format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n");
                let _ = writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&start));
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..16 * 1024 {
                    if writer.write_all(&chunk).is_err() {
                        break;
                    }
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A wasm artifact's manifest for `layer`, as `wkg` writes one.
fn manifest_for(layer: &[u8]) -> Vec<u8> {
    let config = b"{}";
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": digest_of(config), "size": 2},
        "layers": [{"mediaType": "application/wasm", "digest": digest_of(layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes()
}

/// A registry whose manifests are echo's, and whose layer is answered by
/// `layer` (given echo's bytes).
fn serving_echo(layer: impl Fn(&[u8]) -> Answer + Send + Sync + 'static) -> FakeRegistry {
    let component = std::fs::read(guest("echo")).unwrap();
    let manifest = manifest_for(&component);
    FakeRegistry::start("127.0.0.1", move |request| {
        if request.target.contains("/manifests/") {
            return Answer::ok(MANIFEST_TYPE, manifest.clone());
        }
        layer(&component)
    })
}

#[tokio::test]
async fn a_registry_that_asks_for_a_token_for_a_login_and_redirects_its_blobs_is_pulled_from() {
    let component = std::fs::read(guest("echo")).unwrap();
    let manifest = manifest_for(&component);
    let layer = digest_of(&component);
    let registry = FakeRegistry::start("127.0.0.1", move |request| {
        let local = request.local;
        if request.target.starts_with("/token?") {
            // The login, as registries' token services take it (bob:hunter2).
            if request.authorization.as_deref() != Some("Basic Ym9iOmh1bnRlcjI=") {
                return Answer::Full { status: 401, headers: Vec::new(), body: b"who are you".to_vec() };
            }
            // The scope a pull asks for, as registries expect it.
            assert!(request.target.contains("scope=repository%3Ateam%2Fecho%3Apull"), "{}", request.target);
            assert!(request.target.contains("service=fake"), "{}", request.target);
            return Answer::ok("application/json", br#"{"token":"granted","expires_in":300}"#.to_vec());
        }
        if request.target == "/cdn/echo" {
            return Answer::ok("application/octet-stream", component.clone());
        }
        if request.authorization.as_deref() != Some("Bearer granted") {
            let challenge =
                format!(r#"Bearer realm="http://{local}/token",service="fake",scope="repository:team/echo:pull""#);
            return Answer::Full {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), challenge)],
                body: Vec::new(),
            };
        }
        match request.target.as_str() {
            "/v2/team/echo/manifests/v1" => Answer::ok(MANIFEST_TYPE, manifest.clone()),
            // Blobs are served from elsewhere, as registries do (a CDN).
            target if target == format!("/v2/team/echo/blobs/{layer}") => {
                Answer::redirect(format!("http://{local}/cdn/echo"))
            }
            _ => Answer::Full { status: 404, headers: Vec::new(), body: b"unknown".to_vec() },
        }
    });
    let reference = format!("oci://{}/team/echo:v1", registry.addr);
    let logins = fresh_cache("token", "logins").join("auth.json");
    let file = format!(r#"{{"auths": {{"{}/team": {{"username": "bob", "password": "hunter2"}}}}}}"#, registry.addr);
    std::fs::write(&logins, file).unwrap();
    let cache = fresh_cache("token", "run");
    let args = ["run", &reference, "--listen", "127.0.0.1:0", "--registry-auth", logins.to_str().unwrap()];
    let mut host = HostProcess::start_args("oci-token", &args, &cache);
    serves_echo(&mut host).await;
    let asked = registry.asked();
    assert!(asked.iter().any(|target| target.starts_with("/token?")), "{asked:?}");
    assert!(asked.iter().any(|target| target == "/cdn/echo"), "{asked:?}");
}

#[test]
fn an_endless_or_oversized_manifest_is_not_read_past_its_bound() {
    let endless = FakeRegistry::start("127.0.0.1", |_| Answer::Endless {
        status: 200,
        content_type: MANIFEST_TYPE.into(),
        start: format!(r#"{{"mediaType":"{MANIFEST_TYPE}","padding":""#).into_bytes(),
    });
    let reference = format!("oci://{}/team/echo:v1", endless.addr);
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("endless", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the manifest is more than the 8388608 bytes read"), "{stderr}");
    // 8 MiB read, and what the kernel's buffers held when it stopped.
    assert!(endless.sent() < 48 << 20, "{} bytes were sent before portcullis stopped reading", endless.sent());

    let declared = FakeRegistry::start("127.0.0.1", |_| Answer::Full {
        status: 200,
        headers: vec![("Content-Length".into(), "10737418240".into())],
        body: Vec::new(),
    });
    let reference = format!("oci://{}/team/echo:v1", declared.addr);
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("declared", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("10737418240 bytes"), "{stderr}");
}

#[test]
fn an_endless_layer_or_error_answer_is_cut() {
    let component = std::fs::read(guest("echo")).unwrap();
    let registry = serving_echo(|_| Answer::Endless {
        status: 200,
        content_type: "application/octet-stream".into(),
        start: Vec::new(),
    });
    let reference = format!("oci://{}/team/echo:v1", registry.addr);
    let cache = fresh_cache("endless-layer", "run");
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &cache);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("more bytes than the layer's size"), "{stderr}");
    assert!(registry.sent() < (component.len() as u64) + (40 << 20), "{} bytes sent", registry.sent());
    let blobs = cache.join("oci/blobs/sha256");
    let left: Vec<_> = std::fs::read_dir(&blobs).map(|dir| dir.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing is left in the cache: {left:?}");

    let erring = FakeRegistry::start("127.0.0.1", |_| Answer::Endless {
        status: 404,
        content_type: "text/plain".into(),
        start: b"no such thing\n".to_vec(),
    });
    let reference = format!("oci://{}/team/echo:v1", erring.addr);
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("endless-error", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("404") && stderr.contains("no such thing"), "{stderr}");
    assert!(stderr.len() < 4096, "the registry's text is cut: {} bytes", stderr.len());
    assert!(erring.sent() < 40 << 20, "{} bytes sent", erring.sent());
}

#[test]
fn a_registry_cannot_send_a_pull_to_another_plain_host() {
    // What a registry might point at: another host on plain HTTP (a cloud
    // metadata service, an internal API). It must never be asked.
    let elsewhere = FakeRegistry::start("127.0.0.2", |_| Answer::ok("application/json", br#"{"token":"t"}"#.to_vec()));
    let target = elsewhere.addr;
    let redirecting =
        FakeRegistry::start("127.0.0.1", move |_| Answer::redirect(format!("http://{target}/latest/meta-data")));
    let reference = format!("oci://{}/team/echo:v1", redirecting.addr);
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("redirect", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("redirect") && stderr.contains("refused"), "{stderr}");

    let realm_elsewhere = FakeRegistry::start("127.0.0.1", move |_| Answer::Full {
        status: 401,
        headers: vec![("WWW-Authenticate".into(), format!(r#"Bearer realm="http://{target}/token""#))],
        body: Vec::new(),
    });
    let reference = format!("oci://{}/team/echo:v1", realm_elsewhere.addr);
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("realm", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("token realm"), "{stderr}");
    assert_eq!(elsewhere.asked(), Vec::<String>::new(), "the other host was asked");
}

#[test]
fn a_pull_stopped_by_sigterm_leaves_nothing_in_the_cache() {
    let registry = serving_echo(|component| Answer::Stalled {
        length: component.len(),
        sent: component[..component.len() / 2].to_vec(),
    });
    let reference = format!("oci://{}/team/echo:v1", registry.addr);
    let cache = fresh_cache("sigterm", "run");
    let mut child = std::process::Command::new(portcullis_tests::portcullis_bin())
        .args(["run", &reference, "--listen", "127.0.0.1:0"])
        .env("PORTCULLIS_CACHE_DIR", &cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Half the layer is on its way to the cache when the stop comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while registry.sent() == 0 {
        assert!(std::time::Instant::now() < deadline, "the pull did not begin");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "SIGTERM did not stop the pull");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped while pulling"), "{stderr}");
    let blobs = cache.join("oci/blobs/sha256");
    let left: Vec<_> =
        std::fs::read_dir(&blobs).map(|dir| dir.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a partial layer was left: {left:?}");
}

/// A logins file for `registry` (alice, s3cret), in the test's scratch folder.
fn logins_for(test: &str, registry: SocketAddr) -> String {
    let file = fresh_cache(test, "logins").join("auth.json");
    std::fs::write(&file, format!(r#"{{"auths": {{"{registry}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#)).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn a_login_goes_to_no_one_a_redirect_or_a_plain_realm_elsewhere_names() {
    // Where the login must not go: anyone who asks for it from elsewhere.
    let elsewhere = FakeRegistry::start("127.0.0.2", |request| {
        let local = request.local;
        match request.authorization {
            Some(_) => Answer::Full { status: 500, headers: Vec::new(), body: b"got a secret".to_vec() },
            None => Answer::Full {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), format!(r#"Bearer realm="https://{local}/token""#))],
                body: Vec::new(),
            },
        }
    });
    let target = elsewhere.addr;
    // A registry whose manifests are "on a CDN" that then asks for a login.
    let redirecting =
        FakeRegistry::start("127.0.0.1", move |_| Answer::redirect(format!("http://{target}/cdn/manifest")));
    let reference = format!("oci://{}/team/echo:v1", redirecting.addr);
    let logins = logins_for("redirect-login", redirecting.addr);
    let args = [reference.as_str(), "--listen", "127.0.0.1:0", "--registry-auth", &logins];
    let (code, stderr) = fails(&args, &fresh_cache("redirect-login", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    // A plain redirect to another host is refused before anything is asked.
    assert!(stderr.contains("redirect"), "{stderr}");

    // A registry whose token realm is plain HTTP on another port: neither
    // a pull nor a push sends the login there.
    let realm = FakeRegistry::start("127.0.0.1", |_| Answer::ok("application/json", br#"{"token":"t"}"#.to_vec()));
    let realm_addr = realm.addr;
    let registry = FakeRegistry::start("127.0.0.1", move |_| Answer::Full {
        status: 401,
        headers: vec![("WWW-Authenticate".into(), format!(r#"Bearer realm="http://{realm_addr}/token""#))],
        body: Vec::new(),
    });
    let reference = format!("oci://{}/team/echo:v1", registry.addr);
    let logins = logins_for("realm-login", registry.addr);
    let args = [reference.as_str(), "--listen", "127.0.0.1:0", "--registry-auth", &logins];
    let (code, stderr) = fails(&args, &fresh_cache("realm-login", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("token realm"), "{stderr}");
    let out = std::process::Command::new(portcullis_tests::portcullis_bin())
        .args(["push", guest("echo").to_str().unwrap(), &reference, "--registry-auth", &logins])
        .env("PORTCULLIS_CACHE_DIR", fresh_cache("realm-login", "push"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("token realm"), "{stderr}");
    assert_eq!(realm.asked(), Vec::<String>::new(), "the plain realm on another port was asked");
    assert!(elsewhere.asked().iter().all(|target| !target.contains("token")), "{:?}", elsewhere.asked());
}
