//! Faults and hostile peers against real sessions on loopback: the seed dies mid-swarm, a
//! downloader restarts, a peer takes requests and never answers, a peer sends garbage.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imagewolf::{random_payload, TempDir};
use imagewolf_bt::metainfo::{Metainfo, TorrentBuilder};
use imagewolf_bt::storage::{FileStorage, MemoryStorage, Storage};
use imagewolf_bt::wire::{BytesMut, Handshake, Message};
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom, TorrentEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn loopback() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::lan_cluster()
    }
}

fn build(payload: &[u8]) -> Metainfo {
    TorrentBuilder::new("p.bin")
        .piece_length(256 << 10)
        .build_from_reader(payload, payload.len() as u64, std::io::sink())
        .unwrap()
}

async fn seed(meta: &Metainfo, payload: &[u8]) -> Session {
    let s = Session::new(loopback()).await.unwrap();
    s.add_torrent(AddTorrent::new(
        meta.clone(),
        Arc::new(MemoryStorage::from_vec(payload.to_vec())),
        StartFrom::Complete,
    ))
    .await
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_dies_once_every_piece_exists_elsewhere_and_all_still_complete() {
    let payload = random_payload(48 << 20, 31);
    let meta = build(&payload);
    let seed = seed(&meta, &payload).await;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        let s = Session::new(loopback()).await.unwrap();
        let out = Arc::new(MemoryStorage::new(meta.total_len()));
        // No peers yet: the events are subscribed to first, so no verified piece is missed.
        let h = s
            .add_torrent(AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty))
            .await
            .unwrap();
        nodes.push((s, h, out));
    }
    let mut streams: Vec<_> = nodes.iter().map(|(_, h, _)| h.events()).collect();
    // Everyone must know everyone: without the seed there is no tracker to introduce them.
    let mut addrs: Vec<SocketAddr> = vec![seed.listen_addr()];
    addrs.extend(nodes.iter().map(|(s, _, _)| s.listen_addr()));
    for (_, h, _) in &nodes {
        h.add_peers(addrs.clone());
    }
    // Follow verified pieces until their union covers the torrent, then kill the seed.
    let mut seen = HashSet::new();
    let n = meta.lengths().num_pieces() as usize;
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < n {
            let next =
                futures::future::select_all(streams.iter_mut().map(|s| Box::pin(s.recv()))).await;
            if let (Ok(TorrentEvent::PieceVerified(p)), _, _) = next {
                seen.insert(p);
            }
        }
    })
    .await
    .expect("the pieces never all existed among the downloaders");
    let incomplete = nodes
        .iter()
        .filter(|(_, h, _)| !h.stats().is_complete())
        .count();
    seed.shutdown().await;
    eprintln!("seed stopped with {incomplete} of 6 downloaders incomplete");
    for (_, h, out) in &nodes {
        tokio::time::timeout(Duration::from_secs(60), h.wait_complete())
            .await
            .expect("a downloader did not complete without the seed")
            .unwrap();
        assert!(out.to_vec() == payload);
    }
    for (s, _, _) in nodes {
        s.shutdown().await;
    }
}

/// A payload served at about 16 MiB/s (1 ms per 16 KiB block read), so a transfer can be
/// caught in the middle.
struct SlowStorage(MemoryStorage);

impl Storage for SlowStorage {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(1));
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_downloader_resumes_from_what_it_verified() {
    let payload = random_payload(32 << 20, 32);
    let meta = build(&payload);
    let seed = Session::new(loopback()).await.unwrap();
    seed.add_torrent(AddTorrent::new(
        meta.clone(),
        Arc::new(SlowStorage(MemoryStorage::from_vec(payload.clone()))),
        StartFrom::Complete,
    ))
    .await
    .unwrap();
    let dir = TempDir::new("resume").unwrap();
    let path = dir.path().join("out.bin");

    let first = Session::new(loopback()).await.unwrap();
    let storage = Arc::new(FileStorage::create_file(&path, meta.total_len()).unwrap());
    let h = first
        .add_torrent(
            AddTorrent::new(meta.clone(), storage, StartFrom::Empty)
                .with_peers([seed.listen_addr()]),
        )
        .await
        .unwrap();
    let mut progress = h.progress();
    progress.wait_for(|s| s.progress() >= 0.5).await.unwrap();
    first.shutdown().await; // mid-transfer
    let had = h.stats().have_bytes;
    assert!(had > 0 && had < meta.total_len(), "stopped at {had}");

    let second = Session::new(loopback()).await.unwrap();
    let storage = Arc::new(FileStorage::create_file(&path, meta.total_len()).unwrap());
    let h = second
        .add_torrent(
            AddTorrent::new(meta.clone(), storage, StartFrom::Check)
                .with_peers([seed.listen_addr()]),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), h.wait_complete())
        .await
        .unwrap()
        .unwrap();
    let fetched = h.stats().downloaded;
    assert!(
        fetched + had <= meta.total_len() + (4 << 20),
        "restart fetched {fetched} bytes although {had} were already verified"
    );
    assert!(std::fs::read(&path).unwrap() == payload);
    second.shutdown().await;
    seed.shutdown().await;
}

/// A fake peer: handshakes, claims every piece, unchokes, then runs `behave` on the socket.
async fn fake_peer<F, Fut>(meta: &Metainfo, behave: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let info_hash = meta.info_hash();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut theirs = [0u8; 68];
        sock.read_exact(&mut theirs).await.unwrap();
        sock.write_all(&Handshake::new(info_hash, PeerId::generate()).encode())
            .await
            .unwrap();
        let mut out = BytesMut::new();
        Message::HaveAll.encode(&mut out);
        Message::Unchoke.encode(&mut out);
        sock.write_all(&out).await.unwrap();
        behave(sock).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_requests_does_not_stall_the_download() {
    let payload = random_payload(8 << 20, 33);
    let meta = build(&payload);
    // It takes requests and sends nothing back, ever (but keeps the connection open).
    let (asked_tx, asked_rx) = tokio::sync::oneshot::channel();
    let silent = fake_peer(&meta, |mut sock| async move {
        let mut sink = vec![0u8; 1 << 16];
        let mut asked = Some(asked_tx);
        while let Ok(n) = sock.read(&mut sink).await {
            if n == 0 {
                break;
            }
            // Request messages (id 6) arriving: the downloader now waits on this peer.
            if sink[..n].windows(5).any(|w| w == [0, 0, 0, 13, 6]) {
                if let Some(tx) = asked.take() {
                    let _ = tx.send(());
                }
            }
        }
    })
    .await;
    let honest = seed(&meta, &payload).await;
    let leech = Session::new(SessionConfig {
        snub_timeout: Duration::from_secs(2),
        ..loopback()
    })
    .await
    .unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    // The silent peer first: it holds requests before the honest one is even known.
    let h = leech
        .add_torrent(
            AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty).with_peers([silent]),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), asked_rx)
        .await
        .expect("the silent peer was never asked for anything")
        .unwrap();
    h.add_peers([honest.listen_addr()]);
    tokio::time::timeout(Duration::from_secs(30), h.wait_complete())
        .await
        .expect("the silent peer stalled the download")
        .unwrap();
    assert!(out.to_vec() == payload);
    leech.shutdown().await;
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_is_dropped_with_a_protocol_error() {
    let payload = random_payload(4 << 20, 34);
    let meta = build(&payload);
    let garbage = fake_peer(&meta, |mut sock| async move {
        // A frame that claims 2 GiB, then noise.
        let _ = sock.write_all(&[0x7f, 0xff, 0xff, 0xff, 7, 1, 2, 3]).await;
        let _ = sock.write_all(&random_payload(4096, 5)).await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = sock.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let honest = seed(&meta, &payload).await;
    let leech = Session::new(loopback()).await.unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    let h = leech
        .add_torrent(AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty))
        .await
        .unwrap();
    let mut events = h.events();
    h.add_peers([garbage]);
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(TorrentEvent::PeerDisconnected { addr, reason }) = events.recv().await {
                if addr == garbage {
                    return reason;
                }
            }
        }
    })
    .await
    .expect("the garbage peer was not dropped");
    assert!(
        matches!(reason, imagewolf_bt::DisconnectReason::Protocol(_)),
        "{reason}"
    );
    h.add_peers([honest.listen_addr()]);
    tokio::time::timeout(Duration::from_secs(30), h.wait_complete())
        .await
        .unwrap()
        .unwrap();
    assert!(out.to_vec() == payload);
    leech.shutdown().await;
    honest.shutdown().await;
}
