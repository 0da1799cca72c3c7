//! What the distributor remembers per image, and how that stays bounded whatever is announced
//! to it (without `--cluster-secret` anyone can POST announcements):
//!
//! - **Working** records (queued, pulling, downloading, verifying, loading) are at most
//!   [`ACTIVE_PER_SLOT`] x `--max-torrents`: beyond that a new push or announcement is refused
//!   as busy (HTTP 503, which registries and agents retry) before anything is allocated.
//! - **Seeding** records (loaded here, seeding for `--seed-seconds`) are at most
//!   [`SEEDING_PER_SLOT`] x `--max-torrents`: beyond that the oldest stops seeding early.
//! - **Done** records (loaded or failed; seeding and cleanup over) are kept for /stats and
//!   deduplication, the last [`FINISHED_KEPT`] of them (fewer if their announced torrents
//!   exceed [`FINISHED_BYTES_KEPT`]). An older one is *forgotten*: its
//!   record goes (and any tarball it kept), and a tombstone of ~300 bytes (outcome, runs) is
//!   kept for [`FORGOTTEN_KEPT`] more, so a registry retry, a repeated push or catch-up
//!   offering it again is still recognised and [`MAX_RUNS`](super::MAX_RUNS) still holds.
//! - Registry event ids: the last [`EVENT_IDS_KEPT`]; `--allow` refusals: the last
//!   [`REFUSED_KEPT`] references.
//!
//! Records change phase only under the records mutex, one step at a time, so a restart can
//! never replace a record whose task still runs: only a done record is replaced.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, MutexGuard};

use imagewolf_bt::TorrentHandle;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{now_secs, Distributor};
use crate::image::{Distribution, ImageRef};
use crate::stats::{ImageState, ImageStats};

/// Registry event ids remembered for deduplication.
pub(super) const EVENT_IDS_KEPT: usize = 4096;
/// References refused by `--allow` kept for /stats (oldest forgotten first).
pub const REFUSED_KEPT: usize = 64;
/// Done records (loaded or failed) kept, most recently finished first.
pub const FINISHED_KEPT: usize = 256;
/// Most bytes of announced torrents held by done records; older ones are forgotten first.
/// (An announcement is at most one request body, 1 MiB; a real one is tens of KiB.)
pub const FINISHED_BYTES_KEPT: usize = 32 << 20;
/// Tombstones of forgotten records kept for deduplication.
pub const FORGOTTEN_KEPT: usize = 4096;
/// Working records (queued or in progress) allowed per `--max-torrents` slot.
pub const ACTIVE_PER_SLOT: usize = 4;
/// Records seeding after their load allowed per `--max-torrents` slot.
pub const SEEDING_PER_SLOT: usize = 4;

/// One image on this node.
pub(super) struct Record {
    pub(super) stats: ImageStats,
    /// What was announced (the latest, grown, announcement of it).
    pub(super) distribution: Option<Distribution>,
    /// The torrents of its segments this node runs (seeds or downloads).
    pub(super) torrents: Vec<TorrentHandle>,
    /// Bytes (down, up) a torrent had already moved when this record took it on: a blob's
    /// chunk torrent is shared by every image in flight with that blob, and each record
    /// counts only what moved since it joined.
    pub(super) torrent_base: HashMap<imagewolf_bt::InfoHash, (u64, u64)>,
    /// A receiving run's inbox for later announcements of its growing distribution.
    pub(super) updates: Option<tokio::sync::watch::Sender<Distribution>>,
    /// Times this image's flow was started here; a failed one is restarted (by a new
    /// announcement or catch-up) until it has run [`MAX_RUNS`](super::MAX_RUNS) times.
    pub(super) runs: u32,
    pub(super) phase: Phase,
    /// The tarball this record's run writes (it may not exist yet). Deleted after seeding,
    /// or when the record is forgotten or replaced by a run that uses another file.
    pub(super) tarball: Option<PathBuf>,
}

impl Record {
    /// A record of a run that starts now.
    pub(super) fn new(
        stats: ImageStats,
        distribution: Option<Distribution>,
        runs: u32,
        tarball: PathBuf,
    ) -> Self {
        Record {
            stats,
            distribution,
            torrents: Vec::new(),
            torrent_base: HashMap::new(),
            updates: None,
            runs,
            phase: Phase::Working,
            tarball: Some(tarball),
        }
    }
}

impl Record {
    /// Takes on `torrent`, counting only what it moves from now on.
    pub(super) fn add_shared_torrent(&mut self, torrent: TorrentHandle) {
        let s = torrent.stats();
        self.torrent_base
            .insert(torrent.info_hash(), (s.downloaded, s.uploaded));
        self.torrents.push(torrent);
    }

    /// Bytes (down, up) `torrent` moved for this record.
    pub(super) fn moved(&self, torrent: &TorrentHandle) -> (u64, u64) {
        let s = torrent.stats();
        let (down, up) = self
            .torrent_base
            .get(&torrent.info_hash())
            .copied()
            .unwrap_or_default();
        (
            s.downloaded.saturating_sub(down),
            s.uploaded.saturating_sub(up),
        )
    }

    /// Bytes of the announced torrents this record holds.
    fn announced_len(&self) -> usize {
        self.distribution
            .as_ref()
            .map_or(0, Distribution::payload_len)
    }
}

/// Where a record is in its life (see the module docs).
pub(super) enum Phase {
    /// Queued or in progress; counts against the working limit.
    Working,
    /// Loaded here and seeding; `stop` ends that early.
    Seeding {
        since: u64,
        stop: Arc<Notify>,
        stopping: bool,
    },
    /// Finished at sequence number `since`.
    Done { since: u64 },
}

/// What is known of an image's earlier run, from its record or its tombstone.
pub(super) struct Previous {
    pub(super) entry: Entry,
    pub(super) failed: bool,
    pub(super) runs: u32,
}

/// Where a [`Previous`] came from.
pub(super) enum Entry {
    /// A live record, by key.
    Live(String),
    /// A tombstone, by key hash.
    Forgotten(KeyId),
}

/// SHA-256 of an image key: what a tombstone remembers instead of the key.
pub(super) type KeyId = [u8; 32];

fn key_id(key: &str) -> KeyId {
    Sha256::digest(key.as_bytes()).into()
}

struct Tombstone {
    id: Option<String>,
    failed: bool,
    runs: u32,
}

/// Tombstones of forgotten records, oldest first, at most [`FORGOTTEN_KEPT`].
#[derive(Default)]
struct Forgotten {
    by_key: HashMap<KeyId, Tombstone>,
    by_id: HashMap<String, KeyId>,
    order: VecDeque<KeyId>,
}

impl Forgotten {
    fn insert(&mut self, id: KeyId, tombstone: Tombstone) {
        self.remove(&id);
        if self.order.len() >= FORGOTTEN_KEPT {
            if let Some(oldest) = self.order.front().copied() {
                self.remove(&oldest);
            }
        }
        if let Some(hash) = &tombstone.id {
            self.by_id.insert(hash.clone(), id);
        }
        self.by_key.insert(id, tombstone);
        self.order.push_back(id);
    }

    fn remove(&mut self, id: &KeyId) {
        let Some(tombstone) = self.by_key.remove(id) else {
            return;
        };
        if let Some(hash) = &tombstone.id {
            if self.by_id.get(hash) == Some(id) {
                self.by_id.remove(hash);
            }
        }
        if let Some(i) = self.order.iter().position(|o| o == id) {
            self.order.remove(i);
        }
    }
}

#[derive(Default)]
pub(super) struct Records {
    pub(super) by_key: HashMap<String, Record>,
    /// info-hash -> key, for live records only.
    pub(super) by_id: HashMap<String, String>,
    pub(super) event_ids: VecDeque<String>,
    /// Refused by `--allow`, most recent last, at most [`REFUSED_KEPT`].
    pub(super) refused: VecDeque<ImageStats>,
    pub(super) refused_pushes: u64,
    pub(super) refused_announcements: u64,
    /// Pushes refused because [`Records::working`] was at the limit.
    pub(super) busy_pushes: u64,
    /// Announcements refused because [`Records::working`] was at the limit.
    pub(super) busy_announcements: u64,
    /// Downloads that failed for making no progress.
    pub(super) stalled: u64,
    /// Seeding torrents stopped early to stay within the seeding limit.
    pub(super) seeding_cut: u64,
    forgotten: Forgotten,
    /// Orders phase changes (seeding since, done since).
    seq: u64,
}

/// Sizes of the distributor's tables, for tests and /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records kept (every phase).
    pub records: usize,
    /// Records queued or in progress.
    pub working: usize,
    /// Records seeding after their load.
    pub seeding: usize,
    /// Info-hash index entries.
    pub ids: usize,
    /// Tombstones of forgotten records.
    pub forgotten: usize,
    /// Registry event ids remembered.
    pub event_ids: usize,
}

impl Records {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// True if `key` has a record that is not done (a run or its seeding goes on).
    pub(super) fn in_progress(&self, key: &str) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|r| !matches!(r.phase, Phase::Done { .. }))
    }

    /// Records queued or in progress.
    pub(super) fn working(&self) -> usize {
        self.by_key
            .values()
            .filter(|r| matches!(r.phase, Phase::Working))
            .count()
    }

    pub(super) fn counts(&self) -> RecordCounts {
        RecordCounts {
            records: self.by_key.len(),
            working: self.working(),
            seeding: self
                .by_key
                .values()
                .filter(|r| matches!(r.phase, Phase::Seeding { .. }))
                .count(),
            ids: self.by_id.len(),
            forgotten: self.forgotten.by_key.len(),
            event_ids: self.event_ids.len(),
        }
    }

    /// The earlier run of this image: the record (or else the tombstone) of distribution `id`,
    /// or else of `key`.
    pub(super) fn previous(&self, key: &str, id: Option<&str>) -> Option<Previous> {
        let live = id
            .and_then(|h| self.by_id.get(h))
            .and_then(|k| self.by_key.get_key_value(k))
            .or_else(|| self.by_key.get_key_value(key));
        if let Some((k, r)) = live {
            return Some(Previous {
                entry: Entry::Live(k.clone()),
                failed: r.stats.state == ImageState::Failed,
                runs: r.runs,
            });
        }
        let id = id
            .and_then(|h| self.forgotten.by_id.get(h).copied())
            .unwrap_or_else(|| key_id(key));
        self.forgotten.by_key.get(&id).map(|t| Previous {
            entry: Entry::Forgotten(id),
            failed: t.failed,
            runs: t.runs,
        })
    }

    /// What a tombstone remembers of distribution `id`: (failed, runs).
    pub(super) fn forgotten_id(&self, id: &str) -> Option<(bool, u32)> {
        let key = self.forgotten.by_id.get(id)?;
        self.forgotten.by_key.get(key).map(|t| (t.failed, t.runs))
    }

    /// Starts `record` under `key`, replacing `previous` (a done record or a tombstone) and
    /// any record under `key`. Returns tarballs no record owns any more (delete them).
    pub(super) fn admit(
        &mut self,
        key: String,
        record: Record,
        previous: Option<Entry>,
    ) -> Vec<PathBuf> {
        let mut replaced = Vec::new();
        match previous {
            Some(Entry::Live(old)) => replaced.extend(self.remove(&old)),
            Some(Entry::Forgotten(id)) => self.forgotten.remove(&id),
            None => {}
        }
        replaced.extend(self.remove(&key));
        self.forgotten.remove(&key_id(&key));
        let mut discard = Vec::new();
        for old in replaced {
            debug_assert!(
                matches!(old.phase, Phase::Done { .. }),
                "replaced a live run"
            );
            // A stalled download's verified part is reused by the next run of the same torrent.
            match old.tarball {
                Some(path) if Some(&path) != record.tarball.as_ref() => discard.push(path),
                _ => {}
            }
        }
        if let Some(hash) = &record.stats.id {
            self.by_id.insert(hash.clone(), key.clone());
        }
        self.by_key.insert(key, record);
        discard
    }

    /// Removes a record and its index entry (no tombstone).
    fn remove(&mut self, key: &str) -> Option<Record> {
        let record = self.by_key.remove(key)?;
        if let Some(hash) = &record.stats.id {
            if self.by_id.get(hash).map(String::as_str) == Some(key) {
                self.by_id.remove(hash);
            }
        }
        Some(record)
    }

    /// Notes the distribution id a record's run got (the origin learns it after the export).
    pub(super) fn set_id(&mut self, key: &str, id: &str) {
        if let Some(r) = self.by_key.get_mut(key) {
            if let Some(old) = r.stats.id.replace(id.to_owned()) {
                if old != id && self.by_id.get(&old).map(String::as_str) == Some(key) {
                    self.by_id.remove(&old);
                }
            }
            self.by_id.insert(id.to_owned(), key.to_owned());
        }
    }

    /// `key` starts seeding after its load. Returns the stop signals of the oldest seeding
    /// records beyond `max_seeding` (notify them).
    pub(super) fn start_seeding(
        &mut self,
        key: &str,
        stop: Arc<Notify>,
        max_seeding: usize,
    ) -> Vec<Arc<Notify>> {
        let since = self.next_seq();
        let Some(r) = self.by_key.get_mut(key) else {
            return Vec::new();
        };
        r.phase = Phase::Seeding {
            since,
            stop,
            stopping: false,
        };
        let mut seeding: Vec<(u64, &mut Record)> = self
            .by_key
            .values_mut()
            .filter_map(|r| match r.phase {
                Phase::Seeding {
                    since,
                    stopping: false,
                    ..
                } => Some((since, r)),
                _ => None,
            })
            .collect();
        let excess = seeding.len().saturating_sub(max_seeding);
        if excess == 0 {
            return Vec::new();
        }
        seeding.sort_unstable_by_key(|(since, _)| *since);
        let mut cut = Vec::with_capacity(excess);
        for (_, r) in seeding.into_iter().take(excess) {
            if let Phase::Seeding { stop, stopping, .. } = &mut r.phase {
                *stopping = true;
                cut.push(Arc::clone(stop));
            }
        }
        self.seeding_cut += cut.len() as u64;
        cut
    }

    /// `key`'s run and cleanup are over. Forgets the oldest done records beyond
    /// [`FINISHED_KEPT`]; returns tarballs to delete.
    pub(super) fn finish(&mut self, key: &str) -> Vec<PathBuf> {
        let since = self.next_seq();
        if let Some(r) = self.by_key.get_mut(key) {
            r.phase = Phase::Done { since };
            r.torrents.clear();
            r.updates = None;
        }
        self.prune()
    }

    fn prune(&mut self) -> Vec<PathBuf> {
        let mut done: Vec<(u64, usize, &String)> = self
            .by_key
            .iter()
            .filter_map(|(k, r)| match r.phase {
                Phase::Done { since } => Some((since, r.announced_len(), k)),
                _ => None,
            })
            .collect();
        let mut count = done.len();
        let mut bytes: usize = done.iter().map(|(_, len, _)| len).sum();
        if count <= FINISHED_KEPT && bytes <= FINISHED_BYTES_KEPT {
            return Vec::new();
        }
        done.sort_unstable_by_key(|(since, _, _)| *since);
        let mut oldest = Vec::new();
        for (_, len, key) in done {
            if count <= FINISHED_KEPT && bytes <= FINISHED_BYTES_KEPT {
                break;
            }
            count -= 1;
            bytes -= len;
            oldest.push(key.clone());
        }
        let mut discard = Vec::new();
        for key in oldest {
            let Some(record) = self.remove(&key) else {
                continue;
            };
            discard.extend(record.tarball);
            self.forgotten.insert(
                key_id(&key),
                Tombstone {
                    id: record.stats.id,
                    failed: record.stats.state == ImageState::Failed,
                    runs: record.runs,
                },
            );
        }
        discard
    }
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

    /// Sizes of the record tables (bounded; see the module docs).
    pub fn record_counts(&self) -> RecordCounts {
        self.records().counts()
    }
}

/// Deletes tarballs no record owns any more, off the caller's path.
pub(super) fn discard_tarballs(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for path in paths {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => tracing::debug!("deleted {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("removing {}: {e}", path.display()),
            }
        }
    });
}

pub(super) fn new_stats(image: &ImageRef, origin: bool, state: ImageState) -> ImageStats {
    ImageStats {
        reference: image.to_string(),
        image_id: None,
        digest: image.digest.clone(),
        id: None,
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
        layers_loaded_ahead: 0,
        blobs: None,
    }
}

/// Why a refused image was refused (the API's `reason`, /stats' `error`).
pub(super) const NOT_ALLOWED: &str = "not allowed by --allow on this node";

/// Records a refusal in the bounded table /stats shows; returns how often this reference
/// has been refused (while remembered).
pub(super) fn note_refused(records: &mut Records, image: &ImageRef, id: Option<&str>) -> u32 {
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
    if let Some(hash) = id {
        stats.id = Some(hash.to_owned());
    }
    let times = stats.attempts;
    if records.refused.len() >= REFUSED_KEPT {
        records.refused.pop_front();
    }
    records.refused.push_back(stats);
    times
}
