//! What every distribution goes through: a `--max-torrents` slot, then seeding for a while
//! after the load and cleaning up.

use std::path::PathBuf;
use std::sync::Arc;

use imagewolf_bt::TorrentHandle;
use tokio::sync::OwnedSemaphorePermit;

use super::Distributor;
use crate::stats::ImageState;

impl Distributor {
    /// Takes a slot, waiting `queued` (FIFO) while all are busy; the record shows `state`
    /// again once it has one.
    pub(super) async fn take_slot(&self, key: &str, state: ImageState) -> OwnedSemaphorePermit {
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

    /// Keeps seeding for `seed_time`, then stops the torrent and deletes the tarball.
    pub(super) fn linger_then_clean(
        self: &Arc<Self>,
        key: &str,
        handle: TorrentHandle,
        path: PathBuf,
    ) {
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
}
