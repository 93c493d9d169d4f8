//! A program that declares its own listener (Ballerina's `new socket:Listener`):
//! it listens on 127.0.0.1 (port 0), prints `guest listening on ADDR`, echoes, and
//! stops the listener when its first connection closes, which ends the program.
//! A second listener on the same port must fail as Ballerina's does.

use std::cell::RefCell;

use portcullis_sdk::{Connection, Error, Listener, Service, export_program};

thread_local! {
    static LISTENER: RefCell<Option<Listener>> = const { RefCell::new(None) };
}

async fn main() -> Result<(), Error> {
    let listener = Listener::new(0).interface("127.0.0.1");
    listener.start().await?;
    let addr = listener.local_addr()?;
    println!("guest listening on {addr}");
    match Listener::new(addr.port()).interface("127.0.0.1").start().await {
        Ok(()) => println!("second listener started"),
        Err(e) => println!("second listener: {e}"),
    }
    LISTENER.with(|l| *l.borrow_mut() = Some(listener));
    Ok(())
}

#[derive(Default)]
struct EchoOnce;

impl Service for EchoOnce {
    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if data.is_empty() {
            return conn.close();
        }
        conn.write_all(&data).await.map(drop)
    }

    async fn on_close(&self, _conn: &Connection) {
        LISTENER.with(|l| {
            if let Some(listener) = l.borrow_mut().take() {
                let _ = listener.graceful_stop();
            }
        });
    }
}

export_program!(main, callbacks = EchoOnce);
