//! The desired state over small clusters: endpoints and readiness, named
//! and multiple ports, meshed or not, policy precedence, authorization,
//! splits, conflicts — each asserting the exact computed value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use support::*;
use weft_api::SpiffeId;
use weft_api::routes::*;
use weft_operator::cluster::{Cluster, Object, ObjectKey};
use weft_operator::crd::*;
use weft_operator::desired::{Desired, desired};
use weft_operator::endpoints::derive_slices;
use weft_operator::policy::Reason;
use weft_operator::scope::MeshedPods;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload("cluster.local", ns, sa).unwrap()
}

/// The captured `whtest/cart` Service, its two pods (one terminating) and
/// the slices the EndpointSlice controller wrote.
fn captured(slices: &str) -> Cluster {
    let mut objects = vec![
        namespace("whtest", true),
        Object::Service(Box::new(fixture::<Service>("service.json"))),
        Object::Pod(Box::new(fixture::<Pod>("pod.json"))),
        Object::Pod(Box::new(fixture::<Pod>("pod-terminating.json"))),
    ];
    for s in fixture_items::<EndpointSlice>(slices) {
        objects.push(Object::EndpointSlice(Box::new(s)));
    }
    cluster(objects)
}

fn svc<'a>(d: &'a Desired, ns: &str, name: &str) -> &'a weft_api::routes::Service {
    let table = d.tables.values().next().expect("a table");
    table
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .unwrap_or_else(|| panic!("no service {ns}/{name}"))
}

fn endpoint(
    addr: &str,
    port: u16,
    identity: Option<SpiffeId>,
    zone: Option<&str>,
    ready: bool,
) -> Endpoint {
    Endpoint {
        address: addr.parse().unwrap(),
        port,
        identity,
        zone: zone.map(Into::into),
        ready,
    }
}

#[test]
fn captured_slices_give_ready_and_terminating_endpoints() {
    let d = desired(
        &captured("endpointslices-terminating.json"),
        &mesh(MeshedPods::InScope),
    );
    let cart = svc(&d, "whtest", "cart");
    assert_eq!(
        cart.cluster_ips,
        vec!["198.19.127.242".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(cart.ports.len(), 1);
    let port = &cart.ports[0];
    assert_eq!(
        (port.port, port.name.as_deref(), port.protocol),
        (80, Some("http"), Protocol::Http1)
    );
    assert_eq!(
        port.endpoints,
        vec![
            endpoint(
                "198.18.0.10",
                9090,
                Some(id("whtest", "default")),
                Some("zone-a"),
                true
            ),
            endpoint(
                "198.18.0.11",
                9090,
                Some(id("whtest", "default")),
                Some("zone-a"),
                false
            ),
        ]
    );
    let before = desired(&captured("endpointslices.json"), &mesh(MeshedPods::InScope));
    assert!(
        svc(&before, "whtest", "cart").ports[0]
            .endpoints
            .iter()
            .all(|e| e.ready)
    );
}

#[test]
fn derived_slices_match_what_the_controller_wrote() {
    let mut c = captured("endpointslices-terminating.json");
    let mesh = mesh(MeshedPods::InScope);
    let from_controller = desired(&c, &mesh);
    c.endpoint_slices.clear();
    for s in derive_slices(&c) {
        c.apply(Object::EndpointSlice(Box::new(s)));
    }
    let derived = desired(&c, &mesh);
    // The capture had no kubelet, so no zone: compare all but the zone.
    let strip = |d: &Desired| {
        let mut eps = svc(d, "whtest", "cart").ports[0].endpoints.clone();
        eps.iter_mut().for_each(|e| e.zone = None);
        eps
    };
    assert_eq!(strip(&derived), strip(&from_controller));
}

#[test]
fn named_and_multiple_ports_resolve_per_pod() {
    let mut c = cluster(vec![
        namespace("shop", true),
        Object::Service(Box::new(service(
            "shop",
            "web",
            "198.19.0.1",
            &[
                ("http", 80, IntOrString::String("web".into())),
                ("admin", 8081, IntOrString::Int(9000)),
            ],
        ))),
        // Two versions name the port "web" on different container ports.
        Object::Pod(Box::new(pod(
            "shop",
            "web-v1",
            "web",
            "198.18.0.1",
            "web",
            true,
            &[("web", 8080)],
        ))),
        Object::Pod(Box::new(pod(
            "shop",
            "web-v2",
            "web",
            "198.18.0.2",
            "web",
            true,
            &[("web", 8443)],
        ))),
        Object::Pod(Box::new(pod(
            "shop",
            "other",
            "other",
            "198.18.0.3",
            "web",
            true,
            &[("web", 1)],
        ))),
    ]);
    for s in derive_slices(&c) {
        c.apply(Object::EndpointSlice(Box::new(s)));
    }
    let d = desired(&c, &mesh(MeshedPods::InScope));
    let web = svc(&d, "shop", "web");
    let ports: Vec<_> = web
        .ports
        .iter()
        .map(|p| (p.port, p.name.clone().unwrap()))
        .collect();
    assert_eq!(
        ports,
        [(80, "http".to_string()), (8081, "admin".to_string())]
    );
    let eps = |i: usize| -> Vec<String> {
        web.ports[i]
            .endpoints
            .iter()
            .map(|e| format!("{}:{}", e.address, e.port))
            .collect()
    };
    assert_eq!(eps(0), ["198.18.0.1:8080", "198.18.0.2:8443"]);
    assert_eq!(eps(1), ["198.18.0.1:9000", "198.18.0.2:9000"]);
}

#[test]
fn unready_pods_and_unmeshed_pods() {
    let mut c = cluster(vec![
        namespace("shop", true),
        namespace("legacy", false),
        Object::Service(Box::new(service(
            "shop",
            "cart",
            "198.19.0.1",
            &[("", 80, IntOrString::Int(8080))],
        ))),
        Object::Service(Box::new(service(
            "legacy",
            "db",
            "198.19.0.2",
            &[("", 5432, IntOrString::Int(5432))],
        ))),
        Object::Pod(Box::new(pod(
            "shop",
            "cart-0",
            "cart",
            "198.18.0.1",
            "cart",
            true,
            &[],
        ))),
        Object::Pod(Box::new(pod(
            "shop",
            "cart-1",
            "cart",
            "198.18.0.2",
            "cart",
            false,
            &[],
        ))),
        Object::Pod(Box::new(pod(
            "legacy",
            "db-0",
            "db",
            "198.18.0.3",
            "db",
            true,
            &[],
        ))),
    ]);
    for s in derive_slices(&c) {
        c.apply(Object::EndpointSlice(Box::new(s)));
    }
    let d = desired(&c, &mesh(MeshedPods::InScope));
    assert_eq!(
        d.tables.keys().collect::<Vec<_>>(),
        ["shop"],
        "legacy is not meshed"
    );
    assert_eq!(
        svc(&d, "shop", "cart").ports[0].endpoints,
        vec![
            endpoint("198.18.0.1", 8080, Some(id("shop", "cart")), None, true),
            endpoint("198.18.0.2", 8080, Some(id("shop", "cart")), None, false),
        ]
    );
    let db = svc(&d, "legacy", "db");
    assert_eq!(
        db.ports[0].endpoints,
        vec![endpoint("198.18.0.3", 5432, None, None, true)]
    );
    assert_eq!(
        db.ports[0].protocol,
        Protocol::Opaque,
        "5432 is opaque by default"
    );
}

#[test]
fn meshed_namespaces_identities_and_pods() {
    let mut injected = pod("plain", "job", "job", "198.18.0.9", "runner", true, &[]);
    injected
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("weft.dev/injected".into(), "0.1.0".into());
    let mut opted_out = pod("shop", "debug", "debug", "198.18.0.8", "debug", true, &[]);
    opted_out
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("weft.dev/inject".into(), "disabled".into());
    let c = cluster(vec![
        namespace("shop", true),
        namespace("plain", false),
        namespace("kube-system", true),
        namespace("weft-system", true),
        Object::Pod(Box::new(pod(
            "shop",
            "cart-0",
            "cart",
            "198.18.0.1",
            "cart",
            true,
            &[],
        ))),
        Object::Pod(Box::new(opted_out)),
        Object::Pod(Box::new(injected)),
        Object::Pod(Box::new(pod(
            "kube-system",
            "dns",
            "dns",
            "198.18.0.7",
            "dns",
            true,
            &[],
        ))),
        // Injected by hand into the operator's namespace: still never meshed.
        Object::Pod(Box::new(injected_in("weft-system"))),
    ]);

    let in_cluster = desired(&c, &mesh(MeshedPods::Injected));
    assert_eq!(
        in_cluster.tables.keys().collect::<Vec<_>>(),
        ["plain", "shop"]
    );
    assert_eq!(
        in_cluster.identities.iter().collect::<Vec<_>>(),
        [&("plain".to_string(), "runner".to_string())]
    );
    assert_eq!(
        in_cluster.meshed_pods.keys().collect::<Vec<_>>(),
        [&ObjectKey::new("plain", "job")]
    );

    let local = desired(&c, &mesh(MeshedPods::InScope));
    assert_eq!(local.tables.keys().collect::<Vec<_>>(), ["shop"]);
    assert_eq!(
        local.meshed_pods.keys().collect::<Vec<_>>(),
        [&ObjectKey::new("shop", "cart-0")]
    );
}

/// A pod that carries the injected annotation in namespace `ns`.
fn injected_in(ns: &str) -> Pod {
    let mut p = pod(ns, "sneaky", "sneaky", "198.18.0.6", "sneaky", true, &[]);
    p.metadata
        .annotations
        .get_or_insert_default()
        .insert("weft.dev/injected".into(), "0.1.0".into());
    p
}

fn two_services(policies: Vec<Object>) -> Desired {
    let mut objects = vec![
        namespace("shop", true),
        namespace("web", true),
        Object::Service(Box::new(service(
            "shop",
            "cart",
            "198.19.0.1",
            &[("", 80, IntOrString::Int(8080))],
        ))),
        Object::Service(Box::new(service(
            "shop",
            "cart-v2",
            "198.19.0.2",
            &[("", 80, IntOrString::Int(8080))],
        ))),
        Object::Service(Box::new(service(
            "web",
            "front",
            "198.19.0.3",
            &[("", 80, IntOrString::Int(8080))],
        ))),
    ];
    objects.extend(policies);
    desired(&cluster(objects), &mesh(MeshedPods::InScope))
}

fn verdict(d: &Desired, ns: &str, name: &str) -> (Reason, String) {
    let v = &d.verdicts[&ObjectKey::new(ns, name)];
    (v.reason, v.message.clone())
}

#[test]
fn service_policy_over_namespace_policy_over_mesh_default() {
    let d = two_services(vec![
        policy(
            "shop",
            "ns-default",
            "2026-01-01T00:00:00Z",
            MeshPolicySpec {
                mtls: Some(MtlsSpec {
                    mode: MtlsModeSpec::Strict,
                }),
                timeouts: Some(TimeoutsSpec {
                    request: Some("5s".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        policy(
            "shop",
            "cart",
            "2026-01-01T00:00:00Z",
            MeshPolicySpec {
                target_ref: target("cart"),
                timeouts: Some(TimeoutsSpec {
                    connect: Some("250ms".into()),
                    ..Default::default()
                }),
                load_balancer: Some(LoadBalancerSpec::RoundRobin),
                ..Default::default()
            },
        ),
    ]);
    let cart = &svc(&d, "shop", "cart").policy;
    assert_eq!(
        cart.inbound.mtls,
        MtlsMode::Strict,
        "inherited from the namespace"
    );
    assert_eq!(
        cart.outbound.timeouts,
        Timeouts {
            connect_ms: Some(250),
            request_ms: None,
            idle_ms: None
        },
        "the Service's section replaces the namespace's whole"
    );
    assert_eq!(cart.outbound.load_balancer, LoadBalancer::RoundRobin);
    let v2 = &svc(&d, "shop", "cart-v2").policy;
    assert_eq!(v2.inbound.mtls, MtlsMode::Strict);
    assert_eq!(v2.outbound.timeouts.request_ms, Some(5000));
    assert_eq!(v2.outbound.load_balancer, LoadBalancer::Ewma);
    let front = &svc(&d, "web", "front").policy;
    assert_eq!(
        *front,
        Policy {
            inbound: InboundPolicy {
                mtls: MtlsMode::Permissive,
                authorization: Authorization::default()
            },
            outbound: OutboundPolicy::default(),
        }
    );
    assert_eq!(d.tables["shop"].defaults.inbound.mtls, MtlsMode::Strict);
    assert_eq!(d.tables["web"].defaults.inbound.mtls, MtlsMode::Permissive);
    assert_eq!(
        verdict(&d, "shop", "cart"),
        (Reason::Accepted, "applies to Service shop/cart".into())
    );
    assert_eq!(
        verdict(&d, "shop", "ns-default"),
        (
            Reason::Accepted,
            "applies to every Service of namespace shop".into()
        )
    );
}

#[test]
fn authorization_rules_become_identities_namespaces_and_any() {
    let d = two_services(vec![policy(
        "shop",
        "authz",
        "2026-01-01T00:00:00Z",
        MeshPolicySpec {
            target_ref: target("cart"),
            authorization: Some(AuthorizationSpec {
                default: AuthzDefaultSpec::Deny,
                allow: vec![
                    AllowRule {
                        service_account: Some("web/front".into()),
                        namespace: None,
                    },
                    AllowRule {
                        service_account: None,
                        namespace: Some("ops".into()),
                    },
                    AllowRule {
                        service_account: Some("*".into()),
                        namespace: None,
                    },
                ],
            }),
            ..Default::default()
        },
    )]);
    assert_eq!(
        svc(&d, "shop", "cart").policy.inbound.authorization,
        Authorization {
            default: AuthzDefault::Deny,
            allow_identities: vec![id("web", "front")],
            allow_namespaces: vec!["ops".into()],
            allow_any_authenticated: true,
        }
    );
}

#[test]
fn split_to_a_missing_service_is_refused_and_not_applied() {
    let split = |backends: Vec<(&str, u32)>| MeshPolicySpec {
        target_ref: target("cart"),
        split: Some(
            backends
                .into_iter()
                .map(|(s, w)| SplitBackend {
                    service: s.into(),
                    weight: w,
                })
                .collect(),
        ),
        ..Default::default()
    };
    let d = two_services(vec![policy(
        "shop",
        "canary",
        "2026-01-01T00:00:00Z",
        split(vec![("cart", 90), ("cart-v3", 10)]),
    )]);
    assert_eq!(
        verdict(&d, "shop", "canary"),
        (
            Reason::TargetNotFound,
            "spec.split[1].service: Service shop/cart-v3 does not exist".into()
        )
    );
    assert!(svc(&d, "shop", "cart").policy.outbound.split.is_empty());

    // Refused, but its own mTLS and authorization still protect the target.
    let mut strict_split = split(vec![("cart", 90), ("cart-v3", 10)]);
    strict_split.mtls = Some(MtlsSpec {
        mode: MtlsModeSpec::Strict,
    });
    let d = two_services(vec![policy(
        "shop",
        "canary",
        "2026-01-01T00:00:00Z",
        strict_split,
    )]);
    let (reason, message) = verdict(&d, "shop", "canary");
    assert_eq!(reason, Reason::TargetNotFound);
    assert!(
        message.ends_with("(its mtls and authorization still apply)"),
        "{message}"
    );
    let cart = &svc(&d, "shop", "cart").policy;
    assert_eq!(cart.inbound.mtls, MtlsMode::Strict);
    assert!(cart.outbound.split.is_empty());

    let d = two_services(vec![policy(
        "shop",
        "canary",
        "2026-01-01T00:00:00Z",
        split(vec![("cart", 90), ("cart-v2", 10)]),
    )]);
    assert_eq!(verdict(&d, "shop", "canary").0, Reason::Accepted);
    assert_eq!(
        svc(&d, "shop", "cart").policy.outbound.split,
        vec![
            WeightedBackend {
                service: "cart".into(),
                weight: 90
            },
            WeightedBackend {
                service: "cart-v2".into(),
                weight: 10
            },
        ]
    );
}

#[test]
fn two_policies_on_one_target_the_older_wins() {
    let spec = |mode| MeshPolicySpec {
        target_ref: target("cart"),
        mtls: Some(MtlsSpec { mode }),
        ..Default::default()
    };
    let d = two_services(vec![
        policy(
            "shop",
            "newer",
            "2026-03-01T00:00:00Z",
            spec(MtlsModeSpec::Permissive),
        ),
        policy(
            "shop",
            "older",
            "2026-02-01T00:00:00Z",
            spec(MtlsModeSpec::Strict),
        ),
    ]);
    assert_eq!(verdict(&d, "shop", "older").0, Reason::Accepted);
    assert_eq!(
        verdict(&d, "shop", "newer"),
        (
            Reason::Conflict,
            "spec.targetRef: Service shop/cart already has the older policy \"older\"".into()
        )
    );
    assert_eq!(
        svc(&d, "shop", "cart").policy.inbound.mtls,
        MtlsMode::Strict
    );
}

#[test]
fn invalid_policies_name_the_field_and_value() {
    let cases: Vec<(MeshPolicySpec, Reason, &str)> = vec![
        (
            MeshPolicySpec {
                target_ref: target("nope"),
                ..Default::default()
            },
            Reason::TargetNotFound,
            "spec.targetRef.name: Service shop/nope does not exist",
        ),
        (
            MeshPolicySpec {
                target_ref: Some(TargetRef {
                    kind: "Deployment".into(),
                    name: "cart".into(),
                }),
                ..Default::default()
            },
            Reason::Invalid,
            "spec.targetRef.kind: \"Deployment\" is not supported; only Service",
        ),
        (
            MeshPolicySpec {
                timeouts: Some(TimeoutsSpec {
                    idle: Some("5 minutes".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Reason::Invalid,
            "spec.timeouts.idle: \"5 minutes\" is not a duration",
        ),
        (
            MeshPolicySpec {
                retries: Some(RetriesSpec {
                    attempts: 3,
                    retry_on: vec!["sometimes".into()],
                    per_try_timeout: None,
                    budget: None,
                }),
                ..Default::default()
            },
            Reason::Invalid,
            "spec.retries.retryOn[0]: \"sometimes\"",
        ),
        (
            MeshPolicySpec {
                split: Some(vec![SplitBackend {
                    service: "cart".into(),
                    weight: 1,
                }]),
                ..Default::default()
            },
            Reason::Invalid,
            "spec.split: needs a targetRef",
        ),
        (
            MeshPolicySpec {
                authorization: Some(AuthorizationSpec {
                    default: AuthzDefaultSpec::Deny,
                    allow: vec![AllowRule {
                        service_account: Some("front".into()),
                        namespace: None,
                    }],
                }),
                ..Default::default()
            },
            Reason::Invalid,
            "spec.authorization.allow[0].serviceAccount: \"front\" is not",
        ),
        (
            MeshPolicySpec {
                outlier_detection: Some(OutlierDetectionSpec {
                    consecutive_failures: 5,
                    base_ejection_time: "30s".into(),
                    max_ejected_percent: 150,
                }),
                ..Default::default()
            },
            Reason::Invalid,
            "spec.outlierDetection.maxEjectedPercent: 150 is more than 100",
        ),
    ];
    for (spec, reason, message) in cases {
        let d = two_services(vec![policy("shop", "p", "2026-01-01T00:00:00Z", spec)]);
        let (got_reason, got_message) = verdict(&d, "shop", "p");
        assert_eq!(got_reason, reason, "{got_message}");
        assert!(
            got_message.starts_with(message),
            "{got_message:?} should start with {message:?}"
        );
        assert_eq!(
            d.tables["shop"].defaults.inbound.mtls,
            MtlsMode::Permissive,
            "not applied"
        );
    }
}

#[test]
fn output_is_valid_sorted_and_digested() {
    let c = captured("endpointslices-terminating.json");
    let mesh = mesh(MeshedPods::InScope);
    let (a, b) = (desired(&c, &mesh), desired(&c, &mesh));
    let table = &a.tables["whtest"];
    assert_eq!(table.validate(), vec![]);
    assert_eq!(table.generation, 0);
    assert!(table.digest.as_deref().unwrap().starts_with("sha256:"));
    assert_eq!(
        serde_json::to_string(table).unwrap(),
        serde_json::to_string(&b.tables["whtest"]).unwrap()
    );
    assert_eq!(table.digest, Some(weft_operator::desired::digest(table)));

    let mut changed = c.clone();
    changed.pods.clear();
    changed.endpoint_slices.clear();
    let d = desired(&changed, &mesh);
    assert_ne!(
        d.tables.get("whtest").and_then(|t| t.digest.clone()),
        table.digest
    );
}
