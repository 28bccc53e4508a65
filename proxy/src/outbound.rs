//! The outbound side: connections the application opens, redirected here.
//!
//! A destination in the routing table is a meshed Service: pick a ready
//! endpoint (round-robin), connect, upgrade to mesh TLS when the endpoint has
//! an identity and check the server is exactly that identity, then relay. A
//! failed attempt moves on to the next endpoint. Anything else passes
//! through to where it was going, untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::metrics::{Direction, Failures, count};
use crate::orig_dst::OriginalDst;
use crate::relay::{conn_labels, connect, relay};
use crate::state::State;
use crate::table::{Endpoint, Target};
use crate::tls;

/// At most this many endpoints are tried for one connection.
const MAX_ATTEMPTS: usize = 3;

pub struct Outbound {
    pub state: Arc<State>,
    pub orig_dst: Arc<dyn OriginalDst>,
    /// Used when the Service's policy sets none.
    pub connect_timeout: Duration,
    /// This pod's address: an endpoint there is this pod itself, reached
    /// directly (the proxy's own traffic is not intercepted, so mesh TLS to
    /// it would land on the app).
    pub pod_ip: Option<std::net::IpAddr>,
}

/// An upstream connection, plain or mesh TLS.
enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Outbound {
    pub async fn handle(self: Arc<Self>, client: TcpStream) {
        let dst = match self.orig_dst.original_dst(&client) {
            Ok(dst) => dst,
            Err(e) => {
                tracing::debug!(error = %e, "no original destination; closing");
                return;
            }
        };
        // A connection made straight to our port (not redirected) would loop.
        if client.local_addr().ok() == Some(dst) {
            tracing::warn!(%dst, "connection addressed to the proxy itself; closing");
            return;
        }
        let routes = self.state.routes.load_full();
        match routes.as_ref().and_then(|r| r.value.target(&dst)) {
            Some(target) => self.mesh(client, target).await,
            None => self.passthrough(client, dst).await,
        }
    }

    async fn passthrough(&self, client: TcpStream, dst: SocketAddr) {
        match connect(dst, self.connect_timeout).await {
            Ok(upstream) => {
                let labels = conn_labels(Direction::Outbound, None);
                relay(&self.state.metrics, labels, client, upstream).await;
            }
            Err(e) => {
                self.count_failure(&self.state.metrics.connect_failures, "connect");
                tracing::debug!(%dst, error = %e, "passthrough connect failed");
            }
        }
    }

    async fn mesh(&self, client: TcpStream, target: &Target) {
        let timeout = target.connect_timeout.unwrap_or(self.connect_timeout);
        for endpoint in target.pick_order().take(MAX_ATTEMPTS) {
            match self.establish(endpoint, timeout).await {
                Ok(Upstream::Plain(s)) => {
                    let labels = conn_labels(Direction::Outbound, None);
                    return relay(&self.state.metrics, labels, client, s).await;
                }
                Ok(Upstream::Tls(s)) => {
                    let labels = conn_labels(Direction::Outbound, endpoint.identity.as_ref());
                    return relay(&self.state.metrics, labels, client, s).await;
                }
                Err(reason) => {
                    tracing::warn!(
                        target = %target.name,
                        endpoint = %endpoint.addr,
                        reason,
                        "endpoint failed; trying the next"
                    );
                }
            }
        }
        tracing::warn!(target = %target.name, "no endpoint could be reached; closing");
    }

    /// Connects to `endpoint` and, if it is meshed, completes mesh TLS and
    /// checks its identity. Errors are counted here and returned as a reason.
    async fn establish(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<Upstream, &'static str> {
        let m = &self.state.metrics;
        let stream = connect(endpoint.addr, timeout).await.map_err(|_| {
            self.count_failure(&m.connect_failures, "connect");
            "connect"
        })?;
        let Some(expected) = &endpoint.identity else {
            return Ok(Upstream::Plain(stream));
        };
        if Some(endpoint.addr.ip()) == self.pod_ip {
            return Ok(Upstream::Plain(stream));
        }
        let Some(identity) = self.state.identity.load_full() else {
            self.count_failure(&m.tls_failures, "no_identity");
            return Err("no_identity");
        };
        let connector = TlsConnector::from(identity.value.client.clone());
        let name = ServerName::IpAddress(endpoint.addr.ip().into());
        let tls = tokio::time::timeout(timeout, connector.connect(name, stream))
            .await
            .map_err(|_| "handshake_timeout")
            .and_then(|r| r.map_err(|_| "handshake"))
            .inspect_err(|reason| self.count_failure(&m.tls_failures, reason))?;
        let peer = tls::peer_identity(tls.get_ref().1.peer_certificates());
        if peer.as_ref() != Some(expected) {
            self.count_failure(&m.tls_failures, "identity_mismatch");
            tracing::error!(
                endpoint = %endpoint.addr,
                %expected,
                found = ?peer,
                "server identity does not match the routing table"
            );
            return Err("identity_mismatch");
        }
        Ok(Upstream::Tls(Box::new(tls)))
    }

    fn count_failure(&self, family: &Failures, reason: &'static str) {
        count(family, Direction::Outbound, reason);
    }
}
