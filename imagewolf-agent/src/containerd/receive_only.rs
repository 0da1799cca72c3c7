//! The fallback source of a containerd node.
//!
//! Design decisions:
//! - **No runtime fallback for pulls** ([`ReceiveOnly`]): a containerd node originates through
//!   the registry-API source; what that source cannot read (https, credentials) needs an
//!   agent with Docker to hear the push.

use futures::future::BoxFuture;

use crate::image::ImageRef;
use crate::source::{ImageSource, PulledImage, SourceError, Tarball};

/// The fallback source of a containerd node, behind the registry-API source: containerd
/// cannot be asked to pull and export, so what the registry source cannot read is refused
/// with a message saying where to send the notification instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveOnly;

impl ImageSource for ReceiveOnly {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            Err(SourceError {
                message: format!(
                    "cannot pull {image}: the registry's API cannot be read from here (https \
                     or credentials) and a --runtime containerd agent has no Docker to fall \
                     back on; send the notification to an agent running with --runtime docker"
                ),
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
                message: "a --runtime containerd agent cannot export images".into(),
                retryable: false,
            })
        })
    }
}
