//! The operator's admin server: `/healthz` (the process serves), `/readyz`
//! (every watch has listed its objects and, when the webhook runs, it has a
//! serving certificate: the webhook Service selects ready replicas only)
//! and `/metrics` (OpenMetrics text).
//! Plain HTTP/1.1 for the kubelet's probes and Prometheus. The caller binds
//! the listener, so tests use port 0.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::serving::ServingCert;

/// What the admin server reports.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once the caches are synced.
    pub ready: AtomicBool,
    /// The webhook's certificate, when readiness waits for it.
    serving: Option<Arc<ServingCert>>,
    /// Set on shutdown: no longer ready, whatever else holds.
    draining: AtomicBool,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            ready: AtomicBool::new(false),
            serving: None,
            draining: AtomicBool::new(false),
        }
    }

    /// Shutting down: `/readyz` fails from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready only once `serving` holds a certificate, too.
    pub fn requiring_serving_cert(mut self, serving: Arc<ServingCert>) -> Self {
        self.serving = Some(serving);
        self
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.metrics.caches_synced.set(1);
    }

    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") if self.draining.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
            (&Method::GET, "/readyz") if !self.ready.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
            }
            (&Method::GET, "/readyz") if self.serving.as_ref().is_some_and(|s| !s.is_loaded()) => {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no webhook serving certificate yet\n",
                )
            }
            (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/metrics") => {
                let mut response = text(StatusCode::OK, self.metrics.encode());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            (_, "/healthz" | "/readyz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// Serves until `stop`.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.route(&req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}
