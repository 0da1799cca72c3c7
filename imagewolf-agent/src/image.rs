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
    /// HMAC-SHA256 (hex) of everything above under the cluster secret, when the cluster
    /// has one (see [`Distribution::sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Distribution {
    /// The bytes the signature covers: every field but `seeders` (agents add themselves to
    /// that list as they start seeding) and the signature itself, each length-prefixed so
    /// no two different distributions share a message.
    fn signed_message(&self) -> Vec<u8> {
        let image = &self.image;
        let fields: [&[u8]; 10] = [
            image.registry.as_bytes(),
            image.repository.as_bytes(),
            image.tag.as_deref().unwrap_or("\0").as_bytes(),
            image.digest.as_deref().unwrap_or("\0").as_bytes(),
            self.image_id.as_bytes(),
            self.torrent.as_bytes(),
            self.info_hash.as_bytes(),
            self.sha256.as_bytes(),
            &self.size.to_be_bytes(),
            &self.created.to_be_bytes(),
        ];
        let mut out = Vec::new();
        for field in fields {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    fn mac(&self, secret: &[u8]) -> HmacSha256 {
        use hmac::{KeyInit, Mac};
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(&self.signed_message());
        mac
    }

    /// Signs it with the cluster secret.
    pub fn sign(&mut self, secret: &[u8]) {
        use hmac::Mac;
        let tag = self.mac(secret).finalize().into_bytes();
        self.signature = Some(tag.iter().map(|b| format!("{b:02x}")).collect());
    }

    /// Checks the signature in constant time.
    pub fn verify(&self, secret: &[u8]) -> bool {
        use hmac::Mac;
        let Some(sig) = &self.signature else {
            return false;
        };
        let Some(bytes) = decode_hex(sig) else {
            return false;
        };
        self.mac(secret).verify_slice(&bytes).is_ok()
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Distribution {
        Distribution {
            image: ImageRef {
                registry: "r:5000".into(),
                repository: "a/b".into(),
                tag: Some("v1".into()),
                digest: None,
            },
            image_id: "sha256:00".into(),
            torrent: "dG9ycmVudA==".into(),
            info_hash: "11".repeat(20),
            size: 42,
            sha256: "22".repeat(32),
            seeders: vec!["10.0.0.1:6000".into()],
            created: 7,
            signature: None,
        }
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let mut d = sample();
        assert!(!d.verify(b"secret"), "unsigned accepted");
        d.sign(b"secret");
        assert!(d.verify(b"secret"));
        assert!(!d.verify(b"other secret"));
        // Seeders may change as agents join; nothing else may.
        d.seeders.push("10.0.0.2:6000".into());
        assert!(d.verify(b"secret"));
        let mut tampered = d.clone();
        tampered.sha256 = "33".repeat(32);
        assert!(!tampered.verify(b"secret"));
        let mut tampered = d.clone();
        tampered.image.tag = Some("v2".into());
        assert!(!tampered.verify(b"secret"));
        let mut tampered = d;
        tampered.signature = Some("zz".into());
        assert!(!tampered.verify(b"secret"));
    }
}
