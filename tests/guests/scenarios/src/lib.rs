//! The service side of the conformance scenarios. `MODE` (env) picks the
//! behaviour; each mode mirrors one service of Ballerina's socket test suite.
//! Where a test needs to observe something inside the guest (an error message,
//! a count), the guest writes it back to the client.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use portcullis_sdk::{Connection, Error, ErrorKind, Service, export_service};

#[derive(Default)]
struct Scenarios {
    joins: Cell<u32>,
    /// How often `on_read_ready` ran (mode `never-read`).
    read_ready_calls: Cell<u32>,
    /// Connections kept beyond their callbacks (the `chat`-style broadcast).
    kept: RefCell<HashMap<u64, Connection>>,
    /// Bytes of a line not finished yet, per connection (mode `broadcast`).
    partial: RefCell<HashMap<u64, Vec<u8>>>,
}

fn mode() -> String {
    std::env::var("MODE").unwrap_or_else(|_| "echo".into())
}

impl Service for Scenarios {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        self.joins.set(self.joins.get() + 1);
        match mode().as_str() {
            "connect-error" => Err(Error::new("Error while on connect")),
            // Tells each new connection how often on-read-ready ran so far.
            "never-read" => {
                let calls = self.read_ready_calls.get();
                conn.write_all(format!("calls {calls}\n").as_bytes()).await.map(drop)
            }
            "close-log" | "broadcast" => {
                self.kept.borrow_mut().insert(conn.id(), conn.clone());
                Ok(())
            }
            // Tells the client what the guest learns of its TLS, then echoes.
            "tls-info" => {
                let line = match conn.tls() {
                    Some(tls) => format!(
                        "tls {} {} alpn={} sni={} subject={}\n",
                        tls.protocol,
                        tls.cipher_suite,
                        tls.alpn.as_deref().unwrap_or("-"),
                        tls.server_name.as_deref().unwrap_or("-"),
                        tls.peer_subject.as_deref().unwrap_or("-"),
                    ),
                    None => "plain\n".into(),
                };
                conn.write_all(line.as_bytes()).await.map(drop)
            }
            _ => Ok(()),
        }
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        match mode().as_str() {
            // Read what is there; echo it if any, close at end of stream.
            "echo" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                conn.write_all(&data).await?;
            }
            // Ballerina "partial reads": read(5), read(4), read(6), then answer.
            "partial" => {
                let mut total = 0;
                for n in [5, 4, 6] {
                    total += conn.read_exact(n).await?.len();
                }
                conn.write_all(format!("Hello Client {total}").as_bytes()).await?;
            }
            // Ballerina "blocking read" and "read time-out": read(18) and echo; a
            // failed read is reported back as `error: <kind>: <message>`.
            // A message starting with "stall" keeps the instance computing for
            // 300 ms first (connections that become ready meanwhile are then
            // ready together).
            "blocking" => match conn.read_exact(18).await {
                // The peer ended the stream first: what it sent, then the end.
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    let rest = conn.read().await?;
                    if !rest.is_empty() {
                        conn.write_all(&rest).await?;
                    }
                    conn.close()?;
                }
                Ok(data) => {
                    if data.starts_with(b"stall") {
                        let started = std::time::Instant::now();
                        while started.elapsed() < std::time::Duration::from_millis(300) {
                            std::hint::black_box(0);
                        }
                    }
                    conn.write_all(&data).await?;
                }
                Err(e) => {
                    conn.write_all(format!("error: {:?}: {e}", e.kind()).as_bytes()).await?;
                    conn.close()?;
                }
            },
            // A heartbeat-style service: `read_exact(LEN)` (env, default 18),
            // tried again after each `ReadTimedOut` (at most 20 times), then
            // the bytes echoed and the connection closed.
            "retrying" => {
                let len = std::env::var("LEN").ok().and_then(|l| l.parse().ok()).unwrap_or(18);
                for _ in 0..20 {
                    match conn.read_exact(len).await {
                        Ok(data) => {
                            conn.write_all(&data).await?;
                            break;
                        }
                        Err(e) if e.kind() == ErrorKind::ReadTimedOut => continue,
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                conn.close()?;
            }
            // Ballerina "onError": the callback fails; `on_error` sees the message.
            "read-error" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                return Err(Error::new("Error while on read"));
            }
            // Ballerina "join count": answer each message with the joins so far.
            "join-count" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                conn.write_all(format!("joins {}\n", self.joins.get()).as_bytes()).await?;
            }
            // One byte per callback, echoed: the rest of each delivery goes back
            // to the host and must come again, in order, in the next calls.
            "byte-at-a-time" => {
                let byte = match conn.read_exact(1).await {
                    Ok(byte) => byte,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return conn.close(),
                    Err(e) => return Err(e),
                };
                conn.write_all(&byte).await?;
            }
            "tls-info" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                conn.write_all(&data).await?;
            }
            // "HOST PORT\n": opens a TLS client connection there, sends
            // `ping\n` and answers `ok REPLY subject=SUBJECT` with the first
            // line back, or `error MESSAGE`.
            "tls-client" => {
                let line = String::from_utf8_lossy(&conn.read().await?).trim().to_string();
                if line.is_empty() {
                    return conn.close();
                }
                let (host, port) = line.split_once(' ').unwrap_or((&line, "0"));
                let config = portcullis_sdk::ClientConfig::new(host, port.parse().unwrap_or(0)).tls(true);
                let answer = match portcullis_sdk::Client::connect_with(config).await {
                    Ok(upstream) => {
                        let subject = upstream.tls().and_then(|t| t.peer_subject).unwrap_or_default();
                        upstream.write_all(b"ping\n").await?;
                        let reply = upstream.read().await?;
                        let _ = upstream.close();
                        format!("ok {} subject={subject}\n", String::from_utf8_lossy(&reply).trim())
                    }
                    Err(e) => format!("error {}\n", e.message()),
                };
                conn.write_all(answer.as_bytes()).await?;
            }
            // Answers each message with the connection's two ends, as the guest sees them.
            "addresses" => {
                if conn.read().await?.is_empty() {
                    return conn.close();
                }
                conn.write_all(format!("{} {}\n", conn.local_addr(), conn.remote_addr()).as_bytes()).await?;
            }
            // Never reads: the host must not call this again until new bytes come.
            "never-read" => {
                self.read_ready_calls.set(self.read_ready_calls.get() + 1);
            }
            // "work N": computes for N ms without waiting, then echoes.
            "work" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                let ms: u64 = std::str::from_utf8(&data)
                    .ok()
                    .and_then(|t| t.trim().strip_prefix("work "))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                let mut x = 0u64;
                while std::time::Instant::now() < until {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                conn.write_all(&data).await?;
            }
            // "trap" in the data makes the guest panic (a wasm trap), "spin" makes
            // it loop forever; anything else is echoed.
            "trap" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                if data.windows(4).any(|w| w == b"trap") {
                    panic!("the test asked this guest to trap");
                }
                if data.windows(4).any(|w| w == b"spin") {
                    // Computes forever, never returning to the host.
                    let mut x = 0u64;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                conn.write_all(&data).await?;
            }
            // Each complete line to every other member, written from the
            // sender's callback (several senders' writes to one member race:
            // each `write_all` must still land whole).
            "broadcast" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                let lines = {
                    let mut partial = self.partial.borrow_mut();
                    let pending = partial.entry(conn.id()).or_default();
                    pending.extend_from_slice(&data);
                    match pending.iter().rposition(|&b| b == b'\n') {
                        Some(end) => pending.drain(..=end).collect::<Vec<u8>>(),
                        None => return Ok(()),
                    }
                };
                let others: Vec<Connection> =
                    self.kept.borrow().iter().filter(|(id, _)| **id != conn.id()).map(|(_, c)| c.clone()).collect();
                for other in others {
                    let _ = other.write_all(&lines).await;
                }
            }
            // Echo; on-close (below) tells the other kept connections.
            "close-log" => {
                let data = conn.read().await?;
                if data.is_empty() {
                    return conn.close();
                }
                conn.write_all(&data).await?;
            }
            // An honest length-prefixed protocol: a 4-byte big-endian length,
            // then that many bytes; answers `got N bytes`. It trusts the
            // length: only its own memory limit stands between a client's
            // claim and the host.
            "length-prefixed" => {
                let header = match conn.read_exact(4).await {
                    Ok(header) => header,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return conn.close(),
                    Err(e) => return Err(e),
                };
                let len = u32::from_be_bytes(header.try_into().unwrap());
                let body = match conn.read_exact(len).await {
                    Ok(body) => body,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return conn.close(),
                    Err(e) => return Err(e),
                };
                conn.write_all(format!("got {} bytes\n", body.len()).as_bytes()).await?;
            }
            // Streams 64 KiB chunks to the client until a write fails, then
            // says why on stderr (the host's log shows it).
            "stream-out" => {
                if conn.read().await?.is_empty() {
                    return conn.close();
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0usize;
                let err = loop {
                    match conn.write_all(&chunk).await {
                        Ok(()) => sent += chunk.len(),
                        Err(e) => break e,
                    }
                };
                eprintln!("stream-out: write failed after {sent} bytes: {err}");
            }
            other => return Err(Error::new(format!("unknown MODE {other}"))),
        }
        Ok(())
    }

    async fn on_error(&self, conn: &Connection, err: Error) {
        // Report the error to the client so the test can see what on_error got.
        let _ = conn.write_all(format!("on_error: {err}\n").as_bytes()).await;
        if mode() == "connect-error" {
            let _ = conn.close();
        }
    }

    async fn on_close(&self, conn: &Connection) {
        // Tell every other kept connection that this one closed: shows on-close
        // fires, and that kept handles work beyond their own callbacks.
        let closed = conn.id();
        let others: Vec<Connection> = {
            let mut kept = self.kept.borrow_mut();
            kept.remove(&closed);
            kept.values().cloned().collect()
        };
        for other in others {
            let _ = other.write_all(format!("closed {closed}\n").as_bytes()).await;
        }
    }
}

export_service!(Scenarios);
