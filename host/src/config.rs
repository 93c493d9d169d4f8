//! What running one service takes ([`ServiceSpec`]): its component,
//! listeners, environment, instance mode, grants and limits. The CLI and a
//! manifest fill it in through `settings::ServiceSettings` (see
//! `manifest`); tests and the bench fill it in directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::limits::Limits;
use crate::net::tls::TlsSettings;
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
    pub listen: Vec<Listen>,
    pub env: Vec<(String, String)>,
    pub instances: Instances,
    pub grants: Grants,
    /// Every bound of the service (time-outs, connections, memory, sockets, CPU).
    pub limits: Limits,
    /// Its certificate for `tls://` listeners, and the roots its TLS
    /// clients are verified against.
    pub tls: TlsSettings,
    /// For a component pulled from a registry: its reference and the
    /// manifest digest (`oci://HOST/REPO:TAG (sha256:...)`), for the log.
    pub pulled: Option<String>,
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
            tls: TlsSettings::default(),
            pulled: None,
        }
    }

    /// The addresses it listens on, whatever their transport.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|l| l.addr).collect()
    }
}

/// What a listener's clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Plain TCP: the guest sees the client's bytes.
    #[default]
    Tcp,
    /// TLS, which the host terminates: the guest sees the plaintext.
    Tls,
}

/// One address a service listens on: `ADDR:PORT` (plain TCP; `tcp://` may
/// be written) or `tls://ADDR:PORT`.
///
/// ```
/// use portcullis::config::{Listen, Transport};
/// let listen: Listen = "tls://127.0.0.1:8443".parse().unwrap();
/// assert_eq!((listen.addr.port(), listen.transport), (8443, Transport::Tls));
/// assert_eq!(listen.to_string(), "tls://127.0.0.1:8443");
/// assert_eq!("[::1]:7000".parse::<Listen>().unwrap().transport, Transport::Tcp);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl Listen {
    /// Plain TCP on `addr`.
    pub fn tcp(addr: SocketAddr) -> Listen {
        Listen { addr, transport: Transport::Tcp }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        let (transport, rest) = match text.split_once("://") {
            Some(("tls", rest)) => (Transport::Tls, rest),
            Some(("tcp", rest)) => (Transport::Tcp, rest),
            Some((scheme, _)) => return Err(format!("`{text}`: `{scheme}://` is not a listener (tcp:// or tls://)")),
            None => (Transport::Tcp, text),
        };
        let addr = rest
            .parse()
            .map_err(|_| format!("`{text}` is not ADDR:PORT (an IP address and a port: 127.0.0.1:7000, [::1]:7000)"))?;
        Ok(Listen { addr, transport })
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transport {
            Transport::Tcp => write!(f, "{}", self.addr),
            Transport::Tls => write!(f, "tls://{}", self.addr),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
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

/// The name a component gets when none is given: its file name, or for
/// `oci://HOST/team/echo:v1` (or `@sha256:...`) the repository's last
/// part, `echo`.
pub fn default_name(component: &Path) -> String {
    let name = component.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_else(|| "component".into());
    if !component.to_string_lossy().starts_with("oci://") {
        return name;
    }
    let without_digest = name.split('@').next().unwrap_or(&name);
    without_digest.split(':').next().unwrap_or(without_digest).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_is_named_after_its_file_or_its_repository() {
        assert_eq!(default_name(Path::new("target/echo.wasm")), "echo.wasm");
        assert_eq!(default_name(Path::new("oci://ghcr.io/team/echo:v1")), "echo");
        assert_eq!(default_name(Path::new(&format!("oci://[::1]:5000/echo@sha256:{}", "a".repeat(64)))), "echo");
        assert_eq!(default_name(Path::new("oci://localhost:5000/kv")), "kv");
    }
}
