//! Repeated warnings, coalesced: a burst of the same kind of warning (accept
//! failures at the open-file limit, a client reconnecting past its per-address
//! cap, datagrams from senders nobody granted, a guest asking for what it may
//! not have in a loop) writes its first line in full, then at most one line
//! per interval with how many more there were and the last of them.
//!
//! Whoever causes the warnings, a guest or a client, cannot flood the
//! operator's log or spend the host's time writing it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// How often a burst writes its count.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One kind of warning, for one component (or the process: `None`).
pub struct Coalesced {
    /// What the count line calls these warnings.
    what: &'static str,
    component: Option<Arc<str>>,
    /// Written at error level (traps) rather than warn.
    error: bool,
    interval: Duration,
    window: Mutex<Window>,
    /// Counts every warning, written or not (the metric of its kind).
    counter: Option<Counter>,
}

#[derive(Default)]
struct Window {
    /// A burst is on until then (set by its first warning, moved on by each
    /// count line).
    until: Option<Instant>,
    /// Warnings not written since the last line.
    unwritten: u64,
    /// The last of them (a message of bounded length: its parts come from
    /// the host, or from a guest through `policy::check_host_text`).
    last: String,
    /// A task writes the count lines of this burst.
    counting: bool,
}

impl std::fmt::Debug for Coalesced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesced").field("what", &self.what).field("component", &self.component).finish()
    }
}

impl Coalesced {
    pub fn new(what: &'static str, component: Option<Arc<str>>) -> Arc<Self> {
        Self::with_interval(what, component, INTERVAL)
    }

    /// [`Coalesced::new`] for errors: written at error level.
    pub fn errors(what: &'static str, component: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(Coalesced {
            what,
            component,
            error: true,
            interval: INTERVAL,
            window: Mutex::default(),
            counter: None,
        })
    }

    /// [`Coalesced::new`] with a count line per `interval` instead of [`INTERVAL`].
    pub fn with_interval(what: &'static str, component: Option<Arc<str>>, interval: Duration) -> Arc<Self> {
        Arc::new(Coalesced { what, component, error: false, interval, window: Mutex::default(), counter: None })
    }

    /// [`Coalesced::new`] that also counts every warning in `counter` (a
    /// metric: the log coalesces, the count does not).
    pub fn counted(what: &'static str, component: Option<Arc<str>>, counter: Counter) -> Arc<Self> {
        let counter = Some(counter);
        Arc::new(Coalesced { what, component, error: false, interval: INTERVAL, window: Mutex::default(), counter })
    }

    /// Writes the warning `message()` (at warn level, or error for
    /// [`Coalesced::errors`]) if it starts a burst;
    /// otherwise counts it, to be written as part of the burst's next count
    /// line (the message is only made when it is needed).
    pub fn warn(self: &Arc<Self>, message: impl FnOnce() -> String) {
        if let Some(counter) = &self.counter {
            counter.inc();
        }
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.until.is_none_or(|until| now >= until) && window.unwritten == 0 {
            window.until = Some(now + self.interval);
            drop(window);
            self.write(&message());
            return;
        }
        window.unwritten += 1;
        // Only its first line: a trap's backtrace is in the burst's first line.
        let message = message();
        window.last = message.lines().next().unwrap_or_default().to_string();
        if !window.counting {
            // The first one counted in this burst starts the count lines.
            window.counting = true;
            let until = window.until.unwrap_or(now);
            drop(window);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.clone().write_counts(until));
                }
                Err(_) => self.flush(),
            }
        }
    }

    /// Warnings counted and not written yet.
    pub fn pending(&self) -> u64 {
        self.window.lock().unwrap_or_else(|e| e.into_inner()).unwritten
    }

    /// Writes a count line at the end of each interval that had warnings,
    /// until one had none.
    async fn write_counts(self: Arc<Self>, mut until: Instant) {
        loop {
            tokio::time::sleep_until(until).await;
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if window.unwritten == 0 {
                window.until = None;
                window.counting = false;
                return;
            }
            until += self.interval;
            window.until = Some(until);
            drop(window);
            self.flush();
        }
    }

    /// Writes the count line now.
    fn flush(&self) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if tokio::runtime::Handle::try_current().is_err() {
            window.counting = false; // no task to end the burst
        }
        let (n, last) = (std::mem::take(&mut window.unwritten), std::mem::take(&mut window.last));
        drop(window);
        if n > 0 {
            self.write(&format!("{}: {n} more in the last {:?}; the last: {last}", self.what, self.interval));
        }
    }

    fn write(&self, line: &str) {
        match (&self.component, self.error) {
            (Some(component), true) => tracing::error!(service = %component, "{line}"),
            (Some(component), false) => tracing::warn!(service = %component, "{line}"),
            (None, true) => tracing::error!("{line}"),
            (None, false) => tracing::warn!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_is_written_once_and_counted() {
        let accept_failures = crate::coalesce::Coalesced::new("accept failed", None);
        accept_failures.warn(|| "accept failed: Too many open files".to_string()); // written
        accept_failures.warn(|| "accept failed: Too many open files".to_string()); // counted
        assert_eq!(accept_failures.pending(), 1); // written as one line after a second
    }

    #[tokio::test]
    async fn a_burst_writes_its_first_line_then_one_count_per_interval() {
        const INTERVAL: Duration = Duration::from_millis(100);
        let log = Coalesced::with_interval("test warnings", None, INTERVAL);
        log.warn(|| "one".into());
        assert_eq!(log.pending(), 0, "the first is written at once");
        for i in 0..1000 {
            log.warn(|| format!("again {i}"));
        }
        assert_eq!(log.pending(), 1000, "the rest are counted");
        tokio::time::sleep(INTERVAL + Duration::from_millis(30)).await;
        assert_eq!(log.pending(), 0, "the count line was written at the interval's end");
        // Still in the burst: counted again, not written in full.
        log.warn(|| "later".into());
        assert_eq!(log.pending(), 1);
        tokio::time::sleep(INTERVAL * 3).await;
        assert_eq!(log.pending(), 0);
        // A quiet interval ended the burst: the next is written at once.
        log.warn(|| "new burst".into());
        assert_eq!(log.pending(), 0);
    }
}
