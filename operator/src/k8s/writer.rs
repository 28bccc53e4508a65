//! One pass of the Kubernetes runtime: snapshot → desired state → plan →
//! API calls.
//!
//! The thin I/O layer over `plan` and `status`: it executes each action
//! with server-side apply (field manager `weft-operator`, forced), delete, a
//! status patch or (the webhook's `caBundle`) a JSON patch, one at a time,
//! and only while this replica leads. A
//! failing call is logged and counted and the pass goes on; nothing is
//! remembered as written, so the next pass (the next event, or the periodic
//! resync) plans it again. That is the retry: no crash, no hot loop.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::ca::{Authority, RenewReason};
use crate::cluster::{Cluster, ObjectKey};
use crate::crd::MeshPolicy;
use crate::desired::{Desired, desired};
use crate::policy::Verdict;

use super::anchor;
use super::metrics::Metrics;
use super::objects::{self, FIELD_MANAGER};
use super::plan::{self, Action, Inputs, Kind, Managed, Settings, Skip, Target};
use super::status::status_update;

/// Everything a pass reads: the watched cluster and what was written.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cluster: Cluster,
    pub managed: Managed,
    /// Secret `weft-trust-anchor` of the operator namespace.
    pub anchor: Option<Arc<Secret>>,
    /// The webhook's MutatingWebhookConfiguration (`--webhook-config`).
    pub webhook_config: Option<Arc<MutatingWebhookConfiguration>>,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub applied: usize,
    pub issued: usize,
    pub deleted: usize,
    pub statuses: usize,
    pub unchanged: usize,
    pub errors: usize,
}

/// Executes passes; remembers the generations it wrote and the parsed
/// trust anchor between them.
pub struct Writer {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    leader: watch::Receiver<bool>,
    written: BTreeMap<String, u64>,
    authority: anchor::AuthorityCache,
}

impl Writer {
    /// `instance` names this replica in Events (the pod name); `leader` says
    /// whether it may write.
    pub fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        instance: String,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            leader,
            written: BTreeMap::new(),
            authority: anchor::AuthorityCache::default(),
        }
    }

    /// The generation last written for each namespace.
    pub fn written(&self) -> &BTreeMap<String, u64> {
        &self.written
    }

    fn leading(&self) -> bool {
        *self.leader.borrow()
    }

    /// Brings the cluster to the desired state of `snapshot` at `now`.
    pub async fn pass(&mut self, snapshot: &Snapshot, now: SystemTime) -> Report {
        let started = Instant::now();
        let mut report = Report::default();
        let authority = self.authority(snapshot, now).await;
        let desired = desired(&snapshot.cluster, &self.settings.mesh);
        let plan = plan::plan(&Inputs {
            desired: &desired,
            managed: &snapshot.managed,
            authority: authority.as_ref(),
            written: &self.written,
            settings: &self.settings,
            now,
            webhook_config: snapshot.webhook_config.as_deref(),
        });
        let mut near_expiry = self.report_skips(&plan.skipped, snapshot, now, &mut report);
        for action in plan.actions {
            if !self.leading() {
                tracing::info!("no longer the leader; pass abandoned");
                return report;
            }
            near_expiry += self
                .execute(action, authority.as_ref(), snapshot, now, &mut report)
                .await;
        }
        self.statuses(snapshot, &desired, now, &mut report).await;
        self.metrics.certificates_near_expiry.set(near_expiry);
        self.metrics.reconciles.inc();
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        report
    }

    /// The authority of the anchor Secret, parsed once per version; created
    /// when the Secret is missing. `None` (logged, counted) when unusable.
    async fn authority(&mut self, snapshot: &Snapshot, now: SystemTime) -> Option<Authority> {
        let namespace = self.settings.mesh.operator_namespace.clone();
        let Some(secret) = &snapshot.anchor else {
            if !self.leading() {
                return None;
            }
            return match anchor::create(self.client.clone(), &namespace, now).await {
                Ok(authority) => {
                    self.metrics.written(Kind::Secret.as_str(), "create");
                    Some(authority)
                }
                Err(e) => self.anchor_error(&e),
            };
        };
        match self.authority.authority(secret, now) {
            Ok(authority) => Some(authority),
            Err(e) => self.anchor_error(&e),
        }
    }

    fn anchor_error(&self, e: &anchor::AnchorSecretError) -> Option<Authority> {
        tracing::error!(error = %e, "no usable trust anchor; certificates are not issued");
        self.metrics.error("TrustAnchor");
        None
    }

    /// Logs what the plan left alone; returns how many identities that could
    /// not be issued are near expiry.
    fn report_skips(
        &self,
        skipped: &[Skip],
        snapshot: &Snapshot,
        now: SystemTime,
        report: &mut Report,
    ) -> i64 {
        let mut near_expiry = 0;
        for skip in skipped {
            match skip {
                Skip::Unchanged(_) => report.unchanged += 1,
                Skip::Unwritable(e) => {
                    tracing::error!(error = %e, "routing table not written; the last one written stays");
                    if let objects::EncodeError::TooLarge { namespace, .. } = e {
                        let labels = super::metrics::NamespaceLabels {
                            namespace: namespace.clone(),
                        };
                        self.metrics.routes_too_large.get_or_create(&labels).inc();
                    }
                    report.errors += 1;
                }
                Skip::BadIdentity { .. } => tracing::error!(%skip, "identity not issued"),
                Skip::NoAuthority(target) => {
                    near_expiry += i64::from(self.near_expiry(target, snapshot, now).is_some());
                }
            }
        }
        near_expiry
    }

    /// Runs one action; returns 1 when it was an identity that could not be
    /// renewed and is near expiry.
    async fn execute(
        &mut self,
        action: Action,
        authority: Option<&Authority>,
        snapshot: &Snapshot,
        now: SystemTime,
        report: &mut Report,
    ) -> i64 {
        let target = action.target();
        let result = match action {
            Action::ApplyRoutes {
                generation,
                config_map,
            } => {
                let result = self.apply(&*config_map).await;
                if result.is_ok() {
                    self.written.insert(target.namespace.clone(), generation);
                }
                result
            }
            Action::ApplyRole(role) => self.apply(&*role).await,
            Action::ApplyRoleBinding(binding) => self.apply(&*binding).await,
            Action::Issue {
                namespace,
                service_account,
                reason,
            } => {
                let issued = self
                    .issue(
                        authority,
                        &namespace,
                        &service_account,
                        &reason,
                        now,
                        report,
                    )
                    .await;
                return match issued {
                    Ok(()) => 0,
                    Err(e) => {
                        self.issue_failed(&target, &service_account, &e, snapshot, now)
                            .await
                    }
                };
            }
            Action::Delete(target) => {
                let result = self.delete(&target).await;
                if result.is_ok() {
                    report.deleted += 1;
                    self.metrics.written(target.kind.as_str(), "delete");
                    tracing::info!(object = %target, "stale object deleted");
                }
                return self.failed(&target, result, report);
            }
            Action::PatchCaBundle {
                name,
                webhooks,
                patch,
            } => {
                let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                };
                let result = api.patch(&name, &params, &Patch::Json::<()>(patch)).await;
                if result.is_ok() {
                    report.applied += 1;
                    self.metrics.written(target.kind.as_str(), "patch");
                    tracing::info!(object = %target, webhooks = ?webhooks, "caBundle set to the trust bundle");
                }
                return self.failed(&target, result.map(|_| ()), report);
            }
        };
        if result.is_ok() {
            report.applied += 1;
            self.metrics.written(target.kind.as_str(), "apply");
            tracing::debug!(object = %target, "applied");
        }
        self.failed(&target, result, report)
    }

    fn failed(&self, target: &Target, result: Result<(), kube::Error>, report: &mut Report) -> i64 {
        if let Err(e) = result {
            tracing::warn!(object = %target, error = %e, "write failed; retried on the next pass");
            self.metrics.error(target.kind.as_str());
            report.errors += 1;
        }
        0
    }

    async fn apply<K>(&self, obj: &K) -> Result<(), kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
        K: Clone + Debug + Serialize + DeserializeOwned,
    {
        let api: Api<K> =
            Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
            .await?;
        Ok(())
    }

    async fn delete(&self, target: &Target) -> Result<(), kube::Error> {
        let (client, ns, name) = (self.client.clone(), &target.namespace, &target.name);
        let result = match target.kind {
            Kind::ConfigMap => delete::<ConfigMap>(client, ns, name).await,
            Kind::Secret => delete::<Secret>(client, ns, name).await,
            Kind::Role => delete::<Role>(client, ns, name).await,
            Kind::RoleBinding => delete::<RoleBinding>(client, ns, name).await,
            Kind::MutatingWebhookConfiguration => Api::<MutatingWebhookConfiguration>::all(client)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
        };
        match result {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            other => other,
        }
    }

    async fn issue(
        &mut self,
        authority: Option<&Authority>,
        namespace: &str,
        service_account: &str,
        reason: &RenewReason,
        now: SystemTime,
        report: &mut Report,
    ) -> Result<(), String> {
        let authority = authority.ok_or("no trust anchor")?;
        let mesh = &self.settings.mesh;
        let issued = authority
            .issue(
                &mesh.trust_domain,
                namespace,
                service_account,
                now,
                self.settings.cert_lifetime,
            )
            .map_err(|e| e.to_string())?;
        let secret = objects::identity_secret(namespace, service_account, &issued);
        self.apply(&secret).await.map_err(|e| e.to_string())?;
        tracing::info!(id = %issued.id, %reason, "certificate issued");
        self.metrics
            .certificates_issued
            .get_or_create(&super::metrics::ReasonLabels {
                reason: reason.metric_label(),
            })
            .inc();
        self.metrics.written(Kind::Secret.as_str(), "apply");
        report.issued += 1;
        Ok(())
    }

    /// Counts and reports a failed issuance: an Event on the service account
    /// and, when the current certificate is near expiry, one on the Secret.
    async fn issue_failed(
        &self,
        target: &Target,
        service_account: &str,
        error: &str,
        snapshot: &Snapshot,
        now: SystemTime,
    ) -> i64 {
        tracing::warn!(object = %target, error, "issuing the certificate failed; retried on the next pass");
        self.metrics.error(Kind::Secret.as_str());
        let account = service_account_ref(&snapshot.cluster, &target.namespace, service_account);
        self.event(
            &account,
            EventType::Warning,
            "IssueFailed",
            error.to_owned(),
        )
        .await;
        let Some(not_after) = self.near_expiry(target, snapshot, now) else {
            return 0;
        };
        let note = format!(
            "the certificate expires at {} and could not be renewed: {error}",
            objects::rfc3339(not_after)
        );
        let secret = secret_ref(&target.namespace, &target.name);
        self.event(&secret, EventType::Warning, "CertificateNearExpiry", note)
            .await;
        1
    }

    fn near_expiry(
        &self,
        target: &Target,
        snapshot: &Snapshot,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let secret = snapshot.managed.secrets.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(&target.namespace)
                && s.name_any() == target.name
        });
        plan::near_expiry(secret.map(|s| &**s), now, self.settings.cert_lifetime)
    }

    /// Writes every MeshPolicy status that changed; an Event for each change
    /// of state.
    async fn statuses(
        &self,
        snapshot: &Snapshot,
        desired: &Desired,
        now: SystemTime,
        report: &mut Report,
    ) {
        let now = objects::rfc3339(now);
        for (key, verdict) in &desired.verdicts {
            let Some(policy) = snapshot.cluster.policies.get(key) else {
                continue;
            };
            let Some(update) = status_update(policy, verdict, &now) else {
                continue;
            };
            if !self.leading() {
                return;
            }
            let api: Api<MeshPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api
                .patch_status(&key.name, &params, &Patch::Merge(&update.patch))
                .await
            {
                Ok(_) => {
                    report.statuses += 1;
                    self.metrics.written("MeshPolicy", "patch_status");
                    if update.transition {
                        self.policy_event(policy, key, verdict).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(policy = %key, error = %e, "status write failed; retried on the next pass");
                    self.metrics.error("MeshPolicy");
                    report.errors += 1;
                }
            }
        }
    }

    async fn policy_event(&self, policy: &MeshPolicy, key: &ObjectKey, verdict: &Verdict) {
        let kind = if verdict.accepted() {
            tracing::info!(policy = %key, message = %verdict.message, "MeshPolicy accepted");
            EventType::Normal
        } else {
            tracing::warn!(policy = %key, reason = verdict.reason.as_str(), message = %verdict.message, "MeshPolicy not accepted");
            EventType::Warning
        };
        let reference = policy.object_ref(&());
        self.event(
            &reference,
            kind,
            verdict.reason.as_str(),
            verdict.message.clone(),
        )
        .await;
    }

    async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        match self.recorder.publish(&event, regarding).await {
            Ok(()) => self.metrics.written("Event", "create"),
            Err(e) => tracing::debug!(error = %e, "publishing an event failed"),
        }
    }
}

async fn delete<K>(client: Client, namespace: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    Api::<K>::namespaced(client, namespace)
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

fn service_account_ref(cluster: &Cluster, namespace: &str, name: &str) -> ObjectReference {
    let uid = cluster
        .service_accounts
        .get(&ObjectKey::new(namespace, name))
        .and_then(|sa| sa.uid());
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ServiceAccount".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        uid,
        ..Default::default()
    }
}

fn secret_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}
