//! Keeps the SDK's default `on_connect` (so the host is told it need not call
//! it) but has an `on_close` of its own, which must still run for every
//! connection. Each message is answered with how many connections closed so far.

use std::cell::Cell;

use portcullis_sdk::{Connection, Error, Service, export_service};

#[derive(Default)]
struct CloseCounter {
    closed: Cell<u32>,
}

impl Service for CloseCounter {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        if conn.read().await?.is_empty() {
            return conn.close();
        }
        conn.write_all(format!("closed {}\n", self.closed.get()).as_bytes()).await.map(drop)
    }

    async fn on_close(&self, _conn: &Connection) {
        self.closed.set(self.closed.get() + 1);
    }
}

export_service!(CloseCounter);
