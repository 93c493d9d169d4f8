//! A plain `std::net` client: connects to `TARGET` (a `host:port`, by name or
//! address; default `localhost:7000`), sends `MESSAGE` (default `hello`),
//! prints what comes back, and exits 0 (1 if anything failed).
//!
//! Under portcullis it reaches only what a grant allows: the name itself is
//! looked up only if a grant names it.
//!
//! ```text
//! portcullis run target/wasm32-wasip2/guest/std_client.wasm \
//!     --env TARGET=localhost:7000 --allow-connect tcp://localhost:7000
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "localhost:7000".to_string());
    let message = std::env::var("MESSAGE").unwrap_or_else(|_| "hello".to_string());
    match exchange(&target, message.as_bytes()) {
        Ok(reply) => println!("reply: {}", String::from_utf8_lossy(&reply)),
        Err(err) => {
            eprintln!("{target}: {err}");
            std::process::exit(1);
        }
    }
}

/// Sends `message`, ends the writing side, and reads the reply to its end.
fn exchange(target: &str, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(target)?;
    stream.write_all(message)?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
}
