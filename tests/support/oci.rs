//! OCI images made by hand and pushed over the registry API (no Docker): multi-platform
//! indexes, images sharing layers. For the registry-native path's tests.

use std::net::SocketAddr;

use sha2::Digest as _;

use crate::http;

/// A blob: its bytes and `sha256:` digest.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(&bytes)));
        Blob { digest, bytes }
    }

    /// An uncompressed layer: a tar holding one file `name` of `len` random bytes.
    pub fn layer(name: &str, len: usize, seed: u64) -> Self {
        let mut tar = tar::Builder::new(Vec::new());
        let data = crate::random_payload(len, seed);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_slice())
            .expect("tar in memory");
        Blob::new(tar.into_inner().expect("tar in memory"))
    }
}

/// One platform's image: config and layers.
#[derive(Debug, Clone)]
pub struct Image {
    /// The config blob.
    pub config: Blob,
    /// The layers, bottom first.
    pub layers: Vec<Blob>,
    /// The manifest (OCI image manifest) bytes.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub digest: String,
}

/// OCI media types.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

impl Image {
    /// An image for `os/arch[/variant]` made of `layers` (uncompressed tars).
    pub fn new(os: &str, arch: &str, variant: Option<&str>, layers: Vec<Blob>) -> Self {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let mut config = serde_json::json!({
            "architecture": arch, "os": os,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        });
        if let Some(v) = variant {
            config["variant"] = v.into();
        }
        let config = Blob::new(config.to_string().into_bytes());
        let descriptor = |mt: &str, b: &Blob| serde_json::json!({"mediaType": mt, "digest": b.digest, "size": b.bytes.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        let digest = Blob::new(manifest.clone()).digest;
        Image {
            config,
            layers,
            manifest,
            digest,
        }
    }

    /// The config and the layers.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }
}

/// An index of `images` with their platforms; returns its bytes and digest.
pub fn index(images: &[(&Image, &str, &str, Option<&str>)]) -> (Vec<u8>, String) {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(image, os, arch, variant)| {
            let mut platform = serde_json::json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                platform["variant"] = (*v).into();
            }
            serde_json::json!({
                "mediaType": OCI_MANIFEST, "digest": image.digest,
                "size": image.manifest.len(), "platform": platform,
            })
        })
        .collect();
    let bytes = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    })
    .to_string()
    .into_bytes();
    let digest = Blob::new(bytes.clone()).digest;
    (bytes, digest)
}

/// Pushes `blob` into `repository` at `registry`: an upload session, then its one PUT.
pub async fn push_blob(registry: SocketAddr, repository: &str, blob: &Blob) -> std::io::Result<()> {
    let fail = |what: &str, reply: &http::Reply| {
        std::io::Error::other(format!(
            "pushing {}: {what}: HTTP {} {}",
            blob.digest,
            reply.status,
            reply.text()
        ))
    };
    let path = format!("/v2/{repository}/blobs/uploads/");
    let reply = http::request(registry, "POST", &path, &[], b"").await?;
    let location = match (reply.status, reply.header("location")) {
        (202, Some(l)) => l.to_owned(),
        _ => return Err(fail("starting the upload", &reply)),
    };
    // The location may be absolute (http://host/v2/...) or a path.
    let path = match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => return Err(fail("upload location", &reply)),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{sep}digest={}", blob.digest);
    let reply = http::request(
        registry,
        "PUT",
        &path,
        &[("Content-Type", "application/octet-stream")],
        &blob.bytes,
    )
    .await?;
    if reply.status != 201 {
        return Err(fail("uploading", &reply));
    }
    Ok(())
}

/// Pushes a manifest or index as `reference` (a tag or its digest).
pub async fn push_manifest(
    registry: SocketAddr,
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let path = format!("/v2/{repository}/manifests/{reference}");
    let reply = http::request(
        registry,
        "PUT",
        &path,
        &[("Content-Type", media_type)],
        bytes,
    )
    .await?;
    if reply.status != 201 {
        return Err(std::io::Error::other(format!(
            "pushing manifest {reference}: HTTP {} {}",
            reply.status,
            reply.text()
        )));
    }
    Ok(())
}

/// Pushes every blob and the manifest of `image` (by digest, so an index can name it).
pub async fn push_image(
    registry: SocketAddr,
    repository: &str,
    image: &Image,
) -> std::io::Result<()> {
    for blob in image.blobs() {
        push_blob(registry, repository, blob).await?;
    }
    push_manifest(
        registry,
        repository,
        &image.digest,
        OCI_MANIFEST,
        &image.manifest,
    )
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
