//! What the export macros expand to: the generated `callbacks` and
//! `wasi:cli/run` traits, implemented by calling the [`Service`] (through
//! `crate::service`) with [`Connection`]s made from the host's handles.
//! Not part of the API.

use std::future::Future;
use std::marker::PhantomData;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};

use super::bindings::portcullis::socket::{tcp, types};
use super::bindings::service::exports::portcullis::socket::callbacks::{self, Delivery, Guest};
use super::tcp::Conn;
use super::{from_wit, to_wit};
use crate::service::{self, CallbackUse};
use crate::{Connection, Service};

pub use crate::program::report;

/// A [`Service`] as the generated `callbacks` export.
pub struct Exported<S>(PhantomData<S>);

/// The host's handle, lent for the length of one callback.
fn lent(handle: &tcp::Connection) -> Connection {
    // SAFETY: the host lends this handle for the whole callback, and the
    // `Connection` made of it lives only within that callback.
    Connection::from_sys(unsafe { Conn::borrowed(handle) })
}

fn callback_use(used: CallbackUse) -> callbacks::CallbackUse {
    match used {
        CallbackUse::Wanted => callbacks::CallbackUse::Wanted,
        CallbackUse::Unwanted => callbacks::CallbackUse::Unwanted,
    }
}

/// The service's `on_read_ready` (and `on_error` after a failure), then the
/// delivery's end: what it left unread goes back to the host.
async fn serve_ready<S: Service>(conn: Connection) {
    service::read_ready::<S>(&conn).await;
    conn.sys().end_delivery();
}

impl<S: Service> Guest for Exported<S> {
    async fn on_connect(conn: &tcp::Connection) -> Result<callbacks::CallbackUse, types::Error> {
        service::connected::<S>(&lent(conn)).await.map(callback_use).map_err(to_wit)
    }

    async fn on_read_ready(conn: &tcp::Connection, delivery: Delivery) {
        // SAFETY: as in `lent`.
        let conn = unsafe { Conn::borrowed(conn) }.with_delivery(delivery);
        serve_ready::<S>(Connection::from_sys(conn)).await
    }

    /// Serves every connection of the batch at once. Each handle is dropped as
    /// soon as its own callback (and `on_error` after a failure) is done: that
    /// is what tells the host it may deliver that connection again, so one
    /// connection waiting in `read` holds up no other.
    ///
    /// Each is first run until it waits (most, an echo say, finish there and
    /// then): only those still waiting go into the set that is polled
    /// together, which spares the others its bookkeeping.
    async fn on_read_ready_batch(ready: Vec<(tcp::Connection, Delivery)>) {
        let mut waiting = FuturesUnordered::new();
        for (handle, delivery) in ready {
            let conn = Connection::from_sys(Conn::owned(handle).with_delivery(delivery));
            let mut serving = Box::pin(serve_ready::<S>(conn));
            if std::future::poll_fn(|cx| Poll::Ready(serving.as_mut().poll(cx))).await.is_pending() {
                waiting.push(serving);
            }
        }
        while waiting.next().await.is_some() {}
    }

    async fn on_error(conn: &tcp::Connection, err: types::Error) {
        service::failed::<S>(&lent(conn), from_wit(err)).await
    }

    async fn on_close(conn: &tcp::Connection) -> callbacks::CallbackUse {
        callback_use(service::closed::<S>(&lent(conn)).await)
    }
}
