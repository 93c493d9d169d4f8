//! The hand-written synchronisation primitives, in one place.
//!
//! Why not tokio's own: each of these sits on the per-message path, where a
//! tokio primitive took a mutex per poll or per check, and profiles showed it
//! (bench/README, "Profiles and what changed"). What each replaces:
//!
//! - [`WakeGate`] (and [`cancelled`]): a wait polled again only once it woke.
//!   A `CancellationToken`'s `cancelled()` takes two mutexes per poll, and an
//!   event loop polls every branch on every turn.
//! - [`Closing`]: a socket's "closed", one atomic load per plain call instead
//!   of the token's mutex.
//! - [`Served`]: "the guest is done with this delivery", an `AtomicWaker` and
//!   a flag reused for every message instead of a new `oneshot` (or `Notify`)
//!   each time.
//! - [`OpQueue`]: a fair async queue with a busy flag, so that the plain calls
//!   made for every message (`try-read`, `try-write`, the read-ahead) learn
//!   with one atomic load that an async read or write is under way, instead
//!   of locking an async mutex.
//!
//! Each keeps tokio's semantics where it matters (fairness, no lost wake-up)
//! and is tested below.
//!
//! ## WakeGate
//!
//! An event loop polls every branch it waits on each time it wakes, and some
//! waits cost real work per poll even when nothing changed: a
//! `CancellationToken`'s `cancelled()` takes two mutexes (the token's state,
//! then its `Notify`'s list of waiters), a channel's `recv` checks its queue and
//! re-registers. The dispatcher waits on the service's stop beside every
//! message, and with an instance per connection its event loop turns twice per
//! message: callgrind counted ~1,000 instructions per message in the stop
//! waits alone, and as many in the connection channel's `recv`.
//!
//! A [`WakeGate`] sits between the loop and one such wait. The wait gets a
//! waker of the gate's own; the gate passes a poll through only when that
//! waker has fired since the wait last answered `Pending` (or the wait has not
//! been polled yet, or last answered `Ready`, since a channel may hold more),
//! and otherwise answers `Pending` itself for the price of an atomic swap.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// A gate for one wait (see the module docs). Use it for that wait only: the
/// wait's own waker registration is what tells the gate to open.
pub struct WakeGate {
    relay: Arc<Relay>,
    /// The waker the wait registers: `relay`, made into a waker once.
    waker: Waker,
}

/// What the wait's waker reaches: it opens the gate and wakes the task that
/// polled through the gate last.
struct Relay {
    open: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for WakeGate {
    fn default() -> Self {
        let relay = Arc::new(Relay { open: AtomicBool::new(true), task: AtomicWaker::new() });
        WakeGate { waker: Waker::from(relay.clone()), relay }
    }
}

impl WakeGate {
    /// `poll` (the wait's own poll function) with the gate's waker, if the gate
    /// is open; `Pending` otherwise, with `cx`'s task woken once the wait wakes.
    pub fn poll<T>(&self, cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        // Registered before looking at the gate: a wake-up in between finds it.
        self.relay.task.register(cx.waker());
        if !self.relay.open.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let answer = poll(&mut Context::from_waker(&self.waker));
        if answer.is_ready() {
            // A channel that gave one item may hold more, and will not wake
            // anyone for those: the next poll must look.
            self.relay.open.store(true, Ordering::Release);
        }
        answer
    }
}

/// `token.cancelled()` behind a gate of its own: a wait for the stop that a
/// loop can keep and poll on every turn for next to nothing (`&mut` it into
/// each `select!`).
pub fn cancelled(token: &CancellationToken) -> impl Future<Output = ()> + Unpin + '_ {
    let gate = WakeGate::default();
    let mut wait = Box::pin(token.cancelled());
    poll_fn(move |cx| gate.poll(cx, |cx| wait.as_mut().poll(cx)))
}

/// "Closed" as a flag that is cheap to read and a signal that can be awaited:
/// every plain call checks it with one atomic load; the token is kept only for
/// waking those who wait.
#[derive(Default)]
pub struct Closing {
    closed: AtomicBool,
    signal: CancellationToken,
}

impl Closing {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks it closed and wakes every waiter. True only for the first call.
    pub fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        if first {
            self.signal.cancel();
        }
        first
    }

    /// Resolves once closed.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.signal.cancelled()
    }

    /// A token cancelled at the latest when this closes (and also on its own).
    pub fn child_token(&self) -> CancellationToken {
        self.signal.child_token()
    }
}

/// "The guest is done with this delivery of the connection": set when the
/// lent handle is dropped or the plain `on-read-ready` returns, awaited by the
/// connection's driver. One per connection, reused for every delivery.
#[derive(Default)]
pub struct Served {
    done: AtomicBool,
    waker: AtomicWaker,
}

impl Served {
    /// Starts a delivery.
    pub fn reset(&self) {
        self.done.store(false, Ordering::Release);
    }

    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once [`Served::finish`] was called after the last reset.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.done.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.done.load(Ordering::Acquire) { Poll::Ready(()) } else { Poll::Pending }
        })
        .await
    }
}

/// A fair async queue with a busy flag. Serialises the waiting (async) reads,
/// or writes, of one connection, and tells
/// the plain calls (`try-read`, `try-write`, the read-ahead) whether one is queued
/// or under way, so that they keep off: nothing overtakes it or lands inside it.
/// The plain calls, made for every message, then cost one atomic load instead of
/// locking and unlocking an async mutex.
#[derive(Default)]
pub struct OpQueue {
    lock: tokio::sync::Mutex<()>,
    /// Async users holding or waiting for `lock`.
    users: AtomicUsize,
    /// Wakes those waiting for the gate to be free.
    freed: Notify,
}

/// One async user's place at the [`OpQueue`], from queueing to leaving (also when
/// its future is dropped while queued).
struct Queued<'a>(&'a OpQueue);

/// Holds the [`OpQueue`]. Fields drop in order: the lock first, then the place.
pub struct Entered<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    _queued: Queued<'a>,
}

impl OpQueue {
    /// Queues, then holds the queue until the returned guard drops.
    pub async fn enter(&self) -> Entered<'_> {
        self.users.fetch_add(1, Ordering::AcqRel);
        let queued = Queued(self);
        Entered { _lock: self.lock.lock().await, _queued: queued }
    }

    /// Some async user holds or waits for the queue.
    pub fn busy(&self) -> bool {
        self.users.load(Ordering::Acquire) != 0
    }

    /// Resolves once no async user holds or waits for the queue.
    pub async fn wait_free(&self) {
        while self.busy() {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.busy() {
                return;
            }
            freed.await;
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.0.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::pin::{Pin, pin};
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    use super::*;

    /// Counts the polls that reached the wait.
    fn counting<T>(polls: &AtomicUsize, poll: impl FnOnce() -> Poll<T>) -> Poll<T> {
        polls.fetch_add(1, Ordering::Relaxed);
        poll()
    }

    #[tokio::test]
    async fn a_pending_wait_is_polled_again_only_after_it_woke() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let gate = WakeGate::default();
        let polls = AtomicUsize::new(0);
        let mut recv = pin!(poll_fn(|cx| gate.poll(cx, |cx| counting(&polls, || rx.poll_recv(cx)))));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..10 {
            assert!(recv.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "nine polls answered by the gate alone");
        tx.send(7).unwrap();
        assert_eq!(recv.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn items_already_queued_are_all_received() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let gate = WakeGate::default();
        for n in 0..3 {
            tx.send(n).unwrap();
        }
        let receive_three = async {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(poll_fn(|cx| gate.poll(cx, |cx| rx.poll_recv(cx))).await.unwrap());
            }
            got
        };
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), receive_three).await;
        assert_eq!(got.expect("an item already queued was never received"), [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_cancellation_wakes_the_task_waiting_behind_the_gate() {
        let token = CancellationToken::new();
        let mut stop = cancelled(&token);
        // Polled (and left waiting) a few times first, as a loop does.
        let waker = futures::task::noop_waker();
        for _ in 0..3 {
            assert!(Pin::new(&mut stop).poll(&mut Context::from_waker(&waker)).is_pending());
        }
        let waiting = async { (&mut stop).await };
        let cancel = async {
            tokio::task::yield_now().await;
            token.cancel();
        };
        let finished = tokio::time::timeout(std::time::Duration::from_secs(5), futures::future::join(waiting, cancel));
        assert!(finished.await.is_ok(), "the cancellation reached the waiting task");
    }

    #[tokio::test]
    async fn an_op_queue_is_busy_while_one_holds_or_waits_and_frees_its_waiters() {
        let queue = OpQueue::default();
        assert!(!queue.busy());
        let first = queue.enter().await;
        assert!(queue.busy());
        // A second user queues behind the first; dropping it while queued
        // leaves no trace.
        {
            let mut second = std::pin::pin!(queue.enter());
            let waker = futures::task::noop_waker();
            assert!(second.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        }
        assert!(queue.busy(), "the first still holds it");
        let free = queue.wait_free();
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), free).await.expect("wait_free woke");
        assert!(!queue.busy());
    }

    #[tokio::test]
    async fn served_resolves_after_finish_and_not_before_once_reset() {
        let served = Arc::new(Served::default());
        served.reset();
        let waiting = tokio::spawn({
            let served = served.clone();
            async move { served.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        served.finish();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("woke").unwrap();
        served.reset();
        let waker = futures::task::noop_waker();
        assert!(std::pin::pin!(served.wait()).poll(&mut Context::from_waker(&waker)).is_pending());
    }
}
