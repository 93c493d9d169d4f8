//! The UDP scenarios, as a program: `MODE` picks one, `TARGET` (host:port) is
//! the peer. Results go to stdout, one line each.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use portcullis_sdk::{Error, UdpClient, UdpConfig, export_program};

async fn main() -> Result<(), String> {
    let mode = std::env::var("MODE").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_else(|_| "127.0.0.1:9".into());
    let (host, port) = target.rsplit_once(':').ok_or("TARGET is host:port")?;
    let port: u16 = port.parse().map_err(|_| "TARGET port")?;
    if let Err(e) = scenario(&mode, host, port).await {
        println!("error: {:?}: {e}", e.kind());
    }
    Ok(())
}

fn show(result: Result<usize, Error>) -> String {
    match result {
        Ok(n) => format!("ok {n}"),
        Err(e) => format!("{:?}: {e}", e.kind()),
    }
}

async fn scenario(mode: &str, host: &str, port: u16) -> Result<(), Error> {
    match mode {
        // Ballerina "UDP echo".
        "echo" => {
            let udp = UdpClient::bind(None).await?;
            udp.send_to(b"Hello Ballerina echo", (host, port)).await?;
            let (data, from) = udp.recv_from().await?;
            println!("received: {} from port {}", String::from_utf8_lossy(&data), from.port());
        }
        // Ballerina "UDP receive on a bound port": bind, say where, receive one.
        "receive" => {
            let udp = UdpClient::bind_with(UdpConfig::local("127.0.0.1", 0)).await?;
            println!("bound {}", udp.local_addr()?);
            let (data, _) = udp.recv_from().await?;
            println!("received: {}", String::from_utf8_lossy(&data));
        }
        // Receives while a peer nobody granted sends: the host drops its
        // datagrams, so each receive waits out its (short) read time-out.
        "stranger" => {
            let config = UdpConfig::local("127.0.0.1", 0).read_timeout(Duration::from_millis(700));
            let udp = UdpClient::bind_with(config).await?;
            println!("bound {}", udp.local_addr()?);
            for i in 1..=2 {
                match udp.recv_from().await {
                    Ok((data, from)) => println!("{i}: got {} bytes from {from}", data.len()),
                    Err(e) => println!("{i}: {:?}: {e}", e.kind()),
                }
            }
        }
        // One send to TARGET (the only peer granted), then two the grants
        // refuse: an IP literal (checked by the plain call, which can send at
        // once now that the socket is known to be writable) and a name on
        // another port (checked by the async call, before any lookup).
        "denied" => {
            let udp = UdpClient::bind_with(UdpConfig::local("127.0.0.1", 0)).await?;
            println!("granted: {}", show(udp.send_to(b"ping", (host, port)).await));
            println!("literal: {}", show(udp.send_to(b"x", ("127.0.0.2", port)).await));
            println!("name: {}", show(udp.send_to(b"x", ("localhost", port ^ 1)).await));
        }
        "timeout" => {
            let udp = UdpClient::bind_with(UdpConfig::ephemeral().read_timeout(Duration::from_millis(300))).await?;
            let err = udp.recv_from().await.expect_err("nobody sends");
            println!("receive: {:?}: {err}", err.kind());
        }
        "errors" => {
            let udp = UdpClient::bind(None).await?;
            println!("length 0: {}", show(udp.recv_from_max(0).await.map(|(d, _)| d.len())));
            println!("too large: {}", show(udp.send_to(&vec![7; 65_508], (host, port)).await));
            println!("largest: {}", show(udp.send_to(&vec![7; 65_507], (host, port)).await));
            println!("bad host: {}", show(udp.send_to(b"x", ("no such host!", port)).await));
            udp.close()?;
            println!("send after close: {}", show(udp.send_to(b"x", (host, port)).await));
            println!("receive after close: {}", show(udp.recv_from().await.map(|(d, _)| d.len())));
        }
        // Two clients of one instance at once: one waits in receive while the
        // other sends to it.
        "pair" => {
            let a = UdpClient::bind_with(UdpConfig::local("127.0.0.1", 0)).await?;
            let b = UdpClient::bind_with(UdpConfig::local("127.0.0.1", 0)).await?;
            let a_addr = a.local_addr()?;
            let b_addr = b.local_addr()?;
            let (received, sent) = join(a.recv_from(), b.send_to(b"from b", a_addr)).await;
            let (data, from) = received?;
            sent?;
            println!("a got: {} from b: {}", String::from_utf8_lossy(&data), from == b_addr);
        }
        other => println!("unknown MODE {other}"),
    }
    Ok(())
}

/// Polls two futures until both are done (a guest has no executor crate here).
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    std::future::poll_fn(move |cx| {
        if out_a.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            out_a = Some(v);
        }
        if out_b.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            out_b = Some(v);
        }
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready((out_a.take().unwrap(), out_b.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

export_program!(main);
