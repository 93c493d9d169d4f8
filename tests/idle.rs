//! A service that never reads its data must cost nothing: no re-dispatch loop.
//! (Its own test binary, one backend at a time: it measures this process's CPU
//! time, which other tests running in parallel would add to.)

use std::time::{Duration, Instant};

use portcullis_tests::*;
use tokio::io::AsyncWriteExt;

/// CPU time this process used so far (user + system).
fn cpu_time() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The two backends' runs of the test take turns: each measures the whole
/// process's CPU time, which the other's start (a cold compile cache
/// compiles its component) would add to.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn a_service_that_never_reads_is_not_called_again_and_costs_no_cpu(backend: Backend) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let service = TestService::scenario("never-read").on(backend).start();
    let mut silent = service.connect().await;
    assert_eq!(read_line(&mut silent).await, "calls 0\n");
    silent.write_all(b"nobody reads this").await.unwrap();
    let mut asked = Vec::new();
    calls_beyond(&service, 0, &mut asked).await;

    // Nothing must happen for a second: a check that something does not happen waits.
    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_time() - before;
    assert!(spent < Duration::from_millis(200), "host used {spent:?} of CPU in 1 s for an idle connection");

    // One call for the one burst of bytes, not one per loop turn.
    let mut probe = service.connect().await;
    assert_eq!(read_line(&mut probe).await, "calls 1\n");

    // New bytes do fire the callback again.
    silent.write_all(b"more").await.unwrap();
    calls_beyond(&service, 1, &mut asked).await;
    let mut probe = service.connect().await;
    assert_eq!(read_line(&mut probe).await, "calls 2\n");
    service.stop().await;
}

/// Returns once the service has been called more than `calls` times, as a
/// new connection is told (`calls N`); fails after 10 s. The connections
/// that asked go to `asked`, open: the end of one would be new for the
/// service, and a call.
async fn calls_beyond(service: &TestService, calls: u32, asked: &mut Vec<tokio::net::TcpStream>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = service.connect().await;
        let line = read_line(&mut probe).await;
        asked.push(probe);
        if line != format!("calls {calls}\n") {
            return;
        }
        assert!(Instant::now() < deadline, "still {line:?} 10 s after new bytes came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_backends!(a_service_that_never_reads_is_not_called_again_and_costs_no_cpu,);
