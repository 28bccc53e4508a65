//! `weft-operator`: the Weft control plane.
//!
//! The controller, certificate authority, admission webhook and local
//! runtime arrive with the control-plane and injection work; until then the
//! binary only identifies itself, so images and charts can be wired early.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weft-operator",
    version,
    about = "The Weft control plane (not yet implemented: see docs/ARCHITECTURE.md, Status)"
)]
struct Cli {}

fn main() {
    Cli::parse();
    eprintln!("weft-operator: the control plane is not implemented yet; see docs/ARCHITECTURE.md");
    std::process::exit(2);
}
