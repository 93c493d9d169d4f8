//! TCP proxy: every accepted connection is piped, both ways, to `UPSTREAM`
//! (env, `host:port`). The upstream connection is a callback client, so its
//! bytes arrive through `on_read_ready` like the client's.
//!
//! Without a grant for the upstream (`--allow-connect tcp://HOST:PORT`) the
//! connect is denied: the client connection is closed and the host logs the
//! denial.
//!
//! The upstream's own callbacks may run before `connect` returns to us, so
//! bytes from an upstream not yet paired with its client are kept until the
//! pairing. `is_accepted` tells the two kinds of connection apart.
//!
//! Misbehaving peers: each direction waits for the other side to take its
//! bytes (back-pressure, nothing buffered here beyond what an upstream sends
//! before its pairing, at most [`MAX_EARLY`] per upstream). A side that stops reading stalls its direction until
//! the host's write time-out fails the write; then both connections close.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use portcullis_sdk::{Client, ClientConfig, Connection, Error, Service, export_service};

/// The most bytes kept from an upstream not yet paired with its client
/// (its first reply, usually: a banner or a greeting); past it the upstream
/// is closed, and its client with it.
pub const MAX_EARLY: usize = 64 * 1024;

#[derive(Default)]
struct Proxy {
    /// Each connection's other end, both ways round, once paired. In an
    /// `Rc`: each message looks its peer up, and a `Connection`'s own clone
    /// is a host call (a new handle), twice per message with its drop.
    peer: RefCell<HashMap<u64, Rc<Connection>>>,
    /// Bytes from upstreams not yet paired, and whether they already ended.
    early: RefCell<HashMap<u64, (Vec<u8>, bool)>>,
}

fn upstream() -> Result<(String, u16), Error> {
    let target = std::env::var("UPSTREAM").map_err(|_| Error::new("set UPSTREAM=host:port"))?;
    let (host, port) = target.rsplit_once(':').ok_or_else(|| Error::new("UPSTREAM must be host:port"))?;
    let port = port.parse().map_err(|_| Error::new(format!("bad port in UPSTREAM={target}")))?;
    Ok((host.to_string(), port))
}

impl Service for Proxy {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        if !conn.is_accepted() {
            return Ok(()); // one of our upstreams announcing itself
        }
        let (host, port) = upstream()?;
        let upstream = match Client::connect_with(ClientConfig::new(host, port).callback(true)).await {
            Ok(upstream) => upstream,
            Err(e) => {
                // Denied or unreachable: this client cannot be served.
                portcullis_sdk::warn(&format!("tcp-proxy: connection {}: {e}", conn.id()));
                return conn.close();
            }
        };
        let upstream = Rc::new(upstream);
        self.peer.borrow_mut().insert(conn.id(), upstream.clone());
        self.peer.borrow_mut().insert(upstream.id(), Rc::new(conn.clone()));
        // Forward what the upstream sent before the pairing.
        let early = self.early.borrow_mut().remove(&upstream.id());
        if let Some((bytes, ended)) = early {
            if !bytes.is_empty() {
                conn.write_all(&bytes).await?;
            }
            if ended {
                conn.close()?;
            }
        }
        Ok(())
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        let peer = self.peer.borrow().get(&conn.id()).cloned();
        match peer {
            Some(peer) if data.is_empty() => {
                // This side ended its stream: pass the end on (a half-close).
                // The host closes each connection once both of its directions
                // are done, and on_close then closes the other.
                let _ = peer.shutdown_write();
                Ok(())
            }
            Some(peer) => peer.write_all(&data).await,
            // Only an upstream can be unpaired here: a client's on_read_ready
            // comes after its on_connect, which pairs it (or closes it).
            None => {
                let mut early = self.early.borrow_mut();
                let entry = early.entry(conn.id()).or_default();
                if entry.0.len() + data.len() > MAX_EARLY {
                    // An upstream that talks this much before its client is
                    // even paired is not waited for: memory is bounded.
                    drop(early);
                    portcullis_sdk::warn(&format!(
                        "tcp-proxy: upstream connection {} sent over {MAX_EARLY} bytes before its client was paired; \
                         closing it",
                        conn.id()
                    ));
                    return conn.close();
                }
                entry.1 |= data.is_empty();
                entry.0.extend_from_slice(&data);
                Ok(())
            }
        }
    }

    async fn on_close(&self, conn: &Connection) {
        let peer = self.peer.borrow_mut().remove(&conn.id());
        if let Some(peer) = peer {
            self.peer.borrow_mut().remove(&peer.id());
            let _ = peer.close();
        }
        self.early.borrow_mut().remove(&conn.id());
    }
}

export_service!(Proxy);
