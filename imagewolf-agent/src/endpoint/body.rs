//! Blob bodies: an [`Arriving`] blob read in order, a stored file ([`StoredFile`]) or a
//! blob still landing. Either ends with an error, never with wrong bytes, when what was
//! promised cannot be read (hyper then cuts the connection, so the client sees a short
//! body).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::{Arriving, Body, EndpointStats, BLOB_CHUNK};

/// A committed blob's file: read with positioned reads on the blocking pool (an
/// [`Arriving`] blob that has all arrived).
pub(super) struct StoredFile {
    file: Arc<std::fs::File>,
    size: u64,
}

impl StoredFile {
    pub(super) fn new(file: std::fs::File, size: u64) -> Self {
        StoredFile {
            file: Arc::new(file),
            size,
        }
    }
}

impl Arriving for StoredFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, max: usize) -> super::ReadAt<'_> {
        let file = Arc::clone(&self.file);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read_chunk(&file, offset, max))
                .await
                .map_err(io::Error::other)?
        })
    }
}

/// Reads exactly `want` bytes of `file` at `offset` (fewer is an `UnexpectedEof` error).
pub(crate) fn read_chunk(file: &std::fs::File, offset: u64, want: usize) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; want];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob file ends before byte {}", offset + want as u64),
            )
        } else {
            e
        }
    })?;
    Ok(Bytes::from(buf))
}

/// `count` bytes of `blob` from `start`, [`BLOB_CHUNK`] at most at a time, each read
/// waiting until its bytes are in place (at once for a [`StoredFile`]).
pub(super) fn blob_body(
    blob: Arc<dyn Arriving>,
    start: u64,
    count: u64,
    stats: Arc<EndpointStats>,
) -> Body {
    struct State {
        blob: Arc<dyn Arriving>,
        offset: u64,
        remaining: u64,
        stats: Arc<EndpointStats>,
    }
    let state = State {
        blob,
        offset: start,
        remaining: count,
        stats,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.remaining == 0 {
            return None;
        }
        let want = usize::try_from(st.remaining.min(BLOB_CHUNK as u64)).unwrap_or(BLOB_CHUNK);
        match st.blob.read_at(st.offset, want).await {
            Ok(chunk) if !chunk.is_empty() && chunk.len() <= want => {
                st.offset += chunk.len() as u64;
                st.remaining -= chunk.len() as u64;
                EndpointStats::add(&st.stats.bytes_served, chunk.len() as u64);
                Some((Ok(Frame::data(chunk)), st))
            }
            Ok(chunk) => {
                st.remaining = 0;
                let e = io::Error::other(format!(
                    "an arriving blob returned {} bytes for a read of {want}",
                    chunk.len()
                ));
                Some((Err(e), st))
            }
            Err(e) => {
                st.remaining = 0;
                Some((Err(e), st))
            }
        }
    });
    StreamBody::new(stream).boxed()
}
