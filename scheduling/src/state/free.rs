//! The free-capacity index: per resource class, which hosts can still serve a single allocation of at
//! least a given size.
//!
//! Every allocation of a class comes whole from one inventory slot (a request's unnamed resources take one
//! slot per class, a named group one provider), so a host whose largest free slot of class `c` is below
//! `amount` cannot serve `amount` of `c`. The index keeps, per class, one [`HostSet`] per threshold of a
//! geometric ladder (four steps per doubling: 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, …) holding the
//! hosts whose largest free slot reaches it. A pre-filter intersects the candidates with the set of the
//! largest threshold not above the requested amount: hosts left out certainly cannot fit, and hosts kept
//! have at least 80% of the amount free (the filters still check them exactly). Full hosts are thus
//! skipped by bitset operations instead of being visited, whatever the policy's scan order.
//!
//! A host drawing on a shared provider of class `c` is kept in every set of `c` (shared usage changes
//! with other hosts' allocations; the filters check it). Each change of usage moves a host between
//! sets in O(thresholds crossed).

use crate::hostset::HostSet;
use crate::model::{ClassId, Cluster, HostId};

/// Thresholds `1 ≤ t ≤ max` on a geometric ladder with four steps per doubling.
fn ladder(max: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    let mut e = 0u32;
    'outer: while e < 63 {
        for k in 4u64..8 {
            let t = (k << e) >> 2;
            if t > max {
                break 'outer;
            }
            if t >= 1 && out.last() != Some(&t) {
                out.push(t);
            }
        }
        e += 1;
    }
    out
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct FreeIndex {
    classes: usize,
    /// Per class: the threshold ladder.
    thresholds: Vec<Vec<u64>>,
    /// Per class, per threshold: hosts whose largest free slot of the class reaches it.
    sets: Vec<Vec<HostSet>>,
    /// Per host × class: how many thresholds the host reaches (it is in `sets[c][..level]`).
    level: Vec<u8>,
    /// Per host × class: whether a shared provider of the class is in reach (always in every set).
    shared: Vec<bool>,
}

/// At most this many thresholds per class, so a level fits a byte.
const MAX_LEVELS: usize = 255;

impl FreeIndex {
    /// The index of an empty cluster (nothing allocated).
    pub(crate) fn new(cluster: &Cluster, used: &[u64]) -> Self {
        let classes = cluster.class_count();
        let n = cluster.host_count();
        let mut max_cap = vec![0u64; classes];
        for s in cluster.slots() {
            let m = &mut max_cap[s.class.idx()];
            *m = (*m).max(s.capacity);
        }
        let thresholds: Vec<Vec<u64>> = max_cap
            .iter()
            .map(|m| {
                let mut l = ladder(*m);
                l.truncate(MAX_LEVELS);
                l
            })
            .collect();
        let sets = thresholds
            .iter()
            .map(|t| vec![HostSet::empty(n); t.len()])
            .collect();
        let mut shared = vec![false; n * classes];
        for (h, host) in cluster.hosts().iter().enumerate() {
            for p in &host.shared {
                let p = cluster.provider(*p);
                for s in &cluster.slots()[p.slot_start as usize..p.slot_end as usize] {
                    shared[h * classes + s.class.idx()] = true;
                }
            }
        }
        let mut ix = FreeIndex {
            classes,
            thresholds,
            sets,
            level: vec![0; n * classes],
            shared,
        };
        for h in 0..n {
            for c in 0..classes {
                ix.update(cluster, used, HostId::new(h), ClassId::new(c));
            }
        }
        ix
    }

    /// The largest free amount of class `c` in one slot of `host`'s tree.
    fn largest_free(cluster: &Cluster, used: &[u64], host: HostId, c: ClassId) -> u64 {
        // A tree's slots are contiguous: scan the packed class column, not the providers.
        let (start, end) = cluster.host_slots[host.idx()];
        let range = start as usize..end as usize;
        cluster.slot_class[range.clone()]
            .iter()
            .zip(&cluster.slots()[range.clone()])
            .zip(&used[range])
            .filter(|((class, _), _)| **class == c)
            .map(|((_, s), u)| s.capacity.saturating_sub(*u))
            .max()
            .unwrap_or(0)
    }

    /// Re-reads `host`'s free capacity of class `c` after its usage changed.
    pub(crate) fn update(&mut self, cluster: &Cluster, used: &[u64], host: HostId, c: ClassId) {
        let i = host.idx() * self.classes + c.idx();
        let ladder = &self.thresholds[c.idx()];
        let new = if self.shared[i] {
            ladder.len()
        } else {
            let free = Self::largest_free(cluster, used, host, c);
            ladder.partition_point(|t| *t <= free)
        };
        let old = self.level[i] as usize;
        let sets = &mut self.sets[c.idx()];
        for set in sets.iter_mut().take(new).skip(old) {
            set.insert(host.idx());
        }
        for set in sets.iter_mut().take(old).skip(new) {
            set.remove(host.idx());
        }
        self.level[i] = new as u8;
    }

    /// Hosts that may have `amount` of class `c` free in one slot: every host that does is included,
    /// and every included host has at least 80% of `amount` free. `None` when nothing can be excluded
    /// (zero amount).
    pub(crate) fn at_least(&self, c: ClassId, amount: u64) -> Option<&HostSet> {
        let ladder = self.thresholds.get(c.idx())?;
        let k = ladder.partition_point(|t| *t <= amount);
        if k == 0 {
            return None;
        }
        self.sets[c.idx()].get(k - 1)
    }

    /// Recomputes every level from `used` and compares (for the consistency check).
    pub(crate) fn consistent(&self, cluster: &Cluster, used: &[u64]) -> bool {
        let fresh = FreeIndex::new(cluster, used);
        fresh.level == self.level && fresh.sets == self.sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_has_four_steps_per_doubling() {
        assert_eq!(
            ladder(40),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40]
        );
        assert_eq!(ladder(0), Vec::<u64>::new());
        let l = ladder(1 << 20);
        assert!(l
            .windows(2)
            .all(|w| w[0] < w[1] && w[1] * 4 <= w[0] * 5 + 4));
    }

    #[test]
    fn index_follows_usage() {
        let json = r#"{"hosts": [
            {"name": "a", "inventories": {"VCPU": {"total": 8}},
             "children": [{"name": "a-n0", "inventories": {"MEMORY_MB": {"total": 4096}}},
                          {"name": "a-n1", "inventories": {"MEMORY_MB": {"total": 4096}}}]},
            {"name": "b", "inventories": {"VCPU": {"total": 4}, "MEMORY_MB": {"total": 16384}}}]}"#;
        let c = Cluster::from_json(json).unwrap();
        let vcpu = c.class_id("VCPU").unwrap();
        let mem = c.class_id("MEMORY_MB").unwrap();
        let mut used = vec![0u64; c.slots().len()];
        let ix = FreeIndex::new(&c, &used);
        // a's memory is split over two nodes: 8192 in total, but no single slot has 5000.
        let members =
            |ix: &FreeIndex, cl, a| ix.at_least(cl, a).unwrap().iter().collect::<Vec<_>>();
        assert_eq!(members(&ix, mem, 4096), vec![0, 1]);
        assert_eq!(members(&ix, mem, 6000), vec![1]);
        assert_eq!(members(&ix, vcpu, 5), vec![0]);
        assert!(ix.at_least(vcpu, 0).is_none());
        // Use 3 VCPU on a: 5 left, so it still reaches 5 but no longer 6.
        let a_vcpu = (0..c.slots().len())
            .find(|s| c.slots()[*s].class == vcpu && c.provider(c.slots()[*s].provider).name == "a")
            .unwrap();
        used[a_vcpu] = 3;
        let mut ix2 = ix.clone();
        ix2.update(&c, &used, HostId::new(0), vcpu);
        assert_eq!(members(&ix2, vcpu, 5), vec![0]);
        assert!(members(&ix2, vcpu, 6).is_empty());
        assert!(ix2.consistent(&c, &used));
        assert!(!ix.consistent(&c, &used));
    }
}
