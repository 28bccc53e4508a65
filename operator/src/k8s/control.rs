//! The control loop: watches feed the stores, leadership gates the writes,
//! and passes run after a debounced burst of changes, on gaining the lead,
//! and at every resync.
//!
//! A pass with failed writes is retried with backoff (1 s doubling up to
//! the resync period) even without a change; nothing crashes on an API error.
//!
//! Every replica watches (so a new leader starts with warm caches); only
//! the leader runs passes. A replica competes for the Lease only once its
//! caches are synced, so no pass ever reads a partial view — which would
//! look like objects to delete.
//!
//! Every replica also serves the injection webhook, from the start: it
//! needs no lead, only its serving certificate, which it issues itself as
//! soon as the trust anchor is in its cache. On shutdown the webhook goes
//! on serving for `--webhook-shutdown-delay` (readiness failing), so the API
//! server's calls still routed here meanwhile are answered, not refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Config;
use super::admin::{self, Admin};
use super::admit::{Admit, ClusterNamespaces, Identities};
use super::lease::{self, Elector};
use super::metrics::Metrics;
use super::serving::{self, Refresh, ServingCert};
use super::watch::{Pacing, Stores, Trigger, settle};
use super::webhook::{self, Limits, Webhook};
use super::writer::{Report, Writer};

/// How often a replica without a serving certificate looks for the anchor.
const SERVING_POLL_PENDING: Duration = Duration::from_secs(2);
/// How often a replica with one checks for renewal and anchor changes.
const SERVING_POLL_HELD: Duration = Duration::from_secs(30);

/// The listeners `serve` runs on, bound by the caller.
pub struct Listeners {
    pub admin: TcpListener,
    pub webhook: TcpListener,
}

/// Runs the admin server, the webhook, the watches, the election and the
/// control loop until `shutdown`; then releases the Lease.
pub async fn serve(
    client: kube::Client,
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let serving = Arc::new(ServingCert::new());
    let admin = Arc::new(Admin::new(metrics.clone()).requiring_serving_cert(serving.clone()));
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin.clone(),
        listeners.admin,
        stop_admin.clone(),
    ));

    let trigger = Arc::new(Trigger::new(metrics.pending.clone()));
    let stores = Stores::start(
        &client,
        &config.settings.mesh.operator_namespace,
        &config.webhook.config_name,
        &trigger,
    );
    let stop_webhook = CancellationToken::new();
    tokio::spawn(stop_after_delay(
        shutdown.clone(),
        config.webhook.shutdown_delay,
        admin.clone(),
        stop_webhook.clone(),
    ));
    let webhook_tasks = start_webhook(
        &client,
        &config,
        &stores,
        serving,
        &metrics,
        listeners.webhook,
        &stop_webhook,
    )?;
    tokio::select! {
        ready = stores.ready() => ready.context("a watch stopped before listing its objects")?,
        () = shutdown.cancelled() => {
            for task in webhook_tasks {
                let _ = task.await;
            }
            stop_admin.cancel();
            return Ok(());
        }
    }
    admin.set_ready();
    tracing::info!("caches synced");

    let (leader_tx, leader_rx) = watch::channel(false);
    let elector = Elector::new(client.clone(), config.lease.clone());
    let election = tokio::spawn(lease::run(
        elector,
        leader_tx,
        metrics.clone(),
        shutdown.clone(),
    ));
    let writer = Writer::new(
        client,
        config.settings,
        metrics,
        config.lease.identity,
        leader_rx.clone(),
    );
    control_loop(
        &stores,
        writer,
        &trigger,
        leader_rx,
        config.pacing,
        &shutdown,
    )
    .await;

    // The election task releases the Lease when it sees the shutdown.
    if let Err(e) = election.await {
        tracing::warn!(error = %e, "the election task failed");
    }
    // Cancelled by `stop_after_delay`.
    for task in webhook_tasks {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "a webhook task failed");
        }
    }
    stop_admin.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// On `shutdown`: readiness fails at once, the webhook stops `delay` later.
async fn stop_after_delay(
    shutdown: CancellationToken,
    delay: Duration,
    admin: Arc<Admin>,
    stop_webhook: CancellationToken,
) {
    shutdown.cancelled().await;
    admin.set_draining();
    tracing::info!(
        ?delay,
        "webhook serving on while the Service drops this replica"
    );
    tokio::time::sleep(delay).await;
    stop_webhook.cancel();
}

/// Starts the serving-certificate refresh and the webhook server; returns
/// their tasks, which end on `stop`.
fn start_webhook(
    client: &kube::Client,
    config: &Config,
    stores: &Stores,
    serving: Arc<ServingCert>,
    metrics: &Arc<Metrics>,
    listener: TcpListener,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let settings = &config.settings;
    let authority = Arc::new(ArcSwapOption::empty());
    let refresh = Refresh {
        dns_names: config.webhook.dns_names.clone(),
        lifetime: settings.cert_lifetime,
        renew_at: settings.renew_at,
        poll_pending: SERVING_POLL_PENDING,
        poll_held: SERVING_POLL_HELD,
    };
    let anchor = {
        let stores = stores.clone();
        move || stores.anchor()
    };
    let refresh_task = tokio::spawn(serving::run(
        refresh,
        anchor,
        serving.clone(),
        authority.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    let (namespaces, secrets) = (stores.clone(), stores.clone());
    let admit = Admit {
        mesh: settings.mesh.clone(),
        inject: config.webhook.inject.clone(),
        namespaces: Arc::new(ClusterNamespaces {
            cached: Box::new(move |name| namespaces.namespace(name)),
            client: client.clone(),
        }),
        identities: Identities {
            client: client.clone(),
            cached: Box::new({
                let secrets = secrets.clone();
                move |ns, name| secrets.has_secret(ns, name)
            }),
            accounts: Box::new(move |ns, name| secrets.has_service_account(ns, name)),
            authority,
            trust_domain: settings.mesh.trust_domain.clone(),
            lifetime: settings.cert_lifetime,
        },
        metrics: metrics.clone(),
    };
    let webhook = Webhook::new(Arc::new(admit), serving, Limits::default())
        .context("building the webhook's TLS configuration")?;
    let server_task = tokio::spawn(webhook::serve(Arc::new(webhook), listener, stop.clone()));
    Ok(vec![refresh_task, server_task])
}

/// Waits for a reason to pass (a change, the lead, the resync), then passes
/// if leading; returns on `shutdown`.
pub async fn control_loop(
    stores: &Stores,
    mut writer: Writer,
    trigger: &Trigger,
    mut leader: watch::Receiver<bool>,
    pacing: Pacing,
    shutdown: &CancellationToken,
) {
    let mut leadership_open = true;
    let mut failed_passes = 0;
    loop {
        let wait = retry_after(failed_passes, pacing.resync);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = trigger.changed() => settle(trigger, pacing).await,
            changed = leader.changed(), if leadership_open => leadership_open = changed.is_ok(),
            () = tokio::time::sleep(wait) => {}
        }
        if shutdown.is_cancelled() {
            return;
        }
        if !*leader.borrow_and_update() {
            trigger.take();
            continue;
        }
        let pending = trigger.take();
        let report = writer.pass(&stores.snapshot(), SystemTime::now()).await;
        log_pass(pending, &report);
        failed_passes = if report.errors > 0 {
            failed_passes.saturating_add(1)
        } else {
            0
        };
    }
}

/// When to pass again without a change: after `failed_passes` passes in a
/// row with errors, 1 s, 2 s, 4 s… up to `resync`; otherwise at `resync`.
pub fn retry_after(failed_passes: u32, resync: Duration) -> Duration {
    if failed_passes == 0 {
        return resync;
    }
    let exponent = failed_passes.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(resync)
}

fn log_pass(pending: i64, report: &Report) {
    let wrote = report.applied + report.issued + report.deleted + report.statuses;
    if wrote == 0 && report.errors == 0 {
        tracing::debug!(
            events = pending,
            unchanged = report.unchanged,
            "pass: nothing to write"
        );
        return;
    }
    tracing::info!(
        events = pending,
        applied = report.applied,
        issued = report.issued,
        deleted = report.deleted,
        statuses = report.statuses,
        unchanged = report.unchanged,
        errors = report.errors,
        "pass"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passes_are_retried_with_backoff_up_to_the_resync() {
        let resync = Duration::from_secs(60);
        let waits: Vec<u64> = (0..9).map(|n| retry_after(n, resync).as_secs()).collect();
        assert_eq!(waits, [60, 1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_after(u32::MAX, resync), resync);
    }
}
