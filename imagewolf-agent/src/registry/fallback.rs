//! [`FallbackSource`]: the registry API first, the runtime's own source when the registry
//! source says the image is not for it.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::RegistrySource;
use crate::image::ImageRef;
use crate::source::{ImageSource, PulledImage, SourceError, Tarball};

/// Pulls with [`RegistrySource`]; when that reports [`super::RegistryError::Unsupported`]
/// (credentials the agent was not given, a certificate it does not trust, a media type it
/// cannot carry), pulls with `fallback` (Docker)
/// instead. Export goes to whichever pulled: a [`PulledImage`] with an archive plan came
/// from the registry source. Other registry errors are returned as they are (Docker would
/// not do better on a missing image, and a registry that is down is retried).
pub struct FallbackSource {
    registry: RegistrySource,
    fallback: Arc<dyn ImageSource>,
}

impl FallbackSource {
    /// The registry source first, `fallback` for what it cannot do.
    pub fn new(registry: RegistrySource, fallback: Arc<dyn ImageSource>) -> Self {
        FallbackSource { registry, fallback }
    }
}

impl ImageSource for FallbackSource {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            match self.registry.pull_image(image).await {
                Ok(pulled) => Ok(pulled),
                Err(e) if e.wants_fallback() => {
                    tracing::info!(%image, reason = %e, "registry API cannot fetch it; using the runtime");
                    self.fallback.pull(image).await.map_err(|f| SourceError {
                        message: format!(
                            "{} (registry API first: {e})",
                            without_quoted_body(&f.message)
                        ),
                        retryable: f.retryable,
                    })
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn export<'a>(&'a self, image: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        if image.archive.is_some() {
            self.registry.export(image)
        } else {
            self.fallback.export(image)
        }
    }
}

/// Docker's pull errors quote what the registry answered ("error parsing HTTP 404 response
/// body: invalid character '<' ...: \"<html>...\""); errors reach `/stats`, and what answered
/// may not be a registry, so the message is cut where the quote begins.
pub(crate) fn without_quoted_body(message: &str) -> String {
    const MARK: &str = "response body";
    match message.to_ascii_lowercase().find(MARK) {
        // ASCII lowercasing keeps byte offsets, so the cut is on a char boundary.
        Some(at) => format!("{} (not shown)", &message[..at + MARK.len()]),
        None => message.to_owned(),
    }
}
