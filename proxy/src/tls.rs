//! rustls configuration for mesh TLS: TLS 1.3 only, aws-lc-rs, certificates
//! verified against the mesh trust bundle, and SPIFFE identities read from
//! the URI SAN.
//!
//! The client side checks the chain during the handshake and the SPIFFE ID
//! right after it (`peer_identity` compared with the routing table's endpoint
//! identity), because webpki only matches DNS names and IP addresses; the
//! server side requires and verifies a client certificate during the
//! handshake and authorizes its identity afterwards.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use weft_api::SpiffeId;
use x509_parser::extensions::GeneralName;

/// What a mesh TLS connection carries, told by its ALPN protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshProtocol {
    /// Bytes, relayed as they are.
    Opaque,
    Http1,
    Http2,
}

impl MeshProtocol {
    pub const ALL: [Self; 3] = [Self::Opaque, Self::Http1, Self::Http2];

    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::Opaque => weft_api::names::MESH_ALPN,
            Self::Http1 => weft_api::names::MESH_ALPN_HTTP1,
            Self::Http2 => weft_api::names::MESH_ALPN_HTTP2,
        }
    }

    /// The protocol a finished handshake agreed on.
    pub fn negotiated(alpn: Option<&[u8]>) -> Option<Self> {
        Self::ALL.into_iter().find(|p| Some(p.alpn()) == alpn)
    }
}

/// The one crypto provider of the whole proxy.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why a certificate carries no usable SPIFFE identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityNameError {
    #[error("is not a valid X.509 certificate: {0}")]
    Parse(String),
    #[error("has no URI SAN")]
    NoUri,
    #[error("has {0} URI SANs; a SPIFFE certificate has exactly one")]
    ManyUris(usize),
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {reason}")]
    NotSpiffe {
        uri: String,
        reason: weft_api::SpiffeIdError,
    },
}

/// The SPIFFE ID in `cert`'s URI SAN.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityNameError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| IdentityNameError::Parse(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityNameError::Parse(e.to_string()))?
        .ok_or(IdentityNameError::NoUri)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(IdentityNameError::NoUri)?;
    let extra = uris.count();
    if extra > 0 {
        return Err(IdentityNameError::ManyUris(extra + 1));
    }
    SpiffeId::parse(uri).map_err(|reason| IdentityNameError::NotSpiffe {
        uri: uri.to_owned(),
        reason,
    })
}

/// The verified identity of the peer of a finished handshake.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Option<SpiffeId> {
    spiffe_id_of(certs?.first()?).ok()
}

/// Checks a server's chain against the trust bundle, ignoring the server
/// name: mesh certificates carry a SPIFFE URI, which the caller compares
/// with the expected identity once the handshake is done.
#[derive(Debug)]
struct ChainOnlyServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnlyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client config: presents `key`, trusts `roots`, TLS 1.3 only.
pub fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    key: Arc<CertifiedKey>,
    protocol: MeshProtocol,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = ChainOnlyServerVerifier {
        roots,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.enable_sni = false;
    config.alpn_protocols = vec![protocol.alpn().to_vec()];
    Ok(config)
}

/// Server config: presents `key`, requires a client certificate signed by
/// one of `roots`, TLS 1.3 only.
pub fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    key: Arc<CertifiedKey>,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(key)));
    config.alpn_protocols = MeshProtocol::ALL.map(|p| p.alpn().to_vec()).to_vec();
    Ok(config)
}
