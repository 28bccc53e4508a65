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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Config;
use super::admin::{self, Admin};
use super::lease::{self, Elector};
use super::metrics::Metrics;
use super::watch::{Pacing, Stores, Trigger, settle};
use super::writer::{Report, Writer};

/// Runs the admin server, the watches, the election and the control loop
/// until `shutdown`; then releases the Lease.
pub async fn serve(
    client: kube::Client,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let admin = Arc::new(Admin::new(metrics.clone()));
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(admin.clone(), listener, stop_admin.clone()));

    let trigger = Arc::new(Trigger::new(metrics.pending.clone()));
    let stores = Stores::start(&client, &config.settings.mesh.operator_namespace, &trigger);
    tokio::select! {
        ready = stores.ready() => ready.context("a watch stopped before listing its objects")?,
        () = shutdown.cancelled() => {
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
    stop_admin.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
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
