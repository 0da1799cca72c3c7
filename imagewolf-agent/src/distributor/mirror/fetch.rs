//! The mirror's flows (see the module docs): a tag or manifest resolved upstream, a blob
//! fetched once per node (the store, the cluster, else the upstream), and what this node
//! answers as a coordinator or a source.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagewolf_bt::{AddTorrent, StartFrom, TorrentHandle};
use tokio::sync::watch;

use super::lease::{self, Grant};
use super::stream::{self, Progress};
use super::{lock, Mirror, Origin};
use crate::distributor::blobs::{chunks, intake, BlobPath};
use crate::distributor::Distributor;
use crate::endpoint::{BlobSource, Miss, Upstream};
use crate::image::{BlobOffer, ImageRef, LeaseAnswer};
use crate::registry::manifest::Descriptor;
use crate::store::{Digest, StoreError};

/// How often a node fetching from another one asks it for new chunks.
const OFFER_POLL: Duration = Duration::from_millis(100);
/// A fetch from another node with no progress this long (no byte here, no chunk read by the
/// source) falls back to the upstream.
const PEER_STALL: Duration = Duration::from_secs(60);
/// Failed calls in a row to the source before falling back to the upstream.
const SOURCE_FAILURES: u32 = 3;
/// Chunk torrents of one blob downloading at once.
const CHUNKS_IN_FLIGHT: usize = 2;
/// How long a download waits for another one's commit of the same blob.
const BUSY_WAIT: Duration = Duration::from_secs(60);
/// How often lingering offers are looked at.
const JANITOR_EVERY: Duration = Duration::from_secs(30);

impl Distributor {
    /// The endpoint's miss handler (`Content::fetch`): brings `miss` into the store.
    pub(crate) async fn mirror_fetch(
        self: &Arc<Self>,
        upstream: Upstream<'_>,
        miss: Miss<'_>,
    ) -> bool {
        let Some((path, mirror, image)) = self.mirror_for(upstream) else {
            return false;
        };
        let result = match miss {
            Miss::Tag(tag) => {
                // The tag is kept under the name the runtime asked with (containerd's `ns`).
                let key = upstream.registry.unwrap_or(&image.registry).to_owned();
                self.mirror_tag(path, mirror, &image, tag, &key).await
            }
            Miss::Manifest(digest) => {
                self.mirror_manifest(path, mirror, &image, digest, None)
                    .await
            }
            Miss::Blob(digest) => match self.start_blob(path, mirror, &image, digest).await {
                Ok((_, _, mut progress)) => wait_done(&mut progress).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                mirror.stats.misses.fetch_add(1, Ordering::Relaxed);
                tracing::info!(registry = %image.registry, repository = %image.repository, ?miss, "mirror: not served ({e}); the runtime goes to its next host");
                false
            }
        }
    }

    /// The endpoint's blob miss handler (`Content::fetch_blob`): the blob's fetch started
    /// (or joined), and the blob handed over as soon as its first bytes are in place, read
    /// while the rest arrives (`stream.rs`). `None`: not served, the runtime goes on to its
    /// next host.
    pub(crate) async fn mirror_fetch_blob(
        self: &Arc<Self>,
        upstream: Upstream<'_>,
        digest: &str,
    ) -> Option<BlobSource> {
        let (path, mirror, image) = self.mirror_for(upstream)?;
        let started = self.start_blob(path, mirror, &image, digest).await;
        let failed = |e: String| {
            mirror.stats.misses.fetch_add(1, Ordering::Relaxed);
            tracing::info!(registry = %image.registry, repository = %image.repository, digest, "mirror: blob not served ({e}); the runtime goes to its next host");
            None
        };
        let (d, size, mut progress) = match started {
            Ok(started) => started,
            Err(e) => return failed(e),
        };
        let first = progress
            .wait_for(|p| p.done.is_some() || p.ready > 0)
            .await
            .map(|p| p.done.clone());
        match first {
            Ok(Some(Ok(()))) | Err(_) if path.store.contains(&d) => path
                .store
                .open_blob(&d)
                .map(|(file, len)| BlobSource::Stored(file, len)),
            Ok(Some(Err(e))) => failed(e),
            Err(_) => failed("the fetch went away".to_owned()),
            Ok(_) => Some(BlobSource::Arriving(Arc::new(stream::ArrivingBlob::new(
                d,
                size,
                Arc::clone(&path.store),
                progress,
            )))),
        }
    }

    /// The path, the mirror and the image a pull for `upstream` is for, when mirror mode
    /// is on and `--allow` names it.
    fn mirror_for(&self, upstream: Upstream<'_>) -> Option<(&BlobPath, &Mirror, ImageRef)> {
        let (path, mirror) = self.mirror()?;
        let registry = mirror.upstream_registry(upstream.registry);
        if !self
            .config
            .allow
            .allows_name(&registry, upstream.repository)
        {
            mirror.stats.misses.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%registry, repository = upstream.repository, "mirror: not in --allow; not fetched");
            return None;
        }
        let image = ImageRef {
            registry,
            repository: upstream.repository.to_owned(),
            tag: None,
            digest: None,
        };
        Some((path, mirror, image))
    }

    /// The fetch of blob `digest` of `image`, started or joined (with its image's other
    /// blobs): the digest, the blob's size, and its progress.
    async fn start_blob(
        self: &Arc<Self>,
        path: &BlobPath,
        mirror: &Mirror,
        image: &ImageRef,
        digest: &str,
    ) -> Result<(Digest, u64, watch::Receiver<Progress>), String> {
        let d = Digest::parse(digest).map_err(|e| e.to_string())?;
        let Some(origin) = self.blob_origin(path, mirror, image, &d).await else {
            return Err(format!("blob {d}: no manifest fetched here names it, and the upstream does not know its size"));
        };
        self.prefetch_siblings(path, mirror, &d, &origin);
        let size = origin.size;
        let progress = self.mirror_blob_progress(d.clone(), origin);
        Ok((d, size, progress))
    }

    /// The registry-native path and its mirror, when mirror mode is on.
    pub(crate) fn mirror(&self) -> Option<(&BlobPath, &Mirror)> {
        let path = self.blob_path()?;
        Some((path, path.mirror.as_ref()?))
    }

    fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.config.advertise, self.config.api_port)
    }

    fn bt_addr(&self) -> SocketAddr {
        SocketAddr::new(self.config.advertise, self.session.listen_addr().port())
    }

    /// Tag `tag` resolved upstream with a `HEAD` (not a pull for Docker Hub's limits); its
    /// manifest read only when the store lacks it; the tag kept under `tag_key`.
    async fn mirror_tag(
        self: &Arc<Self>,
        path: &BlobPath,
        mirror: &Mirror,
        image: &ImageRef,
        tag: &str,
        tag_key: &str,
    ) -> Result<(), String> {
        let named = path
            .registry
            .tag_digest(image, tag)
            .await
            .map_err(|e| e.to_string())?;
        let Some(digest) = named.and_then(|d| Digest::parse(&d).ok()) else {
            return self
                .mirror_manifest(path, mirror, image, tag, Some(tag_key))
                .await;
        };
        mirror
            .stats
            .manifests_upstream
            .fetch_add(1, Ordering::Relaxed);
        if path.store.manifest_media_type(&digest).is_none() {
            self.mirror_manifest(path, mirror, image, digest.as_str(), None)
                .await?;
        } else {
            self.note_stored_manifest(path, mirror, image, &digest);
        }
        path.store.set_tag(tag_key, &image.repository, tag, &digest);
        Ok(())
    }

    /// A manifest the store already had, resolved again: its blobs are remembered as if it
    /// had just been read (the runtime may be about to fetch those it lacks).
    fn note_stored_manifest(
        &self,
        path: &BlobPath,
        mirror: &Mirror,
        image: &ImageRef,
        digest: &Digest,
    ) {
        let Some(media_type) = path.store.manifest_media_type(digest) else {
            return;
        };
        let Ok(Some(bytes)) = path.store.read_small(digest, crate::registry::MAX_MANIFEST) else {
            return;
        };
        if let Ok(parsed) =
            crate::registry::manifest::parse("stored manifest", &bytes, Some(&media_type))
        {
            mirror.note_manifest(image, digest, &parsed);
        }
    }

    /// A tag or digest of `image`'s repository read from the upstream, checked, stored (and
    /// the tag set under `tag_key`); an image manifest's blobs are remembered, to be
    /// fetched together once the runtime asks for one of them (a runtime that only resolves
    /// the tag, because it has the image, costs no blob).
    async fn mirror_manifest(
        self: &Arc<Self>,
        path: &BlobPath,
        mirror: &Mirror,
        image: &ImageRef,
        by: &str,
        tag_key: Option<&str>,
    ) -> Result<(), String> {
        let (raw, parsed) = path
            .registry
            .raw_manifest(image, by)
            .await
            .map_err(|e| e.to_string())?;
        mirror
            .stats
            .manifests_upstream
            .fetch_add(1, Ordering::Relaxed);
        let digest = Digest::parse(&raw.digest).map_err(|e| e.to_string())?;
        path.store
            .put_bytes(&digest, &raw.bytes)
            .await
            .map_err(|e| format!("storing manifest {digest}: {e}"))?;
        path.store.set_manifest_media_type(&digest, &raw.media_type);
        if let Some(key) = tag_key {
            path.store.set_tag(key, &image.repository, by, &digest);
        }
        mirror.note_manifest(image, &digest, &parsed);
        Ok(())
    }

    /// Where blob `d` comes from: remembered from a manifest, else its size asked of the
    /// upstream (`HEAD`).
    async fn blob_origin(
        &self,
        path: &BlobPath,
        mirror: &Mirror,
        image: &ImageRef,
        d: &Digest,
    ) -> Option<Origin> {
        if let Some(origin) = mirror.origin_of(d) {
            return Some(origin);
        }
        let size = path.registry.blob_size(image, d.as_str()).await.ok()?;
        let origin = Origin {
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            size,
            media_type: "application/octet-stream".to_owned(),
            manifest: None,
        };
        mirror.remember(d.clone(), origin.clone());
        Some(origin)
    }

    /// The runtime asked for blob `d`, the first of its image's: the image's other blobs the
    /// store lacks start too, so they all flow at once (runtimes fetch 3 at a time).
    fn prefetch_siblings(
        self: &Arc<Self>,
        path: &BlobPath,
        mirror: &Mirror,
        d: &Digest,
        origin: &Origin,
    ) {
        let Some(manifest) = &origin.manifest else {
            return;
        };
        for sibling in mirror.take_pull(manifest) {
            if sibling == *d || path.store.contains(&sibling) {
                continue;
            }
            let Some(origin) = mirror.origin_of(&sibling) else {
                continue;
            };
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let _ = this.mirror_blob(sibling, origin).await;
            });
        }
    }

    /// Blob `d` into the store, once per node however many requests ask at once.
    async fn mirror_blob(self: &Arc<Self>, d: Digest, origin: Origin) -> Result<(), String> {
        wait_done(&mut self.mirror_blob_progress(d, origin)).await
    }

    /// The progress of this node's fetch of blob `d`, started unless it runs (in a task of
    /// its own: a runtime that hangs up does not cancel it).
    fn mirror_blob_progress(
        self: &Arc<Self>,
        d: Digest,
        origin: Origin,
    ) -> watch::Receiver<Progress> {
        let Some((path, mirror)) = self.mirror() else {
            let (_, rx) = watch::channel(Progress {
                done: Some(Err("mirror mode is off".to_owned())),
                ..Progress::default()
            });
            return rx;
        };
        if path.store.contains(&d) {
            let (_, rx) = watch::channel(Progress {
                done: Some(Ok(())),
                ..Progress::default()
            });
            return rx;
        }
        let mut inflight = lock(&mirror.inflight);
        if let Some(rx) = inflight.get(&d) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(Progress::default());
        inflight.insert(d.clone(), rx.clone());
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let result = this.mirror_blob_run(&d, &origin, &tx).await;
            if let Err(e) = &result {
                tracing::warn!(digest = %d, "mirror: blob not fetched: {e}");
            }
            if let Some((_, mirror)) = this.mirror() {
                lock(&mirror.inflight).remove(&d);
            }
            tx.send_modify(|p| p.done = Some(result));
        });
        rx
    }

    /// One node's fetch of blob `d`: ask its coordinator who reads it, fetch it from there
    /// over the swarm, else read it from the upstream here.
    async fn mirror_blob_run(
        self: &Arc<Self>,
        d: &Digest,
        origin: &Origin,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let (path, mirror) = self.mirror().ok_or("mirror mode is off")?;
        let budget = path.store.stats().budget;
        if origin.size > budget {
            return Err(format!(
                "{} bytes, larger than this node's whole store budget ({budget} bytes, --cache-size)",
                origin.size
            ));
        }
        if path.is_expected(d) {
            // A distribution brings it: wait for that rather than reading it again.
            return if path
                .store
                .wait_for(d, crate::distributor::blobs::BLOB_WAIT)
                .await
            {
                Ok(())
            } else {
                Err("a distribution was bringing it, and did not".to_owned())
            };
        }
        let _pin = path.store.pin([d.clone()]);
        let me = self.api_addr();
        let mut agents = self.other_agents();
        agents.push(me);
        let coordinator = lease::coordinator(d, &agents).unwrap_or(me);
        let grant = if coordinator == me {
            self.grant(path, mirror, d, me)
        } else {
            match self.client.lease(coordinator, d.as_str(), me).await {
                Ok(LeaseAnswer {
                    from: Some(from), ..
                }) => from.parse().map_or(Grant::Fetch, Grant::From),
                Ok(_) => Grant::Fetch,
                Err(e) => {
                    tracing::info!(%d, %coordinator, "mirror: the blob's coordinator did not answer ({e}); reading the upstream");
                    Grant::Fetch
                }
            }
        };
        match grant {
            Grant::From(source) if source != me => {
                match self
                    .mirror_download(path, mirror, d, origin.size, source, progress)
                    .await
                {
                    Ok(()) => {
                        mirror
                            .stats
                            .blobs_from_peers
                            .fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(e) => {
                        mirror.stats.peer_fallbacks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%d, %source, "mirror: fetching from the cluster failed ({e}); reading the upstream");
                    }
                }
            }
            _ => {}
        }
        self.mirror_read_upstream(path, mirror, d, origin, progress)
            .await
    }

    /// This node, `d`'s coordinator, says who reads it for `requester`: this node when it
    /// has or offers the blob (seeding it from the store if need be), else the lease table.
    fn grant(
        self: &Arc<Self>,
        path: &BlobPath,
        mirror: &Mirror,
        d: &Digest,
        requester: SocketAddr,
    ) -> Grant {
        let me = self.api_addr();
        if mirror.offer(d).is_some_and(|o| !o.failed) {
            return Grant::From(me);
        }
        if let Some(size) = path.store.len_of(d) {
            if mirror.start_offer(d, size, self.bt_addr()) {
                let this = Arc::clone(self);
                let digest = d.clone();
                tokio::spawn(async move { this.offer_stored(&digest, size).await });
                return Grant::From(me);
            }
        }
        lock(&mirror.leases).ask(d, requester, Instant::now())
    }

    /// Answers another agent's lease request for blob `digest` (`POST /v1/leases/`).
    pub fn mirror_lease(
        self: &Arc<Self>,
        digest: &str,
        requester: SocketAddr,
    ) -> Option<LeaseAnswer> {
        let (path, mirror) = self.mirror()?;
        let d = Digest::parse(digest).ok()?;
        Some(match self.grant(path, mirror, &d, requester) {
            Grant::Fetch => LeaseAnswer {
                fetch: true,
                from: None,
            },
            Grant::From(a) => LeaseAnswer {
                fetch: false,
                from: Some(a.to_string()),
            },
        })
    }

    /// What this node offers of blob `digest` (`GET /v1/blobs/`).
    pub fn mirror_offer(&self, digest: &str) -> Option<BlobOffer> {
        let (_, mirror) = self.mirror()?;
        mirror.offer(&Digest::parse(digest).ok()?)
    }

    /// Seeds blob `d` of the store for others (its chunks hashed first).
    async fn offer_stored(&self, d: &Digest, size: u64) {
        let Some((path, mirror)) = self.mirror() else {
            return;
        };
        let result = async {
            for (meta, storage) in
                intake::stored_chunks(path, d, size, &self.blob_trackers(d)).await?
            {
                let len = meta.total_len();
                let handle = self.seed(meta, storage).await?;
                mirror.offer_chunk(d, handle, len);
            }
            Ok::<_, String>(())
        }
        .await;
        if let Err(e) = &result {
            tracing::warn!(%d, "mirror: could not seed a stored blob: {e}");
        }
        mirror.end_offer(d, result.is_ok());
    }

    /// The torrent of a complete chunk, seeded (the one already running if any).
    async fn seed(
        &self,
        meta: imagewolf_bt::metainfo::Metainfo,
        storage: imagewolf_bt::storage::FileStorage,
    ) -> Result<TorrentHandle, String> {
        if let Some(existing) = self.session.torrent(&meta.info_hash()) {
            return Ok(existing);
        }
        self.session
            .add_torrent(AddTorrent::new(
                meta,
                Arc::new(storage),
                StartFrom::Complete,
            ))
            .await
            .map_err(|e| format!("seeding: {e}"))
    }

    /// Reads blob `d` from the upstream into the store, seeding (and offering) each chunk as
    /// it lands.
    async fn mirror_read_upstream(
        &self,
        path: &BlobPath,
        mirror: &Mirror,
        d: &Digest,
        origin: &Origin,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let image = ImageRef {
            registry: origin.registry.clone(),
            repository: origin.repository.clone(),
            tag: None,
            digest: None,
        };
        let blob = Descriptor {
            media_type: origin.media_type.clone(),
            digest: d.to_string(),
            size: origin.size,
        };
        // Offered before the turn comes: the other nodes wait for its chunks meanwhile.
        let offering = mirror.start_offer(d, origin.size, self.bt_addr());
        let result = async {
            let _turn = mirror
                .upstream_reads
                .acquire()
                .await
                .map_err(|_| "the mirror is shutting down".to_owned())?;
            let _pull = self.intake.pulling();
            let trackers = self.blob_trackers(d);
            let counter = self.intake.counter();
            let mut reading =
                intake::BlobIntake::open(path, &image, &blob, d, &trackers, counter).await?;
            progress.send_modify(|p| p.restart(reading.file().to_owned()));
            while let Some((meta, storage)) = reading.next_chunk().await? {
                let len = meta.total_len();
                let written = reading.written();
                progress.send_modify(|p| p.ready = written);
                let handle = self.seed(meta, storage).await?;
                if offering {
                    mirror.offer_chunk(d, handle, len);
                }
            }
            reading.commit().await
        }
        .await;
        mirror.end_offer(d, result.is_ok());
        if result.is_ok() {
            mirror.stats.blobs_upstream.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%d, size = origin.size, registry = %origin.registry, "mirror: blob read from the upstream");
        }
        result
    }

    /// Fetches blob `d` over the swarm from the chunks `source` offers, and commits it.
    async fn mirror_download(
        &self,
        path: &BlobPath,
        mirror: &Mirror,
        d: &Digest,
        size: u64,
        source: SocketAddr,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let total = chunks::ranges(size).len();
        progress.send_modify(|p| p.restart(path.store.partial_path(d)));
        let mut torrents: Vec<TorrentHandle> = Vec::new();
        let mut failures = 0;
        let mut last = (0u64, 0usize);
        let mut progressed = Instant::now();
        let mut offer: Option<BlobOffer> = None;
        let result = loop {
            // Ask the source for its chunks until it has listed them all.
            if !offer.as_ref().is_some_and(|o| o.complete) {
                match self.client.blob_offer(source, d.as_str()).await {
                    Ok(o) => {
                        failures = 0;
                        offer = Some(o);
                    }
                    Err(e) => {
                        failures += 1;
                        if failures >= SOURCE_FAILURES {
                            break Err(format!("the source does not answer: {e}"));
                        }
                        tokio::time::sleep(OFFER_POLL).await;
                        continue;
                    }
                }
            }
            let Some(offer) = &offer else { continue };
            if offer.failed {
                break Err("the source could not read it".to_owned());
            }
            if offer.size != size || offer.chunks.len() > total {
                break Err(format!(
                    "the source offers {} bytes in {} chunks",
                    offer.size,
                    offer.chunks.len()
                ));
            }
            let Ok(seeder) = offer.seeder.parse::<SocketAddr>() else {
                break Err("the source's seeder is not ip:port".to_owned());
            };
            let mut in_flight = torrents.iter().filter(|t| !t.stats().is_complete()).count();
            while in_flight < CHUNKS_IN_FLIGHT && torrents.len() < offer.chunks.len() {
                let j = torrents.len();
                match self
                    .add_chunk(
                        path,
                        source,
                        &[seeder],
                        d,
                        size,
                        j,
                        &offer.chunks[j].info_hash,
                    )
                    .await
                {
                    Ok(handle) => torrents.push(handle),
                    Err(e) => return self.abandon(path, d, torrents, Err(e)).await,
                }
                in_flight += 1;
            }
            // The chunks complete from the start are the runtime's to read.
            let ready: u64 = torrents
                .iter()
                .take_while(|t| t.stats().is_complete())
                .map(|t| t.metainfo().total_len())
                .sum();
            progress.send_if_modified(|p| {
                let grew = ready > p.ready;
                p.ready = p.ready.max(ready);
                grew
            });
            if torrents.len() == total && torrents.iter().all(|t| t.stats().is_complete()) {
                break match path.store.commit_partial(d, size).await {
                    Ok(()) => Ok(()),
                    Err(StoreError::Busy { .. }) if path.store.wait_for(d, BUSY_WAIT).await => {
                        Ok(())
                    }
                    Err(e) => Err(format!("{e}; not stored")),
                };
            }
            // Progress: bytes here, or chunks the source read meanwhile.
            let now = (
                torrents.iter().map(|t| t.stats().downloaded).sum::<u64>(),
                offer.chunks.len(),
            );
            // Every chunk listed so far is here: the source is reading the next from its
            // upstream (or waiting for its turn), whose own timeouts bound that.
            let waiting_on_source = !offer.complete
                && torrents.len() == offer.chunks.len()
                && torrents.iter().all(|t| t.stats().is_complete());
            if now != last || waiting_on_source {
                last = now;
                progressed = Instant::now();
            } else if progressed.elapsed() >= PEER_STALL {
                break Err(format!("no progress for {PEER_STALL:?}"));
            }
            tokio::time::sleep(OFFER_POLL).await;
        };
        match result {
            Ok(()) => {
                // Seed what was fetched, for the nodes that come next.
                if mirror.start_offer(d, size, self.bt_addr()) {
                    for t in torrents {
                        let len = t.metainfo().total_len();
                        mirror.offer_chunk(d, t, len);
                    }
                    mirror.end_offer(d, true);
                }
                Ok(())
            }
            Err(e) => self.abandon(path, d, torrents, Err(e)).await,
        }
    }

    /// A fetch from the cluster gave up: its torrents stop (unless something else runs
    /// them) and its partial file goes, so the upstream read starts clean.
    async fn abandon(
        &self,
        path: &BlobPath,
        d: &Digest,
        torrents: Vec<TorrentHandle>,
        result: Result<(), String>,
    ) -> Result<(), String> {
        for t in &torrents {
            self.remove_unless_shared("", t).await;
        }
        let _ = tokio::fs::remove_file(path.store.partial_path(d)).await;
        result
    }

    /// Stops the torrents of offers that lingered unasked (`super::OFFER_LINGER`), every
    /// [`JANITOR_EVERY`], for as long as the distributor lives.
    pub(crate) fn spawn_mirror_janitor(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(JANITOR_EVERY).await;
                let Some(this) = weak.upgrade() else { return };
                let Some((_, mirror)) = this.mirror() else {
                    return;
                };
                for t in mirror.expired_offers(Instant::now()) {
                    this.remove_unless_shared("", &t).await;
                }
            }
        });
    }
}

/// Waits for the end of a blob's fetch.
async fn wait_done(progress: &mut watch::Receiver<Progress>) -> Result<(), String> {
    let waited = progress
        .wait_for(|p| p.done.is_some())
        .await
        .map(|p| p.done.clone());
    match waited {
        Ok(Some(done)) => done,
        _ => progress
            .borrow()
            .done
            .clone()
            .unwrap_or_else(|| Err("the fetch went away".to_owned())),
    }
}
