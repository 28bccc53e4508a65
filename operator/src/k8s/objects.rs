//! The objects the operator writes, built from the desired state.
//!
//! Pure functions: no client, no clock, no randomness. Each returns the
//! whole object as the operator wants it, because server-side apply removes
//! the fields a manager stops sending (e.g. `data` when a table switches to
//! `binaryData`). Tests compare their exact JSON.

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_api::RoutesTable;
use weft_api::names::{
    CERT_FILE, KEY_FILE, ROUTES_CONFIGMAP, ROUTES_FILE, ROUTES_MAX_JSON_BYTES, identity_secret_name,
};

use crate::ca::{IssuedIdentity, TrustAnchor};

/// The one field manager of every write.
pub const FIELD_MANAGER: &str = "weft-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// The value of both labels above.
pub const WEFT: &str = "weft";
/// Selects every object the operator wrote.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=weft";
/// The routes table's `digest`, so an unchanged table is skipped unread.
pub const DIGEST_ANNOTATION: &str = "weft.dev/routes-digest";
/// The routes table's `generation`, so the next one can be higher.
pub const GENERATION_ANNOTATION: &str = "weft.dev/routes-generation";
/// The SPIFFE ID an identity Secret holds.
pub const IDENTITY_ANNOTATION: &str = "weft.dev/identity";
/// When an identity Secret's certificate expires (RFC 3339), for humans.
pub const NOT_AFTER_ANNOTATION: &str = "weft.dev/not-after";
/// The Role and RoleBinding letting a namespace's pods read `weft-routes`.
pub const ROUTES_READER: &str = "weft-routes-reader";
/// The Secret in the operator namespace holding the trust anchor.
pub const TRUST_ANCHOR_SECRET: &str = "weft-trust-anchor";
/// Optional key of the anchor Secret: extra roots for the trust bundle.
pub const EXTRA_ROOTS_KEY: &str = "ca-bundle.crt";
/// The gzipped routing table's key in `binaryData` (re-exported).
pub use weft_api::names::ROUTES_FILE_GZ;
/// Above this many bytes `routes.json` is gzipped into `binaryData`.
pub const PLAIN_LIMIT: usize = 512 * 1024;
/// The API server refuses a ConfigMap whose keys and values add up to more.
pub const DATA_LIMIT: usize = 1024 * 1024;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Where the routing table's encoding switches, and what cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest `routes.json` kept as plain text in `data`.
    pub plain: usize,
    /// The most bytes of keys plus values a ConfigMap may hold.
    pub data: usize,
    /// The largest `routes.json` a proxy accepts, however well it compresses.
    pub json: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            plain: PLAIN_LIMIT,
            data: DATA_LIMIT,
            json: ROUTES_MAX_JSON_BYTES,
        }
    }
}

/// How a routing table is stored in its ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutesData {
    /// `data["routes.json"]`.
    Plain(String),
    /// `binaryData["routes.json.gz"]`.
    Gzip(Vec<u8>),
}

/// Why a routing table cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the routing table of namespace {namespace} is {json_bytes} bytes, {gzip_bytes} gzipped; \
         a ConfigMap holds at most {limit} bytes and a proxy reads at most {json_limit} bytes of JSON"
    )]
    TooLarge {
        namespace: String,
        json_bytes: usize,
        gzip_bytes: usize,
        limit: usize,
        json_limit: usize,
    },
    #[error("encoding the routing table of namespace {namespace}: {reason}")]
    Encode { namespace: String, reason: String },
}

/// `json` as plain text when it fits `limits.plain`, else gzipped when that
/// fits `limits.data` and the JSON is no larger than a proxy accepts
/// (`limits.json`: a table that compresses very well could otherwise pass).
pub fn encode_routes(
    namespace: &str,
    json: String,
    limits: Limits,
) -> Result<RoutesData, EncodeError> {
    if json.len() <= limits.plain {
        return Ok(RoutesData::Plain(json));
    }
    let gz = gzip(json.as_bytes()).map_err(|e| EncodeError::Encode {
        namespace: namespace.to_owned(),
        reason: e.to_string(),
    })?;
    if ROUTES_FILE_GZ.len() + gz.len() <= limits.data && json.len() <= limits.json {
        return Ok(RoutesData::Gzip(gz));
    }
    Err(EncodeError::TooLarge {
        namespace: namespace.to_owned(),
        json_bytes: json.len(),
        gzip_bytes: gz.len(),
        limit: limits.data,
        json_limit: limits.json,
    })
}

/// Gzip with a fixed header (no name, mtime 0): equal input, equal bytes.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The `weft-routes` ConfigMap of `table.namespace`, with `table.generation`
/// as it will be written.
pub fn routes_config_map(table: &RoutesTable, limits: Limits) -> Result<ConfigMap, EncodeError> {
    let namespace = &table.namespace;
    let json = serde_json::to_string(table).map_err(|e| EncodeError::Encode {
        namespace: namespace.clone(),
        reason: e.to_string(),
    })?;
    let annotations = BTreeMap::from([
        (
            DIGEST_ANNOTATION.to_owned(),
            table.digest.clone().unwrap_or_default(),
        ),
        (
            GENERATION_ANNOTATION.to_owned(),
            table.generation.to_string(),
        ),
    ]);
    let mut cm = ConfigMap {
        metadata: managed_meta(namespace, ROUTES_CONFIGMAP, annotations),
        ..Default::default()
    };
    match encode_routes(namespace, json, limits)? {
        RoutesData::Plain(json) => cm.data = Some(BTreeMap::from([(ROUTES_FILE.to_owned(), json)])),
        RoutesData::Gzip(gz) => {
            cm.binary_data = Some(BTreeMap::from([(
                ROUTES_FILE_GZ.to_owned(),
                ByteString(gz),
            )]));
        }
    }
    Ok(cm)
}

/// The `weft-identity-<sa>` Secret holding `issued`.
pub fn identity_secret(namespace: &str, service_account: &str, issued: &IssuedIdentity) -> Secret {
    let annotations = BTreeMap::from([
        (IDENTITY_ANNOTATION.to_owned(), issued.id.to_string()),
        (NOT_AFTER_ANNOTATION.to_owned(), rfc3339(issued.not_after)),
    ]);
    Secret {
        metadata: managed_meta(
            namespace,
            &identity_secret_name(service_account),
            annotations,
        ),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(bytes_map(&issued.secret_data())),
        ..Default::default()
    }
}

/// The trust anchor Secret the operator creates when none was installed.
pub fn anchor_secret(namespace: &str, anchor: &TrustAnchor) -> Secret {
    Secret {
        metadata: managed_meta(namespace, TRUST_ANCHOR_SECRET, BTreeMap::new()),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(bytes_map(&[
            (CERT_FILE, anchor.cert_pem()),
            (KEY_FILE, anchor.key_pem()),
        ])),
        ..Default::default()
    }
}

/// Lets whoever is bound read the namespace's `weft-routes` ConfigMap, and
/// nothing else (list and watch only with `fieldSelector=metadata.name=…`).
pub fn routes_reader_role(namespace: &str) -> Role {
    Role {
        metadata: managed_meta(namespace, ROUTES_READER, BTreeMap::new()),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            resource_names: Some(vec![ROUTES_CONFIGMAP.into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    }
}

/// Binds [`routes_reader_role`] to every service account of the namespace
/// (the group), so nothing changes as accounts come and go.
pub fn routes_reader_binding(namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata: managed_meta(namespace, ROUTES_READER, BTreeMap::new()),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "Role".into(),
            name: ROUTES_READER.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some(RBAC_GROUP.into()),
            kind: "Group".into(),
            name: format!("system:serviceaccounts:{namespace}"),
            namespace: None,
        }]),
    }
}

/// Name, namespace, the two `weft` labels and `annotations` (none: unset).
pub fn managed_meta(
    namespace: &str,
    name: &str,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), WEFT.to_owned()),
            (PART_OF_LABEL.to_owned(), WEFT.to_owned()),
        ])),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    }
}

/// Whether `meta` carries `app.kubernetes.io/managed-by: weft`.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == WEFT)
}

fn bytes_map(entries: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// `t` as RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}
