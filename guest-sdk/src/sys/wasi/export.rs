//! What the export macros expand to under the WASI backend: `wasi:cli/run`,
//! which for a service binds `PORTCULLIS_LISTEN` and serves every connection
//! itself, and for a program runs `main`. The per-connection dispatch is
//! here: the one file of this backend that looks up, to the [`Service`].
//! Not part of the API.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use super::tcp::{self, Conn, Next};
use super::{Live, generic};
use crate::error::Error;
use crate::service;
use crate::{Connection, Service};

pub use crate::program::report;

/// The environment variable that says where a WASI-backend service listens:
/// `ADDR:PORT[,ADDR:PORT...]` (`portcullis run --listen` sets it).
pub const LISTEN_VAR: &str = "PORTCULLIS_LISTEN";

/// The read time-out of accepted connections, in milliseconds (default
/// 300,000; `portcullis run --read-timeout-ms` sets it).
pub const READ_TIMEOUT_VAR: &str = "PORTCULLIS_READ_TIMEOUT_MS";

/// The most accepted connections open at once (`portcullis run
/// --max-connections` sets it; default: no cap).
pub const MAX_CONNECTIONS_VAR: &str = "PORTCULLIS_MAX_CONNECTIONS";
/// The most from one client address, an IPv4 address or an IPv6 /64
/// (`--max-connections-per-ip`; default: no cap).
pub const MAX_CONNECTIONS_PER_IP_VAR: &str = "PORTCULLIS_MAX_CONNECTIONS_PER_IP";
/// Close an accepted connection idle this long, in ms; 0: never
/// (`--idle-timeout-ms`; default 300000).
pub const IDLE_TIMEOUT_VAR: &str = "PORTCULLIS_IDLE_TIMEOUT_MS";
/// Fail a write that sent nothing for this long, in ms; 0: never
/// (`--write-timeout-ms`; default 300000).
pub const WRITE_TIMEOUT_VAR: &str = "PORTCULLIS_WRITE_TIMEOUT_MS";

/// A service's `run`: listens where [`LISTEN_VAR`] says and serves until
/// every listener has ended (the runtime stops it sooner).
pub async fn serve<S: Service>() -> Result<(), ()> {
    report(listen_and_serve::<S>().await)
}

async fn listen_and_serve<S: Service>() -> Result<(), Error> {
    tcp::set_callbacks(dispatch::<S>);
    let addrs = listen_addresses(std::env::var(LISTEN_VAR).ok().as_deref())?;
    let read_timeout = match std::env::var(READ_TIMEOUT_VAR) {
        Ok(ms) => Duration::from_millis(
            ms.trim()
                .parse::<u64>()
                .map_err(|_| generic(format!("{READ_TIMEOUT_VAR}: `{ms}` is not a number of milliseconds")))?,
        ),
        Err(_) => crate::DEFAULT_READ_TIMEOUT,
    };
    apply_limits()?;
    for addr in addrs {
        let local = tcp::listen_at(addr, read_timeout)?;
        crate::program::print_stdout(&format!("listening on {local}"));
    }
    Live::all_ended().await;
    Ok(())
}

/// The connection limits the runtime sets (portcullis from its flags): any
/// not set keeps [`tcp::Limits::DEFAULT`].
fn apply_limits() -> Result<(), Error> {
    let number = |var: &str| -> Result<Option<u64>, Error> {
        match std::env::var(var) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| generic(format!("{var}: `{text}` is not a whole number"))),
            Err(_) => Ok(None),
        }
    };
    let timeout = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let mut limits = tcp::Limits::DEFAULT;
    if let Some(n) = number(MAX_CONNECTIONS_VAR)? {
        limits.max_accepted = (n as usize).max(1);
    }
    if let Some(n) = number(MAX_CONNECTIONS_PER_IP_VAR)? {
        limits.per_ip = (n as usize).max(1);
    }
    if let Some(ms) = number(IDLE_TIMEOUT_VAR)? {
        limits.idle = timeout(ms);
    }
    if let Some(ms) = number(WRITE_TIMEOUT_VAR)? {
        limits.write = timeout(ms);
    }
    tcp::set_limits(limits);
    Ok(())
}

/// `PORTCULLIS_LISTEN`'s addresses.
fn listen_addresses(value: Option<&str>) -> Result<Vec<SocketAddr>, Error> {
    let value = value.map(str::trim).filter(|v| !v.is_empty()).ok_or_else(|| {
        generic(format!(
            "{LISTEN_VAR} is not set: set it to ADDR:PORT[,ADDR:PORT...] (portcullis run --listen sets it)"
        ))
    })?;
    value
        .split(',')
        .map(|part| {
            part.trim().parse::<SocketAddr>().map_err(|_| {
                generic(format!("{LISTEN_VAR}: `{}` is not ADDR:PORT (e.g. 127.0.0.1:7000 or [::1]:7000)", part.trim()))
            })
        })
        .collect()
}

/// A program's `run`: `main`, then its callback connections and listeners
/// until they are done. With `callbacks`, the service they go to.
pub async fn run_program<E: Display>(
    main: impl Future<Output = Result<(), E>>,
    callbacks: Option<Callbacks>,
) -> Result<(), ()> {
    if let Some(Callbacks(serve)) = callbacks {
        tcp::set_callbacks(serve);
    }
    let result = match apply_limits() {
        Ok(()) => main.await,
        Err(e) => return report(Err(e)),
    };
    Live::all_ended().await;
    report(result)
}

/// The service a program's callback clients and listeners go to.
pub struct Callbacks(tcp::ServeFn);

/// Service `S`'s dispatch, for [`run_program`].
pub fn callbacks<S: Service>() -> Callbacks {
    Callbacks(dispatch::<S>)
}

fn dispatch<S: Service>(conn: Conn) -> Pin<Box<dyn Future<Output = ()>>> {
    Box::pin(serve_connection::<S>(conn))
}

/// One connection's life, by the delivery rules (the portcullis WIT,
/// interface `callbacks`): `on_connect`; `on_read_ready` whenever something
/// new waits (never two at once, never spinning); `on_error` after a failed
/// callback; `on_close` exactly once.
async fn serve_connection<S: Service>(conn: Conn) {
    let handle = Connection::from_sys(conn.clone());
    if let Err(err) = service::connected::<S>(&handle).await {
        service::failed::<S>(&handle, err).await;
    }
    let mut seen = Default::default();
    loop {
        match conn.next_delivery(seen).await {
            Next::Deliver => {}
            Next::End => break,
        }
        seen = conn.seen();
        super::take_turns().await;
        service::read_ready::<S>(&handle).await;
        if conn.failed() || conn.is_closed() {
            break;
        }
    }
    let _ = conn.close();
    service::closed::<S>(&handle).await;
}
