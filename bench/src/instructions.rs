//! Instructions per request, counted by callgrind: the CPU figure that
//! does not move with what else the machine is doing. CPU seconds per
//! request are what the targets name, but on a shared two-core machine they
//! swing ±40% between repetitions; the instructions a pair executes for
//! the same requests repeat within 0.1%, so this is what tells two builds,
//! or Weft and HAProxy, apart. (It counts user space only: syscalls are
//! compared separately, and a cycle is not an instruction.)
//!
//! Each pair is started afresh under `valgrind --tool=callgrind`, warmed
//! up, its counters zeroed with `callgrind_control`, sent a fixed number of
//! requests by `h2load` (HTTP/1.1 with `--h1`), and its counters read.
//! Every command runs under coreutils' `timeout`: `callgrind_control`
//! reaches an idle process through ptrace and would wait for ever where
//! ptrace is not allowed, and `h2load -n` waits for ever for a request a
//! stuck proxy never answers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use crate::dataplane::PathKind;
use crate::load::{self, Proto};
use crate::rig::{self, Bins, Pair, Pki};

/// How many requests, over how many connections.
#[derive(Debug, Clone, Copy)]
pub struct Counting {
    pub warmup: u64,
    pub requests: u64,
    pub connections: u32,
}

/// The longest any one command may take.
const COMMAND_LIMIT: &str = "300";
/// Above this, counters just zeroed were not zeroed: an idle proxy runs
/// a few thousand instructions a second, a request tens of thousands.
const ZEROED_MAX: u64 = 1_000_000;

/// One pair's instructions per request, each proxy's and both together.
#[derive(Debug, Clone, Serialize)]
pub struct Counted {
    pub path: PathKind,
    pub proto: Proto,
    pub requests: u64,
    pub client_per_request: u64,
    pub server_per_request: u64,
}

impl Counted {
    pub fn pair_per_request(&self) -> u64 {
        self.client_per_request + self.server_per_request
    }
}

/// The Weft and HAProxy pairs, for both protocols, each under callgrind.
pub fn measure(bins: &Bins, dir: &Path, counting: Counting) -> Result<Vec<Counted>> {
    let pki = Pki::new()?;
    let (_backend, backend) = rig::backend(bins, dir)?;
    let mut counted = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        for path in [PathKind::Weft, PathKind::Haproxy] {
            let run_dir = dir.join(format!("callgrind-{}-{}", path.name(), proto.name()));
            std::fs::create_dir_all(&run_dir)?;
            let vgdb = run_dir.join("vgdb");
            let under = Bins {
                callgrind: Some(vgdb.clone()),
                ..bins.clone()
            };
            let pair = match path {
                PathKind::Weft => rig::weft(&under, &pki, &run_dir, backend)?,
                PathKind::Haproxy => rig::haproxy(&under, &pki, &run_dir, backend, proto)?,
                PathKind::Direct => bail!("the direct path has no proxy to count"),
            };
            let c = count(pair, &vgdb, path, proto, counting)
                .with_context(|| format!("counting {} over {}", path.name(), proto.name()))?;
            eprintln!(
                "weft-bench: {:>7} {}: {} + {} instructions per request",
                path.name(),
                proto.name(),
                c.client_per_request,
                c.server_per_request
            );
            counted.push(c);
        }
    }
    Ok(counted)
}

fn count(
    mut pair: Pair,
    vgdb: &Path,
    path: PathKind,
    proto: Proto,
    counting: Counting,
) -> Result<Counted> {
    warm_up(&pair, proto, counting)?;
    let control = Control {
        vgdb,
        pids: pair.pids(),
    };
    control.zero()?;
    let load = requests(pair.entry, proto, counting.requests, counting.connections)?;
    ensure!(
        load.failed == 0 && load.requests == counting.requests,
        "{} of {} requests done, {} failed",
        load.requests,
        counting.requests,
        load.failed
    );
    let [client, server] = control.totals()?;
    pair.check_running()?;
    Ok(Counted {
        path,
        proto,
        requests: load.requests,
        client_per_request: client / load.requests,
        server_per_request: server / load.requests,
    })
}

/// Sends the warm-up until all of it succeeds, so that the pooled
/// connections between the two proxies are open before the count: under
/// valgrind a TLS handshake takes seconds, and the first requests can
/// outlast the connect timeout.
fn warm_up(pair: &Pair, proto: Proto, counting: Counting) -> Result<()> {
    const TRIES: usize = 5;
    for _ in 0..TRIES {
        let warm = requests(pair.entry, proto, counting.warmup, counting.connections)?;
        if warm.failed == 0 {
            return Ok(());
        }
        eprintln!("weft-bench: {} of the warm-up failed; again", warm.failed);
    }
    bail!("the warm-up failed {TRIES} times")
}

/// `n` requests over `connections` (HTTP/2: 10 streams at a time on each).
fn requests(
    target: SocketAddr,
    proto: Proto,
    n: u64,
    connections: u32,
) -> Result<load::Saturation> {
    let mut command = Command::new("timeout");
    command.args([COMMAND_LIMIT, "h2load"]);
    command.args(["-n", &n.to_string(), "-c", &connections.to_string()]);
    match proto {
        Proto::Http1 => command.arg("--h1"),
        Proto::Http2 => command.args(["-m", "10"]),
    };
    command.arg(format!("http://{target}/"));
    load::h2load(&mut command)
}

/// `callgrind_control` for one pair's two processes.
struct Control<'a> {
    vgdb: &'a Path,
    pids: [u32; 2],
}

impl Control<'_> {
    /// Zeroes both counters, and checks that they were: the tool prints
    /// the same whether or not the request reached the process.
    fn zero(&self) -> Result<()> {
        for pid in self.pids {
            self.run("-z", pid)?;
        }
        let after = self.totals()?;
        ensure!(
            after.iter().all(|n| *n < ZEROED_MAX),
            "counters not zeroed: {after:?} instructions just after"
        );
        Ok(())
    }

    /// The instructions each process has executed since its counters were
    /// zeroed, over all its threads.
    fn totals(&self) -> Result<[u64; 2]> {
        let [a, b] = self.pids.map(|pid| {
            let out = self.run("-e", pid)?;
            parse_totals(&out).with_context(|| format!("callgrind_control -e {pid} printed: {out}"))
        });
        Ok([a?, b?])
    }

    fn run(&self, action: &str, pid: u32) -> Result<String> {
        let output = Command::new("timeout")
            .args([COMMAND_LIMIT, "callgrind_control"])
            .arg(format!("--vgdb-prefix={}", self.vgdb.display()))
            .arg(action)
            .arg(pid.to_string())
            .output()
            .context("running callgrind_control (Debian: valgrind)")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // It exits 0 even when it found no such process; it says so instead.
        if !output.status.success() || !text.contains(&format!("PID {pid}")) {
            bail!(
                "callgrind_control {action} {pid} ({}; is ptrace allowed?): {}{text}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(text)
    }
}

/// The sum over the `Th N  <count>` lines that follow `Totals:` (from
/// thread 10 on, `ThNN  <count>`).
fn parse_totals(out: &str) -> Option<u64> {
    let (_, after) = out.split_once("Totals:")?;
    let counts: Vec<u64> = after
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Th"))
        .map(|l| l.split_whitespace().nth(1)?.replace(',', "").parse().ok())
        .collect::<Option<_>>()?;
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// The table: each pair's instructions per request and Weft's ratio.
pub fn markdown(counted: &[Counted]) -> String {
    let mut out = String::from(
        "\n| instructions per request (callgrind) | proto | client side | server side | both | × haproxy |\n|---|---|---|---|---|---|\n",
    );
    for c in counted {
        let haproxy = counted
            .iter()
            .find(|h| h.path == PathKind::Haproxy && h.proto == c.proto);
        let ratio = match (c.path, haproxy) {
            (PathKind::Weft, Some(h)) => {
                format!(
                    "{:.2}",
                    c.pair_per_request() as f64 / h.pair_per_request() as f64
                )
            }
            _ => "—".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {ratio} |\n",
            c.path.name(),
            c.proto.name(),
            c.client_per_request,
            c.server_per_request,
            c.pair_per_request()
        ));
    }
    out
}

/// Both pairs counted for both protocols; the names of those missing.
pub fn missing(counted: &[Counted]) -> Vec<String> {
    let mut missing = Vec::new();
    for proto in [Proto::Http1, Proto::Http2] {
        for path in [PathKind::Weft, PathKind::Haproxy] {
            let found = counted
                .iter()
                .any(|c| c.path == path && c.proto == proto && c.pair_per_request() > 0);
            if !found {
                missing.push(format!("{}/{}: instructions", path.name(), proto.name()));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_threads_totals() {
        let out = "PID 12233: weft-proxy run\n\n  Totals:          Ir \n   Th 1  302,475,001 \n   Th 2       1,024 \n   Th10          10 \n\n";
        assert_eq!(parse_totals(out), Some(302_476_035));
        let zeroed = "PID 12233: sleep 4\n\n  Totals:Ir \n   Th 1   0 \n\n";
        assert_eq!(parse_totals(zeroed), Some(0));
        assert_eq!(parse_totals("PID 1: x\n  OK.\n"), None);
        assert_eq!(parse_totals("  Totals: Ir\n   Th 1  lots\n"), None);
    }

    #[test]
    fn weft_is_related_to_haproxy_of_the_same_protocol() {
        let c = |path, proto, client, server| Counted {
            path,
            proto,
            requests: 5000,
            client_per_request: client,
            server_per_request: server,
        };
        let counted = [
            c(PathKind::Weft, Proto::Http1, 38_000, 37_000),
            c(PathKind::Haproxy, Proto::Http1, 44_000, 45_000),
            c(PathKind::Weft, Proto::Http2, 55_000, 56_000),
            c(PathKind::Haproxy, Proto::Http2, 33_000, 33_000),
        ];
        let table = markdown(&counted);
        assert!(
            table.contains("| weft | http1 | 38000 | 37000 | 75000 | 0.84 |"),
            "{table}"
        );
        assert!(
            table.contains("| weft | http2 | 55000 | 56000 | 111000 | 1.68 |"),
            "{table}"
        );
        assert!(
            table.contains("| haproxy | http2 | 33000 | 33000 | 66000 | — |"),
            "{table}"
        );
        assert!(missing(&counted).is_empty());
        assert_eq!(missing(&counted[..3]), ["haproxy/http2: instructions"]);
    }
}
