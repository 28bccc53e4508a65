//! The plan: desired state against the objects written → the API actions,
//! table-tested; and the routing table generation's monotonicity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_support::*;
use proptest::prelude::*;
use serde_json::json;
use weft_operator::ca::Authority;
use weft_operator::cluster::{Cluster, Object};
use weft_operator::desired::desired;
use weft_operator::k8s::plan::{Action, Inputs, Managed, ca_bundle_patch, next_generation, plan};

const T0_MS: u64 = T0 * 1000;

fn lines(cluster: &Cluster, managed: &Managed, authority: Option<&Authority>) -> Vec<String> {
    lines_with(cluster, managed, authority, None)
}

fn lines_with(
    cluster: &Cluster,
    managed: &Managed,
    authority: Option<&Authority>,
    webhook_config: Option<&MutatingWebhookConfiguration>,
) -> Vec<String> {
    let settings = settings();
    let desired = desired(cluster, &settings.mesh);
    plan(&Inputs {
        desired: &desired,
        managed,
        authority,
        written: &BTreeMap::new(),
        settings: &settings,
        now: now(),
        webhook_config,
    })
    .lines()
}

fn moved<T: Clone + kube::Resource>(obj: &Arc<T>, namespace: &str, name: &str) -> Arc<T> {
    let mut obj = (**obj).clone();
    obj.meta_mut().namespace = Some(namespace.into());
    obj.meta_mut().name = Some(name.into());
    Arc::new(obj)
}

fn unlabelled<T: Clone + kube::Resource>(obj: &Arc<T>) -> Arc<T> {
    let mut obj = (**obj).clone();
    obj.meta_mut().labels = None;
    Arc::new(obj)
}

const ROLE: &str = "Role shop/weft-routes-reader";
const BINDING: &str = "RoleBinding shop/weft-routes-reader";
const SECRET: &str = "Secret shop/weft-identity-cart";
const ROUTES: &str = "ConfigMap shop/weft-routes";

#[test]
fn k8s_plans() {
    let authority = Authority::new(anchor());
    let cluster = shop();
    let all = written(&cluster, &authority);
    let unchanged = |rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = rest.iter().map(ToString::to_string).collect();
        for t in [ROLE, BINDING, SECRET, ROUTES] {
            v.push(format!("unchanged {t}"));
        }
        v
    };
    let with = |f: &dyn Fn(&mut Managed)| {
        let mut m = all.clone();
        f(&mut m);
        m
    };
    let cases: Vec<(&str, Managed, Vec<String>)> = vec![
        (
            "nothing written yet",
            Managed::default(),
            vec![
                format!("apply {ROLE}"),
                format!("apply {BINDING}"),
                format!("issue {SECRET} (tls.crt is missing)"),
                format!("apply {ROUTES} generation {T0_MS}"),
            ],
        ),
        ("everything current", all.clone(), unchanged(&[])),
        (
            "a Role edited by hand",
            with(&|m| {
                let mut role = (*m.roles[0]).clone();
                role.rules.as_mut().unwrap()[0].verbs = vec!["*".into()];
                m.roles = vec![Arc::new(role)];
            }),
            vec![
                format!("apply {ROLE}"),
                format!("unchanged {BINDING}"),
                format!("unchanged {SECRET}"),
                format!("unchanged {ROUTES}"),
            ],
        ),
        (
            "a certificate at half life",
            with(&|m| m.secrets = vec![identity(&authority, "cart", at(T0 - 13 * 3600))]),
            vec![
                format!(
                    "issue {SECRET} (tls.crt is due for renewal; it expires at 2023-11-15T09:13:20Z)"
                ),
                format!("unchanged {ROLE}"),
                format!("unchanged {BINDING}"),
                format!("unchanged {ROUTES}"),
            ],
        ),
        (
            "an identity of a service account that is gone",
            with(&|m| {
                m.secrets
                    .push(moved(&m.secrets[0], "shop", "weft-identity-gone"))
            }),
            unchanged(&["delete Secret shop/weft-identity-gone"]),
        ),
        (
            "objects in a namespace that left the mesh",
            with(&|m| {
                m.config_maps
                    .push(moved(&m.config_maps[0], "old", "weft-routes"));
                m.roles
                    .push(moved(&m.roles[0], "old", "weft-routes-reader"));
                m.role_bindings
                    .push(moved(&m.role_bindings[0], "old", "weft-routes-reader"));
            }),
            unchanged(&[
                "delete ConfigMap old/weft-routes",
                "delete Role old/weft-routes-reader",
                "delete RoleBinding old/weft-routes-reader",
            ]),
        ),
        (
            "objects without the managed-by label are never touched",
            with(&|m| {
                m.config_maps
                    .push(unlabelled(&moved(&m.config_maps[0], "old", "weft-routes")));
                m.secrets.push(unlabelled(&moved(
                    &m.secrets[0],
                    "shop",
                    "weft-identity-gone",
                )));
            }),
            unchanged(&[]),
        ),
        (
            "nothing in the operator namespace is deleted",
            with(&|m| {
                m.secrets.push(moved(
                    &m.secrets[0],
                    "weft-system",
                    "weft-identity-operator",
                ));
                m.secrets
                    .push(moved(&m.secrets[0], "weft-system", "weft-trust-anchor"));
                m.config_maps
                    .push(moved(&m.config_maps[0], "weft-system", "weft-routes"));
            }),
            unchanged(&[]),
        ),
        (
            "other managed names are left alone",
            with(&|m| {
                m.config_maps
                    .push(moved(&m.config_maps[0], "old", "something-else"));
                m.secrets
                    .push(moved(&m.secrets[0], "old", "not-an-identity"));
            }),
            unchanged(&[]),
        ),
    ];
    for (name, managed, want) in cases {
        assert_eq!(lines(&cluster, &managed, Some(&authority)), want, "{name}");
    }
}

#[test]
fn k8s_without_a_trust_anchor_identities_wait_and_the_rest_is_written() {
    let got = lines(&shop(), &Managed::default(), None);
    assert_eq!(
        got,
        [
            format!("apply {ROLE}"),
            format!("apply {BINDING}"),
            format!("apply {ROUTES} generation {T0_MS}"),
            format!("no trust anchor for {SECRET}"),
        ]
    );
}

#[test]
fn k8s_an_identity_whose_secret_name_is_too_long_is_skipped() {
    let mut cluster = shop();
    let long = "a".repeat(250);
    cluster.apply(Object::ServiceAccount(Box::new(
        k8s_openapi::api::core::v1::ServiceAccount {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(long.clone()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )));
    let authority = Authority::new(anchor());
    let got = lines(&cluster, &written(&shop(), &authority), Some(&authority));
    let want =
        format!("bad identity shop/{long}: the Secret name would be longer than 253 characters");
    assert!(got.contains(&want), "{got:#?}");
}

#[test]
fn k8s_a_changed_table_gets_the_next_generation() {
    let authority = Authority::new(anchor());
    let cluster = shop();
    let mut managed = written(&cluster, &authority);
    let mut cm: ConfigMap = (*managed.config_maps[0]).clone();
    cm.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("weft.dev/routes-digest".into(), "sha256:other".into());
    managed.config_maps = vec![Arc::new(cm)];
    let got = lines(&cluster, &managed, Some(&authority));
    assert!(
        got.contains(&format!("apply {ROUTES} generation {T0_MS}")),
        "{got:#?}"
    );
}

#[test]
fn k8s_generation_examples() {
    let cases = [
        // (stored, written by this process, now) → generation
        ((None, None), T0_MS),
        ((Some(7), None), T0_MS),
        ((Some(T0_MS + 5), None), T0_MS + 6),
        ((None, Some(T0_MS + 9)), T0_MS + 10),
        ((Some(T0_MS + 5), Some(T0_MS + 9)), T0_MS + 10),
        ((Some(u64::MAX), None), u64::MAX),
    ];
    for ((stored, written), want) in cases {
        assert_eq!(
            next_generation(stored, written, now()),
            want,
            "{stored:?} {written:?}"
        );
    }
}

proptest! {
    /// Above what is stored and what was written (short of u64::MAX), never
    /// below the clock: a deleted ConfigMap or a restart cannot go back.
    #[test]
    fn k8s_generation_only_grows(stored in proptest::option::of(0u64..u64::MAX), written in proptest::option::of(0u64..u64::MAX), secs in 0u64..4_000_000_000) {
        let g = next_generation(stored, written, at(secs));
        prop_assert!(g > stored.unwrap_or(0) || stored.is_none());
        prop_assert!(g > written.unwrap_or(0) || written.is_none());
        prop_assert!(g >= secs * 1000);
    }
}

#[test]
fn k8s_a_sequence_of_writes_is_strictly_increasing_even_if_the_clock_goes_back() {
    let mut written: Option<u64> = None;
    let mut last = 0;
    for secs in [T0, T0 + 1, T0 - 3600, T0 - 7200, T0 + 2] {
        let g = next_generation(None, written, at(secs));
        assert!(g > last, "{g} after {last}");
        last = g;
        written = Some(g);
    }
}

// --- the webhook configuration's caBundle ---

const INJECTOR: &str = "MutatingWebhookConfiguration weft-injector";

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn k8s_ca_bundle_is_patched_first_and_only_where_it_differs() {
    let authority = Authority::new(anchor());
    let bundle = authority.bundle_pem();
    let cluster = shop();
    let all = written(&cluster, &authority);
    let unchanged = [ROLE, BINDING, SECRET, ROUTES].map(|t| format!("unchanged {t}"));
    let cases: Vec<(&str, MutatingWebhookConfiguration, Vec<String>)> = vec![
        (
            "as the chart installs it",
            webhook_config(&["inject.weft.dev", "second.weft.dev"], &[]),
            vec![format!(
                "patch caBundle of {INJECTOR} (webhooks inject.weft.dev, second.weft.dev)"
            )],
        ),
        (
            "one stale",
            webhook_config(
                &["inject.weft.dev", "second.weft.dev"],
                &[Some(bundle), Some("old bundle")],
            ),
            vec![format!(
                "patch caBundle of {INJECTOR} (webhooks second.weft.dev)"
            )],
        ),
        (
            "current",
            webhook_config(&["inject.weft.dev"], &[Some(bundle)]),
            vec![],
        ),
        ("no webhooks", webhook_config(&[], &[]), vec![]),
    ];
    for (name, config, actions) in cases {
        // Actions first, then skips, each in plan order: caBundle first.
        let mut want = actions.clone();
        if actions.is_empty() {
            want.push(format!("unchanged {INJECTOR}"));
        }
        want.extend(unchanged.iter().cloned());
        assert_eq!(
            lines_with(&cluster, &all, Some(&authority), Some(&config)),
            want,
            "{name}"
        );
    }
    // Without a trust anchor there is no bundle to set.
    let config = webhook_config(&["inject.weft.dev"], &[]);
    let got = lines_with(&cluster, &all, None, Some(&config));
    assert!(
        got.contains(&format!("no trust anchor for {INJECTOR}")),
        "{got:#?}"
    );
}

#[test]
fn k8s_ca_bundle_patch_tests_each_name_at_its_index() {
    let bundle = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let config = webhook_config(
        &["inject.weft.dev", "second.weft.dev", "third.weft.dev"],
        &[Some("old"), Some(bundle), None],
    );
    let Some(Action::PatchCaBundle {
        name,
        webhooks,
        patch,
    }) = ca_bundle_patch(&config, bundle)
    else {
        panic!("a patch is due");
    };
    assert_eq!(name, "weft-injector");
    assert_eq!(webhooks, ["inject.weft.dev", "third.weft.dev"]);
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            {"op": "test", "path": "/webhooks/0/name", "value": "inject.weft.dev"},
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64(bundle)},
            {"op": "test", "path": "/webhooks/2/name", "value": "third.weft.dev"},
            {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": b64(bundle)},
        ])
    );
    // Applied, every webhook carries the bundle, and nothing else changed.
    let mut value = serde_json::to_value(&config).unwrap();
    json_patch::patch(&mut value, &patch).unwrap();
    let patched: MutatingWebhookConfiguration = serde_json::from_value(value.clone()).unwrap();
    assert!(ca_bundle_patch(&patched, bundle).is_none());
    let mut expected = serde_json::to_value(&config).unwrap();
    for i in 0..3 {
        expected["webhooks"][i]["clientConfig"]["caBundle"] = json!(b64(bundle));
    }
    assert_eq!(value, expected);
    // Reordered since it was read: the test fails, nothing is written.
    let mut reordered = serde_json::to_value(&config).unwrap();
    reordered["webhooks"].as_array_mut().unwrap().swap(0, 1);
    let before = reordered.clone();
    assert!(json_patch::patch(&mut reordered, &patch).is_err());
    assert_eq!(reordered, before);
}
