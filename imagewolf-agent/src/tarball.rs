//! The tarball on disk: written once from the image source, cut into segments whose
//! torrents (piece hashes) and the whole file's SHA-256 are computed in the same pass.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use imagewolf_bt::metainfo::{piece_length_for, Metainfo, TorrentBuilder};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, BufReader};

/// Smallest segment: small enough that the last one's swarm (the end-to-end tail) is short,
/// large enough that a segment's torrent is worth its connections.
pub(crate) const MIN_SEGMENT: u64 = 16 << 20;
/// Largest segment, and the size used when the tarball's size is unknown is a quarter of it.
pub(crate) const MAX_SEGMENT: u64 = 256 << 20;
/// Segments a tarball is split into at most (when it is larger than `MIN_SEGMENT` times
/// that): every segment is a torrent with its own connection to each peer, so a cluster of
/// N nodes carries about `SEGMENTS_TARGET` x N connections per node per image.
pub(crate) const SEGMENTS_TARGET: u64 = 8;

/// Streams the image source's tarball into one file, cutting it into consecutive segments
/// and building each segment's torrent as its bytes pass (SHA-1 per piece), and the whole
/// file's SHA-256 in the same pass. A segment is complete on disk (flushed) when
/// [`SegmentWriter::next_segment`] returns it, so it can be seeded at once while the next
/// one is still being read.
pub(crate) struct SegmentWriter {
    reader: BufReader<crate::source::Tarball>,
    sink: Sha256Writer<tokio::io::BufWriter<tokio::fs::File>>,
    /// Bytes written so far: where the next segment starts.
    offset: u64,
    piece_length: u32,
    segment_len: u64,
    trackers: Vec<String>,
    segments: usize,
}

impl SegmentWriter {
    /// Creates `path` and prepares to cut `tarball` (of about `size_hint` bytes; 0 if
    /// unknown) into segments announced to `trackers` (in order of preference).
    pub(crate) async fn create(
        tarball: crate::source::Tarball,
        path: &Path,
        size_hint: u64,
        trackers: Vec<String>,
    ) -> Result<Self, String> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        let piece_length = piece_length_for(size_hint);
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, tarball),
            sink: Sha256Writer {
                inner: tokio::io::BufWriter::with_capacity(1 << 20, file),
                hasher: Sha256::new(),
                counted: None,
            },
            offset: 0,
            piece_length,
            segment_len: segment_len(size_hint, piece_length),
            trackers,
            segments: 0,
        })
    }

    /// Also adds every byte written to `counter` (the node's intake, see
    /// `distributor/pacing.rs`).
    pub(crate) fn counting_into(mut self, counter: Arc<AtomicU64>) -> Self {
        self.sink.counted = Some(counter);
        self
    }

    /// Reads the next segment to disk and returns its torrent and offset in the file, or
    /// `None` once the tarball has ended.
    pub(crate) async fn next_segment(&mut self) -> Result<Option<(Metainfo, u64)>, String> {
        let more = self
            .reader
            .fill_buf()
            .await
            .map_err(|e| format!("export: {e}"))?;
        if more.is_empty() {
            return Ok(None);
        }
        let meta = TorrentBuilder::new(format!("segment-{:04}.tar", self.segments))
            .trackers(&self.trackers)
            .piece_length(self.piece_length)
            .build_from_async_reader(
                (&mut self.reader).take(self.segment_len),
                self.segment_len,
                &mut self.sink,
            )
            .await
            .map_err(|e| format!("export: {e}"))?;
        let offset = self.offset;
        self.offset += meta.total_len();
        self.segments += 1;
        Ok(Some((meta, offset)))
    }

    /// After the last segment: the whole tarball's SHA-256 (hex).
    pub(crate) fn sha256(&mut self) -> String {
        hex(&std::mem::take(&mut self.sink.hasher).finalize())
    }
}

/// The segment length for a tarball of about `size_hint` bytes: an eighth of it within
/// [`MIN_SEGMENT`]..=[`MAX_SEGMENT`], a whole number of pieces.
fn segment_len(size_hint: u64, piece_length: u32) -> u64 {
    let wanted = if size_hint == 0 {
        MAX_SEGMENT / 4
    } else {
        (size_hint / SEGMENTS_TARGET).clamp(MIN_SEGMENT, MAX_SEGMENT)
    };
    wanted.next_multiple_of(u64::from(piece_length))
}

/// Lower-case hex of `bytes` (digests in announcements, ids, file names).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An `AsyncWrite` that hashes what passes through it.
struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    /// Bytes written are added here too, when set.
    counted: Option<Arc<AtomicU64>>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Sha256Writer<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.hasher.update(&buf[..*n]);
            if let Some(c) = &this.counted {
                c.fetch_add(*n as u64, Ordering::Relaxed);
            }
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_whole_pieces_within_bounds() {
        let piece = piece_length_for(128 << 20);
        assert_eq!(segment_len(128 << 20, piece), 16 << 20);
        assert_eq!(segment_len(1 << 20, piece_length_for(1 << 20)), MIN_SEGMENT);
        assert_eq!(segment_len(0, piece_length_for(0)), MAX_SEGMENT / 4);
        assert_eq!(segment_len(1 << 40, piece_length_for(1 << 40)), MAX_SEGMENT);
        let odd = segment_len(300 << 20, 768 << 10);
        assert_eq!(odd % (768 << 10), 0);
        assert!(odd >= (300 << 20) / SEGMENTS_TARGET);
    }

    #[tokio::test]
    async fn segments_cover_the_tarball_exactly() {
        let dir = std::env::temp_dir().join(format!("iw-seg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.tar");
        let data: Vec<u8> = (0..(40u32 << 20) + 12345)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let source: crate::source::Tarball = Box::pin(std::io::Cursor::new(data.clone()));
        let mut w = SegmentWriter::create(source, &path, 0, vec!["http://t/announce".into()])
            .await
            .unwrap();
        let mut next_offset = 0;
        let mut hashes = Vec::new();
        while let Some((meta, offset)) = w.next_segment().await.unwrap() {
            assert_eq!(offset, next_offset, "segments are consecutive");
            assert!(meta.total_len() <= MAX_SEGMENT / 4);
            // Each segment is on disk when returned: its pieces verify from the file.
            let on_disk = std::fs::read(&path).unwrap();
            let bytes = &on_disk[offset as usize..(offset + meta.total_len()) as usize];
            let plen = meta.lengths().piece_len() as usize;
            for (i, chunk) in bytes.chunks(plen).enumerate() {
                let index = meta.lengths().piece(i as u32).unwrap();
                assert_eq!(imagewolf_bt::metainfo::sha1(chunk), meta.piece_hash(index));
            }
            next_offset += meta.total_len();
            hashes.push(meta.info_hash());
        }
        assert_eq!(next_offset, data.len() as u64);
        assert_eq!(hashes.len(), 1, "40 MiB in one 64 MiB segment");
        assert_eq!(w.sha256(), hex(&Sha256::digest(&data)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
