//! Why the policy refused, in its own terms; `net` turns it into the error a
//! guest sees (`From<PolicyError> for SocketError`).

use std::fmt;
use std::io;

use super::Use;

/// A refusal or a failed look-up.
#[derive(Debug)]
pub enum PolicyError {
    /// No grant covers the use: `permission denied: connect tcp://10.0.0.5:5432
    /// is not granted`. The guest sees `permission-denied`; the metrics
    /// count it under its use.
    Denied { use_: Use, message: String },
    /// Host text that cannot be a name or an IP literal (see
    /// [`check_host_text`](super::check_host_text)). The guest sees `generic`.
    InvalidHost(String),
    /// A granted name could not be resolved (no such name, time-out). The guest
    /// sees `generic` with the OS's reason.
    Lookup(io::Error),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Denied { message, .. } | PolicyError::InvalidHost(message) => f.write_str(message),
            PolicyError::Lookup(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for PolicyError {}
