//! A manifest (`portcullis.toml`) runs several services in one process:
//!
//! ```toml
//! [[service]]
//! name = "proxy"                                # optional; default: the file name
//! component = "tcp_proxy.wasm"                  # relative to the manifest's folder
//! listen = ["127.0.0.1:7000"]
//! env = { UPSTREAM = "db.internal:5432" }
//! instances = "shared"                          # or "per-connection"
//! read-timeout-ms = 300000
//! max-connections = 1000                        # optional; more wait in the backlog
//! max-connections-per-ip = 16                   # optional; more are closed at once
//! idle-timeout-ms = 300000                      # 0: never
//! write-timeout-ms = 300000                     # 0: never
//! max-memory = "128MiB"                         # per instance
//! max-sockets = 1024                            # per instance
//! callback-cpu-ms = 2000
//! allow-connect = ["tcp://db.internal:5432"]
//! allow-listen = []
//! allow-udp = []
//! block-private = false
//!
//! [admin]                                       # optional: off unless asked
//! listen = "127.0.0.1:9901"                     # /metrics, /healthz, /readyz
//! ```
//!
//! Unknown keys are errors (a misspelt grant must not silently grant nothing).
//! The keys are the `portcullis run` flags without their `--` (one type,
//! `settings::ServiceSettings`, is both).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::config::ServiceSpec;
use crate::settings::ServiceSettings;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// Process-wide, as `--workers` (which overrides it).
    workers: Option<usize>,
    /// Process-wide, as `--admin` (which overrides it).
    admin: Option<AdminTable>,
    service: Vec<ServiceSettings>,
}

/// `[admin]`: the admin endpoint (see `admin`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminTable {
    listen: std::net::SocketAddr,
}

/// What a manifest says: its services and the process-wide settings.
#[derive(Debug)]
pub struct ManifestFile {
    pub services: Vec<ServiceSpec>,
    /// `workers = N`: worker threads (see `workers`); `None`: not said.
    pub workers: Option<usize>,
    /// `[admin] listen = "ADDR:PORT"`: where the admin endpoint listens.
    pub admin: Option<std::net::SocketAddr>,
}

/// Reads a manifest's services; see [`load_manifest_file`].
pub fn load_manifest(path: &Path) -> Result<Vec<ServiceSpec>> {
    Ok(load_manifest_file(path)?.services)
}

/// Reads a manifest. Component paths are relative to the manifest's folder;
/// every setting and grant is checked here, so a bad one stops the start-up.
pub fn load_manifest_file(path: &Path) -> Result<ManifestFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
    if manifest.service.is_empty() {
        bail!("{}: no [[service]] in the manifest", path.display());
    }
    if let Some(workers) = manifest.workers.filter(|n| !(1..=crate::workers::MAX_WORKERS).contains(n)) {
        bail!("{}: workers = {workers}: give 1 to {}", path.display(), crate::workers::MAX_WORKERS);
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut specs: Vec<ServiceSpec> = Vec::new();
    for entry in manifest.service {
        let name = entry.service_name();
        if specs.iter().any(|s| s.name == name) {
            bail!("{}: two services are named `{name}`", path.display());
        }
        let spec =
            entry.into_spec(Some(base)).map_err(|e| anyhow::anyhow!("{}: service `{name}`: {e}", path.display()))?;
        spec.grants.policy().with_context(|| format!("{}: service `{}`", path.display(), spec.name))?;
        specs.push(spec);
    }
    Ok(ManifestFile { services: specs, workers: manifest.workers, admin: manifest.admin.map(|a| a.listen) })
}

/// toml's errors span several lines (with a caret); an operator gets one.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::Instances;
    use crate::limits::Limits;

    /// A manifest in a directory of its own, removed again when dropped.
    struct Manifest {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Drop for Manifest {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn write(name: &str, text: &str) -> Manifest {
        let dir = std::env::temp_dir().join(format!("portcullis-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("portcullis.toml");
        std::fs::write(&path, text).unwrap();
        Manifest { dir, path }
    }

    #[test]
    fn a_manifest_with_two_services() {
        let manifest = write(
            "two",
            r#"
            [[service]]
            component = "echo.wasm"
            listen = ["127.0.0.1:7000"]

            [[service]]
            name = "proxy"
            component = "sub/proxy.wasm"
            listen = ["127.0.0.1:7001", "[::1]:7001"]
            env = { UPSTREAM = "db.internal:5432" }
            read-timeout-ms = 5000
            instances = "per-connection"
            max-connections = 200
            max-memory = "64MiB"
            max-sockets = 16
            callback-cpu-ms = 500
            max-connections-per-ip = 4
            idle-timeout-ms = 0
            write-timeout-ms = 2500
            allow-connect = ["tcp://db.internal:5432"]
            block-private = true
            "#,
        );
        let path = &manifest.path;
        let specs = load_manifest(path).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "echo.wasm");
        assert_eq!(specs[0].component, path.parent().unwrap().join("echo.wasm"));
        assert_eq!(specs[0].limits, Limits::default());
        assert_eq!(specs[1].name, "proxy");
        assert_eq!(specs[1].listen.len(), 2);
        assert_eq!(specs[1].env, vec![("UPSTREAM".to_string(), "db.internal:5432".to_string())]);
        assert_eq!(specs[1].limits.read_timeout, Duration::from_millis(5000));
        assert_eq!(specs[1].limits.max_memory, 64 << 20);
        assert_eq!(specs[1].limits.max_sockets, 16);
        assert_eq!(specs[1].limits.callback_cpu, Duration::from_millis(500));
        assert_eq!(specs[1].limits.max_connections_per_ip, NonZeroUsize::new(4));
        assert_eq!(specs[1].limits.idle_timeout, None, "0 turns it off");
        assert_eq!(specs[1].limits.write_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(specs[0].limits.idle_timeout, Some(crate::limits::DEFAULT_IDLE_TIMEOUT));
        assert_eq!(specs[0].instances, Instances::Shared);
        assert_eq!(specs[1].instances, Instances::PerConnection);
        assert_eq!((specs[0].limits.max_connections, specs[1].limits.max_connections), (None, NonZeroUsize::new(200)));
        assert_eq!(specs[1].grants.connect, vec!["tcp://db.internal:5432"]);
        assert!(specs[1].grants.block_private);
    }

    #[test]
    fn workers_is_a_process_wide_key() {
        let manifest =
            write("workers", "workers = 3\n[[service]]\ncomponent = \"a.wasm\"\ninstances = \"per-worker\"\n");
        let file = load_manifest_file(&manifest.path).unwrap();
        assert_eq!((file.workers, file.services[0].instances), (Some(3), Instances::PerWorker));
        let none = write("no-workers", "workers = 0\n[[service]]\ncomponent = \"a.wasm\"\n");
        assert!(load_manifest_file(&none.path).unwrap_err().to_string().contains("workers = 0: give 1 to 1024"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let manifest = write("unknown", "[[service]]\ncomponent = \"a.wasm\"\nallow-conect = [\"tcp://x:1\"]\n");
        let err = load_manifest(&manifest.path).unwrap_err().to_string();
        assert!(err.contains("unknown field `allow-conect`"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn a_limit_of_zero_connections_is_an_error() {
        let manifest = write("zero", "[[service]]\nname = \"db\"\ncomponent = \"a.wasm\"\nmax-connections = 0\n");
        let err = load_manifest(&manifest.path).unwrap_err().to_string();
        assert!(err.contains("service `db`: max-connections must be at least 1"), "{err}");
    }

    #[test]
    fn a_bad_size_is_an_error_naming_the_key() {
        let manifest =
            write("size", "[[service]]\nname = \"db\"\ncomponent = \"a.wasm\"\nmax-memory = \"64 parsecs\"\n");
        let err = load_manifest(&manifest.path).unwrap_err().to_string();
        // toml names the line and shows it: `4 | max-memory = "64 parsecs"`.
        assert!(err.contains("line 4") && err.contains("max-memory = \"64 parsecs\""), "{err}");
        assert!(err.contains("`64 parsecs` is not a size"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn bad_grants_are_errors_naming_the_service() {
        let manifest =
            write("bad-grant", "[[service]]\nname = \"db\"\ncomponent = \"a.wasm\"\nallow-udp = [\"udp://x:99999\"]\n");
        let err = format!("{:#}", load_manifest(&manifest.path).unwrap_err());
        assert!(err.contains("service `db`"), "{err}");
        assert!(err.contains("bad grant `udp://x:99999`: port `99999` is not a number"), "{err}");
    }
}
