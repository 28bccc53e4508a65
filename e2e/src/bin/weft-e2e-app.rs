//! `weft-e2e-app`: the sample application of the end-to-end tests and demo.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::StatusCode;
use tokio::signal::unix::{SignalKind, signal};
use weft_api::duration::parse_duration;
use weft_e2e::app::Role;
use weft_e2e::load::LoadOptions;

#[derive(Parser)]
#[command(
    name = "weft-e2e-app",
    about = "Sample app for Weft's end-to-end tests and demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A backend replica: answer every HTTP request with NAME.
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, env = "POD_NAME")]
        name: String,
        /// The status of every answer: 503 plays a failing replica.
        #[arg(long, default_value = "200", value_parser = parse_status)]
        status: StatusCode,
    },
    /// A frontend: on every request call `GET /` on BACKEND (a Service's
    /// virtual IP and port) and answer `NAME -> <its answer>`.
    Frontend {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        #[arg(long, env = "POD_NAME")]
        name: String,
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long, value_parser = parse_duration, default_value = "2s")]
        timeout: Duration,
    },
    /// Send requests to TARGET and print a JSON report: answers per
    /// replica with first and last times, failures. Stops after
    /// --requests, --duration, or SIGTERM/SIGINT.
    Load(LoadOptions),
    /// GET PATH from ADDR and print the body; fails unless the status is 2xx.
    Get { addr: SocketAddr, path: String },
    /// Open a TCP connection to ADDR and close it (a readiness probe).
    Probe { addr: SocketAddr },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve {
            listen,
            name,
            status,
        } => weft_e2e::app::serve(listen, name, Role::Backend { status }).await,
        Command::Frontend {
            listen,
            name,
            backend,
            timeout,
        } => weft_e2e::app::serve(listen, name, Role::Frontend { backend, timeout }).await,
        Command::Load(options) => load(options).await,
        Command::Get { addr, path } => match weft_e2e::app::get(addr, &path).await {
            Ok((status, body)) => {
                print!("{body}");
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("status {status}")))
                }
            }
            Err(e) => Err(e),
        },
        Command::Probe { addr } => tokio::net::TcpStream::connect(addr).await.map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-e2e-app: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An HTTP status code a server may answer with: 200 to 599.
fn parse_status(value: &str) -> Result<StatusCode, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("{value:?} is not a status code from 200 to 599"))
}

async fn load(options: LoadOptions) -> std::io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        flag.store(true, Ordering::Relaxed);
    });
    let report = weft_e2e::load::run(options, stop).await;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(std::io::Error::other)?
    );
    Ok(())
}
