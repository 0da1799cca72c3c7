//! Where images go: the [`ImageLoader`] trait. Docker's `docker load` ([`crate::docker`])
//! today; containerd nodes get another implementation.

use std::path::Path;

use futures::future::BoxFuture;

/// Why a load failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LoaderError {
    /// What went wrong, for logs and /stats.
    pub message: String,
}

/// Loads `docker save` tarballs into the node's container runtime.
pub trait ImageLoader: Send + Sync + 'static {
    /// Whether the runtime already has the image with this id (then the download is skipped).
    fn has_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>>;

    /// Streams the tarball at `path` into the runtime.
    fn load<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), LoaderError>>;
}
