//! One torrent in a session: its shared state, the public handle, progress and events.
//!
//! # Ownership and locking
//! - [`Torrent`] is shared (`Arc`) by the session, the torrent's ticker task, and every peer
//!   task. Its mutable core, [`state::TorrentState`] (picker, peer table, piece buffers, ban
//!   evidence), sits behind ONE `std::sync::Mutex`, held only for short, non-async, I/O-free
//!   sections: no `.await`, no storage access and no hashing while it is held.
//! - Each peer connection has a `PeerLink` with its own small mutex (outgoing
//!   bytes, queued requests to serve, our outstanding requests to it).
//! - Lock order: torrent state, then a peer link. Never the other way round.
//!
//! # Data path (downloading)
//! peer reader decodes a Piece -> checks it against its outstanding requests -> torrent lock:
//! picker marks the block received, the block is copied into the piece's buffer -> when the
//! last block arrives the buffer is taken out and [`verify`] hashes it on the blocking pool
//! and writes it to storage -> torrent lock: picker marks it verified, HAVE goes to every peer.
//! Storage therefore only ever holds verified pieces.

mod handle;
mod peers;
pub(crate) mod smart_ban;
pub(crate) mod state;
mod ticker;
pub(crate) mod verify;

pub use handle::{AddTorrent, StartFrom, TorrentEvent, TorrentHandle, TorrentStats, TorrentStatus};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, watch, Notify, Semaphore};

use crate::config::SessionConfig;
use crate::metainfo::Metainfo;
use crate::storage::Storage;
use crate::{InfoHash, Lengths};

/// Why a torrent could not be added or run: now the crate's [`crate::Error`].
pub type TorrentError = crate::Error;

/// Bytes counters shared without a lock (read by stats, bumped on the data path).
#[derive(Default, Debug)]
pub(crate) struct Counters {
    /// Payload bytes received in Piece messages (wanted or not).
    pub downloaded: AtomicU64,
    /// Payload bytes sent in Piece messages.
    pub uploaded: AtomicU64,
    /// Received bytes thrown away (unrequested, duplicate or failing their hash).
    pub wasted: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A torrent's shared core; see the module docs for who owns what.
pub(crate) struct Torrent {
    pub info_hash: InfoHash,
    pub metainfo: Arc<Metainfo>,
    pub lengths: Lengths,
    pub storage: Arc<dyn Storage>,
    pub config: Arc<SessionConfig>,
    /// The port we accept connections on (for the extension handshake and announces).
    pub listen_port: u16,
    pub(crate) state: Mutex<state::TorrentState>,
    pub counters: Counters,
    /// Bounds the number of pieces being hashed at once (session-wide).
    pub hashing: Arc<Semaphore>,
    /// The session-wide cap on piece data sent (see [`crate::rate`]).
    pub upload_limit: Arc<crate::rate::UploadLimit>,
    /// Bytes of complete pieces waiting to be hashed and written. Peers stop requesting
    /// while it is above [`Torrent::piece_memory_limit`], so a disk slower than the network
    /// costs bounded memory instead of piling up buffers.
    pub verifying_bytes: AtomicU64,
    /// Woken whenever a verification finishes (peers paused by the backlog resume).
    pub verify_drained: Notify,
    pub stats_tx: watch::Sender<TorrentStats>,
    pub events_tx: broadcast::Sender<TorrentEvent>,
    /// Flipped to true once, when the torrent stops; every task of the torrent watches it.
    pub shutdown: watch::Sender<bool>,
    /// Wakes the ticker early (new peer addresses to connect to, completion).
    pub wake_ticker: Notify,
    /// Every task of this torrent (ticker, peers, dials), joined on stop.
    pub tasks: Mutex<tokio::task::JoinSet<()>>,
    /// The tracker announce loop, when the torrent has trackers.
    pub announcer: Mutex<Option<crate::tracker::AnnouncerHandle>>,
    /// Mirrors `state.spread.is_some()`, so peers of a torrent that is not spreading (almost
    /// all of them) skip taking the lock for it.
    pub spreading: AtomicBool,
    /// This torrent itself, for the hooks that start tasks (`Arc::new_cyclic`).
    pub this: std::sync::Weak<Torrent>,
}

impl Torrent {
    /// Locks the torrent state. A poisoned lock means a bug panicked mid-update; the state is
    /// still structurally valid (each update is a handful of assignments), so carry on.
    pub fn state(&self) -> MutexGuard<'_, state::TorrentState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The torrent's piece-memory budget (see [`SessionConfig::piece_memory_per_torrent`]).
    pub fn piece_memory_limit(&self) -> u64 {
        piece_memory_limit(&self.config, self.lengths)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `task` as part of this torrent: it is joined (or aborted) when the torrent stops.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished tasks so a long-lived seed does not accumulate them.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Ends a hold on spreading (see [`crate::AddTorrent::holding_spread`]).
    pub fn release_spreading(&self) {
        let mut state = self.state();
        state.spread_held = false;
        if state.spread.as_ref().is_some_and(|s| s.is_done()) {
            state.finish_spreading();
            self.spreading.store(false, Ordering::Relaxed);
        }
    }

    pub fn emit(&self, event: TorrentEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events_tx.send(event);
    }
}

/// [`SessionConfig::piece_memory_per_torrent`], at least four pieces.
pub(crate) fn piece_memory_limit(config: &SessionConfig, lengths: Lengths) -> u64 {
    config
        .piece_memory_per_torrent
        .max(4 * u64::from(lengths.piece_len()))
}

/// The session's table of torrents.
pub(crate) type TorrentTable = Mutex<HashMap<InfoHash, Arc<Torrent>>>;

/// Peer addresses handed to a torrent (tracker replies, the caller, the agent's discovery).
pub(crate) fn add_candidates(torrent: &Torrent, addrs: impl IntoIterator<Item = SocketAddr>) {
    let added = torrent.state().add_candidates(addrs);
    if added {
        torrent.wake_ticker.notify_one();
    }
}

/// The torrent's periodic task (dials, choker, stats).
pub(crate) async fn ticker_task(torrent: Arc<Torrent>) {
    ticker::run(torrent).await
}

/// Hashes existing data ([`StartFrom::Check`]) and resumes from what passed.
pub(crate) async fn check_task(torrent: Arc<Torrent>) {
    let have = match verify::check_storage(&torrent).await {
        Ok(have) => have,
        Err(e) => return ticker::fail(&torrent, format!("checking storage: {e}")),
    };
    let bits: bitvec::vec::BitVec<u8, bitvec::order::Msb0> = have.into_iter().collect();
    let complete = {
        let mut state = torrent.state();
        state.picker = crate::picker::Picker::with_have(torrent.lengths, &bits);
        state.checking = false;
        state.status = TorrentStatus::Downloading;
        state.is_complete()
    };
    torrent.wake_ticker.notify_one();
    if complete {
        ticker::on_complete(&torrent).await;
    } else {
        ticker::publish_stats(&torrent);
    }
}

/// Starts announcing to the torrent's trackers, feeding the peers they return to the dialer.
pub(crate) fn start_trackers(torrent: &Arc<Torrent>, announce_ip: Option<std::net::IpAddr>) {
    let urls = torrent.metainfo.announce_urls();
    if urls.is_empty() {
        return;
    }
    let (peers_tx, mut peers_rx) = tokio::sync::mpsc::channel(16);
    // Weak: the announcer lives inside the torrent; a strong reference would be a cycle.
    let weak = Arc::downgrade(torrent);
    let (info_hash, peer_id, port) = (
        torrent.info_hash,
        torrent.config.peer_id,
        torrent.listen_port,
    );
    let total = torrent.lengths.total_len();
    let numwant = torrent.config.tracker_numwant;
    let params = move |event| {
        let (left, downloaded, uploaded) = weak.upgrade().map_or((total, 0, 0), |t| {
            let c = &t.counters;
            (
                total - t.stats_tx.borrow().have_bytes,
                c.downloaded.load(Ordering::Relaxed),
                c.uploaded.load(Ordering::Relaxed),
            )
        });
        crate::tracker::AnnounceParams {
            info_hash,
            peer_id,
            port,
            uploaded,
            downloaded,
            left,
            event,
            numwant: Some(numwant),
            ip: announce_ip,
        }
    };
    let handle = crate::tracker::Announcer::new(urls)
        .interval_floor(std::time::Duration::from_secs(2))
        .spawn(params, peers_tx);
    *torrent.announcer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    let t = Arc::clone(torrent);
    torrent.spawn(async move {
        let mut shutdown = t.shutdown.subscribe();
        loop {
            tokio::select! {
                peers = peers_rx.recv() => match peers {
                    Some(peers) => add_candidates(&t, peers),
                    None => break,
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    });
}
