//! Mirror mode on loopback: agents whose endpoints answer pulls nobody announced, pulled
//! from the way a runtime pulls through a `hosts.toml` mirror (manifest by tag with `ns`,
//! then each blob), against an in-process upstream registry that counts what it serves.
//! The runtimes themselves (containerd, dockerd) pull through the mirror in the agent's
//! runtime tests (imagewolf-agent/tests).

use std::net::SocketAddr;
use std::time::Duration;

use imagewolf::http::{self, Reply};
use imagewolf::local_agents::LocalAgents;
use imagewolf::mem_registry::MemRegistry;
use imagewolf::oci::{Blob, Image};
use imagewolf::TempDir;
use imagewolf_agent::registry::HostPolicy;
use sha2::{Digest as _, Sha256};

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json";

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// One GET, with a longer deadline than the helper's for blobs that travel first.
async fn get(endpoint: SocketAddr, path: &str) -> Result<Reply, String> {
    let exchange = http::request(endpoint, "GET", path, &[("Accept", ACCEPT)], b"");
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer in 60 s"))?
        .map_err(|e| format!("GET {path}: {e}"))
}

/// Pulls `repo:tag` through `endpoint` as a runtime does (containerd sends `ns`; dockerd's
/// `registry-mirrors` does not): the manifest's digest and every blob, each checked.
async fn pull(
    endpoint: SocketAddr,
    ns: Option<SocketAddr>,
    repo: &str,
    tag: &str,
) -> Result<String, String> {
    let query = ns.map_or(String::new(), |r| format!("?ns={r}"));
    let m = get(endpoint, &format!("/v2/{repo}/manifests/{tag}{query}")).await?;
    if m.status != 200 {
        return Err(format!("manifest: {} {}", m.status, m.text()));
    }
    let digest = sha256(&m.body);
    if m.header("docker-content-digest") != Some(digest.as_str()) {
        return Err(format!(
            "manifest digest header {:?}",
            m.header("docker-content-digest")
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(&m.body).map_err(|e| e.to_string())?;
    let mut blobs = vec![doc["config"]["digest"].as_str().unwrap_or("").to_owned()];
    for l in doc["layers"].as_array().into_iter().flatten() {
        blobs.push(l["digest"].as_str().unwrap_or("").to_owned());
    }
    let fetches = blobs.iter().map(|b| {
        let path = format!("/v2/{repo}/blobs/{b}{query}");
        async move {
            let r = get(endpoint, &path).await?;
            if r.status != 200 || sha256(&r.body) != *b {
                return Err(format!(
                    "blob {b}: status {}, {} bytes",
                    r.status,
                    r.body.len()
                ));
            }
            Ok(())
        }
    });
    futures::future::try_join_all(fetches).await?;
    Ok(digest)
}

/// The value of an unlabelled sample in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn image() -> Image {
    let layers = (0..4)
        .map(|i| Blob::layer(&format!("l{i}"), (3 << 20) + i * 1000, 40 + i as u64))
        .collect();
    Image::new("linux", "amd64", None, layers)
}

async fn mirrors(
    dir: &TempDir,
    registry: &MemRegistry,
    n: usize,
) -> (LocalAgents, Vec<SocketAddr>) {
    let (mut cluster, _) = LocalAgents::start(dir.path().to_path_buf(), vec![None; n], 0)
        .await
        .unwrap();
    // The upstream is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    cluster.registry_policy = HostPolicy::naming([registry.addr().to_string()]);
    let hub = registry.addr().to_string();
    let mut endpoints = Vec::new();
    for i in 0..n {
        endpoints.push(cluster.enable_mirror(i, 1 << 30, &hub).await.unwrap());
    }
    (cluster, endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_out_reads_each_blob_from_the_upstream_once_and_peers_serve_it_after() {
    let dir = TempDir::new("mirror-scale-out").unwrap();
    let registry = MemRegistry::start(dir.path().join("registry"))
        .await
        .unwrap();
    let img = image();
    let pushed = registry.push("team/app", "v1", &img).unwrap();
    let (cluster, endpoints) = mirrors(&dir, &registry, 6).await;
    let up = Some(registry.addr());

    // The sixth node only resolves the tag (a runtime that has the image does that): it
    // stores the manifest and fetches no blob.
    let head = http::request(
        endpoints[5],
        "HEAD",
        &format!("/v2/team/app/manifests/v1?ns={}", registry.addr()),
        &[("Accept", ACCEPT)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);

    // Five nodes pull at once an image no agent heard of.
    let pulls = endpoints[..5]
        .iter()
        .map(|e| pull(*e, up, "team/app", "v1"));
    for digest in futures::future::try_join_all(pulls).await.unwrap() {
        assert_eq!(digest, pushed, "the registry's manifest digest is kept");
    }
    for blob in img.blobs() {
        assert_eq!(
            registry.blob_gets_of(&blob.digest),
            1,
            "blob {} read from the upstream once for five nodes",
            blob.digest
        );
    }
    let store = http::request(cluster.agents[5].api, "GET", "/stats/store", &[], b"")
        .await
        .unwrap();
    let store: serde_json::Value = serde_json::from_slice(&store.body).unwrap();
    assert_eq!(
        store["blobs"], 1,
        "only the manifest on the node that resolved the tag: {store}"
    );
    // The same pull again: the store answers.
    let before = registry.blob_gets();
    pull(endpoints[0], up, "team/app", "v1").await.unwrap();
    assert_eq!(
        registry.blob_gets(),
        before,
        "a second pull reads no blob upstream"
    );

    // The upstream's blob storage goes down: a sixth node still pulls, from its peers.
    registry.set_blobs_down(true);
    assert_eq!(
        pull(endpoints[5], up, "team/app", "v1").await.unwrap(),
        pushed
    );
    assert_eq!(
        registry.blob_gets(),
        before,
        "the sixth node asked the upstream for no blob"
    );
    // What the nodes say they did (/metrics): five reads upstream in all, every other
    // blob from a peer over BitTorrent, no fallback.
    let mut upstream = 0;
    let mut from_peers = 0;
    for agent in &cluster.agents {
        let m = http::request(agent.api, "GET", "/metrics", &[], b"")
            .await
            .unwrap();
        let text = m.text();
        upstream += metric(&text, "imagewolf_mirror_blobs_upstream_total");
        from_peers += metric(&text, "imagewolf_mirror_blobs_from_peers_total");
        assert_eq!(metric(&text, "imagewolf_mirror_peer_fallbacks_total"), 0);
    }
    assert_eq!(upstream, 5);
    assert_eq!(from_peers, 6 * 5 - 5);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_node_reads_the_upstream_and_a_miss_is_answered_at_once() {
    let dir = TempDir::new("mirror-alone").unwrap();
    let registry = MemRegistry::start(dir.path().join("registry"))
        .await
        .unwrap();
    let img = image();
    let pushed = registry.push("library/app", "latest", &img).unwrap();
    let (cluster, endpoints) = mirrors(&dir, &registry, 1).await;

    // dockerd's `registry-mirrors` sends no `ns`: Docker Hub, here `--hub-registry`.
    assert_eq!(
        pull(endpoints[0], None, "library/app", "latest")
            .await
            .unwrap(),
        pushed
    );
    for blob in img.blobs() {
        assert_eq!(registry.blob_gets_of(&blob.digest), 1);
    }
    // The tag moves upstream: the mirror follows it.
    let img2 = Image::new("linux", "amd64", None, vec![Blob::layer("v2", 1 << 20, 99)]);
    let pushed2 = registry.push("library/app", "latest", &img2).unwrap();
    assert_eq!(
        pull(endpoints[0], None, "library/app", "latest")
            .await
            .unwrap(),
        pushed2
    );

    // Something the upstream does not have: unknown, at once, so the runtime goes on to
    // its next host.
    let started = std::time::Instant::now();
    let r = get(
        endpoints[0],
        &format!("/v2/library/nope/manifests/v1?ns={}", registry.addr()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let missing = sha256(b"no such blob");
    let r = get(
        endpoints[0],
        &format!("/v2/library/app/blobs/{missing}?ns={}", registry.addr()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A registry the host policy does not name is never contacted (SSRF rules hold).
    let r = get(
        endpoints[0],
        "/v2/library/app/manifests/latest?ns=127.0.0.1:1",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    cluster.shutdown().await;
}

/// A blob body read as it comes: the response head, then the body so far.
struct OpenBlob {
    stream: tokio::net::TcpStream,
    size: usize,
    body: Vec<u8>,
}

impl OpenBlob {
    /// Sends a GET for `path` and reads its head (status 200 required).
    async fn get(endpoint: SocketAddr, path: &str) -> OpenBlob {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(endpoint).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let head_end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
                .await
                .expect("no response head in 30 s")
                .unwrap();
            assert!(
                n > 0,
                "closed before the head: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let size = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a content-length");
        OpenBlob {
            stream,
            size,
            body: got[head_end..].to_vec(),
        }
    }

    /// Reads until `at_least` body bytes are in, the body ends, or `wait` passes; returns
    /// whether the connection ended.
    async fn read_until(&mut self, at_least: usize, wait: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 1 << 20];
        while self.body.len() < at_least {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.body.extend_from_slice(&buf[..n]),
            }
        }
        false
    }
}

/// The runtime is not kept waiting for the whole blob: what is in place streams while the
/// rest arrives. A blob that fails its SHA-256 check at the end never reaches it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_streams_to_the_runtime_while_it_arrives_and_a_wrong_one_never_whole() {
    let dir = TempDir::new("mirror-stream").unwrap();
    let registry = MemRegistry::start(dir.path().join("registry"))
        .await
        .unwrap();
    // 24 MiB: a 16 MiB chunk and an 8 MiB one.
    let held = Blob::layer("held", 24 << 20, 7);
    let wrong = Blob::layer("wrong", 20 << 20, 8);
    let img = Image::new("linux", "amd64", None, vec![held.clone(), wrong.clone()]);
    registry.push("library/app", "v1", &img).unwrap();
    registry.hold_blob(&held.digest, 20 << 20);
    registry.corrupt_blob(&wrong.digest);
    let (cluster, endpoints) = mirrors(&dir, &registry, 1).await;
    let ns = registry.addr();
    let m = get(
        endpoints[0],
        &format!("/v2/library/app/manifests/v1?ns={ns}"),
    )
    .await
    .unwrap();
    assert_eq!(m.status, 200, "{}", m.text());

    // The registry sends 20 MiB and stops: the first chunk (16 MiB) reaches the runtime.
    let mut blob = OpenBlob::get(
        endpoints[0],
        &format!("/v2/library/app/blobs/{}?ns={ns}", held.digest),
    )
    .await;
    assert_eq!(blob.size, held.bytes.len());
    let ended = blob.read_until(16 << 20, Duration::from_secs(30)).await;
    assert!(
        !ended && blob.body.len() >= 16 << 20 && blob.body.len() < held.bytes.len(),
        "with the registry holding the rest: {} bytes in, ended: {ended}",
        blob.body.len()
    );
    assert_eq!(blob.body[..], held.bytes[..blob.body.len()]);
    registry.release();
    blob.read_until(blob.size, Duration::from_secs(30)).await;
    assert_eq!(
        sha256(&blob.body),
        held.digest,
        "the whole blob, once released"
    );

    // A body the registry gets wrong: everything but the last byte, then the cut.
    let mut blob = OpenBlob::get(
        endpoints[0],
        &format!("/v2/library/app/blobs/{}?ns={ns}", wrong.digest),
    )
    .await;
    let ended = blob.read_until(blob.size, Duration::from_secs(30)).await;
    assert!(
        ended && blob.body.len() < wrong.bytes.len(),
        "a blob failing its check: {} of {} bytes, ended: {ended}",
        blob.body.len(),
        wrong.bytes.len()
    );
    assert_eq!(blob.body[..], wrong.bytes[..blob.body.len()]);
    cluster.shutdown().await;
}
