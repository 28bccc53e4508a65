//! The Kubernetes runtime's passes against a mock API server: the exact
//! requests (method, URL, content type, body) each scenario sends, and none
//! besides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_support::*;
use serde_json::{Value, json};
use weft_api::SpiffeId;
use weft_operator::ca::{Authority, renewal_due};
use weft_operator::crd::{Condition, MeshPolicyStatus};
use weft_operator::k8s::objects::Limits;
use weft_operator::k8s::plan::{Managed, existing_identity};
use weft_operator::k8s::writer::Report;

/// kube writes the query as `?&…`; the API server reads it the same.
const APPLY: &str = "?&force=true&fieldManager=weft-operator";
const APPLY_TYPE: &str = "application/apply-patch+yaml";
const ROLE_URI: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/roles/weft-routes-reader";
const BINDING_URI: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/weft-routes-reader";
const SECRET_URI: &str = "/api/v1/namespaces/shop/secrets/weft-identity-cart";
const ROUTES_URI: &str = "/api/v1/namespaces/shop/configmaps/weft-routes";
/// `T0` in Unix milliseconds: the generation of a first table.
const T0_MS: u64 = T0 * 1000;

fn table_json(generation: u64) -> Value {
    json!({
        "version": 1,
        "generation": generation,
        "digest": digest(),
        "trustDomain": "cluster.local",
        "namespace": "shop",
        "defaults": {"inbound": {"mtls": "permissive", "authorization": {"default": "allow"}}},
        "services": [{
            "name": "cart", "namespace": "shop", "clusterIps": ["10.96.0.10"],
            "ports": [{"port": 80, "name": "http", "protocol": "http1", "endpoints": [{
                "address": "10.0.0.5", "port": 8080,
                "identity": "spiffe://cluster.local/ns/shop/sa/cart", "ready": true,
            }]}],
            "policy": {
                "inbound": {"mtls": "permissive", "authorization": {"default": "allow"}},
                "outbound": {"loadBalancer": "ewma", "timeouts": {}},
            },
        }],
    })
}

fn digest() -> String {
    let desired = weft_operator::desired::desired(&shop(), &settings().mesh);
    desired.tables["shop"].digest.clone().unwrap()
}

fn routes_body(generation: u64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "weft-routes", "namespace": "shop",
            "labels": {"app.kubernetes.io/managed-by": "weft", "app.kubernetes.io/part-of": "weft"},
            "annotations": {
                "weft.dev/routes-digest": digest(),
                "weft.dev/routes-generation": generation.to_string(),
            },
        },
        "data": {"routes.json": "<checked separately>"},
    })
}

/// Checks an apply of the routes ConfigMap at `generation`.
fn assert_routes_apply(seen: &Seen, generation: u64) {
    assert_eq!(seen.line(), format!("PATCH {ROUTES_URI}{APPLY}"));
    assert_eq!(seen.content_type.as_deref(), Some(APPLY_TYPE));
    let mut body = seen.body.clone();
    let routes = body["data"]["routes.json"].take();
    body["data"]["routes.json"] = json!("<checked separately>");
    assert_eq!(body, routes_body(generation));
    let table: Value = serde_json::from_str(routes.as_str().unwrap()).unwrap();
    assert_eq!(table, table_json(generation));
}

/// Checks an apply of `shop/weft-identity-cart` holding a fresh identity.
fn assert_identity_apply(seen: &Seen, authority: &Authority) {
    assert_eq!(seen.line(), format!("PATCH {SECRET_URI}{APPLY}"));
    assert_eq!(seen.content_type.as_deref(), Some(APPLY_TYPE));
    let secret: Secret = serde_json::from_value(seen.body.clone()).unwrap();
    let mut shape = seen.body.clone();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        shape["data"][key] = json!("…");
    }
    assert_eq!(
        shape,
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {
                "name": "weft-identity-cart", "namespace": "shop",
                "labels": {"app.kubernetes.io/managed-by": "weft", "app.kubernetes.io/part-of": "weft"},
                "annotations": {
                    "weft.dev/identity": "spiffe://cluster.local/ns/shop/sa/cart",
                    "weft.dev/not-after": "2023-11-15T22:13:20Z",
                },
            },
            "data": {"tls.crt": "…", "tls.key": "…", "ca.crt": "…"},
        })
    );
    let id = SpiffeId::workload("cluster.local", "shop", "cart").unwrap();
    let existing = existing_identity(Some(&secret));
    assert_eq!(renewal_due(&existing, &id, authority, now(), 0.5), None);
}

#[tokio::test]
async fn k8s_first_pass_applies_rbac_identity_and_routes() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let snap = snapshot(shop(), Managed::default(), &anchor);
    let (report, seen) = within(async {
        let report = writer.pass(&snap, now()).await;
        drop(writer);
        (report, server.await.unwrap())
    })
    .await;

    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("PATCH {ROLE_URI}{APPLY}"),
            format!("PATCH {BINDING_URI}{APPLY}"),
            format!("PATCH {SECRET_URI}{APPLY}"),
            format!("PATCH {ROUTES_URI}{APPLY}"),
        ]
    );
    let role: Role = serde_json::from_value(seen[0].body.clone()).unwrap();
    assert_eq!(
        role,
        weft_operator::k8s::objects::routes_reader_role("shop")
    );
    let binding: RoleBinding = serde_json::from_value(seen[1].body.clone()).unwrap();
    assert_eq!(
        binding,
        weft_operator::k8s::objects::routes_reader_binding("shop")
    );
    assert!(
        seen.iter()
            .all(|s| s.content_type.as_deref() == Some(APPLY_TYPE))
    );
    assert_identity_apply(&seen[2], &authority);
    assert_routes_apply(&seen[3], T0_MS);
    assert_eq!(
        report,
        Report {
            applied: 3,
            issued: 1,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn k8s_unchanged_state_sends_no_request() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let snap = snapshot(cluster.clone(), written(&cluster, &authority), &anchor);
    let (report, seen) = within(async {
        let report = writer.pass(&snap, now()).await;
        drop(writer);
        (report, server.await.unwrap())
    })
    .await;
    assert!(
        seen.is_empty(),
        "{:?}",
        seen.iter().map(Seen::line).collect::<Vec<_>>()
    );
    assert_eq!(
        report,
        Report {
            unchanged: 4,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn k8s_unchanged_digest_skips_the_config_map_but_not_a_missing_identity() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    managed.secrets.clear();
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let snap = snapshot(cluster, managed, &anchor);
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(Seen::line).collect::<Vec<_>>()
    );
    assert_identity_apply(&seen[0], &authority);
}

#[tokio::test]
async fn k8s_a_failed_write_is_retried_on_the_next_pass() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    managed.config_maps.clear();
    let mut failures = 1;
    let (client, server) = mock(move |seen| {
        if seen.uri.starts_with(ROUTES_URI) && failures > 0 {
            failures -= 1;
            return error(500, "InternalError");
        }
        ok(seen)
    });
    let (mut writer, metrics) = writer(client, settings(), true);
    let snap = snapshot(cluster, managed, &anchor);
    let (first, second, seen) = within(async {
        let first = writer.pass(&snap, now()).await;
        assert!(
            writer.written().is_empty(),
            "a failed write is not remembered"
        );
        let second = writer.pass(&snap, at(T0 + 60)).await;
        drop(writer);
        (first, second, server.await.unwrap())
    })
    .await;
    assert_eq!((first.errors, first.applied), (1, 0));
    assert_eq!((second.errors, second.applied), (0, 1));
    assert_eq!(seen.len(), 2);
    assert_routes_apply(&seen[0], T0_MS);
    assert_routes_apply(&seen[1], T0_MS + 60_000);
    let text = metrics.encode();
    assert!(
        text.contains("weft_reconcile_errors_total{kind=\"ConfigMap\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("weft_objects_written_total{kind=\"ConfigMap\",op=\"apply\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn k8s_generation_grows_past_the_stored_one() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    // A table from the future (a clock that was ahead), another digest.
    let mut cm = (*managed.config_maps[0]).clone();
    let annotations = cm.metadata.annotations.as_mut().unwrap();
    annotations.insert(
        "weft.dev/routes-generation".into(),
        (T0_MS + 5_000).to_string(),
    );
    annotations.insert("weft.dev/routes-digest".into(), "sha256:old".into());
    managed.config_maps = vec![Arc::new(cm)];
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let snap = snapshot(cluster, managed, &anchor);
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    assert_eq!(seen.len(), 1);
    assert_routes_apply(&seen[0], T0_MS + 5_001);
}

#[tokio::test]
async fn k8s_a_table_too_large_is_refused_and_counted() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    managed.config_maps.clear();
    let mut settings = settings();
    settings.limits = Limits {
        plain: 100,
        data: 100,
        ..Limits::default()
    };
    let (client, server) = mock(ok);
    let (mut writer, metrics) = writer(client, settings, true);
    let snap = snapshot(cluster, managed, &anchor);
    let (report, seen) = within(async {
        let report = writer.pass(&snap, now()).await;
        drop(writer);
        (report, server.await.unwrap())
    })
    .await;
    assert!(
        seen.is_empty(),
        "{:?}",
        seen.iter().map(Seen::line).collect::<Vec<_>>()
    );
    assert_eq!(report.errors, 1);
    let text = metrics.encode();
    assert!(
        text.contains("weft_routes_too_large_total{namespace=\"shop\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn k8s_a_namespace_leaving_the_mesh_loses_its_objects() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    let gone = |mut meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.namespace = Some("old".into());
        meta
    };
    let cm = &managed.config_maps[0];
    managed.config_maps.push(Arc::new(ConfigMap {
        metadata: gone(cm.metadata.clone()),
        ..(**cm).clone()
    }));
    let secret = &managed.secrets[0];
    managed.secrets.push(Arc::new(Secret {
        metadata: gone(secret.metadata.clone()),
        ..(**secret).clone()
    }));
    let role = &managed.roles[0];
    managed.roles.push(Arc::new(Role {
        metadata: gone(role.metadata.clone()),
        ..(**role).clone()
    }));
    let binding = &managed.role_bindings[0];
    managed.role_bindings.push(Arc::new(RoleBinding {
        metadata: gone(binding.metadata.clone()),
        ..(**binding).clone()
    }));
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let snap = snapshot(cluster, managed, &anchor);
    let (report, seen) = within(async {
        let report = writer.pass(&snap, now()).await;
        drop(writer);
        (report, server.await.unwrap())
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "DELETE /api/v1/namespaces/old/configmaps/weft-routes?",
            "DELETE /api/v1/namespaces/old/secrets/weft-identity-cart?",
            "DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/old/roles/weft-routes-reader?",
            "DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/old/rolebindings/weft-routes-reader?",
        ]
    );
    assert_eq!(report.deleted, 4);
}

#[tokio::test]
async fn k8s_a_follower_writes_nothing() {
    let anchor = anchor();
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), false);
    let mut cluster = shop();
    cluster.apply(weft_operator::cluster::Object::MeshPolicy(Box::new(
        policy("p", "cart"),
    )));
    let snap = snapshot(cluster, Managed::default(), &anchor);
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    assert!(
        seen.is_empty(),
        "{:?}",
        seen.iter().map(Seen::line).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn k8s_a_missing_trust_anchor_is_created_then_used() {
    let anchor = anchor();
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let cluster = shop();
    let mut managed = written(&cluster, &Authority::new(anchor));
    managed.secrets.clear();
    let snap = weft_operator::k8s::writer::Snapshot {
        cluster,
        managed,
        anchor: None,
        webhook_config: None,
    };
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "POST /api/v1/namespaces/weft-system/secrets?",
            &format!("PATCH {SECRET_URI}{APPLY}")
        ]
    );
    let created: Secret = serde_json::from_value(seen[0].body.clone()).unwrap();
    assert_eq!(created.metadata.name.as_deref(), Some("weft-trust-anchor"));
    let created = weft_operator::k8s::anchor::authority_from_secret(&created, now()).unwrap();
    assert_identity_apply(&seen[1], &created);
}

#[tokio::test]
async fn k8s_a_lost_anchor_race_uses_the_winners_anchor() {
    let winner = anchor();
    let winner_secret = (*anchor_secret(&winner)).clone();
    let (client, server) = mock(move |seen| match seen.method.as_str() {
        "POST" => error(409, "AlreadyExists"),
        "GET" => (200, serde_json::to_value(&winner_secret).unwrap()),
        _ => ok(seen),
    });
    let (mut writer, _) = writer(client, settings(), true);
    let cluster = shop();
    let mut managed = written(&cluster, &Authority::new(winner.clone()));
    managed.secrets.clear();
    let snap = weft_operator::k8s::writer::Snapshot {
        cluster,
        managed,
        anchor: None,
        webhook_config: None,
    };
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "POST /api/v1/namespaces/weft-system/secrets?",
            "GET /api/v1/namespaces/weft-system/secrets/weft-trust-anchor",
            &format!("PATCH {SECRET_URI}{APPLY}"),
        ]
    );
    assert_identity_apply(&seen[2], &Authority::new(winner));
}

#[tokio::test]
async fn k8s_policy_status_is_patched_only_when_it_changes() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let mut cluster = shop();
    cluster.apply(weft_operator::cluster::Object::MeshPolicy(Box::new(
        policy("p", "cart"),
    )));
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), true);
    let managed = written(&shop(), &authority);
    let snap = snapshot(cluster.clone(), managed.clone(), &anchor);

    // The same policy with the status the first pass writes.
    let mut done = policy("p", "cart");
    done.status = Some(MeshPolicyStatus {
        observed_generation: Some(3),
        conditions: vec![Condition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: "Accepted".into(),
            message: "applies to Service shop/cart".into(),
            observed_generation: Some(3),
            last_transition_time: "2023-11-14T22:13:20Z".into(),
        }],
    });
    let mut settled = cluster;
    settled.apply(weft_operator::cluster::Object::MeshPolicy(Box::new(done)));
    let settled = snapshot(settled, managed, &anchor);

    let seen = within(async {
        writer.pass(&snap, now()).await;
        writer.pass(&settled, at(T0 + 60)).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            "PATCH /apis/weft.dev/v1alpha1/namespaces/shop/meshpolicies/p/status?&fieldManager=weft-operator",
            "POST /apis/events.k8s.io/v1/namespaces/shop/events?",
        ]
    );
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        seen[0].body,
        json!({"status": {
            "observedGeneration": 3,
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted",
                "message": "applies to Service shop/cart", "observedGeneration": 3,
                "lastTransitionTime": "2023-11-14T22:13:20Z",
            }],
        }})
    );
    let event = &seen[1].body;
    assert_eq!(event["reason"], "Accepted");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["kind"], "MeshPolicy");
    assert_eq!(event["regarding"]["name"], "p");
    assert_eq!(event["reportingController"], "weft-operator");
}

#[tokio::test]
async fn k8s_a_failed_issuance_is_reported_on_the_service_account() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    // Issued 23 hours ago: due for renewal and under a tenth of its life left.
    managed.secrets = vec![identity(&authority, "cart", at(T0 - 23 * 3600))];
    let (client, server) = mock(|seen| {
        if seen.uri.starts_with(SECRET_URI) {
            return error(403, "Forbidden");
        }
        ok(seen)
    });
    let (mut writer, metrics) = writer(client, settings(), true);
    let snap = snapshot(cluster, managed, &anchor);
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [
            format!("PATCH {SECRET_URI}{APPLY}"),
            "POST /apis/events.k8s.io/v1/namespaces/shop/events?".into(),
            "POST /apis/events.k8s.io/v1/namespaces/shop/events?".into(),
        ]
    );
    assert_eq!(seen[1].body["reason"], "IssueFailed");
    assert_eq!(seen[1].body["regarding"]["kind"], "ServiceAccount");
    assert_eq!(seen[1].body["regarding"]["uid"], "uid-cart");
    assert_eq!(seen[2].body["reason"], "CertificateNearExpiry");
    assert_eq!(seen[2].body["regarding"]["kind"], "Secret");
    assert_eq!(seen[2].body["type"], "Warning");
    let text = metrics.encode();
    assert!(text.contains("weft_certificates_near_expiry 1"), "{text}");
    assert!(
        text.contains("weft_reconcile_errors_total{kind=\"Secret\"} 1"),
        "{text}"
    );
}

const INJECTOR_URI: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/weft-injector";

/// What the API server answers a patch of the webhook configuration: the
/// configuration with the bundle set.
fn injector_ok(bundle: String) -> impl FnMut(&Seen) -> Reply + Send + 'static {
    move |seen| match seen.uri.starts_with(INJECTOR_URI) {
        true => (
            200,
            serde_json::to_value(webhook_config(&["inject.weft.dev"], &[Some(&bundle)])).unwrap(),
        ),
        false => ok(seen),
    }
}

#[tokio::test]
async fn k8s_ca_bundle_is_patched_only_when_different() {
    use base64::Engine;
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let bundle = authority.bundle_pem().to_owned();
    let cluster = shop();
    let (client, server) = mock(injector_ok(bundle.clone()));
    let (mut writer, metrics) = writer(client, settings(), true);
    let mut snap = snapshot(cluster.clone(), written(&cluster, &authority), &anchor);
    snap.webhook_config = Some(Arc::new(webhook_config(&["inject.weft.dev"], &[])));
    let mut current = snap.clone();
    current.webhook_config = Some(Arc::new(webhook_config(
        &["inject.weft.dev"],
        &[Some(&bundle)],
    )));
    let (first, second, seen) = within(async {
        let first = writer.pass(&snap, now()).await;
        let second = writer.pass(&current, at(T0 + 60)).await;
        drop(writer);
        (first, second, server.await.unwrap())
    })
    .await;
    let lines: Vec<String> = seen.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        [format!("PATCH {INJECTOR_URI}?&fieldManager=weft-operator")]
    );
    assert_eq!(
        seen[0].content_type.as_deref(),
        Some("application/json-patch+json")
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bundle);
    assert_eq!(
        seen[0].body,
        json!([
            {"op": "test", "path": "/webhooks/0/name", "value": "inject.weft.dev"},
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": encoded},
        ])
    );
    assert_eq!((first.applied, first.errors, first.unchanged), (1, 0, 4));
    assert_eq!((second.applied, second.errors, second.unchanged), (0, 0, 5));
    let text = metrics.encode();
    assert!(
        text.contains(
            "weft_objects_written_total{kind=\"MutatingWebhookConfiguration\",op=\"patch\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn k8s_a_failed_ca_bundle_patch_is_counted_and_retried() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let mut failures = 1;
    let mut answer = injector_ok(authority.bundle_pem().to_owned());
    let (client, server) = mock(move |seen| {
        if seen.uri.starts_with(INJECTOR_URI) && failures > 0 {
            failures -= 1;
            // The `test` failed: the list changed since it was read.
            return error(422, "Invalid");
        }
        answer(seen)
    });
    let (mut writer, metrics) = writer(client, settings(), true);
    let mut snap = snapshot(cluster.clone(), written(&cluster, &authority), &anchor);
    snap.webhook_config = Some(Arc::new(webhook_config(&["inject.weft.dev"], &[])));
    let (first, second, seen) = within(async {
        let first = writer.pass(&snap, now()).await;
        let second = writer.pass(&snap, at(T0 + 1)).await;
        drop(writer);
        (first, second, server.await.unwrap())
    })
    .await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!((first.errors, second.errors, second.applied), (1, 0, 1));
    let text = metrics.encode();
    assert!(
        text.contains("weft_reconcile_errors_total{kind=\"MutatingWebhookConfiguration\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn k8s_a_follower_leaves_the_ca_bundle_alone() {
    let anchor = anchor();
    let authority = Authority::new(anchor.clone());
    let cluster = shop();
    let (client, server) = mock(ok);
    let (mut writer, _) = writer(client, settings(), false);
    let mut snap = snapshot(cluster.clone(), written(&cluster, &authority), &anchor);
    snap.webhook_config = Some(Arc::new(webhook_config(&["inject.weft.dev"], &[])));
    let seen = within(async {
        writer.pass(&snap, now()).await;
        drop(writer);
        server.await.unwrap()
    })
    .await;
    assert!(
        seen.is_empty(),
        "{:?}",
        seen.iter().map(Seen::line).collect::<Vec<_>>()
    );
}
