//! A blob handed to the runtime while it arrives: the endpoint reads it in order from the
//! file it is landing in, as far as the fetch has put verified bytes there, so the runtime's
//! ingest overlaps the transfer instead of following it.
//!
//! What counts as in place ([`Progress::ready`]): on the node reading the upstream, the
//! bytes written so far (chunk by chunk); on a node fetching over the swarm, the chunks
//! from the start that passed their piece checks. The last byte is held back until the
//! store committed the blob (length and SHA-256): a blob that fails that check ends the
//! response short, never complete and wrong.
//!
//! A fetch that falls back (its source went away, so it reads the upstream itself) starts
//! a new file: [`Progress::generation`] changes, and readers reopen it and wait until it
//! is past their offset again.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::store::{Digest, Store};

/// A reader waiting this long with no news of the fetch gives up (the fetch's own
/// timeouts, 60 s without progress, end it first).
const READ_IDLE: Duration = Duration::from_secs(180);

/// How far one node's fetch of a blob is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// The file the blob is landing in, once there is one.
    pub file: Option<PathBuf>,
    /// Changes whenever `file` is started again from nothing.
    pub generation: u32,
    /// Bytes from the start of `file` in place (see the module docs).
    pub ready: u64,
    /// The end of the fetch: `Ok` once the blob is committed to the store.
    pub done: Option<Result<(), String>>,
}

impl Progress {
    /// A new file, nothing in it yet.
    pub fn restart(&mut self, file: PathBuf) {
        self.file = Some(file);
        self.generation += 1;
        self.ready = 0;
    }
}

/// The endpoint's reader of a blob still arriving.
pub(crate) struct ArrivingBlob {
    digest: Digest,
    size: u64,
    store: Arc<Store>,
    progress: watch::Receiver<Progress>,
    /// The file last read, and the generation it belongs to (`None`: the committed blob).
    open: Mutex<Option<(Option<u32>, Arc<std::fs::File>)>>,
}

impl ArrivingBlob {
    pub fn new(
        digest: Digest,
        size: u64,
        store: Arc<Store>,
        progress: watch::Receiver<Progress>,
    ) -> Self {
        ArrivingBlob {
            digest,
            size,
            store,
            progress,
            open: Mutex::new(None),
        }
    }

    /// The file of `generation` (`None`: the committed blob), opened once.
    fn file(
        &self,
        generation: Option<u32>,
        path: Option<&PathBuf>,
    ) -> io::Result<Arc<std::fs::File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, file)) = open.as_ref() {
            if *g == generation {
                return Ok(Arc::clone(file));
            }
        }
        let file = match (generation, path) {
            (Some(_), Some(path)) => std::fs::File::open(path)?,
            _ => {
                self.store
                    .open_blob(&self.digest)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("blob {} left the store", self.digest),
                        )
                    })?
                    .0
            }
        };
        let file = Arc::new(file);
        *open = Some((generation, Arc::clone(&file)));
        Ok(file)
    }

    async fn read(&self, offset: u64, max: usize) -> io::Result<Bytes> {
        let mut progress = self.progress.clone();
        let mut fetch_ended = false;
        loop {
            let now = progress.borrow_and_update().clone();
            let (generation, limit) = match &now.done {
                Some(Ok(())) => (None, self.size),
                Some(Err(e)) => return Err(io::Error::other(e.clone())),
                // The last byte waits for the store's SHA-256 check.
                None => (
                    Some(now.generation),
                    now.ready.min(self.size.saturating_sub(1)),
                ),
            };
            if offset < limit {
                let want = usize::try_from(limit - offset).map_or(max, |n| n.min(max));
                let read = match self.file(generation, now.file.as_ref()) {
                    Ok(file) => tokio::task::spawn_blocking(move || {
                        crate::endpoint::read_chunk(&file, offset, want)
                    })
                    .await
                    .map_err(io::Error::other)?,
                    Err(e) => Err(e),
                };
                match read {
                    Ok(bytes) => return Ok(bytes),
                    Err(e) if generation.is_none() => return Err(e),
                    // Replaced or committed meanwhile: the news is on its way.
                    Err(e) => tracing::debug!(digest = %self.digest, "arriving blob: {e}; waiting"),
                }
            }
            if fetch_ended {
                return Err(io::Error::other(format!(
                    "blob {}: its fetch ended before byte {offset}",
                    self.digest
                )));
            }
            match tokio::time::timeout(READ_IDLE, progress.changed()).await {
                Ok(Ok(())) => {}
                // The fetch is over: its last word, if any, is in the channel.
                Ok(Err(_)) => fetch_ended = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("blob {}: no progress for {READ_IDLE:?}", self.digest),
                    ))
                }
            }
        }
    }
}

impl crate::endpoint::Arriving for ArrivingBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, max: usize) -> crate::endpoint::ReadAt<'_> {
        Box::pin(self.read(offset, max))
    }
}
