//! The HA reservation check: can every HA VM restart after any single host failure?

use super::claim_for;
use crate::model::HostId;
use crate::scheduler::{DecideOptions, Scheduler};
use crate::state::{Allocation, State};
use serde::Serialize;
use std::collections::HashMap;

/// Result of the HA reservation check.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HaReport {
    /// Hosts whose failure would leave HA VMs without a place: `(host, VMs that could not restart)`.
    pub failures: Vec<(String, Vec<String>)>,
    /// Hosts checked.
    pub hosts_checked: usize,
}

impl HaReport {
    /// Whether every HA VM can restart after any single host failure.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// For every host running HA VMs (those for which `is_ha` holds), simulates its failure on a copy of
/// the state and restarts its HA VMs elsewhere, one decision each (oVirt's HA reservation). `state` is
/// not changed.
pub fn ha_check(
    state: &State,
    scheduler: &mut Scheduler,
    is_ha: impl Fn(&str, &Allocation) -> bool,
) -> HaReport {
    let cluster = state.cluster().clone();
    let mut by_host: HashMap<HostId, Vec<String>> = HashMap::new();
    for (id, a) in state.allocations() {
        if is_ha(id, a) {
            by_host.entry(a.host).or_default().push(id.clone());
        }
    }
    let mut hosts: Vec<_> = by_host.into_iter().collect();
    hosts.sort_unstable();
    let mut report = HaReport::default();
    let mut sim = state.clone();
    for (host, mut vms) in hosts {
        report.hosts_checked += 1;
        vms.sort_unstable();
        let mut moved: Vec<(String, Allocation)> = Vec::new();
        let mut lost = Vec::new();
        for id in vms {
            let Some(orig) = sim.allocation(&id).cloned() else {
                continue;
            };
            match scheduler.decide(
                &sim,
                &orig.request,
                &DecideOptions {
                    exclude: &[host],
                    ..Default::default()
                },
            ) {
                Ok(d) => match sim.migrate(&id, d.claim) {
                    Ok(()) => moved.push((id, orig)),
                    Err(_) => lost.push(id),
                },
                Err(_) => lost.push(id),
            }
        }
        // Restore: move the restarted VMs back to the host, on the exact slots they had.
        for (id, orig) in moved.into_iter().rev() {
            let claim = claim_for(&sim, orig.request.clone(), host, orig.slots.clone());
            if sim.migrate(&id, claim).is_err() {
                // Cannot happen (the slots were freed by the move); fall back to a fresh copy.
                sim = state.clone();
            }
        }
        if !lost.is_empty() {
            report
                .failures
                .push((cluster.host(host).name.clone(), lost));
        }
    }
    report
}
