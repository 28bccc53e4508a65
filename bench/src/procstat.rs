//! CPU time and memory of a process, from `/proc`: what a proxy costs.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on
/// every Linux architecture Weft runs on).
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
        .with_context(|| format!("/proc/{pid}/stat: unexpected format"))
}

/// utime + stime (fields 14 and 15), counted after the parenthesised
/// command name, which may itself hold spaces.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split(' ').skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size now and its peak since the last [`reset_peak`], in KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("/proc/{pid}/status has no {name}"))?;
        let kib = line.split_whitespace().nth(1).unwrap_or_default();
        match kib.parse() {
            Ok(v) => Ok(v),
            Err(_) => bail!("/proc/{pid}/status: {line:?}"),
        }
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Starts a new peak-RSS window (`VmHWM` back to the current RSS).
pub fn reset_peak(pid: u32) -> Result<()> {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_past_a_name_with_spaces() {
        let stat = "1234 (weft proxy) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn measures_this_process() {
        let pid = std::process::id();
        let (rss, peak) = rss_kib(pid).unwrap();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(busy.elapsed());
        }
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
    }
}
