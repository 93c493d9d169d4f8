//! A plain `std::net` echo server: no SDK and nothing portcullis-specific, a
//! program that runs the same on `wasmtime run -S inherit-network`.
//!
//! It listens where its first argument or `PORTCULLIS_LISTEN` says (the
//! address `portcullis run --listen` gives it), else on 127.0.0.1:7000, and
//! echoes every byte of each connection until the client ends it. A
//! `wasm32-wasip2` program has one thread, so it serves one connection at a
//! time, as the same program would natively.
//!
//! ```text
//! cargo build -p std-echo --target wasm32-wasip2 --profile guest
//! portcullis run target/wasm32-wasip2/guest/std_echo.wasm --listen 127.0.0.1:7000
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORTCULLIS_LISTEN").ok()?.split(',').next().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1:7000".to_string());
    let listener = TcpListener::bind(&address)?;
    println!("listening on {}", listener.local_addr()?);
    for client in listener.incoming() {
        match client {
            Ok(client) => {
                if let Err(err) = echo(client) {
                    eprintln!("connection ended: {err}");
                }
            }
            Err(err) => eprintln!("accept failed: {err}"),
        }
    }
    Ok(())
}

/// Writes back what `client` sends, until it ends its stream.
fn echo(mut client: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        client.write_all(&buf[..n])?;
    }
}
