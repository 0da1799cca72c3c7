//! A generated container image in `docker save` format, standing in for a registry and
//! `docker pull`/`docker save` where no Docker runs (demos, agent flow tests).

use std::path::PathBuf;

use futures::future::BoxFuture;
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::source::{ImageSource, PulledImage, SourceError, Tarball};
use sha2::Digest;

use crate::random_payload;

/// Stands in for the registry + `docker pull`/`docker save`: a `docker save` tarball built
/// once from random layers.
pub struct GeneratedImage {
    /// The tarball.
    pub path: PathBuf,
    /// Its image id (`sha256:` of the config).
    pub image_id: String,
    /// The tag it carries.
    pub reference: String,
}

impl GeneratedImage {
    /// Writes a 4-layer image of about `size` random bytes to `dir/generated.tar`, tagged `reference`.
    pub fn build(dir: &std::path::Path, reference: &str, size: usize) -> std::io::Result<Self> {
        let path = dir.join("generated.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for i in 0..4 {
            let mut layer = tar::Builder::new(Vec::new());
            let content = random_payload(size / 4, 100 + i);
            append(&mut layer, &format!("data/layer{i}.bin"), &content)?;
            let layer = layer.into_inner()?;
            let digest = hex(&sha2::Sha256::digest(&layer));
            append(&mut tar, &format!("{digest}/layer.tar"), &layer)?;
            layers.push(format!("{digest}/layer.tar"));
            diff_ids.push(format!("sha256:{digest}"));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string();
        let config_digest = hex(&sha2::Sha256::digest(config.as_bytes()));
        append(
            &mut tar,
            &format!("{config_digest}.json"),
            config.as_bytes(),
        )?;
        let manifest = serde_json::json!([{
            "Config": format!("{config_digest}.json"),
            "RepoTags": [reference],
            "Layers": layers,
        }])
        .to_string();
        append(&mut tar, "manifest.json", manifest.as_bytes())?;
        tar.into_inner()?;
        Ok(Self {
            path,
            image_id: format!("sha256:{config_digest}"),
            reference: reference.to_owned(),
        })
    }
}

fn append<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageSource for GeneratedImage {
    fn pull<'a>(&'a self, _image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            let size_hint = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
            Ok(PulledImage {
                image_id: self.image_id.clone(),
                reference: self.reference.clone(),
                size_hint,
                archive: None,
            })
        })
    }

    fn export<'a>(
        &'a self,
        _image: &'a PulledImage,
    ) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move {
            let file = tokio::fs::File::open(&self.path)
                .await
                .map_err(|e| SourceError {
                    message: e.to_string(),
                    retryable: false,
                })?;
            Ok(Box::pin(file) as Tarball)
        })
    }
}
