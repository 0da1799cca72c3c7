//! The origin's side: pull, then export in segments, each hashed into its torrent, seeded
//! and announced as soon as it is on disk, while the next one is still being read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, StartFrom, TorrentHandle};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::feed::{verified_chunks, Readable};
use super::{now_secs, Distributor};
use crate::image::{Distribution, ImageRef, Segment};
use crate::stats::ImageState;
use crate::tarball::SegmentWriter;

impl Distributor {
    /// The origin's side: pull, export + hash segment by segment, seed and announce each,
    /// load here too if the source did not leave the image in the runtime.
    pub(super) async fn originate(
        self: &Arc<Self>,
        key: &str,
        image: &ImageRef,
    ) -> Result<(), String> {
        let slot = self.take_slot(key, ImageState::Pulling).await;
        if let Some(plan) = self.blob_plan(key, image).await? {
            return self.originate_blobs(key, image, plan, slot).await;
        }
        let pulled = self
            .with_retries(key, "pull", Some(self.config.retry.pull_attempts), || {
                self.source.pull(image)
            })
            .await?;
        self.update(key, |r| r.stats.image_id = Some(pulled.image_id.clone()));
        // A registry-API source leaves nothing in the runtime: this node loads it as well,
        // from the tarball as it is written.
        let in_runtime = self
            .loader
            .has_image(&pulled.image_id)
            .await
            .unwrap_or(false);
        let tarball = self
            .source
            .export(&pulled)
            .await
            .map_err(|e| format!("export: {e}"))?;
        let path = self.origin_tarball(key);
        let mut writer =
            SegmentWriter::create(tarball, &path, pulled.size_hint, self.trackers_for(key))
                .await?
                .counting_into(self.intake.counter());
        let bt_addr = SocketAddr::new(self.config.advertise, self.session.listen_addr().port());
        let created = now_secs() as u64;
        let mut d = Distribution {
            image: image.clone(),
            image_id: pulled.image_id.clone(),
            id: distribution_id(key, &bt_addr, now_secs()),
            size_hint: pulled.size_hint,
            segments: Vec::new(),
            sha256: None,
            seeders: vec![bt_addr.to_string()],
            created,
            signature: None,
            blobs: None,
        };
        {
            let mut records = self.records();
            records.set_id(key, &d.id);
            if let Some(r) = records.by_key.get_mut(key) {
                r.stats.size = Some(d.size_hint);
            }
        }
        let (readable_tx, readable) = watch::channel(Readable::default());
        let own_load = async {
            if in_runtime {
                return Ok(());
            }
            self.with_retries(key, "load", None, || {
                let chunks = verified_chunks(path.clone(), readable.clone(), false);
                self.loader
                    .load_streamed(Box::pin(tokio_util::io::StreamReader::new(chunks)), &path)
            })
            .await
        };
        let spread = async {
            let run = self.start_announcing();
            let result = self
                .export_segments(key, &mut writer, &mut d, &run.announce, &readable_tx)
                .await;
            self.finish_announcing(key, run).await;
            if let Err(e) = &result {
                readable_tx.send_modify(|r| r.failed = Some(e.clone()));
            }
            result
        };
        let (spread, loaded) = tokio::join!(spread, own_load);
        spread?;
        loaded?;
        self.origin_done(key, slot, path);
        Ok(())
    }

    /// An origin's spreading starts: the announcer sends every version published on
    /// `OriginRun::announce` to the other agents, and the upload is paced to the intake
    /// while the source is read (`pacing.rs`).
    pub(super) fn start_announcing(self: &Arc<Self>) -> OriginRun {
        let (announce, latest) = watch::channel(None);
        OriginRun {
            announce,
            announcer: tokio::spawn(Arc::clone(self).announce_updates(latest)),
            pulling: self.intake.pulling(),
        }
    }

    /// The source is read: pacing ends, the torrents' seeds may help with the tail (nothing
    /// newer will need the uplink), and the last announcement goes out before the origin
    /// calls its part done.
    pub(super) async fn finish_announcing(&self, key: &str, run: OriginRun) {
        drop(run.pulling);
        for torrent in self.record_torrents(key) {
            torrent.release_spreading();
        }
        drop(run.announce);
        let _ = run.announcer.await;
    }

    /// Spread and loaded here: the slot is freed, the torrents seed for a while, then
    /// `file` (the tarball, if any) goes.
    pub(super) fn origin_done(
        self: &Arc<Self>,
        key: &str,
        slot: tokio::sync::OwnedSemaphorePermit,
        file: PathBuf,
    ) {
        let torrents = self.record_torrents(key);
        self.update(key, |r| {
            r.stats.state = ImageState::Loaded;
            r.stats.loaded_at = Some(now_secs());
        });
        drop(slot);
        self.linger_then_clean(key, torrents, file);
    }

    /// Reads the tarball segment by segment; seeds and announces each as it is written.
    async fn export_segments(
        &self,
        key: &str,
        writer: &mut SegmentWriter,
        d: &mut Distribution,
        announce: &watch::Sender<Option<Distribution>>,
        readable: &watch::Sender<Readable>,
    ) -> Result<(), String> {
        let path = self.origin_tarball(key);
        while let Some((meta, offset)) = writer.next_segment().await? {
            let len = meta.total_len();
            let segment = Segment {
                torrent: base64::engine::general_purpose::STANDARD.encode(meta.to_bytes()),
                info_hash: meta.info_hash().to_hex(),
                len,
            };
            let storage = FileStorage::open_range(&path, offset, len)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let handle = self
                .session
                .add_torrent(
                    // Held: while the pull runs, the origin's uplink is the only source of
                    // the newest segment and should carry nothing the receivers can trade.
                    AddTorrent::new(meta, Arc::new(storage), StartFrom::Complete).holding_spread(),
                )
                .await
                .map_err(|e| format!("seeding: {e}"))?;
            d.segments.push(segment);
            self.publish(key, d, announce);
            self.update(key, |r| r.torrents.push(handle));
            readable.send_modify(|r| r.upto = offset + len);
            tracing::debug!(
                key,
                segment = d.segments.len(),
                offset,
                len,
                "segment seeding"
            );
        }
        d.sha256 = Some(writer.sha256());
        let size = d.announced_len();
        self.update(key, |r| {
            r.stats.size = Some(size);
            r.stats.state = ImageState::Seeding;
            r.stats.completed_at = Some(now_secs());
        });
        self.publish(key, d, announce);
        // The origin wrote the file itself: the whole of it is verified.
        readable.send_modify(|r| {
            r.upto = size;
            r.verified = Some(size);
        });
        tracing::info!(
            key,
            size,
            segments = d.segments.len(),
            "exported and seeding"
        );
        Ok(())
    }

    /// The torrents of `key`'s record (none if it is gone).
    pub(super) fn record_torrents(&self, key: &str) -> Vec<TorrentHandle> {
        self.records()
            .by_key
            .get(key)
            .map(|r| r.torrents.clone())
            .unwrap_or_default()
    }

    /// Signs `d`, keeps it in the record (catch-up listings offer it) and hands it to the
    /// announcer.
    pub(super) fn publish(
        &self,
        key: &str,
        d: &mut Distribution,
        announce: &watch::Sender<Option<Distribution>>,
    ) {
        if let Some(secret) = &self.config.cluster_secret {
            d.sign(secret);
        }
        self.update(key, |r| r.distribution = Some(d.clone()));
        announce.send_replace(Some(d.clone()));
    }

    /// Spreads the latest version of a growing distribution (`spread.rs`: the first to
    /// [`fanout`](super::gossip::fanout) random agents, every agent in a small cluster, the
    /// later ones to those that took the first), until the exporter is done (the last
    /// version is always sent). Versions published while a round is out are merged into the
    /// next round: a slow agent delays updates, it does not queue them.
    pub(super) async fn announce_updates(
        self: Arc<Self>,
        mut latest: watch::Receiver<Option<Distribution>>,
    ) {
        let mut spread = super::spread::Spread::new(true);
        loop {
            let current = latest.borrow_and_update().clone();
            if let Some(d) = current {
                tracing::info!(
                    image = %d.image,
                    segments = d.segments.len(),
                    complete = d.is_complete(),
                    "announcing to the other agents"
                );
                self.spread_version(&d, &mut spread).await;
            }
            if latest.changed().await.is_err() {
                return;
            }
        }
    }

    /// Where the origin writes the tarball of `key`.
    pub(super) fn origin_tarball(&self, key: &str) -> PathBuf {
        self.config
            .data_dir
            .join("images")
            .join(format!("{}.tar", file_stem(key)))
    }
}

/// An origin's spreading in progress (see [`Distributor::start_announcing`]).
pub(super) struct OriginRun {
    /// Where the origin publishes each version of its distribution.
    pub(super) announce: watch::Sender<Option<Distribution>>,
    announcer: tokio::task::JoinHandle<()>,
    pulling: super::pacing::PullGuard,
}

/// A distribution id: unique per run of a push at an origin (a re-push of the same tag is a
/// new distribution), the same on every node.
pub(super) fn distribution_id(key: &str, origin: &SocketAddr, now: f64) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(origin.to_string().as_bytes());
    h.update(now.to_be_bytes());
    crate::tarball::hex(&h.finalize()[..20])
}

/// A file name for an image key (keys contain `/`, `:` and `@`).
fn file_stem(key: &str) -> String {
    crate::tarball::hex(&Sha256::digest(key.as_bytes())[..16])
}
