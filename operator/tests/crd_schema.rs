//! The generated MeshPolicy CRD: its identity (group, version, scope,
//! names, status subresource, printer columns), the OpenAPI constraints on
//! each field, and the CEL rules, each checked by validating good and bad
//! policies client-side as the API server would (see `crd_support`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crd_support;

use crd_support::{assert_accepted, assert_refused, full_spec, full_spec_with, node, schema};
use kube::CustomResourceExt;
use kube::core::cel::{ScopeContext, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};
use weft_operator::crd::MeshPolicy;

// ---- (a) the CRD's identity -------------------------------------------------

#[test]
fn crd_is_namespaced_weft_dev_v1alpha1_with_short_name_mp() {
    let crd = MeshPolicy::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("meshpolicies.weft.dev"));
    assert_eq!(crd.spec.group, "weft.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    let names = &crd.spec.names;
    assert_eq!(names.kind, "MeshPolicy");
    assert_eq!(names.plural, "meshpolicies");
    assert_eq!(names.singular.as_deref(), Some("meshpolicy"));
    assert_eq!(names.short_names.as_deref(), Some(&["mp".to_owned()][..]));
    assert_eq!(MeshPolicy::shortnames(), &["mp"]);
}

#[test]
fn crd_serves_and_stores_v1alpha1_only_with_a_status_subresource() {
    let crd = MeshPolicy::crd();
    assert_eq!(crd.spec.versions.len(), 1);
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.served, "v1alpha1 is served");
    assert!(v.storage, "v1alpha1 is the storage version");
    let sub = v.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some(), "status subresource");
    assert!(sub.scale.is_none(), "no scale subresource");
    assert_eq!(v.deprecated, None);
}

#[test]
fn crd_printer_columns_show_target_accepted_reason_age() {
    let crd = MeshPolicy::crd();
    let columns: Vec<(String, String, String)> = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .expect("printer columns")
        .iter()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect();
    let expected = [
        ("Target", "string", ".spec.targetRef.name"),
        (
            "Accepted",
            "string",
            r#".status.conditions[?(@.type=="Accepted")].status"#,
        ),
        (
            "Reason",
            "string",
            r#".status.conditions[?(@.type=="Accepted")].reason"#,
        ),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]
    .map(|(n, t, p)| (n.to_owned(), t.to_owned(), p.to_owned()));
    assert_eq!(columns, expected);
}

#[test]
fn crd_printer_column_paths_name_fields_of_the_schema() {
    // `.spec.targetRef.name` and the condition's `status` and `reason`.
    assert_eq!(node("spec.targetRef.name")["type"], "string");
    let condition = node("status.conditions.[]");
    for field in ["type", "status", "reason"] {
        assert_eq!(condition["properties"][field]["type"], "string", "{field}");
    }
}

#[test]
fn crd_status_is_conditions_keyed_by_type_and_observed_generation() {
    let status = node("status");
    assert_eq!(status["nullable"], true);
    let conditions = node("status.conditions");
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert_eq!(
        node("status.conditions.[]")["required"],
        json!(["lastTransitionTime", "message", "reason", "status", "type"])
    );
    assert_eq!(
        node("status.conditions.[].status")["enum"],
        json!(["True", "False", "Unknown"])
    );
    assert_eq!(node("status.observedGeneration")["type"], "integer");
}

#[test]
fn crd_spec_is_required_and_every_section_optional() {
    assert_eq!(schema()["required"], json!(["spec"]));
    assert_eq!(node("spec").get("required"), None);
}

// ---- (c) the OpenAPI constraints, as schema fragments ---------------------

const DURATION: &str = "^([0-9]+(ms|s|m|h))+$";
const SERVICE: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
const NAMESPACE: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Asserts that the schema node at `path` has these keywords and values.
#[track_caller]
fn assert_fragment(path: &str, expected: Value) {
    let actual = node(path);
    for (key, want) in expected.as_object().expect("an object") {
        let got = &actual[key];
        // Bounds come out as floats (`10.0`); compare numerically.
        let same = match (got.as_f64(), want.as_f64()) {
            (Some(g), Some(w)) => g == w,
            _ => got == want,
        };
        assert!(
            same,
            "{path}.{key}: expected {want}, got {got}\nin {actual:#}"
        );
    }
}

#[test]
fn crd_schema_enums() {
    assert_fragment(
        "spec.targetRef.kind",
        json!({"type": "string", "enum": ["Service"]}),
    );
    assert_fragment(
        "spec.mtls.mode",
        json!({"type": "string", "enum": ["Strict", "Permissive"]}),
    );
    // Optional enums carry `null` beside `nullable: true` (kube's OptionalEnum).
    assert_fragment(
        "spec.loadBalancer",
        json!({"type": "string", "enum": ["EWMA", "RoundRobin", null], "nullable": true}),
    );
    assert_fragment(
        "spec.authorization.default",
        json!({"type": "string", "enum": ["Allow", "Deny"]}),
    );
}

#[test]
fn crd_schema_names_are_dns_labels() {
    for path in ["spec.targetRef.name", "spec.split.[].service"] {
        assert_fragment(
            path,
            json!({"pattern": SERVICE, "minLength": 1, "maxLength": 63}),
        );
    }
    assert_fragment(
        "spec.authorization.allow.[].namespace",
        json!({"pattern": NAMESPACE, "minLength": 1, "maxLength": 63}),
    );
    assert_fragment(
        "spec.authorization.allow.[].serviceAccount",
        json!({
            "pattern": r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$",
            "maxLength": 317,
        }),
    );
}

#[test]
fn crd_schema_durations_have_the_pattern_and_a_nonzero_rule() {
    for path in [
        "spec.timeouts.request",
        "spec.timeouts.connect",
        "spec.timeouts.idle",
        "spec.retries.perTryTimeout",
        "spec.outlierDetection.baseEjectionTime",
    ] {
        assert_fragment(
            path,
            json!({"type": "string", "pattern": DURATION, "maxLength": 32}),
        );
        assert_eq!(
            node(path)["x-kubernetes-validations"][0]["rule"],
            "!self.matches('^(0+(ms|s|m|h))+$')",
            "{path}"
        );
    }
}

#[test]
fn crd_schema_ranges_and_list_sizes() {
    assert_fragment(
        "spec.retries.attempts",
        json!({"type": "integer", "minimum": 1, "maximum": 10}),
    );
    assert_fragment(
        "spec.retries.budget.percent",
        json!({"minimum": 0, "maximum": 100}),
    );
    assert_fragment(
        "spec.retries.retryOn",
        json!({"type": "array", "maxItems": 16}),
    );
    assert_fragment(
        "spec.retries.retryOn.[]",
        json!({"pattern": "^(5xx|gateway-error|reset|connect-failure|[1-5][0-9][0-9])$"}),
    );
    assert_fragment("spec.split", json!({"minItems": 1, "maxItems": 16}));
    assert_fragment(
        "spec.split.[].weight",
        json!({"minimum": 0, "maximum": 1_000_000}),
    );
    assert_fragment("spec.authorization.allow", json!({"maxItems": 256}));
    assert_fragment(
        "spec.outlierDetection.consecutiveFailures",
        json!({"minimum": 1}),
    );
    assert_fragment(
        "spec.outlierDetection.maxEjectedPercent",
        json!({"minimum": 0, "maximum": 100}),
    );
}

#[test]
fn crd_schema_cel_rules_sit_where_they_apply() {
    let rules = |path: &str| -> Vec<String> {
        node(path)["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("no CEL rules at {path}"))
            .iter()
            .map(|r| r["rule"].as_str().expect("a rule").to_owned())
            .collect()
    };
    assert_eq!(rules("spec"), ["!has(self.split) || has(self.targetRef)"]);
    assert_eq!(
        rules("spec.split"),
        [
            "self.exists(b, b.weight > 0)",
            "self.all(a, self.exists_one(b, b.service == a.service))",
        ]
    );
    assert_eq!(
        rules("spec.authorization.allow.[]"),
        ["has(self.serviceAccount) != has(self.__namespace__)"]
    );
}

/// Every CEL rule compiles, uses only CRD-scope variables, and stays inside
/// the API server's cost budget (kube-cel's estimate; an unbounded list or
/// string under a rule would exceed it and the CRD would be refused).
#[test]
fn crd_cel_rules_compile_in_scope_and_within_cost_budget() {
    fn visit(at: &Value, path: &str, seen: &mut usize) {
        if let Some(rules) = at["x-kubernetes-validations"].as_array() {
            let compiled = compile_schema(at);
            assert!(
                compiled.compilation_errors().is_empty(),
                "{path}: {:?}",
                compiled.compilation_errors()
            );
            for rule in rules {
                let rule = rule["rule"].as_str().expect("a rule");
                let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                    .into_iter()
                    // kube-cel 0.8 counts a macro's loop variable (`b` in
                    // `self.exists(b, ...)`) as out of scope; it is not.
                    .filter(|w| {
                        let var = w.message.split('\'').nth(1).unwrap_or_default();
                        !(w.kind == WarningKind::WrongScope && rule.contains(&format!("({var},")))
                    })
                    .collect();
                assert!(warnings.is_empty(), "{path}: {rule}: {warnings:?}");
                *seen += 1;
            }
        }
        if let Some(props) = at["properties"].as_object() {
            for (name, child) in props {
                visit(child, &format!("{path}.{name}"), seen);
            }
        }
        if at["items"].is_object() {
            visit(&at["items"], &format!("{path}[]"), seen);
        }
    }
    let mut seen = 0;
    visit(&schema(), "", &mut seen);
    // spec: 1, split: 2, allow[]: 1, five durations: 5.
    assert_eq!(seen, 9);
}

// ---- (b) + (c): what the API server accepts and refuses -------------------

#[test]
fn crd_accepts_a_full_service_policy_and_a_namespace_default() {
    assert_accepted(full_spec());
    assert_accepted(json!({
        "mtls": {"mode": "Permissive"},
        "timeouts": {"request": "10s"},
        "loadBalancer": "RoundRobin",
        "authorization": {"default": "Allow"},
    }));
    assert_accepted(json!({}));
}

#[test]
fn crd_accepts_the_boundaries() {
    let cases = [
        ("/targetRef/name", json!("a")),
        ("/targetRef/name", json!(format!("a{}", "b".repeat(62)))),
        ("/retries/attempts", json!(1)),
        ("/retries/attempts", json!(10)),
        ("/retries/budget/percent", json!(0)),
        ("/retries/budget/percent", json!(100)),
        ("/retries/retryOn", json!(["100", "599"])),
        ("/retries/retryOn", json!([])),
        ("/retries/perTryTimeout", json!("1h2m3s4ms")),
        ("/retries/perTryTimeout", json!("0s1ms")),
        ("/retries/perTryTimeout", json!("1".repeat(31) + "s")),
        ("/split/1/weight", json!(0)),
        ("/split/1/weight", json!(1_000_000)),
        ("/split", json!([{"service": "cart", "weight": 1}])),
        (
            "/split",
            json!(
                (0..16)
                    .map(|i| json!({"service": format!("s{i}"), "weight": 1}))
                    .collect::<Vec<_>>()
            ),
        ),
        (
            "/authorization/allow/0",
            json!({"serviceAccount": "a/b.c-d"}),
        ),
        ("/authorization/allow/0", json!({"namespace": "0abc"})),
        (
            "/authorization/allow/0",
            json!({"serviceAccount": format!("{}/{}", "n".repeat(63), "s".repeat(253))}),
        ),
        ("/authorization/allow", json!([])),
        ("/outlierDetection/consecutiveFailures", json!(1)),
        ("/outlierDetection/maxEjectedPercent", json!(100)),
        ("/outlierDetection/maxEjectedPercent", json!(0)),
    ];
    for (pointer, value) in cases {
        assert_accepted(full_spec_with(pointer, Some(value)));
    }
    for optional in [
        "/retries/budget",
        "/retries/retryOn",
        "/retries/perTryTimeout",
    ] {
        assert_accepted(full_spec_with(optional, None));
    }
}

#[test]
fn crd_refuses_a_bad_target_ref() {
    let cases = [
        (
            "/targetRef/kind",
            json!("Deployment"),
            "spec.targetRef.kind",
            "is not one of",
        ),
        (
            "/targetRef/kind",
            json!("service"),
            "spec.targetRef.kind",
            "is not one of",
        ),
        (
            "/targetRef/name",
            json!("Cart"),
            "spec.targetRef.name",
            "does not match",
        ),
        (
            "/targetRef/name",
            json!("1cart"),
            "spec.targetRef.name",
            "does not match",
        ),
        (
            "/targetRef/name",
            json!("cart-"),
            "spec.targetRef.name",
            "does not match",
        ),
        (
            "/targetRef/name",
            json!("a.b"),
            "spec.targetRef.name",
            "does not match",
        ),
        (
            "/targetRef/name",
            json!(""),
            "spec.targetRef.name",
            "shorter than 1",
        ),
        (
            "/targetRef/name",
            json!("a".repeat(64)),
            "spec.targetRef.name",
            "longer than 63",
        ),
        (
            "/targetRef",
            json!({"name": "cart"}),
            "spec.targetRef",
            "kind is required",
        ),
    ];
    for (pointer, value, path, message) in cases {
        assert_refused(full_spec_with(pointer, Some(value)), path, message);
    }
}

#[test]
fn crd_refuses_bad_durations() {
    let fields = [
        ("/timeouts/request", "spec.timeouts.request"),
        ("/timeouts/connect", "spec.timeouts.connect"),
        ("/timeouts/idle", "spec.timeouts.idle"),
        ("/retries/perTryTimeout", "spec.retries.perTryTimeout"),
        (
            "/outlierDetection/baseEjectionTime",
            "spec.outlierDetection.baseEjectionTime",
        ),
    ];
    for (pointer, path) in fields {
        for bad in [
            "5", "s", "1.5s", "-1s", "5 s", "5sec", "1d", "1h 30m", "", "PT5S",
        ] {
            assert_refused(
                full_spec_with(pointer, Some(json!(bad))),
                path,
                "does not match",
            );
        }
        let long = "1".repeat(32) + "s";
        assert_refused(
            full_spec_with(pointer, Some(json!(long))),
            path,
            "longer than 32",
        );
        assert_refused(
            full_spec_with(pointer, Some(json!(5))),
            path,
            "is not of type string",
        );
        // Zero is not a timeout (CEL).
        for zero in ["0s", "0ms", "00m0h"] {
            assert_refused(
                full_spec_with(pointer, Some(json!(zero))),
                path,
                "must be more than 0",
            );
        }
    }
}

#[test]
fn crd_refuses_bad_retries() {
    let cases = [
        (
            "/retries/attempts",
            json!(0),
            "spec.retries.attempts",
            "less than 1",
        ),
        (
            "/retries/attempts",
            json!(11),
            "spec.retries.attempts",
            "more than 10",
        ),
        (
            "/retries/attempts",
            json!(-1),
            "spec.retries.attempts",
            "less than 1",
        ),
        (
            "/retries/attempts",
            json!("3"),
            "spec.retries.attempts",
            "not of type integer",
        ),
        (
            "/retries/budget/percent",
            json!(101),
            "spec.retries.budget.percent",
            "more than 100",
        ),
        (
            "/retries/budget/minPerSecond",
            json!(-1),
            "spec.retries.budget.minPerSecond",
            "less than 0",
        ),
        (
            "/retries/retryOn",
            json!(["5XX"]),
            "spec.retries.retryOn[0]",
            "does not match",
        ),
        (
            "/retries/retryOn",
            json!(["5xx", "4xx"]),
            "spec.retries.retryOn[1]",
            "does not match",
        ),
        (
            "/retries/retryOn",
            json!(["600"]),
            "spec.retries.retryOn[0]",
            "does not match",
        ),
        (
            "/retries/retryOn",
            json!(["99"]),
            "spec.retries.retryOn[0]",
            "does not match",
        ),
        (
            "/retries/retryOn",
            json!(["5030"]),
            "spec.retries.retryOn[0]",
            "does not match",
        ),
        (
            "/retries/retryOn",
            json!(["reset,5xx"]),
            "spec.retries.retryOn[0]",
            "does not match",
        ),
        (
            "/retries/retryOn",
            json!(vec!["5xx"; 17]),
            "spec.retries.retryOn",
            "more than 16",
        ),
    ];
    for (pointer, value, path, message) in cases {
        assert_refused(full_spec_with(pointer, Some(value)), path, message);
    }
    assert_refused(
        full_spec_with("/retries/attempts", None),
        "spec.retries",
        "attempts is required",
    );
}

#[test]
fn crd_refuses_a_bad_split() {
    let cases = [
        ("/split", json!([]), "spec.split", "fewer than 1"),
        (
            "/split",
            json!(
                (0..17)
                    .map(|i| json!({"service": format!("s{i}"), "weight": 1}))
                    .collect::<Vec<_>>()
            ),
            "spec.split",
            "more than 16",
        ),
        (
            "/split/0/weight",
            json!(1_000_001),
            "spec.split[0].weight",
            "more than 1000000",
        ),
        (
            "/split/0/weight",
            json!(-1),
            "spec.split[0].weight",
            "less than 0",
        ),
        (
            "/split/0/service",
            json!("Cart"),
            "spec.split[0].service",
            "does not match",
        ),
        (
            "/split/0/service",
            json!("a".repeat(64)),
            "spec.split[0].service",
            "longer than 63",
        ),
        // (The CEL rules on the list then fail to evaluate too.)
        (
            "/split/0",
            json!({"service": "cart"}),
            "spec.split",
            "weight is required",
        ),
        // CEL: at least one weight above 0.
        (
            "/split",
            json!([{"service": "cart", "weight": 0}, {"service": "cart-canary", "weight": 0}]),
            "spec.split",
            "at least one weight must be above 0",
        ),
        // CEL: each Service once.
        (
            "/split",
            json!([{"service": "cart", "weight": 1}, {"service": "cart", "weight": 2}]),
            "spec.split",
            "each Service may appear only once",
        ),
        (
            "/split",
            json!([
                {"service": "a", "weight": 1},
                {"service": "b", "weight": 1},
                {"service": "a", "weight": 1},
            ]),
            "spec.split",
            "each Service may appear only once",
        ),
    ];
    for (pointer, value, path, message) in cases {
        assert_refused(full_spec_with(pointer, Some(value)), path, message);
    }
}

#[test]
fn crd_refuses_a_split_without_a_target_ref() {
    assert_refused(
        full_spec_with("/targetRef", None),
        "spec.split",
        "split needs a targetRef",
    );
    assert_refused(
        json!({"split": [{"service": "cart", "weight": 1}]}),
        "spec.split",
        "split needs a targetRef",
    );
}

#[test]
fn crd_refuses_bad_allow_rules() {
    let cases = [
        // CEL: exactly one of the two fields.
        (
            json!({"serviceAccount": "shop/web", "namespace": "shop"}),
            "spec.authorization.allow[0]",
            "set exactly one of serviceAccount and namespace",
        ),
        (
            json!({}),
            "spec.authorization.allow[0]",
            "set exactly one of serviceAccount and namespace",
        ),
        // Patterns.
        (
            json!({"serviceAccount": "web"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": "shop/"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": "/web"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": "Shop/web"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": "shop/web/x"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": "*/web"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": "shop/*"}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"serviceAccount": format!("{}/web", "n".repeat(64))}),
            "spec.authorization.allow[0].serviceAccount",
            "does not match",
        ),
        (
            json!({"namespace": "Shop"}),
            "spec.authorization.allow[0].namespace",
            "does not match",
        ),
        (
            json!({"namespace": "shop/web"}),
            "spec.authorization.allow[0].namespace",
            "does not match",
        ),
        (
            json!({"namespace": "-shop"}),
            "spec.authorization.allow[0].namespace",
            "does not match",
        ),
        (
            json!({"namespace": "n".repeat(64)}),
            "spec.authorization.allow[0].namespace",
            "longer than 63",
        ),
        (
            json!({"identity": "shop/web"}),
            "spec.authorization.allow[0]",
            "unknown field",
        ),
    ];
    for (rule, path, message) in cases {
        assert_refused(
            full_spec_with("/authorization/allow/0", Some(rule)),
            path,
            message,
        );
    }
    let many = vec![json!({"namespace": "a"}); 257];
    assert_refused(
        full_spec_with("/authorization/allow", Some(json!(many))),
        "spec.authorization.allow",
        "more than 256",
    );
    assert_refused(
        full_spec_with("/authorization/default", Some(json!("deny"))),
        "spec.authorization.default",
        "is not one of",
    );
    assert_refused(
        full_spec_with("/authorization/default", None),
        "spec.authorization",
        "default is required",
    );
}

#[test]
fn crd_refuses_bad_outlier_detection() {
    let cases = [
        (
            "/outlierDetection/consecutiveFailures",
            json!(0),
            "spec.outlierDetection.consecutiveFailures",
            "less than 1",
        ),
        (
            "/outlierDetection/maxEjectedPercent",
            json!(101),
            "spec.outlierDetection.maxEjectedPercent",
            "more than 100",
        ),
    ];
    for (pointer, value, path, message) in cases {
        assert_refused(full_spec_with(pointer, Some(value)), path, message);
    }
    for required in [
        "consecutiveFailures",
        "baseEjectionTime",
        "maxEjectedPercent",
    ] {
        assert_refused(
            full_spec_with(&format!("/outlierDetection/{required}"), None),
            "spec.outlierDetection",
            &format!("{required} is required"),
        );
    }
}

#[test]
fn crd_refuses_bad_enums_and_unknown_fields() {
    let cases = [
        (
            "/mtls/mode",
            json!("strict"),
            "spec.mtls.mode",
            "is not one of",
        ),
        (
            "/mtls/mode",
            json!("Disabled"),
            "spec.mtls.mode",
            "is not one of",
        ),
        (
            "/loadBalancer",
            json!("Random"),
            "spec.loadBalancer",
            "is not one of",
        ),
        (
            "/loadBalancer",
            json!("Ewma"),
            "spec.loadBalancer",
            "is not one of",
        ),
        ("/mtls", json!({}), "spec.mtls", "mode is required"),
        (
            "/timeouts/total",
            json!("5s"),
            "spec.timeouts.total",
            "unknown field",
        ),
        (
            "/retry",
            json!({"attempts": 2}),
            "spec.retry",
            "unknown field",
        ),
    ];
    for (pointer, value, path, message) in cases {
        assert_refused(full_spec_with(pointer, Some(value)), path, message);
    }
}
