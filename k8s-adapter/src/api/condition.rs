//! Status conditions (`Ready`, `Synchronized`, `Paused`, `PodScheduled`), as Kubernetes writes
//! them: a type, a status, a reason in CamelCase and a message in a sentence.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `Ready`: the guest runs.
pub const READY: &str = "Ready";
/// `Synchronized`: the controller's view matches the node's (false with a reason when the VM
/// cannot be started or its node or pod was lost).
pub const SYNCHRONIZED: &str = "Synchronized";
/// `Paused`: the guest is paused.
pub const PAUSED: &str = "Paused";
/// `PodScheduled`: the launcher pod has a node (false with the scheduler's explanation).
pub const POD_SCHEDULED: &str = "PodScheduled";

/// One condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why, in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

impl Condition {
    /// A condition of `type_` that is `status`, with a reason and a message.
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Condition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: (!reason.is_empty()).then(|| reason.to_string()),
            message: (!message.is_empty()).then_some(message),
            last_transition_time: None,
        }
    }

    /// Whether the condition is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// The condition of `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `desired` with each condition's transition time taken from `previous` when its status did
/// not change, and `now` when it did (so re-applying the same conditions changes nothing).
pub fn with_transition_times(
    desired: Vec<Condition>,
    previous: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|mut condition| {
            condition.last_transition_time = match find(previous, &condition.type_) {
                Some(old) if old.status == condition.status => old
                    .last_transition_time
                    .clone()
                    .or_else(|| Some(now.clone())),
                _ => Some(now.clone()),
            };
            condition
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
        let first =
            with_transition_times(vec![Condition::new(READY, false, "Starting", "")], &[], &t0);
        assert_eq!(first[0].last_transition_time, Some(t0.clone()));
        let same = with_transition_times(
            vec![Condition::new(READY, false, "Starting", "still")],
            &first,
            &t1,
        );
        assert_eq!(same[0].last_transition_time, Some(t0));
        let flipped =
            with_transition_times(vec![Condition::new(READY, true, "Running", "")], &same, &t1);
        assert_eq!(flipped[0].last_transition_time, Some(t1));
        assert!(flipped[0].is_true());
    }
}
