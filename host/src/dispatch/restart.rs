//! Restarts with back-off: the pause before a fresh instance replaces one that
//! trapped, exited or failed to start.
//!
//! A fresh instance at once is right for a trap now and then (a client that
//! found a bug), and wrong for a crash loop: a program that panics in `main`
//! before it ever waits would be restarted again and again without the
//! event loop getting a turn, its neighbours starved and the log flooded.
//! So an instance that ended before it served any client doubles the pause,
//! from [`FIRST_PAUSE`] to [`MAX_PAUSE`], and pauses at least
//! [`LIFE_FACTOR`] times as long as it lived (a start that computes for
//! seconds then traps costs at most a fifth of a core). One that served a
//! client, or lived [`STABLE_AFTER`], starts the count again: a client that
//! makes an honest service trap, again and again, does not keep it down for
//! longer than a restart. The pause is a timer, so every other service runs
//! meanwhile.

use std::time::Duration;

/// The pause after the first quick end.
pub const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest doubled pause between two instances of a crash loop.
pub const MAX_PAUSE: Duration = Duration::from_secs(2);
/// An instance that served no client pauses this many times its life...
pub const LIFE_FACTOR: u32 = 4;
/// ... up to this long.
pub const MAX_LIFE_PAUSE: Duration = Duration::from_secs(30);
/// An instance that lived this long ended no crash loop: the next pause is
/// [`FIRST_PAUSE`] again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The pauses of one service's restarts.
///
/// ```
/// # use std::time::Duration;
/// use portcullis::dispatch::restart::{Backoff, FIRST_PAUSE, MAX_PAUSE, STABLE_AFTER};
/// let mut backoff = Backoff::default();
/// // A crash loop: instances that end at once, serving nobody.
/// assert_eq!(backoff.next(Duration::ZERO, false), FIRST_PAUSE);
/// assert_eq!(backoff.next(Duration::ZERO, false), FIRST_PAUSE * 2);
/// for _ in 0..20 {
///     backoff.next(Duration::ZERO, false);
/// }
/// assert_eq!(backoff.next(Duration::ZERO, false), MAX_PAUSE);
/// assert_eq!(backoff.quick_ends(), 23);
/// // One that computed 2 s before it trapped pauses 8 s.
/// assert_eq!(backoff.next(Duration::from_secs(2), false), Duration::from_secs(8));
/// // One that served a client, or lived long, starts the count again.
/// assert_eq!(backoff.next(Duration::ZERO, true), FIRST_PAUSE);
/// assert_eq!(backoff.next(STABLE_AFTER, false), FIRST_PAUSE);
/// ```
#[derive(Debug, Default)]
pub struct Backoff {
    /// Ends in a row of instances that served nobody and lived less than
    /// [`STABLE_AFTER`].
    quick_ends: u32,
}

impl Backoff {
    /// The pause before the next instance, after one that lived `lived`
    /// and `served` a client (or none).
    pub fn next(&mut self, lived: Duration, served: bool) -> Duration {
        let quick = !served && lived < STABLE_AFTER;
        if !quick {
            self.quick_ends = 0;
            return FIRST_PAUSE;
        }
        self.quick_ends = self.quick_ends.saturating_add(1);
        let doublings = (self.quick_ends - 1).min(16);
        let doubled = (FIRST_PAUSE * 2u32.pow(doublings)).min(MAX_PAUSE);
        // In whole milliseconds: the log says it.
        let life = Duration::from_millis((lived * LIFE_FACTOR).min(MAX_LIFE_PAUSE).as_millis() as u64);
        doubled.max(life)
    }

    /// How many instances in a row ended quickly, serving nobody (the last
    /// included).
    pub fn quick_ends(&self) -> u32 {
        self.quick_ends
    }
}
