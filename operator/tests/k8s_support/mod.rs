//! Fixtures for the Kubernetes runtime tests: a mock API server that
//! records every request and answers through a closure, a small meshed
//! cluster, a trust anchor at a fixed time, and the objects a previous pass
//! would have written.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{
    Namespace, ObjectReference, Pod, PodSpec, Secret, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use weft_api::routes::MtlsMode;
use weft_operator::ca::{Authority, DEFAULT_ANCHOR_VALIDITY, TrustAnchor};
use weft_operator::cluster::{Cluster, Object};
use weft_operator::crd::{MeshPolicy, MeshPolicySpec, TargetRef};
use weft_operator::k8s::metrics::Metrics;
use weft_operator::k8s::objects::{self, Limits};
use weft_operator::k8s::plan::{Managed, Settings};
use weft_operator::k8s::writer::{Snapshot, Writer};
use weft_operator::scope::{MeshConfig, MeshedPods};

/// 2023-11-14T22:13:20Z: every test's "now".
pub const T0: u64 = 1_700_000_000;

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub fn now() -> SystemTime {
    at(T0)
}

/// One request as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub content_type: Option<String>,
    /// The JSON body, `Null` when empty.
    pub body: Value,
}

impl Seen {
    /// `METHOD path?query`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// An answer: status code and JSON body.
pub type Reply = (u16, Value);

/// A kube client whose requests go to `respond`; the returned task yields
/// every request seen once all clients are dropped.
pub fn mock<F>(mut respond: F) -> (kube::Client, tokio::task::JoinHandle<Vec<Seen>>)
where
    F: FnMut(&Seen) -> Reply + Send + 'static,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let request = read(request).await;
            let (status, body) = respond(&request);
            seen.push(request);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        }
        seen
    });
    (kube::Client::new(service, "default"), server)
}

async fn read(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    }
}

/// Runs `scenario` with a 10 s limit, so a missing request fails the test
/// instead of hanging it.
pub async fn within<T>(scenario: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("the scenario timed out")
}

/// What a healthy API server answers: the object for writes (a MeshPolicy
/// for status patches), a Status for deletes.
pub fn ok(seen: &Seen) -> Reply {
    match seen.method.as_str() {
        "DELETE" => (
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        "PATCH" if seen.uri.contains("/status?") => (200, policy_json(&seen.uri)),
        "POST" => (201, seen.body.clone()),
        _ => (200, seen.body.clone()),
    }
}

/// A Status error as the API server sends it.
pub fn error(code: u16, reason: &str) -> Reply {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{reason} (test)"), "reason": reason, "code": code,
        }),
    )
}

fn policy_json(uri: &str) -> Value {
    let parts: Vec<&str> = uri.split('/').collect();
    let at = parts.iter().position(|p| *p == "namespaces").unwrap();
    json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshPolicy",
        "metadata": {"namespace": parts[at + 1], "name": parts[at + 3]},
        "spec": {},
    })
}

pub fn settings() -> Settings {
    Settings {
        mesh: MeshConfig {
            trust_domain: "cluster.local".into(),
            operator_namespace: "weft-system".into(),
            default_mtls: MtlsMode::Permissive,
            meshed_pods: MeshedPods::Injected,
        },
        cert_lifetime: Duration::from_secs(24 * 3600),
        renew_at: 0.5,
        limits: Limits::default(),
    }
}

/// A writer on `client` that leads (or not).
pub fn writer(client: kube::Client, settings: Settings, leading: bool) -> (Writer, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(leading);
    // The writer only reads; keep the sender alive for the test's duration.
    std::mem::forget(tx);
    (
        Writer::new(
            client,
            settings,
            metrics.clone(),
            "weft-operator-0".into(),
            rx,
        ),
        metrics,
    )
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    }
}

/// Namespace `shop` (injection enabled) with Service `cart` (10.96.0.10:80
/// → 8080), its EndpointSlice, and the injected pod `cart-1` (10.0.0.5,
/// service account `cart`).
pub fn shop() -> Cluster {
    let mut cluster = Cluster::default();
    let mut ns = meta(None, "shop");
    ns.annotations = Some(BTreeMap::from([(
        "weft.dev/inject".into(),
        "enabled".into(),
    )]));
    cluster.apply(Object::Namespace(Box::new(Namespace {
        metadata: ns,
        ..Default::default()
    })));
    cluster.apply(Object::ServiceAccount(Box::new(ServiceAccount {
        metadata: meta(Some("shop"), "cart"),
        ..Default::default()
    })));
    cluster.apply(Object::Service(Box::new(service())));
    cluster.apply(Object::EndpointSlice(Box::new(slice())));
    cluster.apply(Object::Pod(Box::new(pod())));
    cluster
}

fn service() -> Service {
    Service {
        metadata: meta(Some("shop"), "cart"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice() -> EndpointSlice {
    let mut m = meta(Some("shop"), "cart-abcde");
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".into(),
        "cart".into(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.5".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("shop".into()),
                name: Some("cart-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn pod() -> Pod {
    let mut m = meta(Some("shop"), "cart-1");
    m.annotations = Some(BTreeMap::from([(
        "weft.dev/injected".into(),
        "0.1.0".into(),
    )]));
    Pod {
        metadata: m,
        spec: Some(PodSpec {
            service_account_name: Some("cart".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A MeshPolicy `name` in `shop` targeting `target`, at generation 3.
pub fn policy(name: &str, target: &str) -> MeshPolicy {
    let mut p = MeshPolicy::new(
        name,
        MeshPolicySpec {
            target_ref: Some(TargetRef {
                kind: "Service".into(),
                name: target.into(),
            }),
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("shop".into());
    p.metadata.generation = Some(3);
    p.metadata.uid = Some(format!("uid-{name}"));
    p.metadata.creation_timestamp = Some(Time("2023-11-01T00:00:00Z".parse().unwrap()));
    p
}

/// A trust anchor generated a day before `T0`.
pub fn anchor() -> TrustAnchor {
    TrustAnchor::generate(at(T0 - 86_400), DEFAULT_ANCHOR_VALIDITY).unwrap()
}

/// The anchor Secret as the cache would hold it.
pub fn anchor_secret(anchor: &TrustAnchor) -> Arc<Secret> {
    let mut secret = objects::anchor_secret("weft-system", anchor);
    secret.metadata.uid = Some("uid-anchor".into());
    secret.metadata.resource_version = Some("1".into());
    Arc::new(secret)
}

/// The identity Secret of `shop/<sa>` as a pass at `issued_at` wrote it.
pub fn identity(authority: &Authority, sa: &str, issued_at: SystemTime) -> Arc<Secret> {
    let issued = authority
        .issue(
            "cluster.local",
            "shop",
            sa,
            issued_at,
            Duration::from_secs(24 * 3600),
        )
        .unwrap();
    Arc::new(objects::identity_secret("shop", sa, &issued))
}

/// Everything a pass over `shop()` at `T0` writes, as cached afterwards:
/// the next pass has nothing to do.
pub fn written(cluster: &Cluster, authority: &Authority) -> Managed {
    let desired = weft_operator::desired::desired(cluster, &settings().mesh);
    let mut table = desired.tables["shop"].clone();
    table.generation = 1;
    Managed {
        config_maps: vec![Arc::new(
            objects::routes_config_map(&table, Limits::default()).unwrap(),
        )],
        secrets: vec![identity(authority, "cart", now())],
        roles: vec![Arc::new(objects::routes_reader_role("shop"))],
        role_bindings: vec![Arc::new(objects::routes_reader_binding("shop"))],
    }
}

pub fn snapshot(cluster: Cluster, managed: Managed, anchor: &TrustAnchor) -> Snapshot {
    Snapshot {
        cluster,
        managed,
        anchor: Some(anchor_secret(anchor)),
        webhook_config: None,
    }
}

/// MutatingWebhookConfiguration `weft-injector` as the chart installs it
/// (no `caBundle`), with one webhook per name; `bundles` sets the
/// `caBundle` of the webhooks at the same index.
pub fn webhook_config(names: &[&str], bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
    let webhooks = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut webhook = json!({
                "name": name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
                "clientConfig": {"service": {
                    "name": "weft-webhook", "namespace": "weft-system", "path": "/inject", "port": 443,
                }},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            });
            if let Some(Some(bundle)) = bundles.get(i) {
                use base64::Engine;
                webhook["clientConfig"]["caBundle"] =
                    base64::engine::general_purpose::STANDARD.encode(bundle).into();
            }
            webhook
        })
        .collect::<Vec<_>>();
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "weft-injector", "resourceVersion": "7"},
        "webhooks": webhooks,
    }))
    .unwrap()
}
