//! `crds/meshpolicy.yaml` is exactly what `weft-operator crdgen` prints, so
//! the checked-in CRD cannot drift from the Rust types. On failure, the
//! message gives the command that regenerates it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use weft_operator::crd::MeshPolicy;
use weft_operator::crdgen::{HEADER, REGENERATE, render};

fn checked_in() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/meshpolicy.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nGenerate it from the repository root with:\n    {REGENERATE}",
            path.display()
        )
    })
}

/// Panics naming the first line that differs and the fix.
#[track_caller]
fn assert_same(generated: &str, file: &str) {
    if generated == file {
        return;
    }
    let first = generated
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(file.lines().map(Some).chain(std::iter::repeat(None)))
        .take_while(|pair| *pair != (None, None))
        .enumerate()
        .find(|(_, (g, f))| g != f);
    let difference = match first {
        Some((i, (want, got))) => format!(
            "first difference at line {}:\n  crdgen: {:?}\n  file:   {:?}",
            i + 1,
            want.unwrap_or("<end>"),
            got.unwrap_or("<end>"),
        ),
        None => "they differ in line endings or the final newline".to_owned(),
    };
    panic!(
        "crds/meshpolicy.yaml is out of date with the MeshPolicy types ({difference}).\n\
         Regenerate it from the repository root with:\n    {REGENERATE}"
    );
}

#[test]
fn crd_file_matches_crdgen() {
    assert_same(&render().expect("crdgen renders"), &checked_in());
}

/// The binary prints what `render` returns (and so what the file holds).
#[test]
fn crd_file_matches_the_crdgen_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_weft-operator"))
        .arg("crdgen")
        .output()
        .expect("weft-operator runs");
    assert!(
        output.status.success(),
        "weft-operator crdgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    assert_same(&stdout, &checked_in());
}

/// The header comment, then one `---` document per CRD, which reads back
/// into exactly the CRD the types derive.
#[test]
fn crd_output_is_the_header_then_one_document_that_reads_back() {
    let yaml = render().expect("crdgen renders");
    let body = yaml.strip_prefix(HEADER).expect("starts with the header");
    assert!(HEADER.lines().all(|l| l.starts_with("# ")), "{HEADER}");
    assert!(HEADER.contains("weft-operator crdgen") && HEADER.contains("do not edit"));
    assert!(HEADER.contains(REGENERATE), "the header gives the command");
    assert!(body.starts_with("---\n"), "documents open with ---");
    assert_eq!(
        yaml.lines().filter(|l| *l == "---").count(),
        1,
        "one document"
    );
    let crds: Vec<CustomResourceDefinition> =
        serde_saphyr::from_str_multiple(&yaml).expect("the output is YAML of CRDs");
    assert_eq!(crds, vec![MeshPolicy::crd()]);
}
