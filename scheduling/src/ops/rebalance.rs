//! Rebalancing: proposing migrations that level the load or empty hosts.

use crate::model::HostId;
use crate::scheduler::{DecideOptions, Scheduler};
use crate::state::State;
use serde::Serialize;

/// A proposed migration.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Move {
    /// Consumer.
    pub consumer: String,
    /// Source host.
    pub from: String,
    /// Target host.
    pub to: String,
}

/// What the rebalancer aims for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RebalanceGoal {
    /// Lower the utilisation of the most loaded hosts (spread / balanced policies).
    LevelLoad,
    /// Empty the least loaded hosts entirely so they can be powered off (pack / power saving).
    DrainHosts,
}

fn dominant(state: &State, h: HostId) -> f64 {
    let c = state.cluster();
    c.tree(h)
        .iter()
        .flat_map(|p| p.slot_ids())
        .filter_map(|s| {
            let cap = c.slots()[s.idx()].capacity;
            (cap > 0).then(|| state.used(s) as f64 / cap as f64)
        })
        .fold(0.0, f64::max)
}

/// Proposes up to `max_moves` migrations toward `goal`, simulated on a copy of `state` (which is not
/// changed). Each move is a decision by `scheduler` with the source host excluded; a move is kept only
/// if it helps the goal (for `LevelLoad`, the target ends less loaded than the source was; for
/// `DrainHosts`, all VMs of the drained host found a place).
pub fn plan_rebalance(
    state: &State,
    scheduler: &mut Scheduler,
    goal: RebalanceGoal,
    max_moves: usize,
) -> Vec<Move> {
    let mut sim = state.clone();
    let cluster = state.cluster().clone();
    let mut moves = Vec::new();
    let mut tried: Vec<HostId> = Vec::new();
    while moves.len() < max_moves {
        let hosts = (0..cluster.host_count())
            .map(HostId::new)
            .filter(|h| !sim.is_disabled(*h) && sim.vm_count(*h) > 0 && !tried.contains(h));
        let source = match goal {
            RebalanceGoal::LevelLoad => {
                hosts.max_by(|a, b| dominant(&sim, *a).total_cmp(&dominant(&sim, *b)))
            }
            RebalanceGoal::DrainHosts => {
                hosts.min_by(|a, b| dominant(&sim, *a).total_cmp(&dominant(&sim, *b)))
            }
        };
        let Some(source) = source else { break };
        tried.push(source);
        let mut vms: Vec<(u64, String)> = sim
            .allocations()
            .iter()
            .filter(|(_, a)| a.host == source)
            .map(|(id, a)| (a.slots.iter().map(|s| s.amount()).sum(), id.clone()))
            .collect();
        vms.sort_unstable();
        match goal {
            RebalanceGoal::LevelLoad => {
                let before = dominant(&sim, source);
                // Move the smallest VM if it lands somewhere that stays below the source's load.
                let Some((_, id)) = vms.first().cloned() else {
                    continue;
                };
                let Some(req) = sim.allocation(&id).map(|a| a.request.clone()) else {
                    continue;
                };
                if let Ok(d) = scheduler.decide(
                    &sim,
                    &req,
                    &DecideOptions {
                        exclude: &[source],
                        ..Default::default()
                    },
                ) {
                    let to = d.claim.host;
                    let mut trial = sim.clone();
                    if trial.migrate(&id, d.claim).is_ok() && dominant(&trial, to) < before {
                        sim = trial;
                        tried.clear();
                        moves.push(Move {
                            consumer: id,
                            from: cluster.host(source).name.clone(),
                            to: cluster.host(to).name.clone(),
                        });
                    }
                }
            }
            RebalanceGoal::DrainHosts => {
                if moves.len() + vms.len() > max_moves {
                    continue;
                }
                let mut trial = sim.clone();
                let mut planned = Vec::new();
                // Never move onto hosts that are empty (that would not free anything).
                let empty: Vec<HostId> = (0..cluster.host_count())
                    .map(HostId::new)
                    .filter(|h| trial.vm_count(*h) == 0)
                    .collect();
                let mut exclude = empty;
                exclude.push(source);
                for (_, id) in vms.iter().rev() {
                    let Some(req) = trial.allocation(id).map(|a| a.request.clone()) else {
                        break;
                    };
                    let Ok(d) = scheduler.decide(
                        &trial,
                        &req,
                        &DecideOptions {
                            exclude: &exclude,
                            ..Default::default()
                        },
                    ) else {
                        break;
                    };
                    let to = d.claim.host;
                    if trial.migrate(id, d.claim).is_err() {
                        break;
                    }
                    planned.push(Move {
                        consumer: id.clone(),
                        from: cluster.host(source).name.clone(),
                        to: cluster.host(to).name.clone(),
                    });
                }
                if planned.len() == vms.len() {
                    sim = trial;
                    moves.extend(planned);
                }
            }
        }
    }
    moves
}
