//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one writes while all keep their caches warm.
//!
//! The decision is a pure function of (the Lease, who I am, the time):
//! create it when absent, renew it while mine, take it over once its holder
//! has not renewed it for its duration, otherwise follow. Writes use the
//! Lease's `resourceVersion` (create or replace), so of two replicas racing
//! for it one gets a 409 Conflict and stays a follower.
//!
//! Time is the holder's `renewTime` against our clock: replicas' clocks must
//! agree to well within the lease duration (15 s), as NTP-synced nodes do.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// Which Lease, who I am, and the timings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// `holderIdentity`: the pod name.
    pub identity: String,
    /// How long a holder stays leader without renewing.
    pub duration: Duration,
    /// How often the holder renews (and a follower checks).
    pub renew_every: Duration,
}

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by me.
    Create,
    /// I hold it: renew it.
    Renew,
    /// Nobody holds it, or its holder let it expire: take it.
    TakeOver,
    /// Another replica holds it until `expires`: do not write.
    Follow { holder: String, expires: Timestamp },
}

/// The decision for `me` at `now`, given the Lease as read.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = spec_of(lease);
    match spec.holder_identity.clone().filter(|h| !h.is_empty()) {
        None => Decision::TakeOver,
        Some(holder) if holder == me => Decision::Renew,
        Some(holder) => match expiry(&spec) {
            Some(expires) if now < expires => Decision::Follow { holder, expires },
            _ => Decision::TakeOver,
        },
    }
}

fn spec_of(lease: &Lease) -> LeaseSpec {
    lease.spec.clone().unwrap_or_default()
}

/// When the holder's lease runs out: last renewal (or acquisition) plus its
/// duration. `None` when it was never renewed.
pub fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = spec.lease_duration_seconds.unwrap_or(0).max(0);
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// Where this replica stands after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Leading,
    /// Another replica leads, until `expires` if known.
    Following {
        expires: Option<Timestamp>,
    },
}

/// How long to wait before the next round: the renewal period, or less when
/// the leader's lease runs out sooner, so a follower takes over as soon as
/// it may (within the lease duration of the leader's last renewal).
pub fn next_round(standing: &Standing, now: Timestamp, renew_every: Duration) -> Duration {
    match standing {
        Standing::Following {
            expires: Some(expires),
        } => {
            let until = Duration::try_from(now.duration_until(*expires)).unwrap_or(Duration::ZERO);
            until.min(renew_every)
        }
        _ => renew_every,
    }
}

/// The Lease to write for `decision` (not `Follow`): held by me, renewed
/// `now`, carrying the `resourceVersion` read so a concurrent write fails.
pub fn held(
    config: &LeaseConfig,
    current: Option<&Lease>,
    decision: &Decision,
    now: Timestamp,
) -> Lease {
    let spec = current.map(spec_of).unwrap_or_default();
    let taking = *decision != Decision::Renew;
    let transitions = spec.lease_transitions.unwrap_or(0);
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: current.and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            lease_duration_seconds: Some(seconds(config.duration)),
            acquire_time: if taking {
                Some(MicroTime(now))
            } else {
                spec.acquire_time
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(match decision {
                Decision::TakeOver => transitions.saturating_add(1),
                _ => transitions,
            }),
            ..Default::default()
        }),
    }
}

/// `current` given up: no holder, expired at once, so another replica takes
/// over without waiting out the duration.
pub fn released(current: &Lease, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    lease.metadata.managed_fields = None;
    lease
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Reads and writes the Lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One round: read, decide, write. A conflict (another replica wrote
    /// first) leaves me following.
    pub async fn step(&self, now: Timestamp) -> Result<Standing, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let decision = decide(current.as_ref(), &self.config.identity, now);
        let lease = match &decision {
            Decision::Follow { holder, expires } => {
                tracing::debug!(%holder, %expires, "following the leader");
                return Ok(Standing::Following {
                    expires: Some(*expires),
                });
            }
            d => held(&self.config, current.as_ref(), d, now),
        };
        let written = match decision {
            Decision::Create => self.api.create(&PostParams::default(), &lease).await,
            _ => {
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => {
                if decision != Decision::Renew {
                    tracing::info!(identity = %self.config.identity, "became the leader");
                }
                Ok(Standing::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Standing::Following { expires: None }),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if I hold it.
    pub async fn release(&self, now: Timestamp) -> Result<(), kube::Error> {
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let lease = released(&current, now);
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!("lease released");
        Ok(())
    }
}

/// Keeps trying to lead until `shutdown`, publishing whether this replica
/// leads on `leader`; then releases the Lease if held.
///
/// A leader that cannot renew stops writing once two thirds of the duration
/// have passed since its last renewal, before anyone may take over.
pub async fn run(
    elector: Elector,
    leader: watch::Sender<bool>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let config = elector.config().clone();
    let deadline = config.duration.mul_f64(2.0 / 3.0);
    let mut last_renewal: Option<tokio::time::Instant> = None;
    loop {
        // The renewal counts from before the request: the Lease's renewTime
        // is taken then, and a follower measures from it.
        let started = tokio::time::Instant::now();
        let step = tokio::time::timeout(config.renew_every, elector.step(Timestamp::now())).await;
        let renewed = matches!(step, Ok(Ok(Standing::Leading)));
        let standing = match step {
            Ok(Ok(standing)) => standing,
            Ok(Err(e)) => still_leading(&e.to_string(), last_renewal, deadline),
            Err(_) => still_leading("timed out", last_renewal, deadline),
        };
        let leading = standing == Standing::Leading;
        if renewed {
            last_renewal = Some(started);
        } else if !leading {
            last_renewal = None;
        }
        set_leader(&leader, leading, &metrics);
        let wait = next_round(&standing, Timestamp::now(), config.renew_every);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    if *leader.borrow() {
        set_leader(&leader, false, &metrics);
        let release = tokio::time::timeout(config.renew_every, elector.release(Timestamp::now()));
        match release.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "releasing the lease failed; it expires by itself")
            }
            Err(_) => tracing::warn!("releasing the lease timed out; it expires by itself"),
        }
    }
}

/// After a failed round: still leading while the last renewal is recent.
fn still_leading(
    error: &str,
    last_renewal: Option<tokio::time::Instant>,
    deadline: Duration,
) -> Standing {
    tracing::warn!(error, "lease request failed");
    if last_renewal.is_some_and(|t| t.elapsed() < deadline) {
        Standing::Leading
    } else {
        Standing::Following { expires: None }
    }
}

fn set_leader(leader: &watch::Sender<bool>, leading: bool, metrics: &Metrics) {
    leader.send_if_modified(|current| {
        let changed = *current != leading;
        *current = leading;
        changed
    });
    metrics.leader.set(i64::from(leading));
}
