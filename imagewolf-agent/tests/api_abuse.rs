//! An attacker on the node network against a real agent process (default flags plus the
//! required cluster secret): connection floods from one host (stalled bodies, keep-alive
//! connections re-polling `/healthz`), dribbled request bodies holding the body budget, and
//! unsigned calls of the agent-to-agent routes. Each used to work (`/healthz` took 8-13 s
//! under the floods, authenticated notifications got 503, unsigned announcements were
//! started); now the legitimate side is served within a second and the attacker gets
//! nothing. Attackers are played from other 127.0.0.0/8 source addresses than the
//! legitimate clients (all loopback on Linux).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::docker::free_port;
use imagewolf::{ensure_fd_limit, http, ChildGuard, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");
const SECRET: &str = "imagewolf-test-cluster-secret";
/// Connections each flooding host opens (past the agent's 512 slots together).
const FLOOD: usize = 600;
/// The target: every legitimate request answered within this, under any flood.
const LATENCY_BOUND: Duration = Duration::from_secs(1);

struct Agent {
    api: SocketAddr,
    _guard: ChildGuard,
    _dir: TempDir,
}

async fn start_agent() -> Agent {
    let dir = TempDir::new("api-abuse").unwrap();
    let port = free_port().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(AGENT);
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", SECRET)
        .args(["--peers", &format!("static:{api}")])
        .args(["--listen", &api.to_string()])
        .args(["--bt-listen", "127.0.0.1:0", "--runtime", "none"])
        .args(["--advertise-addr", "127.0.0.1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let guard = ChildGuard::spawn("agent", &mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http::request(api, "GET", "/healthz", &[], b"")
        .await
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "the agent never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Agent {
        api,
        _guard: guard,
        _dir: dir,
    }
}

async fn connect_from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, host], 0)))?;
    socket.connect(to).await
}

/// `n` legitimate `GET /healthz`, each on a new connection from 127.0.0.1: the slowest.
async fn slowest_healthz(api: SocketAddr, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let reply = http::request(api, "GET", "/healthz", &[], b"")
            .await
            .expect("/healthz not answered");
        assert_eq!(reply.status, 200);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// A registry notification with no events, from 127.0.0.1: its status and how long it took.
async fn notify(api: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let reply = http::request(
        api,
        "POST",
        "/registryNotifications",
        &[("Content-Type", "application/json")],
        br#"{"events":[]}"#,
    )
    .await
    .expect("notification not answered");
    (reply.status, started.elapsed())
}

/// Opens `FLOOD` connections from `host`, each sending `head` (and then nothing, or
/// re-sending it every 8 s when `repoll`). Connections the agent closes are not reopened.
async fn flood(host: u8, api: SocketAddr, head: &'static str, repoll: bool) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let Ok(mut stream) = connect_from(host, api).await else {
            continue;
        };
        if stream.write_all(head.as_bytes()).await.is_ok() {
            held.push(stream);
        }
    }
    if repoll {
        // Keep-alive clients that re-request before the 10 s idle timeout: read each answer
        // and ask again every 8 s.
        let streams = std::mem::take(&mut held);
        for mut stream in streams {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match tokio::time::timeout(Duration::from_secs(8), stream.read(&mut buf)).await
                    {
                        Ok(Ok(0) | Err(_)) => return,
                        Ok(Ok(_)) => continue,
                        Err(_) => {
                            if stream.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    }
    held
}

#[tokio::test]
async fn floods_from_one_host_leave_the_api_to_the_others() {
    ensure_fd_limit(4 * FLOOD as u64 + 512);
    let agent = start_agent().await;
    let api = agent.api;
    let quiet = slowest_healthz(api, 5).await;

    // Host .2: request heads promising a body that never comes (the registry route: no
    // webhook token by default, so the body is read).
    let stalled = flood(
        2,
        api,
        "POST /registryNotifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n",
        false,
    )
    .await;
    // Host .3: keep-alive connections polling /healthz every 8 s.
    let polling = flood(3, api, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true).await;
    // Host .4: sixteen chunked bodies dribbling one byte each (used to reserve the largest
    // body apiece: the whole body budget).
    let mut dribbles = Vec::new();
    for _ in 0..16 {
        let mut s = connect_from(4, api).await.unwrap();
        s.write_all(b"POST /registryNotifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
            .await
            .unwrap();
        dribbles.push(s);
    }

    // Under all of it, the legitimate side: /healthz and a registry notification, each
    // within the bound, measured a few times.
    let under_flood = slowest_healthz(api, 10).await;
    let (status, notified_in) = notify(api).await;
    println!(
        "/healthz slowest of 5 quiet: {quiet:?}; slowest of 10 under {} stalled-body + {} \
         keep-alive connections from two hosts and 16 dribbled bodies: {under_flood:?}; \
         a registry notification: {status} in {notified_in:?}",
        stalled.len(),
        FLOOD,
    );
    assert!(
        under_flood < LATENCY_BOUND,
        "/healthz took {under_flood:?} under the flood"
    );
    assert_eq!(status, 200, "a notification was refused under the flood");
    assert!(notified_in < LATENCY_BOUND, "{notified_in:?}");
    let metrics = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .unwrap()
        .text();
    let metric = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let open = metric("imagewolf_http_connections");
    let closed = metric("imagewolf_http_connections_closed_for_room_total");
    println!("connections open during the flood: {open} (limit 512); closed or turned away to make room: {closed}");
    assert!(
        open <= 512 + 64,
        "{open} connections: the limit did not hold"
    );
    assert!(
        closed > 0,
        "the flood never reached the limit: the test proves nothing"
    );
    drop((stalled, dribbles, polling));
}

#[tokio::test]
async fn agent_routes_refuse_unsigned_calls_before_reading_them() {
    let agent = start_agent().await;
    let api = agent.api;
    // An unsigned announcement (the attack: make the node download and load an image).
    let body = br#"{"image":{"registry":"docker.io","repository":"library/nginx","tag":"latest","digest":null},"image_id":"sha256:0000000000000000000000000000000000000000000000000000000000000000","id":"1111111111111111111111111111111111111111","size_hint":1,"segments":[],"seeders":["127.0.0.9:6881"],"created":1}"#;
    let reply = http::request(
        api,
        "POST",
        "/v1/distributions",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401, "{}", reply.text());
    // One signed with another secret.
    let other = imagewolf_agent::auth::ClusterKey::new(b"not the cluster's secret");
    let header = other.sign_request("POST", "/v1/distributions", body);
    let reply = http::request(
        api,
        "POST",
        "/v1/distributions",
        &[
            ("Content-Type", "application/json"),
            ("x-imagewolf-auth", &header),
        ],
        body,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 401, "{}", reply.text());
    // Listings and torrents are not readable either.
    for path in [
        "/v1/distributions".to_owned(),
        format!("/v1/torrents/{}", "ab".repeat(20)),
    ] {
        let reply = http::request(api, "GET", &path, &[], b"").await.unwrap();
        assert_eq!(reply.status, 401, "{path}: {}", reply.text());
    }
    // A head promising a large body is answered at once, without waiting for it.
    let started = Instant::now();
    let mut s = TcpStream::connect(api).await.unwrap();
    s.write_all(b"POST /v1/distributions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(LATENCY_BOUND, s.read_exact(&mut answer))
        .await
        .expect("an unsigned announcement's head was not answered at once")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401", "{:?}", started.elapsed());
    // Nothing was started.
    let stats = http::request(api, "GET", "/stats", &[], b"").await.unwrap();
    assert_eq!(stats.text(), "[]");
    // The same announcement signed with the cluster's secret is taken (not 401): the route
    // works for the agents.
    let key = imagewolf_agent::auth::ClusterKey::new(SECRET.as_bytes());
    let header = key.sign_request("POST", "/v1/distributions", body);
    let reply = http::request(
        api,
        "POST",
        "/v1/distributions",
        &[
            ("Content-Type", "application/json"),
            ("x-imagewolf-auth", &header),
        ],
        body,
    )
    .await
    .unwrap();
    assert_ne!(reply.status, 401, "{}", reply.text());
}
