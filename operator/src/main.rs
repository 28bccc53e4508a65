//! `weft-operator`: the Weft control plane. Each subcommand's logic lives in
//! its own library module; this file only parses the command line and
//! dispatches.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft-operator", version, about = "The Weft control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML) generated from the Rust types.
    Crdgen(weft_operator::crdgen::CrdgenArgs),
    /// Run the control plane in a cluster (in-cluster config or KUBECONFIG).
    Run(Box<weft_operator::k8s::RunArgs>),
    /// Run the control plane over a directory of manifests, without a cluster.
    Local(Box<weft_operator::local::LocalArgs>),
    /// Print a manifest file with every pod and pod template injected.
    Inject(weft_operator::inject_docs::InjectArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen(args) => weft_operator::crdgen::run(&args),
        Command::Run(args) => weft_operator::k8s::run(*args),
        Command::Local(args) => weft_operator::local::run(*args),
        Command::Inject(args) => weft_operator::inject_docs::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-operator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
