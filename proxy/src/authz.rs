//! Inbound authorization: may this client (verified identity, or none for
//! plaintext) connect under this policy? Pure, so every rule is unit-tested.

use weft_api::SpiffeId;
use weft_api::routes::{AuthzDefault, InboundPolicy, MtlsMode};

/// Why a connection was refused; also the `reason` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// Plaintext on a port whose mTLS mode is strict.
    PlaintextRefused,
    /// The client matched no allow rule and the default is deny.
    NotAuthorized,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlaintextRefused => "plaintext_refused",
            Self::NotAuthorized => "not_authorized",
        }
    }
}

/// Decides whether a client may connect. `client` is `None` for plaintext.
pub fn authorize(
    policy: &InboundPolicy,
    trust_domain: &str,
    client: Option<&SpiffeId>,
) -> Result<(), Denial> {
    if client.is_none() && policy.mtls == MtlsMode::Strict {
        return Err(Denial::PlaintextRefused);
    }
    let authz = &policy.authorization;
    let allowed = client.is_some_and(|id| {
        authz.allow_any_authenticated
            || authz.allow_identities.contains(id)
            || (id.trust_domain() == trust_domain
                && id
                    .workload_parts()
                    .is_ok_and(|(ns, _)| authz.allow_namespaces.iter().any(|a| a == ns)))
    });
    if allowed || authz.default == AuthzDefault::Allow {
        Ok(())
    } else {
        Err(Denial::NotAuthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::routes::Authorization;

    fn id(td: &str, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::workload(td, ns, sa).unwrap()
    }

    fn policy(mtls: MtlsMode, default: AuthzDefault) -> InboundPolicy {
        InboundPolicy {
            mtls,
            authorization: Authorization {
                default,
                allow_identities: vec![id("td", "web", "frontend")],
                allow_namespaces: vec!["ops".into()],
                allow_any_authenticated: false,
            },
        }
    }

    #[test]
    fn strict_refuses_plaintext_whatever_the_default() {
        let p = policy(MtlsMode::Strict, AuthzDefault::Allow);
        assert_eq!(authorize(&p, "td", None), Err(Denial::PlaintextRefused));
    }

    #[test]
    fn permissive_applies_default_to_plaintext() {
        let allow = policy(MtlsMode::Permissive, AuthzDefault::Allow);
        assert_eq!(authorize(&allow, "td", None), Ok(()));
        let deny = policy(MtlsMode::Permissive, AuthzDefault::Deny);
        assert_eq!(authorize(&deny, "td", None), Err(Denial::NotAuthorized));
    }

    #[test]
    fn default_deny_allows_only_listed_clients() {
        let p = policy(MtlsMode::Strict, AuthzDefault::Deny);
        let ok = |client: &SpiffeId| authorize(&p, "td", Some(client));
        assert_eq!(ok(&id("td", "web", "frontend")), Ok(()));
        assert_eq!(ok(&id("td", "ops", "anything")), Ok(()));
        assert_eq!(ok(&id("td", "web", "other")), Err(Denial::NotAuthorized));
        // A namespace rule covers only this trust domain.
        assert_eq!(ok(&id("other", "ops", "x")), Err(Denial::NotAuthorized));
        let not_workload = SpiffeId::parse("spiffe://td/ops").unwrap();
        assert_eq!(ok(&not_workload), Err(Denial::NotAuthorized));
    }

    #[test]
    fn any_authenticated_allows_every_identity_but_not_plaintext() {
        let mut p = policy(MtlsMode::Permissive, AuthzDefault::Deny);
        p.authorization.allow_any_authenticated = true;
        assert_eq!(
            authorize(&p, "td", Some(&id("elsewhere", "a", "b"))),
            Ok(())
        );
        assert_eq!(authorize(&p, "td", None), Err(Denial::NotAuthorized));
    }

    #[test]
    fn default_allow_allows_any_identity() {
        let p = policy(MtlsMode::Strict, AuthzDefault::Allow);
        assert_eq!(authorize(&p, "td", Some(&id("td", "x", "y"))), Ok(()));
    }
}
