//! Standard `wasi:sockets` (0.3.0) for components that import it (the SDK's
//! WASI backend, or any WASI 0.3 program), under the operator's policy.
//!
//! wasmtime-wasi implements the sockets; this module decides what they may
//! reach, through its two hooks, and bounds the UDP receives under way
//! (`udp-socket.receive`, shadowed: [`MAX_UDP_RECEIVES`]):
//! - every address a socket uses goes through [`WasiSockets::check`]
//!   (wasmtime-wasi's socket address check): binds and listens only where
//!   `--listen` says or an `--allow-listen` grant covers; connects, UDP
//!   binds, sends and receives by the `--allow-*` grants and the blocked
//!   networks, as for native components;
//! - name look-ups go through [`WasiSockets::resolve`], which shadows
//!   wasmtime-wasi's `resolve-addresses`: only names a grant covers are
//!   looked up, a name any of whose addresses is blocked is refused whole,
//!   and the addresses a granted name resolved to are admitted for that
//!   grant's ports for [`NAME_ADMISSION`] (a WASI guest connects to the
//!   addresses, not the name, so the grant by name must follow them).
//!
//! Denials are logged as for native components (coalesced per component);
//! datagrams from senders no grant covers are dropped by wasmtime-wasi.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Accessor, Linker};
use wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::ErrorCode;
use wasmtime_wasi::p3::bindings::sockets::types::IpAddress;
use wasmtime_wasi::sockets::SocketAddrUse;

use crate::coalesce::Coalesced;
use crate::policy::{self, Action, Policy, Ports, Use};
use crate::state::HostState;

/// How long the addresses a granted name resolved to stay admitted.
pub const NAME_ADMISSION: Duration = Duration::from_secs(60);
/// The most admitted (address, grant) pairs one component keeps; the
/// oldest go first.
const MAX_ADMITTED: usize = 4096;
/// The most UDP receives one component has under way at once: wasmtime-wasi
/// sets aside a 64 KiB buffer for each as it starts, which a guest could
/// otherwise multiply without bound; more wait for a turn.
pub const MAX_UDP_RECEIVES: usize = 16;
/// The most component-model handles (sockets, streams, futures, calls under
/// way) one WASI-backend instance holds, per socket of `--max-sockets`: an
/// SDK connection takes about eight. Past it, the instance traps.
pub const HANDLES_PER_SOCKET: usize = 16;

/// The most name look-ups one component has under way at once, each on a
/// thread of the blocking pool until the resolver answers (the guest waits
/// at most `policy::resolve::RESOLVE_TIMEOUT`); more fail at once with
/// `temporary-resolver-failure`.
pub const MAX_LOOKUPS: usize = 8;

/// The policy of one component's standard sockets.
pub struct WasiSockets {
    policy: Arc<Policy>,
    /// `--listen`: where the guest may bind and listen (port 0: any port of
    /// that address).
    listen: Vec<SocketAddr>,
    admitted: Mutex<Vec<Admitted>>,
    /// Held by each look-up's resolver thread until that thread ends (a
    /// look-up given up on keeps its thread busy).
    lookups: Arc<tokio::sync::Semaphore>,
    udp_receives: Arc<tokio::sync::Semaphore>,
    denials: Arc<Coalesced>,
    /// Datagrams from senders no grant covers (wasmtime-wasi drops them).
    udp_refusals: Arc<Coalesced>,
}

/// An address a granted name resolved to, for that grant's ports.
struct Admitted {
    ip: IpAddr,
    action: Action,
    ports: Ports,
    until: Instant,
}

impl WasiSockets {
    pub fn new(
        policy: Arc<Policy>,
        listen: Vec<SocketAddr>,
        denials: Arc<Coalesced>,
        udp_refusals: Arc<Coalesced>,
    ) -> Arc<Self> {
        let lookups = Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS));
        let udp_receives = Arc::new(tokio::sync::Semaphore::new(MAX_UDP_RECEIVES));
        Arc::new(WasiSockets {
            policy,
            listen,
            admitted: Mutex::default(),
            lookups,
            udp_receives,
            denials,
            udp_refusals,
        })
    }

    /// wasmtime-wasi's socket address check: may the guest use `addr` for `use_`?
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use portcullis::policy::Policy;
    /// use portcullis::wasi_sockets::WasiSockets;
    /// use wasmtime_wasi::sockets::SocketAddrUse;
    /// let policy = Policy::parse(&["tcp://127.0.0.1:7000".into()], &[], &[], false).unwrap();
    /// let log = || portcullis::coalesce::Coalesced::new("denials", None);
    /// let sockets = WasiSockets::new(Arc::new(policy), vec!["127.0.0.1:0".parse().unwrap()], log(), log());
    /// assert!(sockets.check("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpConnect));
    /// assert!(!sockets.check("127.0.0.1:7001".parse().unwrap(), SocketAddrUse::TcpConnect));
    /// assert!(sockets.check("127.0.0.1:41234".parse().unwrap(), SocketAddrUse::TcpListen));
    /// assert!(!sockets.check("0.0.0.0:41234".parse().unwrap(), SocketAddrUse::TcpListen));
    /// ```
    pub fn check(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let addr = SocketAddr::new(policy::unmap(addr.ip()), addr.port());
        let (allowed, denied_use) = match use_ {
            // An ephemeral bind reaches nothing (a connect makes one); a
            // fixed port would take it from others, so it needs a listen.
            SocketAddrUse::TcpBind => (addr.port() == 0 || self.may_listen(addr), Use::TcpListen),
            SocketAddrUse::TcpListen => (self.may_listen(addr), Use::TcpListen),
            SocketAddrUse::TcpAccept => (true, Use::TcpListen),
            SocketAddrUse::TcpConnect => (self.reaches(addr, Use::TcpConnect), Use::TcpConnect),
            SocketAddrUse::UdpBind => (self.reaches(addr, Use::UdpBind), Use::UdpBind),
            SocketAddrUse::UdpSend => (self.reaches(addr, Use::UdpSend), Use::UdpSend),
            // Dropped by wasmtime-wasi, as portcullis drops them: logged, coalesced.
            SocketAddrUse::UdpReceive => {
                let admitted = self.reaches(addr, Use::UdpReceive);
                if !admitted {
                    self.udp_refusals
                        .warn(|| format!("datagram from {addr} dropped: no grant covers it (wasi:sockets)"));
                }
                return admitted;
            }
        };
        if !allowed {
            self.denials.warn(|| {
                let target = policy::target_text(denied_use, &addr.ip().to_string(), addr.port());
                format!("permission denied: {} {target} is not granted (wasi:sockets)", denied_use.verb())
            });
        }
        allowed
    }

    /// `--listen` says so, or a listen grant (by address, or by a name that
    /// resolved to it).
    fn may_listen(&self, addr: SocketAddr) -> bool {
        let listed = self
            .listen
            .iter()
            .any(|l| policy::unmap(l.ip()) == addr.ip() && (l.port() == 0 || l.port() == addr.port()));
        listed || self.reaches(addr, Use::TcpListen)
    }

    /// Granted by address, or admitted through a granted name.
    fn reaches(&self, addr: SocketAddr, use_: Use) -> bool {
        if self.policy.check_addr(addr, use_) {
            return true;
        }
        let now = Instant::now();
        let admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        admitted
            .iter()
            .any(|a| a.ip == addr.ip() && a.action == use_.action() && a.ports.contains(addr.port()) && a.until > now)
    }

    /// `resolve-addresses` under the grants: only a name a connect, listen or
    /// UDP grant covers is looked up; all its addresses must be outside the
    /// blocked networks; they are then admitted for the grant's ports.
    /// An IP literal resolves to itself (its uses are checked).
    pub async fn resolve(&self, name: String) -> Result<Vec<IpAddr>, ErrorCode> {
        if policy::check_host_text(&name).is_err() {
            return Err(ErrorCode::InvalidArgument);
        }
        if let Some(ip) = policy::parse_ip_literal(&name) {
            return Ok(vec![ip]);
        }
        let grants: Vec<(Action, Ports)> = [Action::Connect, Action::Listen, Action::Udp]
            .into_iter()
            .flat_map(|action| self.policy.ports_for_name(action, &name).into_iter().map(move |p| (action, p)))
            .collect();
        if grants.is_empty() {
            self.denials.warn(|| format!("permission denied: look up {name}: no grant names it (wasi:sockets)"));
            return Err(ErrorCode::AccessDenied);
        }
        let Ok(turn) = self.lookups.clone().try_acquire_owned() else {
            self.denials.warn(|| format!("look-up of {name} refused: {MAX_LOOKUPS} already under way (wasi:sockets)"));
            return Err(ErrorCode::TemporaryResolverFailure);
        };
        // The resolver thread holds the turn until it ends, even when the
        // guest gave up on it (or it timed out): at most MAX_LOOKUPS threads.
        let wanted = policy::normalise_name(&name);
        let lookup = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            std::net::ToSocketAddrs::to_socket_addrs(&(wanted.as_str(), 0)).map(|addrs| addrs.collect::<Vec<_>>())
        });
        let addrs = match tokio::time::timeout(policy::resolve::RESOLVE_TIMEOUT, lookup).await {
            Ok(Ok(Ok(addrs))) if !addrs.is_empty() => addrs,
            Err(_) => return Err(ErrorCode::TemporaryResolverFailure),
            _ => return Err(ErrorCode::NameUnresolvable),
        };
        let mut ips: Vec<IpAddr> = addrs.iter().map(|a| policy::unmap(a.ip())).collect();
        ips.dedup();
        let blocked: Vec<String> =
            ips.iter().filter(|ip| self.policy.is_blocked_ip(**ip)).map(|ip| ip.to_string()).collect();
        if !blocked.is_empty() {
            self.denials.warn(|| {
                format!(
                    "permission denied: {name} resolves to blocked addresses ({}) (wasi:sockets)",
                    blocked.join(", ")
                )
            });
            return Err(ErrorCode::AccessDenied);
        }
        let until = Instant::now() + NAME_ADMISSION;
        let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        admitted.retain(|a| a.until > now);
        for ip in &ips {
            for (action, ports) in &grants {
                // A look-up repeated renews its admission rather than adding one.
                match admitted.iter_mut().find(|a| a.ip == *ip && a.action == *action && a.ports == *ports) {
                    Some(known) => known.until = until,
                    None => admitted.push(Admitted { ip: *ip, action: *action, ports: *ports, until }),
                }
            }
        }
        let over = admitted.len().saturating_sub(MAX_ADMITTED);
        admitted.drain(..over);
        Ok(ips)
    }
}

/// The `wasi:sockets/ip-name-lookup` version that wasmtime-wasi's p3 links.
const NAME_LOOKUP_INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.3.0";

/// The `wasi:sockets/types` version that wasmtime-wasi's p3 links.
const TYPES_INTERFACE: &str = "wasi:sockets/types@0.3.0";

/// Shadows, in `linker` (after `wasmtime_wasi::p3::add_to_linker`),
/// `resolve-addresses` with [`WasiSockets::resolve`] (an instance without
/// standard sockets is refused every look-up) and `udp-socket.receive` with
/// wasmtime-wasi's own under [`MAX_UDP_RECEIVES`].
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p3::bindings::sockets::types::{ErrorCode as SocketErrorCode, HostUdpSocketWithStore};
    use wasmtime_wasi::sockets::{UdpSocket, WasiSocketsView};
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES_INTERFACE)?;
    types.func_wrap_concurrent(
        "[method]udp-socket.receive",
        |acc: &Accessor<HostState>, (socket,): (wasmtime::component::Resource<UdpSocket>,)| {
            Box::pin(async move {
                let turns = acc.with(|mut access| access.get().wasi_sockets.as_ref().map(|s| s.udp_receives.clone()));
                let _turn = match &turns {
                    Some(turns) => Some(turns.acquire().await?),
                    None => None,
                };
                let sockets = acc.with_getter::<wasmtime_wasi::sockets::WasiSockets>(|state| state.sockets());
                let received: Result<(Vec<u8>, _), SocketErrorCode> =
                    match wasmtime_wasi::sockets::WasiSockets::receive(&sockets, socket).await {
                        Ok(received) => Ok(received),
                        Err(e) => Err(e.downcast()?),
                    };
                Ok((received,))
            })
        },
    )?;
    let mut lookup = linker.instance(NAME_LOOKUP_INTERFACE)?;
    lookup.func_wrap_concurrent("resolve-addresses", |acc: &Accessor<HostState>, (name,): (String,)| {
        Box::pin(async move {
            let sockets = acc.with(|mut access| access.get().wasi_sockets.clone());
            let resolved = match sockets {
                Some(sockets) => sockets.resolve(name).await,
                None => Err(ErrorCode::AccessDenied),
            };
            Ok((resolved.map(|ips| ips.into_iter().map(IpAddress::from).collect::<Vec<_>>()),))
        })
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(
        connect: &[&str],
        listen_grants: &[&str],
        udp: &[&str],
        listen: &[&str],
        block: bool,
    ) -> Arc<WasiSockets> {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let policy = Policy::parse(&strings(connect), &strings(listen_grants), &strings(udp), block).unwrap();
        let listen = listen.iter().map(|a| a.parse().unwrap()).collect();
        let log = || Coalesced::new("test", None);
        WasiSockets::new(Arc::new(policy), listen, log(), log())
    }

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn binds_and_listens_only_where_listen_or_a_listen_grant_says() {
        let s = sockets(&[], &["tcp://127.0.0.2:9000"], &[], &["127.0.0.1:7000", "[::1]:0"], false);
        // Ephemeral binds (a connect makes one) reach nothing.
        assert!(s.check(at("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(s.check(at("127.0.0.1:7000"), SocketAddrUse::TcpBind));
        assert!(s.check(at("127.0.0.1:7000"), SocketAddrUse::TcpListen));
        assert!(!s.check(at("127.0.0.1:7001"), SocketAddrUse::TcpBind), "a fixed port would be taken from others");
        assert!(!s.check(at("0.0.0.0:7000"), SocketAddrUse::TcpListen), "all interfaces is not 127.0.0.1");
        // Port 0 in --listen: any port of that address.
        assert!(s.check(at("[::1]:45678"), SocketAddrUse::TcpListen));
        assert!(!s.check(at("[::2]:45678"), SocketAddrUse::TcpListen));
        // A listen grant.
        assert!(s.check(at("127.0.0.2:9000"), SocketAddrUse::TcpListen));
        assert!(!s.check(at("127.0.0.2:9001"), SocketAddrUse::TcpListen));
        // An implicit listen (no bind first) is on all interfaces, port 0.
        assert!(!s.check(at("0.0.0.0:0"), SocketAddrUse::TcpListen));
    }

    #[test]
    fn peers_by_the_grants_and_the_blocked_networks() {
        let s = sockets(&["tcp://127.0.0.1:80", "tcp://*:443"], &[], &["udp://10.0.0.53:53"], &[], false);
        assert!(s.check(at("127.0.0.1:80"), SocketAddrUse::TcpConnect));
        assert!(s.check(at("[::ffff:127.0.0.1]:80"), SocketAddrUse::TcpConnect), "a mapped spelling is the same");
        assert!(!s.check(at("127.0.0.1:81"), SocketAddrUse::TcpConnect));
        assert!(s.check(at("93.184.216.34:443"), SocketAddrUse::TcpConnect));
        assert!(!s.check(at("169.254.169.254:443"), SocketAddrUse::TcpConnect), "`*` never reaches a blocked network");
        // UDP: an ephemeral bind with any UDP grant, then sends and receives.
        assert!(s.check(at("0.0.0.0:0"), SocketAddrUse::UdpBind));
        assert!(s.check(at("10.0.0.53:53"), SocketAddrUse::UdpSend));
        assert!(s.check(at("10.0.0.53:53"), SocketAddrUse::UdpReceive));
        assert!(!s.check(at("10.0.0.54:53"), SocketAddrUse::UdpReceive));
        // Connect grants are not UDP grants.
        assert!(!s.check(at("127.0.0.1:80"), SocketAddrUse::UdpSend));
    }

    #[tokio::test]
    async fn a_granted_name_admits_its_addresses_for_its_own_ports_and_use() {
        let s = sockets(&["tcp://localhost:7000"], &[], &[], &[], false);
        assert!(!s.check(at("127.0.0.1:7000"), SocketAddrUse::TcpConnect), "not before the look-up");
        let ips = s.resolve("LOCALHOST.".into()).await.unwrap();
        assert!(ips.iter().any(|ip| ip.is_loopback()), "{ips:?}");
        let ip = ips[0];
        assert!(s.check(SocketAddr::new(ip, 7000), SocketAddrUse::TcpConnect));
        assert!(!s.check(SocketAddr::new(ip, 7001), SocketAddrUse::TcpConnect), "another port");
        assert!(!s.check(SocketAddr::new(ip, 7000), SocketAddrUse::UdpSend), "another use");
    }

    #[tokio::test]
    async fn a_listen_or_udp_grant_by_name_admits_binds_to_its_addresses() {
        let s = sockets(&[], &["tcp://localhost:9000"], &["udp://localhost:5000"], &[], false);
        let ip = s.resolve("localhost".into()).await.unwrap()[0];
        assert!(s.check(SocketAddr::new(ip, 9000), SocketAddrUse::TcpBind));
        assert!(s.check(SocketAddr::new(ip, 9000), SocketAddrUse::TcpListen));
        assert!(!s.check(SocketAddr::new(ip, 9001), SocketAddrUse::TcpListen));
        assert!(s.check(SocketAddr::new(ip, 5000), SocketAddrUse::UdpBind));
        assert!(!s.check(SocketAddr::new(ip, 5000), SocketAddrUse::TcpConnect));
        // Looked up again: renewed, not added.
        let before = s.admitted.lock().unwrap().len();
        s.resolve("localhost".into()).await.unwrap();
        assert_eq!(s.admitted.lock().unwrap().len(), before);
    }

    #[tokio::test]
    async fn names_no_grant_names_or_that_reach_blocked_networks_are_not_resolved() {
        let s = sockets(&["tcp://127.0.0.1:*"], &[], &[], &[], false);
        assert!(matches!(s.resolve("localhost".into()).await, Err(ErrorCode::AccessDenied)));
        let s = sockets(&["tcp://localhost:*"], &[], &[], &[], true);
        assert!(matches!(s.resolve("localhost".into()).await, Err(ErrorCode::AccessDenied)), "loopback is blocked");
        assert!(matches!(s.resolve("bad name\n".into()).await, Err(ErrorCode::InvalidArgument)));
        assert!(matches!(s.resolve("x".repeat(300)).await, Err(ErrorCode::InvalidArgument)));
        // An IP literal resolves to itself; its use is checked later.
        assert!(matches!(s.resolve("0x7f.1".into()).await, Ok(ips) if ips == vec![IpAddr::from([127, 0, 0, 1])]));
    }
}
