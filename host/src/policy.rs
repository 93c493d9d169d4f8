//! Who may reach what: the operator's grants, checked before every syscall.
//!
//! Deny by default. A grant names an action (connect, listen, UDP), a host pattern
//! and ports: `tcp://db.internal:5432`, `tcp://*.internal:8000-8099`,
//! `udp://10.1.0.0/16:*`, `tcp://[::1]:7000`.
//!
//! Names really hold because the host, not the guest, resolves them:
//! - a name target is checked against name grants *before* resolving; every
//!   resolved address must then stay out of the blocked networks (link-local and
//!   cloud metadata, `0.0.0.0/8`, multicast; with `block_private` also the
//!   private ranges and loopback), which defeats DNS rebinding;
//! - an IP target (however it is spelled: `127.1`, `0x7f.0.0.1`, `2130706433`,
//!   `::ffff:127.0.0.1` are all 127.0.0.1) is checked only against IP/CIDR grants
//!   (and `*`); a name grant never covers an IP literal;
//! - an explicit IP/CIDR grant may open a blocked range on purpose; `*` does not.
//!
//! IP ranges are kept in `Pool`s of cap-primitives (the crate behind cap-std). Apart from name resolution this module
//! does no I/O, so its rules are tested with tables.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use cap_primitives::ambient_authority;
use cap_primitives::net::Pool;
use ipnet::IpNet;

use crate::net::SocketError;
use crate::net::resolve::resolve;

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
    fn scheme(self) -> &'static str {
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
    fn contains(self, port: u16) -> bool {
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

    fn matches_name(&self, name: &str) -> bool {
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

/// Lower case, without one trailing dot: `DB.Internal.` is `db.internal`.
pub fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A grant on `::ffff:10.0.0.0/104` means the IPv4 range it maps.
fn normalise_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            _ => net,
        },
        IpNet::V4(_) => net,
    }
}

/// An IP literal in any spelling the C resolver accepts, normalised: IPv6 in or
/// out of brackets, IPv4-mapped IPv6 as IPv4, and inet_aton's IPv4 forms (`127.1`,
/// `0x7f.0.0.1`, `017700000001`, `2130706433`). `None` for a host name.
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(unmap(ip));
    }
    parse_inet_aton(bare).map(IpAddr::V4)
}

/// inet_aton(3): one to four parts, each decimal, octal (leading 0) or hex (0x).
fn parse_inet_aton(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        let value = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            u32::from_str_radix(hex, 16).ok()?
        } else if part.len() > 1 && part.starts_with('0') {
            u32::from_str_radix(&part[1..], 8).ok()?
        } else if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse::<u32>().ok()?
        } else {
            return None;
        };
        values.push(value);
    }
    let (head, last) = values.split_at(values.len() - 1);
    if head.iter().any(|&v| v > 255) {
        return None;
    }
    let last_bits = 32 - 8 * head.len() as u32;
    if last_bits < 32 && last[0] >= (1u32 << last_bits) {
        return None;
    }
    let mut addr = 0u32;
    for (i, v) in head.iter().enumerate() {
        addr |= v << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(addr | last[0]))
}

/// `::ffff:a.b.c.d` is `a.b.c.d`.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().expect("built-in network")).collect()
}

/// Never reachable through a name or `*`: an explicit IP/CIDR grant is needed.
const ALWAYS_BLOCKED: &[&str] = &[
    "0.0.0.0/8",      // "this network"
    "169.254.0.0/16", // link-local, including the cloud metadata 169.254.169.254
    "224.0.0.0/4",    // multicast
    "255.255.255.255/32",
    "::/128",
    "fe80::/10", // link-local
    "ff00::/8",  // multicast
];

/// Blocked too with `block_private`.
const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10", // carrier-grade NAT
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
];

/// The grants of one service, ready to check.
pub struct Policy {
    grants: Vec<Grant>,
    /// IP/CIDR grants per action, as cap-primitives pools.
    ip_pools: [Pool; 3],
    blocked: Pool,
}

impl Default for Policy {
    /// Denies everything.
    fn default() -> Self {
        Policy::new(Vec::new(), false)
    }
}

fn index(action: Action) -> usize {
    match action {
        Action::Connect => 0,
        Action::Listen => 1,
        Action::Udp => 2,
    }
}

impl Policy {
    pub fn new(grants: Vec<Grant>, block_private: bool) -> Self {
        let mut ip_pools = [Pool::new(), Pool::new(), Pool::new()];
        for grant in &grants {
            if let HostPattern::Net(net) = grant.host {
                let end = grant.ports.last.checked_add(1);
                ip_pools[index(grant.action)].insert_ip_net_port_range(
                    net,
                    grant.ports.first,
                    end,
                    ambient_authority(),
                );
            }
        }
        let mut blocked = Pool::new();
        let mut blocked_nets = nets(ALWAYS_BLOCKED);
        if block_private {
            blocked_nets.extend(nets(PRIVATE));
        }
        for net in blocked_nets {
            blocked.insert_ip_net_port_any(net, ambient_authority());
        }
        Policy { grants, ip_pools, blocked }
    }

    /// Parses grant strings (as given to the CLI or in a manifest).
    pub fn parse(
        connect: &[String],
        listen: &[String],
        udp: &[String],
        block_private: bool,
    ) -> Result<Self, GrantError> {
        let mut grants = Vec::new();
        for (action, list) in [(Action::Connect, connect), (Action::Listen, listen), (Action::Udp, udp)] {
            for text in list {
                grants.push(Grant::parse(action, text)?);
            }
        }
        Ok(Policy::new(grants, block_private))
    }

    fn has_any(&self, action: Action) -> bool {
        self.grants.iter().any(|g| g.action == action)
    }

    fn is_blocked(&self, ip: IpAddr) -> bool {
        self.blocked.check_addr(&SocketAddr::new(ip, 0)).is_ok()
    }

    fn ip_granted(&self, action: Action, addr: SocketAddr) -> bool {
        self.ip_pools[index(action)].check_addr(&addr).is_ok()
    }

    fn any_granted(&self, action: Action, port: u16) -> bool {
        self.grants.iter().any(|g| g.action == action && g.host == HostPattern::Any && g.ports.contains(port))
    }

    fn name_granted(&self, action: Action, name: &str, port: u16) -> bool {
        self.grants.iter().any(|g| g.action == action && g.ports.contains(port) && g.matches_name(name))
    }

    fn ip_grants_for_port(&self, action: Action, port: u16) -> bool {
        self.grants
            .iter()
            .any(|g| g.action == action && matches!(g.host, HostPattern::Net(_)) && g.ports.contains(port))
    }

    /// May `action` reach the IP `addr`? (Outbound: blocked networks apply.)
    pub fn allows_peer(&self, action: Action, addr: SocketAddr) -> bool {
        let addr = SocketAddr::new(unmap(addr.ip()), addr.port());
        self.ip_granted(action, addr) || (self.any_granted(action, addr.port()) && !self.is_blocked(addr.ip()))
    }

    /// Resolves an outbound target (`connect`, UDP `send-to`) under the grants:
    /// the addresses it may reach, or a `permission-denied` error naming it.
    pub async fn resolve_outbound(
        &self,
        action: Action,
        verb: &str,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, SocketError> {
        self.resolve_outbound_with(action, verb, host, port, |name, port| async move { resolve(&name, port).await })
            .await
    }

    /// [`Policy::resolve_outbound`] for an IP literal, which needs no lookup (so
    /// no waiting): `None` when `host` is a name.
    pub fn check_literal(
        &self,
        action: Action,
        verb: &str,
        host: &str,
        port: u16,
    ) -> Option<Result<SocketAddr, SocketError>> {
        if let Err(e) = check_host_text(host) {
            return Some(Err(e));
        }
        let addr = SocketAddr::new(parse_ip_literal(host)?, port);
        Some(if self.allows_peer(action, addr) { Ok(addr) } else { Err(denial(action, verb, host, port)) })
    }

    /// [`Policy::resolve_outbound`] with the name lookup passed in (tests use a table).
    pub async fn resolve_outbound_with<F, Fut>(
        &self,
        action: Action,
        verb: &str,
        host: &str,
        port: u16,
        lookup: F,
    ) -> Result<Vec<SocketAddr>, SocketError>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let denied = || denial(action, verb, host, port);
        if let Some(checked) = self.check_literal(action, verb, host, port) {
            return checked.map(|addr| vec![addr]);
        }
        let name = normalise_name(host);
        let by_name = self.name_granted(action, &name, port);
        if !by_name && !self.ip_grants_for_port(action, port) {
            return Err(denied()); // not even resolved: no lookup for what is not granted
        }
        let addrs = lookup(name, port).await.map_err(|e| SocketError::from_io("", &e))?;
        let mut blocked = Vec::new();
        let mut allowed = Vec::new();
        for addr in addrs {
            let addr = SocketAddr::new(unmap(addr.ip()), addr.port());
            if self.ip_granted(action, addr) || (by_name && !self.is_blocked(addr.ip())) {
                allowed.push(addr);
            } else if by_name {
                blocked.push(addr.ip().to_string());
            }
        }
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        if by_name {
            let target = target_text(action, host, port);
            return Err(SocketError::permission_denied(format!(
                "permission denied: {verb} {target} resolves only to blocked addresses ({})",
                blocked.join(", ")
            )));
        }
        Err(denied())
    }

    /// Resolves a local address to bind (`listen`, UDP `bind`) under the grants.
    /// `None` as host is all interfaces (checked as `0.0.0.0`); port 0 is an
    /// ephemeral port (a grant must cover port 0, or for UDP any grant will do).
    pub async fn resolve_bind(
        &self,
        action: Action,
        verb: &str,
        host: Option<&str>,
        port: u16,
    ) -> Result<Option<SocketAddr>, SocketError> {
        let shown = host.unwrap_or("0.0.0.0");
        check_host_text(shown)?;
        let denied = || denial(action, verb, shown, port);
        if action == Action::Udp && host.is_none() && port == 0 {
            // An ephemeral UDP socket reaches nothing by itself; sends are checked.
            return if self.has_any(Action::Udp) { Ok(None) } else { Err(denied()) };
        }
        let ip = match host {
            None => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Some(h) => parse_ip_literal(h),
        };
        if let Some(ip) = ip {
            let addr = SocketAddr::new(ip, port);
            let ok = self.ip_granted(action, addr) || self.any_granted(action, port);
            return match (ok, host) {
                (false, _) => Err(denied()),
                (true, None) => Ok(None),
                (true, Some(_)) => Ok(Some(addr)),
            };
        }
        let name = normalise_name(host.unwrap_or_default());
        if !self.name_granted(action, &name, port) {
            return Err(denied());
        }
        let addrs = resolve(&name, port).await.map_err(|e| SocketError::from_io("", &e))?;
        Ok(addrs.into_iter().next())
    }
}

/// The longest host text a guest may pass: a DNS name's 253 characters.
pub const MAX_HOST_LEN: usize = 253;

/// A guest's host text before anything is done with it: at most
/// [`MAX_HOST_LEN`] bytes of what names and IP literals are made of (letters,
/// digits, `.`, `-`, `_`, `:`, `[`, `]`, `%`). Anything else fails with a
/// `generic` error that does not repeat the text, so a guest cannot put what
/// it likes (say, a line break and a forged log line) into the host's log.
pub fn check_host_text(host: &str) -> Result<(), SocketError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%');
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.chars().all(allowed) {
        return Err(SocketError::generic(format!(
            "invalid host: {} bytes; a name or IP literal of at most {MAX_HOST_LEN} letters, digits and `.-_:[]%`",
            host.len()
        )));
    }
    Ok(())
}

/// `tcp://db.internal:5432`, `udp://[::1]:53`: a target as denials name it.
pub fn target_text(action: Action, host: &str, port: u16) -> String {
    let host = match parse_ip_literal(host) {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => host.to_string(),
    };
    format!("{}://{host}:{port}", action.scheme())
}

/// `permission denied: connect tcp://10.0.0.5:5432 is not granted`.
fn denial(action: Action, verb: &str, host: &str, port: u16) -> SocketError {
    SocketError::permission_denied(format!(
        "permission denied: {verb} {} is not granted",
        target_text(action, host, port)
    ))
}

#[cfg(test)]
mod tests;
