//! Every other agent's side: skip if present, download, verify the SHA-256, load.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, StartFrom, TorrentHandle, TorrentStats, TorrentStatus};
use tokio::time::MissedTickBehavior;

use super::{now_secs, Distributor};
use crate::image::Distribution;
use crate::stats::ImageState;
use crate::tarball::sha256_file;

impl Distributor {
    /// Every other agent's side: download, verify, load.
    pub(super) async fn receive(
        self: &Arc<Self>,
        key: &str,
        d: &Distribution,
    ) -> Result<(), String> {
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
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&d.torrent)
            .map_err(|e| format!("torrent is not base64: {e}"))?;
        let meta = Metainfo::from_bytes(&bytes).map_err(|e| format!("bad torrent: {e}"))?;
        if meta.info_hash().to_hex() != d.info_hash || meta.total_len() != d.size {
            return Err("the torrent does not match the announced info-hash and size".into());
        }
        let path = self.received_tarball(&d.info_hash);
        // An earlier run that failed kept the file (its verified pieces are checked and
        // reused); the session may even have the torrent still.
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
        self.wait_downloaded(&handle).await?;
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
            self.update(key, |r| r.tarball = None);
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

    /// Where a receiver writes the tarball of the torrent `info_hash`.
    pub(super) fn received_tarball(&self, info_hash: &str) -> PathBuf {
        self.config
            .data_dir
            .join("images")
            .join(format!("{info_hash}.tar"))
    }

    /// Waits until every piece is verified. Fails if the torrent stops, or makes no progress
    /// (no payload received, no piece verified, not checking existing data) for
    /// `stall_timeout`: a torrent nobody seeds must not hold a `--max-torrents` slot forever.
    async fn wait_downloaded(&self, handle: &TorrentHandle) -> Result<(), String> {
        let limit = self.config.stall_timeout;
        let mut ticks = tokio::time::interval(
            (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let complete = handle.wait_complete();
        tokio::pin!(complete);
        let mark = |s: &TorrentStats| (s.have_bytes, s.downloaded);
        let mut last = mark(&handle.stats());
        let mut since = Instant::now();
        loop {
            tokio::select! {
                done = &mut complete => return done.map_err(|e| format!("download: {e}")),
                _ = ticks.tick() => {}
            }
            let stats = handle.stats();
            if mark(&stats) != last || stats.status == TorrentStatus::Checking {
                last = mark(&stats);
                since = Instant::now();
            } else if since.elapsed() >= limit {
                self.records().stalled += 1;
                return Err(format!(
                    "download stalled: no data for {:?} ({} of {} bytes verified, {} peers \
                     connected); stopped, its --max-torrents slot freed",
                    limit, stats.have_bytes, stats.total_len, stats.peers
                ));
            }
        }
    }
}
