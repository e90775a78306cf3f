//! What a VirtualMachine's run strategy asks for, given its current instance: a pure decision,
//! and the one-word status people read in `kubectl get vm`.

use crate::api::{Phase, RunStrategy};

/// The instance as the VM controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Its phase (`None` before the controller wrote one).
    pub phase: Option<Phase>,
    /// Being deleted.
    pub terminating: bool,
    /// Its `PodScheduled` condition is false with reason `Unschedulable`.
    pub unschedulable: bool,
}

/// What to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: the instance is as it should be (or on its way).
    Keep,
    /// Create an instance.
    Create,
    /// Delete the instance (to stop it, or to restart it: the next pass creates a new one).
    Delete,
}

/// The decision for `strategy` with `instance` (`None`: no instance exists). `ran_once` says
/// whether a `Once` VM already had its instance.
pub fn decide(strategy: RunStrategy, instance: Option<Instance>, ran_once: bool) -> Decision {
    let Some(instance) = instance else {
        return match strategy {
            RunStrategy::Always | RunStrategy::RerunOnFailure => Decision::Create,
            RunStrategy::Once if !ran_once => Decision::Create,
            RunStrategy::Once | RunStrategy::Halted | RunStrategy::Manual => Decision::Keep,
        };
    };
    if instance.terminating {
        return Decision::Keep;
    }
    match (strategy, instance.phase) {
        (RunStrategy::Halted, _) => Decision::Delete,
        (RunStrategy::Always, Some(Phase::Succeeded | Phase::Failed)) => Decision::Delete,
        (RunStrategy::RerunOnFailure, Some(Phase::Failed)) => Decision::Delete,
        _ => Decision::Keep,
    }
}

/// `printableStatus` for a VM.
pub fn printable_status(
    strategy: RunStrategy,
    instance: Option<Instance>,
    vm_terminating: bool,
) -> &'static str {
    if vm_terminating {
        return "Terminating";
    }
    let Some(instance) = instance else {
        return "Stopped";
    };
    if instance.terminating {
        return "Stopping";
    }
    match instance.phase {
        None | Some(Phase::Pending) if instance.unschedulable => "ErrorUnschedulable",
        None | Some(Phase::Pending | Phase::Scheduling | Phase::Scheduled) => "Starting",
        Some(Phase::Running) => "Running",
        Some(Phase::Succeeded) => "Succeeded",
        Some(Phase::Failed) if strategy == RunStrategy::Always => "CrashLoopBackOff",
        Some(Phase::Failed) => "Failed",
        Some(Phase::Unknown) => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(phase: Phase) -> Option<Instance> {
        Some(Instance {
            phase: Some(phase),
            terminating: false,
            unschedulable: false,
        })
    }

    #[test]
    fn each_strategy_creates_keeps_or_deletes_as_documented() {
        use Decision::*;
        use Phase::*;
        use RunStrategy::*;
        let rows = [
            (Always, None, false, Create),
            (Always, vmi(Running), false, Keep),
            (Always, vmi(Succeeded), false, Delete),
            (Always, vmi(Failed), false, Delete),
            (RerunOnFailure, None, false, Create),
            (RerunOnFailure, vmi(Failed), false, Delete),
            (RerunOnFailure, vmi(Succeeded), false, Keep),
            (Once, None, false, Create),
            (Once, None, true, Keep),
            (Once, vmi(Succeeded), true, Keep),
            (Once, vmi(Failed), true, Keep),
            (Halted, None, false, Keep),
            (Halted, vmi(Running), false, Delete),
            (Halted, vmi(Pending), false, Delete),
            (Manual, None, false, Keep),
            (Manual, vmi(Failed), false, Keep),
        ];
        for (i, (strategy, instance, ran_once, want)) in rows.into_iter().enumerate() {
            assert_eq!(
                decide(strategy, instance, ran_once),
                want,
                "row {i}: {strategy:?}"
            );
        }
        let terminating = Some(Instance {
            phase: Some(Running),
            terminating: true,
            unschedulable: false,
        });
        assert_eq!(
            decide(Halted, terminating, false),
            Keep,
            "already on its way"
        );
    }

    #[test]
    fn printable_status_reads_as_kubectl_shows_it() {
        use Phase::*;
        use RunStrategy::*;
        assert_eq!(printable_status(Halted, None, false), "Stopped");
        assert_eq!(printable_status(Always, vmi(Scheduling), false), "Starting");
        assert_eq!(printable_status(Always, vmi(Running), false), "Running");
        assert_eq!(
            printable_status(Always, vmi(Failed), false),
            "CrashLoopBackOff"
        );
        assert_eq!(printable_status(Once, vmi(Failed), false), "Failed");
        assert_eq!(printable_status(Once, vmi(Succeeded), false), "Succeeded");
        assert_eq!(printable_status(Always, vmi(Running), true), "Terminating");
        let unschedulable = Some(Instance {
            phase: Some(Pending),
            terminating: false,
            unschedulable: true,
        });
        assert_eq!(
            printable_status(Always, unschedulable, false),
            "ErrorUnschedulable"
        );
        let stopping = Some(Instance {
            phase: Some(Running),
            terminating: true,
            unschedulable: false,
        });
        assert_eq!(printable_status(Halted, stopping, false), "Stopping");
    }
}
