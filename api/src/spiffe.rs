//! SPIFFE IDs: parsing, formatting and Weft's workload form
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing follows the SPIFFE ID specification (scheme, trust domain and path
//! character sets, no empty, `.` or `..` segments, no query, fragment, port or
//! user info) so an identity that passes here is one every SPIFFE
//! implementation agrees on.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
/// The SPIFFE specification's limit on the whole ID.
const MAX_LEN: usize = 2048;
/// The SPIFFE specification's limit on the trust domain.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("does not start with \"spiffe://\"")]
    Scheme,
    #[error("is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain has {0:?}; only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path has {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    PathChar(char),
    #[error("is not a Weft workload identity (expected path /ns/<namespace>/sa/<service-account>)")]
    NotWorkload,
}

/// A syntactically valid SPIFFE ID. Stored as its canonical string so that
/// comparisons and formatting cost nothing, and shared: a routing table
/// names the identity of every endpoint, thousands of them for a few
/// service accounts, so a clone is a reference count, not an allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte offset where the path (including its leading '/') starts; equals
    /// `uri.len()` when there is no path.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain)?;
        validate_path(path)?;
        Ok(Self {
            uri: s.into(),
            path_start: SCHEME.len() + trust_domain.len(),
        })
    }

    /// The identity of `service_account` in `namespace`.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path including its leading '/', or "" when there is none.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// `(namespace, service_account)` of a Weft workload identity. The
    /// inbound proxy asks this of its caller's ID on every request a
    /// namespace rule decides, so it cuts the path where it must rather than
    /// splitting all of it (parsing already refused empty segments).
    pub fn workload_parts(&self) -> Result<(&str, &str), SpiffeIdError> {
        let parts = self.path().strip_prefix("/ns/").and_then(|rest| {
            let (ns, rest) = rest.split_once('/')?;
            let sa = rest.strip_prefix("sa/")?;
            (!sa.contains('/')).then_some((ns, sa))
        });
        parts.ok_or(SpiffeIdError::NotWorkload)
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The canonical string, shared with this ID (a metric label made from
    /// it costs no allocation).
    pub fn shared_str(&self) -> Arc<str> {
        self.uri.clone()
    }
}

thread_local! {
    /// The ID deserialized last on this thread. A routing table lists the
    /// endpoints of one service account one after another, so most of its
    /// IDs repeat the one before: those are shared, not parsed and
    /// allocated again.
    static LAST_DESERIALIZED: RefCell<Option<SpiffeId>> = const { RefCell::new(None) };
}

/// Parses `s`, or shares the ID deserialized last when it is the same.
fn parse_repeated(s: &str) -> Result<SpiffeId, SpiffeIdError> {
    LAST_DESERIALIZED.with_borrow_mut(|last| {
        if let Some(same) = last.as_ref().filter(|id| id.as_str() == s) {
            return Ok(same.clone());
        }
        let id = SpiffeId::parse(s)?;
        *last = Some(id.clone());
        Ok(id)
    })
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::PathChar(c));
        }
    }
    Ok(())
}

/// Whether `td` is a valid trust domain name.
pub fn is_valid_trust_domain(td: &str) -> bool {
    validate_trust_domain(td).is_ok()
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Reads the string in place (borrowed from the input when it has
        /// no escapes) instead of copying it into a `String` first.
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = SpiffeId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<SpiffeId, E> {
                parse_repeated(s).map_err(|e| E::custom(format!("SPIFFE ID {s:?} {e}")))
            }
        }

        d.deserialize_str(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_workload_identity() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/cart");
        assert_eq!(id.workload_parts().unwrap(), ("shop", "cart"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
    }

    #[test]
    fn trust_domain_only_is_valid_but_not_a_workload() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.path(), "");
        assert_eq!(id.workload_parts(), Err(SpiffeIdError::NotWorkload));
    }

    #[test]
    fn rejects_invalid_ids() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", SpiffeIdError::Scheme),
            ("SPIFFE://cluster.local/x", SpiffeIdError::Scheme),
            ("spiffe:///ns/a", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/x",
                SpiffeIdError::TrustDomainChar('C'),
            ),
            ("spiffe://td:8080/x", SpiffeIdError::TrustDomainChar(':')),
            ("spiffe://user@td/x", SpiffeIdError::TrustDomainChar('@')),
            ("spiffe://td/ns//sa", SpiffeIdError::EmptySegment),
            ("spiffe://td/ns/a/", SpiffeIdError::EmptySegment),
            ("spiffe://td/ns/../sa", SpiffeIdError::DotSegment),
            ("spiffe://td/ns/./sa", SpiffeIdError::DotSegment),
            ("spiffe://td/ns?x=1", SpiffeIdError::PathChar('?')),
            ("spiffe://td/ns#frag", SpiffeIdError::PathChar('#')),
            ("spiffe://td/n%20s", SpiffeIdError::PathChar('%')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(
            SpiffeId::parse(&long_td),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
    }

    #[test]
    fn workload_parts_need_exact_shape() {
        let paths = [
            "/ns/a",
            "/ns/a/sa",
            "/ns/a/sa/b/c",
            "/sa/b/ns/a",
            "/ns/a/b/sa/c",
            "/ns/a/x/b",
        ];
        for path in paths {
            let id = SpiffeId::parse(&format!("spiffe://td{path}")).unwrap();
            assert_eq!(
                id.workload_parts(),
                Err(SpiffeIdError::NotWorkload),
                "{path}"
            );
        }
    }

    #[test]
    fn serde_round_trip_and_error_names_value() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/ns/a/sa/b\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/a/sa/b\""
        );
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/ns//b\"").unwrap_err();
        assert!(err.to_string().contains("spiffe://td/ns//b"), "{err}");
        let err = serde_json::from_str::<SpiffeId>("5").unwrap_err();
        assert!(err.to_string().contains("expected a string"), "{err}");
    }

    #[test]
    fn a_repeated_id_is_shared_and_a_bad_one_never_is() {
        let ids: Vec<SpiffeId> = serde_json::from_str(
            r#"["spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/c"]"#,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&ids[0].uri, &ids[1].uri));
        assert_eq!(ids[2].as_str(), "spiffe://td/ns/a/sa/c");
        // A bad ID is refused every time, also right after a good one.
        let bad = r#"["spiffe://td/ns/a/sa/c", "spiffe://td/ns//c", "spiffe://td/ns//c"]"#;
        assert!(serde_json::from_str::<Vec<SpiffeId>>(bad).is_err());
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/ns//c\"").is_err());
    }

    fn dns_label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn workload_ids_round_trip(
            td in "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?",
            ns in dns_label(),
            sa in "[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?",
        ) {
            let id = SpiffeId::workload(&td, &ns, &sa).unwrap();
            prop_assert_eq!(id.trust_domain(), td.as_str());
            prop_assert_eq!(id.workload_parts().unwrap(), (ns.as_str(), sa.as_str()));
            let reparsed = SpiffeId::parse(&id.to_string()).unwrap();
            prop_assert_eq!(reparsed, id);
        }

        #[test]
        fn parse_never_panics_and_accepted_ids_format_identically(s in "\\PC{0,80}") {
            if let Ok(id) = SpiffeId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn any_valid_path_round_trips(
            td in "[a-z0-9_.-]{1,20}",
            segments in proptest::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,10}", 0..6),
        ) {
            let s = segments.iter().fold(format!("spiffe://{td}"), |acc, seg| acc + "/" + seg);
            let id = SpiffeId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(id.trust_domain(), td.as_str());
        }
    }
}
