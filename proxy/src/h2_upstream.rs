//! HTTP/2 to one upstream over one shared connection. HTTP/2 multiplexes,
//! so a pool is bookkeeping each request pays for without use: hyper-util's
//! legacy client hashed a pool key, checked a connection out and moved the
//! request through its nested futures, 8.5% of the outbound proxy's
//! instructions per HTTP/2 request. Here a request clones the connection's
//! handle and sends.
//!
//! The connection is made on first use by whichever request gets there
//! first; requests arriving meanwhile wait for that attempt and share its
//! outcome, so an endpoint that does not answer costs one connect timeout,
//! not one per waiting request. If the request making the attempt goes away
//! (cancelled, timed out), a waiting one takes the attempt over. The next
//! request after a failed attempt, or after the connection closed, makes a
//! new one. A request the connection closed under before it was sent
//! (GOAWAY, the peer restarting) goes once more on a new connection, as
//! hyper-util's client did: it never reached the upstream, so this is safe
//! whatever the method.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::OnceCell;

use crate::upstream::{ConnectError, Connector, RequestBody, SendError};

type Sender = SendRequest<RequestBody>;

/// One attempt at a connection, and its outcome once there is one.
type Attempt = OnceCell<Result<Sender, ConnectError>>;

pub struct H2Upstream {
    connector: Connector,
    /// The latest attempt: in progress, failed, or an open connection.
    attempt: ArcSwap<Attempt>,
}

impl H2Upstream {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            attempt: ArcSwap::from_pointee(Attempt::new()),
        }
    }

    /// Sends `req` and waits for the response head. The paths that wait
    /// for a connection are boxed: inline, their futures (the handshake's
    /// among them) would make every request's future several kilobytes.
    pub async fn request(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let (mut sender, opened) = match self.open() {
            Some(sender) => (sender, false),
            None => Box::pin(self.sender()).await?,
        };
        let mut failed = match sender.try_send_request(req).await {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        match failed.take_message() {
            // Never sent, on a connection that had served before: it closed
            // under the request. A connection this request just opened is
            // not tried again: the upstream is failing, not closing.
            Some(req) if !opened => Box::pin(self.resend(req)).await,
            _ => Err(SendError::failed(failed.into_error())),
        }
    }

    async fn resend(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, SendError> {
        let (mut sender, _) = self.sender().await?;
        sender.send_request(req).await.map_err(SendError::failed)
    }

    /// A handle on the open connection, if there is one.
    fn open(&self) -> Option<Sender> {
        match self.attempt.load().get() {
            Some(Ok(sender)) if !sender.is_closed() => Some(sender.clone()),
            _ => None,
        }
    }

    /// A handle on an open connection, and whether this call opened it.
    async fn sender(&self) -> Result<(Sender, bool), SendError> {
        let attempt = self.usable_attempt();
        let mut opened = false;
        let outcome = attempt
            .get_or_init(|| {
                opened = true;
                self.connect()
            })
            .await;
        match outcome {
            Ok(sender) => Ok((sender.clone(), opened)),
            Err(e) => Err(SendError::Connect(e.0)),
        }
    }

    /// The latest attempt if it is in progress or its connection open;
    /// otherwise a new one, installed unless another request installed
    /// one first (then that one).
    fn usable_attempt(&self) -> Arc<Attempt> {
        let current = self.attempt.load_full();
        let spent = match current.get() {
            None => false,
            Some(Ok(sender)) => sender.is_closed(),
            Some(Err(_)) => true,
        };
        if !spent {
            return current;
        }
        let fresh = Arc::new(Attempt::new());
        let found = self.attempt.compare_and_swap(&current, fresh.clone());
        if Arc::ptr_eq(&found, &current) {
            fresh
        } else {
            Arc::clone(&found)
        }
    }

    /// Opens a connection (TCP, mesh TLS when the upstream has an
    /// identity) and starts HTTP/2 on it; the connection runs in a task of
    /// its own until the upstream closes it or every handle is dropped.
    async fn connect(&self) -> Result<Sender, ConnectError> {
        let io = self.connector.dial().await?;
        let (sender, conn) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "HTTP/2 handshake with the upstream failed");
                ConnectError("http2 handshake")
            })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt, Either, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::metrics::Direction;
    use crate::state::State;
    use crate::upstream::{HttpClient, HttpVersion, Upstreams};

    /// An HTTP/2 server answering `ok`; counts the connections it accepts.
    /// With `close_after_first`, each connection starts a graceful shutdown
    /// (GOAWAY) once its first request arrives.
    async fn server(listener: TcpListener, close_after_first: bool) -> Arc<AtomicUsize> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, close_after_first));
            }
        });
        accepted
    }

    /// [`server`] on a fresh port of 127.0.0.1.
    async fn serving(close_after_first: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, server(listener, close_after_first).await)
    }

    async fn serve(stream: tokio::net::TcpStream, close_after_first: bool) {
        let first = Arc::new(Notify::new());
        let notify = first.clone();
        let service = hyper::service::service_fn(move |_req| {
            notify.notify_one();
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        if close_after_first {
            tokio::select! {
                _ = conn.as_mut() => return,
                () = first.notified() => conn.as_mut().graceful_shutdown(),
            }
        }
        let _ = conn.await;
    }

    /// The HTTP/2 client of an upstream at `addr` (plaintext).
    fn client(state: &Arc<State>, addr: SocketAddr) -> Arc<H2Upstream> {
        let upstream = Upstreams::new(Direction::Outbound).get(addr, None);
        match upstream.client(HttpVersion::Http2, state, Duration::from_secs(5)) {
            HttpClient::Http2(h2) => h2.clone(),
            HttpClient::Http1(_) => unreachable!("asked for HTTP/2"),
        }
    }

    /// Sends a GET and returns the status and body.
    async fn get(h2: &H2Upstream, addr: SocketAddr) -> Result<(u16, Bytes), SendError> {
        let req = Request::get(format!("http://{addr}/"))
            .body(Either::Right(Full::new(Bytes::new())))
            .map_err(SendError::failed)?;
        let response = h2.request(req).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await;
        Ok((status, body.map_err(SendError::failed)?.to_bytes()))
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_connection() {
        let (addr, accepted) = serving(false).await;
        let state = State::new();
        let h2 = client(&state, addr);
        let all = futures::future::join_all((0..20).map(|_| get(&h2, addr))).await;
        for response in all {
            assert_eq!(response.unwrap(), (200, Bytes::from_static(b"ok")));
        }
        assert_eq!(get(&h2, addr).await.unwrap().0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_upstream_is_replaced() {
        let (addr, accepted) = serving(true).await;
        let state = State::new();
        let h2 = client(&state, addr);
        for _ in 0..4 {
            assert_eq!(get(&h2, addr).await.unwrap().0, 200);
        }
        // Hyper's graceful shutdown admits streams the client opens before
        // the final GOAWAY, so a connection may serve two of them.
        assert!(accepted.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test]
    async fn waiting_requests_share_a_failed_attempt_and_the_next_one_tries_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let state = State::new();
        let h2 = client(&state, addr);
        let all = futures::future::join_all((0..10).map(|_| get(&h2, addr))).await;
        for response in all {
            assert!(matches!(
                response,
                Err(SendError::Connect("connect refused"))
            ));
        }
        let refused = "weft_connect_failures_total{direction=\"outbound\",reason=\"connect\"} 1";
        assert!(state.metrics.encode().contains(refused));

        let listener = TcpListener::bind(addr).await.unwrap();
        let accepted = server(listener, false).await;
        assert_eq!(get(&h2, addr).await.unwrap().0, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
