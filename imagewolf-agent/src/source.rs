//! Where images come from: the [`ImageSource`] trait. Docker ([`crate::docker`]) pulls and
//! `docker save`s; the registry-API source ([`crate::registry`], no Docker on the seeding
//! node) and the demo's file source implement the same trait.

use std::pin::Pin;

use futures::future::BoxFuture;
use tokio::io::AsyncRead;

use crate::image::ImageRef;

/// An image fetched into the local store, ready to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The local image id (`sha256:...`).
    pub image_id: String,
    /// The reference to export (what `docker save` gets): keeps the tag in the tarball.
    pub reference: String,
    /// Approximate tarball size (for choosing the piece length); 0 if unknown. Exact for
    /// the registry source.
    pub size_hint: u64,
    /// What the registry source's export needs (blobs, config, `manifest.json`); `None`
    /// from every other source.
    pub archive: Option<std::sync::Arc<crate::registry::ArchivePlan>>,
}

/// Why a fetch failed. `retryable` errors (registry down, daemon busy) are retried with
/// backoff; the others fail the distribution at once.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What went wrong, for logs and /stats.
    pub message: String,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

/// A streaming tarball in `docker save` format.
pub type Tarball = Pin<Box<dyn AsyncRead + Send>>;

/// Fetches images and exports them as `docker save` tarballs.
pub trait ImageSource: Send + Sync + 'static {
    /// Makes the image available locally (e.g. `docker pull`).
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>>;

    /// Streams the pulled image as a `docker save` tarball.
    fn export<'a>(&'a self, image: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>>;
}

/// The source for `--runtime none`: this node cannot pull (no runtime to pull with); it only
/// receives images other agents distribute. The agent now uses the registry-API source
/// ([`crate::registry::RegistrySource`]) there instead.
pub struct NoSource;

impl ImageSource for NoSource {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            Err(SourceError {
                message: format!("cannot pull {image}: this agent runs with --runtime none"),
                retryable: false,
            })
        })
    }

    fn export<'a>(
        &'a self,
        _image: &'a PulledImage,
    ) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move {
            Err(SourceError {
                message: "this agent runs with --runtime none".into(),
                retryable: false,
            })
        })
    }
}
