//! The Docker image source and loader against real daemons: private `dockerd`s and a private
//! registry started by each test (see `imagewolf::docker`). No internet: test images are
//! built locally from random bytes. These tests need root, `docker.io` and `docker-registry`;
//! without them they fail with the install command, they never skip.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagewolf::docker::{build_test_image, free_port, start_daemons, Dockerd, Registry};
use imagewolf::generated_image::GeneratedImage;
use imagewolf::http;
use imagewolf::local_agents::{registry_push_envelope, LocalAgents};
use imagewolf::TempDir;
use imagewolf_agent::distributor::RetryPolicy;
use imagewolf_agent::docker::Docker;
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::loader::ImageLoader;
use imagewolf_agent::source::{ImageSource, PulledImage};

const LAYERS: usize = 3;
const LAYER_MIB: usize = 7;

fn image_ref(
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> ImageRef {
    ImageRef {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    }
}

/// Builds a `LAYERS`-layer image in `builder`, pushes it, returns (image id, manifest digest).
fn build_and_push(builder: &Dockerd, reference: &str) -> (String, String) {
    let t = Instant::now();
    let pushed = imagewolf::docker::build_and_push(builder, reference, LAYERS, LAYER_MIB);
    eprintln!("built and pushed {reference} in {:?}", t.elapsed());
    pushed
}

async fn connect(d: &Dockerd) -> Docker {
    Docker::connect(&d.docker_host())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", d.docker_host(), d.log_tail()))
}

/// Exports through the source into `path`; returns the bytes written.
async fn export_to(docker: &Docker, pulled: &PulledImage, path: &Path) -> u64 {
    let mut tarball = docker.export(pulled).await.expect("export starts");
    let mut file = tokio::fs::File::create(path)
        .await
        .expect("create export file");
    let n = tokio::io::copy(&mut tarball, &mut file)
        .await
        .expect("export streams to the end");
    tokio::io::AsyncWriteExt::flush(&mut file).await.unwrap();
    n
}

/// The `manifest.json` of a `docker save` tarball, via the `tar` tool.
fn tar_manifest(path: &Path) -> serde_json::Value {
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(path)
        .arg("manifest.json")
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "export is not a tar with manifest.json: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("manifest.json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_export_load_across_three_daemons() {
    let t0 = Instant::now();
    let registry = Registry::start_local().expect("registry starts");
    let daemons = start_daemons(&["build", "pull", "load"]);
    let (builder, puller, loader) = (&daemons[0], &daemons[1], &daemons[2]);
    eprintln!(
        "3 dockerd + registry ready in {:?} (dockerd startups {:?} {:?} {:?})",
        t0.elapsed(),
        builder.startup_time(),
        puller.startup_time(),
        loader.startup_time()
    );
    let reference = format!("{}/test/img:v1", registry.addr());
    let (image_id, _digest) = build_and_push(builder, &reference);
    let gets_after_push = registry.blob_get_count();

    // Pull on the second daemon through the ImageSource.
    let source = connect(puller).await;
    let api: f32 = source.api_version().parse().expect("api version is N.M");
    assert!(
        api <= 1.41 + f32::EPSILON,
        "negotiated down to dockerd 20.10's API, got {api}"
    );
    let t = Instant::now();
    let pulled = source
        .pull(&image_ref(registry.addr(), "test/img", Some("v1"), None))
        .await
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", puller.log_tail()));
    eprintln!("pull took {:?}", t.elapsed());
    assert_eq!(pulled.image_id, image_id, "same image id on both daemons");
    assert_eq!(pulled.reference, reference);
    let payload = (LAYERS * LAYER_MIB) as u64 * (1 << 20);
    assert!(
        pulled.size_hint >= payload && pulled.size_hint < payload * 2,
        "size hint {} for {payload} bytes of layers",
        pulled.size_hint
    );
    // The registry served the config and each layer once, to the puller.
    assert_eq!(
        registry.blob_get_count() - gets_after_push,
        LAYERS + 1,
        "blob GETs: {:?}",
        registry.blob_gets()
    );

    // Export (docker save) as a stream into a file.
    let tmp = TempDir::new("docker-export").unwrap();
    let tar_path = tmp.path().join("image.tar");
    let t = Instant::now();
    let written = export_to(&source, &pulled, &tar_path).await;
    eprintln!("export of {written} bytes took {:?}", t.elapsed());
    assert!(
        written >= payload,
        "tarball of {written} bytes holds {payload} bytes of layers"
    );
    assert!(
        written <= pulled.size_hint,
        "size hint {} must cover the tarball ({written})",
        pulled.size_hint
    );
    let manifest = tar_manifest(&tar_path);
    assert_eq!(manifest[0]["RepoTags"][0], reference.as_str(), "{manifest}");
    assert_eq!(manifest[0]["Layers"].as_array().map(Vec::len), Some(LAYERS));

    // Load on the third daemon through the ImageLoader.
    let target = connect(loader).await;
    assert!(!target.has_image(&image_id).await.unwrap());
    let t = Instant::now();
    target
        .load(&tar_path)
        .await
        .unwrap_or_else(|e| panic!("load: {e}\n{}", loader.log_tail()));
    eprintln!("load took {:?}", t.elapsed());
    assert!(target.has_image(&image_id).await.unwrap());
    let tags = target.image_tags(&image_id).await.unwrap();
    assert!(tags.contains(&reference), "tags after load: {tags:?}");
    assert_eq!(loader.image_id(&reference).unwrap(), image_id);
    eprintln!("whole round trip {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_digest_and_pull_errors() {
    let registry = Registry::start_local().expect("registry starts");
    let daemons = start_daemons(&["build", "pull"]);
    let (builder, puller) = (&daemons[0], &daemons[1]);
    let reference = format!("{}/test/digest:v2", registry.addr());
    let (image_id, digest) = build_and_push(builder, &reference);
    let source = connect(puller).await;

    // Digest only: the reference is repo@digest and that is what gets exported.
    let pulled = source
        .pull(&image_ref(
            registry.addr(),
            "test/digest",
            None,
            Some(&digest),
        ))
        .await
        .unwrap_or_else(|e| panic!("pull by digest: {e}"));
    assert_eq!(pulled.image_id, image_id);
    assert_eq!(
        pulled.reference,
        format!("{}/test/digest@{digest}", registry.addr())
    );
    let tmp = TempDir::new("docker-digest").unwrap();
    let by_digest = tmp.path().join("by-digest.tar");
    assert!(export_to(&source, &pulled, &by_digest).await > 0);
    tar_manifest(&by_digest);

    // Tag and digest: pulled by digest, tagged locally, exported by tag.
    let pulled = source
        .pull(&image_ref(
            registry.addr(),
            "test/digest",
            Some("v2"),
            Some(&digest),
        ))
        .await
        .unwrap_or_else(|e| panic!("pull by tag+digest: {e}"));
    assert_eq!(pulled.image_id, image_id);
    assert_eq!(pulled.reference, reference);
    assert!(source
        .image_tags(&image_id)
        .await
        .unwrap()
        .contains(&reference));

    // A tag the registry never had: permanent.
    let err = source
        .pull(&image_ref(
            registry.addr(),
            "test/digest",
            Some("nope"),
            None,
        ))
        .await
        .expect_err("unknown tag must fail");
    assert!(!err.retryable, "unknown tag is not retryable: {err}");
    assert!(
        err.message.contains("manifest unknown") || err.message.contains("not found"),
        "{err}"
    );

    // A repository the registry never had: permanent.
    let err = source
        .pull(&image_ref(
            registry.addr(),
            "no/such-repo",
            Some("v1"),
            None,
        ))
        .await
        .expect_err("unknown repository must fail");
    assert!(!err.retryable, "unknown repository is not retryable: {err}");

    // A registry that is down: retryable.
    let down = format!("127.0.0.1:{}", free_port().unwrap());
    let err = source
        .pull(&image_ref(&down, "test/digest", Some("v2"), None))
        .await
        .expect_err("pull from a dead registry must fail");
    assert!(err.retryable, "registry down is retryable: {err}");
    assert!(err.message.contains("connection refused"), "{err}");

    // A reference that would smuggle a path into the API URL never reaches the daemon.
    let err = source
        .pull(&image_ref(
            registry.addr(),
            "../../containers/json?",
            Some("x"),
            None,
        ))
        .await
        .expect_err("bad reference");
    assert!(
        !err.retryable && err.message.contains("invalid image reference"),
        "{err}"
    );

    // Exporting an image the daemon lacks fails at export(), not mid-read.
    let missing = PulledImage {
        image_id: image_id.clone(),
        reference: format!("{}/test/digest:missing", registry.addr()),
        size_hint: 0,
        archive: None,
    };
    let err = match source.export(&missing).await {
        Ok(_) => panic!("export of a missing image must fail"),
        Err(e) => e,
    };
    assert!(!err.retryable, "{err}");
    assert!(puller.ping(), "daemon still healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_errors_leave_the_daemon_working() {
    let d = start_daemons(&["loaderr"]).remove(0);
    let docker = connect(&d).await;
    let tmp = TempDir::new("docker-corrupt").unwrap();

    // Unknown (well-formed) id: not there. Malformed id: an error, no request.
    let unknown = format!("sha256:{}", "ab".repeat(32));
    assert!(!docker.has_image(&unknown).await.unwrap());
    let err = docker
        .has_image("../../info")
        .await
        .expect_err("malformed id");
    assert!(err.message.contains("invalid image id"), "{err}");

    // Random bytes: not a tarball.
    let garbage = tmp.path().join("garbage.tar");
    std::fs::write(&garbage, imagewolf::random_payload(200_000, 7)).unwrap();
    let err = docker
        .load(&garbage)
        .await
        .expect_err("garbage must not load");
    eprintln!("garbage load error: {err}");
    assert!(err.message.contains("tar"), "clear message: {err}");

    // A real image tarball cut in half.
    let reference = "imagewolf-test/cut:v1";
    let id = build_test_image(&d, reference, 2, 2).expect("build");
    let whole = tmp.path().join("whole.tar");
    d.run_cli(&["save", "-o", &whole.to_string_lossy(), reference])
        .unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = tmp.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    d.run_cli(&["rmi", reference]).unwrap();
    assert!(!docker.has_image(&id).await.unwrap());
    let err = docker
        .load(&cut)
        .await
        .expect_err("truncated tarball must not load");
    eprintln!("truncated load error: {err}");
    assert!(!err.message.is_empty());
    assert!(!docker.has_image(&id).await.unwrap());

    // A file that is not there.
    let err = docker
        .load(&tmp.path().join("absent.tar"))
        .await
        .expect_err("missing file");
    assert!(err.message.contains("absent.tar"), "{err}");

    // The daemon is fine afterwards: the intact tarball loads.
    docker.ping().await.expect("daemon still answers");
    docker.load(&whole).await.expect("intact tarball loads");
    assert!(docker.has_image(&id).await.unwrap());
}

#[tokio::test]
async fn connect_errors_are_clear() {
    let tmp = TempDir::new("docker-nosock").unwrap();
    let missing = format!("unix://{}/docker.sock", tmp.path().display());
    let err = Docker::connect(&missing)
        .await
        .expect_err("no daemon there");
    assert!(err.to_string().contains("docker.sock"), "{err}");
    let err = Docker::connect("ssh://someone@somewhere")
        .await
        .expect_err("ssh is not supported");
    assert!(err.to_string().contains("unsupported docker host"), "{err}");
    let port = free_port().unwrap();
    let err = Docker::connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(err.is_retryable(), "{err}");
}

/// This node's record of `reference` from its /stats (over HTTP), if any.
async fn stats_of(api: std::net::SocketAddr, reference: &str) -> Option<serde_json::Value> {
    let reply = http::request(api, "GET", "/stats", &[], b"").await.unwrap();
    assert_eq!(reply.status, 200);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).unwrap();
    all.into_iter().find(|i| {
        i["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with(reference))
    })
}

/// Polls /stats until `cond` holds for the record (never letting it be `failed`).
async fn wait_stats(
    api: std::net::SocketAddr,
    reference: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let record = stats_of(api, reference).await;
        if let Some(r) = &record {
            assert_ne!(r["state"], "failed", "{reference} failed: {r}");
            if cond(r) {
                return r.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; last record {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node whose dockerd is down when the image arrives: the download completes and is
/// verified, `docker load` fails and is retried (in /stats, more often than the 8 attempts
/// after which the agent used to give up), the tarball stays; once the same dockerd is back
/// the image loads from that tarball without a second download, and the tarball is removed
/// after `--seed-seconds` as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_docker_load_is_retried_until_dockerd_is_back_without_downloading_again() {
    let t0 = Instant::now();
    let mut node = start_daemons(&["loadretry"]).remove(0);
    let docker: Arc<dyn ImageLoader> = Arc::new(connect(&node).await);
    let dir = TempDir::new("load-retry").unwrap();
    let reference = "10.1.2.3:5000/team/retry:v1";
    let image = Arc::new(GeneratedImage::build(dir.path(), reference, 8 << 20).unwrap());
    let tarball_bytes = std::fs::read(&image.path).unwrap();
    let (mut cluster, mut listeners) = LocalAgents::start(dir.path().join("agents"), vec![], 2)
        .await
        .unwrap();
    cluster.seed_time = Duration::from_secs(3);
    cluster.retry = RetryPolicy {
        first_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(1),
        pull_attempts: 8,
    };
    listeners.reverse();
    cluster
        .start_late(listeners.pop().unwrap(), Some(image.clone()))
        .await
        .unwrap();
    cluster
        .start_late_with_loader(listeners.pop().unwrap(), None, Some(docker))
        .await
        .unwrap();
    let (origin, receiver) = (cluster.agents[0].api, cluster.agents[1].api);
    let receiver_dir = cluster.agents[1].data_dir.clone();

    // The node's dockerd goes down (same socket, data-root kept).
    let stopped = Instant::now();
    node.stop();
    assert!(!node.ping(), "dockerd still answers after stop");

    let envelope = registry_push_envelope(
        "10.1.2.3:5000",
        "team/retry",
        Some("v1"),
        &format!("sha256:{}", "5e".repeat(32)),
        "retry-1",
    );
    let reply = http::request(
        origin,
        "POST",
        "/registryNotifications",
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Loads fail and are retried past the old cap of 8 attempts; /stats says so.
    let down = wait_stats(
        receiver,
        reference,
        "9 failed load attempts in /stats",
        Duration::from_secs(60),
        |r| r["attempts"].as_u64().unwrap_or(0) >= 9,
    )
    .await;
    assert_eq!(down["state"], "loading", "{down}");
    let error = down["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("load: ") && error.contains("retrying"),
        "{error}"
    );
    // The verified tarball is kept, complete, for the next attempt.
    let id = down["id"].as_str().unwrap().to_owned();
    let kept = receiver_dir.join("images").join(format!("{id}.tar"));
    assert!(
        std::fs::read(&kept).unwrap() == tarball_bytes,
        "{} is not the verified tarball",
        kept.display()
    );
    let downloaded = down["bytes_down"].as_u64().unwrap();
    assert!(downloaded >= tarball_bytes.len() as u64, "{down}");
    let origin_up = stats_of(origin, reference).await.unwrap()["bytes_up"]
        .as_u64()
        .unwrap();
    eprintln!(
        "{} load attempts failed with dockerd down: {error}",
        down["attempts"]
    );

    // The same dockerd comes back: the next attempt loads the kept tarball.
    node.restart()
        .unwrap_or_else(|e| panic!("dockerd restart: {e}\n{}", node.log_tail()));
    eprintln!(
        "dockerd back after {:?} down (restart took {:?})",
        stopped.elapsed(),
        node.startup_time()
    );
    let loaded = wait_stats(
        receiver,
        reference,
        "loaded after dockerd is back",
        Duration::from_secs(60),
        |r| r["state"] == "loaded",
    )
    .await;
    assert!(loaded["error"].is_null(), "{loaded}");
    assert!(
        loaded["attempts"].as_u64() > down["attempts"].as_u64(),
        "{loaded}"
    );
    assert!(
        node.has_image_api(&image.image_id).unwrap(),
        "the daemon lacks {}",
        image.image_id
    );
    assert_eq!(node.image_id(reference).unwrap(), image.image_id);
    // Not downloaded again: no more bytes in, none more out of the origin.
    assert_eq!(loaded["bytes_down"].as_u64(), Some(downloaded), "{loaded}");
    let origin_now = stats_of(origin, reference).await.unwrap();
    assert_eq!(
        origin_now["bytes_up"].as_u64(),
        Some(origin_up),
        "{origin_now}"
    );

    // Then the normal seeding rules: the tarball goes after --seed-seconds (3 s here).
    let deadline = Instant::now() + Duration::from_secs(30);
    while kept.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still there 30 s after the load",
            kept.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("whole test {:?}", t0.elapsed());
    cluster.shutdown().await;
}
