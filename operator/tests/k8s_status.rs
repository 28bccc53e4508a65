//! MeshPolicy status: the `Accepted` condition written only when it changes,
//! its transition time kept while its status stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use weft_operator::crd::{Condition, MeshPolicy, MeshPolicySpec, MeshPolicyStatus};
use weft_operator::k8s::status::{StatusUpdate, status_update};
use weft_operator::policy::{Reason, Verdict};

const T1: &str = "2023-11-14T22:13:20Z";
const T2: &str = "2023-11-14T23:00:00Z";

fn verdict(reason: Reason, message: &str, generation: i64) -> Verdict {
    Verdict {
        reason,
        message: message.into(),
        generation: Some(generation),
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
    time: &str,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(generation),
        last_transition_time: time.into(),
    }
}

fn policy(status: Option<MeshPolicyStatus>) -> MeshPolicy {
    let mut p = MeshPolicy::new("p", MeshPolicySpec::default());
    p.status = status;
    p
}

fn status(generation: i64, conditions: Vec<Condition>) -> Option<MeshPolicyStatus> {
    Some(MeshPolicyStatus {
        observed_generation: Some(generation),
        conditions,
    })
}

#[test]
fn k8s_a_new_policy_gets_its_condition() {
    let update = status_update(
        &policy(None),
        &verdict(Reason::Invalid, "spec.x: bad", 1),
        T1,
    )
    .unwrap();
    assert_eq!(
        update,
        StatusUpdate {
            patch: json!({"status": {
                "observedGeneration": 1,
                "conditions": [{
                    "type": "Accepted", "status": "False", "reason": "Invalid",
                    "message": "spec.x: bad", "observedGeneration": 1, "lastTransitionTime": T1,
                }],
            }}),
            transition: true,
        }
    );
}

#[test]
fn k8s_an_unchanged_status_is_not_written() {
    let current = status(
        2,
        vec![condition("Accepted", "True", "Accepted", "ok", 2, T1)],
    );
    assert_eq!(
        status_update(&policy(current), &verdict(Reason::Accepted, "ok", 2), T2),
        None
    );
}

#[test]
fn k8s_a_new_generation_or_message_keeps_the_transition_time() {
    let current = status(
        2,
        vec![condition("Accepted", "False", "Invalid", "old", 2, T1)],
    );
    let update = status_update(
        &policy(current),
        &verdict(Reason::TargetNotFound, "new", 3),
        T2,
    )
    .unwrap();
    assert_eq!(update.patch["status"]["observedGeneration"], 3);
    let c = &update.patch["status"]["conditions"][0];
    assert_eq!(c["lastTransitionTime"], T1, "status stayed False");
    assert_eq!(c["reason"], "TargetNotFound");
    assert!(update.transition, "the reason changed: worth an Event");

    let current = status(
        2,
        vec![condition("Accepted", "True", "Accepted", "old", 2, T1)],
    );
    let update = status_update(&policy(current), &verdict(Reason::Accepted, "ok", 3), T2).unwrap();
    assert_eq!(
        update.patch["status"]["conditions"][0]["lastTransitionTime"],
        T1
    );
    assert!(!update.transition, "same status and reason: no Event");
}

#[test]
fn k8s_a_status_change_moves_the_transition_time() {
    let current = status(
        2,
        vec![condition("Accepted", "True", "Accepted", "ok", 2, T1)],
    );
    let update = status_update(
        &policy(current),
        &verdict(Reason::Conflict, "older policy q", 2),
        T2,
    )
    .unwrap();
    let c = &update.patch["status"]["conditions"][0];
    assert_eq!(
        (c["status"].as_str(), c["lastTransitionTime"].as_str()),
        (Some("False"), Some(T2))
    );
    assert!(update.transition);
}

#[test]
fn k8s_other_conditions_are_kept_in_place() {
    let other = condition("Ready", "True", "Fine", "", 2, T1);
    let current = status(
        2,
        vec![
            condition("Accepted", "True", "Accepted", "ok", 2, T1),
            other.clone(),
        ],
    );
    assert_eq!(
        status_update(
            &policy(current.clone()),
            &verdict(Reason::Accepted, "ok", 2),
            T2
        ),
        None
    );
    let update = status_update(&policy(current), &verdict(Reason::Invalid, "bad", 2), T2).unwrap();
    let conditions = update.patch["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[1], serde_json::to_value(&other).unwrap());
}
