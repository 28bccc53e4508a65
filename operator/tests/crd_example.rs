//! `crds/examples/meshpolicy.yaml`: a namespace default and a Service
//! policy that sets every section. They read into `MeshPolicy` and pass the
//! CRD's schema and CEL rules, so the example users copy is one the API
//! server accepts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crd_support;

use std::path::PathBuf;

use kube::core::cel::validate_cel;
use serde_json::Value;
use weft_operator::crd::MeshPolicy;

fn example() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/examples/meshpolicy.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn policies() -> Vec<MeshPolicy> {
    serde_saphyr::from_str_multiple(&example()).expect("the example reads into MeshPolicies")
}

#[test]
fn crd_example_holds_a_namespace_default_and_a_service_policy_setting_everything() {
    let policies = policies();
    assert_eq!(policies.len(), 2);

    let default = &policies[0];
    assert_eq!(default.metadata.name.as_deref(), Some("default"));
    assert_eq!(default.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        default.spec.target_ref, None,
        "a namespace default has no target"
    );

    let cart = &policies[1];
    assert_eq!(cart.metadata.namespace.as_deref(), Some("shop"));
    let spec = &cart.spec;
    let target = spec.target_ref.as_ref().expect("targetRef");
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("Service", "cart")
    );
    assert!(spec.mtls.is_some(), "mtls");
    let timeouts = spec.timeouts.as_ref().expect("timeouts");
    assert!(timeouts.request.is_some() && timeouts.connect.is_some() && timeouts.idle.is_some());
    let retries = spec.retries.as_ref().expect("retries");
    assert!(!retries.retry_on.is_empty() && retries.per_try_timeout.is_some());
    assert!(retries.budget.is_some(), "retries.budget");
    assert!(spec.load_balancer.is_some(), "loadBalancer");
    let authz = spec.authorization.as_ref().expect("authorization");
    assert!(authz.allow.iter().any(|r| r.service_account.is_some()));
    assert!(authz.allow.iter().any(|r| r.namespace.is_some()));
    assert!(spec.split.as_ref().is_some_and(|s| s.len() > 1), "split");
    assert!(spec.outlier_detection.is_some(), "outlierDetection");
}

#[test]
fn crd_example_passes_the_cel_rules() {
    for policy in policies() {
        let name = policy.metadata.name.clone();
        if let Err(errors) = validate_cel(&policy) {
            panic!("{name:?}: {errors}");
        }
    }
}

/// The raw documents, not the typed values: a misspelt field would be
/// dropped silently by serde but is refused here, as kubectl would.
#[test]
fn crd_example_passes_the_schema_as_written() {
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(&example()).expect("the example is YAML");
    assert_eq!(documents.len(), 2);
    for document in &documents {
        assert_eq!(document["apiVersion"], "weft.dev/v1alpha1");
        assert_eq!(document["kind"], "MeshPolicy");
        let errors = crd_support::errors(document);
        assert!(
            errors.is_empty(),
            "{}: {errors:#?}",
            document["metadata"]["name"]
        );
    }
}

/// Nothing in the example is lost on the way through the Rust types.
#[test]
fn crd_example_round_trips_through_the_types() {
    let documents: Vec<Value> =
        serde_saphyr::from_str_multiple(&example()).expect("the example is YAML");
    for (policy, document) in policies().iter().zip(&documents) {
        let back = serde_json::to_value(policy).expect("serialises");
        assert_eq!(&back, document);
    }
}
