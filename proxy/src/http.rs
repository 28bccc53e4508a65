//! What the inbound and outbound HTTP paths share: serving a connection
//! with hyper, the errors the proxy itself answers, passing an upgraded
//! connection through, and the response body that records metrics and the
//! access log when the response ends.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::CONTENT_TYPE;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessRecord;
use crate::balance::{InFlight, Outcome};
use crate::h2_upstream;
use crate::metrics::{Classification, GrpcStatus, Metrics, Shared};
use crate::series::RequestSeries;
use crate::state::State;
use crate::table::Backend;
use crate::upstream::{HttpVersion, UpstreamBody};

/// The header naming what the proxy could not do, on responses it makes.
pub const WEFT_ERROR: &str = "weft-error";

/// A response body: the upstream's, or one the proxy made.
pub type Inner = Either<UpstreamBody, Full<Bytes>>;
/// What the proxy answers with.
pub type ResponseBody = Observed<Inner>;

/// Serves one connection with `service` until it ends or `shutdown` asks
/// it to finish its in-flight requests and close.
pub async fn serve<I, S>(io: I, version: HttpVersion, service: S, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<ResponseBody>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(io);
    let result = match version {
        HttpVersion::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, service)
                .with_upgrades();
            drive(conn, shutdown, |c| c.graceful_shutdown()).await
        }
        HttpVersion::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, service);
            drive(conn, shutdown, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

async fn drive<C>(
    conn: C,
    shutdown: CancellationToken,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        () = shutdown.cancelled() => graceful(conn.as_mut()),
    }
    conn.await
}

/// A response the proxy makes itself: `status`, a `weft-error` header with
/// `reason`, and a one-line body saying what failed.
pub fn error_response(status: StatusCode, reason: &'static str) -> Response<Inner> {
    let body = Full::new(Bytes::from(format!("weft: {reason}\n")));
    let mut response = Response::new(Either::Right(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(WEFT_ERROR, HeaderValue::from_static(reason));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Gives a request for an HTTP/2 upstream the scheme and authority its
/// pseudo-headers need, with `authority` (the upstream's address) when the
/// client's request named none. Reuses the caller's path bytes and the
/// shared authority: nothing is copied.
pub fn absolute_uri<B>(req: &mut Request<B>, authority: &Authority) {
    if req.uri().scheme().is_some() {
        return;
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    if parts.authority.is_none() {
        parts.authority = Some(authority.clone());
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The HTTP version to speak upstream for a request received as `version`.
pub fn upstream_version(version: Version) -> HttpVersion {
    match version {
        Version::HTTP_2 => HttpVersion::Http2,
        _ => HttpVersion::Http1,
    }
}

/// Whether the request asks to turn the connection into a tunnel.
pub fn wants_tunnel(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT || crate::hop::is_upgrade(req.headers())
}

/// Once the upstream agreed to an upgrade (`101`, or `2xx` to CONNECT),
/// relays bytes between the two upgraded connections: hyper's on both
/// sides for HTTP/1.1, the CONNECT stream's two halves for HTTP/2.
pub fn tunnel(client: hyper::upgrade::OnUpgrade, response: &mut Response<UpstreamBody>) {
    let agreed =
        response.status() == StatusCode::SWITCHING_PROTOCOLS || response.status().is_success();
    if !agreed {
        return;
    }
    if let Either::Right(h2) = response.body_mut() {
        let Some((send, recv)) = h2.take_tunnel() else {
            return;
        };
        tokio::spawn(async move {
            match client.await {
                Ok(client) => h2_upstream::relay(TokioIo::new(client), send, recv).await,
                Err(e) => tracing::debug!(error = %e, "client upgrade did not complete"),
            }
        });
        return;
    }
    let upstream = hyper::upgrade::on(response);
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
            tracing::debug!("upgrade did not complete on both sides");
            return;
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "tunnel ended with an error");
        }
    });
}

/// What is recorded when a response ends.
pub struct Completion {
    pub state: Arc<State>,
    pub series: Arc<RequestSeries>,
    pub status: StatusCode,
    /// `Some` for gRPC responses: the status from the head (trailers-only
    /// responses), replaced by the trailers' when they come.
    pub grpc_status: Option<Option<u16>>,
    /// When the request arrived.
    pub start: Instant,
    /// Until the response head.
    pub latency: Duration,
    pub bytes: u64,
    pub failed: bool,
    /// The endpoint's in-flight slot and its backend (outbound): released,
    /// and the outcome judged, when the response ends.
    pub in_flight: Option<(InFlight, Arc<Backend>)>,
    pub access: Option<Box<AccessRecord>>,
}

impl Completion {
    pub fn new(state: Arc<State>, series: Arc<RequestSeries>, start: Instant) -> Self {
        Self {
            state,
            series,
            status: StatusCode::OK,
            grpc_status: None,
            start,
            latency: Duration::ZERO,
            bytes: 0,
            failed: false,
            in_flight: None,
            access: None,
        }
    }

    /// Takes what the response head says.
    pub fn head(&mut self, headers: &HeaderMap, status: StatusCode) {
        self.status = status;
        self.latency = self.start.elapsed();
        if is_grpc(headers) {
            self.grpc_status = Some(grpc_status(headers));
        }
    }

    fn classification(&self) -> Classification {
        let grpc_failed = matches!(self.grpc_status, Some(Some(code)) if code != 0);
        if self.failed || self.status.is_server_error() || grpc_failed {
            Classification::Failure
        } else {
            Classification::Success
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let m = &self.state.metrics;
        let classification = self.classification();
        self.series.response(
            m,
            self.latency,
            self.status.as_u16(),
            classification,
            GrpcStatus(self.grpc_status.flatten()),
        );
        if let Some((in_flight, backend)) = self.in_flight.take() {
            let outcome = match classification {
                Classification::Success => Outcome::Success,
                Classification::Failure => Outcome::Failure,
            };
            settle(m, in_flight, &backend, self.latency, outcome);
        }
        if let Some(access) = self.access.take() {
            access.write(self.status, self.start.elapsed(), self.bytes);
        }
    }
}

/// Ends a request on an endpoint: latency and outcome go to the balancer
/// and outlier detection; an ejection is logged and counted.
pub fn settle(
    metrics: &Metrics,
    in_flight: InFlight,
    backend: &Backend,
    latency: Duration,
    outcome: Outcome,
) {
    let (outlier, endpoints) = (backend.outlier.as_ref(), &backend.endpoints);
    if in_flight.finish(Instant::now(), latency, outcome, outlier, endpoints) {
        tracing::warn!(backend = %backend.name, "endpoint ejected after consecutive failures");
        Metrics::count_for(&metrics.ejections, &Shared(backend.name.clone()));
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    std::str::from_utf8(headers.get("grpc-status")?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

/// A response body that counts its bytes, reads the gRPC status from its
/// trailers, and records the response when it is dropped (finished, failed
/// or abandoned by the client).
pub struct Observed<B> {
    inner: B,
    completion: Completion,
}

impl<B> Observed<B> {
    pub fn new(inner: B, completion: Completion) -> Self {
        Self { inner, completion }
    }
}

impl<B> Body for Observed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.completion.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && this.completion.grpc_status.is_some()
                {
                    this.completion.grpc_status = Some(grpc_status(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => this.completion.failed = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
