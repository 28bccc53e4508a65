//! Load generators, as `../shared/BENCH.md` found them best here: `oha` at
//! a fixed rate with latency correction (percentiles free of coordinated
//! omission), `wrk` (HTTP/1.1) and `h2load` (HTTP/2) for saturation
//! throughput, the cheapest generators per request on a machine whose two
//! cores the proxies share with them.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Http1,
    Http2,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

/// A fixed-rate run's latency and outcome.
#[derive(Debug, Clone, Serialize)]
pub struct FixedRate {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub requests: u64,
    pub failed: u64,
}

/// A saturation run's throughput.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub rps: f64,
    pub requests: u64,
    pub failed: u64,
}

/// `rate` requests per second over `connections` keep-alive connections
/// for `duration`, latency corrected.
pub fn fixed_rate(
    target: SocketAddr,
    proto: Proto,
    rate: u32,
    connections: u32,
    duration: Duration,
) -> Result<FixedRate> {
    let mut command = Command::new("oha");
    command
        .arg("-z")
        .arg(format!("{}ms", duration.as_millis()))
        .args(["-c", &connections.to_string(), "-q", &rate.to_string()])
        .args([
            "--latency-correction",
            "--no-tui",
            "--output-format",
            "json",
        ]);
    if proto == Proto::Http2 {
        command.arg("--http2");
    }
    command.arg(format!("http://{target}/"));
    parse_oha(&run(&mut command)?)
}

/// As many requests as `connections` connections carry in `duration`.
pub fn saturate(
    target: SocketAddr,
    proto: Proto,
    connections: u32,
    duration: Duration,
) -> Result<Saturation> {
    let secs = duration.as_secs().max(1).to_string();
    let url = format!("http://{target}/");
    match proto {
        Proto::Http1 => {
            let mut command = Command::new("wrk");
            command.args(["-t", "1", "-c", &connections.to_string(), "-d"]);
            command.arg(format!("{secs}s")).arg(&url);
            parse_wrk(&run(&mut command)?)
        }
        Proto::Http2 => {
            let mut command = Command::new("h2load");
            command.args([
                "-c",
                &connections.to_string(),
                "-m",
                "10",
                "-D",
                &secs,
                &url,
            ]);
            h2load(&mut command)
        }
    }
}

/// Runs an `h2load` command; its summary.
pub fn h2load(command: &mut Command) -> Result<Saturation> {
    parse_h2load(&run(command)?)
}

fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?} (make bench-deps installs it)"))?;
    if !output.status.success() {
        bail!(
            "{command:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// oha's JSON: `latencyPercentiles` in seconds, `statusCodeDistribution`,
/// `errorDistribution`.
fn parse_oha(json: &str) -> Result<FixedRate> {
    let v: serde_json::Value = serde_json::from_str(json).context("oha's JSON")?;
    let percentile = |key: &str| -> Result<f64> {
        v["latencyPercentiles"][key]
            .as_f64()
            .map(|s| s * 1000.0)
            .with_context(|| format!("oha's JSON has no latencyPercentiles.{key}"))
    };
    let count = |key: &str, ok: fn(&str) -> bool| -> u64 {
        v[key].as_object().map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| ok(k))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
    };
    let succeeded = count("statusCodeDistribution", |code| code.starts_with('2'));
    let other = count("statusCodeDistribution", |code| !code.starts_with('2'));
    // oha cuts the requests in flight when its time is up: not failures.
    let errors = count("errorDistribution", |e| {
        !e.contains("aborted due to deadline")
    });
    Ok(FixedRate {
        p50_ms: percentile("p50")?,
        p99_ms: percentile("p99")?,
        p999_ms: percentile("p99.9")?,
        requests: succeeded + other + errors,
        failed: other + errors,
    })
}

/// wrk's summary: `N requests in …`, `Requests/sec: X`, and the error lines.
fn parse_wrk(out: &str) -> Result<Saturation> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec: {out}"))?;
    let requests = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("wrk printed no request count: {out}"))?;
    let non_2xx: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let socket_errors: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    Ok(Saturation {
        rps,
        requests,
        failed: non_2xx + socket_errors,
    })
}

/// h2load's summary: `finished in Ts, X req/s, …` and `requests: N total,
/// … S succeeded, F failed, E errored, T timeout`.
fn parse_h2load(out: &str) -> Result<Saturation> {
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("h2load printed no req/s: {out}"))?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .with_context(|| format!("h2load printed no request counts: {out}"))?;
    let field = |name: &str| -> u64 {
        line.split(", ")
            .find_map(|part| part.strip_suffix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Saturation {
        rps,
        requests: field(" done"),
        failed: field(" failed") + field(" errored") + field(" timeout"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oha() {
        let json = r#"{"summary":{"successRate":1.0},
            "latencyPercentiles":{"p50":0.00025,"p99":0.0011,"p99.9":0.004},
            "statusCodeDistribution":{"200":3990,"503":2},
            "errorDistribution":{"connection closed":8,"aborted due to deadline":3}}"#;
        let r = parse_oha(json).unwrap();
        assert_eq!((r.p50_ms, r.p99_ms, r.p999_ms), (0.25, 1.1, 4.0));
        assert_eq!((r.requests, r.failed), (4000, 10));
        assert!(parse_oha("{}").is_err());
    }

    #[test]
    fn reads_wrk() {
        let out = "Running 10s test @ http://127.0.0.1:1/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.61ms  241.10us   6.12ms   89.43%
  309371 requests in 10.00s, 28.32MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  30934.52
Transfer/sec:      2.83MB
";
        let r = parse_wrk(out).unwrap();
        assert_eq!((r.rps, r.requests, r.failed), (30934.52, 309371, 9));
    }

    #[test]
    fn reads_h2load() {
        let out = "finished in 10.00s, 36011.40 req/s, 1.27MB/s
requests: 360114 total, 360614 started, 360114 done, 360110 succeeded, 4 failed, 0 errored, 0 timeout
status codes: 360110 2xx, 0 3xx, 0 4xx, 4 5xx
";
        let r = parse_h2load(out).unwrap();
        assert_eq!((r.rps, r.requests, r.failed), (36011.40, 360114, 4));
    }
}
