//! The re-announce loop of one torrent.
//!
//! [`Announcer::spawn`] starts a task that announces `started` at once, then re-announces
//! every `max(interval, min interval)` the tracker asks for, sends `completed` as soon as it
//! is told the download finished, and `stopped` when stopped. Up-to-date counters come from a
//! closure called before every announce, so the torrent can keep them in atomics:
//!
//! ```no_run
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use imagewolf_bt::tracker::{AnnounceParams, Announcer, Event};
//! use imagewolf_bt::{InfoHash, PeerId};
//!
//! # async fn demo(info_hash: InfoHash) {
//! let left = Arc::new(AtomicU64::new(1 << 30));
//! let (peers_tx, mut peers_rx) = tokio::sync::mpsc::channel(8);
//! let peer_id = PeerId::generate();
//! let stats = Arc::clone(&left);
//! let handle = Announcer::new(vec!["http://10.0.0.1:6969/announce".into()]).spawn(
//!     move |event| AnnounceParams {
//!         info_hash, peer_id, port: 6881, uploaded: 0, downloaded: 0,
//!         left: stats.load(Ordering::Relaxed), event, numwant: None, ip: None,
//!     },
//!     peers_tx,
//! );
//! if let Some(peers) = peers_rx.recv().await {
//!     // Dial `peers`; keep receiving for the torrent's lifetime.
//! #   let _: Vec<std::net::SocketAddr> = peers;
//! }
//! left.store(0, Ordering::Relaxed);
//! handle.completed();
//! handle.stop().await;
//! # }
//! ```
//!
//! Trackers are tried in order, starting with the one that answered last (BEP 12 style
//! failover within one tier). When none answers, the next attempt waits with exponential
//! backoff. Every successful reply's peer list (when non-empty) is offered to `peers_tx`
//! without waiting: if the channel is full the list is dropped (the next announce brings a
//! fresh one), and if the receiver is gone the torrent is gone, so the loop announces
//! `stopped` and ends. Events are not lost to failures: `started` is repeated until a
//! tracker accepts it, and `completed` likewise.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::{announce_with_timeout, AnnounceParams, TrackerError, ANNOUNCE_TIMEOUT};
use super::query::Event;
use super::response::AnnounceResponse;

/// Configuration of a re-announce loop; build with [`Announcer::new`], start with
/// [`Announcer::spawn`].
#[derive(Clone, Debug)]
pub struct Announcer {
    urls: Vec<String>,
    interval_floor: Duration,
    retry_min: Duration,
    retry_max: Duration,
    request_timeout: Duration,
    stop_timeout: Duration,
}

/// Controls a running announce loop. Dropping it aborts the loop without announcing
/// `stopped`; use [`AnnouncerHandle::stop`] to leave the swarm politely.
#[derive(Debug)]
pub struct AnnouncerHandle {
    control: watch::Sender<Control>,
    task: Option<JoinHandle<()>>,
}

#[derive(Copy, Clone, Debug, Default)]
struct Control {
    completed: bool,
    stop: bool,
}

/// Start a loop with the default settings; see [`Announcer`].
pub fn spawn_announcer<F>(
    urls: Vec<String>,
    params: F,
    peers_tx: mpsc::Sender<Vec<SocketAddr>>,
) -> AnnouncerHandle
where
    F: Fn(Event) -> AnnounceParams + Send + 'static,
{
    Announcer::new(urls).spawn(params, peers_tx)
}

impl Announcer {
    /// A loop over these announce URLs (tried in order), with default settings: re-announce
    /// no more often than every 5 s whatever the tracker says, retry after 5 s doubling up to
    /// 5 min, 10 s per announce, 3 s for the final `stopped`.
    pub fn new(urls: Vec<String>) -> Self {
        Announcer {
            urls,
            interval_floor: Duration::from_secs(5),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            request_timeout: ANNOUNCE_TIMEOUT,
            stop_timeout: Duration::from_secs(3),
        }
    }

    /// Never re-announce more often than this, whatever the tracker says.
    pub fn interval_floor(mut self, floor: Duration) -> Self {
        self.interval_floor = floor;
        self
    }

    /// Backoff after an announce no tracker answered: `min`, doubling up to `max`.
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }

    /// Time limit of one announce to one tracker.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time limit of the final `stopped` announce.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Start the loop on the current tokio runtime. `params` is called before every
    /// announce with the event to send and returns the torrent's current state; peers
    /// learnt from trackers go to `peers_tx`.
    pub fn spawn<F>(self, params: F, peers_tx: mpsc::Sender<Vec<SocketAddr>>) -> AnnouncerHandle
    where
        F: Fn(Event) -> AnnounceParams + Send + 'static,
    {
        let (control, control_rx) = watch::channel(Control::default());
        let task = tokio::spawn(self.run(params, peers_tx, control_rx));
        AnnouncerHandle {
            control,
            task: Some(task),
        }
    }

    async fn run<F>(
        self,
        params: F,
        peers_tx: mpsc::Sender<Vec<SocketAddr>>,
        mut control: watch::Receiver<Control>,
    ) where
        F: Fn(Event) -> AnnounceParams + Send + 'static,
    {
        let mut state = LoopState::default();
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                changed = control.changed() => {
                    match state.observe(changed.is_ok(), &control) {
                        Wake::Stop => break,
                        Wake::Exit => return,
                        Wake::AnnounceNow => next = Instant::now(),
                        Wake::Nothing => {}
                    }
                    continue;
                }
            }

            let event = state.next_event();
            let request = params(event);
            let attempt = announce_any(&self.urls, state.preferred, &request, self.request_timeout);
            let mut attempt = std::pin::pin!(attempt);
            // Keep watching the handle while the announce is in flight, so `stop` never
            // waits for a slow tracker (a `completed` arriving now is kept for later).
            let outcome = loop {
                tokio::select! {
                    outcome = &mut attempt => break Some(outcome),
                    changed = control.changed() => match state.observe(changed.is_ok(), &control) {
                        Wake::Stop => break None,
                        Wake::Exit => return,
                        Wake::AnnounceNow | Wake::Nothing => {}
                    },
                }
            };
            let Some((index, result)) = outcome else {
                break;
            };

            let now = Instant::now();
            match result {
                Ok(reply) => {
                    state.preferred = index;
                    state.failures = 0;
                    match event {
                        Event::Started => state.started = true,
                        Event::Completed => state.completed_pending = false,
                        Event::Stopped | Event::None => {}
                    }
                    next = if state.completed_pending {
                        now
                    } else {
                        later(now, self.wait_after(&reply))
                    };
                    if !reply.peers.is_empty() {
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            peers_tx.try_send(reply.peers)
                        {
                            break;
                        }
                    }
                }
                Err(e) => {
                    state.failures = state.failures.saturating_add(1);
                    let backoff = self.backoff(state.failures);
                    tracing::warn!(
                        "announce failed on every tracker ({e}); retrying in {backoff:?}"
                    );
                    next = later(now, backoff);
                }
            }
        }

        if state.started {
            let url = self.urls.get(state.preferred).or(self.urls.first());
            if let Some(url) = url {
                let stopped = params(Event::Stopped);
                if let Err(e) = announce_with_timeout(url, &stopped, self.stop_timeout).await {
                    tracing::debug!("stopped announce to {url} failed: {e}");
                }
            }
        }
    }

    fn wait_after(&self, reply: &AnnounceResponse) -> Duration {
        reply
            .interval
            .max(reply.min_interval.unwrap_or_default())
            .max(self.interval_floor)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.retry_min
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
    }
}

/// Longest wait between announces, whatever a tracker or the settings say: keeps a hostile
/// `interval` from overflowing the clock.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

fn later(now: Instant, wait: Duration) -> Instant {
    now + wait.min(MAX_WAIT)
}

/// What the loop knows about the swarm between announces.
#[derive(Debug, Default)]
struct LoopState {
    /// Index of the tracker that answered last; tried first.
    preferred: usize,
    /// Some tracker accepted `started`.
    started: bool,
    /// `completed` was asked for and no tracker accepted it yet.
    completed_pending: bool,
    /// The handle's `completed` was seen (it is sent once per session).
    completed_seen: bool,
    /// Consecutive announces no tracker answered.
    failures: u32,
}

enum Wake {
    /// Announce `stopped` and end.
    Stop,
    /// The handle is gone: end without announcing.
    Exit,
    /// Announce now (an event is pending).
    AnnounceNow,
    /// Keep waiting.
    Nothing,
}

impl LoopState {
    fn next_event(&self) -> Event {
        if !self.started {
            Event::Started
        } else if self.completed_pending {
            Event::Completed
        } else {
            Event::None
        }
    }

    fn observe(&mut self, sender_alive: bool, control: &watch::Receiver<Control>) -> Wake {
        if !sender_alive {
            return Wake::Exit;
        }
        let c = *control.borrow();
        if c.stop {
            return Wake::Stop;
        }
        if c.completed && !self.completed_seen {
            self.completed_seen = true;
            self.completed_pending = true;
            // Before `started` got through, `completed` follows it right away anyway.
            if self.started {
                return Wake::AnnounceNow;
            }
        }
        Wake::Nothing
    }
}

/// Announce to each URL in turn, starting at `first`, until one answers. Returns the index
/// of the tracker that answered (or was tried last) and its result.
async fn announce_any(
    urls: &[String],
    first: usize,
    params: &AnnounceParams,
    timeout: Duration,
) -> (usize, Result<AnnounceResponse, TrackerError>) {
    let mut last = (
        first,
        Err(TrackerError::InvalidUrl("no tracker URLs".into())),
    );
    for offset in 0..urls.len() {
        let index = (first + offset) % urls.len();
        let Some(url) = urls.get(index) else { continue };
        let result = announce_with_timeout(url, params, timeout).await;
        match result {
            Ok(reply) => return (index, Ok(reply)),
            Err(e) => {
                tracing::debug!("announce to {url} failed: {e}");
                last = (index, Err(e));
            }
        }
    }
    last
}

impl AnnouncerHandle {
    /// The download finished: announce `completed` now (once per session).
    pub fn completed(&self) {
        self.control.send_modify(|c| c.completed = true);
    }

    /// Announce `stopped` (best effort, bounded by the stop timeout) and end the loop.
    pub async fn stop(mut self) {
        self.control.send_modify(|c| c.stop = true);
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::debug!("announcer task ended abnormally: {e}");
            }
        }
    }
}

impl Drop for AnnouncerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let a = Announcer::new(Vec::new())
            .retry_backoff(Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (1..=6).map(|n| a.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(a.backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn wait_honours_min_interval_and_floor() {
        let a = Announcer::new(Vec::new()).interval_floor(Duration::from_secs(5));
        let mut reply = AnnounceResponse {
            interval: Duration::from_secs(60),
            min_interval: Some(Duration::from_secs(120)),
            complete: None,
            incomplete: None,
            peers: Vec::new(),
            warning: None,
        };
        assert_eq!(a.wait_after(&reply), Duration::from_secs(120));
        reply.interval = Duration::ZERO;
        reply.min_interval = None;
        assert_eq!(a.wait_after(&reply), Duration::from_secs(5));
        // A hostile interval cannot overflow the clock.
        reply.interval = Duration::from_secs(u64::MAX);
        let now = Instant::now();
        assert_eq!(later(now, a.wait_after(&reply)), now + MAX_WAIT);
    }

    #[test]
    fn events_follow_the_session() {
        let (tx, rx) = watch::channel(Control::default());
        let mut s = LoopState::default();
        assert_eq!(s.next_event(), Event::Started);
        // `completed` before `started` got through waits for it.
        tx.send_modify(|c| c.completed = true);
        assert!(matches!(s.observe(true, &rx), Wake::Nothing));
        assert_eq!(s.next_event(), Event::Started);
        s.started = true;
        assert_eq!(s.next_event(), Event::Completed);
        s.completed_pending = false;
        // Seen once: a repeated notification does not send it again.
        assert!(matches!(s.observe(true, &rx), Wake::Nothing));
        assert_eq!(s.next_event(), Event::None);
        tx.send_modify(|c| c.stop = true);
        assert!(matches!(s.observe(true, &rx), Wake::Stop));
        assert!(matches!(s.observe(false, &rx), Wake::Exit));
    }
}
