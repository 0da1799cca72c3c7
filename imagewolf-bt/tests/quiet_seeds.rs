//! Seeds of one torrent behind a tracker do not keep redialling each other: two seeds have
//! nothing to say, so once a connection between them ended, neither dials the other again
//! however often the tracker names it (issue 18).

use std::sync::Arc;
use std::time::Duration;

use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::MemoryStorage;
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom, TorrentEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_behind_a_tracker_connect_once() {
    const SEEDS: usize = 3;
    // Announces every 2 s (the announcer's floor under the tracker's 1 s interval).
    let mut config = TrackerConfig::default();
    config.interval = Duration::from_secs(1);
    let tracker = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let payload = vec![5u8; 1 << 20];
    let meta = TorrentBuilder::new("seeds.bin")
        .announce(tracker.announce_url())
        .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())
        .unwrap();
    let mut sessions = Vec::new();
    let mut events = Vec::new();
    for _ in 0..SEEDS {
        let session = Session::new(SessionConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            peer_id: PeerId::generate(),
            ..SessionConfig::default()
        })
        .await
        .unwrap();
        let storage = Arc::new(MemoryStorage::from_vec(payload.clone()));
        let torrent = session
            .add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Complete))
            .await
            .unwrap();
        events.push(torrent.events());
        sessions.push(session);
    }
    // Five announce rounds: every seed hears of every other one each round.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut connections = 0;
    for rx in &mut events {
        while let Ok(event) = rx.try_recv() {
            if matches!(event, TorrentEvent::PeerConnected { .. }) {
                connections += 1;
            }
        }
    }
    // Each pair may meet once from each side (both dial when the tracker first names the
    // other); each connection is counted on both of its ends.
    let pairs = SEEDS * (SEEDS - 1) / 2;
    println!("{connections} connection ends between {SEEDS} seeds in 10 s");
    assert!(
        connections <= 2 * 2 * pairs,
        "{connections} connection ends between {SEEDS} seeds"
    );
    for session in sessions {
        session.shutdown().await;
    }
}
