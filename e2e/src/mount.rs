//! Writes directories the way the kubelet updates a mounted ConfigMap or
//! Secret, so the proxy's reload is tested against the real sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use weft_api::RoutesTable;

use crate::pki::Leaf;

/// A new hidden timestamped directory with the files, `..data_tmp`
/// pointing at it renamed over `..data`, each key a symlink through
/// `..data`, and the previous snapshot removed.
pub fn kubelet_write(dir: &Path, files: &[(&str, &[u8])]) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    std::fs::create_dir_all(dir).unwrap();
    let snapshot = format!(
        "..2026_11_22_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::create_dir(dir.join(&snapshot)).unwrap();
    for (name, content) in files {
        std::fs::write(dir.join(&snapshot).join(name), content).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&snapshot, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
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
