//! Leader election: the pure decision under a controllable clock, and the
//! exact Lease requests against a mock API server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use k8s_support::{Seen, error, mock, within};
use serde_json::json;
use weft_operator::k8s::lease::{
    Decision, Elector, LeaseConfig, Standing, decide, held, next_round, released,
};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weft-system/leases";

/// The clock: seconds after 2023-11-14T22:13:20Z.
fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn config(me: &str) -> LeaseConfig {
    LeaseConfig {
        name: "weft-operator".into(),
        namespace: "weft-system".into(),
        identity: me.into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    }
}

/// A Lease held by `holder`, acquired at 0, last renewed at `renewed`.
fn lease(holder: Option<&str>, renewed: i64, transitions: i32) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("weft-operator".into()),
            namespace: Some("weft-system".into()),
            resource_version: Some("41".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(t(0))),
            renew_time: Some(MicroTime(t(renewed))),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}

#[test]
fn k8s_decisions() {
    let follow = |expires| Decision::Follow {
        holder: "b".into(),
        expires: t(expires),
    };
    let cases: [(&str, Option<Lease>, i64, Decision); 7] = [
        ("absent", None, 0, Decision::Create),
        ("mine", Some(lease(Some("a"), 0, 0)), 100, Decision::Renew),
        (
            "another's, fresh",
            Some(lease(Some("b"), 0, 0)),
            10,
            follow(15),
        ),
        (
            "another's, a tick before expiry",
            Some(lease(Some("b"), 0, 0)),
            14,
            follow(15),
        ),
        (
            "another's, expired",
            Some(lease(Some("b"), 0, 0)),
            15,
            Decision::TakeOver,
        ),
        ("released", Some(lease(None, 0, 0)), 1, Decision::TakeOver),
        (
            "empty holder",
            Some(lease(Some(""), 0, 0)),
            1,
            Decision::TakeOver,
        ),
    ];
    for (name, current, now, want) in cases {
        assert_eq!(decide(current.as_ref(), "a", t(now)), want, "{name}");
    }
}

#[test]
fn k8s_a_lease_never_renewed_can_be_taken() {
    let mut current = lease(Some("b"), 0, 0);
    let spec = current.spec.as_mut().unwrap();
    spec.renew_time = None;
    spec.acquire_time = None;
    assert_eq!(decide(Some(&current), "a", t(0)), Decision::TakeOver);
}

/// Leader `a` renews every 5 s until it dies after its renewal at 20 s;
/// follower `b` checks on its own schedule. `b` leads no later than 15 s
/// after `a`'s last renewal, and never while `a`'s lease is fresh.
#[test]
fn k8s_a_follower_takes_over_within_the_lease_duration() {
    let last_renewal = 20;
    let mut now = 3; // b starts out of phase with a.
    let taken_at = loop {
        let renewed = (now.min(last_renewal) / 5) * 5;
        let current = lease(Some("a"), renewed, 0);
        let decision = decide(Some(&current), "b", t(now));
        let standing = match decision {
            Decision::TakeOver => break now,
            Decision::Follow { expires, .. } => Standing::Following {
                expires: Some(expires),
            },
            other => panic!("unexpected {other:?} at {now}"),
        };
        let wait = next_round(&standing, t(now), Duration::from_secs(5));
        assert!(wait <= Duration::from_secs(5));
        now += i64::try_from(wait.as_secs()).unwrap();
        assert!(now < 100, "never took over");
    };
    assert!(
        taken_at >= last_renewal + 15,
        "took over a fresh lease at {taken_at}"
    );
    assert_eq!(taken_at, last_renewal + 15, "took over late");
}

#[test]
fn k8s_held_and_released_leases() {
    let renewed = held(
        &config("a"),
        Some(&lease(Some("a"), 0, 2)),
        &Decision::Renew,
        t(30),
    );
    let spec = renewed.spec.as_ref().unwrap();
    assert_eq!(spec.acquire_time, Some(MicroTime(t(0))), "kept on renewal");
    assert_eq!(spec.renew_time, Some(MicroTime(t(30))));
    assert_eq!(spec.lease_transitions, Some(2));
    assert_eq!(renewed.metadata.resource_version.as_deref(), Some("41"));

    let taken = held(
        &config("a"),
        Some(&lease(Some("b"), 0, 2)),
        &Decision::TakeOver,
        t(30),
    );
    let spec = taken.spec.as_ref().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.acquire_time, Some(MicroTime(t(30))));
    assert_eq!(spec.lease_transitions, Some(3));

    let gone = released(&lease(Some("a"), 0, 2), t(31));
    assert_eq!(decide(Some(&gone), "b", t(31)), Decision::TakeOver);
}

async fn step(
    me: &str,
    respond: impl FnMut(&Seen) -> k8s_support::Reply + Send + 'static,
) -> (Standing, Vec<Seen>) {
    let (client, server) = mock(respond);
    within(async {
        let elector = Elector::new(client, config(me));
        let standing = elector.step(t(30)).await.unwrap();
        drop(elector);
        (standing, server.await.unwrap())
    })
    .await
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

#[tokio::test]
async fn k8s_acquires_an_absent_lease_by_creating_it() {
    let (standing, seen) = step("a", |s| match s.method.as_str() {
        "GET" => error(404, "NotFound"),
        _ => (201, s.body.clone()),
    })
    .await;
    assert_eq!(standing, Standing::Leading);
    assert_eq!(
        lines(&seen),
        [
            format!("GET {LEASES}/weft-operator"),
            format!("POST {LEASES}?")
        ]
    );
    assert_eq!(
        seen[1].body,
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "weft-operator", "namespace": "weft-system"},
            "spec": {
                "holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                "acquireTime": "2023-11-14T22:13:50.000000Z",
                "renewTime": "2023-11-14T22:13:50.000000Z",
            },
        })
    );
}

#[tokio::test]
async fn k8s_renews_its_own_lease_with_its_resource_version() {
    let (standing, seen) = step("a", |s| match s.method.as_str() {
        "GET" => (200, serde_json::to_value(lease(Some("a"), 25, 1)).unwrap()),
        _ => (200, s.body.clone()),
    })
    .await;
    assert_eq!(standing, Standing::Leading);
    assert_eq!(
        lines(&seen),
        [
            format!("GET {LEASES}/weft-operator"),
            format!("PUT {LEASES}/weft-operator?")
        ]
    );
    assert_eq!(
        seen[1].body,
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "weft-operator", "namespace": "weft-system", "resourceVersion": "41"},
            "spec": {
                "holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 1,
                "acquireTime": "2023-11-14T22:13:20.000000Z",
                "renewTime": "2023-11-14T22:13:50.000000Z",
            },
        })
    );
}

#[tokio::test]
async fn k8s_does_not_write_while_another_holder_is_fresh() {
    let (standing, seen) = step("a", |_| {
        (200, serde_json::to_value(lease(Some("b"), 25, 1)).unwrap())
    })
    .await;
    assert_eq!(
        standing,
        Standing::Following {
            expires: Some(t(40))
        }
    );
    assert_eq!(lines(&seen), [format!("GET {LEASES}/weft-operator")]);
}

#[tokio::test]
async fn k8s_takes_over_a_stale_lease() {
    let (standing, seen) = step("a", |s| match s.method.as_str() {
        "GET" => (200, serde_json::to_value(lease(Some("b"), 10, 1)).unwrap()),
        _ => (200, s.body.clone()),
    })
    .await;
    assert_eq!(standing, Standing::Leading);
    assert_eq!(
        lines(&seen),
        [
            format!("GET {LEASES}/weft-operator"),
            format!("PUT {LEASES}/weft-operator?")
        ]
    );
    let spec = &seen[1].body["spec"];
    assert_eq!(spec["holderIdentity"], "a");
    assert_eq!(spec["leaseTransitions"], 2);
    assert_eq!(spec["acquireTime"], "2023-11-14T22:13:50.000000Z");
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "41");
}

#[tokio::test]
async fn k8s_losing_a_takeover_race_leaves_it_following() {
    let (standing, seen) = step("a", |s| match s.method.as_str() {
        "GET" => (200, serde_json::to_value(lease(Some("b"), 10, 1)).unwrap()),
        _ => error(409, "Conflict"),
    })
    .await;
    assert_eq!(standing, Standing::Following { expires: None });
    assert_eq!(seen.len(), 2);
}

#[tokio::test]
async fn k8s_release_expires_its_own_lease_now() {
    let (client, server) = mock(|s| match s.method.as_str() {
        "GET" => (200, serde_json::to_value(lease(Some("a"), 25, 1)).unwrap()),
        _ => (200, s.body.clone()),
    });
    let seen = within(async {
        let elector = Elector::new(client, config("a"));
        elector.release(t(30)).await.unwrap();
        drop(elector);
        server.await.unwrap()
    })
    .await;
    assert_eq!(
        lines(&seen),
        [
            format!("GET {LEASES}/weft-operator"),
            format!("PUT {LEASES}/weft-operator?")
        ]
    );
    let spec = &seen[1].body["spec"];
    assert_eq!(spec.get("holderIdentity"), None);
    assert_eq!(spec["leaseDurationSeconds"], 1);
    assert_eq!(spec["renewTime"], "2023-11-14T22:13:50.000000Z");
}

#[tokio::test]
async fn k8s_release_leaves_another_holders_lease_alone() {
    let (client, server) = mock(|_| (200, serde_json::to_value(lease(Some("b"), 25, 1)).unwrap()));
    let seen = within(async {
        let elector = Elector::new(client, config("a"));
        elector.release(t(30)).await.unwrap();
        drop(elector);
        server.await.unwrap()
    })
    .await;
    assert_eq!(lines(&seen), [format!("GET {LEASES}/weft-operator")]);
}
