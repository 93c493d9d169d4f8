//! Socket activation: listeners a service manager opened and passed on
//! (systemd's `LISTEN_FDS` protocol, `sd_listen_fds(3)`), so that the
//! manager, not portcullis, binds privileged or fixed ports, and clients
//! that come while portcullis starts (or restarts) wait in the listen
//! backlog instead of being refused.
//!
//! The protocol: `LISTEN_PID` is this process's id, `LISTEN_FDS` how many
//! descriptors there are from 3 up, `LISTEN_FDNAMES` (optional) their names,
//! `:`-separated (`FileDescriptorName=` in a `.socket` unit). A descriptor
//! named as a service goes to that service; the unnamed ones (or named
//! `unknown`, systemd's default) go to the services that take listeners, in
//! the manifest's order, one each. Each must be a listening TCP socket.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

use anyhow::{Result, bail};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More than this many is not a service manager's doing.
const MAX_FDS: usize = 1024;

/// The listeners passed to this process, each with its name (`None`:
/// unnamed, to be matched by order).
#[derive(Debug, Default)]
pub struct Passed {
    listeners: Vec<(Option<String>, TcpListener)>,
}

impl Passed {
    /// Takes the listeners the environment describes, if they are this
    /// process's (`LISTEN_PID`); none otherwise. The variables are removed,
    /// so that nothing started later takes them for its own.
    ///
    /// # Errors
    /// A `LISTEN_FDS` that does not parse, or a descriptor that is not a
    /// listening TCP socket.
    pub fn from_env() -> Result<Passed> {
        let pid = std::env::var("LISTEN_PID").ok();
        let count = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        // SAFETY: removed at start-up, before any thread of ours reads the
        // environment (the workers start later).
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        let (Some(pid), Some(count)) = (pid, count) else { return Ok(Passed::default()) };
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Passed::default()); // meant for another process
        }
        let count: usize = match count.trim().parse() {
            Ok(n) if n <= MAX_FDS => n,
            _ => bail!("LISTEN_FDS: `{count}` is not a count of descriptors (0 to {MAX_FDS})"),
        };
        let names: Vec<Option<String>> = match names {
            Some(names) => {
                names.split(':').map(|n| Some(n.to_string()).filter(|n| !n.is_empty() && n != "unknown")).collect()
            }
            None => Vec::new(),
        };
        let mut listeners = Vec::new();
        for i in 0..count {
            let fd = FIRST_FD + i as RawFd;
            check_listening_tcp(fd)?;
            // SAFETY: the manager passed `fd` to this process for it to own;
            // it is checked above to be an open listening TCP socket.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            listener.set_nonblocking(true)?;
            set_cloexec(fd);
            listeners.push((names.get(i).cloned().flatten(), listener));
        }
        Ok(Passed { listeners })
    }

    /// The listeners for service `name`: every one named `name`, or else the
    /// next unnamed one, if `by_order` (a service that takes listeners).
    pub fn take_for(&mut self, name: &str, by_order: bool) -> Vec<TcpListener> {
        let named: Vec<usize> =
            (0..self.listeners.len()).filter(|&i| self.listeners[i].0.as_deref() == Some(name)).collect();
        if !named.is_empty() {
            // From the last, so that each index still points at its socket.
            let mut taken: Vec<TcpListener> = named.into_iter().rev().map(|i| self.listeners.remove(i).1).collect();
            taken.reverse();
            return taken;
        }
        match self.listeners.iter().position(|(n, _)| n.is_none()).filter(|_| by_order) {
            Some(i) => vec![self.listeners.remove(i).1],
            None => Vec::new(),
        }
    }

    /// What no service took, as an error's words (`the socket named `x``).
    pub fn left_over(&self) -> Option<String> {
        if self.listeners.is_empty() {
            return None;
        }
        let what: Vec<String> = self
            .listeners
            .iter()
            .map(|(name, listener)| {
                let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
                match name {
                    Some(name) => format!("`{name}` ({addr})"),
                    None => format!("an unnamed one ({addr})"),
                }
            })
            .collect();
        Some(what.join(", "))
    }
}

fn check_listening_tcp(fd: RawFd) -> Result<()> {
    let int_opt = |level, name| -> Option<i32> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on a descriptor number with a buffer of the right size.
        let rc = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
        (rc == 0).then_some(value)
    };
    let family = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN);
    match (int_opt(libc::SOL_SOCKET, libc::SO_TYPE), int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)) {
        (Some(libc::SOCK_STREAM), Some(1)) if matches!(family, Some(libc::AF_INET | libc::AF_INET6)) => Ok(()),
        (Some(libc::SOCK_STREAM), Some(1)) => {
            bail!("LISTEN_FDS: descriptor {fd} is not an IP socket (a Unix socket?): portcullis serves TCP only")
        }
        (None, _) => bail!("LISTEN_FDS: descriptor {fd} is not a socket"),
        (Some(_), _) => {
            bail!("LISTEN_FDS: descriptor {fd} is not a listening TCP socket (a stream socket with `listen`)")
        }
    }
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(names: &[Option<&str>]) -> Passed {
        let listeners =
            names.iter().map(|name| (name.map(str::to_string), TcpListener::bind("127.0.0.1:0").unwrap())).collect();
        Passed { listeners }
    }

    #[test]
    fn named_sockets_go_to_their_service_and_unnamed_ones_in_order() {
        let mut passed = passed(&[None, Some("kv"), None, Some("kv")]);
        assert_eq!(passed.take_for("kv", true).len(), 2, "both named `kv`");
        assert_eq!(passed.take_for("echo", true).len(), 1, "the first unnamed");
        assert_eq!(passed.take_for("program", false).len(), 0, "not one that takes none by order");
        assert!(passed.left_over().is_some_and(|left| left.starts_with("an unnamed one (127.0.0.1:")));
        assert_eq!(passed.take_for("proxy", true).len(), 1);
        assert_eq!(passed.left_over(), None);
    }
}
