//! [`StoreError`]: everything the store refuses or fails at, each naming the digest or path.

use std::io;
use std::path::PathBuf;

use super::Digest;

/// Why a store operation failed. Every variant names the digest or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A string that is not `sha256:<64 lowercase hex>`.
    #[error("invalid digest {input:?}: {reason}")]
    InvalidDigest {
        /// The refused input (at most its first 100 characters).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The content does not hash to the digest it was stored under; it was deleted.
    #[error("content for {expected} hashes to {actual}; refused and deleted")]
    DigestMismatch {
        /// The digest the content was announced as.
        expected: Digest,
        /// What it actually hashes to.
        actual: Digest,
    },
    /// Fewer bytes than announced arrived (or a partial file is shorter); refused and deleted.
    #[error("content for {digest} is {actual} bytes, {expected} expected; refused")]
    Truncated {
        /// The blob.
        digest: Digest,
        /// The announced length.
        expected: u64,
        /// What arrived.
        actual: u64,
    },
    /// A write would go past the announced length (or a partial file is longer than it).
    #[error(
        "content for {digest} exceeds its announced length of {len} bytes (reached {attempted})"
    )]
    Overflow {
        /// The blob.
        digest: Digest,
        /// The announced length.
        len: u64,
        /// The length the write (or partial file) would reach.
        attempted: u64,
    },
    /// The blob alone is larger than the store's whole budget.
    #[error("{digest} is {len} bytes, more than the store's whole budget of {budget} bytes")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its length.
        len: u64,
        /// The store's budget.
        budget: u64,
    },
    /// Another writer (or commit, or eviction) of the same digest is in progress.
    #[error("{digest} is already being written, committed or evicted")]
    Busy {
        /// The blob.
        digest: Digest,
    },
    /// [`Store::read_small`](super::Store::read_small) of a blob larger than its limit.
    #[error("{digest} is {len} bytes, over the limit of {max} bytes for reading it whole")]
    ExceedsLimit {
        /// The blob.
        digest: Digest,
        /// Its length.
        len: u64,
        /// The caller's limit.
        max: usize,
    },
    /// A partial file that is not a regular file (a symlink, a directory): never committed.
    #[error("{path} is not a regular file; refused")]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
    },
    /// An I/O error (ENOSPC included) on a file or directory of the store.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("writing", "renaming", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A blocking task of the store panicked or was cancelled by the runtime shutting down.
    #[error("store task for {digest} did not finish: {reason}")]
    Task {
        /// The blob.
        digest: Digest,
        /// The join error.
        reason: String,
    },
}

impl StoreError {
    /// An [`StoreError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
