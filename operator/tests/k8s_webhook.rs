//! The injection webhook over real HTTPS, in process: the server on
//! 127.0.0.1:0 with a serving certificate from the mesh CA, a client that
//! trusts only the mesh bundle and checks the Service's DNS name, the
//! AdmissionReview the API server really sent, and the identity Secret
//! requests against a mock API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_support::{Reply, Seen, error, mock, ok, within};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use weft_api::SpiffeId;
use weft_operator::ca::{Authority, DEFAULT_ANCHOR_VALIDITY, TrustAnchor, renewal_due};
use weft_operator::inject::InjectConfig;
use weft_operator::k8s::admin::Admin;
use weft_operator::k8s::admit::{Admit, ClusterNamespaces, Identities, Namespaces};
use weft_operator::k8s::metrics::Metrics;
use weft_operator::k8s::plan::existing_identity;
use weft_operator::k8s::serving::{self, Refresh, Refresher, ServingCert};
use weft_operator::k8s::webhook::{self, Limits, Webhook};
use weft_operator::scope::MeshedPods;

const SERVICE_NAME: &str = "weft-webhook.weft-system.svc";
const SECRETS_URI: &str = "/api/v1/namespaces/whtest/secrets?&fieldManager=weft-operator";

fn dns_names() -> Vec<String> {
    serving::dns_names("weft-webhook", "weft-system")
}

/// The InjectConfig of `tests/admission.rs`, which wrote the golden pod.
fn cfg() -> InjectConfig {
    InjectConfig {
        proxy_image: "weft-proxy:test".into(),
        init_image: "weft-init:test".into(),
        version: "test".into(),
        ..InjectConfig::default()
    }
}

fn review() -> Value {
    support::fixture("admissionreview-pod-create.json")
}

/// Namespace `whtest`, injection enabled, whatever name is asked.
struct Enabled;

impl Namespaces for Enabled {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<Arc<Namespace>>> {
        Box::pin(async {
            match support::namespace("whtest", true) {
                weft_operator::cluster::Object::Namespace(ns) => Some(Arc::new(*ns)),
                _ => unreachable!(),
            }
        })
    }
}

/// A mesh CA valid now (the TLS client checks the real clock).
fn authority() -> Authority {
    let anchor = TrustAnchor::generate(SystemTime::now(), DEFAULT_ANCHOR_VALIDITY).unwrap();
    Authority::new(anchor)
}

struct Options {
    /// Whether the identity Secret is already in the cache.
    cached: bool,
    /// Whether a serving certificate is loaded at start.
    certificate: bool,
    limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cached: false,
            certificate: true,
            limits: Limits::default(),
        }
    }
}

/// A webhook server on 127.0.0.1:0 whose API calls go to `respond`.
struct Server {
    addr: std::net::SocketAddr,
    authority: Authority,
    serving: Arc<ServingCert>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    api: tokio::task::JoinHandle<Vec<Seen>>,
}

async fn start(options: Options, respond: impl FnMut(&Seen) -> Reply + Send + 'static) -> Server {
    let authority = authority();
    let (client, api) = mock(respond);
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingCert::new());
    if options.certificate {
        let issued = authority
            .issue_server(&dns_names(), SystemTime::now(), Duration::from_secs(3600))
            .unwrap();
        serving.install(&issued).unwrap();
    }
    let cached = options.cached;
    let admit = Admit {
        mesh: support::mesh(MeshedPods::Injected),
        inject: cfg(),
        namespaces: Arc::new(Enabled),
        identities: Identities {
            client,
            cached: Box::new(move |_, _| cached),
            accounts: Box::new(move |_, name| name != "made-up"),
            authority: Arc::new(ArcSwapOption::from_pointee(authority.clone())),
            trust_domain: "cluster.local".into(),
            lifetime: Duration::from_secs(24 * 3600),
        },
        metrics: metrics.clone(),
    };
    let webhook = Webhook::new(Arc::new(admit), serving.clone(), options.limits).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(webhook::serve(Arc::new(webhook), listener, stop.clone()));
    Server {
        addr,
        authority,
        serving,
        metrics,
        stop,
        task,
        api,
    }
}

impl Server {
    /// Stops the server; returns the API requests it made.
    async fn finish(self) -> Vec<Seen> {
        self.stop.cancel();
        within(self.task).await.unwrap();
        within(self.api).await.unwrap()
    }

    /// A TLS connection trusting only the mesh bundle, for the Service name.
    async fn connect(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(self.authority.bundle_pem().as_bytes()) {
            roots.add(root.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from(SERVICE_NAME).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// Sends `req` on a new connection; the status and the body.
    async fn send<B>(&self, req: Request<B>) -> (StatusCode, Bytes)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = self.connect().await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = sender.send_request(req).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// POSTs `body` to `path` with `content_type`.
    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let req = Request::post(path)
            .header("host", SERVICE_NAME)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        within(self.send(req)).await
    }

    /// POSTs an AdmissionReview as the API server does.
    async fn review(&self, review: &Value) -> Value {
        let (status, body) = self
            .post(
                "/inject?timeout=10s",
                "application/json",
                serde_json::to_vec(review).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn metric(metrics: &Metrics, line: &str) -> bool {
    metrics.encode().lines().any(|l| l == line)
}

#[tokio::test]
async fn webhook_injects_the_captured_pod_over_https() {
    let server = start(Options::default(), ok).await;
    let review = review();
    let response = server.review(&review).await;

    // The shape the API server requires, with a base64 JSONPatch.
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    let answer = response["response"].as_object().unwrap();
    let mut keys: Vec<&str> = answer.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["allowed", "patch", "patchType", "uid"]);
    assert_eq!(answer["uid"], review["request"]["uid"]);
    assert_eq!(answer["allowed"], true);
    assert_eq!(answer["patchType"], "JSONPatch");
    assert!(answer["patch"].is_string());

    // Applied to the object as sent, it gives the golden injected pod.
    let pod = support::patched(&review, &response);
    let golden = format!(
        "{}/tests/golden/inject/admission-pod.out.json",
        env!("CARGO_MANIFEST_DIR")
    );
    assert_eq!(
        serde_json::to_string_pretty(&pod).unwrap() + "\n",
        std::fs::read_to_string(golden).unwrap()
    );

    let (metrics, authority) = (server.metrics.clone(), server.authority.clone());
    let seen = server.finish().await;
    // Exactly one request: the pod's identity Secret, created (never
    // applied over an existing one) with what the writer would apply.
    assert_eq!(lines(&seen), [format!("POST {SECRETS_URI}")]);
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    let secret: Secret = serde_json::from_value(seen[0].body.clone()).unwrap();
    let mut shape = seen[0].body.clone();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        shape["data"][key] = json!("…");
    }
    shape["metadata"]["annotations"]["weft.dev/not-after"] = json!("…");
    assert_eq!(
        shape,
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {
                "name": "weft-identity-default", "namespace": "whtest",
                "labels": {"app.kubernetes.io/managed-by": "weft", "app.kubernetes.io/part-of": "weft"},
                "annotations": {
                    "weft.dev/identity": "spiffe://cluster.local/ns/whtest/sa/default",
                    "weft.dev/not-after": "…",
                },
            },
            "data": {"tls.crt": "…", "tls.key": "…", "ca.crt": "…"},
        })
    );
    let id = SpiffeId::workload("cluster.local", "whtest", "default").unwrap();
    let existing = existing_identity(Some(&secret));
    assert_eq!(
        renewal_due(&existing, &id, &authority, SystemTime::now(), 0.5),
        None,
        "the writer's next pass keeps it"
    );
    for line in [
        "weft_webhook_requests_total{decision=\"injected\"} 1",
        "weft_webhook_identity_secrets_total{result=\"created\"} 1",
        "weft_objects_written_total{kind=\"Secret\",op=\"create\"} 1",
    ] {
        assert!(metric(&metrics, line), "{line}\n{}", metrics.encode());
    }
}

#[tokio::test]
async fn webhook_dry_run_creates_no_secret() {
    let server = start(Options::default(), ok).await;
    let mut review = review();
    review["request"]["dryRun"] = json!(true);
    let response = server.review(&review).await;
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let again = server.review(&review).await;
    assert_eq!(again["response"]["allowed"], true);
    let seen = server.finish().await;
    assert!(seen.is_empty(), "{:?}", lines(&seen));
}

#[tokio::test]
async fn webhook_creates_no_secret_for_an_unknown_service_account() {
    let server = start(Options::default(), ok).await;
    let mut review = review();
    review["request"]["object"]["spec"]["serviceAccountName"] = json!("made-up");
    let response = server.review(&review).await;
    // Still injected and allowed: the writer creates the Secret once the
    // account exists; a forged review cannot make the webhook write one.
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let seen = server.finish().await;
    assert!(seen.is_empty(), "{:?}", lines(&seen));
}

#[tokio::test]
async fn webhook_creates_no_secret_that_is_cached() {
    let server = start(
        Options {
            cached: true,
            ..Options::default()
        },
        ok,
    )
    .await;
    let response = server.review(&review()).await;
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let seen = server.finish().await;
    assert!(seen.is_empty(), "{:?}", lines(&seen));
}

#[tokio::test]
async fn webhook_allows_the_pod_when_the_secret_cannot_be_created() {
    let server = start(Options::default(), |_| error(403, "Forbidden")).await;
    let response = server.review(&review()).await;
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let metrics = server.metrics.clone();
    assert_eq!(server.finish().await.len(), 1);
    assert!(metric(
        &metrics,
        "weft_webhook_identity_secrets_total{result=\"failed\"} 1"
    ));

    // Another replica (or the writer) created it meanwhile: fine.
    let server = start(Options::default(), |_| error(409, "AlreadyExists")).await;
    let response = server.review(&review()).await;
    assert_eq!(response["response"]["patchType"], "JSONPatch");
    let metrics = server.metrics.clone();
    assert_eq!(server.finish().await.len(), 1);
    assert!(metric(
        &metrics,
        "weft_webhook_identity_secrets_total{result=\"already_exists\"} 1"
    ));
}

#[tokio::test]
async fn webhook_answers_other_requests_unchanged_and_refusals_with_a_reason() {
    let server = start(Options::default(), ok).await;
    let mut update = review();
    update["request"]["operation"] = json!("UPDATE");
    let response = server.review(&update).await;
    assert_eq!(
        response["response"],
        json!({"uid": update["request"]["uid"], "allowed": true})
    );

    let mut bad = review();
    bad["request"]["object"]["metadata"]["annotations"] =
        json!({"weft.dev/proxy-cpu-limit": "lots"});
    let response = server.review(&bad).await;
    assert_eq!(response["response"]["allowed"], false);
    assert_eq!(response["response"]["status"]["code"], 400);
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("weft.dev/proxy-cpu-limit"), "{message}");

    let metrics = server.metrics.clone();
    assert!(server.finish().await.is_empty());
    for line in [
        "weft_webhook_requests_total{decision=\"allowed\"} 1",
        "weft_webhook_requests_total{decision=\"denied\"} 1",
    ] {
        assert!(metric(&metrics, line), "{line}\n{}", metrics.encode());
    }
}

#[tokio::test]
async fn webhook_refuses_bad_requests_with_a_status_and_a_message() {
    // A limit the captured review fits in, so it still works at the end.
    let max = serde_json::to_vec(&review()).unwrap().len() + 100;
    let server = start(
        Options {
            limits: Limits {
                max_body: max,
                ..Limits::default()
            },
            ..Options::default()
        },
        ok,
    )
    .await;
    let text = |body: &Bytes| String::from_utf8_lossy(body).into_owned();

    let (status, body) = server
        .post("/inject", "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text(&body).starts_with("not an admission.k8s.io/v1 AdmissionReview: "),
        "{}",
        text(&body)
    );

    let (status, body) = server
        .post(
            "/inject",
            "application/json",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text(&body).contains("no request"), "{}", text(&body));

    let (status, body) = server.post("/inject", "text/plain", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(text(&body).contains("application/json"), "{}", text(&body));

    // Over the limit, declared…
    let (status, body) = server
        .post("/inject", "application/json", vec![b' '; max + 1])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        text(&body).contains(&format!("larger than {max} bytes")),
        "{}",
        text(&body)
    );
    // …and streamed without a length.
    let chunks = futures::stream::iter((0..4).map(move |_| {
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b' '; max / 2])))
    }));
    let req = Request::post("/inject")
        .header("host", SERVICE_NAME)
        .header("content-type", "application/json")
        .body(StreamBody::new(chunks))
        .unwrap();
    let (status, _) = within(server.send(req)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let get = |path: &str| {
        Request::get(path)
            .header("host", SERVICE_NAME)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (status, _) = within(server.send(get("/inject"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, body) = within(server.send(get("/validate"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text(&body).contains("/validate"), "{}", text(&body));
    let (status, body) = within(server.send(get("/healthz"))).await;
    assert_eq!((status, text(&body).as_str()), (StatusCode::OK, "ok\n"));

    // The server is still well after all that.
    let response = server.review(&review()).await;
    assert_eq!(response["response"]["patchType"], "JSONPatch");

    let metrics = server.metrics.clone();
    server.finish().await;
    assert!(
        metric(
            &metrics,
            "weft_webhook_requests_total{decision=\"error\"} 6"
        ),
        "{}",
        metrics.encode()
    );
}

#[tokio::test]
async fn webhook_serves_only_with_a_certificate_and_swaps_it_for_new_connections() {
    let server = start(
        Options {
            certificate: false,
            ..Options::default()
        },
        ok,
    )
    .await;
    let refused = within(server.connect()).await;
    assert!(refused.is_err(), "no certificate: the handshake fails");
    assert!(metric(
        &server.metrics,
        "weft_webhook_connections_refused_total{reason=\"no_certificate\"} 1"
    ));

    let serial = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let first = server
        .authority
        .issue_server(&dns_names(), SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    server.serving.install(&first).unwrap();
    let old = within(server.connect()).await.unwrap();
    let second = server
        .authority
        .issue_server(&dns_names(), SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    server.serving.install(&second).unwrap();
    let new = within(server.connect()).await.unwrap();
    let der = |pem: &str| {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_eq!(serial(&old), der(&first.cert_pem));
    assert_eq!(serial(&new), der(&second.cert_pem));
    drop((old, new));
    let response = server.review(&review()).await;
    assert_eq!(response["response"]["allowed"], true);
    server.finish().await;
}

#[tokio::test]
async fn webhook_stops_accepting_on_stop() {
    let server = start(Options::default(), ok).await;
    let addr = server.addr;
    server.finish().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

// --- the serving certificate's lifecycle ---

fn anchor_secret(anchor: &TrustAnchor, version: &str) -> Secret {
    let mut secret = weft_operator::k8s::objects::anchor_secret("weft-system", anchor);
    secret.metadata.uid = Some("uid-anchor".into());
    secret.metadata.resource_version = Some(version.into());
    secret
}

#[test]
fn serving_certificate_follows_the_anchor() {
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingCert::new());
    let published = Arc::new(ArcSwapOption::empty());
    let mut refresher = Refresher::new(
        Refresh {
            dns_names: dns_names(),
            lifetime: 24 * hour,
            renew_at: 0.5,
            poll_pending: Duration::from_secs(2),
            poll_held: Duration::from_secs(30),
        },
        serving.clone(),
        published.clone(),
        metrics.clone(),
    );
    // No anchor yet: nothing to serve with.
    refresher.step(None, now);
    assert!(!serving.is_loaded());
    assert!(published.load().is_none());

    let a = TrustAnchor::generate(now, DEFAULT_ANCHOR_VALIDITY).unwrap();
    refresher.step(Some(&anchor_secret(&a, "1")), now);
    assert!(serving.is_loaded());
    let held = refresher.held().unwrap().clone();
    assert_eq!(held.signer_pem, a.cert_pem());
    assert_eq!(
        published.load_full().unwrap().bundle_pem(),
        a.cert_pem(),
        "the authority is published for identity Secrets"
    );
    // Before half its life: kept.
    refresher.step(Some(&anchor_secret(&a, "1")), now + 11 * hour);
    assert_eq!(refresher.held(), Some(&held));
    // At half its life: renewed.
    refresher.step(Some(&anchor_secret(&a, "1")), now + 12 * hour);
    let renewed = refresher.held().unwrap().clone();
    assert!(renewed.not_after > held.not_after);
    // Rotation step 2: another signer, the old root still in the bundle.
    let b = TrustAnchor::generate(now + 12 * hour, DEFAULT_ANCHOR_VALIDITY).unwrap();
    let mut rotated = anchor_secret(&b, "2");
    rotated.data.as_mut().unwrap().insert(
        "ca-bundle.crt".into(),
        k8s_openapi::ByteString(a.cert_pem().as_bytes().to_vec()),
    );
    refresher.step(Some(&rotated), now + 12 * hour);
    assert_eq!(refresher.held().unwrap().signer_pem, b.cert_pem());
    // An unusable anchor keeps the certificate held and counts one error.
    let mut broken = anchor_secret(&b, "3");
    broken.data.as_mut().unwrap().remove("tls.key");
    refresher.step(Some(&broken), now + 13 * hour);
    refresher.step(Some(&broken), now + 14 * hour);
    assert!(serving.is_loaded());
    let text = metrics.encode();
    for line in [
        "weft_webhook_certificates_issued_total{reason=\"missing\"} 1",
        "weft_webhook_certificates_issued_total{reason=\"renewal\"} 1",
        "weft_webhook_certificates_issued_total{reason=\"signer_changed\"} 1",
        "weft_webhook_certificate_errors_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
}

#[tokio::test]
async fn readiness_waits_for_the_serving_certificate() {
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingCert::new());
    let admin = Arc::new(Admin::new(metrics).requiring_serving_cert(serving.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(weft_operator::k8s::admin::serve(
        admin.clone(),
        listener,
        stop.clone(),
    ));
    let readyz = || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    admin.set_ready();
    let response = readyz().await;
    assert!(
        response.starts_with("HTTP/1.1 503") && response.contains("no webhook serving certificate"),
        "{response}"
    );
    let issued = authority()
        .issue_server(&dns_names(), SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    serving.install(&issued).unwrap();
    assert!(readyz().await.starts_with("HTTP/1.1 200"));
    // Shutting down: out of the Service first, while the webhook serves on.
    admin.set_draining();
    let response = readyz().await;
    assert!(
        response.starts_with("HTTP/1.1 503") && response.contains("shutting down"),
        "{response}"
    );
    stop.cancel();
    within(task).await.unwrap();
}

// --- the Namespace lookup ---

#[tokio::test]
async fn a_namespace_not_cached_yet_is_read_from_the_api_server() {
    let (client, api) = mock(|seen| match seen.uri.as_str() {
        "/api/v1/namespaces/whtest" => (
            200,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "whtest", "annotations": {"weft.dev/inject": "enabled"}}}),
        ),
        _ => error(404, "NotFound"),
    });
    let lookup = ClusterNamespaces {
        cached: Box::new(|name| {
            (name == "cached").then(|| {
                Arc::new(Namespace {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some("cached".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                })
            })
        }),
        client,
    };
    let seen = within(async move {
        let ns = lookup.get("whtest").await.unwrap();
        assert!(weft_operator::scope::namespace_enabled(&ns));
        assert!(lookup.get("gone").await.is_none());
        assert_eq!(
            lookup.get("cached").await.unwrap().metadata.name.as_deref(),
            Some("cached")
        );
        drop(lookup);
        api.await.unwrap()
    })
    .await;
    assert_eq!(
        lines(&seen),
        [
            "GET /api/v1/namespaces/whtest",
            "GET /api/v1/namespaces/gone"
        ]
    );
}
