//! Rebuilding a state from persisted placements, after a manager restarts.
//!
//! The scheduling library persists nothing: the manager stores each [`Placement`] it is handed (it is
//! `Serialize + Deserialize`, and names hosts, providers and classes rather than ids), and gives them
//! back to [`State::restore`] with the cluster description. Every placement is checked against the
//! cluster and against the usage of those before it; the first one that does not fit is refused with
//! an error naming it (and the provider at fault), and nothing of the list is applied.

use super::validate_server_group;
use super::State;
use crate::error::RestoreError;
use crate::model::{
    ClassId, Cluster, HostId, ServerGroupId, ServerGroupSpec, SlotAllocation, SlotId,
};
use crate::placement::Placement;
use crate::request::{CompiledRequest, GroupRef};
use std::collections::HashSet;
use std::sync::Arc;

/// One placement, checked and resolved to ids, waiting to be applied.
struct Resolved {
    host: HostId,
    slots: Vec<SlotAllocation>,
    request: Arc<CompiledRequest>,
}

impl State {
    /// A state for `cluster` holding exactly `placements` (in order), as after a restart: the
    /// cluster's declared server groups are created first, then every placement is checked and
    /// allocated as [`State::import`] does.
    ///
    /// ```
    /// use scheduling::{Cluster, Placement, PlacementRequest, Placer, Profile, RestoreError, State};
    /// use std::sync::Arc;
    ///
    /// let cluster = Arc::new(Cluster::from_json(r#"{"hosts": [
    ///   {"name": "a", "inventories": {"VCPU": {"total": 8}}}]}"#).unwrap());
    /// let mut placer = Placer::new(cluster.clone(), Profile::default(), 1);
    /// let stored = serde_json::to_string(&[
    ///     placer.place(&PlacementRequest::new("vm-1", &[("VCPU", 6)])).unwrap(),
    /// ]).unwrap();
    ///
    /// // After a restart: the same cluster, the placements read back.
    /// let placements: Vec<Placement> = serde_json::from_str(&stored).unwrap();
    /// let state = State::restore(cluster.clone(), &placements).unwrap();
    /// assert!(state.allocation("vm-1").is_some());
    ///
    /// // Importing them again would allocate vm-1 twice: refused, and the state is unchanged.
    /// let mut state = state;
    /// let err = state.import(&placements).unwrap_err();
    /// assert_eq!(err, RestoreError::DuplicateConsumer("vm-1".into()));
    /// assert_eq!(state.allocations().len(), 1);
    /// ```
    pub fn restore(cluster: Arc<Cluster>, placements: &[Placement]) -> Result<State, RestoreError> {
        let mut state = State::new(cluster);
        state.import(placements)?;
        Ok(state)
    }

    /// Adds `placements` to this state's allocations, all or nothing: each must name a known host, and
    /// providers in that host's reach (its tree, or shared providers of its aggregates) with
    /// inventories of the classes named; amounts must respect each inventory's min/max unit and step
    /// and fit within what is left of its capacity (after the state's current usage and the
    /// placements before it in the list); resources must add up to what the request asks for per
    /// class; its request must compile against the cluster and this state's server groups, or the
    /// group the placement records (groups made at run time are created on first use, unless one of
    /// that name exists with another policy); and no consumer may
    /// already hold an allocation. The first violation is returned, naming the placement, and the
    /// state is left exactly as it was.
    ///
    /// Server group policies are not re-checked: the placements were decided under them, and a VM
    /// that is running where it runs is a fact to record (its membership is counted, so later
    /// decisions respect it). Disabled hosts accept placements (they keep their VMs); retired ones
    /// do not.
    pub fn import(&mut self, placements: &[Placement]) -> Result<(), RestoreError> {
        let mut used = self.used.clone();
        let mut seen: HashSet<&str> = HashSet::with_capacity(placements.len());
        let mut resolved = Vec::with_capacity(placements.len());
        // Server groups the placements define and the state lacks: created on first use, once
        // every placement has been checked.
        let mut new_groups: Vec<ServerGroupSpec> = Vec::new();
        for p in placements {
            if !seen.insert(p.consumer.as_str()) || self.allocations.contains_key(&p.consumer) {
                return Err(RestoreError::DuplicateConsumer(p.consumer.clone()));
            }
            self.note_group(p, &mut new_groups)?;
            resolved.push(self.resolve(p, &mut used, &new_groups)?);
        }
        for g in new_groups {
            // Validated and unique by name in `note_group`.
            let _ = self.create_server_group(g);
        }
        for r in resolved {
            self.apply(r.host, r.slots, r.request);
        }
        Ok(())
    }

    /// Checks the server group a placement records against the state's (and those `pending`
    /// creation), adding it to `pending` if it is new.
    fn note_group(
        &self,
        p: &Placement,
        pending: &mut Vec<ServerGroupSpec>,
    ) -> Result<(), RestoreError> {
        let (Some(name), Some(spec)) = (&p.request.server_group, &p.server_group) else {
            return Ok(());
        };
        let conflict = |reason: String| RestoreError::ServerGroupConflict {
            consumer: p.consumer.clone(),
            group: name.clone(),
            reason,
        };
        if &spec.name != name {
            return Err(conflict(format!(
                "the placement records group `{}` for it",
                spec.name
            )));
        }
        validate_server_group(spec).map_err(|e| conflict(e.to_string()))?;
        let have = match self.group_id(name) {
            Some(id) => Some(&self.groups[id.idx()].spec),
            None => pending.iter().find(|g| &g.name == name),
        };
        let effective = |g: &ServerGroupSpec| (g.policy, g.max_per_host.unwrap_or(1));
        match have {
            Some(h) if effective(h) != effective(spec) => Err(conflict(format!(
                "it exists with policy {} (max_per_host {}), the placement records {} (max_per_host {})",
                h.policy,
                effective(h).1,
                spec.policy,
                effective(spec).1
            ))),
            Some(_) => Ok(()),
            None => {
                pending.push(spec.clone());
                Ok(())
            }
        }
    }

    /// Every allocation by names, sorted by consumer: what a manager would persist to be able to
    /// [`State::restore`] this state.
    pub fn placements(&self) -> Vec<Placement> {
        let mut all: Vec<Placement> = self
            .allocations
            .values()
            .map(|a| a.placement(&self.cluster))
            .collect();
        all.sort_unstable_by(|a, b| a.consumer.cmp(&b.consumer));
        all
    }

    /// Checks one placement against the cluster and `used` (which it then includes).
    fn resolve(
        &self,
        p: &Placement,
        used: &mut [u64],
        pending: &[ServerGroupSpec],
    ) -> Result<Resolved, RestoreError> {
        let c = &*self.cluster;
        let consumer = || p.consumer.clone();
        if p.request.id != p.consumer {
            return Err(RestoreError::ConsumerMismatch {
                consumer: consumer(),
                request: p.request.id.clone(),
            });
        }
        let request = CompiledRequest::compile_shared(p.request.clone(), c, |name| {
            if let Some(id) = self.group_id(name) {
                let g = &self.groups[id.idx()];
                return Some(GroupRef {
                    id,
                    policy: g.spec.policy,
                    max_per_host: g.max_per_host(),
                });
            }
            // A group to be created: it will get the next ids, in order.
            let k = pending.iter().position(|g| g.name == name)?;
            let g = &pending[k];
            Some(GroupRef {
                id: ServerGroupId::new(self.groups.len() + k),
                policy: g.policy,
                max_per_host: match g.policy {
                    crate::model::ServerGroupPolicy::AntiAffinity => g.max_per_host.unwrap_or(1),
                    _ => u32::MAX,
                },
            })
        })
        .map_err(|source| RestoreError::Request {
            consumer: consumer(),
            source,
        })?;
        let host = c
            .host_id(&p.host)
            .ok_or_else(|| RestoreError::UnknownHost {
                consumer: consumer(),
                host: p.host.clone(),
            })?;
        if self.is_retired(host) {
            return Err(RestoreError::HostRetired {
                consumer: consumer(),
                host: p.host.clone(),
            });
        }
        let mut slots = Vec::with_capacity(p.resources.len());
        let mut placed: Vec<(ClassId, u64)> = Vec::new();
        for r in &p.resources {
            let pid = c
                .provider_id(&r.provider)
                .ok_or_else(|| RestoreError::UnknownProvider {
                    consumer: consumer(),
                    provider: r.provider.clone(),
                })?;
            if c.provider(pid).host != Some(host) && !c.host(host).shared.contains(&pid) {
                return Err(RestoreError::ProviderNotOnHost {
                    consumer: consumer(),
                    provider: r.provider.clone(),
                    host: p.host.clone(),
                });
            }
            let slot: SlotId = c
                .class_id(&r.class)
                .and_then(|class| c.slot_of(pid, class))
                .ok_or_else(|| RestoreError::NoInventory {
                    consumer: consumer(),
                    provider: r.provider.clone(),
                    class: r.class.clone(),
                })?;
            let s = c.slots()[slot.idx()];
            if !s.unit_ok(r.amount) {
                return Err(RestoreError::UnitConstraint {
                    consumer: consumer(),
                    provider: r.provider.clone(),
                    class: r.class.clone(),
                    amount: r.amount,
                });
            }
            let free = s.capacity.saturating_sub(used[slot.idx()]);
            if r.amount > free {
                return Err(RestoreError::OverCapacity {
                    consumer: consumer(),
                    provider: r.provider.clone(),
                    class: r.class.clone(),
                    amount: r.amount,
                    free,
                    capacity: s.capacity,
                });
            }
            // r.amount ≤ free = capacity - used: the sum stays within the capacity.
            used[slot.idx()] += r.amount;
            slots.push(SlotAllocation::new(slot, r.amount));
            // Any number of entries: a sum that would wrap is no request's total anyway.
            match placed.iter_mut().find(|(k, _)| *k == s.class) {
                Some((_, t)) => *t = t.saturating_add(r.amount),
                None => placed.push((s.class, r.amount)),
            }
        }
        let classes = placed.iter().map(|(k, _)| *k);
        for class in classes.chain(request.totals.iter().map(|(k, _)| *k)) {
            let got = placed.iter().find(|(k, _)| *k == class).map_or(0, |t| t.1);
            let want = request.total(class);
            if got != want {
                return Err(RestoreError::ResourcesMismatch {
                    consumer: consumer(),
                    class: c.class_name(class).to_string(),
                    placed: got,
                    requested: want,
                });
            }
        }
        Ok(Resolved {
            host,
            slots,
            request: Arc::new(request),
        })
    }
}
