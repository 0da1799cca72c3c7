//! Getting content in: [`BlobWriter`] (a stream of known length, hashed as it is written),
//! [`Store::commit_partial`] (a file someone else wrote, hashed when done) and
//! [`Store::put_bytes`].
//!
//! Both paths end the same way ([`install`] then [`Shared::committed`]): fsync the content,
//! make it read-only, rename it into `blobs/sha256/<hex>`, fsync the directory, and only
//! then record it in the index and wake [`Store::wait_for`]. A [`Claim`] on the digest (its
//! place in the index's busy set) is held from the start to the end, and it deletes the
//! temp file if anything fails or the writer is dropped uncommitted.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use super::{BlobWriter, Digest, Shared, Store, StoreError};

/// Read size when hashing a partial file.
const HASH_CHUNK: usize = 256 << 10;

/// Creates a new temp file `dir/<stem>.<random>.tmp` with `create_new` (never follows or
/// reuses an existing path).
fn create_temp(dir: &Path, stem: &str) -> Result<(File, PathBuf), StoreError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let salt =
            RandomState::new().hash_one((std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let path = dir.join(format!("{stem}.{salt:016x}.tmp"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(StoreError::io("creating", path, e)),
        }
    }
}

/// Fsyncs a directory, so a rename in it survives a crash. Failures are logged.
fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        warn!(dir = %dir.display(), error = %e, "store: could not sync directory");
    }
}

/// Writes `dir/name` atomically: a temp file, fsynced, renamed over it.
pub(super) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let (mut file, temp) = create_temp(dir, name)?;
    let target = dir.join(name);
    let result = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io("writing", &temp, e))
        .and_then(|()| {
            fs::rename(&temp, &target).map_err(|e| StoreError::io("renaming", &temp, e))
        });
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    } else {
        sync_dir(dir);
    }
    result
}

/// Makes verified content `from` (open as `file`) the blob at `to`: fsync, read-only, rename.
pub(super) fn install(file: &File, from: &Path, to: &Path) -> Result<(), StoreError> {
    file.sync_all()
        .map_err(|e| StoreError::io("syncing", from, e))?;
    file.set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(|e| StoreError::io("making read-only", from, e))?;
    fs::rename(from, to).map_err(|e| StoreError::io("renaming into place", from, e))?;
    if let Some(parent) = to.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// A digest marked busy in the index while one writer or commit works on it; unmarks it on
/// drop, first deleting `temp` if set (the writer's temp file, not yet renamed).
pub(super) struct Claim {
    pub(super) shared: Arc<Shared>,
    pub(super) digest: Digest,
    pub(super) temp: Option<PathBuf>,
}

impl Claim {
    /// Claims `d`, or [`StoreError::Busy`].
    fn new(shared: &Arc<Shared>, d: &Digest) -> Result<Claim, StoreError> {
        if !shared.lock().busy.insert(d.clone()) {
            return Err(StoreError::Busy { digest: d.clone() });
        }
        Ok(Claim {
            shared: Arc::clone(shared),
            digest: d.clone(),
            temp: None,
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            match fs::remove_file(&temp) {
                Ok(()) => debug!(path = %temp.display(), "store: deleted temp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %temp.display(), error = %e, "store: could not delete temp file")
                }
            }
        }
        self.shared.lock().busy.remove(&self.digest);
    }
}

impl Shared {
    /// Counts content refused at verification.
    pub(super) fn reject(&self) {
        self.lock().counters.rejected += 1;
    }

    /// Records blob `d` as committed (its file is in place), wakes waiters and collects
    /// garbage, sparing `d`.
    pub(super) fn committed(&self, d: &Digest, len: u64) {
        {
            let mut index = self.lock();
            index.insert(d, len);
            index.counters.commits += 1;
        }
        debug!(digest = %d, len, "store: committed");
        self.committed.notify_waiters();
        self.collect_garbage(Some(d));
    }
}

/// Hashes `file` from where it stands to its end, in bounded memory: `(bytes read, digest)`.
fn hash_file(file: &File, path: &Path) -> Result<(u64, Digest), StoreError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; HASH_CHUNK];
    let mut total = 0u64;
    let mut reader = file;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io("reading", path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, Digest::from_sha256(hasher)))
}

/// The blocking half of [`Store::commit_partial`], holding `claim` throughout.
fn commit_partial_blocking(claim: Claim, partial: PathBuf, len: u64) -> Result<(), StoreError> {
    let shared = Arc::clone(&claim.shared);
    let d = claim.digest.clone();
    if shared.lock().blobs.contains_key(&d) {
        let _ = fs::remove_file(&partial);
        return Ok(());
    }
    // Refuse a symlink (it would be renamed into blobs/ as a link to who knows what), and
    // check the file opened is the one inspected.
    let link_meta =
        fs::symlink_metadata(&partial).map_err(|e| StoreError::io("inspecting", &partial, e))?;
    let file = File::open(&partial).map_err(|e| StoreError::io("opening", &partial, e))?;
    let meta = file
        .metadata()
        .map_err(|e| StoreError::io("inspecting", &partial, e))?;
    if !link_meta.file_type().is_file()
        || (meta.dev(), meta.ino()) != (link_meta.dev(), link_meta.ino())
    {
        return Err(StoreError::NotRegularFile { path: partial });
    }
    let refuse = |e: StoreError| {
        warn!(path = %partial.display(), error = %e, "store: partial refused, deleting it");
        shared.reject();
        let _ = fs::remove_file(&partial);
        Err(e)
    };
    // The length first (no hashing of a file that cannot match), then again as read, in
    // case the file changed meanwhile.
    let (read, actual) = match meta.len() {
        n if n == len => hash_file(&file, &partial)?,
        n => (n, d.clone()),
    };
    if read < len {
        return refuse(StoreError::Truncated {
            digest: d,
            expected: len,
            actual: read,
        });
    }
    if read > len {
        return refuse(StoreError::Overflow {
            digest: d,
            len,
            attempted: read,
        });
    }
    if actual != d {
        return refuse(StoreError::DigestMismatch {
            expected: d,
            actual,
        });
    }
    install(&file, &partial, &shared.blob_file(&d))?;
    shared.committed(&d, len);
    drop(claim);
    Ok(())
}

impl Store {
    /// Verifies the partial file of `d` (length == `len`, SHA-256 == `d`, computed on tokio's
    /// blocking pool, streaming, bounded memory) and moves it into place (atomic rename). On
    /// a mismatch (digest or length) the partial is deleted and nothing becomes readable.
    /// Already present: Ok, partial removed. Larger than the whole budget:
    /// [`StoreError::TooLarge`], partial kept (GC deletes it unless pinned). Another writer
    /// or commit of `d` under way: [`StoreError::Busy`].
    pub async fn commit_partial(&self, d: &Digest, len: u64) -> Result<(), StoreError> {
        let partial = self.partial_path(d);
        if self.contains(d) {
            let _ = fs::remove_file(&partial);
            return Ok(());
        }
        self.check_budget(d, len)?;
        let claim = Claim::new(&self.shared, d)?;
        // The whole commit runs in the blocking task: dropping this future cannot stop it
        // between the rename and the index update.
        tokio::task::spawn_blocking(move || commit_partial_blocking(claim, partial, len))
            .await
            .map_err(|e| StoreError::Task {
                digest: d.clone(),
                reason: e.to_string(),
            })?
    }

    /// Starts writing `d` of exactly `len` bytes from a stream (the origin reading the
    /// registry). Refuses at once (before writing) when `len` exceeds the budget
    /// ([`StoreError::TooLarge`]) or another writer of `d` is open ([`StoreError::Busy`]).
    /// The writer hashes as it writes.
    pub fn writer(&self, d: &Digest, len: u64) -> Result<BlobWriter, StoreError> {
        self.check_budget(d, len)?;
        let mut claim = Claim::new(&self.shared, d)?;
        let (file, path) = create_temp(&self.shared.ingest_dir, d.hex())?;
        claim.temp = Some(path.clone());
        Ok(BlobWriter::new(
            claim,
            tokio::fs::File::from_std(file),
            path,
            len,
        ))
    }

    /// Convenience: verifies and stores small content (manifests, configs) at once. Already
    /// present: Ok. The digest is checked before anything touches the disk.
    pub async fn put_bytes(&self, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if self.contains(d) {
            return Ok(());
        }
        let actual = Digest::of(bytes);
        if actual != *d {
            self.shared.reject();
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        let mut writer = self.writer(d, bytes.len() as u64)?;
        writer.write_all(bytes).await?;
        writer.commit().await
    }

    /// [`StoreError::TooLarge`] when `len` exceeds the whole budget.
    fn check_budget(&self, d: &Digest, len: u64) -> Result<(), StoreError> {
        if len > self.shared.budget {
            return Err(StoreError::TooLarge {
                digest: d.clone(),
                len,
                budget: self.shared.budget,
            });
        }
        Ok(())
    }
}
