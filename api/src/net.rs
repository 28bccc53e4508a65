//! Port ranges and IPv4 networks as users write them in annotations and
//! flags (`8080`, `8000-8100`, `10.0.0.0/8`). Shared by injection, which
//! refuses a bad annotation, and `weft-proxy init`, which turns the same
//! values into iptables rules, so both accept exactly the same input.

use std::fmt;
use std::net::Ipv4Addr;

/// Why a value is not a port range or a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("{0:?} is not a port or port range (like 8080 or 8000-8100)")]
    Port(String),
    #[error("{0:?} is an empty range (its first port is after its last)")]
    EmptyRange(String),
    #[error("{0:?} is not an IPv4 CIDR (like 10.0.0.0/8)")]
    Cidr(String),
}

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    /// iptables' spelling (`8000:8100`), so generated rules read back
    /// identically from `iptables-save`.
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

/// Parses `8080` or `8000-8100`; port 0 is refused.
pub fn parse_port_range(item: &str) -> Result<PortRange, NetError> {
    let bad = || NetError::Port(item.to_owned());
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
        return Err(NetError::EmptyRange(item.to_owned()));
    }
    Ok(PortRange { first, last })
}

/// Parses `10.0.0.0/8`; a bare address means `/32`. Host bits are cleared
/// (`10.1.2.3/8` is `10.0.0.0/8`), as iptables itself would store it.
pub fn parse_cidr(item: &str) -> Result<Ipv4Cidr, NetError> {
    let bad = || NetError::Cidr(item.to_owned());
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

/// Parses a comma-separated list, skipping empty items (an empty
/// annotation means "none") and dropping duplicates.
pub fn parse_list<T: PartialEq>(
    value: &str,
    parse: impl Fn(&str) -> Result<T, NetError>,
) -> Result<Vec<T>, NetError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let v = parse(item)?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(
            parse_port_range("8080"),
            Ok(PortRange {
                first: 8080,
                last: 8080
            })
        );
        assert_eq!(
            parse_port_range("8000-8100").unwrap().to_string(),
            "8000:8100"
        );
        assert_eq!(parse_port_range("0"), Err(NetError::Port("0".into())));
        assert_eq!(parse_port_range("x"), Err(NetError::Port("x".into())));
        assert_eq!(
            parse_port_range("9-8"),
            Err(NetError::EmptyRange("9-8".into()))
        );
        assert_eq!(
            parse_port_range("70000"),
            Err(NetError::Port("70000".into()))
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        for bad in ["10.0.0.0/33", "10.0.0/8", "::1/128", "a/8"] {
            assert_eq!(parse_cidr(bad), Err(NetError::Cidr(bad.into())), "{bad}");
        }
    }

    #[test]
    fn lists_skip_empty_items_and_duplicates() {
        let ports = parse_list(" 80, ,443,80 ", parse_port_range).unwrap();
        assert_eq!(
            ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["80", "443"]
        );
        assert_eq!(parse_list("", parse_cidr), Ok(vec![]));
        assert!(parse_list("80,nope", parse_port_range).is_err());
    }
}
