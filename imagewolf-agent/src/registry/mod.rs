//! The registry-API image source: no Docker on the seeding node. [`RegistrySource`] reads
//! the manifest and config from the registry's HTTP API v2 at pull time and, at export,
//! streams a `docker save`-format archive built on the fly from the registry's blobs
//! ([`archive`]), so seeding can start while blobs are still arriving.
//!
//! Design decisions:
//! - **https and credentials in the agent itself** ([`client`]): rustls with the platform's
//!   roots (plus `--registry-ca`), the distribution token flow and basic auth with the
//!   credentials of `--registry-auth-file` ([`auth`]), plain http only for hosts named
//!   insecure or, with an explicit port, for hosts that do not speak TLS at all. So every
//!   node can be an origin, containerd nodes included. What is left for Docker
//!   ([`RegistryError::Unsupported`], which [`FallbackSource`] hands to the runtime's source
//!   on Docker nodes): a registry that wants credentials the agent was not given, a
//!   certificate the agent does not trust (Docker may have its own `certs.d`), or an image
//!   in a format `docker load` on dockerd 20.10 cannot take (zstd or foreign layers,
//!   schema 1, artifacts).
//! - **Everything is checked.** The manifest's SHA-256 when fetched by digest (or when the
//!   registry names one), the config's digest and size at pull, every blob's size and
//!   SHA-256 while it streams: a bad blob ends the archive with an error naming it.
//! - **Bounded**: manifests [`MAX_MANIFEST`], configs [`MAX_CONFIG`] (checked against the
//!   descriptor before the request), layers per image and index entries ([`manifest`]);
//!   blobs stream through a small channel, never whole in memory.
//! - **Exact size.** `PulledImage::size_hint` is the archive's exact length, computed from
//!   the manifest (tar headers and padding), and the image id is the config digest, which is
//!   what `docker load` names the image.
//! - **Only hosts the [`HostPolicy`] allows** ([`guard`]): a registry named by a notification
//!   may not be loopback, link-local, a metadata service... unless `--allow` names it, checked
//!   before anything acts on the push (Docker included: [`FallbackSource`] asks this source
//!   first, and a refusal is never handed to Docker) and again at connect time; redirects
//!   go to the same host, a named host, or public addresses only.
//! - **No upstream text in errors.** An answer other than 200 is reported by its status and a
//!   fixed message; errors reach `/stats`, so nothing a registry (or whatever answered in
//!   its place) sent is copied into them.
//! - **One platform.** From a manifest list / OCI index, the linux image for this host's
//!   architecture (Rust's `std::env::consts::ARCH` in Go's names) is taken.

pub mod archive;
pub mod auth;
pub mod client;
mod fallback;
pub mod guard;
pub mod manifest;
pub mod plan;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use hyper::StatusCode;

pub use archive::ArchivePlan;
pub use auth::CredentialStore;
pub use client::{ClientOptions, RegistryHttp, MANIFEST_ACCEPT};
pub use fallback::FallbackSource;
pub use guard::HostPolicy;
pub use plan::{BlobPlan, RawManifest};
pub use tls::TlsSettings;

use self::archive::BlobSource;
use self::client::{sha256_digest, valid_digest, HttpError};
use self::manifest::{Descriptor, Manifest, Platform};
use crate::docker::validate_reference;
use crate::image::ImageRef;
use crate::source::{ImageSource, PulledImage, SourceError, Tarball};

/// Largest manifest or index read.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config read.
pub const MAX_CONFIG: usize = 8 << 20;
/// Bytes of an error answer looked at (never quoted) to tell "speaks https" apart.
const MAX_SNIFF: usize = 300;

/// Why the registry source could not pull or export an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry is unreachable, timed out, or answered 5xx/429: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// This source cannot do it but Docker might (credentials the agent was not given, a
    /// certificate it does not trust, a media type it does not handle): a
    /// [`FallbackSource`] tries the runtime's source.
    #[error("{0}")]
    Unsupported(String),
    /// Neither a retry nor Docker would help (no such image, malformed or corrupt content).
    #[error("{0}")]
    Failed(String),
}

impl RegistryError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }

    /// Whether the runtime's own source (Docker) should be tried instead.
    pub fn wants_fallback(&self) -> bool {
        matches!(self, RegistryError::Unsupported(_))
    }
}

impl From<RegistryError> for SourceError {
    fn from(e: RegistryError) -> Self {
        SourceError {
            retryable: e.retryable(),
            message: format!("registry API: {e}"),
        }
    }
}

impl From<HttpError> for RegistryError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Transport { .. } | HttpError::Timeout { .. } => {
                RegistryError::Unavailable(e.to_string())
            }
            HttpError::Tls { .. } | HttpError::NotTls { .. } => {
                RegistryError::Unsupported(e.to_string())
            }
            HttpError::Redirect { .. } | HttpError::Refused { .. } | HttpError::Auth { .. } => {
                RegistryError::Failed(e.to_string())
            }
        }
    }
}

/// An answer other than 200 for `what`, classified. The message is the status and a fixed
/// text: the body is looked at (its first [`MAX_SNIFF`] bytes, for "https") but never
/// quoted, since errors reach `/stats` and whatever answered may not be a registry.
fn status_error(what: &str, status: StatusCode, body: &[u8]) -> RegistryError {
    let message = match status.canonical_reason() {
        Some(reason) => format!("registry answered {} {reason} for {what}", status.as_u16()),
        None => format!("registry answered {} for {what}", status.as_u16()),
    };
    let sniff = &body[..body.len().min(MAX_SNIFF)];
    let says_https = String::from_utf8_lossy(sniff)
        .to_ascii_lowercase()
        .contains("https");
    match status.as_u16() {
        401 | 403 => RegistryError::Unsupported(format!(
            "{message} (needs credentials; --registry-auth-file has none for this registry)"
        )),
        400 if says_https => RegistryError::Unsupported(format!(
            "{message} (the registry says it speaks https, and was read over plain http: \
             is it named in --insecure-registry?)"
        )),
        408 | 429 | 500..=599 => RegistryError::Unavailable(message),
        _ => RegistryError::Failed(message),
    }
}

/// Pulls manifests and configs over the registry API and exports docker-archives built from
/// blobs (see the module docs). Hosts as its client's [`HostPolicy`] allows (strict by
/// default: [`RegistrySource::with_policy`] names the hosts the operator trusts,
/// [`RegistrySource::with_client`] shares the agent's one client, with its TLS roots,
/// credentials and insecure hosts).
#[derive(Clone)]
pub struct RegistrySource {
    http: RegistryHttp,
    platform: Platform,
}

impl Default for RegistrySource {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistrySource {
    /// A source for this host's platform.
    pub fn new() -> Self {
        Self::for_platform(manifest::host_platform())
    }

    /// A source that picks `platform` out of indexes.
    pub fn for_platform(platform: Platform) -> Self {
        RegistrySource {
            http: RegistryHttp::new(),
            platform,
        }
    }

    /// This source, reaching hosts as `policy` allows (e.g. [`HostPolicy::from_allowlist`]
    /// naming `--allow`'s literal hosts, and the operator's `--registry`/`--poll` hosts).
    pub fn with_policy(self, policy: HostPolicy) -> Self {
        RegistrySource {
            http: RegistryHttp::with_policy(policy),
            platform: self.platform,
        }
    }

    /// This source, reading through `http` (the agent's one client: its policy, TLS roots,
    /// insecure hosts, credentials and token cache).
    pub fn with_client(self, http: RegistryHttp) -> Self {
        RegistrySource {
            http,
            platform: self.platform,
        }
    }

    /// The client this source reads through.
    pub fn client(&self) -> &RegistryHttp {
        &self.http
    }

    /// The policy this source reaches hosts by.
    pub fn policy(&self) -> &HostPolicy {
        self.http.policy()
    }

    /// Resolves `image` to a manifest and config: [`ImageSource::pull`] with the error kind
    /// kept (see [`RegistryError::wants_fallback`]).
    pub async fn pull_image(&self, image: &ImageRef) -> Result<PulledImage, RegistryError> {
        let reference = image.pull_reference();
        self.check_reference(image).await?;
        let by = image
            .digest
            .clone()
            .or_else(|| image.tag.clone())
            .unwrap_or_else(|| "latest".to_owned());
        let name = format!("{}/{}", image.registry, image.repository);
        let mut manifest = self.manifest(image, &by).await?;
        if let Manifest::Index(entries) = &manifest {
            let entry = manifest::select(&format!("index of {name}"), entries, self.platform)?;
            tracing::debug!(%name, digest = %entry.manifest.digest, "picked from the index");
            let digest = entry.manifest.digest.clone();
            manifest = self.manifest(image, &digest).await?;
        }
        let Manifest::Image(manifest) = manifest else {
            return Err(RegistryError::Failed(format!(
                "{name}: the index entry for this platform is an index again"
            )));
        };
        let config = self.config(image, &manifest.config).await?;
        let what = format!("config {} of {name}", manifest.config.digest);
        let diff_ids = manifest::config_layer_count(&what, &config)?;
        if diff_ids != manifest.layers.len() {
            return Err(RegistryError::Failed(format!(
                "{what}: lists {diff_ids} layers, the manifest {}",
                manifest.layers.len()
            )));
        }
        let repo_tag = image.tag.as_ref().map(|t| format!("{name}:{t}"));
        let plan = ArchivePlan::new(name, &manifest, config, repo_tag);
        Ok(PulledImage {
            image_id: manifest.config.digest.clone(),
            reference,
            size_hint: plan.len,
            archive: Some(Arc::new(plan)),
        })
    }

    /// GET a manifest by tag or digest; its SHA-256 is checked against the digest it was
    /// fetched by, or the one the registry names (see [`RegistrySource::raw_manifest`]).
    async fn manifest(&self, image: &ImageRef, by: &str) -> Result<Manifest, RegistryError> {
        self.raw_manifest(image, by).await.map(|(_, parsed)| parsed)
    }

    /// GET the config blob (at most [`MAX_CONFIG`] bytes), size and digest checked.
    async fn config(&self, image: &ImageRef, d: &Descriptor) -> Result<Bytes, RegistryError> {
        let what = format!(
            "config {} of {}/{}",
            d.digest, image.registry, image.repository
        );
        if d.size > MAX_CONFIG as u64 {
            return Err(RegistryError::Failed(format!(
                "{what}: {} bytes (limit {MAX_CONFIG})",
                d.size
            )));
        }
        let path = blob_path(&image.repository, &d.digest);
        let r = self
            .http
            .get_bounded(&image.registry, &path, None, MAX_CONFIG)
            .await?;
        if r.status != StatusCode::OK {
            return Err(status_error(&what, r.status, &r.body));
        }
        let actual = sha256_digest(&r.body);
        if r.body.len() as u64 != d.size || actual != d.digest {
            return Err(RegistryError::Failed(format!(
                "{what}: got {} bytes with digest {actual}, the manifest says {} bytes",
                r.body.len(),
                d.size
            )));
        }
        Ok(r.body)
    }

    /// Starts the archive of an image this source pulled: [`ImageSource::export`].
    pub fn export_image(&self, pulled: &PulledImage) -> Result<Tarball, RegistryError> {
        let plan = pulled.archive.clone().ok_or_else(|| {
            RegistryError::Failed(format!(
                "{} was not pulled by the registry source",
                pulled.reference
            ))
        })?;
        let (registry, repository) = plan.name.split_once('/').ok_or_else(|| {
            RegistryError::Failed(format!("{}: no registry in the name", plan.name))
        })?;
        let blobs = HttpBlobs {
            http: self.http.clone(),
            registry: registry.to_owned(),
            repository: repository.to_owned(),
        };
        Ok(archive::stream(plan, Arc::new(blobs)))
    }
}

impl RegistrySource {
    /// The checks every pull starts with, before anything else acts on the push: the names
    /// and the digest's form, then that the [`HostPolicy`] allows the registry host (a
    /// literal address as it is, a name by what it resolves to; a refusal is
    /// [`RegistryError::Failed`], so [`FallbackSource`] never hands it to Docker).
    async fn check_reference(&self, image: &ImageRef) -> Result<(), RegistryError> {
        check_names(image)?;
        self.http
            .check_registry(&image.registry)
            .await
            .map_err(|refused| RegistryError::Failed(refused.to_string()))?;
        Ok(())
    }
}

/// The names and the digest's form.
fn check_names(image: &ImageRef) -> Result<(), RegistryError> {
    let reference = image.pull_reference();
    validate_reference(&reference).map_err(|e| RegistryError::Failed(e.to_string()))?;
    if let Some(d) = &image.digest {
        if !valid_digest(d) {
            let e = format!("digest {d:?} of {reference} is not sha256:<64 hex>");
            return Err(if d.starts_with("sha256:") || !d.contains(':') {
                RegistryError::Failed(e)
            } else {
                RegistryError::Unsupported(e)
            });
        }
        validate_reference(&format!("{}/{}@{d}", image.registry, image.repository))
            .map_err(|e| RegistryError::Failed(e.to_string()))?;
    }
    Ok(())
}

fn blob_path(repository: &str, digest: &str) -> String {
    format!("/v2/{repository}/blobs/{digest}")
}

/// Blob downloads from one repository.
struct HttpBlobs {
    http: RegistryHttp,
    registry: String,
    repository: String,
}

impl BlobSource for HttpBlobs {
    fn open<'a>(
        &'a self,
        blob: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError>>
    {
        Box::pin(async move {
            let path = blob_path(&self.repository, &blob.digest);
            let url = format!("{}{path}", self.registry);
            let what = format!(
                "blob {} of {}/{}",
                blob.digest, self.registry, self.repository
            );
            // Errors name the URL asked for, not where a redirect led.
            let (_, resp) = self.http.get_following(&self.registry, &path, None).await?;
            if resp.status() != StatusCode::OK {
                let status = resp.status();
                let body = client::read_prefix(resp.into_body(), MAX_SNIFF).await;
                return Err(status_error(&what, status, &body));
            }
            let length = resp
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(length) = length.filter(|l| *l != blob.size) {
                return Err(RegistryError::Failed(format!(
                    "{url}: Content-Length {length}, the manifest says {} bytes",
                    blob.size
                )));
            }
            let stream = resp
                .into_body()
                .into_data_stream()
                .map_err(move |e| {
                    RegistryError::Unavailable(format!(
                        "{url}: reading: {}",
                        client::error_chain(&e)
                    ))
                })
                .boxed();
            Ok(stream)
        })
    }
}

impl ImageSource for RegistrySource {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move { self.pull_image(image).await.map_err(SourceError::from) })
    }

    fn export<'a>(&'a self, image: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move { self.export_image(image).map_err(SourceError::from) })
    }
}

#[cfg(test)]
mod tests;
