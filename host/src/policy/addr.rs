//! Addresses as the policy sees them: IP literals in every spelling the C
//! resolver accepts, IPv4-mapped IPv6 as IPv4, the IPv4 inside other IPv6
//! forms (NAT64, 6to4, Teredo), names in one case, the networks no name
//! reaches, and the host text a guest may pass at all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// The IPv4 addresses an IPv6 address may stand for: the IPv4 inside it, which
/// a translator or tunnel on the way would reach. Empty for other IPv6
/// addresses. The forms (RFC 6052 layouts for NAT64):
///
/// - NAT64 well-known prefix `64:ff9b::/96`: the last 32 bits;
/// - NAT64 local use `64:ff9b:1::/48` (RFC 8215): the operator picks the prefix
///   length, so one candidate for each of /48, /56, /64 and /96 (bits 64..72,
///   the `u` octet, are skipped);
/// - 6to4 `2002::/16`: bits 16..48;
/// - Teredo `2001::/32`: the server (bits 32..64) and the client (the last 32
///   bits, inverted);
/// - IPv4-mapped `::ffff:0:0/96`, SIIT's IPv4-translated `::ffff:0:0:0/96`
///   and IPv4-compatible `::/96` (not `::` or `::1`): the last 32 bits;
/// - of the local-use layouts, none that reads as `0.x.x.x` (one layout's
///   zeros under another: no translator reaches "this network").
///
/// ```
/// use std::net::Ipv4Addr;
/// use portcullis::policy::embedded_ipv4;
/// let metadata = Ipv4Addr::new(169, 254, 169, 254);
/// let of = |text: &str| embedded_ipv4(text.parse().unwrap()).collect::<Vec<_>>();
/// assert_eq!(of("64:ff9b::a9fe:a9fe"), [metadata]);
/// assert_eq!(of("2002:a9fe:a9fe::1"), [metadata]);
/// assert_eq!(of("2001:0:a9fe:a9fe::5601:5601"), [metadata, metadata]);
/// assert_eq!(of("64:ff9b:1:a9fe:a9:fea9:fe00:0").len(), 4);
/// assert!(of("2606:2800:220:1::1").is_empty());
/// assert!(of("::1").is_empty());
/// ```
pub fn embedded_ipv4(ip: Ipv6Addr) -> impl Iterator<Item = Ipv4Addr> {
    let o = ip.octets();
    let at = |[a, b, c, d]: [usize; 4]| Some(Ipv4Addr::new(o[a], o[b], o[c], o[d]));
    let last = at([12, 13, 14, 15]);
    let found = match ip.segments() {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => [last, None, None, None],
        [0x64, 0xff9b, 1, ..] => [at([6, 7, 9, 10]), at([7, 9, 10, 11]), at([9, 10, 11, 12]), last],
        [0x2002, ..] => [at([2, 3, 4, 5]), None, None, None],
        [0x2001, 0, ..] => [at([4, 5, 6, 7]), last.map(|client| !client), None, None],
        [0, 0, 0, 0, 0, 0xffff, _, _] => [last, None, None, None],
        // IPv4-translated (SIIT, RFC 6145): `::ffff:0:a.b.c.d`.
        [0, 0, 0, 0, 0xffff, 0, _, _] => [last, None, None, None],
        [0, 0, 0, 0, 0, 0, high, low] if high != 0 || low > 1 => [last, None, None, None],
        _ => [None; 4],
    };
    // A local-use layout's zero bits read as 0.x.x.x under the others: no
    // translator reaches "this network", so such a reading is no candidate.
    let local_use = ip.segments()[..3] == [0x64, 0xff9b, 1];
    found.into_iter().flatten().filter(move |v4| !(local_use && v4.octets()[0] == 0))
}

/// The last 32 bits of a site-local `fec0::/10` address. No standard puts an
/// IPv4 address there, so this only adds to what is blocked (an IPv4 grant
/// does not open it): a home-made translator on this deprecated prefix still
/// does not reach the metadata service. The cost (`fec0::1` reads as 0.0.0.1,
/// blocked) falls on a prefix nobody should use.
pub(super) fn site_local_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    (ip.segments()[0] & 0xffc0 == 0xfec0).then(|| Ipv4Addr::new(o[12], o[13], o[14], o[15]))
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
    "fec0::/10", // site-local, deprecated (RFC 3879)
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
