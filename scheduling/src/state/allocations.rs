//! The allocation table, sharded so that growing it never stalls a placement.
//!
//! One `HashMap` with hundreds of thousands of entries doubles by rehashing all of them at once (tens
//! to hundreds of milliseconds at W2's 650,000 VMs); with the entries spread over many small maps, each
//! growth step moves one shard's entries only.

use super::Allocation;
use std::collections::HashMap;
use std::hash::BuildHasher;

const SHARDS: usize = 128;

/// Allocations by consumer id.
#[derive(Clone, Debug)]
pub struct Allocations {
    shards: Vec<HashMap<String, Allocation>>,
    pick: std::collections::hash_map::RandomState,
    len: usize,
}

impl Default for Allocations {
    fn default() -> Self {
        Allocations {
            shards: vec![HashMap::new(); SHARDS],
            pick: Default::default(),
            len: 0,
        }
    }
}

impl Allocations {
    #[inline]
    fn shard(&self, consumer: &str) -> usize {
        (self.pick.hash_one(consumer) % SHARDS as u64) as usize
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
        self.shards[self.shard(consumer)].get(consumer)
    }

    /// Whether `consumer` has an allocation.
    pub fn contains_key(&self, consumer: &str) -> bool {
        self.get(consumer).is_some()
    }

    /// `(consumer, allocation)` pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Allocation)> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Allocations, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Allocation> + '_ {
        self.shards.iter().flat_map(|s| s.values())
    }

    pub(crate) fn insert(&mut self, consumer: String, a: Allocation) {
        let i = self.shard(&consumer);
        if self.shards[i].insert(consumer, a).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, consumer: &str) -> Option<Allocation> {
        let i = self.shard(consumer);
        let a = self.shards[i].remove(consumer);
        if a.is_some() {
            self.len -= 1;
        }
        a
    }
}

impl<'a> IntoIterator for &'a Allocations {
    type Item = (&'a String, &'a Allocation);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a Allocation)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
