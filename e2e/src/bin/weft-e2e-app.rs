//! `weft-e2e-app`: the sample application of the end-to-end tests and demo.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft-e2e-app",
    about = "Sample app for Weft's end-to-end tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer every HTTP request with NAME.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
    },
    /// GET PATH from ADDR and print the body; fails unless the status is 2xx.
    Get { addr: SocketAddr, path: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve { listen, name } => weft_e2e::app::serve(listen, name).await,
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-e2e-app: {e}");
            ExitCode::FAILURE
        }
    }
}
