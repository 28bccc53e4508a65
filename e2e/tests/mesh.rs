//! The local mesh end to end: the demo's manifests (`e2e/demo/`) in a
//! temporary directory, the real `weft-operator local` writing each pod's
//! mounts, `weft-proxy init` + `weft-proxy run` in every pod's network
//! namespace, the sample app, and the traffic generator in pod `loadgen`
//! calling `frontend`, which calls the three `backend` replicas. Each test
//! builds its own LAN, changes one thing, and asserts what the traffic saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use weft_e2e::demo::{BACKEND, FRONTEND, service_addr};
use weft_e2e::load::{LoadReport, unix_ms};
use weft_e2e::mesh::{Bins, Mesh, Settings};
use weft_e2e::netns::{self, Lan};
use weft_e2e::pki::spiffe;
use weft_operator::ca::{Authority, ExistingIdentity, TrustAnchor, renewal_due};

const LOADGEN: &str = "loadgen";
const FRONTEND_POD: &str = "frontend-0";
const BACKENDS: [&str; 3] = ["backend-0", "backend-1", "backend-2"];
const OPENED: &str = "weft_connections_opened_total";
const DENIED_REQUESTS: &str = "weft_requests_denied_total";
const REQUESTS: &str = "weft_requests_total";
const RESPONSES: &str = "weft_responses_total";
const RETRIES: &str = "weft_retries_total";
const BUDGET_EXHAUSTED: &str = "weft_retry_budget_exhausted_total";
/// The frontend proxy's name for calls to the backend Service.
const BACKEND_DESTINATION: &str = "shop/backend:80";
/// What `e2e/demo/policy.yaml` says (a spec for `backend_policy`).
const DEMO_SECURITY: &str = "  mtls:\n    mode: Strict\n  authorization:\n    default: Deny\n    allow:\n    - serviceAccount: web/frontend\n";
const CANARY_POD: &str = "backend-canary-0";
/// shop/backend-canary: one more backend replica behind a Service of its
/// own, at the same port as `backend` (a split's backends share the port).
const CANARY: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: backend-canary
  namespace: shop
spec:
  clusterIP: 198.19.0.21
  selector:
    app: backend-canary
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Pod
metadata:
  name: backend-canary-0
  namespace: shop
  labels:
    app: backend-canary
spec:
  serviceAccountName: backend
  containers:
  - name: app
    image: weft-e2e-app
    command: [weft-e2e-app, serve]
    env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    ports:
    - name: http
      containerPort: 8080
status:
  podIP: 198.18.0.23
  conditions:
  - type: Ready
    status: "True"
"#;

/// One test's mesh; on a failure it prints the tail of every log.
struct TestMesh {
    mesh: Mesh,
    frontend: SocketAddr,
    backend: SocketAddr,
    dir: tempfile::TempDir,
}

impl TestMesh {
    /// The demo's manifests, changed by `edit`, running. `None` (after
    /// saying why) where namespaces cannot be made.
    fn start(tag: &str, settings: Settings, edit: impl FnOnce(&Path)) -> Option<Self> {
        if let Some(why) = netns::unsupported() {
            eprintln!("skipping: needs root and network namespaces ({why})");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
        for entry in std::fs::read_dir(&demo).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, manifests.join(path.file_name().unwrap())).unwrap();
        }
        edit(&manifests);
        let cluster = weft_operator::manifests::load_dir(&manifests)
            .unwrap()
            .cluster;
        let frontend = service_addr(&cluster, FRONTEND).unwrap();
        let backend = service_addr(&cluster, BACKEND).unwrap();
        let app = PathBuf::from(env!("CARGO_BIN_EXE_weft-e2e-app"));
        let bins = Bins::in_dir(app.parent().unwrap(), dir.path());
        let mut t = Self {
            mesh: Mesh::new(Lan::new(tag), dir.path(), &manifests, bins, settings),
            frontend,
            backend,
            dir,
        };
        t.mesh.start_operator();
        t.mesh.start_pods();
        Some(t)
    }

    fn manifests(&self) -> &Path {
        self.mesh.manifests()
    }

    /// Replaces (or adds) manifest file `name` in one rename, as an editor
    /// or `kubectl apply` would change the cluster in one step.
    fn write_manifest(&self, name: &str, yaml: &str) {
        let tmp = self.manifests().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests().join(name)).unwrap();
    }

    /// Replaces manifest `name` and waits until the proxies of `pods` use
    /// the routing table the operator wrote for the change.
    fn apply(&self, name: &str, yaml: &str, pods: &[&str]) {
        let before: Vec<serde_json::Value> =
            pods.iter().map(|p| self.routes_generation(p)).collect();
        self.write_manifest(name, yaml);
        for (pod, before) in pods.iter().zip(before) {
            self.wait_until(&format!("{pod}'s proxy to load the new routes"), || {
                self.routes_generation(pod) != before
            });
        }
    }

    /// The generation of the routing table the proxy of `pod` uses.
    fn routes_generation(&self, pod: &str) -> serde_json::Value {
        self.mesh.proxy_config(pod)["routes"]["generation"].clone()
    }

    fn remove_manifest(&self, name: &str) {
        std::fs::remove_file(self.manifests().join(name)).unwrap();
    }

    /// Starts the traffic generator in `loadgen` calling the frontend.
    fn start_traffic(&self, args: &[&str]) -> weft_e2e::mesh::LoadRun {
        self.mesh.start_load(LOADGEN, self.frontend, args)
    }

    fn metric(&self, pod: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.mesh.metrics(pod).sum(name, labels)
    }

    fn wait_until(&self, what: &str, check: impl FnMut() -> bool) {
        self.mesh.wait_until(what, check);
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.mesh.logs()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            eprintln!("==> {} <==\n{tail}\n", log.display());
        }
        let _ = &self.dir;
    }
}

/// The demo's policy with `spec` instead (YAML, indented by 2).
fn backend_policy(spec: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshPolicy\nmetadata:\n  name: backend\n  namespace: shop\nspec:\n  targetRef:\n    kind: Service\n    name: backend\n{spec}"
    )
}

/// Every request answered, by a backend replica through the frontend.
fn assert_all_answered(report: &LoadReport) {
    assert!(report.sent > 0, "no request was sent: {report:?}");
    assert_eq!(
        (report.answered, report.failed),
        (report.sent, 0),
        "failures: {:?}",
        report.errors
    );
    for answer in report.answers.keys() {
        assert!(
            answer.starts_with("frontend-0 -> backend-"),
            "unexpected answer {answer:?}"
        );
    }
}

/// When replica `name` last answered (Unix ms), 0 if never.
fn last_answer(report: &LoadReport, name: &str) -> u64 {
    report.by_replica().get(name).map_or(0, |t| t.last_ms)
}

#[test]
fn mtls_is_verified_between_pods() {
    let Some(t) = TestMesh::start("mtls", Settings::default(), |_| {}) else {
        return;
    };
    assert!(
        std::process::Command::new("tcpdump")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "tcpdump is missing: apt-get install tcpdump"
    );
    let capture = t.mesh.lan().capture("br0", t.dir.path());

    let report = t
        .start_traffic(&["--requests", "30", "--rate", "200"])
        .wait();
    let wire = capture.finish();

    assert_all_answered(&report);
    assert_eq!(report.sent, 30);
    let by = report.by_replica();
    for b in BACKENDS {
        assert!(by.contains_key(b), "{b} never answered: {by:?}");
    }

    // Each hop is mutual TLS with the peer's SPIFFE ID verified, at both
    // ends: every request was carried over such connections (the proxies
    // pool them, so there are fewer connections than requests).
    let (lg, fe, be) = (
        spiffe("web", "loadgen"),
        spiffe("web", "frontend"),
        spiffe("shop", "backend"),
    );
    let requests = |pod: &str, direction: &str, peer: &weft_api::SpiffeId| {
        let labels = [
            ("direction", direction),
            ("tls", "true"),
            ("peer_identity", peer.as_str()),
        ];
        t.metric(pod, REQUESTS, &labels)
    };
    assert_eq!(
        requests(LOADGEN, "outbound", &fe),
        30.0,
        "loadgen -> frontend"
    );
    assert_eq!(
        requests(FRONTEND_POD, "inbound", &lg),
        30.0,
        "frontend <- loadgen"
    );
    assert_eq!(
        requests(FRONTEND_POD, "outbound", &be),
        30.0,
        "frontend -> backend"
    );
    let backends_in: f64 = BACKENDS.iter().map(|b| requests(b, "inbound", &fe)).sum();
    assert_eq!(backends_in, 30.0, "backends <- frontend");
    let mtls_connections = [("tls", "true"), ("peer_identity", fe.as_str())];
    assert!(t.metric(LOADGEN, OPENED, &mtls_connections) >= 1.0);
    for pod in [LOADGEN, FRONTEND_POD].iter().chain(&BACKENDS) {
        assert_eq!(
            t.metric(pod, OPENED, &[("tls", "false")]),
            0.0,
            "{pod} had a plaintext connection"
        );
        assert_eq!(
            t.metric(pod, REQUESTS, &[("tls", "false")]),
            0.0,
            "{pod} had a plaintext request"
        );
    }

    // On the wire: TLS records only; neither requests nor answers in the clear.
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(&[0x16, 0x03, 0x01]),
        "no TLS handshake on the wire"
    );
    assert!(
        contains(&[0x17, 0x03, 0x03]),
        "no TLS application data on the wire"
    );
    assert!(!contains(b"HTTP/1.1"), "HTTP crossed the wire in plaintext");
    assert!(
        !contains(b"backend-1"),
        "an answer crossed the wire in plaintext"
    );
}

#[test]
fn plaintext_is_refused_in_strict_mode() {
    let outside = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: v1
kind: Pod
metadata:
  name: outside
  namespace: outside
spec:
  containers:
  - name: shell
    image: busybox
    command: [sleep, infinity]
status:
  podIP: 198.18.0.100
"#;
    let Some(t) = TestMesh::start("plain", Settings::default(), |dir| {
        std::fs::write(dir.join("outside.yaml"), outside).unwrap();
        std::fs::write(
            dir.join("policy.yaml"),
            backend_policy("  mtls:\n    mode: Strict\n"),
        )
        .unwrap();
    }) else {
        return;
    };
    assert!(t.mesh.pod("outside").proxy.is_none());
    assert!(!t.mesh.mounts().join("outside").exists());

    // A pod outside the mesh calls a backend pod directly, in plaintext:
    // the proxy answers 403 itself, the app never sees it.
    let backend_0: SocketAddr = "198.18.0.20:8080".parse().unwrap();
    let refused = t.mesh.get("outside", backend_0, "/");
    let refusal = refused.expect_err("strict mode answered plaintext");
    assert!(refusal.contains("403"), "{refusal}");
    let plaintext_refused = [("direction", "inbound"), ("reason", "plaintext_refused")];
    assert_eq!(
        t.metric("backend-0", DENIED_REQUESTS, &plaintext_refused),
        1.0
    );
    let answered_plain = [("tls", "false"), ("status_code", "200")];
    assert_eq!(t.metric("backend-0", RESPONSES, &answered_plain), 0.0);
    // Meshed callers are unaffected.
    assert_all_answered(&t.start_traffic(&["--requests", "10"]).wait());

    // The same call once the policy says Permissive: answered, in plaintext.
    t.write_manifest(
        "policy.yaml",
        &backend_policy("  mtls:\n    mode: Permissive\n"),
    );
    let mut answer = Err(String::new());
    t.wait_until("the backend to accept plaintext", || {
        answer = t.mesh.get("outside", backend_0, "/");
        answer.is_ok()
    });
    assert_eq!(answer.unwrap(), "backend-0\n");
    let plain_ok = [
        ("direction", "inbound"),
        ("tls", "false"),
        ("status_code", "200"),
    ];
    assert_eq!(t.metric("backend-0", RESPONSES, &plain_ok), 1.0);
}

#[test]
fn authorization_denies_and_allows() {
    let Some(t) = TestMesh::start("authz", Settings::default(), |_| {}) else {
        return;
    };
    let loadgen = spiffe("web", "loadgen");
    let denied = [
        ("direction", "inbound"),
        ("reason", "not_authorized"),
        ("peer_identity", loadgen.as_str()),
    ];
    let denials = || -> f64 {
        BACKENDS
            .iter()
            .map(|b| t.metric(b, DENIED_REQUESTS, &denied))
            .sum()
    };

    // The policy allows web/frontend only: loadgen's own call is refused...
    let direct = t.mesh.get(LOADGEN, t.backend, "/");
    let refusal = direct.expect_err("web/loadgen reached the backend");
    assert!(refusal.contains("403"), "{refusal}");
    assert_eq!(denials(), 1.0);
    // ...while the frontend's calls go through.
    let report = t.start_traffic(&["--requests", "20"]).wait();
    assert_all_answered(&report);
    assert_eq!(report.answered, 20);
    let frontend = spiffe("web", "frontend");
    let allowed: f64 = BACKENDS
        .iter()
        .map(|b| {
            t.metric(
                b,
                RESPONSES,
                &[("peer_identity", frontend.as_str()), ("status_code", "200")],
            )
        })
        .sum();
    assert_eq!(allowed, 20.0);

    // Allowing web/loadgen too lets its call through.
    t.write_manifest(
        "policy.yaml",
        &backend_policy(
            "  mtls:\n    mode: Strict\n  authorization:\n    default: Deny\n    allow:\n    - serviceAccount: web/frontend\n    - serviceAccount: web/loadgen\n",
        ),
    );
    let mut answer = Err(String::new());
    t.wait_until("web/loadgen to be allowed", || {
        answer = t.mesh.get(LOADGEN, t.backend, "/");
        answer.is_ok()
    });
    let body = answer.unwrap();
    assert!(BACKENDS.contains(&body.trim()), "{body:?}");
    let reached: f64 = BACKENDS
        .iter()
        .map(|b| {
            t.metric(
                b,
                RESPONSES,
                &[("peer_identity", loadgen.as_str()), ("status_code", "200")],
            )
        })
        .sum();
    assert_eq!(reached, 1.0);
}

#[test]
fn a_removed_endpoint_stops_receiving_traffic_within_2s() {
    let Some(t) = TestMesh::start("ep", Settings::default(), |_| {}) else {
        return;
    };
    let run = t.start_traffic(&["--rate", "100"]);
    std::thread::sleep(Duration::from_secs(1));
    let removed_at = unix_ms();
    t.remove_manifest("backend-2.yaml");
    std::thread::sleep(Duration::from_secs(3));
    let report = run.finish();

    assert_all_answered(&report);
    let by = report.by_replica();
    assert!(
        by.get("backend-2").is_some_and(|b| b.first_ms < removed_at),
        "backend-2 never answered before its removal: {by:?}"
    );
    let last = last_answer(&report, "backend-2");
    let after = last.saturating_sub(removed_at);
    eprintln!("backend-2 answered for the last time {after} ms after its Pod was removed");
    assert!(
        last <= removed_at + 2000,
        "backend-2 still answered {after} ms after its removal"
    );
    for b in ["backend-0", "backend-1"] {
        assert!(
            last_answer(&report, b) > removed_at + 2000,
            "{b} stopped answering: {by:?}"
        );
    }
    // The backend-2 pod itself still runs: only the routing changed.
    assert!(
        t.mesh
            .get(LOADGEN, "198.18.0.22:7191".parse().unwrap(), "/ready")
            .is_ok()
    );
    assert!(!t.mesh.pod_mounts("backend-2").exists());
}

#[test]
fn traffic_continues_on_the_last_config_while_the_operator_is_down() {
    let Some(mut t) = TestMesh::start("opdown", Settings::default(), |_| {}) else {
        return;
    };
    let generation =
        |t: &TestMesh| t.mesh.proxy_config(FRONTEND_POD)["routes"]["generation"].clone();
    let before = generation(&t);
    let run = t.start_traffic(&["--rate", "100"]);
    std::thread::sleep(Duration::from_millis(500));
    t.mesh.stop_operator();
    // A change no one is there to write.
    let removed_at = unix_ms();
    t.remove_manifest("backend-2.yaml");
    std::thread::sleep(Duration::from_secs(3));
    for p in [LOADGEN, FRONTEND_POD].iter().chain(&BACKENDS) {
        assert!(t.mesh.admin(p, "/ready").is_ok(), "{p} is not ready");
    }
    assert_eq!(generation(&t), before);

    // Back up, the operator catches up.
    let restarted_at = unix_ms();
    t.mesh.start_operator();
    t.wait_until("the frontend's table without backend-2", || {
        generation(&t) != before
    });
    std::thread::sleep(Duration::from_secs(1));
    let report = run.finish();

    assert_all_answered(&report);
    let last = last_answer(&report, "backend-2");
    assert!(
        last > removed_at + 2000,
        "the proxies did not keep the last config: backend-2 last answered {} ms after its removal",
        last.saturating_sub(removed_at)
    );
    assert!(
        last <= restarted_at + 5000,
        "backend-2 still answered {} ms after the operator came back",
        last.saturating_sub(restarted_at)
    );
}

#[test]
fn corrupt_routes_are_refused_and_traffic_continues() {
    let Some(t) = TestMesh::start("corrupt", Settings::default(), |_| {}) else {
        return;
    };
    let routes = |t: &TestMesh| t.mesh.proxy_config(FRONTEND_POD)["routes"].clone();
    let before = routes(&t);
    let errors = |t: &TestMesh| {
        t.metric(
            FRONTEND_POD,
            "weft_config_reload_errors_total",
            &[("kind", "routes")],
        )
    };
    assert_eq!(errors(&t), 0.0);
    let run = t.start_traffic(&["--rate", "100"]);
    std::thread::sleep(Duration::from_millis(500));

    let dir = t.mesh.pod_mounts(FRONTEND_POD).join("routes");
    let corrupt_at = unix_ms();
    weft_operator::kubelet::write_atomic(&dir, &[("routes.json", b"{\"version\": 1, \"servi")])
        .unwrap();
    t.wait_until("the corrupt table to be refused", || errors(&t) == 1.0);
    // A well-formed table of a version this proxy does not know: refused too.
    let mut future: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.mesh.pod_mounts(LOADGEN).join("routes/routes.json")).unwrap(),
    )
    .unwrap();
    future["version"] = 2.into();
    future["namespace"] = "web".into();
    weft_operator::kubelet::write_atomic(
        &dir,
        &[("routes.json", &serde_json::to_vec(&future).unwrap())],
    )
    .unwrap();
    t.wait_until("the version-2 table to be refused", || errors(&t) == 2.0);
    std::thread::sleep(Duration::from_secs(1));
    let report = run.finish();

    assert_all_answered(&report);
    for b in BACKENDS {
        assert!(
            last_answer(&report, b) > corrupt_at + 1000,
            "{b} stopped answering after the corruption"
        );
    }
    let after = routes(&t);
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["digest"], before["digest"]);
    assert!(t.mesh.admin(FRONTEND_POD, "/ready").is_ok());
}

/// Rewrites the operator's trust anchor, restarts it (it reads the anchor
/// at start), and waits until every proxy uses the identity it re-issued.
fn rotate_step(t: &mut TestMesh, files: &[(&str, &[u8])]) {
    let pods: Vec<String> = t
        .mesh
        .pods()
        .filter(|p| p.plan.meshed)
        .map(|p| p.plan.name.clone())
        .collect();
    let before: Vec<Option<String>> = pods.iter().map(|p| t.mesh.identity_snapshot(p)).collect();
    t.mesh.stop_operator();
    weft_operator::kubelet::write_atomic(&t.mesh.state().join("trust-anchor"), files).unwrap();
    t.mesh.start_operator();
    for (pod, before) in pods.iter().zip(before) {
        let mut now = None;
        t.wait_until(&format!("a re-issued identity for {pod}"), || {
            now = t.mesh.identity_snapshot(pod);
            now.is_some() && now != before
        });
        let snapshot = now.unwrap();
        t.wait_until(&format!("{pod}'s proxy to load {snapshot}"), || {
            t.mesh.proxy_uses_identity(pod, &snapshot)
        });
    }
}

/// Whether every meshed pod's identity is what `authority` would leave alone.
fn assert_identities_match(t: &TestMesh, authority: &Authority, step: &str) {
    for p in t.mesh.pods().filter(|p| p.plan.meshed) {
        let dir = t.mesh.pod_mounts(&p.plan.name).join("identity");
        let files = ["tls.crt", "tls.key", "ca.crt"].map(|f| std::fs::read(dir.join(f)).unwrap());
        let existing = ExistingIdentity::from_entries(|name| match name {
            "tls.crt" => Some(files[0].as_slice()),
            "tls.key" => Some(files[1].as_slice()),
            "ca.crt" => Some(files[2].as_slice()),
            _ => None,
        });
        let id = spiffe(&p.plan.namespace, &p.plan.service_account);
        let due = renewal_due(&existing, &id, authority, SystemTime::now(), 0.5);
        assert_eq!(due, None, "{step}: {}'s identity", p.plan.name);
    }
}

#[test]
fn trust_anchor_and_leaves_rotate_with_zero_failed_requests() {
    // Each step reaches the pods 0.4 s apart, so every mix of old and new
    // identities meets traffic (a one-step rotation fails here).
    let settings = Settings {
        reload_skew: Duration::from_millis(400),
        reload_poll: Duration::from_secs(30),
        ..Settings::default()
    };
    let Some(mut t) = TestMesh::start("rotate", settings, |_| {}) else {
        return;
    };
    let started = Instant::now();
    let anchor_dir = t.mesh.state().join("trust-anchor");
    let old_cert = std::fs::read(anchor_dir.join("tls.crt")).unwrap();
    let old_key = std::fs::read(anchor_dir.join("tls.key")).unwrap();
    let now = SystemTime::now();
    let old = TrustAnchor::from_pem(&old_cert, &old_key, now).unwrap();
    let new = TrustAnchor::generate(now, Duration::from_secs(365 * 24 * 3600)).unwrap();
    let (new_cert, new_key) = (new.cert_pem().as_bytes(), new.key_pem().as_bytes());

    let run = t.start_traffic(&["--rate", "100"]);
    std::thread::sleep(Duration::from_millis(500));
    // 1. Trust the new anchor everywhere before anything is signed by it.
    rotate_step(
        &mut t,
        &[
            ("tls.crt", &old_cert),
            ("tls.key", &old_key),
            ("ca-bundle.crt", new_cert),
        ],
    );
    let step1 = Authority::new(old.clone())
        .with_extra_roots(new_cert)
        .unwrap();
    assert_identities_match(&t, &step1, "step 1 (new root added)");
    // 2. Sign with the new anchor; leaves of the old one still verify.
    rotate_step(
        &mut t,
        &[
            ("tls.crt", new_cert),
            ("tls.key", new_key),
            ("ca-bundle.crt", &old_cert),
        ],
    );
    let step2 = Authority::new(new.clone())
        .with_extra_roots(&old_cert)
        .unwrap();
    assert_identities_match(&t, &step2, "step 2 (leaves re-issued)");
    // 3. Drop the old root.
    rotate_step(&mut t, &[("tls.crt", new_cert), ("tls.key", new_key)]);
    assert_identities_match(&t, &Authority::new(new), "step 3 (old root dropped)");
    let rotated_at = unix_ms();
    std::thread::sleep(Duration::from_secs(1));
    let report = run.finish();
    eprintln!(
        "rotation took {:?}; {} requests, {} failed",
        started.elapsed(),
        report.sent,
        report.failed
    );

    assert_all_answered(&report);
    for b in BACKENDS {
        assert!(
            last_answer(&report, b) > rotated_at,
            "{b} did not answer after the rotation"
        );
    }
}

/// Responses the proxies of `pods` sent back to callers, by `labels`.
fn responses(t: &TestMesh, pods: &[&str], labels: &[(&str, &str)]) -> f64 {
    pods.iter().map(|p| t.metric(p, RESPONSES, labels)).sum()
}

#[test]
fn retries_hide_a_failing_replica() {
    // Round robin gives the failing replica its share of first attempts;
    // peak-EWMA would soon starve it, which is another test's subject.
    let round_robin = format!("{DEMO_SECURITY}  loadBalancer: RoundRobin\n");
    let Some(t) = TestMesh::start("retry", Settings::default(), |dir| {
        let manifest = dir.join("backend-1.yaml");
        let pod = std::fs::read_to_string(&manifest).unwrap();
        let failing = pod.replace(
            "command: [weft-e2e-app, serve]\n",
            "command: [weft-e2e-app, serve]\n    args: [--status, \"503\"]\n",
        );
        assert_ne!(failing, pod, "backend-1.yaml no longer runs `serve`");
        std::fs::write(&manifest, failing).unwrap();
        std::fs::write(dir.join("policy.yaml"), backend_policy(&round_robin)).unwrap();
    }) else {
        return;
    };
    let failing = [("direction", "inbound"), ("status_code", "503")];
    let retried = [("destination", BACKEND_DESTINATION)];

    // Without retries, backend-1's answers reach the caller.
    let report = t
        .start_traffic(&["--requests", "60", "--rate", "200"])
        .wait();
    assert!(
        report.failed > 0,
        "backend-1 never failed a call: {report:?}"
    );
    let expected = format!("frontend-0 -> error: {} answered 503: backend-1", t.backend);
    for error in report.errors.keys() {
        assert!(error.ends_with(&expected), "unexpected failure {error:?}");
    }
    assert_eq!(t.metric(FRONTEND_POD, RETRIES, &retried), 0.0);

    t.apply(
        "policy.yaml",
        &backend_policy(&format!(
            "{round_robin}  retries:\n    attempts: 3\n    retryOn: [5xx]\n    perTryTimeout: 1s\n    budget:\n      percent: 100\n      minPerSecond: 100\n"
        )),
        &[FRONTEND_POD],
    );
    let failed_before = t.metric("backend-1", RESPONSES, &failing);
    let report = t
        .start_traffic(&["--requests", "150", "--rate", "200"])
        .wait();

    // Every call answered, by the healthy replicas...
    assert_all_answered(&report);
    let by = report.by_replica();
    assert!(!by.contains_key("backend-1"), "{by:?}");
    for b in ["backend-0", "backend-2"] {
        assert!(by.contains_key(b), "{b} never answered: {by:?}");
    }
    // ...though backend-1 kept getting attempts, each of them retried.
    let mut failed_attempts = 0.0;
    let mut retries = 0.0;
    t.wait_until("backend-1's failures to be retried", || {
        failed_attempts = t.metric("backend-1", RESPONSES, &failing) - failed_before;
        retries = t.metric(FRONTEND_POD, RETRIES, &retried);
        failed_attempts > 0.0 && retries >= failed_attempts
    });
    eprintln!(
        "{} calls: backend-1 failed {failed_attempts} attempts, {retries} retries",
        report.sent
    );
    assert_eq!(t.metric(FRONTEND_POD, BUDGET_EXHAUSTED, &retried), 0.0);
}

#[test]
fn a_90_10_split_sends_the_canary_about_a_tenth() {
    let Some(t) = TestMesh::start("split", Settings::default(), |dir| {
        std::fs::write(dir.join("backend-canary.yaml"), CANARY).unwrap();
    }) else {
        return;
    };
    // Before the split, the canary only serves its own Service.
    let report = t
        .start_traffic(&["--requests", "60", "--rate", "200"])
        .wait();
    assert_all_answered(&report);
    assert!(!report.by_replica().contains_key(CANARY_POD));

    t.apply(
        "policy.yaml",
        &backend_policy(&format!(
            "{DEMO_SECURITY}  split:\n  - service: backend\n    weight: 90\n  - service: backend-canary\n    weight: 10\n"
        )),
        &[FRONTEND_POD],
    );
    let report = t
        .start_traffic(&["--requests", "500", "--rate", "250"])
        .wait();

    assert_all_answered(&report);
    let by = report.by_replica();
    for replica in by.keys() {
        assert!(
            BACKENDS.contains(&replica.as_str()) || replica == CANARY_POD,
            "unexpected replica {replica}"
        );
    }
    let canary = by.get(CANARY_POD).map_or(0, |t| t.count);
    let share = canary as f64 / report.answered as f64;
    eprintln!(
        "the canary answered {canary} of {} calls ({:.1}%)",
        report.answered,
        share * 100.0
    );
    assert!(
        (0.04..=0.18).contains(&share),
        "the canary's share is {:.1}%, not about 10%: {by:?}",
        share * 100.0
    );
    // The frontend still called shop/backend: its proxy did the splitting.
    let frontend = spiffe("web", "frontend");
    let from_frontend = [
        ("direction", "inbound"),
        ("peer_identity", frontend.as_str()),
        ("status_code", "200"),
    ];
    let canary = canary as f64;
    t.wait_until("the canary's proxy to count its calls", || {
        responses(&t, &[CANARY_POD], &from_frontend) >= canary
    });
    assert_eq!(responses(&t, &[CANARY_POD], &from_frontend), canary);
}

#[test]
fn http_calls_from_a_caller_not_allowed_get_403() {
    // The backend lets web/loadgen in, not web/frontend.
    let Some(t) = TestMesh::start("deny", Settings::default(), |dir| {
        std::fs::write(
            dir.join("policy.yaml"),
            backend_policy(
                "  mtls:\n    mode: Strict\n  authorization:\n    default: Deny\n    allow:\n    - serviceAccount: web/loadgen\n",
            ),
        )
        .unwrap();
    }) else {
        return;
    };
    let report = t
        .start_traffic(&["--requests", "20", "--rate", "100"])
        .wait();

    // The frontend reports what its call got: the backend proxy's 403.
    assert_eq!(
        (report.sent, report.answered, report.failed),
        (20, 0, 20),
        "{report:?}"
    );
    let expected = format!(
        "HTTP 502: frontend-0 -> error: {} answered 403: weft: not_authorized",
        t.backend
    );
    assert_eq!(
        report.errors.keys().collect::<Vec<_>>(),
        [&expected],
        "{report:?}"
    );
    // The backends' proxies answered each call themselves, counting every
    // request, and every (pooled) connection once as denied.
    let frontend = spiffe("web", "frontend");
    let from_frontend = |status: &'static str| {
        [
            ("direction", "inbound"),
            ("peer_identity", frontend.as_str()),
            ("status_code", status),
        ]
    };
    t.wait_until("the backends' proxies to count 20 403s", || {
        responses(&t, &BACKENDS, &from_frontend("403")) >= 20.0
    });
    assert_eq!(responses(&t, &BACKENDS, &from_frontend("403")), 20.0);
    assert_eq!(responses(&t, &BACKENDS, &from_frontend("200")), 0.0);
    let denied = [
        ("direction", "inbound"),
        ("reason", "not_authorized"),
        ("peer_identity", frontend.as_str()),
    ];
    let denials: f64 = BACKENDS
        .iter()
        .map(|b| t.metric(b, DENIED_REQUESTS, &denied))
        .sum();
    assert_eq!(denials, 20.0, "every request was denied, each counted");
    // The identity the policy allows gets through.
    let answer = t.mesh.get(LOADGEN, t.backend, "/").unwrap();
    assert!(BACKENDS.contains(&answer.trim()), "{answer:?}");
}
