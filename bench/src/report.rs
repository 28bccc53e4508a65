//! Medians over the repetitions, the ratios that matter (to direct and to
//! the HAProxy pair, from the same run), the Markdown table, and the check
//! that every figure was produced.

use serde::Serialize;

use crate::dataplane::{Measured, PathKind, Run};
use crate::load::Proto;

/// One path and protocol, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: PathKind,
    pub proto: Proto,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_rps: f64,
    pub failed: u64,
    pub cpu_us_per_request: Option<f64>,
    /// At the fixed rate.
    pub cpu_us_per_request_fixed: Option<f64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_loaded_kib: Option<u64>,
    /// Latency added to the direct path (median p50 / p99 minus direct's).
    pub added_p50_ms: Option<f64>,
    pub added_p99_ms: Option<f64>,
    pub rps_vs_direct: Option<f64>,
    /// Ratios to the HAProxy pair (weft only): throughput, CPU per
    /// request, added p50, added p99.
    pub rps_vs_haproxy: Option<f64>,
    pub cpu_vs_haproxy: Option<f64>,
    pub cpu_fixed_vs_haproxy: Option<f64>,
    pub added_p50_vs_haproxy: Option<f64>,
    pub added_p99_vs_haproxy: Option<f64>,
}

pub fn rows(m: &Measured) -> Vec<Row> {
    let mut rows = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        let mut by_path: Vec<Row> = PathKind::ALL
            .iter()
            .filter_map(|&path| summarise(m, path, proto))
            .collect();
        relate(&mut by_path);
        rows.extend(by_path);
    }
    rows
}

fn summarise(m: &Measured, path: PathKind, proto: Proto) -> Option<Row> {
    let runs: Vec<&Run> = m
        .runs
        .iter()
        .filter(|r| r.path == path && r.proto == proto)
        .collect();
    if runs.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us_per_request).collect();
    let cpu_fixed: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.cpu_us_per_request_fixed)
        .collect();
    Some(Row {
        path,
        proto,
        p50_ms: med(&|r| r.fixed.p50_ms),
        p99_ms: med(&|r| r.fixed.p99_ms),
        p999_ms: med(&|r| r.fixed.p999_ms),
        max_rps: med(&|r| r.saturation.rps),
        failed: runs
            .iter()
            .map(|r| r.fixed.failed + r.saturation.failed)
            .sum(),
        cpu_us_per_request: (!cpu.is_empty()).then(|| median(cpu)),
        cpu_us_per_request_fixed: (!cpu_fixed.is_empty()).then(|| median(cpu_fixed)),
        rss_idle_kib: m
            .rss_idle_kib
            .iter()
            .find(|(p, pr, _)| *p == path && *pr == proto)
            .map(|(_, _, kib)| *kib),
        rss_loaded_kib: runs.iter().filter_map(|r| r.rss_loaded_kib).max(),
        added_p50_ms: None,
        added_p99_ms: None,
        rps_vs_direct: None,
        rps_vs_haproxy: None,
        cpu_vs_haproxy: None,
        cpu_fixed_vs_haproxy: None,
        added_p50_vs_haproxy: None,
        added_p99_vs_haproxy: None,
    })
}

/// Fills in the ratios of one protocol's rows.
fn relate(rows: &mut [Row]) {
    let find = |rows: &[Row], path| rows.iter().find(|r| r.path == path).cloned();
    let Some(direct) = find(rows, PathKind::Direct) else {
        return;
    };
    let haproxy = find(rows, PathKind::Haproxy);
    for row in rows.iter_mut().filter(|r| r.path != PathKind::Direct) {
        row.added_p50_ms = Some(row.p50_ms - direct.p50_ms);
        row.added_p99_ms = Some(row.p99_ms - direct.p99_ms);
        row.rps_vs_direct = Some(row.max_rps / direct.max_rps);
    }
    let Some(haproxy) = haproxy else { return };
    let added = |r: &Row| (r.p50_ms - direct.p50_ms, r.p99_ms - direct.p99_ms);
    let (h50, h99) = added(&haproxy);
    for row in rows.iter_mut().filter(|r| r.path == PathKind::Weft) {
        let (w50, w99) = added(row);
        row.rps_vs_haproxy = Some(row.max_rps / haproxy.max_rps);
        row.cpu_vs_haproxy = row
            .cpu_us_per_request
            .zip(haproxy.cpu_us_per_request)
            .map(|(w, h)| w / h);
        row.cpu_fixed_vs_haproxy = row
            .cpu_us_per_request_fixed
            .zip(haproxy.cpu_us_per_request_fixed)
            .map(|(w, h)| w / h);
        row.added_p50_vs_haproxy = Some(w50 / h50);
        row.added_p99_vs_haproxy = Some(w99 / h99);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Every figure a complete run must have; the names of those missing.
pub fn missing(rows: &[Row]) -> Vec<String> {
    let mut missing = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        for path in PathKind::ALL {
            let name = format!("{}/{}", path.name(), proto.name());
            let Some(row) = rows.iter().find(|r| r.path == path && r.proto == proto) else {
                missing.push(format!("{name}: no run"));
                continue;
            };
            let mut need = |what: &str, ok: bool| {
                if !ok {
                    missing.push(format!("{name}: {what}"));
                }
            };
            need(
                "latency",
                [row.p50_ms, row.p99_ms, row.p999_ms]
                    .iter()
                    .all(|v| v.is_finite() && *v > 0.0),
            );
            need("throughput", row.max_rps.is_finite() && row.max_rps > 0.0);
            if path != PathKind::Direct {
                need(
                    "CPU per request",
                    row.cpu_us_per_request.is_some_and(f64::is_finite)
                        && row.cpu_us_per_request_fixed.is_some_and(f64::is_finite),
                );
                need(
                    "RSS",
                    row.rss_idle_kib.is_some() && row.rss_loaded_kib.is_some(),
                );
                need(
                    "ratios to direct",
                    row.rps_vs_direct.is_some() && row.added_p99_ms.is_some(),
                );
            }
            if path == PathKind::Weft {
                need(
                    "ratios to haproxy",
                    row.rps_vs_haproxy.is_some()
                        && row.cpu_vs_haproxy.is_some()
                        && row.cpu_fixed_vs_haproxy.is_some(),
                );
            }
        }
    }
    missing
}

/// The reload runs: none may fail a request, each must have reloaded.
pub fn reload_gaps(m: &Measured) -> Vec<String> {
    [Proto::Http1, Proto::Http2]
        .into_iter()
        .filter(|proto| {
            !m.under_reload
                .iter()
                .any(|r| r.proto == *proto && r.reloads >= 2 && r.requests > 0)
        })
        .map(|proto| format!("weft/{}: no run under reload", proto.name()))
        .collect()
}

/// One line per reload run.
pub fn reload_markdown(m: &Measured) -> String {
    let mut out = format!(
        "\n| weft under reload (certificates + routes every {} ms) | reloads | requests | failed |\n|---|---|---|---|\n",
        crate::dataplane::RELOAD_EVERY.as_millis()
    );
    for r in &m.under_reload {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.proto.name(),
            r.reloads,
            r.requests,
            r.failed
        ));
    }
    out
}

/// The data-path table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| path | proto | p50 ms | p99 ms | p99.9 ms | added p50 / p99 ms | max req/s | × direct | × haproxy | CPU µs/req (both proxies) | CPU × haproxy | CPU µs/req at the fixed rate | × haproxy | RSS idle / loaded MiB | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("—".into(), |v| format!("{v:.digits$}"));
        let mib = |v: Option<u64>| v.map_or("—".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let added = match (r.added_p50_ms, r.added_p99_ms) {
            (Some(a), Some(b)) => format!("{a:+.3} / {b:+.3}"),
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {added} | {:.0} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            r.path.name(),
            r.proto.name(),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_rps,
            opt(r.rps_vs_direct, 2),
            opt(r.rps_vs_haproxy, 2),
            opt(r.cpu_us_per_request, 1),
            opt(r.cpu_vs_haproxy, 2),
            opt(r.cpu_us_per_request_fixed, 1),
            opt(r.cpu_fixed_vs_haproxy, 2),
            mib(r.rss_idle_kib),
            mib(r.rss_loaded_kib),
            r.failed,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{FixedRate, Saturation};

    fn run(path: PathKind, p50: f64, rps: f64, cpu: Option<f64>) -> Run {
        Run {
            path,
            proto: Proto::Http1,
            fixed: FixedRate {
                p50_ms: p50,
                p99_ms: p50 * 3.0,
                p999_ms: p50 * 5.0,
                requests: 100,
                failed: 0,
            },
            saturation: Saturation {
                rps,
                requests: 1000,
                failed: 0,
            },
            cpu_us_per_request: cpu,
            cpu_us_per_request_fixed: cpu.map(|c| c * 2.0),
            rss_loaded_kib: cpu.map(|_| 9000),
        }
    }

    #[test]
    fn medians_and_ratios_come_from_the_same_run() {
        let m = Measured {
            runs: vec![
                run(PathKind::Direct, 0.1, 100_000.0, None),
                run(PathKind::Direct, 0.3, 120_000.0, None),
                run(PathKind::Direct, 0.2, 110_000.0, None),
                run(PathKind::Weft, 0.4, 33_000.0, Some(30.0)),
                run(PathKind::Haproxy, 0.6, 30_000.0, Some(40.0)),
            ],
            rss_idle_kib: vec![
                (PathKind::Weft, Proto::Http1, 5000),
                (PathKind::Haproxy, Proto::Http1, 7000),
            ],
            under_reload: Vec::new(),
        };
        let rows = rows(&m);
        let weft = rows.iter().find(|r| r.path == PathKind::Weft).unwrap();
        assert!((weft.added_p50_ms.unwrap() - 0.2).abs() < 1e-9);
        assert!((weft.rps_vs_direct.unwrap() - 0.3).abs() < 1e-9);
        assert!((weft.rps_vs_haproxy.unwrap() - 1.1).abs() < 1e-9);
        assert!((weft.cpu_vs_haproxy.unwrap() - 0.75).abs() < 1e-9);
        assert!((weft.cpu_us_per_request_fixed.unwrap() - 60.0).abs() < 1e-9);
        assert!((weft.cpu_fixed_vs_haproxy.unwrap() - 0.75).abs() < 1e-9);
        assert!((weft.added_p50_vs_haproxy.unwrap() - 0.5).abs() < 1e-9);
        // HTTP/2 was not run: every one of its figures is reported missing.
        let gaps = missing(&rows);
        assert_eq!(gaps.len(), 3, "{gaps:?}");
        assert!(gaps.iter().all(|g| g.contains("http2: no run")));
        let table = markdown(&rows);
        assert!(table.contains("| weft | http1 | 0.400 |"), "{table}");
        assert!(table.contains("| 1.10 |"), "{table}");
        assert!(table.contains("| 30.0 | 0.75 | 60.0 | 0.75 |"), "{table}");
    }
}
