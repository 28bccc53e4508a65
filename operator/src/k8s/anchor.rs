//! The trust anchor in the cluster: Secret `weft-trust-anchor` in the
//! operator namespace (`tls.crt`, `tls.key`, optional `ca-bundle.crt` with
//! extra roots for a rotation).
//!
//! Given at install, or generated (ECDSA P-256, 10 years) by the leader the
//! first time it is missing. Generation uses create, never apply: if two
//! replicas race, the second gets 409 Conflict and reads the winner's, so
//! the mesh never has two anchors. An anchor that is present but unusable
//! is reported and left alone — replacing it would break every identity.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use weft_api::names::{CERT_FILE, KEY_FILE};

use crate::ca::{Authority, DEFAULT_ANCHOR_VALIDITY, TrustAnchor};

use super::objects::{self, EXTRA_ROOTS_KEY, TRUST_ANCHOR_SECRET};

/// Why the anchor Secret cannot be used; names the Secret and key.
#[derive(Debug, thiserror::Error)]
pub enum AnchorSecretError {
    #[error("Secret {namespace}/{TRUST_ANCHOR_SECRET}: {reason}")]
    Invalid { namespace: String, reason: String },
    #[error("generating the trust anchor: {0}")]
    Generate(String),
    #[error("writing Secret {namespace}/{TRUST_ANCHOR_SECRET}: {source}")]
    Api {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// The authority held by the anchor Secret, valid at `now`.
pub fn authority_from_secret(
    secret: &Secret,
    now: SystemTime,
) -> Result<Authority, AnchorSecretError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let invalid = |reason: String| AnchorSecretError::Invalid {
        namespace: namespace.clone(),
        reason,
    };
    let get = |key: &str| secret.data.as_ref()?.get(key).map(|b| b.0.as_slice());
    let cert = get(CERT_FILE).ok_or_else(|| invalid(format!("has no {CERT_FILE}")))?;
    let key = get(KEY_FILE).ok_or_else(|| invalid(format!("has no {KEY_FILE}")))?;
    let anchor = TrustAnchor::from_pem(cert, key, now).map_err(|e| invalid(e.to_string()))?;
    let authority = Authority::new(anchor);
    match get(EXTRA_ROOTS_KEY) {
        Some(extra) => authority
            .with_extra_roots(extra)
            .map_err(|e| invalid(format!("{EXTRA_ROOTS_KEY}: {e}"))),
        None => Ok(authority),
    }
}

/// Creates the anchor Secret with a new anchor; when another replica
/// created one first, reads and returns that one instead.
pub async fn create(
    client: kube::Client,
    namespace: &str,
    now: SystemTime,
) -> Result<Authority, AnchorSecretError> {
    let api_error = |source| AnchorSecretError::Api {
        namespace: namespace.to_owned(),
        source,
    };
    let anchor = TrustAnchor::generate(now, DEFAULT_ANCHOR_VALIDITY)
        .map_err(|e| AnchorSecretError::Generate(e.to_string()))?;
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = objects::anchor_secret(namespace, &anchor);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(subject = anchor.subject(), "trust anchor generated");
            Ok(Authority::new(anchor))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(TRUST_ANCHOR_SECRET).await.map_err(api_error)?;
            authority_from_secret(&existing, now)
        }
        Err(e) => Err(api_error(e)),
    }
}

/// The authority of the anchor Secret, parsed once per version of it (its
/// uid and resourceVersion): parsing checks the key against the
/// certificate, which is not worth repeating every pass or poll.
#[derive(Default)]
pub struct AuthorityCache {
    cached: Option<(SecretVersion, Authority)>,
}

type SecretVersion = (Option<String>, Option<String>);

impl AuthorityCache {
    /// The authority held by `secret`, valid at `now`.
    pub fn authority(
        &mut self,
        secret: &Secret,
        now: SystemTime,
    ) -> Result<Authority, AnchorSecretError> {
        let version = (
            secret.metadata.uid.clone(),
            secret.metadata.resource_version.clone(),
        );
        if let Some((_, authority)) = self.cached.as_ref().filter(|(v, _)| *v == version) {
            return Ok(authority.clone());
        }
        let authority = authority_from_secret(secret, now)?;
        self.cached = Some((version, authority.clone()));
        Ok(authority)
    }
}
