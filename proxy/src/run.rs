//! `weft-proxy run`: settings from flags and environment, the listeners,
//! and the lifecycle (load config, serve, drain on SIGTERM, exit).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::duration::parse_duration;
use weft_api::names::{self, env};

use crate::access_log::AccessLog;
use crate::admin::{self, Admin};
use crate::api_client::{ApiServer, IN_CLUSTER_CA_FILE, IN_CLUSTER_TOKEN_FILE};
use crate::api_watch;
use crate::identity::Expected;
use crate::inbound::Inbound;
use crate::metrics::Direction;
use crate::orig_dst::{FixedDst, OriginalDst, SoOriginalDst};
use crate::outbound::Outbound;
use crate::relay::accept_loop;
use crate::reload::{self, Loader, Pacing};
use crate::sniff::OpaquePorts;
use crate::state::State;
use crate::table::Pod;
use crate::upstream::Upstreams;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Whether routes are also watched through the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiWatchMode {
    /// On when running in a pod: an API server is known and the token file exists.
    Auto,
    /// The mounted file only.
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(long, env = env::ROUTES_DIR, default_value = names::ROUTES_DIR)]
    pub routes_dir: PathBuf,
    #[arg(long, env = env::IDENTITY_DIR, default_value = names::IDENTITY_DIR)]
    pub identity_dir: PathBuf,
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,
    /// The certificate must be for this namespace; the routing table must be too.
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
    /// Selects this pod's inbound policy from the routing table.
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<IpAddr>,
    /// The certificate must be for this service account.
    #[arg(long, env = env::SERVICE_ACCOUNT)]
    pub service_account: Option<String>,
    #[arg(long, default_value = "127.0.0.1:7140")]
    pub outbound_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:7143")]
    pub inbound_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:7191")]
    pub admin_addr: SocketAddr,
    /// Without interception (benchmarks, trying the proxy by hand): treat
    /// every accepted connection as addressed to ADDR instead of reading
    /// its original destination.
    #[arg(long, env = "WEFT_ORIGINAL_DST")]
    pub original_dst: Option<SocketAddr>,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = env::LOG, default_value = "info")]
    pub log: String,
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// How long open connections may finish after SIGTERM.
    #[arg(long, env = "WEFT_SHUTDOWN_GRACE_PERIOD", value_parser = parse_duration, default_value = "25s")]
    pub shutdown_grace_period: Duration,
    /// Connect timeout when a Service's policy sets none.
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,
    /// Wait this long for a client's first bytes before treating the
    /// connection as opaque TCP (a protocol where the server speaks first).
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub detect_timeout: Duration,
    /// Ports never inspected (comma-separated ports and ranges), besides
    /// the defaults: 25, 587, 3306, 4444, 5432, 6379, 9300, 11211.
    #[arg(long, env = "WEFT_OPAQUE_PORTS", value_parser = OpaquePorts::parse, default_value = "")]
    pub opaque_ports: OpaquePorts,
    /// One JSON line per HTTP request on standard output.
    #[arg(long, env = "WEFT_ACCESS_LOG", value_enum, default_value = "off")]
    pub access_log: AccessLog,
    /// Reload this long after the last change event.
    #[arg(long, env = "WEFT_RELOAD_DEBOUNCE", value_parser = parse_duration, default_value = "50ms")]
    pub reload_debounce: Duration,
    /// Re-read the files this often even without change events.
    #[arg(long, env = "WEFT_RELOAD_POLL", value_parser = parse_duration, default_value = "10s")]
    pub reload_poll: Duration,
    /// Worker threads.
    #[arg(long, env = "WEFT_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Also watch the routes ConfigMap through the API server (the fast
    /// path; the kubelet updates the mounted file a minute or two late).
    #[arg(long, env = "WEFT_API_WATCH", value_enum, default_value = "auto")]
    pub api_watch: ApiWatchMode,
    /// The API server; default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    #[arg(long, env = "WEFT_API_SERVER")]
    pub api_server: Option<String>,
    /// The service-account token, read again for every connection.
    #[arg(long, env = "WEFT_API_TOKEN_FILE", default_value = IN_CLUSTER_TOKEN_FILE)]
    pub api_token_file: PathBuf,
    /// The CA certificates of the API server, read again for every connection.
    #[arg(long, env = "WEFT_API_CA_FILE", default_value = IN_CLUSTER_CA_FILE)]
    pub api_ca_file: PathBuf,
    /// First delay before retrying a failed API watch; it doubles up to
    /// `--api-backoff-max`.
    #[arg(long, env = "WEFT_API_BACKOFF_MIN", value_parser = parse_duration, default_value = "1s")]
    pub api_backoff_min: Duration,
    #[arg(long, env = "WEFT_API_BACKOFF_MAX", value_parser = parse_duration, default_value = "60s")]
    pub api_backoff_max: Duration,
}

/// Whether the API watch runs, and why not.
#[derive(Debug)]
pub enum ApiWatchPlan {
    On(api_watch::Settings),
    Off(&'static str),
}

/// Decides from the flags and `env` (the process environment, or a map in
/// tests) whether to watch routes through the API server. Only an API
/// server URL that cannot be used is an error.
pub fn api_watch_plan(
    args: &RunArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ApiWatchPlan, String> {
    if args.api_watch == ApiWatchMode::Off {
        return Ok(ApiWatchPlan::Off("--api-watch off"));
    }
    let Some(url) = args.api_server.clone().or_else(|| in_cluster_url(&env)) else {
        return Ok(ApiWatchPlan::Off(
            "no API server (--api-server, KUBERNETES_SERVICE_HOST)",
        ));
    };
    if !Path::new(&args.api_token_file).exists() {
        return Ok(ApiWatchPlan::Off("no service-account token file"));
    }
    let Some(namespace) = args.pod_namespace.clone() else {
        return Ok(ApiWatchPlan::Off("WEFT_POD_NAMESPACE is not set"));
    };
    let server = ApiServer::new(&url, args.api_token_file.clone(), args.api_ca_file.clone())?;
    Ok(ApiWatchPlan::On(api_watch::Settings {
        server,
        namespace,
        backoff_min: args.api_backoff_min,
        backoff_max: args.api_backoff_max,
    }))
}

/// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, as client-go
/// builds it in a pod.
fn in_cluster_url(env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
    let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
    if host.contains(':') {
        Some(format!("https://[{host}]:{port}"))
    } else {
        Some(format!("https://{host}:{port}"))
    }
}

/// The listeners, bound by the caller so tests can use port 0.
pub struct Listeners {
    pub outbound: TcpListener,
    pub inbound: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(args: &RunArgs) -> Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} listener on {addr}"))
        };
        Ok(Self {
            outbound: bind(args.outbound_addr, "outbound").await?,
            inbound: bind(args.inbound_addr, "inbound").await?,
            admin: bind(args.admin_addr, "admin").await?,
        })
    }
}

/// The process entry point of `weft-proxy run`.
pub fn main(args: RunArgs) -> Result<()> {
    init_logging(&args)?;
    let runtime = runtime(args.threads).context("starting the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&args).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        let orig_dst: Arc<dyn OriginalDst> = match args.original_dst {
            Some(dst) => Arc::new(FixedDst(dst)),
            None => Arc::new(SoOriginalDst),
        };
        serve(args, listeners, orig_dst, shutdown).await
    })
}

/// One thread (the default): a current-thread runtime, so the listeners
/// and every connection run on the thread that drives the runtime — no
/// hand-off to a worker on each accept and wake-up. More threads: a
/// work-stealing runtime with that many workers. Either way, file parsing
/// on reload goes to the blocking pool, off the request thread.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build()
}

fn init_logging(args: &RunArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("{}: invalid filter {:?}", env::LOG, args.log))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
    Ok(())
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will not drain");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    shutdown.cancel();
}

/// Loads the configuration, serves until `shutdown`, then stops accepting,
/// lets open connections finish for the grace period, and returns.
pub async fn serve(
    args: RunArgs,
    listeners: Listeners,
    orig_dst: Arc<dyn OriginalDst>,
    shutdown: CancellationToken,
) -> Result<()> {
    let api_plan = api_watch_plan(&args, |name| std::env::var(name).ok())
        .map_err(anyhow::Error::msg)
        .context("the API watch settings")?;
    let state = State::new();
    let provider = crate::tls::provider();
    let mut loader = Loader::new(
        state.clone(),
        args.routes_dir.clone(),
        args.identity_dir.clone(),
        Pod {
            namespace: args.pod_namespace.clone(),
            ip: args.pod_ip,
            upstreams: Arc::default(),
        },
        Expected {
            namespace: args.pod_namespace.clone(),
            service_account: args.service_account.clone(),
        },
        provider.clone(),
    );
    loader.reload_all();

    let stop = CancellationToken::new();
    let pacing = Pacing {
        debounce: args.reload_debounce,
        poll: args.reload_poll,
    };
    let api_updates = match api_plan {
        ApiWatchPlan::On(settings) => {
            let (updates, receiver) = tokio::sync::watch::channel(None);
            tokio::spawn(api_watch::run(
                settings,
                provider,
                state.clone(),
                updates,
                stop.clone(),
            ));
            Some(receiver)
        }
        ApiWatchPlan::Off(why) => {
            tracing::info!("routes come from the mounted file only: {why}");
            None
        }
    };
    tokio::spawn(reload::watch(loader, pacing, api_updates, stop.clone()));
    let admin = Arc::new(Admin {
        state: state.clone(),
        shutdown: shutdown.clone(),
    });
    tokio::spawn(admin::serve(admin, listeners.admin, stop.clone()));

    let tracker = TaskTracker::new();
    let outbound = Arc::new(Outbound {
        state: state.clone(),
        orig_dst: orig_dst.clone(),
        connect_timeout: args.connect_timeout,
        detect_timeout: args.detect_timeout,
        opaque_ports: args.opaque_ports.clone(),
        access_log: args.access_log,
        shutdown: shutdown.clone(),
    });
    let inbound = Arc::new(Inbound {
        state: state.clone(),
        orig_dst,
        detect_timeout: args.detect_timeout,
        connect_timeout: args.connect_timeout,
        opaque_ports: args.opaque_ports.clone(),
        access_log: args.access_log,
        shutdown: shutdown.clone(),
        apps: Upstreams::new(Direction::Inbound),
    });
    tracing::info!(
        outbound = %args.outbound_addr,
        inbound = %args.inbound_addr,
        admin = %args.admin_addr,
        "weft-proxy serving"
    );
    tokio::join!(
        accept_loop(
            listeners.outbound,
            tracker.clone(),
            shutdown.clone(),
            |s, _| { outbound.clone().handle(s) }
        ),
        accept_loop(
            listeners.inbound,
            tracker.clone(),
            shutdown.clone(),
            |s, peer| { inbound.clone().handle(s, peer) }
        ),
    );

    state.start_draining();
    tracker.close();
    let open = tracker.len();
    tracing::info!(open, grace = ?args.shutdown_grace_period, "stopped accepting; draining");
    if tokio::time::timeout(args.shutdown_grace_period, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "grace period over; closing what is left"
        );
    }
    stop.cancel();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let argv = ["weft-proxy", "--pod-namespace", "web"].iter().chain(extra);
        Cli::try_parse_from(argv).unwrap().run
    }

    fn plan(args: &RunArgs, env: &[(&str, &str)]) -> Result<ApiWatchPlan, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        api_watch_plan(args, |name| env.get(name).cloned())
    }

    #[test]
    fn in_cluster_urls_follow_the_service_env() {
        let env = |pairs: &[(&str, &str)]| {
            let map: HashMap<&str, String> =
                pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            in_cluster_url(&|name: &str| map.get(name).cloned())
        };
        assert_eq!(
            env(&[
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443")
            ]),
            Some("https://10.96.0.1:443".into())
        );
        assert_eq!(
            env(&[("KUBERNETES_SERVICE_HOST", "fd00::1")]),
            Some("https://[fd00::1]:443".into())
        );
        assert_eq!(env(&[]), None);
    }

    #[test]
    fn auto_watches_only_in_a_pod() {
        let tmp = tempfile::tempdir().unwrap();
        let token = tmp.path().join("token");
        let token_flag = ["--api-token-file", token.to_str().unwrap()];
        let in_pod = [("KUBERNETES_SERVICE_HOST", "10.96.0.1")];

        let off = |p: Result<ApiWatchPlan, String>| match p.unwrap() {
            ApiWatchPlan::Off(why) => why,
            ApiWatchPlan::On(s) => panic!("on: {s:?}"),
        };
        assert!(off(plan(&args(&token_flag), &in_pod)).contains("token"));
        std::fs::write(&token, "t").unwrap();
        assert!(off(plan(&args(&token_flag), &[])).contains("no API server"));
        let mut off_flag = token_flag.to_vec();
        off_flag.extend(["--api-watch", "off"]);
        assert!(off(plan(&args(&off_flag), &in_pod)).contains("off"));

        let ApiWatchPlan::On(s) = plan(&args(&token_flag), &in_pod).unwrap() else {
            panic!()
        };
        assert_eq!(s.server.url(), "https://10.96.0.1:443");
        assert_eq!(
            (s.namespace.as_str(), s.backoff_min),
            ("web", Duration::from_secs(1))
        );

        let mut explicit = token_flag.to_vec();
        explicit.extend(["--api-server", "http://plain"]);
        assert!(
            plan(&args(&explicit), &in_pod)
                .unwrap_err()
                .contains("only https")
        );
    }
}
