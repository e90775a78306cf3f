//! A fixed-size bitset over host indexes: the building block of the incremental indexes.
//!
//! Filtering 20,000 hosts by a trait or an aggregate is one AND over 313 words instead of 20,000 lookups.

/// A set of host indexes `0..len` stored one bit per host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSet {
    words: Vec<u64>,
    len: usize,
}

impl HostSet {
    /// The empty set over `len` hosts.
    pub fn empty(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// The set containing every host `0..len`.
    pub fn full(len: usize) -> Self {
        let mut s = Self {
            words: vec![u64::MAX; len.div_ceil(64)],
            len,
        };
        s.trim();
        s
    }

    fn trim(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// Widens the universe to `len` hosts (new hosts are not members); never shrinks.
    pub fn grow(&mut self, len: usize) {
        if len > self.len {
            self.words.resize(len.div_ceil(64), 0);
            self.len = len;
        }
    }

    /// How many hosts the set ranges over (not how many it contains).
    pub fn universe(&self) -> usize {
        self.len
    }

    /// Adds host `i` (ignored when out of range).
    pub fn insert(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    /// Removes host `i`.
    pub fn remove(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Whether host `i` is in the set.
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Number of hosts in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Keeps only hosts also in `other`.
    pub fn intersect_with(&mut self, other: &HostSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= *b;
        }
    }

    /// Keeps only hosts also in `other`; returns how many were removed.
    pub fn intersect_counting(&mut self, other: &HostSet) -> usize {
        let mut removed = 0;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            removed += (*a & !*b).count_ones() as usize;
            *a &= *b;
        }
        removed
    }

    /// Removes every host in `other`; returns how many were removed.
    pub fn subtract_counting(&mut self, other: &HostSet) -> usize {
        let mut removed = 0;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            removed += (*a & *b).count_ones() as usize;
            *a &= !*b;
        }
        removed
    }

    /// Removes every host in `other`.
    pub fn subtract(&mut self, other: &HostSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !*b;
        }
    }

    /// Adds every host in `other`.
    pub fn union_with(&mut self, other: &HostSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    /// Copies `other` into `self` without reallocating when sizes match.
    pub fn copy_from(&mut self, other: &HostSet) {
        self.words.clear();
        self.words.extend_from_slice(&other.words);
        self.len = other.len;
    }

    /// Hosts in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.iter_from(0)
    }

    /// Hosts in ascending order starting at `start`, wrapping round once: the rotating start of sampling.
    pub(crate) fn iter_from(&self, start: usize) -> RotatingIter<'_> {
        let start = if self.len == 0 { 0 } else { start % self.len };
        let mut it = RotatingIter {
            set: self,
            word_idx: start / 64,
            word: 0,
            wrapped: false,
            start,
            done: self.len == 0,
        };
        if !it.done {
            it.word = self.words[it.word_idx] & (u64::MAX << (start % 64));
        }
        it
    }
}

/// Iterator over a [`HostSet`] from a starting index, wrapping round to the start once.
pub(crate) struct RotatingIter<'a> {
    set: &'a HostSet,
    word_idx: usize,
    word: u64,
    wrapped: bool,
    start: usize,
    done: bool,
}

impl Iterator for RotatingIter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            if self.done {
                return None;
            }
            if self.word != 0 {
                let bit = self.word.trailing_zeros() as usize;
                self.word &= self.word - 1;
                let i = self.word_idx * 64 + bit;
                if self.wrapped && i >= self.start {
                    self.done = true;
                    return None;
                }
                return Some(i);
            }
            self.word_idx += 1;
            if self.word_idx >= self.set.words.len() {
                if self.wrapped || self.start == 0 {
                    self.done = true;
                    return None;
                }
                self.wrapped = true;
                self.word_idx = 0;
            }
            if self.wrapped && self.word_idx > self.start / 64 {
                self.done = true;
                return None;
            }
            self.word = self.set.words[self.word_idx];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_set_counts_exactly_len() {
        for len in [0, 1, 63, 64, 65, 200] {
            assert_eq!(HostSet::full(len).count(), len);
        }
    }

    #[test]
    fn rotating_iteration_visits_each_member_once_in_rotated_order() {
        let mut s = HostSet::empty(150);
        for i in [3, 64, 65, 100, 149] {
            s.insert(i);
        }
        let v: Vec<_> = s.iter_from(65).collect();
        assert_eq!(v, vec![65, 100, 149, 3, 64]);
        let v: Vec<_> = s.iter_from(66).collect();
        assert_eq!(v, vec![100, 149, 3, 64, 65]);
        let v: Vec<_> = s.iter_from(0).collect();
        assert_eq!(v, vec![3, 64, 65, 100, 149]);
        let v: Vec<_> = s.iter_from(149 + 150).collect();
        assert_eq!(v, vec![149, 3, 64, 65, 100]);
    }

    #[test]
    fn rotating_iteration_within_one_word_wraps() {
        let mut s = HostSet::empty(10);
        for i in [1, 5, 8] {
            s.insert(i);
        }
        assert_eq!(s.iter_from(6).collect::<Vec<_>>(), vec![8, 1, 5]);
        assert_eq!(s.iter_from(5).collect::<Vec<_>>(), vec![5, 8, 1]);
    }

    #[test]
    fn set_algebra() {
        let mut a = HostSet::full(70);
        let mut b = HostSet::empty(70);
        b.insert(1);
        b.insert(69);
        a.subtract(&b);
        assert_eq!(a.count(), 68);
        let mut c = HostSet::full(70);
        assert_eq!(c.subtract_counting(&b), 2);
        assert_eq!(c.subtract_counting(&b), 0);
        assert_eq!(c.intersect_counting(&a), 0);
        c.insert(1);
        assert_eq!(c.intersect_counting(&a), 1);
        assert_eq!(c, a);
        let mut g = HostSet::full(63);
        g.grow(130);
        assert_eq!((g.universe(), g.count()), (130, 63));
        g.insert(129);
        assert!(g.contains(129) && !g.contains(64));
        assert!(!a.contains(69));
        a.intersect_with(&HostSet::empty(70));
        assert_eq!(a.count(), 0);
        a.union_with(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 69]);
    }
}
