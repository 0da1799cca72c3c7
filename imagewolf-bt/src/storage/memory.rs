//! An in-memory backend: for tests, benchmarks and payloads small enough to hold.

use std::io;
use std::sync::RwLock;

use super::{check_range, Storage};

/// A payload held in one heap buffer.
///
/// ```
/// use imagewolf_bt::storage::{MemoryStorage, Storage};
/// let s = MemoryStorage::new(8);
/// s.write_at(2, b"wolf").unwrap();
/// let mut buf = [0u8; 4];
/// s.read_at(2, &mut buf).unwrap();
/// assert_eq!(&buf, b"wolf");
/// ```
pub struct MemoryStorage {
    /// The payload. A lock rather than per-range cells: blocks are copied in microseconds, and
    /// the engine writes whole pieces, so contention is negligible.
    data: RwLock<Vec<u8>>,
}

impl MemoryStorage {
    /// A zero-filled payload of `len` bytes (for downloading into).
    pub fn new(len: u64) -> Self {
        Self::from_vec(vec![0; len as usize])
    }

    /// A payload with the given contents (for seeding).
    pub fn from_vec(data: Vec<u8>) -> Self {
        Self {
            data: RwLock::new(data),
        }
    }

    /// A copy of the whole payload.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemoryStorage {
    fn len(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len(), data.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&data[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len(), data.len() as u64)?;
        let start = offset as usize;
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
