//! Connections to upstreams: establishing one (TCP, then mesh TLS with the
//! endpoint's identity checked), and the per-endpoint state that outlives a
//! routing table — latency and health for balancing, and pooled HTTP
//! connections, so a reload neither forgets which endpoint is slow nor
//! drops idle connections to endpoints that are still there.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either as EitherFuture;
use weft_api::SpiffeId;

use crate::balance::EndpointStats;
use crate::h1_upstream::H1Upstream;
use crate::h2_upstream::{H2Body, H2Upstream};
use crate::metrics::{Direction, count};
use crate::relay::{conn_labels, connect};
use crate::state::State;
use crate::tls::{self, MeshProtocol};

/// A request body on its way upstream: streamed as received, or replayed
/// from a buffer (retries).
pub type RequestBody = Either<Incoming, Full<Bytes>>;

/// A response body from an upstream: hyper's (HTTP/1.1) or h2's.
pub type UpstreamBody = Either<Incoming, H2Body>;

/// An HTTP client bound to one upstream address.
#[derive(Clone)]
pub enum HttpClient {
    /// HTTP/1.1: a pool, one connection per request in flight.
    Http1(Arc<H1Upstream>),
    /// HTTP/2: one shared connection.
    Http2(Arc<H2Upstream>),
}

impl HttpClient {
    /// Sends `req`; the future resolves to the response head. A plain
    /// function, not an `async fn`: each level of `async fn` a request is
    /// moved into stores it again in the request's future (hundreds of
    /// bytes, copied on every call).
    pub fn request(
        &self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + '_ {
        match self {
            Self::Http1(h1) => EitherFuture::Left(h1.request(req)),
            Self::Http2(h2) => EitherFuture::Right(h2.request(req)),
        }
    }
}

/// Why a request got no response from its upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened; the reason is a fixed string, used in
    /// metrics and in `weft-error` headers.
    Connect(&'static str),
    /// The connection failed under the request, or the upstream reset it.
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl SendError {
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed(Box::new(e))
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(reason) => f.write_str(reason),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// An open upstream connection, plain or mesh TLS.
pub type Conn = tokio_util::either::Either<TcpStream, TlsStream<TcpStream>>;

/// Why an upstream connection could not be established. The reason is a
/// fixed string, used in metrics and in `weft-error` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectError(pub &'static str);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ConnectError {}

/// Connects to `addr` and, when `identity` is set, completes mesh TLS
/// speaking `protocol` and checks the server is exactly that identity.
/// Failures are counted here.
pub async fn establish(
    state: &State,
    direction: Direction,
    addr: SocketAddr,
    identity: Option<&SpiffeId>,
    protocol: MeshProtocol,
    timeout: Duration,
) -> Result<Conn, ConnectError> {
    let m = &state.metrics;
    let stream = connect(addr, timeout).await.map_err(|e| {
        count(&m.connect_failures, direction, "connect");
        match e.kind() {
            std::io::ErrorKind::TimedOut => ConnectError("connect timeout"),
            _ => ConnectError("connect refused"),
        }
    })?;
    let Some(expected) = identity else {
        return Ok(Conn::Left(stream));
    };
    let fail = |reason: &'static str| {
        count(&m.tls_failures, direction, reason);
        reason
    };
    let Some(own) = state.identity.load_full() else {
        return Err(ConnectError(fail("no_identity")));
    };
    let connector = TlsConnector::from(own.value.client(protocol).clone());
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(_)) => return Err(ConnectError(fail("handshake"))),
        Err(_) => return Err(ConnectError(fail("handshake_timeout"))),
    };
    let peer = tls::peer_identity(tls.get_ref().1.peer_certificates());
    if peer.as_ref() != Some(expected) {
        tracing::error!(endpoint = %addr, %expected, found = ?peer,
            "server identity does not match the routing table");
        return Err(ConnectError(fail("identity_mismatch")));
    }
    Ok(Conn::Right(tls))
}

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    fn mesh_protocol(self) -> MeshProtocol {
        match self {
            Self::Http1 => MeshProtocol::Http1,
            Self::Http2 => MeshProtocol::Http2,
        }
    }
}

/// One upstream address (with the identity it must prove), shared by every
/// table that lists it.
pub struct Upstream {
    pub stats: Arc<EndpointStats>,
    /// Outbound: an endpoint; inbound: the application, on loopback.
    direction: Direction,
    addr: SocketAddr,
    identity: Option<SpiffeId>,
    /// The connect timeout of the latest table listing it, in ms (0: the
    /// proxy's default); shared with its connectors.
    connect_timeout_ms: Arc<AtomicU64>,
    http1: OnceLock<HttpClient>,
    http2: OnceLock<HttpClient>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    fn new(direction: Direction, addr: SocketAddr, identity: Option<SpiffeId>) -> Self {
        Self {
            stats: Arc::default(),
            direction,
            addr,
            identity,
            connect_timeout_ms: Arc::new(AtomicU64::new(0)),
            http1: OnceLock::new(),
            http2: OnceLock::new(),
        }
    }

    pub fn set_connect_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        self.connect_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The client speaking `version` to this upstream, made on first use. `default_timeout` applies while no policy sets a connect timeout.
    pub fn client(
        &self,
        version: HttpVersion,
        state: &Arc<State>,
        default_timeout: Duration,
    ) -> &HttpClient {
        let cell = match version {
            HttpVersion::Http1 => &self.http1,
            HttpVersion::Http2 => &self.http2,
        };
        cell.get_or_init(|| {
            let connector = Connector {
                direction: self.direction,
                addr: self.addr,
                identity: self.identity.clone(),
                protocol: version.mesh_protocol(),
                state: Arc::downgrade(state),
                timeout_ms: self.connect_timeout_ms.clone(),
                default_timeout,
            };
            match version {
                HttpVersion::Http1 => HttpClient::Http1(Arc::new(H1Upstream::new(connector))),
                HttpVersion::Http2 => HttpClient::Http2(Arc::new(H2Upstream::new(connector))),
            }
        })
    }
}

/// Every upstream in use, by address and identity. Only reloads, the first
/// use of a destination in a table (which builds it), and new inbound
/// connections touch it; other requests reach their upstream through the
/// table.
pub struct Upstreams {
    direction: Direction,
    /// foldhash: a reload looks up every endpoint listed, and the keys come
    /// from the operator's table, not from anyone choosing collisions.
    map: Mutex<foldhash::HashMap<UpstreamKey, Weak<Upstream>>>,
}

type UpstreamKey = (SocketAddr, Option<SpiffeId>);

impl Default for Upstreams {
    fn default() -> Self {
        Self::new(Direction::Outbound)
    }
}

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Upstreams")
    }
}

impl Upstreams {
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            map: Mutex::default(),
        }
    }

    /// The upstream for `addr` and `identity`: the one already in use, or a
    /// new one.
    pub fn get(&self, addr: SocketAddr, identity: Option<&SpiffeId>) -> Arc<Upstream> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (addr, identity.cloned());
        if let Some(live) = map.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let fresh = Arc::new(Upstream::new(self.direction, addr, key.1.clone()));
        map.insert(key, Arc::downgrade(&fresh));
        fresh
    }

    /// Forgets the upstreams nothing holds any more, and returns those still
    /// in use that `listed` names, for a new table to hold: a table builds
    /// its targets on first use, so without this the state of an endpoint
    /// the new table still lists would be dropped with the old table before
    /// the new one asks for it. The listed endpoints are only walked while
    /// some upstream is in use.
    pub fn in_use<'a>(
        &self,
        listed: impl IntoIterator<Item = (SocketAddr, Option<&'a SpiffeId>)>,
    ) -> Vec<Arc<Upstream>> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, upstream| upstream.strong_count() > 0);
        if map.is_empty() {
            return Vec::new();
        }
        listed
            .into_iter()
            .filter_map(|(addr, identity)| map.get(&(addr, identity.cloned()))?.upgrade())
            .collect()
    }
}

/// Opens connections for one upstream's client.
pub struct Connector {
    direction: Direction,
    addr: SocketAddr,
    identity: Option<SpiffeId>,
    protocol: MeshProtocol,
    /// Weak: the state holds the tables that hold this connector.
    state: Weak<State>,
    timeout_ms: Arc<AtomicU64>,
    default_timeout: Duration,
}

impl Connector {
    /// Opens a connection to the upstream.
    pub async fn dial(&self) -> Result<Pooled, ConnectError> {
        let state = self.state.upgrade().ok_or(ConnectError("shutting down"))?;
        let timeout = match self.timeout_ms.load(Ordering::Relaxed) {
            0 => self.default_timeout,
            ms => Duration::from_millis(ms),
        };
        let conn = establish(
            &state,
            self.direction,
            self.addr,
            self.identity.as_ref(),
            self.protocol,
            timeout,
        )
        .await?;
        Ok(Pooled {
            io: conn,
            closed: self.count_opened(&state),
        })
    }

    /// Outbound, a pooled connection is counted like a relayed one: opened
    /// now, closed when dropped, by the endpoint's identity. (Inbound, the
    /// client's connection is what counts, not the app's.)
    fn count_opened(&self, state: &State) -> Option<Counter> {
        if self.direction != Direction::Outbound {
            return None;
        }
        let labels = conn_labels(Direction::Outbound, self.identity.as_ref());
        state.metrics.opened.get_or_create(&labels).inc();
        Some(state.metrics.closed.get_or_create(&labels).clone())
    }
}

/// An upstream connection; counts its close when dropped.
pub struct Pooled {
    io: Conn,
    /// Counts the close.
    closed: Option<Counter>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(closed) = &self.closed {
            closed.inc();
        }
    }
}

impl AsyncRead for Pooled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pooled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
