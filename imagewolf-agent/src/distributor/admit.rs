//! The entry points: pushes (webhooks, polling), announcements (other agents, catch-up), and
//! the gates every one of them passes before a record or any work exists.

use std::sync::Arc;

use super::records::{
    discard_tarballs, new_stats, note_refused, Entry, Record, Records, ACTIVE_PER_SLOT,
    EVENT_IDS_KEPT, NOT_ALLOWED,
};
use super::{Accepted, Distributor, MAX_RUNS};
use crate::image::{Distribution, ImageRef};
use crate::stats::ImageState;

impl Distributor {
    /// A push was notified: start a distribution from here unless it is already known.
    /// Returns at once; the work runs in the background.
    pub fn on_push(self: &Arc<Self>, image: ImageRef, event_id: Option<String>) -> Accepted {
        let key = image.dedup_key();
        let mut records = self.records();
        if let Some(id) = &event_id {
            if records.event_ids.contains(id) {
                return Accepted::Duplicate;
            }
        }
        let (outcome, times_refused) = self.admit_push(&mut records, &key, &image);
        // A busy refusal is retried by the registry with the same event id: do not burn it.
        if let (Some(id), false) = (event_id, matches!(outcome, Accepted::Busy(_))) {
            if records.event_ids.len() >= EVENT_IDS_KEPT {
                records.event_ids.pop_front();
            }
            records.event_ids.push_back(id);
        }
        drop(records);
        match &outcome {
            Accepted::Started => {
                tracing::info!(image = %image, "push: distributing from this node");
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = this.originate(&key, &image).await {
                        tracing::error!(image = %image, "distribution failed: {e}");
                        this.fail(&key, e).await;
                    }
                });
            }
            Accepted::Refused(_) => tracing::warn!(
                image = %image,
                times = times_refused,
                "push refused: {}/{} matches no --allow pattern; not pulled",
                image.registry,
                image.repository
            ),
            Accepted::Busy(why) => tracing::warn!(image = %image, "push refused for now: {why}"),
            Accepted::Duplicate => {}
        }
        outcome
    }

    /// The gates of a push, under the records lock; on `Started` the record exists. Also
    /// returns how often an `--allow` refusal has refused this reference.
    fn admit_push(&self, records: &mut Records, key: &str, image: &ImageRef) -> (Accepted, u32) {
        if !self.config.allow.allows(image) {
            records.refused_pushes += 1;
            let times = note_refused(records, image, None);
            return (Accepted::Refused(NOT_ALLOWED.into()), times);
        }
        if records.in_progress(key) {
            return (Accepted::Duplicate, 0);
        }
        let previous = records.previous(key, None);
        if previous.as_ref().is_some_and(|p| !p.failed) {
            return (Accepted::Duplicate, 0);
        }
        if let Some(busy) = self.busy(records) {
            records.busy_pushes += 1;
            return (busy, 0);
        }
        // A new push retries a failed image from scratch (runs start again).
        let record = Record::new(
            new_stats(image, true, ImageState::Pulling),
            None,
            1,
            self.origin_tarball(key),
        );
        let stale = records.admit(key.to_owned(), record, previous.map(|p| p.entry));
        discard_tarballs(stale);
        (Accepted::Started, 0)
    }

    /// Another agent announced a distribution: fetch and load it unless already known. (A
    /// whole announcement, `POST /v1/distributions`: its sender is taken to announce it to
    /// every agent, so this node does not relay it; agents spread by `spread.rs`.)
    pub fn on_distribution(self: &Arc<Self>, d: Distribution) -> Accepted {
        self.accept_distribution(d, false)
    }

    /// [`Distributor::on_distribution`], relaying the first version to random agents when
    /// `relay` (rumors); every version this node learns goes on to the agents it delivered
    /// the first to (`spread.rs`).
    pub(super) fn accept_distribution(self: &Arc<Self>, d: Distribution, relay: bool) -> Accepted {
        if let Err(e) = check_distribution(&d) {
            return Accepted::Refused(e);
        }
        if let Some(secret) = &self.config.cluster_secret {
            if !d.verify(secret) {
                tracing::warn!(image = %d.image, "refused an announcement without a valid cluster signature");
                return Accepted::Refused("missing or invalid cluster signature".into());
            }
        }
        if !self.config.allow.allows(&d.image) {
            let mut records = self.records();
            // Catch-up offers the same announcement every CATCH_UP_EVERY: count and log it once.
            let seen = records
                .refused
                .iter()
                .any(|r| r.id.as_deref() == Some(d.id.as_str()));
            if !seen {
                records.refused_announcements += 1;
                note_refused(&mut records, &d.image, Some(&d.id));
            }
            drop(records);
            if seen {
                tracing::debug!(image = %d.image, "announcement refused again by --allow");
            } else {
                tracing::warn!(
                    image = %d.image,
                    id = %d.id,
                    "announcement refused: {}/{} matches no --allow pattern; not downloaded",
                    d.image.registry,
                    d.image.repository
                );
            }
            return Accepted::Refused(NOT_ALLOWED.into());
        }
        let key = d.image.dedup_key();
        // Later announcements of this distribution reach the run through here.
        let (updates_tx, updates) = tokio::sync::watch::channel(d.clone());
        let mut spreading = updates_tx.subscribe();
        {
            let mut records = self.records();
            if records.in_progress(&key) {
                grow(&mut records, &key, &d);
                return Accepted::Duplicate;
            }
            let previous = records.previous(&key, Some(&d.id));
            let mut runs = 1;
            if let Some(p) = &previous {
                if !p.failed || p.runs >= MAX_RUNS {
                    return Accepted::Duplicate;
                }
                if let Entry::Live(k) = &p.entry {
                    if records.in_progress(k) {
                        return Accepted::Duplicate;
                    }
                }
                runs = p.runs + 1;
            }
            if let Some(busy) = self.busy(&records) {
                records.busy_announcements += 1;
                drop(records);
                tracing::warn!(image = %d.image, "announcement refused for now: {busy:?}");
                return busy;
            }
            let mut stats = new_stats(&d.image, false, ImageState::Downloading);
            stats.image_id = Some(d.image_id.clone());
            stats.id = Some(d.id.clone());
            stats.size = Some(d.size_hint);
            let mut record =
                Record::new(stats, Some(d.clone()), runs, self.received_tarball(&d.id));
            record.updates = Some(updates_tx);
            let stale = records.admit(key.clone(), record, previous.map(|p| p.entry));
            discard_tarballs(stale);
        }
        tracing::info!(image = %d.image, id = %d.id, segments = d.segments.len(), "announced: fetching from the swarm");
        let spreader = Arc::downgrade(self);
        tokio::spawn(async move {
            // Each version this node learns (the record's updates) goes on; ends with the run.
            let mut spread = super::spread::Spread::new(relay);
            loop {
                let current = spreading.borrow_and_update().clone();
                let Some(this) = spreader.upgrade() else {
                    return;
                };
                this.spread_version(&current, &mut spread).await;
                drop(this);
                if spreading.changed().await.is_err() {
                    return;
                }
            }
        });
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.receive(&key, updates).await {
                tracing::error!(image = %d.image, "distribution failed: {e}");
                this.fail(&key, e).await;
            }
        });
        Accepted::Started
    }

    /// Most records queued or in progress at once: beyond, new work is refused as busy.
    pub fn max_working(&self) -> usize {
        ACTIVE_PER_SLOT.saturating_mul(self.config.max_torrents.max(1))
    }

    /// `Some(Busy)` if no more work may be admitted now.
    fn busy(&self, records: &Records) -> Option<Accepted> {
        let working = records.working();
        let max = self.max_working();
        (working >= max).then(|| {
            Accepted::Busy(format!(
                "busy: {working} distributions are queued or in progress on this node, the most \
                 it takes ({ACTIVE_PER_SLOT} x --max-torrents {}); retry later",
                self.config.max_torrents.max(1)
            ))
        })
    }
}

/// A later announcement of a distribution in progress here: if it grows the one the record
/// has (same id, more segments or now complete), the record keeps it (catch-up listings
/// offer the grown one) and the receiving run hears of it. Anything else is a duplicate.
fn grow(records: &mut Records, key: &str, d: &Distribution) {
    let Some(r) = records.by_key.get_mut(key) else {
        return;
    };
    let Some(known) = &r.distribution else {
        return;
    };
    if !d.grows(known) {
        return;
    }
    r.distribution = Some(d.clone());
    if let Some(updates) = &r.updates {
        updates.send_replace(d.clone());
    }
}

/// Most segments one distribution may have (a 1 TiB tarball at the largest segment size).
pub(super) const MAX_SEGMENTS: usize = 4096;
/// Largest tarball accepted (the sum of the segments).
pub(super) const MAX_TARBALL: u64 = crate::image::MAX_IMAGE_BYTES;

/// Sanity checks on an announcement before anything is allocated for it.
fn check_distribution(d: &Distribution) -> Result<(), String> {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&d.id, 40) {
        return Err("id is not 40 hex digits".into());
    }
    if !crate::image::is_image_id(&d.image_id) {
        return Err("image_id is not sha256:<64 hex>".into());
    }
    if d.sha256.as_deref().is_some_and(|s| !hex(s, 64)) {
        return Err("sha256 is not 64 hex digits".into());
    }
    if d.segments.len() > MAX_SEGMENTS {
        return Err(format!("more than {MAX_SEGMENTS} segments"));
    }
    if let Some(blobs) = &d.blobs {
        if !d.segments.is_empty() || d.sha256.is_some() {
            return Err("a blob distribution with segments".into());
        }
        blobs.check()?;
        if !blobs.holds_config(&d.image_id) {
            return Err("image_id is not the config of any announced manifest".into());
        }
    } else if d.sha256.is_some() && d.segments.is_empty() {
        return Err("a complete distribution without segments".into());
    }
    let mut torrents = 0usize;
    let mut total = 0u64;
    for s in &d.segments {
        if !hex(&s.info_hash, 40) {
            return Err("a segment's info_hash is not 40 hex digits".into());
        }
        if s.len == 0 {
            return Err("an empty segment".into());
        }
        torrents = torrents.saturating_add(s.torrent.len());
        total = total.saturating_add(s.len);
    }
    if torrents > 16 << 20 {
        return Err("torrents too large".into());
    }
    if total > MAX_TARBALL {
        return Err("tarball too large".into());
    }
    if d.seeders.len() > 1024 {
        return Err("too many seeders".into());
    }
    Ok(())
}
