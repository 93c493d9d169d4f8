//! What running one service takes ([`ServiceSpec`]): its component,
//! listeners, environment, instance mode, grants and limits. The CLI and a
//! manifest fill it in through `settings::ServiceSettings` (see
//! `manifest`); tests and the bench fill it in directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::limits::Limits;
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
    /// One instance per worker thread (`--workers`), each serving the
    /// connections its worker accepts: state per worker, for services that
    /// keep none across connections (echo, an HTTP responder, a proxy); a
    /// trap ends only that worker's instance and its connections.
    PerWorker,
}

impl Instances {
    /// The mode as `--instances` and the manifest spell it.
    pub fn flag(self) -> &'static str {
        match self {
            Instances::Shared => "shared",
            Instances::PerConnection => "per-connection",
            Instances::PerWorker => "per-worker",
        }
    }
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
