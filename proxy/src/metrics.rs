//! The proxy's Prometheus metrics. One registry owned by the proxy (no
//! global), updated once per connection or reload, never per read.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
        m
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
