//! What the distributor remembers per image, and the bounded table of `--allow` refusals.

use std::collections::{HashMap, VecDeque};
use std::sync::MutexGuard;

use imagewolf_bt::TorrentHandle;

use super::{now_secs, Distributor};
use crate::image::{Distribution, ImageRef};
use crate::stats::{ImageState, ImageStats};

/// Registry event ids remembered for deduplication.
pub(super) const EVENT_IDS_KEPT: usize = 4096;
/// References refused by `--allow` kept for /stats (oldest forgotten first).
pub const REFUSED_KEPT: usize = 64;

/// One image on this node.
pub(super) struct Record {
    pub(super) stats: ImageStats,
    pub(super) distribution: Option<Distribution>,
    pub(super) torrent: Option<TorrentHandle>,
    /// Times this image's flow was started here; a failed one is restarted (by a new
    /// announcement or catch-up) at most [`MAX_RUNS`] times.
    pub(super) runs: u32,
}

#[derive(Default)]
pub(super) struct Records {
    pub(super) by_key: HashMap<String, Record>,
    /// info-hash -> key
    pub(super) by_info_hash: HashMap<String, String>,
    pub(super) event_ids: VecDeque<String>,
    /// Refused by `--allow`, most recent last, at most [`REFUSED_KEPT`].
    pub(super) refused: VecDeque<ImageStats>,
    pub(super) refused_pushes: u64,
    pub(super) refused_announcements: u64,
}

impl Distributor {
    pub(super) fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn update(&self, key: &str, f: impl FnOnce(&mut Record)) {
        if let Some(r) = self.records().by_key.get_mut(key) {
            f(r);
        }
    }

    pub(super) fn set_state(&self, key: &str, state: ImageState, error: Option<String>) {
        self.update(key, |r| {
            r.stats.state = state;
            r.stats.error = error;
        });
    }
}

pub(super) fn new_stats(image: &ImageRef, origin: bool, state: ImageState) -> ImageStats {
    ImageStats {
        reference: image.to_string(),
        image_id: None,
        digest: image.digest.clone(),
        info_hash: None,
        size: None,
        state,
        error: None,
        origin,
        bytes_down: 0,
        bytes_up: 0,
        peers: 0,
        started_at: now_secs(),
        completed_at: None,
        loaded_at: None,
        load_seconds: None,
        attempts: 0,
    }
}

/// Why a refused image was refused (the API's `reason`, /stats' `error`).
pub(super) const NOT_ALLOWED: &str = "not allowed by --allow on this node";

/// Records a refusal in the bounded table /stats shows; returns how often this reference
/// has been refused (while remembered).
pub(super) fn note_refused(
    records: &mut Records,
    image: &ImageRef,
    info_hash: Option<&str>,
) -> u32 {
    let reference = image.to_string();
    let mut stats = match records
        .refused
        .iter()
        .position(|r| r.reference == reference)
    {
        Some(i) => records.refused.remove(i).expect("index from position"),
        None => {
            let mut stats = new_stats(image, false, ImageState::Refused);
            stats.error = Some(NOT_ALLOWED.into());
            stats
        }
    };
    stats.attempts = stats.attempts.saturating_add(1);
    if let Some(hash) = info_hash {
        stats.info_hash = Some(hash.to_owned());
    }
    let times = stats.attempts;
    if records.refused.len() >= REFUSED_KEPT {
        records.refused.pop_front();
    }
    records.refused.push_back(stats);
    times
}
