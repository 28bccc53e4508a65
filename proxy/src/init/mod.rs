//! `weft-proxy init`: installs the pod's iptables rules (IPv4, nat table).
//!
//! This module is the only part that runs processes: it validates the flags
//! ([`config`]), runs `iptables-*-save` to see which backend is in use and
//! what is installed ([`backend`], [`save`]), generates the script
//! ([`rules`]) and pipes it into `iptables-*-restore --noflush`. Everything
//! it decides is decided by those pure modules, which is where the tests are.

pub mod backend;
pub mod config;
pub mod rules;
pub mod save;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use weft_api::names::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};

use backend::{Backend, Choice, IptablesMode, Probe};
use config::InitConfig;
use rules::Script;
use save::Saved;

/// Flags of `weft-proxy init`. Ports and UID default to the `weft-api`
/// constants the sidecar itself uses.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Port of the inbound proxy; inbound TCP is redirected here.
    #[arg(long, value_name = "PORT", default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,
    /// Port of the outbound proxy; outbound TCP is redirected here.
    #[arg(long, value_name = "PORT", default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// UID the proxy runs as; its own outbound traffic is never redirected.
    #[arg(long, value_name = "UID", default_value_t = PROXY_UID)]
    pub proxy_uid: u32,
    /// Admin server port; inbound traffic to it is never redirected, so
    /// kubelet probes reach it directly.
    #[arg(long, value_name = "PORT", default_value_t = ADMIN_PORT)]
    pub admin_port: u16,
    /// Inbound ports never redirected: comma-separated ports or ranges
    /// (`22,8000-8100`).
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<String>,
    /// Outbound destination ports never redirected: comma-separated ports
    /// or ranges (`5432,9000-9100`).
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<String>,
    /// Outbound destinations never redirected: comma-separated IPv4 CIDRs
    /// (`10.0.0.0/8,169.254.169.254/32`).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub skip_subnets: Vec<String>,
    /// Which iptables backend to use; `auto` follows the one already holding
    /// rules, else prefers nft.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = IptablesMode::Auto)]
    pub iptables_mode: IptablesMode,
    /// Print the `iptables-restore` input instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
}

/// Validates the flags, then installs (or, with `--dry-run`, prints) the rules.
pub fn run(args: &InitArgs) -> Result<()> {
    let config = InitConfig::from_args(args)?;
    if config.dry_run {
        return dry_run(&config);
    }
    let (choice, current) = inspect(config.mode)?;
    let script = rules::restore_script(&config.rules, &current);
    restore(choice.backend, &script.text)?;
    eprintln!("weft-proxy init: {}", summary(&choice, &script, "applied"));
    Ok(())
}

/// Prints the script to stdout and changes nothing. Reading the current
/// rules is harmless, so we do, to print exactly what would be applied; where
/// no backend runs (a laptop) we show the script for an empty table instead.
fn dry_run(config: &InitConfig) -> Result<()> {
    let (script, note) = match inspect(config.mode) {
        Ok((choice, current)) => {
            let script = rules::restore_script(&config.rules, &current);
            let note = summary(&choice, &script, "would apply");
            (script, note)
        }
        Err(e) => {
            let script = rules::restore_script(&config.rules, &Saved::default());
            let note = format!("{e:#}; showing the rules for an empty nat table");
            (script, note)
        }
    };
    print!("{}", script.text);
    eprintln!("weft-proxy init (dry run): {note}");
    Ok(())
}

/// The log line: what was done, with which command, and why that backend.
fn summary(choice: &Choice, script: &Script, verb: &str) -> String {
    format!(
        "{verb} {} rules (replacing {} existing jumps) with {} --noflush ({} backend: {})",
        script.appended,
        script.deleted,
        choice.backend.restore_command(),
        choice.backend,
        choice.reason,
    )
}

/// Picks the backend and reads its current rules.
fn inspect(mode: IptablesMode) -> Result<(Choice, Saved)> {
    let forced = |backend, reason| -> Result<(Choice, Saved)> {
        let saved = run_save(backend)?;
        Ok((Choice { backend, reason }, saved))
    };
    match mode {
        IptablesMode::Nft => forced(Backend::Nft, "--iptables-mode nft"),
        IptablesMode::Legacy => forced(Backend::Legacy, "--iptables-mode legacy"),
        IptablesMode::Auto => detect(),
    }
}

/// `auto`: runs both `*-save` commands and lets [`backend::choose`] decide.
fn detect() -> Result<(Choice, Saved)> {
    let nft = run_save(Backend::Nft);
    let legacy = run_save(Backend::Legacy);
    let probe = |r: &Result<Saved>| match r {
        Ok(saved) => Probe::Rules(saved.rules.len()),
        Err(_) => Probe::Unavailable,
    };
    let choice = match backend::choose(probe(&nft), probe(&legacy)) {
        Ok(choice) => choice,
        Err(e) => bail!(
            "{e} (nft: {}; legacy: {}); is iptables 1.8 or later installed?",
            reason(&nft),
            reason(&legacy)
        ),
    };
    let saved = match choice.backend {
        Backend::Nft => nft?,
        Backend::Legacy => legacy?,
    };
    Ok((choice, saved))
}

fn reason(r: &Result<Saved>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("{e:#}"),
    }
}

/// Runs `<backend>-save` (all tables: `auto` counts rules in any of them).
fn run_save(backend: Backend) -> Result<Saved> {
    let cmd = backend.save_command();
    let output = Command::new(cmd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    check(cmd, &output, "")?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(save::parse_save(&text))
}

/// Pipes `script` into `<backend>-restore --noflush`.
fn restore(backend: Backend, script: &str) -> Result<()> {
    let cmd = backend.restore_command();
    let mut child = Command::new(cmd)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd} --noflush"))?;
    // A write error (the command exited early) is reported after its exit
    // status, which says why.
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {cmd} --noflush"))?;
    check(&format!("{cmd} --noflush"), &output, script)?;
    written.with_context(|| format!("writing the rules to {cmd} --noflush"))
}

/// Fails with the command, its status, its stderr and, when iptables names
/// one, the offending line of `script`.
fn check(cmd: &str, output: &Output, script: &str) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut msg = format!("{cmd} failed ({}): {}", output.status, stderr.trim());
    if let Some((n, line)) = rules::failed_line(&stderr, script) {
        msg.push_str(&format!("\n  script line {n}: {line}"));
    }
    bail!(msg)
}
