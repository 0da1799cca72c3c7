//! Reading one blob from a registry into the store a chunk at a time, each chunk's torrent
//! built in the same pass, so that it can be seeded the moment it is on disk (the origin of
//! a push, and the mirror's reader of a blob the cluster lacks, both go through here).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::FileStorage;
use tokio::io::AsyncReadExt;

use super::{chunks, BlobPath};
use crate::image::ImageRef;
use crate::registry::manifest::Descriptor;
use crate::store::{BlobWriter, Digest};

/// A blob read from a registry with no byte for this long fails.
pub(in crate::distributor) const BODY_IDLE: std::time::Duration =
    std::time::Duration::from_secs(60);

type Body =
    tokio_util::io::StreamReader<BoxStream<'static, std::io::Result<bytes::Bytes>>, bytes::Bytes>;

/// A blob streaming from the registry into the store's ingest area.
pub(in crate::distributor) struct BlobIntake {
    reader: Body,
    writer: BlobWriter,
    digest: Digest,
    size: u64,
    trackers: Vec<String>,
    ranges: Vec<(u64, u64)>,
    next: usize,
}

impl BlobIntake {
    /// Opens `blob` of `image`'s repository on the registry and a writer for it in the
    /// store; every byte read is added to `intake` (the origin's pacing reads it).
    pub(in crate::distributor) async fn open(
        path: &BlobPath,
        image: &ImageRef,
        blob: &Descriptor,
        digest: &Digest,
        trackers: &[String],
        intake: Arc<AtomicU64>,
    ) -> Result<Self, String> {
        let stream = path
            .registry
            .blob_stream(image, blob)
            .await
            .map_err(|e| format!("blob {}: {e}", blob.digest))?;
        let counted = stream
            .inspect_ok(move |b| {
                intake.fetch_add(b.len() as u64, Ordering::Relaxed);
            })
            .map_err(std::io::Error::other);
        // A registry that stops sending without closing fails the read after BODY_IDLE
        // (the mirror's other nodes wait on this read; a pull's retries take it again).
        let stream: BoxStream<'static, std::io::Result<bytes::Bytes>> =
            Box::pin(futures::stream::unfold(counted, |mut s| async move {
                match tokio::time::timeout(BODY_IDLE, s.next()).await {
                    Ok(item) => item.map(|i| (i, s)),
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the registry sent nothing for {BODY_IDLE:?}"),
                        )),
                        s,
                    )),
                }
            }));
        let writer = path
            .store
            .writer(digest, blob.size)
            .map_err(|e| format!("storing {digest}: {e}"))?;
        Ok(BlobIntake {
            reader: tokio_util::io::StreamReader::new(stream),
            writer,
            digest: digest.clone(),
            size: blob.size,
            trackers: trackers.to_vec(),
            ranges: chunks::ranges(blob.size),
            next: 0,
        })
    }

    /// The file the blob is landing in (unverified until [`BlobIntake::commit`]).
    pub(in crate::distributor) fn file(&self) -> &std::path::Path {
        self.writer.path()
    }

    /// Bytes on disk so far, from the start.
    pub(in crate::distributor) fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Reads the next chunk onto disk: its torrent and storage to seed it from; `None` once
    /// every chunk is in (then [`BlobIntake::commit`]).
    pub(in crate::distributor) async fn next_chunk(
        &mut self,
    ) -> Result<Option<(Metainfo, FileStorage)>, String> {
        let Some(&(offset, len)) = self.ranges.get(self.next) else {
            return Ok(None);
        };
        let digest = &self.digest;
        let meta = chunks::builder(digest, self.next, self.size, &self.trackers)
            .build_from_async_reader((&mut self.reader).take(len), len, &mut self.writer)
            .await
            .map_err(|e| format!("blob {digest}: {e}"))?;
        if meta.total_len() != len {
            return Err(format!(
                "blob {digest}: the registry sent {} bytes, the manifest says {}",
                offset + meta.total_len(),
                self.size
            ));
        }
        let storage = FileStorage::open_range(self.writer.path(), offset, len)
            .map_err(|e| format!("opening {}: {e}", self.writer.path().display()))?;
        self.next += 1;
        Ok(Some((meta, storage)))
    }

    /// Commits the blob to the store (its length and SHA-256 checked).
    pub(in crate::distributor) async fn commit(self) -> Result<(), String> {
        let digest = self.digest;
        self.writer
            .commit()
            .await
            .map_err(|e| format!("blob {digest} from the registry: {e}"))?;
        tracing::debug!(%digest, size = self.size, "blob read into the store");
        Ok(())
    }
}

/// The chunks of a blob already in the store: each chunk's torrent (hashed on the blocking
/// pool) and storage to seed it from.
pub(in crate::distributor) async fn stored_chunks(
    path: &BlobPath,
    digest: &Digest,
    size: u64,
    trackers: &[String],
) -> Result<Vec<(Metainfo, FileStorage)>, String> {
    let file = path
        .store
        .blob_path(digest)
        .ok_or_else(|| format!("blob {digest} is no longer in the store"))?;
    let metas = chunks::of_file(file.clone(), digest.clone(), size, trackers.to_vec()).await?;
    metas
        .into_iter()
        .zip(chunks::ranges(size))
        .map(|(meta, (offset, len))| {
            FileStorage::open_range(&file, offset, len)
                .map(|storage| (meta, storage))
                .map_err(|e| format!("opening {}: {e}", file.display()))
        })
        .collect()
}
