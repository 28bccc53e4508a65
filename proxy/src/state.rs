//! What the proxy currently runs on: the routing table and identity in use
//! (each swapped whole, read without locks), and the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::table::Table;

/// A configuration in use, with where it came from.
pub struct Loaded<T> {
    pub value: T,
    /// Where it was read: the directory of the files (the resolved `..data`
    /// snapshot), or `api:configmap/<namespace>/<name>@<resourceVersion>`.
    pub source: String,
    /// The key it was read from, when the source has several (routes).
    pub key: Option<&'static str>,
    /// `sha256:<hex>` of the files' contents (see [`digest`]).
    pub digest: String,
    pub generation: u64,
    pub loaded_at: SystemTime,
}

#[derive(Default)]
pub struct State {
    /// The table is shared with the other source when both delivered the
    /// same bytes (see `reload`).
    pub routes: ArcSwapOption<Loaded<Arc<Table>>>,
    pub identity: ArcSwapOption<Loaded<Identity>>,
    pub metrics: Metrics,
    draining: AtomicBool,
}

impl State {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Ready once both configurations are loaded, until draining starts.
    pub fn is_ready(&self) -> bool {
        self.routes.load().is_some()
            && self.identity.load().is_some()
            && !self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// `sha256:<hex>` over `parts`, each prefixed with its length so that
/// moving bytes from one part to the next changes the digest.
pub fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}
