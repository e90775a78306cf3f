//! Evacuation: moving every VM off a failed or drained host.

use crate::error::PlacementStateError;
use crate::scheduler::{DecideOptions, Scheduler};
use crate::state::State;
use serde::Serialize;

/// Result of an evacuation.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Evacuation {
    /// `(consumer, new host)`.
    pub moved: Vec<(String, String)>,
    /// `(consumer, why it could not move)`; these stay allocated on the failed host.
    pub stranded: Vec<(String, String)>,
}

/// Disables `host` and moves its VMs elsewhere, highest priority (then largest) first.
pub fn evacuate(
    state: &mut State,
    scheduler: &mut Scheduler,
    host: &str,
) -> Result<Evacuation, PlacementStateError> {
    let cluster = state.cluster().clone();
    let h = cluster
        .host_id(host)
        .ok_or_else(|| PlacementStateError::UnknownHost(host.into()))?;
    state.set_host_enabled(h, false);
    let mut vms: Vec<(i32, u64, String)> = state
        .allocations()
        .iter()
        .filter(|(_, a)| a.host == h)
        .map(|(id, a)| {
            (
                a.request.priority,
                a.slots.iter().map(|s| s.amount()).sum(),
                id.clone(),
            )
        })
        .collect();
    vms.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Evacuation::default();
    for (_, _, id) in vms {
        let Some(req) = state.allocation(&id).map(|a| a.request.clone()) else {
            continue;
        };
        match scheduler.decide(
            state,
            &req,
            &DecideOptions {
                exclude: &[h],
                ..Default::default()
            },
        ) {
            Ok(d) => {
                let to = cluster.host(d.claim.host).name.clone();
                match state.migrate(&id, d.claim) {
                    Ok(()) => out.moved.push((id, to)),
                    Err(e) => out.stranded.push((id, e.to_string())),
                }
            }
            Err(u) => out.stranded.push((id, u.explain(&cluster).summary)),
        }
    }
    Ok(out)
}
