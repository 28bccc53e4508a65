//! Writes directories the way the kubelet updates a mounted ConfigMap or
//! Secret, so the proxy's reload is tested against the real sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use weft_api::RoutesTable;

use crate::pki::Leaf;

/// Writes `files` into `dir` as the kubelet does (the operator's own writer).
pub fn kubelet_write(dir: &Path, files: &[(&str, &[u8])]) {
    weft_operator::kubelet::write_atomic(dir, files).unwrap();
}

/// The identity Secret's three keys.
pub fn write_identity(dir: &Path, leaf: &Leaf, bundle: &str) {
    kubelet_write(
        dir,
        &[
            ("tls.crt", leaf.cert.as_bytes()),
            ("tls.key", leaf.key.as_bytes()),
            ("ca.crt", bundle.as_bytes()),
        ],
    );
}

/// The routes ConfigMap's one key.
pub fn write_routes(dir: &Path, table: &RoutesTable) {
    kubelet_write(
        dir,
        &[("routes.json", &serde_json::to_vec_pretty(table).unwrap())],
    );
}
