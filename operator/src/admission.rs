//! The mutating admission webhook's logic: an `admission.k8s.io/v1`
//! AdmissionReview in, an AdmissionReview out, with the injection as a
//! base64 JSONPatch computed against the object exactly as received.
//!
//! We write the response ourselves rather than with kube's admission types:
//! they serialise `patch` as an array of numbers, which API servers accept
//! but the API documents as base64 (kube issue 1781).

use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::inject::{InjectConfig, Plan, Scope, plan};
use crate::scope::MeshConfig;

/// The parts of an AdmissionReview request the webhook reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    pub kind: GroupVersionKind,
    /// Empty for a pod named by `generateName` (not known yet).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl Request {
    /// Whether this is the creation of a Pod (the core group), the only
    /// request ever injected.
    pub fn is_pod_create(&self) -> bool {
        self.kind.kind == "Pod" && self.kind.group.is_empty() && self.operation == "CREATE"
    }

    /// The request's namespace, else the object's, else `default`.
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .or_else(|| {
                self.object
                    .as_ref()?
                    .pointer("/metadata/namespace")?
                    .as_str()
                    .map(Into::into)
            })
            .unwrap_or_else(|| "default".into())
    }

    /// The object's name, else its `generateName` followed by `*`, for logs.
    pub fn object_name(&self) -> String {
        let field = |f: &str| {
            self.object
                .as_ref()?
                .pointer(&format!("/metadata/{f}"))?
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        self.name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| field("name"))
            .or_else(|| field("generateName").map(|g| format!("{g}*")))
            .unwrap_or_default()
    }

    /// Whether the API server will not persist the result: the webhook must
    /// then have no side effects.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run == Some(true)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Deserialize)]
struct Review {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    request: Option<Request>,
}

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
pub struct BadReview(String);

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<Request, BadReview> {
    let review: Review = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "apiVersion {:?}, kind {:?}",
            review.api_version, review.kind
        )));
    }
    review.request.ok_or_else(|| BadReview("no request".into()))
}

/// What the webhook decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Allowed unchanged, with the reason (for logs).
    Allow(&'static str),
    /// Allowed with this JSONPatch; the pod's service account, whose
    /// identity Secret must exist first.
    Patch {
        patch: json_patch::Patch,
        service_account: String,
        namespace: String,
    },
    /// Refused, with the message the user sees.
    Deny(String),
}

/// Decides a request: Pod CREATEs in scope are injected; everything else
/// passes unchanged. `ns` is the request's Namespace object, if known.
pub fn decide(
    req: &Request,
    ns: Option<&Namespace>,
    mesh: &MeshConfig,
    cfg: &InjectConfig,
) -> Decision {
    if !req.is_pod_create() {
        return Decision::Allow("not a Pod CREATE");
    }
    let Some(original) = &req.object else {
        return Decision::Deny("the request has no object".into());
    };
    let namespace = req.namespace();
    match patch(original, &namespace, ns, mesh, cfg) {
        Ok(Some((patch, service_account))) => Decision::Patch {
            patch,
            service_account,
            namespace,
        },
        Ok(None) => Decision::Allow("not in scope or already injected"),
        Err(message) => Decision::Deny(message),
    }
}

fn patch(
    original: &Value,
    namespace: &str,
    ns: Option<&Namespace>,
    mesh: &MeshConfig,
    cfg: &InjectConfig,
) -> Result<Option<(json_patch::Patch, String)>, String> {
    let field = |ptr: &str| original.pointer(ptr).cloned().unwrap_or(json!({}));
    let meta: ObjectMeta =
        serde_json::from_value(field("/metadata")).map_err(|e| format!("metadata: {e}"))?;
    let spec: PodSpec = serde_json::from_value(field("/spec")).map_err(|e| format!("spec: {e}"))?;
    let injection = match plan(&meta, &spec, namespace, Scope::Namespace(ns), mesh, cfg) {
        Ok(Plan::Skip(_)) => return Ok(None),
        Ok(Plan::Inject(injection)) => injection,
        Err(e) => return Err(format!("weft: {e}")),
    };
    let mut mutated = original.clone();
    let (mut meta_json, mut spec_json) = (field("/metadata"), field("/spec"));
    injection.apply(&mut meta_json, &mut spec_json)?;
    let obj = mutated
        .as_object_mut()
        .ok_or("the object is not a JSON object")?;
    obj.insert("metadata".into(), meta_json);
    obj.insert("spec".into(), spec_json);
    let service_account = crate::scope::service_account_of(&spec).to_owned();
    Ok(Some((
        json_patch::diff(original, &mutated),
        service_account,
    )))
}

/// The AdmissionReview answering `uid` with `decision`.
pub fn response(uid: &str, decision: &Decision) -> Value {
    let body = match decision {
        Decision::Allow(_) => json!({ "uid": uid, "allowed": true }),
        Decision::Patch { patch, .. } => {
            let bytes = serde_json::to_vec(patch).unwrap_or_default();
            json!({
                "uid": uid,
                "allowed": true,
                "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        }
        Decision::Deny(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": { "code": 400, "reason": "BadRequest", "message": message },
        }),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": body,
    })
}
