//! How many requests to keep outstanding at one peer: a pure, clock-driven state machine.
//!
//! Too few requests and the link idles for a round trip after every block; too many and a slow
//! peer hoards blocks the others could deliver (and endgame starts late). The target follows
//! the measured rate: the queue should cover [`QUEUE_SECONDS`] of transfer at the current
//! rate, the bandwidth-delay product with a wide margin for a LAN's tiny RTT and bursty disk.
//!
//! Slow start: a new peer's rate is unknown, so the target starts small and grows by one per
//! block received (doubling every round trip) until a rate sample no longer grows; from then
//! on it is recomputed from the rate at every tick. The target never exceeds the peer's
//! advertised `reqq` nor our own cap.

use std::time::{Duration, Instant};

use crate::BLOCK_LEN;

/// Seconds of transfer the request queue should cover once the rate is known.
pub const QUEUE_SECONDS: f64 = 1.0;
/// The target never drops below this (keeps a slow peer busy across a round trip).
pub const MIN_QUEUE: u32 = 4;
/// Where slow start begins.
pub const INITIAL_QUEUE: u32 = 16;

/// Request pipelining state for one peer.
#[derive(Debug, Clone)]
pub struct Pipeline {
    target: u32,
    max: u32,
    slow_start: bool,
    /// Bytes received since the last rate sample.
    bytes_since_sample: u64,
    last_sample: Instant,
    /// Smoothed rate in bytes/s.
    rate: f64,
}

impl Pipeline {
    /// A pipeline capped at `max` outstanding requests (our cap and the peer's `reqq`, whichever
    /// is lower; see [`Pipeline::set_max`]).
    pub fn new(max: u32, now: Instant) -> Self {
        let max = max.max(1);
        Self {
            target: INITIAL_QUEUE.min(max),
            max,
            slow_start: true,
            bytes_since_sample: 0,
            last_sample: now,
            rate: 0.0,
        }
    }

    /// Lowers (or raises) the cap, e.g. when the peer's extension handshake names its `reqq`.
    pub fn set_max(&mut self, max: u32) {
        self.max = max.max(1);
        self.target = self.target.min(self.max);
    }

    /// How many requests should be outstanding now.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// A block of `len` bytes arrived.
    pub fn on_block(&mut self, len: u32) {
        self.bytes_since_sample += u64::from(len);
        if self.slow_start {
            self.target = (self.target + 1).min(self.max);
        }
    }

    /// The peer stopped sending (snubbed, choked us): start over from the bottom.
    pub fn reset(&mut self) {
        self.target = MIN_QUEUE.min(self.max);
        self.slow_start = true;
    }

    /// Takes a rate sample if at least `period` has passed since the last one, and updates the
    /// target from it.
    pub fn tick(&mut self, now: Instant, period: Duration) {
        let elapsed = now.saturating_duration_since(self.last_sample);
        if elapsed < period || elapsed.is_zero() {
            return;
        }
        let sample = self.bytes_since_sample as f64 / elapsed.as_secs_f64();
        self.bytes_since_sample = 0;
        self.last_sample = now;
        let previous = self.rate;
        self.rate = if previous == 0.0 {
            sample
        } else {
            0.5 * previous + 0.5 * sample
        };
        if self.slow_start {
            // Leave slow start once the rate stops growing by at least 10 %.
            if previous > 0.0 && sample < previous * 1.1 {
                self.slow_start = false;
            }
            if self.target >= self.max {
                self.slow_start = false;
            }
        }
        if !self.slow_start {
            let blocks = (self.rate * QUEUE_SECONDS / f64::from(BLOCK_LEN)).ceil() as u32;
            self.target = blocks.clamp(MIN_QUEUE.min(self.max), self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_grows_then_follows_rate() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(500, t0);
        assert_eq!(p.target(), INITIAL_QUEUE);
        for _ in 0..50 {
            p.on_block(BLOCK_LEN);
        }
        assert_eq!(p.target(), INITIAL_QUEUE + 50);
        // A steady 100 blocks/s: the rate stops growing, so slow start ends and the target
        // becomes about 1 s of transfer at the (smoothed) rate: 100 blocks, plus what is left
        // of the slow-start burst in the average.
        let mut now = t0;
        for _ in 0..3 {
            for _ in 0..100 {
                p.on_block(BLOCK_LEN);
            }
            now += Duration::from_secs(1);
            p.tick(now, Duration::from_millis(500));
        }
        assert!(!p.slow_start);
        assert!((100..=130).contains(&p.target()), "target {}", p.target());
    }

    #[test]
    fn target_respects_cap_and_floor() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(500, t0);
        p.set_max(20);
        for _ in 0..1000 {
            p.on_block(BLOCK_LEN);
        }
        assert_eq!(p.target(), 20);
        p.tick(t0 + Duration::from_secs(1), Duration::from_millis(1));
        p.tick(t0 + Duration::from_secs(2), Duration::from_millis(1));
        assert!(p.target() >= MIN_QUEUE && p.target() <= 20);
        p.reset();
        assert_eq!(p.target(), MIN_QUEUE);
    }
}
