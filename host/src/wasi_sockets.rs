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
//! - name look-ups (WASI 0.3 and 0.2) go through [`WasiSockets::resolve`],
//!   which shadows wasmtime-wasi's `resolve-addresses`: only names a grant covers are
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
use crate::metrics::{Operation, ServiceMetrics};
use crate::policy::{self, Action, Policy, Ports, Use};

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

/// The longest name text [`WasiSockets::resolve`] looks at; longer is
/// `invalid-argument` at once.
pub const MAX_NAME_TEXT: usize = 1024;

/// The policy of one component's standard sockets.
pub struct WasiSockets {
    policy: Arc<Policy>,
    /// `--listen`: where the guest may bind and listen (port 0: any port of
    /// that address).
    listen: Vec<SocketAddr>,
    /// The port each `--listen` address of port 0 got at the guest's first
    /// listen there (0: none yet): later instances are told it, so that a
    /// service keeps its address across restarts.
    first_ports: Mutex<Vec<u16>>,
    /// Connections its listeners accepted, ever (a service that accepted
    /// none before it ended was in no client's service: a crash loop).
    accepted: std::sync::atomic::AtomicU64,
    /// Whether any instance has listened (a service that ends before it
    /// ever did could not start: its exit status is the process's).
    listened: std::sync::atomic::AtomicBool,
    admitted: Mutex<Vec<Admitted>>,
    udp_receives: Arc<tokio::sync::Semaphore>,
    denials: Arc<Coalesced>,
    /// Datagrams from senders no grant covers (wasmtime-wasi drops them).
    udp_refusals: Arc<Coalesced>,
    /// The service's counters (accepted connections, denials).
    metrics: Arc<ServiceMetrics>,
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
        metrics: Arc<ServiceMetrics>,
    ) -> Arc<Self> {
        let udp_receives = Arc::new(tokio::sync::Semaphore::new(MAX_UDP_RECEIVES));
        let first_ports = Mutex::new(vec![0; listen.len()]);
        Arc::new(WasiSockets {
            policy,
            listen,
            first_ports,
            accepted: Default::default(),
            listened: Default::default(),
            admitted: Mutex::default(),
            udp_receives,
            denials,
            udp_refusals,
            metrics,
        })
    }

    /// wasmtime-wasi's socket address check: may the guest use `addr` for `use_`?
    pub fn check(&self, addr: SocketAddr, use_: SocketAddrUse) -> bool {
        let addr = SocketAddr::new(policy::unmap(addr.ip()), addr.port());
        let (allowed, denied_use) = match use_ {
            // An ephemeral bind reaches nothing (a connect makes one); a
            // fixed port would take it from others, so it needs a listen.
            SocketAddrUse::TcpBind => (addr.port() == 0 || self.may_listen(addr), Use::TcpListen),
            SocketAddrUse::TcpListen => {
                let allowed = self.may_listen(addr);
                if allowed {
                    self.listened.store(true, std::sync::atomic::Ordering::Relaxed);
                    self.note_listen(addr);
                }
                (allowed, Use::TcpListen)
            }
            SocketAddrUse::TcpAccept => {
                self.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.metrics.cx_total.inc();
                (true, Use::TcpListen)
            }
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
            self.metrics.denied(crate::net::operation_of(denied_use));
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

    /// Keeps the port of the guest's first listen on a `--listen` address of
    /// port 0 (a listen's check is given the bound address).
    fn note_listen(&self, addr: SocketAddr) {
        let mut first_ports = self.first_ports.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.listen.iter().position(|l| l.port() == 0 && policy::unmap(l.ip()) == addr.ip());
        if let Some(i) = entry
            && first_ports[i] == 0
        {
            first_ports[i] = addr.port();
        }
    }

    /// Where the guest is told to listen (`PORTCULLIS_LISTEN`): `--listen`,
    /// with each port 0 that a listen has fixed replaced by its port.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let first_ports = self.first_ports.lock().unwrap_or_else(|e| e.into_inner());
        self.listen
            .iter()
            .zip(first_ports.iter())
            .map(|(l, &port)| if port == 0 { *l } else { SocketAddr::new(l.ip(), port) })
            .collect()
    }

    /// Connections its listeners accepted so far, all instances together.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether any instance has listened yet.
    pub fn listened(&self) -> bool {
        self.listened.load(std::sync::atomic::Ordering::Relaxed)
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
    /// An IP literal resolves to itself (its uses are checked). Text that is
    /// not a name (`localhost:80`, `a b`) is `invalid-argument`, as
    /// wasi:sockets specifies; a Unicode name is looked up (and matched
    /// against the grants) in its ASCII form (IDNA: `bücher.example` is
    /// `xn--bcher-kva.example`).
    pub async fn resolve(&self, name: String) -> Result<Vec<IpAddr>, ErrorCode> {
        // Before any parsing: IDNA over megabytes of text runs long in one
        // host call, where no CPU bound reaches (a name is at most 253 bytes
        // in ASCII; its Unicode form is no longer than a few times that).
        if name.len() > MAX_NAME_TEXT {
            return Err(ErrorCode::InvalidArgument);
        }
        if let Some(ip) = policy::parse_ip_literal(&name) {
            return Ok(vec![ip]);
        }
        let name = match url::Host::parse(&name) {
            Ok(url::Host::Domain(ascii)) => ascii,
            Ok(url::Host::Ipv4(ip)) => return Ok(vec![IpAddr::V4(ip)]),
            Ok(url::Host::Ipv6(ip)) => return Ok(vec![policy::unmap(IpAddr::V6(ip))]),
            Err(_) => return Err(ErrorCode::InvalidArgument),
        };
        if policy::check_host_text(&name).is_err() {
            return Err(ErrorCode::InvalidArgument);
        }
        let grants: Vec<(Action, Ports)> = [Action::Connect, Action::Listen, Action::Udp]
            .into_iter()
            .flat_map(|action| self.policy.ports_for_name(action, &name).into_iter().map(move |p| (action, p)))
            .collect();
        if grants.is_empty() {
            self.metrics.denied(Operation::lookup);
            self.denials.warn(|| format!("permission denied: look up {name}: no grant names it (wasi:sockets)"));
            return Err(ErrorCode::AccessDenied);
        }
        let addrs = match self.policy.lookup(&policy::normalise_name(&name), 0).await {
            Ok(addrs) => addrs,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(ErrorCode::TemporaryResolverFailure),
            Err(_) => return Err(ErrorCode::NameUnresolvable),
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in addrs.iter().map(|a| policy::unmap(a.ip())) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        let blocked: Vec<String> =
            ips.iter().filter(|ip| self.policy.is_blocked_ip(**ip)).map(|ip| ip.to_string()).collect();
        if !blocked.is_empty() {
            self.metrics.denied(Operation::lookup);
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

/// What a store's data gives standard sockets: WASI's own view (its table
/// and sockets), the component's policy of them, and where failed accepts
/// are logged.
pub trait WasiSocketsHost: wasmtime_wasi::WasiView + 'static {
    /// The component's standard sockets under its policy; `None` for a
    /// component without them (every look-up is refused).
    fn standard_sockets(&self) -> Option<&Arc<WasiSockets>>;
    /// The service's failed accepts, coalesced.
    fn accept_failures(&self) -> &Arc<Coalesced>;
}

/// The `wasi:sockets/ip-name-lookup` version that wasmtime-wasi's p3 links.
const NAME_LOOKUP_INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.3.0";

/// The same for p2 (guests' older 0.2 imports resolve to it).
const NAME_LOOKUP_INTERFACE_P2: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// A WASI 0.2 `resolve-address-stream`: a look-up through
/// [`WasiSockets::resolve`], then its addresses one by one.
pub struct NameLookup(LookupState);

enum LookupState {
    Pending(std::pin::Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ErrorCode>> + Send>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl NameLookup {
    /// Polls a look-up under way once; `false`: still under way.
    fn poll_done(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if let LookupState::Pending(lookup) = &mut self.0 {
            match lookup.as_mut().poll(cx) {
                std::task::Poll::Ready(answer) => self.0 = LookupState::Done(answer.map(Vec::into_iter)),
                std::task::Poll::Pending => return false,
            }
        }
        true
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for NameLookup {
    async fn ready(&mut self) {
        std::future::poll_fn(
            |cx| if self.poll_done(cx) { std::task::Poll::Ready(()) } else { std::task::Poll::Pending },
        )
        .await
    }
}

/// A WASI 0.3 look-up error as WASI 0.2 words it.
fn p2_error(code: ErrorCode) -> wasmtime_wasi::p2::bindings::sockets::network::ErrorCode {
    use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode as P2;
    match code {
        ErrorCode::AccessDenied => P2::AccessDenied,
        ErrorCode::InvalidArgument => P2::InvalidArgument,
        ErrorCode::NameUnresolvable => P2::NameUnresolvable,
        ErrorCode::TemporaryResolverFailure => P2::TemporaryResolverFailure,
        ErrorCode::PermanentResolverFailure => P2::PermanentResolverFailure,
        _ => P2::Unknown,
    }
}

/// Shadows WASI 0.2's `ip-name-lookup` (wasmtime-wasi's own stays off): the
/// same [`WasiSockets::resolve`] as 0.3, behind 0.2's stream of addresses.
fn add_p2_lookup_to_linker<T: WasiSocketsHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime::StoreContextMut;
    use wasmtime::component::{Resource, ResourceType};
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode as P2Error, IpAddress as P2Address};
    use wasmtime_wasi::p2::{DynPollable, Network};
    let mut lookup = linker.instance(NAME_LOOKUP_INTERFACE_P2)?;
    lookup.resource("resolve-address-stream", ResourceType::host::<NameLookup>(), |mut store, rep| {
        store.data_mut().ctx().table.delete(Resource::<NameLookup>::new_own(rep))?;
        Ok(())
    })?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store: StoreContextMut<'_, T>, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            state.ctx().table.get(&network)?;
            let Some(sockets) = state.standard_sockets().cloned() else {
                return Ok((Err(P2Error::AccessDenied),));
            };
            let mut lookup = NameLookup(LookupState::Pending(Box::pin(async move { sockets.resolve(name).await })));
            // What is known at once (a refusal, a literal) is answered at once.
            lookup.poll_done(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            if let LookupState::Done(Err(code)) = &lookup.0 {
                return Ok((Err(p2_error(code.clone())),));
            }
            Ok((Ok(state.ctx().table.push(lookup)?),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store: StoreContextMut<'_, T>, (this,): (Resource<NameLookup>,)| {
            let state = store.data_mut();
            let lookup = state.ctx().table.get_mut(&this)?;
            if !lookup.poll_done(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
                return Ok((Err(P2Error::WouldBlock),));
            }
            let next: Result<Option<P2Address>, P2Error> = match &mut lookup.0 {
                LookupState::Done(Ok(addresses)) => Ok(addresses.next().map(P2Address::from)),
                LookupState::Done(Err(code)) => Err(p2_error(code.clone())),
                LookupState::Pending(_) => Err(P2Error::WouldBlock),
            };
            Ok((next,))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store: StoreContextMut<'_, T>,
         (this,): (Resource<NameLookup>,)|
         -> wasmtime::Result<(Resource<DynPollable>,)> {
            Ok((wasmtime_wasi::p2::subscribe(store.data_mut().ctx().table, this)?,))
        },
    )?;
    Ok(())
}

/// The `wasi:sockets/tcp` version that wasmtime-wasi's p2 links.
const TCP_INTERFACE_P2: &str = "wasi:sockets/tcp@0.2.12";

/// Shadows WASI 0.2's `tcp-socket.accept` with wasmtime-wasi's own, except
/// that a failure for want of descriptors (at the open-file limit) is
/// logged (coalesced) and answered only after
/// [`ACCEPT_RETRY`](crate::net::listener::ACCEPT_RETRY), as the host's own
/// listeners retry: the guest's accept loop, which tries again at once,
/// then waits instead of spinning.
fn add_p2_accept_to_linker<T: WasiSocketsHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime::StoreContextMut;
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::TcpSocket;
    use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode as P2Error;
    use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
    use wasmtime_wasi::sockets::WasiSocketsView;

    use crate::net::listener::ACCEPT_RETRY;
    let mut tcp = linker.instance(TCP_INTERFACE_P2)?;
    tcp.func_wrap_async(
        "[method]tcp-socket.accept",
        |mut store: StoreContextMut<'_, T>, (this,): (Resource<TcpSocket>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let error = match HostTcpSocket::accept(&mut state.sockets(), this) {
                    Ok(accepted) => return Ok((Ok(accepted),)),
                    Err(e) => e.downcast()?,
                };
                if error == P2Error::NewSocketLimit {
                    state.accept_failures().warn(|| {
                        format!("accept failed: out of file descriptors (wasi:sockets); retrying in {ACCEPT_RETRY:?}")
                    });
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
                Ok((Err(error),))
            })
        },
    )?;
    Ok(())
}

/// The `wasi:sockets/types` version that wasmtime-wasi's p3 links.
const TYPES_INTERFACE: &str = "wasi:sockets/types@0.3.0";

/// Shadows, in `linker` (after wasmtime-wasi's p2 and p3 `add_to_linker`),
/// `resolve-addresses` of WASI 0.3 and 0.2 with [`WasiSockets::resolve`] (an
/// instance without standard sockets is refused every look-up) and
/// `udp-socket.receive` with wasmtime-wasi's own under [`MAX_UDP_RECEIVES`].
pub fn add_to_linker<T: WasiSocketsHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p3::bindings::sockets::types::{ErrorCode as SocketErrorCode, HostUdpSocketWithStore};
    use wasmtime_wasi::sockets::{UdpSocket, WasiSocketsView};
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES_INTERFACE)?;
    types.func_wrap_concurrent(
        "[method]udp-socket.receive",
        |acc: &Accessor<T>, (socket,): (wasmtime::component::Resource<UdpSocket>,)| {
            Box::pin(async move {
                let turns = acc.with(|mut access| access.get().standard_sockets().map(|s| s.udp_receives.clone()));
                let _turn = match &turns {
                    Some(turns) => Some(turns.acquire().await?),
                    None => None,
                };
                let sockets = acc.with_getter::<wasmtime_wasi::sockets::WasiSockets>(|state: &mut T| state.sockets());
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
    lookup.func_wrap_concurrent("resolve-addresses", |acc: &Accessor<T>, (name,): (String,)| {
        Box::pin(async move {
            let sockets = acc.with(|mut access| access.get().standard_sockets().cloned());
            let resolved = match sockets {
                Some(sockets) => sockets.resolve(name).await,
                None => Err(ErrorCode::AccessDenied),
            };
            Ok((resolved.map(|ips| ips.into_iter().map(IpAddress::from).collect::<Vec<_>>()),))
        })
    })?;
    add_p2_lookup_to_linker(linker)?;
    add_p2_accept_to_linker(linker)?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_resolve_only_as_granted() {
        use crate::policy::Policy;
        use crate::wasi_sockets::WasiSockets;
        use std::sync::Arc;
        use wasmtime_wasi::p3::bindings::sockets::ip_name_lookup::ErrorCode;
        let policy = Policy::parse(&["tcp://localhost:7000".into()], &[], &[], false).unwrap();
        let log = || crate::coalesce::Coalesced::new("denials", None);
        let sockets = WasiSockets::new(Arc::new(policy), vec![], log(), log(), ServiceMetrics::detached("test"));
        assert!(sockets.resolve("localhost".into()).await.unwrap().iter().all(|ip| ip.is_loopback()));
        assert!(matches!(sockets.resolve("localhost:7000".into()).await, Err(ErrorCode::InvalidArgument)));
        assert!(matches!(sockets.resolve("example.com".into()).await, Err(ErrorCode::AccessDenied)));
    }

    #[test]
    fn a_listen_on_port_0_fixes_the_port_told() {
        use crate::policy::Policy;
        use crate::wasi_sockets::WasiSockets;
        use std::sync::Arc;
        use wasmtime_wasi::sockets::SocketAddrUse;
        let log = || crate::coalesce::Coalesced::new("denials", None);
        let policy = Arc::new(Policy::parse(&[], &[], &[], false).unwrap());
        let sockets = WasiSockets::new(
            policy,
            vec!["127.0.0.1:0".parse().unwrap()],
            log(),
            log(),
            ServiceMetrics::detached("test"),
        );
        assert!(sockets.check("127.0.0.1:41234".parse().unwrap(), SocketAddrUse::TcpListen));
        assert_eq!(sockets.listen_addresses(), vec!["127.0.0.1:41234".parse().unwrap()]);
    }

    #[test]
    fn the_check_follows_the_grants_and_listen() {
        use crate::policy::Policy;
        use crate::wasi_sockets::WasiSockets;
        use std::sync::Arc;
        use wasmtime_wasi::sockets::SocketAddrUse;
        let policy = Policy::parse(&["tcp://127.0.0.1:7000".into()], &[], &[], false).unwrap();
        let log = || crate::coalesce::Coalesced::new("denials", None);
        let sockets = WasiSockets::new(
            Arc::new(policy),
            vec!["127.0.0.1:0".parse().unwrap()],
            log(),
            log(),
            ServiceMetrics::detached("test"),
        );
        assert!(sockets.check("127.0.0.1:7000".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(!sockets.check("127.0.0.1:7001".parse().unwrap(), SocketAddrUse::TcpConnect));
        assert!(sockets.check("127.0.0.1:41234".parse().unwrap(), SocketAddrUse::TcpListen));
        assert!(!sockets.check("0.0.0.0:41234".parse().unwrap(), SocketAddrUse::TcpListen));
    }

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
        WasiSockets::new(Arc::new(policy), listen, log(), log(), ServiceMetrics::detached("test"))
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

    #[tokio::test]
    async fn text_that_is_no_name_is_an_invalid_argument_and_unicode_is_looked_up_in_ascii() {
        let s = sockets(&["tcp://xn--bcher-kva.example:80", "tcp://localhost:80"], &[], &[], &[], false);
        let huge = "ü.".repeat(1 << 20);
        for text in ["localhost:80", "127.0.0.1:80", "a b", "", "exa mple.com", &huge] {
            assert!(matches!(s.resolve(text.into()).await, Err(ErrorCode::InvalidArgument)), "{text:?}");
        }
        // The Unicode name is its ASCII form (IDNA), which the grant names:
        // looked up (and not found here), not refused.
        let unicode = s.resolve("bücher.example".into()).await;
        assert!(!matches!(unicode, Err(ErrorCode::AccessDenied | ErrorCode::InvalidArgument)), "{unicode:?}");
        assert!(matches!(s.resolve("bücher.other".into()).await, Err(ErrorCode::AccessDenied)));
    }
}
