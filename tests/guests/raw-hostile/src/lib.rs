//! A hostile guest on the raw WIT calls, for what the SDK would not do:
//! `tests/containment.rs` drives each `MODE` (env).
//!
//! - `async-write-empty`: the async `write` of nothing, forever (each
//!   completes at once).
//! - `exit`: `std::process::exit(3)` in a callback.
//! - `log-inject`: connects to a host name with a line break and a forged
//!   log line in it; answers the error it got.
//! - `long-interface`: 20 listeners whose interface is a 16 MiB string, kept;
//!   answers what starting the last one said.
//! - `pending-reads`: 100,000 concurrent `read`s on its connection; answers
//!   how many the host refused at once.
//! - `fill-loop`: bulk `memory.fill` over 64 MiB, forever.
//! - `udp-big`: a UDP `send-to` of a 64 MiB list; answers the error.
//! - `clone-flood`: `clone-handle` 200,000 times, keeping every handle.

use std::cell::RefCell;

use portcullis_sdk::__bindings::portcullis::socket::{tcp, types, udp};
use portcullis_sdk::__bindings::service::exports::portcullis::socket::callbacks::{CallbackUse, Delivery, Guest};

thread_local! {
    static LISTENERS: RefCell<Vec<tcp::Listener>> = const { RefCell::new(Vec::new()) };
}

fn mode() -> String {
    std::env::var("MODE").unwrap_or_default()
}

/// Answers the client: a plain write of what fits (the tests' answers are short).
fn say(conn: &tcp::Connection, text: &str) {
    let _ = conn.try_write(text.as_bytes());
}

async fn attack(conn: &tcp::Connection) {
    match mode().as_str() {
        "async-write-empty" => loop {
            let _ = conn.write(Vec::new()).await;
        },
        "exit" => std::process::exit(3),
        "log-inject" => {
            let host = "x.example\n2026-12-01T00:00:00Z ERROR portcullis::dispatch: FORGED component=neighbour";
            let config = types::ClientConfig {
                host: host.into(),
                port: 1,
                read_timeout_ms: 1000,
                connect_timeout_ms: 1000,
                callback: false,
                tls: false,
            };
            let error = tcp::Connection::connect(config).await.err().map(|e| e.message).unwrap_or_default();
            say(conn, &format!("{error}\n"));
        }
        "long-interface" => {
            let long = "a".repeat(16 << 20);
            for _ in 0..20 {
                let config = types::ListenerConfig { interface: Some(long.clone()), read_timeout_ms: 1000 };
                LISTENERS.with_borrow_mut(|kept| kept.push(tcp::Listener::new(0, &config)));
            }
            drop(long);
            let last = LISTENERS.with_borrow_mut(|kept| kept.pop().unwrap());
            let error = last.start().await.err().map(|e| e.message).unwrap_or_default();
            say(conn, &format!("{error}\n"));
        }
        "pending-reads" => {
            let mut reads: Vec<_> = (0..100_000).map(|_| Box::pin(conn.read(None))).collect();
            let refused = refused_at_once(&mut reads).await;
            say(conn, &format!("refused {refused}\n"));
        }
        "fill-loop" => {
            let mut buffer = vec![0u8; 64 << 20];
            let mut round = 0u8;
            loop {
                round = round.wrapping_add(1);
                // SAFETY: writes within the buffer's length; compiles to memory.fill.
                unsafe { std::ptr::write_bytes(buffer.as_mut_ptr(), round, buffer.len()) };
                std::hint::black_box(&mut buffer);
            }
        }
        "udp-big" => {
            let config = udp::UdpClientConfig { read_timeout_ms: 1000 };
            let error = match udp::UdpClient::bind(None, config).await {
                Ok(client) => {
                    let data = vec![7u8; 64 << 20];
                    let target = types::Address { host: Some("127.0.0.1".into()), port: 9 };
                    client.send_to(data, target).await.err().map(|e| e.message).unwrap_or_default()
                }
                Err(e) => e.message,
            };
            say(conn, &format!("{error}\n"));
        }
        "clone-flood" => {
            for _ in 0..200_000 {
                std::mem::forget(conn.clone_handle());
            }
            say(conn, "cloned 200000\n");
        }
        _ => say(conn, "unknown mode\n"),
    }
}

/// Polls every read once: how many completed at once with an error (the rest
/// were pending, each held by the host, until `reads` is dropped).
async fn refused_at_once<F: Future<Output = Result<Vec<u8>, types::Error>> + Unpin>(reads: &mut [F]) -> usize {
    std::future::poll_fn(|cx| {
        let refused = reads
            .iter_mut()
            .map(|read| std::pin::Pin::new(read).poll(cx))
            .filter(|poll| matches!(poll, std::task::Poll::Ready(Err(_))))
            .count();
        std::task::Poll::Ready(refused)
    })
    .await
}

struct RawHostile;

impl Guest for RawHostile {
    async fn on_connect(_conn: &tcp::Connection) -> Result<CallbackUse, types::Error> {
        Ok(CallbackUse::Unwanted)
    }

    async fn on_read_ready(conn: &tcp::Connection, delivery: Delivery) {
        if delivery.data.is_empty() && delivery.end {
            let _ = conn.close();
            return;
        }
        attack(conn).await;
    }

    async fn on_read_ready_batch(ready: Vec<(tcp::Connection, Delivery)>) {
        for (conn, delivery) in ready {
            if delivery.data.is_empty() && delivery.end {
                let _ = conn.close();
            } else {
                attack(&conn).await;
            }
        }
    }

    async fn on_error(_conn: &tcp::Connection, _err: types::Error) {}

    async fn on_close(_conn: &tcp::Connection) -> CallbackUse {
        CallbackUse::Unwanted
    }
}

portcullis_sdk::__bindings::service::__export_service!(RawHostile with_types_in portcullis_sdk::__bindings::service);
