//! The local mesh: a LAN of pods (network namespaces), `weft-operator
//! local` writing their mounts from a directory of manifests as the kubelet
//! would, and in each meshed pod `weft-proxy init` then `weft-proxy run`
//! (UID 7102) before its containers start (UID 1000 unless the manifest
//! says otherwise). Shared by the end-to-end tests and `weft-demo`.
//!
//! Layout of the working directory: `mounts/<namespace>/<pod>/{routes,
//! identity}` (written by the operator), `state/` (the operator's CA and
//! generations), `logs/` (one file per process).
//!
//! Test code: setup failures panic with a message saying what failed and
//! where the logs are.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_api::names::{ADMIN_PORT, CERT_FILE, PROXY_UID, ROUTES_FILE, env};

use crate::kubelet::{APP_UID, PodPlan};
use crate::load::{LoadReport, unix_ms};
use crate::metrics::Metrics;
use crate::netns::{Lan, Pod, Spawn};

/// The workspace binaries the mesh runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub proxy: PathBuf,
    pub operator: PathBuf,
    pub app: PathBuf,
}

impl Bins {
    /// The binaries in `dir` (`target/debug` or `target/release`). When the
    /// proxy's and the apps' users could not run them there (a directory on
    /// the way is not searchable by others, e.g. under `/root`), they are
    /// linked (or else copied) into `scratch`, which must be searchable.
    /// The operator runs as root and is used where it is.
    pub fn in_dir(dir: &Path, scratch: &Path) -> Self {
        let find = |name: &str, shared: bool| {
            let path = dir.join(name);
            assert!(
                path.exists(),
                "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
                path.display()
            );
            if !shared || runnable_by_anyone(&path) {
                return path;
            }
            let link = scratch.join(name);
            if std::fs::hard_link(&path, &link).is_err() {
                std::fs::copy(&path, &link).unwrap_or_else(|e| {
                    panic!("copying {} to {}: {e}", path.display(), link.display())
                });
            }
            link
        };
        Self {
            proxy: find("weft-proxy", true),
            operator: find("weft-operator", false),
            app: find("weft-e2e-app", true),
        }
    }

    /// A container's `argv[0]`: a workspace binary by name, else as written
    /// (found on `PATH`).
    pub fn resolve(&self, argv0: &str) -> String {
        match argv0 {
            "weft-e2e-app" => self.app.display().to_string(),
            "weft-proxy" => self.proxy.display().to_string(),
            other => other.to_owned(),
        }
    }
}

/// Whether every directory up to `path` is searchable, and `path`
/// executable, by users other than the owner.
fn runnable_by_anyone(path: &Path) -> bool {
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode());
    mode(path).is_ok_and(|m| m & 0o001 != 0)
        && path
            .ancestors()
            .skip(1)
            .all(|dir| dir.as_os_str().is_empty() || mode(dir).is_ok_and(|m| m & 0o001 != 0))
}

/// Knobs of the mesh's processes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The operator's `--debounce`: quiet time before a rewrite.
    pub operator_debounce: Duration,
    /// The operator's `--resync`.
    pub operator_resync: Duration,
    /// The proxies' `WEFT_RELOAD_POLL` backstop.
    pub reload_poll: Duration,
    /// The proxies' `WEFT_RELOAD_DEBOUNCE`.
    pub reload_debounce: Duration,
    /// The n-th pod's proxy (in name order, from 0) reloads `n × skew`
    /// later, as kubelets refresh mounts on different nodes at different
    /// times: a change then reaches the pods one after another. Keep
    /// `reload_poll` longer than the largest delay, or the poll wins.
    pub reload_skew: Duration,
    /// `WEFT_LOG` of the operator and the proxies.
    pub log: String,
    /// How long anything may take to come up.
    pub timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator_debounce: Duration::from_millis(50),
            operator_resync: Duration::from_secs(30),
            reload_poll: Duration::from_secs(1),
            reload_debounce: Duration::from_millis(50),
            reload_skew: Duration::ZERO,
            log: "info".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `d` as the binaries' flags take it: `250ms`, `30s`.
pub fn duration_flag(d: Duration) -> String {
    match d.as_millis() {
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// One pod of the mesh and what runs in it.
pub struct MeshPod {
    pub plan: PodPlan,
    pub pod: Pod,
    /// The proxy's PID, for meshed pods.
    pub proxy: Option<u32>,
    pub containers: Vec<u32>,
}

pub struct Mesh {
    // Dropped first: every process is stopped before anything else goes.
    lan: Lan,
    dir: PathBuf,
    manifests: PathBuf,
    bins: Bins,
    settings: Settings,
    operator: Option<u32>,
    operator_starts: usize,
    pods: BTreeMap<String, MeshPod>,
}

impl Mesh {
    /// A mesh on `lan`, keeping its files in `dir`, reading `manifests`.
    pub fn new(lan: Lan, dir: &Path, manifests: &Path, bins: Bins, settings: Settings) -> Self {
        for sub in ["", "mounts", "state", "logs"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
            // The proxies (UID 7102) read the mounts; the apps write nothing here.
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self {
            lan,
            dir: dir.to_path_buf(),
            manifests: manifests.to_path_buf(),
            bins,
            settings,
            operator: None,
            operator_starts: 0,
            pods: BTreeMap::new(),
        }
    }

    pub fn lan(&self) -> &Lan {
        &self.lan
    }

    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    pub fn mounts(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The command line `start_operator` runs.
    pub fn operator_command(&self) -> Vec<String> {
        [
            self.bins.operator.display().to_string(),
            "local".into(),
            "--manifests".into(),
            self.manifests.display().to_string(),
            "--mounts".into(),
            self.mounts().display().to_string(),
            "--state".into(),
            self.state().display().to_string(),
            "--debounce".into(),
            duration_flag(self.settings.operator_debounce),
            "--resync".into(),
            duration_flag(self.settings.operator_resync),
        ]
        .into()
    }

    /// Starts `weft-operator local` in watch mode (in the hub namespace: it
    /// needs no network, and so it is stopped with the LAN).
    pub fn start_operator(&mut self) {
        assert!(self.operator.is_none(), "the operator is already running");
        self.operator_starts += 1;
        let log = self
            .logs()
            .join(format!("operator-{}.log", self.operator_starts));
        let args = self.operator_command();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [
            (env::LOG, self.settings.log.clone()),
            (env::LOG_FORMAT, "plain".to_owned()),
            // Logs go to files: no terminal colours.
            ("NO_COLOR", "1".to_owned()),
        ];
        self.operator = Some(self.lan.spawn_in_hub(&args, &env, &log));
    }

    /// Kills the operator (as a crash or a node failure would).
    pub fn stop_operator(&mut self) {
        if let Some(pid) = self.operator.take() {
            self.lan.kill(pid);
        }
    }

    pub fn operator_running(&self) -> bool {
        self.operator.is_some()
    }

    /// The plans of the Pods in the manifests.
    pub fn plans(&self) -> Vec<PodPlan> {
        let loaded = weft_operator::manifests::load_dir(&self.manifests)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.manifests.display()));
        assert!(
            loaded.errors.is_empty(),
            "bad manifests: {}",
            loaded
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        crate::kubelet::plan(&loaded.cluster).unwrap_or_else(|e| panic!("{e}"))
    }

    fn mount_dir(&self, plan: &PodPlan) -> PathBuf {
        self.mounts().join(&plan.namespace).join(&plan.name)
    }

    /// Starts every Pod of the manifests not started yet: its namespace,
    /// then (when meshed, once the operator has written its mounts) `weft-proxy
    /// init` and `weft-proxy run`, waiting until the proxy is ready, then
    /// its containers, waiting for their ports. Returns the pods started.
    pub fn start_pods(&mut self) -> Vec<String> {
        let plans: Vec<PodPlan> = self
            .plans()
            .into_iter()
            .filter(|p| !self.pods.contains_key(&p.name))
            .collect();
        let mut started = Vec::new();
        for plan in plans {
            let pod = self.lan.pod(&plan.name, plan.ip);
            started.push(plan.name.clone());
            self.pods.insert(
                plan.name.clone(),
                MeshPod {
                    plan,
                    pod,
                    proxy: None,
                    containers: Vec::new(),
                },
            );
        }
        for name in &started {
            if self.pods[name].plan.meshed {
                self.start_proxy(name);
            }
        }
        for name in &started {
            if self.pods[name].plan.meshed {
                self.wait_until(&format!("the proxy of {name} is ready"), || {
                    self.admin(name, "/ready").is_ok()
                });
            }
        }
        for name in &started {
            self.start_containers(name);
        }
        started
    }

    fn start_proxy(&mut self, name: &str) {
        let plan = self.pods[name].plan.clone();
        let nth = self.pods.keys().position(|k| k == name).unwrap_or(0);
        let debounce = self.settings.reload_debounce
            + self.settings.reload_skew * u32::try_from(nth).unwrap_or(0);
        let root = self.mount_dir(&plan);
        let (routes, identity) = (root.join("routes"), root.join("identity"));
        self.wait_until(
            &format!(
                "the operator to write {}/{{routes,identity}}",
                root.display()
            ),
            || routes.join(ROUTES_FILE).exists() && identity.join(CERT_FILE).exists(),
        );
        let proxy = self.bins.proxy.display().to_string();
        let mp = &self.pods[name];
        mp.pod.run(&[&proxy, "init"]);
        let env = [
            (env::POD_NAME, plan.name.clone()),
            (env::POD_NAMESPACE, plan.namespace.clone()),
            (env::POD_IP, plan.ip.to_string()),
            (env::SERVICE_ACCOUNT, plan.service_account.clone()),
            (env::ROUTES_DIR, routes.display().to_string()),
            (env::IDENTITY_DIR, identity.display().to_string()),
            (env::LOG, self.settings.log.clone()),
            (env::LOG_FORMAT, "plain".to_owned()),
            (env::GLIBC_TUNABLES, env::PROXY_GLIBC_TUNABLES.to_owned()),
            ("NO_COLOR", "1".to_owned()),
            // There is no API server: the mounted files are the only source.
            ("WEFT_API_WATCH", "off".to_owned()),
            ("WEFT_RELOAD_POLL", duration_flag(self.settings.reload_poll)),
            ("WEFT_RELOAD_DEBOUNCE", duration_flag(debounce)),
            ("WEFT_SHUTDOWN_GRACE_PERIOD", "1s".to_owned()),
        ];
        let log = self.logs().join(format!("{name}.proxy.log"));
        let pid = mp.pod.spawn_as(PROXY_UID, &[&proxy, "run"], &env, &log);
        self.pods.get_mut(name).unwrap().proxy = Some(pid);
    }

    fn start_containers(&mut self, name: &str) {
        let plan = self.pods[name].plan.clone();
        let mut pids = Vec::new();
        for c in &plan.containers {
            let mut argv = c.argv.clone();
            argv[0] = self.bins.resolve(&argv[0]);
            let args: Vec<&str> = argv.iter().map(String::as_str).collect();
            let env: Vec<(&str, String)> =
                c.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let log = self.logs().join(format!("{name}.{}.log", c.name));
            pids.push(self.pods[name].pod.spawn_as(c.uid, &args, &env, &log));
        }
        self.pods.get_mut(name).unwrap().containers = pids;
        for c in &plan.containers {
            for port in &c.ports {
                self.wait_until(&format!("{name}/{} to listen on {port}", c.name), || {
                    self.probe(name, SocketAddr::from(([127, 0, 0, 1], *port)))
                });
            }
        }
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> &MeshPod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name} in the mesh"))
    }

    pub fn pods(&self) -> impl Iterator<Item = &MeshPod> {
        self.pods.values()
    }

    /// Whether a TCP connection from inside pod `name` to `addr` succeeds
    /// (sends nothing).
    pub fn probe(&self, name: &str, addr: SocketAddr) -> bool {
        let app = self.bins.app.display().to_string();
        self.pod(name)
            .pod
            .try_run(None, &[&app, "probe", &addr.to_string()])
            .status
            .success()
    }

    /// `GET path` from the proxy admin server of pod `name`.
    pub fn admin(&self, name: &str, path: &str) -> Result<String, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        self.run_get(name, None, addr, path)
    }

    /// The proxy's metrics in pod `name`.
    pub fn metrics(&self, name: &str) -> Metrics {
        Metrics::parse(
            &self
                .admin(name, "/metrics")
                .unwrap_or_else(|e| panic!("metrics of {name}: {e}")),
        )
    }

    /// The proxy's `/config` in pod `name`.
    pub fn proxy_config(&self, name: &str) -> serde_json::Value {
        let text = self
            .admin(name, "/config")
            .unwrap_or_else(|e| panic!("/config of {name}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("/config of {name}: {e}: {text}"))
    }

    /// `GET path` from `addr` by an app (UID 1000) in pod `name`: the body
    /// of a 2xx answer, else what went wrong.
    pub fn get(&self, name: &str, addr: SocketAddr, path: &str) -> Result<String, String> {
        self.run_get(name, Some(APP_UID), addr, path)
    }

    fn run_get(
        &self,
        name: &str,
        uid: Option<u32>,
        addr: SocketAddr,
        path: &str,
    ) -> Result<String, String> {
        let app = self.bins.app.display().to_string();
        let out = self
            .pod(name)
            .pod
            .try_run(uid, &[&app, "get", &addr.to_string(), path]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Starts the traffic generator in pod `name` as an app (UID 1000):
    /// `weft-e2e-app load --target TARGET ARGS…`.
    pub fn start_load(&self, name: &str, target: SocketAddr, args: &[&str]) -> LoadRun {
        let mp = self.pod(name);
        let app = self.bins.app.display().to_string();
        let target = target.to_string();
        let mut argv = vec![app.as_str(), "load", "--target", &target];
        argv.extend_from_slice(args);
        let n = unix_ms();
        let out = self.logs().join(format!("{name}.load-{n}.json"));
        let err = self.logs().join(format!("{name}.load-{n}.log"));
        let pid = mp.pod.spawn(&Spawn {
            uid: Some(APP_UID),
            args: &argv,
            env: &[],
            stdout: &out,
            stderr: Some(&err),
        });
        LoadRun {
            pod: mp.pod.clone(),
            pid,
            out,
            err,
        }
    }

    /// Waits until `check` holds, polling; panics after the timeout.
    pub fn wait_until(&self, what: &str, check: impl FnMut() -> bool) {
        wait_until(what, self.settings.timeout, check)
            .unwrap_or_else(|e| panic!("{e} (logs in {})", self.logs().display()));
    }

    /// Kills every process and deletes every namespace now; returns
    /// `(processes, namespaces)` removed.
    pub fn teardown(&mut self) -> (usize, usize) {
        self.operator = None;
        self.lan.cleanup().run()
    }

    /// The snapshot (`..data` target) of pod `name`'s identity mount.
    pub fn identity_snapshot(&self, name: &str) -> Option<String> {
        let link = self.pod_mounts(name).join("identity").join("..data");
        std::fs::read_link(link)
            .ok()
            .map(|t| t.display().to_string())
    }

    /// Whether the proxy of pod `name` uses the identity snapshot `snapshot`.
    pub fn proxy_uses_identity(&self, name: &str, snapshot: &str) -> bool {
        self.admin(name, "/config")
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|c| c["identity"]["source"].as_str().map(str::to_owned))
            .is_some_and(|source| Path::new(&source).ends_with(snapshot))
    }

    /// Pod `name`'s mounts: `<mounts>/<namespace>/<pod>`, holding
    /// `routes/` and `identity/`.
    pub fn pod_mounts(&self, name: &str) -> PathBuf {
        self.mount_dir(&self.pod(name).plan)
    }
}

/// Polls `check` every 50 ms until it holds; an error after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A running traffic generator.
pub struct LoadRun {
    pod: Pod,
    pid: u32,
    out: PathBuf,
    err: PathBuf,
}

impl LoadRun {
    /// Stops the generator (SIGTERM) and returns its report.
    pub fn finish(self) -> LoadReport {
        crate::netns::signal(self.pid, "TERM");
        self.wait()
    }

    /// Waits for the generator to stop by itself and returns its report.
    pub fn wait(self) -> LoadReport {
        if let Some(mut child) = self.pod.take_child(self.pid) {
            let _ = child.wait();
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "no report from the traffic generator ({e}): {text}{}",
                std::fs::read_to_string(&self.err).unwrap_or_default()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_others_cannot_reach_are_linked_where_they_can() {
        let private = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["weft-proxy", "weft-operator", "weft-e2e-app"] {
            let path = private.path().join(name);
            std::fs::write(&path, name).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let bins = Bins::in_dir(private.path(), scratch.path());
        assert_eq!(bins.proxy, scratch.path().join("weft-proxy"));
        assert_eq!(bins.app, scratch.path().join("weft-e2e-app"));
        assert_eq!(std::fs::read(&bins.app).unwrap(), b"weft-e2e-app");
        // Run by root only: used in place.
        assert_eq!(bins.operator, private.path().join("weft-operator"));
        assert_eq!(bins.resolve("weft-e2e-app"), bins.app.display().to_string());
        assert_eq!(bins.resolve("sleep"), "sleep");
    }

    #[test]
    fn durations_are_written_as_the_binaries_read_them() {
        assert_eq!(duration_flag(Duration::from_millis(50)), "50ms");
        assert_eq!(duration_flag(Duration::from_secs(30)), "30s");
        assert_eq!(duration_flag(Duration::from_millis(1500)), "1500ms");
    }
}
