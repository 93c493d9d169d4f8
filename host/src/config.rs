//! What the operator decides about a service, from CLI flags or a manifest.
//!
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
//! ```
//!
//! Unknown keys are errors (a misspelt grant must not silently grant nothing).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::limits::{self, Limits};
use crate::policy::Policy;

/// Everything needed to run one service: what the CLI flags, a manifest
/// entry, the tests and the bench all fill in. `ServiceSpec::new` gives the
/// documented defaults (no listener, no grants, one shared instance, the
/// default [`Limits`]).
///
/// ```
/// use portcullis::config::ServiceSpec;
/// let mut spec = ServiceSpec::new("echo.wasm");
/// spec.limits.max_memory = 64 << 20;
/// assert_eq!(spec.name, "echo.wasm");
/// ```
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// For logs and messages.
    pub name: String,
    pub component: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub env: Vec<(String, String)>,
    pub instances: Instances,
    pub grants: Grants,
    /// Every bound of the service (time-outs, connections, memory, sockets, CPU).
    pub limits: Limits,
}

impl ServiceSpec {
    /// A service of `component`, named after its file, with every default.
    pub fn new(component: impl Into<PathBuf>) -> Self {
        let component = component.into();
        ServiceSpec {
            name: default_name(&component),
            component,
            listen: Vec::new(),
            env: Vec::new(),
            instances: Instances::Shared,
            grants: Grants::default(),
            limits: Limits::default(),
        }
    }
}

/// Which instance serves an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    /// One instance serves every connection: module state is shared (as in
    /// Ballerina), and a trap closes every connection of the instance.
    #[default]
    Shared,
    /// A fresh instance for every accepted connection, dropped when it closes:
    /// nothing is shared between connections, and a trap ends only its own.
    PerConnection,
}

/// The grant strings of one service, as the operator wrote them.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub connect: Vec<String>,
    pub listen: Vec<String>,
    pub udp: Vec<String>,
    pub block_private: bool,
}

impl Grants {
    /// Parses the grants; a bad one is an error naming it and its bad part.
    pub fn policy(&self) -> Result<Policy> {
        Ok(Policy::parse(&self.connect, &self.listen, &self.udp, self.block_private)?)
    }
}

/// The name a component gets when none is given: its file name.
pub fn default_name(component: &Path) -> String {
    component.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "component".into())
}

/// A size in a manifest: bytes as a number, or text with a unit (`"64MiB"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => limits::parse_memory_size(&n.to_string()),
            Size::Text(text) => limits::parse_memory_size(text),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    service: Vec<ManifestService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ManifestService {
    name: Option<String>,
    component: PathBuf,
    #[serde(default)]
    listen: Vec<SocketAddr>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    read_timeout_ms: Option<u64>,
    #[serde(default)]
    instances: Instances,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    idle_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    max_memory: Option<Size>,
    max_sockets: Option<u32>,
    callback_cpu_ms: Option<u64>,
    #[serde(default)]
    allow_connect: Vec<String>,
    #[serde(default)]
    allow_listen: Vec<String>,
    #[serde(default)]
    allow_udp: Vec<String>,
    #[serde(default)]
    block_private: bool,
}

/// Reads a manifest. Component paths are relative to the manifest's folder;
/// every grant is parsed here, so a bad one stops the start-up.
pub fn load_manifest(path: &Path) -> Result<Vec<ServiceSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e.to_string())))?;
    if manifest.service.is_empty() {
        bail!("{}: no [[service]] in the manifest", path.display());
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut specs = Vec::new();
    for entry in manifest.service {
        let component = base.join(&entry.component);
        let name = entry.name.unwrap_or_else(|| default_name(&component));
        if specs.iter().any(|s: &ServiceSpec| s.name == name) {
            bail!("{}: two services are named `{name}`", path.display());
        }
        let wrong = |what: String| anyhow::anyhow!("{}: service `{name}`: {what}", path.display());
        let mut limits = Limits::default();
        // Read as plain numbers so that 0 gets these messages, not serde's.
        match entry.max_connections {
            Some(0) => return Err(wrong("max-connections must be at least 1".into())),
            n => limits.max_connections = n.and_then(NonZeroUsize::new),
        }
        match entry.max_connections_per_ip {
            Some(0) => return Err(wrong("max-connections-per-ip must be at least 1".into())),
            n => limits.max_connections_per_ip = n.and_then(NonZeroUsize::new),
        }
        if let Some(ms) = entry.idle_timeout_ms {
            limits.idle_timeout = limits::optional_timeout(ms);
        }
        if let Some(ms) = entry.write_timeout_ms {
            limits.write_timeout = limits::optional_timeout(ms);
        }
        if let Some(ms) = entry.read_timeout_ms {
            limits.read_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(size) = &entry.max_memory {
            limits.max_memory = size.bytes().map_err(|e| wrong(format!("max-memory: {e}")))?;
        }
        match entry.max_sockets {
            Some(0) => return Err(wrong("max-sockets must be at least 1".into())),
            Some(n) => limits.max_sockets = n,
            None => {}
        }
        match entry.callback_cpu_ms {
            Some(0) => return Err(wrong("callback-cpu-ms must be at least 1".into())),
            Some(ms) => limits.callback_cpu = Duration::from_millis(ms),
            None => {}
        }
        let spec = ServiceSpec {
            component,
            listen: entry.listen,
            env: entry.env.into_iter().collect(),
            instances: entry.instances,
            grants: Grants {
                connect: entry.allow_connect,
                listen: entry.allow_listen,
                udp: entry.allow_udp,
                block_private: entry.block_private,
            },
            limits,
            name,
        };
        spec.grants.policy().with_context(|| format!("{}: service `{}`", path.display(), spec.name))?;
        specs.push(spec);
    }
    Ok(specs)
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
    use super::*;

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
        assert!(err.contains("service `db`: max-memory: `64 parsecs` has an unknown unit"), "{err}");
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
