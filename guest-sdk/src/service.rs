//! The [`Service`] trait, and the calls a backend's export glue makes of it
//! for each callback (`sys::*::export`).

use std::any::Any;
use std::cell::{Cell, OnceCell};

use crate::{Connection, Error};

/// A socket service: the callbacks the host calls for each connection
/// (Ballerina's `onConnect`, `onReadReady`, `onError`, plus `on_close`).
///
/// `on_read_ready` says bytes (or end of stream) wait; the service reads them
/// with [`Connection::read`] on the `conn` it was given. The bytes already there
/// came along with the callback, so the first read usually costs no call to the
/// host; bytes it leaves unread are read first next time. At most one
/// `on_read_ready` runs per connection at a time; different connections run
/// concurrently, and one waiting in `read_exact` never holds up the others.
///
/// One value of the type (made with `Default` at the first callback) serves
/// every connection of its instance, so its fields are state shared by those
/// connections (use `Cell` / `RefCell`: callbacks interleave but never run in
/// parallel). How many connections that is, is the operator's choice: with
/// `--instances shared` (the default) all of the service's connections; with
/// `--instances per-worker` those of one worker thread; with `--instances
/// per-connection` one, so nothing is shared between clients.
/// After a trap the host starts a fresh instance, with a fresh value.
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

/// Whether the host should go on calling a callback that turned out to be the
/// service's default (which does nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallbackUse {
    Wanted,
    Unwanted,
}

fn callback_use(default_ran: &'static std::thread::LocalKey<Cell<bool>>) -> CallbackUse {
    if default_ran.get() { CallbackUse::Unwanted } else { CallbackUse::Wanted }
}

/// `on_connect`; whether the host should call it for later connections.
pub(crate) async fn connected<S: Service>(conn: &Connection) -> Result<CallbackUse, Error> {
    service::<S>().on_connect(conn).await?;
    Ok(callback_use(&DEFAULT_ON_CONNECT))
}

/// `on_read_ready`, then `on_error` if it failed.
pub(crate) async fn read_ready<S: Service>(conn: &Connection) {
    if let Err(err) = service::<S>().on_read_ready(conn).await {
        service::<S>().on_error(conn, err).await;
    }
}

/// `on_error` for an error the host reports.
pub(crate) async fn failed<S: Service>(conn: &Connection, err: Error) {
    service::<S>().on_error(conn, err).await
}

/// `on_close`; whether the host should call it for later connections.
pub(crate) async fn closed<S: Service>(conn: &Connection) -> CallbackUse {
    service::<S>().on_close(conn).await;
    callback_use(&DEFAULT_ON_CLOSE)
}
