//! The routing table as the hot path reads it: built once per reload from a
//! validated `routes.json`, then only read (behind an `ArcSwap`), so looking
//! up a destination takes no lock.
//!
//! A reload only indexes the document: which address is which Service port
//! or meshed pod. A destination's endpoints and their per-endpoint state are
//! built on its first use in this table, as mature meshes resolve a
//! destination when it is first called: a pod calls a few of the thousands
//! of Services a large table lists, and a reload is then dominated by the
//! destinations in use, not by the size of the table.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use weft_api::SpiffeId;
use weft_api::routes::{
    Endpoint as ApiEndpoint, InboundPolicy, LoadBalancer, OutboundPolicy, OutlierDetection,
    Protocol, RoutesTable, Service, ServicePort,
};

use crate::balance::{self, EndpointStats};
use crate::metrics::Shared;
use crate::retry::{RetryBudget, RetryPolicy};
use crate::series::SeriesCache;
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
    /// Closes a connection relayed as bytes that is quiet for this long.
    pub idle_timeout: Option<Duration>,
    pub retries: Option<Retries>,
    /// Weighted backends: the Service itself, or its traffic split.
    backends: Vec<(Arc<Backend>, u32)>,
    total_weight: u32,
    /// Its requests' metric series, by the endpoint identity that answered.
    pub series: SeriesCache,
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

/// The routing table of one reload.
///
/// Targets are built on first use (a `OnceLock` each: the first caller
/// builds, which takes the [`Upstreams`] lock once per endpoint; every
/// later lookup is a map lookup and an atomic load). Per-endpoint state is
/// found again by address and identity in [`Upstreams`], which keeps it
/// only while something holds it. The previous table holds what it built,
/// but it is dropped when this one is swapped in, typically before this
/// one has built the same targets; so this table holds, from its creation
/// to its end, the upstreams in use then that it lists too. (An endpoint
/// the old table first uses after that starts afresh in this one.)
#[derive(Debug)]
pub struct Table {
    pub generation: u64,
    pub trust_domain: String,
    /// The document the targets are built from.
    routes: RoutesTable,
    pod_ip: Option<IpAddr>,
    upstreams: Arc<Upstreams>,
    /// Every meshed destination by address: Service ports by their virtual
    /// addresses, meshed pods by their own. Hashed with foldhash, several
    /// times faster than SipHash on a socket address: the keys come from the
    /// operator's table, not from anyone who could choose colliding ones.
    addrs: foldhash::HashMap<SocketAddr, Slot>,
    ports: Box<[PortSlot]>,
    pods: Box<[PodSlot]>,
    /// The upstreams in use at this table's creation that it lists: held,
    /// never read, so that a target built later finds their state.
    _carried: Vec<Arc<Upstream>>,
    /// The policies of every Service of this pod's namespace that lists this
    /// pod at a port; a connection must satisfy all of them.
    inbound_ports: HashMap<u16, Vec<InboundPolicy>>,
    /// The protocol of this pod's own ports, from the Services listing it.
    inbound_protocols: HashMap<u16, Protocol>,
    inbound_default: InboundPolicy,
}

/// What an address of the table leads to.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// A Service port (index into `ports`).
    Service(usize),
    /// A meshed pod called by its own address (index into `pods`).
    Pod(usize),
}

/// One Service port: `routes.services[svc].ports[port]`.
#[derive(Debug)]
struct PortSlot {
    svc: usize,
    port: usize,
    /// The traffic split's backends present in the table (indexes into
    /// `ports`) with their weights; empty for the port itself.
    split: Box<[(usize, u32)]>,
    /// Its own endpoints, shared with the targets splitting traffic to it.
    backend: OnceLock<Arc<Backend>>,
    /// The target of its virtual addresses.
    target: OnceLock<Arc<Target>>,
}

/// A meshed endpoint called directly: `routes.services[svc].ports[port].endpoints[endpoint]`.
#[derive(Debug)]
struct PodSlot {
    svc: usize,
    port: usize,
    endpoint: usize,
    target: OnceLock<Arc<Target>>,
}

/// A Service port by `(namespace, name, port)`.
type PortKey<'a> = (&'a str, &'a str, u16);

impl Table {
    /// Indexes `routes` for `pod`. The inbound policy of a port is that of
    /// the Service of the pod's own namespace that lists this pod's address
    /// at that port; other ports get the namespace default.
    pub fn new(routes: RoutesTable, pod: &Pod) -> Self {
        let vips: usize = routes
            .services
            .iter()
            .map(|s| s.cluster_ips.len() * s.ports.len())
            .sum();
        let listed: usize = endpoints(&routes).count();
        let mut addrs = HashMap::with_capacity_and_hasher(vips + listed, Default::default());
        let mut ports = Vec::new();
        let mut inbound_ports = HashMap::new();
        let mut inbound_protocols = HashMap::new();
        for (s, svc) in routes.services.iter().enumerate() {
            let own_namespace = pod.namespace.as_deref() == Some(svc.namespace.as_str());
            for (p, port) in svc.ports.iter().enumerate() {
                for ip in &svc.cluster_ips {
                    addrs.insert(SocketAddr::new(*ip, port.port), Slot::Service(ports.len()));
                }
                ports.push(PortSlot {
                    svc: s,
                    port: p,
                    split: Box::default(),
                    backend: OnceLock::new(),
                    target: OnceLock::new(),
                });
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
        resolve_splits(&routes, &mut ports);
        let pods = direct_targets(&routes, pod.ip, &mut addrs);
        let carried = pod
            .upstreams
            .in_use(endpoints(&routes).map(|e| (socket_addr(e), identity(e, pod.ip))));
        Self {
            generation: routes.generation,
            trust_domain: routes.trust_domain.clone(),
            inbound_default: routes.defaults.inbound.clone(),
            routes,
            pod_ip: pod.ip,
            upstreams: pod.upstreams.clone(),
            addrs,
            ports: ports.into(),
            pods: pods.into(),
            _carried: carried,
            inbound_ports,
            inbound_protocols,
        }
    }

    /// The meshed destination behind a virtual address, if any; built on
    /// its first use in this table.
    pub fn target(&self, addr: &SocketAddr) -> Option<&Arc<Target>> {
        Some(match *self.addrs.get(addr)? {
            Slot::Service(i) => self.service_target(i),
            Slot::Pod(i) => self.pod_target(i),
        })
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

    fn service_port(&self, svc: usize, port: usize) -> (&Service, &ServicePort) {
        let svc = &self.routes.services[svc];
        (svc, &svc.ports[port])
    }

    /// The target of a Service port's virtual addresses: its own backend,
    /// or the backends of its traffic split.
    fn service_target(&self, i: usize) -> &Arc<Target> {
        let slot = &self.ports[i];
        slot.target.get_or_init(|| {
            let (svc, port) = self.service_port(slot.svc, slot.port);
            let mut weighted: Vec<(Arc<Backend>, u32)> = slot
                .split
                .iter()
                .map(|&(b, weight)| (self.port_backend(b).clone(), weight))
                .collect();
            if weighted.is_empty() {
                weighted.push((self.port_backend(i).clone(), 1));
            }
            let name = port_name(svc, port);
            Arc::new(target(name, port.protocol, &svc.policy.outbound, weighted))
        })
    }

    /// A Service port's ready endpoints.
    fn port_backend(&self, i: usize) -> &Arc<Backend> {
        let slot = &self.ports[i];
        slot.backend.get_or_init(|| {
            let (svc, port) = self.service_port(slot.svc, slot.port);
            let policy = &svc.policy.outbound;
            let endpoints = port
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| self.endpoint(e, policy))
                .collect();
            Arc::new(backend(port_name(svc, port).into(), endpoints, policy))
        })
    }

    /// A meshed pod called by its own address: its one endpoint, with the
    /// policy of the Service listing it.
    fn pod_target(&self, i: usize) -> &Arc<Target> {
        let slot = &self.pods[i];
        slot.target.get_or_init(|| {
            let (svc, port) = self.service_port(slot.svc, slot.port);
            let e = &port.endpoints[slot.endpoint];
            let name: Arc<str> =
                format!("{}/{}@{}", svc.namespace, svc.name, socket_addr(e)).into();
            let policy = &svc.policy.outbound;
            let one = backend(name.clone(), vec![self.endpoint(e, policy)], policy);
            Arc::new(target(
                name,
                port.protocol,
                policy,
                vec![(Arc::new(one), 1)],
            ))
        })
    }

    /// An endpoint, its upstream's connect timeout set from `policy`.
    fn endpoint(&self, e: &ApiEndpoint, policy: &OutboundPolicy) -> Endpoint {
        let addr = socket_addr(e);
        let identity = identity(e, self.pod_ip).cloned();
        let upstream = self.upstreams.get(addr, identity.as_ref());
        upstream.set_connect_timeout(connect_timeout(policy));
        Endpoint {
            addr,
            upstream,
            peer: Shared(
                identity
                    .as_ref()
                    .map_or_else(|| "".into(), SpiffeId::shared_str),
            ),
            identity,
        }
    }
}

/// Every endpoint listed, ready or not.
fn endpoints(routes: &RoutesTable) -> impl Iterator<Item = &ApiEndpoint> {
    routes
        .services
        .iter()
        .flat_map(|svc| &svc.ports)
        .flat_map(|port| &port.endpoints)
}

fn socket_addr(e: &ApiEndpoint) -> SocketAddr {
    SocketAddr::new(e.address, e.port)
}

/// The identity to require of an endpoint; none for this pod's own
/// address, reached in plaintext (its proxy does not intercept its own
/// traffic, so mesh TLS would land on the app).
fn identity(e: &ApiEndpoint, pod_ip: Option<IpAddr>) -> Option<&SpiffeId> {
    e.identity.as_ref().filter(|_| Some(e.address) != pod_ip)
}

fn connect_timeout(policy: &OutboundPolicy) -> Option<Duration> {
    policy.timeouts.connect_ms.map(Duration::from_millis)
}

fn backend(name: Arc<str>, endpoints: Vec<Endpoint>, policy: &OutboundPolicy) -> Backend {
    Backend {
        name,
        endpoints,
        connect_timeout: connect_timeout(policy),
        load_balancer: policy.load_balancer,
        outlier: policy.outlier_detection.clone(),
        next: AtomicUsize::new(0),
    }
}

fn port_name(svc: &Service, port: &ServicePort) -> String {
    format!("{}/{}:{}", svc.namespace, svc.name, port.port)
}

/// The backends of each traffic split: Services of the same namespace, at
/// the same port; a backend the table does not hold is left out (warned
/// about at every reload, not on first use).
fn resolve_splits(routes: &RoutesTable, ports: &mut [PortSlot]) {
    if routes
        .services
        .iter()
        .all(|s| s.policy.outbound.split.is_empty())
    {
        return;
    }
    let by_key: HashMap<PortKey<'_>, usize> = ports
        .iter()
        .enumerate()
        .map(|(i, slot)| {
            let svc = &routes.services[slot.svc];
            let port = svc.ports[slot.port].port;
            ((svc.namespace.as_str(), svc.name.as_str(), port), i)
        })
        .collect();
    for slot in ports.iter_mut() {
        let svc = &routes.services[slot.svc];
        let port = &svc.ports[slot.port];
        slot.split = svc
            .policy
            .outbound
            .split
            .iter()
            .filter(|b| b.weight > 0)
            .filter_map(|b| {
                let found = by_key.get(&(svc.namespace.as_str(), b.service.as_str(), port.port));
                if found.is_none() {
                    tracing::warn!(service = %port_name(svc, port), backend = %b.service,
                        "traffic split backend is not in the routing table; left out");
                }
                Some((*found?, b.weight))
            })
            .collect();
    }
}

fn target(
    name: impl Into<Arc<str>>,
    protocol: Protocol,
    policy: &OutboundPolicy,
    backends: Vec<(Arc<Backend>, u32)>,
) -> Target {
    Target {
        name: name.into(),
        protocol,
        request_timeout: policy.timeouts.request_ms.map(Duration::from_millis),
        idle_timeout: policy.timeouts.idle_ms.map(Duration::from_millis),
        retries: policy.retries.as_ref().map(|r| Retries {
            policy: RetryPolicy::new(r),
            budget: RetryBudget::new(r.budget_percent, r.min_per_second),
        }),
        total_weight: backends.iter().map(|(_, w)| w).sum(),
        backends,
        series: SeriesCache::default(),
    }
}

/// A meshed pod called by its own address (a headless Service, a
/// StatefulSet peer) gets mesh TLS too, with the policy of the first
/// Service listing it; never this pod itself, whose calls to itself stay
/// inside the pod. A virtual address keeps its Service.
fn direct_targets(
    routes: &RoutesTable,
    pod_ip: Option<IpAddr>,
    addrs: &mut foldhash::HashMap<SocketAddr, Slot>,
) -> Vec<PodSlot> {
    let mut pods = Vec::new();
    for (s, svc) in routes.services.iter().enumerate() {
        for (p, port) in svc.ports.iter().enumerate() {
            for (e, ep) in port.endpoints.iter().enumerate() {
                if identity(ep, pod_ip).is_none() {
                    continue;
                }
                if let Entry::Vacant(free) = addrs.entry(socket_addr(ep)) {
                    free.insert(Slot::Pod(pods.len()));
                    pods.push(PodSlot {
                        svc: s,
                        port: p,
                        endpoint: e,
                        target: OnceLock::new(),
                    });
                }
            }
        }
    }
    pods
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
        let table = Table::new(routes(), &Pod::default());
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
        let table = Table::new(r, &pod("web", "198.18.0.1"));
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

    /// A copy of the first Service under another name and virtual IP.
    fn sibling(r: &RoutesTable, name: &str, vip: &str) -> Service {
        let mut s = r.services[0].clone();
        s.name = name.into();
        s.cluster_ips = vec![vip.parse().unwrap()];
        s
    }

    #[test]
    fn two_services_on_one_pod_port_both_apply() {
        let mut r = routes();
        let mut lax = sibling(&r, "cart-admin", "198.19.0.9");
        lax.policy = Policy::default();
        lax.policy.inbound.mtls = MtlsMode::Permissive;
        r.services.insert(0, lax);
        let table = Table::new(r, &pod("shop", "198.18.0.1"));
        let modes: Vec<_> = table
            .inbound_policies(9090)
            .iter()
            .map(|p| p.mtls)
            .collect();
        assert_eq!(modes, [MtlsMode::Permissive, MtlsMode::Strict]);
    }

    #[test]
    fn pick_order_rotates_and_covers_every_endpoint() {
        let table = Table::new(routes(), &Pod::default());
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
        let own = Table::new(routes(), &pod("shop", "198.18.0.2"));
        assert_eq!(own.inbound_policies(9090)[0].mtls, MtlsMode::Strict);
        assert_eq!(own.inbound_policies(9091)[0].mtls, MtlsMode::Permissive);
        let not_listed = Table::new(routes(), &pod("shop", "198.18.0.9"));
        assert_eq!(
            not_listed.inbound_policies(9090)[0].mtls,
            MtlsMode::Permissive
        );
        let other_namespace = Table::new(routes(), &pod("web", "198.18.0.1"));
        assert_eq!(
            other_namespace.inbound_policies(9090)[0].mtls,
            MtlsMode::Permissive
        );
    }

    /// The upstream behind `vip`'s first endpoint, building the target.
    fn first_upstream(table: &Table, vip: &str) -> Arc<Upstream> {
        let target = table.target(&vip.parse().unwrap()).unwrap();
        target.backend().endpoints[0].upstream.clone()
    }

    #[test]
    fn the_virtual_ips_of_a_port_share_one_target_built_on_first_use() {
        let pod = Pod::default();
        let table = Table::new(routes(), &pod);
        let everything = |t: &RoutesTable| {
            let listed: Vec<_> = endpoints(t).map(|e| (socket_addr(e), None)).collect();
            pod.upstreams.in_use(listed).len()
        };
        // Indexing builds nothing...
        assert_eq!(everything(&routes()), 0);
        let v4 = table.target(&"198.19.0.1:80".parse().unwrap()).unwrap();
        let v6 = table.target(&"[fd00::1]:80".parse().unwrap()).unwrap();
        // ...the first use does, once for both addresses.
        assert!(Arc::ptr_eq(v4, v6));
        assert_eq!(everything(&routes()), 2);
    }

    #[test]
    fn endpoint_state_survives_reloads_while_listed() {
        let pod = Pod::default();
        let first = Table::new(routes(), &pod);
        let upstream = first_upstream(&first, "198.19.0.1:80");
        let weak = Arc::downgrade(&upstream);
        drop(upstream);
        // The next table is made while the first is in use, which is then
        // dropped before the next one builds anything; and again.
        let second = Table::new(routes(), &pod);
        drop(first);
        let third = Table::new(routes(), &pod);
        drop(second);
        let again = first_upstream(&third, "198.19.0.1:80");
        assert!(Arc::ptr_eq(&again, &weak.upgrade().unwrap()));
        drop(again);

        // An endpoint no longer listed is forgotten with the last table
        // that held it.
        let mut gone = routes();
        gone.services[0].ports[0].endpoints.remove(0);
        let fourth = Table::new(gone, &pod);
        drop(third);
        assert!(weak.upgrade().is_none());
        assert_eq!(
            fourth
                .target(&"198.19.0.1:80".parse().unwrap())
                .unwrap()
                .backend()
                .endpoints
                .len(),
            1
        );
    }

    #[test]
    fn a_split_shares_the_backends_of_the_services_it_names() {
        let mut r = routes();
        let mut canary = sibling(&r, "cart-canary", "198.19.0.2");
        canary.ports[0].endpoints = vec![ep("198.18.0.9", true)];
        r.services.push(canary);
        r.services[0].policy.outbound.split = ["cart", "cart-canary", "missing"]
            .into_iter()
            .map(|service| weft_api::routes::WeightedBackend {
                service: service.into(),
                weight: 5,
            })
            .collect();
        let table = Table::new(r, &Pod::default());
        let split = table.target(&"198.19.0.1:80".parse().unwrap()).unwrap();
        let canary = table.target(&"198.19.0.2:80".parse().unwrap()).unwrap();
        let names: Vec<_> = split.backends.iter().map(|(b, w)| (&*b.name, *w)).collect();
        assert_eq!(names, [("shop/cart:80", 5), ("shop/cart-canary:80", 5)]);
        assert_eq!(split.total_weight, 10);
        assert!(Arc::ptr_eq(&split.backends[1].0, canary.backend()));
    }

    #[test]
    fn a_virtual_address_keeps_its_service_over_a_pod_listed_there() {
        let mut r = routes();
        let mut odd = sibling(&r, "odd", "198.19.0.2");
        let mut pod_at_vip = ep("198.19.0.1", true);
        pod_at_vip.port = 80;
        pod_at_vip.identity = Some(weft_api::SpiffeId::workload("td", "shop", "odd").unwrap());
        odd.ports[0].endpoints = vec![pod_at_vip];
        r.services.push(odd);
        let table = Table::new(r, &Pod::default());
        let target = table.target(&"198.19.0.1:80".parse().unwrap()).unwrap();
        assert_eq!(&*target.name, "shop/cart:80");
    }
}
