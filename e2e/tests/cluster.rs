//! The real-cluster suite: installs the chart, meshes two namespaces,
//! deploys the sample app, and asserts injection, mTLS identities and a
//! MeshPolicy deny — on a real Kubernetes cluster.
//!
//! Ignored unless `WEFT_E2E_KUBECONFIG` names a kubeconfig (e.g. a kind
//! cluster with the images loaded: `make images images-e2e kind-load
//! kind-load-e2e`). `WEFT_E2E_IMAGE_TAG` picks the image tag (default: the
//! workspace version); `WEFT_E2E_KEEP=1` leaves everything installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const RELEASE_NS: &str = "weft-system";
const SHOP: &str = "weft-e2e-shop";
const WEB: &str = "weft-e2e-web";

struct Cluster {
    kubeconfig: PathBuf,
    tag: String,
    keep: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Cluster {
    fn from_env() -> Option<Self> {
        let kubeconfig = PathBuf::from(std::env::var_os("WEFT_E2E_KUBECONFIG")?);
        Some(Self {
            kubeconfig,
            tag: std::env::var("WEFT_E2E_IMAGE_TAG")
                .unwrap_or_else(|_| env!("CARGO_PKG_VERSION").into()),
            keep: std::env::var_os("WEFT_E2E_KEEP").is_some(),
        })
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(program);
        cmd.args(args).env("KUBECONFIG", &self.kubeconfig);
        let out = match stdin {
            None => cmd.output(),
            Some(input) => {
                use std::io::Write;
                let mut child = cmd
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{program}: {e}"));
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
                child.wait_with_output()
            }
        };
        out.unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"))
    }

    /// Runs kubectl and returns stdout; panics with stderr on failure.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.run("kubectl", args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, manifest: &str) {
        let out = self.run("kubectl", &["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn manifest(&self, name: &str, backend: &str) -> String {
        std::fs::read_to_string(repo().join("e2e/cluster").join(name))
            .unwrap()
            .replace("IMAGE", &format!("weft-e2e-app:{}", self.tag))
            .replace("BACKEND", backend)
    }

    fn install_chart(&self) {
        let chart = repo().join("charts/weft");
        let tag = format!("images.tag={}", self.tag);
        let out = self.run(
            "helm",
            &[
                "upgrade",
                "--install",
                "weft",
                chart.to_str().unwrap(),
                "--namespace",
                RELEASE_NS,
                "--create-namespace",
                "--set",
                &tag,
                "--wait",
                "--timeout",
                "5m",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "helm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `weft-e2e-app ARGS` in the loadgen pod's app container.
    fn in_loadgen(&self, args: &[&str]) -> Output {
        let mut full = vec![
            "exec",
            "-n",
            WEB,
            "loadgen",
            "-c",
            "app",
            "--",
            "weft-e2e-app",
        ];
        full.extend_from_slice(args);
        self.run("kubectl", &full, None)
    }

    fn pod_metrics(&self, ns: &str, pod: &str) -> String {
        let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:7191/proxy/metrics");
        self.kubectl(&["get", "--raw", &path])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for ns in [SHOP, WEB] {
            let _ = self.run(
                "kubectl",
                &["delete", "namespace", ns, "--wait=false"],
                None,
            );
        }
        let _ = self.run(
            "helm",
            &["uninstall", "weft", "--namespace", RELEASE_NS],
            None,
        );
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn chart_injection_mtls_and_policy_on_a_real_cluster() {
    let Some(cluster) = Cluster::from_env() else {
        eprintln!("skipping: set WEFT_E2E_KUBECONFIG to run the real-cluster suite (see README)");
        return;
    };
    cluster.install_chart();
    cluster.apply(&cluster.manifest("namespaces.yaml", ""));
    cluster.apply(&cluster.manifest("backend.yaml", ""));
    let backend_ip = cluster.kubectl(&[
        "get",
        "svc",
        "-n",
        SHOP,
        "backend",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    cluster.apply(&cluster.manifest("frontend.yaml", &format!("{backend_ip}:80")));
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        SHOP,
        "deploy/backend",
        "--timeout=5m",
    ]);
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        WEB,
        "deploy/frontend",
        "--timeout=5m",
    ]);
    cluster.kubectl(&[
        "wait",
        "-n",
        WEB,
        "pod/loadgen",
        "--for=condition=Ready",
        "--timeout=5m",
    ]);

    // Injection: every pod carries the annotation and the proxy container.
    for ns in [SHOP, WEB] {
        let pods = cluster.kubectl(&[
            "get", "pods", "-n", ns, "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.annotations.weft\.dev/injected} {.spec.initContainers[*].name} {.spec.containers[*].name}{"\n"}{end}"#,
        ]);
        for line in pods.lines() {
            assert!(
                line.contains("weft-proxy") && line.contains("weft-init"),
                "not injected: {line}"
            );
        }
    }

    // Traffic through the frontend reaches all three backends.
    let frontend_ip = cluster.kubectl(&[
        "get",
        "svc",
        "-n",
        WEB,
        "frontend",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let target = format!("{frontend_ip}:80");
    let out = cluster.in_loadgen(&[
        "load",
        "--target",
        &target,
        "--requests",
        "60",
        "--rate",
        "30",
    ]);
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["answered"], 60, "{report}");

    // mTLS: a backend's proxy saw the frontend's verified identity.
    let backends = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        SHOP,
        "-l",
        "app=backend",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let frontend_id =
        format!(r#"peer_identity="spiffe://cluster.local/ns/{WEB}/sa/frontend",tls="true""#);
    assert!(
        backends
            .split_whitespace()
            .any(|pod| cluster.pod_metrics(SHOP, pod).contains(&frontend_id)),
        "no backend proxy counted a connection from {frontend_id}"
    );

    // A policy allowing only the frontend: accepted, then enforced.
    cluster.apply(&cluster.manifest("policy.yaml", ""));
    eventually(
        "the MeshPolicy to be accepted",
        Duration::from_secs(60),
        || {
            cluster.kubectl(&[
                "get",
                "mp",
                "-n",
                SHOP,
                "backend",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Accepted")].status}"#,
            ]) == "True"
        },
    );
    let direct = format!("{backend_ip}:80");
    eventually(
        "loadgen to be refused by the backend",
        Duration::from_secs(120),
        || !cluster.in_loadgen(&["get", &direct, "/"]).status.success(),
    );
    let via_frontend = cluster.in_loadgen(&["get", &target, "/"]);
    assert!(
        via_frontend.status.success(),
        "the frontend is still allowed: {}",
        String::from_utf8_lossy(&via_frontend.stderr)
    );
}
