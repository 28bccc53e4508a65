//! Inbound HTTP: requests of an admitted connection go to the application
//! on loopback over a pooled connection, with the request ID kept (or made,
//! for a client outside the mesh), and returned to a client outside the
//! mesh (a mesh client's outbound proxy returns it). Each request is authorized
//! against the table in use when it arrives: callers keep their pooled
//! connections open indefinitely, so a verdict per connection would let a
//! revoked caller in (or keep an allowed one out) until it reconnects. A
//! request not allowed gets 403 with the reason in `weft-error`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use weft_api::SpiffeId;

use crate::access_log::AccessRecord;
use crate::correlation::{REQUEST_ID, ensure_request_id, ensure_traceparent};
use crate::hop::strip_hop_by_hop;
use crate::http::{
    Completion, Inner, Observed, ResponseBody, absolute_uri, error_response, serve, tunnel,
    wants_tunnel,
};
use crate::inbound::Inbound;
use crate::metrics::{ConnLabels, DeniedLabels, Direction, RequestLabels, Shared};
use crate::series::RequestSeries;
use crate::upstream::{HttpClient, HttpVersion, SendError};

/// What every request of one inbound connection shares.
pub struct InboundConn {
    inbound: Arc<Inbound>,
    app: HttpClient,
    /// The app's address, the authority of requests that name none.
    authority: Authority,
    /// The original destination: its port selects the inbound policies.
    dst: SocketAddr,
    /// The client's verified identity; `None` for plaintext.
    ///
    /// It also decides who returns the request ID to the caller. A client
    /// with an identity speaks a mesh HTTP protocol, so it is an outbound
    /// proxy, which puts the ID on the response to its app itself (its
    /// own, which this request carries): added here too, the ID would be
    /// encoded, sent and parsed once more for nothing (4.5% of the pair's
    /// instructions per HTTP/2 request). A plaintext client is outside the
    /// mesh and gets it from here.
    client: Option<SpiffeId>,
    version: HttpVersion,
    /// Every request of the connection has the same labels.
    series: Arc<RequestSeries>,
}

impl InboundConn {
    pub fn new(
        inbound: &Arc<Inbound>,
        dst: SocketAddr,
        app: SocketAddr,
        client: Option<SpiffeId>,
        version: HttpVersion,
    ) -> Arc<Self> {
        let upstream = inbound.apps.get(app, None);
        let pooled = upstream.client(version, &inbound.state, inbound.connect_timeout);
        let peer = client.as_ref().map(ToString::to_string).unwrap_or_default();
        Arc::new(Self {
            inbound: inbound.clone(),
            app: pooled.clone(),
            authority: Authority::try_from(app.to_string())
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            dst,
            series: Arc::new(RequestSeries::new(
                &inbound.state.metrics,
                RequestLabels {
                    direction: Direction::Inbound,
                    destination: Shared(format!(":{}", app.port()).into()),
                    tls: client.is_some(),
                    peer_identity: Shared(peer.into()),
                },
            )),
            client,
            version,
        })
    }

    /// Counts (and logs, at debug level: a denied caller may send many) a
    /// request refused by policy.
    fn deny(&self, reason: &'static str) {
        tracing::debug!(client = ?self.client, port = self.dst.port(), reason, "request denied");
        let labels = DeniedLabels {
            direction: Direction::Inbound,
            peer_identity: self.series.labels.peer_identity.0.to_string(),
            reason,
        };
        self.inbound
            .state
            .metrics
            .requests_denied
            .get_or_create(&labels)
            .inc();
    }

    /// The connection's labels for the connection counters.
    pub fn conn_labels(&self) -> ConnLabels {
        ConnLabels {
            direction: Direction::Inbound,
            peer_identity: self.series.labels.peer_identity.0.to_string(),
            tls: self.series.labels.tls,
        }
    }
}

/// Serves the connection until it ends or shutdown asks it to close.
pub async fn serve_inbound<S>(
    conn: Arc<InboundConn>,
    stream: S,
    version: HttpVersion,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| Box::pin(handle(conn.clone(), req)));
    serve(stream, version, service, shutdown).await;
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
    conn: Arc<InboundConn>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let start = Instant::now();
    let request_id = ensure_request_id(req.headers_mut());
    ensure_traceparent(req.headers_mut());
    let state = &conn.inbound.state;
    conn.series.request();
    let mut completion = Completion::new(state.clone(), conn.series.clone(), start);
    completion.access = AccessRecord::start(
        conn.inbound.access_log,
        Direction::Inbound,
        &req,
        &conn.series.labels.peer_identity.0,
        &request_id,
    );
    let mut response = match conn.inbound.authorize(conn.dst, conn.client.as_ref()) {
        Err(reason) => {
            conn.deny(reason);
            error_response(StatusCode::FORBIDDEN, reason)
        }
        Ok(()) => forward(&conn, req).await,
    };
    if conn.client.is_none() {
        response.headers_mut().insert(REQUEST_ID, request_id);
    }
    completion.head(response.headers(), response.status());
    Ok(response.map(|body| Observed::new(body, completion)))
}

/// Sends the request to the application; an upgrade becomes a tunnel.
async fn forward(conn: &InboundConn, mut req: Request<Incoming>) -> Response<Inner> {
    let upgrade = wants_tunnel(&req);
    strip_hop_by_hop(req.headers_mut(), upgrade);
    if conn.version == HttpVersion::Http2 {
        absolute_uri(&mut req, &conn.authority);
        *req.version_mut() = Version::HTTP_2;
    }
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    match conn.app.request(req.map(Either::Left)).await {
        Ok(mut response) => {
            if let Some(client) = on_upgrade {
                tunnel(client, &mut response);
            }
            let keep_upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            strip_hop_by_hop(response.headers_mut(), keep_upgrade);
            response.map(Either::Left)
        }
        Err(e @ SendError::Connect(_)) => {
            tracing::info!(error = %e, "application refused the connection");
            error_response(
                StatusCode::BAD_GATEWAY,
                "application refused the connection",
            )
        }
        Err(e) => {
            tracing::info!(error = %e, "application reset the request");
            error_response(StatusCode::BAD_GATEWAY, "application reset the request")
        }
    }
}
