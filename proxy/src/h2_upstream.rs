//! HTTP/2 to one upstream over one shared connection, with the h2 crate
//! directly. HTTP/2 multiplexes, so a pool is bookkeeping each request pays
//! for without use: hyper-util's legacy client hashed a pool key, checked a
//! connection out and moved the request through its nested futures, 8.5%
//! of the outbound proxy's instructions per HTTP/2 request. And hyper's own
//! HTTP/2 client hands each request to the connection's task through a
//! channel, spawns a task per request to wait for its response and sends
//! the response back through a oneshot channel. Here a request opens its
//! stream on a clone of the connection's handle and waits for the response
//! in its own future; only a request body still to come gets a task, to
//! stream it.
//!
//! The connection is made on first use by whichever request gets there
//! first; requests arriving meanwhile wait for that attempt and share its
//! outcome, so an endpoint that does not answer costs one connect timeout,
//! not one per waiting request. If the request making the attempt goes away
//! (cancelled, timed out), a waiting one takes the attempt over. The next
//! request after a failed attempt, or after the connection closed or was
//! told to go away (GOAWAY), makes a new one. A request the connection
//! refused before its stream was opened (GOAWAY, the peer restarting) goes
//! once more on a new connection, as hyper-util's client did: it never
//! reached the upstream, so this is safe whatever the method.
//!
//! A CONNECT stream the upstream agreed to (2xx) becomes a tunnel: see
//! [`H2Body::take_tunnel`].

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use arc_swap::ArcSwap;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Either};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::OnceCell;

use crate::upstream::{ConnectError, Connector, RequestBody, SendError, UpstreamBody};

/// hyper's HTTP/2 client defaults, which this client replaced.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// An open connection: its handle, and whether it is spent (closed, or
/// told to go away) so that the next request makes a new one.
#[derive(Clone)]
struct Open {
    sender: SendRequest<Bytes>,
    spent: Arc<AtomicBool>,
}

impl Open {
    fn is_spent(&self) -> bool {
        self.spent.load(Ordering::Relaxed)
    }
}

/// One attempt at a connection, and its outcome once there is one.
type Attempt = OnceCell<Result<Open, ConnectError>>;

/// A request that did not get a stream, and why.
struct Unsent(Request<RequestBody>, h2::Error);

impl Unsent {
    /// The error of a send that is not tried again, whichever way it failed.
    fn final_error(failed: Either<Self, SendError>) -> SendError {
        match failed {
            Either::Left(Self(_, e)) => SendError::failed(e),
            Either::Right(e) => e,
        }
    }
}

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
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (open, opened) = match self.open() {
            Some(open) => (open, false),
            None => Box::pin(self.sender()).await?,
        };
        match send(open, req).await {
            // Never sent, on a connection that had served before: it closed
            // or went away under the request. A connection this request
            // just opened is not tried again: the upstream is failing, not
            // closing.
            Err(Either::Left(Unsent(req, _))) if !opened => Box::pin(self.resend(req)).await,
            sent => sent.map_err(Unsent::final_error),
        }
    }

    async fn resend(&self, req: Request<RequestBody>) -> Result<Response<UpstreamBody>, SendError> {
        let (open, _) = self.sender().await?;
        send(open, req).await.map_err(Unsent::final_error)
    }

    /// A handle on the open connection, if there is one.
    fn open(&self) -> Option<Open> {
        match self.attempt.load().get() {
            Some(Ok(open)) if !open.is_spent() => Some(open.clone()),
            _ => None,
        }
    }

    /// A handle on an open connection, and whether this call opened it.
    async fn sender(&self) -> Result<(Open, bool), SendError> {
        let attempt = self.usable_attempt();
        let mut opened = false;
        let outcome = attempt
            .get_or_init(|| {
                opened = true;
                self.connect()
            })
            .await;
        match outcome {
            Ok(open) => Ok((open.clone(), opened)),
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
            Some(Ok(open)) => open.is_spent(),
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
    async fn connect(&self) -> Result<Open, ConnectError> {
        let io = self.connector.dial().await?;
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "HTTP/2 handshake with the upstream failed");
                ConnectError("http2 handshake")
            })?;
        let spent = Arc::new(AtomicBool::new(false));
        let ended = spent.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
            ended.store(true, Ordering::Relaxed);
        });
        Ok(Open { sender, spent })
    }
}

/// Opens a stream for `req` on `open` and waits for the response head; a
/// request body still to come is streamed by a task of its own. A request
/// that got no stream comes back (left); any other failure is final
/// (right).
async fn send(
    mut open: Open,
    req: Request<RequestBody>,
) -> Result<Response<UpstreamBody>, Either<Unsent, SendError>> {
    if let Err(e) = poll_fn(|cx| open.sender.poll_ready(cx)).await {
        open.spent.store(true, Ordering::Relaxed);
        return Err(Either::Left(Unsent(req, e)));
    }
    let (head, body) = req.into_parts();
    let connect = head.method == Method::CONNECT;
    let end = body.is_end_stream() && !connect;
    let sent = open.sender.send_request(Request::from_parts(head, ()), end);
    let (response, stream) = sent.map_err(|e| Either::Right(SendError::failed(e)))?;
    let stream = match (connect, end) {
        (true, _) => Some(stream),
        (false, false) => {
            tokio::spawn(stream_body(body, stream));
            None
        }
        (false, true) => None,
    };
    let response = response
        .await
        .map_err(|e| Either::Right(SendError::failed(e)))?;
    let tunnel = stream.filter(|_| response.status().is_success());
    Ok(response.map(|recv| Either::Right(H2Body::new(recv, tunnel))))
}

/// Streams a request body to its stream, trailers included; resets the
/// stream if the body fails.
async fn stream_body(mut body: RequestBody, mut stream: SendStream<Bytes>) {
    if let Err(e) = pump(&mut body, &mut stream).await {
        tracing::debug!(error = %e, "request body not sent in full");
        stream.send_reset(Reason::CANCEL);
    }
}

async fn pump(body: &mut RequestBody, stream: &mut SendStream<Bytes>) -> Result<(), Error> {
    loop {
        // A reset from the upstream ends the wait for the next frame.
        let frame = tokio::select! {
            biased;
            reset = poll_fn(|cx| stream.poll_reset(cx)) => {
                return Err(reset.map_or_else(Into::into, |r| h2::Error::from(r).into()));
            }
            frame = body.frame() => frame,
        };
        let Some(frame) = frame else {
            return Ok(stream.send_data(Bytes::new(), true)?);
        };
        let frame = match frame?.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                send_data(stream, data, end).await?;
                if end {
                    return Ok(());
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            return Ok(stream.send_trailers(trailers)?);
        }
    }
}

/// Sends `data` as the stream's flow control allows, ending the stream
/// with it when `end`. Capacity is reserved only for data in hand: reserved
/// ahead, it would hold back the connection's window from other streams.
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return stream.send_data(data, end);
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

/// A response body from an HTTP/2 upstream. Received data is handed back
/// to flow control as it is passed on, so the upstream sends more only as
/// fast as the client reads.
pub struct H2Body {
    /// `None` once a tunnel took the stream: the body is then empty.
    recv: Option<RecvStream>,
    data_done: bool,
    /// A CONNECT stream's sending half, until the tunnel takes it.
    tunnel: Option<SendStream<Bytes>>,
}

impl H2Body {
    fn new(recv: RecvStream, tunnel: Option<SendStream<Bytes>>) -> Self {
        Self {
            recv: Some(recv),
            data_done: false,
            tunnel,
        }
    }

    /// A CONNECT stream the upstream agreed to: both halves, for the
    /// tunnel to relay bytes through; the body is left empty.
    pub fn take_tunnel(&mut self) -> Option<(SendStream<Bytes>, RecvStream)> {
        let send = self.tunnel.take()?;
        Some((send, self.recv.take()?))
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let Some(recv) = &mut this.recv else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // The upstream ending the stream early without an error
                // (it has all it wanted) ends the body, as hyper's does.
                Some(Err(e)) if stopped_early(&e) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) if stopped_early(&e) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

/// Relays bytes between a client's upgraded connection and an HTTP/2
/// CONNECT stream (DATA frames both ways) until both directions end or
/// either fails.
pub async fn relay<C>(client: C, mut send: SendStream<Bytes>, mut recv: RecvStream)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(client);
    let up = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(TUNNEL_READ);
            if reader.read_buf(&mut buf).await? == 0 {
                return Ok::<_, Error>(send.send_data(Bytes::new(), true)?);
            }
            send_data(&mut send, buf.split().freeze(), false).await?;
        }
    };
    let down = async {
        while let Some(data) = recv.data().await {
            let data = data?;
            let _ = recv.flow_control().release_capacity(data.len());
            writer.write_all(&data).await?;
        }
        Ok::<_, Error>(writer.shutdown().await?)
    };
    // A failure either way resets the stream, which ends the other way too.
    let relayed = tokio::try_join!(up, down);
    if let Err(e) = relayed {
        tracing::debug!(error = %e, "HTTP/2 tunnel ended with an error");
        send.send_reset(Reason::CANCEL);
    }
}

/// How much a tunnel reads from its client at a time.
const TUNNEL_READ: usize = 16 * 1024;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn stopped_early(e: &h2::Error) -> bool {
    matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL))
}
#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt, Either, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};
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
        Ok((status, body.map_err(SendError::Failed)?.to_bytes()))
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

    /// An HTTP/2 server that echoes each request's body, and answers
    /// CONNECT with 200 and then echoes the tunnel's bytes.
    async fn echoing() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    if req.method() == Method::CONNECT {
                        let upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgrade.await?));
                            tokio::io::copy(&mut r, &mut w).await?;
                            w.shutdown().await?;
                            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                        });
                        return Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())));
                    }
                    let body = req.into_body().collect().await?;
                    let trailer = body.trailers().and_then(|t| t.get("x-sum").cloned());
                    let mut response = Response::new(Full::new(body.to_bytes()));
                    if let Some(sum) = trailer {
                        response.headers_mut().insert("x-got-sum", sum);
                    }
                    Ok(response)
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(conn);
            }
        });
        addr
    }

    #[tokio::test]
    async fn bodies_larger_than_every_window_go_both_ways_intact() {
        let addr = echoing().await;
        let state = State::new();
        let h2 = client(&state, addr);
        // Past the upstream's stream and connection windows (hyper's
        // server: 1 MiB each) and this client's (2 and 5 MiB): flow control
        // must be released as data is read, both ways.
        let sent: Bytes = (0..6 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let req = Request::post(format!("http://{addr}/echo"))
            .body(Either::Right(Full::new(sent.clone())))
            .unwrap();
        let response = h2.request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed.len(), sent.len());
        assert!(echoed == sent);
    }

    /// Serves HTTP/2 on a fresh port of 127.0.0.1 by passing each request,
    /// its body as received, to `h2`: what the proxies do.
    async fn relaying(h2: Arc<H2Upstream>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let h2 = h2.clone();
                async move {
                    let sent = h2.request(req.map(Either::Left)).await;
                    sent.map_err(|e| e.to_string())
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
        addr
    }

    #[tokio::test]
    async fn a_streamed_request_body_arrives_with_its_trailers() {
        let upstream = echoing().await;
        let state = State::new();
        let relay = relaying(client(&state, upstream)).await;
        let stream = tokio::net::TcpStream::connect(relay).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("abc"));
        let frames = [
            Frame::data(Bytes::from_static(b"part one, ")),
            Frame::data(Bytes::from_static(b"part two")),
            Frame::trailers(trailers),
        ];
        let body = http_body_util::StreamBody::new(futures::stream::iter(
            frames.map(Ok::<_, std::convert::Infallible>),
        ));
        let req = Request::post(format!("http://{upstream}/echo"))
            .body(body)
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-got-sum"], "abc");
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, "part one, part two");
    }

    #[tokio::test]
    async fn an_agreed_connect_stream_becomes_a_tunnel() {
        let addr = echoing().await;
        let state = State::new();
        let h2 = client(&state, addr);
        let req = Request::connect("named.test:443")
            .version(http::Version::HTTP_2)
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap();
        let mut response = h2.request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let Either::Right(body) = response.body_mut() else {
            panic!("an HTTP/2 response has an HTTP/2 body");
        };
        let (send, recv) = body.take_tunnel().expect("a CONNECT stream agreed to");
        assert!(response.body().is_end_stream());
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(relay(theirs, send, recv));
        let (mut r, mut w) = tokio::io::split(ours);
        for message in [&b"through"[..], b"and back"] {
            w.write_all(message).await.unwrap();
            let mut echoed = vec![0; message.len()];
            r.read_exact(&mut echoed).await.unwrap();
            assert_eq!(echoed, message);
        }
        // Our end closing ends the stream; the echo's end closes ours.
        w.shutdown().await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
