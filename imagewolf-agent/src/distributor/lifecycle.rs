//! What every distribution goes through: a `--max-torrents` slot, then seeding for a while
//! after the load and cleaning up; or, if it fails, cleaning up what a later run cannot use.

use std::path::PathBuf;
use std::sync::Arc;

use imagewolf_bt::TorrentHandle;
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::records::{discard_tarballs, SEEDING_PER_SLOT};
use super::{Distributor, MAX_RUNS};
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

    /// Keeps seeding for `seed_time` (less if more than [`SEEDING_PER_SLOT`] x
    /// `--max-torrents` torrents seed after their load: the oldest stop first), then stops
    /// the torrent, deletes the tarball and marks the record done.
    pub(super) fn linger_then_clean(
        self: &Arc<Self>,
        key: &str,
        torrents: Vec<TorrentHandle>,
        path: PathBuf,
    ) {
        let stop = Arc::new(Notify::new());
        let max_seeding = SEEDING_PER_SLOT.saturating_mul(self.config.max_torrents.max(1));
        let cut = self
            .records()
            .start_seeding(key, Arc::clone(&stop), max_seeding);
        for other in cut {
            other.notify_one();
        }
        let this = Arc::clone(self);
        let key = key.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(this.config.seed_time) => {}
                () = stop.notified() => tracing::info!(
                    key,
                    "stopped seeding early: more than {max_seeding} torrents seeding after their load"
                ),
            }
            let (mut down, mut up) = (0, 0);
            for t in &torrents {
                let moved = this
                    .records()
                    .by_key
                    .get(&key)
                    .map_or((0, 0), |r| r.moved(t));
                this.remove_unless_shared(&key, t).await;
                down += moved.0;
                up += moved.1;
            }
            this.update(&key, |r| {
                r.stats.bytes_down = down;
                r.stats.bytes_up = up;
                r.torrents.clear();
            });
            match tokio::fs::remove_file(&path).await {
                // Blob distributions write no tarball.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("removing {}: {e}", path.display());
                }
                _ => {}
            }
            this.finish(&key, true);
        });
    }

    /// Stops `torrent` of `key`'s record, unless another record runs it too: a blob's chunk
    /// torrent is shared by every image in flight that has the blob (`distributor/blobs`).
    /// The mirror's offers count as such a record (`distributor/mirror`).
    pub(super) async fn remove_unless_shared(&self, key: &str, torrent: &TorrentHandle) {
        let ih = torrent.info_hash();
        let shared = self
            .records()
            .by_key
            .iter()
            .any(|(k, r)| k != key && r.torrents.iter().any(|t| t.info_hash() == ih))
            || self.mirror().is_some_and(|(_, m)| m.holds_torrent(&ih));
        if !shared {
            self.session.remove_torrent(&ih).await;
        }
    }

    /// The record's run and cleanup are over; with `delete_tarball`, its tarball goes too
    /// (else it is kept for a later run until the record is forgotten).
    pub(super) fn finish(&self, key: &str, delete_tarball: bool) {
        let mut records = self.records();
        let mut discard = Vec::new();
        if delete_tarball {
            if let Some(r) = records.by_key.get_mut(key) {
                discard.extend(r.tarball.take());
            }
        }
        discard.extend(records.finish(key));
        drop(records);
        discard_tarballs(discard);
    }

    /// The run failed with `error`: stops its torrent, frees everything but what a later run
    /// can reuse (a receiver's verified pieces, unless this was its last run), and marks the
    /// record failed and done.
    pub(super) async fn fail(&self, key: &str, error: String) {
        let torrents = self
            .records()
            .by_key
            .get_mut(key)
            .map(|r| std::mem::take(&mut r.torrents))
            .unwrap_or_default();
        for t in torrents {
            self.remove_unless_shared(key, &t).await;
        }
        let mut records = self.records();
        let Some(r) = records.by_key.get_mut(key) else {
            return;
        };
        let keep = !r.stats.origin && r.runs < MAX_RUNS && r.tarball.is_some();
        let note = if r.stats.origin {
            String::new()
        } else if r.runs >= MAX_RUNS {
            format!("; gave up on it after {} runs", r.runs)
        } else if keep {
            "; the verified part is kept for a later run (a new announcement or catch-up may \
             restart it)"
                .to_owned()
        } else {
            "; a new announcement or catch-up may restart it".to_owned()
        };
        r.stats.state = ImageState::Failed;
        r.stats.error = Some(format!("{error}{note}"));
        drop(records);
        self.finish(key, !keep);
    }
}
