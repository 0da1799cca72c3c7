//! End-to-end tests on loopback: server, client, announcer, and raw HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::{InfoHash, PeerId};

const HASH: InfoHash = InfoHash([0xab; 20]);
/// Generous bound on waits that normally take milliseconds (or one announce interval).
const PATIENCE: Duration = Duration::from_secs(10);

fn params(peer: u8, port: u16, event: Event) -> AnnounceParams {
    AnnounceParams {
        info_hash: HASH,
        peer_id: PeerId([peer; 20]),
        port,
        uploaded: 0,
        downloaded: 0,
        left: 1000,
        event,
        numwant: None,
        ip: None,
    }
}

async fn server(config: TrackerConfig) -> TrackerServer {
    TrackerServer::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test]
async fn two_clients_see_each_other() {
    let server = server(TrackerConfig::default()).await;
    let url = server.announce_url();

    let a = announce(&url, &params(1, 1001, Event::Started))
        .await
        .unwrap();
    assert!(a.peers.is_empty());
    assert_eq!(a.interval, Duration::from_secs(60));
    assert_eq!(a.min_interval, Some(Duration::from_secs(30)));

    let mut seed = params(2, 1002, Event::Started);
    seed.left = 0;
    let b = announce(&url, &seed).await.unwrap();
    assert_eq!(b.peers, [local(1001)]);
    assert_eq!((b.complete, b.incomplete), (Some(1), Some(1)));

    let a = announce(&url, &params(1, 1001, Event::None)).await.unwrap();
    assert_eq!(a.peers, [local(1002)]);
    assert_eq!(server.peer_count(&HASH), 2);

    announce(&url, &params(1, 1001, Event::Stopped))
        .await
        .unwrap();
    assert_eq!(server.peer_count(&HASH), 1);
}

#[tokio::test]
async fn advertised_ip_is_handed_out_when_the_tracker_trusts_it() {
    let server = server(TrackerConfig {
        trust_ip_param: true,
        ..TrackerConfig::default()
    })
    .await;
    let url = server.announce_url();
    let mut a = params(1, 1001, Event::Started);
    a.ip = Some("10.20.30.40".parse().unwrap());
    announce(&url, &a).await.unwrap();
    let mut b = params(2, 1002, Event::Started);
    b.ip = Some("fd00::7".parse().unwrap());
    let reply = announce(&url, &b).await.unwrap();
    assert_eq!(
        reply.peers,
        ["10.20.30.40:1001".parse::<SocketAddr>().unwrap()]
    );
    // An IPv6 peer arrives through `peers6`.
    let reply = announce(&url, &params(3, 1003, Event::Started))
        .await
        .unwrap();
    let mut got = reply.peers;
    got.sort();
    assert_eq!(
        got,
        [
            "10.20.30.40:1001".parse().unwrap(),
            "[fd00::7]:1002".parse().unwrap()
        ]
    );
}

#[tokio::test]
async fn tracker_failure_reaches_the_client() {
    let config = TrackerConfig {
        max_torrents: 0,
        ..TrackerConfig::default()
    };
    let server = server(config).await;
    let err = announce(&server.announce_url(), &params(1, 1001, Event::Started))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TrackerError::Failure(ref r) if r == "tracker is full"),
        "{err}"
    );
}

/// Send a raw HTTP/1.1 request and return (status line, body).
async fn raw_get(addr: SocketAddr, target: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: libtorrent/2.0.10.0\r\n\
         Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, response[split + 4..].to_vec())
}

#[tokio::test]
async fn raw_libtorrent_style_request_gets_a_bencoded_dict() {
    let server = server(TrackerConfig::default()).await;
    announce(&server.announce_url(), &params(1, 1001, Event::Started))
        .await
        .unwrap();
    // As libtorrent writes it: every extra key, lower- and upper-case escapes, literal bytes.
    let query = "info_hash=%ab%AB%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab%ab\
                 &peer_id=-lt20A0-%00%ff%80abcdefgh%2b&port=6881&uploaded=0&downloaded=0\
                 &left=0&corrupt=0&key=6A1B2C3D&event=started&numwant=200&compact=1\
                 &no_peer_id=1&supportcrypto=1&redundant=0&requirecrypto=0\
                 &ipv6=fd00%3a%3a9&ipv4=10.0.0.9&trackerid=&unknown_future_key=1";
    let (status, body) = raw_get(server.local_addr(), &format!("/announce?{query}")).await;
    assert!(status.contains(" 200 "), "{status}");
    let reply = decode_response(&body).unwrap();
    assert_eq!(reply.peers, [local(1001)]);
    assert_eq!((reply.complete, reply.incomplete), (Some(1), Some(1)));
    assert_eq!(server.peer_count(&HASH), 2);

    // Non-compact, on explicit request: a list of dicts with peer ids.
    let query = query
        .replace("compact=1", "compact=0")
        .replace("&no_peer_id=1", "");
    let (_, body) = raw_get(server.local_addr(), &format!("/announce?{query}")).await;
    // A seed (`left=0`) is told the seed interval.
    assert!(body.starts_with(b"d8:completei1e10:incompletei1e8:intervali300e"));
    assert!(
        body.windows(9).any(|w| w == b"5:peersld"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(body.windows(9).any(|w| w == b"7:peer id"));
    assert_eq!(decode_response(&body).unwrap().peers, [local(1001)]);
}

#[tokio::test]
async fn bad_requests_are_answered_not_dropped() {
    let server = server(TrackerConfig::default()).await;
    let addr = server.local_addr();
    let (status, body) = raw_get(addr, "/announce?peer_id=ABCDEFGHIJKLMNOPQRST&port=1").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        decode_response(&body),
        Err(ResponseError::Failure("missing info_hash".into()))
    );
    let (status, _) = raw_get(addr, "/scrape?info_hash=x").await;
    assert!(status.contains(" 404 "), "{status}");
    let (status, _) = raw_get(addr, "/").await;
    assert!(status.contains(" 404 "), "{status}");
    // A request head beyond the buffer limit is refused: an error status, or a reset if the
    // server closed while our request was still arriving. Never a 200.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let huge = format!("GET /announce?{} HTTP/1.1\r\n\r\n", "a".repeat(64 * 1024));
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server kept an oversized request open");
    assert!(!response.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn client_rejects_other_schemes() {
    let p = params(1, 1, Event::None);
    for url in ["https://127.0.0.1/announce", "udp://127.0.0.1:6969"] {
        let err = announce(url, &p).await.unwrap_err();
        assert!(matches!(err, TrackerError::UnsupportedScheme(_)), "{err}");
    }
}

#[tokio::test]
async fn client_times_out_on_a_silent_tracker() {
    // Connections complete in the listen backlog, but nobody ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/announce", listener.local_addr().unwrap());
    let err = announce_with_timeout(&url, &params(1, 1, Event::None), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, TrackerError::Timeout), "{err}");
}

#[tokio::test]
async fn client_bounds_the_reply_while_reading() {
    // A tracker that streams an endless body without Content-Length.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/announce", listener.local_addr().unwrap());
    let hostile = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = stream.read(&mut head).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nd5:peers")
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        // Ends when the client hangs up.
        while stream.write_all(&chunk).await.is_ok() {}
    });
    let err = announce(&url, &params(1, 1, Event::None))
        .await
        .unwrap_err();
    assert!(matches!(err, TrackerError::ResponseTooLarge), "{err}");
    tokio::time::timeout(PATIENCE, hostile)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn announcer_fails_over_reannounces_completes_and_stops() {
    let config = TrackerConfig {
        interval: Duration::from_secs(1),
        peer_ttl: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let server = server(config).await;
    let url = server.announce_url();
    // Another peer, so every reply to the announcer carries a peer list.
    announce(&url, &params(2, 2002, Event::Started))
        .await
        .unwrap();

    let left = Arc::new(AtomicU64::new(1000));
    let stats = Arc::clone(&left);
    // The closure logs each event it is asked for; with every reply carrying a peer, the
    // k-th peer batch answers the k-th logged event.
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (peers_tx, mut peers_rx) = mpsc::channel(8);
    let urls = vec![
        "udp://127.0.0.1:1/announce".to_owned(),
        "http://127.0.0.1:1/announce".to_owned(),
        url.clone(),
    ];
    let handle = Announcer::new(urls)
        .interval_floor(Duration::from_millis(100))
        .request_timeout(Duration::from_secs(2))
        .spawn(
            move |event| {
                let _ = events_tx.send(event);
                AnnounceParams {
                    left: stats.load(Ordering::Relaxed),
                    ..params(1, 1001, event)
                }
            },
            peers_tx,
        );
    let mut next_reply = async || {
        let peers = tokio::time::timeout(PATIENCE, peers_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peers, [local(2002)]);
        events_rx.try_recv().unwrap()
    };

    // `started` at once (after failing over), then a re-announce after the 1 s interval.
    assert_eq!(next_reply().await, Event::Started);
    assert_eq!(next_reply().await, Event::None);
    assert_eq!(server.peer_count(&HASH), 2);

    left.store(0, Ordering::Relaxed);
    handle.completed();
    while next_reply().await != Event::Completed {}
    let view = announce(&url, &params(2, 2002, Event::None)).await.unwrap();
    assert_eq!((view.complete, view.incomplete), (Some(1), Some(1)));

    handle.stop().await;
    assert_eq!(server.peer_count(&HASH), 1);
    assert_eq!(events_rx.try_recv(), Ok(Event::Stopped));
}

/// The tracker registers the address an announce comes from, not the one `ip=` names; the
/// client makes its `ip` that address by connecting from it when it is one of ours.
#[tokio::test]
async fn peers_are_handed_out_at_their_source_address_not_their_ip_param() {
    let server = server(TrackerConfig::default()).await;
    let url = server.announce_url();
    // Not one of our addresses: sent as `ip=`, which the tracker ignores.
    let mut liar = params(1, 80, Event::Started);
    liar.ip = Some("169.254.169.254".parse().unwrap());
    announce(&url, &liar).await.unwrap();
    // One of ours (all of 127.0.0.0/8 is loopback on Linux): the client connects from it.
    let mut multi_homed = params(2, 1002, Event::Started);
    multi_homed.ip = Some("127.0.0.3".parse().unwrap());
    announce(&url, &multi_homed).await.unwrap();

    let reply = announce(&url, &params(3, 1003, Event::Started))
        .await
        .unwrap();
    let mut peers = reply.peers.clone();
    peers.sort();
    assert_eq!(
        peers,
        [local(80), SocketAddr::from(([127, 0, 0, 3], 1002))],
        "the tracker handed out an address the announce did not come from"
    );
}
