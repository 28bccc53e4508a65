//! MeshPolicy checks, conflicts and precedence.
//!
//! Every policy is checked here even though the CRD schema refuses most bad
//! input: the local runtime reads manifests no API server validated, and a
//! reference to another Service can only be checked against the cluster.
//! Valid policies are converted once into the `routes.json` shapes; a
//! Service's policy is then merged section by section: the Service's policy,
//! else its namespace's, else the mesh default.

use std::collections::BTreeMap;

use weft_api::duration::parse_duration;
use weft_api::routes::{
    Authorization, AuthzDefault, InboundPolicy, LoadBalancer, MtlsMode, OutboundPolicy,
    OutlierDetection, Policy, Retries, Timeouts, WeightedBackend,
};
use weft_api::validate::{MAX_RETRY_ATTEMPTS, RETRY_CLASSES, is_dns_label};

use crate::cluster::{Cluster, ObjectKey};
use crate::crd::{
    AllowRule, AuthorizationSpec, AuthzDefaultSpec, LoadBalancerSpec, MeshPolicy, MeshPolicySpec,
    MtlsModeSpec, OutlierDetectionSpec, RetriesSpec, TimeoutsSpec,
};
use crate::scope::MeshConfig;

/// The `reason` of a policy's `Accepted` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    Invalid,
    TargetNotFound,
    Conflict,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::Invalid => "Invalid",
            Self::TargetNotFound => "TargetNotFound",
            Self::Conflict => "Conflict",
        }
    }
}

/// What the controller concluded about one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// Names the field and value at fault, or says what the policy applies to.
    pub message: String,
    /// `metadata.generation` the verdict is about.
    pub generation: Option<i64>,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        self.reason == Reason::Accepted
    }
}

/// A valid policy's sections, in `routes.json` form; `None` = not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sections {
    pub mtls: Option<MtlsMode>,
    pub authorization: Option<Authorization>,
    pub timeouts: Option<Timeouts>,
    pub retries: Option<Retries>,
    pub load_balancer: Option<LoadBalancer>,
    pub split: Option<Vec<WeightedBackend>>,
    pub outlier_detection: Option<OutlierDetection>,
}

/// Valid policies grouped by target: `(namespace, Service or None)`.
/// A refused policy whose security sections still apply carries its verdict.
type Candidates<'a> = BTreeMap<
    (String, Option<String>),
    Vec<(&'a ObjectKey, &'a MeshPolicy, Sections, Option<Verdict>)>,
>;

/// The outcome of checking every policy of the cluster.
#[derive(Debug, Default)]
pub struct Resolution {
    /// The accepted namespace-wide policy of each namespace.
    pub namespace: BTreeMap<String, Sections>,
    /// The accepted policy of each Service that has one.
    pub service: BTreeMap<ObjectKey, Sections>,
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
}

impl Resolution {
    /// Checks every policy and settles conflicts: among valid policies for
    /// the same target the oldest (then the first by name) wins.
    pub fn new(cluster: &Cluster, mesh: &MeshConfig) -> Self {
        let mut res = Self::default();
        let mut candidates: Candidates<'_> = BTreeMap::new();
        for (key, policy) in &cluster.policies {
            let generation = policy.metadata.generation;
            let target = policy.spec.target_ref.as_ref().map(|t| t.name.clone());
            let candidate = match check(key, &policy.spec, cluster, mesh) {
                Ok(sections) => Some((sections, None)),
                Err((reason, message)) => {
                    let refused = Verdict {
                        reason,
                        message,
                        generation,
                    };
                    // Fail closed: a policy refused for, say, a split to a
                    // missing Service still protects its target with its
                    // own mTLS and authorization, rather than leaving it to
                    // a laxer default.
                    match security_sections(key, &policy.spec, cluster, mesh) {
                        Some(sections) => Some((sections, Some(refused))),
                        None => {
                            res.verdicts.insert(key.clone(), refused);
                            None
                        }
                    }
                }
            };
            if let Some((sections, refused)) = candidate {
                candidates
                    .entry((key.namespace.clone(), target))
                    .or_default()
                    .push((key, policy, sections, refused));
            }
        }
        for ((namespace, target), mut group) in candidates {
            group.sort_by(|a, b| {
                let created = |p: &MeshPolicy| p.metadata.creation_timestamp.clone();
                created(a.1).cmp(&created(b.1)).then(a.0.cmp(b.0))
            });
            let winner = group[0].0.name.clone();
            let what = match &target {
                Some(svc) => format!("Service {namespace}/{svc}"),
                None => format!("every Service of namespace {namespace}"),
            };
            for (i, (key, policy, sections, refused)) in group.into_iter().enumerate() {
                let generation = policy.metadata.generation;
                let verdict = if let Some(refused) = refused {
                    if i == 0 {
                        insert(&mut res, &namespace, &target, sections);
                    }
                    Verdict {
                        message: format!(
                            "{}{}",
                            refused.message,
                            if i == 0 {
                                " (its mtls and authorization still apply)"
                            } else {
                                ""
                            }
                        ),
                        ..refused
                    }
                } else if i == 0 {
                    insert(&mut res, &namespace, &target, sections);
                    Verdict {
                        reason: Reason::Accepted,
                        message: format!("applies to {what}"),
                        generation,
                    }
                } else {
                    Verdict {
                        reason: Reason::Conflict,
                        message: format!(
                            "spec.targetRef: {what} already has the older policy {winner:?}"
                        ),
                        generation,
                    }
                };
                res.verdicts.insert(key.clone(), verdict);
            }
        }
        res
    }

    /// The policy of Service `key`: its own sections, else its namespace's,
    /// else the mesh default.
    pub fn policy_for(&self, key: &ObjectKey, mesh: &MeshConfig) -> Policy {
        let own = self.service.get(key);
        let ns = self.namespace.get(&key.namespace);
        merge(own, ns, mesh)
    }

    /// The inbound policy for pods of `namespace` that no Service covers.
    pub fn namespace_inbound(&self, namespace: &str, mesh: &MeshConfig) -> InboundPolicy {
        merge(None, self.namespace.get(namespace), mesh).inbound
    }
}

/// Records the winning sections of a target.
fn insert(res: &mut Resolution, namespace: &str, target: &Option<String>, sections: Sections) {
    match target {
        Some(svc) => {
            res.service.insert(ObjectKey::new(namespace, svc), sections);
        }
        None => {
            res.namespace.insert(namespace.to_owned(), sections);
        }
    }
}

/// The mTLS and authorization of a refused policy whose target exists,
/// when those two sections are valid and at least one is set.
fn security_sections(
    key: &ObjectKey,
    spec: &MeshPolicySpec,
    cluster: &Cluster,
    mesh: &MeshConfig,
) -> Option<Sections> {
    let target_ok = spec.target_ref.as_ref().is_none_or(|t| {
        t.kind == "Service"
            && cluster
                .services
                .contains_key(&ObjectKey::new(&key.namespace, &t.name))
    });
    let security = MeshPolicySpec {
        target_ref: spec.target_ref.clone(),
        mtls: spec.mtls.clone(),
        authorization: spec.authorization.clone(),
        ..Default::default()
    };
    let sections = check(key, &security, cluster, mesh).ok()?;
    (target_ok && (sections.mtls.is_some() || sections.authorization.is_some())).then_some(sections)
}

fn merge(own: Option<&Sections>, ns: Option<&Sections>, mesh: &MeshConfig) -> Policy {
    fn pick<T: Clone>(
        own: Option<&Sections>,
        ns: Option<&Sections>,
        f: impl Fn(&Sections) -> Option<&T>,
    ) -> Option<T> {
        own.and_then(&f).or_else(|| ns.and_then(&f)).cloned()
    }
    Policy {
        inbound: InboundPolicy {
            mtls: pick(own, ns, |s| s.mtls.as_ref()).unwrap_or(mesh.default_mtls),
            authorization: pick(own, ns, |s| s.authorization.as_ref()).unwrap_or_default(),
        },
        outbound: OutboundPolicy {
            timeouts: pick(own, ns, |s| s.timeouts.as_ref()).unwrap_or_default(),
            retries: pick(own, ns, |s| s.retries.as_ref()),
            load_balancer: pick(own, ns, |s| s.load_balancer.as_ref()).unwrap_or_default(),
            // A split names Services of the target's namespace: never inherited.
            split: own.and_then(|s| s.split.clone()).unwrap_or_default(),
            outlier_detection: pick(own, ns, |s| s.outlier_detection.as_ref()),
        },
    }
}

type Failure = (Reason, String);

fn invalid(field: &str, message: impl std::fmt::Display) -> Failure {
    (Reason::Invalid, format!("{field}: {message}"))
}

/// Checks one policy against the rules and the cluster and converts it.
pub fn check(
    key: &ObjectKey,
    spec: &MeshPolicySpec,
    cluster: &Cluster,
    mesh: &MeshConfig,
) -> Result<Sections, Failure> {
    if let Some(target) = &spec.target_ref {
        if target.kind != "Service" {
            return Err(invalid(
                "spec.targetRef.kind",
                format!("{:?} is not supported; only Service", target.kind),
            ));
        }
        if !cluster
            .services
            .contains_key(&ObjectKey::new(&key.namespace, &target.name))
        {
            return Err((
                Reason::TargetNotFound,
                format!(
                    "spec.targetRef.name: Service {}/{} does not exist",
                    key.namespace, target.name
                ),
            ));
        }
    }
    Ok(Sections {
        mtls: spec.mtls.as_ref().map(|m| match m.mode {
            MtlsModeSpec::Strict => MtlsMode::Strict,
            MtlsModeSpec::Permissive => MtlsMode::Permissive,
        }),
        authorization: spec
            .authorization
            .as_ref()
            .map(|a| authorization(a, mesh))
            .transpose()?,
        timeouts: spec.timeouts.as_ref().map(timeouts).transpose()?,
        retries: spec.retries.as_ref().map(retries).transpose()?,
        load_balancer: spec.load_balancer.map(|lb| match lb {
            LoadBalancerSpec::Ewma => LoadBalancer::Ewma,
            LoadBalancerSpec::RoundRobin => LoadBalancer::RoundRobin,
        }),
        split: spec
            .split
            .as_ref()
            .map(|s| split(key, spec, s, cluster))
            .transpose()?,
        outlier_detection: spec.outlier_detection.as_ref().map(outlier).transpose()?,
    })
}

fn millis(field: &str, value: &str) -> Result<u64, Failure> {
    let d = parse_duration(value).map_err(|e| invalid(field, e))?;
    match u64::try_from(d.as_millis()) {
        Ok(0) => Err(invalid(field, format!("{value:?} is zero"))),
        Ok(ms) => Ok(ms),
        Err(_) => Err(invalid(field, format!("{value:?} is too long"))),
    }
}

fn optional_millis(field: &str, value: &Option<String>) -> Result<Option<u64>, Failure> {
    value.as_deref().map(|v| millis(field, v)).transpose()
}

fn timeouts(t: &TimeoutsSpec) -> Result<Timeouts, Failure> {
    Ok(Timeouts {
        request_ms: optional_millis("spec.timeouts.request", &t.request)?,
        connect_ms: optional_millis("spec.timeouts.connect", &t.connect)?,
        idle_ms: optional_millis("spec.timeouts.idle", &t.idle)?,
    })
}

/// Retry budget when a policy sets none: retries may add 20% of requests,
/// plus 10 per second (Linkerd's and Envoy's usual defaults are similar).
const DEFAULT_BUDGET: (u32, u32) = (20, 10);

fn retries(r: &RetriesSpec) -> Result<Retries, Failure> {
    if !(1..=MAX_RETRY_ATTEMPTS).contains(&r.attempts) {
        return Err(invalid(
            "spec.retries.attempts",
            format!("{} is not within 1..={MAX_RETRY_ATTEMPTS}", r.attempts),
        ));
    }
    for (i, class) in r.retry_on.iter().enumerate() {
        let known = RETRY_CLASSES.contains(&class.as_str())
            || class.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
        if !known {
            return Err(invalid(
                &format!("spec.retries.retryOn[{i}]"),
                format!("{class:?} is not one of {RETRY_CLASSES:?} or a status code"),
            ));
        }
    }
    let (percent, min_per_second) = r
        .budget
        .as_ref()
        .map_or(DEFAULT_BUDGET, |b| (b.percent, b.min_per_second));
    if percent > 100 {
        return Err(invalid(
            "spec.retries.budget.percent",
            format!("{percent} is more than 100"),
        ));
    }
    Ok(Retries {
        attempts: r.attempts,
        retry_on: r.retry_on.clone(),
        per_try_timeout_ms: optional_millis("spec.retries.perTryTimeout", &r.per_try_timeout)?,
        budget_percent: percent,
        min_per_second,
    })
}

fn authorization(a: &AuthorizationSpec, mesh: &MeshConfig) -> Result<Authorization, Failure> {
    let mut out = Authorization {
        default: match a.default {
            AuthzDefaultSpec::Allow => AuthzDefault::Allow,
            AuthzDefaultSpec::Deny => AuthzDefault::Deny,
        },
        ..Default::default()
    };
    for (i, rule) in a.allow.iter().enumerate() {
        let field = format!("spec.authorization.allow[{i}]");
        match rule {
            AllowRule {
                service_account: Some(sa),
                namespace: None,
            } => allow_service_account(&mut out, &field, sa, mesh)?,
            AllowRule {
                service_account: None,
                namespace: Some(ns),
            } => {
                if !is_dns_label(ns) {
                    return Err(invalid(
                        &format!("{field}.namespace"),
                        format!("{ns:?} is not a namespace name"),
                    ));
                }
                out.allow_namespaces.push(ns.clone());
            }
            _ => {
                return Err(invalid(
                    &field,
                    "set exactly one of serviceAccount and namespace",
                ));
            }
        }
    }
    Ok(out)
}

fn allow_service_account(
    out: &mut Authorization,
    field: &str,
    value: &str,
    mesh: &MeshConfig,
) -> Result<(), Failure> {
    if value == "*" {
        out.allow_any_authenticated = true;
        return Ok(());
    }
    let bad = || {
        invalid(
            &format!("{field}.serviceAccount"),
            format!("{value:?} is not \"<namespace>/<name>\" or \"*\""),
        )
    };
    let (ns, sa) = value.split_once('/').ok_or_else(bad)?;
    if !is_dns_label(ns) {
        return Err(bad());
    }
    let id = weft_api::SpiffeId::workload(&mesh.trust_domain, ns, sa).map_err(|_| bad())?;
    out.allow_identities.push(id);
    Ok(())
}

fn split(
    key: &ObjectKey,
    spec: &MeshPolicySpec,
    backends: &[crate::crd::SplitBackend],
    cluster: &Cluster,
) -> Result<Vec<WeightedBackend>, Failure> {
    if spec.target_ref.is_none() {
        return Err(invalid(
            "spec.split",
            "needs a targetRef: a namespace-wide policy cannot split",
        ));
    }
    if !backends.iter().any(|b| b.weight > 0) {
        return Err(invalid("spec.split", "at least one weight must be above 0"));
    }
    let mut out: Vec<WeightedBackend> = Vec::with_capacity(backends.len());
    for (i, b) in backends.iter().enumerate() {
        let field = format!("spec.split[{i}].service");
        if out.iter().any(|o| o.service == b.service) {
            return Err(invalid(&field, format!("{:?} is listed twice", b.service)));
        }
        if !cluster
            .services
            .contains_key(&ObjectKey::new(&key.namespace, &b.service))
        {
            return Err((
                Reason::TargetNotFound,
                format!(
                    "{field}: Service {}/{} does not exist",
                    key.namespace, b.service
                ),
            ));
        }
        out.push(WeightedBackend {
            service: b.service.clone(),
            weight: b.weight,
        });
    }
    Ok(out)
}

fn outlier(o: &OutlierDetectionSpec) -> Result<OutlierDetection, Failure> {
    if o.consecutive_failures == 0 {
        return Err(invalid(
            "spec.outlierDetection.consecutiveFailures",
            "must be at least 1",
        ));
    }
    if o.max_ejected_percent > 100 {
        return Err(invalid(
            "spec.outlierDetection.maxEjectedPercent",
            format!("{} is more than 100", o.max_ejected_percent),
        ));
    }
    Ok(OutlierDetection {
        consecutive_failures: o.consecutive_failures,
        base_ejection_ms: millis(
            "spec.outlierDetection.baseEjectionTime",
            &o.base_ejection_time,
        )?,
        max_ejected_percent: o.max_ejected_percent,
    })
}
