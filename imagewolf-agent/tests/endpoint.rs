//! The read-only registry endpoint against REAL runtimes: Debian's dockerd 20.10 and
//! containerd 1.6, each started by the test (own state, stopped by pid), pull an image built
//! by hand (two gzip'd layers of random files, a config, a schema2 manifest) from
//! `imagewolf_agent::endpoint::serve` on 127.0.0.1, and keep the manifest digest.
//!
//! Needs root, `docker.io`, `containerd` (with `ctr`) and `gzip`; without them the tests fail
//! with the install command, they never skip.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use imagewolf::containerd::{require_containerd, Containerd};
use imagewolf::docker::Dockerd;
use imagewolf::{require_tool, TempDir};
use imagewolf_agent::endpoint::{serve, Content, EndpointConfig, EndpointCounts, EndpointStats};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const REPOSITORY: &str = "team/app";
const TAG: &str = "v1";
const UPSTREAM: &str = "upstream.invalid:5000";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The host's architecture in Go's naming (what runtimes match image configs against).
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => panic!("no Go name known for architecture {other}"),
    }
}

/// An image made by hand, its blobs as files in `dir`.
struct TestImage {
    _dir: TempDir,
    manifest: Bytes,
    manifest_digest: String,
    config_digest: String,
    layer_digests: Vec<String>,
    /// Every blob (config and layers) by digest: file and length.
    blobs: HashMap<String, (PathBuf, u64)>,
}

/// A tar of `files` random files under `layerN/`, gzip'd with `gzip -n`; returns the
/// compressed blob's path, its digest and the uncompressed tar's digest (the diff_id).
fn make_layer(dir: &Path, n: usize, files: usize) -> (PathBuf, String, String) {
    let gzip = require_tool("gzip", "gzip");
    let mut builder = tar::Builder::new(Vec::new());
    let top = format!("layer{n}");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(1_700_000_000);
    builder
        .append_data(&mut header, format!("{top}/"), io::empty())
        .unwrap();
    for i in 0..files {
        let data = imagewolf::random_payload(48 * 1024 + i * 1000, rand_seed());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, format!("{top}/file{i}"), &data[..])
            .unwrap();
    }
    let tar_bytes = builder.into_inner().unwrap();
    let diff_id = digest_of(&tar_bytes);
    let tar_path = dir.join(format!("layer{n}.tar"));
    fs::write(&tar_path, &tar_bytes).unwrap();
    let out = Command::new(gzip)
        .args(["-n", "-c"])
        .arg(&tar_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "gzip failed: {:?}", out);
    let digest = digest_of(&out.stdout);
    let path = dir.join(format!("layer{n}.tar.gz"));
    fs::write(&path, &out.stdout).unwrap();
    (path, digest, diff_id)
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

fn build_image() -> TestImage {
    let dir = TempDir::new("endpoint-img").unwrap();
    let mut blobs = HashMap::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for n in 0..2 {
        let (path, digest, diff_id) = make_layer(dir.path(), n, 3 + n);
        let len = fs::metadata(&path).unwrap().len();
        blobs.insert(digest.clone(), (path, len));
        layers.push((digest, len));
        diff_ids.push(diff_id);
    }
    let config = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [
            { "created": "2024-01-01T00:00:00Z", "created_by": "imagewolf endpoint test: layer 0" },
            { "created": "2024-01-01T00:00:00Z", "created_by": "imagewolf endpoint test: layer 1" },
        ],
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = digest_of(&config);
    let config_path = dir.path().join("config.json");
    fs::write(&config_path, &config).unwrap();
    blobs.insert(config_digest.clone(), (config_path, config.len() as u64));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "size": config.len(), "digest": config_digest },
        "layers": layers
            .iter()
            .map(|(digest, size)| serde_json::json!({
                "mediaType": LAYER_TYPE, "size": size, "digest": digest,
            }))
            .collect::<Vec<_>>(),
    });
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    TestImage {
        manifest_digest: digest_of(&manifest),
        manifest,
        config_digest,
        layer_digests: layers.into_iter().map(|(d, _)| d).collect(),
        blobs,
        _dir: dir,
    }
}

/// What the endpoint serves in these tests: one image, its tag (for no registry or for
/// [`UPSTREAM`]), and a record of what was asked.
struct FileContent {
    manifest: Bytes,
    manifest_digest: String,
    blobs: HashMap<String, (PathBuf, u64)>,
    /// Every tag resolution: (registry, repository, tag).
    resolutions: Mutex<Vec<(Option<String>, String, String)>>,
    /// Times each blob was handed out.
    served: Mutex<HashMap<String, usize>>,
}

impl FileContent {
    fn take_served(&self) -> HashMap<String, usize> {
        std::mem::take(&mut *self.served.lock().unwrap())
    }

    fn take_resolutions(&self) -> Vec<(Option<String>, String, String)> {
        std::mem::take(&mut *self.resolutions.lock().unwrap())
    }
}

impl Content for FileContent {
    fn manifest(&self, digest: &str) -> Option<(Bytes, String)> {
        (digest == self.manifest_digest).then(|| (self.manifest.clone(), MANIFEST_TYPE.into()))
    }

    fn resolve_tag(&self, registry: Option<&str>, repository: &str, tag: &str) -> Option<String> {
        self.resolutions.lock().unwrap().push((
            registry.map(str::to_owned),
            repository.to_owned(),
            tag.to_owned(),
        ));
        let known_registry = registry.is_none() || registry == Some(UPSTREAM);
        (known_registry && repository == REPOSITORY && tag == TAG)
            .then(|| self.manifest_digest.clone())
    }

    fn blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Option<(fs::File, u64)>> {
        Box::pin(async move {
            let (path, len) = self.blobs.get(digest)?;
            *self
                .served
                .lock()
                .unwrap()
                .entry(digest.to_owned())
                .or_default() += 1;
            Some((fs::File::open(path).ok()?, *len))
        })
    }
}

/// The endpoint on its own runtime (the test body blocks on CLI runs), stopped on drop.
struct Endpoint {
    addr: SocketAddr,
    content: Arc<FileContent>,
    stats: Arc<EndpointStats>,
    shutdown: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    fn start(image: &TestImage) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let content = Arc::new(FileContent {
            manifest: image.manifest.clone(),
            manifest_digest: image.manifest_digest.clone(),
            blobs: image.blobs.clone(),
            resolutions: Mutex::new(Vec::new()),
            served: Mutex::new(HashMap::new()),
        });
        let config = EndpointConfig::default();
        let stats = Arc::clone(&config.stats);
        let (shutdown, rx) = watch::channel(false);
        let served: Arc<dyn Content> = Arc::clone(&content) as Arc<dyn Content>;
        let server = runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(listener, served, config, rx).await;
        });
        Endpoint {
            addr,
            content,
            stats,
            shutdown,
            runtime: Some(runtime),
            server: Some(server),
        }
    }

    fn counts(&self) -> EndpointCounts {
        self.stats.snapshot()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let (Some(runtime), Some(server)) = (self.runtime.take(), self.server.take()) {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await });
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Each layer and the config handed out exactly once.
fn assert_each_blob_once(image: &TestImage, served: &HashMap<String, usize>, who: &str) {
    for layer in &image.layer_digests {
        assert_eq!(
            served.get(layer).copied(),
            Some(1),
            "{who} fetched layer {layer} not exactly once: {served:?}"
        );
    }
    assert_eq!(
        served.get(&image.config_digest).copied(),
        Some(1),
        "{who} fetched the config not exactly once: {served:?}"
    );
    assert_eq!(served.len(), 3, "{who} fetched unknown blobs: {served:?}");
}

#[test]
fn dockerd_pulls_by_digest_and_by_tag() {
    require_tool("dockerd", "docker.io");
    require_tool("docker", "docker.io");
    let image = build_image();
    let endpoint = Endpoint::start(&image);
    let dockerd = Dockerd::start("epdock", &[])
        .unwrap_or_else(|e| panic!("dockerd did not start (apt-get install -y docker.io): {e}"));
    let port = endpoint.addr.port();

    // By digest: the image id is the config digest and the registry's digest is kept.
    let by_digest = format!("127.0.0.1:{port}/{REPOSITORY}@{}", image.manifest_digest);
    let t = Instant::now();
    dockerd
        .run_cli(&["pull", &by_digest])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    eprintln!("dockerd pulled {by_digest} in {:?}", t.elapsed());
    assert_eq!(dockerd.image_id(&by_digest).unwrap(), image.config_digest);
    let repo_digests = dockerd
        .run_cli(&[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &by_digest,
        ])
        .unwrap();
    let repo_digests: Vec<String> = serde_json::from_str(repo_digests.trim()).unwrap();
    assert!(
        repo_digests.contains(&by_digest),
        "RepoDigests {repo_digests:?} lacks {by_digest}"
    );
    let served = endpoint.content.take_served();
    assert_each_blob_once(&image, &served, "dockerd");
    let after_digest = endpoint.counts();
    eprintln!("dockerd by digest: {after_digest:?}");

    // By tag: the endpoint resolves it (no `ns` from dockerd); nothing is fetched again.
    let by_tag = format!("127.0.0.1:{port}/{REPOSITORY}:{TAG}");
    dockerd
        .run_cli(&["pull", &by_tag])
        .unwrap_or_else(|e| panic!("{e}\n{}", dockerd.log_tail()));
    assert_eq!(dockerd.image_id(&by_tag).unwrap(), image.config_digest);
    let resolutions = endpoint.content.take_resolutions();
    assert!(
        resolutions.contains(&(None, REPOSITORY.into(), TAG.into())),
        "{resolutions:?}"
    );
    let served = endpoint.content.take_served();
    assert!(
        served.is_empty(),
        "dockerd fetched blobs again for the tag: {served:?}"
    );
    let counts = endpoint.counts();
    eprintln!("dockerd by tag: {counts:?}; resolutions {resolutions:?}");
    assert_eq!(counts.partial_responses, 0, "dockerd used Range");
    assert_eq!(counts.not_found, 0);
}

#[test]
fn containerd_pulls_directly_and_through_a_mirror_host() {
    require_containerd().unwrap_or_else(|e| panic!("{e}"));
    let image = build_image();
    let endpoint = Endpoint::start(&image);
    let port = endpoint.addr.port();

    // Straight from the endpoint, as its own registry: no `ns`.
    let node =
        Containerd::start("epctrd").unwrap_or_else(|e| panic!("containerd did not start: {e}"));
    let reference = format!("127.0.0.1:{port}/{REPOSITORY}:{TAG}");
    let t = Instant::now();
    node.ctr(&["images", "pull", "--plain-http", &reference])
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
    eprintln!("containerd pulled {reference} in {:?}", t.elapsed());
    assert_eq!(
        node.digest_of(&reference).as_deref(),
        Some(image.manifest_digest.as_str()),
        "{}",
        node.ctr(&["images", "ls"]).unwrap_or_default()
    );
    assert_each_blob_once(&image, &endpoint.content.take_served(), "containerd");
    let resolutions = endpoint.content.take_resolutions();
    assert!(
        !resolutions.is_empty() && resolutions.iter().all(|(ns, _, _)| ns.is_none()),
        "{resolutions:?}"
    );
    eprintln!(
        "containerd direct: {:?}; resolutions {resolutions:?}",
        endpoint.counts()
    );
    drop(node);

    // Through a hosts.toml mirror for an upstream that does not exist: the endpoint is asked
    // with `ns`, and the image keeps the upstream's name and the manifest digest.
    let hosts = TempDir::new("ep-hosts").unwrap();
    let host_dir = hosts.path().join(UPSTREAM);
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://{UPSTREAM}\"\n\n[host.\"http://127.0.0.1:{port}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let node =
        Containerd::start("epmirror").unwrap_or_else(|e| panic!("containerd did not start: {e}"));
    let upstream_ref = format!("{UPSTREAM}/{REPOSITORY}:{TAG}");
    let hosts_dir = hosts.path().to_string_lossy().into_owned();
    node.ctr(&["images", "pull", "--hosts-dir", &hosts_dir, &upstream_ref])
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log_tail()));
    assert_eq!(
        node.digest_of(&upstream_ref).as_deref(),
        Some(image.manifest_digest.as_str()),
        "{}",
        node.ctr(&["images", "ls"]).unwrap_or_default()
    );
    let resolutions = endpoint.content.take_resolutions();
    assert!(
        resolutions.contains(&(Some(UPSTREAM.into()), REPOSITORY.into(), TAG.into())),
        "containerd did not send ns={UPSTREAM}: {resolutions:?}"
    );
    assert_each_blob_once(
        &image,
        &endpoint.content.take_served(),
        "containerd (mirror)",
    );
    let counts = endpoint.counts();
    eprintln!("containerd via mirror: {counts:?}; resolutions {resolutions:?}");
    assert_eq!(counts.partial_responses, 0, "containerd used Range");
    assert_eq!(counts.not_found, 0);
}
