//! Every other agent's side: skip if present, download the segments as they are announced,
//! feed the runtime what is verified while the download runs, release the end once the
//! SHA-256 matches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, StartFrom, TorrentHandle};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::feed::{verified_chunks, PrefixHasher, Readable};
use super::stall::{progress, StallWatch};
use super::{now_secs, Distributor, Retryable};
use crate::image::{Distribution, Segment};
use crate::stats::ImageState;

/// Segments a receiver downloads at once (the next starts when one completes). Each
/// segment's torrent holds up to `PIECE_MEMORY_PER_SEGMENT` of pieces in progress, so this
/// bounds a download's memory however many segments are announced (a late joiner sees all
/// of them at once). Starting the next one early, when one is in its last quarter, measured
/// within the bench's noise and took the memory run's peak RSS from 44 to 54-57 MiB; four
/// at once completed them together rather than in order, which delays the in-order loader
/// (docs/bench/e2e-notes.md).
pub(super) const SEGMENTS_IN_FLIGHT: usize = 2;

/// How often a download looks at its torrents (completed segments are passed on to the
/// loader at most this late).
const POLL_EVERY: Duration = Duration::from_millis(50);

impl Distributor {
    /// Every other agent's side: download, verify, load. `updates` carries the latest
    /// announcement of the distribution (it grows while the origin reads the image).
    pub(super) async fn receive(
        self: &Arc<Self>,
        key: &str,
        mut updates: watch::Receiver<Distribution>,
    ) -> Result<(), String> {
        let d = updates.borrow_and_update().clone();
        if d.blobs.is_some() {
            return self.receive_blobs(key, updates).await;
        }
        let present = self.loader.has_image(&d.image_id).await.unwrap_or(false);
        if present {
            tracing::info!(image = %d.image, "already present here; skipping the download");
            self.update(key, |r| {
                r.stats.state = ImageState::Loaded;
                r.stats.loaded_at = Some(now_secs());
            });
            // Nothing to seed; a partial tarball of an earlier run is of no use now.
            self.finish(key, true);
            return Ok(());
        }
        let slot = self.take_slot(key, ImageState::Downloading).await;
        let path = self.received_tarball(&d.id);
        let (readable_tx, readable) =
            watch::channel(Readable::new(self.loader.loads_layers_ahead()));
        // The runtime reads what is verified while the download runs (see feed.rs).
        let load = async {
            let started = Instant::now();
            let mut first = true;
            self.with_retries(key, "load", None, || {
                // Only the first attempt leaves out the layers loaded ahead.
                let skipping = std::mem::replace(&mut first, false);
                let readable = readable.clone();
                let path = path.clone();
                async move {
                    if let Some(why) = readable.borrow().failed.clone() {
                        return Err(LoadError::DownloadFailed(why));
                    }
                    let chunks = verified_chunks(path.clone(), readable, skipping);
                    let tarball = Box::pin(tokio_util::io::StreamReader::new(chunks));
                    self.loader
                        .load_streamed(tarball, &path)
                        .await
                        .map_err(LoadError::Loader)
                }
            })
            .await?;
            Ok::<_, String>(started.elapsed())
        };
        let download = async {
            // Layers are loaded ahead while later ones download (see preload.rs); the end
            // of the archive is released to the real load only once that is done, so the
            // real load finds them.
            let (result, preloaded) = tokio::join!(
                self.download(key, &mut updates, &path, &readable_tx),
                self.preload_layers(key, &path, &d.image_id, &readable_tx)
            );
            // What the archive says it holds must be what was announced (archive_check.rs).
            let result = match result {
                Ok((torrents, len)) if self.loader.registers_names() => {
                    let (path, announced) = (path.clone(), d.clone());
                    tokio::task::spawn_blocking(move || {
                        super::archive_check::check_archive(&path, len, &announced)
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                    .map(|()| (torrents, len))
                }
                other => other,
            };
            if let Err(e) = &result {
                tracing::warn!(image = %d.image, "not loading the received archive: {e}");
            }
            match &result {
                Ok((_, len)) => readable_tx.send_modify(|r| r.verified = Some(*len)),
                Err(e) => readable_tx.send_modify(|r| r.failed = Some(e.clone())),
            }
            result.map(|(torrents, _)| (torrents, preloaded))
        };
        let (downloaded, loaded) = tokio::join!(download, load);
        let (torrents, preloaded) = downloaded?;
        let load_time = loaded?;
        self.forget_preloaded(preloaded).await;
        let secs = load_time.as_secs_f64();
        self.update(key, |r| {
            r.stats.state = ImageState::Loaded;
            r.stats.loaded_at = Some(now_secs());
            r.stats.load_seconds = Some(secs);
        });
        tracing::info!(image = %d.image, load_seconds = secs, "loaded");
        drop(slot);
        self.linger_then_clean(key, torrents, path);
        Ok(())
    }

    /// Adds each announced segment's torrent as it is announced, publishes the verified
    /// prefix in `readable`, hashes it, and returns the torrents and the tarball's length
    /// once the whole tarball is there and its SHA-256 matches (`readable.hashed`). Fails if the distribution makes no progress (no
    /// payload, no verified piece, no new segment) for `stall_timeout`: a torrent nobody
    /// seeds must not hold a `--max-torrents` slot forever.
    async fn download(
        &self,
        key: &str,
        updates: &mut watch::Receiver<Distribution>,
        path: &Path,
        readable: &watch::Sender<Readable>,
    ) -> Result<(Vec<TorrentHandle>, u64), String> {
        // An earlier run that failed kept the file: its verified pieces are checked, reused.
        let resume = path.exists();
        let mut torrents: Vec<TorrentHandle> = Vec::new();
        let mut ends: Vec<u64> = Vec::new();
        let mut hasher = PrefixHasher::new();
        let mut ticks = tokio::time::interval(POLL_EVERY);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watch = StallWatch::new(self.config.stall_timeout);
        loop {
            let d = updates.borrow_and_update().clone();
            let in_flight = torrents.iter().filter(|t| !t.stats().is_complete()).count();
            let room = SEGMENTS_IN_FLIGHT.saturating_sub(in_flight);
            for segment in d.segments[torrents.len()..].iter().take(room) {
                let start = ends.last().copied().unwrap_or(0);
                let handle = self.add_segment(&d, segment, path, start, resume).await?;
                self.update(key, |r| r.torrents.push(handle.clone()));
                torrents.push(handle);
                ends.push(start + segment.len);
            }
            // The verified prefix: complete segments in order.
            let done = torrents
                .iter()
                .take_while(|t| t.stats().is_complete())
                .count();
            let upto = done.checked_sub(1).map_or(0, |i| ends[i]);
            if upto > hasher.upto {
                hasher
                    .advance(path, upto)
                    .await
                    .map_err(|e| format!("hashing {}: {e}", path.display()))?;
                readable.send_modify(|r| r.upto = upto);
                tracing::debug!(key, segments = done, upto, "verified prefix");
            }
            if let Some(expected) = &d.sha256 {
                if done == torrents.len() {
                    let actual = std::mem::replace(&mut hasher, PrefixHasher::new()).finish();
                    if actual != *expected {
                        return Err(format!(
                            "tarball SHA-256 {actual} does not match the announced {expected}; \
                             not loading it"
                        ));
                    }
                    readable.send_modify(|r| r.hashed = Some(upto));
                    self.update(key, |r| {
                        r.stats.completed_at = Some(now_secs());
                        r.stats.size = Some(upto);
                        r.stats.state = ImageState::Loading;
                    });
                    return Ok((torrents, upto));
                }
            }
            // Stalled?
            let (mark, checking) =
                progress(d.segments.len() as u64, &torrents, "a segment's torrent")?;
            if watch.stalled(mark, checking) {
                let limit = watch.limit();
                self.records().stalled += 1;
                let peers = torrents.iter().map(|t| t.stats().peers).max().unwrap_or(0);
                return Err(format!(
                    "download stalled: no data for {limit:?} ({} of {} bytes verified, {done} \
                     of {} segments complete, {peers} peers connected); stopped, its \
                     --max-torrents slot freed",
                    mark.1,
                    d.announced_len(),
                    d.segments.len(),
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

    /// Starts (or finds) the torrent of `segment`, stored at `start..` in the tarball.
    async fn add_segment(
        &self,
        d: &Distribution,
        segment: &Segment,
        path: &Path,
        start: u64,
        resume: bool,
    ) -> Result<TorrentHandle, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&segment.torrent)
            .map_err(|e| format!("a segment's torrent is not base64: {e}"))?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("bad torrent: {e}"))?;
        if meta.info_hash().to_hex() != segment.info_hash || meta.total_len() != segment.len {
            return Err("a segment's torrent does not match its info-hash and length".into());
        }
        if let Some(existing) = self.session.torrent(&meta.info_hash()) {
            return Ok(existing);
        }
        let from = if resume {
            StartFrom::Check
        } else {
            StartFrom::Empty
        };
        let storage = FileStorage::create_range(path, start, segment.len)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let seeders: Vec<SocketAddr> = d.seeders.iter().filter_map(|s| s.parse().ok()).collect();
        self.session
            .add_torrent(AddTorrent::new(meta, Arc::new(storage), from).with_peers(seeders))
            .await
            .map_err(|e| format!("adding a segment's torrent: {e}"))
    }

    /// Where a receiver writes the tarball of distribution `id`.
    pub(super) fn received_tarball(&self, id: &str) -> PathBuf {
        self.config
            .data_dir
            .join("images")
            .join(format!("{id}.tar"))
    }
}

/// Why a load attempt failed: the runtime (retried) or the download under it (not).
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Loader(crate::loader::LoaderError),
    #[error("the download failed: {0}")]
    DownloadFailed(String),
}

impl Retryable for LoadError {
    fn retryable(&self) -> bool {
        matches!(self, LoadError::Loader(_))
    }
}
