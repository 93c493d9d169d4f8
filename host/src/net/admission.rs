//! What a service's listeners apply to every connection they accept, the
//! operator's (`--listen`) and the guest's own alike: the connection caps
//! (`--max-connections` overall, `--max-connections-per-ip` per client
//! address) and the time-outs a connection starts with (read, idle, write).
//!
//! This is where a hostile client meets the host's bounds: a client that
//! opens connections and sends nothing holds at most its address's share, and
//! only for the idle time-out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::coalesce::Coalesced;
use crate::limits::Limits;
use crate::metrics::{ListenerConnection, ListenerMetrics, OpenConnection, Overflow, ServiceMetrics};

/// The time-outs a connection lives by (see [`crate::limits::Limits`] for
/// the flags and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Of every read that waits: `read-timed-out` when nothing came for this long.
    pub read: Duration,
    /// Nothing received or sent for this long, between callbacks: the host
    /// closes the connection (see [`TcpConn::idle_out`](super::tcp::TcpConn::idle_out)). `None`: never.
    pub idle: Option<Duration>,
    /// A write that sent nothing for this long fails (`write timed out`)
    /// and closes the connection. `None`: never.
    pub write: Option<Duration>,
}

impl Timeouts {
    /// Only a read time-out.
    pub fn read_only(read: Duration) -> Self {
        Timeouts { read, idle: None, write: None }
    }
}

/// A service's admission rules, shared by all its listeners (cheap to clone).
#[derive(Clone)]
pub struct Admission {
    /// `--max-connections`: a connection is accepted only with a permit.
    pub limit: Option<Arc<Semaphore>>,
    /// `--max-connections-per-ip`.
    per_address: Option<Arc<PerAddress>>,
    /// What an accepted connection starts with.
    pub timeouts: Timeouts,
    /// The service's name, for log lines.
    pub component: Arc<str>,
    /// Connections refused at the per-address cap, for the log.
    refusals: Arc<Coalesced>,
    /// Failed accepts (the open-file limit, mostly), for the log.
    pub accept_failures: Arc<Coalesced>,
    /// TLS handshakes that failed or timed out, for the log.
    pub handshake_failures: Arc<Coalesced>,
    /// The service's counters: connections, refusals, bytes.
    pub metrics: Arc<ServiceMetrics>,
}

/// A connection's places under the caps, given back when dropped (and
/// the connection counted as closed).
#[derive(Default)]
pub struct Admitted {
    _permit: Option<OwnedSemaphorePermit>,
    _address: Option<AddressSlot>,
    _open: Option<OpenConnection>,
    _listener: Option<ListenerConnection>,
}

impl Admitted {
    /// Also counted under the listener that accepted it, until it closes.
    pub fn on_listener(mut self, listener: &Arc<ListenerMetrics>) -> Admitted {
        self._listener = Some(listener.connection_opened());
        self
    }
}

impl Admission {
    /// The rules `limits` describe, for the service `component`.
    pub fn new(limits: &Limits, component: Arc<str>, metrics: Arc<ServiceMetrics>) -> Self {
        Admission {
            // Beyond tokio's permit ceiling (2^61) a cap is no cap at all.
            limit: limits.max_connections.map(|n| Arc::new(Semaphore::new(n.get().min(Semaphore::MAX_PERMITS)))),
            per_address: limits.max_connections_per_ip.map(PerAddress::new),
            timeouts: Timeouts { read: limits.read_timeout, idle: limits.idle_timeout, write: limits.write_timeout },
            refusals: Coalesced::counted(
                "connections refused at --max-connections-per-ip",
                Some(component.clone()),
                metrics.overflow_counter(Overflow::per_address_cap),
            ),
            accept_failures: Coalesced::new("accept failures", Some(component.clone())),
            handshake_failures: Coalesced::new("TLS handshake failures", Some(component.clone())),
            component,
            metrics,
        }
    }

    /// Takes a place for a connection from `peer` (holding `permit`, its
    /// place under `--max-connections`), or `None` when that address is at
    /// its cap: then the caller closes the connection, and the refusal is
    /// logged (coalesced).
    pub fn admit(&self, peer: IpAddr, permit: Option<OwnedSemaphorePermit>) -> Option<Admitted> {
        let address = match &self.per_address {
            Some(per_address) => match per_address.take(peer) {
                Some(slot) => Some(slot),
                None => {
                    let max = per_address.max;
                    self.refusals.warn(|| {
                        format!("connection from {peer} refused: it has {max} open (--max-connections-per-ip)")
                    });
                    return None;
                }
            },
            None => None,
        };
        Some(Admitted {
            _permit: permit,
            _address: address,
            _open: Some(self.metrics.connection_opened()),
            _listener: None,
        })
    }
}

/// Open connections per client address, under a cap.
pub struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place under [`PerAddress`].
pub struct AddressSlot {
    key: IpAddr,
    owner: Arc<PerAddress>,
}

impl PerAddress {
    pub fn new(max: NonZeroUsize) -> Arc<Self> {
        Arc::new(PerAddress { max: max.get(), open: Mutex::default() })
    }

    /// The most connections one address may hold.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection from `peer` (by [`address_key`]),
    /// or `None` when that address holds its most.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let key = address_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { key, owner: self.clone() })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // The map holds only addresses with open connections.
                open.remove(&self.key);
            }
        }
    }
}

/// What counts as one client address (shared with the SDK's WASI backend).
pub use portcullis_protocol::address_key;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_address_cap_holds_for_either_spelling() {
        use crate::limits::Limits;
        use crate::net::admission::Admission;
        use std::num::NonZeroUsize;

        let limits = Limits { max_connections_per_ip: NonZeroUsize::new(1), ..Limits::default() };
        let admission = Admission::new(&limits, "echo".into(), ServiceMetrics::detached("echo"));
        let first = admission.admit("127.0.0.2".parse().unwrap(), None);
        assert!(first.is_some());
        // The same address spelt as IPv4-mapped IPv6 is at its cap.
        assert!(admission.admit("::ffff:127.0.0.2".parse().unwrap(), None).is_none());
        drop(first);
        assert!(admission.admit("127.0.0.2".parse().unwrap(), None).is_some());
    }

    #[test]
    fn a_client_has_no_idle_timeout() {
        use crate::net::admission::Timeouts;
        use std::time::Duration;
        let client = Timeouts { write: Some(Duration::from_secs(300)), ..Timeouts::read_only(Duration::from_secs(30)) };
        assert_eq!(client.idle, None);
    }

    #[test]
    fn the_cap_counts_one_address_however_it_is_spelt_and_frees_on_drop() {
        let limits = Limits { max_connections_per_ip: NonZeroUsize::new(2), ..Limits::default() };
        let admission = Admission::new(&limits, Arc::from("test"), ServiceMetrics::detached("test"));
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let first = admission.admit(v4, None).expect("first");
        let _second = admission.admit(mapped, None).expect("second, the same address mapped");
        assert!(admission.admit(v4, None).is_none(), "a third from that address");
        assert!(admission.admit("127.0.0.3".parse().unwrap(), None).is_some(), "another address");
        drop(first);
        assert!(admission.admit(mapped, None).is_some(), "room again once one closed");
        // IPv6: one /64 is one client.
        let a = admission.admit("2001:db8::1".parse().unwrap(), None);
        let b = admission.admit("2001:db8::2:3".parse().unwrap(), None);
        assert!(a.is_some() && b.is_some());
        assert!(admission.admit("2001:db8::ffff".parse().unwrap(), None).is_none(), "same /64");
        assert!(admission.admit("2001:db8:0:1::1".parse().unwrap(), None).is_some(), "next /64");
    }

    #[test]
    fn addresses_are_forgotten_when_their_last_connection_closes() {
        let per_address = PerAddress::new(NonZeroUsize::new(1).unwrap());
        let slots: Vec<_> = (1..=100u8).map(|i| per_address.take(IpAddr::from([10, 0, 0, i])).unwrap()).collect();
        assert_eq!(per_address.open.lock().unwrap().len(), 100);
        drop(slots);
        assert!(per_address.open.lock().unwrap().is_empty());
    }
}
