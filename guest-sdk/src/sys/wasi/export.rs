//! What the export macros expand to under the WASI backend: `wasi:cli/run`,
//! which for a service binds `PORTCULLIS_LISTEN` and serves every connection
//! itself, and for a program runs `main`. The per-connection dispatch is
//! here: the one file of this backend that looks up, to the [`Service`].
//! Not part of the API.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;

use portcullis_protocol::delivery::{Mark, Readiness};
use portcullis_protocol::environment::ServiceEnv;

use super::tcp::{self, Conn};
use super::{Live, generic};
use crate::error::Error;
use crate::service;
use crate::{Connection, Service};

pub use crate::program::report;

/// A service's `run`: listens where `PORTCULLIS_LISTEN` says and serves until
/// every listener has ended (the runtime stops it sooner).
pub async fn serve<S: Service>() -> Result<(), ()> {
    report(listen_and_serve::<S>().await)
}

async fn listen_and_serve<S: Service>() -> Result<(), Error> {
    tcp::set_callbacks(dispatch::<S>);
    let told = apply_limits()?;
    if told.listen.is_empty() {
        return Err(generic(ServiceEnv::no_listen_error()));
    }
    for addr in told.listen {
        let local = tcp::listen_at(addr, told.read_timeout)?;
        crate::program::print_stdout(&format!("listening on {local}"));
    }
    Live::all_ended().await;
    Ok(())
}

/// What the runtime told (`PORTCULLIS_*`; portcullis sets them from its
/// flags), with the connection limits in force: any not set keeps its
/// default ([`ServiceEnv::default`]).
fn apply_limits() -> Result<ServiceEnv, Error> {
    let told = ServiceEnv::from_vars(|var| std::env::var(var).ok()).map_err(generic)?;
    let cap = |n: Option<u64>| n.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    tcp::set_limits(tcp::Limits {
        max_accepted: cap(told.max_connections),
        per_ip: cap(told.max_connections_per_ip),
        idle: told.idle_timeout,
        write: told.write_timeout,
    });
    super::set_turn_every(told.callback_cpu);
    Ok(told)
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
        Ok(_) => main.await,
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
    let mut seen = Mark::default();
    loop {
        match conn.next_delivery(seen).await {
            Readiness::Deliver(now) => seen = now,
            Readiness::Closed => break,
        }
        super::take_turns().await;
        service::read_ready::<S>(&handle).await;
        if conn.failed() || conn.is_closed() {
            break;
        }
    }
    let _ = conn.close();
    service::closed::<S>(&handle).await;
}
