//! MeshPolicy status: the `Accepted` condition and `observedGeneration`
//! derived from the controller's verdict.
//!
//! Pure: given the policy as cached, its verdict and the time, says whether
//! the status must be written and what to write, so a pass writes only
//! statuses that changed and keeps `lastTransitionTime` while the condition's
//! status stays the same. The writer sends the patch to the `status`
//! subresource and publishes an Event when the state (status or reason)
//! changed.

use crate::crd::{Condition, MeshPolicy, MeshPolicyStatus};
use crate::policy::Verdict;

/// The condition type the operator owns.
pub const ACCEPTED: &str = "Accepted";

/// A status to write.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// JSON merge patch for the `status` subresource.
    pub patch: serde_json::Value,
    /// The condition's status or reason changed (not just its message or
    /// generation): worth an Event.
    pub transition: bool,
}

/// The `Accepted` condition for `verdict`, keeping the transition time of
/// `previous` when its status is the same.
pub fn accepted_condition(verdict: &Verdict, previous: Option<&Condition>, now: &str) -> Condition {
    let status = if verdict.accepted() { "True" } else { "False" };
    let last_transition_time = previous
        .filter(|p| p.status == status)
        .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
    Condition {
        type_: ACCEPTED.into(),
        status: status.into(),
        reason: verdict.reason.as_str().into(),
        message: verdict.message.clone(),
        observed_generation: verdict.generation,
        last_transition_time,
    }
}

/// What to write to `policy`'s status for `verdict` at `now` (RFC 3339), or
/// `None` when the status already says it. Conditions of other types are
/// kept as they are.
pub fn status_update(policy: &MeshPolicy, verdict: &Verdict, now: &str) -> Option<StatusUpdate> {
    let current = policy.status.clone().unwrap_or_default();
    let previous = current.conditions.iter().find(|c| c.type_ == ACCEPTED);
    let condition = accepted_condition(verdict, previous, now);
    let transition =
        previous.is_none_or(|p| p.status != condition.status || p.reason != condition.reason);
    let mut conditions = current.conditions.clone();
    match conditions.iter_mut().find(|c| c.type_ == ACCEPTED) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
    let desired = MeshPolicyStatus {
        observed_generation: verdict.generation,
        conditions,
    };
    if desired == current {
        return None;
    }
    Some(StatusUpdate {
        patch: serde_json::json!({ "status": desired }),
        transition,
    })
}
