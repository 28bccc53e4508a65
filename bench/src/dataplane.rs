//! The data-path benchmark: direct, the Weft pair and the HAProxy pair, in
//! one run, interleaved and repeated, for HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::load::{self, FixedRate, Proto, Saturation};
use crate::procstat;
use crate::rig::{self, Bins, Pair, Pki};

/// How hard and how long.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rate: u32,
    pub connections: u32,
    pub fixed_duration: Duration,
    pub saturation_duration: Duration,
    pub repetitions: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Weft,
    Haproxy,
}

impl PathKind {
    pub const ALL: [Self; 3] = [Self::Direct, Self::Weft, Self::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Weft => "weft",
            Self::Haproxy => "haproxy",
        }
    }
}

/// One repetition of one path.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub path: PathKind,
    pub proto: Proto,
    pub fixed: FixedRate,
    pub saturation: Saturation,
    /// Both proxies' CPU time during the saturation run, per request.
    pub cpu_us_per_request: Option<f64>,
    /// The same during the fixed-rate run: what a sidecar costs at a
    /// steady load rather than flat out (less batching per wake-up).
    pub cpu_us_per_request_fixed: Option<f64>,
    /// The larger of the two proxies' peak RSS during the fixed-rate run.
    pub rss_loaded_kib: Option<u64>,
}

/// Every run, and each pair's idle memory.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub runs: Vec<Run>,
    /// `(path, proto, larger proxy RSS before any load)`.
    pub rss_idle_kib: Vec<(PathKind, Proto, u64)>,
    /// The Weft pair at the fixed rate while its files are rewritten.
    pub under_reload: Vec<ReloadRun>,
}

/// A fixed-rate run of the Weft pair during which both certificates and
/// the client's routing table were replaced again and again.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRun {
    pub proto: Proto,
    pub reloads: u64,
    pub requests: u64,
    pub failed: u64,
}

/// How often the files are replaced during a reload run.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);

/// Runs every path for both protocols.
pub fn measure(bins: &Bins, dir: &Path, settings: &Settings) -> Result<Measured> {
    let pki = Pki::new()?;
    let (_backend, backend) = rig::backend(bins, dir)?;
    let mut weft = rig::weft(bins, &pki, dir, backend)?;
    let mut measured = Measured {
        runs: Vec::new(),
        rss_idle_kib: Vec::new(),
        under_reload: Vec::new(),
    };
    for proto in [Proto::Http1, Proto::Http2] {
        let mut haproxy = rig::haproxy(bins, &pki, dir, backend, proto)?;
        // Let the pairs settle before reading their idle memory.
        std::thread::sleep(Duration::from_millis(200));
        for (path, pair) in [(PathKind::Weft, &weft), (PathKind::Haproxy, &haproxy)] {
            measured.rss_idle_kib.push((path, proto, peak_rss(pair)?.0));
        }
        for _ in 0..settings.repetitions {
            for path in PathKind::ALL {
                let pair = match path {
                    PathKind::Direct => None,
                    PathKind::Weft => Some(&mut weft),
                    PathKind::Haproxy => Some(&mut haproxy),
                };
                let run = one_run(path, proto, backend, pair, settings)
                    .with_context(|| format!("{} over {}", path.name(), proto.name()))?;
                eprintln!("weft-bench: {}", summary(&run));
                measured.runs.push(run);
            }
        }
        let reloaded = under_reload(&pki, &mut weft, proto, settings)?;
        eprintln!(
            "weft-bench:    weft {} under reload: {} reloads, {} requests, {} failed",
            proto.name(),
            reloaded.reloads,
            reloaded.requests,
            reloaded.failed
        );
        measured.under_reload.push(reloaded);
    }
    Ok(measured)
}

/// The fixed-rate load while another thread replaces the pair's
/// certificates and routing table every [`RELOAD_EVERY`].
fn under_reload(pki: &Pki, pair: &mut Pair, proto: Proto, s: &Settings) -> Result<ReloadRun> {
    let files = pair.files.clone().context("the Weft pair's files")?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (fixed, reloads) = std::thread::scope(|scope| {
        let churn = scope.spawn(|| -> Result<u64> {
            let mut reloads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(RELOAD_EVERY);
                files.reload(pki, 2 + reloads)?;
                reloads += 1;
            }
            Ok(reloads)
        });
        let fixed = load::fixed_rate(pair.entry, proto, s.rate, s.connections, s.fixed_duration);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reloads = churn
            .join()
            .map_err(|_| anyhow::anyhow!("the reloading thread panicked"))?;
        Ok::<_, anyhow::Error>((fixed?, reloads?))
    })?;
    pair.check_running()?;
    Ok(ReloadRun {
        proto,
        reloads,
        requests: fixed.requests,
        failed: fixed.failed,
    })
}

fn one_run(
    path: PathKind,
    proto: Proto,
    backend: SocketAddr,
    mut pair: Option<&mut Pair>,
    s: &Settings,
) -> Result<Run> {
    let target = pair.as_ref().map_or(backend, |p| p.entry);
    if let Some(pair) = pair.as_mut() {
        pair.check_running()?;
        for pid in pair.pids() {
            procstat::reset_peak(pid)?;
        }
    }
    let cpu_start = pair.as_ref().map(|p| cpu(p)).transpose()?;
    let fixed = load::fixed_rate(target, proto, s.rate, s.connections, s.fixed_duration)?;
    let rss_loaded_kib = pair
        .as_ref()
        .map(|p| peak_rss(p).map(|r| r.1))
        .transpose()?;
    let cpu_before = pair.as_ref().map(|p| cpu(p)).transpose()?;
    let saturation = load::saturate(target, proto, s.connections, s.saturation_duration)?;
    let cpu_after = pair.as_ref().map(|p| cpu(p)).transpose()?;
    let cpu_us_per_request_fixed = per_request(cpu_start, cpu_before, fixed.requests);
    let cpu_us_per_request = per_request(cpu_before, cpu_after, saturation.requests);
    if let Some(pair) = pair.as_mut() {
        pair.check_running()?;
    }
    Ok(Run {
        path,
        proto,
        fixed,
        saturation,
        cpu_us_per_request,
        cpu_us_per_request_fixed,
        rss_loaded_kib,
    })
}

/// CPU microseconds per request between two readings.
fn per_request(before: Option<Duration>, after: Option<Duration>, requests: u64) -> Option<f64> {
    let (before, after) = before.zip(after)?;
    Some((after - before).as_secs_f64() * 1e6 / requests.max(1) as f64)
}

/// Both proxies' CPU time so far.
fn cpu(pair: &Pair) -> Result<Duration> {
    let [a, b] = pair.pids();
    Ok(procstat::cpu_time(a)? + procstat::cpu_time(b)?)
}

/// The larger proxy's `(RSS, peak RSS)`.
fn peak_rss(pair: &Pair) -> Result<(u64, u64)> {
    let [a, b] = pair.pids();
    let (a, b) = (procstat::rss_kib(a)?, procstat::rss_kib(b)?);
    Ok((a.0.max(b.0), a.1.max(b.1)))
}

fn summary(run: &Run) -> String {
    format!(
        "{:>7} {}: p50 {:.3} ms, p99 {:.3} ms, max {:.0} req/s, {} failed{}",
        run.path.name(),
        run.proto.name(),
        run.fixed.p50_ms,
        run.fixed.p99_ms,
        run.saturation.rps,
        run.fixed.failed + run.saturation.failed,
        run.cpu_us_per_request
            .zip(run.cpu_us_per_request_fixed)
            .map(|(c, f)| format!(", {c:.1} µs CPU/request ({f:.1} at the fixed rate)"))
            .unwrap_or_default()
    )
}
