//! Structured logs for every subcommand: `--log` / `WEFT_LOG` (an
//! `EnvFilter`) and `--log-format` / `WEFT_LOG_FORMAT` (`plain` or `json`),
//! as the proxy reads them. Logs go to standard error.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use weft_api::names::env;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = env::LOG, default_value = "info")]
    pub log: String,
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

/// Installs the global subscriber; one already installed (by a test or an
/// embedding) is kept.
pub fn init(args: &LogArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("{}: invalid filter {:?}", env::LOG, args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Plain => builder.try_init(),
    };
    Ok(())
}
