//! Golden-file tests of injection: each input under tests/golden/inject/
//! injected in the mode its expected file names, compared byte for byte.
//! `WEFT_UPDATE_GOLDEN=1` rewrites the expected files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use weft_api::routes::MtlsMode;
use weft_operator::inject::{InjectConfig, Resources};
use weft_operator::inject_docs::inject_documents;
use weft_operator::scope::{MeshConfig, MeshedPods};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn mesh() -> MeshConfig {
    MeshConfig {
        trust_domain: "cluster.local".into(),
        operator_namespace: "weft-system".into(),
        default_mtls: MtlsMode::Permissive,
        meshed_pods: MeshedPods::Injected,
    }
}

fn config(native: bool) -> InjectConfig {
    InjectConfig {
        proxy_image: "weft-proxy:test".into(),
        init_image: "weft-init:test".into(),
        version: "test".into(),
        native_sidecar: native,
        resources: Resources {
            cpu_request: Some("10m".into()),
            cpu_limit: None,
            memory_request: Some("20Mi".into()),
            memory_limit: Some("128Mi".into()),
        },
        log_level: "info".into(),
    }
}

/// Injects `input` and compares with `expected` (or rewrites it).
fn golden(input: &str, expected: &str, native: bool) -> String {
    let text = std::fs::read_to_string(golden_dir().join(input)).unwrap();
    let got = match inject_documents(&text, &mesh(), &config(native)) {
        Ok(out) => out,
        Err(e) => format!("error: {e}\n"),
    };
    let path = golden_dir().join(expected);
    if std::env::var_os("WEFT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (WEFT_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        got, want,
        "{input} → {expected} differs (WEFT_UPDATE_GOLDEN=1 rewrites)"
    );
    got
}

#[test]
fn deployment_native_sidecar() {
    let out = golden("deployment.yaml", "deployment.native.out.yaml", true);
    assert!(out.contains("restartPolicy: Always"));
}

#[test]
fn deployment_classic_sidecar() {
    let out = golden("deployment.yaml", "deployment.classic.out.yaml", false);
    assert!(out.contains("postStart"));
}

#[test]
fn pod_with_named_ports_and_probes_keeps_them() {
    golden("pod-ports-probes.yaml", "pod-ports-probes.out.yaml", true);
}

#[test]
fn opted_out_pod_is_unchanged() {
    let out = golden("pod-opt-out.yaml", "pod-opt-out.out.yaml", true);
    let input = std::fs::read_to_string(golden_dir().join("pod-opt-out.yaml")).unwrap();
    assert_eq!(out, input);
}

#[test]
fn every_override_annotation() {
    let out = golden("pod-overrides.yaml", "pod-overrides.out.yaml", true);
    assert!(
        out.contains("- name: WEFT_ACCESS_LOG\n      value: json\n"),
        "{out}"
    );
}

#[test]
fn invalid_annotation_refuses_the_pod_naming_it() {
    let out = golden(
        "pod-invalid-annotation.yaml",
        "pod-invalid-annotation.out.yaml",
        true,
    );
    assert!(out.contains("weft.dev/proxy-memory-limit"), "{out}");
    assert!(out.contains("64 megabytes"), "{out}");
}

#[test]
fn injecting_twice_changes_nothing() {
    for (expected, native) in [
        ("deployment.native.out.yaml", true),
        ("deployment.classic.out.yaml", false),
    ] {
        let once = std::fs::read_to_string(golden_dir().join(expected)).unwrap();
        let twice = inject_documents(&once, &mesh(), &config(native)).unwrap();
        assert_eq!(twice, once, "{expected}");
    }
}

#[test]
fn job() {
    golden("job.yaml", "job.out.yaml", true);
}

#[test]
fn multi_document_file_with_unrelated_kinds() {
    let out = golden("multi.yaml", "multi.out.yaml", true);
    let input = std::fs::read_to_string(golden_dir().join("multi.yaml")).unwrap();
    // The ConfigMap and Service documents, comments included, are byte-identical.
    let head = input.split("kind: CronJob").next().unwrap();
    let head = &head[..head.rfind("---").unwrap()];
    assert!(out.starts_with(head), "unrelated documents changed");
    assert!(
        out.ends_with(input.rsplit("---\n").next().unwrap()),
        "the host-network pod changed"
    );
    assert_eq!(
        out.matches("name: weft-proxy").count(),
        1,
        "only the CronJob is injected"
    );
}

#[test]
fn bad_document_names_its_index() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 3}\n";
    let err = inject_documents(text, &mesh(), &config(true))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("document 1 (Pod/p): /spec:"), "{err}");
}
