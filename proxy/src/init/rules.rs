//! The `iptables-restore` script that redirects the pod's TCP to the proxy.
//!
//! Pure: from the config and the nat table as `iptables-save` showed it, we
//! produce the text to feed `iptables-restore --noflush`. `--noflush` keeps
//! the rules other tools put in the pod; our own chains are declared with
//! `:NAME - [0:0]`, which creates them or empties them, and our jumps from the
//! built-in chains are deleted before being appended again, so applying the
//! script any number of times leaves exactly one copy of every rule.
//!
//! Rules are spelled the way `iptables-save` prints them (`-p tcp -m tcp
//! --dport`, ranges as `a:b`), so what we install reads back identically.

use super::config::RuleConfig;
use super::save::Saved;

/// Inbound TCP from PREROUTING: the skip list, then the redirect.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// The one rule that sends inbound TCP to the inbound proxy.
pub const INBOUND_REDIRECT_CHAIN: &str = "WEFT_INBOUND_REDIRECT";
/// Outbound TCP from OUTPUT: the skip list, then the redirect.
pub const OUTBOUND_CHAIN: &str = "WEFT_OUTBOUND";
/// The one rule that sends outbound TCP to the outbound proxy.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "WEFT_OUTBOUND_REDIRECT";
/// Every chain we own starts with this; a jump from PREROUTING or OUTPUT
/// into any of them (including chains of an older version) is ours to delete.
pub const CHAIN_PREFIX: &str = "WEFT_";

const OUR_CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTBOUND_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
];

/// The built-in nat chains we hook into; the only places we delete from.
const HOOK_CHAINS: [&str; 2] = ["PREROUTING", "OUTPUT"];

/// A generated `iptables-restore` input and what it does, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub text: String,
    /// `-A` lines: the rules installed.
    pub appended: usize,
    /// `-D` lines: earlier copies of our jumps removed first.
    pub deleted: usize,
}

/// The script for `iptables-restore --noflush`, given the nat table as it is
/// now (`current`, parsed from `iptables-save`; empty on a fresh pod).
pub fn restore_script(config: &RuleConfig, current: &Saved) -> Script {
    let deletes = stale_jumps(current);
    let appends: Vec<String> = inbound_rules(config)
        .into_iter()
        .chain(outbound_rules(config))
        .collect();
    let mut text = String::from("# weft-proxy init: nat rules for iptables-restore --noflush\n");
    text.push_str("*nat\n");
    for chain in OUR_CHAINS {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for line in deletes.iter().chain(&appends) {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    Script {
        text,
        appended: appends.len(),
        deleted: deletes.len(),
    }
}

/// `-D` lines for every jump from PREROUTING/OUTPUT into a chain of ours,
/// one per copy (a crashed or raced earlier run may have left two).
fn stale_jumps(current: &Saved) -> Vec<String> {
    current
        .table("nat")
        .filter(|r| HOOK_CHAINS.contains(&r.chain.as_str()))
        .filter(|r| {
            r.target
                .as_deref()
                .is_some_and(|t| t.starts_with(CHAIN_PREFIX))
        })
        .filter_map(|r| r.line.strip_prefix("-A "))
        .map(|rest| format!("-D {rest}"))
        .collect()
}

/// Inbound: everything except the admin port (kubelet probes must reach the
/// admin server directly) and the skipped ports goes to the inbound proxy.
fn inbound_rules(c: &RuleConfig) -> Vec<String> {
    let admin = std::iter::once(dport_return(INBOUND_CHAIN, &c.admin_port.to_string()));
    let skips = c
        .skip_inbound_ports
        .iter()
        .map(|p| dport_return(INBOUND_CHAIN, &p.to_string()));
    let mut rules = vec![format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}")];
    rules.extend(admin.chain(skips));
    rules.push(format!(
        "-A {INBOUND_CHAIN} -p tcp -j {INBOUND_REDIRECT_CHAIN}"
    ));
    rules.push(redirect(INBOUND_REDIRECT_CHAIN, c.inbound_port));
    rules
}

/// Outbound: everything except the proxy's own connections (else it would
/// loop into itself), loopback, and the skipped ports and subnets goes to
/// the outbound proxy.
fn outbound_rules(c: &RuleConfig) -> Vec<String> {
    let mut rules = vec![
        format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"),
        format!(
            "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
            c.proxy_uid
        ),
        format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"),
        format!("-A {OUTBOUND_CHAIN} -d 127.0.0.0/8 -j RETURN"),
    ];
    rules.extend(
        c.skip_outbound_ports
            .iter()
            .map(|p| dport_return(OUTBOUND_CHAIN, &p.to_string())),
    );
    rules.extend(
        c.skip_subnets
            .iter()
            .map(|net| format!("-A {OUTBOUND_CHAIN} -d {net} -j RETURN")),
    );
    rules.push(format!(
        "-A {OUTBOUND_CHAIN} -p tcp -j {OUTBOUND_REDIRECT_CHAIN}"
    ));
    rules.push(redirect(OUTBOUND_REDIRECT_CHAIN, c.outbound_port));
    rules
}

fn dport_return(chain: &str, ports: &str) -> String {
    format!("-A {chain} -p tcp -m tcp --dport {ports} -j RETURN")
}

fn redirect(chain: &str, port: u16) -> String {
    format!("-A {chain} -p tcp -j REDIRECT --to-ports {port}")
}

/// The script line an `iptables-restore` error names, numbered from 1 as
/// iptables counts. Both backends say it in one of three ways: `Error
/// occurred at line: 7`, `line 7 failed`, `COMMIT expected at line 7`.
pub fn failed_line<'a>(stderr: &str, script: &'a str) -> Option<(usize, &'a str)> {
    let number = stderr.match_indices("line").find_map(|(at, word)| {
        let rest = stderr.get(at + word.len()..)?;
        let rest = rest.trim_start_matches([':', ' ']);
        let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse::<usize>().ok()
    })?;
    let line = script.lines().nth(number.checked_sub(1)?)?;
    Some((number, line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::save::parse_save;

    fn defaults() -> RuleConfig {
        RuleConfig {
            inbound_port: 7143,
            outbound_port: 7140,
            admin_port: 7191,
            proxy_uid: 7102,
            skip_inbound_ports: vec![],
            skip_outbound_ports: vec![],
            skip_subnets: vec![],
        }
    }

    #[test]
    fn a_fresh_pod_gets_only_appends() {
        let script = restore_script(&defaults(), &Saved::default());
        assert_eq!(script.deleted, 0);
        assert_eq!(script.appended, 10);
        assert!(!script.text.contains("-D "));
        assert!(script.text.starts_with("# weft-proxy init"));
        assert!(script.text.ends_with("COMMIT\n"));
    }

    #[test]
    fn only_our_jumps_from_hook_chains_are_deleted() {
        let saved = parse_save(
            "*nat\n\
             -A PREROUTING -p tcp -j WEFT_INBOUND\n\
             -A PREROUTING -p tcp -j OTHER_MESH\n\
             -A OUTPUT -p tcp -j WEFT_OUTBOUND\n\
             -A OUTPUT -p tcp -j WEFT_OUTBOUND\n\
             -A POSTROUTING -j WEFT_SOMETHING\n\
             -A WEFT_INBOUND -p tcp -j WEFT_INBOUND_REDIRECT\n\
             COMMIT\n\
             *mangle\n\
             -A PREROUTING -j WEFT_INBOUND\n\
             COMMIT\n",
        );
        let script = restore_script(&defaults(), &saved);
        let deletes: Vec<&str> = script
            .text
            .lines()
            .filter(|l| l.starts_with("-D"))
            .collect();
        assert_eq!(
            deletes,
            [
                "-D PREROUTING -p tcp -j WEFT_INBOUND",
                "-D OUTPUT -p tcp -j WEFT_OUTBOUND",
                "-D OUTPUT -p tcp -j WEFT_OUTBOUND",
            ]
        );
        assert_eq!(script.deleted, 3);
    }

    #[test]
    fn deletes_come_before_the_appends_they_undo() {
        let saved = parse_save("*nat\n-A OUTPUT -p tcp -j WEFT_OUTBOUND\nCOMMIT\n");
        let text = restore_script(&defaults(), &saved).text;
        let d = text.find("-D OUTPUT -p tcp -j WEFT_OUTBOUND");
        let a = text.find("-A OUTPUT -p tcp -j WEFT_OUTBOUND");
        assert!(d.is_some() && a.is_some() && d < a, "{text}");
    }

    #[test]
    fn failed_line_understands_both_backends() {
        let script = "# c\n*nat\n-A X\n-A Y\nCOMMIT\n";
        let cases = [
            (
                "iptables-restore v1.8.9 (legacy): bad\nError occurred at line: 3\n",
                3,
            ),
            ("iptables-nft-restore: line 4 failed: Bad rule\n", 4),
            ("iptables-restore: COMMIT expected at line 5\n", 5),
        ];
        for (stderr, n) in cases {
            let (got, _) = failed_line(stderr, script).unwrap();
            assert_eq!(got, n, "{stderr}");
        }
        assert_eq!(failed_line("line 4 failed", script), Some((4, "-A Y")));
    }

    #[test]
    fn failed_line_is_none_without_a_usable_number() {
        let script = "*nat\nCOMMIT\n";
        assert_eq!(
            failed_line("Permission denied (you must be root)", script),
            None
        );
        assert_eq!(failed_line("Error occurred at line: 0", script), None);
        assert_eq!(failed_line("Error occurred at line: 99", script), None);
        assert_eq!(
            failed_line("multiline message, line 2 failed", script),
            Some((2, "COMMIT"))
        );
    }
}
