//! Deploying: the container image `cargo xtask image` builds (which `cargo
//! xtask test` builds first), run as its entrypoint says, and the
//! Kubernetes manifests under `deploy/kubernetes`, checked against the
//! Kubernetes schemas (`kubernetes-validate --strict`, from PyPI) and
//! against each other and the image.
//!
//! `podman run` cannot start a container on these machines (crun is refused
//! `setrlimit RLIMIT_NPROC`), so the image is mounted (`buildah mount`) and
//! its entrypoint run under `chroot` as the image's user: that still shows
//! the image holds everything the binary needs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_tests::{connect_when_listening, root, round_trip};

const IMAGE: &str = "localhost/portcullis:latest";

fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah runs (apt-get install buildah)");
    assert!(out.status.success(), "buildah {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The image's container, mounted, with `/proc` bound inside; undone when dropped.
struct Mounted {
    container: String,
    root: PathBuf,
}

impl Mounted {
    fn new() -> Mounted {
        let container = buildah(&["from", IMAGE]);
        let root = PathBuf::from(buildah(&["mount", &container]));
        let proc_ = root.join("proc");
        assert!(Command::new("mount").args(["--bind", "/proc"]).arg(&proc_).status().unwrap().success());
        Mounted { container, root }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root.join("proc")).status();
        for step in ["umount", "rm"] {
            let _ = Command::new("buildah")
                .args(["--storage-driver", "vfs", step, &self.container])
                .stdout(Stdio::null())
                .status();
        }
    }
}

#[tokio::test]
async fn the_images_entrypoint_serves_the_echo_example_as_its_user() {
    let config: serde_json::Value = {
        let text = buildah(&["inspect", "--type", "image", IMAGE]);
        let inspected: serde_json::Value = serde_json::from_str(&text).unwrap();
        inspected["OCIv1"]["config"].clone()
    };
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone()).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/portcullis"]);
    let user = config["User"].as_str().unwrap().to_string();
    assert_eq!(user, "65532:65532", "not root");
    assert_eq!(config["StopSignal"], "SIGTERM");
    let env: Vec<String> = serde_json::from_value(config["Env"].clone()).unwrap();
    assert!(env.contains(&"PORTCULLIS_CACHE_DIR=/var/cache/portcullis".to_string()), "{env:?}");
    assert!(config["Volumes"].get("/var/cache/portcullis").is_some(), "the compile cache is a volume: {config}");

    let mounted = Mounted::new();
    let mut child = Command::new("/usr/sbin/chroot")
        .arg(format!("--userspec={user}"))
        .arg(&mounted.root)
        .args(&entrypoint)
        .args(["run", "/usr/share/portcullis/examples/echo.wasm", "--listen", "127.0.0.1:0"])
        .env_clear()
        .envs(env.iter().filter_map(|kv| kv.split_once('=')))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chroot runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("no `listening on` line: {line:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let mut client = connect_when_listening(addr).await;
    assert_eq!(round_trip(&mut client, b"hello from the image\n").await, b"hello from the image\n");
    drop(client);
    // The CA roots are the public ones only: Mozilla's, as Debian has them
    // (never a bundle with private CAs the build machine added).
    let bundle = std::fs::read_to_string(mounted.root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let public = std::fs::read_dir("/usr/share/ca-certificates/mozilla").unwrap().count();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), public, "the image's CA bundle");
    // The cache the image's user wrote, in its volume's folder.
    let cached = std::fs::read_dir(mounted.root.join("var/cache/portcullis")).unwrap().count();
    assert!(cached > 0, "the compiled component was cached");
    // SIGTERM, as Kubernetes stops a container: a clean exit.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "still running 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// Every Kubernetes resource file under `deploy/kubernetes`.
fn resources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for variant in ["base", "stateful"] {
        let dir = root().join("deploy/kubernetes").join(variant);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let files: Vec<PathBuf> = resources().into_iter().filter(|f| !f.ends_with("kustomization.yaml")).collect();
    assert!(files.len() >= 9, "{files:?}");
    // The oldest Kubernetes the docs name (the preStop `sleep` action), and
    // the newest this validator knows.
    for version in [Some("1.30.0"), None] {
        let mut validate = Command::new("python3");
        validate.args(["-m", "kubernetes_validate", "--strict", "--quiet"]);
        if let Some(version) = version {
            validate.args(["-k", version]);
        }
        let out = validate.args(&files).output().expect("kubernetes-validate runs (pip install kubernetes-validate)");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{version:?}: {stdout}{stderr}");
    }
}

/// What `tests/deploy/facts.py` reads out of a variant's YAML (PyYAML comes with
/// kubernetes-validate).
fn facts(variant: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(root().join("tests/deploy/facts.py"))
        .arg(root().join("deploy/kubernetes").join(variant))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_manifests_agree_with_each_other_the_image_and_portcullis() {
    let image = root().join("target/image/rootfs");
    for variant in ["base", "stateful"] {
        let facts = facts(variant);
        // Kustomize lists every file, and every listed file is there.
        let listed: Vec<String> = serde_json::from_value(facts["kustomization"].clone()).unwrap();
        let dir = root().join("deploy/kubernetes").join(variant);
        for file in resources().iter().filter(|f| f.parent() == Some(dir.as_path())) {
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(name == "kustomization.yaml" || listed.iter().any(|l| l == name), "{variant}: {name} not listed");
        }
        // The manifest in the ConfigMap is one portcullis reads, and its
        // components are in the image.
        let manifest_text = facts["manifest"].as_str().unwrap();
        let scratch = root().join("target/test-scratch").join(format!("deploy-{variant}"));
        std::fs::create_dir_all(&scratch).unwrap();
        let manifest = scratch.join("portcullis.toml");
        std::fs::write(&manifest, manifest_text).unwrap();
        let read = portcullis::manifest::load_manifest_file(&manifest).unwrap();
        let admin = read.admin.expect("an [admin] listen for the probes");
        for spec in &read.services {
            let inside = spec.component.strip_prefix("/").unwrap();
            assert!(image.join(inside).is_file(), "{variant}: {} is not in the image", spec.component.display());
        }
        // Each port the services listen on is a container port, in the
        // Service, and let in by the NetworkPolicy; the probes ask the admin port.
        let container_ports: Vec<u64> = serde_json::from_value(facts["container_ports"].clone()).unwrap();
        let service_ports: Vec<u64> = serde_json::from_value(facts["service_ports"].clone()).unwrap();
        let allowed: Vec<u64> = serde_json::from_value(facts["ingress_ports"].clone()).unwrap();
        for spec in &read.services {
            for listen in &spec.listen {
                let port = listen.addr.port() as u64;
                for (what, ports) in
                    [("container", &container_ports), ("Service", &service_ports), ("ingress", &allowed)]
                {
                    assert!(
                        ports.contains(&port),
                        "{variant}: {} port {port} missing from the {what} ports",
                        spec.name
                    );
                }
            }
        }
        assert_eq!(facts["probe_port"].as_u64(), Some(admin.port() as u64), "{variant}: probes and [admin]");
        assert!(allowed.contains(&(admin.port() as u64)), "{variant}: the admin port is let in");
        // The stop: Kubernetes' grace covers the preStop pause and
        // portcullis's own (gone 6 s after SIGTERM at the latest).
        let grace = facts["termination_grace"].as_u64().unwrap();
        let pause = facts["pre_stop_sleep"].as_u64().unwrap_or(0);
        assert!(grace >= pause + 6, "{variant}: terminationGracePeriodSeconds {grace} < {pause} + 6");
        // No egress where no service is granted any.
        let grants = read.services.iter().any(|s| !s.grants.connect.is_empty());
        assert_eq!(
            facts["egress_rules"].as_u64(),
            Some(if grants { 1 } else { 0 }),
            "{variant}: egress mirrors the grants"
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }
}
