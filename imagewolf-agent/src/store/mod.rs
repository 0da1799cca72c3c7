//! The node-local content-addressed blob store: image layers, configs and manifests by their
//! SHA-256, like containerd's content store.
//!
//! # Layout
//!
//! ```text
//! dir/blobs/sha256/<hex>        committed blobs, read-only (0444), verified before they got there
//! dir/ingest/<hex>.partial      downloads in progress (written by others at any offset; kept
//!                               across restarts so downloads resume)
//! dir/ingest/<hex>.<rand>.tmp   a BlobWriter's temp file (deleted when dropped or on open)
//! dir/meta.json                 the tag index and manifests' media types
//! ```
//!
//! # Decisions
//!
//! - **Nothing unverified is ever readable.** Content reaches `blobs/` only by a rename, after
//!   its length and SHA-256 were checked (while it streamed in for a [`BlobWriter`], by
//!   re-reading the file for [`Store::commit_partial`]) and the file was fsynced; the index
//!   learns of a blob only after the rename. A crash leaves either the old state or the
//!   whole verified blob, so [`Store::open`] trusts what it finds in `blobs/` without
//!   re-hashing it. Content that fails verification is deleted at once.
//! - **Names come only from [`Digest`]s**, which are validated to be `sha256:` and 64
//!   lowercase hex characters, so no path traversal is possible. Files we create are
//!   created with `create_new` (`O_EXCL`, which never follows a symlink); a partial file
//!   that is not a regular file (a symlink) is refused, never renamed into `blobs/`.
//! - **One mutex, never held across `.await` or file I/O.** It guards the index
//!   (`index.rs`: one small entry per blob, its length and last use; pins and busy digests
//!   beside it). Hashing, reads, renames and deletes happen outside it, the slow ones on
//!   tokio's blocking pool. At most one writer, commit or eviction works on a digest at a
//!   time (the busy set), which keeps file and index in step without holding the lock
//!   during I/O.
//! - **Commits finish on the blocking pool.** The rename and the index update run in the
//!   same blocking task, so a caller that drops a commit's future half-way cannot leave a
//!   renamed blob the index does not know.
//! - **Budget and LRU.** The budget bounds committed bytes. A blob larger than the whole
//!   budget is refused before a byte is written. After every commit, least recently used
//!   blobs (by a logical clock; [`Store::open_blob`] and commits count as uses) that are not
//!   pinned are evicted until the committed bytes fit; the blob just committed is spared by
//!   that sweep, so it is readable right after its commit even when everything else is
//!   pinned (the store is then over budget until pins are released and a sweep runs).
//!   Unpinned partial files are deleted (oldest first) while committed plus partial bytes
//!   exceed the budget. The LRU order survives restarts through the files' mtimes,
//!   refreshed on use at most once a minute per blob (`index::TOUCH_EVERY`).
//! - **Pins are counted** ([`PinGuard`]): an image in flight pins its blobs (committed or
//!   still partial) and they are never evicted while any guard for them lives. Pin before
//!   writing: an unpinned blob may be evicted by the next commit's sweep.
//! - **Tags are a cache.** `meta.json` is rewritten whole (temp file, fsync, rename) after
//!   every change; an unreadable one is logged and started afresh rather than keeping the
//!   agent from starting. Media types are forgotten with their evicted manifests; tags are
//!   kept (a tag naming an absent manifest still says what to fetch).
//!
//! # Files
//!
//! `digest.rs` ([`Digest`]), `error.rs` ([`StoreError`]), `index.rs` (the in-memory index,
//! `meta.json` and the tag methods), `ingest.rs` (temp files, installing, committing
//! partials), `writer.rs` ([`BlobWriter`]), `gc.rs` (pins and eviction).

mod digest;
mod error;
mod gc;
mod index;
mod ingest;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_lifecycle;
mod writer;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, warn};

pub use digest::Digest;
pub use error::StoreError;
pub use gc::PinGuard;
pub use writer::BlobWriter;

use index::{Index, Meta};

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .field("budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

/// Name of the tag index file in the store's directory.
const META_FILE: &str = "meta.json";

/// Counters and sizes of a store, for the agent's stats.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct StoreStats {
    /// Committed bytes.
    pub bytes: u64,
    /// Committed blobs.
    pub blobs: u64,
    /// The budget for committed bytes.
    pub budget: u64,
    /// Bytes of partial files in `ingest/` (their apparent length).
    pub partial_bytes: u64,
    /// [`Store::open_blob`] calls that found their blob.
    pub hits: u64,
    /// [`Store::open_blob`] calls that did not.
    pub misses: u64,
    /// Blobs evicted by garbage collection.
    pub evictions: u64,
    /// Bytes of the blobs evicted.
    pub evicted_bytes: u64,
    /// Blobs committed.
    pub commits: u64,
    /// Content refused at verification (wrong digest, wrong length, overflow).
    pub rejected: u64,
}

/// The node-local content-addressed blob store. Shared as `Arc<Store>`.
pub struct Store {
    shared: Arc<Shared>,
}

/// What the store's handles share: blocking tasks, writers and pin guards hold it too.
struct Shared {
    /// The store's directory.
    dir: PathBuf,
    /// `dir/blobs/sha256`.
    blobs_dir: PathBuf,
    /// `dir/ingest`.
    ingest_dir: PathBuf,
    /// Budget for committed bytes.
    budget: u64,
    /// The index; never held across `.await` or file I/O.
    index: Mutex<Index>,
    /// Woken at every commit ([`Store::wait_for`]).
    committed: Notify,
    /// The `meta_version` last written to `meta.json`; held while writing it, so writes are
    /// serialized and an older snapshot never overwrites a newer one.
    meta_written: Mutex<u64>,
}

impl Shared {
    /// Locks the index. A panic while it was held cannot leave it half-updated (no code
    /// under the lock panics between related updates), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where blob `d` lives once committed.
    fn blob_file(&self, d: &Digest) -> PathBuf {
        self.blobs_dir.join(d.hex())
    }
}

impl Store {
    /// Opens (creating) the store in `dir` with a budget of `budget` bytes of committed blobs.
    /// Scans `dir/blobs/sha256/` (sizes; LRU order from file mtime), loads `dir/meta.json`,
    /// deletes leftover `*.tmp` files; keeps `dir/ingest/*.partial` (downloads resume from them).
    /// Then collects garbage, in case the budget shrank.
    pub fn open(dir: &Path, budget: u64) -> Result<Arc<Store>, StoreError> {
        let blobs_dir = dir.join("blobs").join("sha256");
        let ingest_dir = dir.join("ingest");
        for d in [&blobs_dir, &ingest_dir] {
            fs::create_dir_all(d).map_err(|e| StoreError::io("creating", d, e))?;
        }
        let mut index = Index::default();
        let mut found = scan_blobs(&blobs_dir)?;
        found.sort();
        for (_, d, len) in &found {
            index.insert(d, *len);
        }
        remove_temps(dir);
        remove_temps(&ingest_dir);
        index.meta = load_meta(&dir.join(META_FILE))?;
        debug!(dir = %dir.display(), blobs = found.len(), bytes = index.bytes, "store: opened");
        let store = Arc::new(Store {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                blobs_dir,
                ingest_dir,
                budget,
                index: Mutex::new(index),
                committed: Notify::new(),
                meta_written: Mutex::new(0),
            }),
        });
        store.collect_garbage();
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Whether `d` is committed.
    pub fn contains(&self, d: &Digest) -> bool {
        self.shared.lock().blobs.contains_key(d)
    }

    /// The length of committed blob `d`.
    pub fn len_of(&self, d: &Digest) -> Option<u64> {
        self.shared.lock().blobs.get(d).map(|e| e.len)
    }

    /// Path of a committed blob (for seeding it read-only). None if absent. The file may be
    /// evicted later unless `d` is pinned.
    pub fn blob_path(&self, d: &Digest) -> Option<PathBuf> {
        self.contains(d).then(|| self.shared.blob_file(d))
    }

    /// Opens a committed blob for reading, with its length: counts a hit and marks it
    /// recently used (also touches its mtime, at most once a minute per blob, so the LRU
    /// order survives restarts); a miss is counted when absent. The open file stays readable
    /// even if the blob is evicted afterwards.
    pub fn open_blob(&self, d: &Digest) -> Option<(fs::File, u64)> {
        let used = {
            let mut index = self.shared.lock();
            let used = index.use_blob(d, Instant::now());
            match used {
                Some(_) => index.counters.hits += 1,
                None => index.counters.misses += 1,
            }
            used
        };
        let (len, touch) = used?;
        let path = self.shared.blob_file(d);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                // Evicted between the lookup and the open: a miss after all.
                debug!(path = %path.display(), error = %e, "store: blob gone while opening");
                let mut index = self.shared.lock();
                index.counters.hits -= 1;
                index.counters.misses += 1;
                return None;
            }
        };
        if touch {
            if let Err(e) = file.set_modified(SystemTime::now()) {
                debug!(path = %path.display(), error = %e, "store: could not touch blob");
            }
        }
        Some((file, len))
    }

    /// Reads a small committed blob whole (manifests, configs), refusing anything over `max`
    /// bytes. `Ok(None)` when absent (counted as a miss, like [`Store::open_blob`]).
    pub fn read_small(&self, d: &Digest, max: usize) -> Result<Option<Bytes>, StoreError> {
        let Some((file, len)) = self.open_blob(d) else {
            return Ok(None);
        };
        if len > max as u64 {
            return Err(StoreError::ExceedsLimit {
                digest: d.clone(),
                len,
                max,
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len + 1)
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::io("reading", self.shared.blob_file(d), e))?;
        if buf.len() as u64 != len {
            return Err(StoreError::Truncated {
                digest: d.clone(),
                expected: len,
                actual: buf.len() as u64,
            });
        }
        Ok(Some(Bytes::from(buf)))
    }

    /// Where a download of `d` (written by someone else at arbitrary offsets, e.g. a
    /// BitTorrent engine) keeps its bytes until committed: `dir/ingest/<hex>.partial`.
    /// Stable across restarts.
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.shared.ingest_dir.join(format!("{}.partial", d.hex()))
    }

    /// Waits until `d` is committed or `timeout` passes; true if present. Sleeps on the
    /// store's commit notification, never polls.
    pub async fn wait_for(&self, d: &Digest, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before the check: a commit between the check and the await still wakes it.
            let committed = self.shared.committed.notified();
            if self.contains(d) {
                return true;
            }
            if tokio::time::timeout_at(deadline, committed).await.is_err() {
                return self.contains(d);
            }
        }
    }

    /// Sizes and counters.
    pub fn stats(&self) -> StoreStats {
        let mut stats = {
            let index = self.shared.lock();
            StoreStats {
                bytes: index.bytes,
                blobs: index.blobs.len() as u64,
                ..index.counters.clone()
            }
        };
        stats.budget = self.shared.budget;
        stats.partial_bytes = gc::scan_partials(&self.shared.ingest_dir)
            .iter()
            .map(|p| p.len)
            .sum();
        stats
    }
}

/// The committed blobs in `blobs_dir`: (mtime, digest, length). Anything else there is
/// logged and ignored (not counted, not deleted).
fn scan_blobs(blobs_dir: &Path) -> Result<Vec<(SystemTime, Digest, u64)>, StoreError> {
    let entries = fs::read_dir(blobs_dir).map_err(|e| StoreError::io("listing", blobs_dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("listing", blobs_dir, e))?;
        let path = entry.path();
        let digest = entry
            .file_name()
            .to_str()
            .and_then(|name| Digest::parse(&format!("sha256:{name}")).ok());
        // `DirEntry::metadata` does not follow symlinks.
        let meta = entry.metadata();
        match (digest, meta) {
            (Some(d), Ok(meta)) if meta.file_type().is_file() => {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((mtime, d, meta.len()));
            }
            _ => warn!(path = %path.display(), "store: ignoring a file that is not a blob"),
        }
    }
    Ok(found)
}

/// Deletes leftover `*.tmp` files in `dir` (writers and `meta.json` writes that never
/// finished); failures are logged.
fn remove_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_tmp = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".tmp"));
        if is_tmp && entry.file_type().is_ok_and(|t| !t.is_dir()) {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "store: removed a leftover temp file"),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "store: could not remove a temp file")
                }
            }
        }
    }
}

/// Loads `meta.json`: empty when absent, and when unreadable as JSON (logged; it is a cache).
fn load_meta(path: &Path) -> Result<Meta, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Meta::default()),
        Err(e) => return Err(StoreError::io("reading", path, e)),
    };
    Ok(Meta::from_json(&bytes).unwrap_or_else(|e| {
        warn!(path = %path.display(), error = %e, "store: unreadable tag index, starting afresh");
        Meta::default()
    }))
}
