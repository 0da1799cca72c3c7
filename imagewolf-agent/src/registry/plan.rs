//! What the registry-native origin distributes: the pushed manifest (or index), this
//! platform's manifest, and its blobs, read over the registry API with every digest checked,
//! through the source's client (https, credentials, tokens: the same one as the tarball
//! path's when the agent shares it, [`RegistrySource::with_client`]).

use bytes::Bytes;
use futures::stream::BoxStream;
use hyper::StatusCode;

use super::client::{sha256_digest, valid_digest};
use super::manifest::{self, Descriptor, ImageManifest, Manifest, Platform};
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
    /// The pushed manifest or index first, then, if it was an index, the manifest of each
    /// platform distributed.
    pub manifests: Vec<RawManifest>,
    /// Each platform's image distributed (the first is the origin's own when the index has
    /// it): the config and the layers, bottom first.
    pub images: Vec<ImageManifest>,
}

impl BlobPlan {
    /// The blobs to distribute: each image's config, then its layers, each blob once
    /// (repeats and blobs shared between platforms dropped), in order.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out: Vec<Descriptor> = Vec::new();
        for image in &self.images {
            for blob in std::iter::once(&image.config).chain(&image.layers) {
                if !out.iter().any(|d| d.digest == blob.digest) {
                    out.push(blob.clone());
                }
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
        self.pull_plan_for(image, &[self.platform]).await
    }

    /// [`RegistrySource::pull_plan`] for every platform of `platforms` the index has (at
    /// least one must be there); a single-platform manifest is taken as it is.
    pub async fn pull_plan_for(
        &self,
        image: &ImageRef,
        platforms: &[Platform],
    ) -> Result<BlobPlan, RegistryError> {
        self.check_reference(image).await?;
        let name = format!("{}/{}", image.registry, image.repository);
        let by = image
            .digest
            .clone()
            .or_else(|| image.tag.clone())
            .unwrap_or_else(|| "latest".to_owned());
        let (top, parsed) = self.raw_manifest(image, &by).await?;
        let pushed = top.digest.clone();
        let mut manifests = vec![top];
        let mut images = Vec::new();
        match parsed {
            Manifest::Image(m) => images.push(m),
            Manifest::Index(entries) => {
                let what = format!("index of {name}");
                let mut first_error = None;
                for platform in platforms {
                    let entry = match manifest::select(&what, &entries, *platform) {
                        Ok(e) => e,
                        Err(e) => {
                            tracing::info!("{e}: not distributed");
                            first_error.get_or_insert(e);
                            continue;
                        }
                    };
                    let digest = entry.manifest.digest.clone();
                    if manifests.iter().any(|m| m.digest == digest) {
                        continue;
                    }
                    let (raw, parsed) = self.raw_manifest(image, &digest).await?;
                    manifests.push(raw);
                    match parsed {
                        Manifest::Image(m) => images.push(m),
                        Manifest::Index(_) => {
                            return Err(RegistryError::Failed(format!(
                                "{name}: the index entry for {platform} is an index again"
                            )))
                        }
                    }
                }
                if images.is_empty() {
                    return Err(first_error.unwrap_or_else(|| {
                        RegistryError::Failed(format!("{what}: no platform to distribute"))
                    }));
                }
            }
        }
        Ok(BlobPlan {
            name,
            pushed,
            manifests,
            images,
        })
    }

    /// GET a manifest by tag or digest, keeping its exact bytes; its SHA-256 is checked
    /// against the digest it was fetched by, or the one the registry names.
    pub async fn raw_manifest(
        &self,
        image: &ImageRef,
        by: &str,
    ) -> Result<(RawManifest, Manifest), RegistryError> {
        let path = format!("/v2/{}/manifests/{by}", image.repository);
        let what = format!("manifest {}/{}:{by}", image.registry, image.repository);
        let r = self
            .http
            .get_bounded(
                &image.registry,
                &path,
                Some(super::MANIFEST_ACCEPT),
                MAX_MANIFEST,
            )
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&what, r.status, &r.body));
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

    /// The digest tag `tag` of `image`'s repository names now, from a `HEAD` (which Docker
    /// Hub does not count as a pull, unlike a `GET`); `None` when the registry's answer
    /// carries no digest (then a `GET` is needed).
    pub async fn tag_digest(
        &self,
        image: &ImageRef,
        tag: &str,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("manifest {}/{}:{tag}", image.registry, image.repository);
        let path = format!("/v2/{}/manifests/{tag}", image.repository);
        let r = self
            .http
            .request(
                hyper::Method::HEAD,
                &image.registry,
                &path,
                Some(super::MANIFEST_ACCEPT),
                0,
            )
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&what, r.status, &r.body));
        }
        Ok(r.headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| valid_digest(d))
            .map(str::to_owned))
    }

    /// The size of blob `digest` in `image`'s repository (`HEAD`, its `Content-Length`).
    pub async fn blob_size(&self, image: &ImageRef, digest: &str) -> Result<u64, RegistryError> {
        if !valid_digest(digest) {
            return Err(RegistryError::Failed(format!("{digest} is not a digest")));
        }
        let what = format!("blob {}/{}@{digest}", image.registry, image.repository);
        let path = format!("/v2/{}/blobs/{digest}", image.repository);
        let r = self
            .http
            .request(hyper::Method::HEAD, &image.registry, &path, None, 0)
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&what, r.status, &r.body));
        }
        r.headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| RegistryError::Failed(format!("{what}: no Content-Length")))
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
