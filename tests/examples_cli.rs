//! The `seed` and `download` examples are interfaces other tools drive: run them as
//! processes, exactly as documented, and check the bytes that come out.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use imagewolf::{build_examples, example_bin, random_payload, ChildGuard, TempDir};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn seed_with_embedded_tracker_then_download_through_it() {
    build_examples(&["seed", "download"]);
    let dir = TempDir::new("cli").unwrap();
    let payload = random_payload(6 << 20, 21);
    let file = dir.path().join("image.tar");
    std::fs::write(&file, &payload).unwrap();
    let torrent = dir.path().join("image.torrent");
    let (bt, tracker) = (free_port(), free_port());

    let mut seed = ChildGuard::spawn(
        "seed example",
        Command::new(example_bin("seed"))
            .arg(&file)
            .arg("--torrent-out")
            .arg(&torrent)
            .args(["--listen", &format!("127.0.0.1:{bt}")])
            .args(["--tracker-listen", &format!("127.0.0.1:{tracker}")])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    // The seed says when it is serving; wait for that line rather than for a time.
    let mut lines = BufReader::new(seed.child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("seeding on"))
        .expect("the seed exited before serving");
    assert!(
        ready.contains(&format!("127.0.0.1:{tracker}/announce")),
        "{ready}"
    );
    std::thread::spawn(move || lines.for_each(drop));

    // No --peer: the download finds the seed through the tracker named in the torrent.
    let out = dir.path().join("out.bin");
    let mut download = ChildGuard::spawn(
        "download example",
        Command::new(example_bin("download"))
            .arg(&torrent)
            .arg("--out")
            .arg(&out)
            .args(["--listen", "127.0.0.1:0", "--timeout", "60"])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let stdout = download.child.stdout.take().unwrap();
    let report: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = download.wait_timeout(Duration::from_secs(90)).unwrap();
    assert!(
        status.success(),
        "download failed: {status}\n{}",
        report.join("\n")
    );
    assert!(
        report.iter().any(|l| l.starts_with("complete:")),
        "{}",
        report.join("\n")
    );
    assert!(
        std::fs::read(&out).unwrap() == payload,
        "downloaded bytes differ"
    );

    // Run again over the finished file: it is checked and found complete, nothing fetched.
    let again = Command::new(example_bin("download"))
        .arg(&torrent)
        .arg("--out")
        .arg(&out)
        .args(["--listen", "127.0.0.1:0", "--timeout", "30"])
        .output()
        .unwrap();
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("checking existing data"), "{text}");
}

/// BEP 9 through the examples: the download example gets only a magnet link naming the
/// seed example's address, fetches the info dict from it, then the payload.
#[test]
fn a_magnet_link_downloads_from_the_seed_example() {
    build_examples(&["seed", "download"]);
    let dir = TempDir::new("cli-magnet").unwrap();
    let payload = random_payload(3 << 20, 22);
    let file = dir.path().join("image.tar");
    std::fs::write(&file, &payload).unwrap();
    let bt = free_port();
    let mut seed = ChildGuard::spawn(
        "seed example",
        Command::new(example_bin("seed"))
            .arg(&file)
            .arg("--torrent-out")
            .arg(dir.path().join("image.torrent"))
            .args(["--listen", &format!("127.0.0.1:{bt}")])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut lines = BufReader::new(seed.child.stdout.take().unwrap()).lines();
    let mut info_hash = None;
    for line in lines.by_ref().map_while(Result::ok) {
        // "torrent <hex> (... bytes ...) -> OUT", then "seeding on ADDR".
        if let Some(rest) = line.strip_prefix("torrent ") {
            info_hash = rest.split(' ').next().map(str::to_owned);
        }
        if line.starts_with("seeding on") {
            break;
        }
    }
    let info_hash = info_hash.expect("the seed printed no info-hash");
    std::thread::spawn(move || lines.for_each(drop));
    let out = dir.path().join("out.bin");
    let link = format!("magnet:?xt=urn:btih:{info_hash}&dn=image.tar&x.pe=127.0.0.1:{bt}");
    let mut download = ChildGuard::spawn(
        "download example",
        Command::new(example_bin("download"))
            .arg(&link)
            .arg("--out")
            .arg(&out)
            .args(["--listen", "127.0.0.1:0", "--timeout", "60"])
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let stdout = download.child.stdout.take().unwrap();
    let report: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = download.wait_timeout(Duration::from_secs(90)).unwrap();
    assert!(
        status.success() && report.iter().any(|l| l.starts_with("complete:")),
        "magnet download failed: {status}\n{}",
        report.join("\n")
    );
    assert!(
        std::fs::read(&out).unwrap() == payload,
        "downloaded bytes differ"
    );
}

#[test]
fn bad_input_gives_a_clear_error() {
    build_examples(&["seed", "download"]);
    let dir = TempDir::new("cli-bad").unwrap();
    let junk = dir.path().join("junk.torrent");
    std::fs::write(&junk, b"d8:announce3:foo").unwrap();
    let out = Command::new(example_bin("download"))
        .arg(&junk)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parsing") && err.contains("junk.torrent"),
        "{err}"
    );
    let missing = Command::new(example_bin("seed"))
        .arg(dir.path().join("missing.tar"))
        .arg("--torrent-out")
        .arg(dir.path().join("m.torrent"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.tar"));
}

/// A .torrent far above the library's limit is refused without being read into memory: a
/// huge regular file from its size, an endless pipe once the limit is passed (the writer
/// gets a broken pipe after about the limit instead of writing all it has).
#[test]
fn a_huge_torrent_is_refused_without_reading_it_whole() {
    use std::io::Write;
    build_examples(&["download"]);
    let dir = TempDir::new("cli-huge").unwrap();
    let limit = imagewolf_bt::metainfo::MAX_METAINFO_LEN;

    let big = dir.path().join("big.torrent");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(200_000_000)
        .unwrap();
    let out = Command::new(example_bin("download"))
        .arg(&big)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("big.torrent") && err.contains("more than the limit"),
        "{err}"
    );

    let fifo = dir.path().join("endless.torrent");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let mut download = ChildGuard::spawn(
        "download example",
        Command::new(example_bin("download"))
            .arg(&fifo)
            .arg("--out")
            .arg(dir.path().join("y"))
            .stderr(Stdio::piped()),
    )
    .unwrap();
    // Offers 200 MB through the pipe; reports how much the reader took before closing it.
    let (written_tx, written_rx) = std::sync::mpsc::channel();
    let writer_path = fifo.clone();
    std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut written = 0usize;
        while written < 200_000_000 {
            match pipe.write(&chunk) {
                Ok(n) => written += n,
                Err(_) => break, // EPIPE: the reader closed the pipe.
            }
        }
        let _ = written_tx.send(written);
    });
    let status = download.wait_timeout(Duration::from_secs(60)).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut download.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("endless.torrent") && err.contains("more than the limit"),
        "{err}"
    );
    let written = written_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer never finished");
    // The limit plus what the pipe buffers (at most 1 MiB by default) plus one chunk.
    assert!(
        written <= limit + (4 << 20),
        "the example read {written} bytes of a torrent limited to {limit}"
    );
}

/// README's main command, small: the demo's first push and update both complete, and the
/// update moves only its new layer.
#[test]
fn the_demo_spreads_an_image_and_then_only_its_update() {
    build_examples(&["cluster_demo"]);
    let out = Command::new(example_bin("cluster_demo"))
        .args(["--nodes", "3", "--size-mib", "16", "--update-mib", "2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("loaded on all 3 nodes"))
        .collect();
    assert_eq!(done.len(), 2, "two pushes expected:\n{text}");
    assert!(done[0].contains("served 5 blobs"), "{}", done[0]);
    assert!(done[1].contains("served 2 blobs"), "{}", done[1]);
    // Each peer already had 4 of the update's 6 blobs (the layers) and needed about 2 MiB.
    let peers: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" peer ") && l.contains("4/6"))
        .collect();
    assert_eq!(peers.len(), 2, "the peers' update lines:\n{text}");
}
