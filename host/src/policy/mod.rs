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
//!   private ranges, site-local `fec0::/10` and loopback), which defeats DNS
//!   rebinding;
//! - an IP target (however it is spelled: `127.1`, `0x7f.0.0.1`, `2130706433`,
//!   `::ffff:127.0.0.1` are all 127.0.0.1) is checked only against IP/CIDR grants
//!   (and `*`); a name grant never covers an IP literal;
//! - an IPv6 address with an IPv4 address inside ([`embedded_ipv4`]: NAT64
//!   `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`,
//!   IPv4-compatible `::a.b.c.d`) is judged as that IPv4 too, since a
//!   translator on the way reaches it: it is blocked if any IPv4 it may stand
//!   for is (`64:ff9b::a9fe:a9fe` is 169.254.169.254; the last 32 bits of a
//!   site-local address count too). A grant covers only what it names: an
//!   IPv4 grant does not cover IPv6 forms of its address, which leave by
//!   another route to another network's translator (`tcp://127.0.0.1:80`
//!   must not reach `[64:ff9b::7f00:1]` off the machine). What is connected
//!   to is the address given;
//! - an explicit IP/CIDR grant may open a blocked range on purpose; `*` does not.
//!
//! Each check names its [`Use`] (connect, listen, UDP bind, send, receive), the
//! shape of wasmtime's `SocketAddrUse`: the name-first checks
//! ([`Policy::resolve_outbound`], [`Policy::resolve_bind`]) for targets a guest
//! names, and [`Policy::check_addr`] for an address alone.
//!
//! This module imports nothing from the rest of the crate: it answers with its
//! own [`PolicyError`], and the name look-up is passed in (`*_with`; the plain
//! forms use the service's own [`resolve::Resolver`]). IP ranges are kept in `Pool`s of
//! cap-primitives (the crate behind cap-std). Apart from name resolution it
//! does no I/O, so its rules are tested with tables.
//!
//! - `grant`: the grant syntax; `addr`: address spellings and the blocked
//!   networks; [`resolve`]: the host's name look-ups, bounded per service.

mod addr;
mod error;
mod grant;
pub mod resolve;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use cap_primitives::ambient_authority;
use cap_primitives::net::Pool;

pub use addr::{MAX_HOST_LEN, check_host_text, embedded_ipv4, normalise_name, parse_ip_literal, unmap};
pub use error::PolicyError;
pub use grant::{Action, Grant, GrantError, HostPattern, Ports};

use addr::{ALWAYS_BLOCKED, PRIVATE, nets, site_local_ipv4};

/// What an address is being used for, and so which grant must cover it
/// (wasmtime's `SocketAddrUse`, less the implicit binds a connect makes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Open a TCP client connection to the address (`--allow-connect`).
    TcpConnect,
    /// Bind a guest's TCP listener to the address (`--allow-listen`).
    TcpListen,
    /// Bind a UDP socket to the address (`--allow-udp`).
    UdpBind,
    /// Send a datagram to the address (`--allow-udp`).
    UdpSend,
    /// Take a datagram from the address, which the socket has not sent to
    /// (`--allow-udp`).
    UdpReceive,
}

impl Use {
    /// The kind of grant that covers this use.
    pub fn action(self) -> Action {
        match self {
            Use::TcpConnect => Action::Connect,
            Use::TcpListen => Action::Listen,
            Use::UdpBind | Use::UdpSend | Use::UdpReceive => Action::Udp,
        }
    }

    /// How a denial names the use: `permission denied: send to udp://...`.
    pub fn verb(self) -> &'static str {
        match self {
            Use::TcpConnect => "connect",
            Use::TcpListen => "listen",
            Use::UdpBind => "bind",
            Use::UdpSend => "send to",
            Use::UdpReceive => "receive from",
        }
    }

    fn is_bind(self) -> bool {
        matches!(self, Use::TcpListen | Use::UdpBind)
    }
}

/// The grants of one service, ready to check.
pub struct Policy {
    grants: Vec<Grant>,
    /// IP/CIDR grants per action, as cap-primitives pools.
    ip_pools: [Pool; 3],
    blocked: Pool,
    /// The service's own name look-ups (at most `resolve::MAX_LOOKUPS`
    /// under way, on threads of their own).
    resolver: resolve::Resolver,
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
        Policy { grants, ip_pools, blocked, resolver: resolve::Resolver::new() }
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

    /// The ports `action`'s grants give `name` by name (`db.internal`,
    /// `*.internal`, `*`): what a WASI guest's look-up of the name may lead
    /// to (a connect, a listen, UDP). A WASI guest looks a name up before it
    /// says what for, so the look-up is checked on the name alone. Empty: no
    /// grant names it.
    ///
    /// ```
    /// use portcullis::policy::{Action, Policy};
    /// let policy = Policy::parse(&["tcp://db.internal:5432".into()], &[], &[], false).unwrap();
    /// assert_eq!(policy.ports_for_name(Action::Connect, "DB.internal.").len(), 1);
    /// assert!(policy.ports_for_name(Action::Udp, "db.internal").is_empty());
    /// ```
    pub fn ports_for_name(&self, action: Action, name: &str) -> Vec<Ports> {
        let name = normalise_name(name);
        self.grants.iter().filter(|g| g.action == action && g.matches_name(&name)).map(|g| g.ports).collect()
    }

    /// Looks `name` up with the service's own [`resolve::Resolver`] (the
    /// caller has checked the grants).
    pub async fn lookup(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self.resolver.lookup(name, port).await
    }

    /// Whether `ip` is in a network no name grant reaches (always blocked,
    /// and private ones with `--block-private`), or stands for an IPv4
    /// address that is ([`embedded_ipv4`]).
    pub fn is_blocked_ip(&self, ip: IpAddr) -> bool {
        self.is_blocked(unmap(ip))
    }

    fn has_any(&self, action: Action) -> bool {
        self.grants.iter().any(|g| g.action == action)
    }

    /// In a blocked network, itself or through any IPv4 address inside it.
    fn is_blocked(&self, ip: IpAddr) -> bool {
        let blocked = |ip: IpAddr| self.blocked.check_addr(&SocketAddr::new(ip, 0)).is_ok();
        let IpAddr::V6(v6) = ip else { return blocked(ip) };
        blocked(ip) || embedded_ipv4(v6).chain(site_local_ipv4(v6)).any(|v4| blocked(IpAddr::V4(v4)))
    }

    /// Covered by an IP grant, as written: an IPv4 grant does not cover an
    /// IPv6 form of its address (see the module's docs).
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
    fn allows_peer(&self, action: Action, addr: SocketAddr) -> bool {
        let addr = SocketAddr::new(unmap(addr.ip()), addr.port());
        self.ip_granted(action, addr) || (self.any_granted(action, addr.port()) && !self.is_blocked(addr.ip()))
    }

    /// May a local address be bound? (An IP grant or `*` for the port.)
    fn allows_bind(&self, action: Action, addr: SocketAddr) -> bool {
        self.ip_granted(action, addr) || self.any_granted(action, addr.port())
    }

    /// The address-only check: may `addr` be used for `use_`? For a peer
    /// (connect, send, receive), an IP grant covers it, or `*` does outside the
    /// blocked networks; a name grant never does (it holds on names, before
    /// resolution). For a bind, an IP grant or `*` for the port; an ephemeral UDP
    /// bind (`0.0.0.0:0`, `[::]:0`) needs only some UDP grant, since sends are
    /// checked one by one. (That is what a socket's implicit bind asks, so it
    /// matches [`Policy::resolve_bind`] with no host; `resolve_bind` given the
    /// text `0.0.0.0` checks it as a named address, against the grants.)
    ///
    /// ```
    /// use portcullis::policy::{Policy, Use};
    /// let policy = Policy::parse(&[], &[], &["udp://10.0.0.53:53".into()], false).unwrap();
    /// assert!(policy.check_addr("10.0.0.53:53".parse().unwrap(), Use::UdpSend));
    /// assert!(!policy.check_addr("10.0.0.54:53".parse().unwrap(), Use::UdpSend));
    /// assert!(policy.check_addr("0.0.0.0:0".parse().unwrap(), Use::UdpBind));
    /// ```
    pub fn check_addr(&self, addr: SocketAddr, use_: Use) -> bool {
        let action = use_.action();
        if !use_.is_bind() {
            return self.allows_peer(action, addr);
        }
        if use_ == Use::UdpBind && addr.ip().is_unspecified() && addr.port() == 0 {
            return self.has_any(Action::Udp);
        }
        self.allows_bind(action, SocketAddr::new(unmap(addr.ip()), addr.port()))
    }

    /// Resolves an outbound target (`connect`, UDP `send-to`) under the grants:
    /// the addresses it may reach, or [`PolicyError::Denied`] naming it. Names
    /// are looked up by the service's own [`resolve::Resolver`].
    pub async fn resolve_outbound(&self, use_: Use, host: &str, port: u16) -> Result<Vec<SocketAddr>, PolicyError> {
        self.resolve_outbound_with(
            use_,
            host,
            port,
            |name, port| async move { self.resolver.lookup(&name, port).await },
        )
        .await
    }

    /// [`Policy::resolve_outbound`] for an IP literal, which needs no lookup (so
    /// no waiting): `None` when `host` is a name.
    pub fn check_literal(&self, use_: Use, host: &str, port: u16) -> Option<Result<SocketAddr, PolicyError>> {
        if let Err(e) = check_host_text(host) {
            return Some(Err(e));
        }
        let addr = SocketAddr::new(parse_ip_literal(host)?, port);
        Some(if self.allows_peer(use_.action(), addr) { Ok(addr) } else { Err(denial(use_, host, port)) })
    }

    /// [`Policy::resolve_outbound`] with the name lookup passed in (tests use a table).
    pub async fn resolve_outbound_with<F, Fut>(
        &self,
        use_: Use,
        host: &str,
        port: u16,
        lookup: F,
    ) -> Result<Vec<SocketAddr>, PolicyError>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        if let Some(checked) = self.check_literal(use_, host, port) {
            return checked.map(|addr| vec![addr]);
        }
        let action = use_.action();
        let name = normalise_name(host);
        let by_name = self.name_granted(action, &name, port);
        if !by_name && !self.ip_grants_for_port(action, port) {
            return Err(denial(use_, host, port)); // not even resolved: no lookup for what is not granted
        }
        let addrs = lookup(name, port).await.map_err(PolicyError::Lookup)?;
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
            let message = format!(
                "permission denied: {} {} resolves only to blocked addresses ({})",
                use_.verb(),
                target_text(use_, host, port),
                blocked.join(", ")
            );
            return Err(PolicyError::Denied { use_, message });
        }
        Err(denial(use_, host, port))
    }

    /// Resolves a local address to bind (`listen`, UDP `bind`) under the grants.
    /// `None` as host is all interfaces (checked as `0.0.0.0`); port 0 is an
    /// ephemeral port (a grant must cover port 0, or for UDP any grant will do).
    pub async fn resolve_bind(
        &self,
        use_: Use,
        host: Option<&str>,
        port: u16,
    ) -> Result<Option<SocketAddr>, PolicyError> {
        self.resolve_bind_with(use_, host, port, |name, port| async move { self.resolver.lookup(&name, port).await })
            .await
    }

    /// [`Policy::resolve_bind`] with the name lookup passed in.
    pub async fn resolve_bind_with<F, Fut>(
        &self,
        use_: Use,
        host: Option<&str>,
        port: u16,
        lookup: F,
    ) -> Result<Option<SocketAddr>, PolicyError>
    where
        F: FnOnce(String, u16) -> Fut,
        Fut: Future<Output = io::Result<Vec<SocketAddr>>>,
    {
        let shown = host.unwrap_or("0.0.0.0");
        check_host_text(shown)?;
        let action = use_.action();
        if use_ == Use::UdpBind && host.is_none() && port == 0 {
            // An ephemeral UDP socket reaches nothing by itself; sends are checked.
            return if self.has_any(Action::Udp) { Ok(None) } else { Err(denial(use_, shown, port)) };
        }
        let ip = match host {
            None => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Some(h) => parse_ip_literal(h),
        };
        if let Some(ip) = ip {
            let addr = SocketAddr::new(ip, port);
            return match (self.allows_bind(action, addr), host) {
                (false, _) => Err(denial(use_, shown, port)),
                (true, None) => Ok(None),
                (true, Some(_)) => Ok(Some(addr)),
            };
        }
        let name = normalise_name(shown);
        if !self.name_granted(action, &name, port) {
            return Err(denial(use_, shown, port));
        }
        let addrs = lookup(name, port).await.map_err(PolicyError::Lookup)?;
        Ok(addrs.into_iter().next())
    }
}

/// `tcp://db.internal:5432`, `udp://[::1]:53`: a target as denials name it.
pub fn target_text(use_: Use, host: &str, port: u16) -> String {
    let host = match parse_ip_literal(host) {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => host.to_string(),
    };
    format!("{}://{host}:{port}", use_.action().scheme())
}

/// `permission denied: connect tcp://10.0.0.5:5432 is not granted`.
fn denial(use_: Use, host: &str, port: u16) -> PolicyError {
    let message = format!("permission denied: {} {} is not granted", use_.verb(), target_text(use_, host, port));
    PolicyError::Denied { use_, message }
}

#[cfg(test)]
mod tests;
