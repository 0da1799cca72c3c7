//! A set of items kept in ascending order of a small counter, with O(1) counter steps.
//!
//! This is libtorrent's piece-priority vector. Every item (a piece index) has a count; a
//! subset of the items is *present* and listed in `order`, sorted by count. `ends[k]` is the
//! number of present items whose count is `<= k`, so bucket `k` (all present items with
//! count `k`) is `order[ends[k-1]..ends[k]]`.
//!
//! - Raising an item's count by one swaps it with the last item of its bucket and moves the
//!   bucket boundary down by one: the item is now the first of the next bucket. Lowering is
//!   the mirror image. Both are O(1) whatever the number of items.
//! - After each move the item is swapped with a random member of its new bucket, so the order
//!   inside a bucket stays a uniform shuffle: walking `order` from the front gives lowest count
//!   first with a random tie-break, without ever sorting.
//! - Inserting or removing shifts one item per bucket above the item's bucket (the hole
//!   "bubbles" through the boundaries), O(number of buckets), which is bounded by the highest
//!   count (the number of peers for availability).
//!
//! Counts saturate at `cap`, so a caller that counts without bound (e.g. uploads) cannot make
//! `ends` grow without bound. Trailing empty buckets are trimmed so inserts and removals only
//! pay for buckets that hold something.

use rand::{rngs::SmallRng, RngExt};

/// `pos` value of an item that is not present.
const ABSENT: u32 = u32::MAX;

/// Items `0..n` with a counter each; the present ones ordered by counter (see module docs).
#[derive(Clone, Debug)]
pub(crate) struct RankedSet {
    counts: Vec<u32>,
    order: Vec<u32>,
    pos: Vec<u32>,
    /// `ends[k]` = present items with count `<= k`. Never empty; last entry == `order.len()`.
    ends: Vec<u32>,
    cap: u32,
}

impl RankedSet {
    /// `n` items, all absent, all counts zero. Counts never exceed `cap`.
    pub(crate) fn new(n: u32, cap: u32) -> Self {
        Self {
            counts: vec![0; n as usize],
            order: Vec::new(),
            pos: vec![ABSENT; n as usize],
            ends: vec![0],
            cap,
        }
    }

    /// The counter of item `i` (0 for an unknown item).
    pub(crate) fn count(&self, i: u32) -> u32 {
        self.counts.get(i as usize).copied().unwrap_or(0)
    }

    /// Whether item `i` is present in the order.
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.pos.get(i as usize).is_some_and(|&p| p != ABSENT)
    }

    /// Present items, lowest count first.
    pub(crate) fn order(&self) -> &[u32] {
        &self.order
    }

    /// Position of item `i` in `order`, if present.
    pub(crate) fn position(&self, i: u32) -> Option<usize> {
        match self.pos.get(i as usize) {
            Some(&p) if p != ABSENT => Some(p as usize),
            _ => None,
        }
    }

    /// First position in `order` whose count is at least `k`.
    pub(crate) fn bucket_start(&self, k: u32) -> usize {
        if k == 0 {
            return 0;
        }
        match self.ends.get(k as usize - 1) {
            Some(&e) => e as usize,
            None => self.order.len(),
        }
    }

    /// Makes sure bucket `k` has an entry in `ends`.
    fn ensure_bucket(&mut self, k: u32) {
        let len = self.order.len() as u32;
        while self.ends.len() <= k as usize {
            self.ends.push(len);
        }
    }

    /// Drops trailing empty buckets so cascades only walk buckets that hold items.
    fn trim(&mut self) {
        while self.ends.len() > 1
            && self.ends[self.ends.len() - 1] == self.ends[self.ends.len() - 2]
        {
            self.ends.pop();
        }
    }

    fn place(&mut self, at: usize, item: u32) {
        self.order[at] = item;
        self.pos[item as usize] = at as u32;
    }

    fn swap(&mut self, a: usize, b: usize) {
        if a != b {
            self.order.swap(a, b);
            self.pos[self.order[a] as usize] = a as u32;
            self.pos[self.order[b] as usize] = b as u32;
        }
    }

    /// Swaps the item at `at` with a random member of bucket `k` (which contains `at`).
    fn scatter(&mut self, at: usize, k: u32, rng: &mut SmallRng) {
        let start = self.bucket_start(k);
        let end = self.ends[k as usize] as usize;
        if end > start + 1 {
            let r = rng.random_range(start..end);
            self.swap(at, r);
        }
    }

    /// Adds item `i` to the order at a random place among the items of equal count.
    pub(crate) fn insert(&mut self, i: u32, rng: &mut SmallRng) {
        if i as usize >= self.pos.len() || self.contains(i) {
            return;
        }
        let k = self.counts[i as usize];
        self.ensure_bucket(k);
        let mut hole = self.order.len();
        self.order.push(i);
        // Shift every bucket above `k` right by one: its first item moves to the hole just
        // past its end, and the hole moves to where that first item was.
        for b in (k as usize + 1..self.ends.len()).rev() {
            let first = self.ends[b - 1] as usize;
            self.ends[b] += 1;
            if first != hole {
                let moved = self.order[first];
                self.place(hole, moved);
            }
            hole = first;
        }
        self.ends[k as usize] += 1;
        self.place(hole, i);
        self.scatter(hole, k, rng);
    }

    /// Takes item `i` out of the order (its count is kept).
    pub(crate) fn remove(&mut self, i: u32) {
        let Some(mut hole) = self.position(i) else {
            return;
        };
        let k = self.counts[i as usize] as usize;
        // The mirror of `insert`: the last item of each bucket from `k` up fills the hole,
        // and the hole becomes the first slot of the next bucket.
        for b in k..self.ends.len() {
            let last = self.ends[b] as usize - 1;
            if last != hole {
                let moved = self.order[last];
                self.place(hole, moved);
            }
            hole = last;
            self.ends[b] -= 1;
        }
        self.order.pop();
        self.pos[i as usize] = ABSENT;
        self.trim();
    }

    /// Raises item `i`'s count by one (saturating at the cap). Returns whether it changed.
    pub(crate) fn increment(&mut self, i: u32, rng: &mut SmallRng) -> bool {
        let Some(&k) = self.counts.get(i as usize) else {
            return false;
        };
        if k >= self.cap {
            return false;
        }
        if let Some(at) = self.position(i) {
            let last = self.ends[k as usize] as usize - 1;
            self.swap(at, last);
            self.ends[k as usize] -= 1;
            self.ensure_bucket(k + 1);
            self.counts[i as usize] = k + 1;
            self.scatter(last, k + 1, rng);
        } else {
            self.counts[i as usize] = k + 1;
        }
        true
    }

    /// Lowers item `i`'s count by one (saturating at zero). Returns whether it changed.
    pub(crate) fn decrement(&mut self, i: u32, rng: &mut SmallRng) -> bool {
        let Some(&k) = self.counts.get(i as usize) else {
            return false;
        };
        if k == 0 {
            return false;
        }
        if let Some(at) = self.position(i) {
            let first = self.ends[k as usize - 1] as usize;
            self.swap(at, first);
            self.ends[k as usize - 1] += 1;
            self.counts[i as usize] = k - 1;
            self.scatter(first, k - 1, rng);
            self.trim();
        } else {
            self.counts[i as usize] = k - 1;
        }
        true
    }

    /// Checks the structure: `order`/`pos` are inverse, `ends` match the counts, sorted.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.ends.last().copied() != Some(self.order.len() as u32) {
            return Err(format!(
                "last bucket end {:?} != order length {}",
                self.ends.last(),
                self.order.len()
            ));
        }
        if self.ends.windows(2).any(|w| w[0] > w[1]) {
            return Err(format!("bucket ends not ascending: {:?}", self.ends));
        }
        let mut bucket = 0usize;
        for (at, &item) in self.order.iter().enumerate() {
            while self.ends[bucket] as usize <= at {
                bucket += 1;
            }
            if self.pos.get(item as usize).copied() != Some(at as u32) {
                return Err(format!(
                    "item {item} at {at} but pos says {:?}",
                    self.pos.get(item as usize)
                ));
            }
            if self.counts[item as usize] as usize != bucket {
                return Err(format!(
                    "item {item} with count {} sits in bucket {bucket}",
                    self.counts[item as usize]
                ));
            }
        }
        let present = self.pos.iter().filter(|&&p| p != ABSENT).count();
        if present != self.order.len() {
            return Err(format!(
                "{present} items marked present, order has {}",
                self.order.len()
            ));
        }
        if let Some(&c) = self.counts.iter().find(|&&c| c > self.cap) {
            return Err(format!("count {c} above cap {}", self.cap));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn steps_keep_order_sorted() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut set = RankedSet::new(50, u32::MAX);
        for i in 0..50 {
            set.insert(i, &mut rng);
        }
        set.check().unwrap();
        for round in 0..2000u32 {
            let i = rng.random_range(0..50u32);
            match round % 5 {
                0 | 1 => {
                    set.increment(i, &mut rng);
                }
                2 => {
                    set.decrement(i, &mut rng);
                }
                3 => set.remove(i),
                _ => set.insert(i, &mut rng),
            }
            set.check().unwrap();
        }
        let counts: Vec<u32> = set.order().iter().map(|&i| set.count(i)).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ties_are_shuffled() {
        // With equal counts the first item must not always be the same one.
        let firsts: std::collections::HashSet<u32> = (0..32)
            .map(|seed| {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut set = RankedSet::new(20, u32::MAX);
                for i in 0..20 {
                    set.insert(i, &mut rng);
                }
                set.order()[0]
            })
            .collect();
        assert!(firsts.len() > 5, "{firsts:?}");
    }

    #[test]
    fn counts_saturate_and_unknown_items_are_ignored() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut set = RankedSet::new(3, 2);
        set.insert(0, &mut rng);
        assert!(set.increment(0, &mut rng));
        assert!(set.increment(0, &mut rng));
        assert!(!set.increment(0, &mut rng));
        assert!(!set.decrement(1, &mut rng));
        assert!(!set.increment(9, &mut rng));
        set.insert(9, &mut rng);
        set.remove(9);
        assert_eq!(set.count(0), 2);
        set.check().unwrap();
    }
}
