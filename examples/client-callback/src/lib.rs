//! Client with a callback service (Ballerina's `callbackService`): `main`
//! connects to `TARGET` (host:port), writes `MESSAGE`, and returns; the
//! callback's `on_read_ready` prints what comes back and closes. The program
//! ends when that connection has closed.
//!
//! A server that never answers holds the program until the host's idle
//! time-out closes the connection; one that never reads, until the write
//! time-out fails the write.

use portcullis_sdk::{Client, ClientConfig, Connection, Error, Service, export_program};

async fn main() -> Result<(), String> {
    let target = std::env::var("TARGET").map_err(|_| "set TARGET=host:port")?;
    let message = std::env::var("MESSAGE").unwrap_or_else(|_| "Hello Ballerina".into());
    let (host, port) = target.rsplit_once(':').ok_or("TARGET must be host:port")?;
    let port = port.parse().map_err(|_| format!("bad port in TARGET={target}"))?;
    let conn = Client::connect_with(ClientConfig::new(host, port).callback(true)).await.map_err(|e| e.to_string())?;
    conn.write_all(message.as_bytes()).await.map_err(|e| e.to_string())?;
    Ok(())
}

#[derive(Default)]
struct PrintReply;

impl Service for PrintReply {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if !data.is_empty() {
            println!("received: {}", String::from_utf8_lossy(&data));
        }
        conn.close()
    }
}

export_program!(main, callbacks = PrintReply);
