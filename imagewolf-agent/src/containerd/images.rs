//! The namespace's images: whether one with a given image id is there (`ctr images ls`,
//! `ctr content ls`), and their references.
//!
//! Design decisions:
//! - **`has_image` by image id = config digest.** Docker's image id is the digest of the
//!   image config; containerd names images by reference and points them at a manifest (or an
//!   index). So the check lists the images (`ctr images ls`) and the content labels
//!   (`ctr content ls`) and follows each image's target the way containerd's garbage collector
//!   does: a manifest carries `containerd.io/gc.ref.content.config=<config digest>`, an index
//!   `containerd.io/gc.ref.content.m.<n>=<manifest digest>`. Two processes, however many
//!   images the node has. A shortcut answers first: the CRI plugin also records every image
//!   under its id (`sha256:...` as the reference), so on a Kubernetes node the id alone is
//!   usually enough. Content that no image points at does not count: it may be a half-done
//!   pull or garbage awaiting collection.

use std::collections::HashMap;

use super::ctr::clip;
use super::{Containerd, ContainerdError, CONTROL_TIMEOUT};
use crate::docker::validate_image_id;

impl Containerd {
    /// Whether an image whose config digest is `image_id` is in the namespace.
    pub async fn has_image_id(&self, image_id: &str) -> Result<bool, ContainerdError> {
        validate_image_id(image_id).map_err(|_| ContainerdError::InvalidImageId(clip(image_id)))?;
        let id = normalize_id(image_id);
        let images = parse_images(
            &self
                .ctr("images ls", &["images", "ls"], CONTROL_TIMEOUT)
                .await?,
        );
        if images.iter().any(|(reference, _)| *reference == id) {
            return Ok(true);
        }
        if images.is_empty() {
            return Ok(false);
        }
        let content = parse_content(
            &self
                .ctr("content ls", &["content", "ls"], CONTROL_TIMEOUT)
                .await?,
        );
        Ok(images
            .iter()
            .any(|(_, target)| target_has_config(&content, target, &id)))
    }

    /// The references of the images in the namespace (`ctr images ls -q`).
    pub async fn image_refs(&self) -> Result<Vec<String>, ContainerdError> {
        Ok(self
            .ctr("images ls", &["images", "ls", "-q"], CONTROL_TIMEOUT)
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// `sha256:<hex>` in lower case, whichever way the id was written.
pub(super) fn normalize_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    format!("sha256:{}", hex.to_ascii_lowercase())
}

/// `ctr images ls` -> (reference, target digest) pairs. Columns are REF TYPE DIGEST SIZE
/// PLATFORMS LABELS, space-aligned; neither a reference nor a media type holds a space.
pub(super) fn parse_images(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let reference = fields.next()?;
            let target = fields.nth(1)?;
            target
                .starts_with("sha256:")
                .then(|| (reference.to_owned(), target.to_owned()))
        })
        .collect()
}

/// `ctr content ls` -> digest -> labels. Columns are DIGEST SIZE AGE LABELS, tab-separated
/// (AGE holds spaces: "Less than a second"); LABELS is `k=v,k=v` or `-`.
pub(super) fn parse_content(listing: &str) -> HashMap<String, Vec<(String, String)>> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t').filter(|f| !f.trim().is_empty());
            let digest = fields.next()?.trim();
            if !digest.starts_with("sha256:") {
                return None;
            }
            let labels = fields.next_back().unwrap_or("-").trim();
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            Some((digest.to_owned(), labels))
        })
        .collect()
}

/// Whether the manifest (or an index's manifests, one level down; nested indexes are rare
/// and deeper ones are not followed) at `target` names `config` as its config.
pub(super) fn target_has_config(
    content: &HashMap<String, Vec<(String, String)>>,
    target: &str,
    config: &str,
) -> bool {
    const CONFIG: &str = "containerd.io/gc.ref.content.config";
    const MANIFEST: &str = "containerd.io/gc.ref.content.m.";
    let names_config = |digest: &str| {
        content
            .get(digest)
            .is_some_and(|labels| labels.iter().any(|(k, v)| k == CONFIG && v == config))
    };
    if names_config(target) {
        return true;
    }
    content.get(target).is_some_and(|labels| {
        labels
            .iter()
            .filter(|(k, _)| k.starts_with(MANIFEST))
            .any(|(_, manifest)| names_config(manifest))
    })
}
