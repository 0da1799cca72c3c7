//! [`BlobWriter`]: writes one blob from a stream of known length, hashing as it goes.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::ingest::{install, Claim};
use super::{Digest, StoreError};

/// Writes one blob of a known digest and length: into its own temp file
/// (`dir/ingest/<hex>.<random>.tmp`), hashing every byte as it is accepted.
///
/// Invariants: `written <= len`; `hasher` has seen exactly the `written` bytes the file
/// accepted, in order. Once a write fails or would overflow, the writer is `failed` and
/// refuses everything (the content can no longer be right). Dropped uncommitted, it deletes
/// its temp file. Also an [`AsyncWrite`] (for `tokio::io::copy`), with the same bound and
/// hashing; `poll_shutdown` only flushes, committing is [`BlobWriter::commit`].
pub struct BlobWriter {
    digest: Digest,
    len: u64,
    written: u64,
    hasher: Sha256,
    /// Some until committed.
    file: Option<tokio::fs::File>,
    path: PathBuf,
    /// Some until committed: deletes the temp file and frees the digest when dropped.
    claim: Option<Claim>,
    failed: bool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("digest", &self.digest)
            .field("len", &self.len)
            .field("written", &self.written)
            .field("path", &self.path)
            .finish()
    }
}

impl BlobWriter {
    /// A writer of `len` bytes into `file` (at `path`), for the digest `claim` holds.
    pub(super) fn new(claim: Claim, file: tokio::fs::File, path: PathBuf, len: u64) -> BlobWriter {
        BlobWriter {
            digest: claim.digest.clone(),
            len,
            written: 0,
            hasher: Sha256::new(),
            file: Some(file),
            path,
            claim: Some(claim),
            failed: false,
        }
    }

    /// The temp file (others may open it read-only to seed ranges already written and
    /// flushed; it is unverified until committed).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes all of `buf`; refuses, writing nothing, if it would go past the announced
    /// length ([`StoreError::Overflow`]).
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let attempted = self.written + buf.len() as u64;
        if attempted > self.len {
            return Err(self.overflow(attempted));
        }
        self.check_failed()?;
        AsyncWriteExt::write_all(self, buf)
            .await
            .map_err(|e| StoreError::io("writing", &self.path, e))
    }

    /// Flushes (to the OS, so ranges written are readable by other file handles) without
    /// committing.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.check_failed()?;
        AsyncWriteExt::flush(self)
            .await
            .map_err(|e| StoreError::io("flushing", &self.path, e))
    }

    /// Checks length and digest, and renames the blob into place. On a mismatch the temp
    /// file is deleted and [`StoreError::DigestMismatch`] / [`StoreError::Truncated`]
    /// returned; nothing becomes readable.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.flush().await?;
        let mut claim = self.claim.take().expect("a writer is committed once");
        let file = self.file.take().expect("a writer is committed once");
        let hasher = std::mem::take(&mut self.hasher);
        let shared = Arc::clone(&claim.shared);
        if self.written < self.len {
            shared.reject();
            return Err(StoreError::Truncated {
                digest: self.digest.clone(),
                expected: self.len,
                actual: self.written,
            });
        }
        let actual = Digest::from_sha256(hasher);
        if actual != self.digest {
            shared.reject();
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let file = file.into_std().await;
        let (d, len) = (self.digest.clone(), self.len);
        let join = tokio::task::spawn_blocking(move || {
            if !shared.lock().blobs.contains_key(&d) {
                let temp = claim
                    .temp
                    .clone()
                    .expect("a writer's claim has its temp file");
                install(&file, &temp, &shared.blob_file(&d))?;
                claim.temp = None;
                shared.committed(&d, len);
            }
            // Already committed by someone else: the claim deletes our copy.
            drop(claim);
            Ok(())
        });
        join.await.map_err(|e| StoreError::Task {
            digest: self.digest.clone(),
            reason: e.to_string(),
        })?
    }

    /// Marks the writer failed by an overflow to `attempted` bytes.
    fn overflow(&mut self, attempted: u64) -> StoreError {
        if !self.failed {
            self.failed = true;
            if let Some(claim) = &self.claim {
                claim.shared.reject();
            }
        }
        StoreError::Overflow {
            digest: self.digest.clone(),
            len: self.len,
            attempted,
        }
    }

    /// An error if an earlier write failed.
    fn check_failed(&self) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::io(
                "writing",
                &self.path,
                failed_error(&self.digest),
            ));
        }
        Ok(())
    }
}

/// The error of a writer that failed before.
fn failed_error(d: &Digest) -> io::Error {
    io::Error::other(format!(
        "an earlier write of {d} failed; the writer is unusable"
    ))
}

impl Drop for BlobWriter {
    /// A writer dropped uncommitted deletes its temp file (through its claim).
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            let (digest, written) = (&self.digest, self.written);
            debug!(%digest, written, "store: writer dropped uncommitted");
            drop(self.file.take());
            drop(claim);
        }
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(failed_error(&this.digest)));
        }
        let attempted = this.written + buf.len() as u64;
        if attempted > this.len {
            let e = this.overflow(attempted);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Err(failed_error(&this.digest)));
        };
        match Pin::new(file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                this.failed = true;
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = Pin::new(file).poll_flush(cx);
        if let Poll::Ready(Err(_)) = &result {
            this.failed = true;
        }
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
