//! Where images go: the [`ImageLoader`] trait. Docker's `docker load` ([`crate::docker`])
//! and containerd's `ctr images import` ([`crate::containerd`]) of a tarball; or, for
//! content-addressed distribution, a pull from the agent's own registry endpoint
//! ([`ImageLoader::pull_from_endpoint`]), which keeps the registry's digests.

use std::path::Path;

use futures::future::BoxFuture;

use crate::source::Tarball;

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

    /// Whether the runtime registers an archive's images under the names the archive gives
    /// (Docker, containerd: yes): then a received archive must name only the announced
    /// image before its end is released (`distributor/archive_check.rs`). A loader that
    /// only keeps the verified bytes under the distribution's id says no.
    fn registers_names(&self) -> bool {
        true
    }

    /// Whether loading an archive whose config lists only an image's first layers registers
    /// those layers, and a later load of the whole image skips them (Docker: yes). Then
    /// receivers load each layer as it arrives (`distributor/preload.rs`).
    fn loads_layers_ahead(&self) -> bool {
        false
    }

    /// Removes the image `id` (a partial image made to load layers ahead; the layers stay
    /// while another image uses them).
    fn remove_image<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LoaderError>> {
        let _ = id;
        Box::pin(async { Ok(()) })
    }

    /// Whether this runtime can pull from the agent's registry endpoint ([`ImageLoader::pull_from_endpoint`]); runtimes that cannot get the `docker load` path.
    fn pulls_from_endpoint(&self) -> bool {
        false
    }

    /// Pulls `image` (whose manifest, or index, has digest `manifest_digest`) from the agent's registry endpoint at `endpoint` (`host:port`, plain http) so the runtime keeps the registry's digests, and names it as pushed (`image.registry/image.repository:tag`, and the registry's digest reference). Must not fetch layers from the real registry.
    fn pull_from_endpoint<'a>(
        &'a self,
        endpoint: &'a str,
        image: &'a crate::image::ImageRef,
        manifest_digest: &'a str,
    ) -> BoxFuture<'a, Result<(), LoaderError>> {
        let _ = (endpoint, image, manifest_digest);
        Box::pin(async {
            Err(LoaderError {
                message: "this runtime cannot pull from the endpoint".into(),
            })
        })
    }

    /// Loads the tarball being written at `path`, reading it through `tarball`: a stream
    /// that yields only verified bytes, waits while the download catches up, and fails
    /// instead of ending if the whole file does not verify (see `distributor/feed.rs`). A
    /// runtime that stages an archive before registering anything (Docker) overrides this
    /// to unpack while the download runs. The default reads `tarball` to its end, which
    /// is waiting for the verified file, then calls [`ImageLoader::load`].
    fn load_streamed<'a>(
        &'a self,
        tarball: Tarball,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(async move {
            let mut tarball = tarball;
            tokio::io::copy(&mut tarball, &mut tokio::io::sink())
                .await
                .map_err(|e| LoaderError {
                    message: format!("reading {}: {e}", path.display()),
                })?;
            self.load(path).await
        })
    }
}

/// The loader for `--runtime none`: no container runtime; a verified tarball is hard-linked
/// (or copied) into a directory, where a demo or a test can find it.
pub struct KeepTarball {
    dir: std::path::PathBuf,
}

impl KeepTarball {
    /// Keeps tarballs in `dir` (created if missing).
    pub fn new(dir: std::path::PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }
}

impl ImageLoader for KeepTarball {
    fn registers_names(&self) -> bool {
        false
    }

    fn has_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>> {
        // Only a well-formed id names a file here (never `..` or a path).
        let valid = crate::image::is_image_id(image_id);
        let marker = self.dir.join(image_id.replace(':', "_"));
        Box::pin(async move { Ok(valid && tokio::fs::try_exists(marker).await.unwrap_or(false)) })
    }

    fn load<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(async move {
            let name = path.file_name().ok_or_else(|| LoaderError {
                message: format!("{} has no file name", path.display()),
            })?;
            let target = self.dir.join(name);
            if tokio::fs::hard_link(path, &target).await.is_err() {
                tokio::fs::copy(path, &target)
                    .await
                    .map_err(|e| LoaderError {
                        message: format!("copying {} to {}: {e}", path.display(), target.display()),
                    })?;
            }
            Ok(())
        })
    }
}
