//! Structured logs for every subcommand: `WEFT_LOG` (an `EnvFilter`) and
//! `WEFT_LOG_FORMAT` (`plain` or `json`), as the proxy reads them.

use anyhow::{Context, Result};
use weft_api::names::env;

/// Installs the global subscriber, to standard error.
pub fn init() -> Result<()> {
    let filter = std::env::var(env::LOG).unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .with_context(|| format!("{}: invalid filter {filter:?}", env::LOG))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match std::env::var(env::LOG_FORMAT).as_deref() {
        Ok("json") => builder.json().init(),
        Ok("plain") | Err(_) => builder.init(),
        Ok(other) => anyhow::bail!("{}: {other:?} is not plain or json", env::LOG_FORMAT),
    }
    Ok(())
}
