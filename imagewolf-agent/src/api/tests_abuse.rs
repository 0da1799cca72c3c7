//! Abuse of the API by a host on the network: floods of connections and bodies from one
//! source address, and agent routes called without (or with a replayed) cluster signature.
//! Several hosts are played from 127.0.0.0/8 source addresses (all loopback on Linux).

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tests::{
    distribution, exchange_keep_alive, get, post, raw_exchange, send_with, start_with, Reply,
    EVENTS,
};
use super::*;
use crate::notification::tests::manifest_list_envelope;

/// A connected socket from `source` (any 127.0.0.0/8 address is loopback on Linux, so a test
/// can play several hosts).
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("binding a 127.0.0.0/8 source address");
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn dribbled_bodies_hold_only_what_they_sent_and_one_source_only_its_share() {
    let server = start_with(
        ApiConfig {
            max_body: 1000,
            ..ApiConfig::default()
        },
        Limits {
            body_bytes_in_flight: 3000,
            body_bytes_per_source: 1000,
            body_read_timeout: Duration::from_secs(20),
            ..Limits::default()
        },
    )
    .await;
    // Sixteen chunked bodies of one byte each from one host (the attack that used to reserve
    // the largest body apiece and take the whole budget).
    let attacker = [127, 0, 0, 2];
    let mut dribblers = Vec::new();
    for _ in 0..16 {
        let mut stream = connect_from(attacker, server.addr).await;
        let head = format!(
            "POST /registryNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: {EVENTS}\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{{\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        dribblers.push(stream);
    }
    // Then one of its bodies takes almost all of its share.
    let mut big = connect_from(attacker, server.addr).await;
    let head = format!(
        "POST /registryNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: {EVENTS}\r\ncontent-length: 1000\r\n\r\n{}",
        " ".repeat(980)
    );
    big.write_all(head.as_bytes()).await.unwrap();
    // Its next body does not fit in its share: 503 naming the reason (polled: nothing tells
    // us when the server has read the others).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut stream = connect_from(attacker, server.addr).await;
        let body = manifest_list_envelope();
        let head = format!(
            "POST /registryNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: {EVENTS}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("from your address"), "{answer}");
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            Instant::now() < deadline,
            "the source's share never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everyone else's notifications still go through.
    let reply = post(
        server.addr,
        "/registryNotifications",
        EVENTS,
        manifest_list_envelope(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    drop(dribblers);
    drop(big);
}

fn signed_config(secret: &[u8]) -> ApiConfig {
    ApiConfig {
        cluster_key: Some(ClusterKey::new(secret)),
        ..ApiConfig::default()
    }
}

#[tokio::test]
async fn agent_routes_need_a_signed_request_checked_before_the_body() {
    let server = start_with(signed_config(b"0123456789abcdef"), Limits::default()).await;
    // Unsigned: a listing, a torrent, an announcement are all refused.
    let reply = get(server.addr, "/v1/distributions").await;
    assert!(reply
        .assert_error(StatusCode::UNAUTHORIZED)
        .contains("x-imagewolf-auth"));
    reply_is_401(get(server.addr, &format!("/v1/torrents/{}", "ab".repeat(20))).await);
    // A POST declaring a body it never sends is refused from its head, at once: nothing is
    // buffered, no slot is held for the body timeout.
    let started = Instant::now();
    let answer = raw_exchange(
        server.addr,
        "POST /v1/distributions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n".into(),
        Vec::new(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(server.api.distributions.lock().unwrap().is_empty());

    // Signed with another secret: refused.
    let other = ClusterKey::new(b"another secret!!");
    let body = serde_json::to_vec(&distribution(&"11".repeat(20))).unwrap();
    let header = other.sign_request("POST", "/v1/distributions", &body);
    let reply = send_signed(
        server.addr,
        "POST",
        "/v1/distributions",
        &header,
        body.clone(),
    )
    .await;
    reply_is_401(reply);

    // Signed right: accepted once; the same request again is a replay.
    let key = ClusterKey::new(b"0123456789abcdef");
    let header = key.sign_request("POST", "/v1/distributions", &body);
    let reply = send_signed(
        server.addr,
        "POST",
        "/v1/distributions",
        &header,
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = send_signed(
        server.addr,
        "POST",
        "/v1/distributions",
        &header,
        body.clone(),
    )
    .await;
    assert!(reply
        .assert_error(StatusCode::UNAUTHORIZED)
        .contains("replayed"));
    // A signed head with another body: refused after reading it.
    let header = key.sign_request("POST", "/v1/distributions", &body);
    let forged = serde_json::to_vec(&distribution(&"22".repeat(20))).unwrap();
    let reply = send_signed(server.addr, "POST", "/v1/distributions", &header, forged).await;
    assert!(reply
        .assert_error(StatusCode::UNAUTHORIZED)
        .contains("body"));
    assert_eq!(server.api.distributions.lock().unwrap().len(), 1);
    // A signed listing.
    let header = key.sign_request("GET", "/v1/distributions", b"");
    let reply = send_signed(server.addr, "GET", "/v1/distributions", &header, Vec::new()).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Operators' routes stay open.
    assert_eq!(get(server.addr, "/healthz").await.status, StatusCode::OK);
}

fn reply_is_401(reply: Reply) {
    reply.assert_error(StatusCode::UNAUTHORIZED);
}

async fn send_signed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    header: &str,
    body: Vec<u8>,
) -> Reply {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    send_with(
        addr,
        method,
        path,
        Some("application/json"),
        &[(AUTH_HEADER, header)],
        body,
    )
    .await
}

#[tokio::test]
async fn a_host_flooding_the_connection_slots_only_displaces_its_own() {
    let server = start_with(
        ApiConfig::default(),
        Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
    )
    .await;
    // A legitimate client keeps one connection alive (an agent's pooled connection).
    let mut legit = TcpStream::connect(server.addr).await.unwrap();
    exchange_keep_alive(&mut legit).await;
    // The attacker takes every other slot: stalled bodies and idle keep-alives.
    let attacker = [127, 0, 0, 2];
    let mut flood = Vec::new();
    for i in 0..7 {
        let mut stream = connect_from(attacker, server.addr).await;
        if i % 2 == 0 {
            stream
                .write_all(
                    b"POST /hubNotifications HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n",
                )
                .await
                .unwrap();
        } else {
            exchange_keep_alive(&mut stream).await;
        }
        flood.push(stream);
    }
    // It keeps opening more; each newcomer takes one of its own old connections' slots.
    for _ in 0..20 {
        flood.push(connect_from(attacker, server.addr).await);
    }
    // A newcomer from another host is served within a second or so.
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(5), get(server.addr, "/healthz"))
        .await
        .expect("/healthz not answered under the flood");
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // And the legitimate keep-alive connection was never closed for room.
    exchange_keep_alive(&mut legit).await;
}
