//! Per-request endpoint choice: peak-EWMA latency with power of two choices
//! (or round robin), and passive outlier detection.
//!
//! Spreading connections evenly does not spread load: a slow or failing
//! endpoint keeps its share. Choosing per request from what this proxy has
//! seen — latency, requests in flight, consecutive failures — moves traffic
//! off a struggling endpoint within a few requests, with no health checks and
//! no help from the control plane.
//!
//! What is learned lives in [`EndpointStats`], which the routing table keeps
//! (behind an `Arc`) across reloads for the endpoints still there, so a reload
//! forgets nothing. Every request updates it, concurrently, on the hot path:
//! it is all atomics, no lock. All of them use `Relaxed` ordering, as each is
//! a value of its own that publishes no other memory. Time comes in as `now`
//! instead of being read here, so tests move it without sleeping.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use weft_api::routes::{LoadBalancer, OutlierDetection};

/// The latency assumed of an endpoint that has not answered yet (Linkerd's
/// default): low enough that a new endpoint gets tried soon.
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The EWMA's time constant: an estimate keeps `exp(-elapsed / TAU)` of its
/// weight, so it forgets a latency spike in a few tens of seconds.
const TAU: Duration = Duration::from_secs(10);

/// Repeated ejections last longer, up to this many base ejection times.
const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// A stored time that is no instant: never observed, never ejected.
const NEVER: u64 = 0;

/// Why a request counts against an endpoint; the caller classifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx, a connect failure, a reset or a timeout.
    Failure,
}

/// One endpoint's load and health, shared by every request to it and kept
/// across routing-table reloads.
#[derive(Debug)]
pub struct EndpointStats {
    /// The peak-EWMA latency in nanoseconds (`f64` bits), as of `rtt_at`.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` last took in a response (see [`nanos`]), or `NEVER`.
    rtt_at: AtomicU64,
    /// Requests sent and not ended; see [`InFlight`].
    pending: AtomicU32,
    /// Failures since the last success or ejection.
    failures: AtomicU32,
    /// The end of the current or last ejection, moved up to the time of each
    /// penalty step-down (see `record_success`), or `NEVER`.
    ejected_until: AtomicU64,
    /// Past ejections still held against the endpoint: the next one lasts
    /// `penalty + 1` base ejection times.
    penalty: AtomicU32,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            rtt_ns: AtomicU64::new(duration_ns(DEFAULT_RTT).to_bits()),
            rtt_at: AtomicU64::new(NEVER),
            pending: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(NEVER),
            penalty: AtomicU32::new(0),
        }
    }
}

impl EndpointStats {
    /// Counts a request in flight until the returned guard is finished or
    /// dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Relaxed);
        InFlight {
            stats: Arc::clone(self),
        }
    }

    /// Requests in flight.
    pub fn pending(&self) -> u32 {
        self.pending.load(Relaxed)
    }

    /// The load of the endpoint (Linkerd's peak-EWMA cost): its latency
    /// estimate times the requests in flight plus the one being placed, so
    /// that a fast endpoint with a queue loses to a slower idle one.
    pub fn cost(&self, now: Instant) -> f64 {
        self.cost_at(nanos(now))
    }

    /// Whether outlier detection has taken the endpoint out of rotation.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_at(nanos(now))
    }

    /// Takes a response's latency into the peak EWMA: a latency above the
    /// estimate replaces it at once (peak), a lower one is blended in with the
    /// weight that time has taken from the old estimate. A failure can only
    /// raise the estimate: a fast error must not make an endpoint attractive.
    pub fn observe(&self, now: Instant, rtt: Duration, outcome: Outcome) {
        let now_ns = nanos(now);
        // `fetch_max` gives concurrent updates each their own slice of the
        // elapsed time; if they then blend in the other order, no harm done.
        let last = self.rtt_at.fetch_max(now_ns, Relaxed);
        let w = if last == NEVER {
            0.0
        } else {
            weight(now_ns.saturating_sub(last))
        };
        let rtt = duration_ns(rtt);
        let next = |bits| Some(next_estimate(f64::from_bits(bits), w, rtt, outcome).to_bits());
        // The closure never refuses, so this cannot fail.
        let _ = self.rtt_ns.fetch_update(Relaxed, Relaxed, next);
    }

    /// Passive outlier detection. `endpoints` is the set this endpoint is
    /// chosen from, itself included, for `max_ejected_percent`. Returns
    /// whether this call ejected the endpoint.
    pub fn record_outcome<E: AsRef<EndpointStats>>(
        &self,
        now: Instant,
        outcome: Outcome,
        policy: &OutlierDetection,
        endpoints: &[E],
    ) -> bool {
        match outcome {
            Outcome::Success => {
                self.record_success(nanos(now), policy.base_ejection_ms);
                false
            }
            Outcome::Failure => self.record_failure(now, policy, endpoints),
        }
    }

    /// Resets the failure count, and forgives one past ejection per base
    /// ejection time of good behaviour since the last ejection ended (or
    /// since the last step-down): an endpoint that recovered sheds its
    /// growing penalty, one that keeps failing does not.
    fn record_success(&self, now_ns: u64, base_ejection_ms: u64) {
        // A failure counted concurrently may be lost: harmless, the count
        // only has to catch an endpoint that fails request after request.
        self.failures.store(0, Relaxed);
        let until = self.ejected_until.load(Relaxed);
        let forgiven_at = until.saturating_add(ms_ns(base_ejection_ms));
        // Winning the exchange moves the mark, so one success per period
        // steps down, however many arrive at once.
        if self.penalty.load(Relaxed) > 0
            && now_ns >= forgiven_at
            && self
                .ejected_until
                .compare_exchange(until, now_ns, Relaxed, Relaxed)
                .is_ok()
        {
            let _ = self
                .penalty
                .fetch_update(Relaxed, Relaxed, |p| p.checked_sub(1));
        }
    }

    /// Counts a failure and ejects once `consecutive_failures` are reached,
    /// if the set can spare the endpoint; otherwise the count stays, so the
    /// next failure tries again.
    fn record_failure<E: AsRef<EndpointStats>>(
        &self,
        now: Instant,
        policy: &OutlierDetection,
        endpoints: &[E],
    ) -> bool {
        let failures = self.failures.fetch_add(1, Relaxed).saturating_add(1);
        failures >= policy.consecutive_failures
            && !self.is_ejected(now)
            && may_eject_one(endpoints, policy.max_ejected_percent, now)
            && self.eject(nanos(now), policy.base_ejection_ms)
    }

    /// Ejects for `penalty + 1` base ejection times; false if another
    /// request ejected it first.
    fn eject(&self, now_ns: u64, base_ejection_ms: u64) -> bool {
        let multiplier = u64::from(self.penalty.load(Relaxed) + 1);
        let until = now_ns.saturating_add(ms_ns(base_ejection_ms).saturating_mul(multiplier));
        let ejected = self
            .ejected_until
            .fetch_update(Relaxed, Relaxed, |u| (u <= now_ns).then_some(until))
            .is_ok();
        if ejected {
            self.failures.store(0, Relaxed);
            let _ = self.penalty.fetch_update(Relaxed, Relaxed, |p| {
                Some((p + 1).min(MAX_EJECTION_MULTIPLIER - 1))
            });
        }
        ejected
    }

    fn ejected_at(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Relaxed) > now_ns
    }

    fn cost_at(&self, now_ns: u64) -> f64 {
        self.estimate_ns(now_ns) * f64::from(self.pending().saturating_add(1))
    }

    /// The estimate at `now_ns`: decayed toward zero since the last response,
    /// as Finagle and Linkerd do, so that an endpoint that stopped getting
    /// traffic because it looked slow is tried again after a while.
    fn estimate_ns(&self, now_ns: u64) -> f64 {
        let at = self.rtt_at.load(Relaxed);
        let estimate = f64::from_bits(self.rtt_ns.load(Relaxed));
        if at == NEVER {
            estimate
        } else {
            estimate * weight(now_ns.saturating_sub(at))
        }
    }
}

/// Peak EWMA: the old estimate decays by `w`; a latency above that takes
/// over, one below is blended in: `old*w + rtt*(1-w)`.
fn next_estimate(old: f64, w: f64, rtt: f64, outcome: Outcome) -> f64 {
    let current = old * w;
    if rtt > current {
        rtt
    } else if outcome == Outcome::Failure {
        current
    } else {
        current + rtt * (1.0 - w)
    }
}

/// The share of its weight an estimate keeps after `elapsed_ns`.
fn weight(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / duration_ns(TAU)).exp()
}

fn duration_ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

fn ms_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

/// An instant as nanoseconds since a process-wide base, to fit an
/// `AtomicU64`; plus one, so that no instant is `NEVER`.
fn nanos(now: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    let since = now.saturating_duration_since(base).as_nanos();
    u64::try_from(since).unwrap_or(u64::MAX).saturating_add(1)
}

/// A request counted in its endpoint's `pending` until this is finished or
/// dropped. It is `Send + 'static`, to live in the response body until the
/// response ends; a request dropped unfinished (the client went away)
/// teaches nothing about the endpoint.
#[derive(Debug)]
#[must_use = "dropping it ends the request at once"]
pub struct InFlight {
    stats: Arc<EndpointStats>,
}

impl InFlight {
    /// Ends the request: its latency goes into the EWMA and, when the route
    /// has outlier detection, its outcome into that (`endpoints` as for
    /// [`EndpointStats::record_outcome`]). Returns whether this ejected the
    /// endpoint.
    pub fn finish<E: AsRef<EndpointStats>>(
        self,
        now: Instant,
        rtt: Duration,
        outcome: Outcome,
        outlier: Option<&OutlierDetection>,
        endpoints: &[E],
    ) -> bool {
        self.stats.observe(now, rtt, outcome);
        outlier.is_some_and(|policy| self.stats.record_outcome(now, outcome, policy, endpoints))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Relaxed);
    }
}

/// Whether one more endpoint of `endpoints` may be ejected at `now`: the
/// ejected share must stay within `max_ejected_percent`, and at least one
/// endpoint must stay in rotation.
pub fn may_eject_one<E: AsRef<EndpointStats>>(
    endpoints: &[E],
    max_ejected_percent: u32,
    now: Instant,
) -> bool {
    let now_ns = nanos(now);
    let total = endpoints.len() as u64;
    let ejected = endpoints
        .iter()
        .filter(|e| e.as_ref().ejected_at(now_ns))
        .count() as u64;
    let after = ejected + 1;
    after < total && after * 100 <= u64::from(max_ejected_percent) * total
}

/// The index of the endpoint to send a request to; `None` only when there
/// is none. Ejected endpoints are skipped unless all are (panic mode).
/// `rr` is the round-robin position, kept by the caller per target.
pub fn pick<E: AsRef<EndpointStats>>(
    endpoints: &[E],
    algorithm: LoadBalancer,
    rr: &AtomicUsize,
    now: Instant,
) -> Option<usize> {
    let rotation = Rotation::new(endpoints, nanos(now));
    if rotation.len == 0 {
        return None;
    }
    Some(match algorithm {
        LoadBalancer::RoundRobin => rotation.nth(rr.fetch_add(1, Relaxed) % rotation.len),
        LoadBalancer::Ewma => rotation.two_choices(),
    })
}

/// The endpoints in rotation at one instant, counted rather than collected:
/// `pick` runs per request and must not allocate.
struct Rotation<'a, E> {
    endpoints: &'a [E],
    now_ns: u64,
    /// Every endpoint is ejected: trying one beats failing every request.
    panic: bool,
    len: usize,
}

impl<'a, E: AsRef<EndpointStats>> Rotation<'a, E> {
    fn new(endpoints: &'a [E], now_ns: u64) -> Self {
        let live = endpoints
            .iter()
            .filter(|e| !e.as_ref().ejected_at(now_ns))
            .count();
        let panic = live == 0;
        Self {
            endpoints,
            now_ns,
            panic,
            len: if panic { endpoints.len() } else { live },
        }
    }

    fn includes(&self, endpoint: &E) -> bool {
        self.panic || !endpoint.as_ref().ejected_at(self.now_ns)
    }

    /// The index of the `k`-th endpoint in rotation. An ejection racing with
    /// the pick may leave fewer than counted; any endpoint does then.
    fn nth(&self, k: usize) -> usize {
        self.endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| self.includes(e))
            .nth(k)
            .map_or(k % self.endpoints.len(), |(i, _)| i)
    }

    /// Power of two choices: the cheaper of two distinct random endpoints.
    /// Unlike always taking the cheapest, it does not herd every proxy onto
    /// the same endpoint between updates, and it never picks the worst.
    fn two_choices(&self) -> usize {
        if self.len == 1 {
            return self.nth(0);
        }
        let a = fastrand::usize(..self.len);
        let b = fastrand::usize(..self.len - 1);
        let (a, b) = (self.nth(a), self.nth(if b >= a { b + 1 } else { b }));
        let cost = |i: usize| self.endpoints[i].as_ref().cost_at(self.now_ns);
        if cost(b) < cost(a) { b } else { a }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well after `BASE`, whichever test sets it, so no instant saturates.
    fn start() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn stats(n: usize) -> Vec<Arc<EndpointStats>> {
        (0..n).map(|_| Arc::new(EndpointStats::default())).collect()
    }

    fn policy(consecutive_failures: u32, base_ejection_ms: u64, pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_failures,
            base_ejection_ms,
            max_ejected_percent: pct,
        }
    }

    fn estimate(s: &EndpointStats, now: Instant) -> f64 {
        s.estimate_ns(nanos(now))
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() <= expected.abs() * 1e-9 + 1.0,
            "{actual} != {expected}"
        );
    }

    /// Fails `endpoints[i]` `n` times; returns whether the last one ejected.
    fn fail(
        endpoints: &[Arc<EndpointStats>],
        i: usize,
        n: u32,
        p: &OutlierDetection,
        now: Instant,
    ) -> bool {
        let mut ejected = false;
        for _ in 0..n {
            ejected = endpoints[i].record_outcome(now, Outcome::Failure, p, endpoints);
        }
        ejected
    }

    fn counts(
        endpoints: &[Arc<EndpointStats>],
        lb: LoadBalancer,
        picks: usize,
        now: Instant,
    ) -> Vec<usize> {
        let rr = AtomicUsize::new(0);
        let mut counts = vec![0; endpoints.len()];
        for _ in 0..picks {
            counts[pick(endpoints, lb, &rr, now).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn never_observed_costs_default_rtt_times_pending_plus_one() {
        let now = start();
        let s = Arc::new(EndpointStats::default());
        assert_close(s.cost(now), duration_ns(DEFAULT_RTT));
        let _a = s.begin();
        let _b = s.begin();
        assert_close(
            s.cost(now + Duration::from_secs(60)),
            3.0 * duration_ns(DEFAULT_RTT),
        );
    }

    #[test]
    fn first_response_replaces_the_default() {
        let now = start();
        let s = EndpointStats::default();
        s.observe(now, ms(5), Outcome::Success);
        assert_close(estimate(&s, now), duration_ns(ms(5)));
    }

    #[test]
    fn peak_jumps_up_at_once() {
        let now = start();
        let s = EndpointStats::default();
        s.observe(now, ms(20), Outcome::Success);
        s.observe(now + ms(1), ms(100), Outcome::Success);
        assert_close(estimate(&s, now + ms(1)), duration_ns(ms(100)));
    }

    #[test]
    fn decays_toward_a_lower_rtt() {
        let now = start();
        let s = EndpointStats::default();
        s.observe(now, ms(100), Outcome::Success);
        let later = now + Duration::from_secs(5);
        s.observe(later, ms(20), Outcome::Success);
        let w = (-0.5f64).exp();
        let expected = duration_ns(ms(100)) * w + duration_ns(ms(20)) * (1.0 - w);
        assert_close(estimate(&s, later), expected);
        // Without responses it keeps decaying toward zero.
        let idle = later + Duration::from_secs(10);
        assert_close(estimate(&s, idle), expected * (-1.0f64).exp());
    }

    #[test]
    fn a_fast_failure_does_not_lower_the_estimate() {
        let now = start();
        let s = EndpointStats::default();
        s.observe(now, ms(100), Outcome::Success);
        let later = now + Duration::from_secs(5);
        s.observe(later, ms(1), Outcome::Failure);
        assert_close(estimate(&s, later), duration_ns(ms(100)) * (-0.5f64).exp());
        s.observe(later, ms(200), Outcome::Failure);
        assert_close(estimate(&s, later), duration_ns(ms(200)));
    }

    #[test]
    fn pending_counts_requests_in_flight() {
        let now = start();
        let endpoints = stats(1);
        let s = &endpoints[0];
        let a = s.begin();
        let b = s.begin();
        let c = s.begin();
        assert_eq!(s.pending(), 3);
        assert!(!a.finish(now, ms(10), Outcome::Success, None, &endpoints));
        assert_eq!(s.pending(), 2);
        drop(b);
        assert_eq!(s.pending(), 1);
        drop(c);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn in_flight_can_live_in_a_response_body() {
        fn send_static<T: Send + 'static>() {}
        send_static::<InFlight>();
    }

    #[test]
    fn two_choices_avoid_a_slow_endpoint() {
        let now = start();
        let endpoints = stats(3);
        for (s, rtt) in endpoints.iter().zip([10, 1000, 10]) {
            s.observe(now, ms(rtt), Outcome::Success);
        }
        let counts = counts(&endpoints, LoadBalancer::Ewma, 10_000, now);
        assert!(counts[1] < 500, "{counts:?}");
        assert!(counts[0] > 4000 && counts[2] > 4000, "{counts:?}");
    }

    #[test]
    fn two_choices_avoid_a_busy_endpoint() {
        let now = start();
        let endpoints = stats(3);
        let _busy: Vec<InFlight> = (0..20).map(|_| endpoints[2].begin()).collect();
        let counts = counts(&endpoints, LoadBalancer::Ewma, 10_000, now);
        assert!(counts[2] < 500, "{counts:?}");
        assert!(counts[0] > 4000 && counts[1] > 4000, "{counts:?}");
    }

    #[test]
    fn round_robin_cycles_evenly_and_skips_the_ejected() {
        let now = start();
        let endpoints = stats(3);
        assert_eq!(
            counts(&endpoints, LoadBalancer::RoundRobin, 300, now),
            [100; 3]
        );
        assert!(fail(&endpoints, 1, 1, &policy(1, 1000, 100), now));
        assert_eq!(
            counts(&endpoints, LoadBalancer::RoundRobin, 200, now),
            [100, 0, 100]
        );
    }

    #[test]
    fn consecutive_failures_eject() {
        let now = start();
        let endpoints = stats(3);
        let p = policy(3, 1000, 100);
        assert!(!fail(&endpoints, 0, 2, &p, now));
        assert!(!endpoints[0].is_ejected(now));
        assert!(fail(&endpoints, 0, 1, &p, now));
        assert!(endpoints[0].is_ejected(now));
        // Already out: more failures do not eject it again.
        assert!(!fail(&endpoints, 0, 3, &p, now));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let now = start();
        let endpoints = stats(3);
        let p = policy(3, 1000, 100);
        assert!(!fail(&endpoints, 0, 2, &p, now));
        assert!(!endpoints[0].record_outcome(now, Outcome::Success, &p, &endpoints));
        assert!(!fail(&endpoints, 0, 2, &p, now));
        assert!(!endpoints[0].is_ejected(now));
        assert!(fail(&endpoints, 0, 1, &p, now));
    }

    #[test]
    fn finish_reports_an_ejection() {
        let now = start();
        let endpoints = stats(3);
        let p = policy(2, 1000, 100);
        let finish = |outlier| {
            endpoints[0]
                .begin()
                .finish(now, ms(1), Outcome::Failure, outlier, &endpoints)
        };
        assert!(!finish(None));
        assert!(!finish(None));
        assert!(!finish(Some(&p)));
        assert!(finish(Some(&p)));
        assert_eq!(endpoints[0].pending(), 0);
    }

    #[test]
    fn an_ejected_endpoint_is_not_picked_until_it_returns() {
        let now = start();
        let endpoints = stats(3);
        assert!(fail(&endpoints, 0, 1, &policy(1, 1000, 100), now));
        for lb in [LoadBalancer::Ewma, LoadBalancer::RoundRobin] {
            assert_eq!(counts(&endpoints, lb, 1000, now + ms(999))[0], 0);
        }
        let back = now + ms(1000);
        assert!(!endpoints[0].is_ejected(back));
        assert_eq!(
            counts(&endpoints, LoadBalancer::RoundRobin, 300, back)[0],
            100
        );
    }

    #[test]
    fn a_second_ejection_lasts_twice_as_long() {
        let now = start();
        let endpoints = stats(3);
        let p = policy(1, 1000, 100);
        assert!(fail(&endpoints, 0, 1, &p, now));
        let back = now + ms(1000);
        assert!(fail(&endpoints, 0, 1, &p, back));
        assert!(endpoints[0].is_ejected(back + ms(1999)));
        assert!(!endpoints[0].is_ejected(back + ms(2000)));
    }

    #[test]
    fn the_penalty_grows_up_to_ten_times() {
        let endpoints = stats(3);
        let p = policy(1, 1000, 100);
        let mut now = start();
        for _ in 0..12 {
            assert!(fail(&endpoints, 0, 1, &p, now));
            now += ms(10 * 1000);
            assert!(!endpoints[0].is_ejected(now));
        }
        assert!(endpoints[0].is_ejected(now - ms(1)));
    }

    #[test]
    fn good_behaviour_steps_the_penalty_down() {
        let endpoints = stats(3);
        let p = policy(1, 1000, 100);
        let now = start();
        let success = |at| endpoints[0].record_outcome(at, Outcome::Success, &p, &endpoints);
        // Out for 1 s, back at +1 s. A success within a base ejection time
        // of that forgives nothing: the next ejection lasts 2 s.
        assert!(fail(&endpoints, 0, 1, &p, now));
        success(now + ms(1500));
        assert!(fail(&endpoints, 0, 1, &p, now + ms(1500)));
        assert!(endpoints[0].is_ejected(now + ms(3499)));
        // Back at +3.5 s. A success at +4.5 s forgives one ejection, one at
        // +5 s nothing more (too soon after the first): the next lasts 2 s.
        success(now + ms(4500));
        success(now + ms(5000));
        assert!(fail(&endpoints, 0, 1, &p, now + ms(5000)));
        assert!(endpoints[0].is_ejected(now + ms(6999)));
        assert!(!endpoints[0].is_ejected(now + ms(7000)));
        // Back at +7 s. Successes at +8 s and +9 s forgive both: 1 s again.
        success(now + ms(8000));
        success(now + ms(9000));
        assert!(fail(&endpoints, 0, 1, &p, now + ms(9000)));
        assert!(endpoints[0].is_ejected(now + ms(9999)));
        assert!(!endpoints[0].is_ejected(now + ms(10_000)));
    }

    #[test]
    fn max_ejected_percent_limits_ejections() {
        let now = start();
        let endpoints = stats(2);
        let p = policy(3, 1000, 50);
        assert!(may_eject_one(&endpoints, 50, now));
        assert!(fail(&endpoints, 0, 3, &p, now));
        assert!(!may_eject_one(&endpoints, 50, now));
        assert!(!fail(&endpoints, 1, 3, &p, now));
        assert!(!endpoints[1].is_ejected(now));
        // Its count stays: once the other returns, the next failure ejects.
        assert!(fail(&endpoints, 1, 1, &p, now + ms(1000)));
    }

    #[test]
    fn the_last_endpoint_in_rotation_is_never_ejected() {
        let now = start();
        let endpoints = stats(1);
        assert!(!fail(&endpoints, 0, 5, &policy(1, 1000, 100), now));
        assert!(!endpoints[0].is_ejected(now));
    }

    #[test]
    fn with_every_endpoint_ejected_all_are_tried() {
        let now = start();
        let endpoints = stats(3);
        for s in &endpoints {
            assert!(s.eject(nanos(now), 1000));
        }
        assert!(
            counts(&endpoints, LoadBalancer::Ewma, 1000, now)
                .iter()
                .all(|&n| n > 0)
        );
        assert_eq!(
            counts(&endpoints, LoadBalancer::RoundRobin, 300, now),
            [100; 3]
        );
    }

    #[test]
    fn no_endpoints_no_pick() {
        let rr = AtomicUsize::new(0);
        let none: &[Arc<EndpointStats>] = &[];
        assert_eq!(pick(none, LoadBalancer::Ewma, &rr, start()), None);
        assert_eq!(pick(none, LoadBalancer::RoundRobin, &rr, start()), None);
    }
}
