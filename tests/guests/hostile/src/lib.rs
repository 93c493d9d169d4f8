//! A hostile guest, written only against the public SDK: each `MODE` (env)
//! tries to exhaust or escape one bound of the sandbox, and reports what it
//! got to the client where a test needs to see it. `tests/containment.rs`
//! drives every mode.
//!
//! - `hoard`: every message keeps another 64 MiB (touched) in module state.
//! - `alloc`: each connection allocates `ALLOC_MIB` MiB (touched) and answers `ok`.
//! - `spin`: computes forever; `spin-write`: `write_all(b"")` forever;
//!   `spin-read0`: `read_exact(0)` forever (each fails at once).
//! - `sleep`: `std::thread::sleep` for an hour.
//! - `udp-flood`, `connect-flood`: bind UDP sockets, or connect to `TARGET`,
//!   until refused; answer `opened N: <error>`.
//! - `big-writes`: `COUNT` concurrent `write_all`s of `WRITE_MIB` MiB each to
//!   a client that (in the test) never reads.
//! - `print-flood`: prints 8 MiB to stdout (which, in the test, nobody
//!   reads), then answers `printed`.
//! - `residue`: reports any earlier tenant's secret found anywhere in its
//!   linear memory, then leaves its own there (for instances per connection).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use portcullis_sdk::{Client, Connection, Error, Service, UdpClient, export_service};

#[derive(Default)]
struct Hostile {
    hoard: RefCell<Vec<Vec<u8>>>,
    sockets: RefCell<Vec<UdpClient>>,
    clients: RefCell<Vec<Connection>>,
}

fn env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

fn env_number(key: &str, default: usize) -> usize {
    env(key, "").parse().unwrap_or(default)
}

/// `mib` MiB, every page written, so it is resident rather than reserved.
fn touched(mib: usize) -> Vec<u8> {
    vec![0xA5; mib << 20]
}

impl Service for Hostile {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        if env("MODE", "") == "alloc" {
            let held = touched(env_number("ALLOC_MIB", 200));
            conn.write_all(b"ok\n").await?;
            // Held for as long as the connection lives (the instance is its own).
            self.hoard.borrow_mut().push(held);
        }
        Ok(())
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if data.is_empty() {
            return conn.close();
        }
        match env("MODE", "").as_str() {
            "hoard" => {
                self.hoard.borrow_mut().push(touched(64));
                let held = self.hoard.borrow().len() * 64;
                conn.write_all(format!("held {held} MiB\n").as_bytes()).await?;
            }
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "spin-write" => loop {
                conn.write_all(b"").await?;
            },
            "spin-read0" => loop {
                let _ = conn.read_exact(0).await;
            },
            "sleep" => std::thread::sleep(Duration::from_secs(3600)),
            "print-flood" => {
                let line = "x".repeat(1023);
                for _ in 0..8 * 1024 {
                    println!("{line}");
                }
                conn.write_all(b"printed\n").await?;
            }
            "udp-flood" => {
                let error = loop {
                    match UdpClient::bind(None).await {
                        Ok(socket) => self.sockets.borrow_mut().push(socket),
                        Err(e) => break e,
                    }
                };
                let n = self.sockets.borrow().len();
                conn.write_all(format!("opened {n}: {}\n", error.message()).as_bytes()).await?;
            }
            "connect-flood" => {
                let target = env("TARGET", "127.0.0.1:9");
                let (host, port) = target.rsplit_once(':').unwrap();
                let port: u16 = port.parse().unwrap();
                let error = loop {
                    match Client::connect(host, port).await {
                        Ok(client) => self.clients.borrow_mut().push(client),
                        Err(e) => break e,
                    }
                };
                let n = self.clients.borrow().len();
                conn.write_all(format!("opened {n}: {}\n", error.message()).as_bytes()).await?;
            }
            "big-writes" => {
                let data = Rc::new(touched(env_number("WRITE_MIB", 100)));
                let writes = (0..env_number("COUNT", 10)).map(|_| {
                    let data = data.clone();
                    async move { conn.write_all(&data).await }
                });
                for result in futures_join_all(writes).await {
                    result?;
                }
            }
            "residue" => {
                let own = String::from_utf8_lossy(&data).trim().to_string();
                let found = earlier_secrets(&own);
                conn.write_all(format!("found [{}]\n", found.join(",")).as_bytes()).await?;
                // Leave the secret behind: in module state, and on the heap, never freed.
                let mut spill = Vec::with_capacity(1 << 20);
                while spill.len() + own.len() < 1 << 20 {
                    spill.extend_from_slice(own.as_bytes());
                }
                std::mem::forget(spill);
                self.hoard.borrow_mut().push(own.into_bytes());
            }
            _ => conn.write_all(&data).await?,
        }
        Ok(())
    }
}

/// Every `SECRET-<digits>.` in linear memory other than `own`.
fn earlier_secrets(own: &str) -> Vec<String> {
    let size = core::arch::wasm32::memory_size(0) * 65536;
    let byte = |at: usize| -> u8 {
        // SAFETY: every address below memory_size is readable in wasm; the
        // bytes may be anything, which is what is being looked at.
        unsafe { std::ptr::read_volatile(at as *const u8) }
    };
    let marker: Vec<u8> = [83u8, 69, 67, 82, 69, 84, 45].to_vec(); // "SECRET-", built so no copy sits in data
    let mut found = Vec::new();
    let mut at = 1; // address 0 is never data
    while at + marker.len() < size {
        if (0..marker.len()).all(|i| byte(at + i) == marker[i]) {
            let mut end = at + marker.len();
            while end < size && byte(end).is_ascii_digit() {
                end += 1;
            }
            if end > at + marker.len() && end < size && byte(end) == b'.' {
                let secret: String = (at..=end).map(|i| byte(i) as char).collect();
                if secret != own && !found.contains(&secret) {
                    found.push(secret);
                }
            }
            at = end;
        } else {
            at += 1;
        }
    }
    found
}

/// Runs futures concurrently and collects their outputs (no futures crate).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut pending: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, future) in pending.iter_mut().enumerate() {
            if done[i].is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => done[i] = Some(out),
                    Poll::Pending => all = false,
                }
            }
        }
        if all { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

export_service!(Hostile);
