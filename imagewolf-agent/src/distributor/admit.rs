//! The entry points: pushes (webhooks, polling), announcements (other agents, catch-up), and
//! the gates every one of them passes before a record or any work exists.

use std::sync::Arc;

use super::records::{new_stats, note_refused, Record, EVENT_IDS_KEPT, NOT_ALLOWED};
use super::{Accepted, Distributor, MAX_RUNS};
use crate::image::{Distribution, ImageRef};
use crate::stats::ImageState;

impl Distributor {
    /// A push was notified: start a distribution from here unless it is already known.
    /// Returns at once; the work runs in the background.
    pub fn on_push(self: &Arc<Self>, image: ImageRef, event_id: Option<String>) -> Accepted {
        let key = image.dedup_key();
        {
            let mut records = self.records();
            if let Some(id) = &event_id {
                if records.event_ids.contains(id) {
                    return Accepted::Duplicate;
                }
                if records.event_ids.len() >= EVENT_IDS_KEPT {
                    records.event_ids.pop_front();
                }
                records.event_ids.push_back(id.clone());
            }
            if !self.config.allow.allows(&image) {
                records.refused_pushes += 1;
                let times = note_refused(&mut records, &image, None);
                drop(records);
                tracing::warn!(
                    image = %image,
                    times,
                    "push refused: {}/{} matches no --allow pattern; not pulled",
                    image.registry,
                    image.repository
                );
                return Accepted::Refused(NOT_ALLOWED.into());
            }
            if let Some(existing) = records.by_key.get(&key) {
                if existing.stats.state != ImageState::Failed {
                    return Accepted::Duplicate;
                }
            }
            records.by_key.insert(
                key.clone(),
                Record {
                    stats: new_stats(&image, true, ImageState::Pulling),
                    distribution: None,
                    torrent: None,
                    runs: 1,
                },
            );
        }
        tracing::info!(image = %image, "push: distributing from this node");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.originate(&key, &image).await {
                tracing::error!(image = %image, "distribution failed: {e}");
                this.set_state(&key, ImageState::Failed, Some(e));
            }
        });
        Accepted::Started
    }

    /// Another agent announced a distribution: fetch and load it unless already known.
    pub fn on_distribution(self: &Arc<Self>, d: Distribution) -> Accepted {
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
                .any(|r| r.info_hash.as_deref() == Some(d.info_hash.as_str()));
            if !seen {
                records.refused_announcements += 1;
                note_refused(&mut records, &d.image, Some(&d.info_hash));
            }
            drop(records);
            if seen {
                tracing::debug!(image = %d.image, "announcement refused again by --allow");
            } else {
                tracing::warn!(
                    image = %d.image,
                    info_hash = %d.info_hash,
                    "announcement refused: {}/{} matches no --allow pattern; not downloaded",
                    d.image.registry,
                    d.image.repository
                );
            }
            return Accepted::Refused(NOT_ALLOWED.into());
        }
        let key = d.image.dedup_key();
        {
            let mut records = self.records();
            let known = records
                .by_info_hash
                .get(&d.info_hash)
                .or_else(|| records.by_key.get(&key).map(|_| &key));
            let mut runs = 1;
            if let Some(previous) = known.cloned().and_then(|k| records.by_key.get(&k)) {
                if previous.stats.state != ImageState::Failed || previous.runs >= MAX_RUNS {
                    return Accepted::Duplicate;
                }
                runs = previous.runs + 1;
            }
            let mut stats = new_stats(&d.image, false, ImageState::Downloading);
            stats.image_id = Some(d.image_id.clone());
            stats.info_hash = Some(d.info_hash.clone());
            stats.size = Some(d.size);
            records
                .by_info_hash
                .insert(d.info_hash.clone(), key.clone());
            records.by_key.insert(
                key.clone(),
                Record {
                    stats,
                    distribution: Some(d.clone()),
                    torrent: None,
                    runs,
                },
            );
        }
        tracing::info!(image = %d.image, info_hash = %d.info_hash, "announced: fetching from the swarm");
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.receive(&key, &d).await {
                tracing::error!(image = %d.image, "distribution failed: {e}");
                this.set_state(&key, ImageState::Failed, Some(e));
            }
        });
        Accepted::Started
    }

    /// Asks every other agent for its recent distributions and starts those we lack.
    pub async fn catch_up(self: &Arc<Self>) {
        for agent in self.other_agents() {
            match self.client.distributions(agent).await {
                Ok(list) => {
                    for d in list {
                        if self.on_distribution(d) == Accepted::Started {
                            tracing::info!(%agent, "caught up on a distribution");
                        }
                    }
                }
                Err(e) => tracing::debug!("catch-up: {e}"),
            }
        }
    }
}

/// Sanity checks on an announcement before anything is allocated for it.
fn check_distribution(d: &Distribution) -> Result<(), String> {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&d.info_hash, 40) {
        return Err("info_hash is not 40 hex digits".into());
    }
    if !hex(&d.sha256, 64) {
        return Err("sha256 is not 64 hex digits".into());
    }
    if d.torrent.len() > 16 << 20 {
        return Err("torrent too large".into());
    }
    if d.seeders.len() > 1024 {
        return Err("too many seeders".into());
    }
    Ok(())
}
