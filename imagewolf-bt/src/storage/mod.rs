//! Where a torrent's bytes live: the [`Storage`] trait and its two backends.
//!
//! Storage is addressed by offset into the torrent's whole payload (all files end to end), so
//! the engine never thinks about file boundaries. The calls are blocking and positioned
//! (`pread`/`pwrite`): the engine calls them from tokio's blocking pool, in batches, never on
//! the async runtime's worker threads.
//!
//! Invariant kept by the engine, not by the backends: a downloading torrent only ever writes
//! whole pieces that have passed their SHA-1 check. Whatever is on disk is therefore good, which
//! makes resume a matter of re-hashing ([`Storage`] + [`crate::metainfo`]), and means a hostile
//! peer can never overwrite verified data.

mod file;
mod memory;

pub use file::{FileStorage, MAX_OPEN_FILES};
pub use memory::MemoryStorage;

use std::io;

/// A torrent's payload, addressed by offset from its first byte.
///
/// Implementations must be safe to call from several threads at once for disjoint ranges
/// (positioned I/O needs no shared cursor).
pub trait Storage: Send + Sync + 'static {
    /// Total payload length in bytes.
    fn len(&self) -> u64;

    /// Always false for a usable torrent (torrents have at least one byte).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Makes written data durable (fsync for files). The engine never calls it on its own:
    /// durability is the caller's choice.
    fn flush(&self) -> io::Result<()>;
}

/// The error for an access outside the payload; a bug in the caller, reported rather than
/// panicking.
fn out_of_range(offset: u64, len: usize, total: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("storage access {offset}+{len} past the end of a {total}-byte payload"),
    )
}

/// Checks `offset + len <= total` without overflow.
fn check_range(offset: u64, len: usize, total: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= total => Ok(()),
        _ => Err(out_of_range(offset, len, total)),
    }
}

#[cfg(test)]
mod tests;
