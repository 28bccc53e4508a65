//! HTTP fixtures: an app that serves HTTP/1.1 and HTTP/2 (answers with its
//! name, can be slowed down or made to fail, speaks gRPC and WebSocket-style
//! upgrades), pods running it behind a proxy, and raw hyper clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_api::routes::*;

use super::*;

/// An HTTP app on loopback.
#[derive(Clone)]
pub struct WebApp {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// Answer every plain request with this status (0: 200).
    pub fail_with: Arc<AtomicU16>,
    /// Wait this long (ms) before answering a plain request.
    pub delay_ms: Arc<AtomicU64>,
    /// The headers of every request received.
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl WebApp {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Self {
            name,
            addr: listener.local_addr().unwrap(),
            hits: Arc::default(),
            fail_with: Arc::default(),
            delay_ms: Arc::default(),
            seen: Arc::default(),
        };
        let served = app.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let app = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.answer(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        app
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn fail_with(&self, status: u16) {
        self.fail_with.store(status, Ordering::SeqCst);
    }

    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The last request's `name` header as the app saw it.
    pub fn last_seen(&self, name: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        let value = seen.last()?.get(name)?;
        Some(value.to_str().unwrap().to_owned())
    }

    async fn answer(&self, mut req: Request<Incoming>) -> Response<AppBody> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.headers().clone());
        if req.method() == http::Method::CONNECT {
            return tunnel(&mut req, StatusCode::OK);
        }
        match req.uri().path() {
            "/ws" => upgrade(&mut req),
            "/grpc" => grpc(&req),
            _ => self.plain(req).await,
        }
    }

    async fn plain(&self, req: Request<Incoming>) -> Response<AppBody> {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let body_len = req.into_body().collect().await.unwrap().to_bytes().len();
        let status = match self.fail_with.load(Ordering::SeqCst) {
            0 => StatusCode::OK,
            code => StatusCode::from_u16(code).unwrap(),
        };
        let mut response = Response::new(full(self.name));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert("x-app", HeaderValue::from_static(self.name));
        headers.insert("x-body-len", body_len.into());
        response
    }
}

pub type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(text: &'static str) -> AppBody {
    Full::new(Bytes::from_static(text.as_bytes())).boxed()
}

/// `101`, then echoes what the client sends over the upgraded connection.
fn upgrade(req: &mut Request<Incoming>) -> Response<AppBody> {
    let mut response = tunnel(req, StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    response
}

/// Answers `status`, then echoes what the client sends over the upgraded
/// connection.
fn tunnel(req: &mut Request<Incoming>, status: StatusCode) -> Response<AppBody> {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let mut io = TokioIo::new(on_upgrade.await.unwrap());
        let mut buf = [0u8; 1024];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => io.write_all(&buf[..n]).await.unwrap(),
            }
        }
    });
    let mut response = Response::new(full(""));
    *response.status_mut() = status;
    response
}

/// A gRPC answer: one message, then the status (from the request's
/// `x-grpc-status`, default 0) in trailers.
fn grpc(req: &Request<Incoming>) -> Response<AppBody> {
    let status = req
        .headers()
        .get("x-grpc-status")
        .map_or("0".to_owned(), |v| v.to_str().unwrap().to_owned());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A pod running `app` behind a proxy (`shop/cart`, inbound `policy`).
pub struct WebPod {
    pub app: WebApp,
    pub proxy: Proxy,
    pub dir: tempfile::TempDir,
}

impl WebPod {
    pub async fn start(ca: &Ca, name: &'static str, policy: InboundPolicy) -> Self {
        let app = WebApp::start(name).await;
        let dir = mounts(ca, "shop", "cart", &table("shop", 1, policy));
        let proxy = Proxy::start(ProxyConfig::new(dir.path(), "shop", "cart", app.addr)).await;
        Self { app, proxy, dir }
    }
}

/// Service `shop/<name>` at `vip:80`, detected as HTTP, served by `pods`.
pub fn web_service(name: &str, vip: &str, pods: &[&WebPod], outbound: OutboundPolicy) -> Service {
    let endpoints: Vec<_> = pods
        .iter()
        .map(|p| (p.proxy.inbound, Some(spiffe("shop", "cart"))))
        .collect();
    let mut svc = service(name, "shop", vip, &endpoints);
    svc.ports[0].protocol = Protocol::Detect;
    svc.policy.outbound = outbound;
    svc
}

/// An HTTP/1.1 connection to `addr`.
pub async fn h1(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    h1_on(TcpStream::connect(addr).await.unwrap()).await
}

/// HTTP/1.1 on a connection already open (mesh TLS, say).
pub async fn h1_on<I>(io: I) -> http1::SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 (prior knowledge) connection to `addr`.
pub async fn h2(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    h2_on(TcpStream::connect(addr).await.unwrap()).await
}

/// HTTP/2 (prior knowledge) on a connection already open.
pub async fn h2_on<I>(io: I) -> http2::SendRequest<Full<Bytes>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    sender
}

pub fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cart.shop")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A finished response: status, head and body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub async fn read(response: Response<Incoming>) -> Answer {
    let (head, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: head.status.as_u16(),
        headers: head.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// Sends `req` over an HTTP/1.1 connection and reads the whole answer.
pub async fn send1(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    sender.ready().await.unwrap();
    read(sender.send_request(req).await.unwrap()).await
}

/// `GET path` over a new HTTP/1.1 connection to `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    send1(&mut h1(addr).await, request("GET", path, "")).await
}
