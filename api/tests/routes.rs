//! routes.json: round trips, version handling, and every validation rule with
//! the exact JSON path it reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use weft_api::routes::*;
use weft_api::{Problem, RoutesTable, SpiffeId};

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload("cluster.local", ns, sa).unwrap()
}

fn endpoint(addr: &str, port: u16) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        port,
        identity: Some(id("shop", "cart")),
        zone: Some("zone-a".into()),
        ready: true,
    }
}

/// A small valid table: `shop/cart` on 198.19.0.10:80 with two endpoints.
fn table() -> RoutesTable {
    RoutesTable {
        version: 1,
        generation: 3,
        digest: None,
        trust_domain: "cluster.local".into(),
        namespace: "shop".into(),
        defaults: Defaults::default(),
        services: vec![Service {
            name: "cart".into(),
            namespace: "shop".into(),
            cluster_ips: vec!["198.19.0.10".parse().unwrap()],
            ports: vec![ServicePort {
                port: 80,
                name: Some("http".into()),
                protocol: Protocol::Detect,
                endpoints: vec![endpoint("198.18.0.10", 9090), endpoint("198.18.0.11", 9090)],
            }],
            policy: Policy {
                inbound: InboundPolicy {
                    mtls: MtlsMode::Strict,
                    authorization: Authorization {
                        default: AuthzDefault::Deny,
                        allow_identities: vec![id("web", "frontend")],
                        allow_namespaces: vec!["ops".into()],
                        allow_any_authenticated: false,
                    },
                },
                outbound: OutboundPolicy {
                    timeouts: Timeouts {
                        connect_ms: Some(500),
                        request_ms: Some(2000),
                        idle_ms: None,
                    },
                    retries: Some(Retries {
                        attempts: 3,
                        retry_on: vec!["5xx".into(), "503".into()],
                        per_try_timeout_ms: Some(250),
                        budget_percent: 20,
                        min_per_second: 10,
                    }),
                    load_balancer: LoadBalancer::Ewma,
                    split: vec![WeightedBackend {
                        service: "cart-v2".into(),
                        weight: 10,
                    }],
                    outlier_detection: Some(OutlierDetection {
                        consecutive_failures: 5,
                        base_ejection_ms: 30_000,
                        max_ejected_percent: 50,
                    }),
                },
            },
        }],
    }
}

fn problems(t: &RoutesTable) -> Vec<String> {
    t.validate().iter().map(Problem::to_string).collect()
}

/// Asserts that the table has exactly one problem, at `path`.
fn assert_one_problem(t: &RoutesTable, path: &str) {
    let found = t.validate();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, path, "{found:?}");
}

#[test]
fn valid_table_round_trips_through_json() {
    let t = table();
    assert_eq!(problems(&t), Vec::<String>::new());
    let json = serde_json::to_vec(&t).unwrap();
    assert_eq!(RoutesTable::from_json(&json).unwrap(), t);
}

#[test]
fn documented_example_parses_with_defaults() {
    let json = br#"{
      "version": 1, "generation": 7, "trustDomain": "cluster.local", "namespace": "shop",
      "services": [{ "name": "cart", "namespace": "shop", "clusterIps": ["198.19.0.10"],
        "ports": [{ "port": 80, "endpoints": [{ "address": "198.18.0.10", "port": 9090, "ready": true }] }],
        "somethingNewer": {"ignored": true} }]
    }"#;
    let t = RoutesTable::from_json(json).unwrap();
    let svc = &t.services[0];
    assert_eq!(svc.ports[0].protocol, Protocol::Detect);
    assert_eq!(svc.ports[0].endpoints[0].identity, None);
    assert_eq!(svc.policy.inbound.mtls, MtlsMode::Strict);
    assert_eq!(
        svc.policy.inbound.authorization.default,
        AuthzDefault::Allow
    );
    assert_eq!(svc.policy.outbound.load_balancer, LoadBalancer::Ewma);
}

#[test]
fn unknown_version_is_refused_before_the_rest_is_read() {
    let err =
        RoutesTable::from_json(br#"{"version": 2, "services": "not even a list"}"#).unwrap_err();
    assert!(
        matches!(err, ParseError::UnsupportedVersion { found: 2 }),
        "{err}"
    );
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn truncated_json_is_a_parse_error() {
    let json = serde_json::to_vec(&table()).unwrap();
    let err = RoutesTable::from_json(&json[..json.len() / 2]).unwrap_err();
    assert!(matches!(err, ParseError::Json(_)), "{err}");
}

#[test]
fn bad_identity_is_a_parse_error_naming_the_value() {
    let mut v = serde_json::to_value(table()).unwrap();
    v["services"][0]["ports"][0]["endpoints"][0]["identity"] = "spiffe://x/ns//sa".into();
    let err = RoutesTable::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("spiffe://x/ns//sa"), "{err}");
}

#[test]
fn invalid_table_reports_every_problem_from_from_json() {
    let mut t = table();
    t.namespace = "Shop".into();
    t.services[0].ports[0].port = 0;
    let err = RoutesTable::from_json(&serde_json::to_vec(&t).unwrap()).unwrap_err();
    let ParseError::Invalid(found) = err else {
        panic!("expected Invalid, got {err}");
    };
    let paths: Vec<_> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["$.namespace", "$.services[0].ports[0].port"]);
}

#[test]
fn table_level_rules() {
    let mut t = table();
    t.version = 9;
    assert_one_problem(&t, "$.version");

    let mut t = table();
    t.trust_domain = "Cluster.Local".into();
    // The endpoints' identities are then in another trust domain too.
    let found = t.validate();
    assert_eq!(found[0].path, "$.trustDomain");

    let mut t = table();
    t.namespace = "-bad".into();
    assert_one_problem(&t, "$.namespace");

    let mut t = table();
    t.defaults.inbound.authorization.allow_namespaces = vec!["UPPER".into()];
    assert_one_problem(&t, "$.defaults.inbound.authorization.allowNamespaces[0]");
}

#[test]
fn service_rules() {
    let mut t = table();
    t.services[0].name = "a".repeat(64);
    assert_one_problem(&t, "$.services[0].name");

    let mut t = table();
    t.services[0].namespace = "under_score".into();
    assert_one_problem(&t, "$.services[0].namespace");

    let mut t = table();
    let mut twin = t.services[0].clone();
    twin.cluster_ips = vec!["198.19.0.11".parse().unwrap()];
    t.services.push(twin);
    assert_one_problem(&t, "$.services[1].name");

    let mut t = table();
    let mut same_vip = t.services[0].clone();
    same_vip.name = "other".into();
    t.services.push(same_vip);
    assert_one_problem(&t, "$.services[1].clusterIps");
}

#[test]
fn port_and_endpoint_rules() {
    let mut t = table();
    let dup = t.services[0].ports[0].clone();
    t.services[0].ports.push(dup);
    let found = t.validate();
    assert!(
        found
            .iter()
            .any(|p| p.path == "$.services[0].ports[1].port"),
        "{found:?}"
    );

    let mut t = table();
    t.services[0].ports[0].name = Some(String::new());
    assert_one_problem(&t, "$.services[0].ports[0].name");

    let mut t = table();
    t.services[0].ports[0].endpoints[1].port = 0;
    assert_one_problem(&t, "$.services[0].ports[0].endpoints[1].port");

    let mut t = table();
    t.services[0].ports[0].endpoints[1].address = "198.18.0.10".parse().unwrap();
    assert_one_problem(&t, "$.services[0].ports[0].endpoints[1].address");

    let mut t = table();
    t.services[0].ports[0].endpoints[0].identity =
        Some(SpiffeId::workload("other.domain", "shop", "cart").unwrap());
    assert_one_problem(&t, "$.services[0].ports[0].endpoints[0].identity");

    let mut t = table();
    t.services[0].ports[0].endpoints[0].zone = Some(String::new());
    assert_one_problem(&t, "$.services[0].ports[0].endpoints[0].zone");
}

#[test]
fn policy_rules() {
    type Mutation = fn(&mut OutboundPolicy);
    let cases: Vec<(&str, Mutation)> = vec![
        ("timeouts.connectMs", |o| o.timeouts.connect_ms = Some(0)),
        ("timeouts.requestMs", |o| o.timeouts.request_ms = Some(0)),
        ("timeouts.idleMs", |o| o.timeouts.idle_ms = Some(0)),
        ("retries.attempts", |o| {
            o.retries.as_mut().unwrap().attempts = 0
        }),
        ("retries.attempts", |o| {
            o.retries.as_mut().unwrap().attempts = 11
        }),
        ("retries.budgetPercent", |o| {
            o.retries.as_mut().unwrap().budget_percent = 101
        }),
        ("retries.perTryTimeoutMs", |o| {
            o.retries.as_mut().unwrap().per_try_timeout_ms = Some(0)
        }),
        ("retries.retryOn[1]", |o| {
            o.retries.as_mut().unwrap().retry_on[1] = "600".into()
        }),
        ("split[0].service", |o| o.split[0].service = "Bad".into()),
        ("split[1].service", |o| o.split.push(o.split[0].clone())),
        ("split", |o| o.split[0].weight = 0),
        ("outlierDetection.consecutiveFailures", |o| {
            o.outlier_detection.as_mut().unwrap().consecutive_failures = 0
        }),
        ("outlierDetection.baseEjectionMs", |o| {
            o.outlier_detection.as_mut().unwrap().base_ejection_ms = 0
        }),
        ("outlierDetection.maxEjectedPercent", |o| {
            o.outlier_detection.as_mut().unwrap().max_ejected_percent = 101
        }),
    ];
    for (field, mutate) in cases {
        let mut t = table();
        mutate(&mut t.services[0].policy.outbound);
        assert_one_problem(&t, &format!("$.services[0].policy.outbound.{field}"));
    }

    let mut t = table();
    t.services[0].policy.inbound.authorization.allow_namespaces[0] = "".into();
    assert_one_problem(
        &t,
        "$.services[0].policy.inbound.authorization.allowNamespaces[0]",
    );
}

#[test]
fn messages_name_the_value() {
    let mut t = table();
    t.services[0]
        .policy
        .outbound
        .retries
        .as_mut()
        .unwrap()
        .retry_on[0] = "sometimes".into();
    let found = problems(&t);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("\"sometimes\""), "{found:?}");
}
