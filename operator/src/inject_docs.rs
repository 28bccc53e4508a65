//! `weft-operator inject -f FILE`: injects every pod and pod template of a
//! multi-document YAML file and passes every other document through
//! byte for byte, in the same order.

use serde_json::Value;

use crate::inject::{InjectConfig, Plan, Scope, plan};
use crate::scope::MeshConfig;

/// Where each kind keeps its pod: `(metadata pointer, spec pointer)`.
fn pod_pointers(kind: &str) -> Option<(&'static str, &'static str)> {
    match kind {
        "Pod" => Some(("/metadata", "/spec")),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(("/spec/template/metadata", "/spec/template/spec")),
        "CronJob" => Some((
            "/spec/jobTemplate/spec/template/metadata",
            "/spec/jobTemplate/spec/template/spec",
        )),
        _ => None,
    }
}

/// Why a document could not be injected.
#[derive(Debug, thiserror::Error)]
#[error("document {index}{}: {reason}", what.as_deref().map(|w| format!(" ({w})")).unwrap_or_default())]
pub struct DocumentError {
    /// Zero-based position in the file.
    pub index: usize,
    /// `Kind/name`, when known.
    pub what: Option<String>,
    pub reason: String,
}

/// Injects every document of `text`; returns the new text.
pub fn inject_documents(
    text: &str,
    mesh: &MeshConfig,
    cfg: &InjectConfig,
) -> Result<String, DocumentError> {
    let mut out = String::with_capacity(text.len() * 2);
    for (index, (separator, body)) in split_documents(text).into_iter().enumerate() {
        out.push_str(separator);
        out.push_str(&inject_document(index, body, mesh, cfg)?);
    }
    Ok(out)
}

/// Splits at `---` lines, keeping each separator with the document after it.
fn split_documents(text: &str) -> Vec<(&str, &str)> {
    let mut docs = Vec::new();
    let (mut sep_start, mut body_start) = (0, 0);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            if offset > body_start || body_start > 0 {
                docs.push((&text[sep_start..body_start], &text[body_start..offset]));
            }
            sep_start = offset;
            body_start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push((&text[sep_start..body_start], &text[body_start..]));
    docs
}

fn inject_document(
    index: usize,
    body: &str,
    mesh: &MeshConfig,
    cfg: &InjectConfig,
) -> Result<String, DocumentError> {
    let fail = |what: Option<String>, reason: String| DocumentError {
        index,
        what,
        reason,
    };
    let is_blank = body
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if is_blank {
        return Ok(body.to_owned());
    }
    let mut doc: Value =
        serde_saphyr::from_str(body).map_err(|e| fail(None, format!("not YAML: {e}")))?;
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let what = Some(format!("{kind}/{name}"));
    let Some((meta_ptr, spec_ptr)) = pod_pointers(&kind) else {
        return Ok(body.to_owned());
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let typed = |ptr: &str| doc.pointer(ptr).cloned().unwrap_or(Value::Null);
    let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
        serde_json::from_value(none_as_empty(typed(meta_ptr)))
            .map_err(|e| fail(what.clone(), format!("{meta_ptr}: {e}")))?;
    let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(typed(spec_ptr))
        .map_err(|e| fail(what.clone(), format!("{spec_ptr}: {e}")))?;
    let injection = match plan(&meta, &spec, &namespace, Scope::Manual, mesh, cfg) {
        Ok(Plan::Skip(_)) => return Ok(body.to_owned()),
        Ok(Plan::Inject(injection)) => injection,
        Err(e) => return Err(fail(what, e.to_string())),
    };
    ensure_object(&mut doc, meta_ptr).map_err(|e| fail(what.clone(), e))?;
    let mut meta_json = doc.pointer(meta_ptr).cloned().unwrap_or(Value::Null);
    let mut spec_json = doc.pointer(spec_ptr).cloned().unwrap_or(Value::Null);
    injection
        .apply(&mut meta_json, &mut spec_json)
        .map_err(|e| fail(what.clone(), e))?;
    for (ptr, value) in [(meta_ptr, meta_json), (spec_ptr, spec_json)] {
        if let Some(slot) = doc.pointer_mut(ptr) {
            *slot = value;
        }
    }
    serde_saphyr::to_string(&doc).map_err(|e| fail(what, e.to_string()))
}

fn none_as_empty(v: Value) -> Value {
    if v.is_null() {
        Value::Object(Default::default())
    } else {
        v
    }
}

/// Makes sure an object exists at `pointer` (a template may have no metadata).
fn ensure_object(doc: &mut Value, pointer: &str) -> Result<(), String> {
    if doc.pointer(pointer).is_some_and(|v| !v.is_null()) {
        return Ok(());
    }
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let parent = doc
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{parent} is not an object"))?;
    parent.insert(key.to_owned(), Value::Object(Default::default()));
    Ok(())
}

/// Flags of `weft-operator inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// The manifest file, or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: std::path::PathBuf,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29 and later).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    #[arg(long)]
    pub proxy_image: Option<String>,
    #[arg(long)]
    pub init_image: Option<String>,
}

/// Prints the injected file to standard output.
pub fn run(args: &InjectArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::{Read, Write};
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let defaults = InjectConfig::default();
    let cfg = InjectConfig {
        proxy_image: args
            .proxy_image
            .clone()
            .unwrap_or(defaults.proxy_image.clone()),
        init_image: args
            .init_image
            .clone()
            .unwrap_or(defaults.init_image.clone()),
        native_sidecar: args.native_sidecar,
        ..defaults
    };
    let mesh = MeshConfig {
        trust_domain: String::new(),
        operator_namespace: String::new(),
        default_mtls: weft_api::routes::MtlsMode::Permissive,
        meshed_pods: crate::scope::MeshedPods::Injected,
    };
    let out = inject_documents(&text, &mesh, &cfg)
        .with_context(|| format!("injecting {}", args.file.display()))?;
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing standard output")
}
