//! What a received image archive says about itself must match its announcement, checked
//! before the runtime may register it.
//!
//! The pieces of a tarball are verified against the announced hashes, but the announcement
//! could name one image (`nginx:latest`) while its archive carries another, tagged as
//! `nginx:latest` or anything else: loading it would replace a node's image under a name the
//! announcement never claimed. So once the whole archive is verified, and before its end is
//! released to the runtime (nothing is registered before the end of an archive, see
//! `feed.rs`), its index is read:
//! - `manifest.json` (what `docker load` reads): every image's `Config` must be the
//!   announced image id, and every name in `RepoTags` the announced `registry/repo:tag`;
//! - `index.json` (OCI layout, what `ctr import` reads): every `io.containerd.image.name`
//!   must be the announced name, every `org.opencontainers.image.ref.name` it or its tag;
//! - `repositories` (the legacy index): every name and tag the announced ones.
//!
//! Names compare in their normalized form (`nginx:latest` is `docker.io/library/nginx:latest`).
//! An archive with neither `manifest.json` nor `index.json` is refused. Reading is bounded:
//! at most [`MAX_ENTRIES`] tar headers, index files of at most [`MAX_INDEX_BYTES`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;

use crate::image::{Distribution, ImageRef};
use crate::registry::archive::padded;

/// Most tar entries walked looking for the index files.
pub(crate) const MAX_ENTRIES: usize = 100_000;
/// Largest index file read.
pub(crate) const MAX_INDEX_BYTES: u64 = 4 << 20;

/// Checks the archive at `path` (`len` bytes, all verified) against `d` (blocking I/O: run
/// it on the blocking pool).
pub(crate) fn check_archive(path: &Path, len: u64, d: &Distribution) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("reading the archive: {e}"))?;
    let mut found = Index::default();
    let mut at = 0u64;
    for _ in 0..MAX_ENTRIES {
        if at + 512 > len {
            break;
        }
        let mut block = [0u8; 512];
        file.read_exact_at(&mut block, at)
            .map_err(|e| format!("reading the archive: {e}"))?;
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let header = tar::Header::from_byte_slice(&block);
        let size = header.size().map_err(|e| format!("tar header: {e}"))?;
        let name = header
            .path()
            .map_err(|e| format!("tar header: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let data = at + 512;
        let slot = match name.as_str() {
            "manifest.json" => Some(&mut found.manifest),
            "index.json" => Some(&mut found.index),
            "repositories" => Some(&mut found.repositories),
            _ => None,
        };
        if let Some(slot) = slot {
            if size > MAX_INDEX_BYTES {
                return Err(format!(
                    "the archive's {name} is over {MAX_INDEX_BYTES} bytes"
                ));
            }
            let mut bytes = vec![0u8; size as usize];
            file.read_exact_at(&mut bytes, data)
                .map_err(|e| format!("reading the archive: {e}"))?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the archive's {name} is not JSON: {e}"))?;
            *slot = Some(value);
        }
        at = data.saturating_add(padded(size));
    }
    found.check(&d.image, &d.image_id)
}

#[derive(Default)]
struct Index {
    manifest: Option<Value>,
    index: Option<Value>,
    repositories: Option<Value>,
}

impl Index {
    fn check(&self, image: &ImageRef, image_id: &str) -> Result<(), String> {
        if self.manifest.is_none() && self.index.is_none() {
            return Err("the archive has no manifest.json or index.json".into());
        }
        let announced = image
            .tag
            .as_ref()
            .map(|tag| normalize(&format!("{}/{}:{tag}", image.registry, image.repository)));
        let name_ok = |name: &str| announced.as_deref() == Some(normalize(name).as_str());
        if let Some(manifest) = &self.manifest {
            let entries = manifest
                .as_array()
                .ok_or("the archive's manifest.json is not a list")?;
            for entry in entries {
                let config = entry["Config"].as_str().unwrap_or("");
                let hex = config
                    .trim_start_matches("blobs/sha256/")
                    .trim_end_matches(".json");
                if format!("sha256:{hex}") != image_id {
                    return Err(format!(
                        "the archive holds image {config:?}, not the announced {image_id}"
                    ));
                }
                for tag in entry["RepoTags"].as_array().into_iter().flatten() {
                    let tag = tag.as_str().unwrap_or("");
                    if !name_ok(tag) {
                        return Err(format!(
                            "the archive names its image {tag:?}, which the announcement does not"
                        ));
                    }
                }
            }
        }
        if let Some(index) = &self.index {
            let manifests = index["manifests"].as_array().into_iter().flatten();
            for m in manifests {
                let annotations = &m["annotations"];
                if let Some(name) = annotations["io.containerd.image.name"].as_str() {
                    if !name_ok(name) {
                        return Err(format!(
                            "the archive's index names {name:?}, which the announcement does not"
                        ));
                    }
                }
                if let Some(reference) = annotations["org.opencontainers.image.ref.name"].as_str() {
                    if image.tag.as_deref() != Some(reference) && !name_ok(reference) {
                        return Err(format!("the archive's index names {reference:?}, which the announcement does not"));
                    }
                }
            }
        }
        if let Some(repositories) = &self.repositories {
            let repos = repositories
                .as_object()
                .ok_or("the archive's repositories is not an object")?;
            for (repo, tags) in repos {
                for tag in tags.as_object().into_iter().flat_map(|t| t.keys()) {
                    if !name_ok(&format!("{repo}:{tag}")) {
                        return Err(format!(
                            "the archive names {repo}:{tag}, which the announcement does not"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A reference's normalized form, as Docker reads it: `nginx:latest` is
/// `docker.io/library/nginx:latest`, `user/app:v1` is `docker.io/user/app:v1`, Docker Hub's
/// other host names are `docker.io`.
pub(crate) fn normalize(name: &str) -> String {
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    let is_host = |s: &str| s.contains('.') || s.contains(':') || s == "localhost";
    match rest {
        None => format!("docker.io/library/{first}"),
        Some(rest) if is_host(first) => {
            let host = match first {
                "index.docker.io" | "registry-1.docker.io" => "docker.io",
                host => host,
            };
            if host == "docker.io" && !rest.contains('/') {
                format!("docker.io/library/{rest}")
            } else {
                format!("{host}/{rest}")
            }
        }
        Some(_) => format!("docker.io/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn image(tag: Option<&str>) -> ImageRef {
        ImageRef {
            registry: "docker.io".into(),
            repository: "library/nginx".into(),
            tag: tag.map(Into::into),
            digest: None,
        }
    }

    fn with_manifest(config: &str, tags: &[&str]) -> Index {
        Index {
            manifest: Some(json!([{ "Config": config, "RepoTags": tags, "Layers": [] }])),
            ..Index::default()
        }
    }

    #[test]
    fn names_normalize_as_docker_reads_them() {
        for (a, b) in [
            ("nginx:latest", "docker.io/library/nginx:latest"),
            (
                "index.docker.io/library/nginx:1",
                "docker.io/library/nginx:1",
            ),
            ("docker.io/nginx:1", "docker.io/library/nginx:1"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("10.0.0.1:5000/team/app:v1", "10.0.0.1:5000/team/app:v1"),
            ("localhost/app:v1", "localhost/app:v1"),
        ] {
            assert_eq!(normalize(a), b, "{a}");
        }
    }

    #[test]
    fn the_archive_must_hold_the_announced_image_under_the_announced_name() {
        let hex = &ID["sha256:".len()..];
        let ok = with_manifest(&format!("{hex}.json"), &["nginx:latest"]);
        ok.check(&image(Some("latest")), ID).unwrap();
        let oci = with_manifest(&format!("blobs/sha256/{hex}"), &[]);
        oci.check(&image(None), ID).unwrap();

        // Another image under the announced name.
        let other = with_manifest(&format!("{}.json", "2".repeat(64)), &["nginx:latest"]);
        assert!(other
            .check(&image(Some("latest")), ID)
            .unwrap_err()
            .contains("not the announced"));
        // The announced image under another name (or a second one).
        for tags in [&["postgres:16"][..], &["nginx:latest", "nginx:1.27"]] {
            let renamed = with_manifest(&format!("{hex}.json"), tags);
            assert!(
                renamed.check(&image(Some("latest")), ID).is_err(),
                "{tags:?}"
            );
        }
        // A tagless announcement names nothing.
        assert!(ok.check(&image(None), ID).is_err());
        // Neither index: refused.
        assert!(Index::default().check(&image(Some("latest")), ID).is_err());
    }

    #[test]
    fn oci_index_and_repositories_names_are_checked_too() {
        let hex = &ID["sha256:".len()..];
        let mut index = with_manifest(&format!("{hex}.json"), &["nginx:latest"]);
        index.index = Some(json!({ "manifests": [{ "annotations": {
            "io.containerd.image.name": "docker.io/library/nginx:latest",
            "org.opencontainers.image.ref.name": "latest" } }] }));
        index.repositories = Some(json!({ "nginx": { "latest": hex } }));
        index.check(&image(Some("latest")), ID).unwrap();
        index.index = Some(json!({ "manifests": [{ "annotations": {
            "io.containerd.image.name": "docker.io/library/redis:latest" } }] }));
        assert!(index.check(&image(Some("latest")), ID).is_err());
        index.index = None;
        index.repositories = Some(json!({ "nginx": { "evil": hex } }));
        assert!(index.check(&image(Some("latest")), ID).is_err());
    }
}
