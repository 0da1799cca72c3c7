//! The flow from a push to a loaded image on every node, and the agent's record of it.
//!
//! Origin (the agent that heard the push): pull -> export streamed to the data dir while the
//! torrent and a SHA-256 are computed in the same pass -> seed -> announce the
//! [`Distribution`](crate::image::Distribution) by rumor (`gossip.rs`, `spread.rs`): to every
//! other agent in a small cluster, else to a few random ones that pass it on; each growth
//! goes down the same tree.
//! Every other agent: skip if the runtime already has the image -> download from the swarm
//! (rarest-first, every agent a peer, the origin's tracker) -> check the SHA-256 -> load ->
//! keep seeding for `--seed-seconds`, then delete the tarball.
//!
//! Idempotence: one record per image key
//! ([`ImageRef::dedup_key`](crate::image::ImageRef::dedup_key)) and per info-hash; a registry
//! retrying an event or a repeated push finds the record and does nothing twice. A late or
//! restarted agent catches up by anti-entropy: at start and every [`CATCH_UP_EVERY`] it asks
//! one random agent for a digest of what it knows and fetches only what it lacks.
//!
//! Gates, in the order an image meets them:
//! - **`--allow`** ([`Allowlist`]): checked in [`Distributor::on_push`] (webhooks, polling) and
//!   [`Distributor::on_distribution`] (other agents' announcements, catch-up), after the
//!   signature: a correctly signed announcement of a repository this node does not allow is
//!   still refused. A refusal is logged, counted
//!   ([`DistributionMetrics`](crate::stats::DistributionMetrics)) and kept as a `refused`
//!   record in /stats (the last [`REFUSED_KEPT`] references); nothing is pulled, downloaded
//!   or loaded.
//! - **Busy**: at most [`ACTIVE_PER_SLOT`] x `--max-torrents` distributions are queued or in
//!   progress. Beyond that a new push or announcement is refused *for now*
//!   ([`Accepted::Busy`], HTTP 503 with the reason) before any record exists, and counted.
//!   Registries resend a notification until it is answered 2xx (the event id is not
//!   remembered on a 503, so the resend is taken), the origin's announcement is caught up
//!   on later, polled pushes are offered again.
//! - **Slots** (`--max-torrents`): a distribution takes a slot before it pulls (origin) or
//!   downloads (receiver) and gives it back once the image is loaded here (or the flow
//!   failed); seeding afterwards holds none. Without a free slot it waits, `queued`, in a
//!   FIFO (tokio's semaphore is fair), so nothing is dropped.
//!
//! Stalls: a download that makes no progress (no payload received, no piece verified) for
//! `stall_timeout` ([`DEFAULT_STALL_TIMEOUT`]) fails with that reason in /stats; its torrent
//! stops and its slot frees, so torrents nobody seeds cannot take every slot. The file with
//! the pieces verified so far stays: a later run of the same torrent checks and reuses them.
//!
//! Restarts: a failed receiver is started again by a new announcement of it or by catch-up
//! (an agent that still has it offers it every [`CATCH_UP_EVERY`]), at most until it has run
//! `MAX_RUNS` (3) times; a stall counts as a run. So a torrent nobody can seed is given up
//! after about 3 x (`stall_timeout` + up to [`CATCH_UP_EVERY`]), and its file deleted. A new
//! push starts a failed origin again.
//!
//! Retries: a pull is retried with backoff up to [`RetryPolicy::pull_attempts`] times. A load
//! is retried with the same bounded backoff *for as long as it takes*: the tarball is
//! verified and a runtime that is down (dockerd restarting, upgraded, out of disk) comes back;
//! giving up would leave the node without the image and the data on disk anyway. Each
//! failure is in /stats meanwhile (`error`, `attempts`).
//!
//! Memory: records are bounded by phase (see `records.rs`): working ones by the busy limit,
//! seeding ones by [`SEEDING_PER_SLOT`] x `--max-torrents` (the oldest stops seeding early),
//! finished ones by [`FINISHED_KEPT`] (older ones are forgotten, leaving a small tombstone
//! for [`FORGOTTEN_KEPT`] more so deduplication and the run limit outlive them).
//!
//! Files: `admit.rs` (entry points and their gates), `gossip.rs` and `spread.rs` (the
//! control plane: rumors, deltas, digests), `origin.rs`, `receive.rs`, `lifecycle.rs`
//! (slots, seeding after the load, cleanup), `records.rs`, `retry.rs`, `views.rs` (/stats,
//! /metrics, the catch-up listing, the tracker, the HTTP API adapter), `pacing.rs` (the
//! upload cap while an origin reads its source).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imagewolf_bt::tracker::{Swarms, TrackerConfig};
use imagewolf_bt::{Session, SessionConfig};
use tokio::sync::{watch, Semaphore};

use crate::allowlist::Allowlist;
use crate::loader::ImageLoader;
use crate::peers::PeerClient;
use crate::source::ImageSource;

mod admit;
mod archive_check;
pub mod blobs;
mod feed;
pub mod gossip;
mod lifecycle;
pub mod mirror;
mod origin;
mod pacing;
pub mod placement;
mod preload;
mod receive;
mod records;
mod retry;
mod spread;
mod stall;
mod views;

pub use blobs::BlobPath;
use records::Records;
pub use records::{
    RecordCounts, ACTIVE_PER_SLOT, FINISHED_BYTES_KEPT, FINISHED_KEPT, FORGOTTEN_KEPT,
    REFUSED_KEPT, SEEDING_PER_SLOT,
};
pub use retry::{RetryPolicy, Retryable};
pub use views::{DistributorApi, LISTING_BYTES_MAX};

/// Piece memory of one segment's torrent: half the engine's default, as a receiver
/// downloads two segments at once (`receive.rs`) (measured: 76 MiB peak RSS
/// with a 1 GiB image before these two bounds, 39 MiB with one whole-image torrent).
pub const PIECE_MEMORY_PER_SEGMENT: u64 = 8 << 20;

/// How often an agent asks one random agent for a digest of what it knows (anti-entropy).
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(30);
/// Distributions older than this are not caught up on (nor offered to late joiners).
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(3600);
/// How long a download may go without progress before it fails (see the module docs).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Runs of a distribution here (the first, then restarts of a failed one by a new
/// announcement or catch-up) before this node gives up on it: a tarball that never verifies
/// is not downloaded forever, nor a torrent nobody seeds waited on forever.
const MAX_RUNS: u32 = 3;
/// How often a torrent that is complete re-announces to an agent's tracker. Measured with
/// tests/control_traffic.rs: at the downloaders' 10 s, an idle origin's tracker took
/// 436-568 B/s and up to 9.6 new connections/s per agent at 8-32 agents.
const TRACKER_SEED_INTERVAL: Duration = Duration::from_secs(60);

/// What the distributor needs to know about this node.
#[derive(Debug, Clone)]
pub struct DistributorConfig {
    /// Where tarballs live while they are spread.
    pub data_dir: PathBuf,
    /// The address other agents reach this node at.
    pub advertise: IpAddr,
    /// The HTTP API port (the tracker is served there too).
    pub api_port: u16,
    /// BitTorrent listen address.
    pub bt_listen: SocketAddr,
    /// How long to keep seeding after the image is loaded here.
    pub seed_time: Duration,
    /// The cluster secret: sign our announcements, refuse unsigned ones. `None` trusts any
    /// agent (a closed network).
    pub cluster_secret: Option<Vec<u8>>,
    /// Images this node may distribute (`--allow`); empty allows all.
    pub allow: Allowlist,
    /// Distributions worked on at once (`--max-torrents`); more are queued. At least 1.
    pub max_torrents: usize,
    /// Backoff of pull and load retries.
    pub retry: RetryPolicy,
    /// A download that makes no progress this long fails and frees its slot
    /// ([`DEFAULT_STALL_TIMEOUT`]).
    pub stall_timeout: Duration,
}

/// The agent's engine room; see the module docs.
pub struct Distributor {
    config: DistributorConfig,
    session: Session,
    source: Arc<dyn ImageSource>,
    loader: Arc<dyn ImageLoader>,
    agents: watch::Receiver<Vec<SocketAddr>>,
    client: PeerClient,
    tracker: Mutex<Swarms>,
    records: Mutex<Records>,
    /// One permit per `--max-torrents` slot.
    slots: Arc<Semaphore>,
    /// What origins read from image sources; caps the upload while they do (`pacing.rs`).
    intake: Arc<pacing::IntakeMeter>,
    /// The registry-native path, once enabled (`blobs/`).
    blobs: std::sync::OnceLock<BlobPath>,
    /// Offers this node answered "want" to lately, so that the same version offered by
    /// several agents at once is sent once (`spread.rs`).
    pending: Mutex<spread::Pending>,
    /// Becomes true when the registry-native path is enabled: catch-up starts with the
    /// distributor, so a blob distribution can arrive a moment before it.
    blobs_enabled: watch::Sender<bool>,
}

/// Why the distributor could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory is not usable.
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// The BitTorrent session could not start.
    #[error(transparent)]
    Session(#[from] imagewolf_bt::SessionError),
}

/// What happened to a push or an announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A distribution started.
    Started,
    /// Already known: nothing done.
    Duplicate,
    /// Refused; why.
    Refused(String),
    /// Refused for now: too many distributions queued or in progress; retry later.
    Busy(String),
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Distributor {
    /// Starts the BitTorrent session and the catch-up loop.
    pub async fn start(
        config: DistributorConfig,
        source: Arc<dyn ImageSource>,
        loader: Arc<dyn ImageLoader>,
        agents: watch::Receiver<Vec<SocketAddr>>,
    ) -> Result<Arc<Self>, StartError> {
        let images = config.data_dir.join("images");
        std::fs::create_dir_all(&images).map_err(|e| StartError::DataDir(images.clone(), e))?;
        let session = Session::new(SessionConfig {
            listen_addr: config.bt_listen,
            announce_ip: Some(config.advertise),
            piece_memory_per_torrent: PIECE_MEMORY_PER_SEGMENT,
            ..SessionConfig::lan_cluster()
        })
        .await?;
        // Downloaders re-announce every 10 s (newcomers find each other); seeds, all an idle
        // cluster has, every 60 s, which sets the tracker's idle load on each origin.
        let mut tracker_config = TrackerConfig::default();
        tracker_config.interval = Duration::from_secs(10);
        tracker_config.seed_interval = TRACKER_SEED_INTERVAL;
        let tracker = Swarms::new(tracker_config);
        let this = Arc::new(Self {
            session,
            source,
            loader,
            agents,
            client: PeerClient::new(
                config
                    .cluster_secret
                    .as_deref()
                    .map(crate::auth::ClusterKey::new),
            ),
            tracker: Mutex::new(tracker),
            records: Mutex::new(Records::default()),
            slots: Arc::new(Semaphore::new(config.max_torrents.max(1))),
            intake: Arc::default(),
            blobs: std::sync::OnceLock::new(),
            blobs_enabled: watch::Sender::new(false),
            pending: Mutex::default(),
            config,
        });
        tokio::spawn(pacing::pace_uploads(Arc::downgrade(&this)));
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut asks = spread::STARTUP_ASKS;
            loop {
                let Some(this) = weak.upgrade() else { return };
                this.catch_up_with(asks).await;
                drop(this);
                asks = 1;
                tokio::time::sleep(CATCH_UP_EVERY).await;
            }
        });
        Ok(this)
    }

    /// The other agents' API addresses (never this one).
    pub fn other_agents(&self) -> Vec<SocketAddr> {
        let me = SocketAddr::new(self.config.advertise, self.config.api_port);
        self.agents
            .borrow()
            .iter()
            .copied()
            .filter(|a| *a != me)
            .collect()
    }

    /// The announce URLs for blob `digest`'s chunk torrents: the agent rendezvous hashing
    /// picks among the agents this one knows (itself included), then this agent's own
    /// (`placement`).
    pub(crate) fn blob_trackers(&self, digest: &crate::store::Digest) -> Vec<String> {
        self.trackers_for(digest.as_str())
    }

    /// The announce URLs for the torrents of `key` (`placement`).
    fn trackers_for(&self, key: &str) -> Vec<String> {
        let me = SocketAddr::new(self.config.advertise, self.config.api_port);
        let mut agents = self.other_agents();
        agents.push(me);
        placement::trackers_for(key, &agents, me)
    }

    /// Stops every torrent (announcing `stopped`) and the session.
    pub async fn shutdown(self: Arc<Self>) {
        match Arc::try_unwrap(self) {
            Ok(this) => this.session.shutdown().await,
            Err(this) => {
                for t in this.session.torrents() {
                    t.stop().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
