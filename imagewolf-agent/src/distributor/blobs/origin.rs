//! The origin's side of the registry-native path: resolve the image over the registry API,
//! read each blob the store lacks into it (a chunk at a time, each chunk seeded and
//! announced as soon as it is on disk), seed the blobs the store already had, and have this
//! node's runtime pull from the endpoint meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, StartFrom, TorrentHandle};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::intake;
use crate::distributor::{now_secs, Distributor};
use crate::image::{Blob, BlobSet, Chunk, Distribution, ImageRef, ManifestDoc};
use crate::registry::manifest::Descriptor;
use crate::registry::BlobPlan;
use crate::stats::{BlobCounts, ImageState};
use crate::store::Digest;

impl Distributor {
    /// Resolves `image` for the registry-native path, with the pull's retries. `None` when
    /// the path is off or the registry API cannot read this image (https, credentials, a
    /// media type it does not take): the tarball path takes it then.
    pub(in crate::distributor) async fn blob_plan(
        &self,
        key: &str,
        image: &ImageRef,
    ) -> Result<Option<BlobPlan>, String> {
        let Some(path) = self.blob_path() else {
            return Ok(None);
        };
        let attempts = Some(self.config.retry.pull_attempts);
        self.with_retries(key, "pull", attempts, || async {
            match path.registry.pull_plan_for(image, &path.platforms).await {
                Ok(plan) => Ok(Some(plan)),
                Err(e) if e.wants_fallback() => {
                    tracing::info!(image = %image, "registry-native path not possible ({e}); the tarball path takes it");
                    Ok(None)
                }
                Err(e) => Err(crate::source::SourceError::from(e)),
            }
        })
        .await
    }

    /// The origin's side of the registry-native path (see the module docs).
    pub(in crate::distributor) async fn originate_blobs(
        self: &Arc<Self>,
        key: &str,
        image: &ImageRef,
        plan: BlobPlan,
        slot: OwnedSemaphorePermit,
    ) -> Result<(), String> {
        let path = self.blob_path().ok_or("the registry-native path is off")?;
        let store = &path.store;
        let blobs = plan.blobs();
        let digests: Vec<Digest> = blobs
            .iter()
            .map(|b| Digest::parse(&b.digest).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let pushed = Digest::parse(&plan.pushed).map_err(|e| e.to_string())?;
        let mut pinned = digests.clone();
        for m in &plan.manifests {
            pinned.push(Digest::parse(&m.digest).map_err(|e| e.to_string())?);
        }
        let _pin = store.pin(pinned);
        for m in &plan.manifests {
            let d = Digest::parse(&m.digest).map_err(|e| e.to_string())?;
            store
                .put_bytes(&d, &m.bytes)
                .await
                .map_err(|e| format!("storing manifest {d}: {e}"))?;
            store.set_manifest_media_type(&d, &m.media_type);
        }
        if let Some(tag) = &image.tag {
            store.set_tag(&image.registry, &image.repository, tag, &pushed);
        }
        // The image id here: this node's platform's config (the first image is the
        // origin's own platform when the index has it).
        let image_id = plan.images[0].config.digest.clone();
        let total: u64 = blobs.iter().map(|b| b.size).sum();
        let missing: Vec<Digest> = digests
            .iter()
            .filter(|d| !store.contains(d))
            .cloned()
            .collect();
        let counts = BlobCounts {
            total: blobs.len() as u32,
            present: (blobs.len() - missing.len()) as u32,
            bytes_needed: blobs
                .iter()
                .zip(&digests)
                .filter(|(_, d)| missing.contains(d))
                .map(|(b, _)| b.size)
                .sum(),
        };
        let in_runtime = self.loader.has_image(&image_id).await.unwrap_or(false);
        let bt_addr = SocketAddr::new(self.config.advertise, self.session.listen_addr().port());
        let api = SocketAddr::new(self.config.advertise, self.config.api_port);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut d = Distribution {
            image: image.clone(),
            image_id: image_id.clone(),
            id: crate::distributor::origin::distribution_id(key, &bt_addr, now_secs()),
            size_hint: total,
            segments: Vec::new(),
            sha256: None,
            seeders: vec![bt_addr.to_string()],
            created: now_secs() as u64,
            signature: None,
            blobs: Some(BlobSet {
                api: api.to_string(),
                manifest: pushed.to_string(),
                manifests: plan
                    .manifests
                    .iter()
                    .map(|m| ManifestDoc {
                        digest: m.digest.clone(),
                        media_type: m.media_type.clone(),
                        content: b64.encode(&m.bytes),
                    })
                    .collect(),
                blobs: blobs
                    .iter()
                    .map(|b| Blob {
                        digest: b.digest.clone(),
                        size: b.size,
                        chunks: Vec::new(),
                    })
                    .collect(),
                complete: false,
            }),
        };
        {
            let mut records = self.records();
            records.set_id(key, &d.id);
            if let Some(r) = records.by_key.get_mut(key) {
                r.stats.image_id = Some(image_id.clone());
                r.stats.size = Some(total);
                r.stats.blobs = Some(counts);
            }
        }
        // This node's runtime pulls from the endpoint while the blobs arrive.
        let _arriving = path.expect(&missing);
        let own_load = async {
            // An image the runtime has already is still pulled from the endpoint when it
            // can be (the manifest only): it gets the name and digest just pushed.
            if in_runtime && !self.loader.pulls_from_endpoint() {
                return Ok(());
            }
            self.load_blob_image(key, path, image, &pushed, &plan.images[0])
                .await
        };
        let spread = async {
            let run = self.start_announcing();
            let result = self
                .spread_blobs(key, image, &blobs, &digests, &mut d, &run.announce)
                .await;
            self.finish_announcing(key, run).await;
            result
        };
        let (spread, loaded) = futures::future::join(spread, own_load).await;
        spread?;
        loaded?;
        // No tarball was written; nothing is there to delete.
        self.origin_done(key, slot, self.origin_tarball(key));
        Ok(())
    }

    /// Seeds every blob, reading those the store lacks from the registry; announces each
    /// chunk as it is seeded, then the whole as complete.
    async fn spread_blobs(
        &self,
        key: &str,
        image: &ImageRef,
        blobs: &[Descriptor],
        digests: &[Digest],
        d: &mut Distribution,
        announce: &watch::Sender<Option<Distribution>>,
    ) -> Result<(), String> {
        let path = self.blob_path().ok_or("the registry-native path is off")?;
        for (i, (blob, digest)) in blobs.iter().zip(digests).enumerate() {
            let tracker = self.blob_trackers(digest);
            if path.store.contains(digest) {
                for (meta, storage) in
                    intake::stored_chunks(path, digest, blob.size, &tracker).await?
                {
                    self.seed_chunk(key, i, meta, storage, d, announce).await?;
                }
                continue;
            }
            let counter = self.intake.counter();
            let mut reading =
                intake::BlobIntake::open(path, image, blob, digest, &tracker, counter).await?;
            while let Some((meta, storage)) = reading.next_chunk().await? {
                self.seed_chunk(key, i, meta, storage, d, announce).await?;
            }
            reading.commit().await?;
        }
        if let Some(set) = &mut d.blobs {
            set.complete = true;
        }
        self.update(key, |r| {
            r.stats.state = ImageState::Seeding;
            r.stats.completed_at = Some(now_secs());
        });
        self.publish(key, d, announce);
        tracing::info!(key, blobs = blobs.len(), "every blob seeding");
        Ok(())
    }

    /// Seeds one chunk of blob `i` and announces it.
    async fn seed_chunk(
        &self,
        key: &str,
        i: usize,
        meta: Metainfo,
        storage: FileStorage,
        d: &mut Distribution,
        announce: &watch::Sender<Option<Distribution>>,
    ) -> Result<(), String> {
        let chunk = Chunk {
            info_hash: meta.info_hash().to_hex(),
            len: meta.total_len(),
        };
        let handle: TorrentHandle = match self.session.torrent(&meta.info_hash()) {
            // Another image in flight seeds the same blob already.
            Some(existing) => existing,
            None => self
                .session
                .add_torrent(
                    AddTorrent::new(meta, Arc::new(storage), StartFrom::Complete).holding_spread(),
                )
                .await
                .map_err(|e| format!("seeding: {e}"))?,
        };
        if let Some(blob) = d.blobs.as_mut().and_then(|s| s.blobs.get_mut(i)) {
            blob.chunks.push(chunk);
        }
        self.publish(key, d, announce);
        self.update(key, |r| r.add_shared_torrent(handle));
        Ok(())
    }
}
