//! The torrent's own task: dials peers, rotates unchoke slots, publishes stats, and the
//! life-cycle transitions (complete, failed, stopped).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Torrent, TorrentEvent, TorrentStats, TorrentStatus};
use crate::picker::PeerKey;

/// How often stats are published and dials attempted when nothing wakes the ticker sooner.
const TICK: Duration = Duration::from_millis(500);
/// How often unchoke slots rotate when more peers want them than there are slots.
const RECHOKE_EVERY: Duration = Duration::from_secs(10);

/// Runs until the torrent shuts down.
pub(crate) async fn run(torrent: Arc<Torrent>) {
    let mut shutdown = torrent.shutdown.subscribe();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rechoke = Instant::now();
    let mut rates = RateMeter::new(&torrent);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = torrent.wake_ticker.notified() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        dial_candidates(&torrent);
        let now = Instant::now();
        // Stalled windows go to the others; the fair-share cap follows the live peers; a
        // peer left alone with the seed is shown everything.
        torrent.state().spread_tick(now);
        if now.duration_since(last_rechoke) >= RECHOKE_EVERY {
            last_rechoke = now;
            rechoke(&torrent);
        }
        rates.sample(&torrent, now);
        publish_stats(&torrent);
    }
}

/// Starts dials while the half-open and peer limits allow.
fn dial_candidates(torrent: &Arc<Torrent>) {
    let config = &torrent.config;
    loop {
        let addr = {
            torrent.state().next_dial(
                config.max_peers_per_torrent,
                config.max_half_open,
                Instant::now(),
            )
        };
        let Some(addr) = addr else { break };
        let t = Arc::clone(torrent);
        torrent.spawn(crate::peer::dial(t, addr));
    }
}

/// When more interested peers wait than there are slots, chokes the unchoked peer that gave
/// us least since the last rotation and unchokes the one that waited longest. With the LAN
/// default (slots >= peers) this never chokes anyone.
fn rechoke(torrent: &Torrent) {
    let state = &mut *torrent.state();
    let waiting: Vec<PeerKey> = state
        .peers
        .iter()
        .filter(|(k, p)| !state.unchoked.contains(k) && p.link.io().peer_interested)
        .map(|(k, _)| *k)
        .collect();
    if waiting.is_empty() {
        return;
    }
    if state.unchoked.len() >= torrent.config.unchoke_slots {
        let slowest = state
            .unchoked
            .iter()
            .filter_map(|k| state.peers.get(k).map(|p| (k, p.link.take_rechoke_bytes())))
            .min_by_key(|(_, bytes)| *bytes)
            .map(|(k, _)| *k);
        if let Some(key) = slowest {
            state.unchoked.remove(&key);
            if let Some(p) = state.peers.get(&key) {
                p.link.set_choking(true);
            }
        }
    }
    for key in waiting {
        if state.unchoked.len() >= torrent.config.unchoke_slots {
            break;
        }
        if let Some(p) = state.peers.get(&key) {
            p.link.set_choking(false);
            state.unchoked.insert(key);
        }
    }
}

/// Download and upload rates from the counters' deltas.
struct RateMeter {
    at: Instant,
    down: u64,
    up: u64,
}

impl RateMeter {
    fn new(torrent: &Torrent) -> Self {
        Self {
            at: Instant::now(),
            down: torrent.counters.downloaded.load(Ordering::Relaxed),
            up: torrent.counters.uploaded.load(Ordering::Relaxed),
        }
    }

    fn sample(&mut self, torrent: &Torrent, now: Instant) {
        let secs = now.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let down = torrent.counters.downloaded.load(Ordering::Relaxed);
        let up = torrent.counters.uploaded.load(Ordering::Relaxed);
        let (dr, ur) = (
            (down - self.down) as f64 / secs,
            (up - self.up) as f64 / secs,
        );
        *self = Self { at: now, down, up };
        torrent.stats_tx.send_modify(|s| {
            s.download_rate = dr;
            s.upload_rate = ur;
        });
    }
}

/// Publishes a fresh snapshot (rates are kept from the last tick).
pub(crate) fn publish_stats(torrent: &Torrent) {
    let state = torrent.state();
    let c = &torrent.counters;
    let snapshot = |prev: &TorrentStats| TorrentStats {
        status: state.status.clone(),
        num_pieces: torrent.lengths.num_pieces(),
        have_pieces: state.picker.have_count(),
        total_len: torrent.lengths.total_len(),
        have_bytes: state.have_bytes(),
        downloaded: c.downloaded.load(Ordering::Relaxed),
        uploaded: c.uploaded.load(Ordering::Relaxed),
        wasted: c.wasted.load(Ordering::Relaxed),
        download_rate: prev.download_rate,
        upload_rate: prev.upload_rate,
        peers: state.peers.len(),
        hash_failures: state.hash_failures,
    };
    torrent.stats_tx.send_modify(|s| *s = snapshot(s));
}

/// Every piece is verified: become a seed, tell everyone.
///
/// No fsync here: the payload is usually consumed at once (piped into `docker load`), a crash
/// loses only unwritten page cache, and a restart re-hashes ([`super::StartFrom::Check`]) so
/// nothing unverified is ever trusted. Callers that want durability call [`Storage::flush`]
/// (measured: an fsync of 1 GiB added about a second to a loopback download).
///
/// [`Storage::flush`]: crate::storage::Storage::flush
pub(crate) async fn on_complete(torrent: &Arc<Torrent>) {
    {
        let mut state = torrent.state();
        state.status = TorrentStatus::Seeding;
        // A seed assembles no more pieces: spare piece buffers would only hold memory while
        // it seeds (up to 4 MiB per torrent; an agent seeds many segments' torrents).
        state.release_spare_buffers();
    }
    publish_stats(torrent);
    torrent.emit(TorrentEvent::Completed);
    if let Some(announcer) = torrent
        .announcer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        announcer.completed();
    }
}

/// Stops the torrent on an error that makes going on pointless (storage failed).
pub(crate) fn fail(torrent: &Torrent, message: String) {
    tracing::error!(info_hash = %torrent.info_hash, "{message}");
    torrent.state().status = TorrentStatus::Failed(message.clone());
    publish_stats(torrent);
    torrent.emit(TorrentEvent::Failed(message));
    close_everything(torrent);
}

fn close_everything(torrent: &Torrent) {
    torrent.shutdown.send_replace(true);
    for peer in torrent.state().peers.values() {
        peer.link.close(crate::DisconnectReason::TorrentStopped);
    }
}

/// Stops every task of the torrent, waiting up to `grace` for them to end cleanly.
pub(crate) async fn stop(torrent: &Arc<Torrent>, grace: Duration) {
    close_everything(torrent);
    let announcer = torrent
        .announcer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(announcer) = announcer {
        let _ = tokio::time::timeout(grace, announcer.stop()).await;
    }
    let mut tasks = std::mem::take(&mut *torrent.tasks.lock().unwrap_or_else(|e| e.into_inner()));
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    {
        let mut state = torrent.state();
        if !matches!(state.status, TorrentStatus::Failed(_)) {
            state.status = TorrentStatus::Stopped;
        }
    }
    publish_stats(torrent);
}
