//! What the admin endpoint's `/metrics` shows: counters and gauges per
//! service, in the Prometheus text format (through `prometheus-client`).
//!
//! The names follow Envoy's (`downstream_cx_*` for the clients' connections),
//! prefixed `portcullis_`; counters end in `_total` as the format wants. The
//! labels are bounded: the service's name (from the operator), a listener's
//! address (the operator's; `guest` for all of a guest's own), and a
//! reason, cause, limit or operation from a fixed list; never a client
//! address.
//!
//! Every handle is an atomic the message path bumps (a connection's bytes,
//! a callback): one relaxed add, no lock. Labels are resolved once, when a
//! service is loaded ([`Metrics::service`]), not per event.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a client's connection was refused or held back.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Overflow {
    /// `--max-connections` reached: the listener paused accepting (the
    /// client waited in the backlog).
    connection_cap,
    /// `--max-connections-per-ip` reached: closed at once.
    per_address_cap,
    /// `--instances per-connection`: no instance for it (the pool full,
    /// `--max-instances`, past the wait), closed.
    pool,
    /// `--instances per-connection`: no room in `--memory-budget` for its
    /// instance (past the wait for spares to give some back), closed.
    memory_budget,
    /// `--tls-max-handshakes` handshakes under way: the listener paused
    /// accepting (the client waited in the backlog). Counts the pauses.
    handshake_cap,
    /// `--tls-max-handshakes-per-ip` handshakes under way from the client's
    /// address: closed at once.
    handshake_per_address_cap,
}

/// Why a TLS handshake on a `tls://` listener did not finish.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HandshakeFailure {
    /// Not finished within `--tls-handshake-timeout-ms`.
    timeout,
    /// Not TLS, a version or cipher this server does not take, a missing or
    /// bad client certificate, or a peer that went away.
    error,
}

/// Why an instance ended other than by a stop.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TrapCause {
    /// It computed past `--callback-cpu-ms` without waiting.
    cpu,
    /// A memory growth past `--max-memory` or the budget failed, and the
    /// guest aborted.
    memory,
    /// A guest panic, `unreachable`, or any other trap.
    panic,
    /// The guest exited (a WASI service's `main` returned, or `exit`).
    exit,
    /// The instance could not start.
    start,
}

/// Which bound a guest met (and was refused by).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Limit {
    /// `--max-memory` or `--memory-budget`: a growth refused.
    memory,
    /// `--max-sockets` or the process's socket ceiling: a socket refused.
    sockets,
    /// `--idle-timeout-ms`: a connection closed as idle.
    idle_timeout,
    /// `--write-timeout-ms`: a write failed for a peer that did not read.
    write_timeout,
}

/// What a guest asked for and was not granted.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Operation {
    /// A TCP connect (`--allow-connect`).
    connect,
    /// A listener of the guest's own (`--allow-listen`).
    listen,
    /// A UDP bind or send (`--allow-udp`).
    udp,
    /// A name look-up no grant names.
    lookup,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    service: String,
    reason: Overflow,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    service: String,
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    service: String,
    reason: HandshakeFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrapLabels {
    service: String,
    cause: TrapCause,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    service: String,
    limit: Limit,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    service: String,
    operation: Operation,
}

/// The process's metrics: one per portcullis process, shared by every
/// service and worker.
///
/// ```
/// use portcullis::metrics::Metrics;
/// let metrics = Metrics::new();
/// let echo = metrics.service("echo");
/// echo.cx_total.inc();
/// assert!(metrics.encode().contains("portcullis_downstream_cx_total{service=\"echo\"} 1"));
/// ```
pub struct Metrics {
    registry: Mutex<Registry>,
    families: Arc<Families>,
    /// Reloads refused (a manifest or component that did not load): the
    /// process's, not a service's.
    pub reload_failures: Counter,
    /// Slots of the per-connection instance pool in use (instances serving
    /// and spares made ahead): the process's.
    pub pool_slots_used: Gauge,
}

#[derive(Default, Debug)]
struct Families {
    cx_total: Family<ServiceLabel, Counter>,
    cx_active: Family<ServiceLabel, Gauge>,
    cx_destroy: Family<ServiceLabel, Counter>,
    cx_overflow: Family<OverflowLabels, Counter>,
    cx_rx_bytes: Family<ServiceLabel, Counter>,
    cx_tx_bytes: Family<ServiceLabel, Counter>,
    callbacks: Family<ServiceLabel, Counter>,
    traps: Family<TrapLabels, Counter>,
    limit_hits: Family<LimitLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    instances_live: Family<ServiceLabel, Gauge>,
    reloads: Family<ServiceLabel, Counter>,
    tls_handshakes: Family<ServiceLabel, Counter>,
    tls_handshake_failures: Family<HandshakeLabels, Counter>,
    guest_cpu_seconds: Family<ServiceLabel, Counter<f64, AtomicU64>>,
    listener_cx_total: Family<ListenerLabels, Counter>,
    listener_cx_active: Family<ListenerLabels, Gauge>,
    listener_cx_destroy: Family<ListenerLabels, Counter>,
}

impl Metrics {
    /// An empty set, every family registered.
    pub fn new() -> Arc<Metrics> {
        let families = Arc::new(Families::default());
        let mut registry = Registry::with_prefix("portcullis");
        let f = &families;
        registry.register("downstream_cx", "Client connections accepted", f.cx_total.clone());
        registry.register("downstream_cx_active", "Client connections open now", f.cx_active.clone());
        registry.register("downstream_cx_destroy", "Client connections closed", f.cx_destroy.clone());
        registry.register(
            "downstream_cx_overflow",
            "Client connections refused or held back by a bound (reason)",
            f.cx_overflow.clone(),
        );
        registry.register("downstream_cx_rx_bytes", "Bytes received from clients", f.cx_rx_bytes.clone());
        registry.register("downstream_cx_tx_bytes", "Bytes sent to clients", f.cx_tx_bytes.clone());
        registry.register(
            "guest_callbacks",
            "Callbacks the guest ran (on-connect, on-read-ready, ...)",
            f.callbacks.clone(),
        );
        registry.register("guest_traps", "Instances that ended other than by a stop (cause)", f.traps.clone());
        registry.register("limit_hits", "Times a guest met a bound (limit)", f.limit_hits.clone());
        registry.register("denials", "Requests the grants refused (operation)", f.denials.clone());
        registry.register("instances_live", "Instances alive now, spares included", f.instances_live.clone());
        registry.register("reloads", "Reloads that changed the service", f.reloads.clone());
        registry.register(
            "guest_cpu_seconds",
            "Time the guest's code ran: each entry to its return, less waits and yields",
            f.guest_cpu_seconds.clone(),
        );
        registry.register(
            "listener_downstream_cx",
            "Client connections a listener accepted (listener: its address, or `guest` for the guest's own)",
            f.listener_cx_total.clone(),
        );
        registry.register(
            "listener_downstream_cx_active",
            "Client connections open now, by listener",
            f.listener_cx_active.clone(),
        );
        registry.register(
            "listener_downstream_cx_destroy",
            "Client connections closed, by listener",
            f.listener_cx_destroy.clone(),
        );
        registry.register("tls_handshakes", "TLS handshakes finished on tls:// listeners", f.tls_handshakes.clone());
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes on tls:// listeners that failed or timed out (reason)",
            f.tls_handshake_failures.clone(),
        );
        let reload_failures = Counter::default();
        registry.register("reload_failures", "Reloads refused, every service left as it was", reload_failures.clone());
        let pool_slots_used = Gauge::default();
        registry.register(
            "pool_slots_used",
            "Slots of the per-connection instance pool in use (serving and spares)",
            pool_slots_used.clone(),
        );
        Arc::new(Metrics { registry: Mutex::new(registry), families, reload_failures, pool_slots_used })
    }

    /// The handles of service `name` (made at its first use, then shared).
    pub fn service(&self, name: &str) -> Arc<ServiceMetrics> {
        let f = &self.families;
        let service = || ServiceLabel { service: name.to_string() };
        let overflow =
            |reason| f.cx_overflow.get_or_create_owned(&OverflowLabels { service: name.to_string(), reason });
        let trap = |cause| f.traps.get_or_create_owned(&TrapLabels { service: name.to_string(), cause });
        let limit = |limit| f.limit_hits.get_or_create_owned(&LimitLabels { service: name.to_string(), limit });
        let denial = |operation| f.denials.get_or_create_owned(&DenialLabels { service: name.to_string(), operation });
        let handshake = |reason| {
            f.tls_handshake_failures.get_or_create_owned(&HandshakeLabels { service: name.to_string(), reason })
        };
        Arc::new(ServiceMetrics {
            cx_total: f.cx_total.get_or_create_owned(&service()),
            cx_active: f.cx_active.get_or_create_owned(&service()),
            cx_destroy: f.cx_destroy.get_or_create_owned(&service()),
            overflow: [
                overflow(Overflow::connection_cap),
                overflow(Overflow::per_address_cap),
                overflow(Overflow::pool),
                overflow(Overflow::memory_budget),
                overflow(Overflow::handshake_cap),
                overflow(Overflow::handshake_per_address_cap),
            ],
            rx_bytes: f.cx_rx_bytes.get_or_create_owned(&service()),
            tx_bytes: f.cx_tx_bytes.get_or_create_owned(&service()),
            callbacks: f.callbacks.get_or_create_owned(&service()),
            traps: [
                trap(TrapCause::cpu),
                trap(TrapCause::memory),
                trap(TrapCause::panic),
                trap(TrapCause::exit),
                trap(TrapCause::start),
            ],
            limits: [
                limit(Limit::memory),
                limit(Limit::sockets),
                limit(Limit::idle_timeout),
                limit(Limit::write_timeout),
            ],
            denials: [
                denial(Operation::connect),
                denial(Operation::listen),
                denial(Operation::udp),
                denial(Operation::lookup),
            ],
            instances_live: f.instances_live.get_or_create_owned(&service()),
            reloads: f.reloads.get_or_create_owned(&service()),
            tls_handshakes: f.tls_handshakes.get_or_create_owned(&service()),
            guest_cpu_seconds: f.guest_cpu_seconds.get_or_create_owned(&service()),
            families: self.families.clone(),
            handshake_failures: [handshake(HandshakeFailure::timeout), handshake(HandshakeFailure::error)],
        })
    }

    /// Everything, in the Prometheus text format (OpenMetrics 1.0, ending
    /// in `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

/// One service's handles (cheap to clone: each is an `Arc`'d atomic).
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// Connections accepted.
    pub cx_total: Counter,
    /// Connections open now.
    pub cx_active: Gauge,
    /// Connections closed.
    pub cx_destroy: Counter,
    overflow: [Counter; 6],
    /// Bytes received from clients.
    pub rx_bytes: Counter,
    /// Bytes sent to clients.
    pub tx_bytes: Counter,
    /// Callbacks run.
    pub callbacks: Counter,
    traps: [Counter; 5],
    limits: [Counter; 4],
    denials: [Counter; 4],
    /// Instances alive now.
    pub instances_live: Gauge,
    /// Reloads that changed the service.
    pub reloads: Counter,
    /// TLS handshakes finished.
    pub tls_handshakes: Counter,
    /// Seconds the guest's code ran (see `limits::cpu::CpuUse::leaving_guest`).
    pub guest_cpu_seconds: Counter<f64, AtomicU64>,
    /// Where its listeners' handles are made ([`ServiceMetrics::listener`]).
    families: Arc<Families>,
    handshake_failures: [Counter; 2],
}

impl ServiceMetrics {
    /// Handles that count into a registry of their own (a service loaded
    /// without a process's [`Metrics`]: tests, the bench).
    pub fn detached(name: &str) -> Arc<ServiceMetrics> {
        Metrics::new().service(name)
    }

    /// Counts one connection refused or held back for `reason`.
    pub fn overflow(&self, reason: Overflow) {
        self.overflow[reason as usize].inc();
    }

    /// The counter of `reason` (for a coalesced warning that counts).
    pub fn overflow_counter(&self, reason: Overflow) -> Counter {
        self.overflow[reason as usize].clone()
    }

    /// The counter of `limit` (for a coalesced warning that counts).
    pub fn limit_counter(&self, limit: Limit) -> Counter {
        self.limits[limit as usize].clone()
    }

    /// Counts one instance ended by `cause`.
    pub fn trapped(&self, cause: TrapCause) {
        self.traps[cause as usize].inc();
    }

    /// Counts one meeting with `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limits[limit as usize].inc();
    }

    /// Counts one TLS handshake that did not finish.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].inc();
    }

    /// Counts one request refused by the grants.
    pub fn denied(&self, operation: Operation) {
        self.denials[operation as usize].inc();
    }

    /// A connection accepted: counted now, and as closed when the returned
    /// guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.cx_total.inc();
        self.cx_active.inc();
        OpenConnection(self.clone())
    }

    /// The handles of one of its listeners, `listener` being its address as
    /// the operator wrote it (`tls://127.0.0.1:8443`) or `guest` for every
    /// listener of the guest's own (their addresses are the guest's
    /// choice: as labels they would be unbounded).
    pub fn listener(&self, service: &str, listener: &str) -> Arc<ListenerMetrics> {
        let labels = ListenerLabels { service: service.to_string(), listener: listener.to_string() };
        let f = &self.families;
        Arc::new(ListenerMetrics {
            cx_total: f.listener_cx_total.get_or_create_owned(&labels),
            cx_active: f.listener_cx_active.get_or_create_owned(&labels),
            cx_destroy: f.listener_cx_destroy.get_or_create_owned(&labels),
        })
    }

    /// An instance made: counted as live until the guard is dropped.
    pub fn instance_made(self: &Arc<Self>) -> LiveInstance {
        self.instances_live.inc();
        LiveInstance(self.clone())
    }
}

/// One listener's connection counters (Envoy's `listener.*.downstream_cx_*`).
#[derive(Debug)]
pub struct ListenerMetrics {
    cx_total: Counter,
    cx_active: Gauge,
    cx_destroy: Counter,
}

impl ListenerMetrics {
    /// A connection it accepted: counted now, and as closed when the
    /// returned guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ListenerConnection {
        self.cx_total.inc();
        self.cx_active.inc();
        ListenerConnection(self.clone())
    }
}

/// One open connection of a listener; closed when dropped.
pub struct ListenerConnection(Arc<ListenerMetrics>);

impl Drop for ListenerConnection {
    fn drop(&mut self) {
        self.0.cx_active.dec();
        self.0.cx_destroy.inc();
    }
}

/// One open connection in the metrics; closed when dropped.
pub struct OpenConnection(Arc<ServiceMetrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.cx_active.dec();
        self.0.cx_destroy.inc();
    }
}

/// One live instance in the metrics; gone when dropped.
pub struct LiveInstance(Arc<ServiceMetrics>);

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.instances_live.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_counts_apart_and_guards_give_back() {
        let metrics = Metrics::new();
        let (echo, kv) = (metrics.service("echo"), metrics.service("kv"));
        let open = echo.connection_opened();
        let _other = kv.connection_opened();
        echo.overflow(Overflow::per_address_cap);
        kv.trapped(TrapCause::cpu);
        drop(open);
        let text = metrics.encode();
        for line in [
            "portcullis_downstream_cx_total{service=\"echo\"} 1",
            "portcullis_downstream_cx_active{service=\"echo\"} 0",
            "portcullis_downstream_cx_destroy_total{service=\"echo\"} 1",
            "portcullis_downstream_cx_active{service=\"kv\"} 1",
            "portcullis_downstream_cx_overflow_total{service=\"echo\",reason=\"per_address_cap\"} 1",
            "portcullis_downstream_cx_overflow_total{service=\"echo\",reason=\"pool\"} 0",
            "portcullis_guest_traps_total{service=\"kv\",cause=\"cpu\"} 1",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_same_service_shares_its_counters() {
        let metrics = Metrics::new();
        metrics.service("echo").callbacks.inc();
        metrics.service("echo").callbacks.inc();
        assert!(metrics.encode().contains("portcullis_guest_callbacks_total{service=\"echo\"} 2"));
    }
}
