//! The VMI's phase and conditions from what the controller observes: its launcher pod, the node
//! agent's report, whether the node still exists, and what placement said.
//!
//! A pure function of its inputs (no I/O), so every combination is a row of a table test.

use crate::api::condition::{self, Condition};
use crate::api::{NodeReport, Phase, VmmState};

/// What the controller sees of the launcher pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: String,
    /// The node it is bound to.
    pub node_name: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// kube-scheduler's `PodScheduled=False` message, when it could not place the pod.
    pub unschedulable: Option<String>,
}

/// Everything the phase depends on.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The phase in status now.
    pub previous: Option<Phase>,
    /// The launcher pod, if it exists.
    pub pod: Option<PodView>,
    /// Whether a launcher pod was ever created for this VMI (status names one).
    pub pod_was_created: bool,
    /// The node agent's report, if any (only a report for this node counts).
    pub report: Option<&'a NodeReport>,
    /// The pod's node is gone from the API (or never existed).
    pub node_lost: bool,
    /// Keel's placement explanation when the VMI fits nowhere (keel mode).
    pub placement_failure: Option<String>,
    /// The pod could not be rendered or created (a sentence).
    pub create_failure: Option<String>,
}

/// The phase and conditions to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    /// The phase.
    pub phase: Phase,
    /// The conditions (transition times unset; see [`condition::with_transition_times`]).
    pub conditions: Vec<Condition>,
}

fn computed(phase: Phase, conditions: Vec<Condition>) -> Computed {
    Computed { phase, conditions }
}

fn failed(reason: &str, message: String, scheduled: bool) -> Computed {
    let mut conditions = vec![
        Condition::new(condition::READY, false, reason, message.clone()),
        Condition::new(condition::SYNCHRONIZED, false, reason, message),
    ];
    if scheduled {
        conditions.push(Condition::new(condition::POD_SCHEDULED, true, "", ""));
    }
    computed(Phase::Failed, conditions)
}

fn ended(report: &NodeReport) -> Computed {
    let reason = report.exit_reason.clone().unwrap_or_default();
    let message = report
        .message
        .clone()
        .unwrap_or_else(|| format!("the guest ended: {reason}"));
    let scheduled = Condition::new(condition::POD_SCHEDULED, true, "", "");
    if report.exited_cleanly() {
        computed(
            Phase::Succeeded,
            vec![
                Condition::new(condition::READY, false, "GuestEnded", message),
                Condition::new(condition::SYNCHRONIZED, true, "", ""),
                scheduled,
            ],
        )
    } else {
        let why = if report.state == VmmState::Failed {
            "VmmFailed"
        } else {
            "GuestCrashed"
        };
        failed(why, message, true)
    }
}

/// The phase and conditions for what was observed.
pub fn compute(observed: &Observed<'_>) -> Computed {
    let report = observed.report;
    // A final phase is final: a new run is a new VMI.
    if let Some(previous) = observed.previous.filter(|p| p.is_final()) {
        let keep = report.filter(|r| matches!(r.state, VmmState::Exited | VmmState::Failed));
        return match keep {
            Some(r) => ended(r),
            None => computed(previous, Vec::new()),
        };
    }
    if let Some(r) = report.filter(|r| matches!(r.state, VmmState::Exited | VmmState::Failed)) {
        return ended(r);
    }
    if let Some(why) = &observed.create_failure {
        return failed("FailedCreate", why.clone(), false);
    }
    let was_placed = matches!(
        observed.previous,
        Some(Phase::Scheduled | Phase::Running | Phase::Unknown)
    );
    let Some(pod) = &observed.pod else {
        if was_placed || observed.pod_was_created && report.is_some() {
            return failed(
                "LauncherPodGone",
                "the launcher pod was deleted while the VM was placed".to_string(),
                true,
            );
        }
        return computed(
            Phase::Pending,
            vec![
                Condition::new(condition::READY, false, "PodNotCreated", ""),
                Condition::new(condition::SYNCHRONIZED, true, "", ""),
            ],
        );
    };
    let Some(node) = &pod.node_name else {
        let message = observed
            .placement_failure
            .clone()
            .or_else(|| pod.unschedulable.clone());
        let scheduled = match &message {
            Some(m) => Condition::new(condition::POD_SCHEDULED, false, "Unschedulable", m.clone()),
            None => Condition::new(condition::POD_SCHEDULED, false, "Scheduling", ""),
        };
        // Unschedulable VMIs stay Pending (as KubeVirt's do); Scheduling while a decision is due.
        let phase = if message.is_some() {
            Phase::Pending
        } else {
            Phase::Scheduling
        };
        return computed(
            phase,
            vec![
                Condition::new(condition::READY, false, "PodNotScheduled", ""),
                Condition::new(condition::SYNCHRONIZED, true, "", ""),
                scheduled,
            ],
        );
    };
    if observed.node_lost {
        return failed("NodeLost", format!("node {node} no longer exists"), true);
    }
    if matches!(pod.phase.as_str(), "Failed" | "Succeeded") {
        // The pod ended without the agent reporting the guest's end: the VMM died.
        return failed(
            "LauncherPodEnded",
            format!("the launcher pod is {} without a guest exit", pod.phase),
            true,
        );
    }
    let scheduled = Condition::new(condition::POD_SCHEDULED, true, "", "");
    match report.map(|r| r.state) {
        Some(VmmState::Running) => computed(
            Phase::Running,
            vec![
                Condition::new(condition::READY, true, "", ""),
                Condition::new(condition::SYNCHRONIZED, true, "", ""),
                scheduled,
            ],
        ),
        Some(VmmState::Paused) => computed(
            Phase::Running,
            vec![
                Condition::new(condition::READY, false, "Paused", "the guest is paused"),
                Condition::new(condition::SYNCHRONIZED, true, "", ""),
                Condition::new(condition::PAUSED, true, "PausedByUser", ""),
                scheduled,
            ],
        ),
        _ => computed(
            Phase::Scheduled,
            vec![
                Condition::new(
                    condition::READY,
                    false,
                    "Starting",
                    format!("starting on {node}"),
                ),
                Condition::new(condition::SYNCHRONIZED, true, "", ""),
                scheduled,
            ],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, node: Option<&str>) -> Option<PodView> {
        Some(PodView {
            phase: phase.to_string(),
            node_name: node.map(str::to_string),
            ..Default::default()
        })
    }

    fn report(state: VmmState, exit: Option<&str>) -> NodeReport {
        NodeReport {
            node: "n1".into(),
            state,
            pid: Some(1),
            boots: 1,
            exit_reason: exit.map(str::to_string),
            message: None,
            console_tail: Vec::new(),
        }
    }

    fn ready(c: &Computed) -> Option<(String, Option<String>)> {
        condition::find(&c.conditions, condition::READY)
            .map(|c| (c.status.clone(), c.reason.clone()))
    }

    #[test]
    fn pod_state_and_agent_report_give_the_phase() {
        let running = report(VmmState::Running, None);
        let paused = report(VmmState::Paused, None);
        let starting = report(VmmState::Starting, None);
        let off = report(VmmState::Exited, Some("shutdown"));
        let reset = report(VmmState::Exited, Some("reset"));
        let crash = report(VmmState::Exited, Some("triple_fault"));
        let vmm_failed = report(VmmState::Failed, None);
        use Phase::*;
        // (previous, pod, report, node lost, expected phase, Ready reason)
        type Row<'a> = (
            Option<Phase>,
            Option<PodView>,
            Option<&'a NodeReport>,
            bool,
            Phase,
            Option<&'a str>,
        );
        let rows: Vec<Row> = vec![
            (None, None, None, false, Pending, Some("PodNotCreated")),
            (
                Some(Pending),
                pod("Pending", None),
                None,
                false,
                Scheduling,
                Some("PodNotScheduled"),
            ),
            (
                Some(Scheduling),
                pod("Pending", Some("n1")),
                None,
                false,
                Scheduled,
                Some("Starting"),
            ),
            (
                Some(Scheduled),
                pod("Pending", Some("n1")),
                Some(&starting),
                false,
                Scheduled,
                Some("Starting"),
            ),
            (
                Some(Scheduled),
                pod("Pending", Some("n1")),
                Some(&running),
                false,
                Running,
                None,
            ),
            (
                Some(Running),
                pod("Running", Some("n1")),
                Some(&running),
                false,
                Running,
                None,
            ),
            (
                Some(Running),
                pod("Running", Some("n1")),
                Some(&paused),
                false,
                Running,
                Some("Paused"),
            ),
            (
                Some(Running),
                pod("Running", Some("n1")),
                Some(&off),
                false,
                Succeeded,
                Some("GuestEnded"),
            ),
            (
                Some(Running),
                pod("Succeeded", Some("n1")),
                Some(&reset),
                false,
                Succeeded,
                Some("GuestEnded"),
            ),
            (
                Some(Running),
                pod("Running", Some("n1")),
                Some(&crash),
                false,
                Failed,
                Some("GuestCrashed"),
            ),
            (
                Some(Scheduled),
                pod("Pending", Some("n1")),
                Some(&vmm_failed),
                false,
                Failed,
                Some("VmmFailed"),
            ),
            (
                Some(Running),
                None,
                Some(&running),
                false,
                Failed,
                Some("LauncherPodGone"),
            ),
            (
                Some(Scheduled),
                None,
                None,
                false,
                Failed,
                Some("LauncherPodGone"),
            ),
            (
                Some(Running),
                pod("Running", Some("n1")),
                Some(&running),
                true,
                Failed,
                Some("NodeLost"),
            ),
            (
                Some(Running),
                pod("Failed", Some("n1")),
                Some(&running),
                false,
                Failed,
                Some("LauncherPodEnded"),
            ),
            // Final phases stay final whatever is seen next.
            (Some(Succeeded), None, None, false, Succeeded, None),
            (
                Some(Failed),
                pod("Running", Some("n1")),
                Some(&running),
                false,
                Failed,
                None,
            ),
            (
                Some(Succeeded),
                pod("Succeeded", Some("n1")),
                Some(&off),
                false,
                Succeeded,
                Some("GuestEnded"),
            ),
        ];
        for (i, (previous, pod, report, node_lost, phase, reason)) in rows.into_iter().enumerate() {
            let got = compute(&Observed {
                previous,
                pod,
                pod_was_created: previous.is_some(),
                report,
                node_lost,
                ..Default::default()
            });
            assert_eq!(got.phase, phase, "row {i}");
            if let Some(reason) = reason {
                assert_eq!(
                    ready(&got).and_then(|r| r.1).as_deref(),
                    Some(reason),
                    "row {i}"
                );
            }
            let is_ready = ready(&got).is_some_and(|r| r.0 == "True");
            assert_eq!(is_ready, phase == Running && reason.is_none(), "row {i}");
        }
    }

    #[test]
    fn an_unplaceable_vmi_stays_pending_with_the_explanation_in_pod_scheduled() {
        let why = "0/3 nodes available: 3 insufficient memory";
        let got = compute(&Observed {
            previous: Some(Phase::Scheduling),
            pod: pod("Pending", None),
            placement_failure: Some(why.to_string()),
            ..Default::default()
        });
        assert_eq!(got.phase, Phase::Pending);
        let scheduled = condition::find(&got.conditions, condition::POD_SCHEDULED).unwrap();
        assert_eq!(scheduled.status, "False");
        assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(scheduled.message.as_deref(), Some(why));
        // kube-scheduler's own message is used in its mode.
        let mut p = pod("Pending", None).unwrap();
        p.unschedulable = Some("0/2 nodes are available: 2 Insufficient memory.".into());
        let got = compute(&Observed {
            pod: Some(p),
            ..Default::default()
        });
        let scheduled = condition::find(&got.conditions, condition::POD_SCHEDULED).unwrap();
        assert!(scheduled
            .message
            .as_deref()
            .unwrap()
            .contains("Insufficient memory"));
    }

    #[test]
    fn a_pod_that_cannot_be_created_fails_the_vmi_with_the_reason() {
        let got = compute(&Observed {
            create_failure: Some("spec.domain.memory.guest: `x` is not a resource quantity".into()),
            ..Default::default()
        });
        assert_eq!(got.phase, Phase::Failed);
        let sync = condition::find(&got.conditions, condition::SYNCHRONIZED).unwrap();
        assert_eq!(sync.reason.as_deref(), Some("FailedCreate"));
    }
}
