//! Retry decisions and the retry budget.
//!
//! [`RetryPolicy`] is a route's `retries` parsed once into flags and a
//! status bitset, so deciding whether a failed attempt may be retried
//! allocates nothing. It only retries what is safe to send twice: an
//! idempotent method (RFC 9110 §9.2.2), or any method when the connection
//! failed (the request never left), and only a body the proxy still holds.
//!
//! [`RetryBudget`] caps what retries add to the load: at most
//! `budget_percent` of the requests of the last ten seconds, plus
//! `min_per_second` per second so a quiet route can still retry. Without it
//! every failing request during an outage would be sent `attempts` times,
//! multiplying the load on a backend that is already struggling (the
//! Finagle and Linkerd design).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use weft_api::routes::Retries;

/// The largest request body buffered to be replayed on a retry; a larger
/// or streamed body is sent once.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// How an attempt failed, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection to the upstream: the request was never sent.
    ConnectFailure,
    /// The upstream reset or closed the connection or stream mid-request.
    Reset,
    /// The per-try timeout expired.
    Timeout,
    /// The upstream answered with this status.
    Status(StatusCode),
}

/// `5xx`: any 5xx status, and no answer at all (Envoy's meaning).
const CLASS_5XX: u8 = 1 << 0;
/// `gateway-error`: 502, 503, 504, a failed connection or a timeout.
const CLASS_GATEWAY_ERROR: u8 = 1 << 1;
/// `reset`: the upstream reset the connection or stream.
const CLASS_RESET: u8 = 1 << 2;
/// `connect-failure`: no connection to the upstream.
const CLASS_CONNECT_FAILURE: u8 = 1 << 3;

/// One bit per status code 0..640, covering 100..=599.
type StatusSet = [u64; 10];

/// A route's retry settings, parsed for the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    classes: u8,
    statuses: StatusSet,
    per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// Parses `retries`; entries of `retry_on` that are neither a class nor
    /// a status code 100..=599 are ignored (validation rejects them before
    /// a table reaches the proxy).
    pub fn new(retries: &Retries) -> Self {
        let mut policy = Self {
            attempts: retries.attempts.max(1),
            classes: 0,
            statuses: [0; 10],
            per_try_timeout: retries.per_try_timeout_ms.map(Duration::from_millis),
        };
        for entry in &retries.retry_on {
            policy.add(entry);
        }
        policy
    }

    /// Total attempts including the first, at least one.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long one attempt may take, if limited.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Whether an attempt that failed with `failure` may be tried again.
    /// A body that is not replayable (over [`MAX_BUFFERED_BODY`], or
    /// streamed) never is, even after a connect failure: whether it was
    /// consumed is not worth tracking, the caller just says it no longer
    /// holds it. A non-idempotent method is retried only after a connect
    /// failure, when the upstream cannot have seen it.
    pub fn should_retry(&self, failure: &Failure, method: &Method, body_replayable: bool) -> bool {
        let safe = *failure == Failure::ConnectFailure || is_idempotent(method);
        body_replayable && safe && self.retries_on(failure)
    }

    /// Whether `retry_on` covers `failure`.
    fn retries_on(&self, failure: &Failure) -> bool {
        let classes = match failure {
            Failure::ConnectFailure => CLASS_5XX | CLASS_GATEWAY_ERROR | CLASS_CONNECT_FAILURE,
            Failure::Reset => CLASS_5XX | CLASS_RESET,
            Failure::Timeout => CLASS_5XX | CLASS_GATEWAY_ERROR,
            Failure::Status(status) => return self.retries_status(*status),
        };
        self.classes & classes != 0
    }

    /// Whether a class or an explicit code of `retry_on` covers `status`.
    fn retries_status(&self, status: StatusCode) -> bool {
        let gateway = matches!(status.as_u16(), 502..=504);
        (status.is_server_error() && self.classes & CLASS_5XX != 0)
            || (gateway && self.classes & CLASS_GATEWAY_ERROR != 0)
            || contains(&self.statuses, status.as_u16())
    }

    /// Adds one `retry_on` entry.
    fn add(&mut self, entry: &str) {
        match entry {
            "5xx" => self.classes |= CLASS_5XX,
            "gateway-error" => self.classes |= CLASS_GATEWAY_ERROR,
            "reset" => self.classes |= CLASS_RESET,
            "connect-failure" => self.classes |= CLASS_CONNECT_FAILURE,
            code => {
                if let Ok(code @ 100..=599) = code.parse::<u16>() {
                    self.statuses[usize::from(code / 64)] |= 1 << (code % 64);
                }
            }
        }
    }
}

/// Whether `code` is in `set`; codes past the set's end never are.
fn contains(set: &StatusSet, code: u16) -> bool {
    set.get(usize::from(code / 64))
        .is_some_and(|word| word & (1 << (code % 64)) != 0)
}

/// Safe to send twice per RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// The seconds the budget looks back over.
const WINDOW_SECONDS: u64 = 10;

/// One second's counts; `second` says which, so a bucket last used more
/// than a window ago reads as empty and is reset when reused.
#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// How many retries the recent requests allow, shared by every request of
/// a route. Lock-free: a ring of one-second buckets of atomics. Races cost
/// a little accuracy, never a lock: a count landing while another thread
/// resets a reused bucket is lost, and threads withdrawing at once may
/// overdraw by one each.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    buckets: [Bucket; WINDOW_SECONDS as usize],
}

impl RetryBudget {
    /// Retries may add `percent` of the request rate plus `min_per_second`.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        // Fix the base now, so that instants taken after this are not
        // before it.
        base();
        Self {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            buckets: Default::default(),
        }
    }

    /// Counts one original request (not a retry).
    pub fn record_request(&self, now: Instant) {
        self.bucket(second(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it allows one more.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let second = second(now);
        let (requests, retries) = self.window(second);
        let allowed = self
            .min_per_second
            .saturating_mul(WINDOW_SECONDS)
            .saturating_add(requests.saturating_mul(self.percent) / 100);
        if retries >= allowed {
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Requests and retries counted in the window ending at `second`.
    fn window(&self, second: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| {
                let at = b.second.load(Ordering::Acquire);
                at <= second && second - at < WINDOW_SECONDS
            })
            .fold((0, 0), |(requests, retries), b| {
                (
                    requests + b.requests.load(Ordering::Relaxed),
                    retries + b.retries.load(Ordering::Relaxed),
                )
            })
    }

    /// The bucket of `second`, emptied first if it last held an older one.
    /// A bucket only moves forward: a caller with an older `now` than the
    /// bucket's counts into the newer second.
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW_SECONDS) as usize];
        let at = bucket.second.load(Ordering::Acquire);
        if at < second
            && bucket
                .second
                .compare_exchange(at, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }
}

/// The process-wide instant seconds are counted from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Whole seconds from the base to `now`; an instant before it is second 0.
fn second(now: Instant) -> u64 {
    now.saturating_duration_since(base()).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retry_on: &[&str]) -> RetryPolicy {
        RetryPolicy::new(&Retries {
            attempts: 3,
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            per_try_timeout_ms: Some(250),
            budget_percent: 20,
            min_per_second: 10,
        })
    }

    fn status(code: u16) -> Failure {
        Failure::Status(StatusCode::from_u16(code).unwrap())
    }

    #[test]
    fn classification_table() {
        use Failure::{ConnectFailure, Reset, Timeout};
        let all = [500, 502, 503, 504, 599, 429, 200]
            .map(status)
            .into_iter()
            .chain([ConnectFailure, Reset, Timeout]);
        let five_xx = [500, 502, 503, 504, 599].map(status);
        let gateway = [502, 503, 504].map(status);
        let table: [(&str, Vec<Failure>); 5] = [
            (
                "5xx",
                [ConnectFailure, Reset, Timeout]
                    .into_iter()
                    .chain(five_xx)
                    .collect(),
            ),
            (
                "gateway-error",
                [ConnectFailure, Timeout]
                    .into_iter()
                    .chain(gateway)
                    .collect(),
            ),
            ("reset", vec![Reset]),
            ("connect-failure", vec![ConnectFailure]),
            ("429", vec![status(429)]),
        ];
        for (class, retried) in table {
            let p = policy(&[class]);
            for failure in all.clone() {
                let want = retried.contains(&failure);
                let got = p.should_retry(&failure, &Method::GET, true);
                assert_eq!(got, want, "{class} {failure:?}");
            }
        }
    }

    #[test]
    fn every_api_class_is_understood() {
        for class in weft_api::validate::RETRY_CLASSES {
            assert_ne!(policy(&[class]).classes, 0, "{class}");
        }
    }

    #[test]
    fn explicit_status_only_that_status() {
        let p = policy(&["503"]);
        assert!(p.should_retry(&status(503), &Method::GET, true));
        for other in [500, 502, 504, 404] {
            assert!(
                !p.should_retry(&status(other), &Method::GET, true),
                "{other}"
            );
        }
        assert!(!p.should_retry(&Failure::ConnectFailure, &Method::GET, true));
        assert!(!p.should_retry(&Failure::Reset, &Method::GET, true));
    }

    #[test]
    fn status_set_edges() {
        let p = policy(&["100", "599", "600", "99", "abc", ""]);
        assert!(contains(&p.statuses, 100));
        assert!(contains(&p.statuses, 599));
        assert_eq!(p.statuses.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        assert_eq!(p.classes, 0);
    }

    #[test]
    fn non_idempotent_only_on_connect_failure() {
        let p = policy(&["5xx"]);
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(
                p.should_retry(&Failure::ConnectFailure, &method, true),
                "{method}"
            );
            for failure in [Failure::Reset, Failure::Timeout, status(503)] {
                assert!(
                    !p.should_retry(&failure, &method, true),
                    "{method} {failure:?}"
                );
            }
        }
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(p.should_retry(&Failure::Reset, &method, true), "{method}");
        }
    }

    #[test]
    fn non_replayable_body_never_retried() {
        let p = policy(&["5xx", "gateway-error", "reset", "connect-failure", "503"]);
        for failure in [
            Failure::ConnectFailure,
            Failure::Reset,
            Failure::Timeout,
            status(503),
        ] {
            assert!(
                !p.should_retry(&failure, &Method::GET, false),
                "{failure:?}"
            );
            assert!(
                !p.should_retry(&failure, &Method::POST, false),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn accessors() {
        let p = policy(&["5xx"]);
        assert_eq!(p.attempts(), 3);
        assert_eq!(p.per_try_timeout(), Some(Duration::from_millis(250)));
        let mut retries = Retries {
            attempts: 0,
            retry_on: Vec::new(),
            per_try_timeout_ms: None,
            budget_percent: 0,
            min_per_second: 0,
        };
        assert_eq!(RetryPolicy::new(&retries).attempts(), 1);
        retries.attempts = 1;
        let once = RetryPolicy::new(&retries);
        assert_eq!(once.attempts(), 1);
        assert_eq!(once.per_try_timeout(), None);
    }

    #[test]
    fn budget_percent_of_requests() {
        let budget = RetryBudget::new(20, 0);
        let now = Instant::now();
        for _ in 0..100 {
            budget.record_request(now);
        }
        for i in 0..20 {
            assert!(budget.try_withdraw(now), "retry {i}");
        }
        assert!(!budget.try_withdraw(now));
    }

    #[test]
    fn budget_min_per_second_then_refills() {
        let budget = RetryBudget::new(20, 1);
        let now = Instant::now();
        for i in 0..10 {
            assert!(budget.try_withdraw(now), "retry {i}");
        }
        assert!(!budget.try_withdraw(now));
        let later = now + Duration::from_secs(11);
        for i in 0..10 {
            assert!(budget.try_withdraw(later), "retry {i} later");
        }
        assert!(!budget.try_withdraw(later));
    }

    #[test]
    fn budget_window_slides() {
        let budget = RetryBudget::new(50, 0);
        let start = Instant::now();
        for _ in 0..10 {
            budget.record_request(start);
        }
        let within = start + Duration::from_secs(5);
        for _ in 0..5 {
            assert!(budget.try_withdraw(within));
        }
        assert!(!budget.try_withdraw(within));
        assert!(
            !budget.try_withdraw(start + Duration::from_secs(11)),
            "the requests left the window"
        );
    }

    #[test]
    fn zero_budget_refuses() {
        let budget = RetryBudget::new(0, 0);
        let now = Instant::now();
        budget.record_request(now);
        assert!(!budget.try_withdraw(now));
    }
}
