//! A mock Kubernetes API server for the routes watch: HTTPS on loopback with
//! a certificate for 127.0.0.1 from its own test CA, a token file, and every
//! request handed to the test, which checks it and answers it (a JSON
//! document, or a watch stream it feeds event by event).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use weft_api::RoutesTable;

use super::ApiFlags;

pub const NS: &str = "web";
pub const LIST: &str =
    "/api/v1/namespaces/web/configmaps?fieldSelector=metadata.name%3Dweft-routes";

pub struct MockApi {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    requests: mpsc::UnboundedReceiver<Pending>,
    /// While set, connections are accepted and dropped at once.
    down: Arc<AtomicBool>,
}

/// One request the mock received, waiting for the test's answer.
pub struct Pending {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: String,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Json(StatusCode, String),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

/// The open body of a watch response; dropping it ends the watch.
pub struct WatchStream(mpsc::UnboundedSender<Bytes>);

impl WatchStream {
    /// Sends one event (one line).
    pub fn send(&self, event: Value) {
        self.send_raw(format!("{event}\n").as_bytes());
    }

    /// Sends bytes as they are, e.g. half an event.
    pub fn send_raw(&self, bytes: &[u8]) {
        let _ = self.0.send(Bytes::copy_from_slice(bytes));
    }
}

impl MockApi {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (config, ca_pem) = tls();
        std::fs::write(dir.path().join("ca.crt"), ca_pem).unwrap();
        std::fs::write(dir.path().join("token"), "token-1\n").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let down = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(listener, config, tx, down.clone()));
        Self {
            addr,
            dir,
            requests,
            down,
        }
    }

    pub fn flags(&self) -> ApiFlags {
        ApiFlags {
            url: format!("https://{}", self.addr),
            token_file: self.dir.path().join("token"),
            ca_file: self.dir.path().join("ca.crt"),
        }
    }

    /// Replaces the token, as the kubelet does when it rotates.
    pub fn rotate_token(&self, token: &str) {
        let tmp = self.dir.path().join("token.tmp");
        std::fs::write(&tmp, token).unwrap();
        std::fs::rename(tmp, self.dir.path().join("token")).unwrap();
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The next request (waiting generously for it).
    pub async fn next(&mut self) -> Pending {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("no request reached the mock API server")
            .unwrap()
    }

    /// Answers every request with `status` until `count` have been seen.
    pub async fn fail(&mut self, count: usize, status: u16) {
        for _ in 0..count {
            let req = self.next().await;
            req.json(
                status,
                &json!({"kind": "Status", "code": status, "message": "mock failure"}),
            );
        }
    }
}

impl Pending {
    pub fn path_and_query(&self) -> String {
        format!("{}?{}", self.path, self.query)
    }

    /// Checks that this is the LIST of the routes ConfigMap with `token`.
    pub fn assert_list(&self, token: &str) {
        assert_eq!(self.method, "GET");
        assert_eq!(self.path_and_query(), LIST);
        assert_eq!(self.authorization, format!("Bearer {token}"));
    }

    /// Checks that this is the WATCH from `rv` with `token`; the timeout
    /// is drawn between 5 and 10 minutes.
    pub fn assert_watch(&self, rv: &str, token: &str) {
        assert_eq!(self.method, "GET");
        let (head, timeout) = self
            .path_and_query()
            .rsplit_once("&timeoutSeconds=")
            .map(|(h, t)| (h.to_owned(), t.parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("no timeoutSeconds: {}", self.path_and_query()));
        assert_eq!(
            head,
            format!("{LIST}&watch=1&resourceVersion={rv}&allowWatchBookmarks=true")
        );
        assert!((300..600).contains(&timeout), "timeoutSeconds={timeout}");
        assert_eq!(self.authorization, format!("Bearer {token}"));
    }

    pub fn json(self, status: u16, body: &Value) {
        let status = StatusCode::from_u16(status).unwrap();
        let _ = self.reply.send(Reply::Json(status, body.to_string()));
    }

    /// Answers 200 with a body the test writes to.
    pub fn stream(self) -> WatchStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.reply.send(Reply::Stream(rx));
        WatchStream(tx)
    }
}

/// A ConfigMap holding `table` as `routes.json`.
pub fn configmap(rv: &str, table: &RoutesTable) -> Value {
    configmap_with(
        rv,
        json!({"data": {"routes.json": serde_json::to_string(table).unwrap(), "unrelated": "x"}}),
    )
}

/// A ConfigMap holding `gzip` (already compressed) as `routes.json.gz`.
pub fn configmap_gz(rv: &str, gzip: &[u8]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD.encode(gzip);
    configmap_with(rv, json!({"binaryData": {"routes.json.gz": b64}}))
}

/// A ConfigMap with the given `data`/`binaryData` fields.
pub fn configmap_with(rv: &str, fields: Value) -> Value {
    let mut cm = json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "weft-routes", "namespace": NS, "resourceVersion": rv},
    });
    for (k, v) in fields.as_object().unwrap() {
        cm[k] = v.clone();
    }
    cm
}

pub fn list(rv: &str, items: Vec<Value>) -> Value {
    json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
}

pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

pub fn gone() -> Value {
    event(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": "too old resource version", "reason": "Expired", "code": 410}),
    )
}

/// A gzip bomb: a little over `ROUTES_MAX_JSON_BYTES` of spaces, as many
/// one-MiB gzip members (cheap to make, the same to decompress).
pub fn bomb() -> Vec<u8> {
    let mib = 1024 * 1024;
    let members = weft_api::names::ROUTES_MAX_JSON_BYTES / mib + 1;
    gzip(&vec![b' '; mib]).repeat(members)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A server config for 127.0.0.1 and localhost, and its CA (PEM).
fn tls() -> (Arc<rustls::ServerConfig>, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mock apiserver CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).unwrap();

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), issuer.pem())
}

async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    requests: mpsc::UnboundedSender<Pending>,
    down: Arc<AtomicBool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        if down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let (acceptor, requests) = (acceptor.clone(), requests.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| handle(req, requests.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    requests: mpsc::UnboundedSender<Pending>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        authorization: req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        reply,
    };
    let _ = requests.send(pending);
    let response = match answer.await {
        Ok(Reply::Json(status, body)) => {
            let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
            *r.status_mut() = status;
            r
        }
        Ok(Reply::Stream(chunks)) => Response::new(Chunks(chunks).boxed()),
        Err(_) => {
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    };
    Ok(response)
}

/// A response body fed by the test, chunk by chunk.
struct Chunks(mpsc::UnboundedReceiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
