//! Operations beyond single placement: gang placement, preemption, evacuation, rebalancing and the HA
//! reservation check. Each works on a [`State`] with a [`Scheduler`] and reuses the decision pipeline.
//!
//! They are deliberately simple, sequential algorithms (one decision per VM); none persists anything.

use crate::error::{CommitError, PlacementRequestError, PlacementStateError};
use crate::explain::{Diagnosis, Explanation};
use crate::fit::{fit_host, FitScratch};
use crate::model::{HostId, SlotAllocation};
use crate::placement::Placement;
use crate::request::{CompiledRequest, PlacementRequest};
use crate::scheduler::{DecideOptions, Scheduler};
use crate::state::{Claim, State};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a gang could not be placed. Nothing of the gang remains allocated.
#[derive(Debug, thiserror::Error, Clone)]
pub enum GangError {
    /// A member request is invalid (nothing was placed).
    #[error(transparent)]
    Request(#[from] PlacementRequestError),
    /// Member `index` did not fit; the members placed before it were released.
    #[error("gang member {index} (`{id}`) does not fit, gang rolled back: {}", explanation.summary)]
    Unschedulable {
        /// Position in the gang.
        index: usize,
        /// Its id.
        id: String,
        /// Why.
        explanation: Box<Explanation>,
    },
    /// A commit failed; the gang was rolled back.
    #[error("gang rolled back: {0}")]
    Commit(#[from] CommitError),
}

/// Places all of `members` or none: on the first failure every member placed so far is released, so
/// usage and allocations are as before (generations, being counters, have advanced).
pub fn place_gang(
    state: &mut State,
    scheduler: &mut Scheduler,
    members: &[PlacementRequest],
) -> Result<Vec<Placement>, GangError> {
    let compiled: Vec<Arc<CompiledRequest>> = members
        .iter()
        .map(|m| state.compile(m))
        .collect::<Result<_, _>>()?;
    let mut placed: Vec<Placement> = Vec::with_capacity(members.len());
    let rollback = |state: &mut State, placed: &[Placement]| {
        for p in placed.iter().rev() {
            // The consumer was committed just above, so release cannot fail.
            let _ = state.release(&p.consumer);
        }
    };
    for (index, req) in compiled.iter().enumerate() {
        let decision = match scheduler.decide(state, req, &DecideOptions::default()) {
            Ok(d) => d,
            Err(u) => {
                let explanation = Box::new(u.explain(state.cluster()));
                rollback(state, &placed);
                return Err(GangError::Unschedulable {
                    index,
                    id: req.id().to_string(),
                    explanation,
                });
            }
        };
        let p = decision.claim.placement(state.cluster());
        if let Err(e) = scheduler.commit(state, decision.claim) {
            rollback(state, &placed);
            return Err(e.into());
        }
        placed.push(p);
    }
    Ok(placed)
}

/// A preemption: which VMs to evict, and where the request then goes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Preemption {
    /// Host chosen.
    pub host: String,
    /// Consumers evicted (released), lowest priority first.
    pub victims: Vec<String>,
    /// The request's placement.
    pub placement: Placement,
}

/// Why preemption did not happen.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PreemptError {
    /// Invalid request.
    #[error(transparent)]
    Request(#[from] PlacementRequestError),
    /// The request fits without preemption: place it normally.
    #[error("request `{0}` fits without preemption")]
    NotNeeded(String),
    /// No host can take it even after evicting every lower-priority VM.
    #[error("no host can take `{id}` even by evicting lower-priority VMs: {}", explanation.summary)]
    Impossible {
        /// Request id.
        id: String,
        /// Why it does not fit without preemption.
        explanation: Box<Explanation>,
    },
    /// A state operation failed.
    #[error(transparent)]
    State(#[from] PlacementStateError),
}

/// Places `req` by evicting lower-priority VMs (kube-scheduler's approach): only hosts rejected for
/// resource reasons are candidates; on each, all lower-priority VMs are removed, then reprieved
/// highest-priority first while the request still fits. The host whose victims have the lowest
/// highest priority, then the fewest victims, wins. Victims are released; the caller reschedules them.
pub fn preempt(
    state: &mut State,
    scheduler: &mut Scheduler,
    req: &PlacementRequest,
) -> Result<Preemption, PreemptError> {
    let compiled = state.compile(req)?;
    let opts = DecideOptions {
        per_host_reasons: true,
        ..Default::default()
    };
    let diag: Diagnosis = match scheduler.decide(state, &compiled, &opts) {
        Ok(_) => return Err(PreemptError::NotNeeded(req.id.clone())),
        Err(u) => u.diagnosis,
    };
    let cluster = state.cluster().clone();
    let candidates: Vec<HostId> = diag
        .per_host
        .iter()
        .flatten()
        .filter(|(_, r)| r.is_resource())
        .map(|(h, _)| *h)
        .collect();
    let mut by_host: HashMap<HostId, Vec<(i32, &str)>> = HashMap::new();
    for (id, a) in state.allocations() {
        if a.request.priority < compiled.priority {
            by_host
                .entry(a.host)
                .or_default()
                .push((a.request.priority, id.as_str()));
        }
    }
    let mut used = state.used_slots().to_vec();
    let mut scratch = FitScratch::default();
    // (max victim priority, victim count, host, victims)
    let mut best: Option<(i32, usize, HostId, Vec<String>)> = None;
    for host in candidates {
        let Some(lower) = by_host.get_mut(&host) else {
            continue;
        };
        lower.sort_unstable();
        let slots = |id: &str| {
            state
                .allocation(id)
                .map(|a| a.slots.clone())
                .unwrap_or_default()
        };
        for (_, id) in lower.iter() {
            for a in slots(id) {
                used[a.slot().idx()] -= a.amount();
            }
        }
        if fit_host(&cluster, &used, &compiled, host, &mut scratch).is_ok() {
            let mut victims: Vec<&str> = Vec::new();
            // Reprieve the highest priorities first.
            for (_, id) in lower.iter().rev() {
                for a in slots(id) {
                    used[a.slot().idx()] += a.amount();
                }
                if fit_host(&cluster, &used, &compiled, host, &mut scratch).is_err() {
                    for a in slots(id) {
                        used[a.slot().idx()] -= a.amount();
                    }
                    victims.push(id);
                }
            }
            let max_prio = victims
                .iter()
                .filter_map(|v| state.allocation(v))
                .map(|a| a.request.priority)
                .max();
            let key = (max_prio.unwrap_or(i32::MIN), victims.len());
            if best.as_ref().is_none_or(|b| key < (b.0, b.1)) {
                best = Some((
                    key.0,
                    key.1,
                    host,
                    victims.iter().rev().map(|v| v.to_string()).collect(),
                ));
            }
            for id in victims {
                for a in slots(id) {
                    used[a.slot().idx()] += a.amount();
                }
            }
        } else {
            for (_, id) in lower.iter() {
                for a in slots(id) {
                    used[a.slot().idx()] += a.amount();
                }
            }
        }
    }
    let Some((_, _, host, victims)) = best else {
        return Err(PreemptError::Impossible {
            id: req.id.clone(),
            explanation: Box::new(diag.explain(&cluster, &compiled)),
        });
    };
    for v in &victims {
        state.release(v)?;
    }
    fit_host(&cluster, state.used_slots(), &compiled, host, &mut scratch).map_err(|_| {
        PlacementStateError::Commit(CommitError::GroupChanged("preemption fit vanished".into()))
    })?;
    let claim = claim_for(state, compiled, host, scratch.take_allocations());
    let placement = claim.placement(&cluster);
    state.commit(claim).map_err(PlacementStateError::from)?;
    Ok(Preemption {
        host: cluster.host(host).name.clone(),
        victims,
        placement,
    })
}

fn claim_for(
    state: &State,
    request: Arc<CompiledRequest>,
    host: HostId,
    allocations: Vec<SlotAllocation>,
) -> Claim {
    let group_epoch = request
        .server_group
        .and_then(|g| state.group(g.id))
        .map(|g| g.epoch());
    Claim::current(state, request, host, allocations, group_epoch)
}

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
    is_ha: impl Fn(&str, &crate::state::Allocation) -> bool,
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
        let mut moved: Vec<(String, crate::state::Allocation)> = Vec::new();
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
