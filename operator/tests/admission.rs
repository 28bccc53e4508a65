//! The webhook's AdmissionReview handling on the review the API server
//! really sent: response shape, base64 JSONPatch, and the patched pod equal
//! to the golden injected pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};
use support::*;
use weft_operator::admission::{Decision, decide, parse, response};
use weft_operator::inject::InjectConfig;
use weft_operator::scope::MeshedPods;

fn review() -> Value {
    fixture("admissionreview-pod-create.json")
}

fn whtest(enabled: bool) -> Namespace {
    match namespace("whtest", enabled) {
        weft_operator::cluster::Object::Namespace(ns) => *ns,
        _ => unreachable!(),
    }
}

fn cfg() -> InjectConfig {
    InjectConfig {
        proxy_image: "weft-proxy:test".into(),
        init_image: "weft-init:test".into(),
        version: "test".into(),
        ..InjectConfig::default()
    }
}

/// Decides the fixture review and returns the response JSON.
fn answer(body: &Value, ns: &Namespace) -> (Decision, Value) {
    let req = parse(&serde_json::to_vec(body).unwrap()).unwrap();
    let decision = decide(&req, Some(ns), &mesh(MeshedPods::Injected), &cfg());
    let resp = response(&req.uid, &decision);
    (decision, resp)
}

#[test]
fn pod_create_in_an_enabled_namespace_gets_a_base64_json_patch() {
    let review = review();
    let (decision, resp) = answer(&review, &whtest(true));
    assert!(
        matches!(&decision, Decision::Patch { service_account, namespace, .. }
        if service_account == "default" && namespace == "whtest")
    );
    assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["response"]["uid"], review["request"]["uid"]);
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");

    let pod = patched(&review, &resp);
    let path = format!(
        "{}/tests/golden/inject/admission-pod.out.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let got = serde_json::to_string_pretty(&pod).unwrap() + "\n";
    if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    assert_eq!(
        got,
        std::fs::read_to_string(&path).unwrap(),
        "WEFT_UPDATE_GOLDEN=1 rewrites"
    );
    // Everything the API server sent is still there, untouched.
    assert_eq!(
        pod["metadata"]["managedFields"],
        review["request"]["object"]["metadata"]["managedFields"]
    );
    assert_eq!(
        pod["spec"]["containers"][0],
        review["request"]["object"]["spec"]["containers"][0]
    );
}

#[test]
fn the_webhook_and_the_cli_inject_identically() {
    let review = review();
    let (_, resp) = answer(&review, &whtest(true));
    let pod = patched(&review, &resp);
    let yaml = serde_saphyr::to_string(&review["request"]["object"]).unwrap();
    let cli =
        weft_operator::inject_docs::inject_documents(&yaml, &mesh(MeshedPods::Injected), &cfg())
            .unwrap();
    let cli: Value = serde_saphyr::from_str(&cli).unwrap();
    assert_eq!(cli["spec"], pod["spec"]);
    assert_eq!(
        cli["metadata"]["annotations"],
        pod["metadata"]["annotations"]
    );
}

#[test]
fn other_requests_are_allowed_unchanged() {
    let review = review();
    let (decision, resp) = answer(&review, &whtest(false));
    assert_eq!(
        decision,
        Decision::Allow("not in scope or already injected")
    );
    assert_eq!(
        resp["response"],
        json!({"uid": review["request"]["uid"], "allowed": true})
    );

    // An injected pod comes back: nothing more to do.
    let (_, first) = answer(&review, &whtest(true));
    let mut again = review.clone();
    again["request"]["object"] = patched(&review, &first);
    assert_eq!(
        answer(&again, &whtest(true)).0,
        Decision::Allow("not in scope or already injected")
    );

    let mut update = review.clone();
    update["request"]["operation"] = "UPDATE".into();
    assert_eq!(
        answer(&update, &whtest(true)).0,
        Decision::Allow("not a Pod CREATE")
    );
}

#[test]
fn an_invalid_annotation_is_denied_with_its_name() {
    let mut review = review();
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"weft.dev/skip-subnets": "10.0.0.0/99"});
    let (_, resp) = answer(&review, &whtest(true));
    assert_eq!(resp["response"]["allowed"], false);
    assert_eq!(resp["response"]["status"]["code"], 400);
    let message = resp["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("weft.dev/skip-subnets") && message.contains("10.0.0.0/99"),
        "{message}"
    );
}

#[test]
fn malformed_reviews_are_refused_with_a_reason() {
    for body in [
        &b"not json"[..],
        br#"{"apiVersion":"v1","kind":"Pod"}"#,
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let err = parse(body).unwrap_err().to_string();
        assert!(
            err.starts_with("not an admission.k8s.io/v1 AdmissionReview"),
            "{err}"
        );
    }
}
