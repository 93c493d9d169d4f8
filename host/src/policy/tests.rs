//! The grant matcher as a table: grant strings, a target, and what must happen.
//! Names resolve through a fixed table, never the network.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

/// What the fake resolver knows.
fn lookup_table(name: &str) -> Vec<IpAddr> {
    let ips: &[&str] = match name {
        "db.internal" => &["10.1.2.3"],
        "api.example.com" => &["93.184.216.34", "2606:2800:220:1::1"],
        "metadata.evil" => &["169.254.169.254"],
        "rebind.example.com" => &["127.0.0.1"],
        "mixed.example.com" => &["169.254.1.1", "93.184.216.34"],
        "web.svc.internal" => &["10.9.9.9"],
        "v6only.example.com" => &["::ffff:93.184.216.34"],
        // What DNS64 answers behind a NAT64 gateway.
        "dns64.example.com" => &["64:ff9b::5db8:d822"],
        "dns64.evil" => &["64:ff9b::a9fe:a9fe"],
        _ => &[],
    };
    ips.iter().map(|ip| ip.parse().unwrap()).collect()
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Allowed, reaching these addresses.
    Allow(Vec<&'static str>),
    /// Refused with permission-denied.
    Deny,
}
use Outcome::{Allow, Deny};

fn check(grants: &[&str], block_private: bool, use_: Use, host: &str, port: u16) -> Outcome {
    let policy = policy_of(grants, block_private);
    let result = futures::executor::block_on(policy.resolve_outbound_with(use_, host, port, |name, port| async move {
        let ips = lookup_table(&name);
        if ips.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such host {name}")));
        }
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }));
    match result {
        Ok(addrs) => {
            let ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            Allow(ips.into_iter().map(|s| &*Box::leak(s.into_boxed_str())).collect())
        }
        Err(PolicyError::Denied { .. }) => Deny,
        Err(e) => panic!("{host}:{port}: expected allow or deny, got {e:?}"),
    }
}

fn policy_of(grants: &[&str], block_private: bool) -> Policy {
    let parsed = grants
        .iter()
        .map(|g| {
            let action = if g.starts_with("udp://") { Action::Udp } else { Action::Connect };
            Grant::parse(action, g).unwrap()
        })
        .collect();
    Policy::new(parsed, block_private)
}

const C: Use = Use::TcpConnect;
const U: Use = Use::UdpSend;

/// Grants, `--block-private`, then the use, host, port and what should happen.
type Case = (&'static [&'static str], bool, Use, &'static str, u16, Outcome);

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // Deny by default.
        (&[], false, C, "db.internal", 5432, Deny),
        (&[], false, C, "10.0.0.5", 5432, Deny),
        (&[], false, U, "10.0.0.5", 53, Deny),
        // Exact names, case and trailing dot.
        (&["tcp://db.internal:5432"], false, C, "db.internal", 5432, Allow(vec!["10.1.2.3"])),
        (&["tcp://db.internal:5432"], false, C, "DB.Internal.", 5432, Allow(vec!["10.1.2.3"])),
        (&["tcp://DB.INTERNAL.:5432"], false, C, "db.internal", 5432, Allow(vec!["10.1.2.3"])),
        (&["tcp://db.internal:5432"], false, C, "db.internal", 5433, Deny),
        (&["tcp://db.internal:5432"], false, C, "db2.internal", 5432, Deny),
        // A name grant never covers an IP literal, even the one it resolves to.
        (&["tcp://db.internal:5432"], false, C, "10.1.2.3", 5432, Deny),
        // Wildcard suffixes.
        (&["tcp://*.internal:*"], false, C, "db.internal", 1, Allow(vec!["10.1.2.3"])),
        (&["tcp://*.internal:*"], false, C, "web.svc.internal", 80, Allow(vec!["10.9.9.9"])),
        (&["tcp://*.internal:*"], false, C, "internal", 80, Deny),
        (&["tcp://*.internal:*"], false, C, "xinternal", 80, Deny),
        (&["tcp://*.internal:*"], false, C, "db.internal.evil", 80, Deny),
        // Port ranges, edges included.
        (&["tcp://db.internal:8000-8099"], false, C, "db.internal", 7999, Deny),
        (&["tcp://db.internal:8000-8099"], false, C, "db.internal", 8000, Allow(vec!["10.1.2.3"])),
        (&["tcp://db.internal:8000-8099"], false, C, "db.internal", 8099, Allow(vec!["10.1.2.3"])),
        (&["tcp://db.internal:8000-8099"], false, C, "db.internal", 8100, Deny),
        (&["tcp://10.0.0.5:65535"], false, C, "10.0.0.5", 65535, Allow(vec!["10.0.0.5"])),
        (&["tcp://10.0.0.5:0-65535"], false, C, "10.0.0.5", 0, Allow(vec!["10.0.0.5"])),
        // IPs and CIDRs.
        (&["tcp://10.0.0.5:5432"], false, C, "10.0.0.5", 5432, Allow(vec!["10.0.0.5"])),
        (&["tcp://10.0.0.5:5432"], false, C, "10.0.0.6", 5432, Deny),
        (&["tcp://10.1.0.0/16:*"], false, C, "10.1.255.255", 9, Allow(vec!["10.1.255.255"])),
        (&["tcp://10.1.0.0/16:*"], false, C, "10.2.0.0", 9, Deny),
        // IP grants are checked after resolution: a name landing in a granted range.
        (&["tcp://10.1.0.0/16:*"], false, C, "db.internal", 5432, Allow(vec!["10.1.2.3"])),
        (&["tcp://10.2.0.0/16:*"], false, C, "db.internal", 5432, Deny),
        // Odd IPv4 spellings are the same address.
        (&["tcp://127.0.0.1:80"], false, C, "127.1", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://127.0.0.1:80"], false, C, "0x7f.0.0.1", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://127.0.0.1:80"], false, C, "2130706433", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://127.0.0.1:80"], false, C, "017700000001", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://127.0.0.1:80"], false, C, "::ffff:127.0.0.1", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://127.0.0.1:80"], false, C, "[::ffff:7f00:1]", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://10.0.0.5:80"], false, C, "0x7f.1", 80, Deny),
        // IPv6.
        (&["tcp://[::1]:7000"], false, C, "::1", 7000, Allow(vec!["::1"])),
        (&["tcp://[::1]:7000"], false, C, "[::1]", 7000, Allow(vec!["::1"])),
        (&["tcp://[2001:db8::]/32:*"], false, C, "2001:db8:1::5", 443, Allow(vec!["2001:db8:1::5"])),
        (&["tcp://[2001:db8::]/32:*"], false, C, "2001:db9::5", 443, Deny),
        (&["tcp://[::ffff:10.0.0.0]/104:*"], false, C, "10.3.4.5", 1, Allow(vec!["10.3.4.5"])),
        // `*` reaches names and IPs, but never the blocked networks.
        (&["tcp://*:*"], false, C, "api.example.com", 443, Allow(vec!["93.184.216.34", "2606:2800:220:1::1"])),
        (&["tcp://*:443"], false, C, "93.184.216.34", 443, Allow(vec!["93.184.216.34"])),
        (&["tcp://*:443"], false, C, "93.184.216.34", 80, Deny),
        (&["tcp://*:*"], false, C, "169.254.169.254", 80, Deny),
        (&["tcp://*:*"], false, C, "0.0.0.0", 80, Deny),
        (&["tcp://*:*"], false, C, "224.0.0.1", 80, Deny),
        (&["tcp://*:*"], false, C, "fe80::1", 80, Deny),
        (&["tcp://*:*"], false, C, "ff02::1", 80, Deny),
        (&["tcp://*:*"], false, C, "::ffff:169.254.169.254", 80, Deny),
        // The other clouds' metadata services.
        (&["tcp://*:*"], false, C, "100.100.100.200", 80, Deny),
        (&["tcp://*:*"], false, C, "fd00:ec2::254", 80, Deny),
        (&["tcp://100.100.100.200:80"], false, C, "100.100.100.200", 80, Allow(vec!["100.100.100.200"])),
        (&["tcp://*:*"], false, C, "127.0.0.1", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://*:*"], true, C, "127.0.0.1", 80, Deny),
        (&["tcp://*:*"], true, C, "10.0.0.1", 80, Deny),
        (&["tcp://*:*"], true, C, "172.31.0.1", 80, Deny),
        (&["tcp://*:*"], true, C, "192.168.1.1", 80, Deny),
        (&["tcp://*:*"], true, C, "fd00::1", 80, Deny),
        (&["tcp://*:*"], true, C, "::1", 80, Deny),
        // DNS rebinding: a granted name that resolves into a blocked network.
        (&["tcp://metadata.evil:80"], false, C, "metadata.evil", 80, Deny),
        (&["tcp://rebind.example.com:80"], true, C, "rebind.example.com", 80, Deny),
        (&["tcp://rebind.example.com:80"], false, C, "rebind.example.com", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://mixed.example.com:80"], false, C, "mixed.example.com", 80, Allow(vec!["93.184.216.34"])),
        (&["tcp://v6only.example.com:80"], false, C, "v6only.example.com", 80, Allow(vec!["93.184.216.34"])),
        // An explicit IP grant opens a blocked range on purpose.
        (&["tcp://169.254.169.254:80"], false, C, "169.254.169.254", 80, Allow(vec!["169.254.169.254"])),
        (&["tcp://127.0.0.0/8:*"], true, C, "127.0.0.1", 80, Allow(vec!["127.0.0.1"])),
        (&["tcp://127.0.0.0/8:*", "tcp://rebind.example.com:80"], true, C, "rebind.example.com", 80, Allow(vec!["127.0.0.1"])),
        // IPv6 forms with an IPv4 address inside are judged as that IPv4 too
        // (169.254.169.254 is a9fe:a9fe, 10.0.0.1 a00:1, 93.184.216.34 5db8:d822),
        // and reach the address given.
        (&["udp://*:*"], false, U, "64:ff9b::a9fe:a9fe", 53, Deny),
        (&["udp://*:*"], false, U, "[2002:a9fe:a9fe::1]", 53, Deny),
        (&["udp://*:*"], true, U, "64:ff9b::a00:1", 53, Deny),
        (&["udp://*:*"], false, U, "64:ff9b::a00:1", 53, Allow(vec!["64:ff9b::a00:1"])),
        (&["tcp://*:*"], true, C, "64:ff9b::5db8:d822", 80, Allow(vec!["64:ff9b::5db8:d822"])),
        (&["tcp://*:*"], true, C, "2002:5db8:d822::1", 80, Allow(vec!["2002:5db8:d822::1"])),
        (&["tcp://*:*"], true, C, "::5db8:d822", 80, Allow(vec!["::5db8:d822"])),
        (&["tcp://dns64.example.com:80"], true, C, "dns64.example.com", 80, Allow(vec!["64:ff9b::5db8:d822"])),
        (&["tcp://dns64.evil:80"], false, C, "dns64.evil", 80, Deny),
        // Teredo: the server, and the client (inverted); both must be allowed.
        (&["tcp://*:*"], false, C, "2001:0:5db8:d822::a247:27dd", 80, Allow(vec!["2001:0:5db8:d822::a247:27dd"])),
        (&["tcp://*:*"], false, C, "2001:0:a9fe:a9fe::a247:27dd", 80, Deny),
        (&["tcp://*:*"], false, C, "2001:0:5db8:d822::5601:5601", 80, Deny),
        // NAT64 local use: every prefix length's reading counts, except the
        // 0.x.x.x that one layout's zeros make of another (no translator
        // reaches "this network").
        (&["tcp://*:*"], false, C, "64:ff9b:1::5db8:d822", 80, Allow(vec!["64:ff9b:1::5db8:d822"])),
        (&["tcp://*:*"], false, C, "64:ff9b:1::a9fe:a9fe", 80, Deny),
        (&["tcp://[64:ff9b:1::]/48:*"], false, C, "64:ff9b:1::5db8:d822", 80, Allow(vec!["64:ff9b:1::5db8:d822"])),
        // A grant covers what it names: an IPv4 grant not the IPv6 forms of its
        // address (they leave by another route); an IPv6 grant opens them.
        (&["udp://10.0.0.0/8:53"], false, U, "[64:ff9b::a00:1]", 53, Deny),
        (&["udp://10.0.0.0/8:53"], true, U, "2002:a00:1::1", 53, Deny),
        (&["tcp://127.0.0.1:80"], false, C, "::7f00:1", 80, Deny),
        (&["udp://10.0.0.0/8:53"], false, U, "2001:0:a00:1::f5ff:fffe", 53, Deny),
        (&["udp://[64:ff9b::]/96:53"], false, U, "[64:ff9b::a00:1]", 53, Allow(vec!["64:ff9b::a00:1"])),
        (&["udp://[64:ff9b::a9fe:a9fe]:53"], false, U, "64:ff9b::a9fe:a9fe", 53, Allow(vec!["64:ff9b::a9fe:a9fe"])),
        (&["udp://169.254.169.254:53"], false, U, "64:ff9b::a9fe:a9fe", 53, Deny),
        // SIIT's IPv4-translated form.
        (&["tcp://*:*"], false, C, "::ffff:0:a9fe:a9fe", 80, Deny),
        (&["tcp://*:*"], true, C, "::ffff:0:7f00:1", 80, Deny),
        // `::`, `::1` and ordinary IPv6 are what they were.
        (&["tcp://*:*"], false, C, "::", 80, Deny),
        (&["tcp://*:*"], false, C, "::1", 80, Allow(vec!["::1"])),
        (&["tcp://*:*"], true, C, "2001:db8::1", 80, Allow(vec!["2001:db8::1"])),
        (&["tcp://0.0.0.0/0:*"], false, C, "::", 80, Deny),
        (&["tcp://0.0.0.0/0:*"], false, C, "::1", 80, Deny),
        (&["tcp://0.0.0.0/0:*"], false, C, "2001:db8::1", 80, Deny),
        // Site-local (deprecated) is private; its last 32 bits only block (so
        // `fec0::1`, 0.0.0.1, is blocked even without --block-private).
        (&["tcp://*:*"], true, C, "fec0::5db8:d822", 80, Deny),
        (&["tcp://*:*"], false, C, "fec0::5db8:d822", 80, Allow(vec!["fec0::5db8:d822"])),
        (&["tcp://*:*"], false, C, "fec0::1", 80, Deny),
        (&["tcp://*:*"], false, C, "fec0::a9fe:a9fe", 80, Deny),
        (&["tcp://10.0.0.0/8:*"], false, C, "fec0::a00:1", 80, Deny),
        // Actions do not leak into each other.
        (&["udp://10.0.0.5:53"], false, C, "10.0.0.5", 53, Deny),
        (&["tcp://10.0.0.5:53"], false, U, "10.0.0.5", 53, Deny),
        (&["udp://10.0.0.5:53"], false, U, "10.0.0.5", 53, Allow(vec!["10.0.0.5"])),
    ]
}

#[test]
fn the_grant_matcher_table() {
    assert!(cases().len() >= 40);
    for (i, (grants, block_private, action, host, port, expected)) in cases().into_iter().enumerate() {
        let got = check(grants, block_private, action, host, port);
        assert_eq!(got, expected, "case {i}: {grants:?} block_private={block_private} {action:?} {host}:{port}");
    }
}

#[test]
fn names_not_granted_are_not_even_resolved() {
    let policy = policy_of(&["tcp://db.internal:5432"], false);
    let result =
        futures::executor::block_on(policy.resolve_outbound_with(C, "other.internal", 5432, |name, _| async move {
            panic!("{name} was resolved although no grant could cover it")
        }));
    assert_eq!(result.unwrap_err().to_string(), "permission denied: connect tcp://other.internal:5432 is not granted");
}

#[test]
fn denials_name_the_operation_and_target() {
    let policy = Policy::default();
    let err = futures::executor::block_on(policy.resolve_outbound(C, "10.0.0.5", 5432)).unwrap_err();
    assert!(matches!(err, PolicyError::Denied { .. }));
    assert_eq!(err.to_string(), "permission denied: connect tcp://10.0.0.5:5432 is not granted");
    let err = futures::executor::block_on(policy.resolve_outbound(C, "0x7f.1", 80)).unwrap_err();
    assert_eq!(err.to_string(), "permission denied: connect tcp://127.0.0.1:80 is not granted");
    let err = futures::executor::block_on(policy.resolve_outbound(U, "::1", 53)).unwrap_err();
    assert_eq!(err.to_string(), "permission denied: send to udp://[::1]:53 is not granted");
    let rebinding = policy_of(&["tcp://metadata.evil:80"], false);
    let err =
        futures::executor::block_on(rebinding.resolve_outbound_with(C, "metadata.evil", 80, |_, port| async move {
            Ok(vec![SocketAddr::new("169.254.169.254".parse().unwrap(), port)])
        }))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "permission denied: connect tcp://metadata.evil:80 resolves only to blocked addresses (169.254.169.254)"
    );
}

#[test]
fn bad_grants_point_at_the_bad_part() {
    let cases = [
        ("db.internal:5432", "it must start with `tcp://` for --allow-connect"),
        ("udp://db.internal:5432", "it must start with `tcp://` for --allow-connect"),
        ("tcp://db.internal", "missing `:PORTS`"),
        ("tcp://db.internal:", "the port is empty"),
        ("tcp://db.internal:http", "port `http` is not a number from 0 to 65535"),
        ("tcp://db.internal:70000", "port `70000` is not a number from 0 to 65535"),
        ("tcp://db.internal:9000-8000", "port range `9000-8000` runs backwards"),
        ("tcp://db.internal:80-", "port `` is not a number"),
        ("tcp://:80", "the host is empty"),
        ("tcp://10.1.0.0/33:80", "`10.1.0.0/33` is not a CIDR range"),
        ("tcp://[::1:80", "`[` without `]`"),
        ("tcp://[not-v6]:80", "`[not-v6]` is not an IPv6 address"),
        ("tcp://db.*.internal:80", "a wildcard is only allowed as `*` or a leading `*.`"),
        ("tcp://*.:80", "wildcard `*.`: the name is empty"),
        ("tcp://db internal:80", "host `db internal`: ` ` cannot be part of a host name"),
    ];
    for (text, problem) in cases {
        let err = Grant::parse(Action::Connect, text).unwrap_err();
        assert!(err.problem.contains(problem), "{text}: got {:?}, wanted {problem:?}", err.problem);
        assert!(err.to_string().starts_with(&format!("bad grant `{text}`: ")));
    }
}

#[test]
fn inet_aton_spellings() {
    let cases = [
        ("127.0.0.1", Some("127.0.0.1")),
        ("127.1", Some("127.0.0.1")),
        ("127.0.1", Some("127.0.0.1")),
        ("0x7f.0.0.1", Some("127.0.0.1")),
        ("0x7F000001", Some("127.0.0.1")),
        ("0177.0.0.01", Some("127.0.0.1")),
        ("2130706433", Some("127.0.0.1")),
        ("10.258", Some("10.0.1.2")),
        ("256.0.0.1", None),
        ("1.2.3.4.5", None),
        ("1..2", None),
        ("08.1.1.1", None), // 8 is not an octal digit
        ("4294967296", None),
        ("db.internal", None),
        ("1e100.net", None),
    ];
    for (text, expected) in cases {
        let got = parse_ip_literal(text).map(|ip| ip.to_string());
        assert_eq!(got.as_deref(), expected, "{text}");
    }
}

#[test]
fn binding_needs_a_grant_too() {
    let block_on = futures::executor::block_on;
    let none = Policy::default();
    assert!(block_on(none.resolve_bind(Use::TcpListen, None, 8080)).is_err());
    assert!(block_on(none.resolve_bind(Use::UdpBind, None, 0)).is_err(), "no UDP at all by default");

    let listen = Policy::new(vec![Grant::parse(Action::Listen, "tcp://127.0.0.1:8000-8099").unwrap()], false);
    assert!(block_on(listen.resolve_bind(Use::TcpListen, Some("127.0.0.1"), 8000)).is_ok());
    assert!(block_on(listen.resolve_bind(Use::TcpListen, Some("127.0.0.1"), 8100)).is_err());
    let err = block_on(listen.resolve_bind(Use::TcpListen, None, 8000)).unwrap_err();
    assert_eq!(err.to_string(), "permission denied: listen tcp://0.0.0.0:8000 is not granted");

    let udp = Policy::new(vec![Grant::parse(Action::Udp, "udp://10.0.0.53:53").unwrap()], false);
    assert_eq!(
        block_on(udp.resolve_bind(Use::UdpBind, None, 0)).unwrap(),
        None,
        "ephemeral is fine with any UDP grant"
    );
    assert!(block_on(udp.resolve_bind(Use::UdpBind, None, 9000)).is_err());
}

#[test]
fn the_address_only_check_agrees_with_the_table_on_ip_targets() {
    let mut checked = 0;
    for (grants, block_private, use_, host, port, expected) in cases() {
        let Some(ip) = parse_ip_literal(host) else { continue };
        let policy = policy_of(grants, block_private);
        let allowed = policy.check_addr(SocketAddr::new(ip, port), use_);
        assert_eq!(allowed, expected != Deny, "{grants:?} block_private={block_private} {use_:?} {host}:{port}");
        checked += 1;
    }
    assert!(checked > 30, "only {checked} IP cases in the table");
}

#[test]
fn the_address_only_check_for_binds_and_receives() {
    let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
    let listen = Policy::new(vec![Grant::parse(Action::Listen, "tcp://127.0.0.1:8000-8099").unwrap()], false);
    assert!(listen.check_addr(addr("127.0.0.1:8000"), Use::TcpListen));
    assert!(listen.check_addr(addr("[::ffff:127.0.0.1]:8000"), Use::TcpListen));
    assert!(!listen.check_addr(addr("127.0.0.1:8100"), Use::TcpListen));
    assert!(!listen.check_addr(addr("0.0.0.0:8000"), Use::TcpListen));
    assert!(!listen.check_addr(addr("127.0.0.1:8000"), Use::TcpConnect), "a listen grant is not a connect grant");

    let udp = Policy::new(vec![Grant::parse(Action::Udp, "udp://10.0.0.53:53").unwrap()], false);
    assert!(udp.check_addr(addr("0.0.0.0:0"), Use::UdpBind), "ephemeral is fine with any UDP grant");
    assert!(udp.check_addr(addr("[::]:0"), Use::UdpBind));
    assert!(!udp.check_addr(addr("0.0.0.0:9000"), Use::UdpBind));
    assert!(udp.check_addr(addr("10.0.0.53:53"), Use::UdpReceive));
    assert!(!udp.check_addr(addr("10.0.0.54:53"), Use::UdpReceive));
    assert!(!Policy::default().check_addr(addr("0.0.0.0:0"), Use::UdpBind), "no UDP at all by default");

    let names = policy_of(&["tcp://db.internal:5432"], false);
    assert!(!names.check_addr(addr("10.1.2.3:5432"), Use::TcpConnect), "a name grant never covers an address alone");
}

/// Public, for the parts of a form that are not under test.
const PUBLIC: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

/// `v4` in each IPv6 form the policy sees through, by name.
fn embeddings(v4: Ipv4Addr) -> Vec<(&'static str, Ipv6Addr)> {
    let [a, b, c, d] = v4.octets();
    let [p, q, r, s] = (!PUBLIC).octets(); // a Teredo client is stored inverted
    let [w, x, y, z] = (!v4).octets();
    let [e, f, g, h] = PUBLIC.octets();
    vec![
        ("NAT64 /96", [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d]),
        ("local-use NAT64 /48", [0, 0x64, 0xff, 0x9b, 0, 1, a, b, 0, c, d, 0, 0, 0, 0, 0]),
        ("local-use NAT64 /56", [0, 0x64, 0xff, 0x9b, 0, 1, 0, a, 0, b, c, d, 0, 0, 0, 0]),
        ("local-use NAT64 /64", [0, 0x64, 0xff, 0x9b, 0, 1, 0, 0, 0, a, b, c, d, 0, 0, 0]),
        ("local-use NAT64 /96", [0, 0x64, 0xff, 0x9b, 0, 1, 0, 0, 0, 0, 0, 0, a, b, c, d]),
        ("6to4", [0x20, 0x02, a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        ("Teredo server", [0x20, 0x01, 0, 0, a, b, c, d, 0, 0, 0, 0, p, q, r, s]),
        ("Teredo client", [0x20, 0x01, 0, 0, e, f, g, h, 0, 0, 0, 0, w, x, y, z]),
        ("IPv4-compatible", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d]),
        ("site-local", [0xfe, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d]),
    ]
    .into_iter()
    .map(|(form, octets)| (form, Ipv6Addr::from(octets)))
    .collect()
}

/// Every check refuses `ip` as a peer under `*` for UDP and TCP.
fn assert_denied_everywhere(block_private: bool, ip: Ipv6Addr, what: &str) {
    let policy = policy_of(&["udp://*:*", "tcp://*:*"], block_private);
    assert!(policy.is_blocked_ip(IpAddr::V6(ip)), "{what}: is_blocked_ip");
    for use_ in [U, C] {
        assert!(!policy.check_addr(SocketAddr::new(IpAddr::V6(ip), 53), use_), "{what}: check_addr {use_:?}");
        for host in [ip.to_string(), format!("[{ip}]")] {
            let checked = policy.check_literal(use_, &host, 53);
            assert!(matches!(checked, Some(Err(PolicyError::Denied { .. }))), "{what}: check_literal {use_:?} {host}");
        }
        let resolved = futures::executor::block_on(policy.resolve_outbound_with(use_, "any.example", 53, |_, port| {
            std::future::ready(Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]))
        }));
        assert!(matches!(resolved, Err(PolicyError::Denied { .. })), "{what}: a name resolving to it, {use_:?}");
    }
}

#[test]
fn embedded_ipv4_reads_each_form() {
    for v4 in [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(10, 0, 0, 1)] {
        for (form, ip) in embeddings(v4) {
            let candidates: Vec<Ipv4Addr> = embedded_ipv4(ip).collect();
            match form {
                "Teredo server" => assert_eq!(candidates, [v4, PUBLIC], "{form} {ip}"),
                "Teredo client" => assert_eq!(candidates, [PUBLIC, v4], "{form} {ip}"),
                "site-local" => assert!(candidates.is_empty(), "{form} {ip}: it blocks, but is no translated form"),
                f if f.starts_with("local-use") => {
                    assert!(!candidates.is_empty() && candidates.contains(&v4), "{form} {ip}: {candidates:?}")
                }
                _ => assert_eq!(candidates, [v4], "{form} {ip}"),
            }
        }
    }
    let of = |text: &str| embedded_ipv4(text.parse().unwrap()).collect::<Vec<_>>();
    assert_eq!(of("64:ff9b:1:a9fe:a9:fea9:fe00:0")[0], Ipv4Addr::new(169, 254, 169, 254), "/48, past the `u` octet");
    assert_eq!(of("::ffff:10.0.0.1"), [Ipv4Addr::new(10, 0, 0, 1)]);
    let plain = ["::", "::1", "2001:db8::1", "64:ff9b:2::a00:1", "64:ff9b:0:0:1::a00:1", "fe80::a00:1", "fec0::a00:1"];
    for ip in plain {
        assert!(of(ip).is_empty(), "{ip}");
    }
}

#[test]
fn blocked_ipv4_is_blocked_in_every_embedding() {
    let blocked =
        ["169.254.169.254", "100.100.100.200", "10.0.0.1", "127.0.0.1"].map(|ip| ip.parse::<Ipv4Addr>().unwrap());
    for v4 in blocked {
        for (form, ip) in embeddings(v4) {
            assert_denied_everywhere(true, ip, &format!("{v4} as {form} ({ip}), --block-private"));
        }
    }
}

#[test]
fn always_blocked_ipv4_is_blocked_in_every_embedding_without_block_private() {
    for v4 in [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(100, 100, 100, 200)] {
        for (form, ip) in embeddings(v4) {
            assert_denied_everywhere(false, ip, &format!("{v4} as {form} ({ip})"));
        }
    }
}

#[test]
fn public_ipv4_in_the_translated_forms_is_allowed_under_any() {
    let policy = policy_of(&["udp://*:*", "tcp://*:*"], true);
    let mut checked = 0;
    for (form, ip) in embeddings(PUBLIC) {
        // Local use reads zeros as 0.x.x.x (always blocked); site-local is private.
        if form.starts_with("local-use") || form == "site-local" {
            continue;
        }
        let what = format!("{PUBLIC} as {form} ({ip})");
        assert!(!policy.is_blocked_ip(IpAddr::V6(ip)), "{what}");
        for use_ in [U, C] {
            assert!(policy.check_addr(SocketAddr::new(IpAddr::V6(ip), 53), use_), "{what}: {use_:?}");
            let checked_literal = policy.check_literal(use_, &ip.to_string(), 53);
            assert_eq!(checked_literal.unwrap().unwrap(), SocketAddr::new(IpAddr::V6(ip), 53), "{what}: as given");
        }
        checked += 1;
    }
    assert_eq!(checked, 5);
}
