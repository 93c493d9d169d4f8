//! The CPU bound's clock: CPU time the guest spent since it last truly
//! waited, read from the thread's own CPU clock (`CLOCK_THREAD_CPUTIME_ID`).
//!
//! Wall-clock time would trap honest work on a busy machine (a guest that
//! needs 100 ms of CPU may take 400 ms of wall time beside two busy loops),
//! so the bound counts only the time the guest's thread was on a core.
//! The clock is read at epoch checks (every [`EPOCH_TICK`] while the guest
//! runs), never on the message path: a restart only forgets the reading,
//! and the next epoch check takes a new one. So a spinning guest is trapped
//! within its bound plus about one tick.
//!
//! What counts: guest code and host calls that return without waiting (they
//! run on the guest's thread between two checks). What does not: a true wait
//! (a callback's start, a host call or WASI call that suspended the guest),
//! and time the guest gave its thread away at a tick (other services ran).
//!
//! One instance runs several callbacks at once, each an async task, and the
//! host sees only entries into the guest, not which task enters. So the bound
//! starts over whenever the guest is entered from the event loop
//! ([`CpuUse::entering_guest`]: a callback starts, a task resumes after its
//! wait, or after its own yield), which is whenever the guest gave its thread
//! back; and inside a host call that held the guest until it completed
//! ([`CpuUse::wait_ended`]). A wait that ends while another task runs
//! restarts nothing: that task did not wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::engine::EPOCH_TICK;

/// CPU time the guest has run since it last truly waited, against its
/// `--callback-cpu-ms` bound (see the module doc).
pub struct CpuUse {
    /// CPU time booked since the last restart, up to `reading`.
    used: Duration,
    /// The thread's CPU clock when counting (re)started, and on which thread
    /// (shared: the yield at a tick takes it when the guest resumes).
    reading: Arc<Reading>,
    /// `--callback-cpu-ms`.
    pub limit: Duration,
    /// Host calls under way (the guest is inside one while this is not 0).
    host_calls: u32,
    /// Where the time the guest runs is counted: its service's
    /// `portcullis_guest_cpu_seconds_total` (see [`CpuUse::leaving_guest`]).
    ran: Counter<f64, AtomicU64>,
}

/// A reading of one thread's CPU clock; `NONE` in `cpu_nanos`: not taken
/// since the last restart or yield. With it, when the guest's current run
/// began ([`clock_nanos`]; `NONE`: it is not running), for the time it ran.
#[derive(Default)]
struct Reading {
    cpu_nanos: AtomicU64,
    thread: AtomicU64,
    run_since: AtomicU64,
}

/// Nanoseconds since the process first asked: a monotonic reading that costs
/// ~20 ns (vDSO). The thread's CPU clock costs a system call (~400 ns), too
/// much for every entry into a guest.
fn clock_nanos() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

const NONE: u64 = u64::MAX;

impl Reading {
    fn take_now(&self) {
        self.thread.store(thread_key(), Ordering::Relaxed);
        self.cpu_nanos.store(thread_cpu_nanos(), Ordering::Relaxed);
    }

    fn forget(&self) {
        self.cpu_nanos.store(NONE, Ordering::Relaxed);
    }

    /// The guest (re)starts running.
    fn run_starts(&self) {
        self.run_since.store(clock_nanos(), Ordering::Relaxed);
    }

    /// The guest stops running: the time since it started, if it was.
    fn run_ends(&self) -> Option<Duration> {
        let since = self.run_since.swap(NONE, Ordering::Relaxed);
        (since != NONE).then(|| Duration::from_nanos(clock_nanos().saturating_sub(since)))
    }
}

/// What the epoch check decided (see [`CpuUse::at_epoch`]).
#[derive(Debug, PartialEq, Eq)]
pub enum AtEpoch {
    /// Run on.
    Continue,
    /// The guest ran a whole tick: give the thread away (the future yields).
    Yield,
    /// Past the bound: trap.
    Exceeded,
}

impl CpuUse {
    /// A guest under `limit`, its running time counted in `ran`.
    pub fn new(limit: Duration, ran: Counter<f64, AtomicU64>) -> Self {
        let reading = Arc::new(Reading::default());
        reading.forget();
        reading.run_since.store(NONE, Ordering::Relaxed);
        CpuUse { used: Duration::ZERO, reading, limit, host_calls: 0, ran }
    }

    /// The guest calls into the host.
    pub fn calling_host(&mut self) {
        self.host_calls += 1;
    }

    /// A host call returns to the guest.
    pub fn returning_from_host(&mut self) {
        self.host_calls = self.host_calls.saturating_sub(1);
    }

    /// The host enters the guest. From the event loop (not inside a host
    /// call, as a `realloc` is) the guest gave its thread back since it last
    /// ran: the bound starts over.
    pub fn entering_guest(&mut self) {
        if self.host_calls == 0 {
            self.restart();
            self.reading.run_starts();
        }
    }

    /// The guest returns to the event loop (a callback ends, or its task
    /// waits): the time since it was entered counts as its running time,
    /// less waits inside host calls and yields at a tick. A run shorter
    /// than a tick is timed by the monotonic clock (~20 ns a reading: two
    /// per entry), so on a loaded machine what the kernel takes from the
    /// worker thread meanwhile counts too; a longer run by the thread's CPU
    /// clock from its first tick on.
    pub fn leaving_guest(&mut self) {
        if self.host_calls == 0 {
            self.book_run();
        }
    }

    /// Books the time run since the entry (the monotonic clock), or, in a
    /// run longer than a tick, the thread's CPU time since the last tick's
    /// reading (the thread's clock: a system call, once per such run).
    fn book_run(&self) {
        let ran = self.reading.run_ends().or_else(|| {
            let cpu = self.reading.cpu_nanos.load(Ordering::Relaxed);
            let same_thread = self.reading.thread.load(Ordering::Relaxed) == thread_key();
            (cpu != NONE && same_thread).then(|| Duration::from_nanos(thread_cpu_nanos().saturating_sub(cpu)))
        });
        if let Some(ran) = ran {
            self.ran.inc_by(ran.as_secs_f64());
        }
    }

    /// A host call that suspended completed. If the guest is inside a host
    /// call (one that held it until it completed) it goes on at once: the
    /// bound starts over now. Otherwise the waiting task resumes at an entry
    /// of its own ([`CpuUse::entering_guest`]), and whatever runs now did not
    /// wait.
    pub fn wait_ended(&mut self) {
        if self.host_calls > 0 {
            self.restart();
            // Its running time leaves the wait out (and what ran since the
            // last tick before it: at most a tick per wait goes uncounted).
            self.reading.run_starts();
        }
    }

    /// The guest truly waited, or a callback starts: the bound starts over.
    /// Cheap (two stores): it runs once per callback.
    pub fn restart(&mut self) {
        self.used = Duration::ZERO;
        self.reading.forget();
    }

    /// CPU time used since the last restart, as of the last epoch check.
    pub fn used(&self) -> Duration {
        self.used
    }

    /// At an epoch check, while the guest runs on this thread: books the CPU
    /// time since the last reading and says what to do.
    pub fn at_epoch(&mut self) -> AtEpoch {
        let cpu = self.reading.cpu_nanos.load(Ordering::Relaxed);
        let same_thread = self.reading.thread.load(Ordering::Relaxed) == thread_key();
        if cpu == NONE || !same_thread {
            // Just (re)started, or resumed on another thread (a runtime with
            // several workers): count from here. A run this long is timed by
            // the thread's CPU clock from now on (the monotonic clock would
            // count what other threads take from this one).
            if let Some(ran) = self.reading.run_ends() {
                self.ran.inc_by(ran.as_secs_f64());
            }
            self.reading.take_now();
            return AtEpoch::Continue;
        }
        let ran = Duration::from_nanos(thread_cpu_nanos().saturating_sub(cpu));
        if self.used + ran >= self.limit {
            self.used += ran;
            self.ran.inc_by(ran.as_secs_f64());
            return AtEpoch::Exceeded;
        }
        if ran < EPOCH_TICK {
            return AtEpoch::Continue;
        }
        self.used += ran;
        self.ran.inc_by(ran.as_secs_f64());
        self.reading.forget();
        AtEpoch::Yield
    }

    /// The yield that gives the thread away after [`AtEpoch::Yield`], until
    /// tokio resumes the guest; counting goes on from then.
    pub fn yield_turn(&self) -> impl Future<Output = ()> + Send + 'static {
        let reading = self.reading.clone();
        async move {
            // tokio's own yield: it polls sockets and timers before resuming
            // the guest (wasmtime's plain yield wakes at once, and tokio then
            // checks its sockets only every 61 turns).
            tokio::task::yield_now().await;
            reading.take_now();
        }
    }
}

/// This thread's CPU time, in nanoseconds.
pub fn thread_cpu_nanos() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A number that names this thread for as long as the process lives.
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    KEY.with(|k| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(for_cpu: Duration) {
        let start = thread_cpu_nanos();
        while Duration::from_nanos(thread_cpu_nanos() - start) < for_cpu {
            std::hint::black_box(0);
        }
    }

    #[test]
    fn computing_counts_and_traps_past_the_bound() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        assert_eq!(cpu.at_epoch(), AtEpoch::Continue, "the first check only takes a reading");
        let mut yields = 0;
        let outcome = loop {
            spin(Duration::from_millis(3));
            match cpu.at_epoch() {
                AtEpoch::Yield => {
                    yields += 1;
                    cpu.reading.take_now(); // as the yield does when the guest resumes
                }
                other => break other,
            }
        };
        assert_eq!(outcome, AtEpoch::Exceeded);
        assert!(yields >= 10, "gave the thread away each tick: {yields}");
        assert!(cpu.used() >= Duration::from_millis(50) && cpu.used() < Duration::from_millis(60), "{:?}", cpu.used());
    }

    #[test]
    fn sleeping_counts_nothing() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        cpu.at_epoch();
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(cpu.at_epoch(), AtEpoch::Continue, "wall time is no CPU time");
        assert!(cpu.used() < Duration::from_millis(5));
    }

    /// Two tasks whose waits ended while neither ran (the failing case of
    /// `each_connection_of_a_batch_gets_its_own_cpu_bound`): each gets its
    /// whole bound when it enters.
    #[test]
    fn each_entry_from_the_event_loop_gets_the_whole_bound() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        cpu.wait_ended();
        cpu.wait_ended();
        for task in ["first", "second"] {
            cpu.entering_guest();
            cpu.at_epoch();
            spin(Duration::from_millis(40));
            assert_eq!(cpu.at_epoch(), AtEpoch::Yield, "the {task} task: 40 ms of its own 50");
            cpu.reading.take_now();
        }
    }

    #[test]
    fn a_wait_ending_while_the_guest_runs_restarts_nothing() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        cpu.entering_guest();
        cpu.at_epoch();
        spin(Duration::from_millis(30));
        assert_eq!(cpu.at_epoch(), AtEpoch::Yield);
        cpu.reading.take_now();
        // Another task's call completes while this one is given its tick.
        cpu.wait_ended();
        spin(Duration::from_millis(30));
        assert_eq!(cpu.at_epoch(), AtEpoch::Exceeded, "30 + 30 ms: the other task's wait is not this one's");
    }

    #[test]
    fn a_wait_inside_a_host_call_restarts_at_once() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        cpu.at_epoch();
        spin(Duration::from_millis(40));
        assert_eq!(cpu.at_epoch(), AtEpoch::Yield);
        cpu.calling_host();
        cpu.entering_guest(); // a realloc inside the call: the guest did not give its thread back
        assert!(cpu.used() >= Duration::from_millis(40), "nothing restarted by the realloc");
        cpu.wait_ended();
        cpu.returning_from_host();
        assert_eq!(cpu.used(), Duration::ZERO);
    }

    #[test]
    fn a_restart_forgets_what_was_used() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        cpu.at_epoch();
        spin(Duration::from_millis(40));
        assert_eq!(cpu.at_epoch(), AtEpoch::Yield);
        cpu.restart();
        assert_eq!(cpu.used(), Duration::ZERO);
        cpu.at_epoch();
        spin(Duration::from_millis(40));
        assert_eq!(cpu.at_epoch(), AtEpoch::Yield, "40 + 40 ms, but a restart came between");
    }

    #[test]
    fn another_threads_clock_is_never_compared() {
        let mut cpu = CpuUse::new(Duration::from_millis(50), Counter::default());
        cpu.at_epoch();
        spin(Duration::from_millis(60));
        let cpu = std::thread::spawn(move || {
            let mut cpu = cpu;
            assert_eq!(cpu.at_epoch(), AtEpoch::Continue, "resumed elsewhere: counting starts there");
            cpu
        })
        .join()
        .unwrap();
        assert_eq!(cpu.used(), Duration::ZERO);
    }
}
