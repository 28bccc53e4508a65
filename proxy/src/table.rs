//! The routing table as the hot path reads it: built once per reload from a
//! validated `routes.json`, then only read (behind an `ArcSwap`), so looking
//! up a destination takes no lock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_api::SpiffeId;
use weft_api::routes::{
    InboundPolicy, LoadBalancer, OutboundPolicy, OutlierDetection, Protocol, RoutesTable, Service,
    ServicePort,
};

use crate::balance::{self, EndpointStats};
use crate::metrics::Shared;
use crate::retry::{RetryBudget, RetryPolicy};
use crate::upstream::{Upstream, Upstreams};

/// Who this proxy serves, for picking its inbound policy out of the table,
/// and the per-endpoint state (latency, health, pooled connections) that
/// outlives any one table.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub namespace: Option<String>,
    pub ip: Option<IpAddr>,
    pub upstreams: Arc<Upstreams>,
}

/// A meshed destination: one port of one Service, as the caller addressed it.
#[derive(Debug)]
pub struct Target {
    /// `namespace/name:port`, for logs and metrics.
    pub name: Arc<str>,
    pub protocol: Protocol,
    /// Bounds a whole request, retries included, up to the response head.
    pub request_timeout: Option<Duration>,
    pub retries: Option<Retries>,
    /// Weighted backends: the Service itself, or its traffic split.
    backends: Vec<(Arc<Backend>, u32)>,
    total_weight: u32,
}

/// The caller's retry policy and the budget that bounds it.
#[derive(Debug)]
pub struct Retries {
    pub policy: RetryPolicy,
    pub budget: RetryBudget,
}

/// One Service port's endpoints and how to spread requests over them.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    /// Ready endpoints only; terminating and unready ones get no new requests.
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Option<Duration>,
    pub load_balancer: LoadBalancer,
    pub outlier: Option<OutlierDetection>,
    next: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Present when the endpoint is meshed: the identity its certificate must carry.
    pub identity: Option<SpiffeId>,
    /// `identity` as a metric label ("" when plaintext).
    pub peer: Shared,
    /// Load, health and connections, kept across reloads.
    pub upstream: Arc<Upstream>,
}

impl AsRef<EndpointStats> for Endpoint {
    fn as_ref(&self) -> &EndpointStats {
        &self.upstream.stats
    }
}

impl Target {
    /// The backend for one request or connection: by weight when split.
    pub fn backend(&self) -> &Arc<Backend> {
        let mut ticket = match self.backends.len() {
            1 => 0,
            _ => fastrand::u32(..self.total_weight),
        };
        for (backend, weight) in &self.backends {
            if ticket < *weight {
                return backend;
            }
            ticket -= weight;
        }
        &self.backends[0].0
    }

    /// Whether the port's traffic must never be inspected.
    pub fn is_opaque(&self) -> bool {
        self.protocol == Protocol::Opaque
    }
}

impl Backend {
    /// The endpoints in the order to try them for a connection: round-robin
    /// start, then the rest, so a failed connect moves on to another one.
    pub fn pick_order(&self) -> impl Iterator<Item = &Endpoint> {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| &self.endpoints[(start + i) % n])
    }

    /// The endpoint (its index) for one request, by the backend's
    /// balancing algorithm.
    pub fn pick(&self, now: Instant) -> Option<usize> {
        balance::pick(&self.endpoints, self.load_balancer, &self.next, now)
    }
}

#[derive(Debug)]
pub struct Table {
    pub generation: u64,
    pub trust_domain: String,
    targets: HashMap<SocketAddr, Arc<Target>>,
    /// The policies of every Service of this pod's namespace that lists this
    /// pod at a port; a connection must satisfy all of them.
    inbound_ports: HashMap<u16, Vec<InboundPolicy>>,
    /// The protocol of this pod's own ports, from the Services listing it.
    inbound_protocols: HashMap<u16, Protocol>,
    inbound_default: InboundPolicy,
}

/// A Service port by `(namespace, name, port)`.
type PortKey<'a> = (&'a str, &'a str, u16);

impl Table {
    /// Indexes `routes` for `pod`. The inbound policy of a port is that of
    /// the Service of the pod's own namespace that lists this pod's address
    /// at that port; other ports get the namespace default.
    pub fn new(routes: &RoutesTable, pod: &Pod) -> Self {
        pod.upstreams.prune();
        let backends = backends(routes, pod);
        let mut targets = HashMap::new();
        let mut inbound_ports = HashMap::new();
        let mut inbound_protocols = HashMap::new();
        for svc in &routes.services {
            let own_namespace = pod.namespace.as_deref() == Some(svc.namespace.as_str());
            for port in &svc.ports {
                let target = Arc::new(apex(svc, port, &backends));
                for ip in &svc.cluster_ips {
                    targets.insert(SocketAddr::new(*ip, port.port), target.clone());
                }
                if !own_namespace {
                    continue;
                }
                for ep in port.endpoints.iter().filter(|e| Some(e.address) == pod.ip) {
                    let policies: &mut Vec<InboundPolicy> =
                        inbound_ports.entry(ep.port).or_default();
                    if !policies.contains(&svc.policy.inbound) {
                        policies.push(svc.policy.inbound.clone());
                    }
                    inbound_protocols.insert(ep.port, port.protocol);
                }
            }
        }
        direct_targets(routes, pod, &mut targets);
        Self {
            generation: routes.generation,
            trust_domain: routes.trust_domain.clone(),
            targets,
            inbound_ports,
            inbound_protocols,
            inbound_default: routes.defaults.inbound.clone(),
        }
    }

    /// The meshed destination behind a virtual address, if any.
    pub fn target(&self, addr: &SocketAddr) -> Option<&Arc<Target>> {
        self.targets.get(addr)
    }

    /// What the inbound side accepts on this pod's `port`: every policy
    /// listed must allow a connection (two Services selecting the same pod
    /// port do not let the laxer one win).
    pub fn inbound_policies(&self, port: u16) -> &[InboundPolicy] {
        self.inbound_ports
            .get(&port)
            .map_or(std::slice::from_ref(&self.inbound_default), Vec::as_slice)
    }

    /// The protocol of this pod's `port` as its Service declares it.
    pub fn inbound_protocol(&self, port: u16) -> Protocol {
        self.inbound_protocols
            .get(&port)
            .copied()
            .unwrap_or_default()
    }
}

/// Every Service port's backend, for targets and traffic splits to share.
fn backends<'a>(routes: &'a RoutesTable, pod: &Pod) -> HashMap<PortKey<'a>, Arc<Backend>> {
    let mut out = HashMap::new();
    for svc in &routes.services {
        for port in &svc.ports {
            let endpoints = port
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| endpoint(pod, SocketAddr::new(e.address, e.port), &e.identity))
                .collect();
            let backend = backend(port_name(svc, port), endpoints, &svc.policy.outbound);
            for e in &backend.endpoints {
                e.upstream.set_connect_timeout(backend.connect_timeout);
            }
            out.insert(
                (svc.namespace.as_str(), svc.name.as_str(), port.port),
                Arc::new(backend),
            );
        }
    }
    out
}

fn backend(name: String, endpoints: Vec<Endpoint>, policy: &OutboundPolicy) -> Backend {
    Backend {
        name: name.into(),
        endpoints,
        connect_timeout: policy.timeouts.connect_ms.map(Duration::from_millis),
        load_balancer: policy.load_balancer,
        outlier: policy.outlier_detection.clone(),
        next: AtomicUsize::new(0),
    }
}

/// An endpoint; this pod's own address is reached in plaintext (its proxy
/// does not intercept its own traffic, so mesh TLS would land on the app).
fn endpoint(pod: &Pod, addr: SocketAddr, identity: &Option<SpiffeId>) -> Endpoint {
    let identity = identity.clone().filter(|_| Some(addr.ip()) != pod.ip);
    Endpoint {
        addr,
        upstream: pod.upstreams.get(addr, identity.as_ref()),
        peer: Shared(
            identity
                .as_ref()
                .map(|i| i.to_string())
                .unwrap_or_default()
                .into(),
        ),
        identity,
    }
}

fn port_name(svc: &Service, port: &ServicePort) -> String {
    format!("{}/{}:{}", svc.namespace, svc.name, port.port)
}

/// The target of a Service port's virtual addresses: its own backend, or
/// the backends of its traffic split (Services of the same namespace, at the
/// same port; a backend the table does not hold is left out).
fn apex(
    svc: &Service,
    port: &ServicePort,
    backends: &HashMap<PortKey<'_>, Arc<Backend>>,
) -> Target {
    let policy = &svc.policy.outbound;
    let mut weighted: Vec<(Arc<Backend>, u32)> = policy
        .split
        .iter()
        .filter(|b| b.weight > 0)
        .filter_map(|b| {
            let found = backends.get(&(svc.namespace.as_str(), b.service.as_str(), port.port));
            if found.is_none() {
                tracing::warn!(service = %port_name(svc, port), backend = %b.service,
                    "traffic split backend is not in the routing table; left out");
            }
            Some((found?.clone(), b.weight))
        })
        .collect();
    if weighted.is_empty() {
        let own = backends.get(&(svc.namespace.as_str(), svc.name.as_str(), port.port));
        let own = own
            .cloned()
            .unwrap_or_else(|| Arc::new(backend(port_name(svc, port), Vec::new(), policy)));
        weighted.push((own, 1));
    }
    target(port_name(svc, port), port.protocol, policy, weighted)
}

fn target(
    name: String,
    protocol: Protocol,
    policy: &OutboundPolicy,
    backends: Vec<(Arc<Backend>, u32)>,
) -> Target {
    Target {
        name: name.into(),
        protocol,
        request_timeout: policy.timeouts.request_ms.map(Duration::from_millis),
        retries: policy.retries.as_ref().map(|r| Retries {
            policy: RetryPolicy::new(r),
            budget: RetryBudget::new(r.budget_percent, r.min_per_second),
        }),
        total_weight: backends.iter().map(|(_, w)| w).sum(),
        backends,
    }
}

/// A meshed pod called by its own address (a headless Service, a
/// StatefulSet peer) gets mesh TLS too; never this pod itself, whose calls
/// to itself stay inside the pod.
fn direct_targets(routes: &RoutesTable, pod: &Pod, targets: &mut HashMap<SocketAddr, Arc<Target>>) {
    for svc in &routes.services {
        for port in &svc.ports {
            let meshed = port
                .endpoints
                .iter()
                .filter(|e| e.identity.is_some() && Some(e.address) != pod.ip);
            for e in meshed {
                let addr = SocketAddr::new(e.address, e.port);
                targets.entry(addr).or_insert_with(|| {
                    let name = format!("{}/{}@{addr}", svc.namespace, svc.name);
                    let policy = &svc.policy.outbound;
                    let one = backend(name.clone(), vec![endpoint(pod, addr, &e.identity)], policy);
                    Arc::new(target(
                        name,
                        port.protocol,
                        policy,
                        vec![(Arc::new(one), 1)],
                    ))
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::routes::{
        Defaults, Endpoint as ApiEndpoint, MtlsMode, Policy, Protocol, Service, ServicePort,
    };

    fn ep(addr: &str, ready: bool) -> ApiEndpoint {
        ApiEndpoint {
            address: addr.parse().unwrap(),
            port: 9090,
            identity: None,
            zone: None,
            ready,
        }
    }

    fn routes() -> RoutesTable {
        let mut strict = Policy::default();
        strict.inbound.mtls = MtlsMode::Strict;
        strict.outbound.timeouts.connect_ms = Some(250);
        RoutesTable {
            version: 1,
            generation: 4,
            digest: None,
            trust_domain: "td".into(),
            namespace: "shop".into(),
            defaults: Defaults {
                inbound: InboundPolicy {
                    mtls: MtlsMode::Permissive,
                    ..Default::default()
                },
            },
            services: vec![Service {
                name: "cart".into(),
                namespace: "shop".into(),
                cluster_ips: vec!["198.19.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                ports: vec![ServicePort {
                    port: 80,
                    name: None,
                    protocol: Protocol::Detect,
                    endpoints: vec![
                        ep("198.18.0.1", true),
                        ep("198.18.0.2", false),
                        ep("198.18.0.3", true),
                    ],
                }],
                policy: strict,
            }],
        }
    }

    fn pod(ns: &str, ip: &str) -> Pod {
        Pod {
            namespace: Some(ns.into()),
            ip: Some(ip.parse().unwrap()),
            ..Pod::default()
        }
    }

    #[test]
    fn every_virtual_ip_leads_to_the_ready_endpoints() {
        let table = Table::new(&routes(), &Pod::default());
        for vip in ["198.19.0.1:80", "[fd00::1]:80"] {
            let target = table.target(&vip.parse().unwrap()).unwrap();
            let backend = target.backend();
            let addrs: Vec<_> = backend
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect();
            assert_eq!(addrs, ["198.18.0.1:9090", "198.18.0.3:9090"]);
            assert_eq!(&*target.name, "shop/cart:80");
            assert_eq!(backend.connect_timeout, Some(Duration::from_millis(250)));
        }
        assert!(table.target(&"198.19.0.1:81".parse().unwrap()).is_none());
    }

    #[test]
    fn meshed_endpoints_are_reachable_by_their_own_address() {
        let mut r = routes();
        let id = weft_api::SpiffeId::workload("td", "shop", "cart").unwrap();
        for ep in &mut r.services[0].ports[0].endpoints {
            ep.identity = Some(id.clone());
        }
        r.services[0].ports[0].endpoints[2].identity = None;
        let table = Table::new(&r, &pod("web", "198.18.0.1"));
        // Ready or not, a meshed pod addressed directly gets mesh TLS...
        let direct = table.target(&"198.18.0.2:9090".parse().unwrap()).unwrap();
        let only = &direct.backend().endpoints;
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].identity.as_ref(), Some(&id));
        assert_eq!(&*direct.name, "shop/cart@198.18.0.2:9090");
        // ...but not this pod itself, nor an unmeshed endpoint.
        assert!(table.target(&"198.18.0.1:9090".parse().unwrap()).is_none());
        assert!(table.target(&"198.18.0.3:9090".parse().unwrap()).is_none());
    }

    #[test]
    fn two_services_on_one_pod_port_both_apply() {
        let mut r = routes();
        let mut lax = r.services[0].clone();
        lax.name = "cart-admin".into();
        lax.cluster_ips = vec!["198.19.0.9".parse().unwrap()];
        lax.policy = Policy::default();
        lax.policy.inbound.mtls = MtlsMode::Permissive;
        r.services.insert(0, lax);
        let table = Table::new(&r, &pod("shop", "198.18.0.1"));
        let modes: Vec<_> = table
            .inbound_policies(9090)
            .iter()
            .map(|p| p.mtls)
            .collect();
        assert_eq!(modes, [MtlsMode::Permissive, MtlsMode::Strict]);
    }

    #[test]
    fn pick_order_rotates_and_covers_every_endpoint() {
        let table = Table::new(&routes(), &Pod::default());
        let target = table.target(&"198.19.0.1:80".parse().unwrap()).unwrap();
        let order = |t: &Target| {
            t.backend()
                .pick_order()
                .map(|e| e.addr.ip().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(target), ["198.18.0.1", "198.18.0.3"]);
        assert_eq!(order(target), ["198.18.0.3", "198.18.0.1"]);
        assert_eq!(order(target), ["198.18.0.1", "198.18.0.3"]);
    }

    #[test]
    fn inbound_policy_comes_from_the_service_listing_this_pod() {
        let own = Table::new(&routes(), &pod("shop", "198.18.0.2"));
        assert_eq!(own.inbound_policies(9090)[0].mtls, MtlsMode::Strict);
        assert_eq!(own.inbound_policies(9091)[0].mtls, MtlsMode::Permissive);
        let not_listed = Table::new(&routes(), &pod("shop", "198.18.0.9"));
        assert_eq!(
            not_listed.inbound_policies(9090)[0].mtls,
            MtlsMode::Permissive
        );
        let other_namespace = Table::new(&routes(), &pod("web", "198.18.0.1"));
        assert_eq!(
            other_namespace.inbound_policies(9090)[0].mtls,
            MtlsMode::Permissive
        );
    }
}
