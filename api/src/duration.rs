//! Kubernetes-style duration strings: `250ms`, `2s`, `5m`, `1h`, `1m30s`.
//! Used in MeshPolicies and the proxy's flags; `routes.json` itself carries
//! integer milliseconds.

use std::time::Duration;

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration like 250ms, 2s, 5m, 1h or 1m30s: {reason}")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses one or more `<digits><unit>` pairs, units `ms`, `s`, `m`, `h`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(err("it is empty"));
    }
    let mut rest = input;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("a number must come before each unit"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| err("a number is too large"))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(err("each number needs a unit: ms, s, m or h"));
        };
        rest = &rest[len..];
        let ms = n
            .checked_mul(unit_ms)
            .ok_or_else(|| err("it is too long"))?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| err("it is too long"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_compounds() {
        let ok = [
            ("250ms", 250),
            ("2s", 2_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h2m3s4ms", 3_723_004),
            ("0s", 0),
        ];
        for (input, ms) in ok {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for input in [
            "",
            "5",
            "s",
            "1.5s",
            "-1s",
            "5 s",
            "5sec",
            "1d",
            "99999999999999999999h",
        ] {
            let err = parse_duration(input).unwrap_err();
            assert!(err.to_string().contains(&format!("{input:?}")), "{err}");
        }
    }
}
