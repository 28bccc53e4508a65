//! Shared by the `crd_*` tests: the generated MeshPolicy schema, builders for
//! MeshPolicy objects, and a client-side stand-in for what the API server
//! checks when one is created:
//!
//! - the OpenAPI structural checks — types, `nullable`, `enum`, `minimum` /
//!   `maximum`, `minLength` / `maxLength`, `pattern`, `minItems` /
//!   `maxItems`, required and unknown fields, list-map keys — by a small
//!   walker below. It refuses to run on a schema keyword it does not
//!   understand, so a new constraint cannot be silently skipped. Patterns
//!   are evaluated with CEL's `matches` (RE2 syntax, as the API server's Go
//!   regexp), because the operator's dependencies hold no regex engine;
//! - the CEL rules (`x-kubernetes-validations`) by kube's `cel` feature
//!   (kube-cel's `Validator`), a dev-dependency only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, cel, compile_schema};
use serde_json::{Value, json};
use weft_operator::crd::MeshPolicy;

/// The `openAPIV3Schema` of the generated CRD, as JSON.
pub fn schema() -> Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let crd = MeshPolicy::crd();
            let validation = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("the CRD has an openAPIV3Schema");
            serde_json::to_value(validation).expect("the schema serialises")
        })
        .clone()
}

thread_local! {
    /// The schema's CEL rules, compiled once per test thread.
    static COMPILED: (Validator, CompiledSchema) = (Validator::new(), compile_schema(&schema()));
    /// `text.matches(pattern)`.
    static MATCHES: cel::Program =
        cel::Program::compile("text.matches(pattern)").expect("the CEL expression parses");
}

/// The schema node at a dotted path of property names below the root;
/// `[]` steps into array items: `node("spec.split.[].weight")`.
pub fn node(path: &str) -> Value {
    let mut at = schema();
    for step in path.split('.') {
        at = if step == "[]" {
            at["items"].clone()
        } else {
            at["properties"][step].clone()
        };
        assert!(
            !at.is_null(),
            "no schema node at {path:?} (stuck at {step:?})"
        );
    }
    at
}

/// A MeshPolicy object `shop/p` with this spec.
pub fn policy(spec: Value) -> Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshPolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": spec,
    })
}

/// A policy for Service `cart` that sets every section, valid.
pub fn full_spec() -> Value {
    json!({
        "targetRef": {"kind": "Service", "name": "cart"},
        "mtls": {"mode": "Strict"},
        "timeouts": {"request": "5s", "connect": "1s", "idle": "1h"},
        "retries": {
            "attempts": 3,
            "retryOn": ["5xx", "gateway-error", "reset", "connect-failure", "503"],
            "perTryTimeout": "1m30s",
            "budget": {"percent": 20, "minPerSecond": 10},
        },
        "loadBalancer": "EWMA",
        "authorization": {
            "default": "Deny",
            "allow": [
                {"serviceAccount": "shop/frontend"},
                {"serviceAccount": "*"},
                {"namespace": "monitoring"},
            ],
        },
        "split": [
            {"service": "cart", "weight": 90},
            {"service": "cart-canary", "weight": 10},
        ],
        "outlierDetection": {
            "consecutiveFailures": 5,
            "baseEjectionTime": "30s",
            "maxEjectedPercent": 50,
        },
    })
}

/// `full_spec()` with the value at a JSON pointer (`/retries/attempts`)
/// replaced, or removed when `value` is `None`.
pub fn full_spec_with(pointer: &str, value: Option<Value>) -> Value {
    let mut spec = full_spec();
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = spec
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("nothing at {parent:?} in full_spec()"));
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(last.to_owned(), v);
        }
        (Value::Object(map), None) => {
            map.remove(last).expect("the field exists");
        }
        (Value::Array(items), Some(v)) => {
            let i: usize = last.parse().expect("an index");
            items[i] = v;
        }
        (Value::Array(items), None) => {
            let i: usize = last.parse().expect("an index");
            items.remove(i);
        }
        (other, _) => panic!("{pointer:?}: {other} is not an object or array"),
    }
    spec
}

/// Every error the API server would report for `object`, as `path: message`
/// (structural first, then CEL). Empty when it would accept it.
pub fn errors(object: &Value) -> Vec<String> {
    let schema = schema();
    // The API server validates apiVersion, kind and metadata itself; the
    // CRD's schema leaves them out.
    let mut body = object.clone();
    if let Value::Object(map) = &mut body {
        for field in ["apiVersion", "kind", "metadata"] {
            map.remove(field);
        }
    }
    let mut out = structural_errors(&schema, &body);
    out.extend(cel_errors(&body));
    out
}

/// The CEL rules' verdicts on `body` (the object without apiVersion, kind
/// and metadata), as `path: message`.
pub fn cel_errors(body: &Value) -> Vec<String> {
    COMPILED.with(
        |(validator, compiled)| match validator.validate_compiled(compiled, body, None) {
            Ok(()) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        },
    )
}

/// Asserts that the API server would refuse `spec`, every error at `path`
/// and one of them containing `message`.
#[track_caller]
pub fn assert_refused(spec: Value, path: &str, message: &str) {
    let errors = errors(&policy(spec.clone()));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(path) && e.contains(message)),
        "expected an error at {path} containing {message:?}; got {errors:#?}\nfor spec {spec:#}"
    );
    assert!(
        errors.iter().all(|e| e.starts_with(path)),
        "expected errors only at {path}; got {errors:#?}\nfor spec {spec:#}"
    );
}

/// Asserts that the API server would accept `spec`.
#[track_caller]
pub fn assert_accepted(spec: Value) {
    let errors = errors(&policy(spec.clone()));
    assert!(
        errors.is_empty(),
        "expected no errors; got {errors:#?}\nfor spec {spec:#}"
    );
}

/// Schema keywords the walker understands; anything else is a test failure.
const KNOWN_KEYWORDS: &[&str] = &[
    "type",
    "nullable",
    "properties",
    "required",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    // Checked elsewhere (CEL) or not a constraint.
    "x-kubernetes-validations",
    "description",
    "default",
    "title",
    "format",
];

/// The OpenAPI structural errors of `value` against `schema`.
pub fn structural_errors(schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, value, "", &mut out);
    out
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let s = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema node {schema} is not an object"));
    for keyword in s.keys() {
        assert!(
            KNOWN_KEYWORDS.contains(&keyword.as_str()),
            "{path}: the test validator does not know the schema keyword {keyword:?}; teach it"
        );
    }
    if let Some(format) = s.get("format").and_then(Value::as_str) {
        // Formats the API server does not check for integers; anything
        // else (date-time, ...) needs checking here first.
        assert!(
            ["int32", "int64", "uint32", "uint64"].contains(&format),
            "{path}: the test validator does not check format {format:?}; teach it"
        );
    }
    let mut fail = |message: String| out.push(format!("{path}: {message}"));
    if value.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            fail("must not be null".into());
        }
        return;
    }
    let ty = s
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{path}: schema node without a type"));
    let type_ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        other => panic!("{path}: unknown type {other:?}"),
    };
    if !type_ok {
        fail(format!("{value} is not of type {ty}"));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        fail(format!("{value} is not one of {allowed:?}"));
    }
    let bound = |key: &str| s.get(key).and_then(Value::as_f64);
    match value {
        Value::Number(n) => {
            let n = n.as_f64().expect("a number");
            if let Some(min) = bound("minimum")
                && n < min
            {
                fail(format!("{value} is less than {min}"));
            }
            if let Some(max) = bound("maximum")
                && n > max
            {
                fail(format!("{value} is more than {max}"));
            }
        }
        Value::String(text) => {
            // Kubernetes counts characters, not bytes.
            let len = text.chars().count() as f64;
            if let Some(min) = bound("minLength")
                && len < min
            {
                fail(format!("{value} is shorter than {min}"));
            }
            if let Some(max) = bound("maxLength")
                && len > max
            {
                fail(format!("{value} is longer than {max}"));
            }
            if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
                && !matches(text, pattern)
            {
                fail(format!("{value} does not match {pattern:?}"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as f64;
            if let Some(min) = bound("minItems")
                && len < min
            {
                fail(format!("has {len} items, fewer than {min}"));
            }
            if let Some(max) = bound("maxItems")
                && len > max
            {
                fail(format!("has {len} items, more than {max}"));
            }
            if s.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
                let keys: Vec<&str> = s["x-kubernetes-list-map-keys"]
                    .as_array()
                    .expect("a map list has keys")
                    .iter()
                    .map(|k| k.as_str().expect("a key name"))
                    .collect();
                let key_of =
                    |item: &Value| keys.iter().map(|k| item[*k].clone()).collect::<Vec<_>>();
                for (i, item) in items.iter().enumerate() {
                    if items[..i]
                        .iter()
                        .any(|earlier| key_of(earlier) == key_of(item))
                    {
                        fail(format!("[{i}]: duplicate entry for key {keys:?}"));
                    }
                }
            }
            let item_schema = s
                .get("items")
                .unwrap_or_else(|| panic!("{path}: an array without items"));
            for (i, item) in items.iter().enumerate() {
                walk(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(fields) => {
            let properties = s.get("properties").and_then(Value::as_object);
            for required in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let required = required.as_str().expect("a field name");
                if !fields.contains_key(required) {
                    fail(format!("{required} is required"));
                }
            }
            for (name, field) in fields {
                match properties.and_then(|p| p.get(name)) {
                    Some(field_schema) => walk(field_schema, field, &join(path, name), out),
                    // kubectl's default (strict field validation) refuses
                    // unknown fields; without it the API server drops them.
                    None => out.push(format!("{}: unknown field", join(path, name))),
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// Whether `text` matches the RE2 `pattern`, by CEL's `matches`.
pub fn matches(text: &str, pattern: &str) -> bool {
    let mut context = cel::Context::default();
    context.add_variable_from_value("text", text.to_owned());
    context.add_variable_from_value("pattern", pattern.to_owned());
    match MATCHES.with(|program| program.execute(&context)) {
        Ok(cel::Value::Bool(matched)) => matched,
        other => panic!("pattern {pattern:?} on {text:?}: {other:?}"),
    }
}
