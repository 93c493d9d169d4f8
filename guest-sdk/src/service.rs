//! The [`Service`] trait and the glue that exports it as WIT callbacks.

use std::any::Any;
use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::marker::PhantomData;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};

use crate::__bindings::portcullis::socket::{tcp, types};
use crate::__bindings::service::exports::portcullis::socket::callbacks::{CallbackUse, Delivery, Guest};
use crate::{Connection, Error};

/// A socket service: the callbacks the host calls for each connection
/// (Ballerina's `onConnect`, `onReadReady`, `onError`, plus `on_close`).
///
/// `on_read_ready` says bytes (or end of stream) wait; the service reads them
/// with [`Connection::read`] on the `conn` it was given. The bytes already there
/// came along with the callback, so the first read usually costs no call to the
/// host; bytes it leaves unread are read first next time. At most one
/// `on_read_ready` runs per connection at a time; different connections run
/// concurrently, and one waiting in `read_exact` never holds up the others. One
/// value of the type serves every connection, so its fields are shared state
/// (use `Cell` / `RefCell`: callbacks interleave but never run in parallel).
///
/// ```no_run
/// use std::cell::Cell;
/// use portcullis_sdk::{Connection, Error, Service, export_service};
///
/// #[derive(Default)]
/// struct JoinCounter {
///     joins: Cell<u32>,
/// }
///
/// impl Service for JoinCounter {
///     async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
///         self.joins.set(self.joins.get() + 1);
///         conn.write_all(format!("you are visitor {}\n", self.joins.get()).as_bytes()).await?;
///         Ok(())
///     }
///
///     async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
///         if conn.read().await?.is_empty() {
///             conn.close()?;
///         }
///         Ok(())
///     }
/// }
///
/// export_service!(JoinCounter);
/// ```
#[allow(async_fn_in_trait)] // callbacks run on the component's single thread
pub trait Service: Default + 'static {
    /// A connection was accepted (or a callback client connected). Returning an
    /// error sends it to `on_error`. The default does nothing, and a service
    /// that keeps it is not called here at all after the first connection (one
    /// async call fewer per connection).
    ///
    /// ```no_run
    /// # use portcullis_sdk::{Connection, Error};
    /// # async fn on_connect(conn: &Connection) -> Result<(), Error> {
    /// conn.write_all(b"welcome\n").await?;
    /// # Ok(()) }
    /// ```
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        let _ = conn;
        DEFAULT_ON_CONNECT.set(true);
        Ok(())
    }

    /// Bytes or end of stream wait on `conn`; read them. Returning without
    /// reading is allowed: the host then waits for more bytes before calling again.
    ///
    /// ```no_run
    /// # use portcullis_sdk::{Connection, Error};
    /// # async fn on_read_ready(conn: &Connection) -> Result<(), Error> {
    /// let data = conn.read().await?;
    /// if data.is_empty() {
    ///     return conn.close(); // the peer ended the stream
    /// }
    /// conn.write_all(&data).await?;
    /// # Ok(()) }
    /// ```
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error>;

    /// `on_connect` or `on_read_ready` returned `err`. By default it is printed
    /// to stderr through [`crate::warn`] (at most a line a second: a client
    /// resetting connections in a loop must not flood the log).
    ///
    /// ```no_run
    /// # use portcullis_sdk::{Connection, Error};
    /// # async fn on_error(conn: &Connection, err: Error) {
    /// let _ = conn.write_all(format!("error: {err}\n").as_bytes()).await;
    /// # }
    /// ```
    async fn on_error(&self, conn: &Connection, err: Error) {
        crate::program::warn(&format!("connection {}: {err}", conn.id()));
    }

    /// The connection ended (end of stream, close, reset or stop); called
    /// exactly once per connection. As with `on_connect`, keeping the default
    /// (nothing) spares the call.
    ///
    /// ```no_run
    /// # use portcullis_sdk::Connection;
    /// # async fn on_close(conn: &Connection) {
    /// println!("connection {} closed", conn.id());
    /// # }
    /// ```
    async fn on_close(&self, conn: &Connection) {
        let _ = conn;
        DEFAULT_ON_CLOSE.set(true);
    }
}

thread_local! {
    /// Set by the default `on_connect` (which does nothing), so that the host
    /// can be told not to call it again. A service type either keeps the default
    /// or not, so once set it stays true, whatever callbacks interleave.
    static DEFAULT_ON_CONNECT: Cell<bool> = const { Cell::new(false) };
    /// The same for `on_close`.
    static DEFAULT_ON_CLOSE: Cell<bool> = const { Cell::new(false) };

    /// The one service value; leaked so callbacks can hold `&'static` to it
    /// across awaits.
    static SERVICE: OnceCell<&'static dyn Any> = const { OnceCell::new() };
}

fn service<S: Service>() -> &'static S {
    let any = SERVICE.with(|cell| *cell.get_or_init(|| Box::leak(Box::new(S::default()))));
    any.downcast_ref::<S>().expect("export_service! is used once per component")
}

/// `Unwanted` once the service's callback turned out to be the default.
fn callback_use(default_ran: &'static std::thread::LocalKey<Cell<bool>>) -> CallbackUse {
    if default_ran.get() { CallbackUse::Unwanted } else { CallbackUse::Wanted }
}

/// Adapts a [`Service`] to the generated export trait. Used by `export_service!`.
#[doc(hidden)]
pub struct Dispatch<S>(PhantomData<S>);

impl<S: Service> Dispatch<S> {
    pub async fn connect(conn: &tcp::Connection) -> Result<CallbackUse, types::Error> {
        // SAFETY: the host lends this handle for the whole callback.
        let conn = unsafe { Connection::borrowed(conn.handle()) };
        service::<S>().on_connect(&conn).await.map_err(types::Error::from)?;
        Ok(callback_use(&DEFAULT_ON_CONNECT))
    }

    pub async fn read_ready(conn: &tcp::Connection, delivery: Delivery) {
        // SAFETY: as above.
        let conn = unsafe { Connection::borrowed(conn.handle()) }.with_delivery(delivery);
        Self::serve_ready(&conn).await
    }

    /// The service's `on_read_ready` (and `on_error` after a failure), then
    /// whatever it left unread of the delivered bytes back to the host.
    async fn serve_ready(conn: &Connection) {
        if let Err(err) = service::<S>().on_read_ready(conn).await {
            service::<S>().on_error(conn, err).await;
        }
        conn.give_back();
    }

    /// Serves every connection of the batch at once. Each handle is dropped as
    /// soon as its own callback (and `on_error` after a failure) is done: that
    /// is what tells the host it may deliver that connection again, so one
    /// connection waiting in `read` holds up no other.
    ///
    /// Each is first run until it waits (most, an echo say, finish there and
    /// then): only those still waiting go into the set that is polled
    /// together, which spares the others its bookkeeping.
    pub async fn read_ready_batch(ready: Vec<(tcp::Connection, Delivery)>) {
        let mut waiting = FuturesUnordered::new();
        for (handle, delivery) in ready {
            let mut serving =
                Box::pin(async move { Self::serve_ready(&Connection::owned(handle).with_delivery(delivery)).await });
            if std::future::poll_fn(|cx| Poll::Ready(serving.as_mut().poll(cx))).await.is_pending() {
                waiting.push(serving);
            }
        }
        while waiting.next().await.is_some() {}
    }

    pub async fn error(conn: &tcp::Connection, err: types::Error) {
        // SAFETY: as above.
        let conn = unsafe { Connection::borrowed(conn.handle()) };
        service::<S>().on_error(&conn, err.into()).await
    }

    pub async fn close(conn: &tcp::Connection) -> CallbackUse {
        // SAFETY: as above.
        let conn = unsafe { Connection::borrowed(conn.handle()) };
        service::<S>().on_close(&conn).await;
        callback_use(&DEFAULT_ON_CLOSE)
    }
}

impl<S: Service> Guest for Dispatch<S> {
    async fn on_connect(conn: &tcp::Connection) -> Result<CallbackUse, types::Error> {
        Self::connect(conn).await
    }

    async fn on_read_ready(conn: &tcp::Connection, delivery: Delivery) {
        Self::read_ready(conn, delivery).await
    }

    async fn on_read_ready_batch(ready: Vec<(tcp::Connection, Delivery)>) {
        Self::read_ready_batch(ready).await
    }

    async fn on_error(conn: &tcp::Connection, err: types::Error) {
        Self::error(conn, err).await
    }

    async fn on_close(conn: &tcp::Connection) -> CallbackUse {
        Self::close(conn).await
    }
}
