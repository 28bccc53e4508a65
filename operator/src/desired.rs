//! The desired state: a pure function from the index of cluster objects to
//! every routing table and identity the mesh needs, and a verdict on every
//! MeshPolicy.
//!
//! Linear in the size of the cluster: slices are grouped by Service once,
//! pods are found by key, and the Service list is built once and shared by
//! every namespace's table. Output is sorted, so equal input gives equal
//! bytes and an unchanged table is recognised by its digest.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use weft_api::SpiffeId;
use weft_api::names::annotations::{OPAQUE_PORTS, SERVICE_NAME_LABEL};
use weft_api::routes::{
    Defaults, Endpoint, Protocol, ROUTES_VERSION, RoutesTable, Service as RouteService,
    ServicePort as RoutePort,
};

use crate::cluster::{Cluster, ObjectKey};
use crate::policy::{Resolution, Verdict};
use crate::scope::{MeshConfig, service_account};

/// Ports whose protocols speak first or are binary: never inspected
/// (MySQL, SMTP, PostgreSQL, Redis, memcached, …).
pub use weft_api::names::DEFAULT_OPAQUE_PORTS;

/// Everything the operator should write.
#[derive(Debug, Default)]
pub struct Desired {
    /// The routing table of each meshed namespace; `generation` 0 (the
    /// writer assigns it), `digest` set.
    pub tables: BTreeMap<String, RoutesTable>,
    /// `(namespace, service account)` of every identity to issue.
    pub identities: BTreeSet<(String, String)>,
    /// The meshed pods: `(namespace/name, service account)`.
    pub meshed_pods: BTreeMap<ObjectKey, String>,
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
}

/// Computes the desired state of `cluster`.
pub fn desired(cluster: &Cluster, mesh: &MeshConfig) -> Desired {
    let resolution = Resolution::new(cluster, mesh);
    let meshed_pods: BTreeMap<ObjectKey, String> = cluster
        .pods
        .iter()
        // System and operator namespaces are never meshed, whatever a pod says.
        .filter(|(key, pod)| {
            !mesh.is_excluded_namespace(&key.namespace)
                && mesh.is_meshed(cluster.namespaces.get(&key.namespace).map(|n| &**n), pod)
        })
        .map(|(key, pod)| (key.clone(), service_account(pod).to_owned()))
        .collect();
    let meshed_namespaces: BTreeSet<String> = cluster
        .namespaces
        .iter()
        .filter(|(name, ns)| {
            crate::scope::namespace_enabled(ns) && !mesh.is_excluded_namespace(name)
        })
        .map(|(name, _)| name.clone())
        .chain(meshed_pods.keys().map(|k| k.namespace.clone()))
        .collect();

    let services = services(cluster, mesh, &resolution, &meshed_pods);
    let tables = meshed_namespaces
        .iter()
        .map(|ns| {
            let mut table = RoutesTable {
                version: ROUTES_VERSION,
                generation: 0,
                digest: None,
                trust_domain: mesh.trust_domain.clone(),
                namespace: ns.clone(),
                defaults: Defaults {
                    inbound: resolution.namespace_inbound(ns, mesh),
                },
                services: services.clone(),
            };
            table.digest = Some(digest(&table));
            (ns.clone(), table)
        })
        .collect();

    let identities = cluster
        .service_accounts
        .keys()
        .filter(|k| meshed_namespaces.contains(&k.namespace))
        .map(|k| (k.namespace.clone(), k.name.clone()))
        .chain(
            meshed_pods
                .iter()
                .map(|(k, sa)| (k.namespace.clone(), sa.clone())),
        )
        .collect();
    Desired {
        tables,
        identities,
        meshed_pods,
        verdicts: resolution.verdicts,
    }
}

/// `sha256:<hex>` of the table's JSON with `generation` and `digest` unset.
pub fn digest(table: &RoutesTable) -> String {
    let mut content = table.clone();
    content.generation = 0;
    content.digest = None;
    // Serialising plain data cannot fail.
    let bytes = serde_json::to_vec(&content).unwrap_or_default();
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Every routable Service of the cluster, sorted, with its endpoints.
fn services(
    cluster: &Cluster,
    mesh: &MeshConfig,
    resolution: &Resolution,
    meshed_pods: &BTreeMap<ObjectKey, String>,
) -> Vec<RouteService> {
    let mut slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in cluster.endpoint_slices.values() {
        if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
            let key = ObjectKey::new(&slice.namespace().unwrap_or_default(), svc);
            slices.entry(key).or_default().push(slice);
        }
    }
    cluster
        .services
        .iter()
        .filter(|(_, svc)| {
            svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("ExternalName")
        })
        .map(|(key, svc)| {
            let slices = slices.get(key).map(Vec::as_slice).unwrap_or_default();
            RouteService {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                cluster_ips: cluster_ips(svc),
                ports: ports(key, svc, slices, mesh, meshed_pods),
                policy: resolution.policy_for(key, mesh),
            }
        })
        .collect()
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else { return vec![] };
    let ips: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    // "None" (headless) and anything unparsable route nothing.
    ips.into_iter().filter_map(|ip| ip.parse().ok()).collect()
}

fn ports(
    key: &ObjectKey,
    svc: &Service,
    slices: &[&EndpointSlice],
    mesh: &MeshConfig,
    meshed_pods: &BTreeMap<ObjectKey, String>,
) -> Vec<RoutePort> {
    let opaque = opaque_ports(svc);
    let mut ports: Vec<RoutePort> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            Some(RoutePort {
                port: u16::try_from(p.port).ok()?,
                name: p.name.clone().filter(|n| !n.is_empty()),
                protocol: protocol(p, &opaque),
                endpoints: endpoints(key, p, slices, mesh, meshed_pods),
            })
        })
        .collect();
    ports.sort_by_key(|p| p.port);
    ports.dedup_by_key(|p| p.port);
    ports
}

/// The ports named by `weft.dev/opaque-ports`, ranges included (parsed as
/// injection parses the pod annotation); an invalid value marks nothing.
fn opaque_ports(svc: &Service) -> HashSet<u16> {
    let Some(value) = svc.annotations().get(OPAQUE_PORTS) else {
        return HashSet::new();
    };
    weft_api::net::parse_list(value, weft_api::net::parse_port_range)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.first..=r.last)
        .collect()
}

/// From `appProtocol`, then the port name's prefix (`http-`, `grpc-`, …),
/// then the opaque lists; else detect.
fn protocol(port: &ServicePort, opaque: &HashSet<u16>) -> Protocol {
    let hint = port
        .app_protocol
        .as_deref()
        .or(port.name.as_deref())
        .unwrap_or("")
        .to_ascii_lowercase();
    let by_hint = [
        ("kubernetes.io/h2c", Protocol::Http2),
        ("http2", Protocol::Http2),
        ("h2c", Protocol::Http2),
        ("grpc", Protocol::Grpc),
        ("http", Protocol::Http1),
        ("tcp", Protocol::Opaque),
    ]
    .into_iter()
    .find(|(prefix, _)| hint == *prefix || hint.starts_with(&format!("{prefix}-")));
    let number = u16::try_from(port.port).unwrap_or(0);
    match by_hint {
        _ if opaque.contains(&number) => Protocol::Opaque,
        Some((_, protocol)) => protocol,
        None if DEFAULT_OPAQUE_PORTS.contains(&number) => Protocol::Opaque,
        None => Protocol::Detect,
    }
}

/// The endpoints serving `port`: each slice port with the Service port's
/// name (EndpointSlices name ports as the Service does), deduplicated.
fn endpoints(
    key: &ObjectKey,
    port: &ServicePort,
    slices: &[&EndpointSlice],
    mesh: &MeshConfig,
    meshed_pods: &BTreeMap<ObjectKey, String>,
) -> Vec<Endpoint> {
    let want = port.name.as_deref().unwrap_or("");
    let mut out: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == want)
            .and_then(|p| u16::try_from(p.port?).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let conditions = ep.conditions.as_ref();
            // Kubernetes: an unset `ready` means ready; terminating never is.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                && !conditions.and_then(|c| c.terminating).unwrap_or(false);
            let identity = endpoint_identity(key, ep.target_ref.as_ref(), mesh, meshed_pods);
            for address in ep.addresses.iter().filter_map(|a| a.parse().ok()) {
                let entry = out.entry((address, target)).or_insert_with(|| Endpoint {
                    address,
                    port: target,
                    identity: identity.clone(),
                    zone: ep.zone.clone().filter(|z| !z.is_empty()),
                    ready,
                });
                entry.ready |= ready;
            }
        }
    }
    out.into_values().collect()
}

/// The identity of the pod behind an endpoint, when that pod is meshed.
fn endpoint_identity(
    key: &ObjectKey,
    target: Option<&k8s_openapi::api::core::v1::ObjectReference>,
    mesh: &MeshConfig,
    meshed_pods: &BTreeMap<ObjectKey, String>,
) -> Option<SpiffeId> {
    let target = target.filter(|t| t.kind.as_deref() == Some("Pod"))?;
    let pod_ns = target.namespace.as_deref().unwrap_or(&key.namespace);
    let pod = ObjectKey::new(pod_ns, target.name.as_deref()?);
    let sa = meshed_pods.get(&pod)?;
    mesh.identity(pod_ns, sa)
}
