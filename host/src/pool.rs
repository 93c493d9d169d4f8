//! Spares of the instance pool. With `--instances per-connection` each
//! worker makes a service's next instance ahead, a *spare*, so that a
//! connection is served without waiting for its instantiation. Every spare
//! holds a slot of the one pool, shared by all workers and per-connection
//! services. The pool has a slot per worker per such service for them
//! beyond `--max-instances`, but services whose connection caps add up past
//! the pool can still fill it: then a spare on one worker could hold the
//! slot a connection on another worker needs. Such a connection asks every
//! spare back, and no new spare is made while it waits (a moment at most)
//! for a slot; only then is it refused. The same holds for the process's
//! `--memory-budget`, which every spare's memory counts against.
//!
//! The extra slots are for spares only: at most `--max-instances`
//! connections are served at once, over every service and worker (a
//! permit each, held as long as its instance lives).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// How long a connection that found the pool full may wait for a slot
/// while spares are asked back: a worker gives its spare back when its event
/// loop next runs, which a callback running on that worker can delay.
pub(crate) const ASK_BACK_WAIT: Duration = Duration::from_millis(500);

/// How often such a connection tries again meanwhile: a spare its own worker
/// hands to a connection of its own is no longer held, and frees no slot to
/// tell of, but the slot of any instance that ends is free.
const RETRY_EVERY: Duration = Duration::from_millis(5);

/// The spares of one pool: how many are held, who is asking for them back,
/// and the calls to give them back.
pub(crate) struct Spares {
    /// `--max-instances`: one permit per connection served at once (spares
    /// hold none: the pool's extra slots are theirs).
    serving: Arc<Semaphore>,
    /// Pool slots in use: spares and instances serving (`/metrics`).
    slots_used: Gauge,
    held: AtomicUsize,
    /// Connections waiting for a slot: no new spare is made meanwhile.
    askers: AtomicUsize,
    /// Bumped by each call to give spares back; every supervisor watches it.
    calls: watch::Sender<u64>,
    given_back: Notify,
}

impl Spares {
    /// Spares for a pool that serves at most `serving` connections at once,
    /// counting the slots in use in `slots_used`.
    pub(crate) fn new(serving: usize, slots_used: Gauge) -> Arc<Spares> {
        Arc::new(Spares {
            serving: Arc::new(Semaphore::new(serving.min(Semaphore::MAX_PERMITS))),
            slots_used,
            held: AtomicUsize::new(0),
            askers: AtomicUsize::new(0),
            calls: watch::Sender::new(0),
            given_back: Notify::new(),
        })
    }

    /// A place among the connections served at once (`--max-instances`),
    /// waiting at most [`ASK_BACK_WAIT`] for one; `None`: none came free.
    pub(crate) async fn serve_slot(&self) -> Option<ServeSlot> {
        let permit = match self.serving.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(ASK_BACK_WAIT, self.serving.clone().acquire_owned()).await.ok()?.ok()?,
        };
        self.slots_used.inc();
        Some(ServeSlot { _permit: permit, slots_used: self.slots_used.clone() })
    }

    /// Counts a spare just made as held until the returned guard drops.
    pub(crate) fn hold(self: &Arc<Self>) -> SpareHeld {
        self.held.fetch_add(1, Ordering::Relaxed);
        self.slots_used.inc();
        SpareHeld(self.clone())
    }

    /// Whether a spare may be made now: no connection is waiting for a slot.
    pub(crate) fn wanted(&self) -> bool {
        self.askers.load(Ordering::Relaxed) == 0
    }

    /// The calls to give spares back, for a supervisor to watch.
    pub(crate) fn calls(&self) -> watch::Receiver<u64> {
        self.calls.subscribe()
    }

    /// Starts asking for spares back; no new spare is made anywhere until
    /// the returned guard drops.
    pub(crate) fn asking(&self) -> Asking<'_> {
        self.askers.fetch_add(1, Ordering::Relaxed);
        Asking(self)
    }

    /// A spare was dropped for a call: its slot is free.
    pub(crate) fn gave_back(&self) {
        self.given_back.notify_waiters();
    }
}

/// A connection asking for spares back (see [`Spares::asking`]).
pub(crate) struct Asking<'a>(&'a Spares);

impl Asking<'_> {
    /// Asks every supervisor to give its spare back, and waits until one
    /// did or [`RETRY_EVERY`] passed: then the caller tries again. False (at
    /// once) if no spare is held: nothing to wait for.
    pub(crate) async fn ask_back(&self) -> bool {
        let spares = self.0;
        if spares.held.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let given_back = spares.given_back.notified();
        tokio::pin!(given_back);
        given_back.as_mut().enable();
        spares.calls.send_modify(|n| *n += 1);
        let _ = tokio::time::timeout(RETRY_EVERY, given_back).await;
        true
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.0.askers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A spare counted as held (see [`Spares::hold`]); the count drops with it.
pub(crate) struct SpareHeld(Arc<Spares>);

impl Drop for SpareHeld {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
        self.0.slots_used.dec();
    }
}

/// One connection's place among those served at once; its pool slot is
/// counted as used until it drops.
pub(crate) struct ServeSlot {
    _permit: OwnedSemaphorePermit,
    slots_used: Gauge,
}

impl Drop for ServeSlot {
    fn drop(&mut self) {
        self.slots_used.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_more_connections_are_served_at_once_than_max_instances() {
        let spares = Spares::new(2, Gauge::default());
        let (a, _b) = (spares.serve_slot().await, spares.serve_slot().await);
        assert!(a.is_some());
        assert!(spares.serve_slot().await.is_none(), "a third, past the wait");
        drop(a);
        assert!(spares.serve_slot().await.is_some(), "the slot of one that ended");
    }

    #[tokio::test]
    async fn asking_with_no_spare_held_returns_at_once() {
        let spares = Spares::new(1, Gauge::default());
        assert!(!spares.asking().ask_back().await);
    }

    #[tokio::test]
    async fn holders_are_called_and_no_spare_is_wanted_while_one_asks() {
        let spares = Spares::new(1, Gauge::default());
        let held = spares.hold();
        let mut calls = spares.calls();
        let asking = spares.asking();
        assert!(!spares.wanted(), "a spare may be made while a connection asks for one back");
        assert!(asking.ask_back().await, "a spare is held: worth trying again");
        calls.changed().await.expect("the holder was called");
        drop(held);
        spares.gave_back();
        assert!(!asking.ask_back().await, "the spare was counted as still held");
        drop(asking);
        assert!(spares.wanted());
    }
}
