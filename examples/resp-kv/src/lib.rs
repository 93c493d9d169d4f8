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
//! runs them against the [`store`]; this file keeps each client's decoder
//! and output and what they hold.
//!
//! Bounds, so that no client can grow the instance to its `--max-memory`
//! (a trap would take every key with it). What a client meets past each:
//! - a request: [`resp::MAX_BULK_LEN`] per bulk string, [`resp::MAX_ARGS`]
//!   arguments, [`resp::MAX_INLINE`] per inline line, [`resp::MAX_REQUEST`]
//!   in all. Past one, or on a malformed frame: `-ERR Protocol error: ...`,
//!   then that connection is closed (others go on).
//! - a reply: [`commands::MAX_REPLY`] bytes (an `MGET` past it gets an
//!   error); replies are encoded whole as the command runs, then sent once
//!   [`FLUSH_AT`] bytes wait, so a client that pipelines and never reads
//!   waits (back-pressure) holding one such buffer, not a growing queue.
//! - what all clients hold together (their unfinished requests and unsent
//!   replies): `maxmemory-clients` (env `MAXMEMORY_CLIENTS`, bytes, default
//!   [`DEFAULT_MAXMEMORY_CLIENTS`]); past it the client holding the most is
//!   disconnected (Redis's `maxmemory-clients` policy), logged.
//! - clients: [`MAX_CLIENTS`] at once; a further one gets Redis's `-ERR max
//!   number of clients reached` and is closed.
//! - the key space: `maxmemory` bytes (env `MAXMEMORY`, bytes, default
//!   [`store::DEFAULT_MAXMEMORY`]); a write past it gets Redis's `-OOM ...`.

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

/// The default of `maxmemory-clients`: what all clients' buffers may hold.
pub const DEFAULT_MAXMEMORY_CLIENTS: usize = 24 * 1024 * 1024;
/// The most clients at once (with the budgets above, what the instance
/// holds stays well inside its default 128 MiB, each connection's 64 KiB of
/// read-ahead included).
pub const MAX_CLIENTS: usize = 512;
/// Replies are sent once this many bytes wait (and at the end of each read).
pub const FLUSH_AT: usize = 64 * 1024;
/// What the host holds of a write the client has not taken yet (its copy
/// of up to 64 KiB, and then some), counted for a client waiting to write.
const HOST_WRITE_COPY: usize = 68 * 1024;
/// Keys expired actively before each command, at most.
const EXPIRE_PER_COMMAND: usize = 16;

struct KeyValue {
    store: RefCell<Store>,
    clients: RefCell<HashMap<u64, Rc<Client>>>,
    /// Bytes all clients hold (their `held`, summed).
    clients_hold: Cell<usize>,
    maxmemory_clients: usize,
}

/// One connection's state.
struct Client {
    /// A handle of its own, to close it when it is evicted.
    conn: Connection,
    decoder: RefCell<Decoder>,
    /// What its decoder and unsent replies hold, as last counted.
    held: Cell<usize>,
    /// Disconnected for holding the most past `maxmemory-clients`.
    evicted: Cell<bool>,
}

/// A byte count from the environment, or `default` (with a warning when
/// the variable is set but not a number).
fn bytes_from_env(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            portcullis_sdk::warn(&format!("resp-kv: {name}={text} is not a byte count; using {default}"));
            default
        }),
        Err(_) => default,
    }
}

impl Default for KeyValue {
    fn default() -> Self {
        KeyValue {
            store: RefCell::new(Store::new(bytes_from_env("MAXMEMORY", DEFAULT_MAXMEMORY))),
            clients: RefCell::default(),
            clients_hold: Cell::new(0),
            maxmemory_clients: bytes_from_env("MAXMEMORY_CLIENTS", DEFAULT_MAXMEMORY_CLIENTS),
        }
    }
}

impl KeyValue {
    fn run(&self, args: &[&[u8]], conn: &Connection, now: &Clock) -> Outcome {
        let mut store = self.store.borrow_mut();
        store.expire_due(now, EXPIRE_PER_COMMAND);
        let mut cx = Context { store: &mut store, now, connection_id: conn.id() };
        execute(args, &mut cx)
    }

    /// Counts what `client` holds now (its decoder, and `out` waiting to be
    /// sent). Past `maxmemory-clients`, disconnects the clients holding the
    /// most until the rest fit; whether `client` is still connected.
    fn charge(&self, client: &Client, out: &Vec<u8>) -> bool {
        if client.evicted.get() {
            return false;
        }
        // What is allocated (not just used), and the host's copy of a write
        // the client has not taken yet.
        let writing = if out.is_empty() { 0 } else { HOST_WRITE_COPY };
        let held = client.decoder.borrow().allocated() + out.capacity() + writing;
        let mut total = self.clients_hold.get() - client.held.get() + held;
        client.held.set(held);
        while total > self.maxmemory_clients {
            let clients = self.clients.borrow();
            let Some(biggest) = clients.values().filter(|c| !c.evicted.get()).max_by_key(|c| c.held.get()) else {
                break;
            };
            portcullis_sdk::warn(&format!(
                "resp-kv: clients hold {total} bytes, past maxmemory-clients {}: disconnecting connection {}, \
                 which holds {}",
                self.maxmemory_clients,
                biggest.conn.id(),
                biggest.held.get()
            ));
            total -= biggest.held.replace(0);
            biggest.evicted.set(true);
            let _ = biggest.conn.close();
        }
        self.clients_hold.set(total);
        !client.evicted.get()
    }

    /// Sends what `out` holds, counting it as held while it waits for the
    /// client to read.
    async fn flush(&self, client: &Client, out: &mut Vec<u8>) -> Result<(), Error> {
        if out.is_empty() {
            return Ok(());
        }
        if !self.charge(client, out) {
            return Err(Error::new("disconnected: past maxmemory-clients"));
        }
        client.conn.write_all(out).await?;
        out.clear();
        if out.capacity() > 2 * FLUSH_AT {
            *out = Vec::new(); // a big reply's buffer is not kept for small ones
        }
        Ok(())
    }

    /// Answers a request that cannot be read with Redis's `Protocol error`
    /// and closes the connection (only this one).
    async fn refuse(&self, client: &Client, out: &mut Vec<u8>, what: &str) -> Result<(), Error> {
        let conn = &client.conn;
        portcullis_sdk::warn(&format!("resp-kv: connection {}: protocol error: {what}; closing it", conn.id()));
        Reply::error(format!("ERR Protocol error: {what}")).encode(out);
        let _ = self.flush(client, out).await;
        conn.close()
    }
}

impl Service for KeyValue {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        if self.clients.borrow().len() >= MAX_CLIENTS {
            portcullis_sdk::warn(&format!("resp-kv: {MAX_CLIENTS} clients already; closing connection {}", conn.id()));
            let _ = conn.write_all(b"-ERR max number of clients reached\r\n").await;
            return conn.close();
        }
        let client =
            Client { conn: conn.clone(), decoder: RefCell::default(), held: Cell::new(0), evicted: Cell::new(false) };
        self.clients.borrow_mut().insert(conn.id(), Rc::new(client));
        Ok(())
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        let client = self.clients.borrow().get(&conn.id()).cloned();
        let Some(client) = client.filter(|c| !c.evicted.get()) else {
            return conn.close(); // refused at on_connect, or evicted
        };
        if data.is_empty() {
            return conn.close();
        }
        client.decoder.borrow_mut().feed(&data);
        drop(data);
        let mut out = Vec::new();
        let clock = Clock::default();
        loop {
            // The command runs while its arguments are borrowed from the
            // decoder, and its reply is encoded whole before anything waits:
            // no value of the store is kept alive by a reply in flight.
            let outcome = match client.decoder.borrow_mut().next_request() {
                Ok(Some(args)) => self.run(&args, conn, &clock),
                Ok(None) => break,
                Err(ProtocolError(what)) => Outcome::Refuse(what),
            };
            match outcome {
                Outcome::Reply(reply) => reply.encode(&mut out),
                Outcome::ReplyAndClose(reply) => {
                    reply.encode(&mut out);
                    self.flush(&client, &mut out).await?;
                    return conn.close();
                }
                Outcome::Refuse(what) => return self.refuse(&client, &mut out, &what).await,
            }
            if out.len() >= FLUSH_AT {
                self.flush(&client, &mut out).await?;
                clock.forget(); // it may have waited for the client
            }
        }
        self.flush(&client, &mut out).await?;
        client.decoder.borrow_mut().release();
        if !self.charge(&client, &Vec::new()) {
            return conn.close();
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection) {
        if let Some(client) = self.clients.borrow_mut().remove(&conn.id()) {
            self.clients_hold.set(self.clients_hold.get() - client.held.get());
        }
    }
}

export_service!(KeyValue);
