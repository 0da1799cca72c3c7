//! The flow from a push to a loaded image on every node, and the agent's record of it.
//!
//! Origin (the agent that heard the push): pull -> export streamed to the data dir while the
//! torrent and a SHA-256 are computed in the same pass -> seed -> announce the
//! [`Distribution`] to every other agent.
//! Every other agent: skip if the runtime already has the image -> download from the swarm
//! (rarest-first, every agent a peer, the origin's tracker) -> check the SHA-256 -> load ->
//! keep seeding for `--seed-seconds`, then delete the tarball.
//!
//! Idempotence: one record per image key ([`ImageRef::dedup_key`]) and per info-hash; a
//! registry retrying an event or a repeated push finds the record and does nothing twice.
//! A late or restarted agent catches up by asking the others for their recent distributions
//! (at start and every [`CATCH_UP_EVERY`]).
//!
//! Gates, in the order an image meets them:
//! - **`--allow`** ([`Allowlist`]): checked in [`Distributor::on_push`] (webhooks, polling) and
//!   [`Distributor::on_distribution`] (other agents' announcements, catch-up), after the
//!   signature: a correctly signed announcement of a repository this node does not allow is
//!   still refused. A refusal is logged, counted ([`DistributionMetrics`]) and kept as a
//!   `refused` record in /stats (the last [`REFUSED_KEPT`] references); nothing is pulled,
//!   downloaded or loaded.
//! - **Slots** (`--max-torrents`): a distribution takes a slot before it pulls (origin) or
//!   downloads (receiver) and gives it back once the image is loaded here (or the flow
//!   failed); seeding afterwards holds none. Without a free slot it waits, `queued`, in a
//!   FIFO (tokio's semaphore is fair), so nothing is dropped.
//!
//! Retries: a pull is retried with backoff up to [`RetryPolicy::pull_attempts`] times. A load
//! is retried with the same bounded backoff *for as long as it takes*: the tarball is
//! verified and a runtime that is down (dockerd restarting, upgraded, out of disk) comes back;
//! giving up would leave the node without the image and the data on disk anyway. Each
//! failure is in /stats meanwhile (`error`, `attempts`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::tracker::{encode_failure, AnnounceRequest, Swarms, TrackerConfig};
use imagewolf_bt::{AddTorrent, Session, SessionConfig, StartFrom, TorrentHandle};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::allowlist::Allowlist;
use crate::image::{Distribution, ImageRef};
use crate::loader::ImageLoader;
use crate::peers::PeerClient;
use crate::source::ImageSource;
use crate::stats::{DistributionMetrics, ImageState, ImageStats};
use crate::tarball::{export_to_torrent, sha256_file};

/// How often an agent asks the others what it may have missed.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(30);
/// Distributions older than this are not caught up on (nor offered to late joiners).
pub const CATCH_UP_WINDOW: Duration = Duration::from_secs(3600);
/// Registry event ids remembered for deduplication.
const EVENT_IDS_KEPT: usize = 4096;
/// References refused by `--allow` kept for /stats (oldest forgotten first).
pub const REFUSED_KEPT: usize = 64;
/// Times a failed distribution is started again before this node gives up on it (so a
/// tarball that never verifies is not downloaded forever by the catch-up loop).
const MAX_RUNS: u32 = 3;

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
}

/// How failed pulls and loads are retried: pauses start at `first_delay` and double up to
/// `max_delay`. Pulls stop after `pull_attempts`; loads never stop (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Pause after the first failure.
    pub first_delay: Duration,
    /// Longest pause between two attempts.
    pub max_delay: Duration,
    /// Pull attempts before the distribution fails.
    pub pull_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            pull_attempts: 8,
        }
    }
}

/// One image on this node.
struct Record {
    stats: ImageStats,
    distribution: Option<Distribution>,
    torrent: Option<TorrentHandle>,
    /// Times this image's flow was started here; a failed one is restarted (by a new
    /// announcement or catch-up) at most [`MAX_RUNS`] times.
    runs: u32,
}

#[derive(Default)]
struct Records {
    by_key: HashMap<String, Record>,
    /// info-hash -> key
    by_info_hash: HashMap<String, String>,
    event_ids: VecDeque<String>,
    /// Refused by `--allow`, most recent last, at most [`REFUSED_KEPT`].
    refused: VecDeque<ImageStats>,
    refused_pushes: u64,
    refused_announcements: u64,
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
            ..SessionConfig::default()
        })
        .await?;
        let tracker = Swarms::new(TrackerConfig {
            interval: Duration::from_secs(10),
            ..TrackerConfig::default()
        });
        let this = Arc::new(Self {
            session,
            source,
            loader,
            agents,
            client: PeerClient::new(),
            tracker: Mutex::new(tracker),
            records: Mutex::new(Records::default()),
            slots: Arc::new(Semaphore::new(config.max_torrents.max(1))),
            config,
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                this.catch_up().await;
                drop(this);
                tokio::time::sleep(CATCH_UP_EVERY).await;
            }
        });
        Ok(this)
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, key: &str, f: impl FnOnce(&mut Record)) {
        if let Some(r) = self.records().by_key.get_mut(key) {
            f(r);
        }
    }

    fn set_state(&self, key: &str, state: ImageState, error: Option<String>) {
        self.update(key, |r| {
            r.stats.state = state;
            r.stats.error = error;
        });
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

    /// The announce URL of this agent's tracker.
    fn tracker_url(&self) -> String {
        format!(
            "http://{}/announce",
            SocketAddr::new(self.config.advertise, self.config.api_port)
        )
    }

    /// A push was notified: start a distribution from here unless it is already known.
    /// Returns at once; the work runs in the background.
    pub fn on_push(self: &Arc<Self>, image: ImageRef, event_id: Option<String>) -> Accepted {
        let key = image.dedup_key();
        {
            let mut records = self.records();
            if let Some(id) = &event_id {
                if records.event_ids.contains(id) {
                    return Accepted::Duplicate;
                }
                if records.event_ids.len() >= EVENT_IDS_KEPT {
                    records.event_ids.pop_front();
                }
                records.event_ids.push_back(id.clone());
            }
            if !self.config.allow.allows(&image) {
                records.refused_pushes += 1;
                let times = note_refused(&mut records, &image, None);
                drop(records);
                tracing::warn!(
                    image = %image,
                    times,
                    "push refused: {}/{} matches no --allow pattern; not pulled",
                    image.registry,
                    image.repository
                );
                return Accepted::Refused(NOT_ALLOWED.into());
            }
            if let Some(existing) = records.by_key.get(&key) {
                if existing.stats.state != ImageState::Failed {
                    return Accepted::Duplicate;
                }
            }
            records.by_key.insert(
                key.clone(),
                Record {
                    stats: new_stats(&image, true, ImageState::Pulling),
                    distribution: None,
                    torrent: None,
                    runs: 1,
                },
            );
        }
        tracing::info!(image = %image, "push: distributing from this node");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.originate(&key, &image).await {
                tracing::error!(image = %image, "distribution failed: {e}");
                this.set_state(&key, ImageState::Failed, Some(e));
            }
        });
        Accepted::Started
    }

    /// Another agent announced a distribution: fetch and load it unless already known.
    pub fn on_distribution(self: &Arc<Self>, d: Distribution) -> Accepted {
        if let Err(e) = check_distribution(&d) {
            return Accepted::Refused(e);
        }
        if let Some(secret) = &self.config.cluster_secret {
            if !d.verify(secret) {
                tracing::warn!(image = %d.image, "refused an announcement without a valid cluster signature");
                return Accepted::Refused("missing or invalid cluster signature".into());
            }
        }
        if !self.config.allow.allows(&d.image) {
            let mut records = self.records();
            // Catch-up offers the same announcement every CATCH_UP_EVERY: count and log it once.
            let seen = records
                .refused
                .iter()
                .any(|r| r.info_hash.as_deref() == Some(d.info_hash.as_str()));
            if !seen {
                records.refused_announcements += 1;
                note_refused(&mut records, &d.image, Some(&d.info_hash));
            }
            drop(records);
            if seen {
                tracing::debug!(image = %d.image, "announcement refused again by --allow");
            } else {
                tracing::warn!(
                    image = %d.image,
                    info_hash = %d.info_hash,
                    "announcement refused: {}/{} matches no --allow pattern; not downloaded",
                    d.image.registry,
                    d.image.repository
                );
            }
            return Accepted::Refused(NOT_ALLOWED.into());
        }
        let key = d.image.dedup_key();
        {
            let mut records = self.records();
            let known = records
                .by_info_hash
                .get(&d.info_hash)
                .or_else(|| records.by_key.get(&key).map(|_| &key));
            let mut runs = 1;
            if let Some(previous) = known.cloned().and_then(|k| records.by_key.get(&k)) {
                if previous.stats.state != ImageState::Failed || previous.runs >= MAX_RUNS {
                    return Accepted::Duplicate;
                }
                runs = previous.runs + 1;
            }
            let mut stats = new_stats(&d.image, false, ImageState::Downloading);
            stats.image_id = Some(d.image_id.clone());
            stats.info_hash = Some(d.info_hash.clone());
            stats.size = Some(d.size);
            records
                .by_info_hash
                .insert(d.info_hash.clone(), key.clone());
            records.by_key.insert(
                key.clone(),
                Record {
                    stats,
                    distribution: Some(d.clone()),
                    torrent: None,
                    runs,
                },
            );
        }
        tracing::info!(image = %d.image, info_hash = %d.info_hash, "announced: fetching from the swarm");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.receive(&key, &d).await {
                tracing::error!(image = %d.image, "distribution failed: {e}");
                this.set_state(&key, ImageState::Failed, Some(e));
            }
        });
        Accepted::Started
    }

    /// Recent distributions this node knows (for late joiners). Where this node still
    /// seeds the tarball it lists itself among the seeders, so a late joiner finds peers even
    /// if the origin (and its tracker) is gone.
    pub fn distributions(&self) -> Vec<Distribution> {
        let horizon = now_secs() - CATCH_UP_WINDOW.as_secs_f64();
        let me =
            SocketAddr::new(self.config.advertise, self.session.listen_addr().port()).to_string();
        self.records()
            .by_key
            .values()
            .filter(|r| r.stats.state != ImageState::Failed)
            .filter_map(|r| {
                let mut d = r.distribution.clone()?;
                if r.torrent.is_some() && !d.seeders.contains(&me) {
                    d.seeders.push(me.clone());
                }
                Some(d)
            })
            .filter(|d| d.created as f64 >= horizon)
            .collect()
    }

    /// Every image on this node with live transfer figures.
    pub fn images(&self) -> Vec<ImageStats> {
        let records = self.records();
        let mut out: Vec<ImageStats> = records
            .by_key
            .values()
            .map(|r| {
                let mut s = r.stats.clone();
                if let Some(t) = &r.torrent {
                    let live = t.stats();
                    s.bytes_down = live.downloaded;
                    s.bytes_up = live.uploaded;
                    s.peers = live.peers;
                }
                s
            })
            .chain(records.refused.iter().cloned())
            .collect();
        out.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        out
    }

    /// Slots and refusals, for /metrics.
    pub fn distribution_metrics(&self) -> DistributionMetrics {
        let records = self.records();
        let slots = self.config.max_torrents.max(1);
        DistributionMetrics {
            slots: slots as u64,
            slots_busy: slots.saturating_sub(self.slots.available_permits()) as u64,
            queued: records
                .by_key
                .values()
                .filter(|r| r.stats.state == ImageState::Queued)
                .count() as u64,
            refused_pushes: records.refused_pushes,
            refused_announcements: records.refused_announcements,
        }
    }

    /// Takes a slot, waiting `queued` (FIFO) while all are busy; the record shows `state`
    /// again once it has one.
    async fn take_slot(&self, key: &str, state: ImageState) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return permit;
        }
        self.update(key, |r| r.stats.state = ImageState::Queued);
        tracing::info!(
            key,
            slots = self.config.max_torrents,
            "every --max-torrents slot is busy; queued"
        );
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        tracing::info!(key, "slot free; starting");
        self.update(key, |r| r.stats.state = state);
        permit
    }

    /// Number of other agents currently known.
    pub fn known_agents(&self) -> usize {
        self.other_agents().len()
    }

    /// Answers a tracker announce (`GET /announce?...`) for the torrents this agent started.
    pub fn tracker_announce(&self, query: &str, remote: IpAddr) -> Vec<u8> {
        let req = match AnnounceRequest::from_query(query) {
            Ok(r) => r,
            Err(e) => return encode_failure(&e.to_string()),
        };
        let mut swarms = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        match swarms.announce(&req, remote, std::time::Instant::now()) {
            Ok(reply) => reply.encode(req.compact),
            Err(e) => encode_failure(&e.to_string()),
        }
    }

    /// Asks every other agent for its recent distributions and starts those we lack.
    pub async fn catch_up(self: &Arc<Self>) {
        for agent in self.other_agents() {
            match self.client.distributions(agent).await {
                Ok(list) => {
                    for d in list {
                        if self.on_distribution(d) == Accepted::Started {
                            tracing::info!(%agent, "caught up on a distribution");
                        }
                    }
                }
                Err(e) => tracing::debug!("catch-up: {e}"),
            }
        }
    }

    /// The origin's side: pull, export + hash, seed, announce.
    async fn originate(self: &Arc<Self>, key: &str, image: &ImageRef) -> Result<(), String> {
        let slot = self.take_slot(key, ImageState::Pulling).await;
        let pulled = self
            .with_retries(key, "pull", Some(self.config.retry.pull_attempts), || {
                self.source.pull(image)
            })
            .await?;
        self.update(key, |r| r.stats.image_id = Some(pulled.image_id.clone()));
        let tarball = self
            .source
            .export(&pulled)
            .await
            .map_err(|e| format!("export: {e}"))?;
        let path = self
            .config
            .data_dir
            .join("images")
            .join(format!("{}.tar", file_stem(key)));
        let (meta, sha256) =
            export_to_torrent(tarball, &path, pulled.size_hint, self.tracker_url()).await?;
        let info_hash = meta.info_hash().to_hex();
        let size = meta.total_len();
        let torrent = base64::engine::general_purpose::STANDARD.encode(meta.to_bytes());
        let storage = FileStorage::open_file(&path, size)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let handle = self
            .session
            .add_torrent(AddTorrent::new(
                meta,
                Arc::new(storage),
                StartFrom::Complete,
            ))
            .await
            .map_err(|e| format!("seeding: {e}"))?;
        let bt_addr = SocketAddr::new(self.config.advertise, self.session.listen_addr().port());
        let d = Distribution {
            image: image.clone(),
            image_id: pulled.image_id.clone(),
            torrent,
            info_hash: info_hash.clone(),
            size,
            sha256,
            seeders: vec![bt_addr.to_string()],
            created: now_secs() as u64,
            signature: None,
        };
        let mut d = d;
        if let Some(secret) = &self.config.cluster_secret {
            d.sign(secret);
        }
        {
            let mut records = self.records();
            records
                .by_info_hash
                .insert(info_hash.clone(), key.to_owned());
            if let Some(r) = records.by_key.get_mut(key) {
                r.stats.info_hash = Some(info_hash);
                r.stats.size = Some(size);
                r.stats.state = ImageState::Seeding;
                r.stats.completed_at = Some(now_secs());
                r.distribution = Some(d.clone());
                r.torrent = Some(handle.clone());
            }
        }
        let agents = self.other_agents();
        tracing::info!(image = %image, agents = agents.len(), size, "seeding; announcing to the other agents");
        let calls = agents.iter().map(|a| self.client.announce(*a, &d));
        for result in futures::future::join_all(calls).await {
            if let Err(e) = result {
                // That agent catches up later (it asks every CATCH_UP_EVERY).
                tracing::warn!("announce: {e}");
            }
        }
        // The origin pulled the image: it is in its runtime already.
        self.update(key, |r| {
            r.stats.state = ImageState::Loaded;
            r.stats.loaded_at = Some(now_secs());
        });
        drop(slot);
        self.linger_then_clean(key, handle, path);
        Ok(())
    }

    /// Every other agent's side: download, verify, load.
    async fn receive(self: &Arc<Self>, key: &str, d: &Distribution) -> Result<(), String> {
        let present = self.loader.has_image(&d.image_id).await.unwrap_or(false);
        if present {
            tracing::info!(image = %d.image, "already present here; skipping the download");
            self.update(key, |r| {
                r.stats.state = ImageState::Loaded;
                r.stats.loaded_at = Some(now_secs());
            });
            return Ok(());
        }
        let slot = self.take_slot(key, ImageState::Downloading).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&d.torrent)
            .map_err(|e| format!("torrent is not base64: {e}"))?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("bad torrent: {e}"))?;
        if meta.info_hash().to_hex() != d.info_hash || meta.total_len() != d.size {
            return Err("the torrent does not match the announced info-hash and size".into());
        }
        let path = self
            .config
            .data_dir
            .join("images")
            .join(format!("{}.tar", d.info_hash));
        // A previous run that failed at the load keeps its torrent (and verified data): reuse it.
        let handle = match self.session.torrent(&meta.info_hash()) {
            Some(existing) => existing,
            None => {
                let start = if path.exists() {
                    StartFrom::Check
                } else {
                    StartFrom::Empty
                };
                let storage = FileStorage::create_file(&path, d.size)
                    .map_err(|e| format!("creating {}: {e}", path.display()))?;
                let seeders: Vec<SocketAddr> =
                    d.seeders.iter().filter_map(|s| s.parse().ok()).collect();
                self.session
                    .add_torrent(
                        AddTorrent::new(meta, Arc::new(storage), start).with_peers(seeders),
                    )
                    .await
                    .map_err(|e| format!("adding the torrent: {e}"))?
            }
        };
        self.update(key, |r| r.torrent = Some(handle.clone()));
        handle
            .wait_complete()
            .await
            .map_err(|e| format!("download: {e}"))?;
        self.update(key, |r| {
            r.stats.completed_at = Some(now_secs());
            r.stats.state = ImageState::Loading;
        });
        let actual = sha256_file(&path)
            .await
            .map_err(|e| format!("hashing the tarball: {e}"))?;
        if actual != d.sha256 {
            let _ = self.session.remove_torrent(&handle.info_hash()).await;
            let _ = tokio::fs::remove_file(&path).await;
            return Err(format!(
                "tarball SHA-256 {actual} does not match the announced {}; not loading it",
                d.sha256
            ));
        }
        let started = Instant::now();
        // No attempt limit: the tarball is verified and stays until the runtime takes it.
        self.with_retries(key, "load", None, || self.loader.load(&path))
            .await?;
        let secs = started.elapsed().as_secs_f64();
        self.update(key, |r| {
            r.stats.state = ImageState::Loaded;
            r.stats.loaded_at = Some(now_secs());
            r.stats.load_seconds = Some(secs);
        });
        tracing::info!(image = %d.image, load_seconds = secs, "loaded");
        drop(slot);
        self.linger_then_clean(key, handle, path);
        Ok(())
    }

    /// Runs `op` until it succeeds, retrying retryable errors with the configured backoff,
    /// at most `max_attempts` times (`None`: until it succeeds); each error is visible in
    /// /stats meanwhile, and `attempts` counts every try.
    async fn with_retries<T, E, F, Fut>(
        &self,
        key: &str,
        what: &str,
        max_attempts: Option<u32>,
        mut op: F,
    ) -> Result<T, String>
    where
        E: std::fmt::Display + Retryable,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let policy = self.config.retry;
        let mut delay = policy.first_delay;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            self.update(key, |r| {
                r.stats.attempts = r.stats.attempts.saturating_add(1)
            });
            let e = match op().await {
                Ok(v) => {
                    self.update(key, |r| r.stats.error = None);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if !e.retryable() {
                return Err(format!("{what}: {e}"));
            }
            if max_attempts.is_some_and(|max| attempt >= max) {
                return Err(format!("{what}: gave up after {attempt} attempts: {e}"));
            }
            tracing::warn!(
                key,
                "{what} failed (attempt {attempt}), retrying in {delay:?}: {e}"
            );
            self.update(key, |r| {
                r.stats.error = Some(format!(
                    "{what}: {e} (attempt {attempt}; retrying in {delay:?})"
                ))
            });
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(policy.max_delay);
        }
    }

    /// Keeps seeding for `seed_time`, then stops the torrent and deletes the tarball.
    fn linger_then_clean(self: &Arc<Self>, key: &str, handle: TorrentHandle, path: PathBuf) {
        let this = Arc::clone(self);
        let key = key.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(this.config.seed_time).await;
            this.session.remove_torrent(&handle.info_hash()).await;
            this.update(&key, |r| {
                r.stats.bytes_down = handle.stats().downloaded;
                r.stats.bytes_up = handle.stats().uploaded;
                r.torrent = None;
            });
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!("removing {}: {e}", path.display());
            }
        });
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

/// Errors that say whether retrying can help.
pub trait Retryable {
    /// True if the same call may succeed later.
    fn retryable(&self) -> bool;
}

impl Retryable for crate::source::SourceError {
    fn retryable(&self) -> bool {
        self.retryable
    }
}

impl Retryable for crate::loader::LoaderError {
    fn retryable(&self) -> bool {
        true
    }
}

fn new_stats(image: &ImageRef, origin: bool, state: ImageState) -> ImageStats {
    ImageStats {
        reference: image.to_string(),
        image_id: None,
        digest: image.digest.clone(),
        info_hash: None,
        size: None,
        state,
        error: None,
        origin,
        bytes_down: 0,
        bytes_up: 0,
        peers: 0,
        started_at: now_secs(),
        completed_at: None,
        loaded_at: None,
        load_seconds: None,
        attempts: 0,
    }
}

/// Why a refused image was refused (the API's `reason`, /stats' `error`).
const NOT_ALLOWED: &str = "not allowed by --allow on this node";

/// Records a refusal in the bounded table /stats shows; returns how often this reference
/// has been refused (while remembered).
fn note_refused(records: &mut Records, image: &ImageRef, info_hash: Option<&str>) -> u32 {
    let reference = image.to_string();
    let mut stats = match records
        .refused
        .iter()
        .position(|r| r.reference == reference)
    {
        Some(i) => records.refused.remove(i).expect("index from position"),
        None => {
            let mut stats = new_stats(image, false, ImageState::Refused);
            stats.error = Some(NOT_ALLOWED.into());
            stats
        }
    };
    stats.attempts = stats.attempts.saturating_add(1);
    if let Some(hash) = info_hash {
        stats.info_hash = Some(hash.to_owned());
    }
    let times = stats.attempts;
    if records.refused.len() >= REFUSED_KEPT {
        records.refused.pop_front();
    }
    records.refused.push_back(stats);
    times
}

/// Sanity checks on an announcement before anything is allocated for it.
fn check_distribution(d: &Distribution) -> Result<(), String> {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&d.info_hash, 40) {
        return Err("info_hash is not 40 hex digits".into());
    }
    if !hex(&d.sha256, 64) {
        return Err("sha256 is not 64 hex digits".into());
    }
    if d.torrent.len() > 16 << 20 {
        return Err("torrent too large".into());
    }
    if d.seeders.len() > 1024 {
        return Err("too many seeders".into());
    }
    Ok(())
}

/// A file name for an image key (keys contain `/`, `:` and `@`).
fn file_stem(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The HTTP API's view of a distributor (`api::serve` takes an `Arc<dyn AgentApi>`).
pub struct DistributorApi(pub Arc<Distributor>);

impl crate::api::AgentApi for DistributorApi {
    fn on_push(&self, event: crate::notification::PushEvent) -> crate::api::PushOutcome {
        self.0.on_push(event.image, event.event_id).into()
    }

    fn on_distribution(&self, d: Distribution) -> crate::api::PushOutcome {
        self.0.on_distribution(d).into()
    }

    fn distributions(&self) -> Vec<Distribution> {
        self.0.distributions()
    }

    fn images(&self) -> Vec<ImageStats> {
        self.0.images()
    }

    fn known_agents(&self) -> usize {
        self.0.known_agents()
    }

    fn tracker_announce(&self, query: &str, remote: IpAddr) -> Vec<u8> {
        self.0.tracker_announce(query, remote)
    }

    fn distribution_metrics(&self) -> DistributionMetrics {
        self.0.distribution_metrics()
    }
}

impl From<Accepted> for crate::api::PushOutcome {
    fn from(a: Accepted) -> Self {
        match a {
            Accepted::Started => Self::Started,
            Accepted::Duplicate => Self::Duplicate,
            Accepted::Refused(why) => Self::Ignored(why),
        }
    }
}

#[cfg(test)]
mod tests;
