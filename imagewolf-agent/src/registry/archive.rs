//! The `docker save` (docker-archive) tar stream, built on the fly from registry blobs.
//!
//! Layout, in this order: `<config hex>.json`; for each distinct layer blob a directory
//! `<layer hex>/` and `<layer hex>/layer.tar` holding the blob's bytes as they are (gzip or
//! plain tar: `docker load` decompresses gzip layers itself and checks each layer against
//! the config's `diff_ids`); then `manifest.json`; then the two zero blocks that end a tar.
//! A blob listed twice in the manifest is written once and named twice in `manifest.json`.
//!
//! Every header is a 512-byte ustar block (mode 0644/0755, uid/gid 0, mtime 0, so the same
//! manifest always gives the same bytes), every body is padded to 512 bytes: the archive's
//! length is known from the manifest alone ([`ArchivePlan::len`]) before any blob arrives.
//!
//! Blobs are fetched one after another and checked while they stream (size and SHA-256);
//! a blob that is short, long or different ends the stream with an `io::Error` naming it,
//! before the archive is complete. Memory is bounded by a small channel of body chunks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::io::StreamReader;

use super::client::digest_of;
use super::manifest::{Descriptor, ImageManifest};
use super::RegistryError;
use crate::source::Tarball;

/// A blob that sends nothing for this long fails the export.
pub const BLOB_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes buffered between the blob download and the archive's reader: enough to ride out a
/// stall of the reader (disk writeback, a busy CPU) of half a second at 100 Mbit/s and more
/// without leaving the socket unread. TCP autotuning sizes the receive window by what the
/// application reads per round trip, so a reader that stalls keeps the window small: with
/// 16 chunks of buffer the bench's origin read the registry at 40-50 Mbit/s with 350-520 KB
/// windows once its uplink was busy seeding (round trips of 30-100 ms through the queue).
const BUFFERED_BYTES: u32 = 8 << 20;
/// Most chunks in the channel (each holds its share of `BUFFERED_BYTES`).
const CHANNEL_CHUNKS: usize = 4096;
const BLOCK: u64 = 512;

/// Everything `export` needs, fixed at pull time: which blobs, in what order, and the
/// small files (config, `manifest.json`) in memory.
#[derive(Debug, PartialEq, Eq)]
pub struct ArchivePlan {
    /// `registry/repository`, for messages.
    pub name: String,
    /// The config descriptor (its digest is the image id).
    pub config: Descriptor,
    /// The config's bytes (bounded at pull, digest checked).
    pub config_bytes: Bytes,
    /// Distinct layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// The `manifest.json` written last.
    pub manifest_json: Bytes,
    /// The archive's exact length in bytes.
    pub len: u64,
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

pub(crate) fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

impl ArchivePlan {
    /// The plan for `manifest` with its config bytes; `repo_tag` (e.g.
    /// `10.0.0.1:5000/app:v1`) goes into `RepoTags` so `docker load` tags the image.
    pub fn new(
        name: String,
        manifest: &ImageManifest,
        config_bytes: Bytes,
        repo_tag: Option<String>,
    ) -> Self {
        let mut layers: Vec<Descriptor> = Vec::new();
        for l in &manifest.layers {
            if !layers.iter().any(|d| d.digest == l.digest) {
                layers.push(l.clone());
            }
        }
        let listed: Vec<String> = manifest
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", hex(&l.digest)))
            .collect();
        let manifest_json = serde_json::json!([{
            "Config": format!("{}.json", hex(&manifest.config.digest)),
            "RepoTags": repo_tag.into_iter().collect::<Vec<_>>(),
            "Layers": listed,
        }])
        .to_string();
        let mut plan = ArchivePlan {
            name,
            config: manifest.config.clone(),
            config_bytes,
            layers,
            manifest_json: Bytes::from(manifest_json),
            len: 0,
        };
        // Headers + padded bodies + the end-of-archive blocks.
        plan.len = BLOCK
            + padded(plan.config_bytes.len() as u64)
            + plan
                .layers
                .iter()
                .map(|l| BLOCK + BLOCK + padded(l.size))
                .sum::<u64>()
            + BLOCK
            + padded(plan.manifest_json.len() as u64)
            + 2 * BLOCK;
        plan
    }
}

/// Where blob bytes come from (the registry; an in-memory map in tests).
pub trait BlobSource: Send + Sync + 'static {
    /// Starts the download of `blob`: a stream of its bytes (unchecked: the archive checks).
    fn open<'a>(
        &'a self,
        blob: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError>>;
}

/// A ustar header block for `path` (deterministic: mode, owner and time fixed).
pub(crate) fn header(path: &str, size: u64, dir: bool) -> io::Result<Bytes> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    Ok(Bytes::copy_from_slice(h.as_bytes()))
}

fn zeros(n: u64) -> Bytes {
    Bytes::from(vec![0u8; n as usize])
}

/// Why the producer stopped early.
enum Stop {
    /// The reader dropped the archive.
    Closed,
    /// Something failed: the reader gets this error.
    Failed(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Failed(e)
    }
}

struct Producer {
    tx: mpsc::Sender<io::Result<(Bytes, Option<OwnedSemaphorePermit>)>>,
    /// Permits are bytes in the channel (see `BUFFERED_BYTES`).
    budget: Arc<Semaphore>,
    written: u64,
}

impl Producer {
    async fn send(&mut self, b: Bytes) -> Result<(), Stop> {
        if b.is_empty() {
            return Ok(());
        }
        let bytes = (b.len() as u64).min(u64::from(BUFFERED_BYTES)) as u32;
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| Stop::Closed)?;
        self.written += b.len() as u64;
        self.tx
            .send(Ok((b, Some(permit))))
            .await
            .map_err(|_| Stop::Closed)
    }

    async fn file(&mut self, path: &str, body: Bytes) -> Result<(), Stop> {
        let len = body.len() as u64;
        self.send(header(path, len, false)?).await?;
        self.send(body).await?;
        self.send(zeros(padded(len) - len)).await
    }

    async fn blob(
        &mut self,
        plan: &ArchivePlan,
        blobs: &dyn BlobSource,
        index: usize,
        d: &Descriptor,
    ) -> Result<(), Stop> {
        let what = format!(
            "layer {} of {} ({}) of {}",
            index + 1,
            plan.layers.len(),
            d.digest,
            plan.name
        );
        let fail = |m: String| Stop::Failed(io::Error::other(format!("{what}: {m}")));
        let dir = format!("{}/", hex(&d.digest));
        self.send(header(&dir, 0, true)?).await?;
        self.send(header(&format!("{dir}layer.tar"), d.size, false)?)
            .await?;
        let mut body = blobs.open(d).await.map_err(|e| fail(e.to_string()))?;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        loop {
            let chunk = match tokio::time::timeout(BLOB_STALL_TIMEOUT, body.next()).await {
                Err(_) => return Err(fail(format!("no data for {BLOB_STALL_TIMEOUT:?}"))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(fail(e.to_string())),
                Ok(Some(Ok(chunk))) => chunk,
            };
            got += chunk.len() as u64;
            if got > d.size {
                return Err(fail(format!(
                    "the registry sent more than the {} bytes the manifest says",
                    d.size
                )));
            }
            hasher.update(&chunk);
            self.send(chunk).await?;
        }
        if got != d.size {
            return Err(fail(format!(
                "the registry sent {got} bytes, the manifest says {}",
                d.size
            )));
        }
        let actual = digest_of(hasher.finalize().as_slice());
        if actual != d.digest {
            return Err(fail(format!(
                "digest mismatch: the content has {actual} (corrupt registry storage?)"
            )));
        }
        self.send(zeros(padded(d.size) - d.size)).await
    }

    async fn run(&mut self, plan: &ArchivePlan, blobs: &dyn BlobSource) -> Result<(), Stop> {
        let config = format!("{}.json", hex(&plan.config.digest));
        self.file(&config, plan.config_bytes.clone()).await?;
        for (i, d) in plan.layers.iter().enumerate() {
            self.blob(plan, blobs, i, d).await?;
        }
        self.file("manifest.json", plan.manifest_json.clone())
            .await?;
        self.send(zeros(2 * BLOCK)).await?;
        if self.written != plan.len {
            // A bug, not bad input: say so rather than hand on a torrent of the wrong size.
            return Err(Stop::Failed(io::Error::other(format!(
                "archive of {} is {} bytes, planned {}",
                plan.name, self.written, plan.len
            ))));
        }
        Ok(())
    }
}

/// Streams the archive of `plan`, fetching blobs from `blobs` (in a task of its own, which
/// ends when the archive is complete, fails, or the returned reader is dropped).
pub fn stream(plan: Arc<ArchivePlan>, blobs: Arc<dyn BlobSource>) -> Tarball {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        let mut producer = Producer {
            tx,
            budget: Arc::new(Semaphore::new(BUFFERED_BYTES as usize)),
            written: 0,
        };
        if let Err(Stop::Failed(e)) = producer.run(&plan, blobs.as_ref()).await {
            tracing::warn!(image = %plan.name, error = %e, "archive export failed");
            let _ = producer.tx.send(Err(e)).await;
        }
    });
    // A chunk's bytes leave the budget when the reader takes it.
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?.map(|(bytes, _permit)| bytes);
        Some((chunk, rx))
    });
    Box::pin(StreamReader::new(chunks))
}

#[cfg(test)]
mod tests;
