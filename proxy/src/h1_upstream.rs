//! HTTP/1.1 to one upstream: a pool of keep-alive connections, each serving
//! one request at a time. hyper-util's legacy client did this for us at a
//! cost of about 10% of each proxy's instructions per request: it hashed
//! a pool key (SipHash) on checkout and on return, raced a checkout against
//! a lazy connect, and spawned a task per request to return the connection
//! once its response had been read. Here the pool belongs to the upstream,
//! so there is no key, and the connection itself says when it is free: a
//! connection in use holds its pool slot as the waker hyper wakes when the
//! connection is ready for the next request, and that wake puts the slot
//! back. Nothing is spawned or allocated per request.
//!
//! The connection freed last is used first, so after a burst the extra
//! connections stay unused and are closed once idle for [`IDLE_TIMEOUT`]:
//! by the pool's next use, or by a reaper task that runs while any
//! connection is free (one timer per upstream, armed for the oldest). An
//! upstream no table lists any more is dropped with its connections.
//!
//! A request a reused connection closed under before it was sent (the
//! upstream closed an idle keep-alive connection, and we had not read the
//! close yet) goes once more on a new connection, as hyper-util's client
//! did: it never reached the upstream, so this is safe whatever the method.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::upstream::{Connector, RequestBody, SendError, UpstreamBody};

type Sender = SendRequest<RequestBody>;

/// How long an unused connection is kept open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct H1Upstream {
    connector: Connector,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Connections ready for a request, the one freed last at the end.
    free: Vec<Idle>,
    /// Whether the reaper runs: from the first connection freed until
    /// none is left free.
    reaping: bool,
}

impl Pool {
    /// Closes the connections idle for [`IDLE_TIMEOUT`] or longer: the
    /// oldest, at the front.
    fn close_expired(&mut self, now: Instant) {
        let expired = self.free.iter();
        let expired = expired.take_while(|i| now.duration_since(i.since) >= IDLE_TIMEOUT);
        let expired = expired.count();
        self.free.drain(..expired);
    }
}

struct Idle {
    slot: Arc<Slot>,
    since: Instant,
}

/// One connection's handle. While the connection serves a request, only
/// hyper holds the slot (as the waker to wake when the connection is
/// ready again, or closed).
struct Slot {
    sender: Mutex<Sender>,
    /// Weak: a dropped upstream closes its connections once they are free.
    pool: Weak<H1Upstream>,
}

impl H1Upstream {
    pub fn new(connector: Connector) -> Self {
        Self {
            connector,
            pool: Mutex::default(),
        }
    }

    /// Sends `req` and waits for the response head. Connecting is boxed:
    /// inline, its future would make every request's future larger.
    pub async fn request(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        origin_form(&mut req);
        let (slot, reused) = match self.checkout() {
            Some(slot) => (slot, true),
            None => (Box::pin(self.connect()).await?, false),
        };
        let mut failed = match slot.send(req).await {
            Ok(response) => return Ok(response.map(Either::Left)),
            Err(failed) => failed,
        };
        match failed.take_message() {
            // Never sent, on a connection that had served before: it closed
            // under the request. A connection this request just opened is
            // not tried again: the upstream is failing, not closing.
            Some(req) if reused => Box::pin(self.resend(req)).await,
            _ => Err(SendError::failed(failed.into_error())),
        }
    }

    async fn resend(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let slot = self.connect().await?;
        match slot.send(req).await {
            Ok(response) => Ok(response.map(Either::Left)),
            Err(e) => Err(SendError::failed(e.into_error())),
        }
    }

    /// The connection freed last that is still open, after closing those
    /// idle for longer than [`IDLE_TIMEOUT`].
    fn checkout(&self) -> Option<Arc<Slot>> {
        let mut pool = self.lock_pool();
        pool.close_expired(Instant::now());
        while let Some(Idle { slot, .. }) = pool.free.pop() {
            if slot.lock().is_ready() {
                return Some(slot);
            }
        }
        None
    }

    /// Puts a freed connection back, unless it closed, and starts the
    /// reaper if it is not running.
    fn release(self: Arc<Self>, slot: Arc<Slot>) {
        if !slot.lock().is_ready() {
            return;
        }
        let since = Instant::now();
        let mut pool = self.lock_pool();
        pool.free.push(Idle { slot, since });
        if !pool.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            pool.reaping = true;
            runtime.spawn(reap(Arc::downgrade(&self)));
        }
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a connection (TCP, mesh TLS when the upstream has an
    /// identity) and starts HTTP/1.1 on it; the connection runs in a task of
    /// its own, upgrades included, until either side closes it.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Slot>, SendError> {
        let io = self
            .connector
            .dial()
            .await
            .map_err(|e| SendError::Connect(e.0))?;
        let handshake = Builder::new().handshake(TokioIo::new(io));
        let (sender, conn) = handshake.await.map_err(|e| {
            tracing::debug!(error = %e, "HTTP/1.1 handshake with the upstream failed");
            SendError::Connect("http1 handshake")
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        Ok(Arc::new(Slot {
            sender: Mutex::new(sender),
            pool: Arc::downgrade(self),
        }))
    }
}

/// Closes connections as they pass [`IDLE_TIMEOUT`] unused, sleeping
/// until the oldest free one would; ends when none is left free (the next
/// release starts it again) or the upstream is dropped.
async fn reap(upstream: Weak<H1Upstream>) {
    loop {
        let next = {
            let Some(upstream) = upstream.upgrade() else {
                return;
            };
            let mut pool = upstream.lock_pool();
            pool.close_expired(Instant::now());
            let Some(oldest) = pool.free.first() else {
                pool.reaping = false;
                return;
            };
            oldest.since + IDLE_TIMEOUT
        };
        tokio::time::sleep_until(next).await;
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Sender> {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `req` to the connection and has hyper wake this slot when the
    /// connection is ready for another request: once the response has been
    /// read to its end.
    fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>> + use<>
    {
        let waker = Waker::from(Arc::clone(self));
        let mut sender = self.lock();
        let sent = sender.try_send_request(req);
        let ready = sender.poll_ready(&mut Context::from_waker(&waker));
        drop(sender);
        // Ready already would mean the request was not taken; a closed
        // connection (an error) is left to drop with its last handle.
        if let Poll::Ready(Ok(())) = ready {
            waker.wake();
        }
        sent
    }
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        if let Some(pool) = self.pool.upgrade() {
            pool.release(self);
        }
    }
}

/// Sends an absolute-form request (as a client may) in origin-form, with
/// the URI's authority as its `Host` when it has none: what an origin
/// server expects from a proxy. CONNECT keeps its authority-form.
fn origin_form(req: &mut Request<RequestBody>) {
    if req.uri().scheme().is_none() || req.method() == Method::CONNECT {
        return;
    }
    if !req.headers().contains_key(HOST) {
        let host = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        if let Some(host) = host {
            req.headers_mut().insert(HOST, host);
        }
    }
    let path = req.uri().path_and_query().cloned();
    let path = path.unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::metrics::Direction;
    use crate::state::State;
    use crate::upstream::{HttpClient, HttpVersion, Upstreams};

    /// Connections a test server accepted, and how many of them ended.
    #[derive(Default)]
    struct Counts {
        accepted: AtomicUsize,
        ended: AtomicUsize,
    }

    impl Counts {
        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn ended(&self) -> usize {
            self.ended.load(Ordering::SeqCst)
        }
    }

    /// An HTTP/1.1 server on a fresh port of 127.0.0.1 answering each
    /// request with its `Host` and URI, keeping connections alive.
    async fn serving() -> (SocketAddr, Arc<Counts>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let counts = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| {
                        let host = req.headers().get(HOST).cloned();
                        let host = host.map(|h| h.to_str().unwrap_or("?").to_owned());
                        let echo = format!("{} {}", host.unwrap_or_default(), req.uri());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(echo)))) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = conn.await;
                    counts.ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, counts)
    }

    /// The HTTP/1.1 client of an upstream at `addr` (plaintext), and the
    /// upstream, which must outlive it.
    fn client(state: &Arc<State>, addr: SocketAddr) -> Arc<H1Upstream> {
        let upstream = Upstreams::new(Direction::Outbound).get(addr, None);
        match upstream.client(HttpVersion::Http1, state, Duration::from_secs(5)) {
            HttpClient::Http1(h1) => h1.clone(),
            HttpClient::Http2(_) => unreachable!("asked for HTTP/1.1"),
        }
    }

    /// Sends a GET for `uri` and returns the status and body.
    async fn get(h1: &Arc<H1Upstream>, uri: &str) -> Result<(u16, Bytes), SendError> {
        let req = Request::get(uri)
            .header(HOST, "svc.test")
            .body(Either::Right(Full::new(Bytes::new())))
            .map_err(SendError::failed)?;
        let response = h1.request(req).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await;
        Ok((status, body.map_err(SendError::Failed)?.to_bytes()))
    }

    fn ok(body: &'static str) -> (u16, Bytes) {
        (200, Bytes::from_static(body.as_bytes()))
    }

    /// Waits (up to 10 s) until `done` holds.
    async fn eventually(done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not met within 10 s");
    }

    #[tokio::test]
    async fn a_freed_connection_serves_the_next_request() {
        let (addr, counts) = serving().await;
        let state = State::new();
        let h1 = client(&state, addr);
        for _ in 0..5 {
            assert_eq!(get(&h1, "/a").await.unwrap(), ok("svc.test /a"));
        }
        assert_eq!(counts.accepted(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_free_it() {
        let (addr, counts) = serving().await;
        let state = State::new();
        let h1 = client(&state, addr);
        let wave = || futures::future::join_all((0..10).map(|_| get(&h1, "/")));
        for response in wave().await {
            assert_eq!(response.unwrap(), ok("svc.test /"));
        }
        assert_eq!(counts.accepted(), 10);
        for response in wave().await {
            assert_eq!(response.unwrap(), ok("svc.test /"));
        }
        assert_eq!(counts.accepted(), 10);
    }

    #[tokio::test]
    async fn an_absolute_form_request_goes_in_origin_form_with_its_host() {
        let (addr, _) = serving().await;
        let state = State::new();
        let h1 = client(&state, addr);
        let req = Request::get("http://named.test:8080/p?q=1")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let body = h1.request(req).await.unwrap().into_body().collect().await;
        assert_eq!(body.unwrap().to_bytes(), "named.test:8080 /p?q=1");
        // A Host of its own is kept.
        assert_eq!(
            get(&h1, "http://named.test/").await.unwrap(),
            ok("svc.test /")
        );
    }

    #[tokio::test]
    async fn a_connection_unused_for_the_idle_timeout_is_closed_unasked() {
        let (addr, counts) = serving().await;
        let state = State::new();
        let h1 = client(&state, addr);
        let idle_for = |d: Duration| async move {
            tokio::time::pause();
            tokio::time::advance(d).await;
            tokio::time::resume();
        };
        assert_eq!(get(&h1, "/").await.unwrap().0, 200);
        // Just short of the timeout the connection is still there...
        idle_for(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert_eq!(get(&h1, "/").await.unwrap().0, 200);
        assert_eq!(counts.accepted(), 1);
        // ...and past it, counted from its last use, it is closed with no
        // request to notice.
        idle_for(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        eventually(|| counts.ended() == 1).await;
        assert_eq!(counts.accepted(), 1);
        // The next request opens a new one.
        assert_eq!(get(&h1, "/").await.unwrap().0, 200);
        assert_eq!(counts.accepted(), 2);
    }

    #[tokio::test]
    async fn a_dropped_upstream_closes_its_idle_connections() {
        let (addr, counts) = serving().await;
        let state = State::new();
        let h1 = client(&state, addr);
        let both = futures::future::join(get(&h1, "/"), get(&h1, "/")).await;
        assert_eq!((both.0.unwrap().0, both.1.unwrap().0), (200, 200));
        assert_eq!(counts.ended(), 0);
        drop(h1);
        eventually(|| counts.ended() == 2).await;
    }

    /// A server that answers one request per connection and then closes it
    /// without saying so (no `Connection: close`), as one whose keep-alive
    /// timeout passed would. (Whether a request can be handed to such a
    /// connection before its close is read, and then go again on a new one,
    /// is a race between threads; on one thread the close is read first.)
    async fn closing_after_each_response() -> (SocketAddr, Arc<Counts>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer).await;
            }
        });
        (addr, counts)
    }

    #[tokio::test]
    async fn requests_survive_an_upstream_closing_each_connection() {
        let (addr, counts) = closing_after_each_response().await;
        let state = State::new();
        let h1 = client(&state, addr);
        for _ in 0..20 {
            assert_eq!(get(&h1, "/").await.unwrap(), ok("ok"));
        }
        assert_eq!(counts.accepted(), 20);
    }

    #[tokio::test]
    async fn a_refused_connect_says_so() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let state = State::new();
        let h1 = client(&state, addr);
        assert!(matches!(
            get(&h1, "/").await,
            Err(SendError::Connect("connect refused"))
        ));
    }

    #[test]
    fn connect_keeps_its_authority_form() {
        let mut req: Request<RequestBody> = Request::connect("named.test:443")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        origin_form(&mut req);
        assert_eq!(req.uri(), "named.test:443");
        assert!(!req.headers().contains_key(HOST));
    }
}
