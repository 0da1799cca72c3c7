//! The registry-native path (ARCHITECTURE.md, "Registry-native distribution"): an image
//! moves as blobs by digest through the node's [`Store`], a torrent per blob chunk
//! ([`chunks`]), and reaches the runtime through the node's registry endpoint.
//!
//! Files: `origin.rs` (read the registry into the store, seed, announce), `receive.rs`
//! (fetch the blobs this node lacks, then have the runtime pull from the endpoint),
//! `chunks.rs` (the chunk rule), and here the wiring: [`BlobPath`], what the endpoint
//! serves ([`StoreContent`]), and the `.torrent` files receivers ask for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;

use super::mirror::{Mirror, MirrorConfig};
use super::Distributor;
use crate::registry::manifest::Platform;
use crate::registry::RegistrySource;
use crate::store::{Digest, Store};

pub(crate) mod chunks;
pub(super) mod intake;
mod load;
mod origin;
mod receive;

/// How long the endpoint holds a runtime's request for a blob this node is still receiving.
/// A pull then runs while the swarm delivers; the runtime's own timeouts are longer.
pub const BLOB_WAIT: Duration = Duration::from_secs(600);
/// How long a blob distribution waits for this agent's registry-native path to be enabled.
const ENABLE_WAIT: Duration = Duration::from_secs(10);

/// What the registry-native path needs: the store, the registry client, and where the
/// runtime reaches this node's endpoint.
pub struct BlobPath {
    /// The node's content-addressed store.
    pub store: Arc<Store>,
    /// Reads manifests and blobs from registries (the origin's side).
    pub registry: RegistrySource,
    /// `host:port` the runtime pulls from (the endpoint's address as the runtime sees it).
    pub endpoint: String,
    /// This node's platform: what it takes out of an index.
    pub platform: Platform,
    /// The platforms an origin distributes out of an index: this node's first, then the
    /// other platforms of the cluster's nodes (`--platforms`).
    pub platforms: Vec<Platform>,
    /// Blobs this node is receiving, counted per distribution: the endpoint waits for these.
    expected: Arc<Mutex<HashMap<Digest, usize>>>,
    /// The runtime's last pull from the endpoint failed (see `load.rs`).
    endpoint_failed: std::sync::atomic::AtomicBool,
    /// Mirror mode, when on: the endpoint also answers pulls nobody announced.
    pub(crate) mirror: Option<Mirror>,
}

impl BlobPath {
    /// The path over `store`, reading registries with `registry`, the runtime pulling from
    /// `endpoint`.
    pub fn new(store: Arc<Store>, registry: RegistrySource, endpoint: String) -> Self {
        let platform = crate::registry::manifest::host_platform();
        BlobPath {
            store,
            registry,
            endpoint,
            platform,
            platforms: vec![platform],
            expected: Arc::default(),
            endpoint_failed: std::sync::atomic::AtomicBool::new(false),
            mirror: None,
        }
    }

    /// The endpoint also answers pulls of images nobody announced, as a pull-through
    /// mirror (`distributor/mirror`).
    pub fn with_mirror(mut self, config: MirrorConfig) -> Self {
        self.mirror = Some(Mirror::new(config));
        self
    }

    /// This node takes `platform` out of indexes, and an origin here distributes
    /// `platform` and `others` (the other platforms of the cluster's nodes).
    pub fn with_platforms(mut self, platform: Platform, others: &[Platform]) -> Self {
        self.platform = platform;
        self.platforms = std::iter::once(platform)
            .chain(others.iter().copied().filter(|p| *p != platform))
            .collect();
        self
    }

    /// What the registry endpoint serves: this store, waiting for blobs being received;
    /// in mirror mode, misses go to `distributor`.
    fn content(&self, distributor: Weak<Distributor>) -> Arc<dyn crate::endpoint::Content> {
        Arc::new(StoreContent {
            store: Arc::clone(&self.store),
            expected: Arc::clone(&self.expected),
            distributor,
        })
    }

    /// Whether a distribution is bringing blob `d` to this node now.
    pub(crate) fn is_expected(&self, d: &Digest) -> bool {
        self.expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(d)
    }

    /// Marks `digests` as arriving until the guard drops.
    fn expect(&self, digests: &[Digest]) -> Expected {
        let mut map = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        for d in digests {
            *map.entry(d.clone()).or_default() += 1;
        }
        Expected {
            map: Arc::clone(&self.expected),
            digests: digests.to_vec(),
        }
    }
}

/// Blobs marked as arriving; unmarked on drop.
struct Expected {
    map: Arc<Mutex<HashMap<Digest, usize>>>,
    digests: Vec<Digest>,
}

impl Drop for Expected {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.digests {
            if let Some(n) = map.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    map.remove(d);
                }
            }
        }
    }
}

/// The endpoint's view of the store: committed content only; a blob this node is still
/// receiving is waited for (up to [`BLOB_WAIT`]); in mirror mode a miss is fetched
/// (`distributor/mirror`), else it is a 404 at once.
pub struct StoreContent {
    store: Arc<Store>,
    expected: Arc<Mutex<HashMap<Digest, usize>>>,
    distributor: Weak<Distributor>,
}

impl crate::endpoint::Content for StoreContent {
    fn manifest(&self, digest: &str) -> Option<(bytes::Bytes, String)> {
        let d = Digest::parse(digest).ok()?;
        let media_type = self.store.manifest_media_type(&d)?;
        let bytes = self
            .store
            .read_small(&d, crate::registry::MAX_MANIFEST)
            .ok()??;
        Some((bytes, media_type))
    }

    fn resolve_tag(&self, registry: Option<&str>, repository: &str, tag: &str) -> Option<String> {
        self.store
            .tag(registry, repository, tag)
            .map(|d| d.to_string())
    }

    fn blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Option<(std::fs::File, u64)>> {
        Box::pin(async move {
            let d = Digest::parse(digest).ok()?;
            if !self.store.contains(&d) {
                let arriving = self
                    .expected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&d);
                if !arriving || !self.store.wait_for(&d, BLOB_WAIT).await {
                    return None;
                }
            }
            self.store.open_blob(&d)
        })
    }

    fn fetch<'a>(
        &'a self,
        upstream: crate::endpoint::Upstream<'a>,
        miss: crate::endpoint::Miss<'a>,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.distributor.upgrade() {
                Some(d) => d.mirror_fetch(upstream, miss).await,
                None => false,
            }
        })
    }

    fn fetch_blob<'a>(
        &'a self,
        upstream: crate::endpoint::Upstream<'a>,
        digest: &'a str,
    ) -> BoxFuture<'a, Option<crate::endpoint::BlobSource>> {
        Box::pin(async move {
            self.distributor
                .upgrade()?
                .mirror_fetch_blob(upstream, digest)
                .await
        })
    }
}

impl Distributor {
    /// Turns on the registry-native path: pushes whose image the registry API can read, and
    /// announcements of blob distributions, go through `path` from now on. Returns what
    /// the node's registry endpoint should serve. Once only: later calls are ignored.
    pub fn enable_blobs(self: &Arc<Self>, path: BlobPath) -> Arc<dyn crate::endpoint::Content> {
        let content = path.content(Arc::downgrade(self));
        let mirror = path.mirror.is_some();
        if self.blobs.set(path).is_ok() && mirror {
            self.spawn_mirror_janitor();
        }
        self.blobs_enabled.send_replace(true);
        content
    }

    /// The registry-native path, when enabled.
    pub(super) fn blob_path(&self) -> Option<&BlobPath> {
        self.blobs.get()
    }

    /// The registry-native path, waiting up to [`ENABLE_WAIT`] for it to be enabled (an
    /// agent enables it right after starting, while catch-up may already run).
    pub(super) async fn wait_blob_path(&self) -> Option<&BlobPath> {
        let mut enabled = self.blobs_enabled.subscribe();
        let _ = tokio::time::timeout(ENABLE_WAIT, enabled.wait_for(|on| *on)).await;
        self.blobs.get()
    }

    /// The `.torrent` of a blob chunk this node seeds (receivers fetch piece hashes here).
    pub fn torrent_file(&self, info_hash: &str) -> Option<Vec<u8>> {
        let bytes = decode_hex20(info_hash)?;
        let handle = self.session.torrent(&imagewolf_bt::InfoHash(bytes))?;
        Some(handle.metainfo().to_bytes())
    }
}

/// 40 hex digits as 20 bytes.
pub(super) fn decode_hex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
