//! What the loader reads while the download still runs: the tarball on disk, up to the end
//! of the last segment that is complete (so every byte it passes on was verified piece by
//! piece), and its last bytes only once the whole file's SHA-256 matched the announcement.
//!
//! Why the runtime may start early: `docker load` (and `ctr images import`) first stage the
//! whole archive and only then register anything; an archive that ends in an error registers
//! nothing. So a receiver feeds the runtime the verified prefix as it grows, which overlaps
//! the runtime's staging with the download, and holds back the last [`HOLD_BACK`] bytes
//! until the download has hashed the whole tarball ([`PrefixHasher`], segment by segment as
//! they complete) and found the announced SHA-256. On a mismatch or a failed download the
//! reader fails instead of ending: the runtime sees a broken archive and loads none of it.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::tarball::hex;

/// Bytes kept back until the whole tarball's SHA-256 is checked. Every archive format the
/// runtimes read ends with its index (`manifest.json`, tar's end blocks) and is not
/// registered before its end, so withholding the end withholds the image.
pub(crate) const HOLD_BACK: u64 = 64 << 10;
/// Read size.
const CHUNK: usize = 128 << 10;

/// How much of the tarball may be read, published by the download (and by the walk that
/// loads layers ahead, `preload.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Readable {
    /// Bytes from the start whose pieces are verified: every segment up to there is complete.
    pub(crate) upto: u64,
    /// The whole tarball is there and its SHA-256 matches: its length.
    pub(crate) hashed: Option<u64>,
    /// The end may be read: `hashed`, and the layers loaded ahead (`preload.rs`) are done.
    pub(crate) verified: Option<u64>,
    /// The download failed: readers fail with this.
    pub(crate) failed: Option<String>,
    /// Bytes the walk that loads layers ahead has decided on: the feed passes nothing
    /// beyond (`u64::MAX` when no walk runs, or once it is over).
    pub(crate) decided: u64,
    /// Byte ranges (tar entries of layers loaded ahead) the feed leaves out.
    pub(crate) skip: Vec<(u64, u64)>,
}

impl Default for Readable {
    fn default() -> Self {
        Readable {
            upto: 0,
            hashed: None,
            verified: None,
            failed: None,
            decided: u64::MAX,
            skip: Vec::new(),
        }
    }
}

impl Readable {
    /// The state a download starts from; with `walked`, the feed waits for the walk that
    /// loads layers ahead to decide on each entry.
    pub(crate) fn new(walked: bool) -> Self {
        Readable {
            decided: if walked { 0 } else { u64::MAX },
            ..Readable::default()
        }
    }
}

/// SHA-256 of a file's prefix, extended as the prefix grows (the download hashes each
/// segment once, in order, as soon as it and all before it are complete).
pub(crate) struct PrefixHasher {
    hasher: Sha256,
    /// Bytes hashed so far.
    pub(crate) upto: u64,
}

impl PrefixHasher {
    pub(crate) fn new() -> Self {
        Self {
            hasher: Sha256::new(),
            upto: 0,
        }
    }

    /// Hashes `path` from `self.upto` to `to` (on the blocking pool: it is CPU work).
    pub(crate) async fn advance(&mut self, path: &Path, to: u64) -> io::Result<()> {
        if to <= self.upto {
            return Ok(());
        }
        let mut hasher = std::mem::take(&mut self.hasher);
        let (path, from) = (path.to_owned(), self.upto);
        let hasher = tokio::task::spawn_blocking(move || -> io::Result<Sha256> {
            use std::os::unix::fs::FileExt;
            let file = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; 128 << 10];
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at)?;
                hasher.update(&buf[..n]);
                at += n as u64;
            }
            Ok(hasher)
        })
        .await
        .map_err(io::Error::other)??;
        self.hasher = hasher;
        self.upto = to;
        Ok(())
    }

    /// The hex SHA-256 of everything hashed.
    pub(crate) fn finish(self) -> String {
        hex(&self.hasher.finalize())
    }
}

/// The verified tarball at `path` as a stream of chunks (for [`tokio_util::io::StreamReader`]),
/// read as `readable` allows, leaving out its `skip` ranges if `skipping`. Each call starts a
/// new read from the beginning, so a retried load gets the tarball again (a retry should not
/// skip: what was loaded ahead may be gone).
pub(crate) fn verified_chunks(
    path: PathBuf,
    readable: watch::Receiver<Readable>,
    skipping: bool,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = Feed {
        path,
        file: None,
        pos: 0,
        readable,
        skipping,
        done: false,
    };
    futures::stream::unfold(state, |mut feed| async move {
        if feed.done {
            return None;
        }
        match feed.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), feed)),
            Ok(None) => None,
            Err(e) => {
                feed.done = true;
                Some((Err(e), feed))
            }
        }
    })
}

struct Feed {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    pos: u64,
    readable: watch::Receiver<Readable>,
    skipping: bool,
    done: bool,
}

impl Feed {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let mut now = self.readable.borrow_and_update().clone();
            if let Some(why) = now.failed {
                return Err(io::Error::other(why));
            }
            if !self.skipping {
                now.skip.clear();
            }
            // Entries left out: jump over them (a new read position).
            while let Some(&(_, end)) = now.skip.iter().find(|(start, _)| *start == self.pos) {
                self.pos = end;
                self.file = None;
            }
            let free = now
                .verified
                .unwrap_or_else(|| now.upto.saturating_sub(HOLD_BACK))
                .min(now.decided);
            let next_skip = now
                .skip
                .iter()
                .map(|(start, _)| *start)
                .filter(|start| *start > self.pos)
                .min()
                .unwrap_or(u64::MAX);
            if self.pos < free {
                let len = (free.min(next_skip) - self.pos).min(CHUNK as u64) as usize;
                return self.read(len).await.map(Some);
            }
            if now.verified.is_some_and(|end| self.pos >= end) {
                return Ok(None);
            }
            if self.readable.changed().await.is_err() {
                return Err(io::Error::other(
                    "the download ended before the tarball did",
                ));
            }
        }
    }

    async fn read(&mut self, len: usize) -> io::Result<Bytes> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let mut file = open(&self.path).await?;
                file.seek(io::SeekFrom::Start(self.pos)).await?;
                self.file.insert(file)
            }
        };
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).await?;
        self.pos += len as u64;
        Ok(Bytes::from(buf))
    }
}

async fn open(path: &Path) -> io::Result<tokio::fs::File> {
    tokio::fs::File::open(path)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use imagewolf::TempDir;

    use super::*;

    fn setup(len: usize) -> (TempDir, Vec<u8>) {
        let dir = TempDir::new("feed").unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 300) as u8).collect();
        std::fs::write(dir.path().join("t.tar"), &data).unwrap();
        (dir, data)
    }

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[tokio::test]
    async fn releases_the_verified_prefix_and_the_end_only_once_hashed() {
        let (dir, data) = setup(1 << 20);
        let (tx, rx) = watch::channel(Readable::default());
        let mut chunks = Box::pin(verified_chunks(dir.path().join("t.tar"), rx, true));
        let mut got = Vec::new();
        // The first half verified: everything but the hold-back of it comes out.
        tx.send_modify(|r| r.upto = 512 << 10);
        while (got.len() as u64) < (512 << 10) - HOLD_BACK {
            got.extend_from_slice(&chunks.next().await.unwrap().unwrap());
        }
        assert_eq!(got.len() as u64, (512 << 10) - HOLD_BACK);
        // All pieces verified but the whole file not yet hashed: still the hold-back.
        tx.send_modify(|r| r.upto = 1 << 20);
        while (got.len() as u64) < (1 << 20) - HOLD_BACK {
            got.extend_from_slice(&chunks.next().await.unwrap().unwrap());
        }
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), chunks.next());
        assert!(
            early.await.is_err(),
            "released the end before the hash was checked"
        );
        tx.send_modify(|r| r.verified = Some(1 << 20));
        while let Some(chunk) = chunks.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_failed_download_fails_the_reader() {
        let (dir, _) = setup(300 << 10);
        let (tx, rx) = watch::channel(Readable::default());
        tx.send_modify(|r| r.upto = 300 << 10);
        let mut chunks = Box::pin(verified_chunks(dir.path().join("t.tar"), rx, true));
        let mut got = 0;
        let next = tokio::spawn(async move {
            loop {
                match chunks.next().await {
                    Some(Ok(c)) => got += c.len() as u64,
                    Some(Err(e)) => return (got, e),
                    None => panic!("ended cleanly without verification"),
                }
            }
        });
        tx.send_modify(|r| r.failed = Some("SHA-256 mismatch".into()));
        let (got, err) = next.await.unwrap();
        assert!(err.to_string().contains("mismatch"));
        assert!(got <= (300 << 10) - HOLD_BACK);
        drop(tx);
    }

    #[tokio::test]
    async fn skipped_entries_are_left_out_and_undecided_bytes_wait() {
        let (dir, data) = setup(1 << 20);
        let (tx, rx) = watch::channel(Readable::new(true));
        tx.send_modify(|r| r.upto = 1 << 20);
        let mut chunks = Box::pin(verified_chunks(dir.path().join("t.tar"), rx, true));
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), chunks.next());
        assert!(
            early.await.is_err(),
            "passed bytes the walk had not decided on"
        );
        tx.send_modify(|r| {
            r.skip.push((1000, 300_000));
            r.decided = 400_000;
        });
        let mut got = Vec::new();
        while got.len() < 1000 + 100_000 {
            got.extend_from_slice(&chunks.next().await.unwrap().unwrap());
        }
        tx.send_modify(|r| {
            r.decided = u64::MAX;
            r.verified = Some(1 << 20);
        });
        while let Some(chunk) = chunks.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        let mut expected = data[..1000].to_vec();
        expected.extend_from_slice(&data[300_000..]);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn prefix_hashing_in_steps_is_the_file_hash() {
        let (dir, data) = setup((3 << 20) + 77);
        let path = dir.path().join("t.tar");
        let mut h = PrefixHasher::new();
        for to in [1 << 20, 1 << 20, (2 << 20) + 5, data.len() as u64] {
            h.advance(&path, to).await.unwrap();
        }
        assert_eq!(h.upto, data.len() as u64);
        assert_eq!(h.finish(), sha(&data));
    }
}
