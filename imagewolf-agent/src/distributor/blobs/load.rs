//! Putting a blob image into the runtime. First choice: the runtime pulls it from the
//! node's registry endpoint, so it keeps the registry's digests (a later `docker pull` of a
//! related image fetches only what it lacks). Fallback, for a runtime that cannot pull from
//! the endpoint (`--runtime none`, or an endpoint the runtime cannot reach, e.g. an agent
//! in a container on an overlay network): a `docker save` archive built from the store
//! (`registry::archive`, every blob's SHA-256 checked again as it streams) is written to
//! the data dir and loaded. The image then loads, without the registry's digests.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use super::{BlobPath, BLOB_WAIT};
use crate::distributor::Distributor;
use crate::image::ImageRef;
use crate::registry::archive::{self, ArchivePlan, BlobSource};
use crate::registry::manifest::{Descriptor, ImageManifest};
use crate::registry::{RegistryError, MAX_CONFIG};
use crate::store::{Digest, Store};

/// Attempts of the pull from the endpoint before the archive fallback.
const ENDPOINT_PULL_ATTEMPTS: u32 = 3;

impl Distributor {
    /// Puts `image` (pushed as `pushed`; this node's platform is `manifest`) into the
    /// runtime: a pull from the endpoint, else the archive fallback (see the module docs).
    /// Blobs still arriving are waited for.
    pub(super) async fn load_blob_image(
        &self,
        key: &str,
        path: &BlobPath,
        image: &ImageRef,
        pushed: &Digest,
        manifest: &ImageManifest,
    ) -> Result<(), String> {
        if self.loader.pulls_from_endpoint() {
            // After a failure, one attempt only: a runtime that cannot reach the endpoint
            // (an agent on an overlay network) should not cost every image the retries.
            let attempts = if path.endpoint_failed.load(Ordering::Relaxed) {
                1
            } else {
                ENDPOINT_PULL_ATTEMPTS
            };
            let pulled = self
                .with_retries(key, "load", Some(attempts), || {
                    self.loader
                        .pull_from_endpoint(&path.endpoint, image, pushed.as_str())
                })
                .await;
            path.endpoint_failed
                .store(pulled.is_err(), Ordering::Relaxed);
            match pulled {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(
                    image = %image,
                    endpoint = %path.endpoint,
                    "the runtime could not pull from the endpoint ({e}); loading an archive \
                     built from the store instead (the registry's digests are not kept)"
                ),
            }
        }
        let file = self
            .config
            .data_dir
            .join("images")
            .join(format!("{}.tar", pushed.hex()));
        let result = self
            .with_retries(key, "load", None, || {
                load_archive(self, &path.store, image, manifest, &file)
            })
            .await;
        let _ = tokio::fs::remove_file(&file).await;
        result
    }
}

/// One attempt of the fallback: the archive written to `file`, then loaded.
async fn load_archive(
    this: &Distributor,
    store: &Arc<Store>,
    image: &ImageRef,
    manifest: &ImageManifest,
    file: &std::path::Path,
) -> Result<(), crate::loader::LoaderError> {
    let fail = |message: String| crate::loader::LoaderError { message };
    let config = Digest::parse(&manifest.config.digest).map_err(|e| fail(e.to_string()))?;
    if !store.wait_for(&config, BLOB_WAIT).await {
        return Err(fail(format!("config {config} is not in the store")));
    }
    let config_bytes = store
        .read_small(&config, MAX_CONFIG)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail(format!("config {config} is not in the store")))?;
    let name = format!("{}/{}", image.registry, image.repository);
    let repo_tag = image.tag.as_ref().map(|t| format!("{name}:{t}"));
    let plan = Arc::new(ArchivePlan::new(name, manifest, config_bytes, repo_tag));
    let blobs = Arc::new(StoreBlobs(Arc::clone(store)));
    let mut archive = archive::stream(plan, blobs);
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(|e| fail(format!("creating {}: {e}", file.display())))?;
    tokio::io::copy(&mut archive, &mut out)
        .await
        .map_err(|e| fail(format!("writing {}: {e}", file.display())))?;
    drop(out);
    this.loader.load(file).await
}

/// The store as the archive's blob source: committed blobs only, those still arriving
/// waited for.
struct StoreBlobs(Arc<Store>);

impl BlobSource for StoreBlobs {
    fn open<'a>(
        &'a self,
        blob: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError>>
    {
        Box::pin(async move {
            let d =
                Digest::parse(&blob.digest).map_err(|e| RegistryError::Failed(e.to_string()))?;
            if !self.0.wait_for(&d, BLOB_WAIT).await {
                return Err(RegistryError::Failed(format!(
                    "blob {d} is not in the store"
                )));
            }
            let (file, _) = self
                .0
                .open_blob(&d)
                .ok_or_else(|| RegistryError::Failed(format!("blob {d} left the store")))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                256 << 10,
            )
            .map(move |r| r.map_err(|e| RegistryError::Failed(format!("reading blob: {e}"))));
            Ok(stream.boxed())
        })
    }
}
