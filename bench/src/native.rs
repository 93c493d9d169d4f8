//! The native baseline: plain tokio echo servers with the same semantics as the
//! `echo` and `udp-echo` examples (echo what is there, close at end of stream;
//! send every datagram back to its sender), on the same runtime flavour as the
//! `portcullis` binary. Run as `portcullis-bench native-server` in its own
//! process, pinned like portcullis.

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

pub fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        println!("tcp {}", tcp.local_addr()?);
        println!("udp {}", udp.local_addr()?);
        std::io::stdout().flush()?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                let _ = udp.send_to(&buf[..n], from).await;
            }
        });
        loop {
            let (mut stream, _) = tcp.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                // Reserved, not zeroed: an idle connection touches none of it,
                // as a memory-conscious server would do it.
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
                    buf.clear();
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if stream.write_all(&buf).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}
