//! Hot reload: the mounted `routes/` and `identity/` directories, and the
//! routes the API-server watch delivers.
//!
//! The kubelet updates a mounted ConfigMap or Secret by writing a new hidden
//! directory and renaming a `..data` symlink over the old one. So we watch
//! the directory (not the files), resolve `..data` once and read every key
//! through it as one snapshot, debounce bursts, and poll slowly as a
//! backstop for missed events. Routes also arrive from `api_watch` on a
//! channel. Both sources go through the same decode and validation
//! (`routes_doc`), then `arbiter` picks the table to use (the higher
//! generation wins), which is swapped in whole. A bad input is logged with
//! where it came from and why, counted, and the last good one stays. All of
//! it runs on a blocking thread, never on the threads that relay traffic.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use tokio::sync::{Notify, watch as channel};
use tokio_util::sync::CancellationToken;
use weft_api::names::{
    CERT_FILE, KEY_FILE, KUBELET_DATA_LINK, ROUTES_CONFIGMAP, ROUTES_FILE, ROUTES_FILE_GZ,
    TRUST_BUNDLE_FILE,
};

use crate::api_protocol::ApiRoutes;
use crate::arbiter::{Arbiter, Source};
use crate::identity::{Expected, Identity, IdentityError, IdentityFiles, unix_seconds};
use crate::metrics::{Kind, KindLabels, SourceLabels};
use crate::routes_doc::{self, RoutesKeys};
use crate::state::{Loaded, State, digest};
use crate::table::{Pod, Table};

/// The files of one directory, read through one resolution of `..data`.
pub struct Snapshot {
    /// The directory the files were read from (the resolved `..data`).
    pub source: PathBuf,
    /// Each requested name's contents; `None` where there is no such file.
    pub contents: Vec<Option<Vec<u8>>>,
    /// `sha256:` of the files present.
    pub digest: String,
}

impl Snapshot {
    /// What the snapshot holds, for noticing a change: the digest, and
    /// which names are present.
    fn fingerprint(&self) -> String {
        let present: String = self
            .contents
            .iter()
            .map(|c| if c.is_some() { '1' } else { '0' })
            .collect();
        format!("{} {present}", self.digest)
    }
}

/// Reads `names` from `dir` as one consistent snapshot; names may be absent.
pub fn read_snapshot(dir: &Path, names: &[&str]) -> io::Result<Snapshot> {
    for _ in 0..3 {
        let source = resolve(dir)?;
        let read = read_files(dir, &source, names);
        // The kubelet deletes the old snapshot right after the swap: if
        // `..data` moved while we read, read again through the new one.
        if resolve(dir)? != source {
            continue;
        }
        let contents = read?;
        let digest = digest(contents.iter().flatten().map(Vec::as_slice));
        return Ok(Snapshot {
            source,
            contents,
            digest,
        });
    }
    Err(io::Error::other(format!(
        "{}: changed on every attempt to read it",
        dir.display()
    )))
}

fn read_files(dir: &Path, source: &Path, names: &[&str]) -> io::Result<Vec<Option<Vec<u8>>>> {
    names
        .iter()
        .map(|name| match std::fs::read(source.join(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", dir.join(name).display()),
            )),
        })
        .collect()
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

/// Where a routing table was read, for `/config` and for messages.
enum Origin<'a> {
    File { dir: &'a Path, snapshot: &'a Path },
    Api(&'a ApiRoutes),
}

impl Origin<'_> {
    fn source(&self) -> Source {
        match self {
            Origin::File { .. } => Source::File,
            Origin::Api(_) => Source::Api,
        }
    }

    /// `/config`'s `source`: the snapshot directory, or the ConfigMap version.
    fn label(&self) -> String {
        match self {
            Origin::File { snapshot, .. } => snapshot.display().to_string(),
            Origin::Api(r) => format!(
                "api:configmap/{}/{ROUTES_CONFIGMAP}@{}",
                r.namespace, r.resource_version
            ),
        }
    }

    /// Names the file or ConfigMap key at fault.
    fn place(&self, key: Option<&str>) -> String {
        match (self, key) {
            (Origin::File { dir, .. }, Some(key)) => dir.join(key).display().to_string(),
            (Origin::File { dir, .. }, None) => dir.display().to_string(),
            (Origin::Api(r), Some(key)) => {
                format!("configmap {}/{ROUTES_CONFIGMAP} key {key}", r.namespace)
            }
            (Origin::Api(r), None) => format!("configmap {}/{ROUTES_CONFIGMAP}", r.namespace),
        }
    }
}

/// Loads both configurations into `state`, remembering what it last saw
/// from each source, so that an unchanged input (or the same bad one) is
/// not reprocessed.
pub struct Loader {
    state: Arc<State>,
    pub routes_dir: PathBuf,
    pub identity_dir: PathBuf,
    pod: Pod,
    expected: Expected,
    provider: Arc<CryptoProvider>,
    routes: Arbiter<Arc<Table>>,
    last_file_routes: Option<String>,
    last_api_routes: Option<String>,
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
            routes: Arbiter::default(),
            last_file_routes: None,
            last_api_routes: None,
            last_identity: None,
            identity_loads: 0,
        }
    }

    /// Re-reads both mounted directories.
    pub fn reload_all(&mut self) {
        self.reload_routes();
        self.reload_identity();
    }

    /// Re-reads the mounted routes.
    pub fn reload_routes(&mut self) {
        let outcome = read_snapshot(&self.routes_dir, &[ROUTES_FILE, ROUTES_FILE_GZ]);
        let fingerprint = match &outcome {
            Ok(snap) => snap.fingerprint(),
            Err(e) => format!("error: {e}"),
        };
        if !first_sight(&mut self.last_file_routes, fingerprint) {
            return;
        }
        let snap = match outcome {
            Ok(snap) => snap,
            Err(e) => {
                let place = self.routes_dir.display().to_string();
                return self.refuse(Kind::Routes, &place, &e.to_string());
            }
        };
        let mut contents = snap.contents.into_iter();
        let keys = RoutesKeys {
            plain: contents.next().flatten(),
            gzip: contents.next().flatten(),
        };
        let dir = self.routes_dir.clone();
        let origin = Origin::File {
            dir: &dir,
            snapshot: &snap.source,
        };
        self.load_routes(&origin, &keys);
    }

    /// Takes a version of the routes ConfigMap from the API watch.
    pub fn apply_api(&mut self, update: &ApiRoutes) {
        let origin = Origin::Api(update);
        let keys = update.keys();
        let fingerprint = match &keys {
            Ok(keys) => format!(
                "{} {} {}",
                keys.digest(),
                keys.plain.is_some(),
                keys.gzip.is_some()
            ),
            Err(refusal) => format!("error: {refusal:?}"),
        };
        if !first_sight(&mut self.last_api_routes, fingerprint) {
            return;
        }
        match keys {
            Ok(keys) => self.load_routes(&origin, &keys),
            Err(refusal) => {
                self.refuse(Kind::Routes, &origin.place(refusal.key), &refusal.reason);
            }
        }
    }

    fn load_routes(&mut self, origin: &Origin<'_>, keys: &RoutesKeys) {
        if keys.both() {
            tracing::warn!(
                place = %origin.place(None),
                "both {ROUTES_FILE} and {ROUTES_FILE_GZ} are present; using the higher generation"
            );
        }
        let digest = keys.digest();
        let twin = self.routes.latest().find(|t| t.digest == digest).cloned();
        if let Some(twin) = twin {
            // The same bytes by the other path (the kubelet catching up with
            // the API): share the table instead of parsing and holding it twice.
            let (value, generation, key) = (twin.value.clone(), twin.generation, twin.key);
            let loaded = Loaded {
                value,
                source: origin.label(),
                key,
                digest,
                generation,
                loaded_at: SystemTime::now(),
            };
            return self.offer(origin.source(), loaded);
        }
        match routes_doc::parse(keys, &self.pod) {
            Ok(parsed) => self.offer(
                origin.source(),
                Loaded {
                    value: Arc::new(parsed.table),
                    source: origin.label(),
                    key: Some(parsed.key),
                    digest,
                    generation: parsed.generation,
                    loaded_at: SystemTime::now(),
                },
            ),
            Err(refusal) => {
                self.refuse(Kind::Routes, &origin.place(refusal.key), &refusal.reason);
            }
        }
    }

    /// Records a valid table from `source` and swaps in the table to use.
    fn offer(&mut self, source: Source, loaded: Loaded<Arc<Table>>) {
        let generation = loaded.generation;
        self.state
            .metrics
            .routes_source_generation
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let Some(chosen) = self.routes.offer(source, Arc::new(loaded)) else {
            return;
        };
        let previous = self.state.routes.load_full();
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &chosen)) {
            tracing::info!(
                from = source.as_str(),
                generation,
                in_use = chosen.generation,
                in_use_source = %chosen.source,
                "routes received; the table in use stays (higher generation, or the same table)"
            );
            return;
        }
        tracing::info!(
            generation = chosen.generation,
            previous = ?previous.map(|p| p.generation),
            digest = %chosen.digest,
            source = %chosen.source,
            key = chosen.key,
            "routes loaded"
        );
        self.record(Kind::Routes, chosen.generation);
        self.state.routes.store(Some(chosen));
    }

    /// Re-reads the mounted identity.
    pub fn reload_identity(&mut self) {
        let names = [CERT_FILE, KEY_FILE, TRUST_BUNDLE_FILE];
        let outcome = read_snapshot(&self.identity_dir, &names);
        let fingerprint = match &outcome {
            Ok(snap) => snap.fingerprint(),
            Err(e) => format!("error: {e}"),
        };
        if !first_sight(&mut self.last_identity, fingerprint) {
            return;
        }
        let mut retry = false;
        let result = outcome.map_err(|e| e.to_string()).and_then(|snap| {
            let [cert, key, trust_bundle] = required(&self.identity_dir, &names, &snap)?;
            let files = IdentityFiles {
                cert,
                key,
                trust_bundle,
            };
            let identity =
                Identity::load(&files, &self.expected, &self.provider, SystemTime::now()).map_err(
                    |e| {
                        // The same files may be valid at the next poll: do
                        // not remember them as seen.
                        if matches!(e, IdentityError::NotYetValid(_)) {
                            retry = true;
                        }
                        e.to_string()
                    },
                )?;
            Ok((identity, snap.source, snap.digest))
        });
        if retry {
            self.last_identity = None;
        }
        match result {
            Ok((identity, source, digest)) => self.publish_identity(identity, &source, digest),
            Err(reason) => {
                let place = self.identity_dir.display().to_string();
                self.refuse(Kind::Identity, &place, &reason);
            }
        }
    }

    fn publish_identity(&mut self, identity: Identity, source: &Path, digest: String) {
        self.identity_loads += 1;
        tracing::info!(
            identity = %identity.id,
            not_after = identity.not_after,
            digest = %digest,
            source = %source.display(),
            "identity loaded"
        );
        self.record(Kind::Identity, self.identity_loads);
        self.state.metrics.cert_expiry.set(identity.not_after);
        self.state.identity.store(Some(Arc::new(Loaded {
            value: identity,
            source: source.display().to_string(),
            key: None,
            digest,
            generation: self.identity_loads,
            loaded_at: SystemTime::now(),
        })));
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

    fn refuse(&self, kind: Kind, place: &str, reason: &str) {
        tracing::error!(
            ?kind,
            path = %place,
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

/// The three files of `names`, each of which must be present.
fn required<'a>(
    dir: &Path,
    names: &[&str; 3],
    snap: &'a Snapshot,
) -> Result<[&'a [u8]; 3], String> {
    let mut out: [&[u8]; 3] = [&[]; 3];
    for (i, name) in names.iter().enumerate() {
        match snap.contents.get(i).and_then(Option::as_deref) {
            Some(bytes) => out[i] = bytes,
            None => return Err(format!("{}: no such file", dir.join(name).display())),
        }
    }
    Ok(out)
}

/// Whether `fingerprint` differs from the last one seen, remembering it.
fn first_sight(last: &mut Option<String>, fingerprint: String) -> bool {
    if last.as_ref() == Some(&fingerprint) {
        return false;
    }
    *last = Some(fingerprint);
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

/// Versions of the routes ConfigMap from the API watch, latest first.
pub type ApiUpdates = channel::Receiver<Option<Arc<ApiRoutes>>>;

/// What woke the reload task.
enum Work {
    Files,
    Api(Arc<ApiRoutes>),
}

/// Watches both directories (and `api`, when the API watch runs) and
/// reloads on change until `shutdown`.
pub async fn watch(
    mut loader: Loader,
    pacing: Pacing,
    mut api: Option<ApiUpdates>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let mut watcher = dir_watcher(wake.clone());
    let mut watched = false;
    loop {
        if !watched && let Some(w) = watcher.as_mut() {
            watched = watch_dirs(w, &[&loader.routes_dir, &loader.identity_dir]);
        }
        let work = tokio::select! {
            () = wake.notified() => {
                tokio::time::sleep(pacing.debounce).await;
                Work::Files
            }
            () = tokio::time::sleep(pacing.poll) => Work::Files,
            Some(update) = next_update(&mut api) => Work::Api(update),
            () = shutdown.cancelled() => return,
        };
        // Reading and parsing a large table takes milliseconds: keep it off
        // the threads that relay traffic.
        loader = match tokio::task::spawn_blocking(move || {
            match work {
                Work::Files => loader.reload_all(),
                Work::Api(update) => loader.apply_api(&update),
            }
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

/// The next version from the API watch; pending forever without one.
async fn next_update(api: &mut Option<ApiUpdates>) -> Option<Arc<ApiRoutes>> {
    let Some(rx) = api.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        tracing::warn!("the API watch ended; the mounted files are still watched");
        *api = None;
        return None;
    }
    rx.borrow_and_update().clone()
}

fn dir_watcher(wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) are access events, not changes: waking on
        // them would make every pass trigger the next.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            wake.notify_one();
        }
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for changes; polling only");
            None
        }
    }
}

/// Watches every directory; `false` if one cannot be watched (yet).
fn watch_dirs(watcher: &mut notify::RecommendedWatcher, dirs: &[&Path]) -> bool {
    dirs.iter().all(
        |dir| match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; polling");
                false
            }
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn absent_names_read_as_none_through_data() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir(dir.join("..1")).unwrap();
        std::fs::write(dir.join("..1/routes.json.gz"), b"gz").unwrap();
        symlink("..1", dir.join("..data")).unwrap();
        let snap = read_snapshot(dir, &[ROUTES_FILE, ROUTES_FILE_GZ]).unwrap();
        assert_eq!(snap.source, dir.join("..1"));
        assert_eq!(snap.contents, [None, Some(b"gz".to_vec())]);
        assert_eq!(snap.digest, digest([&b"gz"[..]]));
    }

    #[test]
    fn the_fingerprint_tells_which_key_holds_the_bytes() {
        let snap = |contents: Vec<Option<Vec<u8>>>| Snapshot {
            source: PathBuf::new(),
            digest: digest(contents.iter().flatten().map(Vec::as_slice)),
            contents,
        };
        let a = snap(vec![Some(b"x".to_vec()), None]);
        let b = snap(vec![None, Some(b"x".to_vec())]);
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn a_plain_directory_is_read_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("tls.crt"), b"c").unwrap();
        let snap = read_snapshot(tmp.path(), &["tls.crt", "tls.key"]).unwrap();
        assert_eq!(snap.source, tmp.path());
        let err = required(tmp.path(), &["tls.crt", "tls.key", "ca.crt"], &snap).unwrap_err();
        assert!(err.ends_with("tls.key: no such file"), "{err}");
    }
}
