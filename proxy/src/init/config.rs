//! Turns `weft-proxy init`'s flag values into a typed, validated config.
//!
//! Pure: no I/O. Every error names the flag and the value it refused, because
//! the person reading it is looking at a pod spec written by injection or by
//! hand and needs to know which annotation to fix.

use std::fmt;
use std::net::Ipv4Addr;

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
    #[error("{flag}: {value:?} is not a port or port range (like 8080 or 8000-8100)")]
    Port { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is an empty range (its first port is after its last)")]
    EmptyRange { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is not an IPv4 CIDR (like 10.0.0.0/8)")]
    Cidr { flag: &'static str, value: String },
}

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    /// iptables' spelling (`8000:8100`), so generated rules read back identically
    /// from `iptables-save`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An IPv4 network with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
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

/// Parses list items (clap already split on commas), ignoring empty items so
/// an empty annotation means "nothing to skip", and dropping duplicates so
/// each rule is installed once.
fn port_list(flag: &'static str, items: &[String]) -> Result<Vec<PortRange>, ConfigError> {
    parse_items(items, |item| parse_port_range(flag, item))
}

fn cidr_list(flag: &'static str, items: &[String]) -> Result<Vec<Ipv4Cidr>, ConfigError> {
    parse_items(items, |item| parse_cidr(flag, item))
}

fn parse_items<T: PartialEq>(
    items: &[String],
    parse: impl Fn(&str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    let mut out = Vec::new();
    for item in items.iter().flat_map(|i| i.split(',')).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let value = parse(item)?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

/// Parses `8080` or `8000-8100`.
pub fn parse_port_range(flag: &'static str, item: &str) -> Result<PortRange, ConfigError> {
    let bad = || ConfigError::Port {
        flag,
        value: item.to_owned(),
    };
    let one = |s: &str| match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(p) => Ok(p),
    };
    let (first, last) = match item.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let p = one(item)?;
            (p, p)
        }
    };
    if first > last {
        return Err(ConfigError::EmptyRange {
            flag,
            value: item.to_owned(),
        });
    }
    Ok(PortRange { first, last })
}

/// Parses `10.0.0.0/8`; a bare address means `/32`. Host bits are cleared
/// (`10.1.2.3/8` is `10.0.0.0/8`), as iptables itself would store it.
pub fn parse_cidr(flag: &'static str, item: &str) -> Result<Ipv4Cidr, ConfigError> {
    let bad = || ConfigError::Cidr {
        flag,
        value: item.to_owned(),
    };
    let (addr, prefix) = match item.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
        None => (item, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ok(Ipv4Cidr {
        network: Ipv4Addr::from(u32::from(addr) & mask),
        prefix,
    })
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
        let c = parse_cidr("--skip-subnets", "10.1.2.3/8").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_cidr("f", "1.2.3.4/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            parse_cidr("f", "1.2.3.4/32").unwrap().to_string(),
            "1.2.3.4/32"
        );
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
