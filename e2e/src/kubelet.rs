//! What the local mesh's "kubelet" runs for each Pod of a directory of
//! manifests: the pod's address (`status.podIP`), whether it has a proxy
//! (the operator's own injection-scope rule, as the local runtime uses it),
//! and each container's command line, environment and user.
//!
//! Pure: from the operator's index of the manifests to plans, so it is
//! tested without root. Supported: `command` + `args` with `$(VAR)`
//! expansion, `env` with `value` or a `fieldRef` to `metadata.name`,
//! `metadata.namespace`, `status.podIP` or `spec.serviceAccountName`,
//! `securityContext.runAsUser` (container, then pod; default
//! [`APP_UID`]) and `ports[].containerPort` (waited for, like a TCP
//! readiness probe). Images are not pulled: a command is a binary of the
//! workspace (`weft-e2e-app`) or a program on the host's `PATH`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};
use weft_api::routes::MtlsMode;
use weft_operator::cluster::{Cluster, ObjectKey};
use weft_operator::scope::{MeshConfig, MeshedPods, service_account};

/// Containers run as this user unless the manifest says otherwise; never
/// the proxy's UID, so their traffic is intercepted.
pub const APP_UID: u32 = 1000;
/// Pod addresses: 198.18.0.0/16.
pub const POD_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 16);
/// Service virtual IPs: 198.19.0.0/16.
pub const SERVICE_NETWORK: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub ip: Ipv4Addr,
    /// In injection scope: gets `weft-proxy init` and `weft-proxy run`.
    pub meshed: bool,
    pub containers: Vec<ContainerPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    /// The command line; `argv[0]` as written in the manifest.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub uid: u32,
    /// Ports to wait for before the pod counts as started.
    pub ports: Vec<u16>,
}

impl PodPlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The injection rule exactly as `weft-operator local` applies it.
pub fn mesh_config() -> MeshConfig {
    MeshConfig {
        trust_domain: "cluster.local".into(),
        operator_namespace: "weft-system".into(),
        default_mtls: MtlsMode::Permissive,
        meshed_pods: MeshedPods::InScope,
    }
}

/// Whether `ip` is in `net`.
pub fn contains(net: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(net.1)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net.0) & mask
}

/// The plan of every Pod in `cluster`, sorted by namespace and name; an
/// error names the object and field that cannot be run here.
pub fn plan(cluster: &Cluster) -> Result<Vec<PodPlan>, String> {
    check_services(cluster)?;
    let mesh = mesh_config();
    let mut names = BTreeMap::new();
    let mut plans = Vec::new();
    for (key, pod) in &cluster.pods {
        let ns = cluster.namespaces.get(&key.namespace).map(|n| &**n);
        let plan = pod_plan(key, pod, mesh.in_scope(ns, pod))?;
        // Network namespaces are named after pods, so names must not repeat.
        if let Some(other) = names.insert(plan.name.clone(), key.to_string()) {
            return Err(format!(
                "Pod {key}: another Pod ({other}) has the same name; pod names must be unique across namespaces in the local mesh"
            ));
        }
        plans.push(plan);
    }
    Ok(plans)
}

fn check_services(cluster: &Cluster) -> Result<(), String> {
    for (key, svc) in &cluster.services {
        let spec = svc.spec.as_ref();
        let ips = spec
            .and_then(|s| s.cluster_ips.clone())
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips.iter().filter(|ip| ip.as_str() != "None") {
            let parsed: Option<Ipv4Addr> = ip.parse().ok();
            if !parsed.is_some_and(|ip| contains(SERVICE_NETWORK, ip)) {
                return Err(format!(
                    "Service {key}: spec.clusterIP {ip:?} is not in 198.19.0.0/16, the local mesh's Service network"
                ));
            }
        }
    }
    Ok(())
}

fn pod_plan(key: &ObjectKey, pod: &Pod, meshed: bool) -> Result<PodPlan, String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .ok_or_else(|| format!("Pod {key}: status.podIP is missing"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .ok()
        .filter(|ip| contains(POD_NETWORK, *ip))
        .ok_or_else(|| {
            format!("Pod {key}: status.podIP {ip:?} is not in 198.18.0.0/16, the local mesh's pod network")
        })?;
    let sa = service_account(pod).to_owned();
    let fields = [
        ("metadata.name", key.name.clone()),
        ("metadata.namespace", key.namespace.clone()),
        ("status.podIP", ip.to_string()),
        ("spec.serviceAccountName", sa.clone()),
    ];
    let spec = pod.spec.as_ref();
    let pod_uid = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.run_as_user);
    let containers = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| container_plan(key, i, c, &fields, pod_uid))
        .collect::<Result<_, _>>()?;
    Ok(PodPlan {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        service_account: sa,
        ip,
        meshed,
        containers,
    })
}

fn container_plan(
    key: &ObjectKey,
    index: usize,
    c: &Container,
    fields: &[(&str, String)],
    pod_uid: Option<i64>,
) -> Result<ContainerPlan, String> {
    let at = format!("Pod {key}: spec.containers[{index}] ({})", c.name);
    let mut env: Vec<(String, String)> = Vec::new();
    for (i, var) in c.env.iter().flatten().enumerate() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let path = from
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .ok_or_else(|| {
                        format!(
                            "{at}.env[{i}] ({}): only value and fieldRef are supported here",
                            var.name
                        )
                    })?;
                fields
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        format!(
                            "{at}.env[{i}] ({}): fieldRef {path:?} is not supported here",
                            var.name
                        )
                    })?
            }
            (Some(v), None) => expand(v, &env),
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    let argv: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| expand(a, &env))
        .collect();
    if argv.is_empty() {
        return Err(format!(
            "{at}: no command; images are not run here, so give the command line"
        ));
    }
    let uid = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or(pod_uid)
        .map_or(Ok(APP_UID), |u| {
            u32::try_from(u).map_err(|_| format!("{at}: runAsUser {u} is out of range"))
        })?;
    let ports = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    Ok(ContainerPlan {
        name: c.name.clone(),
        argv,
        env,
        uid,
        ports,
    })
}

/// Expands `$(VAR)` from `env` as the kubelet does: unknown references
/// stay as they are, `$$` is a literal `$`.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;
    use weft_operator::manifests::{Loaded, load_text};

    fn cluster(yaml: &str) -> Cluster {
        let mut loaded = Loaded::default();
        load_text(Path::new("test.yaml"), yaml, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.cluster
    }

    const POD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {weft.dev/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: backend-1, namespace: shop, labels: {app: backend}}
spec:
  serviceAccountName: backend
  containers:
  - name: app
    image: weft-e2e-app
    command: [weft-e2e-app, serve]
    args: ["--name=$(POD_NAME)", "$$(POD_NAME)", "$(NOPE)"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: GREETING, value: "hi $(POD_NAME)"}
    ports: [{containerPort: 8080}]
status: {podIP: 198.18.0.21}
"#;

    #[test]
    fn a_pod_becomes_a_plan() {
        let plans = plan(&cluster(POD)).unwrap();
        assert_eq!(
            plans,
            vec![PodPlan {
                namespace: "shop".into(),
                name: "backend-1".into(),
                service_account: "backend".into(),
                ip: Ipv4Addr::new(198, 18, 0, 21),
                meshed: true,
                containers: vec![ContainerPlan {
                    name: "app".into(),
                    argv: vec![
                        "weft-e2e-app".into(),
                        "serve".into(),
                        "--name=backend-1".into(),
                        "$(POD_NAME)".into(),
                        "$(NOPE)".into()
                    ],
                    env: vec![
                        ("POD_NAME".into(), "backend-1".into()),
                        ("GREETING".into(), "hi backend-1".into())
                    ],
                    uid: APP_UID,
                    ports: vec![8080],
                }],
            }]
        );
    }

    #[test]
    fn a_pod_outside_injection_scope_has_no_proxy() {
        let yaml = POD.replace("weft.dev/inject: enabled", "team: shop");
        assert!(!plan(&cluster(&yaml)).unwrap()[0].meshed);
    }

    #[test]
    fn addresses_outside_the_test_networks_are_refused() {
        let yaml = POD.replace("198.18.0.21", "10.0.0.1");
        let err = plan(&cluster(&yaml)).unwrap_err();
        assert!(
            err.contains("Pod shop/backend-1: status.podIP \"10.0.0.1\""),
            "{err}"
        );
        let svc = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
"#;
        let err = plan(&cluster(svc)).unwrap_err();
        assert!(
            err.contains("Service shop/web: spec.clusterIP \"10.96.0.1\""),
            "{err}"
        );
    }

    #[test]
    fn unsupported_env_sources_are_named() {
        let yaml = POD.replace(
            "{fieldRef: {fieldPath: metadata.name}}",
            "{fieldRef: {fieldPath: spec.nodeName}}",
        );
        let err = plan(&cluster(&yaml)).unwrap_err();
        assert!(
            err.contains("spec.containers[0] (app).env[0] (POD_NAME): fieldRef \"spec.nodeName\""),
            "{err}"
        );
    }

    #[test]
    fn networks() {
        assert!(contains(POD_NETWORK, Ipv4Addr::new(198, 18, 255, 1)));
        assert!(!contains(POD_NETWORK, Ipv4Addr::new(198, 19, 0, 1)));
        assert!(contains(SERVICE_NETWORK, Ipv4Addr::new(198, 19, 0, 20)));
    }
}
