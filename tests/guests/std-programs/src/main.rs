//! Plain `std::net` programs, as a user would write them for any WASI
//! runtime, for `tests/standard_programs.rs`.
//!
//! `MODE=client`: connects to `TARGET` (`host:port`), sends `hello`, prints
//! `reply: ...`; exits 1 with the error if anything fails.
//!
//! `MODE=panic`: panics at once, before it listens (a crash loop).
//!
//! Otherwise a server on `PORTCULLIS_LISTEN`, one connection at a time. Each
//! read is a request: `sleep MS` sleeps (`std::thread::sleep`) and answers
//! `slept`; `spin` computes forever; `grow MIB` allocates and touches that
//! much memory and answers `grew`; `sockets N` opens N connections to its
//! own listener and answers `held N`; `exit N` exits with status N;
//! anything else is echoed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    if std::env::var("MODE").as_deref() == Ok("client") {
        let target = std::env::var("TARGET").expect("TARGET");
        match client(&target) {
            Ok(reply) => println!("reply: {reply}"),
            Err(err) => {
                println!("error: {err}");
                std::process::exit(1);
            }
        }
        return;
    }
    if std::env::var("MODE").as_deref() == Ok("panic") {
        panic!("a program that panics before it listens");
    }
    let address = std::env::var("PORTCULLIS_LISTEN").expect("PORTCULLIS_LISTEN");
    let listener = TcpListener::bind(address.split(',').next().unwrap()).expect("bind");
    let local = listener.local_addr().unwrap();
    println!("listening on {local}");
    for client in listener.incoming() {
        match client {
            Ok(client) => {
                let _ = serve(client, local);
            }
            Err(err) => eprintln!("accept failed: {err}"),
        }
    }
}

fn client(target: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(target)?;
    stream.write_all(b"hello")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

fn serve(mut client: TcpStream, local: SocketAddr) -> std::io::Result<()> {
    let mut held = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let request = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        let mut words = request.split_whitespace();
        let answer = match (words.next(), words.next().and_then(|w| w.parse::<u64>().ok())) {
            (Some("sleep"), Some(ms)) => {
                std::thread::sleep(Duration::from_millis(ms));
                "slept\n".to_string()
            }
            (Some("spin"), _) => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                }
            }
            (Some("exit"), Some(code)) => std::process::exit(code as i32),
            (Some("grow"), Some(mib)) => {
                let block = vec![1u8; (mib as usize) << 20];
                std::hint::black_box(&block);
                "grew\n".to_string()
            }
            (Some("sockets"), Some(count)) => {
                for _ in 0..count {
                    match TcpStream::connect(local) {
                        Ok(stream) => held.push(stream),
                        Err(err) => {
                            return client.write_all(format!("failed after {}: {err}\n", held.len()).as_bytes());
                        }
                    }
                }
                format!("held {}\n", held.len())
            }
            _ => {
                client.write_all(&buf[..n])?;
                continue;
            }
        };
        client.write_all(answer.as_bytes())?;
    }
}
