//! Creating torrents in one pass over the payload (files and directories on disk: `create.rs`).
//!
//! The agent streams `docker save` output to disk; reading it back to hash it would double
//! the disk traffic. So the builder sits in the stream: every chunk read is written to a sink
//! and fed to a [`PieceHasher`], and a multi-GiB image never sits in memory (one read buffer
//! plus 20 bytes per piece).
//!
//! Everything that can be checked before reading (name, piece length) is checked first, so
//! a bad argument fails before gigabytes are copied.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::hasher::{piece_length_for, PieceHasher};
use super::parse::check_component;
use super::{FileLayout, Info, Metainfo, MetainfoError};
use crate::Lengths;

/// Read size of the blocking paths: large enough that syscalls are cheap per byte.
const SYNC_BUF_LEN: usize = 256 * 1024;

/// Read size of the async path. SHA-1 of a chunk runs inline on the runtime thread; with
/// SHA-NI (~1.5-2 GB/s) 64 KiB takes ~40 us, well under the ~100 us a task should run between
/// awaits, and hashing is far faster than the disk or `docker save` feeding it. Handing each
/// piece to `spawn_blocking` would need a copy of the piece and buy nothing at these rates.
const ASYNC_BUF_LEN: usize = 64 * 1024;

/// Build a torrent in ONE pass over a byte stream: every byte read is written to `sink` and
/// hashed, so a multi-GiB image never sits in memory.
///
/// ```
/// use imagewolf_bt::metainfo::TorrentBuilder;
/// let data = vec![7u8; 100_000];
/// let mut copy = Vec::new();
/// let torrent = TorrentBuilder::new("image.tar")
///     .piece_length(32 * 1024)
///     .announce("http://10.0.0.1:6969/announce")
///     .build_from_reader(&data[..], data.len() as u64, &mut copy)
///     .unwrap();
/// assert_eq!(copy, data);
/// assert_eq!(torrent.lengths().num_pieces(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct TorrentBuilder {
    /// File name stored in `info.name`.
    name: String,
    /// Explicit piece length; `None` = [`piece_length_for`] the size hint.
    piece_length: Option<u32>,
    /// Primary tracker.
    announce: Option<String>,
    /// BEP 12 tiers.
    announce_list: Vec<Vec<String>>,
    /// Free-form comment.
    comment: Option<String>,
    /// `created by`; defaults to `imagewolf/<version>`.
    created_by: Option<String>,
    /// `creation date`; unset by default so identical inputs give identical files.
    creation_date: Option<i64>,
    /// BEP 27 private flag.
    private: bool,
}

impl TorrentBuilder {
    /// A builder for a single-file torrent whose file is called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            piece_length: None,
            announce: None,
            announce_list: Vec::new(),
            comment: None,
            created_by: Some(concat!("imagewolf/", env!("CARGO_PKG_VERSION")).to_owned()),
            creation_date: None,
            private: false,
        }
    }

    /// Uses `len` bytes per piece instead of [`piece_length_for`] the size hint.
    pub fn piece_length(mut self, len: u32) -> Self {
        self.piece_length = Some(len);
        self
    }

    /// Sets the primary tracker URL.
    pub fn announce(mut self, url: impl Into<String>) -> Self {
        self.announce = Some(url.into());
        self
    }

    /// Sets BEP 12 tracker tiers (empty tiers are dropped, as parsing would drop them).
    pub fn announce_list(mut self, mut tiers: Vec<Vec<String>>) -> Self {
        tiers.retain(|tier| !tier.is_empty());
        self.announce_list = tiers;
        self
    }

    /// Announces to `urls` in order of preference: the first is `announce` and, with more
    /// than one, each is a tier of its own in `announce-list` (BEP 12: a client tries the
    /// next tier only when the ones before fail). No URL: no tracker.
    ///
    /// ```
    /// use imagewolf_bt::metainfo::TorrentBuilder;
    /// let urls = [
    ///     "http://10.0.0.2:7777/announce".to_string(),
    ///     "http://10.0.0.1:7777/announce".to_string(),
    /// ];
    /// let data = b"hello";
    /// let m = TorrentBuilder::new("a")
    ///     .trackers(&urls)
    ///     .build_from_reader(&data[..], data.len() as u64, std::io::sink())
    ///     .unwrap();
    /// assert_eq!(m.announce_urls(), urls);
    /// assert_eq!(m.announce_list.len(), 2);
    /// ```
    pub fn trackers(mut self, urls: &[String]) -> Self {
        self.announce = urls.first().cloned();
        self.announce_list = if urls.len() > 1 {
            urls.iter().map(|u| vec![u.clone()]).collect()
        } else {
            Vec::new()
        };
        self
    }

    /// Sets the comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// Sets (or, with `None`, omits) the `created by` field.
    pub fn created_by(mut self, created_by: Option<String>) -> Self {
        self.created_by = created_by;
        self
    }

    /// Sets the creation date (seconds since the Unix epoch).
    pub fn creation_date(mut self, secs: i64) -> Self {
        self.creation_date = Some(secs);
        self
    }

    /// Sets the BEP 27 private flag.
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }

    /// The piece length to use, checked along with the name before any byte is read.
    pub(super) fn start(&self, size_hint: u64) -> Result<PieceHasher, MetainfoError> {
        let piece_length = self
            .piece_length
            .unwrap_or_else(|| piece_length_for(size_hint));
        Lengths::new(1, piece_length)?;
        check_component(&self.name, || "info.name".into())?;
        Ok(PieceHasher::new(piece_length))
    }

    fn finish(self, hasher: PieceHasher) -> Result<Metainfo, MetainfoError> {
        let length = hasher.total();
        self.finish_with(hasher, FileLayout::Single { length })
    }

    /// The torrent of what `hasher` hashed, laid out as `files`.
    pub(super) fn finish_with(
        self,
        hasher: PieceHasher,
        files: FileLayout,
    ) -> Result<Metainfo, MetainfoError> {
        let piece_length = hasher.piece_length();
        let (pieces, _) = hasher.finish();
        let info = Info {
            name: self.name,
            piece_length,
            pieces,
            files,
            private: self.private,
        };
        let mut m = Metainfo::from_info(info, self.announce)?;
        m.announce_list = self.announce_list;
        m.comment = self.comment;
        m.created_by = self.created_by;
        m.creation_date = self.creation_date;
        Ok(m)
    }

    /// Reads `reader` to its end, copying every byte to `sink` (flushed at the end) and
    /// hashing it. The piece length is the explicit one or [`piece_length_for`]`(size_hint)`;
    /// the hint only picks the piece length, the real length is what was read. An empty
    /// stream is an error (a torrent has at least one byte).
    pub fn build_from_reader<R: Read, W: Write>(
        self,
        mut reader: R,
        size_hint: u64,
        mut sink: W,
    ) -> Result<Metainfo, MetainfoError> {
        let mut hasher = self.start(size_hint)?;
        let mut buf = vec![0u8; SYNC_BUF_LEN];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let chunk = buf.get(..n).ok_or_else(reader_overran)?;
            sink.write_all(chunk)?;
            hasher.update(chunk);
        }
        sink.flush()?;
        self.finish(hasher)
    }

    /// [`TorrentBuilder::build_from_reader`] for async streams, e.g. `docker save` output
    /// being written to disk by the agent. Hashing runs inline in small chunks (see the
    /// module's `ASYNC_BUF_LEN` note): no copies, no blocking-pool round trips.
    pub async fn build_from_async_reader<R, W>(
        self,
        mut reader: R,
        size_hint: u64,
        mut sink: W,
    ) -> Result<Metainfo, MetainfoError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut hasher = self.start(size_hint)?;
        let mut buf = vec![0u8; ASYNC_BUF_LEN];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let chunk = buf.get(..n).ok_or_else(reader_overran)?;
            sink.write_all(chunk).await?;
            hasher.update(chunk);
        }
        sink.flush().await?;
        self.finish(hasher)
    }

    /// Hashes an existing file in place (nothing is copied). The size hint is the file's
    /// current length.
    pub fn build_from_file(self, path: &Path) -> Result<Metainfo, MetainfoError> {
        let file = File::open(path)?;
        let size_hint = file.metadata()?.len();
        self.build_from_reader(file, size_hint, io::sink())
    }
}

/// A `Read` impl claimed to have read more than the buffer holds (a broken reader).
fn reader_overran() -> io::Error {
    io::Error::other("reader returned a length larger than its buffer")
}
