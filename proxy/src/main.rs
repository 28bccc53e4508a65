//! `weft-proxy`: the sidecar (`run`) and its pod-network setup (`init`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft-proxy", version, about = "The Weft sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: outbound, inbound and admin listeners.
    Run(Box<weft_proxy::run::RunArgs>),
    /// Install the pod's iptables rules (the init container).
    Init(weft_proxy::init::InitArgs),
    /// Wait until the proxy is ready (the classic sidecar's postStart hook).
    WaitReady(weft_proxy::wait_ready::WaitReadyArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => weft_proxy::run::main(*args),
        Command::Init(args) => weft_proxy::init::run(&args),
        Command::WaitReady(args) => weft_proxy::wait_ready::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
