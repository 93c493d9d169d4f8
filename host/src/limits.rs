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
//! Nothing here knows about sockets or instances beyond counting them. One
//! file per job: `memory`, `sockets`, `cpu`; this one holds the settings.

use std::num::NonZeroUsize;
use std::time::Duration;

mod cpu;
mod memory;
mod sockets;
pub use cpu::{AtEpoch, CpuUse, thread_cpu_nanos};
pub use memory::{HostCharge, InstanceLimiter, MemoryAccount, MemoryBudget};
pub use sockets::{GuestSocket, SocketCount, SocketSlot, fix_guest_socket_ceiling, guest_socket_ceiling};

/// Default [`Limits::max_memory`]: 128 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 128 << 20;
/// Default [`Limits::max_sockets`].
pub const DEFAULT_MAX_SOCKETS: u32 = 1024;
/// Default [`Limits::callback_cpu`]: 2 s.
pub const DEFAULT_CALLBACK_CPU: Duration = Duration::from_secs(2);
/// Ballerina's default read time-out: 300000 ms.
pub const DEFAULT_READ_TIMEOUT: Duration = portcullis_protocol::environment::DEFAULT_TIMEOUT;
/// Default [`Limits::idle_timeout`]: 300 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = portcullis_protocol::environment::DEFAULT_TIMEOUT;
/// Default [`Limits::write_timeout`]: 300 s.
pub const DEFAULT_WRITE_TIMEOUT: Duration = portcullis_protocol::environment::DEFAULT_TIMEOUT;

/// The most bytes one `read(n)` or one `write` moves through the host: a
/// larger `read` length or `write` list fails with a `generic` error (the
/// SDK's `read_exact` and `write_all` split and gather in guest memory, so
/// they work for any size). Also the read-ahead bound per connection.
pub const MAX_IO: usize = 64 * 1024;

/// What the host holds for each socket a guest opens (read-ahead or receive
/// buffer), charged to the guest's memory account while the socket lives.
pub const SOCKET_BUFFER: u64 = MAX_IO as u64;

/// What a TLS session holds besides (rustls's buffers: a record being
/// decrypted, up to 16 KiB of plaintext, up to 64 KiB to send), charged
/// as [`SOCKET_BUFFER`] is for a guest's TLS client connection.
pub const TLS_SESSION: u64 = 96 * 1024;

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
    let number: u64 =
        digits.parse().map_err(|_| format!("`{text}` is not a size (a whole number and a unit: 64MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{text}` is not a size (a whole number and a unit: B, KiB, MiB, GiB, TiB, KB, MB or GB; 1536MiB, not 1.5GiB)"
            ));
        }
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
        assert!(parse_size("64 parsecs").unwrap_err().contains("is not a size"));
        assert!(parse_size("1.5TiB").unwrap_err().contains("1536MiB, not 1.5GiB"));
        assert!(parse_size("16M").is_err(), "16M: MiB or MB? Neither is guessed");
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999GiB").unwrap_err().contains("too large"));
        assert!(parse_memory_size("2TiB").unwrap_err().contains("more than 1TiB"));
        assert_eq!(parse_memory_size("1024GiB"), Ok(1 << 40));
    }
}
