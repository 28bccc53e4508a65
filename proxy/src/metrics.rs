//! The proxy's Prometheus metrics. One registry owned by the proxy (no
//! global), updated once per connection, request or reload, never per read.
//! Label values are bounded: destinations are Service ports, identities are
//! service accounts, statuses and reasons are fixed sets; never a path.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Defines a label enum whose values are the given lowercase strings (the
/// derive would print the variant names as they are spelled in Rust).
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_enum!(Direction {
    Inbound => "inbound",
    Outbound => "outbound",
});

label_enum!(
    /// Which configuration a reload metric is about.
    Kind {
        Routes => "routes",
        Identity => "identity",
    }
);

label_enum!(Stream {
    /// From the side that opened the connection.
    Request => "request",
    /// Back to the side that opened the connection.
    Response => "response",
});

label_enum!(
    /// Whether a response counts as a success, for humans and alerts.
    Classification {
        Success => "success",
        Failure => "failure",
    }
);

/// A label value shared by every request to one destination or from one
/// peer: cloning it is a reference count, not an allocation.
#[derive(Debug, Clone, Default, Hash, PartialEq, Eq)]
pub struct Shared(pub Arc<str>);

impl EncodeLabelValue for Shared {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// `grpc-status` of a gRPC response; empty for other responses.
#[derive(Debug, Clone, Copy, Default, Hash, PartialEq, Eq)]
pub struct GrpcStatus(pub Option<u16>);

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(code) => EncodeLabelValue::encode(&u64::from(code), encoder),
            None => EncodeLabelValue::encode(&"", encoder),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// Outbound: the Service port called (`namespace/name:port`); inbound:
    /// the pod's port (`:8080`).
    pub destination: Shared,
    /// The verified SPIFFE ID of the other side, or "" without mesh TLS.
    pub peer_identity: Shared,
    pub tls: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub request: RequestLabels,
    pub status_code: u16,
    pub classification: Classification,
    pub grpc_status: GrpcStatus,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: Shared,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub direction: Direction,
    pub port: u16,
}

/// Response latency buckets: 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    pub direction: Direction,
    /// The verified SPIFFE ID of the other side, or "" without mesh TLS.
    pub peer_identity: String,
    pub tls: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub direction: Direction,
    pub peer_identity: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: Direction,
    pub peer_identity: String,
    pub stream: Stream,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `file` or `api`.
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Failures of one kind, by direction and reason.
pub type Failures = Family<FailureLabels, Counter>;

/// Counts one failure.
pub fn count(family: &Failures, direction: Direction, reason: &'static str) {
    family
        .get_or_create(&FailureLabels { direction, reason })
        .inc();
}

pub struct Metrics {
    registry: Registry,
    pub opened: Family<ConnLabels, Counter>,
    pub closed: Family<ConnLabels, Counter>,
    pub denied: Family<DeniedLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub tls_failures: Failures,
    pub connect_failures: Failures,
    pub config_generation: Family<KindLabels, Gauge>,
    pub config_reload_timestamp: Family<KindLabels, Gauge>,
    pub config_reload_errors: Family<KindLabels, Counter>,
    pub routes_source_generation: Family<SourceLabels, Gauge>,
    pub api_watch_errors: Family<ReasonLabels, Counter>,
    pub cert_expiry: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub requests_denied: Family<DeniedLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub retries: Family<DestinationLabels, Counter>,
    pub request_timeouts: Family<DestinationLabels, Counter>,
    pub budget_exhausted: Family<DestinationLabels, Counter>,
    pub ejections: Family<DestinationLabels, Counter>,
    pub detect_timeouts: Family<PortLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            opened: Family::default(),
            closed: Family::default(),
            denied: Family::default(),
            bytes: Family::default(),
            tls_failures: Family::default(),
            connect_failures: Family::default(),
            config_generation: Family::default(),
            config_reload_timestamp: Family::default(),
            config_reload_errors: Family::default(),
            routes_source_generation: Family::default(),
            api_watch_errors: Family::default(),
            cert_expiry: Gauge::default(),
            requests: Family::default(),
            requests_denied: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            request_timeouts: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            detect_timeouts: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "weft_connections_opened",
            "Connections accepted and forwarded",
            m.opened.clone(),
        );
        r.register(
            "weft_connections_closed",
            "Connections finished",
            m.closed.clone(),
        );
        r.register(
            "weft_connections_denied",
            "Connections refused by policy; never forwarded",
            m.denied.clone(),
        );
        r.register("weft_bytes", "Bytes forwarded", m.bytes.clone());
        r.register(
            "weft_tls_handshake_failures",
            "Mesh TLS handshakes that failed, and identity mismatches",
            m.tls_failures.clone(),
        );
        r.register(
            "weft_connect_failures",
            "Connections to an upstream that could not be opened",
            m.connect_failures.clone(),
        );
        r.register(
            "weft_config_generation",
            "Generation of the configuration in use",
            m.config_generation.clone(),
        );
        r.register(
            "weft_config_last_reload_timestamp_seconds",
            "When the configuration in use was loaded",
            m.config_reload_timestamp.clone(),
        );
        r.register(
            "weft_config_reload_errors",
            "Configuration files refused; the last good one stays in use",
            m.config_reload_errors.clone(),
        );
        r.register(
            "weft_routes_source_generation",
            "Generation of the latest valid routing table from each source (file, api)",
            m.routes_source_generation.clone(),
        );
        r.register(
            "weft_api_watch_errors",
            "Failures of the API-server watch of the routes ConfigMap, by reason; retried",
            m.api_watch_errors.clone(),
        );
        r.register(
            "weft_identity_certificate_expiry_timestamp_seconds",
            "When the workload certificate in use expires",
            m.cert_expiry.clone(),
        );
        m.register_http();
        m
    }

    fn register_http(&mut self) {
        let r = &mut self.registry;
        r.register(
            "weft_requests",
            "HTTP requests received",
            self.requests.clone(),
        );
        r.register(
            "weft_requests_denied",
            "HTTP requests refused by policy (answered 403, never forwarded)",
            self.requests_denied.clone(),
        );
        r.register(
            "weft_responses",
            "HTTP responses sent, counted when the response ends (gRPC status from trailers)",
            self.responses.clone(),
        );
        r.register(
            "weft_response_latency_seconds",
            "Time from receiving a request to the response head",
            self.latency.clone(),
        );
        r.register(
            "weft_retries",
            "Requests sent again after a failed attempt",
            self.retries.clone(),
        );
        r.register(
            "weft_request_timeouts",
            "Requests answered 504 because the request timeout expired",
            self.request_timeouts.clone(),
        );
        r.register(
            "weft_retry_budget_exhausted",
            "Retries not made because the retry budget was spent",
            self.budget_exhausted.clone(),
        );
        r.register(
            "weft_endpoint_ejections",
            "Endpoints taken out of rotation by outlier detection",
            self.ejections.clone(),
        );
        r.register(
            "weft_protocol_detect_timeouts",
            "Connections whose client sent nothing within the detect timeout; handled as opaque TCP",
            self.detect_timeouts.clone(),
        );
    }

    /// Counts one event of a destination.
    pub fn count_for(family: &Family<DestinationLabels, Counter>, destination: &Shared) {
        family
            .get_or_create(&DestinationLabels {
                destination: destination.clone(),
            })
            .inc();
    }

    /// Counts one failure of the routes watch.
    pub fn count_api_watch_error(&self, reason: &'static str) {
        self.api_watch_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
