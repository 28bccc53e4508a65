//! One admission request, start to end, without HTTP: the review parsed,
//! the pod's Namespace looked up, the injection decided by
//! `admission::decide`, the pod's identity Secret made sure of, and the
//! answer counted and logged. `webhook` puts it behind HTTPS.
//!
//! **Identity Secret.** An injected pod mounts `weft-identity-<sa>`; if the
//! Secret does not exist yet the kubelet holds the pod in ContainerCreating
//! and retries with backoff. So before allowing a pod with a patch the
//! webhook makes sure the Secret exists: found in the cache, or created
//! (POST, never apply: an existing Secret is never overwritten, and a 409
//! means another replica or the writer got there first). A dry-run request
//! creates nothing. If creation fails or runs out of time the pod is still
//! allowed — logged and counted — because the leader's next pass issues
//! the Secret anyway (the new pod is a watch event) and the webhook is about
//! availability (`failurePolicy`), not about blocking pods on a Secret.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use serde_json::Value;
use weft_api::names::identity_secret_name;

use crate::admission::{self, BadReview, Decision};
use crate::ca::Authority;
use crate::inject::InjectConfig;
use crate::scope::MeshConfig;

use super::metrics::{Metrics, ResultLabels};
use super::objects::{self, FIELD_MANAGER};

/// How long to wait for the API server when a Namespace is not cached.
pub const NAMESPACE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the webhook reads Namespaces.
pub trait Namespaces: Send + Sync {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Arc<Namespace>>>;
}

/// A cache lookup: `(namespace, name)` of a Secret → whether it is cached.
pub type SecretLookup = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;
/// A cache lookup: the name of a Namespace → the Namespace.
pub type NamespaceLookup = Box<dyn Fn(&str) -> Option<Arc<Namespace>> + Send + Sync>;

/// The reflector's store, then (for a Namespace created a moment ago that
/// the watch has not delivered yet) the API server, within
/// [`NAMESPACE_LOOKUP_TIMEOUT`].
pub struct ClusterNamespaces {
    pub cached: NamespaceLookup,
    pub client: kube::Client,
}

impl Namespaces for ClusterNamespaces {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Arc<Namespace>>> {
        Box::pin(async move {
            if let Some(ns) = (self.cached)(name) {
                return Some(ns);
            }
            let api: Api<Namespace> = Api::all(self.client.clone());
            match tokio::time::timeout(NAMESPACE_LOOKUP_TIMEOUT, api.get_opt(name)).await {
                Ok(Ok(ns)) => ns.map(Arc::new),
                Ok(Err(e)) => {
                    tracing::warn!(namespace = name, error = %e, "reading the Namespace failed; deciding on the pod's annotations alone");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        namespace = name,
                        "reading the Namespace timed out; deciding on the pod's annotations alone"
                    );
                    None
                }
            }
        })
    }
}

/// What `Identities::ensure` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// In the cache: nothing to do.
    Cached,
    Created,
    /// Created meanwhile by someone else (409).
    AlreadyExists,
}

/// Makes sure identity Secrets exist, issuing them from the mesh CA.
pub struct Identities {
    pub client: kube::Client,
    /// Whether the cache holds the managed Secret `(namespace, name)`.
    pub cached: SecretLookup,
    /// Whether the cache holds ServiceAccount `(namespace, name)`: only a
    /// real account gets a Secret, so a forged review cannot make the
    /// webhook write Secrets for made-up names.
    pub accounts: SecretLookup,
    /// The current authority (published by the serving-certificate task).
    pub authority: Arc<ArcSwapOption<Authority>>,
    pub trust_domain: String,
    pub lifetime: Duration,
}

impl Identities {
    /// Makes sure Secret `weft-identity-<service_account>` exists in
    /// `namespace`, creating it within `budget` when missing — with the
    /// same content the writer would apply.
    pub async fn ensure(
        &self,
        namespace: &str,
        service_account: &str,
        budget: Duration,
    ) -> Result<Ensured, String> {
        let name = identity_secret_name(service_account);
        if (self.cached)(namespace, &name) {
            return Ok(Ensured::Cached);
        }
        if !(self.accounts)(namespace, service_account) {
            return Err(format!(
                "ServiceAccount {namespace}/{service_account} is not known (yet); \
                 the writer creates its Secret once it is"
            ));
        }
        let authority = self
            .authority
            .load_full()
            .ok_or("no trust anchor loaded yet")?;
        let issued = authority
            .issue(
                &self.trust_domain,
                namespace,
                service_account,
                SystemTime::now(),
                self.lifetime,
            )
            .map_err(|e| e.to_string())?;
        let secret = objects::identity_secret(namespace, service_account, &issued);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match tokio::time::timeout(budget, api.create(&params, &secret)).await {
            Ok(Ok(_)) => Ok(Ensured::Created),
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => Ok(Ensured::AlreadyExists),
            Ok(Err(e)) => Err(format!("creating Secret {namespace}/{name}: {e}")),
            Err(_) => Err(format!(
                "creating Secret {namespace}/{name}: no answer within {budget:?}"
            )),
        }
    }
}

/// Everything an admission request is decided with.
pub struct Admit {
    pub mesh: MeshConfig,
    pub inject: InjectConfig,
    pub namespaces: Arc<dyn Namespaces>,
    pub identities: Identities,
    pub metrics: Arc<Metrics>,
}

impl Admit {
    /// The AdmissionReview answering `body`, or why `body` is not one (an
    /// HTTP 400). `budget` bounds the creation of an identity Secret.
    pub async fn review(&self, body: &[u8], budget: Duration) -> Result<Value, BadReview> {
        let started = Instant::now();
        let req = admission::parse(body).inspect_err(|e| self.error(e))?;
        let ns = match req.is_pod_create() {
            true => self.namespaces.get(&req.namespace()).await,
            false => None,
        };
        let decision = admission::decide(&req, ns.as_deref(), &self.mesh, &self.inject);
        let (namespace, pod) = (req.namespace(), req.object_name());
        match &decision {
            Decision::Allow(reason) => {
                tracing::debug!(uid = %req.uid, namespace, pod, reason, "admitted unchanged");
                self.metrics.webhook_request("allowed");
            }
            Decision::Deny(message) => {
                tracing::warn!(uid = %req.uid, namespace, pod, message, "pod refused");
                self.metrics.webhook_request("denied");
            }
            Decision::Patch {
                service_account,
                namespace: pod_namespace,
                ..
            } => {
                let dry_run = req.is_dry_run();
                if !dry_run {
                    self.identity(pod_namespace, service_account, budget).await;
                }
                tracing::info!(uid = %req.uid, namespace, pod, service_account, dry_run, "pod injected");
                self.metrics.webhook_request("injected");
            }
        }
        self.metrics
            .webhook_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(admission::response(&req.uid, &decision))
    }

    /// Counts and logs a request that could not be answered.
    pub fn error(&self, error: &dyn std::fmt::Display) {
        tracing::warn!(%error, "admission request refused");
        self.metrics.webhook_request("error");
    }

    async fn identity(&self, namespace: &str, service_account: &str, budget: Duration) {
        let result = self
            .identities
            .ensure(namespace, service_account, budget)
            .await;
        let label = match &result {
            Ok(Ensured::Cached) => return,
            Ok(Ensured::Created) => {
                tracing::info!(
                    namespace,
                    service_account,
                    "identity Secret created for a new pod"
                );
                self.metrics.written("Secret", "create");
                self.metrics
                    .certificates_issued
                    .get_or_create(&super::metrics::ReasonLabels { reason: "missing" })
                    .inc();
                "created"
            }
            Ok(Ensured::AlreadyExists) => "already_exists",
            Err(error) => {
                tracing::warn!(
                    namespace,
                    service_account,
                    error,
                    "identity Secret not created; the pod is allowed and the next pass issues it"
                );
                "failed"
            }
        };
        self.metrics
            .webhook_identity_secrets
            .get_or_create(&ResultLabels { result: label })
            .inc();
    }
}
