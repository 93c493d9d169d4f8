//! How portcullis tells a WASI-backend service (one built with the SDK's
//! `wasi` feature) where to listen and which connection limits to keep: the
//! `PORTCULLIS_*` environment variables, set by the host from its flags and
//! manifest keys ([`ServiceEnv::to_vars`]) and read by the SDK
//! ([`ServiceEnv::from_vars`]). Another runtime may set them by hand.

use std::net::SocketAddr;
use std::time::Duration;

/// Where to listen: `ADDR:PORT[,ADDR:PORT...]` (`--listen`).
pub const LISTEN: &str = "PORTCULLIS_LISTEN";
/// The read time-out of accepted connections, in ms (`--read-timeout-ms`).
pub const READ_TIMEOUT_MS: &str = "PORTCULLIS_READ_TIMEOUT_MS";
/// The most accepted connections open at once (`--max-connections`).
pub const MAX_CONNECTIONS: &str = "PORTCULLIS_MAX_CONNECTIONS";
/// The most from one client address key (`--max-connections-per-ip`; see
/// [`crate::address_key`]).
pub const MAX_CONNECTIONS_PER_IP: &str = "PORTCULLIS_MAX_CONNECTIONS_PER_IP";
/// Close an accepted connection idle this long, in ms; 0: never (`--idle-timeout-ms`).
pub const IDLE_TIMEOUT_MS: &str = "PORTCULLIS_IDLE_TIMEOUT_MS";
/// Fail a write that sent nothing for this long, in ms; 0: never (`--write-timeout-ms`).
pub const WRITE_TIMEOUT_MS: &str = "PORTCULLIS_WRITE_TIMEOUT_MS";
/// The CPU time the guest may compute without truly waiting, in ms
/// (`--callback-cpu-ms`): the SDK gives the runtime a turn well within it.
pub const CALLBACK_CPU_MS: &str = "PORTCULLIS_CALLBACK_CPU_MS";

/// Every variable, in the order [`ServiceEnv::to_vars`] gives them.
pub const ALL: [&str; 7] = [
    LISTEN,
    READ_TIMEOUT_MS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_IP,
    IDLE_TIMEOUT_MS,
    WRITE_TIMEOUT_MS,
    CALLBACK_CPU_MS,
];

/// The default of every time-out: 300 s (as portcullis's flags).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What a WASI-backend service is told. A variable that is not set keeps the
/// default ([`ServiceEnv::default`]: no address, 300 s time-outs, no caps).
///
/// ```
/// use portcullis_protocol::environment::{ServiceEnv, LISTEN};
/// let told = ServiceEnv { listen: vec!["127.0.0.1:7000".parse().unwrap()], ..ServiceEnv::default() };
/// let vars = told.to_vars();
/// assert!(vars.contains(&(LISTEN, "127.0.0.1:7000".to_string())));
/// let read = ServiceEnv::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()));
/// assert_eq!(read, Ok(told));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEnv {
    /// Where to listen; empty: not said (a program needs none).
    pub listen: Vec<SocketAddr>,
    /// The read time-out of accepted connections.
    pub read_timeout: Duration,
    /// The most accepted connections open at once; `None`: no cap. At the
    /// cap the listeners stop accepting (clients wait in the backlog).
    pub max_connections: Option<u64>,
    /// The most from one client address key; `None`: no cap. A further one
    /// is closed as soon as it is accepted.
    pub max_connections_per_ip: Option<u64>,
    /// Close an accepted connection after this long without a byte either
    /// way; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Fail (and close) a write that could send nothing for this long; `None`: never.
    pub write_timeout: Option<Duration>,
    /// How long the guest may compute without truly waiting before the
    /// runtime ends it; `None`: not told (the runtime may have no such bound).
    pub callback_cpu: Option<Duration>,
}

impl Default for ServiceEnv {
    fn default() -> Self {
        ServiceEnv {
            listen: Vec::new(),
            read_timeout: DEFAULT_TIMEOUT,
            max_connections: None,
            max_connections_per_ip: None,
            idle_timeout: Some(DEFAULT_TIMEOUT),
            write_timeout: Some(DEFAULT_TIMEOUT),
            callback_cpu: None,
        }
    }
}

impl ServiceEnv {
    /// The variables that say all of it (a cap that is `None` is left out;
    /// a time-out that is `None` is 0; a time-out under 1 ms is 1 ms).
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let ms = |t: Duration| t.as_millis().max(1).to_string();
        let mut vars = Vec::new();
        if !self.listen.is_empty() {
            vars.push((LISTEN, listen_value(&self.listen)));
        }
        vars.push((READ_TIMEOUT_MS, ms(self.read_timeout)));
        if let Some(n) = self.max_connections {
            vars.push((MAX_CONNECTIONS, n.to_string()));
        }
        if let Some(n) = self.max_connections_per_ip {
            vars.push((MAX_CONNECTIONS_PER_IP, n.to_string()));
        }
        vars.push((IDLE_TIMEOUT_MS, self.idle_timeout.map_or("0".to_string(), ms)));
        vars.push((WRITE_TIMEOUT_MS, self.write_timeout.map_or("0".to_string(), ms)));
        if let Some(cpu) = self.callback_cpu {
            vars.push((CALLBACK_CPU_MS, ms(cpu)));
        }
        vars
    }

    /// Reads the variables through `get` (`std::env::var(name).ok()`, say).
    ///
    /// # Errors
    /// A value that does not parse, as a message that names the variable and
    /// the value (`PORTCULLIS_LISTEN: `localhost:80` is not ADDR:PORT ...`).
    /// Caps of 0 count as 1.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<ServiceEnv, String> {
        let mut env = ServiceEnv::default();
        let number = |var: &str| -> Result<Option<u64>, String> {
            match get(var) {
                Some(text) => {
                    text.trim().parse::<u64>().map(Some).map_err(|_| format!("{var}: `{text}` is not a whole number"))
                }
                None => Ok(None),
            }
        };
        let timeout = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        if let Some(value) = get(LISTEN).filter(|v| !v.trim().is_empty()) {
            env.listen = parse_listen(&value)?;
        }
        if let Some(ms) = number(READ_TIMEOUT_MS)? {
            env.read_timeout = Duration::from_millis(ms);
        }
        env.max_connections = number(MAX_CONNECTIONS)?.map(|n| n.max(1));
        env.max_connections_per_ip = number(MAX_CONNECTIONS_PER_IP)?.map(|n| n.max(1));
        if let Some(ms) = number(IDLE_TIMEOUT_MS)? {
            env.idle_timeout = timeout(ms);
        }
        if let Some(ms) = number(WRITE_TIMEOUT_MS)? {
            env.write_timeout = timeout(ms);
        }
        env.callback_cpu = number(CALLBACK_CPU_MS)?.map(|ms| Duration::from_millis(ms.max(1)));
        Ok(env)
    }

    /// The error of a service told no address.
    pub fn no_listen_error() -> String {
        format!("{LISTEN} is not set: set it to ADDR:PORT[,ADDR:PORT...] (portcullis run --listen sets it)")
    }
}

/// [`LISTEN`]'s value for `addrs`: `127.0.0.1:7000,[::1]:7000`.
pub fn listen_value(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")
}

fn parse_listen(value: &str) -> Result<Vec<SocketAddr>, String> {
    value
        .split(',')
        .map(|part| {
            part.trim().parse::<SocketAddr>().map_err(|_| {
                format!("{LISTEN}: `{}` is not ADDR:PORT (e.g. 127.0.0.1:7000 or [::1]:7000)", part.trim())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, String)]) -> Result<ServiceEnv, String> {
        ServiceEnv::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn what_the_host_says_is_what_the_service_reads() {
        let ms = Duration::from_millis;
        let cases = [
            ServiceEnv::default(),
            ServiceEnv {
                listen: vec!["127.0.0.1:7000".parse().unwrap(), "[::1]:0".parse().unwrap()],
                read_timeout: ms(1),
                max_connections: Some(1),
                max_connections_per_ip: Some(u64::MAX),
                idle_timeout: None,
                write_timeout: Some(ms(86_400_000)),
                callback_cpu: Some(ms(2000)),
            },
        ];
        for told in cases {
            assert_eq!(read(&told.to_vars()), Ok(told.clone()));
        }
    }

    #[test]
    fn unset_keeps_the_default_and_bad_values_name_the_variable() {
        assert_eq!(read(&[]), Ok(ServiceEnv::default()));
        let bad = read(&[(LISTEN, "localhost:80".into())]).unwrap_err();
        assert!(bad.starts_with("PORTCULLIS_LISTEN: `localhost:80` is not ADDR:PORT"), "{bad}");
        let bad = read(&[(IDLE_TIMEOUT_MS, "-1".into())]).unwrap_err();
        assert_eq!(bad, "PORTCULLIS_IDLE_TIMEOUT_MS: `-1` is not a whole number");
        let zero = read(&[(MAX_CONNECTIONS, "0".into()), (WRITE_TIMEOUT_MS, " 0 ".into())]).unwrap();
        assert_eq!((zero.max_connections, zero.write_timeout), (Some(1), None));
        let cpu = read(&[(CALLBACK_CPU_MS, "0".into())]).unwrap();
        assert_eq!(cpu.callback_cpu, Some(Duration::from_millis(1)), "a bound of 0 ms counts as 1");
        assert!(ServiceEnv::no_listen_error().starts_with("PORTCULLIS_LISTEN is not set"));
    }
}
