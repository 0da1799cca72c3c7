//! A session-wide cap on the rate of piece data we upload: a token bucket that every
//! connection's writer draws from before each chunk of piece data. Control messages
//! (requests, HAVEs, chokes) are never held back by it.
//!
//! Why a node would want it even on a fast LAN: a link's uplink queue is shared by
//! everything the node sends, including the ACKs of what it downloads. An origin that seeds
//! at full speed while it reads an image from a registry fills its uplink queue (every new
//! segment torrent brings fresh connections whose start-up overshoots), so the registry's
//! ACKs wait behind up to 100 ms of piece data and the registry's sender, window-limited,
//! slows to a fraction of the link. Capping the upload just below what the link carries
//! keeps that queue empty. The cap is set and lifted at run time
//! ([`crate::Session::set_upload_rate`]).
//!
//! [`TokenBucket`] is the clock-free core (time is passed in); [`UploadLimit`] wraps it for
//! the async writers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes that may go out at once after an idle spell: a few write chunks, so a lone
/// connection is not paced chunk by chunk while staying far below a link's queue.
pub const UPLOAD_BURST: u64 = 256 * 1024;

/// A token bucket that lets callers run into debt: [`TokenBucket::take`] always grants the
/// bytes and says how long the caller must wait before sending them. Concurrent callers
/// therefore queue in the order they asked, and none waits twice.
///
/// Invariant: `tokens <= burst`; `tokens < 0` is debt that `rate` pays back over time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second, or `None` for no limit.
    rate: Option<u64>,
    /// Most tokens saved up.
    burst: u64,
    /// Tokens available now (negative: owed).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// An unlimited bucket holding up to `burst` bytes once limited.
    pub fn new(burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate: None,
            burst,
            tokens: burst as f64,
            last: now,
        }
    }

    /// The current limit in bytes per second (`None`: unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Sets the limit. `Some(0)` is taken as 1 byte/s (a limit, never a division by zero);
    /// lifting the limit forgives any debt.
    pub fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        self.refill(now);
        self.rate = rate.map(|r| r.max(1));
        if self.rate.is_none() {
            self.tokens = self.burst as f64;
        }
    }

    /// Takes `n` bytes at `now` and returns how long to wait before sending them (zero when
    /// within the budget or unlimited).
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate as f64)
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        if let Some(rate) = self.rate {
            self.tokens = (self.tokens + elapsed * rate as f64).min(self.burst as f64);
        }
    }
}

/// The session's upload limit, shared by every connection's writer.
#[derive(Debug)]
pub struct UploadLimit {
    bucket: Mutex<TokenBucket>,
}

impl Default for UploadLimit {
    fn default() -> Self {
        UploadLimit {
            bucket: Mutex::new(TokenBucket::new(
                UPLOAD_BURST,
                tokio::time::Instant::now().into_std(),
            )),
        }
    }
}

impl UploadLimit {
    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current limit in bytes per second (`None`: unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.bucket().rate()
    }

    /// Sets or lifts the limit; writers waiting on a lifted limit go on within
    /// [`RECHECK`].
    pub fn set_rate(&self, rate: Option<u64>) {
        self.bucket()
            .set_rate(rate, tokio::time::Instant::now().into_std());
    }

    /// Waits until `n` more bytes of piece data may be sent.
    pub async fn acquire(&self, n: u64) {
        let now = tokio::time::Instant::now();
        let wait = self.bucket().take(n, now.into_std());
        if wait.is_zero() {
            return;
        }
        let deadline = now + wait;
        // Sleep in steps, so that lifting the limit releases a long wait early.
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline || self.rate().is_none() {
                return;
            }
            tokio::time::sleep_until(deadline.min(now + RECHECK)).await;
        }
    }
}

/// How often a writer waiting on the limit checks whether it was lifted.
pub const RECHECK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert_eq!(b.take(u64::MAX / 2, t0), Duration::ZERO);
        assert_eq!(b.rate(), None);
    }

    #[test]
    fn burst_then_paced() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        b.set_rate(Some(1000), t0);
        assert_eq!(b.take(1000, t0), Duration::ZERO, "the burst is free");
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // The next caller queues behind the first one's debt.
        assert_eq!(b.take(500, t0), Duration::from_millis(1000));
        // Two seconds later the debt is paid and the bucket is full again, not fuller.
        let t2 = t0 + Duration::from_secs(3);
        assert_eq!(b.take(1000, t2), Duration::ZERO);
        assert!(b.take(1, t2) > Duration::ZERO);
    }

    #[test]
    fn lifting_forgives_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        b.set_rate(Some(10), t0);
        assert!(b.take(100_000, t0) > Duration::from_secs(9000));
        b.set_rate(None, t0);
        assert_eq!(b.take(100_000, t0), Duration::ZERO);
        b.set_rate(Some(0), t0);
        assert_eq!(b.rate(), Some(1));
        assert_eq!(
            b.take(1000, t0),
            Duration::ZERO,
            "a full bucket after lifting"
        );
    }

    proptest! {
        /// Over any sequence of takes, the bytes granted by a time never exceed the burst
        /// plus rate x elapsed: the limit holds, however callers interleave.
        #[test]
        fn never_faster_than_rate_plus_burst(
            rate in 1u64..10_000_000,
            burst in 1u64..1_000_000,
            steps in proptest::collection::vec((0u64..50_000, 0u64..100_000), 1..200),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(burst, t0);
            b.set_rate(Some(rate), t0);
            let (mut now, mut granted) = (t0, 0u64);
            for (advance_us, n) in steps {
                now += Duration::from_micros(advance_us);
                let wait = b.take(n, now);
                granted += n;
                // Sent at now + wait: by then at most burst + rate x (that time - t0).
                let sent_at = (now + wait - t0).as_secs_f64();
                prop_assert!(granted as f64 <= burst as f64 + rate as f64 * sent_at + 1.0);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_paces_and_lifting_releases() {
        let limit = UploadLimit::default();
        limit.set_rate(Some(100_000));
        let t0 = tokio::time::Instant::now();
        limit.acquire(UPLOAD_BURST).await;
        limit.acquire(100_000).await;
        let paced = t0.elapsed();
        assert!(paced >= Duration::from_millis(999), "{paced:?}");
        // A wait of 1000 s is cut short when the limit is lifted.
        let limit = std::sync::Arc::new(limit);
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire(100_000_000).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        limit.set_rate(None);
        let t1 = tokio::time::Instant::now();
        waiter.await.unwrap();
        assert!(t1.elapsed() <= RECHECK, "{:?}", t1.elapsed());
    }
}
