//! The client side of the conformance scenarios, as a `program`: `MODE` picks
//! the scenario, `TARGET` (host:port) the server. Results go to stdout, one line
//! each, for the test to compare.

use portcullis_sdk::{Client, Error, export_program};

async fn main() -> Result<(), String> {
    let mode = std::env::var("MODE").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_else(|_| "127.0.0.1:1".into());
    let (host, port) = target.rsplit_once(':').ok_or("TARGET is host:port")?;
    let port: u16 = port.parse().map_err(|_| "TARGET port")?;
    if let Err(e) = scenario(&mode, host, port).await {
        println!("error: {:?}: {e}", e.kind());
    }
    if mode == "fail" {
        return Err("main failed on purpose".into());
    }
    Ok(())
}

export_program!(main);

async fn scenario(mode: &str, host: &str, port: u16) -> Result<(), Error> {
    match mode {
        // Ballerina "client one-way write".
        "one-way" => {
            let conn = Client::connect(host, port).await?;
            let message = b"Hello Ballerina";
            conn.write_all(message).await?;
            println!("wrote {}", message.len());
            conn.close()?;
        }
        // Ballerina "shutdownWrite": the second write fails.
        "shutdown-write" => {
            let conn = Client::connect(host, port).await?;
            conn.write_all(b"Hello Ballerina1").await?;
            conn.shutdown_write()?;
            match conn.write_all(b"Hello Ballerina2").await {
                Ok(()) => println!("second write wrote 16"),
                Err(e) => println!("second write: {e}"),
            }
            conn.close()?;
        }
        // Ballerina "client echo".
        "echo" => {
            let conn = Client::connect(host, port).await?;
            conn.write_all(b"Hello Ballerina Echo").await?;
            let data = conn.read().await?;
            println!("read: {}", String::from_utf8_lossy(&data));
            conn.close()?;
        }
        // Ballerina "invalid read length".
        "invalid-read" => {
            let conn = Client::connect(host, port).await?;
            let err = conn.read_exact(0).await.expect_err("read(0) must fail");
            println!("read(0): {err}");
            conn.close()?;
        }
        // Ballerina "connection refused" (TARGET is a closed port).
        "connect" => {
            let conn = Client::connect(host, port).await?;
            println!("connected to {}", conn.remote_addr());
        }
        // The guest tries to bypass the host with std::net: WASI has no network.
        "std-net" => match std::net::TcpStream::connect((host, port)) {
            Ok(_) => println!("std::net connected"),
            Err(e) => println!("std::net refused: {e}"),
        },
        // A look-up flood: COUNT connects at once to names under TARGET's
        // (`nI.HOST`), then five more one after another; it prints how the
        // last ended.
        "lookups" => {
            let count: usize = std::env::var("COUNT").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
            for i in 0..count {
                let name = format!("n{i}.{host}");
                portcullis_sdk::spawn(async move {
                    let _ = Client::connect(&name, port).await;
                });
            }
            for _ in 0..5 {
                match Client::connect(host, port).await {
                    Ok(_) => println!("last: connected"),
                    Err(e) => println!("last: {e}"),
                }
            }
        }
        other => println!("unknown MODE {other}"),
    }
    Ok(())
}
