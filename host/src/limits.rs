//! Every bound a guest meets, in one place: what the operator sets
//! ([`Limits`], plain data with its defaults) and the accounts that enforce
//! it at run time.
//!
//! - **Memory.** Each instance has a [`MemoryAccount`]: its linear memories
//!   and tables (charged by [`InstanceLimiter`], the store's
//!   `ResourceLimiter`) and the host memory held on its behalf (pending
//!   writes, bytes gathered for a `read`, a buffer per socket it opened:
//!   [`HostCharge`]) together stay under [`Limits::max_memory`]. Every account
//!   also draws on the process's [`MemoryBudget`]. A growth past either fails
//!   inside the guest (`memory.grow` returns -1); a host charge past either
//!   fails the call with a `generic` error.
//! - **Sockets.** Each instance holds at most [`Limits::max_sockets`] sockets
//!   of its own ([`SocketCount`]); all guests of the process together leave a
//!   reserve of file descriptors for the operator's listeners
//!   ([`guest_socket_ceiling`]).
//! - **CPU.** [`Limits::callback_cpu`] is CPU time, read from the thread's
//!   CPU clock ([`CpuUse`]) and enforced by the store's epoch callback
//!   (`state::new_store`).
//!
//! Nothing here knows about sockets or instances beyond counting them.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::coalesce::Coalesced;

mod cpu;
pub use cpu::{AtEpoch, CpuUse, thread_cpu_nanos};

/// Default [`Limits::max_memory`]: 128 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 128 << 20;
/// Default [`Limits::max_sockets`].
pub const DEFAULT_MAX_SOCKETS: u32 = 1024;
/// Default [`Limits::callback_cpu`]: 2 s.
pub const DEFAULT_CALLBACK_CPU: Duration = Duration::from_secs(2);
/// Ballerina's default read time-out: 300000 ms.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_millis(300_000);
/// Default [`Limits::idle_timeout`]: 300 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_millis(300_000);
/// Default [`Limits::write_timeout`]: 300 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_millis(300_000);

/// The most bytes one `read(n)` or one `write` moves through the host: a
/// larger `read` length or `write` list fails with a `generic` error (the
/// SDK's `read_exact` and `write_all` split and gather in guest memory, so
/// they work for any size). Also the read-ahead bound per connection.
pub const MAX_IO: usize = 64 * 1024;

/// What the host holds for each socket a guest opens (read-ahead or receive
/// buffer), charged to the guest's memory account while the socket lives.
pub const SOCKET_BUFFER: u64 = MAX_IO as u64;

/// The bounds of one service, as the operator set them (flags or manifest)
/// or as the library's caller fills them in. `Default` gives the documented
/// defaults.
///
/// ```
/// use std::time::Duration;
/// let limits = portcullis::limits::Limits { max_memory: 64 << 20, ..Default::default() };
/// assert_eq!(limits.callback_cpu, Duration::from_secs(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time-out of every read on accepted connections (`--read-timeout-ms`,
    /// default 300 s).
    pub read_timeout: Duration,
    /// The most connections served at once over all listeners, the guest's
    /// own included (`--max-connections`); further ones wait in the listen
    /// backlog. `None`: no cap of its own (with an instance per connection
    /// the pool's size caps them).
    pub max_connections: Option<NonZeroUsize>,
    /// The most connections open at once from one client address (an IPv4
    /// address, or an IPv6 /64) over all the service's listeners
    /// (`--max-connections-per-ip`, default none): a further one is closed
    /// as soon as it is accepted. Counted per service.
    pub max_connections_per_ip: Option<NonZeroUsize>,
    /// A connection whose callbacks the host drives (accepted, or a callback
    /// client) on which nothing was received or sent for this long, between
    /// callbacks, is closed by the host, and `on-close` fires
    /// (`--idle-timeout-ms`, default 300 s; `None`, set by 0: never).
    pub idle_timeout: Option<Duration>,
    /// A `write` that has sent nothing for this long (the peer does not read)
    /// fails with `generic` `write timed out` and the connection is closed
    /// (`--write-timeout-ms`, default 300 s; `None`, set by 0: never). Also
    /// for connections the guest opened.
    pub write_timeout: Option<Duration>,
    /// Bytes of linear memory, tables and host buffers one instance may hold
    /// (`--max-memory`, default 128 MiB).
    pub max_memory: u64,
    /// Sockets one instance may hold open at once: client connections, UDP
    /// sockets, its own listeners (`--max-sockets`, default 1024).
    pub max_sockets: u32,
    /// How much CPU time a callback (or a program's `main`) may spend in guest
    /// code and in host calls that do not wait, without truly waiting
    /// (`--callback-cpu-ms`, default 2000 ms). Then its instance traps.
    /// CPU time, not wall-clock time: a guest on a busy machine, or one that
    /// sleeps or waits in any call (a read, an accept, `poll`, `sleep`),
    /// uses none of it meanwhile.
    pub callback_cpu: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: None,
            max_connections_per_ip: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            max_memory: DEFAULT_MAX_MEMORY,
            max_sockets: DEFAULT_MAX_SOCKETS,
            callback_cpu: DEFAULT_CALLBACK_CPU,
        }
    }
}

/// A time-out in milliseconds where 0 means none (`--idle-timeout-ms`,
/// `--write-timeout-ms`).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(portcullis::limits::optional_timeout(0), None);
/// assert_eq!(portcullis::limits::optional_timeout(1500), Some(Duration::from_millis(1500)));
/// ```
pub fn optional_timeout(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Parses a size: a number of bytes, or a number with a unit `KiB`, `MiB`,
/// `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000), e.g. `64MiB`.
///
/// ```
/// assert_eq!(portcullis::limits::parse_size("64MiB"), Ok(64 << 20));
/// assert!(portcullis::limits::parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size (say e.g. 64MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("`{text}` has an unknown unit (use KiB, MiB or GiB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("`{text}` is too large"))
}

/// The largest `--max-memory` (and `--memory-budget`) accepted: 1 TiB.
pub const MAX_MEMORY_SETTING: u64 = 1 << 40;

/// [`parse_size`] for a memory setting: at most [`MAX_MEMORY_SETTING`].
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes > MAX_MEMORY_SETTING {
        return Err(format!("`{text}` is more than 1TiB"));
    }
    Ok(bytes)
}

/// Half of the machine's physical memory: the default [`MemoryBudget`].
pub fn default_memory_budget() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || page <= 0 {
        return 4 << 30;
    }
    (pages as u64).saturating_mul(page as u64) / 2
}

/// The most memory all instances of the process hold together (linear
/// memory, tables, host buffers): `--memory-budget`, default half the
/// machine's physical memory.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget { limit, used: AtomicU64::new(0) })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One instance's memory: what it holds against [`Limits::max_memory`], and
/// through it against the process's [`MemoryBudget`].
#[derive(Debug)]
pub struct MemoryAccount {
    max: u64,
    used: AtomicU64,
    budget: Arc<MemoryBudget>,
    /// Refusals, for the log: coalesced over all instances of the component
    /// (with an instance per connection, "once per instance" would be once
    /// per connection).
    refusals: Arc<Coalesced>,
}

impl MemoryAccount {
    pub fn new(max: u64, budget: Arc<MemoryBudget>, refusals: Arc<Coalesced>) -> Arc<Self> {
        Arc::new(MemoryAccount { max, used: AtomicU64::new(0), budget, refusals })
    }

    /// Bytes this instance holds right now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Adds `bytes` if both this instance's limit and the process's budget
    /// have room; otherwise charges nothing and returns why not.
    fn try_charge(&self, bytes: u64, what: &str) -> Result<(), String> {
        let fits = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|&total| total <= self.max)
        });
        let refusal = match fits {
            Err(used) => format!(
                "memory limit reached: {what} of {bytes} bytes would take the instance to {} bytes, over its {} \
                 (--max-memory)",
                used.saturating_add(bytes),
                self.max
            ),
            Ok(_) if self.budget.try_charge(bytes) => return Ok(()),
            Ok(_) => {
                self.used.fetch_sub(bytes, Ordering::AcqRel);
                format!(
                    "memory budget reached: {what} of {bytes} bytes would take the process over its {} bytes \
                     (--memory-budget)",
                    self.budget.limit
                )
            }
        };
        self.refusals.warn(|| refusal.clone());
        Err(refusal)
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.budget.release(bytes);
    }

    /// Charges host memory held for the guest (a pending write's data, bytes
    /// gathered for a read, a socket's buffer) until the guard is dropped.
    /// Fails with a sentence for the guest's `generic` error when the
    /// instance or the process has no room.
    pub fn charge(self: &Arc<Self>, bytes: usize, what: &str) -> Result<HostCharge, String> {
        self.try_charge(bytes as u64, what)?;
        Ok(HostCharge { account: self.clone(), bytes: bytes as u64 })
    }
}

/// Host memory charged to an instance, given back when dropped.
#[derive(Debug)]
pub struct HostCharge {
    account: Arc<MemoryAccount>,
    bytes: u64,
}

impl Drop for HostCharge {
    fn drop(&mut self) {
        self.account.release(self.bytes);
    }
}

/// The store's `ResourceLimiter`: linear memories and tables of one instance
/// (all of them together) charged to its [`MemoryAccount`]. A refused growth
/// makes `memory.grow` (or `table.grow`) return -1 in the guest.
pub struct InstanceLimiter {
    account: Arc<MemoryAccount>,
    /// What this store's memories and tables hold now, given back on drop.
    charged: u64,
    /// The last growth charged, given back if wasmtime then fails it.
    last_growth: u64,
}

/// Wasmtime keeps a pointer per table element.
const TABLE_ELEMENT_BYTES: u64 = std::mem::size_of::<usize>() as u64;

impl InstanceLimiter {
    pub fn new(account: Arc<MemoryAccount>) -> Self {
        InstanceLimiter { account, charged: 0, last_growth: 0 }
    }

    pub fn account(&self) -> &Arc<MemoryAccount> {
        &self.account
    }

    fn grow(&mut self, bytes: u64, what: &str) -> bool {
        self.last_growth = 0;
        if bytes == 0 {
            return true;
        }
        if self.account.try_charge(bytes, what).is_err() {
            return false;
        }
        self.charged += bytes;
        self.last_growth = bytes;
        true
    }

    fn undo_last(&mut self) {
        let bytes = std::mem::take(&mut self.last_growth);
        self.charged -= bytes;
        self.account.release(bytes);
    }
}

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current) as u64, "a memory growth"))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current) as u64;
        Ok(self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES), "a table growth"))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last();
        Ok(())
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        self.account.release(self.charged);
    }
}

/// The sockets one instance holds open (client connections, UDP sockets,
/// listeners), against [`Limits::max_sockets`] and the process's
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
impl MemoryAccount {
    /// An account with no limit, for unit tests of the socket core.
    pub fn unlimited() -> Arc<Self> {
        MemoryAccount::new(
            u64::MAX,
            MemoryBudget::new(u64::MAX),
            Coalesced::new("memory refusals", Some("test".into())),
        )
    }
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

/// How many sockets all guests of the process may hold together: the
/// open-file limit less a quarter of it (at least 64) kept for accepting on
/// the operator's listeners, the compile cache and the host's own files. Read
/// once, after `server::raise_open_file_limit`.
pub fn guest_socket_ceiling() -> usize {
    static CEILING: OnceLock<usize> = OnceLock::new();
    *CEILING.get_or_init(|| {
        // SAFETY: getrlimit fills the struct it is given.
        let soft = unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 { 1024 } else { limit.rlim_cur }
        };
        let soft = soft.min(1 << 20) as usize;
        soft.saturating_sub((soft / 4).max(64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("64 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999GiB").unwrap_err().contains("too large"));
        assert!(parse_memory_size("2TiB").unwrap_err().contains("more than 1TiB"));
        assert_eq!(parse_memory_size("1024GiB"), Ok(1 << 40));
    }

    #[test]
    fn an_account_holds_its_instance_and_the_budget() {
        let budget = MemoryBudget::new(300);
        let a = MemoryAccount::new(200, budget.clone(), Coalesced::new("memory refusals", Some("a".into())));
        let b = MemoryAccount::new(200, budget.clone(), Coalesced::new("memory refusals", Some("b".into())));
        let first = a.charge(150, "a write").unwrap();
        assert!(a.charge(51, "a write").unwrap_err().contains("--max-memory"), "the instance's own limit");
        let second = b.charge(150, "a write").unwrap();
        assert!(b.charge(1, "a write").unwrap_err().contains("--memory-budget"), "the process's budget");
        assert_eq!((a.used(), b.used(), budget.used()), (150, 150, 300));
        drop(first);
        assert_eq!((a.used(), budget.used()), (0, 150));
        let _third = b.charge(50, "a write").unwrap();
        drop(second);
        assert_eq!(budget.used(), 50);
    }

    #[test]
    fn a_limiter_counts_every_memory_of_the_instance_and_gives_it_back() {
        use wasmtime::ResourceLimiter;
        const PAGE: usize = 64 << 10;
        let budget = MemoryBudget::new(1 << 30);
        let account =
            MemoryAccount::new(4 * PAGE as u64, budget.clone(), Coalesced::new("memory refusals", Some("c".into())));
        let mut limiter = InstanceLimiter::new(account.clone());
        // Three memories of a page each, then one grows to two pages: four.
        for _ in 0..3 {
            assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        }
        assert!(limiter.memory_growing(PAGE, 2 * PAGE, None).unwrap());
        assert_eq!(account.used(), 4 * PAGE as u64);
        // A growth wasmtime then fails is given back...
        limiter.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert_eq!(account.used(), 3 * PAGE as u64);
        // ...and the sum over all memories is what is capped.
        assert!(!limiter.memory_growing(PAGE, 3 * PAGE, None).unwrap());
        assert!(!limiter.table_growing(0, PAGE, None).unwrap(), "tables count too");
        assert_eq!(account.used(), 3 * PAGE as u64);
        drop(limiter);
        assert_eq!((account.used(), budget.used()), (0, 0));
    }

    #[test]
    fn three_memories_of_one_real_instance_share_its_limit() {
        // A module with three memories of one page each, and a way to grow each.
        let wasm = wat::parse_str(
            r#"(module
                (memory $a 1) (memory $b 1) (memory $c 1)
                (func (export "grow_a") (param i32) (result i32) (memory.grow $a (local.get 0)))
                (func (export "grow_b") (param i32) (result i32) (memory.grow $b (local.get 0)))
                (func (export "grow_c") (param i32) (result i32) (memory.grow $c (local.get 0))))"#,
        )
        .unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let account = MemoryAccount::new(
            5 * 65536,
            MemoryBudget::new(1 << 30),
            Coalesced::new("memory refusals", Some("three".into())),
        );
        let mut store = wasmtime::Store::new(&engine, InstanceLimiter::new(account.clone()));
        store.limiter(|limiter| limiter);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        assert_eq!(account.used(), 3 * 65536, "the three initial pages");
        let mut grow = |name: &str| {
            let f = instance.get_typed_func::<i32, i32>(&mut store, name).unwrap();
            f.call(&mut store, 1).unwrap()
        };
        assert_eq!(grow("grow_a"), 1, "fourth page: the old size in pages");
        assert_eq!(grow("grow_b"), 1, "fifth page");
        assert_eq!(grow("grow_c"), -1, "a sixth page is past the limit, whichever memory asks");
        assert_eq!(grow("grow_a"), -1);
        assert_eq!(account.used(), 5 * 65536);
        drop(store);
        assert_eq!(account.used(), 0, "a dropped store gives it all back");
    }

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
