//! The mesh CA end to end: anchors generated and loaded, leaves issued and
//! verified with rustls exactly as the proxy verifies them, an anchor rotated
//! through its three bundle phases, and the renewal decision on a clock the
//! test controls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, RootCertStore};
use weft_api::SpiffeId;
use weft_operator::ca::{
    AnchorError, Authority, BundleError, CLOCK_SKEW, DEFAULT_ANCHOR_VALIDITY,
    DEFAULT_LEAF_LIFETIME, DEFAULT_RENEW_AT_FRACTION, ExistingIdentity, IssueError, IssuedIdentity,
    RenewReason, TrustAnchor, cert_not_after, expires_within, renewal_due,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

const TD: &str = "cluster.local";
const T0: u64 = 1_700_000_000;
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0)
}

fn anchor(now: SystemTime) -> TrustAnchor {
    TrustAnchor::generate(now, DEFAULT_ANCHOR_VALIDITY).unwrap()
}

/// `ns/shop/sa/cart`'s identity issued by `authority` at `now` for 24 h.
fn cart_leaf(authority: &Authority, now: SystemTime) -> IssuedIdentity {
    authority
        .issue(TD, "shop", "cart", now, DEFAULT_LEAF_LIFETIME)
        .unwrap()
}

fn cart() -> SpiffeId {
    SpiffeId::workload(TD, "shop", "cart").unwrap()
}

fn due(
    identity: &ExistingIdentity<'_>,
    authority: &Authority,
    now: SystemTime,
) -> Option<RenewReason> {
    renewal_due(identity, &cart(), authority, now, DEFAULT_RENEW_AT_FRACTION)
}

fn with_cert<R>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    f(&block.parse_x509().unwrap())
}

fn unix(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn count_certs(pem: &str) -> usize {
    CertificateDer::pem_slice_iter(pem.as_bytes()).count()
}

/// The proxy's chain check: the leaf against the roots of `bundle_pem`.
fn verify(cert_pem: &str, bundle_pem: &str, now: SystemTime) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(root.unwrap()).unwrap();
    }
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let leaf = ParsedCertificate::try_from(&leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        &[],
        UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap()),
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all,
    )
}

fn is_unknown_issuer(result: Result<(), rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    )
}

// --- trust anchors ---

#[test]
fn generated_anchor_is_a_root_ca_named_for_its_creation_time() {
    let a = anchor(t0());
    assert_eq!(a.subject(), format!("CN=weft root {T0}"));
    assert_eq!(a.not_before(), t0() - CLOCK_SKEW);
    assert_eq!(a.not_after(), t0() + DEFAULT_ANCHOR_VALIDITY);
    with_cert(a.cert_pem(), |cert| {
        assert_eq!(cert.subject(), cert.issuer());
        let constraints = cert.basic_constraints().unwrap().unwrap().value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert_eq!(usage.flags.count_ones(), 2);
        assert_eq!(unix(a.not_after()), cert.validity().not_after.timestamp());
    });
    assert!(a.key_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let later = anchor(t0() + HOUR);
    assert_ne!(later.subject(), a.subject());
    let twin = anchor(t0());
    assert_ne!(twin.key_pem(), a.key_pem());
}

#[test]
fn generated_anchor_validity_is_configurable() {
    let a = TrustAnchor::generate(t0(), 400 * 24 * HOUR).unwrap();
    assert_eq!(a.not_after(), t0() + 400 * 24 * HOUR);
    assert_eq!(
        TrustAnchor::generate(t0(), Duration::ZERO).unwrap_err(),
        AnchorError::Validity
    );
}

#[test]
fn anchor_round_trips_through_pem() {
    let a = anchor(t0());
    let loaded = TrustAnchor::from_pem(a.cert_pem(), a.key_pem(), t0() + HOUR).unwrap();
    assert_eq!(loaded.cert_pem(), a.cert_pem());
    assert_eq!(loaded.key_pem(), a.key_pem());
    assert_eq!(loaded.subject(), a.subject());
    assert_eq!(loaded.not_before(), a.not_before());
    assert_eq!(loaded.not_after(), a.not_after());
    // The loaded anchor is the same CA: its leaves verify against the
    // original's bundle, and the original's leaves count as its own.
    let before = cart_leaf(&Authority::new(a.clone()), t0());
    let after = cart_leaf(&Authority::new(loaded.clone()), t0() + HOUR);
    verify(&after.cert_pem, Authority::new(a).bundle_pem(), t0() + HOUR).unwrap();
    assert_eq!(
        due(&before.as_existing(), &Authority::new(loaded), t0() + HOUR),
        None
    );
}

#[test]
fn anchor_with_a_key_that_is_not_its_own_is_refused() {
    let (a, b) = (anchor(t0()), anchor(t0()));
    let err = TrustAnchor::from_pem(a.cert_pem(), b.key_pem(), t0()).unwrap_err();
    assert_eq!(
        err,
        AnchorError::KeyMismatch {
            subject: a.subject().to_owned()
        }
    );
    assert!(err.to_string().starts_with("trust anchor key "), "{err}");
}

#[test]
fn leaf_certificate_is_refused_as_anchor() {
    let leaf = cart_leaf(&Authority::new(anchor(t0())), t0());
    let err = TrustAnchor::from_pem(&leaf.cert_pem, &leaf.key_pem, t0()).unwrap_err();
    assert!(matches!(err, AnchorError::NotCa { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("trust anchor certificate ")
            && err.to_string().contains("is not a CA: basicConstraints"),
        "{err}"
    );
}

#[test]
fn garbage_anchor_input_is_refused_naming_the_input() {
    let a = anchor(t0());
    let cases = [
        (
            "not a certificate".to_owned(),
            a.key_pem().to_owned(),
            "trust anchor certificate: holds no PEM certificate",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            a.key_pem().to_owned(),
            "trust anchor certificate: certificate #1 is not a valid X.509 certificate",
        ),
        (
            format!("{}{}", a.cert_pem(), a.cert_pem()),
            a.key_pem().to_owned(),
            "trust anchor certificate: holds 2 certificates; expected exactly one, the root",
        ),
        (
            a.cert_pem().to_owned(),
            "not a key".to_owned(),
            "trust anchor key: holds no PEM private key",
        ),
        (
            a.cert_pem().to_owned(),
            a.cert_pem().to_owned(),
            "trust anchor key: is a \"CERTIFICATE\", not a PKCS#8 \"PRIVATE KEY\"",
        ),
        (
            a.cert_pem().to_owned(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
            "trust anchor key: is not a usable PKCS#8 private key",
        ),
    ];
    for (cert, key, want) in cases {
        let err = TrustAnchor::from_pem(&cert, &key, t0()).unwrap_err();
        assert!(err.to_string().starts_with(want), "got {err}, want {want}");
    }
}

#[test]
fn anchor_outside_its_validity_is_refused() {
    let a = TrustAnchor::generate(t0(), HOUR).unwrap();
    let err = TrustAnchor::from_pem(
        a.cert_pem(),
        a.key_pem(),
        t0() + HOUR + Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(
        err,
        AnchorError::Expired {
            subject: a.subject().to_owned(),
            not_after: "2023-11-14T23:13:20Z".to_owned()
        }
    );
    let err = TrustAnchor::from_pem(a.cert_pem(), a.key_pem(), t0() - 2 * MINUTE).unwrap_err();
    assert!(matches!(err, AnchorError::NotYetValid { .. }), "{err:?}");
    TrustAnchor::from_pem(a.cert_pem(), a.key_pem(), t0() + HOUR).unwrap();
}

/// A CA made elsewhere, with string types rcgen does not pick by default.
fn foreign_root(key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CountryName,
        DnValue::PrintableString("DE".try_into().unwrap()),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Corp");
    params.distinguished_name.push(
        DnType::CommonName,
        DnValue::PrintableString("Example Root".try_into().unwrap()),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.self_signed(key).unwrap().pem()
}

#[test]
fn anchors_given_at_install_issue_verifiable_leaves_for_every_supported_key() {
    let keys = [
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap(),
    ];
    for key in keys {
        let alg = key.algorithm();
        let root = foreign_root(&key);
        let anchor = TrustAnchor::from_pem(&root, key.serialize_pem(), t0()).unwrap();
        assert_eq!(anchor.subject(), "C=DE, O=Example Corp, CN=Example Root");
        let authority = Authority::new(anchor);
        let leaf = cart_leaf(&authority, t0());
        let issuer_matches = with_cert(&root, |root| {
            with_cert(&leaf.cert_pem, |leaf| {
                leaf.issuer().as_raw() == root.subject().as_raw()
            })
        });
        assert!(issuer_matches, "{alg:?}");
        verify(&leaf.cert_pem, &root, t0()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(due(&leaf.as_existing(), &authority, t0()), None, "{alg:?}");
    }
}

// --- issuance ---

#[test]
fn issued_certificate_names_exactly_the_spiffe_id_for_mesh_tls() {
    let leaf = cart_leaf(&Authority::new(anchor(t0())), t0());
    assert_eq!(leaf.id.as_str(), "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(count_certs(&leaf.cert_pem), 1);
    with_cert(&leaf.cert_pem, |cert| {
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [GeneralName::URI("spiffe://cluster.local/ns/shop/sa/cart")]
        );
        // The subject is empty, so RFC 5280 wants the SAN critical.
        assert!(san.critical);
        assert_eq!(cert.subject().iter().count(), 0);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.any && !eku.code_signing && !eku.email_protection && eku.other.is_empty());
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature());
        assert_eq!(usage.flags.count_ones(), 1);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    });
}

#[test]
fn issued_validity_runs_from_a_minute_before_now_for_the_lifetime() {
    let authority = Authority::new(anchor(t0()));
    // Sub-second parts of `now` are dropped: certificates count seconds.
    let now = t0() + Duration::from_millis(700);
    for lifetime in [DEFAULT_LEAF_LIFETIME, HOUR, Duration::from_secs(1)] {
        let leaf = authority.issue(TD, "shop", "cart", now, lifetime).unwrap();
        assert_eq!(leaf.not_before, t0() - MINUTE);
        assert_eq!(leaf.not_after, t0() + lifetime);
        with_cert(&leaf.cert_pem, |cert| {
            assert_eq!(cert.validity().not_before.timestamp(), unix(t0() - MINUTE));
            assert_eq!(cert.validity().not_after.timestamp(), unix(t0() + lifetime));
        });
    }
}

#[test]
fn issued_key_is_a_fresh_p256_pkcs8_key_matching_the_certificate() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let key = KeyPair::from_pem(&leaf.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    with_cert(&leaf.cert_pem, |cert| {
        assert_eq!(
            key.public_key_raw(),
            cert.public_key().subject_public_key.data.as_ref()
        );
    });
    let again = cart_leaf(&authority, t0());
    assert_ne!(again.key_pem, leaf.key_pem);
    let serial = |pem: &str| with_cert(pem, |cert| cert.raw_serial().to_vec());
    assert_ne!(serial(&again.cert_pem), serial(&leaf.cert_pem));
    assert_eq!(serial(&leaf.cert_pem).len(), 16);
}

#[test]
fn secret_data_is_keyed_by_the_identity_file_names() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    assert_eq!(leaf.bundle_pem, authority.bundle_pem());
    assert_eq!(
        leaf.secret_data(),
        [
            ("tls.crt", leaf.cert_pem.as_str()),
            ("tls.key", leaf.key_pem.as_str()),
            ("ca.crt", authority.bundle_pem()),
        ]
    );
    // Read back the way the runtime reads a Secret, it needs nothing.
    let data: BTreeMap<String, Vec<u8>> = leaf
        .secret_data()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
        .collect();
    let stored = ExistingIdentity::from_entries(|k| data.get(k).map(Vec::as_slice));
    assert_eq!(due(&stored, &authority, t0()), None);
    // The key stays out of logs.
    assert!(!format!("{leaf:?}").contains("PRIVATE"), "{leaf:?}");
    assert!(
        !format!("{authority:?}").contains("PRIVATE"),
        "{authority:?}"
    );
}

#[test]
fn issue_refuses_bad_identities_and_lifetimes() {
    let authority = Authority::new(anchor(t0()));
    let issue = |td, ns, sa, lifetime| authority.issue(td, ns, sa, t0(), lifetime);
    for (td, ns, sa) in [
        ("Cluster.local", "shop", "cart"),
        (TD, "", "cart"),
        (TD, "shop", "ca%rt"),
        (TD, "sh/op", "cart"),
    ] {
        let err = issue(td, ns, sa, DEFAULT_LEAF_LIFETIME).unwrap_err();
        assert!(
            matches!(err, IssueError::Identity { .. }),
            "{td} {ns} {sa}: {err:?}"
        );
    }
    assert_eq!(
        issue(TD, "shop", "cart", Duration::from_millis(999)).unwrap_err(),
        IssueError::ZeroLifetime
    );
}

#[test]
fn leaves_never_outlive_their_anchor() {
    let a = TrustAnchor::generate(t0(), 10 * HOUR).unwrap();
    let authority = Authority::new(a.clone());
    let leaf = cart_leaf(&authority, t0());
    assert_eq!(leaf.not_after, a.not_after());
    let err = authority
        .issue(
            TD,
            "shop",
            "cart",
            a.not_after() + Duration::from_secs(1),
            HOUR,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "trust anchor {} expired at 2023-11-15T08:13:20Z; it must be rotated",
            a.subject()
        )
    );
}

// --- chain verification, as the proxy does it ---

#[test]
fn leaf_verifies_against_its_bundle_only_while_valid() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    let bundle = authority.bundle_pem();
    verify(&leaf.cert_pem, bundle, t0()).unwrap();
    verify(&leaf.cert_pem, bundle, t0() - MINUTE).unwrap();
    verify(&leaf.cert_pem, bundle, leaf.not_after).unwrap();
    let expired = verify(
        &leaf.cert_pem,
        bundle,
        leaf.not_after + Duration::from_secs(1),
    );
    assert!(
        matches!(
            expired,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{expired:?}"
    );
    let early = verify(&leaf.cert_pem, bundle, t0() - 2 * MINUTE);
    assert!(
        matches!(
            early,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
            ))
        ),
        "{early:?}"
    );
}

#[test]
fn leaf_does_not_verify_against_another_authoritys_bundle() {
    let ours = Authority::new(anchor(t0()));
    let theirs = Authority::new(anchor(t0() + HOUR));
    let leaf = cart_leaf(&ours, t0() + HOUR);
    assert!(is_unknown_issuer(verify(
        &leaf.cert_pem,
        theirs.bundle_pem(),
        t0() + HOUR
    )));
    assert_eq!(
        due(&leaf.as_existing(), &theirs, t0() + HOUR),
        Some(RenewReason::NotSignedByCurrentAnchor)
    );
}

// --- rotation ---

#[test]
fn rotation_keeps_every_leaf_trusted_until_the_old_anchor_leaves_the_bundle() {
    // Every step happens within leaf1's day of life, an hour apart.
    let step = |n: u32| t0() + n * HOUR;
    let a = anchor(t0());
    let leaf1 = cart_leaf(&Authority::new(a.clone()), t0());

    // Step 1: A still signs, B joins the bundle first.
    let b = anchor(step(1));
    let trust_b = Authority::new(a.clone())
        .with_extra_roots(b.cert_pem())
        .unwrap();
    assert_eq!(
        trust_b.bundle_pem(),
        format!("{}{}", a.cert_pem(), b.cert_pem())
    );
    assert_eq!(
        due(&leaf1.as_existing(), &trust_b, step(1)),
        Some(RenewReason::BundleChanged)
    );

    // Step 2: B signs, A stays in the bundle: old and new leaves verify.
    let overlap = Authority::new(b.clone())
        .with_extra_roots(a.cert_pem())
        .unwrap();
    assert_eq!(
        overlap.bundle_pem(),
        format!("{}{}", b.cert_pem(), a.cert_pem())
    );
    assert_eq!(count_certs(overlap.bundle_pem()), 2);
    let leaf2 = cart_leaf(&overlap, step(2));
    verify(&leaf1.cert_pem, overlap.bundle_pem(), step(2)).unwrap();
    verify(&leaf2.cert_pem, overlap.bundle_pem(), step(2)).unwrap();
    // Proxies still on step 1's bundle already trust leaves from B.
    verify(&leaf2.cert_pem, trust_b.bundle_pem(), step(2)).unwrap();
    // Leaves from A are re-issued, whichever bundle they were stored with.
    let leaf1_with_overlap = IssuedIdentity {
        bundle_pem: overlap.bundle_pem().to_owned(),
        ..leaf1.clone()
    };
    for stored in [&leaf1, &leaf1_with_overlap] {
        assert_eq!(
            due(&stored.as_existing(), &overlap, step(2)),
            Some(RenewReason::NotSignedByCurrentAnchor)
        );
    }
    assert_eq!(due(&leaf2.as_existing(), &overlap, step(2)), None);

    // Step 3: A leaves the bundle; its leaves are no longer trusted.
    let after = Authority::new(b.clone());
    assert_eq!(after.bundle_pem(), b.cert_pem());
    assert!(is_unknown_issuer(verify(
        &leaf1.cert_pem,
        after.bundle_pem(),
        step(3)
    )));
    verify(&leaf2.cert_pem, after.bundle_pem(), step(3)).unwrap();
    assert_eq!(
        due(&leaf2.as_existing(), &after, step(3)),
        Some(RenewReason::BundleChanged)
    );
    let leaf3 = cart_leaf(&after, step(3));
    assert_eq!(due(&leaf3.as_existing(), &after, step(3)), None);
}

#[test]
fn extra_roots_are_deduplicated_after_the_signer() {
    let (a, b, c) = (anchor(t0()), anchor(t0() + HOUR), anchor(t0() + 2 * HOUR));
    let extras = format!(
        "{}{}{}{}",
        c.cert_pem(),
        a.cert_pem(),
        c.cert_pem(),
        a.cert_pem()
    );
    let authority = Authority::new(a.clone()).with_extra_roots(extras).unwrap();
    let authority = authority.with_extra_roots(b.cert_pem()).unwrap();
    assert_eq!(
        authority.bundle_pem(),
        format!("{}{}{}", a.cert_pem(), c.cert_pem(), b.cert_pem())
    );
    let unchanged = Authority::new(a.clone()).with_extra_roots("\n").unwrap();
    assert_eq!(unchanged.bundle_pem(), a.cert_pem());
}

#[test]
fn extra_roots_must_be_ca_certificates() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    let extras = format!("{}{}", anchor(t0()).cert_pem(), leaf.cert_pem);
    let err = authority.clone().with_extra_roots(extras).unwrap_err();
    assert_eq!(
        err,
        BundleError::NotCa {
            index: 2,
            subject: String::new()
        }
    );
    let err = authority.with_extra_roots("garbage").unwrap_err();
    assert_eq!(
        err.to_string(),
        "extra trust roots: holds no PEM certificate"
    );
}

// --- renewal ---

#[test]
fn renewal_is_due_at_half_life_and_expired_wins_after() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    let stored = leaf.as_existing();
    assert_eq!(due(&stored, &authority, t0()), None);
    // Half of 24h01m (a minute of skew, then the lifetime) is 12h00m30s
    // after notBefore, i.e. 11h59m30s after issuance.
    assert_eq!(
        due(&stored, &authority, t0() + 11 * HOUR + 59 * MINUTE),
        None
    );
    let half_life = Some(RenewReason::HalfLife {
        not_after: leaf.not_after,
    });
    assert_eq!(due(&stored, &authority, t0() + 12 * HOUR), half_life);
    assert_eq!(due(&stored, &authority, leaf.not_after), half_life);
    assert_eq!(
        due(&stored, &authority, t0() + 25 * HOUR),
        Some(RenewReason::Expired {
            not_after: leaf.not_after
        })
    );
    assert_eq!(
        due(&stored, &authority, t0() - 2 * MINUTE),
        Some(RenewReason::NotYetValid {
            not_before: leaf.not_before
        })
    );
}

#[test]
fn renewal_fraction_is_configurable() {
    let authority = Authority::new(anchor(t0()));
    let stored = cart_leaf(&authority, t0());
    let at = |now, fraction| renewal_due(&stored.as_existing(), &cart(), &authority, now, fraction);
    // 0.8 of 86460 s is 69168 s after notBefore (t0 - 60 s).
    let renew_at = t0() + Duration::from_secs(69_108);
    assert_eq!(at(renew_at - Duration::from_secs(1), 0.8), None);
    assert!(matches!(
        at(renew_at, 0.8),
        Some(RenewReason::HalfLife { .. })
    ));
    // Out of range clamps; not a number falls back to one half.
    assert!(matches!(at(t0(), 0.0), Some(RenewReason::HalfLife { .. })));
    assert!(matches!(at(t0(), -3.0), Some(RenewReason::HalfLife { .. })));
    assert_eq!(at(t0() + 23 * HOUR, 7.0), None);
    assert_eq!(at(t0() + 11 * HOUR, f64::NAN), None);
    assert!(matches!(
        at(t0() + 12 * HOUR, f64::NAN),
        Some(RenewReason::HalfLife { .. })
    ));
}

#[test]
fn renewal_is_due_for_another_identity() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    for want in [
        SpiffeId::workload(TD, "shop", "checkout").unwrap(),
        SpiffeId::workload(TD, "shop2", "cart").unwrap(),
        SpiffeId::workload("example.org", "shop", "cart").unwrap(),
    ] {
        let reason = renewal_due(&leaf.as_existing(), &want, &authority, t0(), 0.5);
        assert_eq!(
            reason,
            Some(RenewReason::WrongIdentity {
                found: "spiffe://cluster.local/ns/shop/sa/cart".to_owned(),
                want: want.clone(),
            })
        );
        assert_eq!(
            reason.unwrap().to_string(),
            format!("tls.crt is for spiffe://cluster.local/ns/shop/sa/cart, not {want}")
        );
    }
}

#[test]
fn renewal_is_due_for_missing_or_unparseable_entries() {
    let authority = Authority::new(anchor(t0()));
    let leaf = cart_leaf(&authority, t0());
    let good = leaf.as_existing();
    let reason = |stored: ExistingIdentity<'_>| due(&stored, &authority, t0()).unwrap();
    assert_eq!(
        reason(ExistingIdentity::default()),
        RenewReason::Missing("tls.crt")
    );
    assert_eq!(
        reason(ExistingIdentity {
            key_pem: None,
            ..good
        }),
        RenewReason::Missing("tls.key")
    );
    assert_eq!(
        reason(ExistingIdentity {
            bundle_pem: Some(b""),
            ..good
        }),
        RenewReason::Missing("ca.crt")
    );
    let garbage = Some(&b"garbage"[..]);
    let cases = [
        (
            ExistingIdentity {
                cert_pem: garbage,
                ..good
            },
            "tls.crt",
        ),
        (
            ExistingIdentity {
                key_pem: garbage,
                ..good
            },
            "tls.key",
        ),
        (
            ExistingIdentity {
                bundle_pem: garbage,
                ..good
            },
            "ca.crt",
        ),
        // A key where the certificate belongs.
        (
            ExistingIdentity {
                cert_pem: Some(leaf.key_pem.as_bytes()),
                ..good
            },
            "tls.crt",
        ),
    ];
    for (stored, file) in cases {
        let reason = reason(stored);
        assert!(
            matches!(&reason, RenewReason::Unparseable { file: f, .. } if *f == file),
            "{reason:?}"
        );
        assert_eq!(reason.metric_label(), "unparseable");
        assert!(
            reason
                .to_string()
                .starts_with(&format!("{file} cannot be read: ")),
            "{reason}"
        );
    }
}

#[test]
fn renewal_is_due_when_the_key_is_not_the_certificates() {
    let authority = Authority::new(anchor(t0()));
    let (leaf, other) = (cart_leaf(&authority, t0()), cart_leaf(&authority, t0()));
    let stored = ExistingIdentity {
        key_pem: Some(other.key_pem.as_bytes()),
        ..leaf.as_existing()
    };
    let reason = due(&stored, &authority, t0()).unwrap();
    assert_eq!(reason, RenewReason::KeyMismatch);
    assert_eq!(reason.metric_label(), "key_mismatch");
}

#[test]
fn renewal_is_due_when_the_stored_bundle_is_stale() {
    let (a, b) = (anchor(t0()), anchor(t0() + HOUR));
    let leaf = cart_leaf(&Authority::new(a.clone()), t0() + HOUR);
    let grown = Authority::new(a.clone())
        .with_extra_roots(b.cert_pem())
        .unwrap();
    let reason = due(&leaf.as_existing(), &grown, t0() + HOUR).unwrap();
    assert_eq!(reason, RenewReason::BundleChanged);
    assert_eq!(reason.to_string(), "ca.crt is not the current trust bundle");
    // The same roots written differently are not a change.
    let crlf = grown.bundle_pem().replace('\n', "\r\n");
    let stored = ExistingIdentity {
        bundle_pem: Some(crlf.as_bytes()),
        ..leaf.as_existing()
    };
    assert_eq!(due(&stored, &grown, t0() + HOUR), None);
}

#[test]
fn renew_reasons_are_labelled_and_displayed_for_events() {
    let cases = [
        (
            RenewReason::Missing("tls.key"),
            "missing",
            "tls.key is missing",
        ),
        (
            RenewReason::KeyMismatch,
            "key_mismatch",
            "tls.key does not match the key of tls.crt",
        ),
        (
            RenewReason::NotSignedByCurrentAnchor,
            "not_signed_by_current_anchor",
            "tls.crt is not signed by the current trust anchor",
        ),
        (
            RenewReason::HalfLife { not_after: t0() },
            "half_life",
            "tls.crt is due for renewal; it expires at 2023-11-14T22:13:20Z",
        ),
        (
            RenewReason::NotYetValid { not_before: t0() },
            "not_yet_valid",
            "tls.crt is not valid before 2023-11-14T22:13:20Z",
        ),
    ];
    for (reason, label, text) in cases {
        assert_eq!(reason.metric_label(), label);
        assert_eq!(reason.to_string(), text);
    }
}

// --- expiry helpers ---

#[test]
fn expiry_window_is_measured_from_now() {
    let leaf = cart_leaf(&Authority::new(anchor(t0())), t0());
    assert_eq!(cert_not_after(&leaf.cert_pem).unwrap(), leaf.not_after);
    assert!(!expires_within(&leaf.cert_pem, t0(), 23 * HOUR).unwrap());
    assert!(expires_within(&leaf.cert_pem, t0(), 24 * HOUR).unwrap());
    assert!(expires_within(&leaf.cert_pem, t0() + 25 * HOUR, Duration::ZERO).unwrap());
    assert_eq!(
        expires_within("garbage", t0(), HOUR)
            .unwrap_err()
            .to_string(),
        "holds no PEM certificate"
    );
}

// --- serving certificates (the admission webhook) ---

fn webhook_names() -> Vec<String> {
    vec![
        "weft-webhook.weft-system.svc".into(),
        "weft-webhook.weft-system.svc.cluster.local".into(),
    ]
}

/// What a TLS client (the API server) checks: the chain against the roots
/// of `bundle_pem`, validity at `now`, the serverAuth purpose and `name`.
fn verify_server(
    cert_pem: &str,
    bundle_pem: &str,
    name: &str,
    now: SystemTime,
) -> Result<(), rustls::Error> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(root.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap()),
        )
        .map(|_| ())
}

fn is_wrong_name(result: Result<(), rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ))
    )
}

#[test]
fn serving_certificate_verifies_for_its_dns_names_against_the_bundle() {
    let authority = Authority::new(anchor(t0()));
    let server = authority
        .issue_server(&webhook_names(), t0(), DEFAULT_LEAF_LIFETIME)
        .unwrap();
    assert_eq!(server.bundle_pem, authority.bundle_pem());
    assert_eq!(server.signer_pem, authority.signer().cert_pem());
    assert_eq!(server.dns_names, webhook_names());
    for name in webhook_names() {
        verify_server(&server.cert_pem, &server.bundle_pem, &name, t0()).unwrap();
    }
    for other in ["weft-webhook.default.svc", "evil.example", "weft-webhook"] {
        let result = verify_server(&server.cert_pem, &server.bundle_pem, other, t0());
        assert!(is_wrong_name(result.clone()), "{other}: {result:?}");
    }
    // Another root (another subject: anchors are named for their creation).
    let foreign = Authority::new(anchor(t0() - HOUR));
    let result = verify_server(
        &server.cert_pem,
        foreign.bundle_pem(),
        &webhook_names()[0],
        t0(),
    );
    assert!(is_unknown_issuer(result.clone()), "{result:?}");
    let result = verify_server(
        &server.cert_pem,
        &server.bundle_pem,
        &webhook_names()[0],
        t0() + DEFAULT_LEAF_LIFETIME + MINUTE,
    );
    assert!(
        matches!(
            result,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{result:?}"
    );
}

#[test]
fn serving_certificate_is_for_tls_servers_only_with_dns_names() {
    let authority = Authority::new(anchor(t0()));
    let server = authority
        .issue_server(&webhook_names(), t0(), HOUR)
        .unwrap();
    assert_eq!(count_certs(&server.cert_pem), 1);
    assert_eq!(server.not_before, t0() - MINUTE);
    assert_eq!(server.not_after, t0() + HOUR);
    let key = KeyPair::from_pem(&server.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    with_cert(&server.cert_pem, |cert| {
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            [
                GeneralName::DNSName("weft-webhook.weft-system.svc"),
                GeneralName::DNSName("weft-webhook.weft-system.svc.cluster.local"),
            ]
        );
        assert_eq!(
            cert.subject().to_string(),
            "CN=weft-webhook.weft-system.svc"
        );
        assert!(!san.critical, "the subject is not empty");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth && !eku.any);
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.digital_signature());
        assert_eq!(usage.flags.count_ones(), 1);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(cert.issuer().to_string(), authority.signer().subject());
        assert_eq!(
            key.public_key_raw(),
            cert.public_key().subject_public_key.data.as_ref()
        );
    });
    // Not usable as a mesh client certificate.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(authority.bundle_pem().as_bytes()).unwrap())
        .unwrap();
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.into(),
        std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
    let result = client_verifier.verify_client_cert(
        &leaf,
        &[],
        UnixTime::since_unix_epoch(Duration::from_secs(T0)),
    );
    assert!(result.is_err(), "{result:?}");
}

#[test]
fn serving_certificate_never_outlives_its_anchor_and_follows_a_rotation() {
    let a = TrustAnchor::generate(t0(), 10 * HOUR).unwrap();
    let server = Authority::new(a.clone())
        .issue_server(&webhook_names(), t0(), DEFAULT_LEAF_LIFETIME)
        .unwrap();
    assert_eq!(server.not_after, a.not_after());

    // Rotation step 2: signed by B while A is still trusted; both verify
    // against the bundle the webhook configuration carries.
    let b = anchor(t0());
    let step2 = Authority::new(b.clone())
        .with_extra_roots(a.cert_pem())
        .unwrap();
    let by_b = step2.issue_server(&webhook_names(), t0(), HOUR).unwrap();
    assert_eq!(by_b.signer_pem, b.cert_pem());
    for cert in [&server.cert_pem, &by_b.cert_pem] {
        verify_server(cert, step2.bundle_pem(), &webhook_names()[0], t0()).unwrap();
    }
}

#[test]
fn serving_certificate_refuses_bad_names_and_lifetimes() {
    let authority = Authority::new(anchor(t0()));
    let issue = |names: &[&str], lifetime| {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        authority.issue_server(&names, t0(), lifetime)
    };
    assert_eq!(issue(&[], HOUR).unwrap_err(), IssueError::NoDnsNames);
    let long = format!("{}.svc", vec!["a".repeat(63); 4].join("."));
    for bad in [
        "",
        "Weft.svc",
        "*.weft-system.svc",
        "weft..svc",
        "weft.svc.",
        "-weft.svc",
        "weft_hook.svc",
        "10.0.0.1/32",
        long.as_str(),
    ] {
        let err = issue(&["ok.svc", bad], HOUR).unwrap_err();
        assert_eq!(err, IssueError::DnsName(bad.to_owned()), "{bad}");
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    assert_eq!(
        issue(&["ok.svc"], Duration::from_millis(10)).unwrap_err(),
        IssueError::ZeroLifetime
    );
    // A name too long for a common name is still a valid SAN.
    let long_label = format!("{}.{}.svc", "a".repeat(60), "b".repeat(20));
    let server = issue(&[long_label.as_str()], HOUR).unwrap();
    with_cert(&server.cert_pem, |cert| {
        assert_eq!(cert.subject().iter().count(), 0);
        assert!(cert.subject_alternative_name().unwrap().unwrap().critical);
    });
    verify_server(&server.cert_pem, authority.bundle_pem(), &long_label, t0()).unwrap();
}
