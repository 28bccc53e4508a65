//! EndpointSlices derived from Pods and Service selectors, as the
//! EndpointSlice controller would write them. The local runtime has no such
//! controller, so it derives them for every Service that has none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use weft_api::names::annotations::SERVICE_NAME_LABEL;

use crate::cluster::{Cluster, ObjectKey};

/// Slices for every selector Service of `cluster` that has no slice yet.
pub fn derive_slices(cluster: &Cluster) -> Vec<EndpointSlice> {
    let with_slices: BTreeSet<ObjectKey> = cluster
        .endpoint_slices
        .values()
        .filter_map(|s| {
            let svc = s.labels().get(SERVICE_NAME_LABEL)?;
            Some(ObjectKey::new(&s.namespace().unwrap_or_default(), svc))
        })
        .collect();
    cluster
        .services
        .iter()
        .filter(|(key, _)| !with_slices.contains(key))
        .flat_map(|(key, svc)| slices_for(key, svc, cluster))
        .collect()
}

fn slices_for(key: &ObjectKey, svc: &Service, cluster: &Cluster) -> Vec<EndpointSlice> {
    let Some(spec) = &svc.spec else {
        return vec![];
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return vec![];
    };
    let ports: Vec<&ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .collect();
    let first = ObjectKey::new(&key.namespace, "");
    // Pods grouped by how the Service's ports resolve on them: one slice
    // per group, as the controller does for named target ports.
    let mut groups: BTreeMap<Vec<Option<i32>>, Vec<&Arc<Pod>>> = BTreeMap::new();
    for (_, pod) in cluster
        .pods
        .range(first..)
        .take_while(|(k, _)| k.namespace == key.namespace)
    {
        let labels = pod.labels();
        let selected = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        if selected && pod_ip(pod).is_some() {
            let resolved = ports.iter().map(|p| resolve_port(p, pod)).collect();
            groups.entry(resolved).or_default().push(pod);
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (resolved, pods))| slice(key, i, &ports, &resolved, &pods))
        .collect()
}

fn slice(
    key: &ObjectKey,
    index: usize,
    ports: &[&ServicePort],
    resolved: &[Option<i32>],
    pods: &[&Arc<Pod>],
) -> EndpointSlice {
    let ports = ports
        .iter()
        .zip(resolved)
        .filter_map(|(p, r)| {
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some((*r)?),
                protocol: Some("TCP".into()),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    let address_type = match pods.first().and_then(|p| pod_ip(p)) {
        Some(ip) if ip.contains(':') => "IPv6",
        _ => "IPv4",
    };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-{index}", key.name)),
            namespace: Some(key.namespace.clone()),
            labels: Some([(SERVICE_NAME_LABEL.to_owned(), key.name.clone())].into()),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: pods.iter().map(|p| endpoint(p)).collect(),
        ports: Some(ports),
    }
}

fn endpoint(pod: &Pod) -> Endpoint {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = is_ready(pod);
    Endpoint {
        addresses: pod_ip(pod)
            .map(|ip| vec![ip.to_owned()])
            .unwrap_or_default(),
        conditions: Some(EndpointConditions {
            ready: Some(ready && !terminating),
            serving: Some(ready),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod.name_any()),
            namespace: pod.namespace(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// The pod's `Ready` condition.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The container port a Service port sends to on `pod`, if any.
fn resolve_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}
