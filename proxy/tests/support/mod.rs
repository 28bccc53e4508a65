//! Test fixtures: the e2e crate's test CA and kubelet-style mounted
//! directories, whole proxies on loopback, and small apps and clients.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weft_api::routes::*;
use weft_api::{RoutesTable, SpiffeId};
pub use weft_e2e::mount::{kubelet_write, write_identity, write_routes};
pub use weft_e2e::pki::{Ca, Leaf, TRUST_DOMAIN, spiffe};
use weft_proxy::orig_dst::FixedDst;
use weft_proxy::run::{ApiWatchMode, Listeners, LogFormat, RunArgs, serve};
use weft_proxy::tls::MeshProtocol;

/// An empty table for `namespace` with the given inbound default.
pub fn table(namespace: &str, generation: u64, inbound: InboundPolicy) -> RoutesTable {
    RoutesTable {
        version: 1,
        generation,
        digest: None,
        trust_domain: TRUST_DOMAIN.into(),
        namespace: namespace.into(),
        defaults: Defaults { inbound },
        services: vec![],
    }
}

pub fn permissive() -> InboundPolicy {
    InboundPolicy {
        mtls: MtlsMode::Permissive,
        authorization: Authorization::default(),
    }
}

/// A Service at `vip:80` served by `endpoints` (address, identity).
pub fn service(
    name: &str,
    ns: &str,
    vip: &str,
    endpoints: &[(SocketAddr, Option<SpiffeId>)],
) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        cluster_ips: vec![vip.parse().unwrap()],
        ports: vec![ServicePort {
            port: 80,
            name: Some("http".into()),
            protocol: Protocol::Opaque,
            endpoints: endpoints
                .iter()
                .map(|(addr, identity)| Endpoint {
                    address: addr.ip(),
                    port: addr.port(),
                    identity: identity.clone(),
                    zone: None,
                    ready: true,
                })
                .collect(),
        }],
        policy: Policy::default(),
    }
}

/// A whole proxy on loopback whose connections all "were going to" `dst`.
pub struct Proxy {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub routes_dir: PathBuf,
    pub identity_dir: PathBuf,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub struct ProxyConfig {
    pub namespace: String,
    pub service_account: String,
    pub dst: SocketAddr,
    pub dir: PathBuf,
    pub grace: Duration,
    /// Watch routes through this (mock) API server too.
    pub api: Option<ApiFlags>,
    /// `WEFT_POD_IP`: picks the inbound policy; calls to it stay in the pod.
    pub pod_ip: Option<std::net::IpAddr>,
}

/// How a proxy reaches an API server: `--api-server`, token and CA files.
#[derive(Clone)]
pub struct ApiFlags {
    pub url: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

impl ProxyConfig {
    /// The flags of a proxy on loopback port 0 over `<dir>/routes` and `<dir>/identity`.
    pub fn run_args(&self) -> RunArgs {
        let any = "127.0.0.1:0".parse().unwrap();
        let api = self.api.clone();
        RunArgs {
            routes_dir: self.dir.join("routes"),
            identity_dir: self.dir.join("identity"),
            pod_name: None,
            pod_namespace: Some(self.namespace.clone()),
            pod_ip: self.pod_ip,
            service_account: Some(self.service_account.clone()),
            outbound_addr: any,
            inbound_addr: any,
            admin_addr: any,
            original_dst: None,
            log: "info".into(),
            log_format: LogFormat::Plain,
            shutdown_grace_period: self.grace,
            connect_timeout: Duration::from_secs(2),
            detect_timeout: Duration::from_millis(300),
            opaque_ports: weft_proxy::sniff::OpaquePorts::parse("").unwrap(),
            access_log: weft_proxy::access_log::AccessLog::Off,
            reload_debounce: Duration::from_millis(10),
            reload_poll: Duration::from_millis(250),
            threads: 1,
            api_watch: if api.is_some() {
                ApiWatchMode::Auto
            } else {
                ApiWatchMode::Off
            },
            api_server: api.as_ref().map(|a| a.url.clone()),
            api_token_file: api
                .as_ref()
                .map_or_else(|| "/nonexistent".into(), |a| a.token_file.clone()),
            api_ca_file: api
                .as_ref()
                .map_or_else(|| "/nonexistent".into(), |a| a.ca_file.clone()),
            api_backoff_min: Duration::from_millis(20),
            api_backoff_max: Duration::from_millis(200),
        }
    }

    pub fn new(dir: &Path, namespace: &str, service_account: &str, dst: SocketAddr) -> Self {
        Self {
            namespace: namespace.into(),
            service_account: service_account.into(),
            dst,
            dir: dir.to_path_buf(),
            grace: Duration::from_secs(30),
            api: None,
            pod_ip: None,
        }
    }

    pub fn with_api(mut self, api: ApiFlags) -> Self {
        self.api = Some(api);
        self
    }
}

impl Proxy {
    /// Starts a proxy over `<dir>/routes` and `<dir>/identity`, which
    /// should already hold files so that it starts ready.
    pub async fn start(cfg: ProxyConfig) -> Self {
        let args = cfg.run_args();
        let listeners = Listeners::bind(&args).await.unwrap();
        let (outbound, inbound, admin) = (
            listeners.outbound.local_addr().unwrap(),
            listeners.inbound.local_addr().unwrap(),
            listeners.admin.local_addr().unwrap(),
        );
        let shutdown = CancellationToken::new();
        let (routes_dir, identity_dir) = (args.routes_dir.clone(), args.identity_dir.clone());
        let task = tokio::spawn(serve(
            args,
            listeners,
            Arc::new(FixedDst(cfg.dst)),
            shutdown.clone(),
        ));
        Self {
            outbound,
            inbound,
            admin,
            routes_dir,
            identity_dir,
            shutdown,
            task,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path).await
    }

    pub async fn config(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/config").await.1).unwrap()
    }

    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric(&self.get("/metrics").await.1, name, labels)
    }

    /// Waits (generously) until `check` holds for `/config`.
    pub async fn wait_config(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        for _ in 0..400 {
            if check(&self.config().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {what}; config: {}",
            self.config().await
        );
    }

    /// Waits until metric `name{labels}` reaches `at_least`.
    pub async fn wait_metric(&self, name: &str, labels: &[&str], at_least: f64) {
        for _ in 0..400 {
            if self.metric(name, labels).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {name}{labels:?} >= {at_least}:\n{}",
            self.get("/metrics").await.1
        );
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// One HTTP/1.1 request over a fresh connection; `(status, body)`.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample of `name` whose labels contain every one of
/// `labels` (e.g. `kind="routes"`), or 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An app that echoes what it reads and, once the client half-closes,
/// writes `END <name>` and closes. Counts the connections it accepted.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl EchoApp {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.write_all(format!("END {name}").as_bytes()).await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        Self { addr, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Sends `payload`, half-closes, and reads until the other side closes.
/// A reset counts as the end: the bytes read so far are returned.
pub async fn exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.split();
    let write = async {
        let _ = w.write_all(payload).await;
        let _ = w.shutdown().await;
    };
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::join!(write, read);
    out
}

/// A pod "B": an echo app behind a proxy whose inbound side forwards to it.
pub struct Server {
    pub app: EchoApp,
    pub proxy: Proxy,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(
        name: &'static str,
        ca: &Ca,
        ns: &str,
        sa: &str,
        inbound: InboundPolicy,
    ) -> Self {
        let app = EchoApp::start(name).await;
        let dir = mounts(ca, ns, sa, &table(ns, 1, inbound));
        let proxy = Proxy::start(ProxyConfig::new(dir.path(), ns, sa, app.addr)).await;
        Self { app, proxy, dir }
    }
}

/// The VIP of the Service the client pod calls.
pub const VIP: &str = "198.19.0.10";

pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 80)
}

/// A pod "A" (web/frontend) whose outbound connections go to `VIP:80`,
/// routed by `services`.
pub async fn client_proxy(ca: &Ca, services: Vec<Service>) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_identity(
        &dir.path().join("identity"),
        &ca.leaf("web", "frontend"),
        &ca.pem(),
    );
    let mut t = table("web", 1, InboundPolicy::default());
    t.services = services;
    write_routes(&dir.path().join("routes"), &t);
    let proxy = Proxy::start(ProxyConfig::new(dir.path(), "web", "frontend", vip())).await;
    (proxy, dir)
}

/// `shop/cart` at `VIP:80` with the one endpoint `addr`, meshed as `shop/<sa>`.
pub fn cart(addr: SocketAddr, sa: &str) -> Service {
    service("cart", "shop", VIP, &[(addr, Some(spiffe("shop", sa)))])
}

/// Pod "B" (`shop/cart`, inbound `policy`) and pod "A" calling it at `VIP:80`.
pub async fn pair(ca: &Ca, policy: InboundPolicy) -> (Server, Proxy, tempfile::TempDir) {
    let b = Server::start("b", ca, "shop", "cart", policy).await;
    let (a, dir) = client_proxy(ca, vec![cart(b.proxy.inbound, "cart")]).await;
    (b, a, dir)
}

/// A directory with valid mounts for `ns/sa` holding `table`.
pub fn mounts(ca: &Ca, ns: &str, sa: &str, table: &RoutesTable) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_identity(&dir.path().join("identity"), &ca.leaf(ns, sa), &ca.pem());
    write_routes(&dir.path().join("routes"), table);
    dir
}

/// `leaf`'s certificate chain and key, as a proxy would load them.
pub fn certified(leaf: &Leaf) -> Arc<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    Arc::new(CertifiedKey::from_der(chain, key, &weft_proxy::tls::provider()).unwrap())
}

/// A trust store holding `ca`.
pub fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    Arc::new(roots)
}

/// A mesh TLS connection to the inbound proxy at `inbound`, as an outbound
/// proxy with `leaf` opens one for `protocol`.
pub async fn mesh_connect(
    inbound: SocketAddr,
    ca: &Ca,
    leaf: &Leaf,
    protocol: MeshProtocol,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = weft_proxy::tls::provider();
    let config =
        weft_proxy::tls::client_config(&provider, roots(ca), certified(leaf), protocol).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(inbound).await?;
    connector
        .connect(ServerName::IpAddress(inbound.ip().into()), tcp)
        .await
}
