//! `weft-demo`: the whole mesh on this host, from `e2e/demo/` — traffic
//! for a few seconds, then a summary a person can read, then everything
//! removed again. `down` removes what a crashed demo left behind.
//!
//! The demo's manifests are the tests' too, so the names below are the
//! ones `e2e/demo/` uses: the traffic generator runs in pod `loadgen`,
//! calls Service `web/frontend`, which calls Service `shop/backend`; the
//! MeshPolicy lets only the frontend call the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_operator::cluster::{Cluster, ObjectKey};
use weft_operator::crd::MeshPolicy;

use crate::load::LoadReport;
use crate::mesh::{Bins, Mesh, Settings};
use crate::metrics::Metrics;
use crate::netns::{self, Cleanup, Lan};

/// Every network namespace of the demo is named `weft-demo-…`.
pub const PREFIX: &str = "weft-demo";
/// The pod the traffic generator runs in.
pub const CLIENT_POD: &str = "loadgen";
/// The Service the traffic goes to.
pub const FRONTEND: (&str, &str) = ("web", "frontend");
/// The Service behind it; the client may not call it directly.
pub const BACKEND: (&str, &str) = ("shop", "backend");

const OPENED: &str = "weft_connections_opened_total";
const DENIED: &str = "weft_connections_denied_total";

/// The demo's working directory: mounts, operator state, logs.
pub fn workdir() -> PathBuf {
    std::env::temp_dir().join(PREFIX)
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub manifests: PathBuf,
    pub duration: Duration,
    pub rate: f64,
}

/// The first port of Service `ns/name` at its virtual IP.
pub fn service_addr(cluster: &Cluster, (ns, name): (&str, &str)) -> Result<SocketAddr, String> {
    let svc = cluster
        .services
        .get(&ObjectKey::new(ns, name))
        .ok_or_else(|| format!("the manifests have no Service {ns}/{name}"))?;
    let spec = svc.spec.as_ref();
    let ip: Ipv4Addr = spec
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| format!("Service {ns}/{name}: spec.clusterIP is not an IPv4 address"))?;
    let port = spec
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| u16::try_from(p.port).ok())
        .ok_or_else(|| format!("Service {ns}/{name}: spec.ports is empty"))?;
    Ok(SocketAddr::from((ip, port)))
}

/// What the demo saw, for [`Summary::render`].
pub struct Summary {
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub duration: Duration,
    pub load: LoadReport,
    /// The direct call of the backend by the client: `Err` when refused.
    pub direct: Result<String, String>,
    /// Each meshed pod's proxy metrics.
    pub metrics: BTreeMap<String, Metrics>,
    /// `(policy, accepted, reason, what it says)`.
    pub policies: Vec<(String, bool, String, String)>,
    /// `ip netns exec …` per meshed pod.
    pub metrics_commands: Vec<String>,
    pub hold: bool,
}

impl Summary {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = &mut out;
        let (fns, fname) = FRONTEND;
        let (bns, bname) = BACKEND;
        let _ = writeln!(w, "\n== Weft local mesh: summary ==\n");
        let _ = writeln!(
            w,
            "Traffic      {CLIENT_POD} -> {fns}/{fname} {} -> {bns}/{bname} {}, {:.1} s, a new connection per request",
            self.frontend,
            self.backend,
            self.duration.as_secs_f64()
        );
        let l = &self.load;
        let _ = writeln!(w, "  sent       {}", l.sent);
        let _ = writeln!(w, "  answered   {}   failed {}", l.answered, l.failed);
        let by = l.by_replica();
        let most = by.values().map(|t| t.count).max().unwrap_or(1).max(1);
        for (replica, tally) in &by {
            let bar = "#".repeat(usize::try_from(tally.count * 30 / most).unwrap_or(0));
            let _ = writeln!(w, "    {replica:<12} {:>6}  {bar}", tally.count);
        }
        for (error, n) in &l.errors {
            let _ = writeln!(w, "    failed: {n} x {error}");
        }

        let _ = writeln!(
            w,
            "\nIdentities   verified by the proxies in the TLS handshake (weft_connections_opened_total, tls=\"true\")"
        );
        let (mut mtls, mut plain) = (0.0, 0.0);
        let mut pods: Vec<(&String, &Metrics)> = self.metrics.iter().collect();
        // In the order the traffic flows: client, frontend, backends.
        pods.sort_by_key(|(pod, _)| (pod.as_str() != CLIENT_POD, !pod.starts_with(fname)));
        for (pod, m) in pods {
            mtls += m.sum(OPENED, &[("direction", "inbound"), ("tls", "true")]);
            plain += m.sum(OPENED, &[("direction", "inbound"), ("tls", "false")]);
            for (dir, arrow, role) in [("inbound", "<-", "client"), ("outbound", "->", "server")] {
                let peers = m.by_label(
                    OPENED,
                    &[("direction", dir), ("tls", "true")],
                    "peer_identity",
                );
                for (id, n) in peers {
                    let unit = if n == 1.0 {
                        "connection"
                    } else {
                        "connections"
                    };
                    let _ = writeln!(w, "  {pod:<12} {arrow} {role} {id:<45} {n:>6} {unit}");
                }
            }
        }
        let state = if plain == 0.0 && mtls > 0.0 {
            "on"
        } else {
            "NOT on everywhere"
        };
        let _ = writeln!(
            w,
            "\nmTLS         {state}: {mtls} of {} connections the proxies accepted were mutual TLS 1.3, {plain} plaintext",
            mtls + plain
        );

        for (key, accepted, reason, says) in &self.policies {
            let verdict = if *accepted {
                reason.clone()
            } else {
                format!("NOT accepted: {reason}")
            };
            let _ = writeln!(w, "\nMeshPolicy   {key} ({verdict}): {says}");
        }
        let denials: Vec<String> = self
            .metrics
            .iter()
            .flat_map(|(pod, m)| {
                m.matching(DENIED, &[])
                    .filter(|s| s.value > 0.0)
                    .map(|s| {
                        format!(
                            "{pod}'s proxy refused {} ({}) x{}",
                            s.labels.get("peer_identity").map_or("", |v| v.as_str()),
                            s.labels.get("reason").map_or("", |v| v.as_str()),
                            s.value
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let outcome = match &self.direct {
            Err(e) => format!("refused ({})", e.lines().last().unwrap_or_default().trim()),
            Ok(body) => format!("ANSWERED {:?}: the policy did not hold", body.trim()),
        };
        let _ = writeln!(
            w,
            "  {CLIENT_POD} -> {bns}/{bname} {} directly: {outcome}",
            self.backend
        );
        for d in &denials {
            let _ = writeln!(w, "    {d}");
        }

        let _ = writeln!(
            w,
            "\nMetrics      each proxy serves /metrics, /config and /ready on port 7191 in its pod's network namespace:"
        );
        for cmd in &self.metrics_commands {
            let _ = writeln!(w, "  {cmd}");
        }
        if !self.hold {
            let _ = writeln!(
                w,
                "  (the demo removes the mesh when it ends; `make demo DEMO_FLAGS=--hold` keeps it up until Ctrl-C)"
            );
        }
        out
    }
}

/// A MeshPolicy's spec in one line.
pub fn describe_policy(p: &MeshPolicy) -> String {
    let s = &p.spec;
    let mut parts = Vec::new();
    if let Some(t) = &s.target_ref {
        parts.push(format!("for Service {}", t.name));
    }
    if let Some(m) = &s.mtls {
        parts.push(format!("mTLS {:?}", m.mode));
    }
    if let Some(a) = &s.authorization {
        let allow: Vec<String> = a
            .allow
            .iter()
            .map(|r| match (&r.service_account, &r.namespace) {
                (Some(sa), _) => format!("serviceAccount {sa}"),
                (_, Some(ns)) => format!("namespace {ns}"),
                _ => "?".into(),
            })
            .collect();
        parts.push(format!(
            "authorization default {:?}, allow {}",
            a.default,
            if allow.is_empty() {
                "nobody".into()
            } else {
                allow.join(", ")
            }
        ));
    }
    parts.join("; ")
}

/// Checks the host and the manifests and builds the demo's (empty) mesh;
/// `on_lan` gets the LAN's cleanup handle as soon as the LAN exists, for
/// the signal handler.
pub fn prepare(options: &UpOptions, on_lan: impl FnOnce(Cleanup)) -> Result<Mesh, String> {
    if let Some(why) = netns::unsupported() {
        return Err(format!(
            "needs root and network namespaces ({why}); run it as root on Linux: sudo make demo"
        ));
    }
    let leftovers = netns::namespaces_with_prefix(&format!("{PREFIX}-"));
    let dir = workdir();
    if !leftovers.is_empty() || dir.exists() {
        return Err(format!(
            "an earlier demo is running or left things behind ({}{}): stop it, or run `make demo-down`",
            leftovers.join(", "),
            if dir.exists() {
                format!(" {}", dir.display())
            } else {
                String::new()
            }
        ));
    }
    let loaded = weft_operator::manifests::load_dir(&options.manifests)
        .map_err(|e| format!("reading {}: {e}", options.manifests.display()))?;
    if let Some(e) = loaded.errors.first() {
        return Err(format!("bad manifest: {e}"));
    }
    crate::kubelet::plan(&loaded.cluster)?;
    service_addr(&loaded.cluster, FRONTEND)?;
    service_addr(&loaded.cluster, BACKEND)?;

    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(dir.join("pid"), std::process::id().to_string())
        .map_err(|e| format!("writing {}: {e}", dir.join("pid").display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding weft-demo itself: {e}"))?;
    let scratch = dir.join("bin");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let bins = Bins::in_dir(exe.parent().unwrap_or(Path::new(".")), &scratch);
    let lan = Lan::named(PREFIX);
    on_lan(lan.cleanup());
    let settings = Settings {
        reload_poll: Duration::from_secs(2),
        ..Settings::default()
    };
    Ok(Mesh::new(lan, &dir, &options.manifests, bins, settings))
}

/// Starts everything, runs the traffic, and returns the summary.
pub fn run(mesh: &mut Mesh, options: &UpOptions, hold: bool) -> Summary {
    let step = |s: String| println!("weft-demo: {s}");
    step(format!(
        "LAN: bridge br0 in network namespace {}; pods get addresses in 198.18.0.0/16, Services virtual IPs in 198.19.0.0/16 (resolved by the proxies, no kube-proxy); nothing is added to the host's own network",
        mesh.lan().hub_ns()
    ));
    step(format!("operator: {}", mesh.operator_command().join(" ")));
    mesh.start_operator();
    let started = mesh.start_pods();
    for name in &started {
        let p = mesh.pod(name);
        let what = if p.plan.meshed {
            format!(
                "weft-proxy init + weft-proxy run (UID {}), then",
                weft_api::names::PROXY_UID
            )
        } else {
            "not meshed:".into()
        };
        let apps: Vec<String> = p
            .plan
            .containers
            .iter()
            .map(|c| format!("{} (UID {})", c.argv.join(" "), c.uid))
            .collect();
        step(format!(
            "pod {}/{} {} in netns {}: {what} {}",
            p.plan.namespace,
            p.plan.name,
            p.plan.ip,
            p.pod.ns,
            apps.join(", ")
        ));
    }
    let cluster = weft_operator::manifests::load_dir(mesh.manifests())
        .map(|l| l.cluster)
        .unwrap_or_default();
    let frontend = service_addr(&cluster, FRONTEND).unwrap();
    let backend = service_addr(&cluster, BACKEND).unwrap();
    step(format!(
        "traffic: {CLIENT_POD} -> http://{frontend}/ for {:.0} s at {} requests/s",
        options.duration.as_secs_f64(),
        options.rate
    ));
    let duration = format!("{}ms", options.duration.as_millis());
    let rate = options.rate.to_string();
    let load = mesh
        .start_load(
            CLIENT_POD,
            frontend,
            &["--duration", &duration, "--rate", &rate],
        )
        .wait();
    step(format!(
        "policy: {CLIENT_POD} -> http://{backend}/ directly (its identity is not allowed)"
    ));
    let direct = mesh.get(CLIENT_POD, backend, "/");

    let metrics: BTreeMap<String, Metrics> = mesh
        .pods()
        .filter(|p| p.plan.meshed)
        .map(|p| (p.plan.name.clone(), mesh.metrics(&p.plan.name)))
        .collect();
    let status: serde_json::Value = std::fs::read(mesh.state().join("policy-status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let policies = cluster
        .policies
        .iter()
        .map(|(key, p)| {
            let s = &status[key.to_string()];
            let accepted = s["accepted"].as_bool().unwrap_or(false);
            let mut reason = s["reason"]
                .as_str()
                .unwrap_or("no status written")
                .to_owned();
            if let Some(message) = s["message"].as_str().filter(|_| !accepted) {
                reason = format!("{reason}: {message}");
            }
            (key.to_string(), accepted, reason, describe_policy(p))
        })
        .collect();
    let metrics_commands = mesh
        .pods()
        .filter(|p| p.plan.meshed)
        .map(|p| format!("ip netns exec {} curl -s localhost:7191/metrics", p.pod.ns))
        .collect();
    Summary {
        frontend,
        backend,
        duration: options.duration,
        load,
        direct,
        metrics,
        policies,
        metrics_commands,
        hold,
    }
}

/// Removes what a demo left behind: the processes in its network
/// namespaces, the namespaces, its working directory. Refuses while the
/// demo that made them is still running. Returns what it did.
pub fn down() -> Result<String, String> {
    let dir = workdir();
    if let Some(pid) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
    {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // A zombie (killed, not yet reaped) is gone.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if comm.trim() == "weft-demo" && !zombie {
            return Err(format!(
                "the demo is running (PID {pid}): stop it with Ctrl-C (or kill {pid}); it cleans up after itself"
            ));
        }
    }
    let namespaces = netns::namespaces_with_prefix(&format!("{PREFIX}-"));
    let mut killed = 0;
    // Pods first, the hub (with the operator) last.
    let (hubs, pods): (Vec<&String>, Vec<&String>) =
        namespaces.iter().partition(|n| n.ends_with("-hub"));
    for ns in pods.into_iter().chain(hubs) {
        killed += netns::delete_namespace(ns);
    }
    let had_dir = dir.exists();
    if had_dir {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    Ok(if namespaces.is_empty() && !had_dir {
        "nothing to clean up".into()
    } else {
        format!(
            "removed {} network namespaces{}, stopped {killed} processes{}",
            namespaces.len(),
            if namespaces.is_empty() {
                String::new()
            } else {
                format!(" ({})", namespaces.join(", "))
            },
            if had_dir {
                format!(", removed {}", dir.display())
            } else {
                String::new()
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::{mesh_config, plan};
    use weft_operator::endpoints::derive_slices;

    fn demo_cluster() -> Cluster {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        let loaded = weft_operator::manifests::load_dir(&dir).unwrap();
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.cluster
    }

    #[test]
    fn the_demo_manifests_describe_the_frontend_backend_shape() {
        let mut cluster = demo_cluster();
        let plans = plan(&cluster).unwrap();
        let pods: Vec<(&str, bool)> = plans.iter().map(|p| (p.name.as_str(), p.meshed)).collect();
        assert_eq!(
            pods,
            [
                ("backend-0", true),
                ("backend-1", true),
                ("backend-2", true),
                ("frontend-0", true),
                ("loadgen", true)
            ]
        );
        assert!(
            plans
                .iter()
                .all(|p| p.containers.iter().all(|c| c.uid == 1000))
        );
        assert_eq!(
            service_addr(&cluster, FRONTEND).unwrap(),
            "198.19.0.10:80".parse().unwrap()
        );
        assert_eq!(
            service_addr(&cluster, BACKEND).unwrap(),
            "198.19.0.20:80".parse().unwrap()
        );
        // What the operator makes of them: three ready meshed endpoints
        // behind the backend, and the policy accepted.
        for slice in derive_slices(&cluster) {
            cluster.apply(weft_operator::cluster::Object::EndpointSlice(Box::new(
                slice,
            )));
        }
        let desired = weft_operator::desired::desired(&cluster, &mesh_config());
        let table = &desired.tables["web"];
        let backend = table.services.iter().find(|s| s.name == "backend").unwrap();
        let endpoints = &backend.ports[0].endpoints;
        assert_eq!(endpoints.len(), 3);
        assert!(
            endpoints
                .iter()
                .all(|e| e.ready && e.port == 8080 && e.identity.is_some())
        );
        assert!(
            desired.verdicts.values().all(|v| v.accepted()),
            "{:?}",
            desired.verdicts
        );
        let policy = &cluster.policies[&ObjectKey::new("shop", "backend")];
        assert_eq!(
            describe_policy(policy),
            "for Service backend; mTLS Strict; authorization default Deny, allow serviceAccount web/frontend"
        );
    }

    #[test]
    fn the_summary_says_what_happened() {
        let mut load = LoadReport {
            sent: 3,
            answered: 3,
            ..Default::default()
        };
        for (answer, n) in [
            ("frontend-0 -> backend-0", 2),
            ("frontend-0 -> backend-1", 1),
        ] {
            load.answers.insert(
                answer.into(),
                crate::load::Tally {
                    count: n,
                    first_ms: 1,
                    last_ms: 2,
                },
            );
        }
        let metrics = Metrics::parse(
            r#"weft_connections_opened_total{direction="inbound",peer_identity="spiffe://cluster.local/ns/web/sa/frontend",tls="true"} 2
weft_connections_denied_total{direction="inbound",peer_identity="spiffe://cluster.local/ns/web/sa/loadgen",reason="not_authorized"} 1
"#,
        );
        let summary = Summary {
            frontend: "198.19.0.10:80".parse().unwrap(),
            backend: "198.19.0.20:80".parse().unwrap(),
            duration: Duration::from_secs(5),
            load,
            direct: Err("weft-e2e-app: connection closed before message completed".into()),
            metrics: [("backend-0".to_owned(), metrics)].into(),
            policies: vec![(
                "shop/backend".into(),
                true,
                "Accepted".into(),
                "mTLS Strict".into(),
            )],
            metrics_commands: vec![
                "ip netns exec weft-demo-backend-0 curl -s localhost:7191/metrics".into(),
            ],
            hold: false,
        }
        .render();
        for line in [
            "  sent       3",
            "  answered   3   failed 0",
            "    backend-0         2  ##############################",
            "    backend-1         1  ###############",
            "  backend-0    <- client spiffe://cluster.local/ns/web/sa/frontend",
            "mTLS         on: 2 of 2 connections",
            "MeshPolicy   shop/backend (Accepted): mTLS Strict",
            "directly: refused (weft-e2e-app: connection closed before message completed)",
            "backend-0's proxy refused spiffe://cluster.local/ns/web/sa/loadgen (not_authorized) x1",
            "  ip netns exec weft-demo-backend-0 curl -s localhost:7191/metrics",
        ] {
            assert!(summary.contains(line), "no {line:?} in:\n{summary}");
        }
    }
}
