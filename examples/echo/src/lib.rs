//! Echo: every byte a client sends comes back; the connection closes when the
//! client ends its stream. The seed service of portcullis.

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
