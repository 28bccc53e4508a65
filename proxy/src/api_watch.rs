//! The fast path for routes: the kubelet refreshes a mounted ConfigMap only
//! when it syncs the pod (a minute or two), so the proxy also watches its
//! namespace's `weft-routes` ConfigMap through the API server.
//!
//! The watch only fetches. Each version of the ConfigMap's routes keys is
//! published on a channel to the reload task, which decodes, validates and
//! weighs it against the mounted file (see `arbiter`) off the relay threads.
//!
//! Protocol: LIST with `fieldSelector=metadata.name=weft-routes` (a Role
//! restricted by `resourceNames` allows list and watch only with that
//! selector), then WATCH from the list's `resourceVersion`, with bookmarks,
//! reading newline-delimited JSON events. `410 Gone` (as a status or an
//! `ERROR` event) means relist. Every failure is logged, counted in
//! `weft_api_watch_errors_total{reason}` and retried after an exponential
//! backoff with jitter; the watch never stops the proxy, which keeps serving
//! on what it has. A deleted ConfigMap keeps the table in use: dropping
//! routes would be an outage, and the mounted file still works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;
use rustls::crypto::CryptoProvider;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weft_api::names::ROUTES_CONFIGMAP;

use crate::api_client::{ApiServer, ClientError, Lines, read_body};
use crate::api_protocol::{
    ApiRoutes, ConfigMap, Event, List, Status, list_path, parse_event, routes_of, watch_path,
};
use crate::metrics::Metrics;
use crate::state::State;

/// The largest watch event line or list body accepted. A ConfigMap is at
/// most 1 MiB; base64 and JSON escaping can make that twice as long.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Time allowed for a connection and a response head, and for reading a
/// whole LIST or error body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The server ends a watch after a random 5 to 10 minutes (as client-go
/// does, so that proxies do not reconnect in step); the client gives up on
/// a watch that outlives that by this much (a silently dead connection).
const WATCH_MIN_SECONDS: u64 = 300;
const WATCH_DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// A watch that stayed open this long was healthy: the backoff starts over,
/// and its clean end is followed by a new watch at once. A shorter one
/// that ends cleanly counts as an error, so a server that hangs up at once
/// meets the backoff instead of a busy loop.
const HEALTHY: Duration = Duration::from_secs(5);

/// Where the watched ConfigMap versions go: the latest one wins.
pub type Updates = watch::Sender<Option<Arc<ApiRoutes>>>;

/// How to reach the API server and how to pace retries.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ApiServer,
    pub namespace: String,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Watches until `shutdown`, publishing every version of the ConfigMap.
pub async fn run(
    settings: Settings,
    provider: Arc<CryptoProvider>,
    state: Arc<State>,
    updates: Updates,
    shutdown: CancellationToken,
) {
    tracing::info!(
        server = %settings.server.url(),
        namespace = %settings.namespace,
        "watching the routes ConfigMap through the API server"
    );
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    let mut watcher = Watcher {
        settings,
        provider,
        updates,
        resource_version: None,
    };
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            outcome = watcher.cycle() => outcome,
            () = shutdown.cancelled() => return,
        };
        let lasted = started.elapsed();
        if lasted >= HEALTHY {
            backoff.reset();
        }
        let failure = match outcome {
            Ok(()) if lasted >= HEALTHY => continue,
            Ok(()) => Failure::Closed(lasted),
            Err(failure) => failure,
        };
        if matches!(failure, Failure::Expired) {
            watcher.resource_version = None;
        }
        let delay = backoff.next_delay();
        report(&state.metrics, &failure, delay);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

fn report(metrics: &Metrics, failure: &Failure, delay: Duration) {
    metrics.count_api_watch_error(failure.reason());
    if matches!(failure, Failure::Expired) {
        tracing::info!(retry_in = ?delay, "routes watch: {failure}");
    } else {
        tracing::warn!(
            reason = failure.reason(),
            retry_in = ?delay,
            "routes watch failed, the routes in use stay: {failure}"
        );
    }
}

/// Why one LIST/WATCH cycle ended.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what} answered HTTP {status}: {message}")]
    Status {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("resource version expired (410 Gone); listing again")]
    Expired,
    #[error("undecodable response: {0}")]
    Decode(String),
    #[error("reading the watch: {0}")]
    Stream(String),
    #[error("the watch ended after only {0:?}")]
    Closed(Duration),
    #[error("the watch outlived its deadline of {0:?}")]
    Timeout(Duration),
}

impl Failure {
    /// The metric label: a fixed, small set.
    fn reason(&self) -> &'static str {
        match self {
            Failure::Client(ClientError::Token { .. } | ClientError::Ca { .. }) => "credentials",
            Failure::Client(ClientError::Connect { .. }) => "connect",
            Failure::Client(ClientError::Http(_)) => "http",
            Failure::Client(ClientError::Timeout(_)) | Failure::Timeout(_) => "timeout",
            Failure::Status { status: 401, .. } => "unauthorized",
            Failure::Status { status: 403, .. } => "forbidden",
            Failure::Status { .. } => "status",
            Failure::Expired => "expired",
            Failure::Decode(_) => "decode",
            Failure::Stream(_) => "stream",
            Failure::Closed(_) => "closed",
        }
    }
}

struct Watcher {
    settings: Settings,
    provider: Arc<CryptoProvider>,
    updates: Updates,
    /// Where the next watch starts; `None`: list first.
    resource_version: Option<String>,
}

impl Watcher {
    /// LIST if needed, then WATCH until the stream ends.
    async fn cycle(&mut self) -> Result<(), Failure> {
        if self.resource_version.is_none() {
            self.resource_version = Some(self.list().await?);
        }
        let from = self.resource_version.clone().unwrap_or_default();
        let seconds = watch_seconds();
        let response = self
            .get(
                &watch_path(&self.settings.namespace, &from, seconds),
                "watch",
            )
            .await?;
        let deadline = Duration::from_secs(seconds) + WATCH_DEADLINE_MARGIN;
        tokio::time::timeout(deadline, self.read_events(response.body))
            .await
            .map_err(|_| Failure::Timeout(deadline))?
    }

    /// Publishes the ConfigMap if it exists; returns the list's version.
    async fn list(&mut self) -> Result<String, Failure> {
        let response = self
            .get(&list_path(&self.settings.namespace), "list")
            .await?;
        let body = read_body(response.body, MAX_EVENT_BYTES, REQUEST_TIMEOUT)
            .await
            .map_err(Failure::Stream)?;
        let list: List = decode_off_thread(body.to_vec(), |b| serde_json::from_slice(b)).await?;
        let ours = list.items.into_iter().find(is_ours);
        tracing::info!(
            namespace = %self.settings.namespace,
            resource_version = %list.metadata.resource_version,
            found = ours.is_some(),
            "listed the {ROUTES_CONFIGMAP} ConfigMap; watching it"
        );
        if let Some(cm) = ours {
            self.publish(cm);
        }
        Ok(list.metadata.resource_version)
    }

    async fn read_events(&mut self, mut body: Incoming) -> Result<(), Failure> {
        let mut lines = Lines::new(MAX_EVENT_BYTES);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Stream(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for line in lines.push(&data).map_err(Failure::Decode)? {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event = decode_off_thread(line, parse_event).await?;
                self.apply(event)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Event) -> Result<(), Failure> {
        match event {
            Event::Added(cm) | Event::Modified(cm) => {
                self.advance(&cm.metadata.resource_version);
                if is_ours(&cm) {
                    self.publish(cm);
                }
            }
            Event::Deleted(cm) => {
                self.advance(&cm.metadata.resource_version);
                tracing::warn!(
                    namespace = %self.settings.namespace,
                    "ConfigMap {ROUTES_CONFIGMAP} deleted; the routes in use stay"
                );
            }
            Event::Bookmark(object) => self.advance(&object.metadata.resource_version),
            Event::Error(status) if status.code == 410 => return Err(Failure::Expired),
            Event::Error(status) => {
                return Err(Failure::Status {
                    what: "watch event",
                    status: status.code,
                    message: status.message,
                });
            }
        }
        Ok(())
    }

    /// The next watch starts after `resource_version` (when there is one).
    fn advance(&mut self, resource_version: &str) {
        if !resource_version.is_empty() {
            self.resource_version = Some(resource_version.to_owned());
        }
    }

    fn publish(&self, cm: ConfigMap) {
        let routes = routes_of(cm, &self.settings.namespace);
        tracing::debug!(resource_version = %routes.resource_version, "routes ConfigMap received");
        self.updates.send_replace(Some(Arc::new(routes)));
    }

    /// Sends the request; anything but 200 is a failure (410: relist).
    async fn get(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<crate::api_client::Response, Failure> {
        let response = self
            .settings
            .server
            .get(path, &self.provider, REQUEST_TIMEOUT)
            .await?;
        match response.status {
            StatusCode::OK => Ok(response),
            StatusCode::GONE => Err(Failure::Expired),
            status => Err(Failure::Status {
                what,
                status: status.as_u16(),
                message: status_message(response.body).await,
            }),
        }
    }
}

/// What an error response says: the Status message, or the start of the body.
async fn status_message(body: Incoming) -> String {
    let Ok(bytes) = read_body(body, 64 * 1024, REQUEST_TIMEOUT).await else {
        return String::new();
    };
    match serde_json::from_slice::<Status>(&bytes) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    }
}

/// Parsing an event can take milliseconds (a large table): keep it off the
/// threads that relay traffic.
async fn decode_off_thread<T, E>(
    bytes: Vec<u8>,
    parse: impl FnOnce(&[u8]) -> Result<T, E> + Send + 'static,
) -> Result<T, Failure>
where
    T: Send + 'static,
    E: std::fmt::Display,
{
    tokio::task::spawn_blocking(move || parse(&bytes).map_err(|e| e.to_string()))
        .await
        .map_err(|e| Failure::Decode(format!("parser task failed: {e}")))?
        .map_err(Failure::Decode)
}

fn is_ours(cm: &ConfigMap) -> bool {
    cm.metadata.name == ROUTES_CONFIGMAP
}

/// 5 to 10 minutes, at random.
fn watch_seconds() -> u64 {
    WATCH_MIN_SECONDS + u64::from(random_u32()) % WATCH_MIN_SECONDS
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // Without randomness the jitter is merely lost.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// Retry delays: doubling from `min` to `max`, each drawn at random from
/// its upper half (so that many proxies do not retry in step).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(self.max);
        jittered(base, random_u32())
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `base` scaled into `[base / 2, base)` by `random`.
fn jittered(base: Duration, random: u32) -> Duration {
    let half = base / 2;
    let extra = (half.as_nanos() * u128::from(random)) >> 32;
    half + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn watches_last_five_to_ten_minutes() {
        for _ in 0..20 {
            let s = watch_seconds();
            assert!((300..600).contains(&s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        assert_eq!(jittered(ms(1000), 0), ms(500));
        assert!(jittered(ms(1000), u32::MAX) < ms(1000));
        let mut b = Backoff::new(ms(1000), ms(4000));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        for (d, base) in delays.iter().zip([1000, 2000, 4000, 4000, 4000]) {
            assert!(*d >= ms(base / 2) && *d < ms(base), "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() < ms(1000));
    }

    #[test]
    fn failure_reasons_are_fixed_labels() {
        let status = |status| Failure::Status {
            what: "list",
            status,
            message: String::new(),
        };
        assert_eq!(status(401).reason(), "unauthorized");
        assert_eq!(status(403).reason(), "forbidden");
        assert_eq!(status(500).reason(), "status");
        assert_eq!(Failure::Expired.reason(), "expired");
        assert_eq!(Failure::Closed(Duration::ZERO).reason(), "closed");
    }
}
