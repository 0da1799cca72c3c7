//! The tarball on disk: written once from the image source while the torrent's piece hashes
//! and the whole file's SHA-256 are computed in the same pass, and re-hashed (SHA-256) on
//! the receiving side before anything is loaded.

use std::path::Path;

use imagewolf_bt::metainfo::{Metainfo, TorrentBuilder};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Streams `tarball` into `path`, building the torrent and the SHA-256 in the same pass.
pub(crate) async fn export_to_torrent(
    tarball: crate::source::Tarball,
    path: &Path,
    size_hint: u64,
    announce: String,
) -> Result<(Metainfo, String), String> {
    let file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut sink = Sha256Writer {
        inner: tokio::io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let name = "image.tar";
    let meta = TorrentBuilder::new(name)
        .announce(announce)
        .build_from_async_reader(tarball, size_hint, &mut sink)
        .await
        .map_err(|e| format!("export: {e}"))?;
    sink.inner
        .flush()
        .await
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    let sha = sink.hasher.finalize();
    Ok((meta, sha.iter().map(|b| format!("{b:02x}")).collect()))
}

/// An `AsyncWrite` that hashes what passes through it.
struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Sha256Writer<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.hasher.update(&buf[..*n]);
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// SHA-256 of a file, read in 1 MiB chunks on the blocking pool.
pub(crate) async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
}
