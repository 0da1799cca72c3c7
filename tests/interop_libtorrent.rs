//! Interoperability with libtorrent 2.0 (Debian's python3-libtorrent), both directions:
//! libtorrent downloads from our seed, finding it through our tracker; and we download from a
//! libtorrent seed. These fail (never skip) when libtorrent is missing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use imagewolf::{
    random_payload, require_libtorrent, test_asset, ChildGuard, TempDir, SYSTEM_PYTHON,
};
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::{FileStorage, MemoryStorage};
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom};

const PAYLOAD: usize = 24 << 20;

fn loopback() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::lan_cluster()
    }
}

fn lt_client(args: &[&str]) -> ChildGuard {
    let version = require_libtorrent().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("libtorrent {version}");
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(test_asset("lt_client.py"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    ChildGuard::spawn("libtorrent client", &mut cmd).unwrap()
}

/// Runs `lt_client.py ARGS OUT_DIR` (listening anywhere on loopback, giving up after
/// `timeout_secs`), waits for it, and checks it completed with `payload` as `image.tar`.
async fn lt_downloads(args: &[&str], out_dir: &std::path::Path, timeout_secs: u64, payload: &[u8]) {
    let timeout = timeout_secs.to_string();
    let mut all = args.to_vec();
    all.extend([
        out_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--timeout",
        &timeout,
    ]);
    let mut lt = lt_client(&all);
    let stdout = lt.child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let wait = Duration::from_secs(timeout_secs + 30);
    let lines = tokio::time::timeout(wait, lines)
        .await
        .unwrap_or_else(|_| panic!("libtorrent ({}) did not finish in {wait:?}", args[0]))
        .unwrap();
    let status = lt.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        status.success() && lines.iter().any(|l| l.contains("\"complete\"")),
        "libtorrent ({}) did not complete: {status}\n{}",
        args[0],
        lines.join("\n")
    );
    assert!(
        std::fs::read(out_dir.join("image.tar")).unwrap() == payload,
        "libtorrent's copy differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_downloads_from_our_seed_through_our_tracker() {
    let dir = TempDir::new("lt-down").unwrap();
    let payload = random_payload(PAYLOAD, 11);
    let file = dir.path().join("seed").join("image.tar");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &payload).unwrap();

    let tracker = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), TrackerConfig::default())
        .await
        .unwrap();
    let meta = TorrentBuilder::new("image.tar")
        .announce(tracker.announce_url())
        .build_from_file(&file)
        .unwrap();
    let torrent_path = dir.path().join("image.torrent");
    std::fs::write(&torrent_path, meta.to_bytes()).unwrap();

    let seed = Session::new(loopback()).await.unwrap();
    let storage = FileStorage::open_file(&file, meta.total_len()).unwrap();
    let handle = seed
        .add_torrent(AddTorrent::new(
            meta.clone(),
            Arc::new(storage),
            StartFrom::Complete,
        ))
        .await
        .unwrap();

    let out_dir = dir.path().join("lt");
    std::fs::create_dir_all(&out_dir).unwrap();
    // No --peer: libtorrent must find our seed through our tracker.
    let torrent = torrent_path.to_str().unwrap();
    lt_downloads(&["download", torrent], &out_dir, 120, &payload).await;
    assert!(
        handle.stats().uploaded >= PAYLOAD as u64,
        "our seed did not upload the payload"
    );
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_download_from_a_libtorrent_seed() {
    let dir = TempDir::new("lt-up").unwrap();
    let payload = random_payload(PAYLOAD, 12);
    let seed_dir = dir.path().join("lt");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let file = seed_dir.join("image.tar");
    std::fs::write(&file, &payload).unwrap();
    let meta = TorrentBuilder::new("image.tar")
        .build_from_file(&file)
        .unwrap();
    let torrent_path = dir.path().join("image.torrent");
    std::fs::write(&torrent_path, meta.to_bytes()).unwrap();

    let mut lt = lt_client(&[
        "seed",
        torrent_path.to_str().unwrap(),
        seed_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let mut stdout = BufReader::new(lt.child.stdout.take().unwrap());
    let port = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Keep draining so libtorrent never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        line
    })
    .await
    .unwrap();
    let port: u16 = port
        .split("\"port\": ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port in libtorrent's first line: {port}"));

    let leech = Session::new(loopback()).await.unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    let handle = leech
        .add_torrent(
            AddTorrent::new(meta, out.clone(), StartFrom::Empty).with_peers([format!(
                "127.0.0.1:{port}"
            )
            .parse()
            .unwrap()]),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), handle.wait_complete())
        .await
        .expect("download from libtorrent did not complete in 120 s")
        .unwrap();
    assert!(out.to_vec() == payload, "our copy differs");
    assert_eq!(handle.stats().hash_failures, 0);
    leech.shutdown().await;
}

/// Reads libtorrent's first line (`{"event": "listening", "port": P, ...}`) and keeps
/// draining its output in the background so it never blocks on a full pipe.
async fn listening_port(lt: &mut ChildGuard) -> u16 {
    let mut stdout = BufReader::new(lt.child.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // Alerts (errors) go to the test's output: they say why libtorrent dropped us.
        std::thread::spawn(move || {
            for l in stdout.lines().map_while(Result::ok) {
                if l.contains("\"alert\"") {
                    eprintln!("libtorrent: {l}");
                }
            }
        });
        line
    })
    .await
    .unwrap();
    line.split("\"port\": ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port in libtorrent's first line: {line}"))
}

/// BEP 9, libtorrent fetching: it gets only a magnet link naming our seed, fetches the
/// info dict from us, then the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorrent_downloads_from_our_seed_by_magnet_link() {
    let dir = TempDir::new("lt-magnet-down").unwrap();
    let payload = random_payload(8 << 20, 13);
    // Small pieces: an info dict of several 16 KiB metadata pieces.
    let meta = TorrentBuilder::new("image.tar")
        .piece_length(4096)
        .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())
        .unwrap();
    assert!(meta.info_bytes().len() > 32 * 1024);
    let seed = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        ..SessionConfig::default()
    })
    .await
    .unwrap();
    let storage = Arc::new(MemoryStorage::from_vec(payload.clone()));
    let handle = seed
        .add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Complete))
        .await
        .unwrap();
    let link = imagewolf_bt::Magnet::new(meta.info_hash(), [seed.listen_addr()]).to_string();
    let out_dir = dir.path().join("lt");
    std::fs::create_dir_all(&out_dir).unwrap();
    lt_downloads(&["magnet", &link], &out_dir, 60, &payload).await;
    assert!(handle.stats().uploaded >= payload.len() as u64);
    seed.shutdown().await;
}

/// BEP 9, us fetching: a magnet link naming a libtorrent seed; we fetch the info dict
/// from it, check it against the info-hash, then download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_download_from_a_libtorrent_seed_by_magnet_link() {
    let dir = TempDir::new("lt-magnet-up").unwrap();
    let payload = random_payload(8 << 20, 14);
    let seed_dir = dir.path().join("lt");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let file = seed_dir.join("image.tar");
    std::fs::write(&file, &payload).unwrap();
    let meta = TorrentBuilder::new("image.tar")
        .piece_length(4096)
        .build_from_file(&file)
        .unwrap();
    let torrent_path = dir.path().join("image.torrent");
    meta.save(&torrent_path).unwrap();
    let mut lt = lt_client(&[
        "seed",
        torrent_path.to_str().unwrap(),
        seed_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let port = listening_port(&mut lt).await;
    let leech = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        ..SessionConfig::default()
    })
    .await
    .unwrap();
    let link = format!(
        "magnet:?xt=urn:btih:{}&dn=image.tar&x.pe=127.0.0.1:{port}",
        meta.info_hash().to_hex()
    );
    let out = dir.path().join("ours");
    let handle = tokio::time::timeout(Duration::from_secs(60), leech.add_magnet(&link, &out))
        .await
        .expect("no metadata from libtorrent in 60 s")
        .unwrap();
    assert_eq!(handle.metainfo().info_bytes(), meta.info_bytes());
    handle
        .wait_complete_within(Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        std::fs::read(out.join("image.tar")).unwrap() == payload,
        "our copy differs"
    );
    assert_eq!(handle.stats().hash_failures, 0);
    leech.shutdown().await;
}
