//! A guest's stdout and stderr, written by a thread of their own.
//!
//! wasmtime-wasi's inherited stdio writes to the process's file descriptors
//! on the thread that runs the guest: a guest printing to a full pipe would
//! stall every service of the process, one printing to a closed pipe would
//! fail its writes. Here a guest's write only queues the bytes (it never
//! waits), and a writer thread per stream passes them on. The queue holds at
//! most [`QUEUE_LIMIT`] bytes: past that a guest's output is dropped (it sees
//! its writes succeed), and the log says so once.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The most bytes of guest output waiting to be written, per stream.
pub const QUEUE_LIMIT: usize = 1 << 20;

/// What one guest write may pass at once (WASI's `check-write`).
const WRITE_PERMIT: usize = 64 * 1024;

/// The process's stdout or stderr, for a guest's WASI context.
#[derive(Clone, Copy)]
pub struct GuestOutput(&'static Queue);

impl GuestOutput {
    pub fn stdout() -> Self {
        static STDOUT: LazyLock<Queue> = LazyLock::new(|| Queue::new("stdout"));
        GuestOutput(&STDOUT)
    }

    pub fn stderr() -> Self {
        static STDERR: LazyLock<Queue> = LazyLock::new(|| Queue::new("stderr"));
        GuestOutput(&STDERR)
    }
}

/// Waits (at most `timeout`) until the guest output queued so far is written:
/// called before the process exits.
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for output in [GuestOutput::stdout(), GuestOutput::stderr()] {
        output.0.wait_written(deadline);
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
        Box::new(*self)
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(*self)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    /// Always ready: a write never waits.
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0.push(bytes);
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
        self.0.push(Bytes::copy_from_slice(buf));
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
