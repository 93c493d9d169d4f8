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

/// The native HTTP baseline for `http-hello`: hyper's HTTP/1.1 server with
/// the same answers (`GET /`: `Hello, world!`; else 404), keep-alive, on the
/// same runtime flavour. Prints `http ADDR`.
pub fn serve_http() -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Request, Response, StatusCode};

    async fn hello(request: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let (status, body): (StatusCode, &'static [u8]) =
            if request.method() == Method::GET && request.uri().path() == "/" {
                (StatusCode::OK, b"Hello, world!\n")
            } else {
                (StatusCode::NOT_FOUND, b"Not found\n")
            };
        let mut response = Response::new(Full::new(Bytes::from_static(body)));
        *response.status_mut() = status;
        response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
        Ok(response)
    }

    serve_each_connection("http", |stream| async move {
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ =
            hyper::server::conn::http1::Builder::new().serve_connection(io, hyper::service::service_fn(hello)).await;
    })
}

/// The native proxy baseline for `tcp-proxy`: every accepted connection
/// piped both ways to `upstream` (tokio's `copy_bidirectional`). Prints
/// `tcp ADDR`.
pub fn serve_proxy(upstream: std::net::SocketAddr) -> anyhow::Result<()> {
    serve_each_connection("tcp", move |mut client| async move {
        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
        let _ = server.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    })
}

/// A loopback listener on the `portcullis` binary's runtime flavour that
/// prints `KIND ADDR` and serves each accepted connection (no delay) in a
/// task of its own.
fn serve_each_connection<F, Fut>(kind: &str, serve: F) -> anyhow::Result<()>
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{kind} {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(serve(stream));
        }
    })
}
