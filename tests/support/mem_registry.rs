//! A registry in this process, for demos and tests that must run with nothing but cargo: the
//! agent's own read-only registry endpoint (`imagewolf_agent::endpoint`) serving images made
//! with [`crate::oci`], blobs as files in a directory of its own. The agents read it over
//! the real registry API, as they would a distribution registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use imagewolf_agent::endpoint::{self, Content, EndpointConfig};
use tokio::sync::watch;

use crate::oci::{Blob, Image, OCI_MANIFEST};

#[derive(Default)]
struct State {
    manifests: HashMap<String, (Bytes, String)>,
    tags: HashMap<(String, String), String>,
    blobs: HashMap<String, (PathBuf, u64)>,
    blob_gets: usize,
    gets_by_digest: HashMap<String, usize>,
    blobs_down: bool,
    /// Blobs served slowly or wrongly ([`MemRegistry::hold_blob`], [`MemRegistry::corrupt_blob`]).
    gates: HashMap<String, Gate>,
}

/// How one blob is served instead of whole at once.
#[derive(Clone)]
struct Gate {
    /// Bytes sent before waiting for [`MemRegistry::release`]; the rest follows then.
    held_after: Option<u64>,
    /// The last byte is sent flipped (the body no longer matches the digest).
    corrupt: bool,
}

/// A gated blob, sent through the endpoint's arriving-blob path.
struct GatedBlob {
    bytes: Vec<u8>,
    gate: Gate,
    released: watch::Receiver<bool>,
}

impl endpoint::Arriving for GatedBlob {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, max: usize) -> endpoint::ReadAt<'_> {
        Box::pin(async move {
            let offset = offset as usize;
            if self
                .gate
                .held_after
                .is_some_and(|held| offset as u64 >= held)
            {
                let mut released = self.released.clone();
                released
                    .wait_for(|r| *r)
                    .await
                    .map_err(|_| std::io::Error::other("registry stopped"))?;
            }
            let end = match self.gate.held_after {
                Some(held) if (offset as u64) < held => (held as usize).min(offset + max),
                _ => offset + max,
            }
            .min(self.bytes.len());
            let mut chunk = self.bytes[offset..end].to_vec();
            if self.gate.corrupt && end == self.bytes.len() {
                if let Some(last) = chunk.last_mut() {
                    *last ^= 0xff;
                }
            }
            Ok(Bytes::from(chunk))
        })
    }
}

/// What the in-process registry serves.
struct Shelf {
    dir: PathBuf,
    state: Mutex<State>,
    released: watch::Sender<bool>,
}

impl Content for Shelf {
    fn manifest(&self, digest: &str) -> Option<(Bytes, String)> {
        self.state.lock().ok()?.manifests.get(digest).cloned()
    }

    fn resolve_tag(&self, _registry: Option<&str>, repository: &str, tag: &str) -> Option<String> {
        let state = self.state.lock().ok()?;
        state
            .tags
            .get(&(repository.to_owned(), tag.to_owned()))
            .cloned()
    }

    fn blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Option<(std::fs::File, u64)>> {
        Box::pin(async move {
            let (path, len) = {
                let mut state = self.state.lock().ok()?;
                state.blob_gets += 1;
                *state.gets_by_digest.entry(digest.to_owned()).or_default() += 1;
                if state.blobs_down || state.gates.contains_key(digest) {
                    return None;
                }
                state.blobs.get(digest).cloned()?
            };
            Some((std::fs::File::open(path).ok()?, len))
        })
    }

    /// Gated blobs only (everything else is a miss, as in any registry).
    fn fetch_blob<'a>(
        &'a self,
        _upstream: endpoint::Upstream<'a>,
        digest: &'a str,
    ) -> BoxFuture<'a, Option<endpoint::BlobSource>> {
        Box::pin(async move {
            let (path, gate) = {
                let state = self.state.lock().ok()?;
                if state.blobs_down {
                    return None;
                }
                let gate = state.gates.get(digest)?.clone();
                (state.blobs.get(digest)?.0.clone(), gate)
            };
            let blob = GatedBlob {
                bytes: std::fs::read(path).ok()?,
                gate,
                released: self.released.subscribe(),
            };
            Some(endpoint::BlobSource::Arriving(Arc::new(blob)))
        })
    }
}

/// A registry serving on a loopback port until dropped.
pub struct MemRegistry {
    addr: SocketAddr,
    shelf: Arc<Shelf>,
    _stop: watch::Sender<bool>,
}

impl MemRegistry {
    /// Starts one on a free loopback port, keeping blobs under `dir`.
    pub async fn start(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shelf = Arc::new(Shelf {
            dir,
            state: Mutex::default(),
            released: watch::Sender::new(false),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(endpoint::serve(
            listener,
            Arc::clone(&shelf) as Arc<dyn Content>,
            EndpointConfig::default(),
            stopped,
        ));
        Ok(MemRegistry {
            addr,
            shelf,
            _stop: stop,
        })
    }

    /// `127.0.0.1:PORT`, what image names start with.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Pushes `image` as `repository:tag`; returns its manifest digest.
    pub fn push(&self, repository: &str, tag: &str, image: &Image) -> std::io::Result<String> {
        for blob in image.blobs() {
            self.put_blob(blob)?;
        }
        let mut state = self.shelf.state.lock().map_err(|_| poisoned())?;
        state.manifests.insert(
            image.digest.clone(),
            (Bytes::from(image.manifest.clone()), OCI_MANIFEST.to_owned()),
        );
        state.tags.insert(
            (repository.to_owned(), tag.to_owned()),
            image.digest.clone(),
        );
        Ok(image.digest.clone())
    }

    /// Blob downloads served so far.
    pub fn blob_gets(&self) -> usize {
        self.shelf.state.lock().map_or(0, |s| s.blob_gets)
    }

    /// Requests (GET or HEAD) for blob `digest` so far.
    pub fn blob_gets_of(&self, digest: &str) -> usize {
        self.shelf
            .state
            .lock()
            .map_or(0, |s| s.gets_by_digest.get(digest).copied().unwrap_or(0))
    }

    /// From now on every blob is unknown here (`true`), as when a registry's storage is
    /// down, or served again (`false`). Manifests are still served.
    pub fn set_blobs_down(&self, down: bool) {
        if let Ok(mut s) = self.shelf.state.lock() {
            s.blobs_down = down;
        }
    }

    /// Blob `digest` is sent up to byte `after`, then nothing until [`MemRegistry::release`]
    /// (a slow registry, or a large layer still on its way).
    pub fn hold_blob(&self, digest: &str, after: u64) {
        self.gate(digest, |g| g.held_after = Some(after));
    }

    /// Every held blob is sent on to its end, now and from now on.
    pub fn release(&self) {
        self.shelf.released.send_replace(true);
    }

    /// Blob `digest` is sent with its last byte flipped: whole, and wrong.
    pub fn corrupt_blob(&self, digest: &str) {
        self.gate(digest, |g| g.corrupt = true);
    }

    fn gate(&self, digest: &str, change: impl FnOnce(&mut Gate)) {
        if let Ok(mut s) = self.shelf.state.lock() {
            let gate = s.gates.entry(digest.to_owned()).or_insert(Gate {
                held_after: None,
                corrupt: false,
            });
            change(gate);
        }
    }

    fn put_blob(&self, blob: &Blob) -> std::io::Result<()> {
        let path = self
            .shelf
            .dir
            .join(blob.digest.trim_start_matches("sha256:"));
        std::fs::write(&path, &blob.bytes)?;
        let mut state = self.shelf.state.lock().map_err(|_| poisoned())?;
        state
            .blobs
            .insert(blob.digest.clone(), (path, blob.bytes.len() as u64));
        Ok(())
    }
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("registry state poisoned")
}
