//! The mesh certificate authority: the trust anchor (the root CA), the trust
//! bundle, workload certificate issuance and the decision whether a stored
//! identity must be re-issued.
//!
//! Pure logic: no I/O, no Kubernetes types and no clock — everything that
//! depends on time takes `now` — so a whole anchor rotation is testable in
//! milliseconds. The runtime loads the anchor from the `weft-trust-anchor`
//! Secret and writes identity Secrets; the one outside resource used here is
//! the system random number generator (keys and serial numbers, aws-lc-rs).
//!
//! Rotating the anchor without an outage is driven by the bundle, in three
//! steps, each one waiting until every identity Secret has been rewritten and
//! the proxies have picked the files up:
//!
//! 1. signer A, extra root B: every `ca.crt` changes (`BundleChanged`), so
//!    every proxy trusts B before anything is signed by it;
//! 2. signer B, extra root A: every leaf is re-issued by B
//!    (`NotSignedByCurrentAnchor`) while leaves from A still verify;
//! 3. signer B alone: A leaves the bundle (`BundleChanged`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rcgen::string::{BmpString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use weft_api::names::{CERT_FILE, KEY_FILE, TRUST_BUNDLE_FILE};
use weft_api::{SpiffeId, SpiffeIdError};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;
use x509_parser::x509::X509Name;

/// How long a generated trust anchor is valid.
pub const DEFAULT_ANCHOR_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a workload certificate is valid.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The fraction of a certificate's life after which it is re-issued.
pub const DEFAULT_RENEW_AT_FRACTION: f64 = 0.5;
/// How far back `notBefore` is set, so a peer whose clock is a little behind
/// the operator's accepts a certificate issued this instant.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// 9999-12-31T23:59:59Z, the last second a certificate can express.
const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// Why a trust anchor cannot be generated or loaded. The message says which
/// input — the certificate or the key — is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error("trust anchor certificate: {0}")]
    Certificate(String),
    #[error("trust anchor certificate {subject} is not a CA: {reason}")]
    NotCa {
        subject: String,
        reason: &'static str,
    },
    #[error("trust anchor certificate {subject} expired at {not_after}")]
    Expired { subject: String, not_after: String },
    #[error("trust anchor certificate {subject} is not valid before {not_before}")]
    NotYetValid { subject: String, not_before: String },
    #[error(
        "trust anchor certificate {subject}: its subject cannot be written as the issuer of \
         workload certificates: {reason}"
    )]
    UnsupportedSubject { subject: String, reason: String },
    #[error("trust anchor key: {0}")]
    Key(String),
    #[error(
        "trust anchor key: unsupported algorithm; use ECDSA P-256 (recommended), ECDSA P-384, \
         Ed25519 or RSA"
    )]
    UnsupportedKey,
    #[error("trust anchor key does not match the public key of certificate {subject}")]
    KeyMismatch { subject: String },
    #[error("trust anchor validity must be at least one second and end before year 10000")]
    Validity,
    #[error("generating the trust anchor: {0}")]
    Generate(String),
}

/// Why extra roots cannot join the trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("extra trust roots: {0}")]
    Pem(String),
    #[error("extra trust root #{index} ({subject}) is not a CA certificate")]
    NotCa { index: usize, subject: String },
}

/// Why a workload or serving certificate cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("{id:?} is not a valid workload identity: {reason}")]
    Identity { id: String, reason: SpiffeIdError },
    #[error("a serving certificate needs at least one DNS name")]
    NoDnsNames,
    #[error(
        "{0:?} is not a DNS name a serving certificate can hold (lowercase labels of letters, \
         digits and '-', at most 253 characters)"
    )]
    DnsName(String),
    #[error("certificate lifetime must be at least one second")]
    ZeroLifetime,
    /// Names the certificate: its SPIFFE ID or DNS names.
    #[error("validity of the certificate for {0} falls outside the years 1970 to 9999")]
    TimeOutOfRange(String),
    #[error("trust anchor {subject} expired at {not_after}; it must be rotated")]
    AnchorExpired { subject: String, not_after: String },
    /// `what` names the certificate: its SPIFFE ID or DNS names.
    #[error("signing the certificate for {what}: {reason}")]
    Sign { what: String, reason: String },
}

/// Why a PEM certificate cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertError(String);

/// A root CA: its certificate and the key that signs workload certificates.
/// Cheap to clone.
#[derive(Clone)]
pub struct TrustAnchor {
    inner: Arc<AnchorInner>,
}

struct AnchorInner {
    issuer: Issuer<'static, KeyPair>,
    /// Verifies signatures made by `issuer`'s key.
    verify: &'static dyn VerificationAlgorithm,
    /// The subjectPublicKey bits of the certificate.
    public_key: Vec<u8>,
    /// Whether the certificate has a subject key identifier for leaves to
    /// name as their authority key identifier.
    has_key_id: bool,
    der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
    subject: String,
    subject_der: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl TrustAnchor {
    /// A new self-signed ECDSA P-256 root, `CN=weft root <unix seconds>`,
    /// valid from `now` (less `CLOCK_SKEW`) for `validity`. It may sign leaves
    /// only (pathLen 0).
    pub fn generate(now: SystemTime, validity: Duration) -> Result<Self, AnchorError> {
        let generate = |e: rcgen::Error| AnchorError::Generate(e.to_string());
        let now_secs = unix_secs(now);
        let validity = i64::try_from(validity.as_secs()).map_err(|_| AnchorError::Validity)?;
        if validity == 0 {
            return Err(AnchorError::Validity);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("weft root {now_secs}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial().map_err(AnchorError::Generate)?);
        set_validity(
            &mut params,
            now_secs - skew_secs(),
            now_secs.saturating_add(validity),
        )
        .ok_or(AnchorError::Validity)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.self_signed(&key).map_err(generate)?;
        Self::new(cert.der().to_vec(), key, now)
    }

    /// Loads an anchor given at install: one PEM certificate and its PKCS#8
    /// PEM key. The certificate must be a CA valid at `now`, and the key its
    /// own.
    pub fn from_pem(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
        now: SystemTime,
    ) -> Result<Self, AnchorError> {
        let certs = pem_certs(cert_pem.as_ref()).map_err(AnchorError::Certificate)?;
        let count = certs.len();
        let Ok([der]) = <[Vec<u8>; 1]>::try_from(certs) else {
            return Err(AnchorError::Certificate(format!(
                "holds {count} certificates; expected exactly one, the root"
            )));
        };
        let key = pem_key(key_pem.as_ref()).map_err(AnchorError::Key)?;
        Self::new(der, key, now)
    }

    fn new(der: Vec<u8>, key: KeyPair, now: SystemTime) -> Result<Self, AnchorError> {
        let cert = parse_cert(&der).map_err(AnchorError::Certificate)?;
        let subject = cert.subject().to_string();
        let bad_extension = |e: x509_parser::error::X509Error| {
            AnchorError::Certificate(format!("{subject}: bad extension: {e}"))
        };
        if !is_ca(&cert).map_err(bad_extension)? {
            return Err(AnchorError::NotCa {
                subject,
                reason: "basicConstraints does not say CA:TRUE",
            });
        }
        if let Some(usage) = cert.key_usage().map_err(bad_extension)?
            && !usage.value.key_cert_sign()
        {
            return Err(AnchorError::NotCa {
                subject,
                reason: "keyUsage does not allow keyCertSign",
            });
        }
        let (not_before, not_after) = validity(&cert);
        let now_secs = unix_secs(now);
        if now_secs > not_after {
            return Err(AnchorError::Expired {
                subject,
                not_after: rfc3339(not_after),
            });
        }
        if now_secs < not_before {
            return Err(AnchorError::NotYetValid {
                subject,
                not_before: rfc3339(not_before),
            });
        }
        let public_key = cert.public_key().subject_public_key.data.to_vec();
        if key.der_bytes() != public_key.as_slice() {
            return Err(AnchorError::KeyMismatch { subject });
        }
        let verify = verification_algorithm(&key).ok_or(AnchorError::UnsupportedKey)?;
        let unsupported = |reason: String| AnchorError::UnsupportedSubject {
            subject: subject.clone(),
            reason,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(cert.subject()).map_err(unsupported)?;
        let key_id = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let has_key_id = key_id.is_some();
        if let Some(id) = key_id {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id);
        }
        let key_pem = key.serialize_pem();
        let issuer = Issuer::new(params, key);
        // rcgen writes the issuer name from `params`; chains only verify if
        // that is byte for byte the anchor's subject, so prove it once here.
        let probe = CertificateParams::default()
            .signed_by(issuer.key(), &issuer)
            .map_err(|e| unsupported(e.to_string()))?;
        let probe = parse_cert(probe.der()).map_err(unsupported)?;
        if probe.issuer().as_raw() != cert.subject().as_raw() {
            return Err(unsupported("its encoding is not reproduced exactly".into()));
        }
        Ok(Self {
            inner: Arc::new(AnchorInner {
                verify,
                public_key,
                has_key_id,
                cert_pem: pem_encode("CERTIFICATE", &der),
                key_pem,
                subject_der: cert.subject().as_raw().to_vec(),
                not_before: system_time(not_before),
                not_after: system_time(not_after),
                subject,
                issuer,
                der,
            }),
        })
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.inner.cert_pem
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.inner.key_pem
    }

    /// The certificate's subject, e.g. `CN=weft root 1700000000`.
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    pub fn not_before(&self) -> SystemTime {
        self.inner.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.inner.not_after
    }

    /// Whether this anchor's key signed `cert`.
    fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        cert.issuer().as_raw() == self.inner.subject_der.as_slice()
            && UnparsedPublicKey::new(self.inner.verify, &self.inner.public_key)
                .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
                .is_ok()
    }
}

impl fmt::Debug for TrustAnchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustAnchor")
            .field("subject", &self.inner.subject)
            .field("not_after", &rfc3339(unix_secs(self.inner.not_after)))
            .finish_non_exhaustive()
    }
}

/// The anchor that signs, and the trust bundle every identity carries.
#[derive(Clone)]
pub struct Authority {
    signer: TrustAnchor,
    /// DER roots, signer first, no duplicates.
    roots: Vec<Vec<u8>>,
    bundle_pem: String,
}

impl Authority {
    /// An authority whose bundle is the signer's certificate alone.
    pub fn new(signer: TrustAnchor) -> Self {
        let roots = vec![signer.inner.der.clone()];
        let bundle_pem = signer.cert_pem().to_owned();
        Self {
            signer,
            roots,
            bundle_pem,
        }
    }

    /// Adds the CA certificates in `pem` (none is fine) to the bundle, after
    /// those already there and in the order given, skipping duplicates.
    pub fn with_extra_roots(mut self, pem: impl AsRef<[u8]>) -> Result<Self, BundleError> {
        let pem = pem.as_ref();
        if pem.iter().all(u8::is_ascii_whitespace) {
            return Ok(self);
        }
        for (i, der) in pem_certs(pem)
            .map_err(BundleError::Pem)?
            .into_iter()
            .enumerate()
        {
            let cert = parse_cert(&der).map_err(BundleError::Pem)?;
            if !is_ca(&cert).unwrap_or(false) {
                return Err(BundleError::NotCa {
                    index: i + 1,
                    subject: cert.subject().to_string(),
                });
            }
            if !self.roots.contains(&der) {
                self.bundle_pem.push_str(&pem_encode("CERTIFICATE", &der));
                self.roots.push(der);
            }
        }
        Ok(self)
    }

    pub fn signer(&self) -> &TrustAnchor {
        &self.signer
    }

    /// The trust bundle, PEM: the value of every identity's `ca.crt`.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// A fresh ECDSA P-256 key and a certificate for
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`, valid
    /// from `now - CLOCK_SKEW` to `now + lifetime`, cut short to the anchor's
    /// own expiry (webpki does not check a root's validity, so nothing else
    /// would stop a leaf from outliving its anchor).
    pub fn issue(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedIdentity, IssueError> {
        let invalid = |reason| IssueError::Identity {
            id: format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"),
            reason,
        };
        let id = SpiffeId::workload(trust_domain, namespace, service_account).map_err(invalid)?;
        id.workload_parts().map_err(invalid)?;
        let what = id.to_string();
        let sign = |e: rcgen::Error| IssueError::Sign {
            what: what.clone(),
            reason: e.to_string(),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(sign)?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = self.sign_leaf(params, &what, now, lifetime)?;
        Ok(IssuedIdentity {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            bundle_pem: self.bundle_pem.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            id,
        })
    }

    /// A fresh ECDSA P-256 key and a TLS serving certificate for
    /// `dns_names` (subjectAltName DNS entries, in order; the first is also
    /// the common name when it fits one), for TLS servers only (extended key
    /// usage serverAuth), with the same validity rules as [`Self::issue`]:
    /// from `now - CLOCK_SKEW` to `now + lifetime`, cut short to the
    /// anchor's expiry. The admission webhook serves with it; the API
    /// server checks it against the trust bundle (the webhook's `caBundle`).
    pub fn issue_server(
        &self,
        dns_names: &[String],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedServer, IssueError> {
        if dns_names.is_empty() {
            return Err(IssueError::NoDnsNames);
        }
        if let Some(bad) = dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(IssueError::DnsName(bad.clone()));
        }
        let what = dns_names.join(", ");
        let sign = |e: rcgen::Error| IssueError::Sign {
            what: what.clone(),
            reason: e.to_string(),
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = dns_names.first().filter(|n| n.len() <= MAX_COMMON_NAME) {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.subject_alt_names = dns_names
            .iter()
            .map(|n| Ok(SanType::DnsName(n.as_str().try_into()?)))
            .collect::<Result<_, rcgen::Error>>()
            .map_err(sign)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = self.sign_leaf(params, &what, now, lifetime)?;
        Ok(IssuedServer {
            dns_names: dns_names.to_vec(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            bundle_pem: self.bundle_pem.clone(),
            signer_pem: self.signer.cert_pem().to_owned(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    /// Signs a leaf described by `params` (names and extended key usages)
    /// with a fresh P-256 key: not a CA, digitalSignature only, a random
    /// serial, the anchor's key identifier when it has one, and the validity
    /// of `now` and `lifetime` cut to the anchor's.
    fn sign_leaf(
        &self,
        mut params: CertificateParams,
        what: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<SignedLeaf, IssueError> {
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        if lifetime == 0 {
            return Err(IssueError::ZeroLifetime);
        }
        let now_secs = unix_secs(now);
        let anchor_end = unix_secs(self.signer.not_after());
        if now_secs > anchor_end {
            return Err(IssueError::AnchorExpired {
                subject: self.signer.subject().to_owned(),
                not_after: rfc3339(anchor_end),
            });
        }
        let (not_before, not_after) = (
            now_secs - skew_secs(),
            now_secs.saturating_add(lifetime).min(anchor_end),
        );
        let sign = |reason: String| IssueError::Sign {
            what: what.to_owned(),
            reason,
        };
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = self.signer.inner.has_key_id;
        params.serial_number = Some(random_serial().map_err(sign)?);
        set_validity(&mut params, not_before, not_after)
            .ok_or_else(|| IssueError::TimeOutOfRange(what.to_owned()))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| sign(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.signer.inner.issuer)
            .map_err(|e| sign(e.to_string()))?;
        Ok(SignedLeaf {
            cert_pem: pem_encode("CERTIFICATE", cert.der()),
            key_pem: key.serialize_pem(),
            not_before: system_time(not_before),
            not_after: system_time(not_after),
        })
    }
}

/// A leaf as `sign_leaf` returns it.
struct SignedLeaf {
    cert_pem: String,
    key_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The longest common name X.509 allows (`ub-common-name`).
const MAX_COMMON_NAME: usize = 64;

/// Whether `name` is a DNS name (RFC 1123: dot-separated labels of
/// lowercase letters, digits and `-`, at most 253 characters) — what a
/// Kubernetes Service's DNS names are. No wildcards, no trailing dot.
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(weft_api::validate::is_dns_label)
}

/// A TLS serving certificate, as the webhook server loads it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedServer {
    pub dns_names: Vec<String>,
    /// The leaf alone: the anchor is the root, so there is no chain.
    pub cert_pem: String,
    /// PKCS#8.
    pub key_pem: String,
    /// The trust bundle at issuance: what clients must trust.
    pub bundle_pem: String,
    /// The certificate of the anchor that signed it.
    pub signer_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl fmt::Debug for IssuedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedServer")
            .field("dns_names", &self.dns_names)
            .field("not_before", &rfc3339(unix_secs(self.not_before)))
            .field("not_after", &rfc3339(unix_secs(self.not_after)))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("signer", &self.signer)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// A workload identity as written to its Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedIdentity {
    pub id: SpiffeId,
    /// The leaf alone: the anchor is the root, so there is no chain.
    pub cert_pem: String,
    /// PKCS#8.
    pub key_pem: String,
    pub bundle_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedIdentity {
    /// The Secret's data: `tls.crt`, `tls.key` and `ca.crt`.
    pub fn secret_data(&self) -> [(&'static str, &str); 3] {
        [
            (CERT_FILE, &self.cert_pem),
            (KEY_FILE, &self.key_pem),
            (TRUST_BUNDLE_FILE, &self.bundle_pem),
        ]
    }

    /// This identity as `renewal_due` reads it back.
    pub fn as_existing(&self) -> ExistingIdentity<'_> {
        ExistingIdentity {
            cert_pem: Some(self.cert_pem.as_bytes()),
            key_pem: Some(self.key_pem.as_bytes()),
            bundle_pem: Some(self.bundle_pem.as_bytes()),
        }
    }
}

impl fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedIdentity")
            .field("id", &self.id)
            .field("not_before", &rfc3339(unix_secs(self.not_before)))
            .field("not_after", &rfc3339(unix_secs(self.not_after)))
            .finish_non_exhaustive()
    }
}

/// The contents of an identity Secret as stored; `None` (or empty) is a
/// missing entry, and `ExistingIdentity::default()` a missing Secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExistingIdentity<'a> {
    pub cert_pem: Option<&'a [u8]>,
    pub key_pem: Option<&'a [u8]>,
    pub bundle_pem: Option<&'a [u8]>,
}

impl<'a> ExistingIdentity<'a> {
    /// Reads the three entries through `get`, given each file name.
    pub fn from_entries(get: impl Fn(&str) -> Option<&'a [u8]>) -> Self {
        Self {
            cert_pem: get(CERT_FILE),
            key_pem: get(KEY_FILE),
            bundle_pem: get(TRUST_BUNDLE_FILE),
        }
    }
}

/// Why a stored identity must be re-issued. Every reason calls for the same
/// action, writing a fresh identity; it is kept for logs, events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewReason {
    /// No Secret, or no value under this file name.
    Missing(&'static str),
    Unparseable {
        file: &'static str,
        reason: String,
    },
    /// The certificate's subject alternative names are not exactly `want`.
    WrongIdentity {
        found: String,
        want: SpiffeId,
    },
    /// `tls.key` is not the certificate's key.
    KeyMismatch,
    Expired {
        not_after: SystemTime,
    },
    /// Issued by a clock that was ahead; peers reject it until `not_before`.
    NotYetValid {
        not_before: SystemTime,
    },
    /// Signed by another anchor: the one being rotated out, or a foreign one.
    NotSignedByCurrentAnchor,
    /// `ca.crt` is not the authority's bundle.
    BundleChanged,
    /// The renewal fraction of the certificate's life has passed.
    HalfLife {
        not_after: SystemTime,
    },
}

impl RenewReason {
    /// A fixed, low-cardinality label value.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing",
            Self::Unparseable { .. } => "unparseable",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::KeyMismatch => "key_mismatch",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::NotSignedByCurrentAnchor => "not_signed_by_current_anchor",
            Self::BundleChanged => "bundle_changed",
            Self::HalfLife { .. } => "half_life",
        }
    }
}

impl fmt::Display for RenewReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |t: &SystemTime| rfc3339(unix_secs(*t));
        match self {
            Self::Missing(file) => write!(f, "{file} is missing"),
            Self::Unparseable { file, reason } => write!(f, "{file} cannot be read: {reason}"),
            Self::WrongIdentity { found, want } => {
                write!(f, "{CERT_FILE} is for {found}, not {want}")
            }
            Self::KeyMismatch => write!(f, "{KEY_FILE} does not match the key of {CERT_FILE}"),
            Self::Expired { not_after } => write!(f, "{CERT_FILE} expired at {}", at(not_after)),
            Self::NotYetValid { not_before } => {
                write!(f, "{CERT_FILE} is not valid before {}", at(not_before))
            }
            Self::NotSignedByCurrentAnchor => {
                write!(f, "{CERT_FILE} is not signed by the current trust anchor")
            }
            Self::BundleChanged => write!(f, "{TRUST_BUNDLE_FILE} is not the current trust bundle"),
            Self::HalfLife { not_after } => {
                write!(
                    f,
                    "{CERT_FILE} is due for renewal; it expires at {}",
                    at(not_after)
                )
            }
        }
    }
}

/// Whether `existing` must be re-issued as `expected` by `authority` at
/// `now`, renewing once `renew_at_fraction` (clamped to 0..=1; not finite
/// means the default) of the certificate's life has passed.
///
/// When several reasons hold, the first in this order is given: reasons the
/// proxy would reject the identity for (missing, unparseable, wrong identity,
/// key mismatch, expired, not yet valid) before reasons it is merely stale
/// (other anchor, other bundle, half life). So an expired certificate reports
/// `Expired`, not `HalfLife`.
pub fn renewal_due(
    existing: &ExistingIdentity<'_>,
    expected: &SpiffeId,
    authority: &Authority,
    now: SystemTime,
    renew_at_fraction: f64,
) -> Option<RenewReason> {
    fn present(entry: Option<&[u8]>) -> Option<&[u8]> {
        entry.filter(|data| !data.is_empty())
    }
    let Some(cert_pem) = present(existing.cert_pem) else {
        return Some(RenewReason::Missing(CERT_FILE));
    };
    let Some(key_pem) = present(existing.key_pem) else {
        return Some(RenewReason::Missing(KEY_FILE));
    };
    let Some(bundle_pem) = present(existing.bundle_pem) else {
        return Some(RenewReason::Missing(TRUST_BUNDLE_FILE));
    };
    let unparseable = |file| move |reason| RenewReason::Unparseable { file, reason };
    let leaf = match pem_certs(cert_pem).map_err(unparseable(CERT_FILE)) {
        Ok(certs) => certs.into_iter().next().unwrap_or_default(),
        Err(reason) => return Some(reason),
    };
    let leaf = match parse_cert(&leaf).map_err(unparseable(CERT_FILE)) {
        Ok(leaf) => leaf,
        Err(reason) => return Some(reason),
    };
    let key = match pem_key(key_pem).map_err(unparseable(KEY_FILE)) {
        Ok(key) => key,
        Err(reason) => return Some(reason),
    };
    let bundle = match pem_certs(bundle_pem).map_err(unparseable(TRUST_BUNDLE_FILE)) {
        Ok(bundle) => bundle,
        Err(reason) => return Some(reason),
    };
    match sole_uri_san(&leaf) {
        Ok(uri) if uri == expected.as_str() => {}
        Ok(uri) => {
            return Some(RenewReason::WrongIdentity {
                found: uri.to_owned(),
                want: expected.clone(),
            });
        }
        Err(found) => {
            return Some(RenewReason::WrongIdentity {
                found,
                want: expected.clone(),
            });
        }
    }
    if key.der_bytes() != leaf.public_key().subject_public_key.data.as_ref() {
        return Some(RenewReason::KeyMismatch);
    }
    let (not_before, not_after) = validity(&leaf);
    if unix_secs(now) > not_after {
        return Some(RenewReason::Expired {
            not_after: system_time(not_after),
        });
    }
    if unix_secs(now) < not_before {
        return Some(RenewReason::NotYetValid {
            not_before: system_time(not_before),
        });
    }
    if !authority.signer.signed(&leaf) {
        return Some(RenewReason::NotSignedByCurrentAnchor);
    }
    if bundle != authority.roots {
        return Some(RenewReason::BundleChanged);
    }
    let fraction = if renew_at_fraction.is_finite() {
        renew_at_fraction.clamp(0.0, 1.0)
    } else {
        DEFAULT_RENEW_AT_FRACTION
    };
    let renew_at = not_before as f64 + fraction * (not_after - not_before) as f64;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    };
    (now >= renew_at).then(|| RenewReason::HalfLife {
        not_after: system_time(not_after),
    })
}

/// The `notAfter` of the first certificate in `cert_pem`.
pub fn cert_not_after(cert_pem: impl AsRef<[u8]>) -> Result<SystemTime, CertError> {
    let certs = pem_certs(cert_pem.as_ref()).map_err(CertError)?;
    let leaf = certs.first().map(Vec::as_slice).unwrap_or_default();
    let cert = parse_cert(leaf).map_err(CertError)?;
    Ok(system_time(validity(&cert).1))
}

/// Whether the first certificate in `cert_pem` expires within `window` of
/// `now` (or has already expired).
pub fn expires_within(
    cert_pem: impl AsRef<[u8]>,
    now: SystemTime,
    window: Duration,
) -> Result<bool, CertError> {
    let not_after = cert_not_after(cert_pem)?;
    Ok(now.checked_add(window).is_none_or(|end| not_after <= end))
}

/// The DER certificates in `pem`, at least one, each a valid X.509
/// certificate.
fn pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    for (i, block) in Pem::iter_from_buffer(pem).enumerate() {
        let n = i + 1;
        let block = block.map_err(|e| format!("PEM block #{n} is malformed: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "PEM block #{n} is a {:?}, not a CERTIFICATE",
                block.label
            ));
        }
        parse_cert(&block.contents).map_err(|e| format!("certificate #{n} {e}"))?;
        certs.push(block.contents);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("has trailing bytes after the certificate".into()),
        Err(e) => Err(format!("is not a valid X.509 certificate: {e}")),
    }
}

/// The one PKCS#8 private key in `pem`.
fn pem_key(pem: &[u8]) -> Result<KeyPair, String> {
    let mut blocks = Pem::iter_from_buffer(pem);
    let block = match blocks.next() {
        None => return Err("holds no PEM private key".into()),
        Some(Err(e)) => return Err(format!("PEM is malformed: {e}")),
        Some(Ok(block)) => block,
    };
    match block.label.as_str() {
        "PRIVATE KEY" => {}
        label @ ("EC PRIVATE KEY" | "RSA PRIVATE KEY") => {
            return Err(format!(
                "is a {label:?}; convert it to PKCS#8 (\"PRIVATE KEY\"), e.g. with \
                 `openssl pkcs8 -topk8 -nocrypt`"
            ));
        }
        "ENCRYPTED PRIVATE KEY" => return Err("is encrypted; it must not be".into()),
        label => return Err(format!("is a {label:?}, not a PKCS#8 \"PRIVATE KEY\"")),
    }
    if blocks.next().is_some() {
        return Err("holds more than one PEM block; expected one private key".into());
    }
    KeyPair::try_from(block.contents.as_slice())
        .map_err(|e| format!("is not a usable PKCS#8 private key: {e}"))
}

fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, x509_parser::error::X509Error> {
    Ok(cert.basic_constraints()?.is_some_and(|bc| bc.value.ca))
}

/// `(notBefore, notAfter)` in Unix seconds.
fn validity(cert: &X509Certificate<'_>) -> (i64, i64) {
    let validity = cert.validity();
    (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    )
}

/// The certificate's only subject alternative name, a URI; otherwise a
/// description of what it holds instead.
fn sole_uri_san<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, String> {
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => &san.value.general_names,
        Ok(None) => return Err("no subject alternative name".into()),
        Err(e) => return Err(format!("an unreadable subject alternative name: {e}")),
    };
    match names.as_slice() {
        [GeneralName::URI(uri)] => Ok(*uri),
        [other] => Err(format!("subject alternative name {other}")),
        names => Err(format!(
            "{} subject alternative names; expected exactly one URI",
            names.len()
        )),
    }
}

/// How to check signatures made by `key`, for the algorithms rustls accepts.
fn verification_algorithm(key: &KeyPair) -> Option<&'static dyn VerificationAlgorithm> {
    let algorithms: [(_, &'static dyn VerificationAlgorithm); 4] = [
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &signature::ECDSA_P256_SHA256_ASN1,
        ),
        (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &signature::ECDSA_P384_SHA384_ASN1,
        ),
        (&rcgen::PKCS_ED25519, &signature::ED25519),
        (
            &rcgen::PKCS_RSA_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
    ];
    algorithms
        .into_iter()
        .find(|(alg, _)| *alg == key.algorithm())
        .map(|(_, verify)| verify)
}

/// `name` as rcgen writes it, attribute by attribute with the same string
/// types. rcgen has one attribute per RDN and each type once, so names
/// outside that are refused rather than silently changed.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attributes = rdn.iter();
        let (Some(attribute), None) = (attributes.next(), attributes.next()) else {
            return Err("it has a multi-valued RDN".into());
        };
        let oid = attribute.attr_type();
        let ty = DnType::from_oid(
            &oid.iter()
                .ok_or_else(|| format!("attribute type {oid} is out of range"))?
                .collect::<Vec<_>>(),
        );
        if dn.get(&ty).is_some() {
            return Err(format!("it has attribute {oid} more than once"));
        }
        let value = attribute.attr_value();
        let data = value.data;
        let text = || {
            std::str::from_utf8(data)
                .map(str::to_owned)
                .map_err(|_| format!("attribute {oid} is not valid text"))
        };
        let rcgen_err = |e: rcgen::Error| format!("attribute {oid}: {e}");
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?),
            Tag::PrintableString => {
                DnValue::PrintableString(text()?.try_into().map_err(rcgen_err)?)
            }
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(rcgen_err)?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into().map_err(rcgen_err)?),
            Tag::BmpString => {
                DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(rcgen_err)?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                UniversalString::from_utf32be(data.to_vec()).map_err(rcgen_err)?,
            ),
            tag => return Err(format!("attribute {oid} has unsupported type {tag}")),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    // Positive and always 16 bytes long: 126 random bits.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&serial))
}

/// Sets the validity, or `None` when a bound is outside 1970..=9999.
fn set_validity(params: &mut CertificateParams, not_before: i64, not_after: i64) -> Option<()> {
    // rcgen's date-time type is `time::OffsetDateTime`, which this crate
    // does not name (`time` is not a dependency): reach it from the epoch.
    let at = |secs: i64| {
        let secs = u64::try_from(secs).ok().filter(|_| secs <= MAX_UNIX_SECS)?;
        Some(rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs))
    };
    params.not_before = at(not_before)?;
    params.not_after = at(not_after)?;
    Some(())
}

fn rfc3339(secs: i64) -> String {
    let secs = secs.clamp(0, MAX_UNIX_SECS).unsigned_abs();
    let t = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Whole Unix seconds, rounded down.
fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            -secs - i64::from(before.subsec_nanos() > 0)
        }
    }
}

fn system_time(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    t.unwrap_or(UNIX_EPOCH)
}

fn skew_secs() -> i64 {
    i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(0)
}

/// `der` as PEM with 64-column base64 lines, the form every tool reads.
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so 64-byte chunks are whole characters.
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_can_be_shared_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Authority>();
        send_sync::<TrustAnchor>();
    }

    #[test]
    fn pem_encode_round_trips_every_padding() {
        for len in 0..200 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_encode("THING", &der);
            let block = Pem::iter_from_buffer(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(block.label, "THING");
            assert_eq!(block.contents, der, "length {len}");
            assert!(pem.lines().all(|line| line.len() <= 64), "{pem}");
        }
    }

    #[test]
    fn rfc3339_formats_and_clamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn unix_secs_rounds_down_and_round_trips() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_999);
        assert_eq!(unix_secs(t), 1_700_000_000);
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_millis(1)), -1);
        assert_eq!(unix_secs(system_time(-42)), -42);
        assert_eq!(unix_secs(system_time(1_700_000_000)), 1_700_000_000);
    }

    #[test]
    fn validity_refuses_what_a_certificate_cannot_hold() {
        let mut params = CertificateParams::default();
        assert_eq!(set_validity(&mut params, -1, 0), None);
        assert_eq!(set_validity(&mut params, 0, MAX_UNIX_SECS + 1), None);
        assert_eq!(set_validity(&mut params, 0, MAX_UNIX_SECS), Some(()));
    }

    #[test]
    fn serials_are_positive_full_length_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert_eq!(a[0] & 0xc0, 0x40);
        assert_ne!(a, b);
    }

    #[test]
    fn key_formats_other_than_pkcs8_are_named() {
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let err = pem_key(sec1.as_bytes()).unwrap_err();
        assert!(
            err.contains("\"EC PRIVATE KEY\"") && err.contains("PKCS#8"),
            "{err}"
        );
        let cert = TrustAnchor::generate(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            DEFAULT_ANCHOR_VALIDITY,
        )
        .unwrap();
        let err = pem_key(cert.cert_pem().as_bytes()).unwrap_err();
        assert!(err.contains("\"CERTIFICATE\""), "{err}");
        assert_eq!(pem_key(b"").unwrap_err(), "holds no PEM private key");
    }

    #[test]
    fn renewal_reasons_have_distinct_labels() {
        let t = UNIX_EPOCH;
        let want = SpiffeId::workload("td", "ns", "sa").unwrap();
        let reasons = [
            RenewReason::Missing(CERT_FILE),
            RenewReason::Unparseable {
                file: KEY_FILE,
                reason: "x".into(),
            },
            RenewReason::WrongIdentity {
                found: "y".into(),
                want,
            },
            RenewReason::KeyMismatch,
            RenewReason::Expired { not_after: t },
            RenewReason::NotYetValid { not_before: t },
            RenewReason::NotSignedByCurrentAnchor,
            RenewReason::BundleChanged,
            RenewReason::HalfLife { not_after: t },
        ];
        let mut labels: Vec<_> = reasons.iter().map(RenewReason::metric_label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), reasons.len());
        assert_eq!(
            RenewReason::Expired { not_after: t }.to_string(),
            "tls.crt expired at 1970-01-01T00:00:00Z"
        );
    }
}
