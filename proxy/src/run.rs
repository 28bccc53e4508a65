//! `weft-proxy run`: settings from flags and environment, the listeners,
//! and the lifecycle (load config, serve, drain on SIGTERM, exit).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::duration::parse_duration;
use weft_api::names::{self, env};

use crate::admin::{self, Admin};
use crate::identity::Expected;
use crate::inbound::Inbound;
use crate::orig_dst::{OriginalDst, SoOriginalDst};
use crate::outbound::Outbound;
use crate::relay::accept_loop;
use crate::reload::{self, Loader, Pacing};
use crate::state::State;
use crate::table::Pod;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
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
    /// Wait this long for an inbound client's first byte before treating
    /// the connection as plaintext.
    #[arg(long, env = "WEFT_DETECT_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub detect_timeout: Duration,
    /// Reload this long after the last change event.
    #[arg(long, env = "WEFT_RELOAD_DEBOUNCE", value_parser = parse_duration, default_value = "50ms")]
    pub reload_debounce: Duration,
    /// Re-read the files this often even without change events.
    #[arg(long, env = "WEFT_RELOAD_POLL", value_parser = parse_duration, default_value = "10s")]
    pub reload_poll: Duration,
    /// Worker threads.
    #[arg(long, env = "WEFT_THREADS", default_value_t = 1)]
    pub threads: usize,
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&args).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        serve(args, listeners, Arc::new(SoOriginalDst), shutdown).await
    })
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
    let state = State::new();
    let provider = crate::tls::provider();
    let mut loader = Loader::new(
        state.clone(),
        args.routes_dir.clone(),
        args.identity_dir.clone(),
        Pod {
            namespace: args.pod_namespace.clone(),
            ip: args.pod_ip,
        },
        Expected {
            namespace: args.pod_namespace.clone(),
            service_account: args.service_account.clone(),
        },
        provider,
    );
    loader.reload_all();

    let stop = CancellationToken::new();
    let pacing = Pacing {
        debounce: args.reload_debounce,
        poll: args.reload_poll,
    };
    tokio::spawn(reload::watch(loader, pacing, stop.clone()));
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
    });
    let inbound = Arc::new(Inbound {
        state: state.clone(),
        orig_dst,
        detect_timeout: args.detect_timeout,
        connect_timeout: args.connect_timeout,
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
