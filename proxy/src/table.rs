//! The routing table as the hot path reads it: built once per reload from a
//! validated `routes.json`, then only read (behind an `ArcSwap`), so looking
//! up a destination takes no lock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use weft_api::SpiffeId;
use weft_api::routes::{InboundPolicy, RoutesTable};

/// Who this proxy serves, for picking its inbound policy out of the table.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub namespace: Option<String>,
    pub ip: Option<IpAddr>,
}

/// A meshed destination: one port of one Service.
#[derive(Debug)]
pub struct Target {
    /// `namespace/name:port`, for logs and metrics.
    pub name: String,
    /// Ready endpoints only; terminating and unready ones get no new connections.
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Option<Duration>,
    next: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Present when the endpoint is meshed: the identity its certificate must carry.
    pub identity: Option<SpiffeId>,
}

impl Target {
    /// The endpoints in the order to try them: round-robin start, then the
    /// rest, so a failed connect moves on to another endpoint.
    pub fn pick_order(&self) -> impl Iterator<Item = &Endpoint> {
        let n = self.endpoints.len();
        let start = if n == 0 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        (0..n).map(move |i| &self.endpoints[(start + i) % n])
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
    inbound_default: InboundPolicy,
}

impl Table {
    /// Indexes `routes` for `pod`. The inbound policy of a port is that of
    /// the Service of the pod's own namespace that lists this pod's address
    /// at that port; other ports get the namespace default.
    pub fn new(routes: &RoutesTable, pod: &Pod) -> Self {
        let mut targets = HashMap::new();
        let mut direct = Vec::new();
        let mut inbound_ports = HashMap::new();
        for svc in &routes.services {
            let own_namespace = pod.namespace.as_deref() == Some(svc.namespace.as_str());
            for port in &svc.ports {
                let target = Arc::new(Target {
                    name: format!("{}/{}:{}", svc.namespace, svc.name, port.port),
                    endpoints: port
                        .endpoints
                        .iter()
                        .filter(|e| e.ready)
                        .map(|e| Endpoint {
                            addr: SocketAddr::new(e.address, e.port),
                            identity: e.identity.clone(),
                        })
                        .collect(),
                    connect_timeout: svc
                        .policy
                        .outbound
                        .timeouts
                        .connect_ms
                        .map(Duration::from_millis),
                    next: AtomicUsize::new(0),
                });
                for ip in &svc.cluster_ips {
                    targets.insert(SocketAddr::new(*ip, port.port), target.clone());
                }
                direct.extend(
                    port.endpoints
                        .iter()
                        .filter(|e| e.identity.is_some() && Some(e.address) != pod.ip)
                        .map(|e| (svc, e)),
                );
                if own_namespace {
                    for ep in &port.endpoints {
                        if Some(ep.address) == pod.ip {
                            let policies: &mut Vec<InboundPolicy> =
                                inbound_ports.entry(ep.port).or_default();
                            if !policies.contains(&svc.policy.inbound) {
                                policies.push(svc.policy.inbound.clone());
                            }
                        }
                    }
                }
            }
        }
        // A meshed pod called by its own address (a headless Service, a
        // StatefulSet peer) gets mesh TLS too; never this pod itself, whose
        // calls to itself stay inside the pod.
        for (svc, e) in direct {
            let addr = SocketAddr::new(e.address, e.port);
            targets.entry(addr).or_insert_with(|| {
                Arc::new(Target {
                    name: format!("{}/{}@{addr}", svc.namespace, svc.name),
                    endpoints: vec![Endpoint {
                        addr,
                        identity: e.identity.clone(),
                    }],
                    connect_timeout: svc
                        .policy
                        .outbound
                        .timeouts
                        .connect_ms
                        .map(Duration::from_millis),
                    next: AtomicUsize::new(0),
                })
            });
        }
        Self {
            generation: routes.generation,
            trust_domain: routes.trust_domain.clone(),
            targets,
            inbound_ports,
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
        }
    }

    #[test]
    fn every_virtual_ip_leads_to_the_ready_endpoints() {
        let table = Table::new(&routes(), &Pod::default());
        for vip in ["198.19.0.1:80", "[fd00::1]:80"] {
            let target = table.target(&vip.parse().unwrap()).unwrap();
            let addrs: Vec<_> = target
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect();
            assert_eq!(addrs, ["198.18.0.1:9090", "198.18.0.3:9090"]);
            assert_eq!(target.name, "shop/cart:80");
            assert_eq!(target.connect_timeout, Some(Duration::from_millis(250)));
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
        assert_eq!(direct.endpoints.len(), 1);
        assert_eq!(direct.endpoints[0].identity.as_ref(), Some(&id));
        assert_eq!(direct.name, "shop/cart@198.18.0.2:9090");
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
            t.pick_order()
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
