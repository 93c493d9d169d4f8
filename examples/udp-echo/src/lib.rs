//! UDP echo: a program that binds `PORT` (env, default 9000) on all interfaces
//! and sends every datagram back to its sender, whole, until it is stopped.

use portcullis_sdk::{Error, UdpClient, UdpConfig, export_program};

async fn main() -> Result<(), Error> {
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse().map_err(|_| Error::new(format!("PORT={port} is not a port number")))?,
        Err(_) => 9000,
    };
    let udp = UdpClient::bind_with(UdpConfig::port(port)).await?;
    println!("udp-echo on {}", udp.local_addr()?);
    loop {
        match udp.recv_from().await {
            Ok((datagram, sender)) => {
                udp.send_to(&datagram, sender).await?;
            }
            // Quiet for the whole read time-out: keep waiting.
            Err(e) if e.is_timeout() => continue,
            Err(e) => return Err(e),
        }
    }
}

export_program!(main);
