//! The sample application: `serve` answers every request with its name (a
//! backend replica; `--status 503` makes it a failing one); `frontend`
//! answers by calling another Service and saying who answered (`frontend-0
//! -> backend-2`). Plain HTTP/1.1 over TCP:
//! the mesh adds mutual TLS between the proxies, and what crosses the wire
//! is easy to recognise.
//!
//! The frontend opens a new connection for every call, so every call is
//! balanced anew by its proxy (which balances per connection).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// What a server does with a request.
#[derive(Debug, Clone)]
pub enum Role {
    /// Answers `<name>\n` with `status` (200, or an error to play a
    /// failing replica).
    Backend { status: StatusCode },
    /// Calls `GET /` on `backend` and answers `<name> -> <its answer>\n`,
    /// or 502 `<name> -> error: …` when that fails.
    Frontend {
        backend: SocketAddr,
        timeout: Duration,
    },
}

struct App {
    name: String,
    role: Role,
}

/// Serves forever on `listen`.
pub async fn serve(listen: SocketAddr, name: String, role: Role) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let app = Arc::new(App { name, role });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("weft-e2e-app: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // As servers commonly do (Go's net/http, Node): without it, small
        // writes on a connection with data in flight wait for the peer's
        // ACK (Nagle), which a multiplexed HTTP/2 connection always has.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            // HTTP/1.1 and HTTP/2 (prior knowledge), told apart by the
            // first bytes: the benchmark's backend serves both.
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("weft-e2e-app: connection: {e}");
            }
        });
    }
}

impl App {
    async fn handle(&self, _req: Request<Incoming>) -> Response<Full<Bytes>> {
        let name = &self.name;
        match &self.role {
            Role::Backend { status } => text(*status, format!("{name}\n")),
            Role::Frontend { backend, timeout } => {
                match tokio::time::timeout(*timeout, get(*backend, "/")).await {
                    Ok(Ok((status, body))) if (200..300).contains(&status) => {
                        text(StatusCode::OK, format!("{name} -> {}\n", body.trim()))
                    }
                    Ok(Ok((status, body))) => text(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "{name} -> error: {backend} answered {status}: {}\n",
                            body.trim()
                        ),
                    ),
                    Ok(Err(e)) => text(
                        StatusCode::BAD_GATEWAY,
                        format!("{name} -> error: calling {backend}: {e}\n"),
                    ),
                    Err(_) => text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("{name} -> error: {backend} did not answer within {timeout:?}\n"),
                    ),
                }
            }
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// An HTTP/1.1 client connection that can carry many requests.
pub struct Connection {
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { addr, sender })
    }

    /// `GET path`; returns the status and the body.
    pub async fn get(&mut self, path: &str) -> io::Result<(u16, String)> {
        self.sender.ready().await.map_err(io::Error::other)?;
        let request = Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Empty::new())
            .map_err(io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `GET path` from `addr` on a new connection; returns the status and the body.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    Connection::open(addr).await?.get(path).await
}
