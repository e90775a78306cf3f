//! Keel's explanation of an unplaceable VMI in Kubernetes words, for the `PodScheduled`
//! condition: `0/5 nodes available: 3 insufficient memory, 2 untolerated taint
//! dedicated=db:NoSchedule`.

use scheduling::{Explanation, RejectionReason};

use super::{MEMORY, VCPU};

/// One reason in Kubernetes words (resource classes as `memory` and `cpu`, hosts as nodes).
pub fn reason_text(reason: &RejectionReason) -> String {
    match reason {
        RejectionReason::Insufficient { class } if class == MEMORY => "insufficient memory".into(),
        RejectionReason::Insufficient { class } if class == VCPU => "insufficient cpu".into(),
        RejectionReason::HostDisabled => "node disabled".into(),
        RejectionReason::NodeSelector { key, value } => {
            format!("node selector {key}={value} not matched")
        }
        other => other.to_string(),
    }
}

/// The summary line: how many nodes are available, then each reason with its count, most
/// frequent first.
pub fn kubernetes_summary(explanation: &Explanation) -> String {
    let rejected: u32 = explanation.details.iter().map(|(_, n)| *n).sum();
    let total = total_from_summary(&explanation.summary).unwrap_or(rejected);
    let mut details = explanation.details.clone();
    details.sort_by_key(|d| std::cmp::Reverse(d.1));
    let reasons: Vec<String> = details
        .iter()
        .map(|(reason, n)| format!("{n} {}", reason_text(reason)))
        .collect();
    if reasons.is_empty() {
        format!("0/{total} nodes available")
    } else {
        format!("0/{total} nodes available: {}", reasons.join(", "))
    }
}

/// The host count in the library's summary (`0/N hosts available...`).
fn total_from_summary(summary: &str) -> Option<u32> {
    summary
        .strip_prefix("0/")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_rejection_reads_as_kubernetes_writes_it() {
        let cluster = Arc::new(
            scheduling::Cluster::from_json(
                r#"{"hosts": [
                {"name": "a", "inventories": {"MEMORY_MB": {"total": 1024}, "VCPU": {"total": 10}}},
                {"name": "b", "inventories": {"MEMORY_MB": {"total": 1024}, "VCPU": {"total": 10}}},
                {"name": "c", "taints": ["dedicated=db:NoSchedule"],
                 "inventories": {"MEMORY_MB": {"total": 65536}, "VCPU": {"total": 10}}}]}"#,
            )
            .unwrap(),
        );
        let state = scheduling::State::new(cluster.clone());
        let request = state
            .compile(&scheduling::PlacementRequest::new(
                "vm",
                &[(MEMORY, 4096), (VCPU, 1)],
            ))
            .unwrap();
        let mut scheduler = scheduling::Scheduler::new(Arc::new(scheduling::Profile::default()), 1);
        let why = scheduler
            .decide(&state, &request, &scheduling::DecideOptions::default())
            .unwrap_err()
            .explain(&cluster);
        assert_eq!(
            kubernetes_summary(&why),
            "0/3 nodes available: 2 insufficient memory, 1 untolerated taint dedicated=db:NoSchedule"
        );
    }
}
