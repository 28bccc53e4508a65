//! The admin server: `/live`, `/ready`, `/metrics`, `/config` and
//! `/shutdown`. Plain HTTP/1.1 for the kubelet and Prometheus; `/shutdown`
//! is accepted only from loopback, so only containers of the pod can stop
//! the proxy (a Job's last step).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::unix_seconds;
use crate::state::{Loaded, State};

pub struct Admin {
    pub state: Arc<State>,
    /// Cancelled by `POST /shutdown`: starts the same drain as SIGTERM.
    pub shutdown: CancellationToken,
}

/// Serves until `stop`; the admin server outlives the drain so `/ready`
/// reports it.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
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
                async move { Ok::<_, Infallible>(admin.route(&req, peer)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

impl Admin {
    fn route(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") if self.state.is_ready() => text(StatusCode::OK, "ready\n"),
            (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            (&Method::GET, "/metrics") => {
                let mut resp = text(StatusCode::OK, self.state.metrics.encode());
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            (&Method::GET, "/config") => self.config(),
            (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
                tracing::info!("shutdown requested through the admin server");
                self.shutdown.cancel();
                text(StatusCode::OK, "shutting down\n")
            }
            (&Method::POST, "/shutdown") => text(
                StatusCode::FORBIDDEN,
                "shutdown is accepted from loopback only\n",
            ),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn config(&self) -> Response<Full<Bytes>> {
        let routes = self.state.routes.load();
        let identity = self.state.identity.load();
        let body = json!({
            "ready": self.state.is_ready(),
            "routes": routes.as_deref().map(|l| describe(l, json!({}))),
            "identity": identity.as_deref().map(|l| describe(l, json!({
                "spiffeId": l.value.id.as_str(),
                "notAfter": l.value.not_after,
            }))),
        });
        let mut resp = text(StatusCode::OK, format!("{body:#}\n"));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

fn describe<T>(loaded: &Loaded<T>, mut extra: serde_json::Value) -> serde_json::Value {
    let common = json!({
        "generation": loaded.generation,
        "digest": loaded.digest,
        "source": loaded.source,
        "loadedAt": unix_seconds(loaded.loaded_at),
    });
    if let (Some(key), Some(extra)) = (loaded.key, extra.as_object_mut()) {
        extra.insert("key".into(), key.into());
    }
    if let (Some(extra), Some(common)) = (extra.as_object_mut(), common.as_object()) {
        extra.extend(common.clone());
    }
    extra
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}
