//! The pod's workload identity: certificate, key and trust bundle as the
//! operator writes them, checked before use and turned into rustls configs.
//!
//! Every check names the file that failed, so a bad Secret is diagnosed from
//! one log line, and nothing here touches the filesystem: `reload` reads the
//! files, this module decides whether they may be used.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use weft_api::SpiffeId;
use weft_api::names::{CERT_FILE, KEY_FILE, TRUST_BUNDLE_FILE};

use crate::tls::{self, MeshProtocol};

/// The raw contents of the identity files.
pub struct IdentityFiles<'a> {
    pub cert: &'a [u8],
    pub key: &'a [u8],
    pub trust_bundle: &'a [u8],
}

/// Who this pod must be: the identity the certificate must carry.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

/// A validated identity, ready for handshakes.
pub struct Identity {
    pub id: SpiffeId,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    /// One client configuration per mesh protocol (they differ in ALPN).
    clients: [Arc<ClientConfig>; 3],
    pub server: Arc<ServerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{file}: {reason}")]
    Pem { file: &'static str, reason: String },
    #[error("{file}: holds no {what}")]
    Empty {
        file: &'static str,
        what: &'static str,
    },
    #[error("{KEY_FILE} does not match the certificate in {CERT_FILE}: {0}")]
    KeyMismatch(String),
    #[error("{CERT_FILE}: certificate {0}")]
    Name(#[from] tls::IdentityNameError),
    #[error("{CERT_FILE}: identity {found} is not this pod's ({want})")]
    WrongIdentity { found: SpiffeId, want: String },
    #[error("{CERT_FILE}: certificate is not valid now: {0}")]
    Validity(String),
    /// Valid later (this node's clock is behind the issuer's): worth retrying.
    #[error("{CERT_FILE}: certificate is not valid yet: not valid before {0}")]
    NotYetValid(String),
    #[error("{CERT_FILE}: not signed by a root in {TRUST_BUNDLE_FILE}: {0}")]
    Untrusted(String),
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl Identity {
    /// Checks `files` and builds the TLS configurations. `now` is a parameter
    /// so expiry is testable without waiting.
    pub fn load(
        files: &IdentityFiles<'_>,
        expected: &Expected,
        provider: &Arc<CryptoProvider>,
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let chain = certificates(files.cert, CERT_FILE)?;
        let roots = trust_bundle(files.trust_bundle)?;
        let key = PrivateKeyDer::from_pem_slice(files.key).map_err(|e| IdentityError::Pem {
            file: KEY_FILE,
            reason: e.to_string(),
        })?;
        let leaf = chain[0].clone();
        let id = tls::spiffe_id_of(&leaf)?;
        check_expected(&id, expected)?;
        let not_after = check_validity(&leaf, now)?;
        verify_chain(&leaf, &chain[1..], &roots, provider, now)?;
        let certified = CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| IdentityError::KeyMismatch(e.to_string()))?;
        certified
            .keys_match()
            .map_err(|e| IdentityError::KeyMismatch(e.to_string()))?;
        let certified = Arc::new(certified);
        let roots = Arc::new(roots);
        let client = |protocol| {
            tls::client_config(provider, roots.clone(), certified.clone(), protocol).map(Arc::new)
        };
        Ok(Self {
            id,
            not_after,
            clients: [
                client(MeshProtocol::Opaque)?,
                client(MeshProtocol::Http1)?,
                client(MeshProtocol::Http2)?,
            ],
            server: Arc::new(tls::server_config(provider, roots, certified)?),
        })
    }

    /// The client configuration that offers `protocol`.
    pub fn client(&self, protocol: MeshProtocol) -> &Arc<ClientConfig> {
        &self.clients[protocol as usize]
    }
}

fn certificates(
    pem: &[u8],
    file: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            file,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            file,
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

fn trust_bundle(pem: &[u8]) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certificates(pem, TRUST_BUNDLE_FILE)?
        .into_iter()
        .enumerate()
    {
        roots.add(cert).map_err(|e| IdentityError::Pem {
            file: TRUST_BUNDLE_FILE,
            reason: format!("certificate #{} is not a usable root: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

fn check_expected(id: &SpiffeId, expected: &Expected) -> Result<(), IdentityError> {
    let parts = id.workload_parts().ok();
    let matches =
        |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
    if matches(&expected.namespace, parts.map(|p| p.0))
        && matches(&expected.service_account, parts.map(|p| p.1))
    {
        return Ok(());
    }
    Err(IdentityError::WrongIdentity {
        found: id.clone(),
        want: format!(
            "ns/{}/sa/{}",
            expected.namespace.as_deref().unwrap_or("*"),
            expected.service_account.as_deref().unwrap_or("*")
        ),
    })
}

/// Returns the leaf's notAfter (Unix seconds) if `now` is inside its validity.
fn check_validity(leaf: &CertificateDer<'_>, now: SystemTime) -> Result<i64, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| IdentityError::Validity(e.to_string()))?;
    let validity = cert.validity();
    let now_secs = unix_seconds(now);
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now_secs < not_before {
        return Err(IdentityError::NotYetValid(validity.not_before.to_string()));
    }
    if now_secs > not_after {
        return Err(IdentityError::Validity(format!(
            "expired at {}",
            validity.not_after
        )));
    }
    Ok(not_after)
}

fn verify_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<(), IdentityError> {
    let untrusted = |e: rustls::Error| IdentityError::Untrusted(e.to_string());
    let parsed = ParsedCertificate::try_from(leaf).map_err(untrusted)?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )
    .map_err(untrusted)
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
