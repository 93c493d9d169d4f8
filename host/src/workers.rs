//! Worker threads: each runs a current-thread tokio runtime of its own, so
//! that a connection's callbacks, socket readiness and timers stay on one
//! thread with no cross-thread wake-ups (what makes the message path fast),
//! while a process uses as many cores as it has workers.
//!
//! A service runs on one worker (`shared` instances, programs, WASI-backend
//! services) or on every worker (`per-connection` and `per-worker`: each
//! worker accepts on a listener of its own bound with `SO_REUSEPORT` to the
//! same address, and the kernel spreads the connections). A connection lives
//! and dies on the worker that accepted it. What bounds a service stays
//! process-wide: its admission (connection caps) and memory accounts are
//! shared by its workers.

use std::future::Future;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The most `--workers`.
pub const MAX_WORKERS: usize = 1024;

/// The default `--workers`: the CPUs this process may use (its affinity
/// mask and cgroup CPU quota included, as `std` reads them), at least 1.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS)
}

/// Running worker threads; dropping it stops them (after the tasks they run
/// have been awaited: a dropped worker cancels what it still runs).
pub struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least 1), named `portcullis-worker-N`.
    ///
    /// # Errors
    /// A thread or runtime that cannot be created (out of memory, a thread
    /// limit).
    pub fn start(count: usize) -> Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker's async runtime")?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-worker-{index}"))
                .spawn(move || runtime.block_on(stop.cancelled()))
                .context("starting a worker thread")?;
            threads.push(thread);
        }
        Ok(Workers { handles, stop, threads })
    }

    /// How many workers run.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on worker `index` (modulo the count); its handle may be
    /// awaited from any runtime.
    pub fn spawn<F>(&self, index: usize, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[index % self.handles.len()].spawn(task)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_task_runs_on_the_worker_it_was_given() {
        let workers = Workers::start(2).unwrap();
        let name = || std::thread::current().name().map(str::to_string);
        let (a, b, c) = (
            workers.spawn(0, async move { name() }),
            workers.spawn(1, async move { name() }),
            workers.spawn(2, async move { name() }),
        );
        assert_eq!(a.await.unwrap().as_deref(), Some("portcullis-worker-0"));
        assert_eq!(b.await.unwrap().as_deref(), Some("portcullis-worker-1"));
        assert_eq!(c.await.unwrap().as_deref(), Some("portcullis-worker-0"), "modulo the count");
        assert!(default_workers() >= 1);
    }
}
