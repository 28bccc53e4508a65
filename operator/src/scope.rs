//! Which namespaces and pods belong to the mesh, and who they are.
//!
//! `in_scope` is the injection rule (shared with the admission webhook):
//! `weft.dev/inject: enabled` on the Namespace or Pod, `disabled` on the Pod
//! wins, host-network pods and system namespaces never. Whether a pod *is*
//! meshed depends on the runtime: in a cluster only a pod that was injected
//! has a proxy; the local runtime runs a proxy for every pod in scope.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use weft_api::SpiffeId;
use weft_api::names::annotations::{INJECT, INJECTED};
use weft_api::routes::MtlsMode;

/// Namespaces never meshed besides the operator's own.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// How to tell a meshed pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshedPods {
    /// Pods carrying the `weft.dev/injected` annotation (a cluster).
    Injected,
    /// Pods in injection scope (the local runtime starts their proxies).
    InScope,
}

/// Mesh-wide settings the desired state depends on.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub trust_domain: String,
    /// The operator's namespace: never meshed.
    pub operator_namespace: String,
    /// mTLS mode where no MeshPolicy sets one.
    pub default_mtls: MtlsMode,
    pub meshed_pods: MeshedPods,
}

impl MeshConfig {
    /// Whether `pod` has a proxy.
    pub fn is_meshed(&self, ns: Option<&Namespace>, pod: &Pod) -> bool {
        match self.meshed_pods {
            MeshedPods::Injected => pod.annotations().contains_key(INJECTED),
            MeshedPods::InScope => self.in_scope(ns, pod),
        }
    }

    /// Whether injection applies to `pod` in namespace `ns`.
    pub fn in_scope(&self, ns: Option<&Namespace>, pod: &Pod) -> bool {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        self.scope(
            &pod.namespace().unwrap_or_default(),
            pod.annotations(),
            host_network,
            ns,
        )
        .is_ok()
    }

    /// The injection rule on a pod's parts (a Pod, or a workload's pod
    /// template): `Ok` to inject, else why not.
    pub fn scope(
        &self,
        pod_namespace: &str,
        annotations: &BTreeMap<String, String>,
        host_network: bool,
        ns: Option<&Namespace>,
    ) -> Result<(), &'static str> {
        if self.is_excluded_namespace(pod_namespace) {
            return Err("the namespace is never meshed");
        }
        if host_network {
            return Err("the pod uses the host network");
        }
        match annotations.get(INJECT).map(String::as_str) {
            Some("disabled") => Err("weft.dev/inject is disabled on the pod"),
            Some("enabled") => Ok(()),
            _ if ns.is_some_and(namespace_enabled) => Ok(()),
            _ => Err("weft.dev/inject is not enabled on the pod or its namespace"),
        }
    }

    pub fn is_excluded_namespace(&self, ns: &str) -> bool {
        ns == self.operator_namespace || SYSTEM_NAMESPACES.contains(&ns)
    }

    /// The SPIFFE ID of `service_account` in `namespace`.
    pub fn identity(&self, namespace: &str, service_account: &str) -> Option<SpiffeId> {
        SpiffeId::workload(&self.trust_domain, namespace, service_account).ok()
    }
}

/// Whether the Namespace carries `weft.dev/inject: enabled`.
pub fn namespace_enabled(ns: &Namespace) -> bool {
    ns.annotations().get(INJECT).map(String::as_str) == Some("enabled")
}

/// The pod's service account (`default` when unset, as the API server does).
pub fn service_account(pod: &Pod) -> &str {
    pod.spec.as_ref().map_or("default", service_account_of)
}

/// The service account of a pod spec (`default` when unset).
pub fn service_account_of(spec: &k8s_openapi::api::core::v1::PodSpec) -> &str {
    spec.service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}
