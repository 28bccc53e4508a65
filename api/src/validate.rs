//! Validation of a parsed routing table. Returns every problem at once, each
//! with the JSON path of the offending field, so an operator bug or a
//! hand-edited file is fixed in one round.
//!
//! Validation is part of every reload of a table of thousands of endpoints,
//! so it formats no path while the table is valid, and its duplicate
//! checks hash with foldhash rather than SipHash (the table comes from the
//! operator, not from anyone choosing colliding keys).

use std::fmt;
use std::net::IpAddr;

use foldhash::{HashSet, HashSetExt};

use crate::routes::{
    Authorization, InboundPolicy, OutboundPolicy, ROUTES_VERSION, RoutesTable, Service, ServicePort,
};
use crate::spiffe::is_valid_trust_domain;

/// Retry classes a policy may name besides a numeric status code.
pub const RETRY_CLASSES: [&str; 4] = ["5xx", "gateway-error", "reset", "connect-failure"];
/// The most attempts a retry policy may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path, e.g. `$.services[2].ports[0].endpoints[1].port`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

pub(crate) fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `s` is an RFC 1123 label, the form of namespace and Service names.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A JSON path, formatted only when a problem is reported: a table of
/// 10,000 endpoints has tens of thousands of paths and, nearly always, no
/// problem.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Index(&'a Path<'a>, &'static str, usize),
}

impl<'a> Path<'a> {
    fn field(&'a self, name: &'static str) -> Self {
        Self::Field(self, name)
    }

    fn index(&'a self, name: &'static str, i: usize) -> Self {
        Self::Index(self, name, i)
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => f.write_str("$"),
            Self::Field(parent, name) => write!(f, "{parent}.{name}"),
            Self::Index(parent, name, i) => write!(f, "{parent}.{name}[{i}]"),
        }
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn check(&mut self, ok: bool, path: Path<'_>, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(Problem {
                path: path.to_string(),
                message: message(),
            });
        }
    }

    fn label(&mut self, path: Path<'_>, value: &str) {
        self.check(is_dns_label(value), path, || {
            format!("{value:?} is not a DNS label (a-z, 0-9, '-', at most 63)")
        });
    }
}

impl RoutesTable {
    /// Every problem in the table; empty when it may be used.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        let root = Path::Root;
        p.check(
            self.version == ROUTES_VERSION,
            root.field("version"),
            || format!("{} is not {ROUTES_VERSION}", self.version),
        );
        p.check(
            is_valid_trust_domain(&self.trust_domain),
            root.field("trustDomain"),
            || format!("{:?} is not a valid trust domain", self.trust_domain),
        );
        p.label(root.field("namespace"), &self.namespace);
        let defaults = root.field("defaults");
        inbound(&mut p, defaults.field("inbound"), &self.defaults.inbound);

        let mut names = HashSet::with_capacity(self.services.len());
        let mut virtual_addrs: HashSet<(IpAddr, u16)> = HashSet::with_capacity(self.services.len());
        for (i, svc) in self.services.iter().enumerate() {
            let path = root.index("services", i);
            p.check(
                names.insert((&svc.namespace, &svc.name)),
                path.field("name"),
                || format!("{}/{} is listed twice", svc.namespace, svc.name),
            );
            for ip in &svc.cluster_ips {
                for port in &svc.ports {
                    p.check(
                        virtual_addrs.insert((*ip, port.port)),
                        path.field("clusterIps"),
                        || format!("{ip} port {} belongs to another service too", port.port),
                    );
                }
            }
            service(&mut p, path, svc, &self.trust_domain);
        }
        p.0
    }
}

fn service(p: &mut Problems, path: Path<'_>, svc: &Service, trust_domain: &str) {
    p.label(path.field("name"), &svc.name);
    p.label(path.field("namespace"), &svc.namespace);
    let mut ports = HashSet::new();
    for (j, port) in svc.ports.iter().enumerate() {
        let path = path.index("ports", j);
        p.check(port.port != 0, path.field("port"), || {
            "0 is not a port".into()
        });
        p.check(ports.insert(port.port), path.field("port"), || {
            format!("{} is listed twice", port.port)
        });
        service_port(p, path, port, trust_domain);
    }
    let policy = path.field("policy");
    inbound(p, policy.field("inbound"), &svc.policy.inbound);
    outbound(p, policy.field("outbound"), &svc.policy.outbound);
}

fn service_port(p: &mut Problems, path: Path<'_>, port: &ServicePort, trust_domain: &str) {
    if let Some(name) = &port.name {
        p.check(!name.is_empty(), path.field("name"), || "is empty".into());
    }
    let mut seen = HashSet::with_capacity(port.endpoints.len());
    for (k, ep) in port.endpoints.iter().enumerate() {
        let path = path.index("endpoints", k);
        p.check(ep.port != 0, path.field("port"), || {
            "0 is not a port".into()
        });
        p.check(
            seen.insert((ep.address, ep.port)),
            path.field("address"),
            || format!("{}:{} is listed twice", ep.address, ep.port),
        );
        if let Some(id) = &ep.identity {
            p.check(
                id.trust_domain() == trust_domain,
                path.field("identity"),
                || format!("{id} is not in trust domain {trust_domain:?}"),
            );
        }
        if let Some(zone) = &ep.zone {
            p.check(!zone.is_empty(), path.field("zone"), || "is empty".into());
        }
    }
}

fn inbound(p: &mut Problems, path: Path<'_>, policy: &InboundPolicy) {
    authorization(p, path.field("authorization"), &policy.authorization);
}

fn authorization(p: &mut Problems, path: Path<'_>, authz: &Authorization) {
    for (i, ns) in authz.allow_namespaces.iter().enumerate() {
        p.label(path.index("allowNamespaces", i), ns);
    }
}

fn outbound(p: &mut Problems, path: Path<'_>, policy: &OutboundPolicy) {
    let t = &policy.timeouts;
    let timeouts = path.field("timeouts");
    for (name, value) in [
        ("connectMs", t.connect_ms),
        ("requestMs", t.request_ms),
        ("idleMs", t.idle_ms),
    ] {
        p.check(value != Some(0), timeouts.field(name), || {
            "0 is not a timeout; leave it out for the default".into()
        });
    }
    if let Some(r) = &policy.retries {
        let path = path.field("retries");
        p.check(
            (1..=MAX_RETRY_ATTEMPTS).contains(&r.attempts),
            path.field("attempts"),
            || format!("{} is not within 1..={MAX_RETRY_ATTEMPTS}", r.attempts),
        );
        p.check(r.budget_percent <= 100, path.field("budgetPercent"), || {
            format!("{} is more than 100", r.budget_percent)
        });
        p.check(
            r.per_try_timeout_ms != Some(0),
            path.field("perTryTimeoutMs"),
            || "0 is not a timeout".into(),
        );
        for (i, class) in r.retry_on.iter().enumerate() {
            let known = RETRY_CLASSES.contains(&class.as_str())
                || class.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            p.check(known, path.index("retryOn", i), || {
                format!("{class:?} is not one of {RETRY_CLASSES:?} or a status code")
            });
        }
    }
    let mut backends = HashSet::new();
    for (i, b) in policy.split.iter().enumerate() {
        let split = path.index("split", i);
        p.label(split.field("service"), &b.service);
        p.check(backends.insert(&b.service), split.field("service"), || {
            format!("{} is listed twice", b.service)
        });
    }
    p.check(
        policy.split.is_empty() || policy.split.iter().any(|b| b.weight > 0),
        path.field("split"),
        || "all weights are 0".into(),
    );
    if let Some(o) = &policy.outlier_detection {
        let path = path.field("outlierDetection");
        p.check(
            o.consecutive_failures > 0,
            path.field("consecutiveFailures"),
            || "must be at least 1".into(),
        );
        p.check(o.base_ejection_ms > 0, path.field("baseEjectionMs"), || {
            "must be at least 1".into()
        });
        p.check(
            o.max_ejected_percent <= 100,
            path.field("maxEjectedPercent"),
            || format!("{} is more than 100", o.max_ejected_percent),
        );
    }
}
