//! A connection flood against a real agent process (issue 5): while the agent downloads an
//! image and then seeds it to a downloader, hundreds of BitTorrent connections (never a
//! handshake, a handshake for the wrong torrent, the right handshake then silence, the right
//! handshake then garbage) and hundreds of HTTP connections (idle, slow-loris headers, a
//! body held at the size limit) hit its ports. The distribution must still complete with the
//! right bytes, the agent's peak memory must stay near what the same run costs without the
//! flood, it must hold no more sockets than its limits allow, and it must close every flood
//! connection within its timeouts instead of holding it.
//!
//! The agent is the `imagewolf-agent` binary (`--runtime none`), so its memory and sockets
//! are its own (`/proc/PID`). The origin and the downloader run in this process. Smaller
//! tests check the engine's side in-process: idle connections do not keep a real peer out
//! of a seed, thousands of them from another address do not even delay it, and a peer
//! silent after its handshake is dropped at the handshake timeout.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use imagewolf::agent_api::agent_call;
use imagewolf::docker::free_port;
use imagewolf::generated_image::GeneratedImage;
use imagewolf::http;
use imagewolf::local_agents::{registry_push_envelope, LocalAgents, TEST_CLUSTER_SECRET};
use imagewolf::{ensure_fd_limit, random_payload, ChildGuard, TempDir};
use imagewolf_agent::source::ImageSource;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::storage::{MemoryStorage, Storage};
use imagewolf_bt::wire::Handshake;
use imagewolf_bt::{AddTorrent, InfoHash, PeerId, Session, SessionConfig, StartFrom, TorrentEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REFERENCE: &str = "10.1.2.3:5000/team/flood:v1";
const EVENTS: &str = "application/vnd.docker.distribution.events.v1+json";
/// Size of the image spread in both runs.
const IMAGE_SIZE: usize = 24 << 20;
/// The downloader stores at most this many bytes per second, so its download from the
/// flooded agent lasts several seconds.
const DOWNLOADER_RATE: f64 = 6.0 * 1024.0 * 1024.0;
/// The agent's peers per torrent (`SessionConfig::lan_cluster().max_peers_per_torrent`).
const MAX_PEERS: u64 = 50;
/// Peers at which the silent flood is taken to have filled the torrent's slots.
const FULL_PEERS: u64 = MAX_PEERS - 10;
/// How long each flood connection is watched for the agent closing it.
const OBSERVE: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------------------
// The agent binary and process.

/// Builds the agent binary of this workspace (a no-op when it is fresh) and links it into
/// `dir`, so a concurrent build in a shared target dir cannot swap it while the test runs.
fn agent_bin(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "-p",
        "imagewolf-agent",
        "--bin",
        "imagewolf-agent",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .stderr(Stdio::inherit());
    match profile_dir.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().expect("running cargo build for the agent");
    assert!(out.status.success(), "building imagewolf-agent failed");
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "imagewolf-agent")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no imagewolf-agent executable");
    let bin = dir.join("imagewolf-agent");
    if std::fs::hard_link(&built, &bin).is_err() {
        std::fs::copy(&built, &bin).expect("copying the agent binary");
    }
    bin
}

/// The agent process under test.
struct Agent {
    process: ChildGuard,
    api: SocketAddr,
    bt: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, api: SocketAddr, peers: &[SocketAddr]) -> Agent {
        let bt = SocketAddr::from(([127, 0, 0, 1], free_port().expect("free port")));
        let data_dir = dir.join("agent-data");
        let log = dir.join("agent.log");
        let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let mut cmd = Command::new(bin);
        // The in-process origin's cluster secret (LocalAgents' default).
        let secret = std::str::from_utf8(TEST_CLUSTER_SECRET).expect("a text secret");
        cmd.env("IMAGEWOLF_CLUSTER_SECRET", secret)
            .args(["--peers", &format!("static:{}", peers.join(","))])
            .args(["--listen", &api.to_string()])
            .args(["--bt-listen", &bt.to_string()])
            .args(["--advertise-addr", "127.0.0.1", "--runtime", "none"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info,imagewolf_bt=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"));
        let process = ChildGuard::spawn("imagewolf-agent", &mut cmd).expect("starting the agent");
        Agent {
            process,
            api,
            bt,
            data_dir,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The last lines of its log, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http::request(self.api, "GET", "/healthz", &[], b"").await {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent never became healthy:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// What /proc says about the agent.

/// A `/proc/PID/status` memory field (`VmHWM`: peak RSS), in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors of `pid`, and among them the TCP sockets (not listening) whose local
/// port is `bt` and `api`.
#[derive(Debug, Default, Clone, Copy)]
struct Fds {
    total: usize,
    bt: usize,
    api: usize,
}

fn fds(pid: u32, bt: u16, api: u16) -> Fds {
    // inode -> local port, for every non-listening TCP socket in the process's namespace.
    let mut ports = HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] == "0A" {
                continue;
            }
            let port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, cols[9].parse::<u64>()) {
                ports.insert(inode, port);
            }
        }
    }
    let mut out = Fds::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in dir.flatten() {
        out.total += 1;
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        match ports.get(&inode) {
            Some(&p) if p == bt => out.bt += 1,
            Some(&p) if p == api => out.api += 1,
            _ => {}
        }
    }
    out
}

/// Samples the agent's descriptors every 100 ms until dropped; keeps the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<Fds>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32, bt: u16, api: u16) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(Fds::default()));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = fds(pid, bt, api);
                let mut max = m.lock().unwrap();
                max.total = max.total.max(now.total);
                max.bt = max.bt.max(now.bt);
                max.api = max.api.max(now.api);
                drop(max);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max(&self) -> Fds {
        *self.max.lock().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The flood.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// Connects to the BitTorrent port and never sends a byte.
    BtIdle,
    /// A handshake for a torrent the agent does not have.
    BtWrongHash,
    /// The right handshake, then silence (it reads what the agent sends).
    BtSilent,
    /// The right handshake, then 4 KiB of noise.
    BtGarbage,
    /// Connects to the HTTP port and never sends a byte.
    HttpIdle,
    /// Sends a request head one header line per second, never finishing it.
    HttpSlowloris,
    /// A webhook POST declaring the largest allowed body, sent but for its last byte.
    HttpBody,
}

/// One flood connection's fate.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    /// Connected at all (a refused or timed-out connect counts as dropped).
    connected: bool,
    /// From connect to the agent closing it; `None`: still open after [`OBSERVE`].
    lifetime: Option<Duration>,
}

fn spawn_flood(
    tasks: &mut Vec<tokio::task::JoinHandle<Outcome>>,
    kind: Kind,
    n: usize,
    agent: &Agent,
    info_hash: InfoHash,
) {
    let addr = match kind {
        Kind::BtIdle | Kind::BtWrongHash | Kind::BtSilent | Kind::BtGarbage => agent.bt,
        Kind::HttpIdle | Kind::HttpSlowloris | Kind::HttpBody => agent.api,
    };
    for _ in 0..n {
        tasks.push(tokio::spawn(flood_one(kind, addr, info_hash)));
    }
}

/// The host each kind of flood comes from (127.0.0.0/8 is all loopback), none of them the
/// agents' own 127.0.0.1: connections that never handshake or send garbage from one host,
/// HTTP from another, and the peers that handshake and go silent from fifty hosts (a few
/// each, the way many machines would push the peer limit). Both listeners make room at the
/// expense of the host holding the most, so the idle flood's host gives way to them (one
/// host's idle flood against another's handshakes is tested on its own below).
fn flood_source(kind: Kind) -> [u8; 4] {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    match kind {
        Kind::BtSilent => {
            let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 50;
            [127, 0, 0, 10 + i]
        }
        Kind::BtIdle | Kind::BtWrongHash | Kind::BtGarbage => [127, 0, 0, 2],
        Kind::HttpIdle | Kind::HttpSlowloris | Kind::HttpBody => [127, 0, 0, 4],
    }
}

async fn connect_from(source: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(addr).await
}

async fn flood_one(kind: Kind, addr: SocketAddr, info_hash: InfoHash) -> Outcome {
    let connect = connect_from(flood_source(kind), addr);
    let stream = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(s)) => s,
        _ => {
            return Outcome {
                kind,
                connected: false,
                lifetime: Some(Duration::ZERO),
            }
        }
    };
    let start = Instant::now();
    let closed = tokio::time::timeout(OBSERVE, behave(kind, stream, info_hash))
        .await
        .is_ok();
    Outcome {
        kind,
        connected: true,
        lifetime: closed.then(|| start.elapsed()),
    }
}

/// Does what `kind` does, then returns once the agent closed the connection.
async fn behave(kind: Kind, mut s: TcpStream, info_hash: InfoHash) {
    let sent = match kind {
        Kind::BtIdle | Kind::HttpIdle => Ok(()),
        Kind::BtWrongHash => {
            let wrong = InfoHash(rand::random());
            s.write_all(&Handshake::new(wrong, PeerId::generate()).encode())
                .await
        }
        Kind::BtSilent => {
            s.write_all(&Handshake::new(info_hash, PeerId::generate()).encode())
                .await
        }
        Kind::BtGarbage => {
            let mut out = Handshake::new(info_hash, PeerId::generate())
                .encode()
                .to_vec();
            // Fixed seeds: random bytes whose first four happen to frame a short unknown
            // message (about 1 in 4096) would be skipped as such, and the connection would
            // then wait for its body like any slow peer; these hundred frame nothing valid.
            static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seed = SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
            out.extend_from_slice(&random_payload(4096, 0x6172_6261_6765 + seed));
            s.write_all(&out).await
        }
        Kind::HttpBody => {
            let max = imagewolf_agent::api::DEFAULT_MAX_BODY;
            let head = format!(
                "POST /registryNotifications HTTP/1.1\r\nHost: agent\r\n\
                 Content-Type: application/json\r\nContent-Length: {max}\r\n\r\n"
            );
            let mut out = head.into_bytes();
            out.extend(std::iter::repeat_n(b' ', max - 1));
            s.write_all(&out).await
        }
        Kind::HttpSlowloris => {
            if s.write_all(b"GET /stats HTTP/1.1\r\nHost: agent\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut sink = [0u8; 4096];
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    n = s.read(&mut sink) => if !matches!(n, Ok(n) if n > 0) { return },
                    _ = tick.tick() => if s.write_all(b"X-Slow: y\r\n").await.is_err() { return },
                }
            }
        }
    };
    if sent.is_err() {
        return;
    }
    let mut sink = vec![0u8; 16 << 10];
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The downloader fed by the agent.

/// Memory storage whose writes take `len / DOWNLOADER_RATE` seconds.
struct SlowStorage(MemoryStorage);

impl Storage for SlowStorage {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_secs_f64(buf.len() as f64 / DOWNLOADER_RATE));
        self.0.write_at(offset, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// One run.

#[derive(Debug)]
struct Figures {
    /// Peak RSS of the agent over the whole run, KiB.
    hwm_kib: u64,
    /// Descriptors of the healthy idle agent before anything happened.
    fds_idle: usize,
    /// Maxima sampled during the run.
    max: Fds,
    /// Descriptors once the flood is over (polled down, bounded).
    fds_after: usize,
    /// Peers the agent reported for the image while flooded (from /stats).
    peers_seen: Vec<u64>,
    /// Push to the agent's loaded tarball.
    agent_download: Duration,
    /// From adding the torrent to the downloader's connection to the agent.
    connect_time: Duration,
    /// A /healthz answer while the HTTP flood holds more connections than the API allows.
    api_latency: Duration,
    /// The downloader's download from the agent.
    seed_download: Duration,
    /// Flood outcomes by kind: (count, connected, still open, max lifetime).
    flood: BTreeMap<Kind, (usize, usize, usize, Duration)>,
}

async fn wait_loaded(agent: &Agent, tarball: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = std::fs::read_dir(agent.data_dir.join("loaded"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() == tarball.len() as u64))
            })
            .unwrap_or(false);
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not load the image in 60 s:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loaded: Vec<Vec<u8>> = std::fs::read_dir(agent.data_dir.join("loaded"))
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(
        loaded.iter().any(|f| f == tarball),
        "the agent loaded different bytes"
    );
}

/// The image's peer count in the agent's /stats, retried for up to 30 s.
async fn stats_peers(api: SocketAddr) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http::request(api, "GET", "/stats", &[], b"").await {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            return v.as_array()?.first()?["peers"].as_u64();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Flood connections by kind: before the push, and once the downloader is connected.
#[derive(Debug, Clone, Default)]
struct Plan {
    before: Vec<(Kind, usize)>,
    during: Vec<(Kind, usize)>,
}

async fn run(bin: &Path, plan: &Plan) -> Figures {
    let flood = !plan.before.is_empty() || !plan.during.is_empty();
    let dir = TempDir::new(if flood { "flood" } else { "flood-baseline" }).unwrap();
    let image = Arc::new(GeneratedImage::build(dir.path(), REFERENCE, IMAGE_SIZE).unwrap());
    let tarball = std::fs::read(&image.path).unwrap();
    let sources: Vec<Option<Arc<dyn ImageSource>>> = vec![Some(image.clone())];
    let (origin, late) = LocalAgents::start(dir.path().join("origin"), sources, 1)
        .await
        .unwrap();
    let origin_api = origin.agents[0].api;
    let agent_api = late[0].local_addr().unwrap();
    drop(late);
    let agent = Agent::start(bin, dir.path(), agent_api, &[origin_api, agent_api]);
    agent.wait_healthy().await;
    let pid = agent.pid();
    let (bt_port, api_port) = (agent.bt.port(), agent.api.port());
    let fds_idle = fds(pid, bt_port, api_port).total;
    let sampler = Sampler::start(pid, bt_port, api_port);
    let mut tasks = Vec::new();
    let unknown = InfoHash([0; 20]);

    // Phase 1, before the push.
    for &(kind, n) in &plan.before {
        spawn_flood(&mut tasks, kind, n, &agent, unknown);
    }
    if !plan.before.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The push: the origin pulls, seeds and announces; the agent downloads and "loads".
    let digest = format!("sha256:{}", "ab".repeat(32));
    let envelope = registry_push_envelope("10.1.2.3:5000", "team/flood", Some("v1"), &digest, "e1");
    let started = Instant::now();
    let reply = http::request(
        origin_api,
        "POST",
        "/registryNotifications",
        &[("Content-Type", EVENTS)],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    wait_loaded(&agent, &tarball).await;
    let agent_download = started.elapsed();

    // A downloader that knows only the agent: everything it gets, the agent served.
    let listing = agent_call(
        origin_api,
        "GET",
        "/v1/distributions",
        Some(TEST_CLUSTER_SECRET),
        b"",
    )
    .await;
    let listing: serde_json::Value = serde_json::from_slice(&listing.body).unwrap();
    // The tarball's first segment (the image is announced in segments, each its own
    // torrent): 16 MiB of the 24.
    let torrent = base64::engine::general_purpose::STANDARD
        .decode(listing[0]["segments"][0]["torrent"].as_str().unwrap())
        .unwrap();
    let meta = Metainfo::from_bytes(&torrent).unwrap();
    let info_hash = meta.info_hash();
    let downloader = Session::new(SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::lan_cluster()
    })
    .await
    .unwrap();
    let out = Arc::new(SlowStorage(MemoryStorage::new(meta.total_len())));
    let handle = downloader
        .add_torrent(
            AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty).without_trackers(),
        )
        .await
        .unwrap();
    // Subscribed before the agent is known, so its connection cannot be missed.
    let mut events = handle.events();
    let seed_started = Instant::now();
    handle.add_peers([agent.bt]);
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(TorrentEvent::PeerConnected { addr, .. }) = events.recv().await {
                if addr == agent.bt {
                    return;
                }
            }
        }
    })
    .await
    .expect("the downloader never connected to the agent");
    let connect_time = seed_started.elapsed();

    // Phase 2, mid-transfer.
    let mut peers_seen = Vec::new();
    for &(kind, n) in &plan.during {
        spawn_flood(&mut tasks, kind, n, &agent, info_hash);
    }
    let mut api_latency = Duration::ZERO;
    if !plan.during.is_empty() {
        // Give the flood a second to take every slot, then ask the agent something.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked = Instant::now();
        let reply = http::request(agent.api, "GET", "/healthz", &[], b"").await;
        api_latency = asked.elapsed();
        assert!(
            reply.is_ok_and(|r| r.status == 200),
            "the agent's API did not answer during the flood"
        );
        // Follow the torrent's peers while the silent ones sit in their slots (they are
        // dropped at the handshake timeout), until they fill them.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            let Some(peers) = stats_peers(agent.api).await else {
                break;
            };
            peers_seen.push(peers);
            if peers >= FULL_PEERS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    tokio::time::timeout(Duration::from_secs(90), handle.wait_complete())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the downloader fed by the agent did not complete ({:?}):\n{}",
                handle.stats(),
                agent.log_tail()
            )
        })
        .unwrap();
    let seed_download = seed_started.elapsed();
    assert!(
        out.0.to_vec() == tarball[..meta.total_len() as usize],
        "the downloader got different bytes"
    );
    if flood {
        peers_seen.extend(stats_peers(agent.api).await);
    }

    let mut by_kind: BTreeMap<Kind, (usize, usize, usize, Duration)> = BTreeMap::new();
    for task in tasks {
        let o = task.await.unwrap();
        let e = by_kind.entry(o.kind).or_insert((0, 0, 0, Duration::ZERO));
        e.0 += 1;
        e.1 += usize::from(o.connected);
        match o.lifetime {
            Some(l) => e.3 = e.3.max(l),
            None => e.2 += 1,
        }
    }

    // Once the flood is over, the agent's descriptors come back down.
    let deadline = Instant::now() + Duration::from_secs(20);
    let fds_after = loop {
        let now = fds(pid, bt_port, api_port).total;
        if now <= fds_idle + 16 || Instant::now() >= deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reply = http::request(agent.api, "GET", "/healthz", &[], b"")
        .await
        .expect("the agent does not answer after the flood");
    assert_eq!(reply.status, 200);

    let max = sampler.max();
    drop(sampler);
    let hwm_kib = vm_kib(pid, "VmHWM");
    downloader.shutdown().await;
    origin.shutdown().await;
    Figures {
        hwm_kib,
        fds_idle,
        max,
        fds_after,
        peers_seen,
        agent_download,
        connect_time,
        api_latency,
        seed_download,
        flood: by_kind,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_neither_stops_the_swarm_nor_grows_the_agent() {
    let bins = TempDir::new("flood-bin").unwrap();
    let bin = agent_bin(bins.path());
    let t = Instant::now();
    let base = run(&bin, &Plan::default()).await;
    eprintln!("without the flood ({:.1?}): {base:#?}", t.elapsed());
    let plan = Plan {
        // While the agent downloads: connections that never handshake or name another
        // torrent, and HTTP clients that never finish a request head. (No held bodies yet:
        // while they use up the API's body budget, the origin's announcement would be
        // answered 503 and the agent would only catch up up to 30 s later.)
        before: vec![
            (Kind::BtIdle, 300),
            (Kind::BtWrongHash, 100),
            (Kind::HttpIdle, 200),
            (Kind::HttpSlowloris, 100),
        ],
        // While it seeds: more peers for its torrent than it may have, garbage, more idle
        // connections, and HTTP past the connection limit with bodies held at the size limit.
        during: vec![
            (Kind::BtSilent, 250),
            (Kind::BtGarbage, 100),
            (Kind::BtIdle, 100),
            (Kind::HttpIdle, 250),
            (Kind::HttpSlowloris, 100),
            (Kind::HttpBody, 100),
        ],
    };
    let t = Instant::now();
    let flood = run(&bin, &plan).await;
    eprintln!("flooded ({:.1?}): {flood:#?}", t.elapsed());

    // The agent's limits (imagewolf-bt's SessionConfig and session, the agent's api module).
    let handshake_timeout = SessionConfig::default().handshake_timeout;
    let max_peers = SessionConfig::lan_cluster().max_peers_per_torrent;
    assert_eq!(max_peers as u64, MAX_PEERS);
    let max_pending_handshakes = 256; // imagewolf-bt's MAX_PENDING_HANDSHAKES
    let slack = Duration::from_secs(5);

    // Memory: what the same run costs without the flood, plus a margin that connections each
    // holding a read buffer (850 x 64 KiB) or HTTP bodies at the size limit (100 x 1 MiB)
    // would exceed.
    let margin_kib = 48 * 1024;
    assert!(
        flood.hwm_kib <= base.hwm_kib + margin_kib,
        "peak RSS {} KiB under the flood, {} KiB without",
        flood.hwm_kib,
        base.hwm_kib
    );
    // Sockets: pending handshakes plus the torrent's peers on the BitTorrent port, the
    // connection limit on the API port; and they all go away afterwards.
    assert!(
        flood.max.bt <= max_pending_handshakes + max_peers + 8,
        "{:?}",
        flood.max
    );
    assert!(
        flood.max.api <= imagewolf_agent::api::MAX_CONNECTIONS + 8,
        "{:?}",
        flood.max
    );
    assert!(
        flood.fds_after <= flood.fds_idle + 16,
        "{} descriptors after the flood, {} before",
        flood.fds_after,
        flood.fds_idle
    );
    // The flood did fill the torrent's peer slots (250 silent peers), and the limit held.
    let most = flood.peers_seen.iter().copied().max().unwrap_or(0);
    assert!(
        (FULL_PEERS..=MAX_PEERS).contains(&most),
        "peers seen in /stats: {:?}",
        flood.peers_seen
    );
    // The distribution was not held up: the agent got the image, and the downloader got it
    // from the agent, in about the time they take without the flood.
    let delay = Duration::from_secs(10);
    assert!(
        flood.agent_download < base.agent_download + delay,
        "{:?} flooded, {:?} without",
        flood.agent_download,
        base.agent_download
    );
    assert!(
        flood.seed_download < base.seed_download + delay,
        "{:?} flooded, {:?} without",
        flood.seed_download,
        base.seed_download
    );
    // Real peers and clients were not kept out: the downloader got in at once although
    // every pending-handshake slot was held by idle connections, and the API answered
    // while idle clients held more connections than it serves.
    assert!(
        flood.connect_time < slack,
        "the downloader needed {:?} to connect",
        flood.connect_time
    );
    assert!(
        flood.api_latency < slack,
        "/healthz took {:?}",
        flood.api_latency
    );
    // Every flood connection was closed by the agent, each within its timeout: the handshake
    // timeout on the BitTorrent port (also for peers silent after their handshake), the
    // header timeout on the API, the body timeout for held bodies (or a 503 at once).
    for (kind, &(n, connected, open, longest)) in &flood.flood {
        assert_eq!(connected, n, "{kind:?}: only {connected} of {n} connected");
        assert_eq!(
            open, 0,
            "{kind:?}: {open} of {n} still open after {OBSERVE:?}"
        );
        let limit = match kind {
            Kind::HttpBody => imagewolf_agent::api::BODY_READ_TIMEOUT,
            Kind::HttpIdle | Kind::HttpSlowloris => imagewolf_agent::api::HEADER_READ_TIMEOUT,
            _ => handshake_timeout,
        };
        // Plus time queued in the listen backlog while the agent accepts slowly.
        assert!(
            longest <= limit + Duration::from_secs(8),
            "{kind:?}: a connection lasted {longest:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The engine's side of it, in-process with short timeouts.

fn loopback(handshake_timeout: Duration) -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        handshake_timeout,
        ..SessionConfig::lan_cluster()
    }
}

async fn seed_session(payload: &[u8], handshake_timeout: Duration) -> (Session, Metainfo) {
    let meta = imagewolf_bt::metainfo::TorrentBuilder::new("p.bin")
        .piece_length(256 << 10)
        .build_from_reader(payload, payload.len() as u64, std::io::sink())
        .unwrap();
    let seed = Session::new(loopback(handshake_timeout)).await.unwrap();
    seed.add_torrent(AddTorrent::new(
        meta.clone(),
        Arc::new(MemoryStorage::from_vec(payload.to_vec())),
        StartFrom::Complete,
    ))
    .await
    .unwrap();
    (seed, meta)
}

/// Reads until the other side closes; how long that took.
async fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_keep_a_peer_out() {
    let payload = random_payload(4 << 20, 51);
    let timeout = Duration::from_secs(10);
    let (seed, meta) = seed_session(&payload, timeout).await;
    // Far more silent connections than the seed lets sit in the handshake at once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(seed.listen_addr()).await.unwrap());
    }
    let started = Instant::now();
    let leech = Session::new(loopback(timeout)).await.unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    let h = leech
        .add_torrent(
            AddTorrent::new(meta, out.clone(), StartFrom::Empty).with_peers([seed.listen_addr()]),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), h.wait_complete())
        .await
        .expect("the download never completed")
        .unwrap();
    let took = started.elapsed();
    eprintln!("download behind 300 idle connections: {took:?}");
    // Queued behind them, it would wait for several handshake timeouts.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(out.to_vec() == payload);
    // Every idle connection is closed, none later than the handshake timeout.
    let closes = futures::future::join_all(
        idle.into_iter()
            .map(|s| time_to_close(s, timeout + Duration::from_secs(10))),
    )
    .await;
    let longest = closes
        .iter()
        .map(|c| c.expect("an idle connection was never closed"))
        .max()
        .unwrap();
    assert!(longest <= timeout + Duration::from_secs(3), "{longest:?}");
    leech.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_silent_after_its_handshake_is_dropped_at_the_handshake_timeout() {
    let payload = random_payload(1 << 20, 52);
    let timeout = Duration::from_secs(2);
    let (seed, meta) = seed_session(&payload, timeout).await;
    let handshake = || Handshake::new(meta.info_hash(), PeerId::generate()).encode();
    // Silent after its handshake: closed after the handshake timeout, not the idle timeout.
    let mut silent = TcpStream::connect(seed.listen_addr()).await.unwrap();
    silent.write_all(&handshake()).await.unwrap();
    // One that says something (a keep-alive) is a peer like any other.
    let mut talking = TcpStream::connect(seed.listen_addr()).await.unwrap();
    talking.write_all(&handshake()).await.unwrap();
    talking.write_all(&[0, 0, 0, 0]).await.unwrap();
    let closed = time_to_close(silent, Duration::from_secs(60))
        .await
        .expect("the silent peer is still connected after 60 s");
    assert!(
        closed >= timeout - Duration::from_millis(500)
            && closed <= timeout + Duration::from_secs(3),
        "{closed:?}"
    );
    assert_eq!(
        time_to_close(talking, timeout * 2).await,
        None,
        "a peer that spoke was dropped too"
    );
    seed.shutdown().await;
}

/// Downloads `meta` from `seed` with a fresh session on 127.0.0.1; how long it took.
async fn timed_download(seed: SocketAddr, meta: &Metainfo, payload: &[u8]) -> Duration {
    let started = Instant::now();
    let leech = Session::new(loopback(Duration::from_secs(10)))
        .await
        .unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    let h = leech
        .add_torrent(
            AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty).with_peers([seed]),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), h.wait_complete())
        .await
        .expect("the download never completed")
        .unwrap();
    let took = started.elapsed();
    assert!(out.to_vec() == payload, "downloaded bytes differ");
    leech.shutdown().await;
    took
}

/// An outsider holding thousands of idle connections from its own address (all of
/// 127.0.0.0/8 is loopback: 127.0.0.2 plays the attacker, 127.0.0.1 the real peer) cannot
/// delay a peer from another address: the seed accepts at once and makes room by closing
/// the flooder's connections, not by keeping the newcomer waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_does_not_delay_a_peer_from_another() {
    const FLOOD: usize = 3000;
    // The flood's sockets, and as many again accepted by the seed in this process.
    ensure_fd_limit(2 * FLOOD as u64 + 1024);
    let payload = random_payload(4 << 20, 53);
    let (seed, meta) = seed_session(&payload, Duration::from_secs(10)).await;
    let addr = seed.listen_addr();
    let base = timed_download(addr, &meta, &payload).await;

    let flood_started = Instant::now();
    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    let flood_took = flood_started.elapsed();
    let flooded = timed_download(addr, &meta, &payload).await;
    eprintln!(
        "4 MiB download: {base:?} alone, {flooded:?} behind {FLOOD} idle connections \
         (opened in {flood_took:?})"
    );
    assert!(
        flooded <= base * 2 + Duration::from_millis(750),
        "{flooded:?} behind the flood, {base:?} without"
    );
    drop(idle);
    seed.shutdown().await;
}
