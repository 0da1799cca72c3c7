//! Content-addressed delivery into dockerd: the pull through the agent's registry endpoint
//! ([`Docker::pull_through_endpoint`]) and the checks of its endpoint and digest.
//!
//! Design decisions:
//! - **Content-addressed delivery pulls twice** ([`Docker::pull_through_endpoint`]). A
//!   `docker load` records neither the image's RepoDigests nor which compressed blob each
//!   layer came from, so a later `docker pull` of a related image downloads every layer
//!   again. So the node pulls the image from the agent's read-only registry endpoint
//!   instead: (1) `ENDPOINT/REPO@DIGEST` brings the layers in from the node itself, and
//!   dockerd remembers each layer by its blob digest, whichever registry served it; (2)
//!   tag `REGISTRY/REPO:TAG`, so the image is usable by its name at once; (3)
//!   `REGISTRY/REPO@DIGEST` from the real registry, because dockerd's classic image store
//!   records a RepoDigest only for a pull from that very registry: dockerd finds the
//!   config already present and stops after the manifest, so the manifest request is the
//!   only one the real registry sees (no blob). Measured with dockerd 20.10: a single
//!   `HEAD /v2/REPO/manifests/DIGEST`, since dockerd keeps the manifest it got from the
//!   endpoint in its content store (a GET where it does not). If that pull fails, say for
//!   want of credentials, the image is there all the same and only the RepoDigest is
//!   missing: a warning; (4) untag `ENDPOINT/REPO@DIGEST` (never a forced
//!   delete: the image stays under its other names, and keeps the endpoint's name if it
//!   has no other). The endpoint must be on loopback (or listed in dockerd's
//!   `--insecure-registry`): it speaks plain http.

use std::time::Duration;

use bollard::query_parameters::{RemoveImageOptionsBuilder, TagImageOptionsBuilder};

use super::{
    clip, timed, validate_image_id, validate_reference, Docker, DockerError, CONTROL_TIMEOUT,
};
use crate::image::ImageRef;
use crate::loader::LoaderError;

/// The pull that records the RepoDigest fetches one manifest (or an index and a manifest):
/// a registry that takes longer than this is skipped with a warning.
const REPO_DIGEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Checks a manifest digest: `sha256:` + 64 lower-case hex digits.
pub(crate) fn validate_digest(digest: &str) -> Result<(), DockerError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(DockerError::InvalidName {
            what: "digest",
            value: clip(digest),
        })
    }
}

/// Checks a registry endpoint: `host:port` (or a bare host), no path, no scheme (and no
/// bracketed IPv6 literal: dockerd 20.10's reference grammar has none).
pub(crate) fn validate_endpoint(endpoint: &str) -> Result<(), DockerError> {
    let bad = || DockerError::InvalidName {
        what: "endpoint",
        value: clip(endpoint),
    };
    let ok = !endpoint.is_empty()
        && endpoint.len() <= 255
        && endpoint
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && endpoint
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

impl Docker {
    /// Puts `image` (manifest or index digest `manifest_digest`) into the daemon by pulling
    /// it from the agent's registry endpoint `endpoint` (`host:port`, plain http), then
    /// records the real registry's digest reference and tag, and drops the endpoint's name
    /// (see the module docs for why the two pulls). The layers come from the endpoint
    /// only; the real registry is asked for the manifest alone, and its failure is a
    /// warning.
    pub async fn pull_through_endpoint(
        &self,
        endpoint: &str,
        image: &ImageRef,
        manifest_digest: &str,
    ) -> Result<(), LoaderError> {
        validate_endpoint(endpoint)?;
        validate_digest(manifest_digest)?;
        let local_repo = format!("{endpoint}/{}", image.repository);
        let real_repo = format!("{}/{}", image.registry, image.repository);
        let local_ref = format!("{local_repo}@{manifest_digest}");
        let real_ref = format!("{real_repo}@{manifest_digest}");
        validate_reference(&local_ref)?;
        validate_reference(&real_ref)?;
        if let Some(tag) = &image.tag {
            validate_reference(&format!("{real_repo}:{tag}"))?;
        }

        // 1. The layers, from the node's own endpoint.
        self.pull_reference(&local_repo, manifest_digest)
            .await
            .map_err(|e| LoaderError {
                message: format!("pulling {local_ref} from the agent's registry endpoint: {e}"),
            })?;
        let inspect = timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(&local_ref),
        )
        .await
        .map_err(|e| LoaderError {
            message: format!("inspecting {local_ref} after pulling it: {e}"),
        })?;
        let image_id = inspect
            .id
            .filter(|id| validate_image_id(id).is_ok())
            .ok_or_else(|| LoaderError {
                message: format!("pulled {local_ref} but it has no valid image id"),
            })?;

        // 2. The tag, as pushed.
        if let Some(tag) = &image.tag {
            let options = TagImageOptionsBuilder::default()
                .repo(&real_repo)
                .tag(tag)
                .build();
            timed(
                "tag",
                CONTROL_TIMEOUT,
                self.client.tag_image(&image_id, Some(options)),
            )
            .await
            .map_err(|e| LoaderError {
                message: format!("tagging {image_id} as {real_repo}:{tag}: {e}"),
            })?;
        }

        // 3. The RepoDigest, from the real registry: dockerd has the config, so this
        // fetches the manifest and nothing else. After the tag: the image is usable by its
        // name meanwhile.
        match tokio::time::timeout(
            REPO_DIGEST_TIMEOUT,
            self.pull_reference(&real_repo, manifest_digest),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                image = %real_ref, error = %e,
                "image pulled from the agent's endpoint, but the registry did not confirm \
                 its digest: the image has no RepoDigest"
            ),
            Err(_) => tracing::warn!(
                image = %real_ref, after = ?REPO_DIGEST_TIMEOUT,
                "image pulled from the agent's endpoint, but the registry did not answer: \
                 the image has no RepoDigest"
            ),
        }

        // 4. Untag the endpoint's name, if the image has another one (removing its last
        // name would delete the image).
        let inspect = timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(&image_id),
        )
        .await
        .map_err(|e| LoaderError {
            message: format!("inspecting {image_id} after naming it: {e}"),
        })?;
        let endpoint_prefix = format!("{endpoint}/");
        let other_names = inspect
            .repo_tags
            .iter()
            .flatten()
            .chain(inspect.repo_digests.iter().flatten())
            .filter(|name| !name.starts_with(&endpoint_prefix))
            .count();
        if other_names == 0 {
            tracing::warn!(
                image = %local_ref,
                "keeping the endpoint's name: the image has no other (no tag, no RepoDigest)"
            );
            return Ok(());
        }
        let options = RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(true)
            .build();
        timed(
            "untag",
            CONTROL_TIMEOUT,
            self.client.remove_image(&local_ref, Some(options), None),
        )
        .await
        .map_err(|e| LoaderError {
            message: format!("untagging {local_ref}: {e}"),
        })?;
        tracing::debug!(image = %real_ref, id = %image_id, endpoint, "pulled through the agent's endpoint");
        Ok(())
    }
}
