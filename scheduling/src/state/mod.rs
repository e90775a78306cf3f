//! Mutable placement state: usage per inventory, allocations, generations, server group membership.
//!
//! All mutation goes through [`State::commit`], [`State::release`], [`State::resize`],
//! [`State::migrate`] and [`State::import`] (which [`State::restore`] uses to rebuild a state from
//! persisted placements after a restart); each validates everything before touching anything, so a
//! failed call leaves the state exactly as it was. Every provider tree (host) and shared provider carries a generation that is
//! bumped on each change: a [`Claim`] decided against an older generation is refused (optimistic
//! concurrency, as in OpenStack Placement).

mod allocations;
mod free;
mod groups;
mod quota;
mod restore;

pub use allocations::Allocations;
use allocations::KeyHash;
pub(crate) use groups::validate_server_group;
pub use groups::ServerGroupState;
pub use quota::{QuotaLimits, QuotaScope, QuotaUsage};

use crate::error::{CommitError, PlacementRequestError, PlacementStateError};
use crate::fit::{fit_host, FitScratch};
use crate::hostset::HostSet;
use crate::model::{ClassId, Cluster, HostId, ServerGroupSpec};
use crate::model::{OwnerGeneration, OwnerId, ServerGroupId, SlotAllocation, SlotId};
use crate::placement::Placement;
use crate::request::{CompiledRequest, GroupRef, PlacementRequest};
use free::FreeIndex;
use std::collections::HashMap;
use std::sync::Arc;

/// A VM's allocation: which host, and how much of which inventory slots.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub(crate) host: HostId,
    pub(crate) slots: Vec<SlotAllocation>,
    pub(crate) request: Arc<CompiledRequest>,
}

impl Allocation {
    /// The host.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// What is allocated, slot by slot.
    pub fn slots(&self) -> &[SlotAllocation] {
        &self.slots
    }

    /// The request that produced it (kept for migration, preemption and evacuation).
    pub fn request(&self) -> &Arc<CompiledRequest> {
        &self.request
    }

    /// The allocation by names, as persisted and restored (see [`State::restore`]).
    pub fn placement(&self, cluster: &Cluster) -> Placement {
        Placement::new(cluster, &self.request, self.host, &self.slots)
    }
}

/// A decided placement waiting to be committed: made by [`crate::Scheduler::decide`], consumed by
/// [`State::commit`] (or [`crate::Scheduler::commit`], which runs the reserve and permit plugins).
#[derive(Clone, Debug)]
pub struct Claim {
    pub(crate) request: Arc<CompiledRequest>,
    pub(crate) host: HostId,
    pub(crate) allocations: Vec<SlotAllocation>,
    pub(crate) generations: Vec<OwnerGeneration>,
    pub(crate) group_epoch: Option<u64>,
}

impl Claim {
    /// The request.
    pub fn request(&self) -> &Arc<CompiledRequest> {
        &self.request
    }

    /// The chosen host.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// What to allocate, slot by slot.
    pub fn allocations(&self) -> &[SlotAllocation] {
        &self.allocations
    }

    /// The generation of every owner (host tree, shared provider) touched, as the decision saw it.
    pub fn generations(&self) -> &[OwnerGeneration] {
        &self.generations
    }

    /// The server group epoch the decision saw (for hard affinity and spread requests).
    pub fn group_epoch(&self) -> Option<u64> {
        self.group_epoch
    }

    /// The claim by names (what [`State::commit`] will have allocated).
    pub fn placement(&self, cluster: &Cluster) -> Placement {
        Placement::new(cluster, &self.request, self.host, &self.allocations)
    }

    /// A claim for `allocations` on `host`, with the generations `state` has now.
    pub(crate) fn current(
        state: &State,
        request: Arc<CompiledRequest>,
        host: HostId,
        allocations: Vec<SlotAllocation>,
        group_epoch: Option<u64>,
    ) -> Claim {
        let c = state.cluster();
        let own = c.host_owner(host);
        let mut generations = vec![OwnerGeneration::new(own, state.generation(own))];
        for a in &allocations {
            if let Some(s) = c.slot(a.slot()) {
                let owner = c.provider(s.provider).owner;
                if !generations.iter().any(|g| g.owner() == owner) {
                    generations.push(OwnerGeneration::new(owner, state.generation(owner)));
                }
            }
        }
        Claim {
            request,
            host,
            allocations,
            generations,
            group_epoch,
        }
    }
}

/// The mutable side of placement.
#[derive(Clone, Debug)]
pub struct State {
    cluster: Arc<Cluster>,
    used: Vec<u64>,
    host_used: Vec<u64>,
    generation: Vec<u64>,
    vm_count: Vec<u32>,
    fill: FillBuckets,
    free: FreeIndex,
    disabled: HostSet,
    retired: HostSet,
    allocations: Allocations,
    groups: Vec<ServerGroupState>,
    group_by_name: HashMap<String, ServerGroupId>,
    release_epoch: u64,
    topology_version: u64,
    quotas: quota::Quotas,
}

impl State {
    /// Empty state for `cluster`, with the cluster's declared server groups.
    pub fn new(cluster: Arc<Cluster>) -> Self {
        let n_hosts = cluster.host_count();
        let used = vec![0; cluster.slots().len()];
        let mut s = State {
            free: FreeIndex::new(&cluster, &used),
            used,
            host_used: vec![0; n_hosts * cluster.columns],
            generation: vec![0; cluster.owner_count()],
            vm_count: vec![0; n_hosts],
            fill: FillBuckets::new(n_hosts),
            disabled: HostSet::empty(n_hosts),
            retired: HostSet::empty(n_hosts),
            allocations: Allocations::default(),
            groups: Vec::new(),
            group_by_name: HashMap::new(),
            release_epoch: 0,
            topology_version: 0,
            quotas: quota::Quotas::default(),
            cluster,
        };
        let initial: Vec<ServerGroupSpec> = s.cluster.initial_server_groups().to_vec();
        for g in initial {
            let id = ServerGroupId::new(s.groups.len());
            s.group_by_name.insert(g.name.clone(), id);
            s.groups.push(ServerGroupState::new(g, &s.cluster));
        }
        s
    }

    /// The cluster topology.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Creates a server group.
    pub fn create_server_group(
        &mut self,
        spec: ServerGroupSpec,
    ) -> Result<ServerGroupId, PlacementStateError> {
        validate_server_group(&spec)?;
        if self.group_by_name.contains_key(&spec.name) {
            return Err(PlacementStateError::DuplicateServerGroup(spec.name));
        }
        let id = ServerGroupId::new(self.groups.len());
        self.group_by_name.insert(spec.name.clone(), id);
        self.groups.push(ServerGroupState::new(spec, &self.cluster));
        Ok(id)
    }

    /// The server group `spec` names, created on first use: an existing group of that name is
    /// returned if its definition is the same, and refused (naming both policies) if not.
    ///
    /// ```
    /// use scheduling::model::{ServerGroupPolicy, ServerGroupSpec};
    /// let mut state = scheduling::State::new(std::sync::Arc::new(scheduling::Cluster::from_json(
    ///     r#"{"hosts": [{"name": "a", "inventories": {"VCPU": {"total": 4}}}]}"#).unwrap()));
    /// let web = ServerGroupSpec { name: "web".into(), policy: ServerGroupPolicy::AntiAffinity, max_per_host: None };
    /// let id = state.ensure_server_group(web.clone()).unwrap();
    /// assert_eq!(state.ensure_server_group(web.clone()).unwrap(), id);
    /// let other = ServerGroupSpec { policy: ServerGroupPolicy::Affinity, ..web };
    /// assert_eq!(state.ensure_server_group(other).unwrap_err().to_string(),
    ///     "server group `web`: exists with policy anti-affinity (max_per_host None), asked for affinity (max_per_host None)");
    /// ```
    pub fn ensure_server_group(
        &mut self,
        spec: ServerGroupSpec,
    ) -> Result<ServerGroupId, PlacementStateError> {
        match self.group_by_name.get(&spec.name) {
            None => self.create_server_group(spec),
            Some(&id) => {
                let have = &self.groups[id.idx()].spec;
                if *have == spec {
                    Ok(id)
                } else {
                    Err(PlacementStateError::Model(
                        crate::error::ModelError::InvalidServerGroup {
                            group: spec.name.clone(),
                            reason: format!(
                                "exists with policy {} (max_per_host {:?}), asked for {} (max_per_host {:?})",
                                have.policy, have.max_per_host, spec.policy, spec.max_per_host
                            ),
                        },
                    ))
                }
            }
        }
    }

    /// Server group by id.
    pub fn group(&self, id: ServerGroupId) -> Option<&ServerGroupState> {
        self.groups.get(id.idx())
    }

    /// Server group id by name.
    pub fn group_id(&self, name: &str) -> Option<ServerGroupId> {
        self.group_by_name.get(name).copied()
    }

    /// Resolves a request against the cluster and this state's server groups.
    pub fn compile(
        &self,
        req: &PlacementRequest,
    ) -> Result<Arc<CompiledRequest>, PlacementRequestError> {
        self.compile_shared(Arc::new(req.clone()))
    }

    /// As [`State::compile`], keeping `req` as the compiled request's source instead of copying it.
    pub fn compile_shared(
        &self,
        req: Arc<PlacementRequest>,
    ) -> Result<Arc<CompiledRequest>, PlacementRequestError> {
        CompiledRequest::compile_shared(req, &self.cluster, |name| {
            let id = self.group_id(name)?;
            let g = &self.groups[id.idx()];
            Some(GroupRef {
                id,
                policy: g.spec.policy,
                max_per_host: g.max_per_host(),
            })
        })
        .map(Arc::new)
    }

    /// Amount used of inventory `slot`.
    #[inline]
    pub fn used(&self, slot: SlotId) -> u64 {
        self.used[slot.idx()]
    }

    /// Usage of every slot, in the order of [`Cluster::slots`].
    pub fn used_slots(&self) -> &[u64] {
        &self.used
    }

    /// Used amount of class `c` in the tree of `host`.
    #[inline]
    pub fn host_used(&self, host: HostId, c: crate::model::ClassId) -> u64 {
        self.cluster.cell(host, c).map_or(0, |i| self.host_used[i])
    }

    /// `(capacity, used)` of class `c` in the tree of `host`, found with one matrix lookup.
    #[inline]
    pub(crate) fn host_capacity_used(&self, host: HostId, c: crate::model::ClassId) -> (u64, u64) {
        self.cluster.cell(host, c).map_or((0, 0), |i| {
            (self.cluster.host_capacity[i], self.host_used[i])
        })
    }

    /// Number of VMs on `host`.
    #[inline]
    pub fn vm_count(&self, host: HostId) -> u32 {
        self.vm_count[host.idx()]
    }

    /// Generation of an owner (a host's tree or a shared provider).
    #[inline]
    pub fn generation(&self, owner: OwnerId) -> u64 {
        self.generation[owner.idx()]
    }

    /// Whether `host` is disabled.
    pub fn is_disabled(&self, host: HostId) -> bool {
        self.disabled.contains(host.idx())
    }

    /// Disabled hosts.
    pub fn disabled(&self) -> &HostSet {
        &self.disabled
    }

    /// Enables or disables a host (failure, maintenance). Existing allocations stay. A retired host
    /// (see [`State::retire_host`]) stays disabled.
    pub fn set_host_enabled(&mut self, host: HostId, enabled: bool) {
        if enabled && self.retired.contains(host.idx()) {
            return;
        }
        if enabled {
            self.disabled.remove(host.idx());
        } else {
            self.disabled.insert(host.idx());
        }
        self.topology_version += 1;
        self.release_epoch += 1;
    }

    /// Adds a host at run time (see [`Cluster::with_host`]): it gets the next host id, is enabled and
    /// empty, and every id the state and existing requests hold keeps its meaning. The topology version
    /// changes (deciders drop their caches) and every generation owner's generation is bumped, so a
    /// claim decided before the change is refused at commit and decided again. On error (invalid or
    /// duplicate host) nothing changes.
    pub fn add_host(
        &mut self,
        spec: &crate::model::HostSpec,
    ) -> Result<HostId, PlacementStateError> {
        let cluster = Arc::new(self.cluster.with_host(spec)?);
        let host = HostId::new(self.cluster.host_count());
        let n = cluster.host_count();
        self.used.resize(cluster.slots().len(), 0);
        // The new host may bring a class no tree had: the matrix's columns may change, so it is
        // rebuilt from the allocations.
        let mut host_used = vec![0u64; n * cluster.columns];
        for a in self.allocations.values() {
            for x in &a.slots {
                let s = cluster.slots()[x.slot().idx()];
                if cluster.provider(s.provider).host == Some(a.host) {
                    if let Some(i) = cluster.cell(a.host, s.class) {
                        host_used[i] = host_used[i].saturating_add(x.amount());
                    }
                }
            }
        }
        self.host_used = host_used;
        let newest = self.generation.iter().copied().max().unwrap_or(0) + 1;
        for g in &mut self.generation {
            *g += 1;
        }
        self.generation.insert(host.idx(), newest);
        self.vm_count.push(0);
        self.fill.grow(n);
        self.disabled.grow(n);
        self.retired.grow(n);
        for g in &mut self.groups {
            g.grow(&cluster);
        }
        self.free = FreeIndex::new(&cluster, &self.used);
        self.cluster = cluster;
        self.topology_version += 1;
        self.release_epoch += 1;
        Ok(host)
    }

    /// Removes a host from service for good: it must hold no allocation (evacuate or release first,
    /// e.g. with [`crate::ops::evacuate`]). It stays in the topology as a disabled, retired host (so no
    /// id changes and its name stays taken) and [`State::set_host_enabled`] will not enable it again. Its
    /// generation is bumped, so claims decided on it before are refused.
    pub fn retire_host(&mut self, name: &str) -> Result<HostId, PlacementStateError> {
        let host = self
            .cluster
            .host_id(name)
            .ok_or_else(|| PlacementStateError::UnknownHost(name.into()))?;
        let vms = self.vm_count[host.idx()];
        if vms > 0 {
            return Err(PlacementStateError::HostInUse {
                host: name.into(),
                vms,
            });
        }
        self.disabled.insert(host.idx());
        self.retired.insert(host.idx());
        self.generation[host.idx()] += 1;
        self.topology_version += 1;
        Ok(host)
    }

    /// Whether `host` was retired.
    pub fn is_retired(&self, host: HostId) -> bool {
        self.retired.contains(host.idx())
    }

    /// Bumped whenever capacity may have been freed (release, resize, migration, enabling a host).
    pub fn release_epoch(&self) -> u64 {
        self.release_epoch
    }

    /// Bumped whenever hosts are enabled or disabled.
    pub fn topology_version(&self) -> u64 {
        self.topology_version
    }

    /// All allocations by consumer id.
    pub fn allocations(&self) -> &Allocations {
        &self.allocations
    }

    /// The allocation of `consumer`.
    pub fn allocation(&self, consumer: &str) -> Option<&Allocation> {
        self.allocations.get(consumer)
    }

    /// Validates a claim without applying it. `moving` names a consumer whose current allocation the claim
    /// replaces (migration), which exempts it from the duplicate check.
    pub fn check(&self, claim: &Claim, moving: Option<&str>) -> Result<(), CommitError> {
        let key = self.allocations.key_hash(claim.request.id());
        self.check_hashed(claim, moving, key)
    }

    /// [`State::check`], with the hash of the claim's consumer id computed beforehand.
    fn check_hashed(
        &self,
        claim: &Claim,
        moving: Option<&str>,
        key: KeyHash,
    ) -> Result<(), CommitError> {
        let c = &self.cluster;
        let id = claim.request.id();
        if moving != Some(id) && self.allocations.contains_hashed(id, key) {
            return Err(CommitError::DuplicateConsumer(id.to_string()));
        }
        if claim.host.idx() >= c.host_count() {
            return Err(CommitError::HostDisabled(format!("#{}", claim.host.idx())));
        }
        if self.is_disabled(claim.host) {
            return Err(CommitError::HostDisabled(c.host(claim.host).name.clone()));
        }
        for g in &claim.generations {
            let (owner, expected) = (g.owner(), g.generation());
            let found = *self
                .generation
                .get(owner.idx())
                .ok_or(CommitError::UnknownOwner(owner))?;
            if found != expected {
                return Err(CommitError::GenerationConflict {
                    owner: c.owner_name(owner).to_string(),
                    expected,
                    found,
                });
            }
        }
        if let Some(g) = claim.request.server_group {
            // A request compiled against another state could name a group this one lacks.
            if self.groups.get(g.id.idx()).is_none() {
                return Err(CommitError::GroupChanged(format!("#{}", g.id.idx())));
            }
        }
        if let (Some(g), Some(epoch)) = (claim.request.server_group, claim.group_epoch) {
            let gs = self
                .groups
                .get(g.id.idx())
                .ok_or(CommitError::GroupChanged(format!("#{}", g.id.idx())))?;
            if gs.epoch != epoch {
                return Err(CommitError::GroupChanged(gs.spec.name.clone()));
            }
        }
        if moving.is_none() {
            self.quotas.check(c, &claim.request, None)?;
        }
        // Defensive: even with matching generations, re-check every slot (the claim may be hand-made).
        for (i, a) in claim.allocations.iter().enumerate() {
            let slot = a.slot();
            let s = c.slot(slot).ok_or(CommitError::UnknownSlot(slot))?;
            let owner = c.provider(s.provider).owner;
            let in_tree = c.provider(s.provider).host == Some(claim.host);
            let shared_ok = c.host(claim.host).shared.contains(&s.provider);
            if !in_tree && !shared_ok {
                return Err(CommitError::UnknownSlot(slot));
            }
            if !claim.generations.iter().any(|g| g.owner() == owner) {
                return Err(CommitError::GenerationConflict {
                    owner: c.owner_name(owner).to_string(),
                    expected: u64::MAX,
                    found: self.generation[owner.idx()],
                });
            }
            // In 128 bits: a hand-made claim may hold any number of any amounts.
            let total: u128 = claim.allocations[..=i]
                .iter()
                .filter(|x| x.slot() == slot)
                .map(|x| u128::from(x.amount()))
                .sum();
            let mut used = u128::from(self.used[slot.idx()]);
            if let Some(m) = moving.and_then(|m| self.allocations.get(m)) {
                let own: u128 = m
                    .slots
                    .iter()
                    .filter(|x| x.slot() == slot)
                    .map(|x| u128::from(x.amount()))
                    .sum();
                used = used.saturating_sub(own);
            }
            if used + total > u128::from(s.capacity) {
                return Err(CommitError::OverCapacity {
                    provider: c.provider(s.provider).name.clone(),
                    class: c.class_name(s.class).to_string(),
                });
            }
        }
        Ok(())
    }

    /// Commits a claim: checks generations, group epoch and capacity, then allocates. On error nothing changes.
    pub fn commit(&mut self, claim: Claim) -> Result<(), CommitError> {
        // The consumer id is hashed once, for the duplicate check and the insertion.
        let key = self.allocations.key_hash(claim.request.id());
        self.check_hashed(&claim, None, key)?;
        self.apply_hashed(claim.host, claim.allocations, claim.request, key);
        Ok(())
    }

    fn apply(&mut self, host: HostId, slots: Vec<SlotAllocation>, request: Arc<CompiledRequest>) {
        let key = self.allocations.key_hash(request.id());
        self.apply_hashed(host, slots, request, key);
    }

    /// Allocates `slots` on `host` for `request`, whose consumer id hashes to `key`.
    fn apply_hashed(
        &mut self,
        host: HostId,
        slots: Vec<SlotAllocation>,
        request: Arc<CompiledRequest>,
        key: KeyHash,
    ) {
        for a in &slots {
            let (slot, amount) = (a.slot(), a.amount());
            // `check` proved used + amount ≤ capacity ≤ MAX_QUANTITY; saturating all the same, so
            // that even a state corrupted behind the checks never wraps (the consistency check
            // then reports it).
            self.used[slot.idx()] = self.used[slot.idx()].saturating_add(amount);
            let s = self.cluster.slots()[slot.idx()];
            let p = self.cluster.provider(s.provider);
            if p.host == Some(host) {
                if let Some(i) = self.cluster.cell(host, s.class) {
                    self.host_used[i] = self.host_used[i].saturating_add(amount);
                }
                self.free.update(&self.cluster, &self.used, host, s.class);
            }
            self.generation[p.owner.idx()] += 1;
        }
        self.generation[host.idx()] += 1;
        self.vm_count[host.idx()] += 1;
        self.refill(host);
        if let Some(g) = request.server_group {
            self.groups[g.id.idx()].add(&self.cluster, host);
        }
        self.quotas.count(&request, true);
        self.allocations.insert(
            Allocation {
                host,
                slots,
                request,
            },
            key,
        );
    }

    fn unapply(&mut self, alloc: &Allocation) {
        let host = alloc.host;
        for a in &alloc.slots {
            let (slot, amount) = (a.slot(), a.amount());
            self.used[slot.idx()] = self.used[slot.idx()].saturating_sub(amount);
            let s = self.cluster.slots()[slot.idx()];
            let p = self.cluster.provider(s.provider);
            if p.host == Some(host) {
                if let Some(i) = self.cluster.cell(host, s.class) {
                    self.host_used[i] = self.host_used[i].saturating_sub(amount);
                }
                self.free.update(&self.cluster, &self.used, host, s.class);
            }
            self.generation[p.owner.idx()] += 1;
        }
        self.generation[host.idx()] += 1;
        self.vm_count[host.idx()] = self.vm_count[host.idx()].saturating_sub(1);
        self.refill(host);
        if let Some(g) = alloc.request.server_group {
            self.groups[g.id.idx()].remove(&self.cluster, host);
        }
        self.quotas.count(&alloc.request, false);
        self.release_epoch += 1;
    }

    /// Dominant utilisation of a host's tree: the highest used/capacity over its classes (summed over
    /// the tree, as the resource scores see them), in `0..FILL_BUCKETS` steps.
    fn refill(&mut self, host: HostId) {
        let cols = self.cluster.columns;
        let row = host.idx() * cols..(host.idx() + 1) * cols;
        let mut worst = 0u64;
        for (&cap, &used) in self.cluster.host_capacity[row.clone()]
            .iter()
            .zip(&self.host_used[row])
        {
            // host_used ≤ capacity ≤ MAX_QUANTITY (2^53): × 20 cannot wrap.
            let used = used.min(cap);
            if let Some(b) = (used * FILL_BUCKETS as u64).checked_div(cap) {
                worst = worst.max(b);
            }
        }
        self.fill.set(host, (worst as usize).min(FILL_BUCKETS - 1));
    }

    /// Hosts whose dominant utilisation falls in `bucket` (0 = emptiest, `FILL_BUCKETS - 1` = fullest):
    /// lets packing policies visit the fullest hosts first and spreading ones the emptiest. `None`
    /// for a bucket out of range.
    pub fn fill_bucket(&self, bucket: usize) -> Option<&HostSet> {
        self.fill.buckets.get(bucket)
    }

    /// Number of hosts in `bucket` of [`State::fill_bucket`] (0 when out of range).
    pub fn fill_bucket_len(&self, bucket: usize) -> usize {
        self.fill.sizes.get(bucket).map_or(0, |n| *n as usize)
    }

    /// Hosts that may still serve a single allocation of `amount` of class `c` (see the free-capacity
    /// index): every host whose largest free inventory of `c` in its tree reaches `amount` is included
    /// (hosts drawing on a shared provider of `c` always are), and every included host has at least 80%
    /// of `amount` free. `None` when nothing can be excluded (zero amount or unknown class).
    pub fn free_at_least(&self, c: ClassId, amount: u64) -> Option<&HostSet> {
        self.free.at_least(c, amount)
    }

    /// Frees a consumer's allocation and returns it.
    pub fn release(&mut self, consumer: &str) -> Result<Allocation, PlacementStateError> {
        let alloc = self
            .allocations
            .remove(consumer)
            .ok_or_else(|| PlacementStateError::UnknownConsumer(consumer.into()))?;
        self.unapply(&alloc);
        Ok(alloc)
    }

    /// Replaces a consumer's allocation by `claim` (a migration decided elsewhere), atomically.
    pub fn migrate(&mut self, consumer: &str, claim: Claim) -> Result<(), PlacementStateError> {
        if !self.allocations.contains_key(consumer) {
            return Err(PlacementStateError::UnknownConsumer(consumer.into()));
        }
        if claim.request.id() != consumer {
            return Err(PlacementStateError::UnknownConsumer(
                claim.request.id().to_string(),
            ));
        }
        self.check(&claim, Some(consumer))?;
        self.release(consumer)?;
        self.apply(claim.host, claim.allocations, claim.request);
        Ok(())
    }

    /// Changes a consumer's resources in place (same host). On failure the state is unchanged.
    pub fn resize(&mut self, consumer: &str, new: &PlacementRequest) -> Result<(), ResizeError> {
        if new.id != consumer {
            return Err(ResizeError::Request(PlacementRequestError::Invalid {
                request: new.id.clone(),
                field: "id",
                reason: format!("must equal the consumer being resized (`{consumer}`)"),
            }));
        }
        let old = self
            .allocations
            .get(consumer)
            .cloned()
            .ok_or_else(|| ResizeError::UnknownConsumer(consumer.into()))?;
        let mut compiled =
            CompiledRequest::clone(&*self.compile(new).map_err(ResizeError::Request)?);
        // Keep group membership as it is: resizing does not change a VM's server group.
        compiled.shape_mut().server_group = old.request.server_group;
        self.quotas
            .check(&self.cluster, &compiled, Some(&old.request))
            .map_err(|e| ResizeError::DoesNotFit(e.to_string()))?;
        for a in &old.slots {
            let u = &mut self.used[a.slot().idx()];
            *u = u.saturating_sub(a.amount());
        }
        let mut scratch = FitScratch::default();
        let fit = fit_host(&self.cluster, &self.used, &compiled, old.host, &mut scratch);
        for a in &old.slots {
            let u = &mut self.used[a.slot().idx()];
            *u = u.saturating_add(a.amount());
        }
        if let Err(reason) = fit {
            return Err(ResizeError::DoesNotFit(
                reason.describe(&self.cluster, &compiled),
            ));
        }
        let alloc = self
            .allocations
            .remove(consumer)
            .ok_or_else(|| ResizeError::UnknownConsumer(consumer.into()))?;
        self.unapply(&alloc);
        self.apply(old.host, scratch.take_allocations(), Arc::new(compiled));
        Ok(())
    }

    /// Recomputes usage, VM counts and group membership from the allocations and compares them with the
    /// incremental bookkeeping. Returns every discrepancy found (empty = consistent).
    pub fn check_consistency(&self) -> Vec<String> {
        let c = &self.cluster;
        // Sums in 128 bits: whatever the allocations hold, recomputing them cannot wrap.
        let mut used = vec![0u128; self.used.len()];
        let mut host_used = vec![0u128; self.host_used.len()];
        let mut vms = vec![0u32; self.vm_count.len()];
        let mut members: Vec<crate::fasthash::IntMap<u32, u32>> =
            vec![Default::default(); self.groups.len()];
        let mut problems = Vec::new();
        for (id, a) in &self.allocations {
            if a.request.id() != *id {
                problems.push(format!(
                    "allocation keyed `{id}` belongs to `{}`",
                    a.request.id()
                ));
            }
            let Some(n) = vms.get_mut(a.host.idx()) else {
                problems.push(format!("allocation `{id}` is on an unknown host"));
                continue;
            };
            *n += 1;
            for x in &a.slots {
                let Some(s) = c.slot(x.slot()) else {
                    problems.push(format!("allocation `{id}` uses an unknown slot"));
                    continue;
                };
                used[x.slot().idx()] += u128::from(x.amount());
                if c.provider(s.provider).host == Some(a.host) {
                    if let Some(i) = c.cell(a.host, s.class) {
                        host_used[i] += u128::from(x.amount());
                    }
                }
            }
            if let Some(g) = a.request.server_group {
                *members[g.id.idx()].entry(a.host.raw()).or_insert(0) += 1;
            }
        }
        for (i, (&mine, &theirs)) in used.iter().zip(&self.used).enumerate() {
            let s = c.slots()[i];
            if mine != u128::from(theirs) {
                problems.push(format!(
                    "{} on `{}`: allocations sum to {mine}, bookkeeping says {theirs}",
                    c.class_name(s.class),
                    c.provider(s.provider).name
                ));
            }
            if mine > u128::from(s.capacity) {
                problems.push(format!(
                    "{} on `{}`: {mine} allocated exceeds capacity {}",
                    c.class_name(s.class),
                    c.provider(s.provider).name,
                    s.capacity
                ));
            }
        }
        if host_used
            .iter()
            .zip(&self.host_used)
            .any(|(&mine, &theirs)| mine != u128::from(theirs))
        {
            problems.push("per-host usage totals differ from allocations".into());
        }
        let bucketed: usize = self.fill.buckets.iter().map(|b| b.count()).sum();
        if bucketed != self.vm_count.len()
            || self
                .fill
                .buckets
                .iter()
                .enumerate()
                .any(|(i, b)| b.iter().any(|h| self.fill.bucket_of[h] as usize != i))
        {
            problems.push("utilisation buckets are inconsistent".into());
        }
        let used: Vec<u64> = used
            .iter()
            .map(|&u| u64::try_from(u).unwrap_or(u64::MAX))
            .collect();
        if !self.free.consistent(c, &used) {
            problems.push("free-capacity index differs from allocations".into());
        }
        if !self.quotas.is_empty() {
            let mut fresh = quota::Quotas::default();
            for a in self.allocations.values() {
                fresh.count(&a.request, true);
            }
            if !fresh.same_usage(&self.quotas) {
                problems.push("quota usage differs from allocations".into());
            }
        }
        if vms != self.vm_count {
            problems.push("per-host VM counts differ from allocations".into());
        }
        for (g, m) in self.groups.iter().zip(&members) {
            if &g.per_host != m {
                problems.push(format!(
                    "server group `{}` membership differs from allocations",
                    g.spec.name
                ));
            }
        }
        problems
    }
}

/// Number of utilisation buckets of [`State::fill_bucket`].
pub const FILL_BUCKETS: usize = 20;

/// Hosts grouped by dominant utilisation, one bitset per bucket, updated in O(1) per change.
#[derive(Clone, Debug)]
struct FillBuckets {
    buckets: Vec<HostSet>,
    bucket_of: Vec<u8>,
    /// Members per bucket, so scans skip empty buckets without reading them.
    sizes: Vec<u32>,
}

impl FillBuckets {
    fn new(n_hosts: usize) -> Self {
        let mut buckets = vec![HostSet::empty(n_hosts); FILL_BUCKETS];
        buckets[0] = HostSet::full(n_hosts);
        let mut sizes = vec![0; FILL_BUCKETS];
        sizes[0] = n_hosts as u32;
        FillBuckets {
            buckets,
            bucket_of: vec![0; n_hosts],
            sizes,
        }
    }

    /// Makes room for hosts added since (they start empty, in bucket 0).
    fn grow(&mut self, n_hosts: usize) {
        let old = self.bucket_of.len();
        for b in &mut self.buckets {
            b.grow(n_hosts);
        }
        for h in old..n_hosts {
            self.buckets[0].insert(h);
            self.sizes[0] += 1;
        }
        self.bucket_of.resize(n_hosts, 0);
    }

    fn set(&mut self, host: HostId, bucket: usize) {
        let h = host.idx();
        let old = self.bucket_of[h] as usize;
        if old == bucket {
            return;
        }
        self.buckets[old].remove(h);
        self.buckets[bucket].insert(h);
        self.sizes[old] -= 1;
        self.sizes[bucket] += 1;
        self.bucket_of[h] = bucket as u8;
    }
}

/// Why a resize failed. The allocation is unchanged.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ResizeError {
    /// No such consumer.
    #[error("unknown consumer `{0}`")]
    UnknownConsumer(String),
    /// The new request is invalid.
    #[error(transparent)]
    Request(PlacementRequestError),
    /// The new size does not fit on the current host.
    #[error("new size does not fit on the current host: {0}")]
    DoesNotFit(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecideOptions, Placer, Profile};

    fn placer() -> Placer {
        let cluster = Cluster::from_json(
            r#"{"hosts": [
              {"name": "h0", "inventories": {"VCPU": {"total": 8, "max_unit": 4}}},
              {"name": "h1", "inventories": {"VCPU": {"total": 8, "max_unit": 4}}}]}"#,
        )
        .unwrap();
        Placer::new(Arc::new(cluster), Profile::default(), 1)
    }

    /// Claims made by hand inside the crate (the public API cannot) are checked slot by slot.
    #[test]
    fn hand_made_claims_are_refused_and_change_nothing() {
        let mut p = placer();
        p.place(&PlacementRequest::new("first", &[("VCPU", 2)]))
            .unwrap();
        let req = p
            .state()
            .compile(&PlacementRequest::new("second", &[("VCPU", 4)]))
            .unwrap();
        let decision = p.decide_compiled(&req, &DecideOptions::default()).unwrap();
        let before = p.state().clone();

        let mut dup = decision.claim.clone();
        dup.request = p
            .state()
            .compile(&PlacementRequest::new("first", &[("VCPU", 1)]))
            .unwrap();
        assert_eq!(
            p.state_mut().commit(dup.clone()).unwrap_err(),
            CommitError::DuplicateConsumer("first".into())
        );

        let mut big = dup.clone();
        big.request = p
            .state()
            .compile(&PlacementRequest::new("big", &[("VCPU", 4)]))
            .unwrap();
        let slot = big.allocations[0].slot();
        big.allocations = vec![SlotAllocation::new(slot, 4); 3];
        assert!(matches!(
            p.state_mut().commit(big.clone()).unwrap_err(),
            CommitError::OverCapacity { .. }
        ));

        let mut foreign = big.clone();
        foreign.allocations = vec![SlotAllocation::new(SlotId::new(99), 1)];
        assert_eq!(
            p.state_mut().commit(foreign).unwrap_err(),
            CommitError::UnknownSlot(SlotId::new(99))
        );

        let mut no_owner = big;
        no_owner.allocations.truncate(1);
        no_owner.generations = vec![OwnerGeneration::new(OwnerId::new(42), 0)];
        assert_eq!(
            p.state_mut().commit(no_owner).unwrap_err(),
            CommitError::UnknownOwner(OwnerId::new(42))
        );

        assert_eq!(before.used_slots(), p.state().used_slots());
        for o in p.state().cluster().owner_ids() {
            assert_eq!(before.generation(o), p.state().generation(o));
        }
        assert!(p.state().check_consistency().is_empty());
    }

    /// A state corrupted behind the checks on purpose (usage at `u64::MAX`, an allocation applied
    /// without `check`) is reported by the consistency check, and deciding on it does not panic.
    #[test]
    fn corrupted_state_is_caught_by_the_consistency_check() {
        let mut p = placer();
        p.place(&PlacementRequest::new("a", &[("VCPU", 4)]))
            .unwrap();
        assert!(p.state().check_consistency().is_empty());

        let mut wrapped = p.state().clone();
        let slot = wrapped.allocation("a").unwrap().slots()[0].slot();
        wrapped.used[slot.idx()] = u64::MAX;
        let problems = wrapped.check_consistency();
        assert!(
            problems
                .iter()
                .any(|m| m.contains("bookkeeping says 18446744073709551615")),
            "{problems:?}"
        );
        let req = wrapped
            .compile(&PlacementRequest::new("b", &[("VCPU", 4)]))
            .unwrap();
        let mut sched = crate::Scheduler::new(Arc::new(Profile::default()), 1);
        let _ = sched.decide(&wrapped, &req, &DecideOptions::default());

        // Over-allocation applied behind `check`: 4 + 8 on a slot of capacity 8.
        let mut over = p.state().clone();
        let host = over.allocation("a").unwrap().host();
        let req = over
            .compile(&PlacementRequest::new("c", &[("VCPU", 4)]))
            .unwrap();
        over.apply(
            host,
            vec![SlotAllocation::new(slot, 4), SlotAllocation::new(slot, 4)],
            req,
        );
        let problems = over.check_consistency();
        assert!(
            problems
                .iter()
                .any(|m| m.contains("12 allocated exceeds capacity 8")),
            "{problems:?}"
        );

        // Amounts near u64::MAX in allocations: the recomputed sums are exact, not wrapped.
        let mut huge = p.state().clone();
        let req = huge
            .compile(&PlacementRequest::new("d", &[("VCPU", 1)]))
            .unwrap();
        huge.apply(host, vec![SlotAllocation::new(slot, u64::MAX); 2], req);
        let problems = huge.check_consistency();
        assert!(
            problems
                .iter()
                .any(|m| m.contains("36893488147419103234 allocated exceeds capacity 8")),
            "{problems:?}"
        );
    }

    /// A host added at run time with a class no tree had gets its own column; usage stays exact.
    #[test]
    fn added_host_with_a_new_class_keeps_usage_exact() {
        let mut p = placer();
        p.place(&PlacementRequest::new("a", &[("VCPU", 4)]))
            .unwrap();
        let mut spec = crate::model::HostSpec {
            name: "gpu".into(),
            ..Default::default()
        };
        spec.inventories
            .insert("VCPU".into(), crate::model::InventorySpec::new(8));
        spec.inventories
            .insert("PGPU".into(), crate::model::InventorySpec::new(2));
        let h = p.state_mut().add_host(&spec).unwrap();
        let placed = p
            .place(&PlacementRequest::new("b", &[("VCPU", 2), ("PGPU", 1)]))
            .unwrap();
        assert_eq!(placed.host, "gpu");
        let pgpu = p.state().cluster().class_id("PGPU").unwrap();
        assert_eq!(p.state().host_used(h, pgpu), 1);
        assert_eq!(p.state().cluster().host_capacity(h, pgpu), 2);
        assert!(p.state().check_consistency().is_empty());
        assert_eq!(p.state().allocation("a").unwrap().slots()[0].amount(), 4);
    }
}
