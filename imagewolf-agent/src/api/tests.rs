//! HTTP-layer tests against a real listener, with a recording [`AgentApi`] double (the full
//! flow through the distributor is tested end to end elsewhere).

use std::sync::Mutex;
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::client::conn::http1 as client;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;
use crate::image::ImageRef;
use crate::notification::tests::{
    digest_push_envelope, manifest_list_envelope, push_envelope, DIGEST_A, HUB_SAMPLE,
};
use crate::stats::tests::check_exposition;
use crate::stats::ImageState;

#[derive(Default)]
pub(super) struct FakeApi {
    pub(super) pushes: Mutex<Vec<PushEvent>>,
    pub(super) distributions: Mutex<Vec<Distribution>>,
    pub(super) announces: Mutex<Vec<(String, IpAddr)>>,
}

impl AgentApi for FakeApi {
    fn on_push(&self, event: PushEvent) -> PushOutcome {
        if event.image.repository.starts_with("ignored/") {
            return PushOutcome::Ignored("not for this cluster".into());
        }
        let mut pushes = self.pushes.lock().unwrap();
        if pushes
            .iter()
            .any(|p| p.image.dedup_key() == event.image.dedup_key())
        {
            return PushOutcome::Duplicate;
        }
        pushes.push(event);
        PushOutcome::Started
    }

    fn on_distribution(&self, d: Distribution) -> PushOutcome {
        let mut known = self.distributions.lock().unwrap();
        if known.iter().any(|k| k.id == d.id) {
            return PushOutcome::Duplicate;
        }
        known.push(d);
        PushOutcome::Started
    }

    fn distributions(&self) -> Vec<Distribution> {
        self.distributions.lock().unwrap().clone()
    }

    fn images(&self) -> Vec<ImageStats> {
        vec![ImageStats {
            reference: "10.77.0.1:5000/team/app:v1.2.3".into(),
            image_id: Some("sha256:1234".into()),
            digest: Some(DIGEST_A.into()),
            id: Some("ab".repeat(20)),
            size: Some(1 << 20),
            state: ImageState::Seeding,
            error: None,
            origin: true,
            bytes_down: 0,
            bytes_up: 4096,
            peers: 3,
            started_at: 1_700_000_000.5,
            completed_at: Some(1_700_000_001.0),
            loaded_at: None,
            load_seconds: None,
            attempts: 1,
            layers_loaded_ahead: 0,
            blobs: None,
        }]
    }

    fn known_agents(&self) -> usize {
        4
    }

    fn tracker_announce(&self, query: &str, remote: IpAddr) -> Vec<u8> {
        self.announces
            .lock()
            .unwrap()
            .push((query.to_owned(), remote));
        b"d8:intervali30e5:peers0:e".to_vec()
    }
}

pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) api: Arc<FakeApi>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) task: JoinHandle<io::Result<()>>,
}

pub(super) async fn start_with(config: ApiConfig, limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Arc::new(FakeApi::default());
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(serve_with_limits(
        listener,
        Arc::clone(&api) as Arc<dyn AgentApi>,
        config,
        limits,
        rx,
    ));
    Server {
        addr,
        api,
        shutdown,
        task,
    }
}

pub(super) async fn start() -> Server {
    start_with(ApiConfig::default(), Limits::default()).await
}

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    /// Asserts an error reply: the status and a JSON `{"error": "..."}` body.
    pub(super) fn assert_error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.headers[CONTENT_TYPE], "application/json");
        let json = self.json();
        json["error"].as_str().expect("error message").to_owned()
    }
}

pub(super) async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Reply {
    send_with(addr, method, path, content_type, &[], body).await
}

pub(super) async fn send_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = client::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub(super) async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path, None, Bytes::new()).await
}

pub(super) async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Reply {
    send(addr, Method::POST, path, Some(content_type), body).await
}

/// Writes `head` then `body` on a raw connection (the body from a separate task, so a server
/// that answers early and stops reading cannot block us) and returns everything read back.
pub(super) async fn raw_exchange(addr: SocketAddr, head: String, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        writer // keep the write half open until the reader is done
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if complete_response(&answer) {
                        break;
                    }
                }
            },
            () = &mut deadline => panic!("no answer: {}", String::from_utf8_lossy(&answer)),
        }
    }
    writing.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether `data` holds a whole response with a Content-Length body.
pub(super) fn complete_response(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

pub(super) const EVENTS: &str = REGISTRY_EVENTS_MEDIA_TYPE;

#[tokio::test]
async fn registry_push_is_accepted_once_then_duplicate() {
    let server = start().await;
    let reply = post(
        server.addr,
        "/registryNotifications",
        EVENTS,
        push_envelope(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
    // One tagged manifest push; the blob upload and the pull are ignored.
    assert_eq!(
        reply.json(),
        json!({"accepted": 1, "duplicates": 0, "ignored": 2})
    );
    let pushes = server.api.pushes.lock().unwrap().clone();
    assert_eq!(pushes.len(), 1);
    assert_eq!(
        pushes[0].image,
        ImageRef {
            registry: "10.77.0.1:5000".into(),
            repository: "team/app".into(),
            tag: Some("v1.2.3".into()),
            digest: Some(DIGEST_A.into()),
        }
    );
    // The registry retrying the same envelope.
    let reply = post(
        server.addr,
        "/registryNotifications",
        EVENTS,
        push_envelope(),
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({"accepted": 0, "duplicates": 1, "ignored": 2})
    );
    // A push by digest, and a manifest list, with other accepted media type spellings.
    for (content_type, body) in [
        ("application/json", digest_push_envelope()),
        (
            "application/vnd.docker.distribution.events.v1+json; charset=utf-8",
            manifest_list_envelope(),
        ),
    ] {
        let reply = post(server.addr, "/registryNotifications", content_type, body).await;
        assert_eq!(reply.json()["accepted"], 1, "{content_type}");
    }
    // No content type at all is taken as JSON.
    let reply = send(
        server.addr,
        Method::POST,
        "/registryNotifications",
        None,
        r#"{"events":[]}"#,
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({"accepted": 0, "duplicates": 0, "ignored": 0})
    );
}

#[tokio::test]
async fn registry_override_and_ignored_pushes() {
    let config = ApiConfig {
        registry_override: Some("mirror.local:5000".into()),
        ..ApiConfig::default()
    };
    let server = start_with(config, Limits::default()).await;
    let reply = post(
        server.addr,
        "/registryNotifications",
        EVENTS,
        push_envelope(),
    )
    .await;
    assert_eq!(reply.json()["accepted"], 1);
    assert_eq!(
        server.api.pushes.lock().unwrap()[0].image.registry,
        "mirror.local:5000"
    );
    let ignored = digest_push_envelope().replace("team/app", "ignored/app");
    let reply = post(server.addr, "/registryNotifications", EVENTS, ignored).await;
    assert_eq!(
        reply.json(),
        json!({"accepted": 0, "duplicates": 0, "ignored": 1})
    );
    // An invalid event is skipped (and counted as ignored), not a request error.
    let invalid = push_envelope().replace("\"v1.2.3\"", "\"-bad tag\"");
    let reply = post(server.addr, "/registryNotifications", EVENTS, invalid).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"accepted": 0, "duplicates": 0, "ignored": 3})
    );
}

#[tokio::test]
async fn hub_webhook_is_accepted() {
    let config = ApiConfig {
        hub_registry: "10.77.0.1:5000".into(),
        ..ApiConfig::default()
    };
    let server = start_with(config, Limits::default()).await;
    let reply = post(
        server.addr,
        "/hubNotifications",
        "application/json",
        HUB_SAMPLE,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"accepted": 1, "duplicates": 0, "ignored": 0})
    );
    let push = server.api.pushes.lock().unwrap()[0].clone();
    assert_eq!(
        push.image.pull_reference(),
        "10.77.0.1:5000/svendowideit/testhook:latest"
    );
    let reply = post(
        server.addr,
        "/hubNotifications",
        "application/json",
        HUB_SAMPLE,
    )
    .await;
    assert_eq!(reply.json()["duplicates"], 1);
    // A webhook without a repository is a bad request.
    let reply = post(
        server.addr,
        "/hubNotifications",
        "application/json",
        r#"{"push_data":{"tag":"t"}}"#,
    )
    .await;
    assert!(reply
        .assert_error(StatusCode::BAD_REQUEST)
        .contains("repository"));
}

#[tokio::test]
async fn malformed_bodies_and_wrong_media_types_are_refused() {
    let server = start().await;
    for body in ["", "{", "[]", r#"{"events":{}}"#, "\u{feff}x"] {
        let reply = post(server.addr, "/registryNotifications", EVENTS, body).await;
        let message = reply.assert_error(StatusCode::BAD_REQUEST);
        assert!(message.contains("malformed"), "{body:?}: {message}");
    }
    let reply = post(
        server.addr,
        "/hubNotifications",
        "application/json",
        "not json",
    )
    .await;
    reply.assert_error(StatusCode::BAD_REQUEST);
    let reply = post(
        server.addr,
        "/v1/distributions",
        "application/json",
        r#"{"image":1}"#,
    )
    .await;
    reply.assert_error(StatusCode::BAD_REQUEST);
    for (path, content_type) in [
        ("/registryNotifications", "text/plain"),
        (
            "/registryNotifications",
            "application/x-www-form-urlencoded",
        ),
        ("/hubNotifications", EVENTS),
        ("/v1/distributions", "application/xml"),
    ] {
        let reply = post(server.addr, path, content_type, push_envelope()).await;
        let message = reply.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(message.contains("content type"), "{message}");
    }
    assert!(server.api.pushes.lock().unwrap().is_empty());
    // Still serving.
    assert_eq!(get(server.addr, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_refused_while_reading() {
    let server = start().await;
    let two_mib = vec![b' '; 2 << 20];
    // Declared length over the limit: refused before the body is read.
    let head = format!(
        "POST /registryNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: {EVENTS}\r\ncontent-length: {}\r\n\r\n",
        two_mib.len()
    );
    let answer = raw_exchange(server.addr, head, two_mib.clone()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body exceeds the 1048576-byte limit"}"#),
        "{answer}"
    );
    // Chunked, no length: refused once the limit is crossed while reading.
    let head = "POST /hubNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
    let mut chunked = Vec::new();
    for chunk in two_mib.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(server.addr, head, chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A configured smaller limit applies to realistic bodies too.
    let small = start_with(
        ApiConfig {
            max_body: 1000,
            ..ApiConfig::default()
        },
        Limits::default(),
    )
    .await;
    let reply = post(
        small.addr,
        "/registryNotifications",
        EVENTS,
        push_envelope(),
    )
    .await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE);
    let reply = post(
        small.addr,
        "/registryNotifications",
        EVENTS,
        manifest_list_envelope(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(get(server.addr, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn request_bodies_being_read_share_a_byte_budget() {
    let server = start_with(
        ApiConfig {
            max_body: 1000,
            ..ApiConfig::default()
        },
        Limits {
            body_bytes_in_flight: 2000,
            body_read_timeout: Duration::from_secs(3),
            ..Limits::default()
        },
    )
    .await;
    // Two clients send all but the last byte of the largest body and stall: together they
    // hold the budget (bytes are reserved as they arrive, not as declared).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /registryNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: {EVENTS}\r\ncontent-length: 1000\r\n\r\n{}",
            " ".repeat(999)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    // Once the server reads both, any other body is refused at once (polled: nothing tells us
    // when the server got to them).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let reply = post(
            server.addr,
            "/registryNotifications",
            EVENTS,
            manifest_list_envelope(),
        )
        .await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            reply.assert_error(StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK);
        assert!(Instant::now() < deadline, "the body budget never ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests without a body are unaffected.
    assert_eq!(get(server.addr, "/healthz").await.status, StatusCode::OK);
    // The held bodies time out (408) and give their bytes back.
    for mut stream in held {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("a held body was never timed out")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    let reply = post(
        server.addr,
        "/registryNotifications",
        EVENTS,
        manifest_list_envelope(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_methods_and_unknown_paths() {
    let server = start().await;
    for (method, path, allow) in [
        (Method::GET, "/registryNotifications", "POST"),
        (Method::PUT, "/hubNotifications", "POST"),
        (Method::POST, "/stats", "GET"),
        (Method::DELETE, "/v1/distributions", "GET, POST"),
        (Method::POST, "/announce", "GET"),
        (Method::HEAD, "/metrics", "GET"),
    ] {
        let reply = send(server.addr, method.clone(), path, None, Bytes::new()).await;
        assert_eq!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(reply.headers[ALLOW], allow);
        if method != Method::HEAD {
            reply.assert_error(StatusCode::METHOD_NOT_ALLOWED);
        }
    }
    for path in ["/", "/stats/", "/v2/", "/registrynotifications", "/%ff%00"] {
        let message = get(server.addr, path)
            .await
            .assert_error(StatusCode::NOT_FOUND);
        assert!(message.contains("no such endpoint"), "{message}");
    }
}

#[tokio::test]
async fn stats_healthz_and_metrics() {
    let server = start().await;
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.json(), json!({"status": "ok"}));

    let reply = get(server.addr, "/stats").await;
    assert_eq!(reply.status, StatusCode::OK);
    let stats = reply.json();
    assert_eq!(stats[0]["reference"], "10.77.0.1:5000/team/app:v1.2.3");
    assert_eq!(stats[0]["state"], "seeding");
    assert_eq!(stats[0]["peers"], 3);

    get(server.addr, "/nope").await;
    post(server.addr, "/registryNotifications", EVENTS, "{").await;
    let reply = get(server.addr, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_TYPE], METRICS_CONTENT_TYPE);
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && l.iter()
                        .zip(labels)
                        .all(|((k, v), (k2, v2))| k == k2 && v == v2)
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(value("imagewolf_up", &[]), Some(1.0));
    assert_eq!(value("imagewolf_known_agents", &[]), Some(4.0));
    assert_eq!(
        value("imagewolf_images", &[("state", "seeding")]),
        Some(1.0)
    );
    let reference = [("reference", "10.77.0.1:5000/team/app:v1.2.3")];
    assert_eq!(
        value("imagewolf_image_bytes_uploaded_total", &reference),
        Some(4096.0)
    );
    assert_eq!(
        value(
            "imagewolf_http_requests_total",
            &[("path", "/healthz"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "imagewolf_http_requests_total",
            &[("path", "other"), ("code", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "imagewolf_http_requests_total",
            &[("path", "/registryNotifications"), ("code", "400")]
        ),
        Some(1.0)
    );
    assert_eq!(value("imagewolf_http_rejected_total", &[]), Some(2.0));
}

pub(super) fn distribution(info_hash: &str) -> Distribution {
    Distribution {
        image: ImageRef {
            registry: "10.77.0.1:5000".into(),
            repository: "team/app".into(),
            tag: Some("v1".into()),
            digest: Some(DIGEST_A.into()),
        },
        image_id: "sha256:feed".into(),
        id: info_hash.into(),
        size_hint: 123_456,
        segments: vec![crate::image::Segment {
            torrent: "ZDQ6aW5mb2Rl".into(),
            info_hash: info_hash.into(),
            len: 123_456,
        }],
        sha256: Some("00".repeat(32)),
        seeders: vec!["10.77.0.2:6000".into()],
        created: 1_700_000_000,
        signature: None,
        blobs: None,
    }
}

#[tokio::test]
async fn distributions_are_announced_and_listed() {
    let server = start().await;
    let d = distribution(&"ab".repeat(20));
    let body = serde_json::to_vec(&d).unwrap();
    let reply = post(
        server.addr,
        "/v1/distributions",
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(reply.json(), json!({"status": "started"}));
    let reply = post(server.addr, "/v1/distributions", "application/json", body).await;
    assert_eq!(reply.json(), json!({"status": "known"}));

    let reply = get(server.addr, "/v1/distributions").await;
    let listed: Vec<Distribution> = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(listed, vec![d.clone()]);

    // An image reference that could not be pulled safely is refused before the agent sees it.
    let mut bad = distribution(&"cd".repeat(20));
    bad.image.repository = "--help".into();
    let reply = post(
        server.addr,
        "/v1/distributions",
        "application/json",
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert!(reply
        .assert_error(StatusCode::BAD_REQUEST)
        .contains("repository"));
    assert_eq!(server.api.distributions.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn announce_passes_the_raw_query_and_remote_ip() {
    let server = start().await;
    let query = "info_hash=%12%34%ff&peer_id=-IW0001-abcdefghijkl&port=6000&compact=1";
    let reply = get(server.addr, &format!("/announce?{query}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_TYPE], "text/plain");
    assert_eq!(&reply.body[..], b"d8:intervali30e5:peers0:e");
    let announces = server.api.announces.lock().unwrap().clone();
    assert_eq!(
        announces,
        vec![(query.to_owned(), IpAddr::from([127, 0, 0, 1]))]
    );
    get(server.addr, "/announce").await;
    assert_eq!(server.api.announces.lock().unwrap()[1].0, "");
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let server = start().await;
    for garbage in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"BLAH\r\n\r\n",
        b"GET /stats HTTP/1.1\r\nbad header line\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", // a TLS ClientHello
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty()
                || answer.starts_with("HTTP/1.1 4")
                || answer.starts_with("HTTP/1.1 5"),
            "{answer}"
        );
    }
    // Headers far over the head buffer.
    let head = format!(
        "GET /stats HTTP/1.1\r\nx: {}\r\n\r\n",
        "a".repeat(MAX_HEAD_LEN * 2)
    );
    let answer = raw_exchange(server.addr, head, Vec::new()).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    // The next, ordinary request is served.
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    // Keep-alive: several requests on one connection.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = client::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let request = Request::get("/healthz")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
}

fn short_limits() -> Limits {
    Limits {
        max_connections: 2,
        body_bytes_in_flight: MAX_BODY_BYTES_IN_FLIGHT,
        body_bytes_per_source: MAX_BODY_BYTES_PER_SOURCE,
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        max_connection_age: Duration::from_secs(30),
        grace: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn slow_clients_time_out_and_connections_are_bounded() {
    let server = start_with(ApiConfig::default(), short_limits()).await;
    // A silent and a slow-loris connection are closed at the header timeout.
    let mut idle_a = TcpStream::connect(server.addr).await.unwrap();
    let mut idle_b = TcpStream::connect(server.addr).await.unwrap();
    idle_b
        .write_all(b"POST /stats HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle_a.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "idle connection left open");
    let read = tokio::time::timeout(Duration::from_secs(5), idle_b.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slow-loris connection left open");

    // Two kept-alive clients that were served hold both slots ...
    let started = Instant::now();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        exchange_keep_alive(&mut stream).await;
        kept.push(stream);
    }
    // ... so a third client is only served once the keep-alive (header) timeout frees one.
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    drop(kept);

    // A body that never completes gets 408.
    let head = format!(
        "POST /registryNotifications HTTP/1.1\r\nhost: x\r\ncontent-type: {EVENTS}\r\ncontent-length: 100\r\n\r\n"
    );
    let answer = raw_exchange(server.addr, head, b"{\"events\":".to_vec()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Header timeouts count as rejected.
    let text = String::from_utf8(get(server.addr, "/metrics").await.body.to_vec()).unwrap();
    let rejected = text
        .lines()
        .find_map(|l| l.strip_prefix("imagewolf_http_rejected_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(rejected >= 2, "{text}");
}

#[tokio::test]
async fn connections_without_a_request_make_room_for_new_clients() {
    let server = start_with(
        ApiConfig::default(),
        Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
    )
    .await;
    // Two silent connections take both slots; the header timeout is far away.
    let mut oldest = TcpStream::connect(server.addr).await.unwrap();
    let mut newer = TcpStream::connect(server.addr).await.unwrap();
    newer.write_all(b"GET /stats HTTP/1.1\r\n").await.unwrap();
    // A new client is served at once: the oldest silent connection made room.
    let started = Instant::now();
    let reply = get(server.addr, "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), oldest.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the oldest silent connection was not closed"
    );
    // Only the oldest: the other one is still open.
    let open = tokio::time::timeout(Duration::from_millis(300), newer.read(&mut [0u8; 64])).await;
    assert!(
        open.is_err(),
        "the newer connection was closed too: {open:?}"
    );
}

#[tokio::test]
async fn shutdown_stops_accepting_and_returns() {
    let server = start_with(ApiConfig::default(), short_limits()).await;
    // A kept-alive idle connection must not hold the shutdown up.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = client::handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::get("/healthz")
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        sender.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );

    server.shutdown.send_replace(true);
    let result = tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(result.is_ok());
    // The kept-alive connection was closed gracefully.
    let _ = tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("connection closed");
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_shutdown_sender_also_stops_the_server() {
    let server = start_with(ApiConfig::default(), short_limits()).await;
    drop(server.shutdown);
    let result = tokio::time::timeout(Duration::from_secs(3), server.task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))));
}

#[tokio::test]
async fn idle_keep_alive_connections_close_without_counting_as_rejected() {
    let server = start_with(ApiConfig::default(), short_limits()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = client::handshake(TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::get("/healthz")
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    // The server closes the idle connection after the header timeout, cleanly.
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(matches!(closed, Ok(Ok(Ok(())))), "{closed:?}");
    let text = String::from_utf8(get(server.addr, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        text.contains("\nimagewolf_http_rejected_total 0\n"),
        "{text}"
    );
}

/// One `GET /healthz` on a kept-alive connection, read to the end of the answer.
pub(super) async fn exchange_keep_alive(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !complete_response(&answer) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
    }
}
