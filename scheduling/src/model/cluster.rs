//! The compiled, immutable cluster topology: providers, inventories, hosts and their indexes.
//!
//! Everything here is fixed once loaded; usage lives in [`crate::state::State`]. Names are interned into
//! dense ids so that the hot path compares integers and indexes arrays.

use super::ids::{
    AggregateId, ClassId, HostId, OwnerId, ProviderId, RackId, SlotId, TraitId, ZoneId,
};
use super::resource::{is_valid_custom_class, AllocationRatio, MAX_QUANTITY, STANDARD_CLASSES};
use super::spec::{
    ClusterSpec, HostSpec, InventorySpec, ProviderSpec, ServerGroupSpec, Taint, TaintEffect,
};
use crate::error::ModelError;
use crate::index::ClusterIndex;
use std::collections::{BTreeMap, HashMap};

/// Column of a class no host's tree has.
pub(crate) const NO_COLUMN: u16 = u16::MAX;

/// Maps names to dense ids and back.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Interner {
    /// The id of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The id of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The name of `id` (`"?"` if out of range).
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("?", |s| s.as_str())
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// One resource provider after validation.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Unique name.
    pub name: String,
    /// Parent provider, `None` for roots and shared providers.
    pub parent: Option<ProviderId>,
    /// Host whose tree holds it, `None` for shared providers.
    pub host: Option<HostId>,
    /// Generation owner: its host's tree, or itself for a shared provider.
    pub owner: OwnerId,
    /// Sorted traits.
    pub traits: Vec<TraitId>,
    /// The NUMA node it is, or lies under (see [`crate::model::ProviderSpec::numa_node`]).
    pub numa_node: Option<u32>,
    /// First inventory slot.
    pub(crate) slot_start: u32,
    /// One past the last inventory slot.
    pub(crate) slot_end: u32,
}

impl Provider {
    /// Whether this provider has trait `t`.
    #[inline]
    pub fn has_trait(&self, t: TraitId) -> bool {
        self.traits.binary_search(&t).is_ok()
    }

    /// This provider's inventory slots (one per resource class it has).
    pub fn slot_ids(&self) -> impl Iterator<Item = SlotId> + use<> {
        (self.slot_start..self.slot_end).map(|s| SlotId::new(s as usize))
    }
}

/// One inventory (a provider's stock of one class), flattened into slot arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Owning provider.
    pub provider: ProviderId,
    /// Resource class.
    pub class: ClassId,
    /// `floor((total - reserved) × allocation_ratio)`.
    pub capacity: u64,
    /// Smallest single allocation.
    pub min_unit: u64,
    /// Largest single allocation.
    pub max_unit: u64,
    /// Allocation granularity.
    pub step_size: u64,
}

impl Slot {
    /// Whether a single allocation of `amount` respects min/max/step (ignoring free capacity).
    #[inline]
    pub fn unit_ok(&self, amount: u64) -> bool {
        // A step of 1 (the usual one) needs no division: the fit calls this for every slot it tries.
        amount >= self.min_unit
            && amount <= self.max_unit
            && (self.step_size == 1 || amount.is_multiple_of(self.step_size))
    }
}

/// A host's labels: key/value pairs sorted by key, stored compactly (a `BTreeMap` node costs over
/// 500 bytes even for one label, a third of a host's memory at 100,000 hosts).
///
/// ```
/// let c = scheduling::Cluster::from_json(r#"{"hosts": [
///   {"name": "a", "labels": {"rack": "r1", "tier": "gold"}, "inventories": {"VCPU": {"total": 4}}}]}"#).unwrap();
/// let labels = &c.host(c.host_id("a").unwrap()).labels;
/// assert_eq!(labels.get("tier"), Some("gold"));
/// assert_eq!(labels.iter().collect::<Vec<_>>(), [("rack", "r1"), ("tier", "gold")]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Whether label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// `(key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&BTreeMap<String, String>> for Labels {
    fn from(m: &BTreeMap<String, String>) -> Self {
        Labels(
            m.iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

/// A host: a provider tree plus placement metadata.
#[derive(Clone, Debug)]
pub struct Host {
    /// Unique name.
    pub name: String,
    /// Root provider.
    pub root: ProviderId,
    /// First provider of the tree (providers of a tree are contiguous, root first).
    pub(crate) provider_start: u32,
    /// One past the last provider of the tree.
    pub(crate) provider_end: u32,
    /// Shared providers this host may draw from.
    pub shared: Vec<ProviderId>,
    /// Zone.
    pub zone: Option<ZoneId>,
    /// Rack.
    pub rack: Option<RackId>,
    /// Aggregates.
    pub aggregates: Vec<AggregateId>,
    /// Labels.
    pub labels: Labels,
    /// Taints.
    pub taints: Vec<Taint>,
}

/// The validated cluster topology.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub(crate) classes: Interner,
    pub(crate) traits: Interner,
    pub(crate) aggregates: Interner,
    pub(crate) zones: Interner,
    pub(crate) racks: Interner,
    pub(crate) providers: Vec<Provider>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) hosts: Vec<Host>,
    provider_by_name: HashMap<String, ProviderId>,
    pub(crate) max_unit_by_class: Vec<u64>,
    /// Per class: whether any provider has an inventory of it.
    pub(crate) offered: Vec<bool>,
    /// `hosts × columns` matrix of tree capacity per class (shared providers excluded): one column
    /// per class some host's tree has, so a host's row is one cache line rather than one entry per
    /// class the cluster knows.
    pub(crate) host_capacity: Vec<u64>,
    /// Per class: its column in the per-host matrices ([`NO_COLUMN`] if no tree has it).
    pub(crate) column: Vec<u16>,
    /// Number of columns.
    pub(crate) columns: usize,
    /// Per host, the contiguous range of its tree's inventory slots (tree order).
    pub(crate) host_slots: Vec<(u32, u32)>,
    /// Class of every slot, packed apart from [`Slot`] so fitting scans touch little memory.
    pub(crate) slot_class: Vec<ClassId>,
    /// Hosts with an untolerated-by-default `PreferNoSchedule` taint (checked before reading taints).
    pub(crate) prefer_no_schedule: crate::hostset::HostSet,
    /// Per host, zone and rack ids (`u32::MAX` = none), packed for the spread checks.
    pub(crate) host_domains: Vec<(u32, u32)>,
    /// Per shared provider (in owner order): its id and aggregate ids, to attach hosts added later.
    pub(crate) shared_providers: Vec<(ProviderId, Vec<AggregateId>)>,
    pub(crate) index: ClusterIndex,
    pub(crate) server_groups: Vec<ServerGroupSpec>,
}

/// Where a provider sits: its parent, host tree, generation owner and NUMA node.
struct Position {
    parent: Option<ProviderId>,
    host: Option<HostId>,
    owner: OwnerId,
    numa_node: Option<u32>,
}

struct Builder {
    classes: Interner,
    traits: Interner,
    providers: Vec<Provider>,
    slots: Vec<Slot>,
    provider_by_name: HashMap<String, ProviderId>,
}

impl Builder {
    fn add_provider(
        &mut self,
        name: &str,
        at: Position,
        traits: &[String],
        inventories: &BTreeMap<String, InventorySpec>,
    ) -> Result<ProviderId, ModelError> {
        let Position {
            parent,
            host,
            owner,
            numa_node,
        } = at;
        if name.is_empty() {
            return Err(ModelError::Empty {
                what: "provider".into(),
                field: "name",
            });
        }
        let id = ProviderId::new(self.providers.len());
        if self.provider_by_name.insert(name.to_string(), id).is_some() {
            return Err(ModelError::DuplicateProvider(name.to_string()));
        }
        let mut trait_ids: Vec<TraitId> = traits
            .iter()
            .map(|t| TraitId::new(self.traits.intern(t) as usize))
            .collect();
        trait_ids.sort_unstable();
        trait_ids.dedup();
        let slot_start = self.slots.len() as u32;
        for (class, inv) in inventories {
            let class_id =
                self.classes
                    .get(class)
                    .ok_or_else(|| ModelError::UnknownResourceClass {
                        provider: name.into(),
                        class: class.clone(),
                    })?;
            self.slots.push(validate_inventory(
                name,
                class,
                ClassId::new(class_id as usize),
                id,
                inv,
            )?);
        }
        self.providers.push(Provider {
            name: name.to_string(),
            parent,
            host,
            owner,
            traits: trait_ids,
            numa_node,
            slot_start,
            slot_end: self.slots.len() as u32,
        });
        Ok(id)
    }

    fn add_children(
        &mut self,
        children: &[ProviderSpec],
        parent: ProviderId,
        host: HostId,
        depth: usize,
        numa_seen: &mut u32,
    ) -> Result<(), ModelError> {
        if depth > 8 {
            return Err(ModelError::TreeTooDeep {
                provider: self.providers[parent.idx()].name.clone(),
                max_depth: 8,
            });
        }
        for child in children {
            let numa_node = match child.numa_node {
                Some(n) => Some(n),
                None if child.traits.iter().any(|t| t == "HW_NUMA_ROOT") => {
                    let n = *numa_seen;
                    *numa_seen += 1;
                    Some(n)
                }
                None => self.providers[parent.idx()].numa_node,
            };
            let at = Position {
                parent: Some(parent),
                host: Some(host),
                owner: OwnerId::new(host.idx()),
                numa_node,
            };
            let id = self.add_provider(&child.name, at, &child.traits, &child.inventories)?;
            self.add_children(&child.children, id, host, depth + 1, numa_seen)?;
        }
        Ok(())
    }
}

fn validate_inventory(
    provider: &str,
    class: &str,
    class_id: ClassId,
    id: ProviderId,
    inv: &InventorySpec,
) -> Result<Slot, ModelError> {
    let bad = |field: &'static str, reason: String| ModelError::InvalidInventory {
        provider: provider.to_string(),
        class: class.to_string(),
        field,
        reason,
    };
    let too_large = |field: &'static str, value: u128| ModelError::QuantityTooLarge {
        provider: provider.to_string(),
        class: class.to_string(),
        field,
        value,
        limit: MAX_QUANTITY,
    };
    // Every field within 1..=MAX_QUANTITY (reserved: 0..=total) before any arithmetic.
    let quantity = |field: &'static str, v: i64, min: i64| -> Result<u64, ModelError> {
        if v < min {
            return Err(bad(field, format!("must be >= {min}, got {v}")));
        }
        let v = v as u64;
        if v > MAX_QUANTITY {
            return Err(too_large(field, u128::from(v)));
        }
        Ok(v)
    };
    if inv.total <= 0 {
        return Err(bad("total", format!("must be > 0, got {}", inv.total)));
    }
    let total = quantity("total", inv.total, 1)?;
    if inv.reserved < 0 || inv.reserved > inv.total {
        return Err(bad(
            "reserved",
            format!("must be within 0..={}, got {}", inv.total, inv.reserved),
        ));
    }
    let reserved = inv.reserved as u64;
    let min_unit = inv.min_unit.unwrap_or(1);
    if min_unit <= 0 {
        return Err(bad("min_unit", format!("must be > 0, got {min_unit}")));
    }
    let min_unit = quantity("min_unit", min_unit, 1)?;
    let max_unit = inv
        .max_unit
        .map_or(Ok(total), |m| quantity("max_unit", m, 1))?;
    if max_unit < min_unit {
        return Err(bad(
            "max_unit",
            format!("must be >= min_unit ({min_unit}), got {max_unit}"),
        ));
    }
    let step_size = inv.step_size.unwrap_or(1);
    if step_size <= 0 {
        return Err(bad("step_size", format!("must be > 0, got {step_size}")));
    }
    let step_size = quantity("step_size", step_size, 1)?;
    let ratio_f = inv.allocation_ratio.unwrap_or(1.0);
    let ratio = AllocationRatio::from_f64(ratio_f).ok_or_else(|| {
        bad(
            "allocation_ratio",
            format!(
                "must be a finite number within {}..={} (ratios are kept in millionths), got {}",
                AllocationRatio::MIN,
                AllocationRatio::MAX,
                show_ratio(ratio_f)
            ),
        )
    })?;
    let capacity = ratio.capacity(total, reserved);
    if capacity > u128::from(MAX_QUANTITY) {
        return Err(too_large(
            "capacity ((total - reserved) × allocation_ratio)",
            capacity,
        ));
    }
    Ok(Slot {
        provider: id,
        class: class_id,
        capacity: capacity as u64,
        min_unit,
        max_unit,
        step_size,
    })
}

/// A ratio as a person reads it: plain decimals in the usual range, scientific notation outside it
/// (`1e-7`, `1e300` rather than a 300-digit number).
fn show_ratio(r: f64) -> String {
    if r != 0.0 && r.is_finite() && !(1e-3..1e7).contains(&r.abs()) {
        format!("{r:e}")
    } else {
        format!("{r}")
    }
}

impl Cluster {
    /// Parses a JSON cluster description and compiles it.
    pub fn from_json(json: &str) -> Result<Self, ModelError> {
        let spec: ClusterSpec = crate::load::parse(json, crate::load::Format::Json)?;
        Self::from_spec(&spec)
    }

    /// Validates and compiles a cluster description.
    pub fn from_spec(spec: &ClusterSpec) -> Result<Self, ModelError> {
        let mut classes = Interner::default();
        for c in STANDARD_CLASSES {
            classes.intern(c);
        }
        for c in &spec.custom_resource_classes {
            if !is_valid_custom_class(c) {
                return Err(ModelError::BadCustomClass(c.clone()));
            }
            classes.intern(c);
        }
        let mut b = Builder {
            classes,
            traits: Interner::default(),
            providers: Vec::new(),
            slots: Vec::new(),
            provider_by_name: HashMap::new(),
        };
        let mut zones = Interner::default();
        let mut racks = Interner::default();
        let mut aggregates = Interner::default();
        let mut hosts = Vec::with_capacity(spec.hosts.len());
        for (i, h) in spec.hosts.iter().enumerate() {
            let hid = HostId::new(i);
            let provider_start = b.providers.len() as u32;
            let owner = OwnerId::new(i);
            let at = Position {
                parent: None,
                host: Some(hid),
                owner,
                numa_node: None,
            };
            let root = b.add_provider(&h.name, at, &h.traits, &h.inventories)?;
            b.add_children(&h.children, root, hid, 1, &mut 0)?;
            let mut aggs: Vec<AggregateId> = h
                .aggregates
                .iter()
                .map(|a| AggregateId::new(aggregates.intern(a) as usize))
                .collect();
            aggs.sort_unstable();
            aggs.dedup();
            hosts.push(Host {
                name: h.name.clone(),
                root,
                provider_start,
                provider_end: b.providers.len() as u32,
                shared: Vec::new(),
                zone: h
                    .zone
                    .as_deref()
                    .map(|z| ZoneId::new(zones.intern(z) as usize)),
                rack: h
                    .rack
                    .as_deref()
                    .map(|r| RackId::new(racks.intern(r) as usize)),
                aggregates: aggs,
                labels: Labels::from(&h.labels),
                taints: h.taints.clone(),
            });
        }
        let n_hosts = hosts.len();
        let mut shared_providers = Vec::with_capacity(spec.shared_providers.len());
        for (k, sp) in spec.shared_providers.iter().enumerate() {
            if sp.aggregates.is_empty() {
                return Err(ModelError::Empty {
                    what: format!("shared provider `{}`", sp.name),
                    field: "aggregates",
                });
            }
            let at = Position {
                parent: None,
                host: None,
                owner: OwnerId::new(n_hosts + k),
                numa_node: None,
            };
            let pid = b.add_provider(&sp.name, at, &sp.traits, &sp.inventories)?;
            let aggs: Vec<AggregateId> = sp
                .aggregates
                .iter()
                .map(|a| AggregateId::new(aggregates.intern(a) as usize))
                .collect();
            for h in hosts.iter_mut() {
                if h.aggregates.iter().any(|a| aggs.contains(a)) {
                    h.shared.push(pid);
                }
            }
            shared_providers.push((pid, aggs));
        }
        let mut seen = std::collections::HashSet::new();
        for g in &spec.server_groups {
            crate::state::validate_server_group(g)?;
            if !seen.insert(g.name.clone()) {
                return Err(ModelError::InvalidServerGroup {
                    group: g.name.clone(),
                    reason: "defined twice".into(),
                });
            }
        }
        let mut cluster = Cluster {
            classes: b.classes,
            traits: b.traits,
            aggregates,
            zones,
            racks,
            providers: b.providers,
            slots: b.slots,
            hosts,
            provider_by_name: b.provider_by_name,
            max_unit_by_class: Vec::new(),
            offered: Vec::new(),
            host_capacity: Vec::new(),
            column: Vec::new(),
            columns: 0,
            host_slots: Vec::new(),
            slot_class: Vec::new(),
            prefer_no_schedule: crate::hostset::HostSet::default(),
            host_domains: Vec::new(),
            shared_providers,
            index: ClusterIndex::default(),
            server_groups: spec.server_groups.clone(),
        };
        cluster.derive()?;
        Ok(cluster)
    }

    /// A copy of this cluster with one more host, appended: its providers, inventory slots, and any new
    /// trait, zone, rack or aggregate names get the next free ids, so every id of the existing cluster
    /// (hosts, providers, slots, classes, traits, zones, racks, aggregates) keeps its meaning and
    /// requests compiled against this cluster stay valid. The new host's id is the old host count;
    /// shared providers' generation owners move up by one (`hosts + k`). The host draws on the shared
    /// providers of the aggregates it joins. Validation is as in [`Cluster::from_spec`]; on error
    /// `self` is untouched.
    pub fn with_host(&self, spec: &HostSpec) -> Result<Cluster, ModelError> {
        let mut c = self.clone();
        let hid = HostId::new(c.hosts.len());
        if c.provider_by_name.contains_key(&spec.name) {
            return Err(ModelError::DuplicateProvider(spec.name.clone()));
        }
        let mut b = Builder {
            classes: std::mem::take(&mut c.classes),
            traits: std::mem::take(&mut c.traits),
            providers: std::mem::take(&mut c.providers),
            slots: std::mem::take(&mut c.slots),
            provider_by_name: std::mem::take(&mut c.provider_by_name),
        };
        let provider_start = b.providers.len() as u32;
        let at = Position {
            parent: None,
            host: Some(hid),
            owner: OwnerId::new(hid.idx()),
            numa_node: None,
        };
        let root = b.add_provider(&spec.name, at, &spec.traits, &spec.inventories)?;
        b.add_children(&spec.children, root, hid, 1, &mut 0)?;
        c.classes = b.classes;
        c.traits = b.traits;
        c.providers = b.providers;
        c.slots = b.slots;
        c.provider_by_name = b.provider_by_name;
        let mut aggs: Vec<AggregateId> = spec
            .aggregates
            .iter()
            .map(|a| AggregateId::new(c.aggregates.intern(a) as usize))
            .collect();
        aggs.sort_unstable();
        aggs.dedup();
        let shared = c
            .shared_providers
            .iter()
            .filter(|(_, sa)| aggs.iter().any(|a| sa.contains(a)))
            .map(|(p, _)| *p)
            .collect();
        // Shared providers' owners follow the hosts.
        for (p, _) in &c.shared_providers {
            let owner = &mut c.providers[p.idx()].owner;
            *owner = OwnerId::new(owner.idx() + 1);
        }
        c.hosts.push(Host {
            name: spec.name.clone(),
            root,
            provider_start,
            provider_end: c.providers.len() as u32,
            shared,
            zone: spec
                .zone
                .as_deref()
                .map(|z| ZoneId::new(c.zones.intern(z) as usize)),
            rack: spec
                .rack
                .as_deref()
                .map(|r| RackId::new(c.racks.intern(r) as usize)),
            aggregates: aggs,
            labels: Labels::from(&spec.labels),
            taints: spec.taints.clone(),
        });
        c.derive()?;
        Ok(c)
    }

    /// Computes everything derived from hosts, providers and slots: per-class unit and capacity
    /// tables, compact slot data and the indexes. Refuses a host whose capacity of one class,
    /// summed over its tree, exceeds [`MAX_QUANTITY`].
    fn derive(&mut self) -> Result<(), ModelError> {
        let n_classes = self.classes.len();
        let mut max_unit_by_class = vec![0u64; n_classes];
        let mut offered = vec![false; n_classes];
        for s in &self.slots {
            let m = &mut max_unit_by_class[s.class.idx()];
            *m = (*m).max(s.max_unit.min(s.capacity));
            offered[s.class.idx()] = true;
        }
        // One column per class some host's tree has (shared-only and unused classes need none).
        let mut column = vec![NO_COLUMN; n_classes];
        let mut columns = 0usize;
        for h in &self.hosts {
            let tree = &self.providers[h.provider_start as usize..h.provider_end as usize];
            for p in tree {
                for s in &self.slots[p.slot_start as usize..p.slot_end as usize] {
                    if column[s.class.idx()] == NO_COLUMN {
                        column[s.class.idx()] = columns as u16;
                        columns += 1;
                    }
                }
            }
        }
        let mut host_capacity = vec![0u64; self.hosts.len() * columns];
        let mut host_slots = Vec::with_capacity(self.hosts.len());
        for (i, h) in self.hosts.iter().enumerate() {
            let tree = &self.providers[h.provider_start as usize..h.provider_end as usize];
            for p in tree {
                for s in &self.slots[p.slot_start as usize..p.slot_end as usize] {
                    let col = usize::from(column[s.class.idx()]);
                    let sum = &mut host_capacity[i * columns + col];
                    // Both terms are at most MAX_QUANTITY (2^53), so the sum cannot wrap.
                    *sum += s.capacity;
                    if *sum > MAX_QUANTITY {
                        return Err(ModelError::QuantityTooLarge {
                            provider: h.name.clone(),
                            class: self.classes.name(u32::from(s.class.raw())).to_string(),
                            field: "capacity summed over the host's provider tree",
                            value: u128::from(*sum),
                            limit: MAX_QUANTITY,
                        });
                    }
                }
            }
            let start = tree.first().map_or(0, |p| p.slot_start);
            let end = tree.last().map_or(start, |p| p.slot_end);
            host_slots.push((start, end));
        }
        let mut prefer_no_schedule = crate::hostset::HostSet::empty(self.hosts.len());
        for (i, h) in self.hosts.iter().enumerate() {
            if h.taints
                .iter()
                .any(|t| t.effect == TaintEffect::PreferNoSchedule)
            {
                prefer_no_schedule.insert(i);
            }
        }
        self.slot_class = self.slots.iter().map(|s| s.class).collect();
        self.host_domains = self
            .hosts
            .iter()
            .map(|h| {
                (
                    h.zone.map_or(u32::MAX, ZoneId::raw),
                    h.rack.map_or(u32::MAX, RackId::raw),
                )
            })
            .collect();
        self.max_unit_by_class = max_unit_by_class;
        self.offered = offered;
        self.host_capacity = host_capacity;
        self.column = column;
        self.columns = columns;
        self.host_slots = host_slots;
        self.prefer_no_schedule = prefer_no_schedule;
        self.index = ClusterIndex::build(self);
        Ok(())
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Host by id.
    pub fn host(&self, id: HostId) -> &Host {
        &self.hosts[id.idx()]
    }

    /// Every host id, in order (`0..host_count()`).
    pub fn host_ids(&self) -> impl Iterator<Item = HostId> + use<> {
        (0..self.hosts.len()).map(HostId::new)
    }

    /// All hosts in id order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Zone id of a host (same as `host(h).zone`, from a packed table).
    #[inline]
    pub fn host_zone(&self, h: HostId) -> Option<ZoneId> {
        let z = self.host_domains[h.idx()].0;
        (z != u32::MAX).then_some(ZoneId::new(z as usize))
    }

    /// Rack id of a host (same as `host(h).rack`, from a packed table).
    #[inline]
    pub fn host_rack(&self, h: HostId) -> Option<RackId> {
        let r = self.host_domains[h.idx()].1;
        (r != u32::MAX).then_some(RackId::new(r as usize))
    }

    /// Host id by name.
    pub fn host_id(&self, name: &str) -> Option<HostId> {
        // A host's name is its root provider's.
        let p = self.providers.get(self.provider_by_name.get(name)?.idx())?;
        match (p.parent, p.host) {
            (None, Some(h)) => Some(h),
            _ => None,
        }
    }

    /// Provider id by name.
    pub fn provider_id(&self, name: &str) -> Option<ProviderId> {
        self.provider_by_name.get(name).copied()
    }

    /// Provider by id.
    pub fn provider(&self, id: ProviderId) -> &Provider {
        &self.providers[id.idx()]
    }

    /// Inventory slot by id (`None` if it belongs to another cluster).
    pub fn slot(&self, slot: SlotId) -> Option<&Slot> {
        self.slots.get(slot.idx())
    }

    /// All inventory slots, in id order (see [`Cluster::slot_ids`]).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// Every slot id, in the order of [`Cluster::slots`].
    pub fn slot_ids(&self) -> impl Iterator<Item = SlotId> + use<> {
        (0..self.slots.len()).map(SlotId::new)
    }

    /// The inventory of class `class` on provider `provider`, if it has one.
    pub fn slot_of(&self, provider: ProviderId, class: ClassId) -> Option<SlotId> {
        let p = self.providers.get(provider.idx())?;
        p.slot_ids().find(|s| self.slot_class[s.idx()] == class)
    }

    /// Providers in a host's tree (root first).
    pub fn tree(&self, host: HostId) -> &[Provider] {
        let h = &self.hosts[host.idx()];
        &self.providers[h.provider_start as usize..h.provider_end as usize]
    }

    /// Resource class id by name.
    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.classes.get(name).map(|c| ClassId::new(c as usize))
    }

    /// Resource class name.
    pub fn class_name(&self, c: ClassId) -> &str {
        self.classes.name(u32::from(c.raw()))
    }

    /// Number of resource classes known.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Trait id by name.
    pub fn trait_id(&self, name: &str) -> Option<TraitId> {
        self.traits.get(name).map(|t| TraitId::new(t as usize))
    }

    /// Trait name.
    pub fn trait_name(&self, t: TraitId) -> &str {
        self.traits.name(t.raw())
    }

    /// Zone name.
    pub fn zone_name(&self, z: ZoneId) -> &str {
        self.zones.name(z.raw())
    }

    /// Zone id by name.
    pub fn zone_id(&self, name: &str) -> Option<ZoneId> {
        self.zones.get(name).map(|z| ZoneId::new(z as usize))
    }

    /// Number of zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// Rack name.
    pub fn rack_name(&self, r: RackId) -> &str {
        self.racks.name(r.raw())
    }

    /// Number of racks.
    pub fn rack_count(&self) -> usize {
        self.racks.len()
    }

    /// Aggregate name.
    pub fn aggregate_name(&self, a: AggregateId) -> &str {
        self.aggregates.name(a.raw())
    }

    /// Aggregate id by name.
    pub fn aggregate_id(&self, name: &str) -> Option<AggregateId> {
        self.aggregates
            .get(name)
            .map(|a| AggregateId::new(a as usize))
    }

    /// Tree capacity of class `c` on `host` (shared providers excluded).
    #[inline]
    pub fn host_capacity(&self, host: HostId, c: ClassId) -> u64 {
        self.cell(host, c).map_or(0, |i| self.host_capacity[i])
    }

    /// The index of `(host, c)` in the `hosts × columns` matrices, if some tree has class `c`.
    #[inline]
    pub(crate) fn cell(&self, host: HostId, c: ClassId) -> Option<usize> {
        match self.column.get(c.idx()) {
            Some(&col) if col != NO_COLUMN => Some(host.idx() * self.columns + usize::from(col)),
            _ => None,
        }
    }

    /// Name of a generation owner (host or shared provider).
    pub fn owner_name(&self, owner: OwnerId) -> &str {
        let i = owner.idx();
        if let Some(h) = self.hosts.get(i) {
            return &h.name;
        }
        self.shared_providers
            .get(i - self.hosts.len())
            .map_or("?", |(p, _)| self.providers[p.idx()].name.as_str())
    }

    /// The generation owner of `host`'s tree.
    pub fn host_owner(&self, host: HostId) -> OwnerId {
        OwnerId::new(host.idx())
    }

    /// Every generation owner (hosts' trees, then shared providers).
    pub fn owner_ids(&self) -> impl Iterator<Item = OwnerId> + use<> {
        (0..self.owner_count()).map(OwnerId::new)
    }

    /// Number of generation owners (hosts + shared providers).
    pub fn owner_count(&self) -> usize {
        self.hosts.len() + self.shared_providers.len()
    }

    /// Whether provider `ancestor` is `p` or one of its ancestors.
    pub fn is_ancestor_or_self(&self, ancestor: ProviderId, mut p: ProviderId) -> bool {
        loop {
            if p == ancestor {
                return true;
            }
            match self.providers[p.idx()].parent {
                Some(q) => p = q,
                None => return false,
            }
        }
    }

    /// The indexes over hosts.
    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    /// Server groups declared in the description.
    pub fn initial_server_groups(&self) -> &[ServerGroupSpec] {
        &self.server_groups
    }

    /// Whether a taint requires toleration to place on the host.
    pub(crate) fn taint_blocks(t: &Taint) -> bool {
        matches!(t.effect, TaintEffect::NoSchedule | TaintEffect::NoExecute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::spec::HostSpec;

    fn one_host(inv: InventorySpec) -> ClusterSpec {
        let mut h = HostSpec {
            name: "h1".into(),
            ..Default::default()
        };
        h.inventories.insert("VCPU".into(), inv);
        ClusterSpec {
            hosts: vec![h],
            ..Default::default()
        }
    }

    #[test]
    fn rejects_bad_inventories_naming_field() {
        let cases = [
            (InventorySpec::new(0), "total"),
            (InventorySpec::new(-4), "total"),
            (InventorySpec::new(4).ratio(0.0), "allocation_ratio"),
            (InventorySpec::new(4).ratio(-1.0), "allocation_ratio"),
            (InventorySpec::new(4).reserved(5), "reserved"),
            (InventorySpec::new(4).step_size(0), "step_size"),
            (InventorySpec::new(4).max_unit(0), "max_unit"),
        ];
        for (inv, field) in cases {
            match Cluster::from_spec(&one_host(inv)) {
                Err(ModelError::InvalidInventory {
                    field: f, provider, ..
                }) => {
                    assert_eq!(f, field);
                    assert_eq!(provider, "h1");
                }
                other => panic!("expected error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_unknown_class_and_duplicates() {
        let mut spec = one_host(InventorySpec::new(4));
        spec.hosts[0]
            .inventories
            .insert("GPU_MAGIC".into(), InventorySpec::new(1));
        let err = Cluster::from_spec(&spec).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown resource class `GPU_MAGIC`"),
            "{err}"
        );
        let mut spec = one_host(InventorySpec::new(4));
        spec.hosts.push(spec.hosts[0].clone());
        assert_eq!(
            Cluster::from_spec(&spec).unwrap_err(),
            ModelError::DuplicateProvider("h1".into())
        );
    }

    #[test]
    fn custom_classes_and_capacity() {
        let mut spec = one_host(InventorySpec::new(8).ratio(4.0).reserved(2));
        spec.custom_resource_classes.push("CUSTOM_FPGA".into());
        spec.hosts[0]
            .inventories
            .insert("CUSTOM_FPGA".into(), InventorySpec::new(2));
        let c = Cluster::from_spec(&spec).unwrap();
        let vcpu = c.class_id("VCPU").unwrap();
        assert_eq!(c.host_capacity(HostId::new(0), vcpu), 24);
        assert_eq!(
            c.host_capacity(HostId::new(0), c.class_id("CUSTOM_FPGA").unwrap()),
            2
        );
        let mut bad = spec.clone();
        bad.custom_resource_classes.push("FPGA".into());
        assert_eq!(
            Cluster::from_spec(&bad).unwrap_err(),
            ModelError::BadCustomClass("FPGA".into())
        );
    }
}
