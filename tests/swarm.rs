//! Loopback swarms of real sessions: one seed and many downloaders, through the in-memory
//! tracker; and a peer that serves corrupt data, which must be banned without hurting the
//! download.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imagewolf::{random_payload, TempDir};
use imagewolf_bt::metainfo::{Metainfo, TorrentBuilder};
use imagewolf_bt::storage::{FileStorage, MemoryStorage, Storage};
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom, TorrentEvent};

fn loopback() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::lan_cluster()
    }
}

fn build(payload: &[u8], announce: Option<String>) -> Metainfo {
    let mut builder = TorrentBuilder::new("payload.bin");
    if let Some(url) = announce {
        builder = builder.announce(url);
    }
    builder
        .build_from_reader(payload, payload.len() as u64, std::io::sink())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_eight_downloaders_through_the_tracker() {
    const DOWNLOADERS: usize = 8;
    let payload = random_payload(64 << 20, 1);
    let tracker = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), TrackerConfig::default())
        .await
        .unwrap();
    let meta = build(&payload, Some(tracker.announce_url()));
    let dir = TempDir::new("swarm").unwrap();

    let seed = Session::new(loopback()).await.unwrap();
    let seed_storage = Arc::new(MemoryStorage::from_vec(payload.clone()));
    seed.add_torrent(AddTorrent::new(
        meta.clone(),
        seed_storage,
        StartFrom::Complete,
    ))
    .await
    .unwrap();

    let mut sessions = Vec::new();
    let mut handles = Vec::new();
    for i in 0..DOWNLOADERS {
        let session = Session::new(loopback()).await.unwrap();
        let path = dir.path().join(format!("node{i}.bin"));
        let storage = Arc::new(FileStorage::create_file(&path, meta.total_len()).unwrap());
        let handle = session
            .add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Empty))
            .await
            .unwrap();
        handles.push((path, handle));
        sessions.push(session);
    }
    let all = futures::future::join_all(handles.iter().map(|(_, h)| h.wait_complete()));
    let results = tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .expect("swarm did not complete within 180 s");
    for (r, (path, handle)) in results.into_iter().zip(&handles) {
        r.unwrap();
        let stats = handle.stats();
        assert!(stats.is_complete());
        assert_eq!(stats.hash_failures, 0);
        assert!(
            std::fs::read(path).unwrap() == payload,
            "{} differs",
            path.display()
        );
    }
    // The downloaders shared among themselves: the seed did not upload the payload 8 times.
    let uploaded_by_peers: u64 = handles.iter().map(|(_, h)| h.stats().uploaded).sum();
    assert!(
        uploaded_by_peers > payload.len() as u64,
        "downloaders uploaded only {uploaded_by_peers} bytes to each other"
    );
    for s in sessions {
        s.shutdown().await;
    }
    seed.shutdown().await;
}

/// A seed added with `holding_spread` shows nothing more once every piece has gone out
/// (here: all to a first downloader), so a later peer that can reach both completes from
/// the first downloader alone; after `release_spreading` the seed seeds normally, and a
/// last peer that reaches only the seed completes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_seed_shows_nothing_more_until_released() {
    let payload = random_payload(2 << 20, 7);
    let meta = build(&payload, None);
    let seed = Session::new(loopback()).await.unwrap();
    let held = seed
        .add_torrent(
            AddTorrent::new(
                meta.clone(),
                Arc::new(MemoryStorage::from_vec(payload.clone())),
                StartFrom::Complete,
            )
            .holding_spread(),
        )
        .await
        .unwrap();
    let download = |name: &'static str, peers: Vec<SocketAddr>| {
        let meta = meta.clone();
        async move {
            let session = Session::new(loopback()).await.unwrap();
            let storage = Arc::new(MemoryStorage::new(meta.total_len()));
            let handle = session
                .add_torrent(AddTorrent::new(meta, storage, StartFrom::Empty).with_peers(peers))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            tokio::time::timeout(Duration::from_secs(60), handle.wait_complete())
                .await
                .unwrap_or_else(|_| panic!("{name} did not complete"))
                .unwrap();
            (session, handle)
        }
    };
    let (first, first_handle) = download("first", vec![seed.listen_addr()]).await;
    let sent_to_first = held.stats().uploaded;
    assert!(sent_to_first >= payload.len() as u64);

    let (later, later_handle) =
        download("later", vec![seed.listen_addr(), first.listen_addr()]).await;
    assert_eq!(
        held.stats().uploaded,
        sent_to_first,
        "a held seed sent data after every piece had gone out"
    );
    assert!(later_handle.stats().downloaded >= payload.len() as u64);
    assert!(first_handle.stats().uploaded >= payload.len() as u64);

    held.release_spreading();
    first.shutdown().await;
    later.shutdown().await;
    let (last, _) = download("last", vec![seed.listen_addr()]).await;
    assert!(held.stats().uploaded >= sent_to_first + payload.len() as u64);
    last.shutdown().await;
    seed.shutdown().await;
}

/// Serves whatever its inner storage holds, with one byte of every block flipped.
struct CorruptStorage(MemoryStorage);

impl Storage for CorruptStorage {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)?;
        if let Some(b) = buf.first_mut() {
            *b ^= 0xff;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_corrupt_blocks_is_banned_and_the_download_completes() {
    let payload = random_payload(8 << 20, 2);
    let meta = build(&payload, None);

    let honest = Session::new(loopback()).await.unwrap();
    honest
        .add_torrent(AddTorrent::new(
            meta.clone(),
            Arc::new(MemoryStorage::from_vec(payload.clone())),
            StartFrom::Complete,
        ))
        .await
        .unwrap();
    let liar_config = loopback();
    let liar_id = liar_config.peer_id;
    let liar = Session::new(liar_config).await.unwrap();
    liar.add_torrent(AddTorrent::new(
        meta.clone(),
        Arc::new(CorruptStorage(MemoryStorage::from_vec(payload.clone()))),
        StartFrom::Complete,
    ))
    .await
    .unwrap();

    let leech = Session::new(loopback()).await.unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    // The liar first, so it gets its requests in.
    let peers: Vec<SocketAddr> = vec![liar.listen_addr(), honest.listen_addr()];
    // The peers only once we listen: events are not replayed to a later subscriber, and the
    // whole download (ban included) can be over before this task runs again after
    // `add_torrent` on a loaded machine.
    let handle = leech
        .add_torrent(AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty))
        .await
        .unwrap();
    let mut events = handle.events();
    handle.add_peers(peers);
    let banned = async {
        loop {
            match events.recv().await {
                Ok(TorrentEvent::PeerBanned { peer_id, .. }) => return peer_id,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    let (banned, done) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(banned, handle.wait_complete())
    })
    .await
    .expect("no ban or no completion within 60 s");
    done.unwrap();
    assert_eq!(banned, liar_id, "the honest peer was banned");
    assert_eq!(out.to_vec(), payload);
    let stats = handle.stats();
    assert!(
        stats.hash_failures > 0,
        "the liar's data never reached verification"
    );
    leech.shutdown().await;
    liar.shutdown().await;
    honest.shutdown().await;
}
