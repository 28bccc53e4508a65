//! The watches: one reflector per kind, each keeping an in-memory store and
//! poking a shared trigger on every change; and the debounce that turns a
//! burst of changes into one pass.
//!
//! Cluster kinds are watched everywhere; what the operator wrote only through
//! the `app.kubernetes.io/managed-by=weft` label, the trust anchor by name in
//! the operator namespace, and the webhook's MutatingWebhookConfiguration by
//! name (so RBAC can name both objects). Stores drop what no pass reads
//! (`managedFields`; a Pod's containers and status), since every Pod of the
//! cluster is held in memory.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Pod, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use prometheus_client::metrics::gauge::Gauge;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::crd::MeshPolicy;

use super::objects::{MANAGED_SELECTOR, TRUST_ANCHOR_SECRET};
use super::plan::Managed;
use super::writer::Snapshot;

/// Wakes the control loop; counts the events it has not handled yet.
pub struct Trigger {
    notify: Notify,
    pending: Gauge,
}

impl Trigger {
    /// `pending` is the queue-depth gauge to keep up to date.
    pub fn new(pending: Gauge) -> Self {
        Self {
            notify: Notify::new(),
            pending,
        }
    }

    /// Records one change.
    pub fn poke(&self) {
        self.pending.inc();
        self.notify.notify_one();
    }

    /// Waits for a change (returns at once if one came since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Starts a pass: the pending changes are now being handled.
    pub fn take(&self) -> i64 {
        let pending = self.pending.get();
        self.pending.set(0);
        pending
    }
}

/// How passes are paced.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// A pass starts once changes have stopped for this long...
    pub quiet: Duration,
    /// ...or this long after the first change of a burst, whichever is first.
    pub max: Duration,
    /// A pass runs at least this often, to renew certificates on time.
    pub resync: Duration,
}

/// Returns once changes have been quiet for `pacing.quiet`, and at the
/// latest `pacing.max` after it was called (the first change).
pub async fn settle(trigger: &Trigger, pacing: Pacing) {
    let deadline = Instant::now() + pacing.max;
    loop {
        let quiet_until = (Instant::now() + pacing.quiet).min(deadline);
        tokio::select! {
            () = trigger.changed() => {
                if Instant::now() >= deadline {
                    return;
                }
            }
            () = tokio::time::sleep_until(quiet_until) => return,
        }
    }
}

/// The reflectors' stores.
#[derive(Clone)]
pub struct Stores {
    namespaces: Store<Namespace>,
    service_accounts: Store<ServiceAccount>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    policies: Store<MeshPolicy>,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    roles: Store<Role>,
    role_bindings: Store<RoleBinding>,
    anchor: Store<Secret>,
    webhook_config: Store<MutatingWebhookConfiguration>,
}

impl Stores {
    /// Starts every watch (tasks on the current runtime); `webhook_config`
    /// names the webhook's MutatingWebhookConfiguration.
    pub fn start(
        client: &Client,
        operator_namespace: &str,
        webhook_config: &str,
        trigger: &Arc<Trigger>,
    ) -> Self {
        let all = || watcher::Config::default();
        let managed = || watcher::Config::default().labels(MANAGED_SELECTOR);
        let anchor_field = format!("metadata.name={TRUST_ANCHOR_SECRET}");
        let webhook_field = format!("metadata.name={webhook_config}");
        Self {
            namespaces: reflect(Api::all(client.clone()), all(), trigger, slim),
            service_accounts: reflect(Api::all(client.clone()), all(), trigger, slim),
            services: reflect(Api::all(client.clone()), all(), trigger, slim),
            endpoint_slices: reflect(Api::all(client.clone()), all(), trigger, slim),
            pods: reflect(Api::all(client.clone()), all(), trigger, slim_pod),
            policies: reflect(Api::all(client.clone()), all(), trigger, slim),
            config_maps: reflect(Api::all(client.clone()), managed(), trigger, slim),
            secrets: reflect(Api::all(client.clone()), managed(), trigger, slim),
            roles: reflect(Api::all(client.clone()), managed(), trigger, slim),
            role_bindings: reflect(Api::all(client.clone()), managed(), trigger, slim),
            anchor: reflect(
                Api::namespaced(client.clone(), operator_namespace),
                watcher::Config::default().fields(&anchor_field),
                trigger,
                slim,
            ),
            webhook_config: reflect(
                Api::all(client.clone()),
                watcher::Config::default().fields(&webhook_field),
                trigger,
                slim,
            ),
        }
    }

    /// Waits until every watch has listed its objects once.
    pub async fn ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.namespaces.wait_until_ready().await?;
        self.service_accounts.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.endpoint_slices.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.policies.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        self.roles.wait_until_ready().await?;
        self.role_bindings.wait_until_ready().await?;
        self.anchor.wait_until_ready().await?;
        self.webhook_config.wait_until_ready().await
    }

    /// The cached Namespace `name`.
    pub fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(&ObjectRef::new(name))
    }

    /// Whether the cache holds the managed Secret `namespace/name`.
    pub fn has_secret(&self, namespace: &str, name: &str) -> bool {
        self.secrets
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// Whether ServiceAccount `namespace/name` is cached.
    pub fn has_service_account(&self, namespace: &str, name: &str) -> bool {
        self.service_accounts
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// The trust anchor Secret, as cached.
    pub fn anchor(&self) -> Option<Arc<Secret>> {
        self.anchor.state().into_iter().next()
    }

    /// The stores' contents now (pointers, not copies).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            cluster: Cluster::from_lists(
                self.namespaces.state(),
                self.service_accounts.state(),
                self.services.state(),
                self.endpoint_slices.state(),
                self.pods.state(),
                self.policies.state(),
            ),
            managed: Managed {
                config_maps: self.config_maps.state(),
                secrets: self.secrets.state(),
                roles: self.roles.state(),
                role_bindings: self.role_bindings.state(),
            },
            anchor: self.anchor(),
            webhook_config: self.webhook_config.state().into_iter().next(),
        }
    }
}

/// Starts a reflector of `api` into a new store; pokes `trigger` on every
/// change once listed. Watch errors are retried with backoff, never fatal.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: &Arc<Trigger>,
    slim: fn(&mut K),
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    let trigger = trigger.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => trigger.poke(),
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    store
}

/// Drops `managedFields`: large, and never read.
pub fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Keeps of a Pod only what the desired state reads: metadata (less
/// `managedFields`), its service account and whether it uses the host network.
pub fn slim_pod(pod: &mut Pod) {
    slim(pod);
    pod.status = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        service_account_name: spec.service_account_name,
        host_network: spec.host_network,
        ..Default::default()
    });
}
