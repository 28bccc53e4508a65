//! `weft-proxy init`'s process handling, against fake `iptables-*` commands.
//!
//! Each test runs the built binary with `PATH` set to a temporary directory
//! holding only the shell scripts it needs, so missing and failing backends
//! can be staged without root and without touching any real rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");

const EMPTY_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT";

/// Writes an executable `/bin/sh` script; scripts use shell builtins only,
/// since `PATH` holds nothing but the fakes.
fn fake(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `*-save` that prints `output` and records that it ran.
fn fake_save(dir: &Path, name: &str, output: &str) {
    let ran = dir.join("ran").display().to_string();
    fake(
        dir,
        name,
        &format!("echo {name} >> '{ran}'\nprintf '%s\\n' '{output}'"),
    );
}

/// A `*-restore` that records its arguments and its stdin, then succeeds.
fn recording_restore(dir: &Path, name: &str) {
    let d = dir.display();
    fake(
        dir,
        name,
        &format!(
            "echo \"$@\" > '{d}/{name}.args'\n\
             while IFS= read -r l; do printf '%s\\n' \"$l\"; done > '{d}/{name}.stdin'"
        ),
    );
}

fn init(dir: &Path, flags: &[&str]) -> Output {
    Command::new(BIN)
        .arg("init")
        .args(flags)
        .env("PATH", dir)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn defaults_golden() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/init/defaults.rules"
    );
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn init_fake_auto_uses_legacy_when_nft_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    fake_save(dir.path(), "iptables-legacy-save", EMPTY_NAT);
    recording_restore(dir.path(), "iptables-legacy-restore");

    let out = init(dir.path(), &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("applied 10 rules"), "{err}");
    assert!(
        err.contains("legacy backend: only legacy is available"),
        "{err}"
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("iptables-legacy-restore.args"), "--noflush\n");
    assert_eq!(read("iptables-legacy-restore.stdin"), defaults_golden());
}

#[test]
fn init_fake_restore_failure_names_command_status_stderr_and_line() {
    let dir = tempfile::tempdir().unwrap();
    fake_save(dir.path(), "iptables-nft-save", EMPTY_NAT);
    fake(
        dir.path(),
        "iptables-nft-restore",
        "while read -r l; do :; done\n\
         echo \"iptables-nft-restore v1.8.9 (nf_tables): Couldn't load match 'owner'\" >&2\n\
         echo 'Error occurred at line: 7' >&2\n\
         exit 2",
    );

    let out = init(dir.path(), &["--iptables-mode", "nft"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("iptables-nft-restore --noflush failed (exit status: 2)"),
        "{err}"
    );
    assert!(err.contains("Couldn't load match 'owner'"), "{err}");
    assert!(
        err.contains("script line 7: -A PREROUTING -p tcp -j WEFT_INBOUND"),
        "{err}"
    );
}

#[test]
fn init_fake_failing_save_in_forced_mode_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fake(
        dir.path(),
        "iptables-legacy-save",
        "echo 'iptables-legacy-save: cannot initialize: Permission denied' >&2\nexit 1",
    );
    let out = init(dir.path(), &["--iptables-mode=legacy"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("iptables-legacy-save failed (exit status: 1)"),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
}

#[test]
fn init_fake_no_backend_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("neither iptables-nft-save nor iptables-legacy-save ran"),
        "{err}"
    );
    assert!(err.contains("running iptables-nft-save"), "{err}");
}

#[test]
fn init_fake_dry_run_without_backends_prints_the_script_for_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path(), &["--dry-run"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), defaults_golden());
    assert!(
        err.contains("showing the rules for an empty nat table"),
        "{err}"
    );
}

#[test]
fn init_fake_dry_run_deletes_existing_jumps_and_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let existing = "*nat\n-A OUTPUT -p tcp -j WEFT_OUTBOUND\nCOMMIT";
    fake_save(dir.path(), "iptables-nft-save", existing);
    fake_save(dir.path(), "iptables-legacy-save", EMPTY_NAT);
    recording_restore(dir.path(), "iptables-nft-restore");

    let out = init(dir.path(), &["--dry-run"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("-D OUTPUT -p tcp -j WEFT_OUTBOUND\n"),
        "{stdout}"
    );
    assert!(
        err.contains("would apply 10 rules (replacing 1 existing jumps)"),
        "{err}"
    );
    assert!(err.contains("nft backend: only nft has rules"), "{err}");
    assert!(!dir.path().join("iptables-nft-restore.args").exists());
}

#[test]
fn init_fake_bad_flags_fail_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    fake_save(dir.path(), "iptables-nft-save", EMPTY_NAT);
    let out = init(dir.path(), &["--skip-subnets", "10.0.0.0/33"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "weft-proxy: --skip-subnets: \"10.0.0.0/33\" is not an IPv4 CIDR (like 10.0.0.0/8)\n"
    );
    assert!(!dir.path().join("ran").exists());
}
