//! The in-memory index behind the store's one mutex, and the persisted tag index (`meta.json`).
//!
//! The index holds one small [`Entry`] per committed blob (its length, a logical last-use
//! tick, when its mtime was last refreshed) and nothing per piece or per byte range. Pins,
//! digests being written and the counters are kept beside it. Nothing here does file I/O:
//! callers copy out what they need, drop the lock and then touch the disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use tracing::warn;

use super::{ingest, Digest, Shared, Store, StoreStats, META_FILE};

/// How often at most a blob's mtime is refreshed when it is used (the on-disk copy of the
/// LRU order, read back by [`Store::open`](super::Store::open)).
pub(super) const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What the index knows of one committed blob.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Its length in bytes.
    pub(super) len: u64,
    /// Logical time of its last use (commit or [`Store::open_blob`](super::Store::open_blob));
    /// larger is more recent. Unique per blob: the index's clock only moves forward.
    pub(super) last_used: u64,
    /// When its file's mtime was last set to "now" (None: not since the store was opened).
    pub(super) touched: Option<Instant>,
}

/// The state guarded by the store's mutex.
///
/// Invariants:
/// - `bytes` is the sum of `len` over `blobs`;
/// - a digest is in `blobs` only while its file `blobs/sha256/<hex>` exists and holds
///   verified content (inserted after the rename, removed before the unlink);
/// - `busy` holds every digest some writer, commit or eviction is working on, so at most one
///   of them at a time creates or deletes a given blob file;
/// - `pins` holds only counts above zero.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// Committed blobs.
    pub(super) blobs: HashMap<Digest, Entry>,
    /// Committed bytes.
    pub(super) bytes: u64,
    /// The logical clock behind [`Entry::last_used`].
    clock: u64,
    /// Pinned digests (committed or partial) and how many guards pin each.
    pub(super) pins: HashMap<Digest, u32>,
    /// Digests being written, committed or evicted.
    pub(super) busy: HashSet<Digest>,
    /// Tags and media types.
    pub(super) meta: Meta,
    /// Bumped by every change of `meta`; the file is rewritten when it is behind.
    pub(super) meta_version: u64,
    /// The counters (its `bytes`, `blobs`, `budget` and `partial_bytes` are not used here:
    /// [`Store::stats`](super::Store::stats) fills them in).
    pub(super) counters: StoreStats,
}

impl Index {
    /// Next logical time.
    pub(super) fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records a committed blob as most recently used; false if it was already there.
    pub(super) fn insert(&mut self, d: &Digest, len: u64) -> bool {
        let last_used = self.tick();
        if let Some(e) = self.blobs.get_mut(d) {
            e.last_used = last_used;
            return false;
        }
        self.blobs.insert(
            d.clone(),
            Entry {
                len,
                last_used,
                touched: None,
            },
        );
        self.bytes += len;
        true
    }

    /// Forgets a blob (its file is about to be deleted); also its media type.
    pub(super) fn remove(&mut self, d: &Digest) -> Option<Entry> {
        let e = self.blobs.remove(d)?;
        self.bytes -= e.len;
        if self.meta.media_types.remove(d).is_some() {
            self.meta_version += 1;
        }
        Some(e)
    }

    /// Marks `d` used now: its length, and whether its mtime is due for a refresh (then it
    /// counts as refreshed from now on). None when absent.
    pub(super) fn use_blob(&mut self, d: &Digest, now: Instant) -> Option<(u64, bool)> {
        let last_used = self.tick();
        let e = self.blobs.get_mut(d)?;
        e.last_used = last_used;
        let touch = e
            .touched
            .is_none_or(|t| now.duration_since(t) >= TOUCH_EVERY);
        if touch {
            e.touched = Some(now);
        }
        Some((e.len, touch))
    }

    /// Whether some guard pins `d`.
    pub(super) fn is_pinned(&self, d: &Digest) -> bool {
        self.pins.contains_key(d)
    }
}

/// `repository` and `tag` of a tag, the key tags are looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RepoTag {
    repository: String,
    tag: String,
}

/// One registry's value of a tag.
#[derive(Debug, Clone)]
struct TagValue {
    registry: String,
    manifest: Digest,
    /// When it was set, in [`Meta::seq`] order: the newest wins a lookup without registry.
    seq: u64,
}

/// The tag index: tags to manifest digests, and manifests' media types.
#[derive(Debug, Default)]
pub(super) struct Meta {
    /// Per repository and tag, the value of each registry that has it (a handful at most).
    tags: HashMap<RepoTag, Vec<TagValue>>,
    /// Media type of each stored manifest (forgotten when the manifest is evicted).
    pub(super) media_types: HashMap<Digest, String>,
    /// Sequence of tag updates.
    seq: u64,
}

/// One tag as written in `meta.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TagRecord {
    registry: String,
    repository: String,
    tag: String,
    manifest: Digest,
    seq: u64,
}

/// `meta.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct MetaFile {
    #[serde(default)]
    tags: Vec<TagRecord>,
    #[serde(default)]
    media_types: BTreeMap<Digest, String>,
}

impl Meta {
    /// Sets `registry/repository:tag` to `manifest`, as the newest tag.
    pub(super) fn set_tag(
        &mut self,
        registry: &str,
        repository: &str,
        tag: &str,
        manifest: &Digest,
    ) {
        self.seq += 1;
        let key = RepoTag {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        };
        let values = self.tags.entry(key).or_default();
        values.retain(|v| v.registry != registry);
        values.push(TagValue {
            registry: registry.to_owned(),
            manifest: manifest.clone(),
            seq: self.seq,
        });
    }

    /// The manifest a tag names: of `registry`, or of whichever registry set it last.
    pub(super) fn tag(
        &self,
        registry: Option<&str>,
        repository: &str,
        tag: &str,
    ) -> Option<Digest> {
        let key = RepoTag {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        };
        let values = self.tags.get(&key)?;
        let value = match registry {
            Some(r) => values.iter().find(|v| v.registry == r),
            None => values.iter().max_by_key(|v| v.seq),
        };
        value.map(|v| v.manifest.clone())
    }

    /// The JSON of `meta.json`.
    pub(super) fn to_json(&self) -> Vec<u8> {
        let mut tags: Vec<TagRecord> = self
            .tags
            .iter()
            .flat_map(|(k, values)| {
                values.iter().map(|v| TagRecord {
                    registry: v.registry.clone(),
                    repository: k.repository.clone(),
                    tag: k.tag.clone(),
                    manifest: v.manifest.clone(),
                    seq: v.seq,
                })
            })
            .collect();
        tags.sort_by_key(|t| t.seq);
        let file = MetaFile {
            tags,
            media_types: self
                .media_types
                .iter()
                .map(|(d, m)| (d.clone(), m.clone()))
                .collect(),
        };
        serde_json::to_vec_pretty(&file).expect("meta.json serializes")
    }

    /// Reads `meta.json`.
    pub(super) fn from_json(bytes: &[u8]) -> Result<Meta, serde_json::Error> {
        let file: MetaFile = serde_json::from_slice(bytes)?;
        let mut meta = Meta {
            media_types: file.media_types.into_iter().collect(),
            ..Meta::default()
        };
        let mut tags = file.tags;
        tags.sort_by_key(|t| t.seq);
        for t in tags {
            // Re-sequenced in file order, so the order of updates survives.
            meta.set_tag(&t.registry, &t.repository, &t.tag, &t.manifest);
        }
        Ok(meta)
    }
}

impl Shared {
    /// Rewrites `meta.json` if it is behind the index. Errors are logged: the tag index is
    /// a cache, and the next change writes it again.
    pub(super) fn persist_meta(&self) {
        let mut written = self
            .meta_written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (version, json) = {
            let index = self.lock();
            (index.meta_version, index.meta.to_json())
        };
        if *written >= version {
            return;
        }
        match ingest::write_atomically(&self.dir, META_FILE, &json) {
            Ok(()) => *written = version,
            Err(e) => warn!(error = %e, "store: could not write the tag index"),
        }
    }
}

/// The tag index. Each change rewrites `meta.json` at once, synchronously (a small file,
/// fsynced): changes come once per image, not per blob.
impl Store {
    /// Records the media type of stored manifest `d` (persisted in `meta.json`).
    pub fn set_manifest_media_type(&self, d: &Digest, media_type: &str) {
        {
            let mut index = self.shared.lock();
            if index.meta.media_types.get(d).map(String::as_str) == Some(media_type) {
                return;
            }
            index
                .meta
                .media_types
                .insert(d.clone(), media_type.to_owned());
            index.meta_version += 1;
        }
        self.shared.persist_meta();
    }

    /// The media type recorded for manifest `d`.
    pub fn manifest_media_type(&self, d: &Digest) -> Option<String> {
        self.shared.lock().meta.media_types.get(d).cloned()
    }

    /// Records that `registry/repository:tag` names `manifest` (persisted in `meta.json`).
    pub fn set_tag(&self, registry: &str, repository: &str, tag: &str, manifest: &Digest) {
        {
            let mut index = self.shared.lock();
            index.meta.set_tag(registry, repository, tag, manifest);
            index.meta_version += 1;
        }
        self.shared.persist_meta();
    }

    /// The manifest `registry/repository:tag` names. `registry` None: any registry's tag of
    /// that repository (most recently set wins).
    pub fn tag(&self, registry: Option<&str>, repository: &str, tag: &str) -> Option<Digest> {
        self.shared.lock().meta.tag(registry, repository, tag)
    }
}
