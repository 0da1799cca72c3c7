//! Cross-checks against libtorrent 2.0 (the reference client) through python3-libtorrent:
//! torrents it makes parse to the same info-hash, pieces and file layout here, and torrents
//! we make load in libtorrent with the same info-hash. These tests fail (never skip) when
//! python3-libtorrent is missing: interoperability is a requirement, not an extra.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const PYTHON: &str = "/usr/bin/python3";

/// `create SRC PARENT PIECE_LEN V1ONLY OUT` makes a torrent of SRC and describes it;
/// `describe PATH` loads a torrent and describes it, one fact per line.
const SCRIPT: &str = r#"
import sys
try:
    import libtorrent as lt
except ImportError as e:
    sys.stderr.write("cannot import libtorrent: %s\n" % e)
    sys.exit(3)
if sys.argv[1] == "create":
    src, parent, piece, v1only, path = sys.argv[2:7]
    fs = lt.file_storage()
    lt.add_files(fs, src)
    flags = lt.create_torrent.v1_only if v1only == "1" else 0
    t = lt.create_torrent(fs, int(piece), flags=flags)
    lt.set_piece_hashes(t, parent)
    with open(path, "wb") as f:
        f.write(lt.bencode(t.generate()))
else:
    path = sys.argv[2]
ti = lt.torrent_info(path)
print("hash", str(ti.info_hashes().v1))
print("name", ti.name())
print("piece_length", ti.piece_length())
print("total", ti.total_size())
for i in range(ti.num_pieces()):
    h = ti.hash_for_piece(i)
    print("piece", h.hex() if isinstance(h, bytes) else str(h))
fs = ti.files()
for i in range(fs.num_files()):
    pad = 1 if fs.file_flags(i) & lt.file_storage.flag_pad_file else 0
    print("file", fs.file_offset(i), fs.file_size(i), pad, fs.file_path(i))
"#;

/// What libtorrent says about a torrent.
#[derive(Debug, Default, PartialEq)]
struct LtView {
    hash: String,
    name: String,
    piece_length: u32,
    total: u64,
    pieces: Vec<String>,
    /// (offset, size, pad, path)
    files: Vec<(u64, u64, bool, String)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn libtorrent(args: &[&str]) -> LtView {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {PYTHON} ({e}). The libtorrent cross-check needs python3 and \
                 python3-libtorrent (apt-get install python3-libtorrent)."
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python3-libtorrent cross-check failed ({}). Is python3-libtorrent installed \
         (`{PYTHON} -c 'import libtorrent'`)? stderr:\n{stderr}",
        out.status
    );
    let mut view = LtView::default();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (tag, rest) = line.split_once(' ').unwrap();
        match tag {
            "hash" => view.hash = rest.into(),
            "name" => view.name = rest.into(),
            "piece_length" => view.piece_length = rest.parse().unwrap(),
            "total" => view.total = rest.parse().unwrap(),
            "piece" => view.pieces.push(rest.into()),
            "file" => {
                let mut parts = rest.splitn(4, ' ');
                let mut next = || parts.next().unwrap();
                let (offset, size, pad) =
                    (next().parse().unwrap(), next().parse().unwrap(), next());
                view.files.push((offset, size, pad == "1", next().into()));
            }
            other => panic!("unexpected line {other:?}"),
        }
    }
    view
}

/// Our view of a torrent, in libtorrent's terms.
fn our_view(m: &Metainfo) -> LtView {
    LtView {
        hash: m.info_hash().to_hex(),
        name: m.name().into(),
        piece_length: m.info().piece_length,
        total: m.total_len(),
        pieces: m.info().pieces.iter().map(|p| hex(p)).collect(),
        files: m
            .files()
            .into_iter()
            .map(|f| {
                (
                    f.offset,
                    f.len,
                    f.padding,
                    f.path.to_str().unwrap().to_owned(),
                )
            })
            .collect(),
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iw-lt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        path
    }

    fn path(&self, rel: &str) -> String {
        self.0.join(rel).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn create_with_libtorrent(dir: &Scratch, src: &str, v1_only: bool, out: &str) -> LtView {
    libtorrent(&[
        "create",
        &dir.path(src),
        dir.0.to_str().unwrap(),
        "32768",
        if v1_only { "1" } else { "0" },
        &dir.path(out),
    ])
}

#[test]
fn libtorrent_torrents_parse_identically() {
    let dir = Scratch::new("parse");
    let single = dir.write("single.bin", &data(300_001, 1));
    dir.write("multi/a.bin", &data(100_000, 2));
    dir.write("multi/sub/b.bin", &data(50_000, 3));
    dir.write("multi/c.txt", b"0123456789");

    for (src, v1_only) in [
        ("single.bin", true),
        ("single.bin", false),
        ("multi", true),
        ("multi", false),
    ] {
        let out = format!("{src}-{v1_only}.torrent");
        let theirs = create_with_libtorrent(&dir, src, v1_only, &out);
        let bytes = fs::read(dir.path(&out)).unwrap();
        let ours = Metainfo::from_bytes(&bytes).unwrap_or_else(|e| panic!("{out}: {e}"));
        assert_eq!(our_view(&ours), theirs, "{out}");
        assert!(!theirs.pieces.is_empty());
        if !v1_only {
            // Hybrid torrents carry BEP 52 keys we do not model, inside and outside `info`.
            assert!(find(ours.info_bytes(), b"9:file tree"), "{out}");
            if src == "multi" {
                assert!(
                    theirs.files.iter().any(|f| f.2),
                    "{out}: expected pad files"
                );
            }
        }
        // Writing it back keeps what libtorrent wrote, so it still loads with the same hash.
        let again = Metainfo::from_bytes(&ours.to_bytes()).unwrap();
        assert_eq!(again.info_hash(), ours.info_hash());
    }

    // Our builder makes the very same v1 `info` dict libtorrent does.
    let theirs = create_with_libtorrent(&dir, "single.bin", true, "lt.torrent");
    let ours = TorrentBuilder::new("single.bin")
        .piece_length(32768)
        .build_from_file(&single)
        .unwrap();
    assert_eq!(our_view(&ours), theirs);
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn libtorrent_loads_our_torrents() {
    let dir = Scratch::new("load");
    let payload = data(1_000_000, 4);
    let single = dir.write("image.tar", &payload);
    let m = TorrentBuilder::new("image.tar")
        .announce("http://127.0.0.1:6969/announce")
        .comment("cross-check")
        .build_from_file(&single)
        .unwrap();
    let torrent = dir.write("ours-single.torrent", &m.to_bytes());
    assert_eq!(
        libtorrent(&["describe", torrent.to_str().unwrap()]),
        our_view(&m)
    );

    // A multi-file torrent with a nested directory, an empty file and a private flag.
    let sizes: [(&[&str], usize); 3] = [
        (&["a.bin"], 70_000),
        (&["sub", "empty"], 0),
        (&["sub", "b.bin"], 12_345),
    ];
    let mut hasher = PieceHasher::new(16384);
    let mut files = Vec::new();
    for (i, (path, len)) in sizes.iter().enumerate() {
        hasher.update(&data(*len, i as u8));
        files.push(FileEntry {
            path: path.iter().map(|c| c.to_string()).collect(),
            length: *len as u64,
            padding: false,
        });
    }
    let (pieces, _) = hasher.finish();
    let info = Info {
        name: "layers".into(),
        piece_length: 16384,
        pieces,
        files: FileLayout::Multi { files },
        private: true,
    };
    let m = Metainfo::from_info(info, Some("http://127.0.0.1:6969/announce".into())).unwrap();
    let torrent = dir.write("ours-multi.torrent", &m.to_bytes());
    let theirs = libtorrent(&["describe", torrent.to_str().unwrap()]);
    assert_eq!(theirs, our_view(&m));
    assert_eq!(theirs.files[2].0, 70_000);
    assert_eq!(theirs.files[2].3, "layers/sub/b.bin");
    assert!(Path::new(&theirs.files[1].3).ends_with("sub/empty"));
}
