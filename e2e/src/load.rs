//! The traffic generator (`weft-e2e-app load`): sends requests at a steady
//! rate, on a new connection each (so each is balanced anew) or over
//! keep-alive connections, and reports what answered, how often and when,
//! and every failure, as JSON. It stops after `--requests`, after
//! `--duration`, or on SIGTERM/SIGINT, and prints its report either way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::app::Connection;

/// Failures kept with their time in the report (all are counted).
const MAX_LISTED_FAILURES: usize = 50;

/// What to send; also the flags of `weft-e2e-app load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Stop after this many requests.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = weft_api::duration::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second, all workers together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Reuse connections instead of opening one per request.
    #[arg(long)]
    pub keep_alive: bool,
    /// A request not answered within this long fails.
    #[arg(long, value_parser = weft_api::duration::parse_duration, default_value = "2s")]
    pub timeout: Duration,
}

/// What a run saw. Times are Unix milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub target: String,
    pub sent: u64,
    pub answered: u64,
    pub failed: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Each distinct answer (the body, trimmed) and when it was seen.
    pub answers: BTreeMap<String, Tally>,
    /// Each distinct failure and how often it happened.
    pub errors: BTreeMap<String, u64>,
    /// The first failures, with their times.
    pub failures: Vec<Failure>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub count: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub at_ms: u64,
    pub error: String,
}

impl LoadReport {
    /// Answers grouped by who answered last in the chain: `frontend-0 ->
    /// backend-2` counts for `backend-2`.
    pub fn by_replica(&self) -> BTreeMap<String, Tally> {
        let mut out: BTreeMap<String, Tally> = BTreeMap::new();
        for (answer, tally) in &self.answers {
            let replica = answer.rsplit(" -> ").next().unwrap_or(answer).to_owned();
            let entry = out.entry(replica).or_insert_with(|| Tally {
                count: 0,
                first_ms: u64::MAX,
                last_ms: 0,
            });
            entry.count += tally.count;
            entry.first_ms = entry.first_ms.min(tally.first_ms);
            entry.last_ms = entry.last_ms.max(tally.last_ms);
        }
        out
    }

    fn answer(&mut self, body: &str, at_ms: u64) {
        self.answered += 1;
        let tally = self.answers.entry(body.trim().to_owned()).or_insert(Tally {
            count: 0,
            first_ms: at_ms,
            last_ms: at_ms,
        });
        tally.count += 1;
        tally.last_ms = at_ms;
    }

    fn fail(&mut self, error: String, at_ms: u64) {
        self.failed += 1;
        *self.errors.entry(error.clone()).or_default() += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(Failure { at_ms, error });
        }
    }
}

/// The current time in Unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs until a limit is reached or `stop` is set.
pub async fn run(options: LoadOptions, stop: Arc<AtomicBool>) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport {
        target: options.target.to_string(),
        started_ms: unix_ms(),
        ..Default::default()
    }));
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = options.duration.map(|d| Instant::now() + d);
    let workers = options.concurrency.max(1);
    let period = Duration::from_secs_f64(workers as f64 / options.rate.max(0.001));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (options, stop, issued, report) = (
            options.clone(),
            stop.clone(),
            issued.clone(),
            report.clone(),
        );
        tasks.push(tokio::spawn(async move {
            worker(options, period, deadline, stop, issued, report).await;
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut report = match Arc::try_unwrap(report) {
        Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
        Err(shared) => shared.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    report.finished_ms = unix_ms();
    report
}

async fn worker(
    options: LoadOptions,
    period: Duration,
    deadline: Option<Instant>,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
    report: Arc<Mutex<LoadReport>>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Connection> = None;
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if options.requests.is_some_and(|max| n >= max) {
            return;
        }
        lock(&report).sent += 1;
        let result = tokio::time::timeout(options.timeout, async {
            let mut c = match conn.take() {
                Some(c) => c,
                None => Connection::open(options.target).await?,
            };
            let answer = c.get(&options.path).await;
            if options.keep_alive && answer.is_ok() {
                conn = Some(c);
            }
            answer
        })
        .await;
        let at = unix_ms();
        let mut report = lock(&report);
        match result {
            Ok(Ok((status, body))) if (200..300).contains(&status) => report.answer(&body, at),
            Ok(Ok((status, body))) => report.fail(format!("HTTP {status}: {}", body.trim()), at),
            Ok(Err(e)) => report.fail(e.to_string(), at),
            Err(_) => report.fail(format!("no answer within {:?}", options.timeout), at),
        }
    }
}

fn lock(report: &Mutex<LoadReport>) -> std::sync::MutexGuard<'_, LoadReport> {
    report.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_replica_groups_answers_by_the_last_hop() {
        let mut r = LoadReport::default();
        r.answer("frontend-0 -> backend-1\n", 10);
        r.answer("frontend-1 -> backend-1", 30);
        r.answer("frontend-0 -> backend-2", 20);
        r.answer("backend-0", 5);
        let by = r.by_replica();
        assert_eq!(
            by["backend-1"],
            Tally {
                count: 2,
                first_ms: 10,
                last_ms: 30
            }
        );
        assert_eq!(by["backend-2"].count, 1);
        assert_eq!(by["backend-0"].count, 1);
        assert_eq!(r.answered, 4);
    }

    #[test]
    fn failures_are_counted_and_the_first_listed() {
        let mut r = LoadReport::default();
        for i in 0..60 {
            r.fail("HTTP 502: x".into(), i);
        }
        assert_eq!(r.failed, 60);
        assert_eq!(r.errors["HTTP 502: x"], 60);
        assert_eq!(r.failures.len(), MAX_LISTED_FAILURES);
    }
}
