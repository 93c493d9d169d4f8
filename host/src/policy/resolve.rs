//! Host-side name resolution: guests pass names, the host resolves them (so a
//! grant by name can be enforced on the name and then on every address).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a name lookup may take before it counts as failed.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves `host` (a name or an IP literal, IPv6 with or without brackets).
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let lookup = tokio::net::lookup_host((host, port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Err(io::Error::new(e.kind(), format!("cannot resolve host `{host}`: {e}"))),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, format!("resolving host `{host}` timed out"))),
    };
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("host `{host}` has no address")));
    }
    Ok(addrs)
}
