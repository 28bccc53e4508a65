//! Sidecar injection: one pure function that turns a pod (or a workload's
//! pod template) into a meshed one. The admission webhook and
//! `weft-operator inject` both call it, so they give the same result.
//!
//! It adds the `weft-init` init container (iptables, NET_ADMIN and NET_RAW
//! only), the `weft-proxy` container (as a native sidecar — an init
//! container with `restartPolicy: Always` — where the cluster supports it,
//! else first among the containers with a `postStart` hook that waits for
//! readiness, so the app starts after the proxy), the routes and identity
//! volumes, and the `weft.dev/injected` annotation that makes a second pass
//! change nothing. Annotations on the pod override resources, log level,
//! access logs and skipped ports; an invalid one refuses the pod with a
//! message naming it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, Namespace,
    ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_api::names::annotations::{INJECTED, OPAQUE_PORTS};
use weft_api::names::{
    ADMIN_PORT, IDENTITY_DIR, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, ROUTES_CONFIGMAP, ROUTES_DIR,
    env, identity_secret_name,
};
use weft_api::net::{parse_cidr, parse_list, parse_port_range};

use crate::scope::MeshConfig;

pub const PROXY_CONTAINER: &str = "weft-proxy";
pub const INIT_CONTAINER: &str = "weft-init";
const ROUTES_VOLUME: &str = "weft-routes";
const IDENTITY_VOLUME: &str = "weft-identity";
/// iptables takes a lock in /run; the root filesystem is read-only.
const XTABLES_VOLUME: &str = "weft-xtables-lock";
/// Tells `kubectl logs` and `exec` which container is the app's.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// Annotations that override the proxy's settings for one pod.
pub mod overrides {
    pub const CPU_REQUEST: &str = "weft.dev/proxy-cpu-request";
    pub const CPU_LIMIT: &str = "weft.dev/proxy-cpu-limit";
    pub const MEMORY_REQUEST: &str = "weft.dev/proxy-memory-request";
    pub const MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
    pub const LOG_LEVEL: &str = "weft.dev/proxy-log-level";
    pub const SKIP_INBOUND_PORTS: &str = "weft.dev/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "weft.dev/skip-outbound-ports";
    pub const SKIP_SUBNETS: &str = "weft.dev/skip-subnets";
    /// `json` turns the proxy's access log on (`WEFT_ACCESS_LOG`), `off` off.
    pub const ACCESS_LOG: &str = "weft.dev/access-log";
}

/// The proxy's access log setting (`weft-proxy run --access-log`).
const ACCESS_LOG_ENV: &str = "WEFT_ACCESS_LOG";

/// The proxy's resources; `None` leaves that field unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// How pods are injected: images, version, sidecar mode and defaults.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub proxy_image: String,
    /// The image holding `weft-proxy init` and iptables.
    pub init_image: String,
    /// Written into `weft.dev/injected`.
    pub version: String,
    /// Kubernetes ≥ 1.29: the proxy as a native sidecar.
    pub native_sidecar: bool,
    pub resources: Resources,
    pub log_level: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION").to_owned();
        Self {
            proxy_image: format!("weft-proxy:{version}"),
            init_image: format!("weft-init:{version}"),
            version,
            native_sidecar: true,
            resources: Resources {
                cpu_request: Some("10m".into()),
                cpu_limit: None,
                memory_request: Some("20Mi".into()),
                memory_limit: Some("128Mi".into()),
            },
            log_level: "info".into(),
        }
    }
}

/// What to add to a pod, decided from its typed spec and applied to its
/// JSON: whatever the pod holds that this build's Kubernetes types do not
/// know (fields of a newer API server) is kept as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// The pod's annotations after injection.
    pub annotations: BTreeMap<String, String>,
    /// Prepended to `spec.initContainers`, in order.
    pub init_containers: Vec<Container>,
    /// Prepended to `spec.containers` (the classic sidecar).
    pub containers: Vec<Container>,
    /// Appended to `spec.volumes`.
    pub volumes: Vec<Volume>,
}

/// Whether and how to inject.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Inject(Injection),
    /// Left as it is, and why.
    Skip(&'static str),
}

/// An annotation injection refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} {reason}")]
pub struct InjectError {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

/// Whether to apply the namespace rule (the webhook) or inject whatever
/// is not opted out (`weft-operator inject`, which a user runs on purpose).
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Namespace(Option<&'a Namespace>),
    Manual,
}

/// Decides the injection of the pod described by `meta` and `spec` in `namespace`.
pub fn plan(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace: &str,
    scope: Scope<'_>,
    mesh: &MeshConfig,
    cfg: &InjectConfig,
) -> Result<Plan, InjectError> {
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    if annotations.contains_key(INJECTED) {
        return Ok(Plan::Skip("already injected"));
    }
    let enabled = Namespace {
        metadata: ObjectMeta {
            annotations: Some(BTreeMap::from([(
                weft_api::names::annotations::INJECT.to_owned(),
                "enabled".to_owned(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    let ns = match scope {
        Scope::Namespace(ns) => ns,
        Scope::Manual => Some(&enabled),
    };
    let host_network = spec.host_network.unwrap_or(false);
    if let Err(reason) = mesh.scope(namespace, &annotations, host_network, ns) {
        return Ok(Plan::Skip(reason));
    }
    let settings = Settings::from_annotations(&annotations, cfg)?;
    if let Some(app) = spec.containers.first() {
        annotations
            .entry(DEFAULT_CONTAINER.to_owned())
            .or_insert_with(|| app.name.clone());
    }
    annotations.insert(INJECTED.to_owned(), cfg.version.clone());
    let mut injection = Injection {
        annotations,
        init_containers: vec![init_container(&settings, cfg)],
        containers: vec![],
        volumes: volumes(spec),
    };
    let proxy = proxy_container(&settings, cfg);
    if cfg.native_sidecar {
        injection.init_containers.push(native_sidecar(proxy));
    } else {
        injection.containers.push(classic_sidecar(proxy));
    }
    Ok(Plan::Inject(injection))
}

impl Injection {
    /// Applies the injection to a pod's `metadata` and `spec` JSON.
    pub fn apply(
        &self,
        meta: &mut serde_json::Value,
        spec: &mut serde_json::Value,
    ) -> Result<(), String> {
        let meta = meta.as_object_mut().ok_or("metadata is not an object")?;
        meta.insert("annotations".into(), to_json(&self.annotations)?);
        let spec = spec.as_object_mut().ok_or("spec is not an object")?;
        prepend(spec, "initContainers", &self.init_containers)?;
        prepend(spec, "containers", &self.containers)?;
        let volumes = list(spec, "volumes")?;
        for v in &self.volumes {
            volumes.push(to_json(v)?);
        }
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

/// The array at `key` of `obj`, created when absent or null.
fn list<'a>(
    obj: &'a mut serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<&'a mut Vec<serde_json::Value>, String> {
    let entry = obj
        .entry(key)
        .or_insert_with(|| serde_json::Value::Array(vec![]));
    if entry.is_null() {
        *entry = serde_json::Value::Array(vec![]);
    }
    entry
        .as_array_mut()
        .ok_or_else(|| format!("spec.{key} is not a list"))
}

fn prepend<T: serde::Serialize>(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    items: &[T],
) -> Result<(), String> {
    if items.is_empty() {
        return Ok(());
    }
    let values = items.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
    list(obj, key)?.splice(0..0, values);
    Ok(())
}

/// The per-pod settings: config defaults with the annotations applied.
struct Settings {
    resources: Resources,
    log_level: String,
    skip_inbound: String,
    skip_outbound: String,
    skip_subnets: String,
    opaque_ports: String,
    /// `off` or `json` when the pod sets it; unset leaves the proxy's default.
    access_log: Option<&'static str>,
}

impl Settings {
    fn from_annotations(
        a: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Self, InjectError> {
        let quantity = |name: &'static str, default: &Option<String>| match a.get(name) {
            Some(v) if is_quantity(v) => Ok(Some(v.clone())),
            Some(v) => Err(InjectError {
                annotation: name,
                value: v.clone(),
                reason: "is not a Kubernetes quantity (like 100m, 1, 64Mi)".into(),
            }),
            None => Ok(default.clone()),
        };
        let r = &cfg.resources;
        Ok(Self {
            resources: Resources {
                cpu_request: quantity(overrides::CPU_REQUEST, &r.cpu_request)?,
                cpu_limit: quantity(overrides::CPU_LIMIT, &r.cpu_limit)?,
                memory_request: quantity(overrides::MEMORY_REQUEST, &r.memory_request)?,
                memory_limit: quantity(overrides::MEMORY_LIMIT, &r.memory_limit)?,
            },
            log_level: log_level(a, cfg)?,
            skip_inbound: ports(a, overrides::SKIP_INBOUND_PORTS)?,
            skip_outbound: ports(a, overrides::SKIP_OUTBOUND_PORTS)?,
            skip_subnets: subnets(a)?,
            opaque_ports: ports(a, OPAQUE_PORTS)?,
            access_log: access_log(a)?,
        })
    }
}

fn log_level(a: &BTreeMap<String, String>, cfg: &InjectConfig) -> Result<String, InjectError> {
    match a.get(overrides::LOG_LEVEL) {
        None => Ok(cfg.log_level.clone()),
        Some(v) => tracing_subscriber::EnvFilter::try_new(v)
            .map(|_| v.clone())
            .map_err(|e| InjectError {
                annotation: overrides::LOG_LEVEL,
                value: v.clone(),
                reason: format!("is not a log filter (like info or weft_proxy=debug): {e}"),
            }),
    }
}

fn access_log(a: &BTreeMap<String, String>) -> Result<Option<&'static str>, InjectError> {
    match a.get(overrides::ACCESS_LOG).map(String::as_str) {
        None => Ok(None),
        Some("off") => Ok(Some("off")),
        Some("json") => Ok(Some("json")),
        Some(v) => Err(InjectError {
            annotation: overrides::ACCESS_LOG,
            value: v.to_owned(),
            reason: "is not an access log setting (off or json)".into(),
        }),
    }
}

/// A port list in the form `weft-proxy init` takes (`80,8000-8100`).
fn ports(a: &BTreeMap<String, String>, name: &'static str) -> Result<String, InjectError> {
    let Some(v) = a.get(name) else {
        return Ok(String::new());
    };
    let list = parse_list(v, parse_port_range).map_err(|e| InjectError {
        annotation: name,
        value: v.clone(),
        reason: format!("is not a port list: {e}"),
    })?;
    Ok(list
        .iter()
        .map(|r| match r.first == r.last {
            true => r.first.to_string(),
            false => format!("{}-{}", r.first, r.last),
        })
        .collect::<Vec<_>>()
        .join(","))
}

fn subnets(a: &BTreeMap<String, String>) -> Result<String, InjectError> {
    let name = overrides::SKIP_SUBNETS;
    let Some(v) = a.get(name) else {
        return Ok(String::new());
    };
    let list = parse_list(v, parse_cidr).map_err(|e| InjectError {
        annotation: name,
        value: v.clone(),
        reason: format!("is not a list of IPv4 CIDRs: {e}"),
    })?;
    Ok(list
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// A Kubernetes resource quantity: a decimal number with an optional
/// binary (`Ki`…`Ei`), decimal (`n`, `u`, `m`, `k`, `M`…`E`) or exponent suffix.
pub fn is_quantity(s: &str) -> bool {
    let number_end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && *c == '+')))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    let digits = number.trim_start_matches('+');
    let valid_number = !digits.is_empty()
        && digits.matches('.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.trim_start_matches(['+', '-']))
        .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()));
    valid_number && valid_suffix
}

/// The proxy as a native sidecar: an init container that keeps running,
/// whose startup probe holds back the app until the proxy is ready.
fn native_sidecar(mut proxy: Container) -> Container {
    proxy.restart_policy = Some("Always".into());
    proxy.startup_probe = Some(Probe {
        period_seconds: Some(1),
        failure_threshold: Some(120),
        ..http_probe("/ready")
    });
    proxy
}

/// The proxy first among the containers: the kubelet starts the next
/// container only once this `postStart` hook has returned.
fn classic_sidecar(mut proxy: Container) -> Container {
    proxy.lifecycle = Some(Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec![
                    "weft-proxy".into(),
                    "wait-ready".into(),
                    "--timeout".into(),
                    "120s".into(),
                ]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    proxy
}

fn init_container(settings: &Settings, cfg: &InjectConfig) -> Container {
    let mut args: Vec<String> = [
        "init",
        "--inbound-port",
        &INBOUND_PORT.to_string(),
        "--outbound-port",
        &OUTBOUND_PORT.to_string(),
        "--proxy-uid",
        &PROXY_UID.to_string(),
        "--admin-port",
        &ADMIN_PORT.to_string(),
    ]
    .map(String::from)
    .to_vec();
    for (flag, value) in [
        ("--skip-inbound-ports", &settings.skip_inbound),
        ("--skip-outbound-ports", &settings.skip_outbound),
        ("--skip-subnets", &settings.skip_subnets),
    ] {
        if !value.is_empty() {
            args.extend([flag.to_owned(), value.clone()]);
        }
    }
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(cfg.init_image.clone()),
        args: Some(args),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        resources: Some(resources(&Resources {
            cpu_request: Some("10m".into()),
            cpu_limit: Some("100m".into()),
            memory_request: Some("10Mi".into()),
            memory_limit: Some("50Mi".into()),
        })),
        volume_mounts: Some(vec![VolumeMount {
            name: XTABLES_VOLUME.into(),
            mount_path: "/run".into(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn proxy_container(settings: &Settings, cfg: &InjectConfig) -> Container {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let mut env_vars = vec![
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_NAMESPACE, "metadata.namespace"),
        field(env::POD_IP, "status.podIP"),
        field(env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
        value(env::LOG, &settings.log_level),
        value(env::LOG_FORMAT, "json"),
        value(env::GLIBC_TUNABLES, env::PROXY_GLIBC_TUNABLES),
    ];
    if !settings.opaque_ports.is_empty() {
        env_vars.push(value("WEFT_OPAQUE_PORTS", &settings.opaque_ports));
    }
    if let Some(mode) = settings.access_log {
        env_vars.push(value(ACCESS_LOG_ENV, mode));
    }
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(cfg.proxy_image.clone()),
        args: Some(vec!["run".into()]),
        env: Some(env_vars),
        ports: Some(vec![
            port("weft-admin", ADMIN_PORT),
            port("weft-inbound", INBOUND_PORT),
        ]),
        liveness_probe: Some(http_probe("/live")),
        readiness_probe: Some(http_probe("/ready")),
        resources: Some(resources(&settings.resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(i64::from(PROXY_UID)),
            run_as_group: Some(i64::from(PROXY_UID)),
            seccomp_profile: Some(runtime_default()),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount(ROUTES_VOLUME, ROUTES_DIR),
            mount(IDENTITY_VOLUME, IDENTITY_DIR),
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn resources(r: &Resources) -> ResourceRequirements {
    let pairs = |cpu: &Option<String>, memory: &Option<String>| {
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v.clone()?))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: pairs(&r.cpu_request, &r.memory_request),
        limits: pairs(&r.cpu_limit, &r.memory_limit),
        ..Default::default()
    }
}

fn volumes(spec: &PodSpec) -> Vec<Volume> {
    let service_account = crate::scope::service_account_of(spec);
    vec![
        Volume {
            name: ROUTES_VOLUME.into(),
            // Optional: a namespace's first pod may come before its table;
            // the proxy stays unready until the table arrives.
            config_map: Some(ConfigMapVolumeSource {
                name: ROUTES_CONFIGMAP.into(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: IDENTITY_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(identity_secret_name(service_account)),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: XTABLES_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use weft_api::routes::MtlsMode;

    use super::{
        ACCESS_LOG_ENV, InjectConfig, InjectError, PROXY_CONTAINER, Plan, Scope, is_quantity,
        overrides, plan,
    };
    use crate::scope::{MeshConfig, MeshedPods};

    /// Injects a one-container pod carrying `annotations` (native sidecar).
    fn inject(annotations: &[(&str, &str)]) -> Result<Plan, InjectError> {
        let meta = ObjectMeta {
            name: Some("p".into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        };
        let spec = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mesh = MeshConfig {
            trust_domain: "cluster.local".into(),
            operator_namespace: "weft-system".into(),
            default_mtls: MtlsMode::Permissive,
            meshed_pods: MeshedPods::Injected,
        };
        plan(
            &meta,
            &spec,
            "shop",
            Scope::Manual,
            &mesh,
            &InjectConfig::default(),
        )
    }

    /// The proxy container's `WEFT_ACCESS_LOG` values.
    fn access_log_env(plan: &Plan) -> Vec<Option<String>> {
        let Plan::Inject(injection) = plan else {
            panic!("not injected: {plan:?}");
        };
        let proxy = injection
            .init_containers
            .iter()
            .chain(&injection.containers)
            .find(|c| c.name == PROXY_CONTAINER)
            .expect("a proxy container");
        proxy
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == ACCESS_LOG_ENV)
            .map(|e| e.value.clone())
            .collect()
    }

    #[test]
    fn access_log_annotation_reaches_the_proxy() {
        for mode in ["json", "off"] {
            let plan = inject(&[(overrides::ACCESS_LOG, mode)]).unwrap();
            assert_eq!(access_log_env(&plan), [Some(mode.to_owned())], "{mode}");
        }
    }

    #[test]
    fn no_access_log_annotation_no_env() {
        let plan = inject(&[]).unwrap();
        assert_eq!(access_log_env(&plan), Vec::<Option<String>>::new());
    }

    #[test]
    fn invalid_access_log_annotation_refuses_the_pod_naming_it() {
        for bad in ["JSON", "on", "text", "", " json"] {
            let err = inject(&[(overrides::ACCESS_LOG, bad)]).unwrap_err();
            assert_eq!(err.annotation, "weft.dev/access-log");
            assert_eq!(err.value, bad);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("annotation weft.dev/access-log: {bad:?} ")),
                "{msg}"
            );
            assert!(msg.contains("off or json"), "{msg}");
        }
    }

    #[test]
    fn quantities() {
        for ok in [
            "1", "100m", "0.5", "64Mi", "1Gi", "1e3", "+2", ".5", "2E-3", "1k",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "10MB", "lots", "-1x", "1e", "1 Gi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
