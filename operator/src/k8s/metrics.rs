//! The operator's Prometheus metrics, served on the admin port. One registry
//! owned by the runtime (no global); label values are bounded: kinds,
//! operations and reasons are fixed sets, namespaces are the meshed ones.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `ConfigMap`, `Secret`, `Role`, `RoleBinding`, `MeshPolicy`, `Lease`, `Event`.
    pub kind: &'static str,
    /// `apply`, `create`, `delete`, `patch_status`.
    pub op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `injected`, `allowed`, `denied`, `error`.
    pub decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `created`, `already_exists`, `failed`.
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

pub struct Metrics {
    registry: Registry,
    /// Passes run (as leader).
    pub reconciles: Counter,
    /// Failed API writes (and trust anchor problems), by kind.
    pub reconcile_errors: Family<KindLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Watch events since the last pass began.
    pub pending: Gauge,
    pub objects_written: Family<WriteLabels, Counter>,
    pub certificates_issued: Family<ReasonLabels, Counter>,
    /// Identities whose certificate has under a tenth of its life left and
    /// could not be renewed, as of the last pass.
    pub certificates_near_expiry: Gauge,
    pub routes_too_large: Family<NamespaceLabels, Counter>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// 1 once every watch has listed its objects.
    pub caches_synced: Gauge,
    /// Admission requests answered, by decision.
    pub webhook_requests: Family<DecisionLabels, Counter>,
    pub webhook_duration: Histogram,
    /// Identity Secrets the webhook had to create for a pod, by result.
    pub webhook_identity_secrets: Family<ResultLabels, Counter>,
    /// Connections closed before a request: `no_certificate` (none issued
    /// yet), `handshake` (TLS failed or timed out), `busy` (too many).
    pub webhook_connections_refused: Family<ReasonLabels, Counter>,
    /// Serving certificates issued, by reason.
    pub webhook_certificates_issued: Family<ReasonLabels, Counter>,
    /// Failures to issue or load the serving certificate.
    pub webhook_certificate_errors: Counter,
    /// `notAfter` of the serving certificate in use (Unix seconds; 0: none).
    pub webhook_certificate_expiry: Gauge,
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
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            pending: Gauge::default(),
            objects_written: Family::default(),
            certificates_issued: Family::default(),
            certificates_near_expiry: Gauge::default(),
            routes_too_large: Family::default(),
            leader: Gauge::default(),
            caches_synced: Gauge::default(),
            webhook_requests: Family::default(),
            webhook_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            webhook_identity_secrets: Family::default(),
            webhook_connections_refused: Family::default(),
            webhook_certificates_issued: Family::default(),
            webhook_certificate_errors: Counter::default(),
            webhook_certificate_expiry: Gauge::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "weft_reconciles",
            "Passes of the operator over the whole cluster",
            self.reconciles.clone(),
        );
        r.register(
            "weft_reconcile_errors",
            "Failed writes and trust anchor problems, by kind",
            self.reconcile_errors.clone(),
        );
        r.register(
            "weft_reconcile_duration_seconds",
            "Duration of one pass",
            self.reconcile_duration.clone(),
        );
        r.register(
            "weft_reconcile_pending_events",
            "Watch events waiting for the next pass",
            self.pending.clone(),
        );
        r.register(
            "weft_objects_written",
            "API writes, by kind and operation",
            self.objects_written.clone(),
        );
        r.register(
            "weft_certificates_issued",
            "Workload certificates issued, by reason",
            self.certificates_issued.clone(),
        );
        r.register(
            "weft_certificates_near_expiry",
            "Identities under a tenth of their lifetime from expiry that could not be renewed",
            self.certificates_near_expiry.clone(),
        );
        r.register(
            "weft_routes_too_large",
            "Routing tables not written because they exceed a ConfigMap",
            self.routes_too_large.clone(),
        );
        r.register(
            "weft_leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        r.register(
            "weft_caches_synced",
            "1 once every watch has listed its objects",
            self.caches_synced.clone(),
        );
        r.register(
            "weft_webhook_requests",
            "Admission requests answered by the injection webhook, by decision",
            self.webhook_requests.clone(),
        );
        r.register(
            "weft_webhook_request_duration_seconds",
            "Time to answer one admission request",
            self.webhook_duration.clone(),
        );
        r.register(
            "weft_webhook_identity_secrets",
            "Identity Secrets the webhook created for an injected pod, by result",
            self.webhook_identity_secrets.clone(),
        );
        r.register(
            "weft_webhook_connections_refused",
            "Webhook connections closed before a request, by reason",
            self.webhook_connections_refused.clone(),
        );
        r.register(
            "weft_webhook_certificates_issued",
            "Webhook serving certificates issued, by reason",
            self.webhook_certificates_issued.clone(),
        );
        r.register(
            "weft_webhook_certificate_errors",
            "Failures to issue the webhook serving certificate",
            self.webhook_certificate_errors.clone(),
        );
        r.register(
            "weft_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook serving certificate in use expires (0: none yet)",
            self.webhook_certificate_expiry.clone(),
        );
    }

    pub fn written(&self, kind: &'static str, op: &'static str) {
        self.objects_written
            .get_or_create(&WriteLabels { kind, op })
            .inc();
    }

    pub fn webhook_request(&self, decision: &'static str) {
        self.webhook_requests
            .get_or_create(&DecisionLabels { decision })
            .inc();
    }

    pub fn webhook_refused(&self, reason: &'static str) {
        self.webhook_connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn error(&self, kind: &'static str) {
        self.reconcile_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding metrics failed");
        }
        out
    }
}
