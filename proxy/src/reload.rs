//! Hot reload of the mounted `routes/` and `identity/` directories.
//!
//! The kubelet updates a mounted ConfigMap or Secret by writing a new hidden
//! directory and renaming a `..data` symlink over the old one. So we watch
//! the directory (not the files), resolve `..data` once and read every key
//! through it as one snapshot, debounce bursts, and poll slowly as a
//! backstop for missed events. A snapshot is parsed and validated before it
//! replaces the one in use; a bad one is logged with its file and reason,
//! counted, and the last good one stays.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use weft_api::RoutesTable;
use weft_api::names::{CERT_FILE, KEY_FILE, KUBELET_DATA_LINK, ROUTES_FILE, TRUST_BUNDLE_FILE};

use crate::identity::{Expected, Identity, IdentityFiles, unix_seconds};
use crate::metrics::{Kind, KindLabels};
use crate::state::{Loaded, State};
use crate::table::{Pod, Table};

/// The files of one directory, read through one resolution of `..data`.
pub struct Snapshot {
    pub source: PathBuf,
    pub contents: Vec<Vec<u8>>,
    pub digest: String,
}

/// Reads `names` from `dir` as one consistent snapshot.
pub fn read_snapshot(dir: &Path, names: &[&str]) -> io::Result<Snapshot> {
    // The kubelet deletes the old snapshot right after the swap, so a read
    // racing it finds a file gone; resolving `..data` again fixes that.
    let mut attempt = 0;
    loop {
        let source = resolve(dir)?;
        let read: io::Result<Vec<Vec<u8>>> = names
            .iter()
            .map(|name| {
                std::fs::read(source.join(name)).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))
                })
            })
            .collect();
        match read {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 2 => attempt += 1,
            Err(e) => return Err(e),
            Ok(contents) => {
                let digest = digest(&contents);
                return Ok(Snapshot {
                    source,
                    contents,
                    digest,
                });
            }
        }
    }
}

/// The directory the files really live in: `dir/..data` resolved, or `dir`
/// itself when it is a plain directory (a manual run).
fn resolve(dir: &Path) -> io::Result<PathBuf> {
    let link = dir.join(KUBELET_DATA_LINK);
    match std::fs::read_link(&link) {
        Ok(target) => Ok(dir.join(target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(link),
        Err(e) => Err(e),
    }
}

/// `sha256:<hex>` over the files, each prefixed with its length so that
/// moving bytes between files changes the digest.
fn digest(contents: &[Vec<u8>]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in contents {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c);
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Loads both configurations into `state`, remembering what it last saw so
/// that an unchanged snapshot (or the same bad one) is not reprocessed.
pub struct Loader {
    state: Arc<State>,
    pub routes_dir: PathBuf,
    pub identity_dir: PathBuf,
    pod: Pod,
    expected: Expected,
    provider: Arc<CryptoProvider>,
    last_routes: Option<String>,
    last_identity: Option<String>,
    identity_loads: u64,
}

impl Loader {
    pub fn new(
        state: Arc<State>,
        routes_dir: PathBuf,
        identity_dir: PathBuf,
        pod: Pod,
        expected: Expected,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            state,
            routes_dir,
            identity_dir,
            pod,
            expected,
            provider,
            last_routes: None,
            last_identity: None,
            identity_loads: 0,
        }
    }

    pub fn reload_all(&mut self) {
        self.reload_routes();
        self.reload_identity();
    }

    pub fn reload_routes(&mut self) {
        let outcome = read_snapshot(&self.routes_dir, &[ROUTES_FILE]);
        if !changed(&mut self.last_routes, &outcome) {
            return;
        }
        let result = outcome.map_err(|e| e.to_string()).and_then(|snap| {
            let table = self.parse_routes(&snap.contents[0])?;
            Ok((snap, table))
        });
        match result {
            Ok((snap, table)) => {
                let generation = table.generation;
                self.publish_routes(snap, table, generation);
            }
            Err(reason) => self.refuse(Kind::Routes, &self.routes_dir.join(ROUTES_FILE), &reason),
        }
    }

    fn parse_routes(&self, bytes: &[u8]) -> Result<Table, String> {
        let routes = RoutesTable::from_json(bytes).map_err(|e| e.to_string())?;
        if let Some(ns) = &self.pod.namespace
            && &routes.namespace != ns
        {
            return Err(format!(
                "table is for namespace {:?}, this pod is in {ns:?}",
                routes.namespace
            ));
        }
        Ok(Table::new(&routes, &self.pod))
    }

    fn publish_routes(&self, snap: Snapshot, table: Table, generation: u64) {
        let previous = self.state.routes.load().as_ref().map(|l| l.generation);
        tracing::info!(
            generation,
            ?previous,
            digest = %snap.digest,
            source = %snap.source.display(),
            "routes loaded"
        );
        self.record(Kind::Routes, generation);
        self.state.routes.store(Some(Arc::new(Loaded {
            value: table,
            source: snap.source,
            digest: snap.digest,
            generation,
            loaded_at: SystemTime::now(),
        })));
    }

    pub fn reload_identity(&mut self) {
        let outcome = read_snapshot(
            &self.identity_dir,
            &[CERT_FILE, KEY_FILE, TRUST_BUNDLE_FILE],
        );
        if !changed(&mut self.last_identity, &outcome) {
            return;
        }
        let result = outcome.map_err(|e| e.to_string()).and_then(|snap| {
            let files = IdentityFiles {
                cert: &snap.contents[0],
                key: &snap.contents[1],
                trust_bundle: &snap.contents[2],
            };
            let identity =
                Identity::load(&files, &self.expected, &self.provider, SystemTime::now())
                    .map_err(|e| e.to_string())?;
            Ok((snap, identity))
        });
        match result {
            Ok((snap, identity)) => {
                self.identity_loads += 1;
                tracing::info!(
                    identity = %identity.id,
                    not_after = identity.not_after,
                    digest = %snap.digest,
                    source = %snap.source.display(),
                    "identity loaded"
                );
                self.record(Kind::Identity, self.identity_loads);
                self.state.metrics.cert_expiry.set(identity.not_after);
                self.state.identity.store(Some(Arc::new(Loaded {
                    value: identity,
                    source: snap.source,
                    digest: snap.digest,
                    generation: self.identity_loads,
                    loaded_at: SystemTime::now(),
                })));
            }
            Err(reason) => self.refuse(Kind::Identity, &self.identity_dir, &reason),
        }
    }

    fn record(&self, kind: Kind, generation: u64) {
        let labels = KindLabels { kind };
        let m = &self.state.metrics;
        m.config_generation
            .get_or_create(&labels)
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        m.config_reload_timestamp
            .get_or_create(&labels)
            .set(unix_seconds(SystemTime::now()));
    }

    fn refuse(&self, kind: Kind, path: &Path, reason: &str) {
        tracing::error!(
            ?kind,
            path = %path.display(),
            %reason,
            "configuration refused; keeping the last good one"
        );
        self.state
            .metrics
            .config_reload_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }
}

/// Whether `outcome` differs from the last one seen, remembering it.
fn changed(last: &mut Option<String>, outcome: &io::Result<Snapshot>) -> bool {
    let key = match outcome {
        Ok(snap) => snap.digest.clone(),
        Err(e) => format!("error: {e}"),
    };
    if last.as_ref() == Some(&key) {
        return false;
    }
    *last = Some(key);
    true
}

/// How the watcher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Quiet time after an event before reloading, to coalesce a burst.
    pub debounce: Duration,
    /// Reload at least this often even without events.
    pub poll: Duration,
}

/// Watches both directories and reloads on change until `shutdown`.
pub async fn watch(mut loader: Loader, pacing: Pacing, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let notify = wake.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            notify.notify_one();
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for changes; polling only");
            None
        }
    };
    let mut watched = false;
    loop {
        if !watched && let Some(w) = watcher.as_mut() {
            watched = [&loader.routes_dir, &loader.identity_dir]
                .iter()
                .all(|dir| match w.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling");
                        false
                    }
                });
        }
        tokio::select! {
            () = wake.notified() => tokio::time::sleep(pacing.debounce).await,
            () = tokio::time::sleep(pacing.poll) => {}
            () = shutdown.cancelled() => return,
        }
        // Reading and parsing a large table takes milliseconds: keep it off
        // the threads that relay traffic.
        loader = match tokio::task::spawn_blocking(move || {
            loader.reload_all();
            loader
        })
        .await
        {
            Ok(loader) => loader,
            Err(e) => {
                tracing::error!(error = %e, "reload task failed; reloads stop");
                return;
            }
        };
    }
}
