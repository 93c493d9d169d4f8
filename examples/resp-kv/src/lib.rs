//! resp-kv: an in-memory key-value service speaking RESP2, the protocol of
//! Redis, so that `redis-cli`, `redis-benchmark` and Redis client libraries
//! talk to it. One key space for every connection of the instance (run it
//! with the default `--instances shared`).
//!
//! Commands: `PING`, `ECHO`, `SET` (`EX`, `PX`, `NX`, `XX`, `GET`,
//! `KEEPTTL`), `GET`, `DEL`, `EXISTS`, `INCR`, `DECR`, `INCRBY`, `DECRBY`,
//! `MGET`, `MSET`, `EXPIRE`, `PEXPIRE`, `TTL`, `PTTL`, `DBSIZE`,
//! `FLUSHALL`, `COMMAND`, `HELLO` (RESP2 only), `SELECT 0`, `CLIENT
//! SETNAME|SETINFO|GETNAME|ID`, `CONFIG GET`, `QUIT`; pipelined and inline.
//!
//! The layers: [`resp`] decodes requests and encodes replies, [`commands`]
//! runs them against the [`store`]; this file keeps each connection's
//! decoder and writes its replies.
//!
//! Bounds (what a client meets past each):
//! - a request: [`resp::MAX_BULK_LEN`] per bulk string, [`resp::MAX_ARGS`]
//!   arguments, [`resp::MAX_INLINE`] per inline line, [`resp::MAX_REQUEST`]
//!   in all. Past one, or on a malformed frame: `-ERR Protocol error: ...`,
//!   then that connection is closed (others go on).
//! - unfinished requests of all connections together: [`MAX_INPUT_TOTAL`];
//!   the connection whose bytes pass it is closed the same way.
//! - the key space: `maxmemory` bytes (env `MAXMEMORY`, bytes, default
//!   [`store::DEFAULT_MAXMEMORY`]); a write past it gets Redis's `-OOM ...`.
//! - replies are written as they are made, [`FLUSH_AT`] bytes at a time, so
//!   a client that pipelines and never reads holds one such buffer (and
//!   waits, back-pressure) rather than an ever-growing queue.

pub mod commands;
pub mod resp;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use portcullis_sdk::{Connection, Error, Service, export_service};

use crate::commands::{Context, Outcome, execute};
use crate::resp::{Decoder, ProtocolError, Reply};
use crate::store::{Clock, DEFAULT_MAXMEMORY, Store};

/// The most bytes unfinished requests may hold across all connections.
pub const MAX_INPUT_TOTAL: usize = 16 * 1024 * 1024;
/// Replies are sent once this many bytes wait (and at the end of each read).
pub const FLUSH_AT: usize = 64 * 1024;
/// Keys expired actively before each command, at most.
const EXPIRE_PER_COMMAND: usize = 16;

struct KeyValue {
    store: RefCell<Store>,
    maxmemory: usize,
    connections: RefCell<HashMap<u64, Rc<RefCell<ConnectionState>>>>,
    /// Bytes of unfinished requests, all connections.
    input_total: Cell<usize>,
}

#[derive(Default)]
struct ConnectionState {
    decoder: Decoder,
    /// What this connection adds to `input_total`.
    counted: usize,
}

impl Default for KeyValue {
    fn default() -> Self {
        let maxmemory = match std::env::var("MAXMEMORY") {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                portcullis_sdk::warn(&format!("resp-kv: MAXMEMORY={text} is not a byte count; using the default"));
                DEFAULT_MAXMEMORY
            }),
            Err(_) => DEFAULT_MAXMEMORY,
        };
        KeyValue {
            store: RefCell::new(Store::new(maxmemory)),
            maxmemory,
            connections: RefCell::default(),
            input_total: Cell::new(0),
        }
    }
}

impl KeyValue {
    fn state(&self, conn: &Connection) -> Rc<RefCell<ConnectionState>> {
        self.connections.borrow_mut().entry(conn.id()).or_default().clone()
    }

    /// Re-counts what the connection's unfinished request holds; whether
    /// all connections together are still within [`MAX_INPUT_TOTAL`].
    fn account(&self, state: &mut ConnectionState) -> bool {
        let held = state.decoder.held();
        let total = self.input_total.get() - state.counted + held;
        self.input_total.set(total);
        state.counted = held;
        total <= MAX_INPUT_TOTAL
    }

    fn run(&self, args: &[&[u8]], conn: &Connection, now: &Clock) -> Outcome {
        let mut store = self.store.borrow_mut();
        store.expire_due(now, EXPIRE_PER_COMMAND);
        let mut cx = Context { store: &mut store, now, connection_id: conn.id(), maxmemory: self.maxmemory };
        execute(args, &mut cx)
    }
}

impl Service for KeyValue {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if data.is_empty() {
            return conn.close();
        }
        let state = self.state(conn);
        state.borrow_mut().decoder.feed(&data);
        let mut out = Vec::new();
        let clock = Clock::default();
        loop {
            // The command runs while its arguments are borrowed from the
            // decoder; the borrow ends before its reply is sent.
            let outcome = match state.borrow_mut().decoder.next_request() {
                Ok(Some(args)) => self.run(&args, conn, &clock),
                Ok(None) => break,
                Err(ProtocolError(what)) => Outcome::Refuse(what),
            };
            match outcome {
                Outcome::Reply(reply) => {
                    if send(conn, &mut out, reply).await? {
                        clock.forget(); // it waited for the client
                    }
                }
                Outcome::ReplyAndClose(reply) => {
                    send(conn, &mut out, reply).await?;
                    flush(conn, &mut out).await?;
                    return conn.close();
                }
                Outcome::Refuse(what) => return refuse(conn, &mut out, &what).await,
            }
        }
        flush(conn, &mut out).await?;
        if !self.account(&mut state.borrow_mut()) {
            let what = format!("unfinished requests of all clients past {MAX_INPUT_TOTAL} bytes");
            return refuse(conn, &mut out, &what).await;
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection) {
        if let Some(state) = self.connections.borrow_mut().remove(&conn.id()) {
            let counted = state.borrow().counted;
            self.input_total.set(self.input_total.get() - counted);
        }
    }
}

/// Adds `reply` to `out`, sending whenever [`FLUSH_AT`] bytes wait. An
/// array's elements (`MGET`'s values, shared with the store) are encoded
/// one by one, and a large value is written from the store's copy, so a
/// reply never needs a buffer of its whole size.
/// Whether it sent (and so may have waited).
async fn send(conn: &Connection, out: &mut Vec<u8>, reply: Reply) -> Result<bool, Error> {
    let items = match reply {
        Reply::Array(items) => {
            Reply::array_header(items.len(), out);
            items
        }
        Reply::Bulk(value) if value.len() >= FLUSH_AT => vec![Reply::Bulk(value)],
        small => {
            small.encode(out);
            if out.len() < FLUSH_AT {
                return Ok(false);
            }
            flush(conn, out).await?;
            return Ok(true);
        }
    };
    let mut sent = false;
    for item in items {
        match item {
            Reply::Bulk(value) if value.len() >= FLUSH_AT => {
                Reply::bulk_header(value.len(), out);
                flush(conn, out).await?;
                conn.write_all(&value).await?;
                out.extend_from_slice(b"\r\n");
                sent = true;
            }
            item => item.encode(out),
        }
        if out.len() >= FLUSH_AT {
            flush(conn, out).await?;
            sent = true;
        }
    }
    Ok(sent)
}

async fn flush(conn: &Connection, out: &mut Vec<u8>) -> Result<(), Error> {
    if !out.is_empty() {
        conn.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Answers a request that cannot be read with Redis's `Protocol error` and
/// closes the connection (only this one).
async fn refuse(conn: &Connection, out: &mut Vec<u8>, what: &str) -> Result<(), Error> {
    portcullis_sdk::warn(&format!("resp-kv: connection {}: protocol error: {what}; closing it", conn.id()));
    Reply::error(format!("ERR Protocol error: {what}")).encode(out);
    let _ = flush(conn, out).await;
    conn.close()
}

export_service!(KeyValue);
