//! The caps on accepted connections, as the runtime says them
//! (`PORTCULLIS_*`, read in `export.rs`): how many at once, how many from
//! one client address (`portcullis_protocol::address_key`), and the idle and
//! write time-outs they start with. The host applies the same to its own.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::IpAddr;
use std::task::Poll;
use std::time::Duration;

use portcullis_protocol::address_key;

use crate::sys::wasi::Waiters;

thread_local! {
    pub(super) static LIMITS: Cell<Limits> = const { Cell::new(Limits::DEFAULT) };
    /// Connections the listeners accepted and that are still open.
    static ACCEPTED: Accepted = Accepted { open: Cell::new(0), per_ip: RefCell::new(Vec::new()), closed: Waiters::default() };
}

/// What the listeners and connections hold to, as the runtime says
/// (`PORTCULLIS_*` variables; portcullis sets them from its flags).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The most accepted connections open at once; at the cap the listeners
    /// stop accepting, so further clients wait in the listen backlog.
    pub(crate) max_accepted: usize,
    /// The most from one client address (IPv4, or an IPv6 /64); a further
    /// one is closed as soon as it is accepted.
    pub(crate) per_ip: usize,
    /// An accepted connection on which nothing was received or sent for
    /// this long is closed.
    pub(crate) idle: Option<Duration>,
    /// A write that could send nothing for this long fails, and closes its
    /// connection.
    pub(crate) write: Option<Duration>,
}

impl Limits {
    /// portcullis's own defaults: no connection cap, 300 s idle and write.
    pub(crate) const DEFAULT: Limits = Limits {
        max_accepted: usize::MAX,
        per_ip: usize::MAX,
        idle: Some(portcullis_protocol::environment::DEFAULT_TIMEOUT),
        write: Some(portcullis_protocol::environment::DEFAULT_TIMEOUT),
    };
}

pub(crate) fn set_limits(limits: Limits) {
    LIMITS.set(limits);
}

struct Accepted {
    open: Cell<usize>,
    /// Open connections per client address key.
    per_ip: RefCell<Vec<(IpAddr, usize)>>,
    /// Woken as an accepted connection closes.
    closed: Waiters,
}

/// An accepted connection's place under the caps, given back as it closes.
pub(super) struct AcceptedSlot {
    key: Option<IpAddr>,
}

impl AcceptedSlot {
    /// Waits until the listeners may accept one more.
    pub(super) async fn take() -> AcceptedSlot {
        poll_fn(|cx| {
            ACCEPTED.with(|a| {
                if a.open.get() < LIMITS.get().max_accepted {
                    a.open.set(a.open.get() + 1);
                    return Poll::Ready(AcceptedSlot { key: None });
                }
                a.closed.register(cx);
                Poll::Pending
            })
        })
        .await
    }

    /// Counts the connection against its address; false: that address has
    /// its most already (the caller closes the connection).
    pub(super) fn admit(&mut self, remote: IpAddr) -> bool {
        let key = address_key(remote);
        ACCEPTED.with(|a| {
            let mut per_ip = a.per_ip.borrow_mut();
            let count = match per_ip.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => n,
                None => {
                    per_ip.push((key, 0));
                    &mut per_ip.last_mut().expect("just pushed").1
                }
            };
            if *count >= LIMITS.get().per_ip {
                return false;
            }
            *count += 1;
            self.key = Some(key);
            true
        })
    }
}

impl Drop for AcceptedSlot {
    fn drop(&mut self) {
        ACCEPTED.with(|a| {
            a.open.set(a.open.get() - 1);
            if let Some(key) = self.key {
                let mut per_ip = a.per_ip.borrow_mut();
                if let Some(at) = per_ip.iter().position(|(k, _)| *k == key) {
                    per_ip[at].1 -= 1;
                    if per_ip[at].1 == 0 {
                        per_ip.swap_remove(at);
                    }
                }
            }
            a.closed.wake_all();
        });
    }
}
