//! "Closed" as a flag that is cheap to read and a signal that can be awaited.
//!
//! Every plain call (`try-write`, `try-receive-from`, ...) checks whether its
//! socket is closed. A `CancellationToken` answers that under a mutex, which
//! showed in profiles at one check per message; the flag answers with one atomic
//! load, and the token is kept only for waking those who wait.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

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
