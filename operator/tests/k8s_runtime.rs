//! The runtime around the passes: flags and environment, the debounce that
//! turns a watch storm into one pass, the admin server, and the watches'
//! slimming of cached objects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use weft_api::routes::MtlsMode;
use weft_operator::inject::InjectConfig;
use weft_operator::k8s::admin::{self, Admin};
use weft_operator::k8s::metrics::Metrics;
use weft_operator::k8s::sidecar::NativeSidecar;
use weft_operator::k8s::watch::{Pacing, Trigger, settle, slim_pod};
use weft_operator::k8s::{ConfigError, RunArgs};
use weft_operator::scope::MeshedPods;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

fn args(flags: &[&str]) -> RunArgs {
    let argv = std::iter::once("weft-operator").chain(flags.iter().copied());
    Cli::try_parse_from(argv).unwrap().run
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    move |k| vars.get(k).cloned()
}

#[test]
fn k8s_defaults() {
    let config = args(&["--pod-name", "op-0"]).config(env(&[])).unwrap();
    let s = &config.settings;
    assert_eq!(s.mesh.operator_namespace, "weft-system");
    assert_eq!(s.mesh.trust_domain, "cluster.local");
    assert_eq!(s.mesh.default_mtls, MtlsMode::Permissive);
    assert_eq!(s.mesh.meshed_pods, MeshedPods::Injected);
    assert_eq!(s.cert_lifetime, Duration::from_secs(24 * 3600));
    assert!((s.renew_at - 0.5).abs() < f64::EPSILON);
    assert_eq!(config.lease.name, "weft-operator");
    assert_eq!(config.lease.identity, "op-0");
    assert_eq!(config.lease.duration, Duration::from_secs(15));
    assert_eq!(config.lease.renew_every, Duration::from_secs(5));
    assert_eq!(config.pacing.quiet, Duration::from_millis(200));
    assert_eq!(config.pacing.max, Duration::from_secs(2));
    assert_eq!(config.pacing.resync, Duration::from_secs(60));
    assert_eq!(config.admin_addr.to_string(), "0.0.0.0:9990");
    let webhook = &config.webhook;
    assert_eq!(webhook.addr.to_string(), "0.0.0.0:9443");
    assert_eq!(
        webhook.dns_names,
        [
            "weft-webhook.weft-system.svc",
            "weft-webhook.weft-system.svc.cluster.local"
        ]
    );
    assert_eq!(webhook.config_name, "weft-injector");
    assert_eq!(webhook.shutdown_delay, Duration::from_secs(5));
    assert_eq!(webhook.native_sidecar, NativeSidecar::Auto);
    let defaults = InjectConfig::default();
    assert_eq!(webhook.inject.proxy_image, defaults.proxy_image);
    assert_eq!(webhook.inject.init_image, defaults.init_image);
    assert_eq!(webhook.inject.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(webhook.inject.resources, defaults.resources);
    assert_eq!(webhook.inject.log_level, "info");
}

#[test]
fn k8s_webhook_and_sidecar_flags_with_environment_fallbacks() {
    let config = args(&[
        "--pod-name",
        "op-0",
        "--namespace",
        "mesh",
        "--webhook-addr",
        "127.0.0.1:8443",
        "--webhook-service",
        "injector",
        "--webhook-config",
        "my-injector",
        "--native-sidecar",
        "false",
        "--webhook-shutdown-delay",
        "0s",
        "--proxy-log-level",
        "weft_proxy=debug,info",
        "--proxy-image",
        "registry.example/weft-proxy:1.2.3",
        "--proxy-cpu-limit",
        "500m",
        "--proxy-memory-limit",
        "",
    ])
    .config(env(&[]))
    .unwrap();
    let webhook = &config.webhook;
    assert_eq!(webhook.addr.to_string(), "127.0.0.1:8443");
    assert_eq!(
        webhook.dns_names,
        ["injector.mesh.svc", "injector.mesh.svc.cluster.local"]
    );
    assert_eq!(webhook.config_name, "my-injector");
    assert_eq!(webhook.native_sidecar, NativeSidecar::False);
    assert_eq!(webhook.shutdown_delay, Duration::ZERO);
    assert_eq!(webhook.inject.log_level, "weft_proxy=debug,info");
    assert_eq!(
        webhook.inject.proxy_image,
        "registry.example/weft-proxy:1.2.3"
    );
    assert_eq!(webhook.inject.resources.cpu_limit.as_deref(), Some("500m"));
    assert_eq!(webhook.inject.resources.cpu_request.as_deref(), Some("10m"));
    assert_eq!(webhook.inject.resources.memory_limit, None, "empty: unset");

    // The chart sets them through the environment: each flag's variable.
    let command = <Cli as clap::CommandFactory>::command();
    let env_of = |flag: &str| {
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag))
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    for (flag, var) in [
        ("webhook-addr", "WEFT_WEBHOOK_ADDR"),
        ("webhook-service", "WEFT_WEBHOOK_SERVICE"),
        ("webhook-config", "WEFT_WEBHOOK_CONFIG"),
        ("webhook-shutdown-delay", "WEFT_WEBHOOK_SHUTDOWN_DELAY"),
        ("native-sidecar", "WEFT_NATIVE_SIDECAR"),
        ("proxy-image", "WEFT_PROXY_IMAGE"),
        ("init-image", "WEFT_INIT_IMAGE"),
        ("proxy-log-level", "WEFT_PROXY_LOG_LEVEL"),
        ("proxy-cpu-request", "WEFT_PROXY_CPU_REQUEST"),
        ("proxy-cpu-limit", "WEFT_PROXY_CPU_LIMIT"),
        ("proxy-memory-request", "WEFT_PROXY_MEMORY_REQUEST"),
        ("proxy-memory-limit", "WEFT_PROXY_MEMORY_LIMIT"),
    ] {
        assert_eq!(env_of(flag).as_deref(), Some(var), "--{flag}");
    }
}

#[test]
fn k8s_bad_webhook_and_sidecar_flags_are_refused_by_name() {
    let err = |flags: &[&str]| {
        let mut all = vec!["--pod-name", "op"];
        all.extend_from_slice(flags);
        args(&all).config(env(&[])).unwrap_err().to_string()
    };
    assert!(err(&["--webhook-service", "Not_A_Label"]).starts_with("--webhook-service"));
    assert!(err(&["--webhook-config", ""]).starts_with("--webhook-config"));
    let e = err(&["--proxy-cpu-request", "lots"]);
    assert!(
        e.starts_with("--proxy-cpu-request") && e.contains("lots"),
        "{e}"
    );
    let e = err(&["--proxy-log-level", "weft=[loud"]);
    assert!(e.starts_with("--proxy-log-level"), "{e}");
    assert!(err(&["--proxy-image", ""]).starts_with("--proxy-image"));
    let parse = |flags: &[&str]| {
        let argv = ["weft-operator"].into_iter().chain(flags.iter().copied());
        Cli::try_parse_from(argv).err().map(|e| e.to_string())
    };
    assert!(
        parse(&["--native-sidecar", "maybe"])
            .unwrap()
            .contains("maybe")
    );
    assert!(
        parse(&["--webhook-addr", "nowhere"])
            .unwrap()
            .contains("nowhere")
    );
}

#[test]
fn k8s_flags() {
    let config = args(&[
        "--namespace",
        "mesh",
        "--trust-domain",
        "example.org",
        "--cert-lifetime",
        "1h",
        "--renew-at",
        "0.75",
        "--default-mtls",
        "strict",
        "--admin-addr",
        "127.0.0.1:1",
        "--leader-election-id",
        "weft-lease",
        "--pod-name",
        "op-1",
        "--debounce",
        "50ms",
        "--debounce-max",
        "1s",
        "--resync",
        "30s",
    ])
    .config(env(&[("POD_NAMESPACE", "ignored")]))
    .unwrap();
    assert_eq!(config.settings.mesh.operator_namespace, "mesh");
    assert_eq!(config.lease.namespace, "mesh");
    assert_eq!(config.settings.mesh.trust_domain, "example.org");
    assert_eq!(config.settings.cert_lifetime, Duration::from_secs(3600));
    assert_eq!(config.settings.mesh.default_mtls, MtlsMode::Strict);
    assert_eq!(config.lease.name, "weft-lease");
    assert_eq!(config.pacing.quiet, Duration::from_millis(50));
}

#[test]
fn k8s_namespace_and_name_fall_back_to_the_pod_environment() {
    let config = args(&[])
        .config(env(&[("POD_NAMESPACE", "mesh"), ("HOSTNAME", "op-2")]))
        .unwrap();
    assert_eq!(config.settings.mesh.operator_namespace, "mesh");
    assert_eq!(config.lease.identity, "op-2");
    assert_eq!(
        args(&[]).config(env(&[])).unwrap_err(),
        ConfigError::PodName
    );
}

#[test]
fn k8s_bad_flags_are_refused_by_name() {
    let err = |flags: &[&str]| {
        let mut all = vec!["--pod-name", "op"];
        all.extend_from_slice(flags);
        args(&all).config(env(&[])).unwrap_err().to_string()
    };
    assert!(err(&["--renew-at", "0"]).starts_with("--renew-at"));
    assert!(err(&["--renew-at", "1.5"]).starts_with("--renew-at"));
    assert!(err(&["--lease-renew", "15s"]).starts_with("--lease-renew"));
    assert!(err(&["--debounce", "3s"]).starts_with("--debounce"));
    let parse = |flags: &[&str]| {
        let argv = ["weft-operator"].into_iter().chain(flags.iter().copied());
        Cli::try_parse_from(argv).err().map(|e| e.to_string())
    };
    assert!(
        parse(&["--cert-lifetime", "soon"])
            .unwrap()
            .contains("soon")
    );
    assert!(
        parse(&["--default-mtls", "maybe"])
            .unwrap()
            .contains("maybe")
    );
}

fn pacing() -> Pacing {
    Pacing {
        quiet: Duration::from_millis(200),
        max: Duration::from_secs(2),
        resync: Duration::from_secs(60),
    }
}

#[tokio::test(start_paused = true)]
async fn k8s_one_change_settles_after_the_quiet_time() {
    let trigger = Trigger::new(Default::default());
    trigger.poke();
    let start = Instant::now();
    trigger.changed().await;
    settle(&trigger, pacing()).await;
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(trigger.take(), 1);
}

#[tokio::test(start_paused = true)]
async fn k8s_a_watch_storm_becomes_one_pass_within_the_maximum() {
    let trigger = Arc::new(Trigger::new(Default::default()));
    let storm = {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                trigger.poke();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let start = Instant::now();
    trigger.changed().await;
    settle(&trigger, pacing()).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "{waited:?}"
    );
    let handled = trigger.take();
    assert!((39..=42).contains(&handled), "{handled} events in one pass");
    storm.abort();
}

#[tokio::test(start_paused = true)]
async fn k8s_a_burst_that_stops_settles_early() {
    let trigger = Trigger::new(Default::default());
    let start = Instant::now();
    for _ in 0..5 {
        trigger.poke();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    trigger.changed().await;
    settle(&trigger, pacing()).await;
    // The last change came at 40 ms; quiet until 240 ms (measured from the
    // first wait, at 50 ms, that is 250 ms).
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    (code, response)
}

#[tokio::test]
async fn k8s_admin_server_reports_health_readiness_and_metrics() {
    let metrics = Arc::new(Metrics::new());
    let admin = Arc::new(Admin::new(metrics.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(admin::serve(admin.clone(), listener, stop.clone()));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    admin.set_ready();
    assert_eq!(get(addr, "/readyz").await.0, 200);
    metrics.leader.set(1);
    metrics.written("ConfigMap", "apply");
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "weft_leader 1",
        "weft_caches_synced 1",
        "weft_objects_written_total{kind=\"ConfigMap\",op=\"apply\"} 1",
        "# TYPE weft_reconcile_duration_seconds histogram",
        "# TYPE weft_reconciles counter",
        "# TYPE weft_reconcile_pending_events gauge",
    ] {
        assert!(body.contains(line), "{line} missing from\n{body}");
    }
    assert_eq!(get(addr, "/nope").await.0, 404);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn k8s_cached_pods_keep_only_what_a_pass_reads() {
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some("cart-1".into()),
            namespace: Some("shop".into()),
            annotations: Some(BTreeMap::from([("weft.dev/injected".into(), "1".into())])),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some("cart".into()),
            host_network: Some(false),
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some("10.0.0.5".into()),
            ..Default::default()
        }),
    };
    slim_pod(&mut pod);
    assert_eq!(
        serde_json::to_value(&pod).unwrap(),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "cart-1", "namespace": "shop", "annotations": {"weft.dev/injected": "1"}},
            "spec": {"serviceAccountName": "cart", "hostNetwork": false, "containers": []},
        })
    );
}
