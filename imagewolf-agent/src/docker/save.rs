//! The export half of Docker as image source: `docker save` (`GET /images/{name}/get`),
//! its body adapted to an `AsyncRead` as it arrives.

use futures::{StreamExt, TryStreamExt};
use tokio_util::io::StreamReader;

use super::{slow_io_deadline, validate_reference, Docker, DockerError};
use crate::source::{PulledImage, Tarball};

impl Docker {
    pub(super) async fn do_export(&self, image: &PulledImage) -> Result<Tarball, DockerError> {
        validate_reference(&image.reference)?;
        let mut body = self.client.export_image(&image.reference);
        // The status (e.g. 404) arrives with the first poll: wait for it here so a missing
        // image is an export error, not a read error half-way through a torrent build.
        // dockerd (20.10 at least) stages the whole image in a temp dir before sending the
        // first byte, so that wait grows with the image.
        let first_byte = slow_io_deadline(image.size_hint);
        let first = match tokio::time::timeout(first_byte, body.next()).await {
            Err(_) => {
                return Err(DockerError::Timeout {
                    what: "export",
                    after: first_byte,
                })
            }
            Ok(None) => {
                return Err(DockerError::Unexpected(format!(
                    "export of {} returned an empty body",
                    image.reference
                )))
            }
            Ok(Some(first)) => first.map_err(DockerError::from)?,
        };
        let rest = futures::stream::once(async move { Ok(first) })
            .chain(body)
            .map_err(|e| std::io::Error::other(DockerError::from(e).to_string()));
        Ok(Box::pin(StreamReader::new(rest)))
    }
}
