//! Every other agent's side of the registry-native path: take this node's platform out of
//! the announced manifests, fetch the blobs the store lacks over their chunks' swarms
//! (the `.torrent` of each chunk from the announcing agent, checked against the announced
//! info-hash), commit each blob once its SHA-256 matches, and have the runtime pull the
//! image from the endpoint meanwhile (it waits there for blobs still arriving).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, StartFrom, TorrentHandle};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{chunks, BlobPath};
use crate::distributor::stall::{progress, StallWatch};
use crate::distributor::{now_secs, Distributor};
use crate::image::{BlobSet, Distribution};
use crate::registry::manifest::{self, ImageManifest, Manifest};
use crate::stats::{BlobCounts, ImageState};
use crate::store::Digest;

/// Chunk torrents a receiver downloads at once (as the tarball path's segments: bounds the
/// piece memory however many blobs are announced).
const CHUNKS_IN_FLIGHT: usize = 2;
/// How long a download waits for another one's commit of the same blob.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// How often the download looks at its torrents.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// One blob this node lacks, as the download goes.
struct Wanted {
    digest: Digest,
    size: u64,
    /// Chunk torrents started, in order.
    torrents: Vec<TorrentHandle>,
    committed: bool,
}

impl Distributor {
    /// The receiving side of a blob distribution (see the module docs).
    pub(in crate::distributor) async fn receive_blobs(
        self: &Arc<Self>,
        key: &str,
        mut updates: watch::Receiver<Distribution>,
    ) -> Result<(), String> {
        let path = self.wait_blob_path().await.ok_or(
            "a blob distribution, but this agent runs without a store (the registry-native \
             path is off)",
        )?;
        let d = updates.borrow_and_update().clone();
        let set = d.blobs.clone().ok_or("not a blob distribution")?;
        let manifests = decode_manifests(&set)?;
        let (chosen, image_manifest) = self.platform_image(&set, &manifests)?;
        let parse = |s: &str| Digest::parse(s).map_err(|e| e.to_string());
        let config = parse(&image_manifest.config.digest)?;
        let layers: Vec<Digest> = image_manifest
            .layers
            .iter()
            .map(|l| parse(&l.digest))
            .collect::<Result<_, _>>()?;
        // The pushed manifest (or index) and this platform's: other platforms' are not ours.
        let manifests: Vec<_> = manifests
            .into_iter()
            .filter(|(d, _, _)| d.as_str() == set.manifest || *d == chosen)
            .collect();
        let present = self
            .loader
            .has_image(config.as_str())
            .await
            .unwrap_or(false);
        if present && self.loader.pulls_from_endpoint() {
            // The same image under a new name (a tag pushed again, a second tag): nothing
            // to fetch, but the runtime should carry the new name and the registry's
            // digest. A pull from the endpoint of an image whose config the runtime has
            // fetches the manifest and stops.
            tracing::info!(image = %d.image, "already present here; naming it as pushed");
            let pushed = Digest::parse(&set.manifest).map_err(|e| e.to_string())?;
            let store = &path.store;
            let _pin = store.pin(manifests.iter().map(|(d, _, _)| d.clone()));
            for (digest, media_type, bytes) in &manifests {
                store
                    .put_bytes(digest, bytes)
                    .await
                    .map_err(|e| format!("storing manifest {digest}: {e}"))?;
                store.set_manifest_media_type(digest, media_type);
            }
            self.with_retries(key, "load", Some(3), || {
                self.loader
                    .pull_from_endpoint(&path.endpoint, &d.image, pushed.as_str())
            })
            .await?;
            self.update(key, |r| {
                r.stats.state = ImageState::Loaded;
                r.stats.loaded_at = Some(now_secs());
            });
            self.finish(key, true);
            return Ok(());
        }
        if present {
            tracing::info!(image = %d.image, "already present here; skipping the download");
            self.update(key, |r| {
                r.stats.state = ImageState::Loaded;
                r.stats.loaded_at = Some(now_secs());
            });
            self.finish(key, true);
            return Ok(());
        }
        let slot = self.take_slot(key, ImageState::Downloading).await;
        let store = &path.store;
        let mut digests: Vec<Digest> = vec![config.clone()];
        for l in layers {
            if !digests.contains(&l) {
                digests.push(l);
            }
        }
        // A blob larger than the store's whole budget could never be committed: refuse it
        // before anything is stored or fetched (else its bytes would cross the network into
        // a partial file that the commit then refuses and leaves behind).
        let budget = store.stats().budget;
        for digest in digests.iter().filter(|d| !store.contains(d)) {
            if let Some(blob) = set.blobs.iter().find(|b| b.digest == digest.as_str()) {
                if blob.size > budget {
                    return Err(format!(
                        "blob {digest} is {} bytes, larger than this node's whole store budget \
                         of {budget} bytes (--cache-size); not fetched",
                        blob.size
                    ));
                }
            }
        }
        let mut pinned = digests.clone();
        pinned.extend(manifests.iter().map(|(d, _, _)| d.clone()));
        let _pin = store.pin(pinned);
        for (digest, media_type, bytes) in &manifests {
            store
                .put_bytes(digest, bytes)
                .await
                .map_err(|e| format!("storing manifest {digest}: {e}"))?;
            store.set_manifest_media_type(digest, media_type);
        }
        let pushed = Digest::parse(&set.manifest).map_err(|e| e.to_string())?;
        if let Some(tag) = &d.image.tag {
            store.set_tag(&d.image.registry, &d.image.repository, tag, &pushed);
        }
        let mut wanted = Vec::new();
        for digest in digests.iter().filter(|d| !store.contains(d)) {
            let blob = set
                .blobs
                .iter()
                .find(|b| b.digest == digest.as_str())
                .ok_or_else(|| format!("blob {digest} of this platform is not announced"))?;
            wanted.push(Wanted {
                digest: digest.clone(),
                size: blob.size,
                torrents: Vec::new(),
                committed: false,
            });
        }
        let counts = BlobCounts {
            total: digests.len() as u32,
            present: (digests.len() - wanted.len()) as u32,
            bytes_needed: wanted.iter().map(|w| w.size).sum(),
        };
        tracing::info!(
            image = %d.image,
            blobs = counts.total,
            present = counts.present,
            bytes_needed = counts.bytes_needed,
            "fetching the blobs this node lacks"
        );
        self.update(key, |r| {
            r.stats.image_id = Some(config.to_string());
            r.stats.size = Some(counts.bytes_needed);
            r.stats.blobs = Some(counts);
        });
        let missing: Vec<Digest> = wanted.iter().map(|w| w.digest.clone()).collect();
        let _arriving = path.expect(&missing);
        let started = Instant::now();
        let load = self.load_blob_image(key, path, &d.image, &pushed, &image_manifest);
        let download = self.fetch_blobs(key, &mut updates, path, &mut wanted);
        // The first error ends both: a failed download must not leave the runtime waiting.
        let (torrents, ()) = futures::future::try_join(download, load).await?;
        let secs = started.elapsed().as_secs_f64();
        self.update(key, |r| {
            r.stats.state = ImageState::Loaded;
            r.stats.loaded_at = Some(now_secs());
            r.stats.load_seconds = Some(secs);
        });
        tracing::info!(image = %d.image, seconds = secs, "loaded from the endpoint");
        drop(slot);
        let tarball = self.received_tarball(&d.id);
        self.linger_then_clean(key, torrents, tarball);
        Ok(())
    }

    /// This node's image out of the announced manifests: the pushed manifest, or the index
    /// entry for this node's platform. Returns its digest and the manifest.
    fn platform_image(
        &self,
        set: &BlobSet,
        manifests: &[(Digest, String, Vec<u8>)],
    ) -> Result<(Digest, ImageManifest), String> {
        let find = |digest: &str| {
            manifests
                .iter()
                .find(|(d, _, _)| d.as_str() == digest)
                .ok_or_else(|| format!("manifest {digest} is not in the announcement"))
        };
        let (top, media_type, bytes) = find(&set.manifest)?;
        let what = format!("announced manifest {top}");
        let parsed = manifest::parse(&what, bytes, Some(media_type)).map_err(|e| e.to_string())?;
        let (chosen, image) = match parsed {
            Manifest::Image(m) => (top.clone(), m),
            Manifest::Index(entries) => {
                let platform = self.platform();
                let entry =
                    manifest::select(&what, &entries, platform).map_err(|e| e.to_string())?;
                let (d, media_type, bytes) = find(&entry.manifest.digest).map_err(|_| {
                    format!(
                        "the origin did not distribute this node's platform ({}/{}); its \
                         runtime can pull it from the registry",
                        platform.os, platform.architecture
                    )
                })?;
                match manifest::parse(&what, bytes, Some(media_type)).map_err(|e| e.to_string())? {
                    Manifest::Image(m) => (d.clone(), m),
                    Manifest::Index(_) => return Err(format!("{what}: an index in an index")),
                }
            }
        };
        Ok((chosen, image))
    }

    /// Downloads `wanted` chunk by chunk as they are announced and commits each blob once
    /// complete. Fails on a digest mismatch, a stopped torrent, or no progress for
    /// `stall_timeout`.
    async fn fetch_blobs(
        &self,
        key: &str,
        updates: &mut watch::Receiver<Distribution>,
        path: &BlobPath,
        wanted: &mut [Wanted],
    ) -> Result<Vec<TorrentHandle>, String> {
        let mut ticks = tokio::time::interval(POLL_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watch = StallWatch::new(self.config.stall_timeout);
        loop {
            let d = updates.borrow_and_update().clone();
            let set = d.blobs.clone().ok_or("not a blob distribution")?;
            let seeders: Vec<SocketAddr> =
                d.seeders.iter().filter_map(|s| s.parse().ok()).collect();
            let api: SocketAddr = set.api.parse().map_err(|_| "blobs.api is not ip:port")?;
            // Start chunks in order, at most CHUNKS_IN_FLIGHT downloading at once.
            let mut in_flight = wanted
                .iter()
                .flat_map(|w| &w.torrents)
                .filter(|t| !t.stats().is_complete())
                .count();
            for w in wanted.iter_mut().filter(|w| !w.committed) {
                let Some(blob) = set.blobs.iter().find(|b| b.digest == w.digest.as_str()) else {
                    return Err(format!("blob {} is no longer announced", w.digest));
                };
                while in_flight < CHUNKS_IN_FLIGHT && w.torrents.len() < blob.chunks.len() {
                    let j = w.torrents.len();
                    let chunk = &blob.chunks[j];
                    let handle = self
                        .add_chunk(path, api, &seeders, &w.digest, w.size, j, &chunk.info_hash)
                        .await?;
                    self.update(key, |r| r.add_shared_torrent(handle.clone()));
                    w.torrents.push(handle);
                    in_flight += 1;
                }
            }
            // Commit the blobs whose chunks are all announced and complete.
            for w in wanted.iter_mut().filter(|w| !w.committed) {
                let chunks_total = chunks::ranges(w.size).len();
                if w.torrents.len() == chunks_total
                    && w.torrents.iter().all(|t| t.stats().is_complete())
                {
                    // Another image in flight here may share the blob (and its torrents)
                    // and commit it first; then this one waits for that commit.
                    match path.store.commit_partial(&w.digest, w.size).await {
                        Ok(()) => {}
                        Err(crate::store::StoreError::Busy { .. })
                            if path.store.wait_for(&w.digest, BUSY_WAIT).await => {}
                        Err(e) => return Err(format!("blob {}: {e}; not stored", w.digest)),
                    }
                    w.committed = true;
                    tracing::debug!(key, digest = %w.digest, "blob complete and verified");
                }
            }
            if wanted.iter().all(|w| w.committed) {
                self.update(key, |r| {
                    r.stats.completed_at = Some(now_secs());
                    r.stats.state = ImageState::Loading;
                });
                return Ok(wanted.iter().flat_map(|w| w.torrents.clone()).collect());
            }
            // Stalled?
            let torrents = wanted.iter().flat_map(|w| &w.torrents);
            let (mark, checking) = progress(d.announced_len(), torrents, "a chunk's torrent")?;
            if watch.stalled(mark, checking) {
                let limit = watch.limit();
                self.records().stalled += 1;
                return Err(format!(
                    "download stalled: no data for {limit:?} ({} bytes of the missing blobs \
                     verified); stopped, its --max-torrents slot freed",
                    mark.1
                ));
            }
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        return Err("the distribution's record went away".into());
                    }
                }
                _ = ticks.tick() => {}
            }
        }
    }

    /// Starts (or finds) the torrent of chunk `j` of blob `digest`: its `.torrent` fetched
    /// from the announcing agent and checked against the chunk rule and the announced
    /// info-hash, its bytes written into the blob's partial file in the store.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::distributor) async fn add_chunk(
        &self,
        path: &BlobPath,
        api: SocketAddr,
        seeders: &[SocketAddr],
        digest: &Digest,
        size: u64,
        j: usize,
        info_hash: &str,
    ) -> Result<TorrentHandle, String> {
        let ranges = chunks::ranges(size);
        let (offset, len) = *ranges
            .get(j)
            .ok_or_else(|| format!("blob {digest}: chunk {j} of {}", ranges.len()))?;
        let bytes = self
            .client
            .torrent(api, info_hash)
            .await
            .map_err(|e| format!("fetching the torrent of {digest} chunk {j}: {e}"))?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("bad torrent: {e}"))?;
        let (piece, _) = chunks::geometry(size);
        if meta.info_hash().to_hex() != info_hash
            || meta.total_len() != len
            || meta.name() != chunks::name(digest, j)
            || meta.lengths().piece_len() != piece
        {
            return Err(format!(
                "the torrent of {digest} chunk {j} does not match its announcement and the chunk rule"
            ));
        }
        if let Some(existing) = self.session.torrent(&meta.info_hash()) {
            return Ok(existing);
        }
        let partial = path.store.partial_path(digest);
        let from = if partial.exists() {
            StartFrom::Check
        } else {
            StartFrom::Empty
        };
        let storage = FileStorage::create_range(&partial, offset, len)
            .map_err(|e| format!("creating {}: {e}", partial.display()))?;
        self.session
            .add_torrent(
                AddTorrent::new(meta, Arc::new(storage), from).with_peers(seeders.to_vec()),
            )
            .await
            .map_err(|e| format!("adding a chunk's torrent: {e}"))
    }

    /// The platform this node takes out of indexes.
    fn platform(&self) -> manifest::Platform {
        self.blob_path()
            .map_or_else(manifest::host_platform, |p| p.platform)
    }
}

/// The announced manifests, each decoded and checked against its digest.
fn decode_manifests(set: &BlobSet) -> Result<Vec<(Digest, String, Vec<u8>)>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    set.manifests
        .iter()
        .map(|m| {
            let digest = Digest::parse(&m.digest).map_err(|e| e.to_string())?;
            let bytes = b64
                .decode(&m.content)
                .map_err(|e| format!("manifest {digest}: not base64: {e}"))?;
            if Digest::of(&bytes) != digest {
                return Err(format!(
                    "manifest {digest}: content does not match its digest"
                ));
            }
            Ok((digest, m.media_type.clone(), bytes))
        })
        .collect()
}
