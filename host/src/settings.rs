//! One settings type for a service, whichever way the operator writes it:
//! each field is a `portcullis run` flag (clap) and a manifest key (serde)
//! under one name (`--max-memory` / `max-memory`), and one function checks
//! them all ([`ServiceSettings::into_spec`]), so the flags and the keys
//! cannot drift apart. Process-wide settings (`--memory-budget`,
//! `--max-instances`, `--no-cache`) stay in `cli`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{Grants, Instances, Listen, ServiceSpec, Transport, default_name};
use crate::limits;

/// What the operator says about one service: the flags of `portcullis run
/// COMPONENT`, or one `[[service]]` of a manifest. A setting not given keeps
/// its default (see [`crate::limits::Limits`]).
///
/// ```
/// use portcullis::settings::ServiceSettings;
/// let settings: ServiceSettings =
///     toml::from_str("component = \"echo.wasm\"\nlisten = [\"127.0.0.1:7000\"]\nmax-memory = \"64MiB\"").unwrap();
/// let spec = settings.into_spec(None).unwrap();
/// assert_eq!((spec.name.as_str(), spec.limits.max_memory), ("echo.wasm", 64 << 20));
/// ```
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServiceSettings {
    /// The component to run: a .wasm file, or `oci://HOST/REPO:TAG` (or
    /// `@sha256:DIGEST`) in a registry (see `--pull`).
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    pub component: Option<PathBuf>,
    /// The service's name in logs and messages [default: the component's file name].
    #[arg(long, value_name = "NAME", conflicts_with = "manifest")]
    pub name: Option<String>,
    /// Listen on ADDR:PORT and send its connections to the component's callbacks
    /// (repeatable; port 0 picks a free port). `tls://ADDR:PORT`: the host
    /// terminates TLS there (needs --tls-cert and --tls-key), and the
    /// component sees plaintext.
    #[arg(long = "listen", value_name = "[tls://]ADDR:PORT", conflicts_with = "manifest")]
    #[serde(default)]
    pub listen: Vec<Listen>,
    /// An environment variable for the guest (repeatable; in a manifest, a table).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, conflicts_with = "manifest")]
    #[serde(default, deserialize_with = "env_table")]
    pub env: Vec<(String, String)>,
    /// `shared`: one instance serves every connection (module state shared; one
    /// worker); `per-worker`: one instance per worker thread (state per worker;
    /// every core); `per-connection`: a fresh instance per accepted connection
    /// (isolated; every core) [default: shared].
    #[arg(long = "instances", value_enum, conflicts_with = "manifest")]
    pub instances: Option<Instances>,
    /// Read time-out of accepted connections, in milliseconds [default: 300000].
    #[arg(long = "read-timeout-ms", value_name = "N", conflicts_with = "manifest")]
    pub read_timeout_ms: Option<u64>,
    /// The most connections a service serves at once; further ones wait in the
    /// listen backlog until one closes. Default: no limit with shared instances,
    /// `--max-instances` with an instance per connection (so that a full pool
    /// makes connections wait instead of refusing them).
    #[arg(long = "max-connections", value_name = "N", conflicts_with = "manifest")]
    pub max_connections: Option<u64>,
    /// The most connections open at once from one client address (an IPv4
    /// address or an IPv6 /64); a further one is closed as soon as it is
    /// accepted [default: no cap].
    #[arg(long = "max-connections-per-ip", value_name = "N", conflicts_with = "manifest")]
    pub max_connections_per_ip: Option<u64>,
    /// Close an accepted connection on which nothing was received or sent for
    /// this long, in milliseconds; 0: never [default: 300000].
    #[arg(long = "idle-timeout-ms", value_name = "N", conflicts_with = "manifest")]
    pub idle_timeout_ms: Option<u64>,
    /// Fail a write that sent nothing for this long (the peer does not read)
    /// and close its connection, in milliseconds; 0: never [default: 300000].
    #[arg(long = "write-timeout-ms", value_name = "N", conflicts_with = "manifest")]
    pub write_timeout_ms: Option<u64>,
    /// The most linear memory, tables and host buffers one instance may hold
    /// (e.g. 64MiB; in a manifest also a number of bytes); growth beyond
    /// fails in the guest [default: 128MiB].
    #[arg(long = "max-memory", value_name = "SIZE", conflicts_with = "manifest")]
    pub max_memory: Option<Size>,
    /// The most sockets one instance may hold open at once (client
    /// connections, UDP sockets, its own listeners) [default: 1024].
    #[arg(long = "max-sockets", value_name = "N", conflicts_with = "manifest")]
    pub max_sockets: Option<u32>,
    /// How much CPU time a callback (or main) may compute without truly
    /// waiting, in milliseconds; then its instance traps. Waits (a read, an
    /// accept, a sleep) use none of it [default: 2000].
    #[arg(long = "callback-cpu-ms", value_name = "N", conflicts_with = "manifest")]
    pub callback_cpu_ms: Option<u64>,
    /// Let the guest open TCP connections to tcp://HOST:PORTS (repeatable). HOST:
    /// a name, *.suffix, an IP (`[v6]`), a CIDR or *; PORTS: a port, a range or *.
    #[arg(long = "allow-connect", value_name = "GRANT", conflicts_with = "manifest")]
    #[serde(default)]
    pub allow_connect: Vec<String>,
    /// Let the guest create its own listeners on tcp://HOST:PORTS (repeatable).
    #[arg(long = "allow-listen", value_name = "GRANT", conflicts_with = "manifest")]
    #[serde(default)]
    pub allow_listen: Vec<String>,
    /// Let the guest bind UDP sockets and exchange datagrams with udp://HOST:PORTS
    /// (repeatable).
    #[arg(long = "allow-udp", value_name = "GRANT", conflicts_with = "manifest")]
    #[serde(default)]
    pub allow_udp: Vec<String>,
    /// Also block private ranges and loopback for names and `*` grants.
    #[arg(long = "block-private", conflicts_with = "manifest")]
    #[serde(default)]
    pub block_private: bool,
    /// The certificate chain (PEM, the service's own first) its tls://
    /// listeners present. Read at start and at every reload.
    #[arg(long = "tls-cert", value_name = "FILE", conflicts_with = "manifest")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", conflicts_with = "manifest")]
    pub tls_key: Option<PathBuf>,
    /// Ask tls:// clients for a certificate chaining to these CAs (PEM);
    /// a client without a valid one is refused in the handshake. The guest
    /// can read the certificate's subject [default: no client certificates].
    #[arg(long = "tls-client-ca", value_name = "FILE", conflicts_with = "manifest")]
    pub tls_client_ca: Option<PathBuf>,
    /// An ALPN protocol tls:// listeners offer, most preferred first
    /// (repeatable: `--tls-alpn h2 --tls-alpn http/1.1`) [default: none].
    #[arg(long = "tls-alpn", value_name = "PROTOCOL", conflicts_with = "manifest")]
    #[serde(default)]
    pub tls_alpn: Vec<String>,
    /// How long a tls:// client has to finish its handshake, in
    /// milliseconds; then it is closed [default: 10000].
    #[arg(long = "tls-handshake-timeout-ms", value_name = "N", conflicts_with = "manifest")]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// The most TLS handshakes the service runs at once; further clients
    /// wait in the listen backlog [default: 256].
    #[arg(long = "tls-max-handshakes", value_name = "N", conflicts_with = "manifest")]
    pub tls_max_handshakes: Option<u64>,
    /// The most TLS handshakes one client address (an IPv4 address or an
    /// IPv6 /64) may have under way; a further one is closed at once
    /// [default: 64: a load generator opens 50 at once].
    #[arg(long = "tls-max-handshakes-per-ip", value_name = "N", conflicts_with = "manifest")]
    pub tls_max_handshakes_per_ip: Option<u64>,
    /// The CAs (PEM) the guest's TLS client connections are verified
    /// against [default: the system's].
    #[arg(long = "tls-ca", value_name = "FILE", conflicts_with = "manifest")]
    pub tls_ca: Option<PathBuf>,
}

impl ServiceSettings {
    /// The service these settings describe, with every default filled in. A
    /// relative component path is taken from `base` (a manifest's folder).
    ///
    /// # Errors
    /// A [`SettingError`] naming the setting: no component (or an empty
    /// path); a name that is empty, longer than [`MAX_NAME`] characters or
    /// holds a control character (names go into log lines: a line break
    /// there would forge one); a count or time-out of 0 where at least 1 is
    /// needed; a `max-memory` under 1 MiB. Grants are checked by
    /// [`Grants::policy`].
    pub fn into_spec(self, base: Option<&Path>) -> Result<ServiceSpec, SettingError> {
        let Some(written) = &self.component else {
            return Err(SettingError { key: "component", problem: "is missing".into() });
        };
        if written.as_os_str().is_empty() {
            return Err(SettingError { key: "component", problem: "is empty".into() });
        }
        check_name(&self.service_name(), self.name.is_some())?;
        // An `oci://` reference is no path: the registry's, not the manifest folder's.
        let component = match base {
            Some(base) if !crate::oci::is_reference(written) => base.join(written),
            _ => written.clone(),
        };
        let at_least_one = |key: &'static str, n: Option<u64>| match n {
            Some(0) => Err(SettingError { key, problem: "must be at least 1".into() }),
            n => Ok(n),
        };
        let count = |n: u64| NonZeroUsize::new(usize::try_from(n).unwrap_or(usize::MAX));
        let mut spec = ServiceSpec::new(component);
        let limits = &mut spec.limits;
        limits.max_connections = at_least_one("max-connections", self.max_connections)?.and_then(count);
        limits.max_connections_per_ip =
            at_least_one("max-connections-per-ip", self.max_connections_per_ip)?.and_then(count);
        if let Some(ms) = at_least_one("read-timeout-ms", self.read_timeout_ms)? {
            limits.read_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.idle_timeout_ms {
            limits.idle_timeout = limits::optional_timeout(ms);
        }
        if let Some(ms) = self.write_timeout_ms {
            limits.write_timeout = limits::optional_timeout(ms);
        }
        if let Some(Size(bytes)) = self.max_memory {
            if bytes < MIN_MEMORY {
                return Err(SettingError { key: "max-memory", problem: "must be at least 1MiB".into() });
            }
            limits.max_memory = bytes;
        }
        if let Some(n) = at_least_one("max-sockets", self.max_sockets.map(u64::from))? {
            limits.max_sockets = n as u32;
        }
        if let Some(ms) = at_least_one("callback-cpu-ms", self.callback_cpu_ms)? {
            limits.callback_cpu = Duration::from_millis(ms);
        }
        if let Some(name) = self.name {
            spec.name = name;
        }
        let tls_listeners = self.listen.iter().any(|l| l.transport == Transport::Tls);
        match (tls_listeners, &self.tls_cert, &self.tls_key) {
            (true, None, _) => {
                return Err(SettingError { key: "tls-cert", problem: "is needed by a tls:// listener".into() });
            }
            (true, _, None) => {
                return Err(SettingError { key: "tls-key", problem: "is needed by a tls:// listener".into() });
            }
            (false, Some(_), _) | (false, _, Some(_)) => {
                return Err(SettingError {
                    key: "tls-cert",
                    problem: "is for tls:// listeners, and no listen address is one (write tls://ADDR:PORT)".into(),
                });
            }
            _ => {}
        }
        if !tls_listeners {
            let unused = [
                ("tls-client-ca", self.tls_client_ca.is_some()),
                ("tls-alpn", !self.tls_alpn.is_empty()),
                ("tls-handshake-timeout-ms", self.tls_handshake_timeout_ms.is_some()),
                ("tls-max-handshakes", self.tls_max_handshakes.is_some()),
                ("tls-max-handshakes-per-ip", self.tls_max_handshakes_per_ip.is_some()),
            ];
            if let Some((key, _)) = unused.into_iter().find(|(_, given)| *given) {
                return Err(SettingError {
                    key,
                    problem: "is for tls:// listeners, and no listen address is one".into(),
                });
            }
        }
        let tls = &mut spec.tls;
        if let Some(ms) = at_least_one("tls-handshake-timeout-ms", self.tls_handshake_timeout_ms)? {
            tls.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = at_least_one("tls-max-handshakes", self.tls_max_handshakes)? {
            tls.max_handshakes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = at_least_one("tls-max-handshakes-per-ip", self.tls_max_handshakes_per_ip)? {
            tls.max_handshakes_per_ip = usize::try_from(n).unwrap_or(usize::MAX);
        }
        let in_base = |path: PathBuf| base.map_or(path.clone(), |base| base.join(&path));
        tls.cert = self.tls_cert.map(in_base);
        tls.key = self.tls_key.map(in_base);
        tls.client_ca = self.tls_client_ca.map(in_base);
        tls.ca = self.tls_ca.map(in_base);
        tls.alpn = self.tls_alpn;
        spec.listen = self.listen;
        spec.env = self.env;
        spec.instances = self.instances.unwrap_or_default();
        spec.grants = Grants {
            connect: self.allow_connect,
            listen: self.allow_listen,
            udp: self.allow_udp,
            block_private: self.block_private,
        };
        Ok(spec)
    }

    /// The name the service will have (for messages before [`Self::into_spec`]).
    pub fn service_name(&self) -> String {
        match (&self.name, &self.component) {
            (Some(name), _) => name.clone(),
            (None, Some(component)) => default_name(component),
            (None, None) => "component".into(),
        }
    }
}

/// The longest service name, in characters.
pub const MAX_NAME: usize = 128;

/// The least `max-memory`: below it no component built with the SDK starts
/// (and every instance would fail to start, again and again).
const MIN_MEMORY: u64 = 1 << 20;

/// A service's name is printed in log lines and `NAME: listening on` lines.
fn check_name(name: &str, given: bool) -> Result<(), SettingError> {
    let printable = !name.trim().is_empty() && name.chars().count() <= MAX_NAME && !name.chars().any(char::is_control);
    match (printable, given) {
        (true, _) => Ok(()),
        (false, true) => Err(SettingError {
            key: "name",
            problem: format!("must be 1 to {MAX_NAME} characters with no control characters (line breaks, escapes)"),
        }),
        (false, false) => Err(SettingError {
            key: "name",
            problem: "is needed: the component's file name is no usable service name (control characters, or too long)"
                .into(),
        }),
    }
}

/// A setting that cannot be: its key (a manifest key; the flag is `--` and
/// the key) and what is wrong. Shown as `max-sockets must be at least 1`;
/// the CLI shows [`SettingError::as_flag`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: &'static str,
    pub problem: String,
}

impl SettingError {
    /// As the command line says it: `--max-sockets must be at least 1`.
    pub fn as_flag(&self) -> String {
        match self.key {
            "component" => "give a COMPONENT or --manifest FILE".into(),
            key => format!("--{key} {}", self.problem),
        }
    }
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key, self.problem)
    }
}

impl std::error::Error for SettingError {}

/// A memory size: `64MiB`, `1GiB`, `65536` (bytes); at most 1 TiB.
///
/// ```
/// use portcullis::settings::Size;
/// assert_eq!("64MiB".parse::<Size>().unwrap().0, 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        limits::parse_memory_size(text).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    /// A number of bytes, or text with a unit.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        let text = match Written::deserialize(d)? {
            Written::Bytes(n) => n.to_string(),
            Written::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

/// A manifest's `env = { KEY = "value" }`.
fn env_table<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    Ok(BTreeMap::<String, String>::deserialize(d)?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        service: ServiceSettings,
        #[arg(long)]
        manifest: Option<PathBuf>,
    }

    /// Every setting, written once as flags and once as manifest keys,
    /// makes the same service: the two spellings are one type.
    #[test]
    fn flags_and_manifest_keys_make_the_same_service() {
        let flags = Flags::try_parse_from([
            "portcullis",
            "proxy.wasm",
            "--name",
            "proxy",
            "--listen",
            "127.0.0.1:7000",
            "--listen",
            "tls://[::1]:7443",
            "--env",
            "UPSTREAM=db:5432",
            "--instances",
            "per-connection",
            "--read-timeout-ms",
            "5000",
            "--max-connections",
            "200",
            "--max-connections-per-ip",
            "4",
            "--idle-timeout-ms",
            "0",
            "--write-timeout-ms",
            "2500",
            "--max-memory",
            "64MiB",
            "--max-sockets",
            "16",
            "--callback-cpu-ms",
            "500",
            "--allow-connect",
            "tcp://db:5432",
            "--allow-listen",
            "tcp://127.0.0.1:9000",
            "--allow-udp",
            "udp://*:53",
            "--block-private",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
            "--tls-client-ca",
            "clients.pem",
            "--tls-alpn",
            "h2",
            "--tls-alpn",
            "http/1.1",
            "--tls-handshake-timeout-ms",
            "3000",
            "--tls-max-handshakes",
            "64",
            "--tls-max-handshakes-per-ip",
            "4",
            "--tls-ca",
            "roots.pem",
        ])
        .unwrap();
        let keys: ServiceSettings = toml::from_str(
            r#"
            component = "proxy.wasm"
            name = "proxy"
            listen = ["127.0.0.1:7000", "tls://[::1]:7443"]
            env = { UPSTREAM = "db:5432" }
            instances = "per-connection"
            read-timeout-ms = 5000
            max-connections = 200
            max-connections-per-ip = 4
            idle-timeout-ms = 0
            write-timeout-ms = 2500
            max-memory = 67108864
            max-sockets = 16
            callback-cpu-ms = 500
            allow-connect = ["tcp://db:5432"]
            allow-listen = ["tcp://127.0.0.1:9000"]
            allow-udp = ["udp://*:53"]
            block-private = true
            tls-cert = "cert.pem"
            tls-key = "key.pem"
            tls-client-ca = "clients.pem"
            tls-alpn = ["h2", "http/1.1"]
            tls-handshake-timeout-ms = 3000
            tls-max-handshakes = 64
            tls-max-handshakes-per-ip = 4
            tls-ca = "roots.pem"
            "#,
        )
        .unwrap();
        let (from_flags, from_keys) = (flags.service.into_spec(None).unwrap(), keys.into_spec(None).unwrap());
        assert_eq!(format!("{from_flags:?}"), format!("{from_keys:?}"));
        assert_eq!(from_flags.limits.max_memory, 64 << 20);
        assert_eq!(from_flags.limits.idle_timeout, None, "0: never");
        assert_eq!(from_flags.listen[1].to_string(), "tls://[::1]:7443");
        assert_eq!(from_flags.tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(from_flags.tls.max_handshakes, 64);
        assert_ne!(format!("{from_flags:?}"), format!("{:?}", ServiceSpec::new("proxy.wasm")), "every setting counted");
    }

    #[test]
    fn zero_counts_are_refused_by_name_either_way() {
        for key in ["max-connections", "max-connections-per-ip", "max-sockets", "callback-cpu-ms"] {
            let flag = format!("--{key}");
            let flags = Flags::try_parse_from(["portcullis", "a.wasm", flag.as_str(), "0"]).unwrap();
            let err = flags.service.into_spec(None).unwrap_err();
            assert_eq!(err.as_flag(), format!("--{key} must be at least 1"));
            let keys: ServiceSettings = toml::from_str(&format!("component = \"a.wasm\"\n{key} = 0")).unwrap();
            assert_eq!(keys.into_spec(None).unwrap_err().to_string(), format!("{key} must be at least 1"));
        }
    }

    #[test]
    fn names_that_would_break_a_log_line_are_refused() {
        let named = |name: &str| ServiceSettings {
            component: Some("a.wasm".into()),
            name: Some(name.into()),
            ..ServiceSettings::default()
        };
        for bad in ["", "  ", "evil\n2026-12-07T00:00:00Z  INFO forged", "red\u{1b}[31m", &"n".repeat(MAX_NAME + 1)] {
            assert_eq!(named(bad).into_spec(None).unwrap_err().key, "name", "{bad:?}");
        }
        assert!(named("proxy: the one in front").into_spec(None).is_ok());
        let file = ServiceSettings { component: Some("h\nINFO forged.wasm".into()), ..ServiceSettings::default() };
        assert!(file.into_spec(None).unwrap_err().problem.contains("file name"), "a default name is checked too");
    }

    #[test]
    fn too_little_memory_and_an_instant_read_time_out_are_refused() {
        for (key, value) in [("max-memory", "0"), ("max-memory", "\"512KiB\""), ("read-timeout-ms", "0")] {
            let keys: ServiceSettings = toml::from_str(&format!("component = \"a.wasm\"\n{key} = {value}")).unwrap();
            assert_eq!(keys.into_spec(None).unwrap_err().key, key);
        }
    }

    #[test]
    fn service_flags_do_not_mix_with_a_manifest() {
        let mixed = Flags::try_parse_from(["portcullis", "--manifest", "p.toml", "--listen", "127.0.0.1:1"]);
        assert!(mixed.is_err(), "--listen beside --manifest would be silently ignored");
    }
}
