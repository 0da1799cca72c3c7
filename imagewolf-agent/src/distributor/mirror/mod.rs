//! Mirror mode: the node's registry endpoint also answers pulls of images nobody announced
//! (a scale-out, a new node, a public image), as a pull-through mirror that containerd's
//! `hosts.toml` or dockerd's `registry-mirrors` point at (README, "Cold pulls").
//!
//! - **Manifests** are resolved against the upstream registry (tags move), each checked
//!   against its digest and kept in the store; when the upstream cannot answer, the store's
//!   own tags and manifests do (an image pushed through the cluster still pulls).
//! - **Blobs** come from the store, else from the cluster, else from the upstream. For a
//!   blob the store lacks, the agent asks the blob's coordinator (a rendezvous hash over the
//!   agents, [`lease`]) who reads it: the first node to ask reads it from the upstream into
//!   its store, seeding each chunk as it lands; every other node fetches the chunks over
//!   the swarm from there. So a scale-out reads each blob from the upstream once. A
//!   coordinator that has the blob itself seeds it: the upstream is not needed at all.
//! - **Never worse than no mirror.** Whatever fails (no coordinator, a source that stalls
//!   or goes away), the node reads the upstream itself; if that fails too the endpoint
//!   answers "unknown" at once and the runtime moves on to its next host, the upstream.
//! - Everything is checked before it is served: manifests against their digests, blobs by
//!   the store's commit (length and SHA-256) after the swarm's piece checks.
//! - Pulls are for what `--allow` allows, through the agent's registry client (its host
//!   policy, TLS roots and credentials).
//!
//! - A blob is handed to the runtime while it arrives (`stream.rs`): the endpoint reads
//!   what is in place, so the runtime's ingest overlaps the transfer; the last byte waits
//!   for the store's SHA-256 check.
//!
//! Files: `lease.rs` (sans-IO coordinator choice and lease table), `fetch.rs` (the flows),
//! `stream.rs` (a blob read while it arrives), here the state and what other agents ask
//! of this one.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imagewolf_bt::TorrentHandle;
use tokio::sync::watch;

use crate::image::{BlobOffer, Chunk};
pub use crate::stats::MirrorCounts;
use crate::store::Digest;

mod fetch;
pub mod lease;
mod stream;

/// Blob sizes and upstreams remembered from the manifests the mirror fetched.
const MAX_KNOWN: usize = 16_384;
/// Image manifests whose blobs wait for the runtime's first blob request, at most.
const MAX_PENDING_PULLS: usize = 1024;
/// Blobs this node offers to others at most (reading, downloaded or seeded from the store).
const MAX_OFFERS: usize = 1024;
/// Blobs this node reads from upstreams at once (connections to registries a runtime's
/// pulls can open through the mirror); the rest wait their turn, offered meanwhile.
/// Measured on the cold-pull bench against five at once: no visible change (3.09x vs
/// 3.19x the herd, within run-to-run spread); the other nodes still wait for a reader's
/// first whole chunk.
const UPSTREAM_READS: usize = 2;
/// How long an offer no one asked about keeps seeding.
const OFFER_LINGER: Duration = Duration::from_secs(600);

/// Mirror mode's settings.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The registry pulls without a `ns` parameter (dockerd's `registry-mirrors`) and
    /// containerd's `ns=docker.io` are for: Docker Hub, or what `--hub-registry` names.
    pub hub_registry: String,
}

/// Where a blob comes from and how large it is, learnt from a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub registry: String,
    pub repository: String,
    pub size: u64,
    pub media_type: String,
    /// The image manifest that named it, when known.
    pub manifest: Option<Digest>,
}

/// One blob this node offers.
struct Offer {
    state: BlobOffer,
    torrents: Vec<TorrentHandle>,
    last_asked: Instant,
}

/// Mirror counters for /metrics.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Tags and manifests resolved against an upstream.
    pub manifests_upstream: AtomicU64,
    /// Blobs read from an upstream by this node.
    pub blobs_upstream: AtomicU64,
    /// Blobs fetched from other nodes over the swarm.
    pub blobs_from_peers: AtomicU64,
    /// Fetches from another node that failed and fell back to the upstream.
    pub peer_fallbacks: AtomicU64,
    /// Pulls the mirror could not serve (the runtime went to its next host).
    pub misses: AtomicU64,
}

impl MirrorStats {
    fn snapshot(&self) -> MirrorCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MirrorCounts {
            manifests_upstream: get(&self.manifests_upstream),
            blobs_upstream: get(&self.blobs_upstream),
            blobs_from_peers: get(&self.blobs_from_peers),
            peer_fallbacks: get(&self.peer_fallbacks),
            misses: get(&self.misses),
        }
    }
}

/// One blob's fetch, as the requests waiting for it see it.
type FetchDone = watch::Receiver<stream::Progress>;

/// Mirror mode's state on one node (inside the registry-native path's `BlobPath`).
pub struct Mirror {
    pub(crate) config: MirrorConfig,
    known: Mutex<Known>,
    /// Blobs being fetched here: one fetch per blob, however many requests wait for it.
    inflight: Mutex<HashMap<Digest, FetchDone>>,
    leases: Mutex<lease::Leases>,
    offers: Mutex<HashMap<Digest, Offer>>,
    /// Image manifest -> its blobs, until the runtime asks for one of them.
    pulls: Mutex<HashMap<Digest, Vec<Digest>>>,
    /// Turns to read from an upstream ([`UPSTREAM_READS`]).
    upstream_reads: tokio::sync::Semaphore,
    stats: MirrorStats,
}

/// A bounded map, oldest entries dropped first.
#[derive(Default)]
struct Known {
    map: HashMap<Digest, Origin>,
    order: VecDeque<Digest>,
}

impl Mirror {
    /// Mirror mode with `config`.
    pub fn new(config: MirrorConfig) -> Self {
        Mirror {
            config,
            known: Mutex::default(),
            inflight: Mutex::default(),
            leases: Mutex::default(),
            offers: Mutex::default(),
            pulls: Mutex::default(),
            upstream_reads: tokio::sync::Semaphore::new(UPSTREAM_READS),
            stats: MirrorStats::default(),
        }
    }

    /// The counters now.
    pub fn counts(&self) -> MirrorCounts {
        self.stats.snapshot()
    }

    /// The registry to read for a pull that named `ns` (or none).
    fn upstream_registry(&self, ns: Option<&str>) -> String {
        match ns {
            None | Some("docker.io") | Some("index.docker.io") | Some("registry-1.docker.io") => {
                self.config.hub_registry.clone()
            }
            Some(host) => host.to_owned(),
        }
    }

    fn remember(&self, digest: Digest, origin: Origin) {
        let mut known = lock(&self.known);
        if known.map.insert(digest.clone(), origin).is_none() {
            known.order.push_back(digest);
            while known.order.len() > MAX_KNOWN {
                if let Some(old) = known.order.pop_front() {
                    known.map.remove(&old);
                }
            }
        }
    }

    /// Remembers where the blobs of image manifest `digest` of `image` come from, to be
    /// fetched together at the runtime's first blob request (an index names no blob).
    fn note_manifest(
        &self,
        image: &crate::image::ImageRef,
        digest: &Digest,
        parsed: &crate::registry::manifest::Manifest,
    ) {
        let crate::registry::manifest::Manifest::Image(m) = parsed else {
            return;
        };
        let mut blobs = Vec::new();
        for blob in std::iter::once(&m.config).chain(&m.layers) {
            let Ok(d) = Digest::parse(&blob.digest) else {
                continue;
            };
            self.remember(
                d.clone(),
                Origin {
                    registry: image.registry.clone(),
                    repository: image.repository.clone(),
                    size: blob.size,
                    media_type: blob.media_type.clone(),
                    manifest: Some(digest.clone()),
                },
            );
            blobs.push(d);
        }
        self.expect_pull(digest.clone(), blobs);
    }

    /// The runtime resolved image manifest `manifest`: its `blobs` are fetched together
    /// once it asks for one ([`Mirror::take_pull`]).
    fn expect_pull(&self, manifest: Digest, blobs: Vec<Digest>) {
        let mut pulls = lock(&self.pulls);
        if pulls.len() >= MAX_PENDING_PULLS && !pulls.contains_key(&manifest) {
            // Resolutions never followed by a blob request (the runtime had the image).
            pulls.clear();
        }
        pulls.insert(manifest, blobs);
    }

    /// The blobs of image manifest `manifest` not yet fetched together (once).
    fn take_pull(&self, manifest: &Digest) -> Vec<Digest> {
        lock(&self.pulls).remove(manifest).unwrap_or_default()
    }

    fn origin_of(&self, digest: &Digest) -> Option<Origin> {
        lock(&self.known).map.get(digest).cloned()
    }

    /// The offer of `digest`, for another agent (`GET /v1/blobs/<digest>`).
    pub fn offer(&self, digest: &Digest) -> Option<BlobOffer> {
        let mut offers = lock(&self.offers);
        let offer = offers.get_mut(digest)?;
        offer.last_asked = Instant::now();
        Some(offer.state.clone())
    }

    /// Starts offering `digest` (none yet: `false` if this node offers too many already).
    fn start_offer(&self, digest: &Digest, size: u64, seeder: SocketAddr) -> bool {
        let mut offers = lock(&self.offers);
        if offers.contains_key(digest) {
            return true;
        }
        if offers.len() >= MAX_OFFERS {
            return false;
        }
        offers.insert(
            digest.clone(),
            Offer {
                state: BlobOffer {
                    size,
                    chunks: Vec::new(),
                    complete: false,
                    failed: false,
                    seeder: seeder.to_string(),
                },
                torrents: Vec::new(),
                last_asked: Instant::now(),
            },
        );
        true
    }

    fn offer_chunk(&self, digest: &Digest, handle: TorrentHandle, len: u64) {
        if let Some(offer) = lock(&self.offers).get_mut(digest) {
            offer.state.chunks.push(Chunk {
                info_hash: handle.info_hash().to_hex(),
                len,
            });
            offer.torrents.push(handle);
        }
    }

    fn end_offer(&self, digest: &Digest, ok: bool) {
        if let Some(offer) = lock(&self.offers).get_mut(digest) {
            offer.state.complete = ok;
            offer.state.failed = !ok;
            offer.last_asked = Instant::now();
        }
    }

    /// Offers no one asked about for [`OFFER_LINGER`] (or that failed): removed, their
    /// torrents returned for the caller to stop.
    fn expired_offers(&self, now: Instant) -> Vec<TorrentHandle> {
        let mut offers = lock(&self.offers);
        let expired: Vec<Digest> = offers
            .iter()
            .filter(|(_, o)| {
                (o.state.complete || o.state.failed)
                    && now.saturating_duration_since(o.last_asked) >= OFFER_LINGER
            })
            .map(|(d, _)| d.clone())
            .collect();
        expired
            .iter()
            .filter_map(|d| offers.remove(d))
            .flat_map(|o| o.torrents)
            .collect()
    }

    /// Whether an offer holds the torrent `info_hash` (so a record's cleanup leaves it).
    pub(crate) fn holds_torrent(&self, info_hash: &imagewolf_bt::InfoHash) -> bool {
        lock(&self.offers)
            .values()
            .any(|o| o.torrents.iter().any(|t| t.info_hash() == *info_hash))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
