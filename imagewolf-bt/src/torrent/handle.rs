//! The public face of a torrent: how to add one, follow it, and stop it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::{Torrent, TorrentError};
use std::path::{Path, PathBuf};

use crate::metainfo::{FileLayout, Metainfo};
use crate::storage::{FileStorage, Storage};
use crate::{InfoHash, PeerId, PieceIndex};

/// What the storage holds when a torrent is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Nothing yet: download everything.
    Empty,
    /// Everything, already verified (the file was just hashed into this torrent): seed at once.
    Complete,
    /// Unknown: hash every piece first and download only what fails (resume after a restart).
    Check,
}

/// Everything [`crate::Session::add_torrent`] needs to know about a new torrent.
///
/// ```
/// use std::sync::Arc;
/// use imagewolf_bt::{metainfo::TorrentBuilder, storage::MemoryStorage, AddTorrent, StartFrom};
/// let payload = vec![7u8; 100_000];
/// let meta = TorrentBuilder::new("doc.bin")
///     .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())
///     .unwrap();
/// let add = AddTorrent::new(meta, Arc::new(MemoryStorage::from_vec(payload)), StartFrom::Complete)
///     .with_peers(["127.0.0.1:6001".parse().unwrap()]);
/// assert_eq!(add.peers.len(), 1);
/// ```
pub struct AddTorrent {
    /// The torrent.
    pub metainfo: Metainfo,
    /// Where its payload lives.
    pub storage: Arc<dyn Storage>,
    /// What the storage already holds.
    pub start_from: StartFrom,
    /// Peers to connect to straight away, besides those the trackers return.
    pub peers: Vec<SocketAddr>,
    /// Whether to announce to the torrent's trackers (on by default).
    pub use_trackers: bool,
    /// Keep spreading after every piece has gone out, until
    /// [`TorrentHandle::release_spreading`] (see [`AddTorrent::holding_spread`]).
    pub hold_spread: bool,
}

impl AddTorrent {
    /// A torrent with its storage; trackers on, no extra peers.
    pub fn new(metainfo: Metainfo, storage: Arc<dyn Storage>, start_from: StartFrom) -> Self {
        Self {
            metainfo,
            storage,
            start_from,
            peers: Vec::new(),
            use_trackers: true,
            hold_spread: false,
        }
    }

    /// Seeds the payload at `path`: the file itself for a single-file torrent, or the
    /// directory holding the torrent's files for a multi-file one (`path` is that directory,
    /// whatever its name). Lengths come from the metainfo; files are opened read-only and
    /// must have exactly those lengths. The data is taken as complete (set
    /// [`AddTorrent::start_from`] to [`StartFrom::Check`] to hash it first).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), imagewolf_bt::Error> {
    /// use imagewolf_bt::{metainfo::Metainfo, AddTorrent};
    /// let file = std::env::temp_dir().join(format!("iw-doc-seed-{}.bin", std::process::id()));
    /// std::fs::write(&file, vec![3u8; 200_000])?;
    /// let meta = Metainfo::create(&file).await?;
    /// let add = AddTorrent::seed_file(meta, &file)?;
    /// assert_eq!(add.storage.len(), 200_000);
    /// # std::fs::remove_file(&file)?;
    /// # Ok(()) }
    /// ```
    pub fn seed_file(metainfo: Metainfo, path: impl AsRef<Path>) -> Result<Self, crate::Error> {
        let path = path.as_ref();
        let storage = match &metainfo.info().files {
            FileLayout::Single { .. } => FileStorage::open_file(path, metainfo.total_len())?,
            FileLayout::Multi { .. } => {
                let files: Vec<(PathBuf, u64)> = metainfo
                    .files()
                    .into_iter()
                    .map(|f| {
                        // Below the torrent's directory: drop its name.
                        let inner: PathBuf = f.path.components().skip(1).collect();
                        (inner, f.len)
                    })
                    .collect();
                FileStorage::open_existing(path, &files)?
            }
        };
        Ok(Self::new(metainfo, Arc::new(storage), StartFrom::Complete))
    }

    /// Downloads into the directory `dir`: the file `dir/NAME` for a single-file torrent,
    /// the files below `dir/NAME/` for a multi-file one, created (with their directories)
    /// and sized from the metainfo. If the first of them existed already, what it and the
    /// others hold is hashed first and only what fails is downloaded (resume); otherwise
    /// the download starts from nothing.
    pub fn download_to(metainfo: Metainfo, dir: impl AsRef<Path>) -> Result<Self, crate::Error> {
        let dir = dir.as_ref();
        let existed = metainfo
            .files()
            .first()
            .is_some_and(|f| dir.join(&f.path).exists());
        let storage = FileStorage::for_metainfo(dir, &metainfo)?;
        let start = if existed {
            StartFrom::Check
        } else {
            StartFrom::Empty
        };
        Ok(Self::new(metainfo, Arc::new(storage), start))
    }

    /// Adds peers to connect to at start.
    pub fn with_peers(mut self, peers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.peers.extend(peers);
        self
    }

    /// Turns tracker announces off (peers then come only from [`AddTorrent::peers`] and
    /// [`TorrentHandle::add_peers`]).
    pub fn without_trackers(mut self) -> Self {
        self.use_trackers = false;
        self
    }

    /// For a seed that spreads ([`StartFrom::Complete`] with
    /// [`crate::SessionConfig::spread_initial_seed`]) while its uplink is also needed for
    /// something newer: once every piece has gone out it shows nothing more, instead of
    /// showing every peer everything and seeding normally, until
    /// [`TorrentHandle::release_spreading`]. The peers complete it among themselves.
    ///
    /// Why: a node that reads a payload in parts and seeds each part as a torrent of its own
    /// is the only source of the newest part, at the rate it reads it. Normal seeding of
    /// the older parts spends that uplink on copies the peers could trade among
    /// themselves (measured on the agent's cluster bench: the origin's uplink carried 1.27
    /// copies of the image, and receivers ended 8 s after the origin instead of 4).
    /// A piece whose first taker leaves before any peer announced it is shown again (the
    /// spreader frees it); one that leaves with the only peer that announced it waits for
    /// the release, so the caller must release when its reading ends, however it ends.
    pub fn holding_spread(mut self) -> Self {
        self.hold_spread = true;
        self
    }
}

/// Where a torrent is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TorrentStatus {
    /// Hashing existing data ([`StartFrom::Check`]).
    Checking,
    /// Fetching pieces.
    Downloading,
    /// Complete and serving others.
    Seeding,
    /// Stopped by [`TorrentHandle::stop`] or session shutdown.
    Stopped,
    /// Stopped by an error (storage failure); the message says what.
    Failed(String),
}

/// A snapshot of a torrent's progress, published at every verified piece and every tick.
#[derive(Debug, Clone, PartialEq)]
pub struct TorrentStats {
    /// Where the torrent is in its life.
    pub status: TorrentStatus,
    /// Pieces in the torrent.
    pub num_pieces: u32,
    /// Pieces we have, verified.
    pub have_pieces: u32,
    /// Payload size in bytes.
    pub total_len: u64,
    /// Bytes of verified pieces we have.
    pub have_bytes: u64,
    /// Payload bytes received from peers (including any thrown away).
    pub downloaded: u64,
    /// Payload bytes sent to peers.
    pub uploaded: u64,
    /// Received bytes thrown away: duplicates, unrequested blocks, pieces failing their hash.
    pub wasted: u64,
    /// Download rate over the last tick, bytes/s.
    pub download_rate: f64,
    /// Upload rate over the last tick, bytes/s.
    pub upload_rate: f64,
    /// Connected peers.
    pub peers: usize,
    /// Pieces that failed their hash check so far.
    pub hash_failures: u32,
}

impl TorrentStats {
    /// True once every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have_pieces == self.num_pieces
    }

    /// Fraction of the payload verified, 0.0 to 1.0.
    pub fn progress(&self) -> f64 {
        if self.total_len == 0 {
            return 1.0;
        }
        self.have_bytes as f64 / self.total_len as f64
    }
}

/// Things that happen to a torrent, for logs, tests and UIs. Delivered through a bounded
/// broadcast channel: a receiver that falls more than 1,024 events behind loses the oldest
/// (and is told so by `RecvError::Lagged`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TorrentEvent {
    /// A peer completed the handshake.
    PeerConnected {
        /// Its address.
        addr: SocketAddr,
        /// Its peer id.
        peer_id: PeerId,
    },
    /// A peer connection ended.
    PeerDisconnected {
        /// Its address.
        addr: SocketAddr,
        /// Why (protocol error, timeout, closed by the peer, ...).
        reason: crate::DisconnectReason,
    },
    /// A peer was banned: it sent data that failed verification.
    PeerBanned {
        /// Its address.
        addr: SocketAddr,
        /// Its peer id.
        peer_id: PeerId,
    },
    /// A piece passed its SHA-1 check and was stored.
    PieceVerified(PieceIndex),
    /// A piece failed its SHA-1 check; it will be fetched again.
    HashFailed(PieceIndex),
    /// Every piece is verified and stored.
    Completed,
    /// The torrent stopped on an error.
    Failed(String),
}

/// A handle to a torrent in a session. Cheap to clone; dropping it does not stop the torrent.
#[derive(Clone)]
pub struct TorrentHandle {
    pub(crate) torrent: Arc<Torrent>,
}

impl TorrentHandle {
    /// The torrent's info-hash.
    pub fn info_hash(&self) -> InfoHash {
        self.torrent.info_hash
    }

    /// The torrent's metainfo.
    pub fn metainfo(&self) -> &Metainfo {
        &self.torrent.metainfo
    }

    /// The latest progress snapshot.
    pub fn stats(&self) -> TorrentStats {
        let mut stats = self.torrent.stats_tx.borrow().clone();
        // Counters move between snapshots; give the freshest values.
        let c = &self.torrent.counters;
        stats.downloaded = c.downloaded.load(Ordering::Relaxed);
        stats.uploaded = c.uploaded.load(Ordering::Relaxed);
        stats.wasted = c.wasted.load(Ordering::Relaxed);
        stats
    }

    /// A receiver of progress snapshots: `changed().await` wakes at every verified piece and
    /// every tick.
    pub fn progress(&self) -> watch::Receiver<TorrentStats> {
        self.torrent.stats_tx.subscribe()
    }

    /// A receiver of [`TorrentEvent`]s from now on.
    pub fn events(&self) -> broadcast::Receiver<TorrentEvent> {
        self.torrent.events_tx.subscribe()
    }

    /// Progress snapshots as a [`Stream`](futures::Stream): the current one at once, then
    /// one at every verified piece and every tick (about twice a second; snapshots a slow
    /// consumer missed are skipped, never queued). Ends after the snapshot that shows the
    /// torrent stopped or failed.
    ///
    /// ```no_run
    /// # async fn f(torrent: imagewolf_bt::TorrentHandle) {
    /// use futures::StreamExt;
    /// let mut progress = std::pin::pin!(torrent.progress_stream());
    /// while let Some(stats) = progress.next().await {
    ///     println!("{:.1} %", stats.progress() * 100.0);
    ///     if stats.is_complete() {
    ///         break;
    ///     }
    /// }
    /// # }
    /// ```
    pub fn progress_stream(&self) -> impl futures::Stream<Item = TorrentStats> + Send + 'static {
        let rx = self.progress();
        futures::stream::unfold((rx, true, false), |(mut rx, first, ended)| async move {
            if ended {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let stats = rx.borrow_and_update().clone();
            let ended = matches!(
                stats.status,
                TorrentStatus::Stopped | TorrentStatus::Failed(_)
            );
            Some((stats, (rx, false, ended)))
        })
    }

    /// Waits until every piece is verified. Errors if the torrent stops or fails first.
    ///
    /// This waits as long as it takes: with no peer that has the missing pieces (none
    /// given, none from the trackers, all gone), that is forever. Bound the wait with
    /// [`TorrentHandle::wait_complete_within`], or watch [`TorrentHandle::progress_stream`]
    /// and decide when progress has stalled.
    pub async fn wait_complete(&self) -> Result<(), TorrentError> {
        let mut rx = self.progress();
        loop {
            {
                let stats = rx.borrow_and_update();
                if stats.is_complete() {
                    return Ok(());
                }
                match &stats.status {
                    TorrentStatus::Stopped => return Err(TorrentError::Stopped),
                    TorrentStatus::Failed(e) => return Err(TorrentError::Failed(e.clone())),
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(TorrentError::Stopped);
            }
        }
    }

    /// [`TorrentHandle::wait_complete`] for at most `timeout`; then
    /// [`crate::Error::Timeout`]. The torrent goes on either way.
    pub async fn wait_complete_within(&self, timeout: Duration) -> Result<(), TorrentError> {
        tokio::time::timeout(timeout, self.wait_complete())
            .await
            .unwrap_or(Err(TorrentError::Timeout(
                "waiting for the torrent to complete",
            )))
    }

    /// Gives the torrent more peers to connect to.
    pub fn add_peers(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        super::add_candidates(&self.torrent, peers);
    }

    /// Ends the hold of [`AddTorrent::holding_spread`]: if every piece has gone out, every
    /// peer is shown everything now and the torrent seeds normally; otherwise spreading
    /// goes on and ends that way. Idempotent; a no-op for a torrent that is not spreading.
    pub fn release_spreading(&self) {
        self.torrent.release_spreading();
    }

    /// Stops the torrent: closes its connections, sends `stopped` to its trackers (bounded by a
    /// short timeout), and waits for its tasks to end. Its data stays in storage.
    pub async fn stop(&self) {
        super::ticker::stop(&self.torrent, Duration::from_secs(3)).await;
    }
}
