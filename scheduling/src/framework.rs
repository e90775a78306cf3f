//! The plugin framework: one trait per extension point, after kube-scheduler's framework.
//!
//! A decision runs, in order: **pre-filter** plugins narrowing a [`HostSet`] of candidates with the indexes,
//! **filter** plugins checking one host each (returning the [`Reason`] users will see), **score** plugins
//! ranking the feasible hosts found, each followed by its **normalise** step, then the weighted sum picks a host.
//! When the claim is committed, **permit** plugins may veto it and **reserve** plugins are told (and told
//! again through `unreserve` if the commit fails). Plugins implement only the extension points they need; a
//! [`crate::profile::Profile`] lists which run and with what weights.
//!
//! Embedders write their own plugins against this module alone: the traits, [`CycleState`] (the
//! cluster, the state and the compiled request), the candidate set [`HostSet`] and the indexes
//! [`ClusterIndex`] for pre-filters, and [`restrict`]/[`exclude`] to count what they remove. The
//! built-in plugins are in [`crate::plugins`].
//!
//! ```
//! use scheduling::framework::{CycleState, FilterPlugin, FitScratch};
//! use scheduling::{Cluster, HostId, PlaceError, PlacementRequest, Placer, Profile, Reason};
//! use std::sync::Arc;
//!
//! /// Keeps VMs off hosts labelled `maintenance=soon`.
//! struct AvoidMaintenance;
//!
//! impl FilterPlugin for AvoidMaintenance {
//!     fn name(&self) -> &'static str {
//!         "AvoidMaintenance"
//!     }
//!     fn filter(&self, cx: &CycleState<'_>, _: &mut FitScratch, host: HostId) -> Result<(), Reason> {
//!         match cx.cluster.host(host).labels.get("maintenance") {
//!             Some(v) if v == "soon" => Err(Reason::Plugin(self.name())),
//!             _ => Ok(()),
//!         }
//!     }
//! }
//!
//! let cluster = Cluster::from_json(r#"{"hosts": [
//!   {"name": "a", "labels": {"maintenance": "soon"}, "inventories": {"VCPU": {"total": 8}}},
//!   {"name": "b", "inventories": {"VCPU": {"total": 2}}}]}"#).unwrap();
//! let mut profile = Profile::default();
//! profile.filters.insert(0, Box::new(AvoidMaintenance));
//! let mut placer = Placer::new(Arc::new(cluster), profile, 1);
//! assert_eq!(placer.place(&PlacementRequest::new("vm-1", &[("VCPU", 2)])).unwrap().host, "b");
//! let Err(PlaceError::Unschedulable(why)) = placer.place(&PlacementRequest::new("vm-2", &[("VCPU", 2)]))
//! else { panic!() };
//! assert_eq!(why.summary, "0/2 hosts available: 1 insufficient VCPU, 1 rejected by AvoidMaintenance");
//! ```

use crate::explain::{Diagnosis, Reason};
use crate::model::{Cluster, HostId};
use crate::request::CompiledRequest;
use crate::state::{Claim, State};

pub use crate::fit::{FitScratch, SEARCH_BUDGET};
pub use crate::hostset::HostSet;
pub use crate::index::ClusterIndex;

/// Data shared by the plugins during one decision (kube's `CycleState`).
pub struct CycleState<'a> {
    /// Topology.
    pub cluster: &'a Cluster,
    /// Usage and membership.
    pub state: &'a State,
    /// The request being placed.
    pub request: &'a CompiledRequest,
    /// Hosts the caller excluded (e.g. a migration's source).
    pub excluded: &'a [HostId],
    /// Per spread constraint: the smallest member count over the constraint's domains (set by pre-filter).
    pub spread_min: Vec<u32>,
}

impl<'a> CycleState<'a> {
    /// A fresh cycle for `request`.
    pub fn new(state: &'a State, request: &'a CompiledRequest, excluded: &'a [HostId]) -> Self {
        Self {
            cluster: state.cluster(),
            state,
            request,
            excluded,
            spread_min: Vec::new(),
        }
    }
}

/// Narrows the candidate set using indexes, before any host is visited.
pub trait PreFilterPlugin: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &'static str;
    /// Removes hosts from `candidates`, recording why in `diag` (see [`restrict`] and [`exclude`]).
    fn pre_filter(&self, cx: &mut CycleState<'_>, candidates: &mut HostSet, diag: &mut Diagnosis);
    /// Whether, for this request, the result depends only on the request fields hashed into
    /// [`crate::request::RequestShape::prefilter_key`] and the topology (so it may be cached). Plugins that read
    /// usage or membership, or write cycle data, must return `false` for such requests: they then run on
    /// every decision, after the cached ones.
    fn cacheable(&self, _request: &CompiledRequest) -> bool {
        true
    }
}

/// Checks one host.
pub trait FilterPlugin: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &'static str;
    /// `Ok` if the host can take the request, else why not. Resource-fitting plugins leave the chosen
    /// slots in `scratch`.
    fn filter(
        &self,
        cx: &CycleState<'_>,
        scratch: &mut FitScratch,
        host: HostId,
    ) -> Result<(), Reason>;
    /// Whether the plugin has anything to check for this request (skipped entirely when not).
    fn applies(&self, _request: &CompiledRequest) -> bool {
        true
    }
}

/// Ranks a feasible host.
pub trait ScorePlugin: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &'static str;
    /// Raw score, by convention 0..=100 (higher is better) unless `normalize` rescales it.
    fn score(&self, cx: &CycleState<'_>, host: HostId) -> i64;
    /// Rescales the raw scores of all feasible hosts in place (kube's NormalizeScore). Default: none.
    fn normalize(&self, _scores: &mut [i64]) {}
    /// Whether the plugin has anything to say about this request (skipped entirely when not).
    fn applies(&self, _request: &CompiledRequest) -> bool {
        true
    }
}

/// Told about a claim before it is committed, and again if the commit fails.
pub trait ReservePlugin: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &'static str;
    /// Reserves plugin-side resources for the claim; an error aborts the placement.
    fn reserve(&self, state: &State, claim: &Claim) -> Result<(), String>;
    /// Undoes `reserve` after a failed commit.
    fn unreserve(&self, state: &State, claim: &Claim);
}

/// Approves or denies a claim just before commit.
pub trait PermitPlugin: Send + Sync {
    /// Plugin name.
    fn name(&self) -> &'static str;
    /// `Ok` to allow; `Err(reason)` to deny.
    fn permit(&self, state: &State, claim: &Claim) -> Result<(), String>;
}

/// Keeps only candidates in `keep`, counting the others under `reason`.
pub fn restrict(candidates: &mut HostSet, keep: &HostSet, reason: Reason, diag: &mut Diagnosis) {
    if diag.per_host.is_some() {
        let removed: Vec<usize> = candidates.iter().filter(|h| !keep.contains(*h)).collect();
        for h in removed {
            diag.add(HostId::new(h), reason);
        }
        candidates.intersect_with(keep);
        return;
    }
    let removed = candidates.intersect_counting(keep);
    if removed > 0 {
        diag.add_n(reason, removed as u32);
    }
}

/// Removes candidates in `drop`, counting them under `reason`.
pub fn exclude(candidates: &mut HostSet, drop: &HostSet, reason: Reason, diag: &mut Diagnosis) {
    if diag.per_host.is_some() {
        let removed: Vec<usize> = candidates.iter().filter(|h| drop.contains(*h)).collect();
        for h in removed {
            diag.add(HostId::new(h), reason);
        }
        candidates.subtract(drop);
        return;
    }
    let removed = candidates.subtract_counting(drop);
    if removed > 0 {
        diag.add_n(reason, removed as u32);
    }
}
