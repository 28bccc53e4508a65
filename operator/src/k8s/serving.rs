//! The webhook's TLS serving certificate.
//!
//! Every replica issues its own from the mesh CA as soon as it sees the
//! trust anchor Secret (every replica watches it; only the leader creates
//! it when missing), for `<service>.<namespace>.svc` and
//! `<service>.<namespace>.svc.cluster.local`. It lives in memory only: no
//! Secret to share, nothing for replicas to agree on, and the private key
//! never leaves the process. The API server trusts it through the
//! `caBundle` of the webhook configuration, which the leader keeps equal to
//! the trust bundle (see `plan::ca_bundle_patch`).
//!
//! It is re-issued once `renew_at` of its life has passed (with the
//! workload lifetime) and when the anchor's signer changes (step 2 of a
//! rotation: the bundle already holds the new root since step 1, so the API
//! server trusts the new certificate at once). The certificate is swapped in
//! place: new TLS handshakes get the new one, open connections keep theirs.
//!
//! `reissue` is the pure decision; `run` polls the anchor and applies it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use k8s_openapi::api::core::v1::Secret;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version::TLS13};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::ca::{Authority, IssuedServer};

use super::anchor::AuthorityCache;
use super::metrics::Metrics;

/// The DNS names the API server may use for the webhook Service.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The certificate the server presents; empty until the first is issued.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwapOption<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl Default for ServingCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ServingCert {
    pub fn new() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    /// Whether a certificate is loaded (the server can complete handshakes).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Serves `issued` from the next handshake on.
    pub fn install(&self, issued: &IssuedServer) -> Result<(), rustls::Error> {
        let bad = |what: &str, e: rustls_pki_types::pem::Error| {
            rustls::Error::General(format!("serving certificate {what}: {e}"))
        };
        let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .map_err(|e| bad("tls.crt", e))?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| bad("tls.key", e))?;
        let key = CertifiedKey::from_der(vec![cert], key, &self.provider)?;
        self.current.store(Some(Arc::new(key)));
        Ok(())
    }

    /// A TLS 1.3 server configuration presenting the current certificate,
    /// with HTTP/1.1 as the only application protocol: the API server calls
    /// admission webhooks over HTTP/1.1, whose connections a Service spreads
    /// over the replicas (one HTTP/2 connection would pin them to one).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// What decides a re-issue about the certificate held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// PEM of the anchor that signed it.
    pub signer_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl From<&IssuedServer> for Held {
    fn from(issued: &IssuedServer) -> Self {
        Self {
            signer_pem: issued.signer_pem.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
        }
    }
}

/// Why the serving certificate is (re-)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reissue {
    /// None held yet.
    Missing,
    /// The anchor signing certificates is not the one that signed it.
    SignerChanged,
    /// `renew_at` of its life has passed.
    Renewal,
}

impl Reissue {
    /// A fixed metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::SignerChanged => "signer_changed",
            Self::Renewal => "renewal",
        }
    }
}

/// Whether to issue a serving certificate at `now`, holding `held`, when
/// the signer is `signer_pem`; renewal once `renew_at` (0..=1) of its life
/// has passed.
pub fn reissue(
    held: Option<&Held>,
    signer_pem: &str,
    now: SystemTime,
    renew_at: f64,
) -> Option<Reissue> {
    let Some(held) = held else {
        return Some(Reissue::Missing);
    };
    if held.signer_pem != signer_pem {
        return Some(Reissue::SignerChanged);
    }
    let fraction = if renew_at.is_finite() {
        renew_at.clamp(0.0, 1.0)
    } else {
        crate::ca::DEFAULT_RENEW_AT_FRACTION
    };
    let life = held
        .not_after
        .duration_since(held.not_before)
        .unwrap_or(Duration::ZERO);
    let renew_from = held
        .not_before
        .checked_add(life.mul_f64(fraction))
        .unwrap_or(held.not_after);
    (now >= renew_from).then_some(Reissue::Renewal)
}

/// How the serving certificate is issued and how often the anchor is read.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub dns_names: Vec<String>,
    pub lifetime: Duration,
    pub renew_at: f64,
    /// Between looks at the anchor while no certificate is held…
    pub poll_pending: Duration,
    /// …and once one is (re-issue and signer changes are seen this late).
    pub poll_held: Duration,
}

/// Keeps `serving` issued from the anchor that `anchor` returns, and
/// publishes the authority it holds (for the webhook's identity Secrets)
/// into `authority`. Returns on `stop`.
pub async fn run(
    refresh: Refresh,
    anchor: impl Fn() -> Option<Arc<Secret>>,
    serving: Arc<ServingCert>,
    authority: Arc<ArcSwapOption<Authority>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut state = Refresher::new(refresh, serving, authority, metrics);
    loop {
        state.step(anchor().as_deref(), SystemTime::now());
        let wait = if state.serving.is_loaded() {
            state.refresh.poll_held
        } else {
            state.refresh.poll_pending
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The refresh loop's state between polls.
pub struct Refresher {
    refresh: Refresh,
    serving: Arc<ServingCert>,
    authority: Arc<ArcSwapOption<Authority>>,
    metrics: Arc<Metrics>,
    cache: AuthorityCache,
    held: Option<Held>,
    /// The last problem logged, so a poll repeating it stays quiet.
    last_problem: Option<String>,
}

impl Refresher {
    pub fn new(
        refresh: Refresh,
        serving: Arc<ServingCert>,
        authority: Arc<ArcSwapOption<Authority>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            refresh,
            serving,
            authority,
            metrics,
            cache: AuthorityCache::default(),
            held: None,
            last_problem: None,
        }
    }

    /// The certificate held, if any.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// One look at the anchor Secret at `now`: issues when due.
    pub fn step(&mut self, anchor: Option<&Secret>, now: SystemTime) {
        let Some(secret) = anchor else {
            self.problem(
                false,
                "no trust anchor Secret yet (the leader creates it); the webhook waits for it"
                    .into(),
            );
            return;
        };
        let authority = match self.cache.authority(secret, now) {
            Ok(authority) => authority,
            Err(e) => {
                self.problem(true, format!("no serving certificate: {e}"));
                return;
            }
        };
        self.authority.store(Some(Arc::new(authority.clone())));
        let signer = authority.signer().cert_pem();
        let Some(reason) = reissue(self.held.as_ref(), signer, now, self.refresh.renew_at) else {
            return;
        };
        let issued = authority
            .issue_server(&self.refresh.dns_names, now, self.refresh.lifetime)
            .map_err(|e| e.to_string())
            .and_then(|issued| {
                self.serving
                    .install(&issued)
                    .map(|()| issued)
                    .map_err(|e| e.to_string())
            });
        match issued {
            Ok(issued) => {
                self.last_problem = None;
                self.held = Some(Held::from(&issued));
                let expiry = issued
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                self.metrics.webhook_certificate_expiry.set(expiry);
                self.metrics
                    .webhook_certificates_issued
                    .get_or_create(&super::metrics::ReasonLabels {
                        reason: reason.label(),
                    })
                    .inc();
                tracing::info!(
                    reason = reason.label(),
                    dns_names = ?issued.dns_names,
                    not_after = %super::objects::rfc3339(issued.not_after),
                    signer = authority.signer().subject(),
                    "webhook serving certificate issued"
                );
            }
            Err(e) => self.problem(true, format!("issuing the serving certificate: {e}")),
        }
    }

    /// Logs (and, for errors, counts) `message` unless it was the last one.
    fn problem(&mut self, error: bool, message: String) {
        if self.last_problem.as_ref() == Some(&message) {
            return;
        }
        if error {
            tracing::error!(held = self.held.is_some(), "{message}");
            self.metrics.webhook_certificate_errors.inc();
        } else {
            tracing::info!("{message}");
        }
        self.last_problem = Some(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn held(signer: &str, from: u64, to: u64) -> Held {
        Held {
            signer_pem: signer.into(),
            not_before: UNIX_EPOCH + Duration::from_secs(from),
            not_after: UNIX_EPOCH + Duration::from_secs(to),
        }
    }

    #[test]
    fn reissue_decisions() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let h = held("A", 1000, 2000);
        assert_eq!(reissue(None, "A", at(0), 0.5), Some(Reissue::Missing));
        assert_eq!(
            reissue(Some(&h), "B", at(1001), 0.5),
            Some(Reissue::SignerChanged)
        );
        assert_eq!(reissue(Some(&h), "A", at(1499), 0.5), None);
        assert_eq!(
            reissue(Some(&h), "A", at(1500), 0.5),
            Some(Reissue::Renewal)
        );
        assert_eq!(reissue(Some(&h), "A", at(1899), 0.9), None);
        assert_eq!(
            reissue(Some(&h), "A", at(1900), 0.9),
            Some(Reissue::Renewal)
        );
        assert_eq!(
            reissue(Some(&h), "A", at(3000), 1.0),
            Some(Reissue::Renewal)
        );
        assert_eq!(reissue(Some(&h), "A", at(1499), f64::NAN), None);
        assert_eq!(
            reissue(Some(&h), "A", at(1000), -3.0),
            Some(Reissue::Renewal)
        );
        // A certificate whose validity is inverted is renewed at once.
        let odd = held("A", 2000, 1000);
        assert_eq!(
            reissue(Some(&odd), "A", at(2000), 0.5),
            Some(Reissue::Renewal)
        );
    }

    #[test]
    fn dns_names_of_the_service() {
        assert_eq!(
            dns_names("weft-webhook", "weft-system"),
            [
                "weft-webhook.weft-system.svc",
                "weft-webhook.weft-system.svc.cluster.local"
            ]
        );
    }
}
