//! Pins and garbage collection.
//!
//! Eviction picks its victims under the lock, removes them from the index and marks them
//! busy there (so nobody opens, re-commits or pins-and-reads them as present meanwhile),
//! and only then deletes the files, outside the lock. An `open_blob` that got its file
//! before keeps reading it: on Unix an unlinked file lives until its last handle closes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, warn};

use super::{Digest, Shared, Store};

/// Keeps a set of digests from garbage collection while it lives; unpins on drop.
///
/// Pins are counted: several guards may pin one digest, which stays pinned until the last
/// of them is dropped.
pub struct PinGuard {
    shared: Arc<Shared>,
    digests: Vec<Digest>,
}

impl std::fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinGuard")
            .field("digests", &self.digests)
            .finish()
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut index = self.shared.lock();
        for d in &self.digests {
            if let Some(count) = index.pins.get_mut(d) {
                *count -= 1;
                if *count == 0 {
                    index.pins.remove(d);
                }
            }
        }
    }
}

/// A partial file in `ingest/`.
#[derive(Debug)]
pub(super) struct PartialFile {
    pub(super) digest: Digest,
    pub(super) path: PathBuf,
    /// Apparent length (a preallocated sparse file counts whole: it will be).
    pub(super) len: u64,
    pub(super) mtime: SystemTime,
}

/// The `<hex>.partial` files in `ingest_dir` (other names are not ours and are skipped).
pub(super) fn scan_partials(ingest_dir: &Path) -> Vec<PartialFile> {
    let Ok(entries) = fs::read_dir(ingest_dir) else {
        return Vec::new();
    };
    let mut partials = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name.strip_suffix(".partial") else {
            continue;
        };
        let Some(digest) = Digest::from_file_stem(hex) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.file_type().is_file() {
            partials.push(PartialFile {
                digest,
                path: entry.path(),
                len: meta.len(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    partials
}

/// Deletes `path`, an already missing file being fine.
fn remove(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "store: could not delete");
            false
        }
    }
}

impl Store {
    /// Keeps `digests` (committed or partial) from garbage collection while the guard lives
    /// (images in flight). Counted pins: several guards may pin one digest.
    pub fn pin(self: &Arc<Self>, digests: impl IntoIterator<Item = Digest>) -> PinGuard {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut index = self.shared.lock();
        for d in &digests {
            *index.pins.entry(d.clone()).or_insert(0) += 1;
        }
        drop(index);
        PinGuard {
            shared: Arc::clone(&self.shared),
            digests,
        }
    }

    /// Evicts least recently used committed blobs that are not pinned until the committed
    /// bytes are within budget; also deletes unpinned partials (oldest first) while committed
    /// plus partial bytes are over budget. Returns bytes freed. Called automatically after
    /// each commit; public for tests and a periodic sweep.
    pub fn collect_garbage(&self) -> u64 {
        self.shared.collect_garbage(None)
    }
}

impl Shared {
    /// [`Store::collect_garbage`], sparing `exempt` (the blob just committed).
    pub(super) fn collect_garbage(&self, exempt: Option<&Digest>) -> u64 {
        let (victims, meta_changed) = {
            let mut index = self.lock();
            if index.bytes <= self.budget {
                (Vec::new(), false)
            } else {
                let version = index.meta_version;
                let mut candidates: Vec<(u64, Digest)> = index
                    .blobs
                    .iter()
                    .filter(|(d, _)| {
                        Some(*d) != exempt && !index.is_pinned(d) && !index.busy.contains(*d)
                    })
                    .map(|(d, e)| (e.last_used, d.clone()))
                    .collect();
                candidates.sort_unstable();
                let mut victims = Vec::new();
                for (_, d) in candidates {
                    if index.bytes <= self.budget {
                        break;
                    }
                    let Some(entry) = index.remove(&d) else {
                        continue;
                    };
                    index.counters.evictions += 1;
                    index.counters.evicted_bytes += entry.len;
                    index.busy.insert(d.clone());
                    victims.push((d, entry.len));
                }
                (victims, index.meta_version != version)
            }
        };
        let mut freed = 0;
        for (d, len) in &victims {
            debug!(digest = %d, len, "store: evicting");
            remove(&self.blob_file(d));
            freed += len;
        }
        if !victims.is_empty() {
            let mut index = self.lock();
            for (d, _) in &victims {
                index.busy.remove(d);
            }
        }
        if meta_changed {
            self.persist_meta();
        }
        freed + self.collect_partials()
    }

    /// Deletes unpinned partial files, oldest first, while committed plus partial bytes
    /// exceed the budget. Returns bytes freed.
    fn collect_partials(&self) -> u64 {
        let mut partials = scan_partials(&self.ingest_dir);
        let total: u64 = partials.iter().map(|p| p.len).sum();
        let doomed: Vec<PartialFile> = {
            let mut index = self.lock();
            let mut over = (index.bytes + total).saturating_sub(self.budget);
            if over == 0 {
                return 0;
            }
            partials.sort_by_key(|p| p.mtime);
            let mut doomed = Vec::new();
            for p in partials {
                if over == 0 {
                    break;
                }
                if index.is_pinned(&p.digest) || index.busy.contains(&p.digest) {
                    continue;
                }
                over = over.saturating_sub(p.len);
                index.busy.insert(p.digest.clone());
                doomed.push(p);
            }
            doomed
        };
        let mut freed = 0;
        for p in &doomed {
            debug!(path = %p.path.display(), len = p.len, "store: deleting an unpinned partial");
            if remove(&p.path) {
                freed += p.len;
            }
        }
        let mut index = self.lock();
        for p in &doomed {
            index.busy.remove(&p.digest);
        }
        freed
    }
}
