//! The event queue: events by (time, insertion order), so events at the same instant run in
//! the order they were scheduled and a run is reproducible.
//!
//! A calendar queue: a ring of [`BUCKETS`] buckets of 2^[`SHIFT`] ns each holds the near
//! future (latencies, unit transfers), a binary heap the rest (ticks, failures). A bucket is
//! sorted only when it becomes current, so pushing is O(1) and popping amortised O(log b)
//! for a bucket of b events; a binary heap of hundreds of thousands of pending events spent
//! a quarter of a 1,000-node run in `pop`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Simulated time in nanoseconds from the start.
pub type Nanos = u64;

/// log2 of a bucket's width in ns (4 µs).
const SHIFT: u32 = 12;
/// Buckets in the ring (with [`SHIFT`], 67 ms of near future).
const BUCKETS: u64 = 1 << 14;

struct Entry<E> {
    at: Nanos,
    seq: u64,
    ev: E,
}

impl<E> Entry<E> {
    fn key(&self) -> (Nanos, u64) {
        (self.at, self.seq)
    }
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A priority queue of events by time; ties in scheduling order. Events must not be
/// scheduled before the last one popped.
pub struct EventQueue<E> {
    ring: Vec<Vec<Entry<E>>>,
    /// Events in the ring.
    in_ring: usize,
    /// The current bucket (absolute index, time >> SHIFT); `current` holds its events,
    /// sorted latest first.
    cur: u64,
    current: Vec<Entry<E>>,
    far: BinaryHeap<Reverse<Entry<E>>>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            ring: (0..BUCKETS).map(|_| Vec::new()).collect(),
            in_ring: 0,
            cur: 0,
            current: Vec::new(),
            far: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `ev` at `at`.
    pub fn push(&mut self, at: Nanos, ev: E) {
        self.seq += 1;
        let e = Entry {
            at,
            seq: self.seq,
            ev,
        };
        let b = at >> SHIFT;
        if b <= self.cur {
            // Into the current bucket, keeping it sorted latest first.
            let key = e.key();
            let i = self.current.partition_point(|x| x.key() > key);
            self.current.insert(i, e);
        } else if b < self.cur + BUCKETS {
            self.ring[(b % BUCKETS) as usize].push(e);
            self.in_ring += 1;
        } else {
            self.far.push(Reverse(e));
        }
    }

    /// The earliest event.
    pub fn pop(&mut self) -> Option<(Nanos, E)> {
        loop {
            if let Some(e) = self.current.pop() {
                return Some((e.at, e.ev));
            }
            if self.in_ring == 0 {
                // Jump to the far heap's first bucket.
                let next = self.far.peek()?.0.at >> SHIFT;
                self.advance_to(next);
            } else {
                self.advance_to(self.cur + 1);
            }
        }
    }

    /// Makes bucket `b` current: pulls the far events now within the ring's reach, then
    /// sorts bucket `b`.
    fn advance_to(&mut self, b: u64) {
        self.cur = b;
        while let Some(Reverse(e)) = self.far.peek() {
            let eb = e.at >> SHIFT;
            if eb >= self.cur + BUCKETS {
                break;
            }
            let Some(Reverse(e)) = self.far.pop() else {
                break;
            };
            if eb <= self.cur {
                self.current.push(e);
            } else {
                self.ring[(eb % BUCKETS) as usize].push(e);
                self.in_ring += 1;
            }
        }
        let bucket = &mut self.ring[(b % BUCKETS) as usize];
        self.in_ring -= bucket.len();
        self.current.append(bucket);
        self.current.sort_unstable_by_key(|e| Reverse(e.key()));
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.current.len() + self.in_ring + self.far.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events scheduled so far.
    pub fn scheduled(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_fifo() {
        let mut q = EventQueue::default();
        q.push(5, 'a');
        q.push(1, 'b');
        q.push(5, 'c');
        q.push(0, 'd');
        let order: Vec<char> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ['d', 'b', 'a', 'c']);
    }

    #[test]
    fn matches_a_sorted_order_across_buckets_and_the_far_heap() {
        // Pseudo-random times, near and far, pushed while popping.
        let mut q = EventQueue::default();
        let mut x: u64 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 0;
        let mut popped = Vec::new();
        let mut expected = Vec::new();
        let mut id = 0u64;
        for round in 0..2000 {
            for _ in 0..3 {
                let d = match next() % 4 {
                    0 => next() % 5_000,
                    1 => next() % 10_000_000,
                    2 => next() % 3_000_000_000,
                    _ => 0,
                };
                q.push(now + d, id);
                expected.push((now + d, id));
                id += 1;
            }
            if round % 2 == 0 {
                let (t, e) = q.pop().unwrap();
                assert!(t >= now);
                now = t;
                popped.push((t, e));
            }
        }
        while let Some(p) = q.pop() {
            popped.push(p);
        }
        // Ids grow with scheduling order, so (time, id) is the required order among what
        // was pending at each pop; overall the pops must be non-decreasing in time and
        // complete.
        assert_eq!(popped.len(), expected.len());
        assert!(popped
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && (w[0].0 < w[1].0 || w[0].1 < w[1].1)));
        assert!(q.is_empty());
    }
}
