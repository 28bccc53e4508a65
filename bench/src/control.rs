//! Control-plane benchmarks: the operator's desired state for a large
//! synthetic cluster (build time, `routes.json` size), the proxy's reload of
//! that table (decode, validate, index, swap), and the propagation of a
//! manifest change through the real `weft-operator local` to every running
//! `weft-proxy`.
//!
//! The first two call the crates' own functions in process, so they measure
//! the code and not process start-up; the third runs the release binaries,
//! because propagation is mostly file watching, debouncing and I/O, which
//! only the real processes have.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Pod, PodCondition, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use weft_api::RoutesTable;
use weft_api::names::annotations::{INJECT, INJECTED};
use weft_api::names::{CERT_FILE, ROUTES_FILE, ROUTES_FILE_GZ};
use weft_api::routes::MtlsMode;
use weft_operator::cluster::{Cluster, Object};
use weft_operator::crd::{
    AllowRule, AuthorizationSpec, AuthzDefaultSpec, MeshPolicy, MeshPolicySpec, MtlsModeSpec,
    MtlsSpec, RetriesSpec, SplitBackend, TargetRef, TimeoutsSpec,
};
use weft_operator::desired::{Desired, desired};
use weft_operator::endpoints::derive_slices;
use weft_operator::k8s::objects::{DATA_LIMIT, Limits, RoutesData, encode_routes};
use weft_operator::scope::{MeshConfig, MeshedPods};
use weft_proxy::routes_doc::{self, RoutesKeys};
use weft_proxy::state::{Loaded, State};
use weft_proxy::table;

/// Issue 7's target for `desired` at the default scale.
pub const DESIRED_TARGET_MS: f64 = 200.0;
/// Issue 7's target for the proxy's parse, validation and swap of the
/// 10,000-endpoint table.
pub const PROXY_LOAD_TARGET_MS: f64 = 20.0;

/// Pods get addresses in 198.18.0.0/16 and Services in 198.19.0.0/16 (the
/// benchmarking range, as in the e2e harness): at most this many of each.
const MAX_ADDRESSES: u32 = 65_534;
/// How often the propagation benchmark looks at the mounts and proxies.
const POLL: Duration = Duration::from_millis(5);
/// Pause between two measured changes, so the trailing file events of one
/// (the proxies' debounced re-reads) are over before the next starts.
const SETTLE: Duration = Duration::from_millis(200);
/// Bounds one request to a proxy's admin server.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The size of a synthetic cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scale {
    pub namespaces: u32,
    /// Spread over the namespaces in turn.
    pub services: u32,
    /// Ready, meshed pods behind each Service (one Service port each).
    pub endpoints_per_service: u32,
    /// One namespace-wide policy per namespace first, then one policy per
    /// Service (timeouts, retries, authorization or a split, in turn).
    pub policies: u32,
}

impl Default for Scale {
    /// Issue 7's scale: 1,000 Services, 10,000 endpoints, 200 MeshPolicies.
    fn default() -> Self {
        Self {
            namespaces: 10,
            services: 1_000,
            endpoints_per_service: 10,
            policies: 200,
        }
    }
}

impl Scale {
    /// The scale of the propagation benchmark: 20 pods, hence 20 proxies.
    pub const PROPAGATION: Self = Self {
        namespaces: 2,
        services: 4,
        endpoints_per_service: 5,
        policies: 4,
    };

    pub fn endpoints(&self) -> u32 {
        self.services.saturating_mul(self.endpoints_per_service)
    }

    /// Whether the generator can build this scale with every policy
    /// accepted: Service policies need distinct targets, and a split a
    /// second Service of the same namespace.
    fn check(&self) -> Result<()> {
        ensure!(
            self.namespaces >= 1,
            "the scale needs at least one namespace"
        );
        ensure!(
            self.services >= self.namespaces,
            "{} Services cannot fill {} namespaces",
            self.services,
            self.namespaces
        );
        let targeted = self.policies.saturating_sub(self.namespaces);
        ensure!(
            targeted <= self.services - self.namespaces,
            "{} Service policies need at least {} Services",
            targeted,
            targeted + self.namespaces
        );
        ensure!(
            self.services <= MAX_ADDRESSES && self.endpoints() <= MAX_ADDRESSES,
            "at most {MAX_ADDRESSES} Services and {MAX_ADDRESSES} endpoints (one /16 each)"
        );
        Ok(())
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub scale: Scale,
    /// Repetitions of `desired` and of the proxy's load; the median is reported.
    pub runs: usize,
    /// The end-to-end propagation benchmark; `None` skips it.
    pub propagation: Option<PropagationOptions>,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            scale: Scale::default(),
            runs: 5,
            propagation: None,
        }
    }
}

/// The propagation benchmark's binaries and settings.
#[derive(Debug, Clone)]
pub struct PropagationOptions {
    /// The release `weft-operator` (the caller builds it).
    pub operator_bin: PathBuf,
    /// The release `weft-proxy`.
    pub proxy_bin: PathBuf,
    /// One proxy per pod: keep it small.
    pub scale: Scale,
    /// Measured changes; the median is reported.
    pub changes: usize,
    /// Everything (start-up included) must be done within this, else the
    /// error names what it was waiting for.
    pub timeout: Duration,
}

impl PropagationOptions {
    pub fn new(operator_bin: PathBuf, proxy_bin: PathBuf) -> Self {
        Self {
            operator_bin,
            proxy_bin,
            scale: Scale::PROPAGATION,
            changes: 3,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The figures, times in milliseconds (microsecond precision).
#[derive(Debug, Clone, Serialize)]
pub struct ControlFigures {
    pub scale: Scale,
    pub endpoints: u32,
    pub runs: usize,
    /// `desired()` over the whole cluster: median and fastest run.
    pub desired_ms: f64,
    pub desired_min_ms: f64,
    /// One per meshed namespace.
    pub routes_tables: usize,
    /// The largest table, as the operator serialises it.
    pub routes_json_bytes: usize,
    /// The same, gzipped as the operator stores tables above 512 KiB.
    pub routes_json_gzip_bytes: usize,
    /// Whether the gzipped table fits a ConfigMap (1 MiB).
    pub routes_fit_configmap: bool,
    /// The proxy's reload of the largest table from `routes.json` (what the
    /// local runtime mounts): digest, decode, validate, index, swap. Median.
    pub proxy_load_ms: f64,
    /// The same from `routes.json.gz` (what a cluster mounts for a large table).
    pub proxy_load_gzip_ms: f64,
    /// `None` when skipped.
    pub propagation: Option<PropagationFigures>,
}

/// From the rename of a manifest to the last proxy serving the new table.
#[derive(Debug, Clone, Serialize)]
pub struct PropagationFigures {
    pub proxies: usize,
    pub changes: usize,
    /// Median over the changes.
    pub propagation_ms: f64,
    pub propagation_max_ms: f64,
}

/// Runs the benchmarks `opts` asks for.
pub fn run(opts: &ControlOptions) -> Result<ControlFigures> {
    ensure!(opts.runs >= 1, "at least one run is needed");
    let cluster = synthetic_cluster(&opts.scale)?;
    let (desired_times, state) = time_desired(&cluster, opts.runs);
    let Written { table, json, gzip } = largest_table(&state)?;
    let (json_bytes, gzip_bytes) = (json.len(), gzip.len());
    let pod = proxy_pod(&table);
    let json_keys = RoutesKeys {
        plain: Some(json),
        gzip: None,
    };
    let gzip_keys = RoutesKeys {
        plain: None,
        gzip: Some(gzip),
    };
    let proxy_load_times = time_proxy_load(&json_keys, &table, &pod, opts.runs)?;
    let proxy_load_gzip_times = time_proxy_load(&gzip_keys, &table, &pod, opts.runs)?;
    let propagation = opts.propagation.as_ref().map(propagation).transpose()?;
    Ok(ControlFigures {
        scale: opts.scale,
        endpoints: opts.scale.endpoints(),
        runs: opts.runs,
        desired_ms: median_ms(&desired_times),
        desired_min_ms: min_ms(&desired_times),
        routes_tables: state.tables.len(),
        routes_json_bytes: json_bytes,
        routes_json_gzip_bytes: gzip_bytes,
        routes_fit_configmap: ROUTES_FILE_GZ.len() + gzip_bytes <= DATA_LIMIT,
        proxy_load_ms: median_ms(&proxy_load_times),
        proxy_load_gzip_ms: median_ms(&proxy_load_gzip_times),
        propagation,
    })
}

/// The figures as a Markdown table, each against its target where issue 7
/// sets one.
pub fn markdown(f: &ControlFigures) -> String {
    let target = |value: f64, limit: f64| {
        let verdict = if value <= limit { "met" } else { "missed" };
        format!("≤ {limit:.0} ms ({verdict})")
    };
    let s = &f.scale;
    let mut out = String::from("| control plane | figure | target |\n|---|---|---|\n");
    out.push_str(&format!(
        "| desired state: {} namespaces, {} Services, {} endpoints, {} MeshPolicies | {:.3} ms median, {:.3} ms min ({} runs) | {} |\n",
        s.namespaces, s.services, f.endpoints, s.policies, f.desired_ms, f.desired_min_ms, f.runs,
        target(f.desired_ms, DESIRED_TARGET_MS),
    ));
    out.push_str(&format!(
        "| largest routes.json ({} tables) | {} bytes, {} gzipped ({}) | — |\n",
        f.routes_tables,
        f.routes_json_bytes,
        f.routes_json_gzip_bytes,
        if f.routes_fit_configmap {
            "fits a ConfigMap"
        } else {
            "too large for a ConfigMap"
        },
    ));
    for (key, value) in [
        (ROUTES_FILE, f.proxy_load_ms),
        (ROUTES_FILE_GZ, f.proxy_load_gzip_ms),
    ] {
        out.push_str(&format!(
            "| proxy reload from {key}: parse, validate, swap | {value:.3} ms median | {} |\n",
            target(value, PROXY_LOAD_TARGET_MS),
        ));
    }
    match &f.propagation {
        Some(p) => out.push_str(&format!(
            "| propagation, manifest change → {} proxies serving it | {:.3} ms median, {:.3} ms max ({} changes) | — |\n",
            p.proxies, p.propagation_ms, p.propagation_max_ms, p.changes,
        )),
        None => out.push_str("| propagation | not measured | — |\n"),
    }
    out
}

/// The mesh settings of a cluster: pods are meshed when injected.
fn mesh_config() -> MeshConfig {
    MeshConfig {
        trust_domain: "cluster.local".into(),
        operator_namespace: "weft-system".into(),
        default_mtls: MtlsMode::Permissive,
        meshed_pods: MeshedPods::Injected,
    }
}

/// A cluster of `scale` as the operator's watches would see it: the
/// objects of [`synthetic_objects`] plus the EndpointSlices Kubernetes'
/// controller would write for them.
pub fn synthetic_cluster(scale: &Scale) -> Result<Cluster> {
    let mut cluster = synthetic_objects(scale)?;
    for slice in derive_slices(&cluster) {
        cluster.apply(Object::EndpointSlice(Box::new(slice)));
    }
    Ok(cluster)
}

/// What a user writes: Namespaces `ns-<n>` (injection enabled), Services
/// `svc-<s>` (in `ns-<s mod namespaces>`, port `http` 80 → 8080) with their
/// injected pods `svc-<s>-<e>` (service account `svc-<s>`), and MeshPolicies.
fn synthetic_objects(scale: &Scale) -> Result<Cluster> {
    scale.check()?;
    let mut cluster = Cluster::default();
    for n in 0..scale.namespaces {
        cluster.apply(Object::Namespace(Box::new(namespace(n))));
    }
    for s in 0..scale.services {
        cluster.apply(Object::Service(Box::new(service(scale, s))));
        for e in 0..scale.endpoints_per_service {
            let index = s * scale.endpoints_per_service + e;
            cluster.apply(Object::Pod(Box::new(pod(scale, s, e, index))));
        }
    }
    for p in 0..scale.policies {
        cluster.apply(Object::MeshPolicy(Box::new(policy(scale, p))));
    }
    Ok(cluster)
}

fn namespace_of(scale: &Scale, service: u32) -> String {
    format!("ns-{}", service % scale.namespaces)
}

fn meta(namespace: Option<String>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        ..Default::default()
    }
}

/// The `index`th address after `base` (skipping `base` itself).
fn address(base: Ipv4Addr, index: u32) -> String {
    Ipv4Addr::from(u32::from(base) + 1 + index).to_string()
}

fn namespace(n: u32) -> Namespace {
    let mut metadata = meta(None, format!("ns-{n}"));
    metadata.annotations = Some(BTreeMap::from([(INJECT.into(), "enabled".into())]));
    Namespace {
        metadata,
        ..Default::default()
    }
}

fn service(scale: &Scale, s: u32) -> Service {
    let ip = address(Ipv4Addr::new(198, 19, 0, 0), s);
    Service {
        metadata: meta(Some(namespace_of(scale, s)), format!("svc-{s}")),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.clone()),
            cluster_ips: Some(vec![ip]),
            selector: Some(BTreeMap::from([("app".into(), format!("svc-{s}"))])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Pod `e` of Service `s`, the `index`th of the cluster: running, ready,
/// and injected (it has a proxy, so its endpoint gets an identity).
fn pod(scale: &Scale, s: u32, e: u32, index: u32) -> Pod {
    let mut metadata = meta(Some(namespace_of(scale, s)), format!("svc-{s}-{e}"));
    metadata.labels = Some(BTreeMap::from([("app".into(), format!("svc-{s}"))]));
    metadata.annotations = Some(BTreeMap::from([(INJECTED.into(), "bench".into())]));
    Pod {
        metadata,
        spec: Some(PodSpec {
            service_account_name: Some(format!("svc-{s}")),
            containers: vec![Container {
                name: "app".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(address(Ipv4Addr::new(198, 18, 0, 0), index)),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn mesh_policy(namespace: String, name: String, spec: MeshPolicySpec) -> MeshPolicy {
    let mut policy = MeshPolicy::new(&name, spec);
    policy.metadata.namespace = Some(namespace);
    policy.metadata.generation = Some(1);
    policy
}

/// Policy `p`: the namespace-wide policy of `ns-<p>` for the first
/// `namespaces`, then one per Service from `svc-0` on, each setting the
/// sections a real one would, in turn.
fn policy(scale: &Scale, p: u32) -> MeshPolicy {
    if p < scale.namespaces {
        let spec = MeshPolicySpec {
            mtls: Some(MtlsSpec {
                mode: MtlsModeSpec::Permissive,
            }),
            timeouts: Some(timeouts("10s")),
            ..Default::default()
        };
        return mesh_policy(format!("ns-{p}"), "defaults".into(), spec);
    }
    let s = p - scale.namespaces;
    let namespace = namespace_of(scale, s);
    let mut spec = MeshPolicySpec {
        target_ref: Some(TargetRef {
            kind: "Service".into(),
            name: format!("svc-{s}"),
        }),
        ..Default::default()
    };
    match s % 4 {
        0 => spec.timeouts = Some(timeouts("2s")),
        1 => {
            spec.retries = Some(RetriesSpec {
                attempts: 3,
                retry_on: vec!["5xx".into(), "connect-failure".into()],
                per_try_timeout: Some("500ms".into()),
                budget: None,
            });
        }
        2 => {
            spec.mtls = Some(MtlsSpec {
                mode: MtlsModeSpec::Strict,
            });
            spec.authorization = Some(AuthorizationSpec {
                default: AuthzDefaultSpec::Deny,
                allow: vec![
                    AllowRule {
                        service_account: Some(format!(
                            "{}/svc-{}",
                            namespace_of(scale, s + 1),
                            s + 1
                        )),
                        namespace: None,
                    },
                    AllowRule {
                        service_account: None,
                        namespace: Some(namespace.clone()),
                    },
                ],
            });
        }
        // A canary: the next Service of the same namespace takes 10%.
        _ => {
            let backend = |service: u32, weight| SplitBackend {
                service: format!("svc-{service}"),
                weight,
            };
            spec.split = Some(vec![backend(s, 90), backend(s + scale.namespaces, 10)]);
        }
    }
    mesh_policy(namespace, format!("svc-{s}"), spec)
}

fn timeouts(request: &str) -> TimeoutsSpec {
    TimeoutsSpec {
        request: Some(request.into()),
        connect: Some("1s".into()),
        idle: None,
    }
}

/// Runs `desired` `runs` times; the durations and the last result.
fn time_desired(cluster: &Cluster, runs: usize) -> (Vec<Duration>, Desired) {
    let mesh = mesh_config();
    let mut times = Vec::with_capacity(runs);
    let mut last = Desired::default();
    for _ in 0..runs {
        let start = Instant::now();
        let state = desired(cluster, &mesh);
        times.push(start.elapsed());
        // The previous result is dropped here, outside the timed part.
        last = state;
    }
    (times, last)
}

/// The largest routing table, as it would be written.
struct Written {
    table: RoutesTable,
    json: Vec<u8>,
    gzip: Vec<u8>,
}

/// The largest table, with the first generation a writer gives it.
fn largest_table(state: &Desired) -> Result<Written> {
    let mut largest: Option<(RoutesTable, Vec<u8>)> = None;
    for table in state.tables.values() {
        let mut table = table.clone();
        table.generation = 1;
        let json = serde_json::to_vec(&table)?;
        if largest.as_ref().is_none_or(|(_, l)| json.len() > l.len()) {
            largest = Some((table, json));
        }
    }
    let (table, json) = largest.context("the desired state has no routing table")?;
    let gzip = gzip_as_the_operator_does(&table.namespace, &json)?;
    Ok(Written { table, json, gzip })
}

/// The operator's own encoding, told to compress whatever the size.
fn gzip_as_the_operator_does(namespace: &str, json: &[u8]) -> Result<Vec<u8>> {
    let always = Limits {
        plain: 0,
        data: usize::MAX,
        json: usize::MAX,
    };
    let text = String::from_utf8(json.to_vec())?;
    match encode_routes(namespace, text, always)? {
        RoutesData::Gzip(gz) => Ok(gz),
        RoutesData::Plain(_) => bail!("the operator did not compress a {}-byte table", json.len()),
    }
}

/// A pod of the table's namespace, as its proxy knows itself.
fn proxy_pod(table: &RoutesTable) -> table::Pod {
    let ip = table
        .services
        .iter()
        .filter(|s| s.namespace == table.namespace)
        .flat_map(|s| &s.ports)
        .flat_map(|p| &p.endpoints)
        .map(|e| e.address)
        .next();
    table::Pod {
        namespace: Some(table.namespace.clone()),
        ip,
        upstreams: Arc::default(),
    }
}

/// What the proxy does with a changed routes mount, `runs` times: digest
/// the keys, decode, validate and index them (`routes_doc::parse`), swap
/// the table into its `State` (dropping the previous one). A first, untimed
/// load is then used to every destination `routes` lists, the worst case
/// for a reload: every endpoint has state in use that the next table must
/// carry over.
fn time_proxy_load(
    keys: &RoutesKeys,
    routes: &RoutesTable,
    pod: &table::Pod,
    runs: usize,
) -> Result<Vec<Duration>> {
    let state = State::new();
    load(&state, keys, pod)?;
    use_every_destination(&state, routes)?;
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            load(&state, keys, pod)?;
            Ok(start.elapsed())
        })
        .collect()
}

/// Builds the target of every virtual address and meshed pod address, as
/// requests to each of them would.
fn use_every_destination(state: &State, routes: &RoutesTable) -> Result<()> {
    let loaded = state.routes.load_full().context("no table loaded")?;
    let mut built = 0;
    for svc in &routes.services {
        for port in &svc.ports {
            let vips = svc.cluster_ips.iter().map(|ip| (*ip, port.port));
            let pods = port.endpoints.iter().map(|e| (e.address, e.port));
            for (ip, port) in vips.chain(pods) {
                built += usize::from(loaded.value.target(&SocketAddr::new(ip, port)).is_some());
            }
        }
    }
    ensure!(built > 0, "the table leads nowhere");
    Ok(())
}

fn load(state: &State, keys: &RoutesKeys, pod: &table::Pod) -> Result<()> {
    let digest = keys.digest();
    let parsed = routes_doc::parse(keys, pod).map_err(|refusal| {
        anyhow!(
            "the proxy refused {}: {}",
            refusal.key.unwrap_or("the table"),
            refusal.reason
        )
    })?;
    state.routes.store(Some(Arc::new(Loaded {
        value: Arc::new(parsed.table),
        source: "bench".into(),
        key: Some(parsed.key),
        digest,
        generation: parsed.generation,
        loaded_at: SystemTime::now(),
    })));
    Ok(())
}

/// Runs `weft-operator local` over the manifests of `opts.scale` and one
/// `weft-proxy` per pod, then times each change of a MeshPolicy manifest
/// until every proxy serves the table it leads to.
fn propagation(opts: &PropagationOptions) -> Result<PropagationFigures> {
    ensure!(opts.changes >= 1, "at least one change is needed");
    let deadline = Instant::now() + opts.timeout;
    let dir = tempfile::tempdir().context("creating the propagation workdir")?;
    let work = Workdir::new(dir.path())?;
    let objects = synthetic_objects(&opts.scale)?;
    write_manifests(&work.manifests.join("cluster.yaml"), &objects)?;
    work.change_policy(&opts.scale, 0)?;
    let mut operator = Process::spawn(
        "weft-operator",
        &opts.operator_bin,
        &work.operator_args(),
        &work.logs.join("operator.log"),
    )?;
    let pods = pods(&objects)?;
    for pod in &pods {
        wait_for(
            &format!("the mounts of {}", pod.key()),
            deadline,
            &mut operator,
            || work.mounted(pod),
        )?;
    }
    let mut proxies = start_proxies(opts, &work, &pods)?;
    for proxy in &mut proxies {
        let what = format!("{} to be ready", proxy.name());
        let admin = proxy.admin;
        wait_for(&what, deadline, &mut proxy.process, || ready(admin))?;
    }
    let mut times = Vec::with_capacity(opts.changes);
    for change in 1..=opts.changes {
        times.push(measure_change(opts, &work, &mut proxies, change, deadline)?);
        std::thread::sleep(SETTLE);
    }
    Ok(PropagationFigures {
        proxies: proxies.len(),
        changes: opts.changes,
        propagation_ms: median_ms(&times),
        propagation_max_ms: max_ms(&times),
    })
}

/// Applies change number `change` and waits until every proxy serves a
/// newer table than before. Proxies are awaited one after the other: the
/// last to be seen ends the measurement either way, and polling one at a
/// time leaves the CPU to the operator and the proxies.
fn measure_change(
    opts: &PropagationOptions,
    work: &Workdir,
    proxies: &mut [Proxy],
    change: usize,
    deadline: Instant,
) -> Result<Duration> {
    let before = proxies
        .iter()
        .map(|p| routes_generation(p.admin).with_context(|| format!("{} has no routes", p.name())))
        .collect::<Result<Vec<u64>>>()?;
    let start = Instant::now();
    work.change_policy(&opts.scale, change)?;
    for (proxy, before) in proxies.iter_mut().zip(before) {
        let what = format!(
            "{} to serve the table of change {change} (a generation above {before})",
            proxy.name()
        );
        let admin = proxy.admin;
        wait_for(&what, deadline, &mut proxy.process, || {
            routes_generation(admin).is_some_and(|g| g > before)
        })?;
    }
    Ok(start.elapsed())
}

/// The propagation benchmark's directories.
struct Workdir {
    root: PathBuf,
    manifests: PathBuf,
    mounts: PathBuf,
    state: PathBuf,
    logs: PathBuf,
}

impl Workdir {
    fn new(root: &Path) -> Result<Self> {
        let work = Self {
            root: root.to_path_buf(),
            manifests: root.join("manifests"),
            mounts: root.join("mounts"),
            state: root.join("state"),
            logs: root.join("logs"),
        };
        for dir in [&work.manifests, &work.logs] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(work)
    }

    fn operator_args(&self) -> Vec<String> {
        let flag = |name: &str, path: &Path| [format!("--{name}"), path.display().to_string()];
        let mut args = vec!["local".to_owned()];
        args.extend(flag("manifests", &self.manifests));
        args.extend(flag("mounts", &self.mounts));
        args.extend(flag("state", &self.state));
        args
    }

    fn pod_mounts(&self, pod: &PodInfo) -> PathBuf {
        self.mounts.join(&pod.namespace).join(&pod.name)
    }

    /// Whether the operator has written both of the pod's mounts.
    fn mounted(&self, pod: &PodInfo) -> bool {
        let root = self.pod_mounts(pod);
        root.join("routes").join(ROUTES_FILE).exists()
            && root.join("identity").join(CERT_FILE).exists()
    }

    /// Writes `change.yaml`, a policy of the last Service (which has none
    /// of its own) whose request timeout is 1 s plus `change` ms, by
    /// renaming a file from outside the watched directory over it, as an
    /// editor or `kubectl` would save it atomically.
    fn change_policy(&self, scale: &Scale, change: usize) -> Result<()> {
        let s = scale.services - 1;
        let spec = MeshPolicySpec {
            target_ref: Some(TargetRef {
                kind: "Service".into(),
                name: format!("svc-{s}"),
            }),
            timeouts: Some(timeouts(&format!("{}ms", 1_000 + change))),
            ..Default::default()
        };
        let policy = mesh_policy(namespace_of(scale, s), "bench-change".into(), spec);
        let tmp = self.root.join("change.yaml.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&policy)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let path = self.manifests.join("change.yaml");
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// The objects as one multi-document manifest. Each document is JSON, which
/// is YAML too: the operator reads it like any other manifest.
fn write_manifests(path: &Path, objects: &Cluster) -> Result<()> {
    let mut docs = Vec::new();
    docs.extend(json_docs(objects.namespaces.values())?);
    docs.extend(json_docs(objects.services.values())?);
    docs.extend(json_docs(objects.pods.values())?);
    docs.extend(json_docs(objects.policies.values())?);
    std::fs::write(path, docs.join("\n---\n"))
        .with_context(|| format!("writing {}", path.display()))
}

fn json_docs<'a, T: Serialize + 'a>(
    objects: impl Iterator<Item = &'a Arc<T>>,
) -> Result<Vec<String>> {
    Ok(objects
        .map(|o| serde_json::to_string(&**o))
        .collect::<Result<_, _>>()?)
}

/// What a proxy needs to know about its pod.
struct PodInfo {
    namespace: String,
    name: String,
    ip: String,
    service_account: String,
}

impl PodInfo {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn pods(objects: &Cluster) -> Result<Vec<PodInfo>> {
    objects
        .pods
        .iter()
        .map(|(key, pod)| {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone());
            Ok(PodInfo {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                ip: ip.with_context(|| format!("pod {key} has no IP"))?,
                service_account: sa.with_context(|| format!("pod {key} has no service account"))?,
            })
        })
        .collect()
}

/// A running `weft-proxy` and its admin address.
struct Proxy {
    pod: String,
    admin: SocketAddr,
    process: Process,
}

impl Proxy {
    fn name(&self) -> String {
        format!("the proxy of {} (admin {})", self.pod, self.admin)
    }
}

/// One `weft-proxy run` per pod on loopback ports.
fn start_proxies(
    opts: &PropagationOptions,
    work: &Workdir,
    pods: &[PodInfo],
) -> Result<Vec<Proxy>> {
    let mut addrs = free_addrs(3 * pods.len())?.into_iter();
    let mut next = || addrs.next().context("fewer free ports than asked for");
    pods.iter()
        .map(|pod| start_proxy(opts, work, pod, [next()?, next()?, next()?]))
        .collect()
}

/// The proxy of `pod`, reading the pod's mounts (the API watch off: the
/// local runtime has no API server).
fn start_proxy(
    opts: &PropagationOptions,
    work: &Workdir,
    pod: &PodInfo,
    [outbound, inbound, admin]: [SocketAddr; 3],
) -> Result<Proxy> {
    let mounts = work.pod_mounts(pod);
    let args = [
        "run",
        "--routes-dir",
        &mounts.join("routes").display().to_string(),
        "--identity-dir",
        &mounts.join("identity").display().to_string(),
        "--pod-namespace",
        &pod.namespace,
        "--pod-name",
        &pod.name,
        "--pod-ip",
        &pod.ip,
        "--service-account",
        &pod.service_account,
        "--outbound-addr",
        &outbound.to_string(),
        "--inbound-addr",
        &inbound.to_string(),
        "--admin-addr",
        &admin.to_string(),
        "--api-watch",
        "off",
    ]
    .map(String::from);
    let log = work
        .logs
        .join(format!("proxy-{}-{}.log", pod.namespace, pod.name));
    Ok(Proxy {
        pod: pod.key(),
        admin,
        process: Process::spawn("weft-proxy", &opts.proxy_bin, &args, &log)?,
    })
}

/// `n` distinct loopback addresses free right now: all bound at once (so
/// none repeats), then released for the proxies to bind.
fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<_>>()?)
}

/// A child process, killed when dropped, so that an error or a panic
/// anywhere in the benchmark leaves nothing running.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// An error naming the exit status and the log's end once it has exited.
    fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}): {}", self.name, self.log_tail()),
        }
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every [`POLL`] until it holds; fails at `deadline`, or as
/// soon as `process` (the one expected to make it hold) has exited.
fn wait_for(
    what: &str,
    deadline: Instant,
    process: &mut Process,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    loop {
        if check() {
            return Ok(());
        }
        process
            .ensure_running()
            .with_context(|| format!("while waiting for {what}"))?;
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for {what}; the end of the {} log:\n{}",
                process.name,
                process.log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
}

fn ready(admin: SocketAddr) -> bool {
    admin_get(admin, "/ready").is_ok_and(|(status, _)| status == 200)
}

/// The generation of the routes a proxy serves, from its `/config`.
fn routes_generation(admin: SocketAddr) -> Option<u64> {
    let (status, body) = admin_get(admin, "/config").ok()?;
    let config: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
    config.pointer("/routes/generation")?.as_u64()
}

/// `GET path` from a proxy's admin server: the status and the body.
fn admin_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// Milliseconds, rounded to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The median (the upper one of an even count); 0 for no samples.
fn median_ms(times: &[Duration]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().map_or(0.0, ms)
}

fn min_ms(times: &[Duration]) -> f64 {
    times.iter().min().copied().map_or(0.0, ms)
}

fn max_ms(times: &[Duration]) -> f64 {
    times.iter().max().copied().map_or(0.0, ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const SMALL: Scale = Scale {
        namespaces: 3,
        services: 12,
        endpoints_per_service: 4,
        policies: 9,
    };

    #[test]
    fn the_synthetic_cluster_has_the_asked_counts() {
        let cluster = synthetic_cluster(&SMALL).unwrap();
        assert_eq!(cluster.namespaces.len(), 3);
        assert_eq!(cluster.services.len(), 12);
        assert_eq!(cluster.pods.len(), 48);
        assert_eq!(cluster.policies.len(), 9);
        let endpoints: usize = cluster
            .endpoint_slices
            .values()
            .map(|s| s.endpoints.len())
            .sum();
        assert_eq!(endpoints, 48);
    }

    #[test]
    fn desired_accepts_every_policy_and_routes_every_endpoint() {
        let cluster = synthetic_cluster(&SMALL).unwrap();
        let (_, state) = time_desired(&cluster, 1);
        assert_eq!(state.tables.len(), 3);
        assert!(
            state.verdicts.values().all(|v| v.accepted()),
            "{:?}",
            state.verdicts
        );
        for table in state.tables.values() {
            assert_eq!(table.services.len(), 12);
            let endpoints: Vec<_> = table
                .services
                .iter()
                .flat_map(|s| &s.ports)
                .flat_map(|p| &p.endpoints)
                .collect();
            assert_eq!(endpoints.len(), 48);
            assert!(endpoints.iter().all(|e| e.ready && e.identity.is_some()));
        }
        let split = state.tables["ns-0"]
            .services
            .iter()
            .find(|s| s.name == "svc-3")
            .unwrap();
        assert_eq!(split.policy.outbound.split.len(), 2);
    }

    #[test]
    fn run_without_propagation_measures_the_in_process_parts() {
        let opts = ControlOptions {
            scale: SMALL,
            runs: 2,
            propagation: None,
        };
        let figures = run(&opts).unwrap();
        assert_eq!((figures.endpoints, figures.routes_tables), (48, 3));
        assert!(figures.routes_json_gzip_bytes < figures.routes_json_bytes);
        assert!(figures.routes_fit_configmap);
        assert!(figures.desired_ms >= figures.desired_min_ms);
        assert!(figures.propagation.is_none());
        let table = markdown(&figures);
        assert_eq!(table.lines().count(), 7, "{table}");
        assert!(table.contains("| propagation | not measured |"), "{table}");
    }

    #[test]
    fn the_propagation_manifests_load_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let work = Workdir::new(dir.path()).unwrap();
        let objects = synthetic_objects(&Scale::PROPAGATION).unwrap();
        write_manifests(&work.manifests.join("cluster.yaml"), &objects).unwrap();
        work.change_policy(&Scale::PROPAGATION, 1).unwrap();
        let loaded = weft_operator::manifests::load_dir(&work.manifests).unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let cluster = loaded.cluster;
        assert_eq!(cluster.pods.len(), 20);
        assert_eq!(cluster.policies.len(), 5);
        assert_eq!(cluster.pods, objects.pods);
        assert_eq!(pods(&cluster).unwrap().len(), 20);
    }

    #[test]
    fn scales_the_generator_cannot_build_are_refused() {
        let too_many_policies = Scale {
            policies: 20,
            ..SMALL
        };
        assert!(synthetic_cluster(&too_many_policies).is_err());
        let no_namespace = Scale {
            namespaces: 0,
            ..SMALL
        };
        assert!(synthetic_cluster(&no_namespace).is_err());
    }

    #[test]
    fn medians() {
        let t = |ms: &[u64]| {
            ms.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median_ms(&t(&[5, 1, 3])), 3.0);
        assert_eq!(median_ms(&t(&[4, 1, 3, 2])), 3.0);
        assert_eq!((min_ms(&t(&[4, 1])), max_ms(&t(&[4, 1]))), (1.0, 4.0));
        assert_eq!(ms(Duration::from_nanos(1_234_567)), 1.235);
    }
}
