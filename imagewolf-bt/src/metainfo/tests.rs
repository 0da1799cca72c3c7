use proptest::prelude::*;

use super::*;
use crate::LengthsError;

/// A bencode value for hand-made test inputs. Dict keys are written in the given order, so
/// tests can also make unsorted or duplicate keys.
#[derive(Clone)]
enum B {
    I(i128),
    Raw(String),
    S(Vec<u8>),
    L(Vec<B>),
    D(Vec<(&'static str, B)>),
}

fn s(v: impl AsRef<[u8]>) -> B {
    B::S(v.as_ref().to_vec())
}

impl B {
    fn enc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.put(&mut out);
        out
    }

    fn put(&self, out: &mut Vec<u8>) {
        match self {
            B::I(n) => out.extend_from_slice(format!("i{n}e").as_bytes()),
            B::Raw(r) => out.extend_from_slice(r.as_bytes()),
            B::S(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            B::L(items) => {
                out.push(b'l');
                items.iter().for_each(|i| i.put(out));
                out.push(b'e');
            }
            B::D(pairs) => {
                out.push(b'd');
                for (k, v) in pairs {
                    s(k).put(out);
                    v.put(out);
                }
                out.push(b'e');
            }
        }
    }
}

pub(super) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: deterministic, incompressible enough for hashing tests.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(super) fn piece_hashes(data: &[u8], piece_len: usize) -> Vec<[u8; 20]> {
    data.chunks(piece_len).map(sha1).collect()
}

/// A single-file info dict with the given length and piece length and correct hashes of
/// zeros, plus `extra` pairs (caller keeps keys sorted).
fn single_info(len: u64, piece_len: u32, extra: Vec<(&'static str, B)>) -> B {
    let data = vec![0u8; len as usize];
    let pieces: Vec<u8> = piece_hashes(&data, piece_len as usize).concat();
    let mut pairs = vec![
        ("length", B::I(len.into())),
        ("name", s("image.tar")),
        ("piece length", B::I(piece_len.into())),
        ("pieces", B::S(pieces)),
    ];
    pairs.extend(extra);
    pairs.sort_by_key(|(k, _)| *k);
    B::D(pairs)
}

fn multi_info(files: Vec<(Vec<&str>, u64)>, piece_len: u32) -> B {
    let total: u64 = files.iter().map(|(_, l)| l).sum();
    let pieces = piece_hashes(&vec![0u8; total as usize], piece_len as usize).concat();
    let files = files
        .into_iter()
        .map(|(path, len)| {
            B::D(vec![
                ("length", B::I(len.into())),
                ("path", B::L(path.into_iter().map(s).collect())),
            ])
        })
        .collect();
    B::D(vec![
        ("files", B::L(files)),
        ("name", s("dir")),
        ("piece length", B::I(piece_len.into())),
        ("pieces", B::S(pieces)),
    ])
}

fn torrent(info: B) -> Vec<u8> {
    B::D(vec![("announce", s("http://t/announce")), ("info", info)]).enc()
}

fn err(bytes: &[u8]) -> MetainfoError {
    match Metainfo::from_bytes(bytes) {
        Ok(m) => panic!("accepted hostile input: {m:?}"),
        Err(e) => e,
    }
}

/// Finds `needle` in `hay` (to locate the raw info dict in a hand-made file).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn built_torrent_round_trips() {
    let data = pseudo_random(100_000, 1);
    let mut copy = Vec::new();
    let built = TorrentBuilder::new("image.tar")
        .piece_length(32 * 1024)
        .announce("http://10.0.0.1:6969/announce")
        .announce_list(vec![vec!["http://a/".into(), "http://b/".into()], vec![]])
        .comment("hello")
        .creation_date(1_700_000_000)
        .private(true)
        .build_from_reader(&data[..], data.len() as u64, &mut copy)
        .unwrap();
    assert_eq!(copy, data);
    assert_eq!(built.info().pieces, piece_hashes(&data, 32 * 1024));
    assert_eq!(built.total_len(), 100_000);
    assert_eq!(built.lengths().num_pieces(), 4);
    assert!(built.info().private);

    let bytes = built.to_bytes();
    let parsed = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(parsed.info_hash(), built.info_hash());
    assert_eq!(parsed.info_bytes(), built.info_bytes());
    assert_eq!(parsed.info(), built.info());
    assert_eq!(
        parsed.announce.as_deref(),
        Some("http://10.0.0.1:6969/announce")
    );
    assert_eq!(parsed.announce_list.len(), 1, "empty tiers are dropped");
    assert_eq!(parsed.comment.as_deref(), Some("hello"));
    assert_eq!(parsed.creation_date, Some(1_700_000_000));
    assert_eq!(parsed.created_by, built.created_by);
    assert_eq!(parsed.to_bytes(), bytes, "writing is stable");
    assert_eq!(InfoHash(sha1(parsed.info_bytes())), parsed.info_hash());
    assert_eq!(
        parsed.announce_urls(),
        ["http://10.0.0.1:6969/announce", "http://a/", "http://b/"]
    );
    let last = parsed.lengths().piece(3).unwrap();
    assert!(verify_piece(
        &parsed.piece_hash(last),
        &data[3 * 32 * 1024..]
    ));
    assert!(!verify_piece(&parsed.piece_hash(last), &data[..10]));
}

#[test]
fn multi_file_layout_and_round_trip() {
    let files = vec![
        FileEntry {
            path: vec!["a.bin".into()],
            length: 40_000,
            padding: false,
        },
        FileEntry {
            path: vec!["sub".into(), "empty".into()],
            length: 0,
            padding: false,
        },
        FileEntry {
            path: vec![".pad".into(), "100".into()],
            length: 100,
            padding: true,
        },
        FileEntry {
            path: vec!["sub".into(), "b.bin".into()],
            length: 25_000,
            padding: false,
        },
    ];
    let data = pseudo_random(65_100, 2);
    let info = Info {
        name: "layers".into(),
        piece_length: 16384,
        pieces: piece_hashes(&data, 16384),
        files: FileLayout::Multi { files },
        private: false,
    };
    let m = Metainfo::from_info(info.clone(), None).unwrap();
    assert_eq!(m.total_len(), 65_100);
    let spans = m.files();
    let expect = [
        ("layers/a.bin", 0, 40_000, false),
        ("layers/sub/empty", 40_000, 0, false),
        ("layers/.pad/100", 40_000, 100, true),
        ("layers/sub/b.bin", 40_100, 25_000, false),
    ];
    assert_eq!(spans.len(), expect.len());
    for (span, (path, offset, len, pad)) in spans.iter().zip(expect) {
        assert_eq!(span.path, std::path::Path::new(path));
        assert_eq!((span.offset, span.len, span.padding), (offset, len, pad));
    }
    let parsed = Metainfo::from_bytes(&m.to_bytes()).unwrap();
    assert_eq!(parsed.info(), &info);
    assert_eq!(parsed.info_hash(), m.info_hash());
    assert!(parsed.announce_urls().is_empty());
}

#[test]
fn unknown_keys_are_kept_and_hashed_as_found() {
    let info = single_info(
        20_000,
        16384,
        vec![("x-custom", B::D(vec![("deep", B::L(vec![B::I(7)]))]))],
    );
    let raw_info = info.enc();
    let bytes = B::D(vec![
        ("announce", s("http://t/a")),
        ("info", info),
        ("url-list", B::L(vec![s("http://seed/")])),
    ])
    .enc();
    let m = Metainfo::from_bytes(&bytes).unwrap();
    // The hash is of the bytes as found, unknown key included...
    assert_eq!(m.info_bytes(), &raw_info[..]);
    assert_eq!(m.info_hash(), InfoHash(sha1(&raw_info)));
    // ...which re-encoding our model would lose.
    let reencoded = Metainfo::from_info(m.info().clone(), None).unwrap();
    assert_ne!(reencoded.info_hash(), m.info_hash());
    // Writing keeps both the unknown info key and the unknown root key.
    let written = m.to_bytes();
    assert_eq!(written, bytes);
    assert_eq!(
        Metainfo::from_bytes(&written).unwrap().info_hash(),
        m.info_hash()
    );
}

#[test]
fn hand_made_info_hash_matches_raw_slice() {
    let bytes = torrent(single_info(5, 16384, vec![]));
    let m = Metainfo::from_bytes(&bytes).unwrap();
    let start = find(&bytes, b"4:info").unwrap() + 6;
    let raw = &bytes[start..bytes.len() - 1];
    assert_eq!(m.info_bytes(), raw);
    assert_eq!(m.info_hash(), InfoHash(sha1(raw)));
    assert_eq!(m.info().name, "image.tar");
    assert_eq!(m.files()[0].path, std::path::Path::new("image.tar"));
}

#[test]
fn outside_info_malformed_values_are_kept_not_fatal() {
    let bytes = B::D(vec![
        ("announce", B::I(5)),
        (
            "announce-list",
            B::L(vec![B::L(vec![s("http://a/")]), B::I(1)]),
        ),
        ("comment", s(b"\xff\xfe")),
        ("creation date", B::Raw("i99999999999999999999999e".into())),
        ("info", single_info(5, 16384, vec![])),
    ])
    .enc();
    let mut m = Metainfo::from_bytes(&bytes).unwrap();
    assert_eq!(m.announce, None);
    assert!(m.announce_list.is_empty());
    assert_eq!(m.comment, None);
    assert_eq!(m.creation_date, None);
    assert_eq!(
        m.to_bytes(),
        bytes,
        "malformed values are written back verbatim"
    );
    // Setting a field replaces the malformed value instead of duplicating the key.
    m.announce = Some("http://new/".into());
    let again = Metainfo::from_bytes(&m.to_bytes()).unwrap();
    assert_eq!(again.announce.as_deref(), Some("http://new/"));
}

#[test]
fn huge_tracker_lists_and_key_floods_stay_bounded() {
    let urls = |n: usize| B::L((0..n).map(|i| B::L(vec![s(format!("u{i}"))])).collect());
    let with_list = |n| {
        B::D(vec![
            ("announce-list", urls(n)),
            ("info", single_info(5, 16384, vec![])),
        ])
        .enc()
    };
    let m = Metainfo::from_bytes(&with_list(MAX_TRACKERS)).unwrap();
    assert_eq!(m.announce_urls().len(), MAX_TRACKERS);
    let bytes = with_list(MAX_TRACKERS + 1);
    let m = Metainfo::from_bytes(&bytes).unwrap();
    assert!(m.announce_list.is_empty());
    assert_eq!(m.to_bytes(), bytes, "an over-long list is kept verbatim");

    // Thousands of unknown root keys: only the first MAX_EXTRA_ROOT_KEYS are kept.
    let keys: Vec<String> = (0..3000).map(|i| format!("z{i:05}")).collect();
    let mut out = b"d".to_vec();
    out.extend(s("info").enc());
    out.extend(single_info(5, 16384, vec![]).enc());
    for key in &keys {
        out.extend(s(key).enc());
        out.extend(B::I(1).enc());
    }
    out.push(b'e');
    let m = Metainfo::from_bytes(&out).unwrap();
    let written = m.to_bytes();
    assert!(find(
        &written,
        format!("z{:05}", MAX_EXTRA_ROOT_KEYS - 1).as_bytes()
    )
    .is_some());
    assert!(find(&written, format!("z{MAX_EXTRA_ROOT_KEYS:05}").as_bytes()).is_none());
    assert_eq!(
        Metainfo::from_bytes(&written).unwrap().info_hash(),
        m.info_hash()
    );
}

#[test]
fn path_component_total_is_capped() {
    let deep = vec!["d"; MAX_PATH_COMPONENTS];
    let n = MAX_TOTAL_PATH_COMPONENTS / MAX_PATH_COMPONENTS + 1;
    let e = err(&torrent(multi_info_unhashed(vec![(deep, 1); n])));
    assert!(e.to_string().contains("components in total"), "{e}");
}

#[test]
fn utf8_variants_are_preferred_like_libtorrent() {
    let info = B::D(vec![
        (
            "files",
            B::L(vec![B::D(vec![
                ("length", B::I(5)),
                ("path", B::L(vec![s(b"caf\xe9")])),
                ("path.utf-8", B::L(vec![s("café")])),
            ])]),
        ),
        ("name", s(b"\xe9t\xe9")),
        ("name.utf-8", s("été")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(sha1(&[0u8; 5]).to_vec())),
    ]);
    let m = Metainfo::from_bytes(&torrent(info)).unwrap();
    assert_eq!(m.name(), "été");
    assert_eq!(m.files()[0].path, std::path::Path::new("été/café"));
}

#[test]
fn hostile_paths_are_rejected() {
    let bad: &[&[&str]] = &[
        &[".."],
        &["..", "etc", "passwd"],
        &["a", ".", "b"],
        &["/etc"],
        &["a/b"],
        &["a\\b"],
        &["a\0b"],
        &[""],
        &[],
        &["ok", ""],
    ];
    for path in bad {
        let e = err(&torrent(multi_info(vec![(path.to_vec(), 5)], 16384)));
        assert!(matches!(e, MetainfoError::BadPath { .. }), "{path:?}: {e}");
    }
    let long = "x".repeat(256);
    let e = err(&torrent(multi_info(vec![(vec![&long], 5)], 16384)));
    assert!(matches!(e, MetainfoError::BadPath { .. }), "{e}");
    let deep = vec!["d"; MAX_PATH_COMPONENTS + 1];
    let e = err(&torrent(multi_info(vec![(deep, 5)], 16384)));
    assert!(matches!(e, MetainfoError::TooMany { .. }), "{e}");

    for name in ["..", ".", "", "a/b", "/"] {
        let info = B::D(vec![
            ("length", B::I(5)),
            ("name", s(name)),
            ("piece length", B::I(16384)),
            ("pieces", B::S(sha1(&[0u8; 5]).to_vec())),
        ]);
        let e = err(&torrent(info));
        assert!(matches!(e, MetainfoError::BadPath { .. }), "{name:?}: {e}");
    }
}

#[test]
fn colliding_paths_are_rejected_but_pad_files_may_repeat() {
    let cases: &[&[&[&str]]] = &[
        &[&["a"], &["a"]],
        &[&["a"], &["a", "b"]],
        &[&["a", "b"], &["a"]],
        &[&["x", "a"], &["x", "a", "c"]],
    ];
    for files in cases {
        let files = files.iter().map(|p| (p.to_vec(), 5)).collect();
        let e = err(&torrent(multi_info(files, 16384)));
        assert!(matches!(e, MetainfoError::PathConflict(_)), "{e}");
    }
    let ok = multi_info(
        vec![(vec!["a", "b"], 5), (vec!["a", "c"], 5), (vec!["b"], 5)],
        16384,
    );
    Metainfo::from_bytes(&torrent(ok)).unwrap();

    let pad = |len: u64| FileEntry {
        path: vec![".pad".into(), "7".into()],
        length: len,
        padding: true,
    };
    let file = |name: &str| FileEntry {
        path: vec![name.into()],
        length: 9,
        padding: false,
    };
    let files = vec![file("a"), pad(7), file("b"), pad(7), file("c")];
    let info = Info {
        name: "d".into(),
        piece_length: 16,
        pieces: piece_hashes(&[0u8; 41], 16),
        files: FileLayout::Multi { files },
        private: false,
    };
    let m = Metainfo::from_info(info, None).unwrap();
    assert_eq!(
        Metainfo::from_bytes(&m.to_bytes()).unwrap().info(),
        m.info()
    );
}

#[test]
fn hostile_numbers_and_shapes_are_rejected() {
    let pieces20 = || B::S(sha1(&[0u8; 5]).to_vec());
    let info = |pairs: Vec<(&'static str, B)>| torrent(B::D(pairs));

    // pieces not a multiple of 20
    let e = err(&info(vec![
        ("length", B::I(5)),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(vec![0; 19])),
    ]));
    assert!(matches!(e, MetainfoError::PiecesNotMultipleOf20(19)), "{e}");
    // one hash too many
    let e = err(&info(vec![
        ("length", B::I(5)),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(vec![0; 40])),
    ]));
    assert!(
        matches!(
            e,
            MetainfoError::PieceCountMismatch {
                expected: 1,
                actual: 2
            }
        ),
        "{e}"
    );
    // negative, huge, and non-integer lengths
    for (length, piece_length) in [
        (B::I(-5), B::I(16384)),
        (B::Raw("i99999999999999999999999999e".into()), B::I(16384)),
        (B::I(5), B::I(-1)),
        (B::I(5), B::I(1 << 32)),
    ] {
        let e = err(&info(vec![
            ("length", length),
            ("name", s("n")),
            ("piece length", piece_length),
            ("pieces", pieces20()),
        ]));
        assert!(matches!(e, MetainfoError::OutOfRange { .. }), "{e}");
    }
    let e = err(&info(vec![
        ("length", s("5")),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(matches!(e, MetainfoError::WrongType { .. }), "{e}");
    // piece length 0 and above the 64 MiB cap
    for pl in [0, 128 << 20] {
        let e = err(&info(vec![
            ("length", B::I(5)),
            ("name", s("n")),
            ("piece length", B::I(pl)),
            ("pieces", pieces20()),
        ]));
        assert!(
            matches!(e, MetainfoError::Lengths(LengthsError::BadPieceLength(_))),
            "{e}"
        );
    }
    // zero total
    let e = err(&info(vec![
        ("length", B::I(0)),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(vec![])),
    ]));
    assert!(
        matches!(e, MetainfoError::Lengths(LengthsError::EmptyTorrent)),
        "{e}"
    );
    // file lengths summing past u64::MAX
    let half = 1u64 << 63;
    let e = err(&torrent(multi_info_unhashed(vec![
        (vec!["a"], half),
        (vec!["b"], half),
    ])));
    assert!(matches!(e, MetainfoError::TotalLengthOverflow), "{e}");
    // both layouts, no layout, empty files, missing keys, wrong container types
    let e = err(&info(vec![
        ("files", B::L(vec![])),
        ("length", B::I(5)),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(matches!(e, MetainfoError::AmbiguousLayout), "{e}");
    let e = err(&info(vec![
        ("files", B::L(vec![])),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(matches!(e, MetainfoError::NoFiles), "{e}");
    let e = err(&info(vec![
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(matches!(e, MetainfoError::MissingKey(_)), "{e}");
    let e = err(&info(vec![
        ("length", B::I(5)),
        ("name", s("n")),
        ("piece length", B::I(16384)),
    ]));
    assert!(e.to_string().contains("info.pieces"), "{e}");
    let e = err(&torrent(B::L(vec![])));
    assert!(matches!(e, MetainfoError::WrongType { .. }), "{e}");
    let e = err(&B::D(vec![("announce", s("x"))]).enc());
    assert!(matches!(e, MetainfoError::MissingKey(_)), "{e}");
    let e = err(&info(vec![
        ("files", B::L(vec![B::I(1)])),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(e.to_string().contains("info.files[0]"), "{e}");
    let e = err(&info(vec![
        ("files", B::L(vec![B::D(vec![("length", B::I(5))])])),
        ("name", s("n")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(e.to_string().contains("info.files[0].path"), "{e}");
    let e = err(&info(vec![
        ("length", B::I(5)),
        ("name", s(b"\xff")),
        ("piece length", B::I(16384)),
        ("pieces", pieces20()),
    ]));
    assert!(matches!(e, MetainfoError::NotUtf8 { .. }), "{e}");
}

fn multi_info_unhashed(files: Vec<(Vec<&str>, u64)>) -> B {
    let files = files
        .into_iter()
        .map(|(path, len)| {
            B::D(vec![
                ("length", B::I(len.into())),
                ("path", B::L(path.into_iter().map(s).collect())),
            ])
        })
        .collect();
    B::D(vec![
        ("files", B::L(files)),
        ("name", s("dir")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(vec![])),
    ])
}

#[test]
fn malformed_bencode_is_rejected() {
    let good = torrent(single_info(5, 16384, vec![]));
    // Every truncation fails cleanly.
    for end in 0..good.len() {
        assert!(Metainfo::from_bytes(&good[..end]).is_err(), "prefix {end}");
    }
    // Trailing data.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"de");
    assert!(matches!(err(&trailing), MetainfoError::TrailingData));
    trailing.truncate(good.len() + 1);
    assert!(matches!(err(&trailing), MetainfoError::TrailingData));
    // Unsorted and duplicate keys (documented: strict).
    let unsorted = B::D(vec![
        ("info", single_info(5, 16384, vec![])),
        ("announce", s("x")),
    ]);
    assert!(matches!(err(&unsorted.enc()), MetainfoError::Bencode(_)));
    let dup = B::D(vec![
        ("info", single_info(5, 16384, vec![])),
        ("info", single_info(5, 16384, vec![])),
    ]);
    assert!(matches!(err(&dup.enc()), MetainfoError::Bencode(_)));
    // Non-canonical integers.
    let e = err(&torrent(single_info(
        5,
        16384,
        vec![("private", B::Raw("i01e".into()))],
    )));
    assert!(matches!(e, MetainfoError::Bencode(_)), "{e}");
    // Nesting bombs, in an unknown key inside info and at the root.
    let bomb = format!("{}{}", "l".repeat(200_000), "e".repeat(200_000));
    let e = err(&torrent(single_info(
        5,
        16384,
        vec![("x", B::Raw(bomb.clone()))],
    )));
    assert!(matches!(e, MetainfoError::Bencode(_)), "{e}");
    assert!(matches!(
        err(bomb.as_bytes()),
        MetainfoError::WrongType { .. }
    ));
    let root_bomb = format!("d1:a{}", "d1:a".repeat(200_000));
    assert!(matches!(
        err(root_bomb.as_bytes()),
        MetainfoError::Bencode(_)
    ));
    // Depth just under the limit in an unknown key is fine (BEP 52 file trees nest).
    let deep = format!("{}{}", "l".repeat(MAX_DEPTH - 3), "e".repeat(MAX_DEPTH - 3));
    Metainfo::from_bytes(&torrent(single_info(5, 16384, vec![("x", B::Raw(deep))]))).unwrap();
    // A string length far past the end.
    assert!(Metainfo::from_bytes(b"d4:info99999999999999999999:x").is_err());
    assert!(Metainfo::from_bytes(b"").is_err());
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let big = vec![b'x'; MAX_METAINFO_LEN + 1];
    assert!(matches!(
        err(&big),
        MetainfoError::TooLarge { len, max: MAX_METAINFO_LEN } if len == MAX_METAINFO_LEN + 1
    ));
}

/// Counts the bytes taken from an endless reader.
struct Endless(u64);

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        buf.fill(b'x');
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
}

#[test]
fn read_limited_stops_one_byte_past_the_limit() {
    let mut endless = Endless(0);
    assert!(matches!(
        read_limited(&mut endless),
        Err(MetainfoError::StreamTooLarge {
            max: MAX_METAINFO_LEN
        })
    ));
    assert_eq!(endless.0, MAX_METAINFO_LEN as u64 + 1);
    // Exactly the limit is read whole (and then fails to parse, as `x`s would).
    let at_limit = vec![b'x'; MAX_METAINFO_LEN];
    assert_eq!(read_limited(&at_limit[..]).unwrap().len(), MAX_METAINFO_LEN);
    assert!(matches!(
        Metainfo::from_reader(&at_limit[..]),
        Err(MetainfoError::Bencode(_))
    ));
}

#[test]
fn load_refuses_a_huge_file_from_its_size_and_reads_a_good_one() {
    let dir = std::env::temp_dir().join(format!(
        "iw-metainfo-load-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // 200 MB, sparse: refused from its size, nothing read.
    let huge = dir.join("huge.torrent");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(200_000_000)
        .unwrap();
    assert!(matches!(
        Metainfo::load(&huge),
        Err(MetainfoError::TooLarge {
            len: 200_000_000,
            max: MAX_METAINFO_LEN
        })
    ));
    let good = dir.join("good.torrent");
    let bytes = torrent(single_info(5, 16384, vec![]));
    std::fs::write(&good, &bytes).unwrap();
    assert_eq!(
        Metainfo::load(&good).unwrap(),
        Metainfo::from_bytes(&bytes).unwrap()
    );
    let missing = Metainfo::load(&dir.join("missing.torrent")).unwrap_err();
    assert!(
        matches!(&missing, MetainfoError::Io(e) if e.kind() == std::io::ErrorKind::NotFound),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn from_info_validates() {
    let info = Info {
        name: "x".into(),
        piece_length: 16384,
        pieces: vec![[0; 20]; 2],
        files: FileLayout::Single { length: 5 },
        private: false,
    };
    assert!(matches!(
        Metainfo::from_info(info.clone(), None),
        Err(MetainfoError::PieceCountMismatch { .. })
    ));
    let bad_name = Info {
        name: "../x".into(),
        pieces: vec![[0; 20]],
        ..info
    };
    assert!(matches!(
        Metainfo::from_info(bad_name, None),
        Err(MetainfoError::BadPath { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(m) = Metainfo::from_bytes(&data) {
            let again = Metainfo::from_bytes(&m.to_bytes()).unwrap();
            prop_assert_eq!(again.info_hash(), m.info_hash());
        }
    }

    #[test]
    fn mutated_torrents_never_panic_and_round_trip(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = torrent(multi_info(vec![(vec!["a", "b"], 30), (vec!["c"], 3)], 16));
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(m) = Metainfo::from_bytes(&bytes) {
            let written = m.to_bytes();
            let again = Metainfo::from_bytes(&written).unwrap();
            prop_assert_eq!(again.info_hash(), m.info_hash());
            prop_assert_eq!(again.info(), m.info());
            prop_assert_eq!(InfoHash(sha1(again.info_bytes())), m.info_hash());
        }
    }
}
