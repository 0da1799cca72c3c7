//! BEP 9 on loopback: torrents added from magnet links (peers in `x.pe`, or found through a
//! tracker), the info dict checked against the info-hash (a peer serving a wrong one is
//! passed over), and our seeds serving metadata within bounds to a raw client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imagewolf_bt::metainfo::{Metainfo, TorrentBuilder};
use imagewolf_bt::storage::MemoryStorage;
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};
use imagewolf_bt::wire::metadata::{MetadataMessage, OUR_UT_METADATA_ID, UT_METADATA};
use imagewolf_bt::wire::{
    DecoderLimits, ExtensionHandshake, Handshake, Message, MessageDecoder, EXTENDED_HANDSHAKE_ID,
};
use imagewolf_bt::{AddTorrent, Error, InfoHash, Magnet, PeerId, Session, StartFrom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn payload(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn session() -> Session {
    Session::builder()
        .listen_addr("127.0.0.1:0".parse().unwrap())
        .build()
        .await
        .unwrap()
}

async fn seed(meta: &Metainfo, data: &[u8]) -> Session {
    let s = session().await;
    let storage = Arc::new(MemoryStorage::from_vec(data.to_vec()));
    s.add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Complete))
        .await
        .unwrap();
    s
}

/// A scratch directory, removed on drop.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_magnet_link_with_a_peer_downloads_the_torrent() {
    // Many pieces, so the info dict spans several 16 KiB metadata pieces.
    let data = payload(8 << 20);
    let meta = TorrentBuilder::new("big.bin")
        .piece_length(4 * 1024)
        .build_from_reader(&data[..], data.len() as u64, std::io::sink())
        .unwrap();
    assert!(
        meta.info_bytes().len() > 2 * 16 * 1024,
        "{}",
        meta.info_bytes().len()
    );
    let seed = seed(&meta, &data).await;
    let scratch = Scratch::new("magnet");
    let node = session().await;
    let link = Magnet::new(meta.info_hash(), [seed.listen_addr()]).to_string();
    let torrent = node.add_magnet(&link, &scratch.0).await.unwrap();
    assert_eq!(torrent.info_hash(), meta.info_hash());
    assert_eq!(torrent.metainfo().info_bytes(), meta.info_bytes());
    torrent
        .wait_complete_within(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(std::fs::read(scratch.0.join("big.bin")).unwrap() == data);
    node.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_magnet_link_with_only_a_tracker_finds_the_seed() {
    let tracker = TrackerServer::bind("127.0.0.1:0".parse().unwrap(), TrackerConfig::default())
        .await
        .unwrap();
    let data = payload(1 << 20);
    let meta = TorrentBuilder::new("t.bin")
        .announce(tracker.announce_url())
        .build_from_reader(&data[..], data.len() as u64, std::io::sink())
        .unwrap();
    let seed = seed(&meta, &data).await;
    // The seed announces on start; wait until the tracker knows it.
    let probe = imagewolf_bt::tracker::AnnounceParams {
        info_hash: meta.info_hash(),
        peer_id: PeerId::generate(),
        port: 1,
        uploaded: 0,
        downloaded: 0,
        left: 1,
        event: imagewolf_bt::tracker::Event::None,
        numwant: None,
        ip: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = imagewolf_bt::tracker::announce(&tracker.announce_url(), &probe)
            .await
            .unwrap();
        if reply.peers.contains(&seed.listen_addr()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the seed never announced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let link = format!(
        "magnet:?xt=urn:btih:{}&dn=t.bin&tr={}",
        meta.info_hash().to_hex(),
        tracker
            .announce_url()
            .replace(':', "%3A")
            .replace('/', "%2F")
    );
    let scratch = Scratch::new("magnet-tr");
    let node = session().await;
    let torrent = node.add_magnet(&link, &scratch.0).await.unwrap();
    assert_eq!(torrent.metainfo().announce_urls(), [tracker.announce_url()]);
    torrent
        .wait_complete_within(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(std::fs::read(scratch.0.join("t.bin")).unwrap() == data);
    node.shutdown().await;
    seed.shutdown().await;
}

/// A peer that speaks the handshakes and serves `info` as metadata for `info_hash`,
/// whatever it hashes to.
async fn metadata_server(info_hash: InfoHash, info: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let info = info.clone();
            tokio::spawn(async move {
                let mut hs = [0u8; 68];
                stream.read_exact(&mut hs).await?;
                stream
                    .write_all(&Handshake::new(info_hash, PeerId::generate()).encode())
                    .await?;
                let ext = ExtensionHandshake {
                    m: [(UT_METADATA.to_owned(), 7)].into(),
                    metadata_size: Some(info.len() as u64),
                    ..ExtensionHandshake::default()
                };
                let mut out = BytesMut::new();
                Message::Extended {
                    id: EXTENDED_HANDSHAKE_ID,
                    payload: ext.encode(),
                }
                .encode(&mut out);
                stream.write_all(&out).await?;
                let mut decoder = MessageDecoder::new(DecoderLimits::default());
                let mut buf = BytesMut::new();
                loop {
                    while let Some(msg) = decoder.decode(&mut buf).unwrap() {
                        if let Message::Extended { id: 7, payload } = msg {
                            if let MetadataMessage::Request { piece } =
                                MetadataMessage::decode(&payload).unwrap()
                            {
                                let answer =
                                    imagewolf_bt::wire::metadata::serve_metadata(&info, piece);
                                let mut out = BytesMut::new();
                                Message::Extended {
                                    id: OUR_UT_METADATA_ID,
                                    payload: answer.encode(),
                                }
                                .encode(&mut out);
                                stream.write_all(&out).await?;
                            }
                        }
                    }
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_that_does_not_match_the_info_hash_is_refused() {
    let data = payload(300_000);
    let meta = TorrentBuilder::new("m.bin")
        .build_from_reader(&data[..], data.len() as u64, std::io::sink())
        .unwrap();
    let mut forged = meta.info_bytes().to_vec();
    let last = forged.len() - 2;
    forged[last] ^= 1; // a flipped bit inside the piece hashes
    let liar = metadata_server(meta.info_hash(), forged).await;
    let node = session().await;
    let refused = node
        .fetch_metadata(&Magnet::new(meta.info_hash(), [liar]))
        .await;
    match refused {
        Err(Error::Metadata(why)) => assert!(why.contains("does not match"), "{why}"),
        other => panic!("forged metadata taken: {:?}", other.map(|m| m.info_hash())),
    }
    // With an honest peer too, the honest one's metadata is taken.
    let seed = seed(&meta, &data).await;
    let fetched = node
        .fetch_metadata(&Magnet::new(meta.info_hash(), [liar, seed.listen_addr()]))
        .await
        .unwrap();
    assert_eq!(fetched.info_bytes(), meta.info_bytes());
    node.shutdown().await;
    seed.shutdown().await;
}

/// Sends an Extended message.
async fn send_ext(stream: &mut TcpStream, id: u8, payload: Bytes) {
    let mut out = BytesMut::new();
    Message::Extended { id, payload }.encode(&mut out);
    stream.write_all(&out).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_seed_serves_metadata_and_rejects_what_it_should() {
    // 4096 pieces: 80 KiB of piece hashes, five metadata pieces.
    let data = payload(1 << 20);
    let meta = TorrentBuilder::new("s.bin")
        .piece_length(256)
        .build_from_reader(&data[..], data.len() as u64, std::io::sink())
        .unwrap();
    let info = meta.info_bytes().to_vec();
    let pieces = info.len().div_ceil(16 * 1024) as u32;
    let seed = seed(&meta, &data).await;
    let mut stream = TcpStream::connect(seed.listen_addr()).await.unwrap();
    stream
        .write_all(&Handshake::new(meta.info_hash(), PeerId([b'x'; 20])).encode())
        .await
        .unwrap();
    let mut hs = [0u8; 68];
    stream.read_exact(&mut hs).await.unwrap();
    let hello = ExtensionHandshake {
        m: [(UT_METADATA.to_owned(), 9)].into(),
        ..ExtensionHandshake::default()
    };
    send_ext(&mut stream, EXTENDED_HANDSHAKE_ID, hello.encode()).await;
    // Every piece, one past the end, a huge index, then a flood far beyond what anyone
    // fetching needs.
    let flood = 200u32;
    for piece in (0..pieces)
        .chain([pieces, u32::MAX])
        .chain((0..flood).map(|i| i % pieces))
    {
        // Sent under the id the seed's handshake names (ours, whoever runs the engine).
        let request = MetadataMessage::Request { piece }.encode();
        send_ext(&mut stream, OUR_UT_METADATA_ID, request).await;
    }
    let mut decoder = MessageDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::new();
    let mut size = None;
    let mut got = vec![None; pieces as usize];
    let (mut served, mut rejected) = (0u32, Vec::new());
    let total = pieces + 2 + flood;
    tokio::time::timeout(Duration::from_secs(10), async {
        while served + (rejected.len() as u32) < total {
            while let Some(msg) = decoder.decode(&mut buf).unwrap() {
                let Message::Extended { id, payload } = msg else {
                    continue;
                };
                if id == EXTENDED_HANDSHAKE_ID {
                    let hs = ExtensionHandshake::decode(&payload).unwrap();
                    assert_eq!(hs.extension_id(UT_METADATA), Some(OUR_UT_METADATA_ID));
                    size = hs.metadata_size;
                    continue;
                }
                assert_eq!(id, 9, "answers go to the id we asked under");
                match MetadataMessage::decode(&payload).unwrap() {
                    MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    } => {
                        assert_eq!(total_size, info.len() as u64);
                        got[piece as usize] = Some(data);
                        served += 1;
                    }
                    MetadataMessage::Reject { piece } => rejected.push(piece),
                    MetadataMessage::Request { .. } => panic!("the seed asked us"),
                }
            }
            if served + (rejected.len() as u32) < total {
                assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "seed hung up");
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not every request was answered: {served} served, {} rejected of {total}",
            rejected.len()
        )
    });
    assert_eq!(size, Some(info.len() as u64));
    let assembled: Vec<u8> = got.into_iter().flat_map(|p| p.unwrap().to_vec()).collect();
    assert_eq!(assembled, info);
    assert!(rejected.contains(&pieces) && rejected.contains(&u32::MAX));
    // Bounded: at most twice the pieces plus a few are ever served to one connection.
    assert!(
        served <= 2 * pieces + 8,
        "served {served} of {pieces} pieces"
    );
    println!(
        "{pieces} metadata pieces: served {served}, rejected {}",
        rejected.len()
    );
    seed.shutdown().await;
}
