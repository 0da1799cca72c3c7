//! A blob's chunks and their torrents: a pure function of the blob's bytes, so every node
//! that holds a blob computes the same info-hashes.
//!
//! Rule: the piece length is `piece_length_for(size)` and the chunk length a quarter of a
//! small blob (at least 2 MiB) or an eighth of a large one (16-256 MiB), whole pieces
//! ([`geometry`]); a large blob's first chunk is cut after [`FIRST_CHUNK`] ([`ranges`]).
//! Chunk `i` is the torrent named `<hex>.<i>` over the `i`-th range. The announce URL is
//! outside the info dictionary, so it does not change the info-hash.

use std::path::PathBuf;

use imagewolf_bt::metainfo::{piece_length_for, Metainfo, TorrentBuilder};

use crate::store::Digest;

/// Blobs up to this size (small layers: the everyday update) are cut into quarters of at
/// least [`MIN_CHUNK`]: a chunk spreads only once the origin has read all of it, so smaller
/// chunks start the swarm sooner (measured: an 8 MiB update reached 8 nodes in 2.23 s with
/// 2 MiB chunks, 2.56 s as one chunk).
pub(crate) const SMALL_BLOB: u64 = 16 << 20;
/// Smallest chunk of a small blob.
pub(crate) const MIN_CHUNK: u64 = 2 << 20;
/// Larger blobs are cut into eighths of 16-256 MiB, the tarball path's segment sizes: each
/// chunk is a torrent with a connection to every peer, and chunks of 4 MiB for a 128 MiB
/// image of 32 MiB layers (32 torrents) took its first push from 17.1 to 18.4 s and the
/// agents' peak RSS from 37 to 77 MiB.
pub(crate) const MIN_LARGE_CHUNK: u64 = 16 << 20;
/// Largest chunk.
pub(crate) const MAX_CHUNK: u64 = 256 << 20;
/// A larger blob's first chunk is cut in two: its first 4 MiB, then the rest of it. A chunk
/// spreads only once its reader has all of it, and a registry shared by an image's layers
/// gives each read about 3 MB/s (100 Mbit/s, four layers): the cold-pull bench measured 5 s
/// before any other node received a byte of 16 MiB first chunks. This also hands the
/// runtime a blob's start sooner when it is read while it arrives (mirror mode).
pub(crate) const FIRST_CHUNK: u64 = 4 << 20;

/// Piece length and chunk length for a blob of `size` bytes (see [`SMALL_BLOB`] and
/// [`MIN_LARGE_CHUNK`]), whole pieces.
pub(crate) fn geometry(size: u64) -> (u32, u64) {
    let piece = piece_length_for(size);
    let chunk = if size <= SMALL_BLOB {
        (size / 4).max(MIN_CHUNK)
    } else {
        (size / 8).clamp(MIN_LARGE_CHUNK, MAX_CHUNK)
    };
    (piece, chunk.next_multiple_of(u64::from(piece)))
}

/// `(offset, len)` of each chunk of a blob of `size` bytes: every `chunk_len` bytes (see
/// [`geometry`]), the first chunk of a large blob cut after [`FIRST_CHUNK`].
pub(crate) fn ranges(size: u64) -> Vec<(u64, u64)> {
    let (piece, chunk) = geometry(size);
    let mut out = Vec::new();
    let mut offset = 0;
    let head = FIRST_CHUNK.next_multiple_of(u64::from(piece));
    if size > SMALL_BLOB && head < chunk.min(size) {
        out.push((0, head));
        offset = head;
    }
    while offset < size {
        let end = (offset / chunk + 1) * chunk;
        let len = end.min(size) - offset;
        out.push((offset, len));
        offset += len;
    }
    out
}

/// The torrent name of chunk `i` of blob `d`.
pub(crate) fn name(d: &Digest, i: usize) -> String {
    format!("{}.{i}", d.hex())
}

/// A builder for chunk `i` of a blob of `size` bytes, announcing to `trackers` (see
/// [`crate::distributor::placement`]).
pub(crate) fn builder(d: &Digest, i: usize, size: u64, trackers: &[String]) -> TorrentBuilder {
    let (piece, _) = geometry(size);
    TorrentBuilder::new(name(d, i))
        .trackers(trackers)
        .piece_length(piece)
        .created_by(None)
}

/// The chunks' torrents of a blob already on disk at `path` (hashed on the blocking pool).
pub(crate) async fn of_file(
    path: PathBuf,
    d: Digest,
    size: u64,
    trackers: Vec<String>,
) -> Result<Vec<Metainfo>, String> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file =
            std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        ranges(size)
            .into_iter()
            .enumerate()
            .map(|(i, (_, len))| {
                builder(&d, i, size, &trackers)
                    .build_from_reader((&mut reader).take(len), len, std::io::sink())
                    .map_err(|e| format!("hashing {}: {e}", path.display()))
                    .and_then(|m| {
                        if m.total_len() == len {
                            Ok(m)
                        } else {
                            Err(format!("{} is shorter than {size} bytes", path.display()))
                        }
                    })
            })
            .collect()
    })
    .await
    .map_err(|e| format!("hashing task: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_blob_in_whole_pieces() {
        for size in [1u64, 65_535, 8 << 20, (128 << 20) + 17, 3 << 30] {
            let (piece, chunk) = geometry(size);
            let r = ranges(size);
            assert_eq!(r.iter().map(|(_, l)| l).sum::<u64>(), size);
            assert!(r.iter().all(|(o, _)| o % u64::from(piece) == 0));
            assert!(r.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
            // Each chunk ends on a chunk boundary or the blob's end, but the cut first one.
            let head = FIRST_CHUNK.next_multiple_of(u64::from(piece));
            assert!(r
                .iter()
                .all(|&(o, l)| (o + l) % chunk == 0 || o + l == size || (o, l) == (0, head)));
            assert!(r.iter().all(|(_, l)| *l <= chunk));
        }
        let lens = |size: u64| {
            ranges(size)
                .iter()
                .map(|(_, l)| l >> 20)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            lens(128 << 20),
            [4, 12, 16, 16, 16, 16, 16, 16, 16],
            "128 MiB"
        );
        assert_eq!(
            lens(32 << 20),
            [4, 12, 16],
            "32 MiB: the first 16 MiB cut after 4"
        );
        assert_eq!(lens(8 << 20), [2, 2, 2, 2], "8 MiB: four 2 MiB chunks");
        assert_eq!(ranges(1 << 20).len(), 1);
    }

    #[tokio::test]
    async fn the_torrents_are_a_function_of_the_bytes() {
        let dir = std::env::temp_dir().join(format!("iw-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::write(&a, &data).unwrap();
        std::fs::write(&b, &data).unwrap();
        let one = of_file(
            a,
            d.clone(),
            data.len() as u64,
            vec!["http://x/announce".into()],
        )
        .await
        .unwrap();
        let two = of_file(
            b,
            d.clone(),
            data.len() as u64,
            vec!["http://y/announce".into(), "http://x/announce".into()],
        )
        .await
        .unwrap();
        let hashes = |v: &[Metainfo]| v.iter().map(Metainfo::info_hash).collect::<Vec<_>>();
        assert_eq!(
            hashes(&one),
            hashes(&two),
            "another node, another tracker: same info-hashes"
        );
        assert_eq!(one.len(), 3, "20 MiB: 4 MiB, 12 MiB and the rest");
        let mut other = data.clone();
        other[5] ^= 1;
        let c = dir.join("c");
        std::fs::write(&c, &other).unwrap();
        let three = of_file(c, d, data.len() as u64, vec!["http://x/announce".into()])
            .await
            .unwrap();
        assert_ne!(hashes(&one)[0], hashes(&three)[0]);
        assert_eq!(hashes(&one)[1..], hashes(&three)[1..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
