//! Polling a future or channel again only once it has woken us.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

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
}
