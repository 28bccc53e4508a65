//! What the proxy currently runs on: the routing table and identity in use
//! (each swapped whole, read without locks), and the metrics.

use std::path::PathBuf;
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
    /// The directory the files were read from (the resolved `..data` snapshot).
    pub source: PathBuf,
    /// `sha256:<hex>` of the files' contents.
    pub digest: String,
    pub generation: u64,
    pub loaded_at: SystemTime,
}

#[derive(Default)]
pub struct State {
    pub routes: ArcSwapOption<Loaded<Table>>,
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
