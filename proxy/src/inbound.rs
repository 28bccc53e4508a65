//! The inbound side: connections to the pod, redirected here.
//!
//! A connection that opens with a ClientHello offering the mesh's ALPN
//! protocol is mesh TLS: it is terminated with a required, verified client
//! certificate, and the client's identity is authorized. Anything else —
//! plaintext, or TLS that is not ours, such as an HTTPS probe — is passed
//! through as bytes, only where the port's mTLS mode is permissive. An allowed connection is relayed to
//! the application on loopback at the original port; a denied one is closed
//! and counted, never forwarded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use weft_api::SpiffeId;

use weft_api::names::MESH_ALPN;

use crate::authz::authorize;
use crate::client_hello::{self, Hello};
use crate::metrics::{DeniedLabels, Direction, count};
use crate::orig_dst::OriginalDst;
use crate::relay::{conn_labels, connect, relay};
use crate::state::State;
use crate::tls;

/// The largest first record we wait for: a TLS record's maximum plus header.
const MAX_HELLO: usize = 16 * 1024 + 5;
/// How long to wait before peeking again at a ClientHello split across
/// segments (rare: our proxies' hellos fit one segment).
const PEEK_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

pub struct Inbound {
    pub state: Arc<State>,
    pub orig_dst: Arc<dyn OriginalDst>,
    /// How long to wait for the client's first byte before treating the
    /// connection as plaintext (a server-first protocol).
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
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
        if self.is_mesh_tls(&stream).await {
            self.mesh_tls(stream, peer, dst).await;
        } else {
            // Plaintext, or TLS that is not ours (an HTTPS probe, a client
            // outside the mesh): passed to the app as bytes if the port's
            // mode allows what is not mesh TLS.
            self.admit(stream, peer, dst, None).await;
        }
    }

    /// Whether the client opens with a ClientHello offering the mesh's ALPN
    /// protocol. Waits up to the detect timeout for the client's first
    /// record; a client that sends nothing first (a server-first protocol)
    /// is not mesh TLS.
    async fn is_mesh_tls(&self, stream: &TcpStream) -> bool {
        let deadline = tokio::time::Instant::now() + self.detect_timeout;
        let mut buf = vec![0u8; 512];
        loop {
            let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
            let n = match peeked {
                Ok(Ok(n)) if n > 0 => n,
                _ => return false,
            };
            match client_hello::parse(&buf[..n], MESH_ALPN) {
                Hello::ClientHello { offers } => return offers,
                Hello::Other => return false,
                Hello::Incomplete(needed) if needed > MAX_HELLO => return false,
                Hello::Incomplete(needed) => {
                    if needed > buf.len() {
                        buf.resize(needed, 0);
                    } else if tokio::time::Instant::now() >= deadline {
                        return false;
                    } else {
                        // More of the record is on its way: peek again shortly.
                        tokio::time::sleep(PEEK_RETRY).await;
                    }
                }
            }
        }
    }

    async fn mesh_tls(&self, stream: TcpStream, peer: SocketAddr, dst: SocketAddr) {
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
        let client = tls::peer_identity(tls.get_ref().1.peer_certificates());
        if client.is_none() {
            count(&m.tls_failures, Direction::Inbound, "no_client_identity");
            return;
        }
        self.admit(tls, peer, dst, client).await;
    }

    /// Authorizes `client` (None for plaintext) and relays to the app.
    async fn admit<S>(&self, stream: S, peer: SocketAddr, dst: SocketAddr, client: Option<SpiffeId>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let m = &self.state.metrics;
        let Some(routes) = self.state.routes.load_full() else {
            self.deny(peer, client.as_ref(), "no_routes");
            return;
        };
        let table = &routes.value;
        let verdict = table
            .inbound_policies(dst.port())
            .iter()
            .try_for_each(|policy| authorize(policy, &table.trust_domain, client.as_ref()));
        if let Err(denial) = verdict {
            self.deny(peer, client.as_ref(), denial.as_str());
            return;
        }
        let app = SocketAddr::new(loopback(dst.ip()), dst.port());
        match connect(app, self.connect_timeout).await {
            Ok(upstream) => {
                let labels = conn_labels(Direction::Inbound, client.as_ref());
                relay(m, labels, stream, upstream).await;
            }
            Err(e) => {
                count(&m.connect_failures, Direction::Inbound, "connect");
                tracing::info!(%app, error = %e, "application refused the connection");
            }
        }
    }

    fn deny(&self, peer: SocketAddr, client: Option<&SpiffeId>, reason: &'static str) {
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
