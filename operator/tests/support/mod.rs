//! Builders for cluster objects and the captured fixtures, so each test
//! states only what it is about.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodCondition, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use weft_api::routes::MtlsMode;
use weft_operator::cluster::{Cluster, Object};
use weft_operator::crd::{MeshPolicy, MeshPolicySpec, TargetRef};
use weft_operator::scope::{MeshConfig, MeshedPods};

pub fn fixture<T: DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/k8s/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The items of a captured `List`.
pub fn fixture_items<T: DeserializeOwned>(name: &str) -> Vec<T> {
    let list: serde_json::Value = fixture(name);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::from_value(i.clone()).unwrap())
        .collect()
}

pub fn mesh(meshed: MeshedPods) -> MeshConfig {
    MeshConfig {
        trust_domain: "cluster.local".into(),
        operator_namespace: "weft-system".into(),
        default_mtls: MtlsMode::Permissive,
        meshed_pods: meshed,
    }
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        ..Default::default()
    }
}

pub fn namespace(name: &str, inject: bool) -> Object {
    let mut m = meta(None, name);
    if inject {
        m.annotations = Some(BTreeMap::from([(
            "weft.dev/inject".into(),
            "enabled".into(),
        )]));
    }
    Object::Namespace(Box::new(Namespace {
        metadata: m,
        ..Default::default()
    }))
}

/// A ClusterIP Service selecting `app=<name>` with `(name, port, target)` ports.
pub fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, IntOrString)]) -> Service {
    Service {
        metadata: meta(Some(ns), name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            selector: Some(BTreeMap::from([("app".into(), name.into())])),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        target_port: Some(t.clone()),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A running pod `app=<app>` at `ip` with named container ports.
pub fn pod(
    ns: &str,
    name: &str,
    app: &str,
    ip: &str,
    sa: &str,
    ready: bool,
    ports: &[(&str, i32)],
) -> Pod {
    let mut m = meta(Some(ns), name);
    m.labels = Some(BTreeMap::from([("app".into(), app.into())]));
    Pod {
        metadata: m,
        spec: Some(PodSpec {
            service_account_name: Some(sa.into()),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ContainerPort {
                            name: Some(n.to_string()),
                            container_port: *p,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

pub fn policy(ns: &str, name: &str, created: &str, spec: MeshPolicySpec) -> Object {
    let mut p = MeshPolicy::new(name, spec);
    p.metadata.namespace = Some(ns.into());
    p.metadata.generation = Some(1);
    p.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
    Object::MeshPolicy(Box::new(p))
}

pub fn target(name: &str) -> Option<TargetRef> {
    Some(TargetRef {
        kind: "Service".into(),
        name: name.into(),
    })
}

pub fn cluster(objects: Vec<Object>) -> Cluster {
    let mut c = Cluster::default();
    for o in objects {
        c.apply(o);
    }
    c
}

/// An AdmissionReview's pod with the webhook response's base64 JSONPatch
/// applied, as the API server would apply it.
pub fn patched(review: &serde_json::Value, response: &serde_json::Value) -> serde_json::Value {
    use base64::Engine;
    let b64 = response["response"]["patch"]
        .as_str()
        .expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}
