//! The local runtime: manifests in a directory become each meshed pod's
//! mounts, written the kubelet's way; changes rewrite only what changed;
//! bad manifests are reported and skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use weft_api::routes::MtlsMode;
use weft_operator::local::{LocalArgs, LocalRuntime, read_table};

const NAMESPACES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {weft.dev/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  selector: {app: backend}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

fn pod(ns: &str, name: &str, app: &str, sa: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
spec:
  serviceAccountName: {sa}
  containers: [{{name: app, image: x}}]
status:
  podIP: {ip}
  conditions: [{{type: Ready, status: "True"}}]
"#
    )
}

struct Env {
    _tmp: tempfile::TempDir,
    manifests: PathBuf,
    mounts: PathBuf,
    state: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (manifests, mounts, state) = (
            tmp.path().join("manifests"),
            tmp.path().join("mounts"),
            tmp.path().join("state"),
        );
        std::fs::create_dir_all(&manifests).unwrap();
        Self {
            _tmp: tmp,
            manifests,
            mounts,
            state,
        }
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.manifests.join(name), content).unwrap();
    }

    fn runtime(&self) -> LocalRuntime {
        LocalRuntime::open(LocalArgs {
            manifests: self.manifests.clone(),
            mounts: self.mounts.clone(),
            state: self.state.clone(),
            once: true,
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(24 * 3600),
            renew_at: 0.5,
            default_mtls: MtlsMode::Permissive,
            debounce: Duration::from_millis(10),
            resync: Duration::from_secs(30),
            logging: weft_operator::logging::LogArgs {
                log: "info".into(),
                log_format: weft_operator::logging::LogFormat::Plain,
            },
        })
        .unwrap()
    }

    fn mount(&self, ns: &str, pod: &str, what: &str) -> PathBuf {
        self.mounts.join(ns).join(pod).join(what)
    }
}

fn data_link(dir: &Path) -> PathBuf {
    std::fs::read_link(dir.join("..data")).unwrap()
}

fn cert_identity(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("tls.crt")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[0] {
        x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
        other => panic!("unexpected SAN {other:?}"),
    }
}

fn standard(env: &Env) {
    env.write("namespaces.yaml", NAMESPACES);
    env.write("service.yaml", SERVICE);
    env.write(
        "pods.yaml",
        &[
            pod("shop", "backend-0", "backend", "backend", "198.18.0.10"),
            pod("shop", "frontend-0", "frontend", "frontend", "198.18.0.11"),
            pod("legacy", "old-0", "old", "default", "198.18.0.12"),
        ]
        .join("---"),
    );
}

#[test]
fn meshed_pods_get_routes_and_identity_mounts() {
    let env = Env::new();
    standard(&env);
    let mut rt = env.runtime();
    let report = rt.sync(SystemTime::now()).unwrap();
    assert_eq!(
        (report.meshed_pods, report.issued, report.written),
        (2, 2, 4)
    );
    assert!(report.errors.is_empty());

    let table = read_table(&rt.table_path("shop", "frontend-0")).unwrap();
    assert_eq!((table.namespace.as_str(), table.generation), ("shop", 1));
    let backend = table.services.iter().find(|s| s.name == "backend").unwrap();
    let ep = &backend.ports[0].endpoints[0];
    assert_eq!(ep.address.to_string(), "198.18.0.10");
    assert_eq!(ep.port, 8080);
    assert_eq!(
        ep.identity.as_ref().unwrap().as_str(),
        "spiffe://cluster.local/ns/shop/sa/backend"
    );

    let identity = env.mount("shop", "backend-0", "identity");
    assert_eq!(
        cert_identity(&identity),
        "spiffe://cluster.local/ns/shop/sa/backend"
    );
    assert!(data_link(&identity).to_string_lossy().starts_with(".."));
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert_eq!(
            std::fs::read_link(identity.join(key)).unwrap(),
            Path::new("..data").join(key)
        );
    }
    assert!(
        !env.mounts.join("legacy").exists(),
        "unmeshed pods get nothing"
    );
}

#[test]
fn a_change_rewrites_only_what_changed_and_a_restart_nothing() {
    let env = Env::new();
    standard(&env);
    let mut rt = env.runtime();
    rt.sync(SystemTime::now()).unwrap();
    let identity = env.mount("shop", "frontend-0", "identity");
    let (routes_before, identity_before) = (
        data_link(&env.mount("shop", "frontend-0", "routes")),
        data_link(&identity),
    );

    let again = rt.sync(SystemTime::now()).unwrap();
    assert_eq!((again.written, again.issued), (0, 0));

    // A second backend replica: the namespace's table changes, identities do not.
    env.write(
        "more.yaml",
        &pod("shop", "backend-1", "backend", "backend", "198.18.0.13"),
    );
    let report = rt.sync(SystemTime::now()).unwrap();
    assert_eq!(report.issued, 0);
    assert_eq!(report.written, 4, "3 routes dirs + the new pod's identity");
    assert_ne!(
        data_link(&env.mount("shop", "frontend-0", "routes")),
        routes_before
    );
    assert_eq!(data_link(&identity), identity_before);
    let table = read_table(&rt.table_path("shop", "frontend-0")).unwrap();
    assert_eq!(table.generation, 2);
    assert_eq!(table.services[0].ports[0].endpoints.len(), 2);

    // A new process over the same state writes and issues nothing.
    let restarted = env.runtime().sync(SystemTime::now()).unwrap();
    assert_eq!((restarted.written, restarted.issued), (0, 0));

    // The pod is deleted: its mounts go.
    std::fs::remove_file(env.manifests.join("more.yaml")).unwrap();
    let report = rt.sync(SystemTime::now()).unwrap();
    assert_eq!(report.removed, 1);
    assert!(!env.mounts.join("shop/backend-1").exists());
}

#[test]
fn certificates_are_renewed_at_half_life() {
    let env = Env::new();
    standard(&env);
    let mut rt = env.runtime();
    let t0 = SystemTime::now();
    rt.sync(t0).unwrap();
    let identity = env.mount("shop", "backend-0", "identity");
    let first = data_link(&identity);
    assert_eq!(
        rt.sync(t0 + Duration::from_secs(11 * 3600)).unwrap().issued,
        0
    );
    let report = rt.sync(t0 + Duration::from_secs(12 * 3600 + 60)).unwrap();
    assert_eq!(report.issued, 2);
    assert_ne!(data_link(&identity), first);
}

#[test]
fn a_bad_manifest_is_reported_and_the_rest_still_written() {
    let env = Env::new();
    standard(&env);
    env.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: shop}\nspec: 7\n",
    );
    let mut rt = env.runtime();
    let report = rt.sync(SystemTime::now()).unwrap();
    assert_eq!(report.errors.len(), 1);
    let error = report.errors[0].to_string();
    assert!(
        error.contains("broken.yaml (document 0): Pod \"x\""),
        "{error}"
    );
    assert_eq!(report.meshed_pods, 2);
    assert!(
        env.mount("shop", "backend-0", "routes")
            .join("routes.json")
            .exists()
    );
}

#[test]
fn policy_verdicts_are_written_to_the_state_directory() {
    let env = Env::new();
    standard(&env);
    env.write(
        "policy.yaml",
        r#"
apiVersion: weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: strict-backend, namespace: shop}
spec:
  targetRef: {kind: Service, name: backend}
  mtls: {mode: Strict}
---
apiVersion: weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: dangling, namespace: shop}
spec:
  targetRef: {kind: Service, name: nowhere}
"#,
    );
    let mut rt = env.runtime();
    rt.sync(SystemTime::now()).unwrap();
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state.join("policy-status.json")).unwrap())
            .unwrap();
    assert_eq!(status["shop/strict-backend"]["reason"], "Accepted");
    assert_eq!(status["shop/dangling"]["reason"], "TargetNotFound");
    let table = read_table(&rt.table_path("shop", "frontend-0")).unwrap();
    assert_eq!(table.services[0].policy.inbound.mtls, MtlsMode::Strict);
}

#[test]
fn a_rotated_trust_anchor_is_picked_up_without_a_restart() {
    use weft_operator::ca::TrustAnchor;
    let env = Env::new();
    standard(&env);
    let mut rt = env.runtime();
    rt.sync(SystemTime::now()).unwrap();
    let anchor_dir = env.state.join("trust-anchor");
    let old_cert = std::fs::read_to_string(anchor_dir.join("tls.crt")).unwrap();

    // Step 2 of a rotation: a new signer, the old anchor kept as an extra root.
    let new =
        TrustAnchor::generate(SystemTime::now(), Duration::from_secs(3600 * 24 * 365)).unwrap();
    std::fs::write(anchor_dir.join("ca-bundle.crt"), &old_cert).unwrap();
    std::fs::write(anchor_dir.join("tls.key"), new.key_pem()).unwrap();
    std::fs::write(anchor_dir.join("tls.crt"), new.cert_pem()).unwrap();

    let report = rt.sync(SystemTime::now()).unwrap();
    assert_eq!(
        report.issued, 2,
        "every identity re-issued by the new signer"
    );
    let bundle =
        std::fs::read_to_string(env.mount("shop", "backend-0", "identity").join("ca.crt")).unwrap();
    assert!(bundle.starts_with(new.cert_pem()), "the new signer first");
    assert!(
        bundle.contains(old_cert.trim()),
        "the old root still trusted"
    );
}
