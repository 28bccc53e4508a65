//! Turns `weft-proxy init`'s flag values into a typed, validated config.
//!
//! Pure: no I/O. Every error names the flag and the value it refused, because
//! the person reading it is looking at a pod spec written by injection or by
//! hand and needs to know which annotation to fix.

pub use weft_api::net::{Ipv4Cidr, PortRange};
use weft_api::net::{NetError, parse_cidr, parse_list, parse_port_range};

use super::InitArgs;
use super::backend::IptablesMode;

/// What the rules need to know: where to redirect and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound_ports: Vec<PortRange>,
    pub skip_outbound_ports: Vec<PortRange>,
    pub skip_subnets: Vec<Ipv4Cidr>,
}

/// Everything `weft-proxy init` does, decided before anything runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub rules: RuleConfig,
    pub mode: IptablesMode,
    pub dry_run: bool,
}

/// A flag value we refuse, with the flag and the value for the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{flag}: {value} is not a port (1-65535)")]
    ZeroPort { flag: &'static str, value: u16 },
    #[error("{flag}: {reason}")]
    List {
        flag: &'static str,
        reason: NetError,
    },
}

impl InitConfig {
    /// Validates every flag; nothing is probed or run until this succeeds.
    pub fn from_args(args: &InitArgs) -> Result<Self, ConfigError> {
        let rules = RuleConfig {
            inbound_port: port("--inbound-port", args.inbound_port)?,
            outbound_port: port("--outbound-port", args.outbound_port)?,
            admin_port: port("--admin-port", args.admin_port)?,
            proxy_uid: args.proxy_uid,
            skip_inbound_ports: port_list("--skip-inbound-ports", &args.skip_inbound_ports)?,
            skip_outbound_ports: port_list("--skip-outbound-ports", &args.skip_outbound_ports)?,
            skip_subnets: cidr_list("--skip-subnets", &args.skip_subnets)?,
        };
        Ok(Self {
            rules,
            mode: args.iptables_mode,
            dry_run: args.dry_run,
        })
    }
}

/// Port 0 would make iptables reject the script with a vaguer message.
fn port(flag: &'static str, value: u16) -> Result<u16, ConfigError> {
    if value == 0 {
        return Err(ConfigError::ZeroPort { flag, value });
    }
    Ok(value)
}

/// Parses the flag's items (clap already split on commas) as
/// `weft_api::net` does for annotations, so both accept the same values.
fn port_list(flag: &'static str, items: &[String]) -> Result<Vec<PortRange>, ConfigError> {
    list(flag, items, parse_port_range)
}

fn cidr_list(flag: &'static str, items: &[String]) -> Result<Vec<Ipv4Cidr>, ConfigError> {
    list(flag, items, parse_cidr)
}

fn list<T: PartialEq>(
    flag: &'static str,
    items: &[String],
    parse: impl Fn(&str) -> Result<T, NetError>,
) -> Result<Vec<T>, ConfigError> {
    parse_list(&items.join(","), parse).map_err(|reason| ConfigError::List { flag, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The flags as the binary sees them, so tests cover names and defaults.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: InitArgs,
    }

    fn config(flags: &[&str]) -> Result<InitConfig, String> {
        let argv = std::iter::once("init").chain(flags.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        InitConfig::from_args(&cli.args).map_err(|e| e.to_string())
    }

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn defaults_come_from_weft_api() {
        let c = config(&[]).unwrap();
        assert_eq!(c.rules.inbound_port, 7143);
        assert_eq!(c.rules.outbound_port, 7140);
        assert_eq!(c.rules.admin_port, 7191);
        assert_eq!(c.rules.proxy_uid, 7102);
        assert!(c.rules.skip_inbound_ports.is_empty());
        assert!(c.rules.skip_outbound_ports.is_empty());
        assert!(c.rules.skip_subnets.is_empty());
        assert_eq!(c.mode, IptablesMode::Auto);
        assert!(!c.dry_run);
    }

    #[test]
    fn every_flag_is_parsed() {
        let c = config(&[
            "--inbound-port=1",
            "--outbound-port=2",
            "--admin-port=3",
            "--proxy-uid=4",
            "--skip-inbound-ports=22,8000-8100",
            "--skip-outbound-ports=5432",
            "--skip-subnets=10.0.0.0/8,192.168.1.7",
            "--iptables-mode=legacy",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(
            (
                c.rules.inbound_port,
                c.rules.outbound_port,
                c.rules.admin_port
            ),
            (1, 2, 3)
        );
        assert_eq!(c.rules.proxy_uid, 4);
        assert_eq!(
            c.rules.skip_inbound_ports,
            [range(22, 22), range(8000, 8100)]
        );
        assert_eq!(c.rules.skip_outbound_ports, [range(5432, 5432)]);
        let subnets: Vec<String> = c.rules.skip_subnets.iter().map(|s| s.to_string()).collect();
        assert_eq!(subnets, ["10.0.0.0/8", "192.168.1.7/32"]);
        assert_eq!(c.mode, IptablesMode::Legacy);
        assert!(c.dry_run);
    }

    #[test]
    fn lists_tolerate_spaces_empty_items_repeats_and_duplicates() {
        let c = config(&[
            "--skip-outbound-ports",
            " 80 , ,443,80",
            "--skip-outbound-ports",
            "",
            "--skip-outbound-ports=9000-9000",
        ])
        .unwrap();
        assert_eq!(
            c.rules.skip_outbound_ports,
            [range(80, 80), range(443, 443), range(9000, 9000)]
        );
    }

    #[test]
    fn port_ranges_print_as_iptables_spells_them() {
        assert_eq!(range(8000, 8100).to_string(), "8000:8100");
        assert_eq!(range(22, 22).to_string(), "22");
    }

    #[test]
    fn cidrs_are_normalised() {
        let c = parse_cidr("10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("1.2.3.4/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_cidr("1.2.3.4/32").unwrap().to_string(), "1.2.3.4/32");
    }

    #[test]
    fn bad_subnets_name_flag_and_value() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/8",
            "10.0.0.0/",
            "x",
            "10.0.0.0/-1",
        ] {
            let err = config(&["--skip-subnets", &format!("192.168.0.0/16,{bad}")]).unwrap_err();
            assert_eq!(
                err,
                format!("--skip-subnets: {bad:?} is not an IPv4 CIDR (like 10.0.0.0/8)")
            );
        }
    }

    #[test]
    fn bad_ports_name_flag_and_value() {
        for bad in ["0", "65536", "http", "80-", "-80", "1-2-3", "0-10"] {
            let err = config(&[&format!("--skip-inbound-ports={bad}")]).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "--skip-inbound-ports: {bad:?} is not a port or port range (like 8080 or 8000-8100)"
                )
            );
        }
        let err = config(&["--skip-outbound-ports=8100-8000"]).unwrap_err();
        assert_eq!(
            err,
            "--skip-outbound-ports: \"8100-8000\" is an empty range (its first port is after its last)"
        );
    }

    #[test]
    fn port_zero_is_refused() {
        let err = config(&["--outbound-port=0"]).unwrap_err();
        assert_eq!(err, "--outbound-port: 0 is not a port (1-65535)");
    }

    #[test]
    fn clap_refuses_unknown_modes_and_non_numbers() {
        let err = config(&["--iptables-mode=iptables"]).unwrap_err();
        assert!(err.contains("--iptables-mode"), "{err}");
        let err = config(&["--inbound-port=http"]).unwrap_err();
        assert!(err.contains("--inbound-port"), "{err}");
        let err = config(&["--proxy-uid=-1"]).unwrap_err();
        assert!(err.contains("--proxy-uid"), "{err}");
    }
}
