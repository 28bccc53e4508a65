//! `weft-proxy init` against real iptables, in a throwaway network namespace.
//!
//! Needs root and network namespaces; without them each test prints why it
//! is skipping and passes. Every command that reads or writes rules runs
//! under `ip netns exec`, so the host's own rules are never touched, and the
//! namespace is deleted when the test ends, pass or fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_weft-proxy");

/// A network namespace that is deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// Creates `weft-init-test-<pid>-<tag>`, or says why it can't (the
    /// reason to skip). `tools` must be runnable too.
    fn create(tag: &str, tools: &[&str]) -> Result<Self, String> {
        let euid = effective_uid().ok_or("cannot read the effective UID")?;
        if euid != 0 {
            return Err(format!("running as UID {euid}, not root"));
        }
        for tool in tools {
            Command::new(tool)
                .arg("--version")
                .output()
                .map_err(|e| format!("{tool}: {e}"))?;
        }
        let name = format!("weft-init-test-{}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("ip netns add: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!("ip netns add {name}: {}", stderr.trim()));
        }
        Ok(Self { name })
    }

    /// Runs a command inside the namespace.
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap()
    }

    /// Runs a command inside the namespace and returns its stdout; panics
    /// with its stderr if it fails.
    fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `weft-proxy init <flags>`, returning (stdout, stderr).
    fn init(&self, flags: &[&str]) -> (String, String) {
        let argv: Vec<&str> = [BIN, "init"].iter().chain(flags).copied().collect();
        let out = self.exec(&argv);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "init {flags:?}: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    /// The nat table's rules, grouped by chain, in order.
    fn nat_rules(&self, backend: &str) -> BTreeMap<String, Vec<String>> {
        by_chain(&self.ok(&[&format!("iptables-{backend}-save"), "-t", "nat"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// From `/proc/self/status`, as std has no `geteuid` and unsafe is forbidden.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The namespace, or `None` after printing why the test is skipped.
fn netns_or_skip(tag: &str, tools: &[&str]) -> Option<Netns> {
    match Netns::create(tag, tools) {
        Ok(ns) => Some(ns),
        Err(reason) => {
            eprintln!("skipping: needs root and network namespaces ({reason})");
            None
        }
    }
}

fn by_chain(save: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in save.lines().filter(|l| l.starts_with("-A ")) {
        let chain = line.split_whitespace().nth(1).unwrap().to_owned();
        chains.entry(chain).or_default().push(line.to_owned());
    }
    chains
}

/// Someone else's nat rule, installed before init; it must survive.
const OTHER_RULE: &str =
    "-A OUTPUT -d 169.254.169.254/32 -p tcp -j DNAT --to-destination 10.0.0.1:8080";

/// What `init --skip-outbound-ports 5432` must leave, plus [`OTHER_RULE`].
fn expected_rules() -> BTreeMap<String, Vec<String>> {
    by_chain(&format!(
        "\
-A PREROUTING -p tcp -j WEFT_INBOUND
{OTHER_RULE}
-A OUTPUT -p tcp -j WEFT_OUTBOUND
-A WEFT_INBOUND -p tcp -m tcp --dport 7191 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_INBOUND_REDIRECT
-A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 7143
-A WEFT_OUTBOUND -m owner --uid-owner 7102 -j RETURN
-A WEFT_OUTBOUND -o lo -j RETURN
-A WEFT_OUTBOUND -d 127.0.0.0/8 -j RETURN
-A WEFT_OUTBOUND -p tcp -m tcp --dport 5432 -j RETURN
-A WEFT_OUTBOUND -p tcp -j WEFT_OUTBOUND_REDIRECT
-A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 7140
"
    ))
}

/// Installs twice (with a stray duplicate jump in between, as an interrupted
/// older run could leave) and checks every rule is there exactly once.
fn installs_each_rule_once(backend: &str) {
    let tools = [
        format!("iptables-{backend}-save"),
        format!("iptables-{backend}"),
    ];
    let tools: Vec<&str> = tools.iter().map(String::as_str).collect();
    let Some(ns) = netns_or_skip(backend, &tools) else {
        return;
    };
    let iptables = format!("iptables-{backend}");
    let mut add_other = vec![iptables.as_str(), "-t", "nat"];
    add_other.extend(OTHER_RULE.split_whitespace());
    ns.ok(&add_other);

    let flags = ["--skip-outbound-ports", "5432", "--iptables-mode", backend];
    let (_, first) = ns.init(&flags);
    assert!(
        first.contains(&format!("iptables-{backend}-restore")),
        "{first}"
    );
    assert!(
        first.contains("applied 11 rules (replacing 0 existing jumps)"),
        "{first}"
    );
    ns.ok(&[
        &iptables,
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-j",
        "WEFT_OUTBOUND",
    ]);
    let (_, second) = ns.init(&flags);
    assert!(
        second.contains("applied 11 rules (replacing 3 existing jumps)"),
        "{second}"
    );

    assert_eq!(ns.nat_rules(backend), expected_rules());
}

#[test]
fn init_netns_nft_twice_installs_each_rule_once() {
    installs_each_rule_once("nft");
}

#[test]
fn init_netns_legacy_twice_installs_each_rule_once() {
    installs_each_rule_once("legacy");
}

#[test]
fn init_netns_dry_run_prints_the_script_and_installs_nothing() {
    let Some(ns) = netns_or_skip("dry", &["iptables-nft-save"]) else {
        return;
    };
    let (stdout, stderr) = ns.init(&["--dry-run", "--iptables-mode", "nft"]);
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/init/defaults.rules"
    );
    assert_eq!(stdout, std::fs::read_to_string(golden).unwrap());
    assert!(stderr.contains("would apply 10 rules"), "{stderr}");
    assert!(ns.nat_rules("nft").is_empty());
    let save = ns.ok(&["iptables-nft-save", "-t", "nat"]);
    assert!(!save.contains("WEFT"), "{save}");
}

/// `auto` follows the backend that already has rules, even if it is not the
/// preferred one, so our rules end up next to the CNI's.
#[test]
fn init_netns_auto_follows_the_backend_with_rules() {
    let tools = [
        "iptables-legacy",
        "iptables-legacy-save",
        "iptables-nft-save",
    ];
    let Some(ns) = netns_or_skip("auto-legacy", &tools) else {
        return;
    };
    ns.ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-j",
        "RETURN",
    ]);
    let (_, stderr) = ns.init(&[]);
    assert!(
        stderr.contains("legacy backend: only legacy has rules"),
        "{stderr}"
    );
    assert_eq!(ns.nat_rules("legacy")["WEFT_OUTBOUND_REDIRECT"].len(), 1);
    assert!(ns.nat_rules("nft").is_empty());
}

/// With no rules anywhere (a fresh pod), `auto` picks nft.
#[test]
fn init_netns_auto_prefers_nft_on_a_fresh_pod() {
    let tools = ["iptables-legacy-save", "iptables-nft-save"];
    let Some(ns) = netns_or_skip("auto-fresh", &tools) else {
        return;
    };
    let (_, stderr) = ns.init(&[]);
    assert!(
        stderr.contains("nft backend: neither has rules; preferring nft"),
        "{stderr}"
    );
    assert_eq!(ns.nat_rules("nft")["WEFT_INBOUND_REDIRECT"].len(), 1);
    assert!(ns.nat_rules("legacy").is_empty());
}
