//! While this node reads an image from its source, its BitTorrent upload is capped at the
//! rate the image comes in.
//!
//! Why: the origin's uplink carries both its seeding and the ACKs of the registry download.
//! Seeding unpaced, every new segment's torrent opens fresh connections whose start-up
//! overshoots and fills the uplink's queue; the registry's ACKs then wait up to 100 ms behind
//! piece data and its sender, held by its window, drops to 7-15 Mbit/s for a second or two
//! of every segment (measured on the cluster bench: origin uplink backlog 0.9-1.4 MB,
//! registry RTT 5 -> 100 ms, intake of 128 MiB in 21.5 s against 11.4 s at the link's TCP
//! goodput). Uploading faster than the image arrives gains nothing anyway: the origin can
//! only send what it has read, and the peers swap the rest among themselves. So while a pull
//! runs the session's upload is capped at [`CAP_FACTOR`] x the intake of the last
//! [`WINDOW`], never below [`MIN_CAP`]; once no pull runs the cap is lifted, and the origin
//! seeds the tail at full speed.
//!
//! [`Pacer`] is the clock-free rule; [`pace_uploads`] the task that applies it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Distributor;

/// How often the cap is recomputed.
pub(crate) const TICK: Duration = Duration::from_millis(200);
/// The intake is measured over this much past time.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// Cap / intake. Above 1, the origin has room for the few duplicate pieces a swarm asks
/// for; a cap a little above the link is still self-correcting (a queue that builds slows
/// the intake, which lowers the cap).
pub(crate) const CAP_FACTOR: f64 = 1.15;
/// The cap never goes below this (bytes/s), so a slow start or a stalled source never stops
/// the seeding of what is already there.
pub(crate) const MIN_CAP: u64 = 1 << 20;

/// Bytes read from image sources so far, and how many pulls are reading now.
#[derive(Debug, Default)]
pub(crate) struct IntakeMeter {
    bytes: Arc<AtomicU64>,
    pulls: AtomicUsize,
}

impl IntakeMeter {
    /// The counter a pull adds its bytes to.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes)
    }

    /// Marks a pull as running until the guard drops.
    pub(crate) fn pulling(self: &Arc<Self>) -> PullGuard {
        self.pulls.fetch_add(1, Ordering::Relaxed);
        PullGuard(Arc::clone(self))
    }

    fn read(&self) -> (u64, bool) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.pulls.load(Ordering::Relaxed) > 0,
        )
    }
}

/// A pull in progress (see [`IntakeMeter::pulling`]).
pub(crate) struct PullGuard(Arc<IntakeMeter>);

impl Drop for PullGuard {
    fn drop(&mut self) {
        self.0.pulls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The rule: from readings of the intake counter, the upload cap to set.
#[derive(Debug, Default)]
pub(crate) struct Pacer {
    /// (seconds, bytes read in all) readings within the last [`WINDOW`], oldest first.
    readings: VecDeque<(f64, u64)>,
}

impl Pacer {
    /// A reading at `now` (seconds on any monotonic clock): the cap in bytes/s, or `None`
    /// when no pull runs.
    pub(crate) fn tick(&mut self, now: f64, bytes: u64, pulling: bool) -> Option<u64> {
        if !pulling {
            self.readings.clear();
            return None;
        }
        self.readings.push_back((now, bytes));
        while self
            .readings
            .front()
            .is_some_and(|(t, _)| now - t > WINDOW.as_secs_f64())
        {
            self.readings.pop_front();
        }
        let (t0, b0) = *self.readings.front()?;
        let span = now - t0;
        if span <= 0.0 {
            return Some(MIN_CAP);
        }
        let rate = bytes.saturating_sub(b0) as f64 / span * CAP_FACTOR;
        Some((rate as u64).max(MIN_CAP))
    }
}

/// Applies the [`Pacer`] to the distributor's session every [`TICK`] until the distributor
/// is gone.
pub(super) async fn pace_uploads(weak: Weak<Distributor>) {
    let start = tokio::time::Instant::now();
    let mut pacer = Pacer::default();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(this) = weak.upgrade() else { return };
        let (bytes, pulling) = this.intake.read();
        let cap = pacer.tick(start.elapsed().as_secs_f64(), bytes, pulling);
        if cap != this.session.upload_rate() {
            this.session.set_upload_rate(cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_follows_the_intake_and_lifts_after() {
        let cap = |rate: f64| Some(((rate * CAP_FACTOR) as u64).max(MIN_CAP));
        let mut p = Pacer::default();
        assert_eq!(p.tick(0.0, 0, false), None);
        // The first reading has no span yet: the floor.
        assert_eq!(p.tick(1.0, 0, true), Some(MIN_CAP));
        // 10 MB/s over the window.
        assert_eq!(p.tick(1.5, 5_000_000, true), cap(1e7));
        assert_eq!(p.tick(2.0, 10_000_000, true), cap(1e7));
        // Older readings leave the window: only the last second counts.
        assert_eq!(p.tick(3.0, 12_000_000, true), cap(2e6));
        // A stalled source: the floor, never zero.
        assert_eq!(p.tick(4.0, 12_000_000, true), Some(MIN_CAP));
        assert_eq!(p.tick(4.2, 12_000_000, false), None);
        // A new pull starts from a fresh window.
        assert_eq!(p.tick(5.0, 20_000_000, true), Some(MIN_CAP));
    }

    #[test]
    fn meter_counts_pulls() {
        let m = Arc::new(IntakeMeter::default());
        assert!(!m.read().1);
        let a = m.pulling();
        let b = m.pulling();
        m.counter().fetch_add(7, Ordering::Relaxed);
        drop(a);
        assert_eq!(m.read(), (7, true));
        drop(b);
        assert!(!m.read().1);
    }
}
