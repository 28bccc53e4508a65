//! Validation of a parsed routing table. Returns every problem at once, each
//! with the JSON path of the offending field, so an operator bug or a
//! hand-edited file is fixed in one round.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

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

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, ok: bool, path: impl FnOnce() -> String, message: impl FnOnce() -> String) {
        if !ok {
            self.push(path(), message());
        }
    }

    fn label(&mut self, path: &str, value: &str) {
        self.check(
            is_dns_label(value),
            || path.to_owned(),
            || format!("{value:?} is not a DNS label (a-z, 0-9, '-', at most 63)"),
        );
    }
}

impl RoutesTable {
    /// Every problem in the table; empty when it may be used.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        p.check(
            self.version == ROUTES_VERSION,
            || "$.version".into(),
            || format!("{} is not {ROUTES_VERSION}", self.version),
        );
        p.check(
            is_valid_trust_domain(&self.trust_domain),
            || "$.trustDomain".into(),
            || format!("{:?} is not a valid trust domain", self.trust_domain),
        );
        p.label("$.namespace", &self.namespace);
        inbound(&mut p, "$.defaults.inbound", &self.defaults.inbound);

        let mut names = HashSet::new();
        let mut virtual_addrs: HashSet<(IpAddr, u16)> = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let path = format!("$.services[{i}]");
            p.check(
                names.insert((&svc.namespace, &svc.name)),
                || format!("{path}.name"),
                || format!("{}/{} is listed twice", svc.namespace, svc.name),
            );
            for ip in &svc.cluster_ips {
                for port in &svc.ports {
                    p.check(
                        virtual_addrs.insert((*ip, port.port)),
                        || format!("{path}.clusterIps"),
                        || format!("{ip} port {} belongs to another service too", port.port),
                    );
                }
            }
            service(&mut p, &path, svc, &self.trust_domain);
        }
        p.0
    }
}

fn service(p: &mut Problems, path: &str, svc: &Service, trust_domain: &str) {
    p.label(&format!("{path}.name"), &svc.name);
    p.label(&format!("{path}.namespace"), &svc.namespace);
    let mut ports = HashSet::new();
    for (j, port) in svc.ports.iter().enumerate() {
        let path = format!("{path}.ports[{j}]");
        p.check(
            port.port != 0,
            || format!("{path}.port"),
            || "0 is not a port".into(),
        );
        p.check(
            ports.insert(port.port),
            || format!("{path}.port"),
            || format!("{} is listed twice", port.port),
        );
        service_port(p, &path, port, trust_domain);
    }
    inbound(p, &format!("{path}.policy.inbound"), &svc.policy.inbound);
    outbound(p, &format!("{path}.policy.outbound"), &svc.policy.outbound);
}

fn service_port(p: &mut Problems, path: &str, port: &ServicePort, trust_domain: &str) {
    if let Some(name) = &port.name {
        p.check(
            !name.is_empty(),
            || format!("{path}.name"),
            || "is empty".into(),
        );
    }
    let mut seen = HashSet::new();
    for (k, ep) in port.endpoints.iter().enumerate() {
        let path = format!("{path}.endpoints[{k}]");
        p.check(
            ep.port != 0,
            || format!("{path}.port"),
            || "0 is not a port".into(),
        );
        p.check(
            seen.insert((ep.address, ep.port)),
            || format!("{path}.address"),
            || format!("{}:{} is listed twice", ep.address, ep.port),
        );
        if let Some(id) = &ep.identity {
            p.check(
                id.trust_domain() == trust_domain,
                || format!("{path}.identity"),
                || format!("{id} is not in trust domain {trust_domain:?}"),
            );
        }
        if let Some(zone) = &ep.zone {
            p.check(
                !zone.is_empty(),
                || format!("{path}.zone"),
                || "is empty".into(),
            );
        }
    }
}

fn inbound(p: &mut Problems, path: &str, policy: &InboundPolicy) {
    authorization(p, &format!("{path}.authorization"), &policy.authorization);
}

fn authorization(p: &mut Problems, path: &str, authz: &Authorization) {
    for (i, ns) in authz.allow_namespaces.iter().enumerate() {
        p.label(&format!("{path}.allowNamespaces[{i}]"), ns);
    }
}

fn outbound(p: &mut Problems, path: &str, policy: &OutboundPolicy) {
    let t = &policy.timeouts;
    for (name, value) in [
        ("connectMs", t.connect_ms),
        ("requestMs", t.request_ms),
        ("idleMs", t.idle_ms),
    ] {
        p.check(
            value != Some(0),
            || format!("{path}.timeouts.{name}"),
            || "0 is not a timeout; leave it out for the default".into(),
        );
    }
    if let Some(r) = &policy.retries {
        let path = format!("{path}.retries");
        p.check(
            (1..=MAX_RETRY_ATTEMPTS).contains(&r.attempts),
            || format!("{path}.attempts"),
            || format!("{} is not within 1..={MAX_RETRY_ATTEMPTS}", r.attempts),
        );
        p.check(
            r.budget_percent <= 100,
            || format!("{path}.budgetPercent"),
            || format!("{} is more than 100", r.budget_percent),
        );
        p.check(
            r.per_try_timeout_ms != Some(0),
            || format!("{path}.perTryTimeoutMs"),
            || "0 is not a timeout".into(),
        );
        for (i, class) in r.retry_on.iter().enumerate() {
            let known = RETRY_CLASSES.contains(&class.as_str())
                || class.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            p.check(
                known,
                || format!("{path}.retryOn[{i}]"),
                || format!("{class:?} is not one of {RETRY_CLASSES:?} or a status code"),
            );
        }
    }
    let mut backends = HashSet::new();
    for (i, b) in policy.split.iter().enumerate() {
        p.label(&format!("{path}.split[{i}].service"), &b.service);
        p.check(
            backends.insert(&b.service),
            || format!("{path}.split[{i}].service"),
            || format!("{} is listed twice", b.service),
        );
    }
    p.check(
        policy.split.is_empty() || policy.split.iter().any(|b| b.weight > 0),
        || format!("{path}.split"),
        || "all weights are 0".into(),
    );
    if let Some(o) = &policy.outlier_detection {
        let path = format!("{path}.outlierDetection");
        p.check(
            o.consecutive_failures > 0,
            || format!("{path}.consecutiveFailures"),
            || "must be at least 1".into(),
        );
        p.check(
            o.base_ejection_ms > 0,
            || format!("{path}.baseEjectionMs"),
            || "must be at least 1".into(),
        );
        p.check(
            o.max_ejected_percent <= 100,
            || format!("{path}.maxEjectedPercent"),
            || format!("{} is more than 100", o.max_ejected_percent),
        );
    }
}
