//! Request metric series looked up once and then shared by every request
//! they label. A family lookup SipHashes the whole label set and takes the
//! family's lock; done three times a request (requests, latency, responses)
//! it was 3.6% of an HTTP/2 request's instructions in each proxy. Through a
//! held series, counting is a few atomic operations. The handles are the
//! families' own series, so the registry exports exactly what a lookup
//! would have counted, and a cache that misses only costs the lookup.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{Classification, GrpcStatus, Metrics, RequestLabels, ResponseLabels};

/// The request series of one label set.
#[derive(Debug)]
pub struct RequestSeries {
    pub labels: RequestLabels,
    requests: Counter,
    latency: Histogram,
    /// `200`, success, not gRPC: the response series of nearly every request.
    ok: OnceLock<Counter>,
}

impl RequestSeries {
    pub fn new(metrics: &Metrics, labels: RequestLabels) -> Self {
        Self {
            requests: metrics.requests.get_or_create(&labels).clone(),
            latency: metrics.latency.get_or_create(&labels).clone(),
            labels,
            ok: OnceLock::new(),
        }
    }

    /// Counts a request.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Records an ended response: the latency to its head, its status and
    /// how it is classified.
    pub fn response(
        &self,
        metrics: &Metrics,
        latency: Duration,
        status_code: u16,
        classification: Classification,
        grpc_status: GrpcStatus,
    ) {
        self.latency.observe(latency.as_secs_f64());
        let labels = || ResponseLabels {
            request: self.labels.clone(),
            status_code,
            classification,
            grpc_status,
        };
        if status_code == 200
            && classification == Classification::Success
            && grpc_status.0.is_none()
        {
            let ok = self
                .ok
                .get_or_init(|| metrics.responses.get_or_create(&labels()).clone());
            ok.inc();
        } else {
            metrics.responses.get_or_create(&labels()).inc();
        }
    }
}

/// A destination's request series by the peer that answered, in a few
/// slots filled on first use. A destination's endpoints share one identity,
/// or a handful (the backends of a traffic split), so its requests find
/// their series here; past the slots they take the families' path.
#[derive(Debug, Default)]
pub struct SeriesCache([OnceLock<Arc<RequestSeries>>; 4]);

impl SeriesCache {
    /// The series of `labels`, held if a slot has it or is free.
    pub fn get(&self, metrics: &Metrics, labels: RequestLabels) -> Arc<RequestSeries> {
        for slot in &self.0 {
            let series = slot.get_or_init(|| Arc::new(RequestSeries::new(metrics, labels.clone())));
            if series.labels == labels {
                return series.clone();
            }
        }
        Arc::new(RequestSeries::new(metrics, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Shared};

    fn labels(peer: &str) -> RequestLabels {
        RequestLabels {
            direction: Direction::Outbound,
            destination: Shared("ns/web:80".into()),
            peer_identity: Shared(peer.into()),
            tls: true,
        }
    }

    /// The exposition's line for `series` whose labels contain `labels`.
    fn line<'a>(text: &'a str, series: &str, labels: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(series) && l.contains(labels))
    }

    #[test]
    fn cached_series_count_into_the_registry() {
        let metrics = Metrics::new();
        let cache = SeriesCache::default();
        for _ in 0..3 {
            let series = cache.get(&metrics, labels("spiffe://a"));
            series.request();
            let ms = Duration::from_millis(3);
            series.response(&metrics, ms, 200, Classification::Success, GrpcStatus(None));
        }
        let series = cache.get(&metrics, labels("spiffe://a"));
        series.response(
            &metrics,
            Duration::ZERO,
            503,
            Classification::Failure,
            GrpcStatus(None),
        );
        let text = metrics.encode();
        let a = "peer_identity=\"spiffe://a\"";
        assert!(line(&text, "weft_requests_total", a).is_some_and(|l| l.ends_with(" 3")));
        let ok = line(&text, "weft_responses_total", "status_code=\"200\"");
        assert!(
            ok.is_some_and(|l| l.contains(a) && l.ends_with(" 3")),
            "{text}"
        );
        let failed = line(&text, "weft_responses_total", "status_code=\"503\"");
        assert!(failed.is_some_and(|l| l.ends_with(" 1")), "{text}");
        let count = line(&text, "weft_response_latency_seconds_count", a);
        assert!(count.is_some_and(|l| l.ends_with(" 4")), "{text}");
    }

    #[test]
    fn each_label_set_keeps_its_series_even_past_the_slots() {
        let metrics = Metrics::new();
        let cache = SeriesCache::default();
        let peers: Vec<String> = (0..6).map(|i| format!("spiffe://p{i}")).collect();
        for (i, peer) in peers.iter().enumerate() {
            for _ in 0..=i {
                cache.get(&metrics, labels(peer)).request();
            }
        }
        let first = cache.get(&metrics, labels(&peers[0]));
        assert!(Arc::ptr_eq(&first, &cache.get(&metrics, labels(&peers[0]))));
        let text = metrics.encode();
        for (i, peer) in peers.iter().enumerate() {
            let found = line(&text, "weft_requests_total", &format!("\"{peer}\""));
            assert!(
                found.is_some_and(|l| l.ends_with(&format!(" {}", i + 1))),
                "{text}"
            );
        }
    }
}
