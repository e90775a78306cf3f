//! Incremental host indexes: one [`HostSet`] per trait, aggregate, zone, rack, label, taint and resource class.
//!
//! Pre-filters intersect these instead of visiting hosts, so a constraint costs `hosts / 64` word operations.
//! The topology is immutable, so the indexes are built once; what changes (usage, disabled hosts, group
//! membership) lives in [`crate::state::State`].

use crate::hostset::HostSet;
use crate::model::{AggregateId, Cluster, HostId, RackId, Taint, TraitId, ZoneId};
use std::collections::HashMap;

/// Bitset indexes over a cluster's hosts.
#[derive(Clone, Debug, Default)]
pub struct ClusterIndex {
    all: HostSet,
    none: HostSet,
    by_trait: HashMap<TraitId, HostSet>,
    by_aggregate: Vec<HostSet>,
    by_zone: Vec<HostSet>,
    /// Hosts per rack, as lists: racks grow with the cluster (one per ~40 hosts), so a bitset per
    /// rack would cost O(hosts²) bits.
    by_rack: Vec<Vec<u32>>,
    with_zone: HostSet,
    with_rack: HostSet,
    by_label: HashMap<(String, String), HostSet>,
    by_label_key: HashMap<String, HostSet>,
    blocking_taints: Vec<(Taint, HostSet)>,
    by_class: Vec<HostSet>,
}

impl ClusterIndex {
    /// Builds every index for `cluster`.
    pub fn build(cluster: &Cluster) -> Self {
        let n = cluster.host_count();
        let mut ix = ClusterIndex {
            all: HostSet::full(n),
            none: HostSet::empty(n),
            by_aggregate: vec![HostSet::empty(n); cluster.aggregates.len()],
            by_zone: vec![HostSet::empty(n); cluster.zones.len()],
            by_rack: vec![Vec::new(); cluster.racks.len()],
            by_class: vec![HostSet::empty(n); cluster.class_count()],
            with_zone: HostSet::empty(n),
            with_rack: HostSet::empty(n),
            ..Default::default()
        };
        for (i, h) in cluster.hosts().iter().enumerate() {
            let hid = HostId::new(i);
            for t in &cluster.provider(h.root).traits {
                ix.by_trait
                    .entry(*t)
                    .or_insert_with(|| HostSet::empty(n))
                    .insert(i);
            }
            for a in &h.aggregates {
                ix.by_aggregate[a.idx()].insert(i);
            }
            if let Some(z) = h.zone {
                ix.by_zone[z.idx()].insert(i);
                ix.with_zone.insert(i);
            }
            if let Some(r) = h.rack {
                ix.by_rack[r.idx()].push(i as u32);
                ix.with_rack.insert(i);
            }
            for (k, v) in h.labels.iter() {
                ix.by_label
                    .entry((k.to_string(), v.to_string()))
                    .or_insert_with(|| HostSet::empty(n))
                    .insert(i);
                ix.by_label_key
                    .entry(k.to_string())
                    .or_insert_with(|| HostSet::empty(n))
                    .insert(i);
            }
            for t in h.taints.iter().filter(|t| Cluster::taint_blocks(t)) {
                match ix.blocking_taints.iter_mut().find(|(x, _)| x == t) {
                    Some((_, set)) => set.insert(i),
                    None => {
                        let mut set = HostSet::empty(n);
                        set.insert(i);
                        ix.blocking_taints.push((t.clone(), set));
                    }
                }
            }
            let providers = cluster
                .tree(hid)
                .iter()
                .chain(h.shared.iter().map(|p| cluster.provider(*p)));
            for p in providers {
                for s in &cluster.slots()[p.slot_start as usize..p.slot_end as usize] {
                    ix.by_class[s.class.idx()].insert(i);
                }
            }
        }
        ix
    }

    /// Every host.
    pub fn all(&self) -> &HostSet {
        &self.all
    }

    /// Hosts whose root provider has trait `t`.
    pub fn with_trait(&self, t: TraitId) -> &HostSet {
        self.by_trait.get(&t).unwrap_or(&self.none)
    }

    /// Hosts in aggregate `a`.
    pub fn in_aggregate(&self, a: AggregateId) -> &HostSet {
        self.by_aggregate.get(a.idx()).unwrap_or(&self.none)
    }

    /// Hosts in zone `z`.
    pub fn in_zone(&self, z: ZoneId) -> &HostSet {
        self.by_zone.get(z.idx()).unwrap_or(&self.none)
    }

    /// Hosts in rack `r`, ascending (a list rather than a set: see the field).
    pub fn in_rack(&self, r: RackId) -> &[u32] {
        self.by_rack.get(r.idx()).map_or(&[], |v| v.as_slice())
    }

    /// Hosts that have a value for the topology key (a zone, or a rack).
    pub fn with_topology_key(&self, key: crate::request::TopologyKey) -> &HostSet {
        match key {
            crate::request::TopologyKey::Zone => &self.with_zone,
            crate::request::TopologyKey::Rack => &self.with_rack,
        }
    }

    /// Hosts labelled `key=value`.
    pub fn with_label(&self, key: &str, value: &str) -> &HostSet {
        self.by_label
            .get(&(key.to_string(), value.to_string()))
            .unwrap_or(&self.none)
    }

    /// Hosts having label `key` with any value.
    pub fn with_label_key(&self, key: &str) -> &HostSet {
        self.by_label_key.get(key).unwrap_or(&self.none)
    }

    /// Distinct `NoSchedule`/`NoExecute` taints and the hosts carrying each.
    pub fn blocking_taints(&self) -> &[(Taint, HostSet)] {
        &self.blocking_taints
    }

    /// Hosts that can reach any inventory of class `c` (in their tree or a shared provider).
    pub fn with_class(&self, c: crate::model::ClassId) -> &HostSet {
        self.by_class.get(c.idx()).unwrap_or(&self.none)
    }
}
