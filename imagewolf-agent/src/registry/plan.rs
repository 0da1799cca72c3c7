//! What the registry-native origin distributes: the pushed manifest (or index), this
//! platform's manifest, and its blobs, read over the registry API with every digest checked.

use bytes::Bytes;
use futures::stream::BoxStream;
use hyper::StatusCode;

use super::client::{sha256_digest, valid_digest};
use super::manifest::{self, Descriptor, ImageManifest, Manifest};
use super::{status_error, BlobSource, HttpBlobs, RegistryError, RegistrySource, MAX_MANIFEST};
use crate::image::ImageRef;

/// A manifest or index as the registry served it: exact bytes, digest checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    /// Its media type (from the body, else the response's `Content-Type`).
    pub media_type: String,
    /// The exact bytes (what a runtime verifies against the digest).
    pub bytes: Bytes,
}

/// An image resolved for the registry-native path.
#[derive(Debug, Clone)]
pub struct BlobPlan {
    /// `registry/repository`.
    pub name: String,
    /// The digest the image was pushed as (manifest or index).
    pub pushed: String,
    /// The pushed manifest or index first, then this platform's manifest if it was an index.
    pub manifests: Vec<RawManifest>,
    /// This platform's image: the config and the layers, bottom first.
    pub image: ImageManifest,
}

impl BlobPlan {
    /// The blobs to distribute: the config, then each layer once (repeats dropped), in order.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = vec![self.image.config.clone()];
        for layer in &self.image.layers {
            if !out.iter().any(|d| d.digest == layer.digest) {
                out.push(layer.clone());
            }
        }
        out
    }
}

impl RegistrySource {
    /// Resolves `image` for the registry-native path: the pushed manifest (or index, then
    /// this source's platform entry), every manifest's SHA-256 checked against the digest
    /// it was fetched by or the one the registry names. Bounds are the manifest parser's
    /// (layers per image, index entries, blob sizes): a manifest naming 10,000 layers or a
    /// 1 TiB blob is refused before anything is allocated for it.
    pub async fn pull_plan(&self, image: &ImageRef) -> Result<BlobPlan, RegistryError> {
        super::check_reference(image)?;
        let name = format!("{}/{}", image.registry, image.repository);
        let by = image
            .digest
            .clone()
            .or_else(|| image.tag.clone())
            .unwrap_or_else(|| "latest".to_owned());
        let (top, parsed) = self.raw_manifest(image, &by).await?;
        let pushed = top.digest.clone();
        let mut manifests = vec![top];
        let image_manifest = match parsed {
            Manifest::Image(m) => m,
            Manifest::Index(entries) => {
                let entry = manifest::select(&format!("index of {name}"), &entries, self.platform)?;
                let digest = entry.manifest.digest.clone();
                let (platform, parsed) = self.raw_manifest(image, &digest).await?;
                manifests.push(platform);
                match parsed {
                    Manifest::Image(m) => m,
                    Manifest::Index(_) => {
                        return Err(RegistryError::Failed(format!(
                            "{name}: the index entry for this platform is an index again"
                        )))
                    }
                }
            }
        };
        Ok(BlobPlan {
            name,
            pushed,
            manifests,
            image: image_manifest,
        })
    }

    /// GET a manifest by tag or digest, keeping its exact bytes.
    async fn raw_manifest(
        &self,
        image: &ImageRef,
        by: &str,
    ) -> Result<(RawManifest, Manifest), RegistryError> {
        let url = format!(
            "http://{}/v2/{}/manifests/{by}",
            image.registry, image.repository
        );
        let what = format!("manifest {}/{}:{by}", image.registry, image.repository);
        let r = self
            .http
            .get_bounded(&url, Some(super::MANIFEST_ACCEPT), MAX_MANIFEST)
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&what, &url, r.status, &r.body));
        }
        let actual = sha256_digest(&r.body);
        let expected = if valid_digest(by) {
            Some(by.to_owned())
        } else {
            r.headers
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .filter(|d| valid_digest(d))
                .map(str::to_owned)
        };
        if let Some(expected) = expected.filter(|e| *e != actual) {
            return Err(RegistryError::Failed(format!(
                "{what}: content has digest {actual}, expected {expected}"
            )));
        }
        let content_type = r
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let parsed = manifest::parse(&what, &r.body, content_type)?;
        let media_type = manifest::media_type(&r.body, content_type)
            .ok_or_else(|| RegistryError::Failed(format!("{what}: not a manifest")))?;
        Ok((
            RawManifest {
                digest: actual,
                media_type,
                bytes: r.body,
            },
            parsed,
        ))
    }

    /// Streams blob `blob` of `image`'s repository. The stream's bytes are not checked
    /// here: the store checks the length and SHA-256 as they are written.
    pub async fn blob_stream(
        &self,
        image: &ImageRef,
        blob: &Descriptor,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        let blobs = HttpBlobs {
            http: self.http.clone(),
            registry: image.registry.clone(),
            repository: image.repository.clone(),
        };
        blobs.open(blob).await
    }
}
