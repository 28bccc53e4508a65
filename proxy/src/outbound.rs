//! The outbound side: connections the application opens, redirected here.
//!
//! A destination in the routing table is a meshed Service. Its connections
//! are sniffed: HTTP is proxied request by request (`outbound_http`);
//! anything else — an opaque port, bytes that are not HTTP, a client that
//! waits for the server to speak first — is relayed as bytes to one ready
//! endpoint (round-robin), over mesh TLS when the endpoint has an identity,
//! the server checked to be exactly that identity; a failed attempt moves
//! on to the next endpoint. Anything else passes through to where it was
//! going, untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::metrics::{Direction, PortLabels, count};
use crate::orig_dst::OriginalDst;
use crate::outbound_http::serve_outbound;
use crate::relay::{conn_labels, connect, relay};
use crate::sniff::{OpaquePorts, Sniffed, sniff};
use crate::state::State;
use crate::table::Target;
use crate::tls::MeshProtocol;
use crate::upstream::{Conn, establish};

/// At most this many endpoints are tried for one connection.
const MAX_ATTEMPTS: usize = 3;

pub struct Outbound {
    pub state: Arc<State>,
    pub orig_dst: Arc<dyn OriginalDst>,
    /// Used when the Service's policy sets none.
    pub connect_timeout: Duration,
    /// How long to wait for the application's first bytes before treating
    /// the connection as opaque (a server-first protocol).
    pub detect_timeout: Duration,
    /// Ports never inspected, whatever the table says.
    pub opaque_ports: OpaquePorts,
    pub access_log: AccessLog,
    /// Asks HTTP connections to finish their requests and close.
    pub shutdown: CancellationToken,
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
        let Some(target) = routes.as_ref().and_then(|r| r.value.target(&dst)).cloned() else {
            return self.passthrough(client, dst).await;
        };
        drop(routes);
        if target.is_opaque() || self.opaque_ports.contains(dst.port()) {
            return self.mesh_tcp(client, &target).await;
        }
        match sniff(&client, self.detect_timeout).await {
            Sniffed::Http(version) => serve_outbound(self, client, dst, version).await,
            Sniffed::Opaque => self.mesh_tcp(client, &target).await,
            Sniffed::Timeout => {
                self.state
                    .metrics
                    .detect_timeouts
                    .get_or_create(&PortLabels {
                        direction: Direction::Outbound,
                        port: dst.port(),
                    })
                    .inc();
                self.mesh_tcp(client, &target).await;
            }
        }
    }

    async fn passthrough(&self, client: TcpStream, dst: SocketAddr) {
        match connect(dst, self.connect_timeout).await {
            Ok(upstream) => {
                let labels = conn_labels(Direction::Outbound, None);
                relay(&self.state.metrics, labels, client, upstream, None).await;
            }
            Err(e) => {
                count(
                    &self.state.metrics.connect_failures,
                    Direction::Outbound,
                    "connect",
                );
                tracing::debug!(%dst, error = %e, "passthrough connect failed");
            }
        }
    }

    /// Relays the connection as bytes to one endpoint of the target (a
    /// traffic split applies per connection), trying the next endpoint when
    /// one cannot be reached.
    async fn mesh_tcp(&self, client: TcpStream, target: &Target) {
        let backend = target.backend();
        let timeout = backend.connect_timeout.unwrap_or(self.connect_timeout);
        for endpoint in backend.pick_order().take(MAX_ATTEMPTS) {
            let identity = endpoint.identity.as_ref();
            let established = establish(
                &self.state,
                Direction::Outbound,
                endpoint.addr,
                identity,
                MeshProtocol::Opaque,
                timeout,
            )
            .await;
            match established {
                Ok(upstream) => {
                    let labels = conn_labels(Direction::Outbound, identity);
                    let m = &self.state.metrics;
                    return relay::<_, Conn>(m, labels, client, upstream, target.idle_timeout)
                        .await;
                }
                Err(reason) => {
                    tracing::warn!(
                        target = %target.name,
                        endpoint = %endpoint.addr,
                        %reason,
                        "endpoint failed; trying the next"
                    );
                }
            }
        }
        tracing::warn!(target = %target.name, "no endpoint could be reached; closing");
    }
}
