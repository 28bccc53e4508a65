//! Weft's benchmarks (`make bench`): the data path against no mesh and an
//! HAProxy pair, and the control plane at scale. Figures go to
//! `bench/results/<date>.json` and a Markdown table; ratios to the direct
//! path and to the peer, from the same run, are what count on a shared,
//! noisy machine.
#![forbid(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod haproxy;
pub mod instructions;
pub mod load;
pub mod procstat;
pub mod report;
pub mod rig;

use std::time::SystemTime;

/// `t`'s UTC date, `YYYY-MM-DD`.
pub fn today(t: SystemTime) -> String {
    let mut date = weft_proxy::access_log::rfc3339(t);
    date.truncate("YYYY-MM-DD".len());
    date
}

/// Cores, CPU model and kernel: what the figures were measured on.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates_are_utc_days() {
        let at = |s: u64| today(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(951_782_400), "2000-02-29");
        assert_eq!(at(1_795_391_999), "2026-11-22");
    }
}
