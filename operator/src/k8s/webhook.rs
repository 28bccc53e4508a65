//! The injection webhook's HTTPS server, on `--webhook-addr` (9443):
//! `POST /inject` takes an `admission.k8s.io/v1` AdmissionReview and
//! answers one (see `admit`); `GET /healthz` says the server runs.
//!
//! - TLS 1.3 with the serving certificate of `serving`, looked up at every
//!   handshake, so a re-issued certificate serves new connections at once.
//!   Until the first one is issued, connections are closed as soon as they
//!   are accepted (counted as `no_certificate`): the API server sees a
//!   connection error at once and applies the `failurePolicy`, instead of
//!   waiting out its timeout on a listener that does not answer.
//! - HTTP/1.1 only: the API server calls admission webhooks over HTTP/1.1.
//! - Bad requests get a status and a one-line message, never a panic: a
//!   body that is not an AdmissionReview 400, a body over
//!   `Limits::max_body` 413, another content type than JSON 415, another
//!   method 405 — each counted as an `error` and logged — and another path
//!   404. There is no `/validate`: what the MeshPolicy schema cannot refuse
//!   depends on other objects and their order of creation, and the
//!   controller reports it as `Accepted=False`.
//! - Bounded: connections (`max_connections`), TLS handshakes and request
//!   headers (10 s each), bodies; on `stop` the listener closes, open
//!   connections finish their request and are closed (`Connection: close`),
//!   for at most `drain`.
//!
//! The caller binds the listener, so tests serve on port 0.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::duration::parse_duration;

use super::admit::Admit;
use super::serving::ServingCert;

/// The mutating webhook's path (the chart's `clientConfig.service.path`).
pub const INJECT_PATH: &str = "/inject";
pub const HEALTH_PATH: &str = "/healthz";
/// The largest AdmissionReview read: a Pod (at most the API server's
/// 3 MiB request limit) and the review around it.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// How long an identity Secret may take to create when the API server did
/// not say its own timeout.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(2);
/// The most an identity Secret may take, whatever the API server's timeout.
pub const MAX_BUDGET: Duration = Duration::from_secs(5);

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub max_connections: usize,
    /// For the TLS handshake, and again for the request headers.
    pub handshake_timeout: Duration,
    /// How long open connections may take to finish after `stop`.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: MAX_BODY,
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(10),
        }
    }
}

/// The server's parts.
pub struct Webhook {
    admit: Arc<Admit>,
    serving: Arc<ServingCert>,
    acceptor: TlsAcceptor,
    limits: Limits,
}

impl Webhook {
    /// Fails only if no TLS configuration can be built.
    pub fn new(
        admit: Arc<Admit>,
        serving: Arc<ServingCert>,
        limits: Limits,
    ) -> Result<Self, rustls::Error> {
        Ok(Self {
            acceptor: TlsAcceptor::from(serving.server_config()?),
            admit,
            serving,
            limits,
        })
    }
}

/// Serves `listener` until `stop`, then drains.
pub async fn serve(webhook: Arc<Webhook>, listener: TcpListener, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(webhook.limits.max_connections));
    let tracker = TaskTracker::new();
    let metrics = &webhook.admit.metrics;
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !webhook.serving.is_loaded() {
            tracing::debug!(%peer, "no serving certificate yet; connection closed");
            metrics.webhook_refused("no_certificate");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = webhook.limits.max_connections, "too many webhook connections; connection closed");
            metrics.webhook_refused("busy");
            continue;
        };
        let (webhook, stop) = (webhook.clone(), stop.clone());
        tracker.spawn(async move {
            connection(&webhook, stream, &stop).await;
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(webhook.limits.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("webhook connections still open after the drain period");
    }
}

/// One connection: TLS, then HTTP/1.1 requests until the client closes or
/// `stop` (which lets the request in flight finish).
async fn connection(webhook: &Arc<Webhook>, stream: TcpStream, stop: &CancellationToken) {
    let limits = webhook.limits;
    let handshake = webhook.acceptor.accept(stream);
    let tls = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "webhook TLS handshake failed");
            webhook.admit.metrics.webhook_refused("handshake");
            return;
        }
        Err(_) => {
            tracing::debug!("webhook TLS handshake timed out");
            webhook.admit.metrics.webhook_refused("handshake");
            return;
        }
    };
    let service = {
        let webhook = webhook.clone();
        hyper::service::service_fn(move |req| {
            let webhook = webhook.clone();
            async move { Ok::<_, Infallible>(handle(&webhook, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "webhook connection error");
    }
}

/// Answers one request.
pub async fn handle<B>(webhook: &Webhook, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match (req.method(), req.uri().path()) {
        (&Method::POST, INJECT_PATH) => inject(webhook, req).await,
        (&Method::GET, HEALTH_PATH) => text(StatusCode::OK, "ok"),
        (method, INJECT_PATH) => {
            let message = format!("{INJECT_PATH} takes POST, not {method}");
            webhook.admit.error(&message);
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, message);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            response
        }
        (_, HEALTH_PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "GET only"),
        (_, path) => {
            tracing::debug!(path, "webhook: no such path");
            text(StatusCode::NOT_FOUND, format!("no such path {path:?}"))
        }
    }
}

async fn inject<B>(webhook: &Webhook, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max = webhook.limits.max_body;
    let refuse = |status: StatusCode, message: String| {
        webhook.admit.error(&message);
        text(status, message)
    };
    let content_type = req.headers().get(header::CONTENT_TYPE);
    if !content_type.is_some_and(is_json) {
        let found = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not {found:?}"),
        );
    }
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the AdmissionReview is larger than {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    let budget = budget(req.uri().query());
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            );
        }
    };
    match webhook.admit.review(&body, budget).await {
        Ok(review) => match serde_json::to_vec(&review) {
            Ok(json) => {
                let mut response = Response::new(Full::new(Bytes::from(json)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding the AdmissionReview: {e}"),
            ),
        },
        // Counted and logged by `review`.
        Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `application/json`, with or without parameters.
fn is_json(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The time an identity Secret may take: half the timeout the API server
/// gives the webhook (the `timeout` query parameter it adds, e.g. `10s`),
/// at most [`MAX_BUDGET`]; [`DEFAULT_BUDGET`] when it gives none.
pub fn budget(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|t| parse_duration(t).ok())
        .map_or(DEFAULT_BUDGET, |t| (t / 2).min(MAX_BUDGET))
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = message.into();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_half_the_api_servers_timeout_within_bounds() {
        assert_eq!(budget(None), DEFAULT_BUDGET);
        assert_eq!(budget(Some("timeout=10s")), MAX_BUDGET);
        assert_eq!(budget(Some("a=b&timeout=4s")), Duration::from_secs(2));
        assert_eq!(budget(Some("timeout=1s")), Duration::from_millis(500));
        assert_eq!(budget(Some("timeout=soon")), DEFAULT_BUDGET);
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in ["text/plain", "application/jsonx", "application/yaml", ""] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
