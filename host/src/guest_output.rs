//! A guest's stdout and stderr, written by a thread of their own.
//!
//! wasmtime-wasi's inherited stdio writes to the process's file descriptors
//! on the thread that runs the guest: a guest printing to a full pipe would
//! stall every service of the process, one printing to a closed pipe would
//! fail its writes. Here a guest's write only queues the bytes (it never
//! waits), and a writer thread per stream passes them on. The queue holds at
//! most [`QUEUE_LIMIT`] bytes: past that a guest's output is dropped (it sees
//! its writes succeed), and the log says so once.
//!
//! Each component also has an [`OutputRate`]: at most [`BYTES_PER_SECOND`]
//! in at most [`WRITES_PER_SECOND`] writes of stdout and stderr together,
//! past which its output is dropped (logged, coalesced). With an instance per connection every client gets a fresh
//! instance, so a guest's own "a line a second" (`portcullis_sdk::warn`)
//! would be a line a second per client; this bound is the component's.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::coalesce::Coalesced;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most bytes of guest output waiting to be written, per stream.
pub const QUEUE_LIMIT: usize = 1 << 20;

/// What one guest write may pass at once (WASI's `check-write`).
const WRITE_PERMIT: usize = 64 * 1024;

/// The most bytes of stdout and stderr together one component writes in a
/// second; the rest of that second's output is dropped.
pub const BYTES_PER_SECOND: usize = 64 * 1024;
/// The most writes (a line, mostly) one component makes in a second.
pub const WRITES_PER_SECOND: usize = 100;

/// The process's stdout or stderr, for a guest's WASI context, under its
/// component's [`OutputRate`].
#[derive(Clone)]
pub struct GuestOutput(&'static Queue, Arc<OutputRate>);

static STDOUT: LazyLock<Queue> = LazyLock::new(|| Queue::new("stdout"));
static STDERR: LazyLock<Queue> = LazyLock::new(|| Queue::new("stderr"));

impl GuestOutput {
    pub fn stdout(rate: Arc<OutputRate>) -> Self {
        GuestOutput(&STDOUT, rate)
    }

    pub fn stderr(rate: Arc<OutputRate>) -> Self {
        GuestOutput(&STDERR, rate)
    }

    fn push(&self, bytes: Bytes) {
        if !self.1.admit(bytes.len()) {
            return;
        }
        if std::ptr::eq(self.0, &*STDERR) && JSON_LOGS.load(Ordering::Relaxed) {
            // The log stream is JSON: the guest's text goes in records of
            // its own, a line each (held until its newline, or 2 KiB),
            // never as raw bytes a collector would take for (or glue onto)
            // the host's records.
            let lines = self.1.whole_lines(&bytes);
            for record in json_records(&self.1.component, &lines) {
                self.0.push(record);
            }
            return;
        }
        self.0.push(bytes);
    }
}

/// Whether the process writes its log as JSON (`--log-format json`).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Frames guest stderr as JSON log records from now on (`--log-format json`).
pub fn json_stderr() {
    JSON_LOGS.store(true, Ordering::Relaxed);
}

/// The longest message of one JSON record of guest text: a record stays
/// under `PIPE_BUF` (4 KiB), so it reaches a pipe whole, never interleaved
/// with a host record. Longer lines are split.
const RECORD_TEXT: usize = 2048;

/// `bytes` of guest stderr as JSON records, one a line: `{"timestamp":...,
/// "level":"INFO","message":...,"service":...,"stream":"stderr",
/// "target":"guest"}`.
fn json_records(service: &str, bytes: &[u8]) -> Vec<Bytes> {
    let text = String::from_utf8_lossy(bytes);
    let timestamp = rfc3339(std::time::SystemTime::now());
    let mut records = Vec::new();
    for line in text.split('\n').filter(|line| !line.is_empty()) {
        let mut rest = line;
        while !rest.is_empty() {
            let mut cut = rest.len().min(RECORD_TEXT);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (message, more) = rest.split_at(cut);
            rest = more;
            let record = serde_json::json!({
                "timestamp": timestamp,
                "level": "INFO",
                "message": message,
                "service": service,
                "stream": "stderr",
                "target": "guest",
            });
            records.push(Bytes::from(format!("{record}\n")));
        }
    }
    records
}

/// `time` as RFC 3339 in UTC, to the microsecond (as the host's records).
pub(crate) fn rfc3339(time: std::time::SystemTime) -> String {
    let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((since.as_secs() / 86_400) as i64, since.as_secs() % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        since.subsec_micros()
    )
}

/// One component's output over time (see [`BYTES_PER_SECOND`]).
pub struct OutputRate {
    /// When the current second began, and the bytes and writes let through in it.
    window: Mutex<(Option<Instant>, usize, usize)>,
    drops: Arc<Coalesced>,
    /// Whose output it is (the service's name).
    component: Arc<str>,
    /// Stderr written since its last newline (JSON logs only), at most
    /// [`RECORD_TEXT`] bytes.
    partial_line: Mutex<Vec<u8>>,
}

impl OutputRate {
    pub fn new(component: Arc<str>) -> Arc<Self> {
        Arc::new(OutputRate {
            window: Mutex::new((None, 0, 0)),
            drops: Coalesced::new("guest output drops", Some(component.clone())),
            component,
            partial_line: Mutex::default(),
        })
    }

    /// `bytes` after what waited for its newline: the whole lines (and a
    /// piece as long as a record), the rest kept for the next write.
    fn whole_lines(&self, bytes: &[u8]) -> Vec<u8> {
        let mut partial = self.partial_line.lock().unwrap_or_else(|e| e.into_inner());
        partial.extend_from_slice(bytes);
        let cut = match partial.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if partial.len() >= RECORD_TEXT => partial.len(),
            None => return Vec::new(),
        };
        let rest = partial.split_off(cut);
        std::mem::replace(&mut *partial, rest)
    }

    /// Whether `len` more bytes fit this second; logs (coalesced) when not.
    fn admit(&self, len: usize) -> bool {
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.0.is_none_or(|started| now.duration_since(started) >= Duration::from_secs(1)) {
            *window = (Some(now), 0, 0);
        }
        if window.1 + len > BYTES_PER_SECOND || window.2 >= WRITES_PER_SECOND {
            drop(window);
            self.drops.warn(|| {
                format!("guest output dropped: over {BYTES_PER_SECOND} bytes or {WRITES_PER_SECOND} writes a second")
            });
            return false;
        }
        window.1 += len;
        window.2 += 1;
        true
    }
}

/// Waits (at most `timeout`) until the guest output queued so far is written:
/// called before the process exits.
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for queue in [&*STDOUT, &*STDERR] {
        queue.wait_written(deadline);
    }
}

struct Queue {
    name: &'static str,
    state: Mutex<Pending>,
    /// Signalled when bytes are queued (for the writer) or written (for `flush`).
    changed: Condvar,
    started: AtomicBool,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    queued: usize,
    /// The writer holds a chunk it has taken but not written yet.
    writing: bool,
}

impl Queue {
    fn new(name: &'static str) -> Self {
        Queue {
            name,
            state: Mutex::default(),
            changed: Condvar::new(),
            started: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `bytes`, or drops them when the queue is full. Never waits.
    fn push(&'static self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if !self.started.swap(true, Ordering::AcqRel) {
            let spawned = std::thread::Builder::new()
                .name(format!("portcullis-guest-{}", self.name))
                .spawn(move || self.write_forever());
            if spawned.is_err() {
                self.started.store(false, Ordering::Release);
            }
        }
        let mut pending = self.lock();
        if pending.queued + bytes.len() > QUEUE_LIMIT {
            drop(pending);
            if self.dropped.fetch_add(bytes.len() as u64, Ordering::Relaxed) == 0 {
                tracing::warn!(
                    "guest output to {} dropped: more than {QUEUE_LIMIT} bytes were waiting to be written \
                     (further drops are not logged)",
                    self.name
                );
            }
            return;
        }
        pending.queued += bytes.len();
        pending.chunks.push_back(bytes);
        self.changed.notify_all();
    }

    fn write_forever(&self) {
        loop {
            let chunk = {
                let mut pending = self.lock();
                loop {
                    if let Some(chunk) = pending.chunks.pop_front() {
                        pending.writing = true;
                        break chunk;
                    }
                    pending = self.changed.wait(pending).unwrap_or_else(|e| e.into_inner());
                }
            };
            // A failed write (closed pipe) drops the bytes: nobody can read them.
            let _ = match self.name {
                "stdout" => std::io::stdout().write_all(&chunk).and_then(|()| std::io::stdout().flush()),
                _ => std::io::stderr().write_all(&chunk),
            };
            let mut pending = self.lock();
            pending.queued -= chunk.len();
            pending.writing = false;
            self.changed.notify_all();
        }
    }

    fn wait_written(&self, deadline: Instant) {
        let mut pending = self.lock();
        while pending.queued > 0 || pending.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self.changed.wait_timeout(pending, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    /// Always ready: a write never waits.
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_in_json_records_cannot_forge_or_swallow_one() {
        let forged = b"{\"level\":\"INFO\",\"message\":\"all good\"}\n{\"message\":\"swallow: ";
        let records = json_records("svc", forged);
        assert_eq!(records.len(), 2);
        for record in &records {
            let text = std::str::from_utf8(record).unwrap();
            assert!(text.ends_with('\n') && text.matches('\n').count() == 1, "{text}");
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!((value["service"].as_str(), value["target"].as_str()), (Some("svc"), Some("guest")));
        }
        // Pieces written apart are one line, one record.
        let rate = OutputRate::new("svc".into());
        let mut lines = Vec::new();
        for piece in ["127.0.0.1:1", ": ", "Connection refused", " ", "(os error 111)\n", "next"] {
            lines.extend(rate.whole_lines(piece.as_bytes()));
        }
        assert_eq!(lines, b"127.0.0.1:1: Connection refused (os error 111)\n");
        let long = json_records("svc", "é".repeat(5000).as_bytes());
        assert!(long.len() == 5 && long.iter().all(|r| r.len() < 4096), "split under PIPE_BUF");
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456)),
            "2025-12-06T05:46:40.123456Z"
        );
    }

    #[test]
    fn a_component_writes_at_most_its_bytes_a_second() {
        let rate = OutputRate::new("test".into());
        assert!(rate.admit(BYTES_PER_SECOND - 10));
        assert!(!rate.admit(11), "past the second's bytes");
        assert!(rate.admit(10), "what is left still fits");
        std::thread::sleep(Duration::from_millis(1010));
        assert!(rate.admit(BYTES_PER_SECOND), "a new second");
        std::thread::sleep(Duration::from_millis(1010));
        for _ in 0..WRITES_PER_SECOND {
            assert!(rate.admit(1));
        }
        assert!(!rate.admit(1), "past the second's writes");
    }

    #[test]
    fn past_the_limit_output_is_dropped_not_queued() {
        let queue: &'static Queue = Box::leak(Box::new(Queue::new("test")));
        // No writer thread: nothing drains the queue.
        queue.started.store(true, Ordering::Relaxed);
        for _ in 0..(QUEUE_LIMIT / WRITE_PERMIT) {
            queue.push(Bytes::from(vec![b'x'; WRITE_PERMIT]));
        }
        assert_eq!(queue.lock().queued, QUEUE_LIMIT);
        queue.push(Bytes::from_static(b"one byte too many"));
        assert_eq!(queue.lock().queued, QUEUE_LIMIT, "the bound holds");
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 17);
    }
}
