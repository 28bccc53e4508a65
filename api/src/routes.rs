//! `routes.json` version 1: the routing table the operator writes for a
//! meshed namespace and every proxy there reads.
//!
//! Shape (all keys camelCase; durations in milliseconds):
//!
//! ```json
//! {
//!   "version": 1,
//!   "generation": 7,
//!   "trustDomain": "cluster.local",
//!   "namespace": "shop",
//!   "defaults": { "inbound": { "mtls": "strict", "authorization": { "default": "allow" } } },
//!   "services": [{
//!     "name": "cart", "namespace": "shop", "clusterIps": ["198.19.0.10"],
//!     "ports": [{ "port": 80, "name": "http", "protocol": "detect",
//!                 "endpoints": [{ "address": "198.18.0.10", "port": 9090,
//!                                 "identity": "spiffe://cluster.local/ns/shop/sa/cart",
//!                                 "zone": "a", "ready": true }] }],
//!     "policy": { "inbound": { "mtls": "strict", "authorization": { "default": "allow" } },
//!                 "outbound": { "timeouts": { "connectMs": 1000 } } }
//!   }]
//! }
//! ```
//!
//! Fields added later within version 1 are optional with defaults, and
//! unknown fields are ignored, so an older proxy keeps reading a newer
//! operator's table. A change that an older proxy would misread bumps
//! `version`, which older proxies refuse.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::SpiffeId;

/// The only `version` this crate reads and writes.
pub const ROUTES_VERSION: u32 = 1;

/// The routing table of one meshed namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutesTable {
    pub version: u32,
    /// Increases with every change the operator writes; the higher wins when
    /// the same table arrives by two paths.
    pub generation: u64,
    /// `sha256:<hex>` of the table's content with `generation` and `digest`
    /// left out: equal digests mean nothing to route differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub trust_domain: String,
    /// The namespace whose pods use this table.
    pub namespace: String,
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub services: Vec<Service>,
}

/// Policy for pods of the namespace that no Service policy covers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Defaults {
    #[serde(default)]
    pub inbound: InboundPolicy,
}

/// A Service the namespace's pods may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Virtual IPs (`spec.clusterIPs`); empty for a headless Service.
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub policy: Policy,
}

/// One port of a Service with the endpoints that serve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// How the proxy treats a port's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    /// Detect HTTP/1, HTTP/2, else opaque TCP.
    #[default]
    Detect,
    Http1,
    Http2,
    Grpc,
    /// Never inspect: bytes only.
    Opaque,
}

/// One address that serves a Service port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: IpAddr,
    /// The resolved target port on the endpoint.
    pub port: u16,
    /// The endpoint pod's identity when it is meshed; absent means plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Only ready endpoints receive new connections; terminating ones are
    /// written as not ready.
    pub ready: bool,
}

/// The policy resolved for a Service (Service policy over namespace policy
/// over mesh default): what its servers accept, and how callers call it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default)]
    pub inbound: InboundPolicy,
    #[serde(default)]
    pub outbound: OutboundPolicy,
}

/// What a server-side proxy accepts on the Service's target ports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicy {
    #[serde(default)]
    pub mtls: MtlsMode,
    #[serde(default)]
    pub authorization: Authorization,
}

/// Whether plaintext is accepted beside mesh TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MtlsMode {
    /// Only mesh TLS with a verified client certificate.
    #[default]
    Strict,
    /// Mesh TLS or plaintext (for callers outside the mesh).
    Permissive,
}

/// Which callers may connect. A caller matching any allow rule is allowed;
/// any other caller gets `default`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default)]
    pub default: AuthzDefault,
    /// Exact client identities allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_identities: Vec<SpiffeId>,
    /// Namespaces whose workload identities (in this trust domain) are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_namespaces: Vec<String>,
    /// Any client with a verified mesh identity is allowed (`*` in a MeshPolicy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_any_authenticated: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthzDefault {
    #[default]
    Allow,
    Deny,
}

/// How callers call the Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundPolicy {
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Weighted backends (traffic split); empty means the Service itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedBackend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Timeouts in milliseconds; absent means the proxy's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Total attempts including the first.
    pub attempts: u32,
    /// Classes: `5xx`, `gateway-error`, `reset`, `connect-failure`, or a status code.
    #[serde(default)]
    pub retry_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Retries may add at most this percentage of the request rate...
    pub budget_percent: u32,
    /// ...plus this many per second.
    pub min_per_second: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency.
    #[default]
    Ewma,
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// A Service in the same namespace as the one split.
    pub service: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejected_percent: u32,
}

/// Why a `routes.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON or not a routes document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("version {found} is not supported (this build reads version {ROUTES_VERSION})")]
    UnsupportedVersion { found: u64 },
    #[error("{} invalid field(s): {}", .0.len(), crate::validate::join(.0))]
    Invalid(Vec<crate::validate::Problem>),
}

impl RoutesTable {
    /// Parses, checks the version before anything else, and validates.
    ///
    /// The version is read first in effect, not in time: a table of this
    /// version (nearly always) is parsed in one pass, and only a document
    /// that fails to parse is read again for its version, so an unknown
    /// version is reported as such whatever else it holds.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ParseError> {
        #[derive(Deserialize)]
        struct VersionProbe {
            version: u64,
        }
        let unsupported = |found: u64| ParseError::UnsupportedVersion { found };
        // Checked as a whole once (fast), not string by string as `from_slice` does.
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::from_str(text),
            // `from_slice` says where the bytes stop being UTF-8.
            Err(_) => serde_json::from_slice(bytes),
        };
        let table: RoutesTable = match parsed {
            Ok(table) => table,
            Err(e) => {
                let probe: VersionProbe = serde_json::from_slice(bytes)?;
                return Err(if probe.version == u64::from(ROUTES_VERSION) {
                    ParseError::Json(e)
                } else {
                    unsupported(probe.version)
                });
            }
        };
        if table.version != ROUTES_VERSION {
            return Err(unsupported(u64::from(table.version)));
        }
        let problems = table.validate();
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(ParseError::Invalid(problems))
        }
    }
}
