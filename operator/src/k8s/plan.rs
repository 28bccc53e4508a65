//! What to write: the desired state against the objects already written.
//!
//! Pure: from the desired state, the managed objects as cached, the
//! authority and the time, it lists the API actions of one pass — apply
//! this, issue that, delete the other — and what it skipped and why. The
//! writer executes the actions; nothing here touches the API, so every
//! decision (unchanged digest, generation, gzip, renewal, stale objects) is
//! table-tested.
//!
//! Only objects labelled `app.kubernetes.io/managed-by=weft`, with the names
//! the operator uses, outside the operator namespace, are ever deleted.
//!
//! The one object the operator writes but does not own is the webhook's
//! MutatingWebhookConfiguration (installed by the chart): of it, only
//! `webhooks[*].clientConfig.caBundle` is changed, with a JSON patch that
//! tests each webhook's name at its index, so a list reordered since it was
//! read fails the write (422) instead of changing the wrong entry, and no
//! entry is ever created.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use weft_api::names::{IDENTITY_SECRET_PREFIX, ROUTES_CONFIGMAP, identity_secret_name};

use crate::ca::{Authority, ExistingIdentity, RenewReason, cert_not_after, renewal_due};
use crate::desired::Desired;
use crate::scope::MeshConfig;

use super::objects::{
    self, DIGEST_ANNOTATION, EncodeError, GENERATION_ANNOTATION, Limits, ROUTES_READER, is_managed,
};

/// The longest object name the API server accepts (a DNS subdomain).
const MAX_NAME: usize = 253;
/// A certificate with less than this fraction of its lifetime left is
/// reported as near expiry.
pub const NEAR_EXPIRY_FRACTION: f64 = 0.1;

/// What the Kubernetes runtime is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mesh: MeshConfig,
    pub cert_lifetime: Duration,
    pub renew_at: f64,
    pub limits: Limits,
}

/// The objects the operator wrote, as cached (labelled managed-by=weft).
#[derive(Debug, Clone, Default)]
pub struct Managed {
    pub config_maps: Vec<Arc<ConfigMap>>,
    pub secrets: Vec<Arc<Secret>>,
    pub roles: Vec<Arc<Role>>,
    pub role_bindings: Vec<Arc<RoleBinding>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
    Role,
    RoleBinding,
    /// Cluster-scoped: its target's namespace is empty.
    MutatingWebhookConfiguration,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
            Self::Role => "Role",
            Self::RoleBinding => "RoleBinding",
            Self::MutatingWebhookConfiguration => "MutatingWebhookConfiguration",
        }
    }
}

/// One object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Target {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace.as_str() {
            "" => write!(f, "{} {}", self.kind.as_str(), self.name),
            ns => write!(f, "{} {ns}/{}", self.kind.as_str(), self.name),
        }
    }
}

/// One API action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Server-side apply of a `weft-routes` ConfigMap at `generation`.
    ApplyRoutes {
        generation: u64,
        config_map: Box<ConfigMap>,
    },
    ApplyRole(Box<Role>),
    ApplyRoleBinding(Box<RoleBinding>),
    /// Issue a certificate and apply its `weft-identity-<sa>` Secret.
    Issue {
        namespace: String,
        service_account: String,
        reason: RenewReason,
    },
    Delete(Target),
    /// JSON patch of the `caBundle` of these webhooks (by name) of a
    /// MutatingWebhookConfiguration.
    PatchCaBundle {
        name: String,
        webhooks: Vec<String>,
        patch: json_patch::Patch,
    },
}

impl Action {
    pub fn target(&self) -> Target {
        let of = |kind, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            Target::new(
                kind,
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default(),
            )
        };
        match self {
            Self::ApplyRoutes { config_map, .. } => of(Kind::ConfigMap, &config_map.metadata),
            Self::ApplyRole(r) => of(Kind::Role, &r.metadata),
            Self::ApplyRoleBinding(b) => of(Kind::RoleBinding, &b.metadata),
            Self::Issue {
                namespace,
                service_account,
                ..
            } => Target::new(
                Kind::Secret,
                namespace,
                &identity_secret_name(service_account),
            ),
            Self::Delete(target) => target.clone(),
            Self::PatchCaBundle { name, .. } => {
                Target::new(Kind::MutatingWebhookConfiguration, "", name)
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApplyRoutes { generation, .. } => {
                write!(f, "apply {} generation {generation}", self.target())
            }
            Self::ApplyRole(_) | Self::ApplyRoleBinding(_) => write!(f, "apply {}", self.target()),
            Self::Issue { reason, .. } => write!(f, "issue {} ({reason})", self.target()),
            Self::Delete(target) => write!(f, "delete {target}"),
            Self::PatchCaBundle { webhooks, .. } => write!(
                f,
                "patch caBundle of {} (webhooks {})",
                self.target(),
                webhooks.join(", ")
            ),
        }
    }
}

/// Something the plan leaves alone, and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// Already as desired.
    Unchanged(Target),
    /// The routing table cannot be stored; the last written one stays.
    Unwritable(EncodeError),
    /// No certificate can be issued: the name or identity is invalid.
    BadIdentity {
        namespace: String,
        service_account: String,
        reason: &'static str,
    },
    /// No certificate can be issued: there is no usable trust anchor.
    NoAuthority(Target),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unchanged(t) => write!(f, "unchanged {t}"),
            Self::Unwritable(e) => write!(f, "unwritable: {e}"),
            Self::BadIdentity {
                namespace,
                service_account,
                reason,
            } => write!(f, "bad identity {namespace}/{service_account}: {reason}"),
            Self::NoAuthority(t) => write!(f, "no trust anchor for {t}"),
        }
    }
}

/// The actions of one pass, in the order to run them: the webhook's
/// `caBundle`, RBAC, identities, routing tables, then deletions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub skipped: Vec<Skip>,
}

impl Plan {
    /// One line per action and skip, for logs and tests.
    pub fn lines(&self) -> Vec<String> {
        let actions = self.actions.iter().map(ToString::to_string);
        actions
            .chain(self.skipped.iter().map(ToString::to_string))
            .collect()
    }
}

/// Everything a plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub desired: &'a Desired,
    pub managed: &'a Managed,
    /// `None` when the trust anchor is missing or unusable.
    pub authority: Option<&'a Authority>,
    /// The generation this process last wrote, per namespace.
    pub written: &'a BTreeMap<String, u64>,
    pub settings: &'a Settings,
    pub now: SystemTime,
    /// The webhook's MutatingWebhookConfiguration, when it exists.
    pub webhook_config: Option<&'a MutatingWebhookConfiguration>,
}

/// The actions that bring the managed objects to the desired state.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let index = Index::new(inputs.managed);
    let mut plan = Plan::default();
    if let Some(config) = inputs.webhook_config {
        let target = Target::new(Kind::MutatingWebhookConfiguration, "", &config.name_any());
        match inputs.authority {
            None => plan.skipped.push(Skip::NoAuthority(target)),
            Some(authority) => match ca_bundle_patch(config, authority.bundle_pem()) {
                Some(action) => plan.actions.push(action),
                None => plan.skipped.push(Skip::Unchanged(target)),
            },
        }
    }
    for ns in inputs.desired.tables.keys() {
        rbac(ns, &index, &mut plan);
    }
    identities(inputs, &index, &mut plan);
    for (ns, table) in &inputs.desired.tables {
        routes(inputs, ns, table, &index, &mut plan);
    }
    stale(inputs, &index, &mut plan);
    plan
}

/// The patch that sets the `caBundle` of every webhook of `config` whose
/// bundle is not `bundle_pem`: for each, a `test` of its name at its index,
/// then an `add` (set, present or not) of the base64 bundle. `None` when all
/// are current (or there are none).
pub fn ca_bundle_patch(config: &MutatingWebhookConfiguration, bundle_pem: &str) -> Option<Action> {
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation, TestOperation};
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle_pem);
    let mut ops = Vec::new();
    let mut webhooks = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        let current = webhook.client_config.ca_bundle.as_ref().map(|b| &b.0[..]);
        if current == Some(bundle_pem.as_bytes()) {
            continue;
        }
        let index = i.to_string();
        ops.push(PatchOperation::Test(TestOperation {
            path: PointerBuf::from_tokens(["webhooks", &index, "name"]),
            value: webhook.name.clone().into(),
        }));
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["webhooks", &index, "clientConfig", "caBundle"]),
            value: encoded.clone().into(),
        }));
        webhooks.push(webhook.name.clone());
    }
    (!ops.is_empty()).then(|| Action::PatchCaBundle {
        name: config.name_any(),
        webhooks,
        patch: json_patch::Patch(ops),
    })
}

/// The managed objects by namespace and name; only labelled ones.
struct Index<'a> {
    config_maps: BTreeMap<(&'a str, &'a str), &'a ConfigMap>,
    secrets: BTreeMap<(&'a str, &'a str), &'a Secret>,
    roles: BTreeMap<(&'a str, &'a str), &'a Role>,
    role_bindings: BTreeMap<(&'a str, &'a str), &'a RoleBinding>,
}

impl<'a> Index<'a> {
    fn new(managed: &'a Managed) -> Self {
        Self {
            config_maps: by_key(&managed.config_maps),
            secrets: by_key(&managed.secrets),
            roles: by_key(&managed.roles),
            role_bindings: by_key(&managed.role_bindings),
        }
    }
}

fn by_key<K: kube::Resource>(list: &[Arc<K>]) -> BTreeMap<(&str, &str), &K> {
    list.iter()
        .filter(|o| is_managed(o.meta()))
        .filter_map(|o| {
            let meta = o.meta();
            Some(((meta.namespace.as_deref()?, meta.name.as_deref()?), &**o))
        })
        .collect()
}

fn rbac(ns: &str, index: &Index<'_>, plan: &mut Plan) {
    let role = objects::routes_reader_role(ns);
    match index.roles.get(&(ns, ROUTES_READER)) {
        Some(current) if current.rules == role.rules => plan
            .skipped
            .push(Skip::Unchanged(Target::new(Kind::Role, ns, ROUTES_READER))),
        _ => plan.actions.push(Action::ApplyRole(Box::new(role))),
    }
    let binding = objects::routes_reader_binding(ns);
    match index.role_bindings.get(&(ns, ROUTES_READER)) {
        Some(current)
            if current.role_ref == binding.role_ref && current.subjects == binding.subjects =>
        {
            plan.skipped.push(Skip::Unchanged(Target::new(
                Kind::RoleBinding,
                ns,
                ROUTES_READER,
            )))
        }
        _ => plan
            .actions
            .push(Action::ApplyRoleBinding(Box::new(binding))),
    }
}

fn identities(inputs: &Inputs<'_>, index: &Index<'_>, plan: &mut Plan) {
    let trust_domain = &inputs.settings.mesh.trust_domain;
    for (ns, sa) in &inputs.desired.identities {
        let name = identity_secret_name(sa);
        let bad = |reason| Skip::BadIdentity {
            namespace: ns.clone(),
            service_account: sa.clone(),
            reason,
        };
        if name.len() > MAX_NAME {
            plan.skipped
                .push(bad("the Secret name would be longer than 253 characters"));
            continue;
        }
        let Ok(id) = weft_api::SpiffeId::workload(trust_domain, ns, sa) else {
            plan.skipped.push(bad("not a valid SPIFFE ID"));
            continue;
        };
        let target = Target::new(Kind::Secret, ns, &name);
        let Some(authority) = inputs.authority else {
            plan.skipped.push(Skip::NoAuthority(target));
            continue;
        };
        let existing = existing_identity(index.secrets.get(&(ns.as_str(), name.as_str())).copied());
        match renewal_due(
            &existing,
            &id,
            authority,
            inputs.now,
            inputs.settings.renew_at,
        ) {
            Some(reason) => plan.actions.push(Action::Issue {
                namespace: ns.clone(),
                service_account: sa.clone(),
                reason,
            }),
            None => plan.skipped.push(Skip::Unchanged(target)),
        }
    }
}

/// The identity stored in `secret` (all missing without one).
pub fn existing_identity(secret: Option<&Secret>) -> ExistingIdentity<'_> {
    let data = secret.and_then(|s| s.data.as_ref());
    ExistingIdentity::from_entries(|key| data?.get(key).map(|b| b.0.as_slice()))
}

fn routes(
    inputs: &Inputs<'_>,
    ns: &str,
    table: &weft_api::RoutesTable,
    index: &Index<'_>,
    plan: &mut Plan,
) {
    let current = index.config_maps.get(&(ns, ROUTES_CONFIGMAP)).copied();
    let annotation = |key: &str| current.and_then(|cm| cm.annotations().get(key).cloned());
    if annotation(DIGEST_ANNOTATION).is_some() && annotation(DIGEST_ANNOTATION) == table.digest {
        plan.skipped.push(Skip::Unchanged(Target::new(
            Kind::ConfigMap,
            ns,
            ROUTES_CONFIGMAP,
        )));
        return;
    }
    let stored = annotation(GENERATION_ANNOTATION).and_then(|g| g.parse().ok());
    let generation = next_generation(stored, inputs.written.get(ns).copied(), inputs.now);
    let mut table = table.clone();
    table.generation = generation;
    match objects::routes_config_map(&table, inputs.settings.limits) {
        Ok(cm) => plan.actions.push(Action::ApplyRoutes {
            generation,
            config_map: Box::new(cm),
        }),
        Err(e) => plan.skipped.push(Skip::Unwritable(e)),
    }
}

/// The generation of the next table written: above the one stored and the
/// one this process last wrote, and at least the time in Unix milliseconds,
/// so it keeps growing even when the ConfigMap was deleted or the operator
/// restarted.
pub fn next_generation(stored: Option<u64>, written: Option<u64>, now: SystemTime) -> u64 {
    let previous = stored.max(written).map_or(0, |g| g.saturating_add(1));
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    previous.max(millis)
}

/// Managed objects no longer wanted: in namespaces that left the mesh, and
/// identities of service accounts that are gone.
fn stale(inputs: &Inputs<'_>, index: &Index<'_>, plan: &mut Plan) {
    let operator_ns = inputs.settings.mesh.operator_namespace.as_str();
    let meshed = |ns: &str| ns == operator_ns || inputs.desired.tables.contains_key(ns);
    let mut delete = BTreeSet::new();
    for &(ns, name) in index.config_maps.keys() {
        if name == ROUTES_CONFIGMAP && !meshed(ns) {
            delete.insert(Target::new(Kind::ConfigMap, ns, name));
        }
    }
    for (kind, keys) in [
        (Kind::Role, index.roles.keys().collect::<Vec<_>>()),
        (Kind::RoleBinding, index.role_bindings.keys().collect()),
    ] {
        for &&(ns, name) in &keys {
            if name == ROUTES_READER && !meshed(ns) {
                delete.insert(Target::new(kind, ns, name));
            }
        }
    }
    for &(ns, name) in index.secrets.keys() {
        let Some(sa) = name.strip_prefix(IDENTITY_SECRET_PREFIX) else {
            continue;
        };
        let wanted = inputs
            .desired
            .identities
            .contains(&(ns.to_owned(), sa.to_owned()));
        if ns != operator_ns && !wanted {
            delete.insert(Target::new(Kind::Secret, ns, name));
        }
    }
    plan.actions.extend(delete.into_iter().map(Action::Delete));
}

/// When `secret`'s certificate expires, if less than a tenth of `lifetime`
/// is left at `now` (or it has expired).
pub fn near_expiry(
    secret: Option<&Secret>,
    now: SystemTime,
    lifetime: Duration,
) -> Option<SystemTime> {
    let cert = existing_identity(secret).cert_pem?;
    let not_after = cert_not_after(cert).ok()?;
    let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
    (left.as_secs_f64() < lifetime.as_secs_f64() * NEAR_EXPIRY_FRACTION).then_some(not_after)
}
