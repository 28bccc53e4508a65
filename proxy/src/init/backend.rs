//! Which iptables backend (`nft` or `legacy`) to install rules with.
//!
//! Pure: the caller runs the probes and hands us what they found. Rules
//! installed with the wrong backend are silently ignored by a kernel whose
//! other rules (the node's, the CNI's) live in the other one, so in `auto`
//! mode we follow whichever backend already holds rules.

use std::fmt;

/// The `--iptables-mode` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IptablesMode {
    /// Probe both backends and follow the one already in use.
    Auto,
    /// `iptables-nft-save` / `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy-save` / `iptables-legacy-restore`.
    Legacy,
}

/// One of the two iptables implementations shipped by iptables 1.8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub fn save_command(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }

    pub fn restore_command(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        })
    }
}

/// What running a backend's `*-save` showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The binary is missing or failed: the backend can't be used here.
    Unavailable,
    /// It ran; this many rules (`-A` lines, any table) are installed.
    Rules(usize),
}

impl Probe {
    fn has_rules(self) -> bool {
        matches!(self, Probe::Rules(n) if n > 0)
    }
}

/// The backend to use and, for the log, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub reason: &'static str,
}

/// Neither backend's `*-save` ran, so nothing can be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("neither iptables-nft-save nor iptables-legacy-save ran")]
pub struct NoBackend;

/// The `auto` decision: the one backend that has rules, else nft (the
/// default of current distributions), else legacy.
pub fn choose(nft: Probe, legacy: Probe) -> Result<Choice, NoBackend> {
    use Probe::{Rules, Unavailable};
    let (backend, reason) = match (nft, legacy) {
        (n, l) if n.has_rules() && l.has_rules() => {
            (Backend::Nft, "both have rules; preferring nft")
        }
        (n, _) if n.has_rules() => (Backend::Nft, "only nft has rules"),
        (_, l) if l.has_rules() => (Backend::Legacy, "only legacy has rules"),
        (Rules(_), Rules(_)) => (Backend::Nft, "neither has rules; preferring nft"),
        (Rules(_), Unavailable) => (Backend::Nft, "only nft is available"),
        (Unavailable, Rules(_)) => (Backend::Legacy, "only legacy is available"),
        (Unavailable, Unavailable) => return Err(NoBackend),
    };
    Ok(Choice { backend, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Probe::{Rules, Unavailable};

    fn chosen(nft: Probe, legacy: Probe) -> Option<Backend> {
        choose(nft, legacy).ok().map(|c| c.backend)
    }

    #[test]
    fn the_only_backend_with_rules_wins() {
        assert_eq!(chosen(Rules(3), Rules(0)), Some(Backend::Nft));
        assert_eq!(chosen(Rules(0), Rules(3)), Some(Backend::Legacy));
        assert_eq!(chosen(Unavailable, Rules(1)), Some(Backend::Legacy));
        assert_eq!(chosen(Rules(1), Unavailable), Some(Backend::Nft));
    }

    #[test]
    fn nft_is_preferred_when_rules_do_not_decide() {
        assert_eq!(chosen(Rules(0), Rules(0)), Some(Backend::Nft));
        assert_eq!(chosen(Rules(5), Rules(5)), Some(Backend::Nft));
        assert_eq!(chosen(Rules(0), Unavailable), Some(Backend::Nft));
    }

    #[test]
    fn legacy_is_used_when_nft_is_unavailable() {
        assert_eq!(chosen(Unavailable, Rules(0)), Some(Backend::Legacy));
    }

    #[test]
    fn no_backend_is_an_error() {
        assert_eq!(choose(Unavailable, Unavailable), Err(NoBackend));
    }

    #[test]
    fn reasons_explain_the_choice() {
        let c = choose(Rules(0), Rules(2)).unwrap();
        assert_eq!(c.reason, "only legacy has rules");
        let c = choose(Rules(0), Rules(0)).unwrap();
        assert_eq!(c.reason, "neither has rules; preferring nft");
    }

    #[test]
    fn commands_match_the_backend() {
        assert_eq!(Backend::Nft.save_command(), "iptables-nft-save");
        assert_eq!(Backend::Nft.restore_command(), "iptables-nft-restore");
        assert_eq!(Backend::Legacy.save_command(), "iptables-legacy-save");
        assert_eq!(Backend::Legacy.restore_command(), "iptables-legacy-restore");
    }
}
