//! The admin endpoint (`--admin ADDR`, a manifest's `[admin]`): what an
//! operator's tools ask a running portcullis.
//!
//! - `GET /metrics`: every counter of `metrics`, in the Prometheus text
//!   format (OpenMetrics 1.0).
//! - `GET /healthz`: 200 while the process serves (a liveness probe).
//! - `GET /readyz`: 200 once every listener is bound and every service that
//!   runs on a standing instance has one; 503 with what is missing, and
//!   503 once a stop has begun (a readiness probe: take it out of rotation).
//!
//! It runs on the main thread's runtime, apart from the workers, so a busy
//! service does not slow a scrape. It is bounded as any listener facing a
//! network: at most [`MAX_CONNECTIONS`] at once, [`MAX_PER_ADDRESS`] from
//! one address (more are closed at once),
//! a request's head within [`HEAD_TIMEOUT`] and at most [`MAX_HEAD`] bytes,
//! a connection at most [`MAX_LIFE`]. Anyone who can reach the address can
//! read the metrics: bind it to loopback or a private network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, ServiceMetrics};
use crate::net::admission::PerAddress;

/// Admin connections open at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 32;
/// Admin connections open at once from one client address (as
/// `--max-connections-per-ip` counts one: an IPv6 /64 is one), so that one
/// client holding many cannot keep a probe from another out.
pub const MAX_PER_ADDRESS: usize = 8;
/// How long a client may take to send a request's head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read.
pub const MAX_HEAD: usize = 16 * 1024;
/// How long one admin connection may stay open, keep-alive included.
pub const MAX_LIFE: Duration = Duration::from_secs(60);

/// What the endpoint reports on.
pub struct Admin {
    metrics: Arc<Metrics>,
    /// The services whose readiness needs a standing instance.
    standing: Vec<(String, Arc<ServiceMetrics>)>,
    /// Cancelled when a stop begins.
    stopping: CancellationToken,
}

impl Admin {
    /// The endpoint for `metrics`; `standing` names the services that serve
    /// from a standing instance (shared, per-worker, WASI) and so are ready
    /// only while one lives; `stopping` is the process's stop.
    pub fn new(
        metrics: Arc<Metrics>,
        standing: Vec<(String, Arc<ServiceMetrics>)>,
        stopping: CancellationToken,
    ) -> Arc<Admin> {
        Arc::new(Admin { metrics, standing, stopping })
    }

    /// The answer to one request.
    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.metrics.encode());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.not_ready() {
                None => text(StatusCode::OK, "ready\n".into()),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
            },
            _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n".into()),
        }
    }

    /// Why the process is not ready, if it is not.
    fn not_ready(&self) -> Option<String> {
        if self.stopping.is_cancelled() {
            return Some("stopping".into());
        }
        let down: Vec<&str> = self
            .standing
            .iter()
            .filter(|(_, metrics)| metrics.instances_live.get() <= 0)
            .map(|(name, _)| name.as_str())
            .collect();
        (!down.is_empty()).then(|| format!("no live instance of {}", down.join(", ")))
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Binds the admin endpoint at `addr` (before anything serves: a bad
/// address stops the start-up).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    crate::net::listener::bind_std(addr, false)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("admin endpoint: listen on {addr}"))
}

/// Answers on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: std::net::TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("admin endpoint: taking over its listener")?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = PerAddress::new(NonZeroUsize::new(MAX_PER_ADDRESS).expect("a cap of at least 1"));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("admin endpoint: accept failed: {e}");
                    tokio::time::sleep(crate::net::listener::ACCEPT_RETRY).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // at the cap: closed at once
        };
        let Some(from) = per_address.take(peer.ip()) else {
            continue; // that address holds its share: closed at once
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |request| {
                let response = admin.answer(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), answer);
            let _ = tokio::time::timeout(MAX_LIFE, connection).await;
            drop((slot, from));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_while_each_standing_service_has_an_instance_and_no_stop_began() {
        let metrics = Metrics::new();
        let (echo, kv) = (metrics.service("echo"), metrics.service("kv"));
        let stopping = CancellationToken::new();
        let admin =
            Admin::new(metrics, vec![("echo".into(), echo.clone()), ("kv".into(), kv.clone())], stopping.clone());
        let _echo_instance = echo.instance_made();
        assert_eq!(admin.not_ready().as_deref(), Some("no live instance of kv"));
        let kv_instance = kv.instance_made();
        assert_eq!(admin.not_ready(), None);
        drop(kv_instance); // it trapped: down until its fresh instance
        assert_eq!(admin.not_ready().as_deref(), Some("no live instance of kv"));
        let _fresh = kv.instance_made();
        stopping.cancel();
        assert_eq!(admin.not_ready().as_deref(), Some("stopping"));
    }
}
