//! Addresses as the policy sees them: IP literals in every spelling the C
//! resolver accepts, IPv4-mapped IPv6 as IPv4, names in one case, the networks
//! no name reaches, and the host text a guest may pass at all.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::error::PolicyError;

/// Lower case, without one trailing dot: `DB.Internal.` is `db.internal`.
pub fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A grant on `::ffff:10.0.0.0/104` means the IPv4 range it maps.
pub(super) fn normalise_net(net: IpNet) -> IpNet {
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

pub(super) fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().expect("built-in network")).collect()
}

/// Never reachable through a name or `*`: an explicit IP/CIDR grant is needed.
pub(super) const ALWAYS_BLOCKED: &[&str] = &[
    "0.0.0.0/8",          // "this network"
    "169.254.0.0/16",     // link-local, including the cloud metadata 169.254.169.254
    "100.100.100.200/32", // Alibaba Cloud's metadata service
    "fd00:ec2::254/128",  // AWS's IPv6 metadata service
    "224.0.0.0/4",        // multicast
    "255.255.255.255/32",
    "::/128",
    "fe80::/10", // link-local
    "ff00::/8",  // multicast
];

/// Blocked too with `block_private`.
pub(super) const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10", // carrier-grade NAT
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
];

/// The longest host text a guest may pass: a DNS name's 253 characters.
pub const MAX_HOST_LEN: usize = 253;

/// A guest's host text before anything is done with it: at most
/// [`MAX_HOST_LEN`] bytes of what names and IP literals are made of (letters,
/// digits, `.`, `-`, `_`, `:`, `[`, `]`, `%`). Anything else fails with
/// [`PolicyError::InvalidHost`], whose message does not repeat the text, so a guest cannot put what
/// it likes (say, a line break and a forged log line) into the host's log.
pub fn check_host_text(host: &str) -> Result<(), PolicyError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%');
    if host.is_empty() || host.len() > MAX_HOST_LEN || !host.chars().all(allowed) {
        return Err(PolicyError::InvalidHost(format!(
            "invalid host: {} bytes; a name or IP literal of at most {MAX_HOST_LEN} letters, digits and `.-_:[]%`",
            host.len()
        )));
    }
    Ok(())
}
