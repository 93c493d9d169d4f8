//! Grant syntax: `SCHEME://HOST:PORTS` strings, as the operator writes them,
//! parsed into [`Grant`]s. Matching a name against a grant is here too;
//! matching addresses is the [`Policy`](super::Policy)'s (through IP pools).

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use super::addr::{normalise_name, normalise_net, parse_ip_literal};

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open TCP client connections (`--allow-connect tcp://...`).
    Connect,
    /// Bind guest-created TCP listeners (`--allow-listen tcp://...`).
    Listen,
    /// Bind UDP sockets, send to and receive from peers (`--allow-udp udp://...`).
    Udp,
}

impl Action {
    pub(super) fn scheme(self) -> &'static str {
        match self {
            Action::Connect | Action::Listen => "tcp",
            Action::Udp => "udp",
        }
    }

    /// The CLI flag (and manifest key, without the dashes) for this action.
    pub fn flag(self) -> &'static str {
        match self {
            Action::Connect => "--allow-connect",
            Action::Listen => "--allow-listen",
            Action::Udp => "--allow-udp",
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: any name, and any IP outside the blocked networks.
    Any,
    /// `db.internal`: that name exactly (case-insensitive, no trailing dot).
    Name(String),
    /// `*.internal`: any name ending in `.internal` (not `internal` itself).
    Suffix(String),
    /// `10.0.0.5`, `[::1]`, `10.1.0.0/16`: those addresses.
    Net(IpNet),
}

/// An inclusive port range; `*` is 0-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// One grant: an action on a host pattern and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub action: Action,
    pub host: HostPattern,
    pub ports: Ports,
}

/// A grant string that does not parse, with the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantError {
    pub grant: String,
    pub problem: String,
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad grant `{}`: {}", self.grant, self.problem)
    }
}

impl std::error::Error for GrantError {}

impl Grant {
    /// Parses `SCHEME://HOST:PORTS` for `action` (whose scheme must match).
    pub fn parse(action: Action, text: &str) -> Result<Grant, GrantError> {
        let fail = |problem: String| GrantError { grant: text.to_string(), problem };
        let scheme = action.scheme();
        let rest = text
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| fail(format!("it must start with `{scheme}://` for {}", action.flag())))?;
        // The port is after the last colon; an IPv6 host is in brackets.
        let (host, ports) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) =
                inner.split_once(']').ok_or_else(|| fail("`[` without `]`: write IPv6 hosts as `[::1]`".into()))?;
            // `[2001:db8::]/32:PORTS` is an IPv6 CIDR.
            let (prefix, after) = match after.strip_prefix('/') {
                Some(rest) => {
                    rest.split_once(':').map(|(p, a)| (format!("/{p}"), a)).unwrap_or((format!("/{rest}"), ""))
                }
                None => (String::new(), after.strip_prefix(':').unwrap_or(after)),
            };
            if prefix.is_empty() && !rest.contains("]:") {
                return Err(fail(format!("`{after}` after `]` should be `:PORTS`")));
            }
            (format!("[{host}]{prefix}"), after)
        } else {
            let (host, ports) = rest
                .rsplit_once(':')
                .ok_or_else(|| fail("missing `:PORTS` (a port, a range like 8000-8099, or *)".into()))?;
            (host.to_string(), ports)
        };
        let ports = parse_ports(ports).map_err(fail)?;
        let host = parse_host(&host).map_err(fail)?;
        Ok(Grant { action, host, ports })
    }

    pub(super) fn matches_name(&self, name: &str) -> bool {
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Name(n) => n == name,
            HostPattern::Suffix(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
            HostPattern::Net(_) => false,
        }
    }
}

fn parse_ports(text: &str) -> Result<Ports, String> {
    let number = |s: &str| s.parse::<u16>().map_err(|_| format!("port `{s}` is not a number from 0 to 65535"));
    if text == "*" {
        return Ok(Ports { first: 0, last: u16::MAX });
    }
    if text.is_empty() {
        return Err("the port is empty: give a port, a range like 8000-8099, or *".into());
    }
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(text)?, number(text)?),
    };
    if first > last {
        return Err(format!("port range `{text}` runs backwards"));
    }
    Ok(Ports { first, last })
}

fn parse_host(text: &str) -> Result<HostPattern, String> {
    if text == "*" {
        return Ok(HostPattern::Any);
    }
    if text.is_empty() {
        return Err("the host is empty: give a name, *.suffix, an IP, a CIDR, or *".into());
    }
    let bare = text.strip_prefix('[').map(|t| t.replacen(']', "", 1)).unwrap_or_else(|| text.to_string());
    let bare = bare.as_str();
    if bare.contains('/') {
        let net = IpNet::from_str(bare).map_err(|_| format!("`{text}` is not a CIDR range like 10.1.0.0/16"))?;
        return Ok(HostPattern::Net(normalise_net(net)));
    }
    if let Some(ip) = parse_ip_literal(bare) {
        return Ok(HostPattern::Net(IpNet::from(ip)));
    }
    if text.starts_with('[') {
        return Err(format!("`{text}` is not an IPv6 address"));
    }
    if let Some(suffix) = text.strip_prefix("*.") {
        let suffix = normalise_name(suffix);
        check_name(&suffix).map_err(|e| format!("wildcard `{text}`: {e}"))?;
        return Ok(HostPattern::Suffix(format!(".{suffix}")));
    }
    if text.contains('*') {
        return Err(format!("`{text}`: a wildcard is only allowed as `*` or a leading `*.`"));
    }
    let name = normalise_name(text);
    check_name(&name).map_err(|e| format!("host `{text}`: {e}"))?;
    Ok(HostPattern::Name(name))
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_')) {
        Some(c) => Err(format!("`{c}` cannot be part of a host name")),
        None => Ok(()),
    }
}
