//! Components from an OCI registry: `portcullis push` to a real registry
//! (Debian's `docker-registry`, started here on loopback), then `portcullis
//! run oci://...` by tag and by digest, from a manifest, from the cache with
//! the registry down; a blob tampered with in the registry's storage is
//! refused and nothing runs; an image index, a registry on `[::1]`.
//! `hostile.rs`: registries that misbehave, and one that asks for a token.

mod hostile;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{HostProcess, connect_when_listening, guest, portcullis_bin, root, round_trip};

/// A registry on 127.0.0.1, its storage in the test's scratch folder;
/// stopped when dropped.
struct Registry {
    child: Child,
    addr: SocketAddr,
    storage: PathBuf,
}

impl Registry {
    fn start(test: &str) -> Registry {
        Registry::start_on(test, "127.0.0.1")
    }

    /// A registry listening on `ip` (`127.0.0.1`, `::1`).
    fn start_on(test: &str, ip: &str) -> Registry {
        Registry::start_with(test, ip, "")
    }

    /// A registry that asks for a login: alice, password `s3cret`.
    fn start_private(test: &str) -> Registry {
        let htpasswd = scratch(test).join("htpasswd");
        std::fs::create_dir_all(htpasswd.parent().unwrap()).unwrap();
        // bcrypt of `s3cret` (the registry takes bcrypt only).
        std::fs::write(&htpasswd, "alice:$2b$05$abcdefghijklmnopqrstuuLK7U1u6pVRmL7L1BBM2aS35PSZnDXlK\n").unwrap();
        let auth = format!("auth:\n  htpasswd:\n    realm: private\n    path: {}\n", htpasswd.display());
        Registry::start_with(test, "127.0.0.1", &auth)
    }

    /// A registry on `ip` with `extra` in its config.
    fn start_with(test: &str, ip: &str, extra: &str) -> Registry {
        let dir = scratch(test).join("registry");
        // A registry of its own each run (a blob an earlier run tampered
        // with must not be taken for the pushed one).
        let _ = std::fs::remove_dir_all(&dir);
        let storage = dir.join("data");
        std::fs::create_dir_all(&storage).unwrap();
        let addr = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: \"{addr}\"\n{extra}",
            storage.display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("docker-registry runs (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr, storage }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn scratch(test: &str) -> PathBuf {
    root().join("target/test-scratch").join(format!("oci-{test}"))
}

/// A cache folder of its own for `name`, empty.
fn fresh_cache(test: &str, name: &str) -> PathBuf {
    let cache = scratch(test).join(name);
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).unwrap();
    cache
}

/// `portcullis push FILE REFERENCE`: the pinned reference it printed.
fn push(file: &Path, reference: &str, cache: &Path) -> String {
    push_env(file, reference, cache, &[])
}

/// [`push`] with `env` set for it.
fn push_env(file: &Path, reference: &str, cache: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(portcullis_bin())
        .arg("push")
        .arg(file)
        .arg(reference)
        .env("PORTCULLIS_CACHE_DIR", cache)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "push failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let pinned = stdout.trim().strip_prefix("pushed ").unwrap_or_else(|| panic!("not `pushed ...`: {stdout}"));
    assert!(pinned.ends_with(')') && pinned.contains(" (tag "), "the tag is named: {stdout}");
    pinned.split_whitespace().next().unwrap().to_string()
}

/// `portcullis run ARGS`' outcome when it does not serve: its code and stderr.
fn fails(args: &[&str], cache: &Path) -> (Option<i32>, String) {
    let out = Command::new(portcullis_bin())
        .arg("run")
        .args(args)
        .env("PORTCULLIS_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "it served: {stdout}");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn serves_echo(host: &mut HostProcess) {
    let addr = host.listening_on();
    let mut client = connect_when_listening(addr).await;
    assert_eq!(round_trip(&mut client, b"from the registry\n").await, b"from the registry\n");
}

#[tokio::test]
async fn a_pushed_component_runs_by_tag_and_by_digest() {
    let registry = Registry::start("tag-digest");
    let reference = format!("oci://{}/portcullis/echo:v1", registry.addr);
    let pinned = push(&guest("echo"), &reference, &fresh_cache("tag-digest", "push"));
    assert!(pinned.starts_with(&format!("oci://{}/portcullis/echo@sha256:", registry.addr)), "{pinned}");
    let digest = pinned.rsplit_once('@').unwrap().1.to_string();

    let by_tag = fresh_cache("tag-digest", "tag");
    let mut host = HostProcess::start_args("oci-tag", &["run", &reference, "--listen", "127.0.0.1:0"], &by_tag);
    serves_echo(&mut host).await;
    assert!(host.log().contains(&format!("runs {reference} ({digest})")), "the digest it ran: {}", host.log());
    drop(host);
    // The digest that was logged runs from the cache, pinned, with no registry asked.
    let args = ["run", &pinned, "--listen", "127.0.0.1:0", "--pull", "never"];
    let mut host = HostProcess::start_args("oci-logged-digest", &args, &by_tag);
    serves_echo(&mut host).await;
    drop(host);
    // `inspect` reads it from the cache.
    let out = Command::new(portcullis_bin())
        .args(["inspect", &reference])
        .env("PORTCULLIS_CACHE_DIR", &by_tag)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && report.contains(&digest) && report.contains("export"), "{out:?}");

    // A copy in the cache changed on disk is pulled again, not run.
    let blob = walk(&by_tag.join("oci/blobs")).into_iter().next().expect("the cached component");
    std::fs::write(&blob, std::fs::read(guest("http-hello")).unwrap()).unwrap();
    let args = ["run", &reference, "--listen", "127.0.0.1:0", "--pull", "always"];
    let mut host = HostProcess::start_args("oci-repaired", &args, &by_tag);
    serves_echo(&mut host).await;
    drop(host);

    let by_digest = fresh_cache("tag-digest", "digest");
    let mut host = HostProcess::start_args("oci-digest", &["run", &pinned, "--listen", "127.0.0.1:0"], &by_digest);
    serves_echo(&mut host).await;

    // A manifest names it the same way; its services' pulls run at once.
    let manifest = scratch("tag-digest").join("portcullis.toml");
    let service = |name: &str, component: &str| {
        format!("[[service]]\nname = \"{name}\"\ncomponent = \"{component}\"\nlisten = [\"127.0.0.1:0\"]\n")
    };
    std::fs::write(&manifest, service("pinned", &pinned) + &service("tagged", &reference)).unwrap();
    let manifest = manifest.to_str().unwrap();
    let mut host =
        HostProcess::start_args("oci-manifest", &["run", "--manifest", manifest, "--pull", "always"], &by_digest);
    for _ in ["pinned", "tagged"] {
        let line = host.stdout_line();
        let addr: SocketAddr = line.rsplit_once("listening on ").unwrap().1.parse().unwrap();
        let mut client = connect_when_listening(addr).await;
        assert_eq!(round_trip(&mut client, b"manifest\n").await, b"manifest\n");
    }
    let log = host.log();
    assert!(
        log.contains(&format!("runs {pinned} ({digest})")) && log.contains(&format!("runs {reference} ({digest})")),
        "{log}"
    );
}

#[tokio::test]
async fn a_blob_tampered_with_in_the_registry_is_refused_and_nothing_runs() {
    let registry = Registry::start("tampered");
    let reference = format!("oci://{}/portcullis/echo:v1", registry.addr);
    push(&guest("echo"), &reference, &fresh_cache("tampered", "push"));
    // The component's bytes, as the registry stores them (by their digest).
    let component = std::fs::read(guest("echo")).unwrap();
    let blobs: Vec<PathBuf> = walk(&registry.storage).into_iter().filter(|p| p.ends_with("data")).collect();
    let layer = blobs.iter().find(|p| std::fs::read(p).unwrap() == component).expect("the layer's blob");
    let mut bytes = component.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(layer, bytes).unwrap();
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("tampered", "run"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("pulling") && stderr.to_lowercase().contains("digest"), "{stderr}");
}

#[tokio::test]
async fn with_the_registry_down_the_cache_serves_and_a_pull_fails_clearly() {
    let mut registry = Registry::start("down");
    let reference = format!("oci://{}/portcullis/echo:v1", registry.addr);
    push(&guest("echo"), &reference, &fresh_cache("down", "push"));
    let cache = fresh_cache("down", "run");
    let mut host = HostProcess::start_args("oci-down-first", &["run", &reference, "--listen", "127.0.0.1:0"], &cache);
    serves_echo(&mut host).await;
    drop(host);
    registry.stop();
    // Pulled before: `--pull missing` (the default) needs no registry.
    let mut host = HostProcess::start_args("oci-down-cached", &["run", &reference, "--listen", "127.0.0.1:0"], &cache);
    serves_echo(&mut host).await;
    drop(host);
    // A copy in the cache changed on disk is not run: with no registry to
    // pull it from again, the start fails.
    let blob = walk(&cache.join("oci/blobs")).into_iter().next().expect("the cached component");
    let kept = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, std::fs::read(guest("http-hello")).unwrap()).unwrap();
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &cache);
    assert_eq!(code, Some(1), "{stderr}");
    std::fs::write(&blob, kept).unwrap();
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0", "--pull", "always"], &cache);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("pulling {reference}")), "{stderr}");
    let (_, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0", "--pull", "never"], &fresh_cache("down", "empty"));
    assert!(stderr.contains("has not been pulled into the cache") && stderr.contains("--pull never"), "{stderr}");
}

/// The manifest `reference` (`oci://HOST/REPO:TAG`) names, as the registry sends it.
fn manifest_of(registry: &Registry, repository_and_tag: &str) -> Vec<u8> {
    let (repository, tag) = repository_and_tag.split_once(':').unwrap();
    let url = format!("http://{}/v2/{repository}/manifests/{tag}", registry.addr);
    let out = Command::new("curl")
        .args(["-sf", "-H", "Accept: application/vnd.oci.image.manifest.v1+json", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {url}: {out:?}");
    out.stdout
}

#[tokio::test]
async fn an_image_index_runs_its_wasm_entry_also_pinned_and_from_the_cache() {
    let mut registry = Registry::start("index");
    let base = format!("oci://{}/portcullis/echo", registry.addr);
    let cache = fresh_cache("index", "push");
    push(&guest("echo"), &format!("{base}:wasm"), &cache);
    push(&guest("http-hello"), &format!("{base}:other"), &cache);
    // An index as multi-platform publishers write one: the wasm entry is echo.
    let entry = |tag: &str, os: &str, architecture: &str| {
        let manifest = manifest_of(&registry, &format!("portcullis/echo:{tag}"));
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest_of(&manifest),
            "size": manifest.len(),
            "platform": {"os": os, "architecture": architecture},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("other", "linux", "amd64"), entry("wasm", "wasip2", "wasm")],
    })
    .to_string();
    put_manifest(&registry, "multi", "application/vnd.oci.image.index.v1+json", &index);
    let index_digest = digest_of(index.as_bytes());

    let cache = fresh_cache("index", "run");
    let by_tag = format!("{base}:multi");
    let mut host = HostProcess::start_args("oci-index", &["run", &by_tag, "--listen", "127.0.0.1:0"], &cache);
    serves_echo(&mut host).await;
    assert!(host.log().contains(&format!("runs {by_tag} ({index_digest})")), "{}", host.log());
    drop(host);

    let pinned = format!("{base}@{index_digest}");
    let mut host = HostProcess::start_args("oci-index-pinned", &["run", &pinned, "--listen", "127.0.0.1:0"], &cache);
    serves_echo(&mut host).await;
    drop(host);
    registry.stop();
    let args = ["run", &pinned, "--listen", "127.0.0.1:0", "--pull", "never"];
    let mut host = HostProcess::start_args("oci-index-never", &args, &cache);
    serves_echo(&mut host).await;
}

/// `body` put as the manifest `tag` of `portcullis/echo`, of `media_type`.
fn put_manifest(registry: &Registry, tag: &str, media_type: &str, body: &str) {
    let url = format!("http://{}/v2/portcullis/echo/manifests/{tag}", registry.addr);
    let file = scratch("put").join(format!("{tag}.json"));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H", &format!("Content-Type: {media_type}")])
        .args(["--data-binary", &format!("@{}", file.display()), &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "the registry took the manifest {tag}: {out:?}");
}

#[tokio::test]
async fn a_manifest_as_large_as_registries_take_is_pulled() {
    // The OCI spec asks registries to take manifests of at least 4 MiB:
    // one just under that (annotations make it so) is an honest artifact.
    let registry = Registry::start("big-manifest");
    let base = format!("oci://{}/portcullis/echo", registry.addr);
    push(&guest("echo"), &format!("{base}:v1"), &fresh_cache("big-manifest", "push"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&manifest_of(&registry, "portcullis/echo:v1")).unwrap();
    manifest["annotations"] = serde_json::json!({"org.example.notes": "n".repeat((4 << 20) - 4096)});
    let big = manifest.to_string();
    put_manifest(&registry, "big", "application/vnd.oci.image.manifest.v1+json", &big);
    let by_tag = format!("{base}:big");
    let cache = fresh_cache("big-manifest", "run");
    let mut host = HostProcess::start_args("oci-big-manifest", &["run", &by_tag, "--listen", "127.0.0.1:0"], &cache);
    serves_echo(&mut host).await;
    assert!(host.log().contains(&digest_of(big.as_bytes())), "{}", host.log());
}

#[tokio::test]
async fn a_reload_follows_a_moved_tag_and_keeps_the_cached_copy_when_the_registry_is_down() {
    let mut registry = Registry::start("moved-tag");
    let reference = format!("oci://{}/portcullis/service:live", registry.addr);
    let cache = fresh_cache("moved-tag", "push");
    // The same bytes pushed twice, at one SOURCE_DATE_EPOCH, have one digest.
    let epoch = [("SOURCE_DATE_EPOCH", "1767225600")];
    let first = push_env(&guest("echo"), &reference, &cache, &epoch);
    assert_eq!(push_env(&guest("echo"), &reference, &cache, &epoch), first, "a re-push moved the digest");

    let manifest = scratch("moved-tag").join("portcullis.toml");
    std::fs::write(&manifest, format!("[[service]]\ncomponent = \"{reference}\"\nlisten = [\"127.0.0.1:0\"]\n"))
        .unwrap();
    let run = fresh_cache("moved-tag", "run");
    let mut host = HostProcess::start_args("oci-moved-tag", &["run", "--manifest", manifest.to_str().unwrap()], &run);
    let line = host.stdout_line();
    let addr: SocketAddr = line.rsplit_once("listening on ").unwrap().1.parse().unwrap();
    let mut client = connect_when_listening(addr).await;
    assert_eq!(round_trip(&mut client, b"v1\n").await, b"v1\n");

    // The same bytes pushed again (a new `created`, so a new manifest
    // digest) are no change: the instances go on.
    push_env(&guest("echo"), &reference, &cache, &[("SOURCE_DATE_EPOCH", "1767312000")]);
    hang_up(&host);
    let log = host.log_with("reload: no service changed", 1, Duration::from_secs(60));
    assert!(log.contains("reload: no service changed") && !log.contains("reloaded: new connections"), "{log}");

    // The tag moves to http-hello; a reload (with the default --pull missing) follows it.
    let moved = push(&guest("http-hello"), &reference, &cache);
    let moved_digest = moved.rsplit_once('@').unwrap().1;
    hang_up(&host);
    let log = host.log_with("reloaded: new connections", 1, Duration::from_secs(60));
    assert!(log.contains(&format!("runs {reference} ({moved_digest})")), "{log}");
    let mut client = connect_when_listening(addr).await;
    let reply = round_trip(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));

    // The registry gone: a reload keeps the cached copy, and says why.
    registry.stop();
    hang_up(&host);
    let log = host.log_with("could not be pulled", 1, Duration::from_secs(60));
    assert!(log.contains(&format!("its copy in the cache ({moved_digest}) goes on")), "{log}");
    let log = host.log_with("reload: no service changed", 2, Duration::from_secs(30));
    assert_eq!(log.matches("reload: no service changed").count(), 2, "{log}");
    let mut client = connect_when_listening(addr).await;
    let reply = round_trip(&mut client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&reply));
}

#[tokio::test]
async fn a_private_registry_is_pushed_to_and_pulled_from_with_a_login() {
    let registry = Registry::start_private("private");
    let reference = format!("oci://{}/team/echo:v1", registry.addr);
    // As `docker login` writes it: base64 of alice:s3cret.
    let logins = scratch("private").join("auth.json");
    let file = format!(r#"{{"auths": {{"{}": {{"auth": "YWxpY2U6czNjcmV0"}}}}}}"#, registry.addr);
    std::fs::write(&logins, file).unwrap();
    let logins = logins.to_str().unwrap();

    // Without the login, a clear word of what is missing.
    let (code, stderr) = fails(&[&reference, "--listen", "127.0.0.1:0"], &fresh_cache("private", "anonymous"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("asks for credentials") && stderr.contains("--registry-auth"), "{stderr}");

    push_env(&guest("echo"), &reference, &fresh_cache("private", "push"), &[("REGISTRY_AUTH_FILE", logins)]);
    let cache = fresh_cache("private", "run");
    let args = ["run", &reference, "--listen", "127.0.0.1:0", "--registry-auth", logins];
    let mut host = HostProcess::start_args("oci-private", &args, &cache);
    serves_echo(&mut host).await;
    assert!(!host.log().contains("s3cret") && !host.log().contains("YWxpY2U6czNjcmV0"), "{}", host.log());

    // A wrong password is refused, and said to be.
    let wrong = scratch("private").join("wrong.json");
    std::fs::write(
        &wrong,
        format!(r#"{{"auths": {{"{}": {{"username": "alice", "password": "nope"}}}}}}"#, registry.addr),
    )
    .unwrap();
    let args = [reference.as_str(), "--listen", "127.0.0.1:0", "--registry-auth", wrong.to_str().unwrap()];
    let (code, stderr) = fails(&args, &fresh_cache("private", "wrong"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refused the login"), "{stderr}");
    assert!(!stderr.contains("nope"), "{stderr}");
}

/// `kill -HUP`: a reload.
fn hang_up(host: &HostProcess) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(host.pid() as i32, libc::SIGHUP) };
}

#[tokio::test]
async fn a_registry_on_ipv6_loopback_is_reached_directly_whatever_the_proxy() {
    let registry = Registry::start_on("ipv6", "::1");
    assert!(registry.addr.is_ipv6());
    let reference = format!("oci://{}/portcullis/echo:v1", registry.addr);
    assert!(reference.starts_with("oci://[::1]:"), "{reference}");
    // A proxy that is not there: a loopback registry never goes through one,
    // to push or to pull.
    let proxy = [
        ("HTTP_PROXY", "http://127.0.0.1:9"),
        ("http_proxy", "http://127.0.0.1:9"),
        ("ALL_PROXY", "http://127.0.0.1:9"),
    ];
    push_env(&guest("echo"), &reference, &fresh_cache("ipv6", "push"), &proxy);
    let cache = fresh_cache("ipv6", "run");
    let mut host =
        HostProcess::start_args_env("oci-ipv6", &["run", &reference, "--listen", "127.0.0.1:0"], &cache, &proxy);
    serves_echo(&mut host).await;
}

fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[test]
fn only_components_are_pushed_and_references_are_checked() {
    let cache = fresh_cache("refused", "push");
    let text = scratch("refused").join("notes.txt");
    std::fs::write(&text, "not wasm").unwrap();
    let out = Command::new(portcullis_bin())
        .args(["push", text.to_str().unwrap(), "oci://127.0.0.1:1/x/y:z"])
        .env("PORTCULLIS_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a WebAssembly component"), "{out:?}");
    let (_, stderr) = fails(&["oci://echo", "--listen", "127.0.0.1:0"], &cache);
    assert!(stderr.contains("give the registry and the repository"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
