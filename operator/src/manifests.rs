//! Reading a directory of Kubernetes manifests for the local runtime: every
//! `*.yaml`/`*.yml` below it, multi-document, each document dispatched by
//! `kind`. A bad file or document is reported with its path, index and
//! reason and skipped; the rest is still read.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::cluster::{Cluster, Object};

/// A manifest that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), document.map(|d| format!(" (document {d})")).unwrap_or_default())]
pub struct ManifestError {
    pub file: PathBuf,
    /// Zero-based index of the document within the file, when the file parsed.
    pub document: Option<usize>,
    pub reason: String,
}

/// What reading a directory gave: the objects and every error.
#[derive(Debug, Default)]
pub struct Loaded {
    pub cluster: Cluster,
    pub errors: Vec<ManifestError>,
    /// Documents of kinds the mesh does not read (Deployments, …).
    pub ignored: usize,
}

/// Reads every manifest below `dir`, in path order.
pub fn load_dir(dir: &Path) -> Result<Loaded, std::io::Error> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut loaded = Loaded::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut loaded),
            Err(e) => loaded.errors.push(ManifestError {
                file,
                document: None,
                reason: e.to_string(),
            }),
        }
    }
    Ok(loaded)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), std::io::Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Parses one file's documents into `loaded`.
pub fn load_text(file: &Path, text: &str, loaded: &mut Loaded) {
    let documents: Vec<serde_json::Value> = match serde_saphyr::from_str_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            loaded.errors.push(ManifestError {
                file: file.to_path_buf(),
                document: None,
                reason: format!("not YAML: {e}"),
            });
            return;
        }
    };
    for (i, doc) in documents.into_iter().enumerate() {
        match object(doc) {
            Ok(Some(obj)) => loaded.cluster.apply(obj),
            Ok(None) => loaded.ignored += 1,
            Err(reason) => loaded.errors.push(ManifestError {
                file: file.to_path_buf(),
                document: Some(i),
                reason,
            }),
        }
    }
}

/// The typed object of one document, `None` for kinds the mesh ignores.
fn object(doc: serde_json::Value) -> Result<Option<Object>, String> {
    let kind = doc
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned();
    let api_version = doc
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_owned();
    if kind.is_empty() {
        return Err("has no kind".into());
    }
    if name.is_empty() {
        return Err(format!("{kind} has no metadata.name"));
    }
    // Names become paths of the local runtime's mounts: only what
    // Kubernetes itself accepts, so `..` or `/` can never escape them.
    let namespace = doc.pointer("/metadata/namespace").and_then(|n| n.as_str());
    for (field, value) in [
        ("metadata.name", Some(name.as_str())),
        ("metadata.namespace", namespace),
    ] {
        if let Some(value) = value.filter(|v| !is_dns_subdomain(v)) {
            return Err(format!(
                "{kind} {field} {value:?} is not a DNS subdomain name"
            ));
        }
    }
    let typed = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => Object::Namespace(parse(doc, &kind, &name)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(parse(doc, &kind, &name)?),
        ("v1", "Service") => Object::Service(parse(doc, &kind, &name)?),
        ("v1", "Pod") => Object::Pod(parse(doc, &kind, &name)?),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            Object::EndpointSlice(parse(doc, &kind, &name)?)
        }
        ("weft.dev/v1alpha1", "MeshPolicy") => Object::MeshPolicy(parse(doc, &kind, &name)?),
        _ => return Ok(None),
    };
    Ok(Some(typed))
}

/// RFC 1123 subdomain: dot-separated labels of a-z, 0-9 and '-', at most 253.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(weft_api::validate::is_dns_label)
}

fn parse<T: DeserializeOwned>(
    mut doc: serde_json::Value,
    kind: &str,
    name: &str,
) -> Result<Box<T>, String> {
    // Manifests usually leave the namespace out, as `kubectl apply` allows.
    if kind != "Namespace"
        && let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut())
    {
        meta.entry("namespace").or_insert("default".into());
    }
    serde_json::from_value(doc).map_err(|e| format!("{kind} {name:?}: {e}"))
}
