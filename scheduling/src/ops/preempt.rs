//! Preemption: making room for a request by evicting lower-priority VMs.

use super::claim_for;
use crate::error::{CommitError, PlacementRequestError, PlacementStateError};
use crate::explain::{Diagnosis, Explanation};
use crate::fit::{fit_host, FitScratch};
use crate::model::HostId;
use crate::placement::Placement;
use crate::request::PlacementRequest;
use crate::scheduler::{DecideOptions, Scheduler};
use crate::state::State;
use serde::Serialize;
use std::collections::HashMap;

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
