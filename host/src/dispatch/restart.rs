//! Restarts with back-off: the pause before a fresh instance replaces one that
//! trapped, exited or failed to start.
//!
//! A fresh instance at once is right for a trap now and then (a client that
//! found a bug), and wrong for a crash loop: a program that panics in `main`
//! before it ever waits would be restarted again and again without the
//! event loop getting a turn, its neighbours starved and the log flooded.
//! So quick repeated ends double the pause, from [`FIRST_PAUSE`] to
//! [`MAX_PAUSE`]; an instance that lived [`STABLE_AFTER`] starts the count
//! again. The pause is a timer, so every other service runs meanwhile.

use std::time::Duration;

/// The pause after the first quick end.
pub const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two instances of a crash loop.
pub const MAX_PAUSE: Duration = Duration::from_secs(2);
/// An instance that lived this long ended no crash loop: the next pause is
/// [`FIRST_PAUSE`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The pauses of one service's restarts.
///
/// ```
/// # use std::time::Duration;
/// use portcullis::dispatch::restart::{Backoff, FIRST_PAUSE, MAX_PAUSE, STABLE_AFTER};
/// let mut backoff = Backoff::default();
/// assert_eq!(backoff.next(Duration::ZERO), FIRST_PAUSE);
/// assert_eq!(backoff.next(Duration::ZERO), FIRST_PAUSE * 2);
/// for _ in 0..20 {
///     backoff.next(Duration::ZERO);
/// }
/// assert_eq!(backoff.next(Duration::ZERO), MAX_PAUSE);
/// assert_eq!(backoff.quick_ends(), 23);
/// assert_eq!(backoff.next(STABLE_AFTER), FIRST_PAUSE, "a long life starts the count again");
/// ```
#[derive(Debug, Default)]
pub struct Backoff {
    /// Ends in a row of instances that lived less than [`STABLE_AFTER`].
    quick_ends: u32,
}

impl Backoff {
    /// The pause before the next instance, after one that lived `lived`.
    pub fn next(&mut self, lived: Duration) -> Duration {
        if lived >= STABLE_AFTER {
            self.quick_ends = 0;
        }
        self.quick_ends = self.quick_ends.saturating_add(1);
        let doublings = (self.quick_ends - 1).min(16);
        (FIRST_PAUSE * 2u32.pow(doublings)).min(MAX_PAUSE)
    }

    /// How many instances in a row ended quickly (the last included).
    pub fn quick_ends(&self) -> u32 {
        self.quick_ends
    }
}
