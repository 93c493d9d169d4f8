//! Echo: every byte a client sends comes back; the connection closes when the
//! client ends its stream. The seed service of portcullis.
//!
//! A misbehaving client meets the host's bounds, nothing of the guest's: one
//! that sends but never reads makes its echo wait (back-pressure) until the
//! host's write time-out fails it and closes the connection; a silent one is
//! closed after the idle time-out.

use portcullis_sdk::{Connection, Error, Service, export_service};

#[derive(Default)]
struct Echo;

impl Service for Echo {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if data.is_empty() {
            return conn.close();
        }
        conn.write_all(&data).await?;
        Ok(())
    }
}

export_service!(Echo);
