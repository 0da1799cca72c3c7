//! Server-side request forgery against the agent binary: whoever can post a registry
//! notification names the registry host, so a notification naming an internal service, or an
//! allowed registry redirecting to one, must not make the agent request it, and nothing an
//! upstream answered may show in `GET /stats` (readable without credentials).
//!
//! The "internal service" is an HTTP server on 127.0.0.1 that counts connections and answers
//! a secret string to every request.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imagewolf::agent_api::{notify_push, wait_for_state};
use imagewolf::docker::free_port;
use imagewolf::{http, ChildGuard, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");
const SECRET: &str = "internal-secret-7f3a9c";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(60);

/// An HTTP server on 127.0.0.1 answering `reply` to every request; counts connections.
struct Server {
    addr: String,
    contacted: Arc<AtomicUsize>,
}

impl Server {
    async fn start(reply: String) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let contacted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&contacted);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match conn.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Server { addr, contacted }
    }

    /// The internal service: 404 with the secret as its body (a registry's "not found"
    /// would be quoted into the error the agent reports, were bodies quoted).
    async fn internal() -> Server {
        Server::start(format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{SECRET}",
            SECRET.len()
        ))
        .await
    }

    fn contacts(&self) -> usize {
        self.contacted.load(Ordering::SeqCst)
    }

    fn port(&self) -> &str {
        self.addr.rsplit_once(':').unwrap().1
    }
}

fn start_agent(dir: &Path, api: u16, args: &[&str]) -> ChildGuard {
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut cmd = Command::new(AGENT);
    cmd.args(["--cluster-secret", "somesecret-somesecret"])
        .args(["--runtime", "none"])
        .args(["--peers", &format!("static:127.0.0.1:{api}")])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args([
            "--bt-listen",
            "127.0.0.1:0",
            "--advertise-addr",
            "127.0.0.1",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard::spawn("agent", &mut cmd).unwrap()
}

async fn wait_healthy(api: SocketAddr, agent: &mut ChildGuard) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http::request(api, "GET", "/healthz", &[], b"").await {
            if r.status == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("the agent exited: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /stats` as text (what anyone can read).
async fn stats_text(api: SocketAddr) -> String {
    let reply = http::request(api, "GET", "/stats", &[], b"").await.unwrap();
    assert_eq!(reply.status, 200);
    reply.text()
}

/// Posts a push of `registry/team/app:v1` and waits for its record to fail; returns its error.
async fn push_and_wait_failed(api: SocketAddr, registry: &str, event: &str) -> String {
    notify_push(api, registry, "team/app", "v1", DIGEST, event).await;
    let record = wait_for_state(api, &format!("{registry}/team/app:v1"), "failed", DEADLINE).await;
    record["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_naming_an_internal_service_is_refused_and_it_is_never_contacted() {
    let internal = Server::internal().await;
    // Both ways an origin pulls: the tarball path and the registry-native (blob) path.
    for mode in ["tarball", "blobs"] {
        let dir = TempDir::new("ssrf-direct").unwrap();
        let port = free_port().unwrap();
        let api = SocketAddr::from(([127, 0, 0, 1], port));
        let mut agent = start_agent(
            dir.path(),
            port,
            &["--distribution", mode, "--endpoint-listen", "127.0.0.1:0"],
        );
        wait_healthy(api, &mut agent).await;
        // By address, and by a name that resolves to it.
        for (i, registry) in [
            internal.addr.clone(),
            format!("localhost:{}", internal.port()),
        ]
        .iter()
        .enumerate()
        {
            let error = push_and_wait_failed(api, registry, &format!("{mode}-{i}")).await;
            assert!(
                error.contains(&format!("registry host {registry} refused"))
                    && error.contains("loopback address")
                    && error.contains("--allow"),
                "{mode}: {registry}: {error}"
            );
        }
        let stats = stats_text(api).await;
        assert!(
            !stats.contains(SECRET),
            "{mode}: /stats shows the answer: {stats}"
        );
        drop(agent);
    }
    assert_eq!(internal.contacts(), 0, "the internal service was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_registry_cannot_redirect_the_agent_nor_leak_answers_into_stats() {
    let internal = Server::internal().await;
    // An allowed registry redirecting everything to the internal service (another port of
    // 127.0.0.1, not named by --allow).
    let redirecting = Server::start(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{}/latest/meta-data\r\nConnection: close\r\n\
         Content-Length: 0\r\n\r\n",
        internal.addr
    ))
    .await;
    // An allowed registry answering 404 with a body of its own that must not be quoted.
    let leaky = Server::internal().await;
    let dir = TempDir::new("ssrf-redirect").unwrap();
    let port = free_port().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let allow = format!("{}/**,{}/**", redirecting.addr, leaky.addr);
    let mut agent = start_agent(dir.path(), port, &["--allow", &allow]);
    wait_healthy(api, &mut agent).await;

    let error = push_and_wait_failed(api, &redirecting.addr, "r1").await;
    assert!(
        error.contains(&format!("redirect to {} refused", internal.addr))
            && error.contains("loopback address"),
        "{error}"
    );
    assert!(
        redirecting.contacts() >= 1,
        "the allowed registry was asked"
    );

    let error = push_and_wait_failed(api, &leaky.addr, "l1").await;
    assert!(
        error.contains("registry answered 404 Not Found for manifest"),
        "{error}"
    );
    assert!(leaky.contacts() >= 1, "the allowed registry was asked");

    let stats = stats_text(api).await;
    assert!(
        !stats.contains(SECRET),
        "/stats shows an upstream answer: {stats}"
    );
    assert!(
        !stats.contains("meta-data"),
        "/stats quotes the Location: {stats}"
    );
    assert_eq!(internal.contacts(), 0, "the redirect was followed");
    drop(agent);
}
