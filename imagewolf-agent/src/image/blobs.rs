//! The registry-native announcement: an image as manifests and blobs by digest (see
//! ARCHITECTURE.md, "Registry-native distribution"). Small by design: piece hashes are not
//! in it; a receiver fetches each chunk's `.torrent` from the announcing agent and checks it
//! against the info-hash announced here.

use serde::{Deserialize, Serialize};

/// Most manifests (an index and its platform manifests) in one announcement.
pub const MAX_MANIFESTS: usize = 64;
/// Most bytes of manifests (base64) in one announcement.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most blobs in one announcement (configs and layers of every platform announced).
pub const MAX_BLOBS: usize = 1024;
/// Most chunks of one blob (a 1 TiB blob at the largest chunk size is 4096).
pub const MAX_CHUNKS: usize = 4096;

/// An image as blobs: what the origin announces when the registry-native path carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobSet {
    /// The announcing agent's API address (`ip:port`): where the chunks' `.torrent` files
    /// are fetched (`GET /v1/torrents/<info-hash>`).
    pub api: String,
    /// The digest the image was pushed as (a manifest, or an index of per-platform
    /// manifests): what the runtime pulls.
    pub manifest: String,
    /// The pushed manifest or index and the platform manifests distributed, each checked
    /// against its digest on arrival.
    pub manifests: Vec<ManifestDoc>,
    /// Every blob distributed (configs and layers), all known from the start; their chunks
    /// are announced as the origin reads them.
    pub blobs: Vec<Blob>,
    /// Every chunk of every blob is announced: nothing more follows.
    pub complete: bool,
}

/// A manifest or index, carried whole (they are small, and the endpoint serves them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDoc {
    /// `sha256:<hex>` of `content`'s bytes.
    pub digest: String,
    /// Its media type (what the endpoint answers as `Content-Type`).
    pub media_type: String,
    /// Base64 of the exact bytes.
    pub content: String,
}

/// A blob (config or layer) and the torrents of its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Its chunks so far, in order; complete when their lengths add up to `size`.
    pub chunks: Vec<Chunk>,
}

/// One chunk of a blob: a torrent of its own, a pure function of the blob's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Hex info-hash.
    pub info_hash: String,
    /// Bytes in this chunk.
    pub len: u64,
}

impl Blob {
    /// Bytes announced in chunks so far.
    pub fn announced(&self) -> u64 {
        self.chunks
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(c.len))
    }

    /// Every chunk is announced.
    pub fn is_complete(&self) -> bool {
        self.announced() == self.size
    }
}

impl BlobSet {
    /// Bytes announced in chunks so far.
    pub fn announced_len(&self) -> u64 {
        self.blobs
            .iter()
            .fold(0u64, |sum, b| sum.saturating_add(b.announced()))
    }

    /// True if `self` is `earlier` grown: the same image and blobs, each blob's chunks
    /// extended, completion never taken back.
    pub fn extends(&self, earlier: &BlobSet) -> bool {
        self.api == earlier.api
            && self.manifest == earlier.manifest
            && self.manifests == earlier.manifests
            && self.blobs.len() == earlier.blobs.len()
            && self.blobs.iter().zip(&earlier.blobs).all(|(now, then)| {
                now.digest == then.digest
                    && now.size == then.size
                    && now.chunks.len() >= then.chunks.len()
                    && now.chunks[..then.chunks.len()] == then.chunks[..]
            })
            && (!earlier.complete || self.complete)
    }

    /// True if `self` adds something to `earlier`.
    pub fn grows(&self, earlier: &BlobSet) -> bool {
        self.extends(earlier)
            && (self.complete != earlier.complete
                || self
                    .blobs
                    .iter()
                    .zip(&earlier.blobs)
                    .any(|(now, then)| now.chunks.len() > then.chunks.len()))
    }

    /// Bounds and formats, checked before anything is allocated for an announcement.
    /// True if one of the manifests is of the image whose config is `image_id` (what the
    /// announcement's image id must be: the runtime names the image by it).
    pub fn holds_config(&self, image_id: &str) -> bool {
        use base64::Engine;
        self.manifests.iter().any(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(&m.content)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .is_some_and(|doc| doc["config"]["digest"].as_str() == Some(image_id))
        })
    }

    pub fn check(&self) -> Result<(), String> {
        let digest = |s: &str| {
            s.strip_prefix("sha256:").is_some_and(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
        };
        let hex40 = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if self.api.len() > 64 || self.api.parse::<std::net::SocketAddr>().is_err() {
            return Err("blobs.api is not ip:port".into());
        }
        if !digest(&self.manifest) {
            return Err("blobs.manifest is not sha256:<64 hex>".into());
        }
        if self.manifests.is_empty() || self.manifests.len() > MAX_MANIFESTS {
            return Err(format!("1 to {MAX_MANIFESTS} manifests expected"));
        }
        let mut manifest_bytes = 0usize;
        for m in &self.manifests {
            if !digest(&m.digest) || m.media_type.len() > 255 {
                return Err("a manifest's digest or media type is malformed".into());
            }
            manifest_bytes = manifest_bytes.saturating_add(m.content.len());
        }
        if manifest_bytes > MAX_MANIFEST_BYTES {
            return Err(format!("manifests over {MAX_MANIFEST_BYTES} bytes"));
        }
        for m in &self.manifests {
            use base64::Engine;
            use sha2::Digest;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&m.content)
                .map_err(|_| format!("manifest {} is not base64", m.digest))?;
            let actual: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if m.digest.strip_prefix("sha256:") != Some(actual.as_str()) {
                return Err(format!("manifest {} does not match its digest", m.digest));
            }
        }
        if !self.manifests.iter().any(|m| m.digest == self.manifest) {
            return Err("the pushed manifest is not among the manifests".into());
        }
        if self.blobs.len() > MAX_BLOBS {
            return Err(format!("more than {MAX_BLOBS} blobs"));
        }
        let mut total = 0u64;
        for b in &self.blobs {
            if !digest(&b.digest) {
                return Err("a blob's digest is not sha256:<64 hex>".into());
            }
            if b.chunks.len() > MAX_CHUNKS {
                return Err(format!("a blob of more than {MAX_CHUNKS} chunks"));
            }
            if b.chunks.iter().any(|c| !hex40(&c.info_hash) || c.len == 0) {
                return Err("a chunk's info_hash or length is malformed".into());
            }
            if b.announced() > b.size {
                return Err("a blob's chunks are longer than the blob".into());
            }
            if self.complete && !b.is_complete() {
                return Err("complete, but a blob's chunks do not cover it".into());
            }
            total = total.saturating_add(b.size);
        }
        if total > super::MAX_IMAGE_BYTES {
            return Err("blobs too large".into());
        }
        Ok(())
    }

    /// The fields the cluster signature covers, each its own field.
    pub(super) fn signed_fields(&self, out: &mut Vec<Vec<u8>>) {
        out.push(b"blobs".to_vec());
        out.push(self.api.as_bytes().to_vec());
        out.push(self.manifest.as_bytes().to_vec());
        out.push(vec![u8::from(self.complete)]);
        out.push((self.manifests.len() as u64).to_be_bytes().to_vec());
        for m in &self.manifests {
            out.push(m.digest.as_bytes().to_vec());
            out.push(m.media_type.as_bytes().to_vec());
            out.push(m.content.as_bytes().to_vec());
        }
        out.push((self.blobs.len() as u64).to_be_bytes().to_vec());
        for b in &self.blobs {
            out.push(b.digest.as_bytes().to_vec());
            out.push(b.size.to_be_bytes().to_vec());
            out.push((b.chunks.len() as u64).to_be_bytes().to_vec());
            for c in &b.chunks {
                out.push(c.info_hash.as_bytes().to_vec());
                out.push(c.len.to_be_bytes().to_vec());
            }
        }
    }
}

/// What an agent offers of one blob to the others in mirror mode
/// (`GET /v1/blobs/<digest>`, `distributor/mirror`): the chunks it seeds so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobOffer {
    /// The blob's size.
    pub size: u64,
    /// Its chunks seeded there so far, in order.
    pub chunks: Vec<Chunk>,
    /// Every chunk is listed.
    pub complete: bool,
    /// Reading it failed: fetch it elsewhere.
    pub failed: bool,
    /// The offering agent's BitTorrent address (`ip:port`).
    pub seeder: String,
}

/// A blob's coordinator's answer to a lease request (`POST /v1/leases/<digest>`):
/// read the blob from the upstream, or fetch it from the agent that does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// Read the blob from the upstream yourself.
    #[serde(default)]
    pub fetch: bool,
    /// Else: the API address (`ip:port`) of the agent to fetch it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Distribution, ImageRef};

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    /// `{}` and its digest.
    const EMPTY_JSON: &str = "e30=";
    const EMPTY_JSON_DIGEST: &str =
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn set() -> BlobSet {
        BlobSet {
            api: "10.0.0.1:8000".into(),
            manifest: EMPTY_JSON_DIGEST.into(),
            manifests: vec![ManifestDoc {
                digest: EMPTY_JSON_DIGEST.into(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                content: EMPTY_JSON.into(),
            }],
            blobs: vec![
                Blob {
                    digest: digest(2),
                    size: 10,
                    chunks: vec![],
                },
                Blob {
                    digest: digest(3),
                    size: 30,
                    chunks: vec![],
                },
            ],
            complete: false,
        }
    }

    fn chunk(n: u8, len: u64) -> Chunk {
        Chunk {
            info_hash: format!("{n:02x}").repeat(20),
            len,
        }
    }

    #[test]
    fn growth_is_chunks_appended_and_completion_never_taken_back() {
        let first = set();
        let mut second = first.clone();
        second.blobs[1].chunks.push(chunk(7, 16));
        assert!(second.extends(&first) && second.grows(&first));
        assert!(!first.extends(&second), "a chunk taken back");
        let mut done = second.clone();
        done.blobs[0].chunks.push(chunk(8, 10));
        done.blobs[1].chunks.push(chunk(9, 14));
        done.complete = true;
        assert!(done.grows(&second));
        assert!(done.check().is_ok(), "{:?}", done.check());
        assert_eq!(done.announced_len(), 40);
        let mut undone = done.clone();
        undone.complete = false;
        assert!(!undone.extends(&done));
        let mut swapped = done.clone();
        swapped.blobs[1].chunks[0] = chunk(5, 16);
        assert!(!swapped.extends(&second), "an earlier chunk changed");
        let mut other_blob = second.clone();
        other_blob.blobs[0].digest = digest(4);
        assert!(!other_blob.extends(&first));
    }

    #[test]
    fn bounds_and_formats_are_checked() {
        assert!(set().check().is_ok());
        let bad = |f: &dyn Fn(&mut BlobSet)| {
            let mut s = set();
            f(&mut s);
            s.check().unwrap_err()
        };
        bad(&|s| s.api = "not an address".into());
        bad(&|s| s.manifest = "sha256:XYZ".into());
        bad(&|s| s.manifests.clear());
        bad(&|s| s.manifest = digest(9));
        bad(&|s| s.blobs[0].digest = "../etc".into());
        bad(&|s| s.blobs[0].chunks.push(chunk(1, 11)));
        bad(&|s| s.blobs[0].chunks.push(chunk(1, 0)));
        bad(&|s| s.complete = true);
        bad(&|s| {
            s.blobs = (0..=MAX_BLOBS)
                .map(|i| Blob {
                    digest: digest(i as u8),
                    size: 1,
                    chunks: vec![],
                })
                .collect()
        });
        bad(&|s| s.blobs[0].size = 2 << 40);
        bad(&|s| s.blobs[0].chunks = vec![chunk(1, 1); MAX_CHUNKS + 1]);
        let e = bad(&|s| {
            s.manifests[0].content = "A".repeat(MAX_MANIFEST_BYTES + 1);
        });
        assert!(e.contains("manifests over"), "{e}");
        let e = bad(&|s| s.manifests[0].content = "e30K".into());
        assert!(e.contains("does not match its digest"), "{e}");
        bad(&|s| s.manifests[0].content = "%%%".into());
    }

    #[test]
    fn the_signature_covers_the_blobs() {
        let mut d = Distribution {
            image: ImageRef {
                registry: "r:5000".into(),
                repository: "a/b".into(),
                tag: Some("v2".into()),
                digest: None,
            },
            image_id: digest(2),
            id: "33".repeat(20),
            size_hint: 40,
            segments: vec![],
            sha256: None,
            seeders: vec![],
            created: 1,
            signature: None,
            blobs: Some(set()),
        };
        d.sign(b"k");
        assert!(d.verify(b"k"));
        let tamper: [&dyn Fn(&mut BlobSet); 5] = [
            &|s| s.api = "10.0.0.9:8000".into(),
            &|s| s.blobs[0].size = 11,
            &|s| s.blobs[1].chunks.push(chunk(1, 1)),
            &|s| s.manifests[0].media_type = "x".into(),
            &|s| s.complete = true,
        ];
        for f in tamper {
            let mut t = d.clone();
            f(t.blobs.as_mut().unwrap());
            assert!(!t.verify(b"k"));
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::distributor::blobs::chunks;
    use crate::image::{Distribution, ImageRef};

    /// The announcement of a complete 1 GiB image of four layers (36 chunk torrents), with a
    /// real-sized manifest and a signature: a few KiB, whatever the image's size, since piece
    /// hashes are fetched on demand.
    #[test]
    fn a_1_gib_image_is_announced_in_a_few_kib() {
        use base64::Engine;
        let digest = |n: usize| format!("sha256:{n:064x}");
        let sizes = [1u64 << 30 >> 2; 4];
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(0), "size": 1500},
            "layers": sizes.iter().enumerate().map(|(i, s)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest(i + 1), "size": s,
            })).collect::<Vec<_>>(),
        })
        .to_string();
        let mut blobs = vec![Blob {
            digest: digest(0),
            size: 1500,
            chunks: vec![Chunk {
                info_hash: "ab".repeat(20),
                len: 1500,
            }],
        }];
        for (i, size) in sizes.iter().enumerate() {
            blobs.push(Blob {
                digest: digest(i + 1),
                size: *size,
                chunks: chunks::ranges(*size)
                    .into_iter()
                    .map(|(_, len)| Chunk {
                        info_hash: "cd".repeat(20),
                        len,
                    })
                    .collect(),
            });
        }
        let mut d = Distribution {
            image: ImageRef {
                registry: "registry.example.com:5000".into(),
                repository: "team/app".into(),
                tag: Some("v1".into()),
                digest: Some(digest(9)),
            },
            image_id: digest(0),
            id: "ee".repeat(20),
            size_hint: 1 << 30,
            segments: vec![],
            sha256: None,
            seeders: vec!["10.0.0.1:6000".into()],
            created: 1_800_000_000,
            signature: None,
            blobs: Some(BlobSet {
                api: "10.0.0.1:8000".into(),
                manifest: digest(9),
                manifests: vec![ManifestDoc {
                    digest: digest(9),
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    content: base64::engine::general_purpose::STANDARD.encode(&manifest),
                }],
                blobs,
                complete: true,
            }),
        };
        d.sign(b"cluster secret");
        let json = serde_json::to_vec(&d).unwrap();
        let chunk_count: usize = d
            .blobs
            .as_ref()
            .unwrap()
            .blobs
            .iter()
            .map(|b| b.chunks.len())
            .sum();
        assert_eq!(
            chunk_count, 37,
            "nine chunks per 256 MiB layer, one for the config"
        );
        assert!(json.len() < 6 << 10, "{} bytes", json.len());
    }
}
