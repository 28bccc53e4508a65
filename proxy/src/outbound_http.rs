//! Outbound HTTP: every request of an application's connection to a meshed
//! Service is routed on its own — traffic split, endpoint chosen by the
//! balancer, pooled (mesh TLS) connection to it, request timeout, retries
//! within the budget — and tagged with a request ID and trace context.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Bytes, Incoming};
use tokio::net::TcpStream;

use crate::access_log::AccessRecord;
use crate::balance::{InFlight, Outcome};
use crate::correlation::{REQUEST_ID, ensure_request_id, ensure_traceparent};
use crate::hop::strip_hop_by_hop;
use crate::http::{
    Completion, Inner, Observed, ResponseBody, absolute_uri, error_response, serve, settle, tunnel,
    upstream_version, wants_tunnel,
};
use crate::metrics::{Direction, Metrics, RequestLabels, Shared};
use crate::outbound::Outbound;
use crate::retry::{Failure, MAX_BUFFERED_BODY};
use crate::series::RequestSeries;
use crate::table::{Backend, Endpoint, Retries, Target};
use crate::upstream::{RequestBody, SendError};

/// Serves an application connection detected as HTTP.
pub async fn serve_outbound(
    outbound: Arc<Outbound>,
    client: TcpStream,
    dst: SocketAddr,
    version: crate::upstream::HttpVersion,
) {
    let authority = Authority::try_from(dst.to_string()).ok();
    let shutdown = outbound.shutdown.clone();
    let service = hyper::service::service_fn(move |req| {
        Box::pin(handle(outbound.clone(), dst, authority.clone(), req))
    });
    serve(client, version, service, shutdown).await;
}

/// Answers one request; failures are answers too, hence `Infallible`.
///
/// The service boxes this future and calls it directly, not from an
/// `async` block. Hyper moves each request's future into a task of its own
/// (HTTP/2) and tokio moves it again to store and drop it: boxed, that is
/// a pointer instead of kilobytes. And each level of `async` functions
/// keeps its own copy of the request in the future. Figures in
/// `bench/README.md`.
async fn handle(
    outbound: Arc<Outbound>,
    dst: SocketAddr,
    authority: Option<Authority>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let request_id = ensure_request_id(req.headers_mut());
    ensure_traceparent(req.headers_mut());
    let target = outbound
        .state
        .routes
        .load()
        .as_ref()
        .and_then(|r| r.value.target(&dst).cloned());
    let state = outbound.state.clone();
    let Some(target) = target else {
        // The Service left the table while its connection was open.
        let series = RequestSeries::new(&state.metrics, labels(Shared::default(), None));
        series.request();
        let completion = Completion::new(state, Arc::new(series), start);
        return Ok(finish(
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no route"),
            completion,
        ));
    };
    if let Some(authority) = &authority
        && req.version() == Version::HTTP_2
    {
        absolute_uri(&mut req, authority);
    }
    let record = AccessRecord::start(
        outbound.access_log,
        Direction::Outbound,
        &req,
        "",
        &request_id,
    );
    let mut call = Call {
        outbound: &outbound,
        target: &target,
        start,
        last: None,
    };
    let mut response = call.run(req).await;
    response.headers_mut().insert(REQUEST_ID, request_id);
    // Labelled by the endpoint that answered (the last attempt's), like
    // the response.
    let endpoint = call.last.as_ref().map(|l| &l.backend.endpoints[l.index]);
    let labels = labels(Shared(target.name.clone()), endpoint);
    let series = target.series.get(&state.metrics, labels);
    series.request();
    let mut completion = Completion::new(state, series, start);
    completion.in_flight = call.last.take().map(|l| (l.in_flight, l.backend));
    completion.access = record;
    Ok(finish(response, completion))
}

fn labels(destination: Shared, endpoint: Option<&Endpoint>) -> RequestLabels {
    RequestLabels {
        direction: Direction::Outbound,
        destination,
        peer_identity: endpoint.map(|e| e.peer.clone()).unwrap_or_default(),
        tls: endpoint.is_some_and(|e| e.identity.is_some()),
    }
}

/// Wraps the response so that its end is recorded.
fn finish(response: Response<Inner>, mut completion: Completion) -> Response<ResponseBody> {
    completion.head(response.headers(), response.status());
    response.map(|body| Observed::new(body, completion))
}

/// One request's way through the target.
struct Call<'a> {
    outbound: &'a Arc<Outbound>,
    target: &'a Target,
    start: Instant,
    /// The endpoint of the latest attempt, while its response is pending.
    last: Option<Sent>,
}

/// An attempt on its way: the endpoint's in-flight slot.
struct Sent {
    in_flight: InFlight,
    backend: Arc<Backend>,
    index: usize,
    at: Instant,
}

/// A request body that can be sent again, or only once.
enum Payload {
    Replayable(Bytes),
    Once(Incoming),
    /// The client's body failed while being buffered.
    Broken,
}

/// The request's way to its attempt is one `async fn`: each level it is
/// moved into stores it again in the request's future (hundreds of bytes,
/// copied on every call).
impl Call<'_> {
    /// Sends the request, once or under the target's retry policy, within
    /// the target's request timeout. Without retries the body streams
    /// through and upgrades become tunnels.
    async fn run(&mut self, mut req: Request<Incoming>) -> Response<Inner> {
        let upgrade = wants_tunnel(&req);
        strip_hop_by_hop(req.headers_mut(), upgrade);
        let target = self.target;
        let limit = target.request_timeout;
        let response = match target.retries.as_ref().filter(|_| !upgrade) {
            None => {
                let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
                let req = req.map(Either::Left);
                match limit {
                    None => Some(self.attempt(req, None, None, on_upgrade).await.0.response),
                    Some(limit) => {
                        tokio::time::timeout(limit, self.attempt(req, None, None, on_upgrade))
                            .await
                            .ok()
                            .map(|(attempted, _)| attempted.response)
                    }
                }
            }
            // Boxed: the retry loop's state (request head, buffered body,
            // an attempt) would otherwise enlarge every request's future,
            // moved on each spawn and poll, retried or not.
            Some(retries) => {
                let retrying = Box::pin(self.retrying(req, retries));
                match limit {
                    None => Some(retrying.await),
                    Some(limit) => tokio::time::timeout(limit, retrying).await.ok(),
                }
            }
        };
        response.unwrap_or_else(|| {
            let metrics = &self.outbound.state.metrics;
            let destination = Shared(target.name.clone());
            Metrics::count_for(&metrics.request_timeouts, &destination);
            error_response(StatusCode::GATEWAY_TIMEOUT, "request timeout")
        })
    }

    /// Sends the request, and again while the retry policy and budget allow.
    async fn retrying(&mut self, req: Request<Incoming>, retries: &Retries) -> Response<Inner> {
        retries.budget.record_request(self.start);
        let (parts, body) = req.into_parts();
        let payload = buffer(body).await;
        if matches!(payload, Payload::Broken) {
            return error_response(StatusCode::BAD_REQUEST, "request body failed");
        }
        let replayable = matches!(payload, Payload::Replayable(_));
        let mut payload = Some(payload);
        let mut previous = None;
        for attempt in 1..=retries.policy.attempts() {
            let body = match payload.take() {
                Some(Payload::Replayable(bytes)) => {
                    payload = Some(Payload::Replayable(bytes.clone()));
                    Either::Right(Full::new(bytes))
                }
                Some(Payload::Once(incoming)) => Either::Left(incoming),
                Some(Payload::Broken) | None => break,
            };
            let req = replica(&parts, body);
            let per_try = retries.policy.per_try_timeout();
            let (result, failure) = self.attempt(req, previous, per_try, None).await;
            let Some(failure) = failure else {
                return result.response;
            };
            previous = result.endpoint;
            let last = attempt == retries.policy.attempts();
            if last
                || !retries
                    .policy
                    .should_retry(&failure, &parts.method, replayable)
            {
                return result.response;
            }
            let destination = Shared(self.target.name.clone());
            let metrics = &self.outbound.state.metrics;
            if !retries.budget.try_withdraw(Instant::now()) {
                Metrics::count_for(&metrics.budget_exhausted, &destination);
                return result.response;
            }
            Metrics::count_for(&metrics.retries, &destination);
            self.abandon();
            tracing::debug!(target = %self.target.name, attempt, ?failure, "retrying");
        }
        error_response(StatusCode::BAD_GATEWAY, "no attempt left")
    }

    /// Settles the latest attempt as failed: a retry replaces it.
    fn abandon(&mut self) {
        if let Some(sent) = self.last.take() {
            let latency = sent.at.elapsed();
            let metrics = &self.outbound.state.metrics;
            settle(
                metrics,
                sent.in_flight,
                &sent.backend,
                latency,
                Outcome::Failure,
            );
        }
    }

    /// Sends `req` to an endpoint of the target (another than `previous`
    /// when there is a choice) and classifies the result.
    async fn attempt(
        &mut self,
        mut req: Request<RequestBody>,
        previous: Option<usize>,
        per_try: Option<std::time::Duration>,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (Attempted, Option<Failure>) {
        let now = Instant::now();
        let backend = self.target.backend().clone();
        let Some(index) = pick(&backend, previous, now) else {
            tracing::info!(target = %self.target.name, backend = %backend.name, "no ready endpoint");
            let response = error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoints");
            return (
                Attempted::new(response, None),
                Some(Failure::ConnectFailure),
            );
        };
        let endpoint = &backend.endpoints[index];
        let version = upstream_version(req.version());
        *req.version_mut() = match version {
            crate::upstream::HttpVersion::Http1 => req.version(),
            crate::upstream::HttpVersion::Http2 => http::Version::HTTP_2,
        };
        let state = &self.outbound.state;
        let client = endpoint
            .upstream
            .client(version, state, self.outbound.connect_timeout);
        self.last = Some(Sent {
            in_flight: endpoint.upstream.stats.begin(),
            backend: backend.clone(),
            index,
            at: now,
        });
        // The request's future is made in each arm, not once before them:
        // a future held in a local and then moved into `timeout` is stored
        // twice in this one.
        let result = match per_try {
            Some(limit) => tokio::time::timeout(limit, client.request(req)).await.ok(),
            None => Some(client.request(req).await),
        };
        let (response, failure) = match result {
            None => (
                error_response(StatusCode::GATEWAY_TIMEOUT, "per-try timeout"),
                Some(Failure::Timeout),
            ),
            Some(Err(e)) => failed(&e),
            Some(Ok(mut response)) => {
                if let Some(client) = on_upgrade {
                    tunnel(client, &mut response);
                }
                let keep_upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(response.headers_mut(), keep_upgrade);
                let status = response.status();
                let failure = status.is_server_error().then_some(Failure::Status(status));
                (response.map(Either::Left), failure)
            }
        };
        (Attempted::new(response, Some(index)), failure)
    }
}

/// An attempt's response and the endpoint it went to.
struct Attempted {
    response: Response<Inner>,
    endpoint: Option<usize>,
}

impl Attempted {
    fn new(response: Response<Inner>, endpoint: Option<usize>) -> Self {
        Self { response, endpoint }
    }
}

/// An endpoint of `backend`, avoiding `previous` when another is in rotation.
fn pick(backend: &Backend, previous: Option<usize>, now: Instant) -> Option<usize> {
    let first = backend.pick(now)?;
    if Some(first) != previous || backend.endpoints.len() < 2 {
        return Some(first);
    }
    let again = backend.pick(now)?;
    if again != first {
        return Some(again);
    }
    Some((first + 1) % backend.endpoints.len())
}

/// The proxy's answer when the client could not get a response.
fn failed(e: &SendError) -> (Response<Inner>, Option<Failure>) {
    if let SendError::Connect(reason) = e {
        let response = error_response(StatusCode::BAD_GATEWAY, reason);
        return (response, Some(Failure::ConnectFailure));
    }
    tracing::debug!(error = %e, "upstream request failed");
    let response = error_response(StatusCode::BAD_GATEWAY, "upstream reset");
    (response, Some(Failure::Reset))
}

/// Reads a body of known length up to [`MAX_BUFFERED_BODY`] so it can be
/// sent again; anything larger or of unknown length streams once.
async fn buffer(body: Incoming) -> Payload {
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_BUFFERED_BODY as u64);
    if !small {
        return Payload::Once(body);
    }
    match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
        Ok(collected) => Payload::Replayable(collected.to_bytes()),
        Err(_) => Payload::Broken,
    }
}

/// A copy of the request head with `body` (extensions are not carried:
/// they are per-connection state of the server side).
fn replica(parts: &Parts, body: RequestBody) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}
