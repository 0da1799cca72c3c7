//! Faults on the registry-native path, with real agents in one process on loopback
//! (`--runtime none`) and Debian's real registry: a receiver restarted half-way through a
//! blob resumes from its partial file; a blob whose bytes do not match its digest, or a
//! manifest whose content does not, is never stored or served; announcements over the bounds
//! are refused before anything is allocated; a blob larger than the store's whole budget is
//! refused before a byte of it moves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use imagewolf::agent_api::{
    agent_call, image_record, notify_push, stats as agent_stats, wait_for_state,
};
use imagewolf::docker::Registry;
use imagewolf::http;
use imagewolf::local_agents::{stored_blobs, LocalAgents, TEST_CLUSTER_SECRET};
use imagewolf::oci::{self, Blob, Image};
use imagewolf::TempDir;
use imagewolf_agent::allowlist::Allowlist;
use imagewolf_agent::api::{self, AgentApi, ApiConfig};
use imagewolf_agent::auth::{ClusterKey, AUTH_HEADER};
use imagewolf_agent::distributor::{
    BlobPath, Distributor, DistributorApi, DistributorConfig, RetryPolicy, DEFAULT_STALL_TIMEOUT,
};
use imagewolf_agent::image::{self as announced, Distribution, ImageRef};
use imagewolf_agent::loader::KeepTarball;
use imagewolf_agent::registry::manifest::Platform;
use imagewolf_agent::registry::{HostPolicy, RegistrySource};
use imagewolf_agent::source::NoSource;
use imagewolf_agent::store::Store;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long any one state may take to come.
const DEADLINE: Duration = Duration::from_secs(90);

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// An agent assembled here rather than by [`LocalAgents`], so it can be stopped on its own
/// and a new one started on the same data dir (a restart): its API, endpoint and
/// BitTorrent session, with the registry-native path on (`budget` bytes of store). It knows
/// no other agent (no catch-up): announcements reach it only as the test posts them.
struct Node {
    api: SocketAddr,
    endpoint: SocketAddr,
    distributor: Arc<Distributor>,
    data_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    _agents: watch::Sender<Vec<SocketAddr>>,
}

impl Node {
    async fn start(data_dir: PathBuf, budget: u64) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let (agents_tx, agents) = watch::channel(Vec::new());
        let (shutdown, _) = watch::channel(false);
        let distributor = Distributor::start(
            DistributorConfig {
                data_dir: data_dir.clone(),
                advertise: api.ip(),
                api_port: api.port(),
                bt_listen: SocketAddr::new(api.ip(), 0),
                seed_time: Duration::from_secs(600),
                // The cluster's secret: it fetches torrents from LocalAgents origins.
                cluster_secret: Some(TEST_CLUSTER_SECRET.to_vec()),
                allow: Allowlist::allow_all(),
                max_torrents: 16,
                retry: RetryPolicy::default(),
                stall_timeout: DEFAULT_STALL_TIMEOUT,
            },
            Arc::new(NoSource),
            Arc::new(KeepTarball::new(data_dir.join("loaded")).unwrap()),
            agents,
        )
        .await
        .unwrap();
        tokio::spawn(api::serve(
            listener,
            Arc::new(DistributorApi(Arc::clone(&distributor))) as Arc<dyn AgentApi>,
            ApiConfig {
                registry_override: None,
                hub_registry: "docker.io".into(),
                max_body: api::DEFAULT_MAX_BODY,
                webhook_token: None,
                cluster_key: Some(ClusterKey::new(TEST_CLUSTER_SECRET)),
            },
            shutdown.subscribe(),
        ));
        let store = Store::open(&data_dir.join("store"), budget).unwrap();
        let endpoint_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = endpoint_listener.local_addr().unwrap();
        let path = BlobPath::new(
            store,
            RegistrySource::for_platform(amd64()),
            endpoint.to_string(),
        )
        .with_platforms(amd64(), &[amd64()]);
        let content = distributor.enable_blobs(path);
        tokio::spawn(imagewolf_agent::endpoint::serve(
            endpoint_listener,
            content,
            imagewolf_agent::endpoint::EndpointConfig::default(),
            shutdown.subscribe(),
        ));
        Node {
            api,
            endpoint,
            distributor,
            data_dir,
            shutdown,
            _agents: agents_tx,
        }
    }

    /// Stops its API and endpoint and its BitTorrent session.
    async fn stop(self) {
        self.shutdown.send_replace(true);
        self.distributor.shutdown().await;
    }
}

/// `GET /stats/store`.
async fn store_stats(api: SocketAddr) -> Value {
    let reply = http::request(api, "GET", "/stats/store", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

/// The files in a store's `ingest/` (partial downloads, writers' temp files).
fn ingest(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("store/ingest"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// `POST /v1/distributions` of `d` to `api` as a member of the cluster announces it (`d`
/// signed, the request signed): the HTTP status and the JSON answer.
async fn announce(api: SocketAddr, d: &Distribution) -> (u16, Value) {
    let mut d = d.clone();
    d.sign(TEST_CLUSTER_SECRET);
    let body = serde_json::to_vec(&d).unwrap();
    if body.len() > api::DEFAULT_MAX_BODY {
        return announce_head_only(api, body.len()).await;
    }
    let reply = agent_call(
        api,
        "POST",
        "/v1/distributions",
        Some(TEST_CLUSTER_SECRET),
        &body,
    )
    .await;
    let answer = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, answer)
}

/// A `POST /v1/distributions` declaring a body of `len` bytes, over the API's limit: the
/// head only, since the API answers such a request from its `Content-Length` before reading
/// a byte (sending the body would race the close of the connection with a reset).
async fn announce_head_only(api: SocketAddr, len: usize) -> (u16, Value) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(api).await?;
        // Signed (over an empty body: the head is refused for its length before the body
        // would be checked).
        let auth =
            ClusterKey::new(TEST_CLUSTER_SECRET).sign_request("POST", "/v1/distributions", b"");
        let head = format!(
            "POST /v1/distributions HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n{AUTH_HEADER}: {auth}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the API answers a too-large announcement without its body")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A fresh distribution id (40 hex digits).
fn fresh_id() -> String {
    (0..5)
        .map(|_| format!("{:08x}", rand::random::<u32>()))
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An announcement of `image` (a single-platform OCI image) as `registry/repository:tag`
/// with `blobs`, its `.torrent` files at `api`, seeded at `seeders`.
fn distribution(
    image: &Image,
    repository: &str,
    blobs: Vec<announced::Blob>,
    api: SocketAddr,
    seeders: Vec<String>,
    complete: bool,
) -> Distribution {
    Distribution {
        image: ImageRef {
            registry: "127.0.0.1:5999".into(),
            repository: repository.into(),
            tag: Some("v1".into()),
            digest: Some(image.digest.clone()),
        },
        image_id: image.config.digest.clone(),
        id: fresh_id(),
        size_hint: image.blobs().iter().map(|b| b.bytes.len() as u64).sum(),
        segments: Vec::new(),
        sha256: None,
        seeders,
        created: now_secs(),
        signature: None,
        blobs: Some(announced::BlobSet {
            api: api.to_string(),
            manifest: image.digest.clone(),
            manifests: vec![announced::ManifestDoc {
                digest: image.digest.clone(),
                media_type: oci::OCI_MANIFEST.into(),
                content: base64::engine::general_purpose::STANDARD.encode(&image.manifest),
            }],
            blobs,
            complete,
        }),
    }
}

/// The reference a distribution of `repository:v1` from [`distribution`] shows in /stats.
fn reference_of(repository: &str) -> String {
    format!("127.0.0.1:5999/{repository}:v1")
}

// ---------------------------------------------------------------------------------------
// 1. Restart mid-distribution.
// ---------------------------------------------------------------------------------------

/// A receiver stopped with two thirds of a 48 MiB blob in its partial file and its two small
/// blobs committed; a new agent on the same data dir is announced the whole image: it
/// fetches neither small blob again, re-checks the partial file's pieces and downloads only
/// the chunk that was missing, then commits the blob verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_receiver_resumes_from_its_partial_file() {
    let registry = Registry::start_local().unwrap_or_else(|e| {
        panic!("the registry-native tests need Debian's docker-registry (apt-get install docker-registry): {e}")
    });
    let reg_addr: SocketAddr = registry.addr().parse().unwrap();
    let repo = "team/big";
    let big = Blob::new(imagewolf::random_payload(48 << 20, 7));
    let small = Blob::layer("small.bin", 1 << 20, 8);
    let image = Image::new("linux", "amd64", None, vec![big.clone(), small.clone()]);
    oci::push_image(reg_addr, repo, &image).await.unwrap();
    oci::push_manifest(reg_addr, repo, "v1", oci::OCI_MANIFEST, &image.manifest)
        .await
        .unwrap();

    // The origin reads it from the registry and seeds it; it announces to nobody (its peer
    // list is itself): the receivers get what the test posts.
    let dir = TempDir::new("blob-faults-resume").unwrap();
    // The test registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let policy = HostPolicy::naming([registry.addr()]);
    let source: Arc<dyn imagewolf_agent::source::ImageSource> =
        Arc::new(RegistrySource::new().with_policy(policy.clone()));
    let (mut origin, _) = LocalAgents::start(dir.path().join("origin"), vec![Some(source)], 0)
        .await
        .unwrap();
    origin.registry_policy = policy;
    origin
        .enable_blobs(0, 1 << 30, amd64(), &[amd64()])
        .await
        .unwrap();
    let origin_api = origin.agents[0].api;
    notify_push(origin_api, registry.addr(), repo, "v1", &image.digest, "v1").await;
    let reference = format!("{}/{repo}:v1", registry.addr());
    wait_for_state(origin_api, &reference, "loaded", DEADLINE).await;
    let reply = agent_call(
        origin_api,
        "GET",
        "/v1/distributions",
        Some(TEST_CLUSTER_SECRET),
        b"",
    )
    .await;
    let listed: Vec<Distribution> = serde_json::from_slice(&reply.body).unwrap();
    let full = listed
        .into_iter()
        .find(|d| d.image.repository == repo)
        .expect("the origin lists its distribution");
    let set = full.blobs.as_ref().unwrap();
    assert!(set.complete);
    let big_entry = set.blobs.iter().find(|b| b.digest == big.digest).unwrap();
    assert!(
        big_entry.chunks.len() >= 3,
        "48 MiB should be several chunks: {:?}",
        big_entry.chunks
    );

    // Receiver 1 hears of every chunk but the big blob's last: it commits the config and the
    // small layer, fills two thirds of the big blob's partial file, and waits for the rest.
    let mut truncated = full.clone();
    let t = truncated.blobs.as_mut().unwrap();
    t.complete = false;
    let b = t.blobs.iter_mut().find(|b| b.digest == big.digest).unwrap();
    let last = b.chunks.pop().unwrap();
    let prefix = b.announced() as usize;
    let data_dir = dir.path().join("receiver");
    let first = Node::start(data_dir.clone(), 1 << 30).await;
    let (status, answer) = announce(first.api, &truncated).await;
    assert_eq!((status, &answer["status"]), (200, &Value::from("started")));
    let partial = data_dir
        .join("store/ingest")
        .join(format!("{}.partial", hex_of(&big.digest)));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let have = stored_blobs(&data_dir);
        let smalls = have.contains(&image.config.digest) && have.contains(&small.digest);
        let filled = smalls
            && std::fs::read(&partial)
                .is_ok_and(|p| p.len() >= prefix && p[..prefix] == big.bytes[..prefix]);
        if filled {
            break;
        }
        let r = image_record(first.api, &reference).await.unwrap();
        assert_ne!(r["state"], "failed", "{r}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "receiver 1 did not fill two thirds of the blob: {r}, store {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!stored_blobs(&data_dir).contains(&big.digest));

    // Stop it. Its run fails (its torrents stopped); the partial file stays.
    let distributor = Arc::clone(&first.distributor);
    let first_api = first.api;
    let before = agent_stats(first_api).await;
    first.stop().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let failed = loop {
        let r = distributor
            .images()
            .into_iter()
            .find(|i| i.reference.starts_with(&reference))
            .unwrap();
        if r.state.as_str() == "failed" {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "receiver 1's run did not end: {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        failed.error.as_deref().unwrap_or("").contains("stopped"),
        "{failed:?}"
    );
    drop(distributor);
    assert!(partial.exists(), "the partial file was removed");

    // Receiver 2 on the same data dir, announced the whole image.
    let second = Node::start(data_dir.clone(), 1 << 30).await;
    let (status, answer) = announce(second.api, &full).await;
    assert_eq!((status, &answer["status"]), (200, &Value::from("started")));
    let r = wait_for_state(second.api, &reference, "loaded", DEADLINE).await;
    assert_eq!(r["blobs"]["total"], 3, "{r}");
    assert_eq!(
        r["blobs"]["present"], 2,
        "the config and the small layer committed before the restart: {r}"
    );
    assert_eq!(
        r["blobs"]["bytes_needed"].as_u64().unwrap(),
        big.bytes.len() as u64
    );
    let down = r["bytes_down"].as_u64().unwrap();
    assert!(
        down >= last.len && down < last.len + (prefix as u64) / 2,
        "the resumed run downloaded {down} bytes; the missing chunk is {} of {} bytes: the \
         partial file's {prefix} bytes were not reused",
        last.len,
        big.bytes.len()
    );
    let committed = std::fs::read(
        data_dir
            .join("store/blobs/sha256")
            .join(hex_of(&big.digest)),
    )
    .expect("the big blob is committed");
    assert!(committed == big.bytes, "the committed blob differs");
    assert!(ingest(&data_dir).is_empty(), "{:?}", ingest(&data_dir));
    let s = store_stats(second.api).await;
    assert_eq!(
        s["commits"], 1,
        "only the big blob committed after the restart: {s}"
    );
    assert_eq!(s["rejected"], 0, "{s}");
    // Its endpoint serves the blob.
    let reply = http::request(
        second.endpoint,
        "GET",
        &format!("/v2/{repo}/blobs/{}", big.digest),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body == big.bytes, "the endpoint serves other bytes");
    second.stop().await;
    origin.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. Bytes that do not match their digest.
// ---------------------------------------------------------------------------------------

/// The torrent of chunk 0 of a blob `digest` whose announced size is `bytes.len()`, over
/// `bytes`: the chunk rule of `distributor/blobs/chunks.rs` (name `<hex>.<i>`, piece length
/// `piece_length_for(size)`) for a blob of one chunk (16 MiB at most).
fn chunk_torrent(digest: &str, bytes: &[u8]) -> imagewolf_bt::metainfo::Metainfo {
    assert!(bytes.len() <= 16 << 20, "one chunk only");
    let len = bytes.len() as u64;
    imagewolf_bt::metainfo::TorrentBuilder::new(format!("{}.0", hex_of(digest)))
        .piece_length(imagewolf_bt::metainfo::piece_length_for(len))
        .created_by(None)
        .build_from_reader(bytes, len, std::io::sink())
        .unwrap()
}

/// Serves `GET /v1/torrents/<info-hash>` from `torrents` (an attacker's agent API) until
/// aborted.
async fn serve_torrents(
    torrents: Vec<(String, Vec<u8>)>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let torrents = Arc::new(torrents);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let torrents = Arc::clone(&torrents);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let found = path
                    .strip_prefix("/v1/torrents/")
                    .and_then(|ih| torrents.iter().find(|(h, _)| h == ih));
                let (status, body): (&str, &[u8]) = match found {
                    Some((_, bytes)) => ("200 OK", bytes),
                    None => ("404 Not Found", b""),
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/x-bittorrent\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// An attacker announces (no cluster secret) an image whose layer's chunk torrent is of
/// other bytes than the layer's digest, seeds those bytes and serves the `.torrent`: the
/// receiver downloads them, and refuses them at the commit: the record fails naming the
/// mismatch, nothing is stored or left in `ingest/`, the store counts a rejection, and the
/// endpoint answers 404 for the blob. A manifest whose content does not match its digest
/// is refused too, and stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_that_do_not_match_their_digest_are_never_stored_or_served() {
    let dir = TempDir::new("blob-faults-hostile").unwrap();
    let node = Node::start(dir.path().join("receiver"), 1 << 30).await;
    let repo = "evil/app";
    let layer = Blob::layer("layer.bin", 1 << 20, 21);
    let image = Image::new("linux", "amd64", None, vec![layer.clone()]);
    let forged = imagewolf::random_payload(layer.bytes.len(), 22);
    assert_ne!(forged, layer.bytes);

    // The attacker seeds the true config and the forged layer, and serves their torrents.
    let (seed, config_meta, _config_handle) =
        seed_chunk(&image.config.digest, image.config.bytes.clone()).await;
    let forged_meta = chunk_torrent(&layer.digest, &forged);
    let forged_handle = seed
        .add_torrent(imagewolf_bt::AddTorrent::new(
            forged_meta.clone(),
            Arc::new(imagewolf_bt::storage::MemoryStorage::from_vec(
                forged.clone(),
            )),
            imagewolf_bt::StartFrom::Complete,
        ))
        .await
        .unwrap();
    let (attacker_api, server) = serve_torrents(vec![
        (config_meta.info_hash().to_hex(), config_meta.to_bytes()),
        (forged_meta.info_hash().to_hex(), forged_meta.to_bytes()),
    ])
    .await;
    let chunk = |m: &imagewolf_bt::metainfo::Metainfo| announced::Chunk {
        info_hash: m.info_hash().to_hex(),
        len: m.total_len(),
    };
    let blobs = vec![
        announced::Blob {
            digest: image.config.digest.clone(),
            size: image.config.bytes.len() as u64,
            chunks: vec![chunk(&config_meta)],
        },
        announced::Blob {
            digest: layer.digest.clone(),
            size: layer.bytes.len() as u64,
            chunks: vec![chunk(&forged_meta)],
        },
    ];
    let d = distribution(
        &image,
        repo,
        blobs.clone(),
        attacker_api,
        vec![seed.listen_addr().to_string()],
        true,
    );
    let before = store_stats(node.api).await;
    let (status, answer) = announce(node.api, &d).await;
    assert_eq!((status, &answer["status"]), (200, &Value::from("started")));
    let r = wait_for_state(node.api, &reference_of(repo), "failed", DEADLINE).await;
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains(&layer.digest) && error.contains("hashes to"),
        "the error does not name the mismatch: {error}"
    );
    assert!(
        forged_handle.stats().uploaded >= forged.len() as u64,
        "the receiver did not download the forged bytes: {:?}",
        forged_handle.stats()
    );
    let data_dir = &node.data_dir;
    let have = stored_blobs(data_dir);
    assert!(!have.contains(&layer.digest), "{have:?}");
    assert!(!data_dir
        .join("store/blobs/sha256")
        .join(hex_of(&layer.digest))
        .exists());
    assert!(ingest(data_dir).is_empty(), "{:?}", ingest(data_dir));
    let after = store_stats(node.api).await;
    assert_eq!(
        after["rejected"].as_u64().unwrap(),
        before["rejected"].as_u64().unwrap() + 1,
        "{after}"
    );
    assert_eq!(after["partial_bytes"], 0, "{after}");
    let reply = http::request(
        node.endpoint,
        "GET",
        &format!("/v2/{repo}/blobs/{}", layer.digest),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 404, "the endpoint serves the refused blob");

    // A manifest whose content is not what its digest says.
    let repo2 = "evil/manifest";
    let mut lying = distribution(
        &image,
        repo2,
        blobs,
        attacker_api,
        vec![seed.listen_addr().to_string()],
        true,
    );
    let other = Image::new("linux", "amd64", None, vec![Blob::layer("x", 1024, 23)]);
    let set = lying.blobs.as_mut().unwrap();
    set.manifests[0].content = base64::engine::general_purpose::STANDARD.encode(&other.manifest);
    let before = store_stats(node.api).await;
    let (status, answer) = announce(node.api, &lying).await;
    assert_eq!(status, 200, "{answer}");
    if answer["status"] == "ignored" {
        let reason = answer["reason"].as_str().unwrap_or("");
        assert!(reason.contains("digest"), "{answer}");
    } else {
        assert_eq!(answer["status"], "started", "{answer}");
        let r = wait_for_state(node.api, &reference_of(repo2), "failed", DEADLINE).await;
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains(&image.digest) && error.contains("does not match its digest"),
            "{error}"
        );
    }
    let after = store_stats(node.api).await;
    assert_eq!(after["commits"], before["commits"], "{after}");
    assert_eq!(after["bytes"], before["bytes"], "{after}");
    assert!(!stored_blobs(data_dir).contains(&other.digest));
    let reply = http::request(
        node.endpoint,
        "GET",
        &format!("/v2/{repo2}/manifests/{}", other.digest),
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 404);

    server.abort();
    seed.shutdown().await;
    node.stop().await;
}

/// A loopback session seeding `bytes` as chunk 0 of blob `digest`.
async fn seed_chunk(
    digest: &str,
    bytes: Vec<u8>,
) -> (
    imagewolf_bt::Session,
    imagewolf_bt::metainfo::Metainfo,
    imagewolf_bt::TorrentHandle,
) {
    let meta = chunk_torrent(digest, &bytes);
    let session = imagewolf_bt::Session::new(imagewolf_bt::SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        ..imagewolf_bt::SessionConfig::default()
    })
    .await
    .unwrap();
    let handle = session
        .add_torrent(imagewolf_bt::AddTorrent::new(
            meta.clone(),
            Arc::new(imagewolf_bt::storage::MemoryStorage::from_vec(bytes)),
            imagewolf_bt::StartFrom::Complete,
        ))
        .await
        .unwrap();
    (session, meta, handle)
}

// ---------------------------------------------------------------------------------------
// 3. Bounds before allocation.
// ---------------------------------------------------------------------------------------

/// Announcements over the bounds (10,000 blobs, 1,025 blobs, a 2 TiB blob, 5,000 chunks in a
/// blob) are refused at `POST /v1/distributions` with a reason and leave no record; the same
/// announcement within the bounds is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_over_the_bounds_are_refused_before_anything_exists() {
    let dir = TempDir::new("blob-faults-bounds").unwrap();
    let node = Node::start(dir.path().join("receiver"), 1 << 30).await;
    let image = Image::new("linux", "amd64", None, vec![Blob::layer("l.bin", 4096, 31)]);
    // Nobody serves torrents there: a taken announcement waits for chunks.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let blob = |i: u64, size: u64| announced::Blob {
        digest: format!("sha256:{i:064x}"),
        size,
        chunks: Vec::new(),
    };
    let own = |b: &Blob| announced::Blob {
        digest: b.digest.clone(),
        size: b.bytes.len() as u64,
        chunks: Vec::new(),
    };
    let within = vec![own(&image.config), own(&image.layers[0])];
    let many = |n: u64| {
        let mut v = within.clone();
        v.extend((0..n).map(|i| blob(i + 1, 1)));
        v
    };
    let mut huge = within.clone();
    huge.push(blob(1, 2 << 40));
    let mut chunky = within.clone();
    chunky[1].size = 1 << 30;
    chunky[1].chunks = (0..5_000)
        .map(|i| announced::Chunk {
            info_hash: format!("{i:040x}"),
            len: 1,
        })
        .collect();
    let cases: Vec<(&str, Vec<announced::Blob>, &str)> = vec![
        ("bounds/ten-thousand", many(10_000), "blobs"),
        ("bounds/max-plus-one", many(1_024), "more than 1024 blobs"),
        ("bounds/two-tib", huge, "too large"),
        ("bounds/chunks", chunky, "more than 4096 chunks"),
    ];
    for (repo, blobs, why) in cases {
        let n = blobs.len();
        let d = distribution(&image, repo, blobs, nowhere, Vec::new(), false);
        let (status, answer) = announce(node.api, &d).await;
        // Over the request body limit: 413 with a reason; within it: the bound's reason.
        let refused = ((400..500).contains(&status)
            && answer["error"].as_str().is_some_and(|e| !e.is_empty()))
            || (status == 200
                && answer["status"] == "ignored"
                && answer["reason"].as_str().is_some_and(|r| r.contains(why)));
        assert!(
            refused,
            "{repo} ({n} blobs): not refused: {status} {answer}"
        );
        assert!(
            image_record(node.api, &reference_of(repo)).await.is_none(),
            "{repo}: a record exists"
        );
    }
    // The 1,025-blob case fits the request body limit, so the bound itself refused it; the
    // control within the bounds is taken (and waits for its chunks).
    let d = distribution(&image, "bounds/within", within, nowhere, Vec::new(), false);
    let (status, answer) = announce(node.api, &d).await;
    assert_eq!((status, &answer["status"]), (200, &Value::from("started")));
    assert!(image_record(node.api, &reference_of("bounds/within"))
        .await
        .is_some());
    assert_eq!(agent_stats(node.api).await.len(), 1);
    node.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. A full store.
// ---------------------------------------------------------------------------------------

/// A receiver whose store budget (3 MiB) is smaller than a layer of the image (4 MiB) fails
/// the distribution at once, saying so, without fetching anything: its store holds what it
/// held (an earlier image), no partial file, nothing rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_larger_than_the_store_budget_is_refused_before_it_moves() {
    let registry = Registry::start_local().unwrap_or_else(|e| {
        panic!("the registry-native tests need Debian's docker-registry (apt-get install docker-registry): {e}")
    });
    let reg_addr: SocketAddr = registry.addr().parse().unwrap();
    let repo = "team/full";
    let base = Blob::layer("base.bin", 256 << 10, 41);
    let v1 = Image::new("linux", "amd64", None, vec![base.clone()]);
    let big = Blob::new(imagewolf::random_payload(4 << 20, 42));
    let v2 = Image::new("linux", "amd64", None, vec![base.clone(), big.clone()]);
    for (image, tag) in [(&v1, "v1"), (&v2, "v2")] {
        oci::push_image(reg_addr, repo, image).await.unwrap();
        oci::push_manifest(reg_addr, repo, tag, oci::OCI_MANIFEST, &image.manifest)
            .await
            .unwrap();
    }

    let dir = TempDir::new("blob-faults-full").unwrap();
    // The test registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let policy = HostPolicy::naming([registry.addr()]);
    let source: Arc<dyn imagewolf_agent::source::ImageSource> =
        Arc::new(RegistrySource::new().with_policy(policy.clone()));
    let (mut cluster, _) =
        LocalAgents::start(dir.path().to_path_buf(), vec![Some(source), None], 0)
            .await
            .unwrap();
    cluster.registry_policy = policy;
    cluster
        .enable_blobs(0, 1 << 30, amd64(), &[amd64()])
        .await
        .unwrap();
    let budget: u64 = 3 << 20;
    cluster
        .enable_blobs(1, budget, amd64(), &[amd64()])
        .await
        .unwrap();
    let (origin, node) = (cluster.agents[0].api, cluster.agents[1].api);
    let data_dir = cluster.agents[1].data_dir.clone();

    // v1 fits.
    notify_push(origin, registry.addr(), repo, "v1", &v1.digest, "v1").await;
    wait_for_state(
        node,
        &format!("{}/{repo}:v1", registry.addr()),
        "loaded",
        DEADLINE,
    )
    .await;
    let before = store_stats(node).await;
    let held = stored_blobs(&data_dir);
    assert!(held.contains(&base.digest), "{held:?}");

    // v2's 4 MiB layer does not.
    notify_push(origin, registry.addr(), repo, "v2", &v2.digest, "v2").await;
    let v2_ref = format!("{}/{repo}:v2", registry.addr());
    let r = wait_for_state(node, &v2_ref, "failed", DEADLINE).await;
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains(&big.digest)
            && error.contains("budget")
            && error.contains(&big.bytes.len().to_string())
            && error.contains(&budget.to_string()),
        "the error does not say the blob exceeds the budget: {error}"
    );
    let after = store_stats(node).await;
    for field in ["bytes", "blobs", "commits", "rejected", "budget"] {
        assert_eq!(after[field], before[field], "{field}: {before} -> {after}");
    }
    assert_eq!(after["partial_bytes"], 0, "{after}");
    assert!(ingest(&data_dir).is_empty(), "{:?}", ingest(&data_dir));
    assert_eq!(stored_blobs(&data_dir), held, "the store changed");
    // The origin seeded v2's blobs; the node fetched none of the new ones (what its
    // torrents uploaded is the base layer shared with v1, sent for v1).
    let seeded = wait_for_state(origin, &v2_ref, "loaded", DEADLINE).await;
    assert!(
        seeded["bytes_up"].as_u64().unwrap() < big.bytes.len() as u64,
        "the node fetched the layer it cannot store: {seeded}"
    );
    cluster.shutdown().await;
}
