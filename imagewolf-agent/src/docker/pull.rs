//! The pull half of Docker as image source (`POST /images/create`); the export is in
//! `save.rs`.
//!
//! Design decisions:
//! - **Pull by digest when known**, then tag: the node exports exactly the pushed manifest even
//!   if the tag moved since, and the tarball still carries the tag.

use bollard::query_parameters::{CreateImageOptionsBuilder, TagImageOptionsBuilder};

use super::{
    follow, size_hint, timed, validate_image_id, validate_reference, Docker, DockerError,
    CONTROL_TIMEOUT, PULL_STALL_TIMEOUT,
};
use crate::image::ImageRef;
use crate::source::PulledImage;

impl Docker {
    /// Pulls `repo` at a tag or digest and follows the progress to its end.
    pub(super) async fn pull_reference(
        &self,
        repo: &str,
        tag_or_digest: &str,
    ) -> Result<(), DockerError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(tag_or_digest)
            .build();
        let stream = self.client.create_image(Some(options), None, None);
        let lines = follow("pull progress", PULL_STALL_TIMEOUT, stream, |i| {
            i.status.as_deref()
        })
        .await?;
        tracing::debug!(repo, tag_or_digest, last = ?lines.last(), "pull finished");
        Ok(())
    }

    pub(super) async fn do_pull(&self, image: &ImageRef) -> Result<PulledImage, DockerError> {
        let reference = image.pull_reference();
        validate_reference(&reference)?;
        // An empty registry already failed validation ("/repo:tag").
        let repo = format!("{}/{}", image.registry, image.repository);
        match (&image.tag, &image.digest) {
            (Some(tag), Some(digest)) => {
                validate_reference(&format!("{repo}@{digest}"))?;
                self.pull_reference(&repo, digest).await?;
                let options = TagImageOptionsBuilder::default()
                    .repo(&repo)
                    .tag(tag)
                    .build();
                let by_digest = format!("{repo}@{digest}");
                timed(
                    "tag",
                    CONTROL_TIMEOUT,
                    self.client.tag_image(&by_digest, Some(options)),
                )
                .await?;
            }
            (Some(tag), None) => self.pull_reference(&repo, tag).await?,
            (None, Some(digest)) => self.pull_reference(&repo, digest).await?,
            (None, None) => self.pull_reference(&repo, "latest").await?,
        }
        let inspect = timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(&reference),
        )
        .await?;
        let image_id = inspect
            .id
            .filter(|id| validate_image_id(id).is_ok())
            .ok_or_else(|| {
                DockerError::Unexpected(format!("pulled {reference} but it has no valid image id"))
            })?;
        Ok(PulledImage {
            image_id,
            reference,
            size_hint: size_hint(inspect.size),
            archive: None,
        })
    }
}
