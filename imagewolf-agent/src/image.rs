//! What the agent moves around: image references and distribution records.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A reference to an image in a registry: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    /// Registry host and port, e.g. `10.77.0.1:5000` or `registry-1.docker.io`.
    pub registry: String,
    /// Repository path, e.g. `team/app`.
    pub repository: String,
    /// Tag, when the push had one.
    pub tag: Option<String>,
    /// Manifest digest (`sha256:...`), when known.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The reference Docker pulls and saves: `registry/repo:tag`, or `registry/repo@digest`
    /// for a push by digest without a tag.
    pub fn pull_reference(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}/{}:{}", self.registry, self.repository, tag),
            (None, Some(digest)) => format!("{}/{}@{}", self.registry, self.repository, digest),
            (None, None) => format!("{}/{}:latest", self.registry, self.repository),
        }
    }

    /// The key that makes a push "the same push": the reference with its tag and digest.
    /// A registry retrying an event, or the same image pushed again under the same tag, maps
    /// to the same key; a new tag for the same digest does not (nodes need that tag too).
    /// Docker Hub webhooks carry no digest: there the key is the tag alone.
    pub fn dedup_key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pull_reference())?;
        if let (Some(_), Some(d)) = (&self.tag, &self.digest) {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One image being spread: what the origin agent announces to the others, and what a late
/// agent fetches to catch up. Carried as JSON between agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    /// The image as pushed.
    pub image: ImageRef,
    /// The local image id after the pull (`sha256:...` of the config): how a node tells it
    /// already has the image.
    pub image_id: String,
    /// The torrent of the `docker save` tarball, base64 of the `.torrent` bytes.
    pub torrent: String,
    /// Hex info-hash of that torrent.
    pub info_hash: String,
    /// Size of the tarball in bytes.
    pub size: u64,
    /// SHA-256 of the whole tarball (hex): checked before the loader ever sees the file.
    pub sha256: String,
    /// BitTorrent addresses (`ip:port`) of agents known to seed it.
    pub seeders: Vec<String>,
    /// When the origin created it, seconds since the Unix epoch.
    pub created: u64,
}
