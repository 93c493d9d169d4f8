//! Sockets: each instance's [`SocketCount`] against `--max-sockets`, and
//! the process's [`guest_socket_ceiling`] for all guests together.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::memory::HostCharge;
#[cfg(test)]
use super::memory::{MemoryAccount, MemoryBudget};
#[cfg(test)]
use crate::coalesce::Coalesced;

/// The sockets one instance holds open (client connections, UDP sockets,
/// listeners), against [`Limits::max_sockets`](super::Limits::max_sockets) and the process's
/// [`guest_socket_ceiling`].
#[derive(Debug)]
pub struct SocketCount {
    max: u32,
    open: AtomicUsize,
}

/// Sockets open for all guests of the process.
static GUEST_SOCKETS: AtomicUsize = AtomicUsize::new(0);

impl SocketCount {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(SocketCount { max, open: AtomicUsize::new(0) })
    }

    /// Sockets this instance holds now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A place for one more socket, held until the guard is dropped; an error
    /// sentence for the guest when the instance (`socket limit reached (N)`) or
    /// the process is at its cap.
    pub fn take(self: &Arc<Self>) -> Result<SocketSlot, String> {
        let max = self.max as usize;
        if self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(format!("socket limit reached ({max})"));
        }
        let ceiling = guest_socket_ceiling();
        if GUEST_SOCKETS.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < ceiling).then_some(n + 1)).is_err()
        {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "socket limit reached: the process keeps its last file descriptors for its listeners \
                 ({ceiling} guest sockets at most)"
            ));
        }
        Ok(SocketSlot { count: self.clone() })
    }
}

/// One socket's place under its instance's [`SocketCount`].
#[derive(Debug)]
pub struct SocketSlot {
    count: Arc<SocketCount>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::AcqRel);
        GUEST_SOCKETS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a socket a guest opened holds for as long as it lives: its place
/// under the socket limit and the charge for its host buffer.
#[derive(Debug)]
pub struct GuestSocket {
    pub slot: SocketSlot,
    pub charge: HostCharge,
}

#[cfg(test)]
impl GuestSocket {
    /// A socket under limits of its own, for unit tests of the socket core.
    pub fn for_tests() -> Self {
        let account = MemoryAccount::new(
            u64::MAX,
            MemoryBudget::new(u64::MAX),
            Coalesced::new("memory refusals", Some("test".into())),
        );
        GuestSocket { slot: SocketCount::new(u32::MAX).take().unwrap(), charge: account.charge(0, "test").unwrap() }
    }
}

static CEILING: OnceLock<usize> = OnceLock::new();

/// How many sockets all guests of the process may hold together: the
/// open-file limit less a quarter of it (at least 64) kept for accepting on
/// the operator's listeners, the compile cache and the host's own files, and
/// less the descriptors open when [`fix_guest_socket_ceiling`] was called
/// (the workers' own: an event queue, a waker, listeners). Read once, after
/// `server::raise_open_file_limit`.
pub fn guest_socket_ceiling() -> usize {
    *CEILING.get_or_init(|| ceiling_with(0))
}

/// Fixes [`guest_socket_ceiling`] now, less the descriptors the process has
/// open at this moment: `portcullis run` calls it once its workers run and
/// its listeners are bound, before any guest runs. Returns the ceiling (the
/// one already fixed, if it was).
pub fn fix_guest_socket_ceiling() -> usize {
    let open = std::fs::read_dir("/proc/self/fd").map(|dir| dir.count()).unwrap_or(0);
    *CEILING.get_or_init(|| ceiling_with(open))
}

fn ceiling_with(open: usize) -> usize {
    // SAFETY: getrlimit fills the struct it is given.
    let soft = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 { 1024 } else { limit.rlim_cur }
    };
    let soft = soft.min(1 << 20) as usize;
    soft.saturating_sub((soft / 4).max(64)).saturating_sub(open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_counted_per_instance() {
        let count = SocketCount::new(2);
        let one = count.take().unwrap();
        let _two = count.take().unwrap();
        assert_eq!(count.take().unwrap_err(), "socket limit reached (2)");
        drop(one);
        assert_eq!(count.open(), 1);
        let _three = count.take().unwrap();
    }
}
