//! A mesh certificate authority for tests, issuing SPIFFE workload
//! certificates the way the operator does (ECDSA P-256, URI SAN, server and
//! client auth), plus the broken ones tests need (expired, foreign CA).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, date_time_ymd,
};
use weft_api::SpiffeId;

pub const TRUST_DOMAIN: &str = "cluster.local";

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn spiffe(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::workload(TRUST_DOMAIN, ns, sa).unwrap()
}

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A workload certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// The root certificate, PEM: the trust bundle.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `ns/sa`, valid from an hour ago for a day.
    pub fn leaf(&self, ns: &str, sa: &str) -> Leaf {
        let now = unix_now();
        self.leaf_with(spiffe(ns, sa).as_str(), now - 3600, now + 24 * 3600)
    }

    /// A leaf for `ns/sa` that expired in 2021.
    pub fn expired_leaf(&self, ns: &str, sa: &str) -> Leaf {
        self.leaf_with(
            spiffe(ns, sa).as_str(),
            date_time_ymd(2020, 1, 1).unix_timestamp(),
            date_time_ymd(2021, 1, 1).unix_timestamp(),
        )
    }

    /// A leaf with `uri` as its only SAN, valid between the Unix times given.
    pub fn leaf_with(&self, uri: &str, not_before: i64, not_after: i64) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(secs).unwrap()
}
