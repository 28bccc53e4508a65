//! `weft-bench`: runs the benchmarks and writes `<out>/<date>.json` and
//! `<out>/<date>.md`. `make bench` runs it in full; `make bench-smoke` for
//! a few seconds, failing unless every figure was produced.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use weft_bench::control::{ControlOptions, PropagationOptions};
use weft_bench::dataplane::{self, Settings};
use weft_bench::instructions::{self, Counted, Counting};
use weft_bench::load::Proto;
use weft_bench::report::{self, Row};
use weft_bench::rig::{self, Bins};

#[derive(Parser)]
#[command(name = "weft-bench", about = "Weft's benchmarks")]
struct Args {
    /// A few seconds of each case: checks that every figure is produced.
    #[arg(long)]
    smoke: bool,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The release binaries (`weft-proxy`, `weft-e2e-app`, `weft-operator`).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
    /// Shorter runs (seconds per fixed-rate and per saturation run), for
    /// comparing two builds quickly; the full run's figures are the ones
    /// to report.
    #[arg(long)]
    seconds: Option<u64>,
    /// Only one half, for iterating on it: prints that half's tables and
    /// writes no results.
    #[arg(long, value_enum)]
    only: Option<Half>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Half {
    Dataplane,
    Control,
    /// The instruction counts only (each pair under callgrind).
    Instructions,
    /// Starts the backend and the Weft and HAProxy pairs, prints where they
    /// listen and their pids, and waits until standard input ends: for
    /// profiling under a load of your own (`perf record -p`, `h2load`).
    Hold,
}

#[derive(Serialize)]
struct Results {
    date: String,
    machine: String,
    settings: String,
    dataplane: Vec<Row>,
    runs: dataplane::Measured,
    instructions: Vec<Counted>,
    control: weft_bench::control::ControlFigures,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let settings = if args.smoke {
        Settings {
            rate: 500,
            connections: 10,
            fixed_duration: Duration::from_secs(2),
            saturation_duration: Duration::from_secs(1),
            repetitions: 1,
        }
    } else {
        Settings {
            rate: 2000,
            connections: 50,
            fixed_duration: Duration::from_secs(20),
            saturation_duration: Duration::from_secs(10),
            repetitions: 3,
        }
    };
    let settings = match args.seconds {
        Some(s) => Settings {
            fixed_duration: Duration::from_secs(s),
            saturation_duration: Duration::from_secs(s),
            ..settings
        },
        None => settings,
    };
    let bins = Bins {
        proxy: args.bin_dir.join("weft-proxy"),
        app: args.bin_dir.join("weft-e2e-app"),
        haproxy: args.haproxy.clone(),
        callgrind: None,
    };
    if args.only == Some(Half::Hold) {
        return hold(&bins);
    }
    if args.only == Some(Half::Control) {
        let control = weft_bench::control::run(&control_options(&args))?;
        println!("{}", weft_bench::control::markdown(&control));
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let counting = counting(&args);
    if args.only == Some(Half::Instructions) {
        let counted = instructions::measure(&bins, dir.path(), counting)?;
        println!("{}", instructions::markdown(&counted));
        return Ok(());
    }
    let measured = dataplane::measure(&bins, dir.path(), &settings)?;
    let rows = report::rows(&measured);
    if args.only == Some(Half::Dataplane) {
        let tables = report::markdown(&rows) + &report::reload_markdown(&measured);
        println!("{tables}");
        return Ok(());
    }
    let counted = instructions::measure(&bins, dir.path(), counting)?;
    let control = weft_bench::control::run(&control_options(&args))?;
    let date = weft_bench::today(SystemTime::now());
    let results = Results {
        date: date.clone(),
        machine: weft_bench::machine(),
        settings: format!("{settings:?}"),
        dataplane: rows.clone(),
        runs: measured,
        instructions: counted,
        control,
    };
    let table = format!(
        "{}{}{}\n{}",
        report::markdown(&rows),
        report::reload_markdown(&results.runs),
        instructions::markdown(&results.instructions),
        weft_bench::control::markdown(&results.control)
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    let json = args.out.join(format!("{date}.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(args.out.join(format!("{date}.md")), &table)?;
    println!("{table}\nresults: {}", json.display());
    let mut missing = report::missing(&rows);
    missing.extend(report::reload_gaps(&results.runs));
    missing.extend(instructions::missing(&results.instructions));
    if results.control.propagation.is_none() {
        missing.push("control plane: propagation".into());
    }
    anyhow::ensure!(missing.is_empty(), "figures missing: {missing:?}");
    let failed: u64 = results.runs.under_reload.iter().map(|r| r.failed).sum();
    anyhow::ensure!(
        failed == 0,
        "{failed} requests failed while the Weft pair reloaded"
    );
    Ok(())
}

fn hold(bins: &Bins) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = rig::Pki::new()?;
    let (_backend, backend) = rig::backend(bins, dir.path())?;
    let weft = rig::weft(bins, &pki, dir.path(), backend)?;
    let h1 = rig::haproxy(bins, &pki, dir.path(), backend, Proto::Http1)?;
    let h2 = rig::haproxy(bins, &pki, dir.path(), backend, Proto::Http2)?;
    println!("backend {backend}");
    for (name, pair) in [
        ("weft", &weft),
        ("haproxy-http1", &h1),
        ("haproxy-http2", &h2),
    ] {
        let [client, server] = pair.pids();
        println!("{name} {} pids {client} {server}", pair.entry);
    }
    println!("holding until standard input ends");
    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
    Ok(())
}

/// Requests sent to each pair under callgrind (valgrind runs it some
/// fifty times slower): enough for the per-request figure to settle.
fn counting(args: &Args) -> Counting {
    if args.smoke {
        Counting {
            warmup: 50,
            requests: 200,
            connections: 10,
        }
    } else {
        Counting {
            warmup: 2000,
            requests: 5000,
            connections: 50,
        }
    }
}

/// The control-plane benchmarks at full scale (they take seconds); the
/// smoke run repeats each once.
fn control_options(args: &Args) -> ControlOptions {
    let mut propagation = PropagationOptions::new(
        args.bin_dir.join("weft-operator"),
        args.bin_dir.join("weft-proxy"),
    );
    let mut options = ControlOptions::default();
    if args.smoke {
        options.runs = 1;
        propagation.changes = 1;
    }
    options.propagation = Some(propagation);
    options
}
