//! Golden files for the `iptables-restore` script `weft-proxy init` writes.
//!
//! The expected scripts live in `tests/golden/init/*.rules`; a review of a
//! change to the rules is a review of the diff of those files. After an
//! intended change, regenerate them with
//! `WEFT_UPDATE_GOLDEN=1 cargo nextest run -p weft-proxy init_golden`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use clap::Parser;
use weft_proxy::init::InitArgs;
use weft_proxy::init::config::InitConfig;
use weft_proxy::init::rules::{Script, restore_script};
use weft_proxy::init::save::{Saved, parse_save};

/// The flags exactly as a user types them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: InitArgs,
}

fn script(flags: &[&str], current: &Saved) -> Script {
    let argv = std::iter::once("init").chain(flags.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    let config = InitConfig::from_args(&cli.args).unwrap();
    restore_script(&config.rules, current)
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/init")
        .join(name)
}

/// Compares with the golden file, or rewrites it under `WEFT_UPDATE_GOLDEN=1`.
fn assert_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var("WEFT_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (WEFT_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    assert!(
        actual == expected,
        "{} differs; if intended, rerun with WEFT_UPDATE_GOLDEN=1\n--- expected\n{expected}--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn init_golden_defaults() {
    let s = script(&[], &Saved::default());
    assert_eq!((s.appended, s.deleted), (10, 0));
    assert_golden("defaults.rules", &s.text);
}

#[test]
fn init_golden_skip_ports_ranges_and_subnets() {
    let flags = [
        "--skip-inbound-ports=22,8000-8100",
        "--skip-outbound-ports=5432,9000-9100",
        "--skip-subnets=10.0.0.0/8,169.254.169.254/32",
        "--inbound-port=15006",
        "--outbound-port=15001",
        "--admin-port=15021",
        "--proxy-uid=1337",
    ];
    let s = script(&flags, &Saved::default());
    assert_eq!((s.appended, s.deleted), (16, 0));
    assert_golden("skips.rules", &s.text);
}

/// `rerun.save` is a real `iptables-nft-save` of a pod after one run of init
/// plus a hand-added second copy of the OUTPUT jump and an unrelated rule of
/// another tool: every copy of our jumps is deleted before the appends, the
/// other rule is left alone.
#[test]
fn init_golden_rerun_over_existing_rules() {
    let saved = std::fs::read_to_string(golden_path("rerun.save")).unwrap();
    let s = script(&["--skip-outbound-ports=5432"], &parse_save(&saved));
    assert_eq!((s.appended, s.deleted), (11, 3));
    assert_golden("rerun.rules", &s.text);
}
