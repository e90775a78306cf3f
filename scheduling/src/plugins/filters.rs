//! Built-in pre-filter and filter plugins.
//!
//! Pre-filters work on whole [`HostSet`]s through the cluster indexes; filters look at one host.

use crate::explain::{Diagnosis, Reason};
use crate::fit::{fit_host, FitScratch};
use crate::framework::{exclude, restrict, CycleState, FilterPlugin, PreFilterPlugin};
use crate::hostset::HostSet;
use crate::model::{HostId, RackId, ServerGroupPolicy, ZoneId};
use crate::request::{CompiledRequest, LabelOperator, TopologyKey, WhenUnsatisfiable};

/// Removes disabled hosts and hosts the caller excluded.
pub struct HostAvailability;

impl PreFilterPlugin for HostAvailability {
    fn name(&self) -> &'static str {
        "HostAvailability"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        exclude(candidates, cx.state.disabled(), Reason::HostDisabled, diag);
        for h in cx.excluded {
            if candidates.contains(h.idx()) {
                candidates.remove(h.idx());
                diag.add(*h, Reason::Excluded);
            }
        }
    }
    fn cacheable(&self, _request: &CompiledRequest) -> bool {
        // Depends on disabled hosts; the equivalence cache keys on the topology version, which
        // changes whenever a host is enabled or disabled. Exclusions bypass the cache.
        true
    }
}

/// Availability zone and aggregate membership (`member_of`).
pub struct ZoneAndAggregates;

impl PreFilterPlugin for ZoneAndAggregates {
    fn name(&self) -> &'static str {
        "ZoneAndAggregates"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let ix = cx.cluster.index();
        if let Some(z) = cx.request.zone {
            restrict(candidates, ix.in_zone(z), Reason::WrongZone, diag);
        }
        for (i, set) in cx.request.member_of.iter().enumerate() {
            let mut keep = HostSet::empty(candidates.universe());
            for a in set {
                keep.union_with(ix.in_aggregate(*a));
            }
            restrict(candidates, &keep, Reason::NotInAggregates(i as u16), diag);
        }
    }
}

/// Host-level required, forbidden and any-of traits.
pub struct HostTraits;

impl PreFilterPlugin for HostTraits {
    fn name(&self) -> &'static str {
        "HostTraits"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let ix = cx.cluster.index();
        let n = candidates.universe();
        for (i, t) in cx.request.required_traits.iter().enumerate() {
            let reason = Reason::MissingTrait(i as u16);
            match t.id {
                Some(id) => restrict(candidates, ix.with_trait(id), reason, diag),
                None => restrict(candidates, &HostSet::empty(n), reason, diag),
            }
        }
        for t in &cx.request.forbidden_traits {
            exclude(
                candidates,
                ix.with_trait(*t),
                Reason::ForbiddenTrait(*t),
                diag,
            );
        }
        for (i, set) in cx.request.any_of_traits.iter().enumerate() {
            let mut keep = HostSet::empty(n);
            for t in set {
                keep.union_with(ix.with_trait(*t));
            }
            restrict(candidates, &keep, Reason::NoneOfTraits(i as u16), diag);
        }
    }
}

/// Node selector and required node-affinity expressions over host labels.
pub struct NodeLabels;

impl PreFilterPlugin for NodeLabels {
    fn name(&self) -> &'static str {
        "NodeLabels"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let ix = cx.cluster.index();
        let n = candidates.universe();
        for (i, (k, v)) in cx.request.node_selector.iter().enumerate() {
            restrict(
                candidates,
                ix.with_label(k, v),
                Reason::NodeSelector(i as u16),
                diag,
            );
        }
        for (i, e) in cx.request.node_affinity.iter().enumerate() {
            let reason = Reason::NodeAffinity(i as u16);
            let mut values = HostSet::empty(n);
            for v in &e.values {
                values.union_with(ix.with_label(&e.key, v));
            }
            match e.operator {
                LabelOperator::In => restrict(candidates, &values, reason, diag),
                LabelOperator::NotIn => exclude(candidates, &values, reason, diag),
                LabelOperator::Exists => {
                    restrict(candidates, ix.with_label_key(&e.key), reason, diag)
                }
                LabelOperator::DoesNotExist => {
                    exclude(candidates, ix.with_label_key(&e.key), reason, diag)
                }
            }
        }
    }
}

/// `NoSchedule`/`NoExecute` taints the request does not tolerate.
pub struct TaintToleration;

impl PreFilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        for (i, (taint, hosts)) in cx.cluster.index().blocking_taints().iter().enumerate() {
            if !cx.request.tolerates(taint) {
                exclude(candidates, hosts, Reason::UntoleratedTaint(i as u16), diag);
            }
        }
    }
}

/// Hosts that cannot reach any inventory of a requested class.
pub struct ResourceClassPresence;

impl PreFilterPlugin for ResourceClassPresence {
    fn name(&self) -> &'static str {
        "ResourceClassPresence"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        for (c, _) in &cx.request.totals {
            restrict(
                candidates,
                cx.cluster.index().with_class(*c),
                Reason::NoInventory(*c),
                diag,
            );
        }
    }
}

/// Free capacity: removes hosts whose largest free inventory of a requested class is below the
/// request's largest single allocation of that class, through the state's free-capacity index
/// ([`crate::state::State::free_at_least`]): one bitset intersection per class instead of visiting full
/// hosts one by one. Runs on every decision (usage changes), after the cached pre-filters.
pub struct FreeCapacity;

impl PreFilterPlugin for FreeCapacity {
    fn name(&self) -> &'static str {
        "FreeCapacity"
    }
    fn cacheable(&self, _request: &CompiledRequest) -> bool {
        false
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let req = cx.request;
        for &(c, _) in &req.totals {
            let largest = req
                .unnamed
                .iter()
                .chain(req.groups.iter().flat_map(|g| g.resources.iter()))
                .filter(|(k, _)| *k == c)
                .map(|(_, a)| *a)
                .max()
                .unwrap_or(0);
            if let Some(keep) = cx.state.free_at_least(c, largest) {
                restrict(candidates, keep, Reason::Insufficient(c), diag);
            }
        }
    }
}

/// Hard server group affinity: once the group has members, only their host qualifies.
pub struct ServerGroupAffinity;

impl PreFilterPlugin for ServerGroupAffinity {
    fn name(&self) -> &'static str {
        "ServerGroupAffinity"
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let Some(g) = cx.request.server_group else {
            return;
        };
        if g.policy != ServerGroupPolicy::Affinity {
            return;
        }
        let Some(gs) = cx.state.group(g.id) else {
            return;
        };
        if gs.members == 0 {
            return;
        }
        let mut keep = HostSet::empty(candidates.universe());
        for h in gs.per_host.keys() {
            keep.insert(*h as usize);
        }
        restrict(candidates, &keep, Reason::Affinity, diag);
    }
    fn cacheable(&self, request: &CompiledRequest) -> bool {
        !request
            .server_group
            .is_some_and(|g| g.policy == ServerGroupPolicy::Affinity)
    }
}

/// Topology spread: computes each constraint's minimum domain count (for the filter and scores) and
/// removes the domains where one more member would exceed a hard constraint's `max_skew`.
pub struct TopologySpreadPre;

impl PreFilterPlugin for TopologySpreadPre {
    fn name(&self) -> &'static str {
        "TopologySpread"
    }
    fn cacheable(&self, request: &CompiledRequest) -> bool {
        request.spread.is_empty()
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let (Some(g), false) = (cx.request.server_group, cx.request.spread.is_empty()) else {
            return;
        };
        let Some(gs) = cx.state.group(g.id) else {
            return;
        };
        let ix = cx.cluster.index();
        let mut mins = Vec::with_capacity(cx.request.spread.len());
        for (i, s) in cx.request.spread.iter().enumerate() {
            let counts = match s.key {
                TopologyKey::Zone => &gs.per_zone,
                TopologyKey::Rack => &gs.per_rack,
            };
            let min = counts.iter().copied().min().unwrap_or(0);
            mins.push(min);
            if s.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                continue;
            }
            // Hosts without the key are never eligible; domains at the skew limit are removed.
            let reason = Reason::TopologySpread(i as u16);
            restrict(candidates, ix.with_topology_key(s.key), reason, diag);
            for (d, count) in counts.iter().enumerate() {
                if count + 1 - min > s.max_skew {
                    match s.key {
                        TopologyKey::Zone => {
                            exclude(candidates, ix.in_zone(ZoneId::new(d)), reason, diag)
                        }
                        TopologyKey::Rack => {
                            for &h in ix.in_rack(RackId::new(d)) {
                                if candidates.contains(h as usize) {
                                    candidates.remove(h as usize);
                                    diag.add(HostId::new(h as usize), reason);
                                }
                            }
                        }
                    }
                }
            }
        }
        cx.spread_min = mins;
    }
}

/// Hard anti-affinity: removes the hosts already holding `max_per_host` members (O(members)).
pub struct ServerGroupAntiAffinityPre;

impl PreFilterPlugin for ServerGroupAntiAffinityPre {
    fn name(&self) -> &'static str {
        "ServerGroupAntiAffinity"
    }
    fn cacheable(&self, request: &CompiledRequest) -> bool {
        !request
            .server_group
            .is_some_and(|g| g.policy == ServerGroupPolicy::AntiAffinity)
    }
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis) {
        let Some(g) = cx.request.server_group else {
            return;
        };
        if g.policy != ServerGroupPolicy::AntiAffinity {
            return;
        }
        let Some(gs) = cx.state.group(g.id) else {
            return;
        };
        let reason = if g.max_per_host == 1 {
            Reason::AntiAffinity
        } else {
            Reason::MaxPerHost
        };
        for (h, n) in &gs.per_host {
            if *n >= g.max_per_host && candidates.contains(*h as usize) {
                candidates.remove(*h as usize);
                diag.add(HostId::new(*h as usize), reason);
            }
        }
    }
}

/// Hard anti-affinity and max-per-host.
pub struct ServerGroupAntiAffinity;

impl FilterPlugin for ServerGroupAntiAffinity {
    fn name(&self) -> &'static str {
        "ServerGroupAntiAffinity"
    }
    fn applies(&self, request: &CompiledRequest) -> bool {
        request
            .server_group
            .is_some_and(|g| g.policy == ServerGroupPolicy::AntiAffinity)
    }
    #[inline]
    fn filter(
        &self,
        cx: &CycleState<'_>,
        _scratch: &mut FitScratch,
        host: HostId,
    ) -> Result<(), Reason> {
        let Some(g) = cx.request.server_group else {
            return Ok(());
        };
        if g.policy != ServerGroupPolicy::AntiAffinity {
            return Ok(());
        }
        let on_host = cx.state.group(g.id).map_or(0, |gs| gs.on_host(host));
        if on_host >= g.max_per_host {
            return Err(if g.max_per_host == 1 {
                Reason::AntiAffinity
            } else {
                Reason::MaxPerHost
            });
        }
        Ok(())
    }
}

/// Hard topology spread: `count(domain) + 1 - min ≤ max_skew`.
pub struct TopologySpread;

impl FilterPlugin for TopologySpread {
    fn name(&self) -> &'static str {
        "TopologySpread"
    }
    fn applies(&self, request: &CompiledRequest) -> bool {
        request
            .spread
            .iter()
            .any(|s| s.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule)
    }
    fn filter(
        &self,
        cx: &CycleState<'_>,
        _scratch: &mut FitScratch,
        host: HostId,
    ) -> Result<(), Reason> {
        let Some(g) = cx.request.server_group else {
            return Ok(());
        };
        let Some(gs) = cx.state.group(g.id) else {
            return Ok(());
        };
        for (i, s) in cx.request.spread.iter().enumerate() {
            if s.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                continue;
            }
            let count = match s.key {
                TopologyKey::Zone => cx.cluster.host_zone(host).map(|z| gs.per_zone[z.idx()]),
                TopologyKey::Rack => cx.cluster.host_rack(host).map(|r| gs.per_rack[r.idx()]),
            };
            let min = cx.spread_min.get(i).copied().unwrap_or(0);
            match count {
                Some(c) if c + 1 - min.min(c + 1) <= s.max_skew => {}
                _ => return Err(Reason::TopologySpread(i as u16)),
            }
        }
        Ok(())
    }
}

/// Inventory fit, including NUMA-style named groups; leaves the chosen slots in the scratch.
pub struct ResourceFit;

impl FilterPlugin for ResourceFit {
    fn name(&self) -> &'static str {
        "ResourceFit"
    }
    #[inline]
    fn filter(
        &self,
        cx: &CycleState<'_>,
        scratch: &mut FitScratch,
        host: HostId,
    ) -> Result<(), Reason> {
        fit_host(cx.cluster, cx.state.used_slots(), cx.request, host, scratch)
    }
}
