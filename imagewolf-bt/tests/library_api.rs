//! The library as a program uses it: sessions from one config, clones and shutdown, torrents
//! of directories seeded and downloaded from the metainfo's lengths, progress as a stream,
//! bounded waits, typed disconnect reasons, one error type.

use std::time::Duration;

use futures::StreamExt;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::{
    AddTorrent, DisconnectReason, Error, Session, SessionConfig, TorrentEvent, TorrentStatus,
};

fn localhost() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        ..SessionConfig::default()
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let n: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("iw-{tag}-{}-{n:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn sessions_from_one_config_have_their_own_peer_ids() {
    let config = localhost();
    let a = Session::new(config.clone()).await.unwrap();
    let b = Session::new(config).await.unwrap();
    assert_ne!(a.peer_id(), b.peer_id());
    assert!(a.peer_id().to_string().starts_with("-IW"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_seeded_and_downloaded_from_its_metainfo() {
    let scratch = Scratch::new("dir");
    let src = scratch.0.join("album");
    std::fs::create_dir_all(src.join("disc 2")).unwrap();
    let files = [
        ("a.bin", vec![1u8; 300_000]),
        ("disc 2/b.bin", (0..700_000u32).map(|i| i as u8).collect()),
        ("empty", Vec::new()),
    ];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    let meta = Metainfo::create(&src).await.unwrap();
    assert_eq!(meta.total_len(), 1_000_000);
    assert_eq!(meta.name(), "album");
    let saved = scratch.0.join("album.torrent");
    meta.save(&saved).unwrap();
    let meta = Metainfo::load(&saved).unwrap();

    let seed = Session::builder()
        .config(localhost())
        .build()
        .await
        .unwrap();
    // A clone is the same session: shutting it down stops the original too.
    let seed_clone = seed.clone();
    seed.add_torrent(AddTorrent::seed_file(meta.clone(), &src).unwrap())
        .await
        .unwrap();

    let node = Session::builder()
        .config(localhost())
        .build()
        .await
        .unwrap();
    let out = scratch.0.join("downloads");
    let torrent = node
        .add_torrent(
            AddTorrent::download_to(meta.clone(), &out)
                .unwrap()
                .with_peers([seed.listen_addr()]),
        )
        .await
        .unwrap();
    let mut events = torrent.events();
    let mut progress = std::pin::pin!(torrent.progress_stream());
    let mut snapshots = 0;
    while let Some(stats) = progress.next().await {
        snapshots += 1;
        if stats.is_complete() {
            break;
        }
    }
    assert!(snapshots >= 1);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(out.join("album").join(name)).unwrap(), data);
    }

    // The downloader completes and closes its connection to the seed: a typed reason.
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(TorrentEvent::PeerDisconnected { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("no disconnect after completion");
    assert_eq!(reason, DisconnectReason::BothSeeds, "{reason}");

    // Downloading to the same place again resumes: everything checks out, nothing moves.
    node.remove_torrent(&meta.info_hash()).await;
    let again = node
        .add_torrent(AddTorrent::download_to(meta.clone(), &out).unwrap())
        .await
        .unwrap();
    again
        .wait_complete_within(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(again.stats().downloaded, 0);

    seed_clone.shutdown().await;
    let refused = seed
        .add_torrent(AddTorrent::seed_file(meta, &src).unwrap())
        .await;
    assert!(
        matches!(refused, Err(Error::SessionClosed)),
        "{:?}",
        refused.err()
    );
    node.shutdown().await;
}

#[tokio::test]
async fn waiting_with_no_peers_times_out_and_the_stream_ends_on_stop() {
    let scratch = Scratch::new("alone");
    let file = scratch.0.join("lonely.bin");
    std::fs::write(&file, vec![9u8; 100_000]).unwrap();
    let meta = Metainfo::create(&file).await.unwrap();
    let session = Session::builder()
        .config(localhost())
        .build()
        .await
        .unwrap();
    let torrent = session
        .add_torrent(AddTorrent::download_to(meta, scratch.0.join("out")).unwrap())
        .await
        .unwrap();
    let waited = torrent
        .wait_complete_within(Duration::from_millis(300))
        .await;
    assert!(matches!(waited, Err(Error::Timeout(_))), "{waited:?}");
    let stream = torrent.progress_stream();
    session.shutdown().await;
    let last = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
        .await
        .expect("the progress stream did not end when the torrent stopped");
    assert_eq!(
        last.last().map(|s| &s.status),
        Some(&TorrentStatus::Stopped)
    );
    assert!(matches!(torrent.wait_complete().await, Err(Error::Stopped)));
}

#[tokio::test]
async fn a_second_session_on_a_taken_port_is_a_bind_error() {
    let first = Session::builder()
        .config(localhost())
        .build()
        .await
        .unwrap();
    let taken = first.listen_addr();
    // SO_REUSEADDR does not let two listeners share a port on Linux.
    let second = Session::builder().listen_addr(taken).build().await;
    assert!(
        matches!(&second, Err(Error::Bind { addr, .. }) if *addr == taken),
        "{:?}",
        second.as_ref().err()
    );
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_its_own_tracker_and_a_magnet_with_only_it_downloads() {
    use imagewolf_bt::metainfo::TorrentBuilder;
    use imagewolf_bt::Magnet;
    let scratch = Scratch::new("own-tracker");
    let file = scratch.0.join("payload.bin");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &payload).unwrap();

    // The tracker listens on every address; its URL names the address peers dial us on.
    let seed = Session::builder()
        .listen_addr("127.0.0.1:0".parse().unwrap())
        .announce_ip("127.0.0.1".parse().unwrap())
        .tracker("0.0.0.0:0".parse().unwrap())
        .build()
        .await
        .unwrap();
    let tracker_port = seed.tracker().unwrap().local_addr().port();
    let url = seed.tracker_url().unwrap();
    assert_eq!(url, format!("http://127.0.0.1:{tracker_port}/announce"));
    let meta = TorrentBuilder::new("payload.bin")
        .announce(url.clone())
        .create(&file)
        .await
        .unwrap();
    let info_hash = meta.info_hash();
    seed.add_torrent(AddTorrent::seed_file(meta, &file).unwrap())
        .await
        .unwrap();
    // Listed the moment it was added, before any announce could have been answered.
    assert_eq!(seed.tracker().unwrap().peer_count(&info_hash), 1);

    // The downloader knows the info-hash and the tracker, nothing else.
    let mut magnet = Magnet::new(info_hash, []);
    magnet.trackers.push(url);
    let leech = Session::builder()
        .config(localhost())
        .build()
        .await
        .unwrap();
    let torrent = leech
        .add_magnet(&magnet.to_string(), scratch.0.join("out"))
        .await
        .unwrap();
    torrent
        .wait_complete_within(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(scratch.0.join("out").join("payload.bin")).unwrap(),
        payload
    );
    assert_eq!(seed.tracker().unwrap().peer_count(&info_hash), 2);

    // Shutting the session down stops its tracker too.
    // (The listener closes when its aborted task is dropped, a moment later.)
    seed.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", tracker_port))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tracker still accepts 5 s after shutdown"
        );
        tokio::task::yield_now().await;
    }
    leech.shutdown().await;
}
