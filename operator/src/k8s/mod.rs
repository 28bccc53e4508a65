//! `weft-operator run`: the control plane in a cluster.
//!
//! The same desired state as the local runtime (`desired::desired` over a
//! `Cluster`), fed from watches and written with server-side apply. Split by
//! concern, pure logic apart from I/O:
//!
//! - `objects`: the ConfigMap, Secrets, Role and RoleBinding to write (pure);
//! - `plan`: desired state vs. the objects written → API actions, including
//!   the webhook configuration's `caBundle` (pure);
//! - `status`: MeshPolicy `Accepted` condition (pure);
//! - `lease`: leader election (pure decision + Lease I/O);
//! - `anchor`: the trust anchor Secret;
//! - `writer`: one pass, executing a plan with a `kube::Client`;
//! - `watch`: reflectors, their stores, the debounce;
//! - `control`: the loop that ties watches, leadership and passes together;
//! - `admin`, `metrics`: `/healthz`, `/readyz`, `/metrics`;
//! - the injection webhook: `sidecar` (what is injected, native or not),
//!   `serving` (its TLS certificate from the mesh CA), `admit` (one
//!   AdmissionReview: decision, identity Secret, metrics) and `webhook`
//!   (the HTTPS server).

pub mod admin;
pub mod admit;
pub mod anchor;
pub mod control;
pub mod lease;
pub mod metrics;
pub mod objects;
pub mod plan;
pub mod serving;
pub mod sidecar;
pub mod status;
pub mod watch;
pub mod webhook;
pub mod writer;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_api::duration::parse_duration;
use weft_api::names::env;
use weft_api::routes::MtlsMode;

use crate::local::parse_mtls;
use crate::scope::{MeshConfig, MeshedPods};

use self::lease::LeaseConfig;
use self::objects::Limits;
use self::plan::Settings;
use self::sidecar::{SidecarArgs, SidecarError};
use self::watch::Pacing;

/// The operator namespace when neither the flag nor the environment says.
pub const DEFAULT_NAMESPACE: &str = "weft-system";

/// Flags of `weft-operator run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The operator's namespace: holds the trust anchor and the Lease, never
    /// meshed. Else `POD_NAMESPACE`, else `weft-system`.
    #[arg(long, env = "WEFT_NAMESPACE")]
    pub namespace: Option<String>,
    /// The trust domain of workload SPIFFE IDs.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Lifetime of workload certificates.
    #[arg(long, env = "WEFT_CERT_LIFETIME", value_parser = parse_duration, default_value = "24h")]
    pub cert_lifetime: Duration,
    /// Re-issue a certificate once this fraction of its lifetime has passed (0 < f ≤ 1).
    #[arg(long, env = "WEFT_RENEW_AT", default_value_t = 0.5)]
    pub renew_at: f64,
    /// mTLS mode where no MeshPolicy sets one: `permissive` or `strict`.
    #[arg(long, env = "WEFT_DEFAULT_MTLS", value_parser = parse_mtls, default_value = "permissive")]
    pub default_mtls: MtlsMode,
    /// `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    /// Name of the Lease in the operator namespace.
    #[arg(long, default_value = "weft-operator")]
    pub leader_election_id: String,
    /// This replica's name in the Lease and in Events. Else `HOSTNAME`.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// A pass starts once the watches have been quiet this long...
    #[arg(long, env = "WEFT_DEBOUNCE", value_parser = parse_duration, default_value = "200ms")]
    pub debounce: Duration,
    /// ...or this long after the first change, whichever comes first.
    #[arg(long, env = "WEFT_DEBOUNCE_MAX", value_parser = parse_duration, default_value = "2s")]
    pub debounce_max: Duration,
    /// A pass runs at least this often (certificate renewal, retries).
    #[arg(long, env = "WEFT_RESYNC", value_parser = parse_duration, default_value = "1m")]
    pub resync: Duration,
    /// How long a leader stays leader without renewing its Lease.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub lease_duration: Duration,
    /// How often the leader renews the Lease (and followers check it).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub lease_renew: Duration,
    /// The injection webhook's HTTPS listener (`POST /inject`).
    #[arg(long, env = "WEFT_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// The Service in front of the webhook, in the operator namespace: its
    /// DNS names go into the serving certificate.
    #[arg(long, env = "WEFT_WEBHOOK_SERVICE", default_value = "weft-webhook")]
    pub webhook_service: String,
    /// The MutatingWebhookConfiguration whose `caBundle` the leader keeps
    /// equal to the trust bundle.
    #[arg(long, env = "WEFT_WEBHOOK_CONFIG", default_value = "weft-injector")]
    pub webhook_config: String,
    /// On SIGTERM the webhook keeps serving this long (readiness already
    /// failing) while the Service stops sending it connections.
    #[arg(long, env = "WEFT_WEBHOOK_SHUTDOWN_DELAY", value_parser = parse_duration, default_value = "5s")]
    pub webhook_shutdown_delay: Duration,
    #[command(flatten)]
    pub sidecar: SidecarArgs,
    #[command(flatten)]
    pub logging: crate::logging::LogArgs,
}

/// Settings resolved from flags and environment, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub pacing: Pacing,
    pub lease: LeaseConfig,
    pub admin_addr: SocketAddr,
    pub webhook: WebhookConfig,
}

/// The injection webhook's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// The serving certificate's DNS names.
    pub dns_names: Vec<String>,
    /// The MutatingWebhookConfiguration to keep the `caBundle` of.
    pub config_name: String,
    pub native_sidecar: sidecar::NativeSidecar,
    /// How long the webhook serves on after the shutdown signal.
    pub shutdown_delay: Duration,
    /// `native_sidecar` is resolved at start (`auto`); this holds `false`
    /// until then.
    pub inject: crate::inject::InjectConfig,
}

/// Why the flags cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("--renew-at: {0} is not within 0 (exclusive) and 1")]
    RenewAt(f64),
    #[error("--cert-lifetime: must be at least 1s")]
    CertLifetime,
    #[error("--lease-renew ({renew:?}) must be shorter than --lease-duration ({duration:?})")]
    LeaseRenew { renew: Duration, duration: Duration },
    #[error("--debounce ({quiet:?}) must not be longer than --debounce-max ({max:?})")]
    Debounce { quiet: Duration, max: Duration },
    #[error("no replica name: set --pod-name or {} (or HOSTNAME)", env::POD_NAME)]
    PodName,
    #[error("--webhook-service: {0:?} is not a Service name (a DNS label)")]
    WebhookService(String),
    #[error("--webhook-config: must not be empty")]
    WebhookConfig,
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
}

impl RunArgs {
    /// Resolves and checks the flags; `env` reads the environment (a map in tests).
    pub fn config(&self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        self.check()?;
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let namespace = nonempty(self.namespace.clone())
            .or_else(|| nonempty(env("POD_NAMESPACE")))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let identity = nonempty(self.pod_name.clone())
            .or_else(|| nonempty(env("HOSTNAME")))
            .ok_or(ConfigError::PodName)?;
        let webhook = WebhookConfig {
            addr: self.webhook_addr,
            dns_names: serving::dns_names(&self.webhook_service, &namespace),
            config_name: self.webhook_config.clone(),
            native_sidecar: self.sidecar.native_sidecar,
            shutdown_delay: self.webhook_shutdown_delay,
            inject: self.sidecar.inject_config(false)?,
        };
        Ok(Config {
            settings: Settings {
                mesh: MeshConfig {
                    trust_domain: self.trust_domain.clone(),
                    operator_namespace: namespace.clone(),
                    default_mtls: self.default_mtls,
                    meshed_pods: MeshedPods::Injected,
                },
                cert_lifetime: self.cert_lifetime,
                renew_at: self.renew_at,
                limits: Limits::default(),
            },
            pacing: Pacing {
                quiet: self.debounce,
                max: self.debounce_max,
                resync: self.resync,
            },
            lease: LeaseConfig {
                name: self.leader_election_id.clone(),
                namespace,
                identity,
                duration: self.lease_duration,
                renew_every: self.lease_renew,
            },
            admin_addr: self.admin_addr,
            webhook,
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(self.renew_at > 0.0 && self.renew_at <= 1.0) {
            return Err(ConfigError::RenewAt(self.renew_at));
        }
        if self.cert_lifetime < Duration::from_secs(1) {
            return Err(ConfigError::CertLifetime);
        }
        if self.lease_renew >= self.lease_duration {
            return Err(ConfigError::LeaseRenew {
                renew: self.lease_renew,
                duration: self.lease_duration,
            });
        }
        if self.debounce > self.debounce_max {
            return Err(ConfigError::Debounce {
                quiet: self.debounce,
                max: self.debounce_max,
            });
        }
        if !weft_api::validate::is_dns_label(&self.webhook_service) {
            return Err(ConfigError::WebhookService(self.webhook_service.clone()));
        }
        if self.webhook_config.is_empty() {
            return Err(ConfigError::WebhookConfig);
        }
        Ok(())
    }
}

/// The process entry point of `weft-operator run`: logging, the async
/// runtime, SIGTERM; returns once shut down.
pub fn run(args: RunArgs) -> Result<()> {
    crate::logging::init(&args.logging)?;
    let config = args.config(|k| std::env::var(k).ok())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        run_async(config, shutdown).await
    })
}

/// Connects (in-cluster config or `KUBECONFIG`), binds the admin and
/// webhook ports, resolves `--native-sidecar` and runs until `shutdown`.
pub async fn run_async(mut config: Config, shutdown: CancellationToken) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin_addr))?;
    let webhook = TcpListener::bind(config.webhook.addr)
        .await
        .with_context(|| format!("binding the webhook listener on {}", config.webhook.addr))?;
    tracing::info!(
        namespace = %config.lease.namespace,
        identity = %config.lease.identity,
        admin = %config.admin_addr,
        webhook = %config.webhook.addr,
        "weft-operator starting"
    );
    config.webhook.inject.native_sidecar =
        sidecar::resolve(config.webhook.native_sidecar, &client).await;
    control::serve(
        client,
        config,
        control::Listeners { admin, webhook },
        shutdown,
    )
    .await
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will not release the lease");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
