//! The network model's pieces that do not need the swarm: link rates, the request pipeline
//! (a copy of the engine's `peer::pipeline`, which is private to `imagewolf-bt`), and the
//! uplink/downlink timing of one transfer.

use imagewolf_bt::BLOCK_LEN;

use crate::queue::Nanos;

/// Nanoseconds per second.
pub const SEC: Nanos = 1_000_000_000;

/// Converts seconds to [`Nanos`].
pub fn secs(s: f64) -> Nanos {
    (s * SEC as f64).round() as Nanos
}

/// Converts [`Nanos`] to seconds.
pub fn to_secs(t: Nanos) -> f64 {
    t as f64 / SEC as f64
}

/// A link rate in payload bytes per second: `mbit` x 10^6 / 8 x `goodput`.
pub fn payload_rate(mbit: f64, goodput: f64) -> f64 {
    mbit * 1e6 / 8.0 * goodput
}

/// Time to move `bytes` at `rate` bytes/s (at least 1 ns).
pub fn transfer_ns(bytes: u64, rate: f64) -> Nanos {
    ((bytes as f64 / rate * SEC as f64).ceil() as Nanos).max(1)
}

/// One transfer through a sender's uplink and a receiver's downlink, cut-through: the
/// downlink is a server of rate D whose backlog is `dl_busy` (when it will have drained
/// what it was given); the sender's uplink sends the unit at U from `now`. Returns when the
/// last byte has passed the downlink, and updates `dl_busy`.
pub fn through_downlink(now: Nanos, up_ns: Nanos, down_ns: Nanos, dl_busy: &mut Nanos) -> Nanos {
    *dl_busy = (*dl_busy).max(now) + down_ns;
    (now + up_ns).max(*dl_busy)
}

/// Seconds of transfer the request queue covers once the rate is known (engine:
/// `peer::pipeline::QUEUE_SECONDS`).
pub const QUEUE_SECONDS: f64 = 1.0;
/// Floor of the target, blocks (`MIN_QUEUE`).
pub const MIN_QUEUE: u32 = 4;
/// Where slow start begins, blocks (`INITIAL_QUEUE`).
pub const INITIAL_QUEUE: u32 = 16;
/// Our cap on outstanding requests per peer (`SessionConfig::max_outstanding_requests`;
/// peers advertise `reqq` = 2000, above it).
pub const MAX_OUTSTANDING: u32 = 500;
/// How often a connection samples its rate (the reader's tick).
pub const PIPE_TICK: Nanos = SEC;

/// Request pipelining for one connection, as the engine does it (in 16 KiB blocks): slow
/// start from 16, +1 per block received until a 1 s rate sample grows by less than 10 %,
/// then 1 s worth of blocks at the smoothed rate, between 4 and 500.
#[derive(Clone, Debug)]
pub struct Pipe {
    target: u32,
    slow_start: bool,
    bytes_since_sample: u64,
    last_sample: Nanos,
    rate: f64,
}

impl Pipe {
    /// A fresh connection's pipeline.
    pub fn new(now: Nanos) -> Self {
        Self {
            target: INITIAL_QUEUE,
            slow_start: true,
            bytes_since_sample: 0,
            last_sample: now,
            rate: 0.0,
        }
    }

    /// Outstanding requests wanted, in blocks.
    pub fn target_blocks(&self) -> u32 {
        self.target
    }

    /// Outstanding requests wanted, in units of `unit_blocks` blocks (at least one).
    pub fn target_units(&self, unit_blocks: u32) -> u32 {
        self.target.div_ceil(unit_blocks).max(1)
    }

    /// `blocks` blocks arrived.
    pub fn on_blocks(&mut self, blocks: u32) {
        self.bytes_since_sample += u64::from(blocks) * u64::from(BLOCK_LEN);
        if self.slow_start {
            self.target = (self.target + blocks).min(MAX_OUTSTANDING);
        }
    }

    /// Takes a rate sample if a tick has passed since the last one.
    pub fn tick(&mut self, now: Nanos) {
        let elapsed = now.saturating_sub(self.last_sample);
        if elapsed < PIPE_TICK {
            return;
        }
        let sample = self.bytes_since_sample as f64 / to_secs(elapsed);
        self.bytes_since_sample = 0;
        self.last_sample = now;
        let previous = self.rate;
        self.rate = if previous == 0.0 {
            sample
        } else {
            0.5 * previous + 0.5 * sample
        };
        if self.slow_start
            && ((previous > 0.0 && sample < previous * 1.1) || self.target >= MAX_OUTSTANDING)
        {
            self.slow_start = false;
        }
        if !self.slow_start {
            let blocks = (self.rate * QUEUE_SECONDS / f64::from(BLOCK_LEN)).ceil() as u32;
            self.target = blocks.clamp(MIN_QUEUE, MAX_OUTSTANDING);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downlink_serialises_concurrent_senders() {
        // Two senders start a 1 ms unit at once into a downlink as fast as each uplink: the
        // second unit's last byte passes 1 ms after the first's.
        let mut busy = 0;
        assert_eq!(through_downlink(10, 1000, 1000, &mut busy), 1010);
        assert_eq!(through_downlink(10, 1000, 1000, &mut busy), 2010);
        // A downlink twice as fast takes both at once.
        let mut busy = 0;
        assert_eq!(through_downlink(10, 1000, 500, &mut busy), 1010);
        assert_eq!(through_downlink(10, 1000, 500, &mut busy), 1010);
    }

    #[test]
    fn pipeline_follows_the_rate_after_slow_start() {
        let mut p = Pipe::new(0);
        assert_eq!(p.target_blocks(), INITIAL_QUEUE);
        // 100 blocks per second, steady: slow start grows, then the target is 1 s of rate.
        for s in 1..=5 {
            p.on_blocks(100);
            p.tick(s * SEC);
        }
        assert_eq!(p.target_blocks(), 100);
        assert_eq!(p.target_units(8), 13);
    }
}
