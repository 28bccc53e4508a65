//! `weft-operator local`: the control plane without a cluster.
//!
//! Reads a directory of manifests, computes the same desired state as in a
//! cluster (pods in injection scope count as meshed, EndpointSlices are
//! derived from Pods where the manifests have none), keeps the CA and the
//! issued identities in a state directory, and writes each meshed pod's
//! `routes/` and `identity/` mounts with the kubelet's atomic `..data` swap.
//! Without `--once` it watches the manifests and rewrites what changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::Args;
use notify::{RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use weft_api::RoutesTable;
use weft_api::duration::parse_duration;
use weft_api::names::{CERT_FILE, KEY_FILE, ROUTES_FILE, TRUST_BUNDLE_FILE};
use weft_api::routes::MtlsMode;

use crate::ca::{Authority, ExistingIdentity, TrustAnchor, renewal_due};
use crate::cluster::Object;
use crate::desired::{Desired, desired};
use crate::endpoints::derive_slices;
use crate::kubelet::write_atomic;
use crate::manifests::{ManifestError, load_dir};
use crate::scope::{MeshConfig, MeshedPods};

/// The trust anchor's validity when the local runtime generates one.
const ANCHOR_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// Directory of manifests (`*.yaml`, `*.yml`, multi-document, recursive).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Where each meshed pod's mounts go: `<mounts>/<namespace>/<pod>/{routes,identity}`.
    #[arg(long)]
    pub mounts: PathBuf,
    /// Where the CA, the issued identities and the generations are kept.
    #[arg(long)]
    pub state: PathBuf,
    /// Write once and exit instead of watching.
    #[arg(long)]
    pub once: bool,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub cert_lifetime: Duration,
    /// Re-issue a certificate once this fraction of its lifetime has passed.
    #[arg(long, default_value_t = 0.5)]
    pub renew_at: f64,
    /// mTLS mode where no MeshPolicy sets one.
    #[arg(long, value_parser = parse_mtls, default_value = "permissive")]
    pub default_mtls: MtlsMode,
    /// How long manifests must be quiet before a rewrite.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    pub debounce: Duration,
    /// Recheck certificates at least this often.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub resync: Duration,
    #[command(flatten)]
    pub logging: crate::logging::LogArgs,
}

pub fn parse_mtls(s: &str) -> Result<MtlsMode, String> {
    match s {
        "strict" => Ok(MtlsMode::Strict),
        "permissive" => Ok(MtlsMode::Permissive),
        _ => Err(format!("{s:?} is not strict or permissive")),
    }
}

/// What one pass wrote and found.
#[derive(Debug, Default)]
pub struct Report {
    pub meshed_pods: usize,
    /// Mount directories rewritten (unchanged ones are skipped).
    pub written: usize,
    pub issued: usize,
    pub removed: usize,
    pub errors: Vec<ManifestError>,
}

/// Each `(namespace, service account)`'s identity files, by file name.
type IdentityFilesByAccount = BTreeMap<(String, String), Vec<(&'static str, Vec<u8>)>>;

/// The generation and digest last written for a namespace's table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Written {
    generation: u64,
    digest: String,
}

pub struct LocalRuntime {
    args: LocalArgs,
    mesh: MeshConfig,
    authority: Authority,
    /// The anchor files `authority` was loaded from, to notice a rotation.
    anchor_files: Vec<u8>,
    generations: BTreeMap<String, Written>,
}

impl LocalRuntime {
    /// Opens (or starts) the state directory: loads the trust anchor or
    /// generates one, and the generations already written.
    pub fn open(args: LocalArgs) -> Result<Self> {
        std::fs::create_dir_all(&args.state)
            .with_context(|| format!("creating {}", args.state.display()))?;
        let authority = load_authority(&args.state)?;
        let anchor_files = anchor_files(&args.state);
        let generations = std::fs::read(args.state.join("generations.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mesh = MeshConfig {
            trust_domain: args.trust_domain.clone(),
            operator_namespace: "weft-system".into(),
            default_mtls: args.default_mtls,
            meshed_pods: MeshedPods::InScope,
        };
        Ok(Self {
            args,
            mesh,
            authority,
            anchor_files,
            generations,
        })
    }

    /// Reads the manifests and brings every mount up to date.
    pub fn sync(&mut self, now: SystemTime) -> Result<Report> {
        self.refresh_authority()?;
        let loaded = load_dir(&self.args.manifests)
            .with_context(|| format!("reading {}", self.args.manifests.display()))?;
        for e in &loaded.errors {
            tracing::error!(error = %e, "manifest skipped");
        }
        let mut cluster = loaded.cluster;
        for slice in derive_slices(&cluster) {
            cluster.apply(Object::EndpointSlice(Box::new(slice)));
        }
        let mut desired = desired(&cluster, &self.mesh);
        self.assign_generations(&mut desired)?;
        let mut report = Report {
            meshed_pods: desired.meshed_pods.len(),
            errors: loaded.errors,
            ..Default::default()
        };
        let identities = self.identities(&desired, now, &mut report)?;
        self.write_mounts(&desired, &identities, &mut report)?;
        self.write_status(&desired)?;
        Ok(report)
    }

    /// Reloads the trust anchor when its files changed (an anchor rotation
    /// step), so the identities are re-issued on this pass.
    fn refresh_authority(&mut self) -> Result<()> {
        let current = anchor_files(&self.args.state);
        if current != self.anchor_files {
            self.authority = load_authority(&self.args.state)?;
            self.anchor_files = anchor_files(&self.args.state);
            tracing::info!(
                subject = self.authority.signer().subject(),
                "trust anchor reloaded"
            );
        }
        Ok(())
    }

    /// Gives each changed table the next generation.
    fn assign_generations(&mut self, desired: &mut Desired) -> Result<()> {
        for (ns, table) in &mut desired.tables {
            let digest = table.digest.clone().unwrap_or_default();
            let entry = self.generations.entry(ns.clone()).or_default();
            if entry.digest != digest {
                entry.generation += 1;
                entry.digest = digest;
            }
            table.generation = entry.generation;
        }
        let json = serde_json::to_vec_pretty(&self.generations)?;
        write_file(&self.args.state.join("generations.json"), &json)
    }

    /// The identity files of every `(namespace, service account)`, issued
    /// anew where missing or due for renewal.
    fn identities(
        &self,
        desired: &Desired,
        now: SystemTime,
        report: &mut Report,
    ) -> Result<IdentityFilesByAccount> {
        let mut out = BTreeMap::new();
        for (ns, sa) in &desired.identities {
            let dir = self.args.state.join("identities").join(ns).join(sa);
            let files = [CERT_FILE, KEY_FILE, TRUST_BUNDLE_FILE]
                .map(|name| (name, std::fs::read(dir.join(name)).ok()));
            let existing = ExistingIdentity::from_entries(|name| {
                files.iter().find(|(n, _)| *n == name)?.1.as_deref()
            });
            let Some(id) = self.mesh.identity(ns, sa) else {
                tracing::error!(namespace = %ns, service_account = %sa, "not a valid identity");
                continue;
            };
            let current =
                match renewal_due(&existing, &id, &self.authority, now, self.args.renew_at) {
                    None => files.map(|(n, c)| (n, c.unwrap_or_default())).to_vec(),
                    Some(reason) => {
                        let issued = self.authority.issue(
                            &self.args.trust_domain,
                            ns,
                            sa,
                            now,
                            self.args.cert_lifetime,
                        )?;
                        tracing::info!(%id, %reason, "certificate issued");
                        report.issued += 1;
                        let data: Vec<(&'static str, Vec<u8>)> = issued
                            .secret_data()
                            .iter()
                            .map(|(n, c)| (*n, c.as_bytes().to_vec()))
                            .collect();
                        write_atomic(&dir, &borrowed(&data))
                            .with_context(|| format!("storing {}", dir.display()))?;
                        data
                    }
                };
            out.insert((ns.clone(), sa.clone()), current);
        }
        Ok(out)
    }

    fn write_mounts(
        &self,
        desired: &Desired,
        identities: &IdentityFilesByAccount,
        report: &mut Report,
    ) -> Result<()> {
        let mut routes_json = BTreeMap::new();
        for (ns, table) in &desired.tables {
            routes_json.insert(ns.as_str(), serde_json::to_vec(table)?);
        }
        for (pod, sa) in &desired.meshed_pods {
            let root = self.args.mounts.join(&pod.namespace).join(&pod.name);
            if let Some(json) = routes_json.get(pod.namespace.as_str()) {
                let dir = root.join("routes");
                if write_atomic(&dir, &[(ROUTES_FILE, json)])
                    .with_context(|| format!("writing {}", dir.display()))?
                {
                    report.written += 1;
                }
            }
            if let Some(files) = identities.get(&(pod.namespace.clone(), sa.clone())) {
                let dir = root.join("identity");
                if write_atomic(&dir, &borrowed(files))
                    .with_context(|| format!("writing {}", dir.display()))?
                {
                    report.written += 1;
                }
            }
        }
        report.removed = self.remove_stale_mounts(desired)?;
        Ok(())
    }

    /// Removes the mounts of pods that are gone or no longer meshed.
    fn remove_stale_mounts(&self, desired: &Desired) -> Result<usize> {
        let mut removed = 0;
        let Ok(namespaces) = std::fs::read_dir(&self.args.mounts) else {
            return Ok(0);
        };
        for ns in namespaces.flatten().filter(|e| e.path().is_dir()) {
            for pod in std::fs::read_dir(ns.path())?.flatten() {
                let path = pod.path();
                let ours = path.join("routes").exists() || path.join("identity").exists();
                let key = crate::cluster::ObjectKey::new(
                    &ns.file_name().to_string_lossy(),
                    &pod.file_name().to_string_lossy(),
                );
                if ours && !desired.meshed_pods.contains_key(&key) {
                    std::fs::remove_dir_all(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    tracing::info!(pod = %key, "mounts removed");
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The MeshPolicy verdicts, as the cluster runtime would put them in
    /// `status`: `<state>/policy-status.json`.
    fn write_status(&self, desired: &Desired) -> Result<()> {
        let status: BTreeMap<String, serde_json::Value> = desired
            .verdicts
            .iter()
            .map(|(key, v)| {
                (
                    key.to_string(),
                    serde_json::json!({
                        "accepted": v.accepted(),
                        "reason": v.reason.as_str(),
                        "message": v.message,
                    }),
                )
            })
            .collect();
        for (key, v) in &desired.verdicts {
            if !v.accepted() {
                tracing::warn!(policy = %key, reason = v.reason.as_str(), message = %v.message, "MeshPolicy not accepted");
            }
        }
        write_file(
            &self.args.state.join("policy-status.json"),
            &serde_json::to_vec_pretty(&status)?,
        )
    }

    /// The table last written for `namespace`, for tests and tools.
    pub fn table_path(&self, namespace: &str, pod: &str) -> PathBuf {
        self.args
            .mounts
            .join(namespace)
            .join(pod)
            .join("routes")
            .join(ROUTES_FILE)
    }
}

fn borrowed<'a>(files: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    files.iter().map(|(n, c)| (*n, c.as_slice())).collect()
}

/// Writes a state file by renaming a temporary one over it.
fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The contents of the anchor's files, each prefixed with its length.
fn anchor_files(state: &Path) -> Vec<u8> {
    let dir = state.join("trust-anchor");
    let mut out = Vec::new();
    for name in [CERT_FILE, KEY_FILE, "ca-bundle.crt"] {
        let content = std::fs::read(dir.join(name)).unwrap_or_default();
        out.extend_from_slice(&(content.len() as u64).to_be_bytes());
        out.extend_from_slice(&content);
    }
    out
}

/// The trust anchor from `<state>/trust-anchor/`, generated on first start;
/// `ca-bundle.crt` there, if present, adds roots (anchor rotation).
fn load_authority(state: &Path) -> Result<Authority> {
    let dir = state.join("trust-anchor");
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let anchor = if cert.exists() {
        let cert_pem =
            std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
        let key_pem = std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?;
        TrustAnchor::from_pem(&cert_pem, &key_pem, SystemTime::now())
            .with_context(|| format!("trust anchor in {}", dir.display()))?
    } else {
        let anchor = TrustAnchor::generate(SystemTime::now(), ANCHOR_VALIDITY)?;
        write_atomic(
            &dir,
            &[
                (CERT_FILE, anchor.cert_pem().as_bytes()),
                (KEY_FILE, anchor.key_pem().as_bytes()),
            ],
        )
        .with_context(|| format!("writing {}", dir.display()))?;
        tracing::info!(subject = anchor.subject(), "trust anchor generated");
        anchor
    };
    let authority = Authority::new(anchor);
    match std::fs::read(dir.join("ca-bundle.crt")) {
        Ok(extra) => Ok(authority.with_extra_roots(extra)?),
        Err(_) => Ok(authority),
    }
}

/// Runs the local runtime: one pass, then (without `--once`) a pass after
/// every burst of manifest changes and every `--resync`.
pub fn run(args: LocalArgs) -> Result<()> {
    crate::logging::init(&args.logging)?;
    let once = args.once;
    let (debounce, resync) = (args.debounce, args.resync);
    let manifests = args.manifests.clone();
    let mut runtime = LocalRuntime::open(args)?;
    pass(&mut runtime)?;
    if once {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) are access events, not changes: waking on
        // them would make every pass trigger the next.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher
        .watch(&manifests, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", manifests.display()))?;
    loop {
        if rx.recv_timeout(resync).is_ok() {
            // Let a burst of writes settle, then take them all at once.
            while rx.recv_timeout(debounce).is_ok() {}
        }
        if let Err(e) = pass(&mut runtime) {
            tracing::error!(error = format!("{e:#}"), "sync failed; will retry");
        }
    }
}

fn pass(runtime: &mut LocalRuntime) -> Result<()> {
    let report = runtime.sync(SystemTime::now())?;
    tracing::info!(
        pods = report.meshed_pods,
        written = report.written,
        issued = report.issued,
        removed = report.removed,
        manifest_errors = report.errors.len(),
        "synced"
    );
    Ok(())
}

/// The table a pod's mount holds, for tests and tools.
pub fn read_table(path: &Path) -> Result<RoutesTable> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(RoutesTable::from_json(&bytes)?)
}
