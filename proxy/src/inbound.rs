//! The inbound side: connections to the pod, redirected here.
//!
//! A connection that opens with a ClientHello offering a mesh ALPN protocol
//! is mesh TLS: it is terminated with a required, verified client
//! certificate, and the client's identity is authorized; the negotiated
//! protocol says whether it carries HTTP/1, HTTP/2 or bytes. Anything else
//! — plaintext, or TLS that is not ours, such as an HTTPS probe — is
//! accepted only where the port's mTLS mode is permissive; plaintext HTTP
//! is recognised by its first bytes. HTTP goes to the application on
//! loopback request by request (`inbound_http`), a denied client getting
//! 403 for each; other allowed connections are relayed as bytes, denied
//! ones closed and counted, never forwarded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use weft_api::SpiffeId;

use tokio_util::sync::CancellationToken;
use weft_api::names::MESH_ALPNS;
use weft_api::routes::Protocol;

use crate::access_log::AccessLog;
use crate::authz::authorize;
use crate::client_hello::{self, Hello};
use crate::inbound_http::{self, InboundConn};
use crate::metrics::{DeniedLabels, Direction, PortLabels, count};
use crate::orig_dst::OriginalDst;
use crate::relay::{conn_labels, connect, relay};
use crate::sniff::{OpaquePorts, PEEK_RETRY, Sniffed, sniff};
use crate::state::State;
use crate::tls::{self, MeshProtocol};
use crate::upstream::{HttpVersion, Upstreams};

/// The largest first record we wait for: a TLS record's maximum plus header.
const MAX_HELLO: usize = 16 * 1024 + 5;

pub struct Inbound {
    pub state: Arc<State>,
    pub orig_dst: Arc<dyn OriginalDst>,
    /// How long to wait for the client's first byte before treating the
    /// connection as plaintext (a server-first protocol).
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Ports never inspected, whatever the table says.
    pub opaque_ports: OpaquePorts,
    pub access_log: AccessLog,
    /// Asks HTTP connections to finish their requests and close.
    pub shutdown: CancellationToken,
    /// The application's ports, with their pooled HTTP connections.
    pub apps: Upstreams,
}

/// What the client's first bytes said.
enum Opening {
    /// A ClientHello offering a mesh ALPN protocol.
    MeshTls,
    /// Something else arrived.
    Other,
    /// Nothing within the detect timeout.
    Silent,
}

impl Inbound {
    pub async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let dst = match self.orig_dst.original_dst(&stream) {
            Ok(dst) => dst,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "no original destination; closing");
                return;
            }
        };
        // A connection that was not redirected (addressed to this listener
        // itself, or the proxy's own forward looping back) would make the
        // proxy connect to itself, again and again.
        if stream.local_addr().ok() == Some(dst) {
            self.deny(peer, None, "addressed_to_proxy");
            return;
        }
        match self.opening(&stream).await {
            Opening::MeshTls => self.mesh_tls(stream, peer, dst).await,
            Opening::Silent => {
                self.count_detect_timeout(dst.port());
                self.admit(stream, peer, dst, None).await;
            }
            // Plaintext, or TLS that is not ours (an HTTPS probe, a client
            // outside the mesh): passed to the app if the port's mode
            // allows what is not mesh TLS; HTTP is proxied per request.
            Opening::Other if self.is_opaque(dst.port()) => {
                self.admit(stream, peer, dst, None).await;
            }
            Opening::Other => match sniff(&stream, self.detect_timeout).await {
                Sniffed::Http(version) => self.admit_http(stream, peer, dst, None, version).await,
                Sniffed::Opaque | Sniffed::Timeout => self.admit(stream, peer, dst, None).await,
            },
        }
    }

    fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.contains(port)
            || self
                .state
                .routes
                .load()
                .as_ref()
                .is_some_and(|r| r.value.inbound_protocol(port) == Protocol::Opaque)
    }

    fn count_detect_timeout(&self, port: u16) {
        let labels = PortLabels {
            direction: Direction::Inbound,
            port,
        };
        self.state
            .metrics
            .detect_timeouts
            .get_or_create(&labels)
            .inc();
    }

    /// Whether the client opens with a ClientHello offering a mesh ALPN
    /// protocol. Waits up to the detect timeout for the client's first
    /// record; a client that sends nothing first (a server-first protocol)
    /// is not mesh TLS.
    async fn opening(&self, stream: &TcpStream) -> Opening {
        let deadline = tokio::time::Instant::now() + self.detect_timeout;
        let mut buf = vec![0u8; 512];
        loop {
            let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
            let n = match peeked {
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) => return Opening::Other,
                Err(_) => return Opening::Silent,
            };
            match client_hello::parse(&buf[..n], &MESH_ALPNS) {
                Hello::ClientHello { offers: true } => return Opening::MeshTls,
                Hello::ClientHello { offers: false } | Hello::Other => return Opening::Other,
                Hello::Incomplete(needed) if needed > MAX_HELLO => return Opening::Other,
                Hello::Incomplete(needed) => {
                    if needed > buf.len() {
                        buf.resize(needed, 0);
                    } else if tokio::time::Instant::now() >= deadline {
                        return Opening::Other;
                    } else {
                        // More of the record is on its way: peek again shortly.
                        tokio::time::sleep(PEEK_RETRY).await;
                    }
                }
            }
        }
    }

    async fn mesh_tls(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, dst: SocketAddr) {
        let m = &self.state.metrics;
        let Some(identity) = self.state.identity.load_full() else {
            count(&m.tls_failures, Direction::Inbound, "no_identity");
            return;
        };
        let acceptor = TlsAcceptor::from(identity.value.server.clone());
        let accepted = tokio::time::timeout(self.connect_timeout, acceptor.accept(stream)).await;
        let tls = match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                count(&m.tls_failures, Direction::Inbound, "handshake");
                tracing::info!(%peer, error = %e, "mesh TLS handshake failed");
                return;
            }
            Err(_) => {
                count(&m.tls_failures, Direction::Inbound, "handshake_timeout");
                return;
            }
        };
        let session = tls.get_ref().1;
        let client = tls::peer_identity(session.peer_certificates());
        if client.is_none() {
            count(&m.tls_failures, Direction::Inbound, "no_client_identity");
            return;
        }
        match MeshProtocol::negotiated(session.alpn_protocol()) {
            Some(MeshProtocol::Http1) => {
                self.admit_http(tls, peer, dst, client, HttpVersion::Http1)
                    .await;
            }
            Some(MeshProtocol::Http2) => {
                self.admit_http(tls, peer, dst, client, HttpVersion::Http2)
                    .await;
            }
            Some(MeshProtocol::Opaque) | None => self.admit(tls, peer, dst, client).await,
        }
    }

    /// Authorizes the connection's client against every policy of the port.
    pub fn authorize(
        &self,
        dst: SocketAddr,
        client: Option<&SpiffeId>,
    ) -> Result<(), &'static str> {
        let Some(routes) = self.state.routes.load_full() else {
            return Err("no_routes");
        };
        let table = &routes.value;
        table
            .inbound_policies(dst.port())
            .iter()
            .try_for_each(|policy| authorize(policy, &table.trust_domain, client))
            .map_err(|denial| denial.as_str())
    }

    /// Serves an HTTP connection: each request is authorized and goes to
    /// the app over a pooled connection, or is answered 403 with the reason.
    async fn admit_http<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        dst: SocketAddr,
        client: Option<SpiffeId>,
        version: HttpVersion,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if self.state.routes.load().is_none() {
            self.deny(peer, client.as_ref(), "no_routes");
            return;
        }
        let app = SocketAddr::new(loopback(dst.ip()), dst.port());
        let conn = InboundConn::new(&self, dst, app, client, version);
        let labels = conn.conn_labels();
        let m = &self.state.metrics;
        m.opened.get_or_create(&labels).inc();
        inbound_http::serve_inbound(conn, stream, version, self.shutdown.clone()).await;
        m.closed.get_or_create(&labels).inc();
    }

    /// Authorizes `client` (None for plaintext) and relays to the app.
    async fn admit<S>(&self, stream: S, peer: SocketAddr, dst: SocketAddr, client: Option<SpiffeId>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let m = &self.state.metrics;
        if let Err(reason) = self.authorize(dst, client.as_ref()) {
            self.deny(peer, client.as_ref(), reason);
            return;
        }
        let app = SocketAddr::new(loopback(dst.ip()), dst.port());
        match connect(app, self.connect_timeout).await {
            Ok(upstream) => {
                let labels = conn_labels(Direction::Inbound, client.as_ref());
                relay(m, labels, stream, upstream, None).await;
            }
            Err(e) => {
                count(&m.connect_failures, Direction::Inbound, "connect");
                tracing::info!(%app, error = %e, "application refused the connection");
            }
        }
    }

    pub fn deny(&self, peer: SocketAddr, client: Option<&SpiffeId>, reason: &'static str) {
        tracing::info!(%peer, client = ?client, reason, "connection denied");
        self.state
            .metrics
            .denied
            .get_or_create(&DeniedLabels {
                direction: Direction::Inbound,
                peer_identity: client.map(ToString::to_string).unwrap_or_default(),
                reason,
            })
            .inc();
    }
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
