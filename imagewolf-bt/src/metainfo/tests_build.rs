//! Tests of hashing and the torrent builder.

use std::io::{self, Read, Write};

use proptest::prelude::*;

use super::tests::{piece_hashes, pseudo_random};
use super::*;
use crate::LengthsError;

#[test]
fn piece_hash_outside_the_torrent_is_zero() {
    let m = TorrentBuilder::new("a")
        .piece_length(16)
        .build_from_reader(&[1u8; 20][..], 20, io::sink())
        .unwrap();
    let other = Lengths::new(1000, 16).unwrap();
    assert_eq!(m.piece_hash(other.piece(50).unwrap()), [0; 20]);
    assert_eq!(m.piece_hash(other.piece(1).unwrap()), sha1(&[1u8; 4]));
}

#[test]
fn auto_piece_length() {
    assert_eq!(piece_length_for(0), MIN_AUTO_PIECE_LEN);
    assert_eq!(piece_length_for(1), MIN_AUTO_PIECE_LEN);
    assert_eq!(piece_length_for(512 << 20), 256 << 10);
    assert_eq!(piece_length_for((512 << 20) + 1), 512 << 10);
    assert_eq!(piece_length_for(4 << 30), 2 << 20);
    assert_eq!(piece_length_for(1 << 40), MAX_AUTO_PIECE_LEN);
    for total in [1u64, 10 << 20, 300 << 20, 3 << 30, 17 << 30, 100 << 30] {
        let len = piece_length_for(total);
        assert!(len.is_power_of_two());
        assert!((MIN_AUTO_PIECE_LEN..=MAX_AUTO_PIECE_LEN).contains(&len));
        let pieces = total.div_ceil(len.into());
        assert!(
            pieces <= 2048 || len == MAX_AUTO_PIECE_LEN,
            "{total}: {pieces}"
        );
        assert!(
            pieces > 1024 || len == MIN_AUTO_PIECE_LEN,
            "{total}: {pieces}"
        );
    }
}

/// Hands out the data in irregular chunk sizes and counts every byte given out.
struct Choppy<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    calls: usize,
    handed_out: usize,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls % 7 == 3 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let want = self.sizes[self.calls % self.sizes.len()];
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.handed_out += n;
        Ok(n)
    }
}

#[test]
fn builder_is_a_single_pass_copy() {
    let data = pseudo_random(1_000_003, 3);
    let mut reader = Choppy {
        data: &data,
        sizes: vec![1, 4096, 300_000, 17, 65536, 999],
        calls: 0,
        handed_out: 0,
    };
    let mut sink = Vec::new();
    let m = TorrentBuilder::new("x")
        .build_from_reader(&mut reader, data.len() as u64, &mut sink)
        .unwrap();
    assert_eq!(
        reader.handed_out,
        data.len(),
        "every byte read exactly once"
    );
    assert_eq!(sink, data, "the sink got exactly the bytes read");
    assert_eq!(m.info().piece_length, MIN_AUTO_PIECE_LEN);
    assert_eq!(
        m.info().pieces,
        piece_hashes(&data, MIN_AUTO_PIECE_LEN as usize)
    );
    assert_eq!(m.total_len(), data.len() as u64);
}

#[test]
fn builder_errors() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    struct FullDisk;
    impl Write for FullDisk {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::StorageFull.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let b = TorrentBuilder::new("x");
    let e = b
        .clone()
        .build_from_reader(Failing, 0, io::sink())
        .unwrap_err();
    assert!(matches!(e, MetainfoError::Io(_)) && e.to_string().contains("disk on fire"));
    let e = b
        .clone()
        .build_from_reader(&[1u8; 9][..], 9, FullDisk)
        .unwrap_err();
    assert!(matches!(e, MetainfoError::Io(_)));
    let e = b
        .clone()
        .build_from_reader(&[][..], 0, io::sink())
        .unwrap_err();
    assert!(matches!(
        e,
        MetainfoError::Lengths(LengthsError::EmptyTorrent)
    ));
    // Bad arguments fail before anything is read.
    let e = TorrentBuilder::new("a/b").build_from_reader(Failing, 0, io::sink());
    assert!(matches!(e, Err(MetainfoError::BadPath { .. })));
    let e = b.piece_length(0).build_from_reader(Failing, 0, io::sink());
    assert!(matches!(e, Err(MetainfoError::Lengths(_))));
}

#[tokio::test]
async fn async_builder_matches_sync_builder() {
    let data = pseudo_random(300_000, 4);
    let builder = TorrentBuilder::new("img").piece_length(64 * 1024);
    let sync = builder
        .clone()
        .build_from_reader(&data[..], 0, io::sink())
        .unwrap();
    let (mut tx, rx) = tokio::io::duplex(1000);
    let feeder = {
        let data = data.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in data.chunks(7777) {
                tx.write_all(chunk).await.unwrap();
            }
        })
    };
    let mut sink = Vec::new();
    let m = builder
        .build_from_async_reader(rx, 0, &mut sink)
        .await
        .unwrap();
    feeder.await.unwrap();
    assert_eq!(sink, data);
    assert_eq!(m, sync);
}

#[test]
fn build_from_file_hashes_in_place() {
    let data = pseudo_random(700_000, 5);
    let path = std::env::temp_dir().join(format!("iw-metainfo-file-{}", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let from_file = TorrentBuilder::new("f").build_from_file(&path);
    std::fs::remove_file(&path).ok();
    let from_file = from_file.unwrap();
    let from_reader = TorrentBuilder::new("f")
        .build_from_reader(&data[..], data.len() as u64, io::sink())
        .unwrap();
    assert_eq!(from_file, from_reader);
    let missing = TorrentBuilder::new("f").build_from_file(std::path::Path::new("/nonexistent/x"));
    assert!(matches!(missing, Err(MetainfoError::Io(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn piece_hasher_is_chunking_independent(
        data in proptest::collection::vec(any::<u8>(), 0..5000),
        piece_len in 1u32..700,
        cuts in proptest::collection::vec(0usize..5000, 0..20),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut hasher = PieceHasher::new(piece_len);
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            hasher.update(&data[start..cut]);
            start = cut;
        }
        prop_assert_eq!(hasher.total(), data.len() as u64);
        let (pieces, total) = hasher.finish();
        prop_assert_eq!(total, data.len() as u64);
        prop_assert_eq!(pieces, piece_hashes(&data, piece_len as usize));
    }
}

#[test]
fn sha1_known_answer() {
    // FIPS 180 "abc" test vector.
    assert_eq!(
        sha1(b"abc"),
        [
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
        ]
    );
}
