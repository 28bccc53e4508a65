//! The `MeshPolicy` custom resource (`weft.dev/v1alpha1`, namespaced).
//!
//! A policy targets one Service of its namespace (`targetRef`) or, without
//! a target, every Service of the namespace. Each top-level section is
//! optional: an unset section is inherited from the namespace policy, then
//! from the mesh default (see `policy`).
//!
//! The OpenAPI schema of the CRD refuses what a schema can express: name
//! and duration patterns, ranges, enums, list sizes, and CEL rules
//! (`x-kubernetes-validations`) for what spans fields (exactly one of two
//! fields, unique split backends, a split only with a target). What needs the
//! cluster or arithmetic (a Service that does not exist, a duration too long
//! to count in milliseconds) is checked by `policy`, which also re-checks
//! the rules the proxy depends on for the local runtime, whose manifests no
//! API server validated.
//! `crds/meshpolicy.yaml` is generated from these types (`weft-operator
//! crdgen`); a test fails when it drifts.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use weft_api::validate::MAX_RETRY_ATTEMPTS;

/// A Service name: an RFC 1035 label (lowercase letter first), at most
/// [`NAME_MAX_LENGTH`] characters.
pub const SERVICE_NAME_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// A namespace name: an RFC 1123 label, at most [`NAME_MAX_LENGTH`] characters.
pub const NAMESPACE_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The longest Service or namespace name (a DNS label).
pub const NAME_MAX_LENGTH: u32 = 63;
/// `*`, or `<namespace>/<name>` of a service account (the namespace a DNS
/// label of at most 63 characters, the name a DNS subdomain).
pub const SERVICE_ACCOUNT_PATTERN: &str =
    r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$";
/// The longest `serviceAccount`: a 63-character namespace, `/`, and a
/// 253-character name.
pub const SERVICE_ACCOUNT_MAX_LENGTH: u32 = 63 + 1 + 253;
/// A duration: one or more `<digits><unit>`, units `ms`, `s`, `m`, `h`
/// (what `weft_api::duration::parse_duration` reads).
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";
/// The longest duration string; the value's own bound (it must fit in `u64`
/// milliseconds) is checked by the controller.
pub const DURATION_MAX_LENGTH: u32 = 32;
/// CEL: a duration is not zero (`0s`, `0ms0m`): no timeout is zero.
const DURATION_NOT_ZERO: &str = "!self.matches('^(0+(ms|s|m|h))+$')";
const DURATION_NOT_ZERO_MESSAGE: &str = "must be more than 0";
/// A `retryOn` item: a retry class or an HTTP status code 100–599.
pub const RETRY_ON_PATTERN: &str = "^(5xx|gateway-error|reset|connect-failure|[1-5][0-9][0-9])$";
/// The most `retryOn` items (there are four classes; the rest are codes).
pub const MAX_RETRY_ON: u32 = 16;
/// The largest split weight. Weights are relative (only their ratio
/// matters); the bound is Gateway API's, so its users' habits carry over, and
/// with [`MAX_SPLIT_BACKENDS`] the sum cannot overflow a `u32`.
pub const MAX_SPLIT_WEIGHT: u32 = 1_000_000;
/// The most backends of a split (Gateway API allows 16 `backendRefs`).
pub const MAX_SPLIT_BACKENDS: u32 = 16;
/// The most `authorization.allow` rules; bounds the CEL cost estimate the
/// API server computes for the per-rule validation.
pub const MAX_ALLOW_RULES: u32 = 256;

/// What a MeshPolicy sets. Every section is optional: an unset section is
/// inherited from the namespace-wide policy (the one without `targetRef`),
/// then from the mesh default.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    namespaced,
    status = "MeshPolicyStatus",
    shortname = "mp",
    doc = "MeshPolicy sets mTLS, timeouts, retries, load balancing, authorization, traffic split and outlier detection for one Service (spec.targetRef) or, without a target, for every Service of its namespace.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.split) || has(self.targetRef)")
    .message("split needs a targetRef: a namespace-wide policy cannot split")
    .field_path(".split")
    .reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// The Service this policy is for; absent means every Service of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Whether the Service's pods accept plaintext besides mesh mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSpec>,
    /// Timeouts of calls to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// Retries of failed calls to the Service, limited by a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// How callers pick an endpoint of the Service: `EWMA` (peak-EWMA
    /// latency, power of two choices) or `RoundRobin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Which mesh identities may call the Service's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationSpec>,
    /// Weighted backends for canaries; only on a policy with a `targetRef`.
    /// Calls to the target are spread over these Services of the policy's
    /// namespace in proportion to their weights. 1 to 16 backends, each
    /// Service at most once, at least one weight above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_SPLIT_BACKENDS))]
    #[x_kube(
        validation = Rule::new("self.exists(b, b.weight > 0)")
            .message("at least one weight must be above 0"),
        validation = Rule::new("self.all(a, self.exists_one(b, b.service == a.service))")
            .message("each Service may appear only once")
            .reason(Reason::FieldValueDuplicate),
    )]
    pub split: Option<Vec<SplitBackend>>,
    /// Ejection of endpoints that keep failing from the Service's load balancer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
}

/// The Service a policy is for, in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Only `Service`.
    #[schemars(extend("enum" = ["Service"]))]
    pub kind: String,
    /// The Service's name.
    #[schemars(regex(pattern = SERVICE_NAME_PATTERN), length(min = 1, max = NAME_MAX_LENGTH))]
    pub name: String,
}

/// The mTLS mode of the Service's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSpec {
    /// `Strict`: only mesh mTLS is accepted. `Permissive`: plaintext from
    /// outside the mesh is accepted too.
    pub mode: MtlsModeSpec,
}

/// `Strict` or `Permissive`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MtlsModeSpec {
    Strict,
    Permissive,
}

/// Durations are Kubernetes-style strings: `250ms`, `2s`, `5m`, `1h`, `1m30s`;
/// never 0. An unset timeout takes the mesh default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// Whole request, from the first byte sent to the last byte of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(DURATION_NOT_ZERO).message(DURATION_NOT_ZERO_MESSAGE))]
    pub request: Option<String>,
    /// Establishing a connection (TCP and TLS) to an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(DURATION_NOT_ZERO).message(DURATION_NOT_ZERO_MESSAGE))]
    pub connect: Option<String>,
    /// A connection relayed as bytes (opaque TCP) with no traffic either
    /// way for this long is closed. Not applied to HTTP connections yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(DURATION_NOT_ZERO).message(DURATION_NOT_ZERO_MESSAGE))]
    pub idle: Option<String>,
}

/// Retries of failed requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetriesSpec {
    /// Total attempts including the first: 1 (no retry) to 10.
    #[schemars(range(min = 1, max = MAX_RETRY_ATTEMPTS))]
    pub attempts: u32,
    /// `5xx`, `gateway-error`, `reset`, `connect-failure`, or a status code.
    #[serde(default)]
    #[schemars(length(max = MAX_RETRY_ON), inner(regex(pattern = RETRY_ON_PATTERN)))]
    pub retry_on: Vec<String>,
    /// Timeout of each attempt (a duration like `250ms`, never 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(DURATION_NOT_ZERO).message(DURATION_NOT_ZERO_MESSAGE))]
    pub per_try_timeout: Option<String>,
    /// How many retries callers may add; unset: 20% plus 10 per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
}

/// Retries may add at most `percent`% of requests plus `minPerSecond`
/// retries per second, so retries cannot turn an outage into an overload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Retries may add at most this percentage of requests (0 to 100)...
    #[schemars(range(max = 100))]
    pub percent: u32,
    /// ...plus this many per second.
    pub min_per_second: u32,
}

/// `EWMA` or `RoundRobin`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LoadBalancerSpec {
    #[serde(rename = "EWMA")]
    Ewma,
    RoundRobin,
}

/// Which mesh identities may call the Service's pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSpec {
    /// For callers no `allow` rule matches: `Allow` or `Deny`.
    pub default: AuthzDefaultSpec,
    /// Callers let in whatever `default` says.
    #[serde(default)]
    #[schemars(length(max = MAX_ALLOW_RULES))]
    pub allow: Vec<AllowRule>,
}

/// `Allow` or `Deny`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AuthzDefaultSpec {
    Allow,
    Deny,
}

/// Exactly one of the fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
// `namespace` is a CEL reserved word: rules see the field as `__namespace__`.
#[x_kube(validation = Rule::new("has(self.serviceAccount) != has(self.__namespace__)")
    .message("set exactly one of serviceAccount and namespace"))]
#[serde(rename_all = "camelCase")]
pub struct AllowRule {
    /// `namespace/name` of a service account, or `*` for any mesh identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = SERVICE_ACCOUNT_PATTERN),
        length(min = 1, max = SERVICE_ACCOUNT_MAX_LENGTH)
    )]
    pub service_account: Option<String>,
    /// Every service account of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = NAMESPACE_PATTERN), length(min = 1, max = NAME_MAX_LENGTH))]
    pub namespace: Option<String>,
}

/// One backend of a split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SplitBackend {
    /// A Service of the policy's namespace.
    #[schemars(regex(pattern = SERVICE_NAME_PATTERN), length(min = 1, max = NAME_MAX_LENGTH))]
    pub service: String,
    /// Relative weight, 0 to 1000000; 0 sends this backend nothing.
    #[schemars(range(max = MAX_SPLIT_WEIGHT))]
    pub weight: u32,
}

/// Endpoints failing `consecutiveFailures` times in a row are ejected from
/// load balancing for `baseEjectionTime` (longer each time they are ejected
/// again), never more than `maxEjectedPercent`% of the endpoints at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Failures in a row that eject an endpoint; at least 1.
    #[schemars(range(min = 1))]
    pub consecutive_failures: u32,
    /// How long a first ejection lasts (a duration like `30s`, never 0).
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = DURATION_MAX_LENGTH))]
    #[x_kube(validation = Rule::new(DURATION_NOT_ZERO).message(DURATION_NOT_ZERO_MESSAGE))]
    pub base_ejection_time: String,
    /// The most endpoints ejected at once, as a percentage (0 to 100).
    #[schemars(range(max = 100))]
    pub max_ejected_percent: u32,
}

/// What the operator made of the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicyStatus {
    /// The `metadata.generation` the status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: whether the policy is in force and, if not, why.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// A status condition, shaped like `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, e.g. `Accepted`; unique in the list.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase reason, e.g. `Accepted`, `Invalid`, `TargetNotFound`.
    pub reason: String,
    /// Human-readable details: the field and value at fault.
    pub message: String,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}
