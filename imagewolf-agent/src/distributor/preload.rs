//! Loading an image's layers one by one while later ones are still downloading.
//!
//! Why: dockerd unpacks layers (gunzip, untar, diff-id check) only after it has staged the
//! whole archive, so with one load the node does all of that work after the last byte
//! arrives (measured: 6-7 s of a 33 s end-to-end run on the bench). A `docker load` of an
//! archive whose config lists only the first k layers registers layer k (dockerd skips the
//! layers it has, without opening their files), so each layer but the last is applied as
//! soon as it is verified, and the final load of the real archive has only the last layer
//! left to apply.
//!
//! How: the archive's tar headers are walked over the verified prefix. The layout this
//! needs is the one the registry source writes: the config first, then each layer in the
//! config's order. Anything else (a `docker save` tarball, a layer listed twice) stops the
//! walk and the final load does all the work, as before. A failed partial load stops it too.
//! The real load then skips the entries of the layers loaded ahead (the feed leaves them out
//! of the stream, `Readable::skip`), so dockerd stages only what it has yet to apply; the
//! feed passes no byte the walk has not decided on yet (`Readable::decided`). The partial
//! images (untagged, named by their configs) are removed after the real load.
//! Nothing here is on the path of correctness: every byte comes from verified segments, and
//! dockerd checks each layer against the diff id in the config.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::feed::Readable;
use super::Distributor;
use crate::registry::archive::{header, padded};
use crate::tarball::hex;

/// Largest config read from the archive.
const MAX_CONFIG: u64 = 8 << 20;
/// Read size when streaming a layer into a partial archive.
const CHUNK: u64 = 128 << 10;

/// What the walk has found so far.
#[derive(Default)]
struct Walk {
    /// Offset of the next tar header.
    at: u64,
    /// The image config, once read (the first entry).
    config: Option<Value>,
    /// Layer files met so far, in order.
    layers: Vec<String>,
    /// Names met, to stop at a repeated layer.
    seen: HashSet<String>,
    /// The announced image id: the config must hash to it before any layer is loaded.
    image_id: String,
}

/// What to do with an entry.
enum Step {
    /// Go on to the next header.
    Next,
    /// Load layer `k` (its data is at `offset`, `len` bytes) ahead.
    Layer { k: usize, offset: u64, len: u64 },
    /// Stop walking: the layout is not the expected one, or every layer but the last is done.
    Stop,
}

impl Distributor {
    /// Loads the layers of the archive at `path` ahead of the real load, as `readable`
    /// shows them verified; returns the ids of the partial images it made (remove them after
    /// the real load). Returns once nothing more can be loaded ahead.
    pub(super) async fn preload_layers(
        &self,
        key: &str,
        path: &Path,
        image_id: &str,
        readable_tx: &watch::Sender<Readable>,
    ) -> Vec<String> {
        let mut made = Vec::new();
        if self.loader.loads_layers_ahead() {
            self.walk_and_preload(key, path, image_id, readable_tx, &mut made)
                .await;
        }
        // Whatever stopped the walk, the real load now takes the rest as it is.
        readable_tx.send_modify(|r| r.decided = u64::MAX);
        made
    }

    async fn walk_and_preload(
        &self,
        key: &str,
        path: &Path,
        image_id: &str,
        readable_tx: &watch::Sender<Readable>,
        made: &mut Vec<String>,
    ) {
        let mut readable = readable_tx.subscribe();
        let mut walk = Walk {
            image_id: image_id.to_owned(),
            ..Walk::default()
        };
        loop {
            let now = readable.borrow_and_update().clone();
            if now.failed.is_some() {
                return;
            }
            loop {
                let entry = walk.at;
                match walk.step(path, now.upto).await {
                    Ok(None) => break,
                    Ok(Some(Step::Next)) => {
                        readable_tx.send_modify(|r| r.decided = walk.at);
                    }
                    Ok(Some(Step::Stop)) => return,
                    Ok(Some(Step::Layer { k, offset, len })) => {
                        match self.load_ahead(&walk, k, path, offset, len).await {
                            Ok(id) => {
                                made.push(id);
                                self.update(key, |r| r.stats.layers_loaded_ahead += 1);
                                // The real load needs neither the layer's header nor its data.
                                readable_tx.send_modify(|r| {
                                    r.skip.push((entry, walk.at));
                                    r.decided = walk.at;
                                });
                            }
                            Err(e) => {
                                tracing::warn!(
                                    key,
                                    layer = k,
                                    "loading a layer ahead failed; the whole load will do it: {e}"
                                );
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(key, "not loading layers ahead: {e}");
                        return;
                    }
                }
            }
            if now.hashed.is_some() || readable.changed().await.is_err() {
                return;
            }
        }
    }

    /// Loads an archive of the config cut to layers `0..=k` and layer `k`'s file.
    async fn load_ahead(
        &self,
        walk: &Walk,
        k: usize,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<String, String> {
        let config = walk.config.as_ref().ok_or("no config")?;
        let cut = config_with_layers(config, k + 1)?;
        let id = format!("sha256:{}", hex(&Sha256::digest(&cut)));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": "config.json",
            "RepoTags": null,
            "Layers": walk.layers[..=k],
        }]))
        .map_err(|e| e.to_string())?;
        let mut parts = vec![
            Part::Bytes(entry_header("config.json", cut.len() as u64)?),
            Part::Bytes(Bytes::from(cut.clone())),
            Part::Bytes(pad(cut.len() as u64)),
            Part::Bytes(entry_header(&walk.layers[k], len)?),
        ];
        // The layer, read a chunk at a time as dockerd takes it.
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(CHUNK);
            parts.push(Part::File {
                path: path.to_owned(),
                offset: at,
                len: n as usize,
            });
            at += n;
        }
        parts.extend([
            Part::Bytes(pad(len)),
            Part::Bytes(entry_header("manifest.json", manifest.len() as u64)?),
            Part::Bytes(Bytes::from(manifest.clone())),
            Part::Bytes(pad(manifest.len() as u64)),
            Part::Bytes(Bytes::from(vec![0u8; 1024])),
        ]);
        let stream = futures::stream::iter(parts).then(read_part);
        let tarball = Box::pin(tokio_util::io::StreamReader::new(stream));
        self.loader
            .load_streamed(tarball, path)
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(layer = k, %id, "loaded a layer ahead");
        Ok(id)
    }

    /// Removes the partial images `preload_layers` made (the real image keeps their layers).
    pub(super) async fn forget_preloaded(&self, ids: Vec<String>) {
        for id in ids {
            if let Err(e) = self.loader.remove_image(&id).await {
                tracing::warn!(%id, "removing a partial image made to load layers ahead: {e}");
            }
        }
    }
}

impl Walk {
    /// Looks at the entry at `self.at` if it is verified (`upto`); `None` to wait for more.
    async fn step(&mut self, path: &Path, upto: u64) -> Result<Option<Step>, String> {
        if self.at + 512 > upto {
            return Ok(None);
        }
        let block = read_at(path, self.at, 512).await?;
        if block.iter().all(|b| *b == 0) {
            return Ok(Some(Step::Stop));
        }
        let h = tar::Header::from_byte_slice(&block);
        let name = h
            .path()
            .map_err(|e| format!("tar header: {e}"))?
            .to_string_lossy()
            .into_owned();
        let size = h.size().map_err(|e| format!("tar header: {e}"))?;
        let data = self.at + 512;
        if data.saturating_add(size) > upto {
            return Ok(None);
        }
        let step = if self.config.is_none() {
            if name.contains('/') || !name.ends_with(".json") || size > MAX_CONFIG {
                return Err(format!("the archive does not start with a config ({name})"));
            }
            let bytes = read_at(path, data, size as usize).await?;
            if format!("sha256:{}", hex(&Sha256::digest(&bytes))) != self.image_id {
                return Err(format!(
                    "the archive's config is not the announced image {}",
                    self.image_id
                ));
            }
            let config: Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("config: {e}"))?;
            self.config = Some(config);
            Step::Next
        } else if h.entry_type().is_dir() {
            Step::Next
        } else if name.ends_with("/layer.tar") && self.seen.insert(name.clone()) {
            let k = self.layers.len();
            self.layers.push(name);
            let total = self
                .config
                .as_ref()
                .and_then(|c| c["rootfs"]["diff_ids"].as_array())
                .map_or(0, Vec::len);
            if k + 1 < total {
                Step::Layer {
                    k,
                    offset: data,
                    len: size,
                }
            } else {
                Step::Stop
            }
        } else {
            Step::Stop
        };
        self.at = data + padded(size);
        Ok(Some(step))
    }
}

/// `config` with its layers cut to the first `n` (and its history to the entries that
/// made them), serialised.
fn config_with_layers(config: &Value, n: usize) -> Result<Vec<u8>, String> {
    let mut cut = config.clone();
    let diff_ids = cut["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or("config without rootfs.diff_ids")?;
    if diff_ids.len() < n {
        return Err("config lists fewer layers".into());
    }
    diff_ids.truncate(n);
    if let Some(history) = cut["history"].as_array_mut() {
        let mut layers = 0;
        let keep = history
            .iter()
            .take_while(|h| {
                let made_layer = !h["empty_layer"].as_bool().unwrap_or(false);
                let take = !made_layer || layers < n;
                layers += usize::from(made_layer);
                take
            })
            .count();
        history.truncate(keep);
    }
    serde_json::to_vec(&cut).map_err(|e| e.to_string())
}

/// One piece of a partial archive.
enum Part {
    Bytes(Bytes),
    /// At most `CHUNK` bytes of the tarball file.
    File {
        path: PathBuf,
        offset: u64,
        len: usize,
    },
}

async fn read_part(part: Part) -> std::io::Result<Bytes> {
    match part {
        Part::Bytes(b) => Ok(b),
        Part::File { path, offset, len } => read_at(&path, offset, len)
            .await
            .map(Bytes::from)
            .map_err(std::io::Error::other),
    }
}

fn entry_header(name: &str, size: u64) -> Result<Bytes, String> {
    header(name, size, false).map_err(|e| format!("tar header for {name}: {e}"))
}

fn pad(len: u64) -> Bytes {
    Bytes::from(vec![0u8; (padded(len) - len) as usize])
}

async fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading the tarball: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_cut_to_their_first_layers_with_their_history() {
        let config = serde_json::json!({
            "architecture": "amd64",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:a", "sha256:b", "sha256:c"]},
            "history": [
                {"created_by": "base"},
                {"created_by": "ENV x=1", "empty_layer": true},
                {"created_by": "COPY b"},
                {"created_by": "COPY c"},
                {"created_by": "CMD", "empty_layer": true},
            ],
        });
        let cut: Value = serde_json::from_slice(&config_with_layers(&config, 2).unwrap()).unwrap();
        assert_eq!(
            cut["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:a", "sha256:b"])
        );
        let history: Vec<_> = cut["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["created_by"].as_str().unwrap())
            .collect();
        assert_eq!(history, ["base", "ENV x=1", "COPY b"]);
        assert!(config_with_layers(&config, 4).is_err());
        assert!(config_with_layers(&serde_json::json!({}), 1).is_err());
    }
}
