//! `weft-demo`: the whole Weft mesh on this host (`make demo`), and the
//! cleanup after a crashed one (`make demo-down`).
#![forbid(unsafe_code)]

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use weft_api::duration::parse_duration;
use weft_e2e::demo::{self, UpOptions};
use weft_e2e::netns::Cleanup;

#[derive(Parser)]
#[command(
    name = "weft-demo",
    about = "The Weft mesh on this host: pods as network namespaces, the operator's local runtime, a proxy in every pod"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the mesh from MANIFESTS, send traffic, print a summary, clean up.
    Up {
        #[arg(long, default_value = "e2e/demo")]
        manifests: PathBuf,
        /// How long to send traffic.
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        duration: Duration,
        /// Requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Keep the mesh up after the summary, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Remove what a crashed demo left: weft-demo-* network namespaces and
    /// the processes in them, and the demo's working directory.
    Down,
}

/// Set once a signal started the cleanup: later failures are its doing.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return;
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unexpected failure");
        eprintln!("weft-demo: {message}");
    }));
    match Cli::parse().command {
        Command::Up {
            manifests,
            duration,
            rate,
            hold,
        } => up(
            &UpOptions {
                manifests,
                duration,
                rate,
            },
            hold,
        ),
        Command::Down => match demo::down() {
            Ok(done) => {
                println!("weft-demo: {done}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft-demo: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn up(options: &UpOptions, hold: bool) -> ExitCode {
    let slot: Arc<Mutex<Option<Cleanup>>> = Arc::default();
    on_signal_clean_up(slot.clone());
    let prepared = demo::prepare(options, |c| {
        if let Ok(mut s) = slot.lock() {
            *s = Some(c);
        }
    });
    let mut mesh = match prepared {
        Ok(mesh) => mesh,
        Err(e) => {
            eprintln!("weft-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| demo::run(&mut mesh, options, hold)));
    let mut ok = false;
    if let Ok(summary) = &ran {
        print!("{}", summary.render());
        ok = summary.load.sent > 0 && summary.load.failed == 0 && summary.direct.is_err();
        if !ok {
            eprintln!(
                "weft-demo: the mesh did not behave as expected (see above); logs in {}",
                mesh.logs().display()
            );
        }
        if hold {
            println!("\nweft-demo: the mesh is up; Ctrl-C removes it");
            loop {
                std::thread::park();
            }
        }
    }
    if !ok {
        // Keep the logs of a failed run; `make demo-down` removes them.
        let keep = std::env::temp_dir().join("weft-demo-logs");
        let _ = std::fs::remove_dir_all(&keep);
        if std::fs::rename(mesh.logs(), &keep).is_ok() {
            eprintln!("weft-demo: logs kept in {}", keep.display());
        }
    }
    let (processes, namespaces) = mesh.teardown();
    let dir = demo::workdir();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nweft-demo: cleaned up: stopped {processes} processes, removed {namespaces} network namespaces and {}",
        dir.display()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove everything the demo made and exit.
fn on_signal_clean_up(slot: Arc<Mutex<Option<Cleanup>>>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else { return };
    // Registered here, before the mesh exists, so no signal is missed.
    let signals = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    });
    let Ok((mut int, mut term, mut hup)) = signals else {
        return;
    };
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\nweft-demo: interrupted; cleaning up");
        let cleanup = slot.lock().ok().and_then(|mut s| s.take());
        if let Some(cleanup) = cleanup {
            let (processes, namespaces) = cleanup.run();
            eprintln!(
                "weft-demo: stopped {processes} processes, removed {namespaces} network namespaces"
            );
        }
        let _ = std::fs::remove_dir_all(demo::workdir());
        std::process::exit(130);
    });
}
