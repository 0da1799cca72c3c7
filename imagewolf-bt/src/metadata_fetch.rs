//! Fetching a torrent's info dict from peers (BEP 9), for a torrent known only by its
//! info-hash (a magnet link). Runs before the torrent exists: short connections of their
//! own that speak only the handshakes and `ut_metadata`, then close; the torrent is then
//! added as usual and connects again for the payload.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use crate::tracker::{AnnounceParams, Event};
use crate::wire::metadata::{MetadataAssembler, MetadataMessage, OUR_UT_METADATA_ID, UT_METADATA};
use crate::wire::{
    DecoderLimits, ExtensionHandshake, Handshake, Message, MessageDecoder, EXTENDED_HANDSHAKE_ID,
};
use crate::{Error, InfoHash, PeerId, SessionConfig};

/// Peers asked at once.
const PARALLEL: usize = 8;
/// Metadata requests outstanding at one peer.
const PIPELINE: usize = 8;
/// Tries more after a connection-level failure.
const RETRIES: u32 = 2;
/// A peer that sends nothing for this long is given up.
const SILENCE: Duration = Duration::from_secs(20);

/// Fetches and checks the info dict of `magnet` from its peers and those its trackers
/// name; returns the torrent, with the link's trackers.
pub(crate) async fn fetch(
    config: &SessionConfig,
    listen_port: u16,
    magnet: &Magnet,
) -> Result<Metainfo, Error> {
    let mut peers = magnet.peers.clone();
    let mut problems = Vec::new();
    for url in &magnet.trackers {
        let params = AnnounceParams {
            info_hash: magnet.info_hash,
            peer_id: config.peer_id,
            port: listen_port,
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: Event::None,
            numwant: Some(50),
            ip: config.announce_ip,
        };
        match crate::tracker::announce(url, &params).await {
            Ok(reply) => peers.extend(reply.peers),
            Err(e) => problems.push(format!("{url}: {e}")),
        }
    }
    peers.dedup();
    let mut pending = peers.into_iter();
    let mut tasks = JoinSet::new();
    // A fresh id for these short connections: the torrent's own connections to the same
    // peers follow at once, and a peer still holding one of ours under the session's id
    // would refuse them as duplicates.
    let fetch_id = PeerId::generate();
    let timeout = config.handshake_timeout;
    let spawn = |tasks: &mut JoinSet<_>, peer: SocketAddr| {
        let info_hash = magnet.info_hash;
        tasks.spawn(async move {
            // A peer that refuses or resets the connection may be starting up (libtorrent
            // resets connections for a torrent it has not started yet): a few tries, 1, 2 s
            // apart. A peer that answered wrongly is not asked again.
            let mut attempt = 0;
            loop {
                match fetch_from(peer, info_hash, fetch_id, timeout).await {
                    Err(Failure::Connection(e)) if attempt < RETRIES => {
                        tracing::debug!(%peer, "metadata fetch: {e}; trying again");
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                        attempt += 1;
                    }
                    result => return (peer, result.map_err(Failure::into_message)),
                }
            }
        });
    };
    for peer in pending.by_ref().take(PARALLEL) {
        spawn(&mut tasks, peer);
    }
    while let Some(done) = tasks.join_next().await {
        let Ok((peer, result)) = done else { continue };
        match result {
            Ok(info) => {
                tasks.abort_all();
                let mut meta = Metainfo::from_info_bytes(&info)?;
                meta.announce_list = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
                return Ok(meta);
            }
            Err(e) => {
                tracing::debug!(%peer, "no metadata: {e}");
                problems.push(format!("{peer}: {e}"));
                if let Some(next) = pending.next() {
                    spawn(&mut tasks, next);
                }
            }
        }
    }
    Err(Error::Metadata(if problems.is_empty() {
        "no peers to ask".to_owned()
    } else {
        problems.join("; ")
    }))
}

/// Why one peer gave us no metadata.
enum Failure {
    /// Connecting, the handshake or the socket failed: worth another try.
    Connection(String),
    /// The peer answered, wrongly or not at all usefully.
    Answer(String),
}

impl Failure {
    fn into_message(self) -> String {
        match self {
            Failure::Connection(e) | Failure::Answer(e) => e,
        }
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Answer(e)
    }
}

impl From<&str> for Failure {
    fn from(e: &str) -> Self {
        Failure::Answer(e.to_owned())
    }
}

fn io(e: std::io::Error) -> Failure {
    Failure::Connection(e.to_string())
}

/// The info dict from one peer, checked against `info_hash`.
async fn fetch_from(
    addr: SocketAddr,
    info_hash: InfoHash,
    peer_id: PeerId,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let mut stream = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(&Handshake::new(info_hash, peer_id).encode())
            .await?;
        let mut buf = [0u8; Handshake::LEN];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>((stream, buf))
    })
    .await
    .map_err(|_| Failure::Connection("handshake timed out".to_owned()))?
    .map_err(io)
    .and_then(|(stream, buf)| {
        let theirs = Handshake::decode(&buf).map_err(|e| e.to_string())?;
        if theirs.info_hash != info_hash {
            return Err("peer answered for another torrent".into());
        }
        if !theirs.supports_extended() {
            return Err("peer does not support extensions (BEP 10)".into());
        }
        Ok(stream)
    })?;
    let hello = ExtensionHandshake {
        m: [(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)].into(),
        v: Some(concat!("ImageWolf ", env!("CARGO_PKG_VERSION")).into()),
        ..ExtensionHandshake::default()
    };
    let mut out = BytesMut::new();
    Message::Extended {
        id: EXTENDED_HANDSHAKE_ID,
        payload: hello.encode(),
    }
    .encode(&mut out);
    stream.write_all(&out).await.map_err(io)?;

    let mut decoder = MessageDecoder::new(DecoderLimits::default());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut assembler: Option<(MetadataAssembler, u8)> = None;
    let mut outstanding = 0usize;
    loop {
        while let Some(msg) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            let Message::Extended { id, payload } = msg else {
                continue; // Bitfields, HAVEs, chokes: nothing to do with metadata.
            };
            if id == EXTENDED_HANDSHAKE_ID && assembler.is_none() {
                let hs = ExtensionHandshake::decode(&payload).map_err(|e| e.to_string())?;
                let their_id = hs
                    .extension_id(UT_METADATA)
                    .ok_or("peer does not serve metadata (no ut_metadata)")?;
                let size = hs
                    .metadata_size
                    .ok_or("peer did not say its metadata_size")?;
                let a = MetadataAssembler::new(size).map_err(|e| e.to_string())?;
                assembler = Some((a, their_id));
            } else if id == OUR_UT_METADATA_ID {
                let Some((a, _)) = assembler.as_mut() else {
                    continue;
                };
                match MetadataMessage::decode(&payload).map_err(|e| e.to_string())? {
                    MetadataMessage::Data {
                        piece,
                        total_size,
                        data,
                    } => {
                        outstanding = outstanding.saturating_sub(1);
                        if a.on_data(piece, total_size, &data)
                            .map_err(|e| e.to_string())?
                        {
                            let (a, _) = assembler.take().ok_or("no assembler")?;
                            return a.finish(&info_hash).map_err(|e| e.to_string().into());
                        }
                    }
                    MetadataMessage::Reject { piece } => {
                        return Err(format!("peer rejected metadata piece {piece}").into());
                    }
                    // A peer asking us: we have nothing yet (our handshake gave no size).
                    MetadataMessage::Request { .. } => {}
                }
            }
        }
        if let Some((a, their_id)) = assembler.as_mut() {
            let mut requests = BytesMut::new();
            while outstanding < PIPELINE {
                let Some(piece) = a.next_request() else { break };
                outstanding += 1;
                Message::Extended {
                    id: *their_id,
                    payload: MetadataMessage::Request { piece }.encode(),
                }
                .encode(&mut requests);
            }
            if !requests.is_empty() {
                stream.write_all(&requests).await.map_err(io)?;
            }
        }
        buf.reserve(decoder.bytes_needed(&buf).max(16 * 1024));
        let n = tokio::time::timeout(SILENCE, stream.read_buf(&mut buf))
            .await
            .map_err(|_| Failure::Answer("peer went silent".to_owned()))?
            .map_err(io)?;
        if n == 0 {
            return Err(Failure::Connection("peer closed the connection".to_owned()));
        }
    }
}
