//! Writing a directory the way the kubelet updates a mounted ConfigMap or
//! Secret, so a reader that resolves `..data` once always sees a complete
//! snapshot: the files go into a new hidden timestamped directory,
//! `..data_tmp` pointing at it is renamed over `..data` (atomic), each key
//! is a symlink through `..data`, and the previous snapshot is removed.

use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use weft_api::names::KUBELET_DATA_LINK;

const DATA_TMP: &str = "..data_tmp";

/// Writes `files` into `dir` atomically. Returns `false` (and writes
/// nothing) when `dir` already holds exactly these files.
pub fn write_atomic(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<bool> {
    if holds(dir, files) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let snapshot = snapshot_name(dir);
    let snapshot_dir = dir.join(&snapshot);
    std::fs::create_dir(&snapshot_dir)?;
    for (name, content) in files {
        std::fs::write(snapshot_dir.join(name), content)?;
    }
    let old = std::fs::read_link(dir.join(KUBELET_DATA_LINK)).ok();
    let tmp = dir.join(DATA_TMP);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(&snapshot, &tmp)?;
    std::fs::rename(&tmp, dir.join(KUBELET_DATA_LINK))?;
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(KUBELET_DATA_LINK).join(name), &link)?;
        }
    }
    remove_stale_links(dir, files)?;
    if let Some(old) = old.filter(|o| o.as_os_str() != snapshot.as_str()) {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

/// Whether `dir` shows exactly `files` through `..data`.
fn holds(dir: &Path, files: &[(&str, &[u8])]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir.join(KUBELET_DATA_LINK)) else {
        return false;
    };
    entries.count() == files.len()
        && files.iter().all(|(name, content)| {
            std::fs::read(dir.join(KUBELET_DATA_LINK).join(name)).is_ok_and(|c| c == *content)
        })
}

/// A name no earlier snapshot of `dir` has: `..<unix nanos>`.
fn snapshot_name(dir: &Path) -> String {
    let mut nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    loop {
        let name = format!("..{nanos}");
        if !dir.join(&name).exists() {
            return name;
        }
        nanos += 1;
    }
}

/// Removes key symlinks of keys no longer present.
fn remove_stale_links(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..") || files.iter().any(|(f, _)| *f == name) {
            continue;
        }
        if entry.file_type()?.is_symlink() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn writes_through_data_and_swaps_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("routes");
        assert!(write_atomic(&dir, &[("a", b"1"), ("b", b"2")]).unwrap());
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert_eq!(read(&dir, "a"), "1");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );

        assert!(
            !write_atomic(&dir, &[("a", b"1"), ("b", b"2")]).unwrap(),
            "unchanged"
        );
        assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), first);

        assert!(write_atomic(&dir, &[("a", b"3")]).unwrap());
        assert_eq!(read(&dir, "a"), "3");
        assert!(!dir.join("b").exists(), "a removed key's link goes");
        assert!(!dir.join(&first).exists(), "the old snapshot is removed");
        let hidden: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(hidden.len(), 2, "one snapshot and ..data: {hidden:?}");
    }
}
