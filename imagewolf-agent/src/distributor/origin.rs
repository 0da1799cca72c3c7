//! The origin's side: pull, export + torrent + SHA-256 in one pass, seed, announce.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, StartFrom};
use sha2::{Digest, Sha256};

use super::{now_secs, Distributor};
use crate::image::{Distribution, ImageRef};
use crate::stats::ImageState;
use crate::tarball::export_to_torrent;

impl Distributor {
    /// The origin's side: pull, export + hash, seed, announce.
    pub(super) async fn originate(
        self: &Arc<Self>,
        key: &str,
        image: &ImageRef,
    ) -> Result<(), String> {
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
        let path = self.origin_tarball(key);
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
            records.set_info_hash(key, &info_hash);
            if let Some(r) = records.by_key.get_mut(key) {
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

    /// Where the origin writes the tarball of `key`.
    pub(super) fn origin_tarball(&self, key: &str) -> PathBuf {
        self.config
            .data_dir
            .join("images")
            .join(format!("{}.tar", file_stem(key)))
    }
}

/// A file name for an image key (keys contain `/`, `:` and `@`).
fn file_stem(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}
