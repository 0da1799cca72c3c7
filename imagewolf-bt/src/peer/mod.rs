//! Peer connections: handshake, then a reader and a writer driving the sans-IO codec over a
//! TCP socket.
//!
//! One tokio task per connection runs both halves (`tokio::join!`): the [`reader`] decodes
//! and acts on what the peer sends, the [`writer`] sends what the [`PeerLink`] queues and
//! serves the peer's requests from storage. They share only the link. Reading and writing
//! concurrently matters: two peers uploading to each other with full socket buffers would
//! deadlock if either stopped reading while it wrote.

mod handler;
mod link;
pub(crate) mod pipeline;
mod reader;
mod writer;

pub(crate) use handler::{AnnounceOutcome, Announced, Hello, PeerHandler, Refusal};
pub(crate) use link::PeerLink;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::DisconnectReason;
use crate::wire::{ExtensionHandshake, Handshake, Message, WireError};

/// Why a connection ended. Every variant is fatal for that one connection only; the
/// public face of it is [`DisconnectReason`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// Socket error or the peer closed the connection.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the wire protocol (bad framing, sizes, handshake).
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    /// The peer sent something well-formed but not allowed here.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer went silent, or never finished the handshake.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// It was closed (by the peer, or by us: ban, duplicate, torrent stopping, ...).
    #[error("{0}")]
    Closed(DisconnectReason),
}

impl PeerError {
    /// The public reason.
    pub(crate) fn reason(&self) -> DisconnectReason {
        match self {
            PeerError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                DisconnectReason::PeerClosed
            }
            PeerError::Io(e) => DisconnectReason::Io(e.kind()),
            PeerError::Wire(e) => DisconnectReason::Protocol(e.to_string()),
            PeerError::Protocol(what) => DisconnectReason::Protocol(what.clone()),
            PeerError::Timeout(what) => DisconnectReason::Timeout(what),
            PeerError::Closed(reason) => reason.clone(),
        }
    }
}

/// Dials `addr` for the torrent `handler` stands for, handshakes, and runs the connection
/// until it ends.
pub(crate) async fn dial<H: PeerHandler>(handler: Arc<H>, addr: SocketAddr) {
    let config = handler.config();
    let timeout = config.handshake_timeout;
    let info_hash = handler.info_hash();
    let ours = Handshake::new(info_hash, config.peer_id);
    let bulk = config.bulk_traffic;
    let attempt = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        tune_socket(&stream, bulk);
        stream.write_all(&ours.encode()).await?;
        let mut buf = [0u8; Handshake::LEN];
        stream.read_exact(&mut buf).await?;
        let theirs = Handshake::decode(&buf)?;
        if theirs.info_hash != info_hash {
            return Err(PeerError::Protocol(
                "peer answered for another torrent".into(),
            ));
        }
        Ok::<_, PeerError>((stream, theirs))
    })
    .await
    .unwrap_or(Err(PeerError::Timeout("handshake")));
    handler.dial_finished(addr, attempt.is_ok());
    match attempt {
        Ok((stream, theirs)) => run(handler, stream, theirs, Some(addr)).await,
        Err(e) => tracing::debug!(%addr, "dial failed: {e}"),
    }
}

/// Runs a connection the session accepted, whose handshake named this torrent. Sends our
/// handshake back, then runs it like any other.
pub(crate) async fn accepted<H: PeerHandler>(
    handler: Arc<H>,
    mut stream: TcpStream,
    theirs: Handshake,
) {
    let ours = Handshake::new(handler.info_hash(), handler.config().peer_id);
    let sent = tokio::time::timeout(
        handler.config().handshake_timeout,
        stream.write_all(&ours.encode()),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    run(handler, stream, theirs, None).await;
}

/// The connection after both handshakes: admission, the first messages, then the reader and
/// writer until either ends.
async fn run<H: PeerHandler>(
    handler: Arc<H>,
    stream: TcpStream,
    theirs: Handshake,
    dial_addr: Option<SocketAddr>,
) {
    if theirs.peer_id == handler.config().peer_id {
        return; // We dialled ourselves (our own address came back from the tracker).
    }
    let Ok(addr) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    tune_socket(&stream, handler.config().bulk_traffic);
    let hello = Hello {
        addr,
        peer_id: theirs.peer_id,
        dial_addr,
        fast: theirs.supports_fast(),
        extension_handshake: theirs
            .supports_extended()
            .then(|| extension_handshake(&*handler, addr)),
    };
    let link = match handler.join(hello) {
        Ok(link) => link,
        Err(refusal) => {
            tracing::debug!(%addr, "refused: {refusal}");
            return;
        }
    };
    let (read, write) = stream.into_split();
    let reader = reader::Reader::new(Arc::clone(&handler), Arc::clone(&link), read, theirs);
    let (read_result, write_result) = tokio::join!(
        async {
            let r = reader.run().await;
            // Whatever ended the reader ends the writer too.
            link.close(
                r.as_ref()
                    .map_or_else(PeerError::reason, |()| DisconnectReason::Closed),
            );
            r
        },
        async {
            let w = writer::run(&*handler, &link, write).await;
            link.close(
                w.as_ref()
                    .map_or_else(PeerError::reason, |()| DisconnectReason::Closed),
            );
            w
        }
    );
    let reason = link
        .closing
        .borrow()
        .clone()
        .or_else(|| read_result.err().map(|e| e.reason()))
        .or_else(|| write_result.err().map(|e| e.reason()))
        .unwrap_or(DisconnectReason::Closed);
    tracing::debug!(%addr, "disconnected: {reason}");
    handler.left(&link, dial_addr, reason);
}

/// Most bytes the kernel holds unsent on a peer socket (`TCP_NOTSENT_LOWAT`).
///
/// Both directions of a connection carry piece data and control messages (requests, HAVEs)
/// in one byte stream. Left alone, the kernel lets hundreds of KiB of unsent piece data
/// build up per socket (measured with `ss -tmi` on the 16-node cluster bench: 100-700 KiB,
/// 0.3-0.8 s at each connection's share of a 50 Mbit/s link), and every request or HAVE
/// we send queues behind it: the peer learns late what we want and what we have, so each
/// hop of a fresh piece through the swarm costs that delay. With the unsent queue kept
/// short, our writer (which sends control messages before the next chunk of piece data)
/// decides the order. Bytes in flight (sent, not yet acknowledged) are not limited, so the
/// congestion window still fills.
const NOTSENT_LOWAT: u32 = 64 * 1024;

/// The DSCP "Lower Effort" code point (RFC 8622) in the IP header's TOS / traffic class
/// byte (the DSCP sits in its upper six bits).
const TOS_LOWER_EFFORT: u32 = 1 << 2;

/// Linux's `TC_PRIO_BULK`: `pfifo_fast` (and `prio`) queue it in their last band.
const TC_PRIO_BULK: u32 = 2;

/// Socket options of every peer connection: the unsent-bytes limit ([`NOTSENT_LOWAT`]) and,
/// with [`crate::SessionConfig::bulk_traffic`], the bulk marking. Best effort: a platform or
/// sandbox that refuses an option leaves the connection as it is.
fn tune_socket(stream: &TcpStream, bulk: bool) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let socket = socket2::SockRef::from(stream);
        if let Err(e) = socket.set_tcp_notsent_lowat(NOTSENT_LOWAT) {
            tracing::debug!("TCP_NOTSENT_LOWAT: {e}");
        }
        if bulk {
            // IP_TOS also resets the socket priority (from the TOS bits), so it goes first.
            let tos = match stream.local_addr() {
                Ok(std::net::SocketAddr::V6(_)) => socket.set_tclass_v6(TOS_LOWER_EFFORT),
                _ => socket.set_tos_v4(TOS_LOWER_EFFORT),
            };
            if let Err(e) = tos.and_then(|()| socket.set_priority(TC_PRIO_BULK)) {
                tracing::debug!("marking peer traffic as bulk: {e}");
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, bulk);
}

/// Our BEP 10 handshake: `ut_metadata` (BEP 9, serving our info dict), a large `reqq` (libtorrent caps its queue
/// to us at this), our listen port, and the address we see the peer at.
fn extension_handshake<H: PeerHandler>(handler: &H, addr: SocketAddr) -> Message {
    let yourip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    let hs = ExtensionHandshake {
        v: Some(concat!("ImageWolf ", env!("CARGO_PKG_VERSION")).into()),
        p: Some(handler.listen_port()),
        reqq: Some(handler.config().max_queued_peer_requests as u32),
        yourip: Some(yourip),
        m: std::collections::BTreeMap::from([(
            crate::wire::metadata::UT_METADATA.to_owned(),
            crate::wire::metadata::OUR_UT_METADATA_ID,
        )]),
        metadata_size: handler.metadata().map(|m| m.len() as u64),
    };
    Message::Extended {
        id: crate::wire::EXTENDED_HANDSHAKE_ID,
        payload: hs.encode(),
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    async fn connected_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (dialled.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bulk_marking_sets_lower_effort_and_the_bulk_priority() {
        let (a, b) = connected_pair().await;
        tune_socket(&a, true);
        tune_socket(&b, false);
        let marked = socket2::SockRef::from(&a);
        assert_eq!(marked.tos_v4().unwrap(), TOS_LOWER_EFFORT);
        // Setting IP_TOS after the priority would have reset it to best effort (0).
        assert_eq!(marked.priority().unwrap(), TC_PRIO_BULK);
        assert_eq!(marked.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT);
        let plain = socket2::SockRef::from(&b);
        assert_eq!(plain.tos_v4().unwrap(), 0);
        assert_eq!(plain.priority().unwrap(), 0);
        assert_eq!(plain.tcp_notsent_lowat().unwrap(), NOTSENT_LOWAT);
    }
}
