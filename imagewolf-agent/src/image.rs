//! What the agent moves around: image references and distribution records.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod blobs;
pub use blobs::{Blob, BlobOffer, BlobSet, Chunk, LeaseAnswer, ManifestDoc};

/// Largest image accepted in an announcement (the sum of its segments or blobs).
pub const MAX_IMAGE_BYTES: u64 = 1 << 40;

/// True if `s` is an image id as runtimes write them: `sha256:` and 64 lowercase hex digits.
/// Ids from other agents are checked with it before anything uses them (a file name under
/// `--runtime none`, a runtime query).
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

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
///
/// The tarball is announced in [`Segment`]s, each its own torrent, as the origin produces
/// them: receivers start fetching (and the runtime start unpacking) the first segment while
/// the origin is still reading later ones from the registry. The origin re-announces the
/// distribution each time it grows; the last announcement adds the whole tarball's SHA-256
/// ([`Distribution::sha256`]), which says that no segment follows. Every announcement of one
/// distribution extends the previous ones ([`Distribution::extends`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    /// The image as pushed.
    pub image: ImageRef,
    /// The image id (`sha256:...` of its config): how a node tells it already has the image.
    pub image_id: String,
    /// Names this distribution on every node (40 hex digits, chosen by the origin): records,
    /// files and the updates of a growing distribution are matched by it.
    pub id: String,
    /// The tarball's expected size in bytes, as the origin knew it when it started (exact for
    /// images read from the registry's API, an estimate otherwise); for progress only.
    pub size_hint: u64,
    /// The tarball's segments so far, in order: each starts where the previous one ends.
    pub segments: Vec<Segment>,
    /// SHA-256 of the whole tarball (hex), once every segment is announced: checked before
    /// the loader may finish reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// BitTorrent addresses (`ip:port`) of agents known to seed it.
    pub seeders: Vec<String>,
    /// When the origin created it, seconds since the Unix epoch.
    pub created: u64,
    /// HMAC-SHA256 (hex) of everything above under the cluster secret, when the cluster
    /// has one (see [`Distribution::sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The image as blobs by digest (the registry-native path); `segments` is then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<BlobSet>,
}

/// One consecutive part of the tarball, spread as a torrent of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Base64 of the `.torrent` bytes (a single file of `len` bytes).
    pub torrent: String,
    /// Hex info-hash of that torrent.
    pub info_hash: String,
    /// Bytes in this segment.
    pub len: u64,
}

impl Distribution {
    /// A complete distribution of one segment: the whole tarball in the single-file torrent
    /// `meta`, whose SHA-256 is `sha256`. Its id is the torrent's info-hash. For tools and
    /// tests that build a tarball's torrent themselves; the agent's origin announces
    /// segments as it reads them.
    pub fn single(
        image: ImageRef,
        image_id: String,
        meta: &imagewolf_bt::metainfo::Metainfo,
        sha256: String,
        seeders: Vec<String>,
        created: u64,
    ) -> Self {
        use base64::Engine;
        let info_hash = meta.info_hash().to_hex();
        Distribution {
            image,
            image_id,
            id: info_hash.clone(),
            size_hint: meta.total_len(),
            segments: vec![Segment {
                torrent: base64::engine::general_purpose::STANDARD.encode(meta.to_bytes()),
                info_hash,
                len: meta.total_len(),
            }],
            sha256: Some(sha256),
            seeders,
            created,
            signature: None,
            blobs: None,
        }
    }

    /// True once the last segment is announced (the SHA-256 comes with it), or, for a blob
    /// distribution, the last chunk.
    pub fn is_complete(&self) -> bool {
        self.sha256.is_some() || self.blobs.as_ref().is_some_and(|b| b.complete)
    }

    /// Bytes announced so far (the whole tarball, or every blob, once complete).
    pub fn announced_len(&self) -> u64 {
        let blobs = self.blobs.as_ref().map_or(0, BlobSet::announced_len);
        self.segments
            .iter()
            .fold(blobs, |sum, s| sum.saturating_add(s.len))
    }

    /// Bytes of the announcement's bulky parts (the segments' torrents, the blob set's
    /// manifests): what bounds on records and listings count.
    pub fn payload_len(&self) -> usize {
        let manifests = self.blobs.as_ref().map_or(0, |b| {
            b.manifests
                .iter()
                .map(|m| m.content.len())
                .sum::<usize>()
                .saturating_add(b.blobs.len().saturating_mul(128))
        });
        self.segments
            .iter()
            .fold(manifests, |sum, s| sum.saturating_add(s.torrent.len()))
    }

    /// True if `self` is `earlier` grown: the same distribution, the same segments first,
    /// and nothing taken back (a complete one stays complete and unchanged).
    pub fn extends(&self, earlier: &Distribution) -> bool {
        self.id == earlier.id
            && self.image == earlier.image
            && self.image_id == earlier.image_id
            && self.created == earlier.created
            && self.segments.len() >= earlier.segments.len()
            && self.segments[..earlier.segments.len()] == earlier.segments[..]
            && (earlier.sha256.is_none() || self.sha256 == earlier.sha256)
            && match (&self.blobs, &earlier.blobs) {
                (None, None) => true,
                (Some(now), Some(then)) => now.extends(then),
                _ => false,
            }
    }

    /// True if `self` adds something to `earlier` (which it [`extends`](Self::extends)).
    pub fn grows(&self, earlier: &Distribution) -> bool {
        self.extends(earlier)
            && (self.segments.len() > earlier.segments.len()
                || self.sha256.is_some() != earlier.sha256.is_some()
                || match (&self.blobs, &earlier.blobs) {
                    (Some(now), Some(then)) => now.grows(then),
                    _ => false,
                })
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Distribution {
    /// The bytes the signature covers: every field but `seeders` (agents add themselves to
    /// that list as they start seeding) and the signature itself, each length-prefixed so
    /// no two different distributions share a message. The origin signs again each time the
    /// distribution grows.
    fn signed_message(&self) -> Vec<u8> {
        let image = &self.image;
        let mut fields: Vec<&[u8]> = vec![
            image.registry.as_bytes(),
            image.repository.as_bytes(),
            image.tag.as_deref().unwrap_or("\0").as_bytes(),
            image.digest.as_deref().unwrap_or("\0").as_bytes(),
            self.image_id.as_bytes(),
            self.id.as_bytes(),
            self.sha256.as_deref().unwrap_or("\0").as_bytes(),
        ];
        let numbers = [
            self.size_hint.to_be_bytes(),
            self.created.to_be_bytes(),
            (self.segments.len() as u64).to_be_bytes(),
        ];
        fields.extend(numbers.iter().map(|n| &n[..]));
        let lens: Vec<[u8; 8]> = self.segments.iter().map(|s| s.len.to_be_bytes()).collect();
        for (segment, len) in self.segments.iter().zip(&lens) {
            fields.push(segment.torrent.as_bytes());
            fields.push(segment.info_hash.as_bytes());
            fields.push(len);
        }
        let mut blob_fields = Vec::new();
        if let Some(blobs) = &self.blobs {
            blobs.signed_fields(&mut blob_fields);
        }
        fields.extend(blob_fields.iter().map(Vec::as_slice));
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
            id: "33".repeat(20),
            size_hint: 42,
            segments: vec![Segment {
                torrent: "dG9ycmVudA==".into(),
                info_hash: "11".repeat(20),
                len: 42,
            }],
            sha256: Some("22".repeat(32)),
            seeders: vec!["10.0.0.1:6000".into()],
            created: 7,
            signature: None,
            blobs: None,
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
        tampered.sha256 = Some("33".repeat(32));
        assert!(!tampered.verify(b"secret"));
        let mut tampered = d.clone();
        tampered.segments[0].len = 41;
        assert!(!tampered.verify(b"secret"));
        let mut tampered = d.clone();
        tampered.segments.push(tampered.segments[0].clone());
        assert!(!tampered.verify(b"secret"));
        let mut tampered = d.clone();
        tampered.image.tag = Some("v2".into());
        assert!(!tampered.verify(b"secret"));
        let mut tampered = d;
        tampered.signature = Some("zz".into());
        assert!(!tampered.verify(b"secret"));
    }

    #[test]
    fn growth_is_only_appending() {
        let mut first = sample();
        first.sha256 = None;
        let mut second = first.clone();
        second.segments.push(Segment {
            torrent: "eA==".into(),
            info_hash: "44".repeat(20),
            len: 5,
        });
        assert!(second.extends(&first) && second.grows(&first));
        assert!(first.extends(&first) && !first.grows(&first));
        assert!(!first.extends(&second), "segments taken back");
        let mut done = second.clone();
        done.sha256 = Some("55".repeat(32));
        assert!(done.grows(&second) && done.is_complete());
        assert_eq!(done.announced_len(), 47);
        let mut other = done.clone();
        other.sha256 = Some("66".repeat(32));
        assert!(
            !other.extends(&done),
            "a complete distribution cannot change"
        );
        let mut swapped = second.clone();
        swapped.segments[0].info_hash = "77".repeat(20);
        assert!(!swapped.extends(&first), "an earlier segment changed");
        let mut renamed = second;
        renamed.id = "88".repeat(20);
        assert!(!renamed.extends(&first));
    }
}
