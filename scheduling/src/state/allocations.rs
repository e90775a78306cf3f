//! The allocation table, sharded so that growing it never stalls a placement, and hashing each
//! consumer id once. An entry's key is its allocation's request id, read from the request it
//! already holds rather than kept as a second copy.
//!
//! One `HashMap` with hundreds of thousands of entries doubles by rehashing all of them at once (tens
//! to hundreds of milliseconds at W2's 650,000 VMs); with the entries spread over many small tables,
//! each growth step moves one shard's entries only. Each entry keeps its id's hash (SipHash with a
//! random key, as the standard library's maps: ids come from users), so picking the shard and
//! finding the slot hash the id once, and growing a shard rehashes nothing: profiled, the rehashing
//! of the former `HashMap` shards was a tenth of W1's commit time. `hashbrown::HashTable` is the
//! standard library's table with that control exposed.

use super::Allocation;
use hashbrown::HashTable;
use std::hash::BuildHasher;

const SHARDS: usize = 128;

/// One entry: the consumer id's hash and its allocation (whose request id is the key).
#[derive(Clone, Debug)]
struct Entry {
    hash: u64,
    allocation: Allocation,
}

impl Entry {
    #[inline]
    fn consumer(&self) -> &String {
        &self.allocation.request.source().id
    }

    /// Whether this is `consumer`'s entry, `hash` being its hash: the full hash, kept in the
    /// entry, is compared first, so a probe reaches the id (three pointers away) only for the
    /// entry it is looking for.
    #[inline]
    fn is(&self, hash: u64, consumer: &str) -> bool {
        self.hash == hash && self.consumer() == consumer
    }
}

/// A consumer id's hash in an [`Allocations`] table: computed once, then used to look the id up
/// and to insert it (a commit does both).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHash(u64);

/// Allocations by consumer id.
#[derive(Clone, Debug)]
pub struct Allocations {
    shards: Vec<HashTable<Entry>>,
    pick: std::collections::hash_map::RandomState,
    len: usize,
}

impl Default for Allocations {
    fn default() -> Self {
        Allocations {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            pick: Default::default(),
            len: 0,
        }
    }
}

impl Allocations {
    /// The id's hash, and its shard. The table takes a slot's position from the hash's low bits
    /// and its tag from the top seven, so the shard comes from bits 40..47, which neither uses
    /// (a shard of 2^40 entries is far beyond any cluster): sharing a tag in a shard would make
    /// every probe compare keys.
    #[inline]
    fn hash(&self, consumer: &str) -> (u64, usize) {
        Self::split(self.key_hash(consumer))
    }

    #[inline]
    fn split(h: KeyHash) -> (u64, usize) {
        (h.0, (h.0 >> 40) as usize % SHARDS)
    }

    /// The hash of `consumer`, for [`Allocations::contains_hashed`] and [`Allocations::insert`].
    #[inline]
    pub(crate) fn key_hash(&self, consumer: &str) -> KeyHash {
        KeyHash(self.pick.hash_one(consumer))
    }

    /// Whether `consumer`, whose hash is `h`, has an allocation.
    #[inline]
    pub(crate) fn contains_hashed(&self, consumer: &str, h: KeyHash) -> bool {
        let (h, s) = Self::split(h);
        self.shards[s].find(h, |e| e.is(h, consumer)).is_some()
    }

    /// Number of allocations.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The allocation of `consumer`.
    pub fn get(&self, consumer: &str) -> Option<&Allocation> {
        let (h, s) = self.hash(consumer);
        self.shards[s]
            .find(h, |e| e.is(h, consumer))
            .map(|e| &e.allocation)
    }

    /// Whether `consumer` has an allocation.
    pub fn contains_key(&self, consumer: &str) -> bool {
        self.get(consumer).is_some()
    }

    /// `(consumer, allocation)` pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Allocation)> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|e| (e.consumer(), &e.allocation)))
    }

    /// Allocations, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|e| &e.allocation))
    }

    /// Inserts or replaces the allocation of its request's consumer id, whose hash is `h` (from
    /// [`Allocations::key_hash`] on this table).
    pub(crate) fn insert(&mut self, a: Allocation, h: KeyHash) {
        let (hash, s) = Self::split(h);
        let table = &mut self.shards[s];
        let consumer = a.request.id();
        match table.entry(hash, |e| e.is(hash, consumer), |e| e.hash) {
            hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().allocation = a,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(Entry {
                    hash,
                    allocation: a,
                });
                self.len += 1;
            }
        }
    }

    pub(crate) fn remove(&mut self, consumer: &str) -> Option<Allocation> {
        let (hash, s) = self.hash(consumer);
        let entry = self.shards[s]
            .find_entry(hash, |e| e.is(hash, consumer))
            .ok()?;
        self.len -= 1;
        Some(entry.remove().0.allocation)
    }
}

impl<'a> IntoIterator for &'a Allocations {
    type Item = (&'a String, &'a Allocation);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a Allocation)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PlacementRequest, Placer, Profile};
    use std::sync::Arc;

    #[test]
    fn insert_get_replace_remove_across_growth() {
        let cluster = crate::Cluster::from_json(
            r#"{"hosts": [{"name": "h", "inventories": {"VCPU": {"total": 8}}}]}"#,
        )
        .unwrap();
        let mut p = Placer::new(Arc::new(cluster), Profile::default(), 1);
        p.place(&PlacementRequest::new("a", &[("VCPU", 1)]))
            .unwrap();
        let a = p.state().allocation("a").unwrap().clone();
        let named = |id: &str| {
            let mut x = a.clone();
            x.request = p
                .state()
                .compile(&PlacementRequest::new(id, &[("VCPU", 1)]))
                .unwrap();
            x
        };
        let mut t = Allocations::default();
        for i in 0..5000 {
            let x = named(&format!("vm{i}"));
            t.insert(x, t.key_hash(&format!("vm{i}")));
        }
        assert_eq!(t.len(), 5000);
        t.insert(named("vm7"), t.key_hash("vm7"));
        assert_eq!(t.len(), 5000);
        assert!(t.contains_hashed("vm7", t.key_hash("vm7")));
        assert!(t.iter().all(|(k, x)| k == x.request().id()));
        assert!(t.contains_key("vm4999") && !t.contains_key("vm5000"));
        assert!(t.remove("vm10").is_some() && t.remove("vm10").is_none());
        assert_eq!((t.len(), t.iter().count()), (4999, 4999));
    }
}
