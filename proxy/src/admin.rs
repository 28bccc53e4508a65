//! The admin server: `/live`, `/ready`, `/metrics`, `/config` and
//! `/shutdown`. Plain HTTP/1.1 for the kubelet and Prometheus; `/shutdown`
//! is accepted only from loopback, so only containers of the pod can stop
//! the proxy (a Job's last step).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::unix_seconds;
use crate::state::{Loaded, State};

/// How long a connection may take to send a request head, counted from
/// its opening and again after each response: the admin port is open to
/// the whole cluster (the kubelet probes it), so a client that connects and
/// sends nothing, or trickles bytes, must not hold a connection and its
/// file descriptor for ever. The kubelet and Prometheus send at once.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::*;

    async fn started() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = Arc::new(Admin {
            state: State::new(),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(serve(admin, listener, CancellationToken::new()));
        addr
    }

    /// Reads until the server closes; what it sent.
    async fn until_closed(conn: &mut TcpStream) -> String {
        let mut out = Vec::new();
        conn.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_request_head_is_closed() {
        let addr = started().await;
        for sent in [&b""[..], b"GET /live HTTP/1.1\r\nHost: x\r\n"] {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(sent).await.unwrap();
            let opened = Instant::now();
            let answer = tokio::time::timeout(HEADER_TIMEOUT * 3, until_closed(&mut conn))
                .await
                .expect("closed by the server");
            assert!(!answer.contains("live"), "{answer}");
            assert!(opened.elapsed() >= HEADER_TIMEOUT, "{:?}", opened.elapsed());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_request_is_answered() {
        let addr = started().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("live\n"), "{answer}");
    }
}
