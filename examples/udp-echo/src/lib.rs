//! UDP echo: a program that binds `PORT` (env, default 9000) on all interfaces
//! and sends every datagram back to its sender, whole, until it is stopped.
//!
//! A peer cannot end it: a datagram that cannot be sent back (its sender is
//! unreachable, say) is logged and skipped, and datagrams from senders the
//! operator did not grant never reach it (the host drops and logs them).
//! Every datagram received can be sent back: the host's largest datagram is
//! the same both ways (65,507 bytes over IPv4, 65,527 over IPv6).

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
                if let Err(e) = udp.send_to(&datagram, sender).await {
                    // At most a line a second, however many fail.
                    portcullis_sdk::warn(&format!(
                        "udp-echo: cannot send {} bytes back to {sender}: {e}",
                        datagram.len()
                    ));
                }
            }
            // Quiet for the whole read time-out: keep waiting.
            Err(e) if e.is_timeout() => continue,
            // The socket itself failed: nothing more will come.
            Err(e) => return Err(e),
        }
    }
}

export_program!(main);
