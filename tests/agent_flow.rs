//! The agent's flow end to end with real agents (in one process, on loopback, `--runtime
//! none`): a registry push reaches every node, repeated events do nothing twice, a Docker Hub
//! webhook works, a late agent catches up, and a tampered announcement never gets loaded.
//! The same flow against real dockerd instances in network namespaces is `tests/cluster.rs`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use imagewolf::agent_api::agent_call;
use imagewolf::generated_image::GeneratedImage;
use imagewolf::http::{self, Reply};
use imagewolf::local_agents::{registry_push_envelope, LocalAgents, TEST_CLUSTER_SECRET};
use imagewolf::{random_payload, seed_in_memory, TempDir};
use imagewolf_agent::image::{Distribution, ImageRef};
use imagewolf_agent::loader::{ImageLoader, KeepTarball, LoaderError};
use imagewolf_agent::source::ImageSource;

const EVENTS: &str = "application/vnd.docker.distribution.events.v1+json";

async fn post(api: std::net::SocketAddr, path: &str, content_type: &str, body: &str) -> Reply {
    http::request(
        api,
        "POST",
        path,
        &[("Content-Type", content_type)],
        body.as_bytes(),
    )
    .await
    .unwrap()
}

async fn images(api: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let reply = http::request(api, "GET", "/stats", &[], b"").await.unwrap();
    assert_eq!(reply.status, 200);
    serde_json::from_slice(&reply.body).unwrap()
}

/// Waits (polling /stats, bounded) until `api` reports `reference` in `state`.
async fn wait_for_state(
    api: std::net::SocketAddr,
    reference: &str,
    state: &str,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = images(api).await;
        if let Some(img) = all.iter().find(|i| {
            i["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with(reference))
        }) {
            if img["state"] == state {
                return img.clone();
            }
            assert!(
                img["state"] != "failed" || state == "failed",
                "{api}: {reference} failed: {}",
                img["error"]
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{api}: {reference} not {state} in 60 s: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn loaded_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
    std::fs::read_dir(dir.join("loaded"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| std::fs::read(e.path()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_reaches_every_node_once_and_late_agents_catch_up() {
    let dir = TempDir::new("agent-flow").unwrap();
    let reference = "10.1.2.3:5000/team/app:v1";
    let image = Arc::new(GeneratedImage::build(dir.path(), reference, 16 << 20).unwrap());
    let tarball = std::fs::read(&image.path).unwrap();
    let sources: Vec<Option<Arc<dyn ImageSource>>> = vec![Some(image.clone()), None, None, None];
    let (mut cluster, mut late) = LocalAgents::start(dir.path().join("agents"), sources, 1)
        .await
        .unwrap();
    let apis: Vec<_> = cluster.agents.iter().map(|a| a.api).collect();

    let digest = format!("sha256:{}", "cd".repeat(32));
    let envelope =
        registry_push_envelope("10.1.2.3:5000", "team/app", Some("v1"), &digest, "event-1");
    let reply = post(apis[0], "/registryNotifications", EVENTS, &envelope).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("\"accepted\":1"), "{}", reply.text());

    for api in &apis {
        let img = wait_for_state(*api, reference, "loaded").await;
        assert_eq!(img["image_id"], image.image_id.as_str());
    }
    for agent in &cluster.agents[1..] {
        let files = loaded_files(&agent.data_dir);
        assert_eq!(files.len(), 1, "{}", agent.data_dir.display());
        assert!(files[0] == tarball, "a node loaded different bytes");
        let img = &agent.distributor.images()[0];
        assert!(!img.origin && img.bytes_down >= tarball.len() as u64);
    }
    let origin = &cluster.agents[0].distributor.images()[0];
    // One pull, and one load: this source leaves nothing in the (tarball-keeping) runtime.
    assert!(origin.origin && origin.attempts == 2, "{origin:?}");

    // The registry retries the same event, and the same image is pushed again: nothing twice.
    let again = post(apis[0], "/registryNotifications", EVENTS, &envelope).await;
    assert!(
        again.text().contains("\"duplicates\":1"),
        "{}",
        again.text()
    );
    let repush =
        registry_push_envelope("10.1.2.3:5000", "team/app", Some("v1"), &digest, "event-2");
    let again = post(apis[0], "/registryNotifications", EVENTS, &repush).await;
    assert!(
        again.text().contains("\"duplicates\":1"),
        "{}",
        again.text()
    );
    assert_eq!(
        cluster.agents[0].distributor.images()[0].attempts,
        2,
        "pulled or loaded twice"
    );

    // /metrics counts the loaded images in Prometheus text format.
    let metrics = http::request(apis[2], "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text()
            .contains("imagewolf_images{state=\"loaded\"} 1"),
        "{}",
        metrics.text()
    );

    // An agent that starts late asks the others what it missed and gets it.
    let listener = late.pop().unwrap();
    let late_agent = cluster.start_late(listener, None).await.unwrap();
    let (late_api, late_dir) = (late_agent.api, late_agent.data_dir.clone());
    wait_for_state(late_api, reference, "loaded").await;
    assert!(loaded_files(&late_dir)[0] == tarball);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_webhook_distributes_the_tag() {
    let dir = TempDir::new("agent-hub").unwrap();
    let image =
        Arc::new(GeneratedImage::build(dir.path(), "docker.io/team/web:2.0", 4 << 20).unwrap());
    let sources: Vec<Option<Arc<dyn ImageSource>>> = vec![Some(image), None, None];
    let (cluster, _) = LocalAgents::start(dir.path().join("agents"), sources, 0)
        .await
        .unwrap();
    let hook = serde_json::json!({
        "callback_url": "https://registry.hub.docker.com/u/team/web/hook/abc/",
        "push_data": {"pushed_at": 1764201600, "pusher": "team", "tag": "2.0"},
        "repository": {"repo_name": "team/web", "namespace": "team", "name": "web", "status": "Active"},
    });
    let reply = post(
        cluster.agents[0].api,
        "/hubNotifications",
        "application/json",
        &hook.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    for agent in &cluster.agents {
        wait_for_state(agent.api, "docker.io/team/web:2.0", "loaded").await;
    }
    // Garbage gets a clear 4xx and the agent keeps serving.
    let bad = post(
        cluster.agents[0].api,
        "/hubNotifications",
        "application/json",
        "{not json",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("error"));
    assert_eq!(
        http::request(cluster.agents[0].api, "GET", "/healthz", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarball_that_does_not_match_its_announced_sha256_is_never_loaded() {
    let dir = TempDir::new("agent-tamper").unwrap();
    let (cluster, _) = LocalAgents::start(dir.path().join("agents"), vec![None, None], 0)
        .await
        .unwrap();

    // Someone seeds a tarball and announces it with a SHA-256 of other bytes.
    let (seeder, meta, _seeding) = seed_in_memory("image.tar", random_payload(2 << 20, 99)).await;
    let d = Distribution::single(
        ImageRef {
            registry: "evil:5000".into(),
            repository: "x".into(),
            tag: Some("latest".into()),
            digest: None,
        },
        format!("sha256:{}", "00".repeat(32)),
        &meta,
        "11".repeat(32),
        vec![seeder.listen_addr().to_string()],
        0,
    );
    let api = cluster.agents[1].api;
    // Announced as a member of the cluster would (the request signed with its secret).
    let mut d = d;
    d.sign(TEST_CLUSTER_SECRET);
    let body = serde_json::to_vec(&d).unwrap();
    let reply = agent_call(
        api,
        "POST",
        "/v1/distributions",
        Some(TEST_CLUSTER_SECRET),
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let img = wait_for_state(api, "evil:5000/x:latest", "failed").await;
    assert!(img["error"].as_str().unwrap().contains("SHA-256"), "{img}");
    assert!(
        loaded_files(&cluster.agents[1].data_dir).is_empty(),
        "a tampered tarball was loaded"
    );
    seeder.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_secret_only_signed_announcements_and_authorised_webhooks_count() {
    let dir = TempDir::new("agent-secure").unwrap();
    let reference = "10.1.2.3:5000/team/secure:v1";
    let image = Arc::new(GeneratedImage::build(dir.path(), reference, 2 << 20).unwrap());
    let sources: Vec<Option<Arc<dyn ImageSource>>> = vec![Some(image), None];
    let cluster = LocalAgents::start_secured(
        dir.path().join("agents"),
        sources,
        b"cluster secret",
        "hook token",
    )
    .await
    .unwrap();
    let (origin, node) = (cluster.agents[0].api, cluster.agents[1].api);
    let digest = format!("sha256:{}", "ef".repeat(32));
    let envelope =
        registry_push_envelope("10.1.2.3:5000", "team/secure", Some("v1"), &digest, "e1");

    // Without the token, or with a wrong one: 401, nothing starts.
    assert_eq!(
        post(origin, "/registryNotifications", EVENTS, &envelope)
            .await
            .status,
        401
    );
    let wrong = http::request(
        origin,
        "POST",
        "/registryNotifications",
        &[("Content-Type", EVENTS), ("Authorization", "Bearer nope")],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert!(images(origin).await.is_empty());

    // With it, the push is signed by the origin and accepted by the other agent.
    let ok = http::request(
        origin,
        "POST",
        "/registryNotifications",
        &[
            ("Content-Type", EVENTS),
            ("Authorization", "Bearer hook token"),
        ],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    wait_for_state(node, reference, "loaded").await;

    // Outsiders (no request signature) can neither list nor announce.
    let unsigned = agent_call(origin, "GET", "/v1/distributions", None, b"").await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.text());
    let secret: &[u8] = b"cluster secret";
    let listed = agent_call(origin, "GET", "/v1/distributions", Some(secret), b"").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let mut forged: Vec<Distribution> = serde_json::from_slice(&listed.body).unwrap();
    let mut forged = forged.remove(0);
    forged.image.tag = Some("evil".into());
    forged.sha256 = Some("44".repeat(32));
    forged.signature = None;
    let body = serde_json::to_vec(&forged).unwrap();
    let reply = agent_call(node, "POST", "/v1/distributions", None, &body).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    // A request signed by a member, carrying a distribution it did not sign (or signed with
    // another secret): refused by the distribution's own signature.
    let reply = agent_call(node, "POST", "/v1/distributions", Some(secret), &body).await;
    assert!(reply.text().contains("signature"), "{}", reply.text());
    forged.sign(b"not the cluster secret");
    let body = serde_json::to_vec(&forged).unwrap();
    let reply = agent_call(node, "POST", "/v1/distributions", Some(secret), &body).await;
    assert!(reply.text().contains("signature"), "{}", reply.text());
    assert!(
        images(node)
            .await
            .iter()
            .all(|i| !i["reference"].as_str().unwrap().contains("evil")),
        "a forged announcement was acted on"
    );
    cluster.shutdown().await;
}

/// A source whose registry is "down" for the first `failures` pulls.
struct FlakySource {
    inner: Arc<GeneratedImage>,
    failures: std::sync::atomic::AtomicU32,
}

impl ImageSource for FlakySource {
    fn pull<'a>(
        &'a self,
        image: &'a ImageRef,
    ) -> futures::future::BoxFuture<
        'a,
        Result<imagewolf_agent::source::PulledImage, imagewolf_agent::source::SourceError>,
    > {
        use std::sync::atomic::Ordering;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Box::pin(async {
                Err(imagewolf_agent::source::SourceError {
                    message: "registry unavailable: connection refused".into(),
                    retryable: true,
                })
            });
        }
        self.inner.pull(image)
    }

    fn export<'a>(
        &'a self,
        image: &'a imagewolf_agent::source::PulledImage,
    ) -> futures::future::BoxFuture<
        'a,
        Result<imagewolf_agent::source::Tarball, imagewolf_agent::source::SourceError>,
    > {
        self.inner.export(image)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_is_down_is_retried_with_backoff_and_visible_in_stats() {
    let dir = TempDir::new("agent-retry").unwrap();
    let reference = "10.1.2.3:5000/team/flaky:v1";
    let image = Arc::new(GeneratedImage::build(dir.path(), reference, 2 << 20).unwrap());
    let flaky = Arc::new(FlakySource {
        inner: image,
        failures: std::sync::atomic::AtomicU32::new(2),
    });
    let sources: Vec<Option<Arc<dyn ImageSource>>> = vec![Some(flaky), None];
    let (cluster, _) = LocalAgents::start(dir.path().join("agents"), sources, 0)
        .await
        .unwrap();
    let origin = cluster.agents[0].api;
    let envelope = registry_push_envelope(
        "10.1.2.3:5000",
        "team/flaky",
        Some("v1"),
        &format!("sha256:{}", "aa".repeat(32)),
        "f1",
    );
    assert_eq!(
        post(origin, "/registryNotifications", EVENTS, &envelope)
            .await
            .status,
        200
    );
    // While the registry is down the origin says so, and keeps trying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = images(origin).await;
        if let Some(img) = all.first() {
            if img["error"]
                .as_str()
                .is_some_and(|e| e.contains("registry unavailable") && e.contains("retrying"))
            {
                assert_eq!(img["state"], "pulling");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry visible in /stats: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // When it is back, the distribution completes everywhere.
    let img = wait_for_state(origin, reference, "loaded").await;
    // Three pulls, then the origin's own load.
    assert_eq!(img["attempts"], 4);
    assert!(img["error"].is_null(), "{img}");
    wait_for_state(cluster.agents[1].api, reference, "loaded").await;
    cluster.shutdown().await;
}

/// Serves several generated images by repository; each pull first waits for a permit of
/// `gate` (the test decides when the "registry" answers) and is counted.
struct GatedImages {
    images: std::collections::HashMap<String, Arc<GeneratedImage>>,
    gate: tokio::sync::Semaphore,
    pulls: std::sync::atomic::AtomicU32,
}

impl GatedImages {
    fn new(dir: &std::path::Path, references: &[&str], open: usize) -> Self {
        let images = references
            .iter()
            .enumerate()
            .map(|(i, reference)| {
                let sub = dir.join(format!("image-{i}"));
                std::fs::create_dir_all(&sub).unwrap();
                // Distinct sizes: distinct layers, image ids and tarballs.
                let image = GeneratedImage::build(&sub, reference, (1 << 20) + i * 4096).unwrap();
                let repository = reference.split_once('/').unwrap().1;
                let repository = repository.rsplit_once(':').unwrap().0.to_owned();
                (repository, Arc::new(image))
            })
            .collect();
        GatedImages {
            images,
            gate: tokio::sync::Semaphore::new(open),
            pulls: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn pulls(&self) -> u32 {
        self.pulls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl ImageSource for GatedImages {
    fn pull<'a>(
        &'a self,
        image: &'a ImageRef,
    ) -> futures::future::BoxFuture<
        'a,
        Result<imagewolf_agent::source::PulledImage, imagewolf_agent::source::SourceError>,
    > {
        Box::pin(async move {
            self.pulls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.gate.acquire().await.expect("gate").forget();
            match self.images.get(&image.repository) {
                Some(generated) => generated.pull(image).await,
                None => Err(imagewolf_agent::source::SourceError {
                    message: format!("{image}: manifest unknown"),
                    retryable: false,
                }),
            }
        })
    }

    fn export<'a>(
        &'a self,
        pulled: &'a imagewolf_agent::source::PulledImage,
    ) -> futures::future::BoxFuture<
        'a,
        Result<imagewolf_agent::source::Tarball, imagewolf_agent::source::SourceError>,
    > {
        Box::pin(async move {
            let generated = self
                .images
                .values()
                .find(|g| g.reference == pulled.reference)
                .expect("export of a pulled image");
            generated.export(pulled).await
        })
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `value` of a sample line `name{labels} value` in Prometheus text (labels as written).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

async fn metrics(api: std::net::SocketAddr) -> String {
    let reply = http::request(api, "GET", "/metrics", &[], b"")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_images_are_distributed_whatever_the_entry_point() {
    let dir = TempDir::new("agent-allow").unwrap();
    let allowed = "10.1.2.3:5000/team/app:v1";
    let source = Arc::new(GatedImages::new(dir.path(), &[allowed], 100));
    let cluster = LocalAgents::origin_and_node(dir.path().join("agents"), source.clone(), |c| {
        c.cluster_secret = Some(b"cluster secret".to_vec());
        c.allow = imagewolf_agent::allowlist::Allowlist::parse(["10.1.2.3:5000/team/*"]).unwrap();
    })
    .await
    .unwrap();
    let (origin, node) = (cluster.agents[0].api, cluster.agents[1].api);

    // A registry push of another repository: answered 200 (a 4xx/5xx would make the
    // registry re-send it, holding back every later event), counted as ignored.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let envelope = registry_push_envelope("10.1.2.3:5000", "other/app", Some("v1"), &digest, "x1");
    let reply = post(origin, "/registryNotifications", EVENTS, &envelope).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().contains("\"accepted\":0") && reply.text().contains("\"ignored\":1"),
        "{}",
        reply.text()
    );
    // A Docker Hub webhook for an image outside the list: the same.
    let hook = serde_json::json!({
        "push_data": {"tag": "1.27"},
        "repository": {"repo_name": "library/nginx", "namespace": "library", "name": "nginx"},
    });
    let reply = post(
        origin,
        "/hubNotifications",
        "application/json",
        &hook.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("\"ignored\":1"), "{}", reply.text());

    let stats = images(origin).await;
    let refused: Vec<&str> = stats
        .iter()
        .filter(|i| i["state"] == "refused")
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refused.len(), 2, "{stats:?}");
    assert!(refused
        .iter()
        .any(|r| r.starts_with("10.1.2.3:5000/other/app:v1")));
    assert!(
        refused.contains(&"docker.io/library/nginx:1.27"),
        "{refused:?}"
    );
    assert!(stats
        .iter()
        .all(|i| i["error"].as_str().unwrap_or("").contains("--allow")));
    let text = metrics(origin).await;
    assert_eq!(
        metric(&text, "imagewolf_refused_total{source=\"push\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "imagewolf_images{state=\"refused\"}"),
        Some(2.0)
    );
    assert_eq!(source.pulls(), 0, "a refused image was pulled");

    // A correctly signed announcement from "another agent" for a repository outside the
    // list (its tarball really seeded) is refused too: nothing downloaded or loaded.
    let payload = random_payload(1 << 20, 5);
    let (seeder, meta, seeding) = seed_in_memory("image.tar", payload.clone()).await;
    let mut d = Distribution::single(
        ImageRef {
            registry: "10.1.2.3:5000".into(),
            repository: "other/app".into(),
            tag: Some("v2".into()),
            digest: None,
        },
        format!("sha256:{}", "01".repeat(32)),
        &meta,
        sha256_hex(&payload),
        vec![seeder.listen_addr().to_string()],
        0,
    );
    d.sign(b"cluster secret");
    let body = serde_json::to_vec(&d).unwrap();
    let reply = agent_call(
        node,
        "POST",
        "/v1/distributions",
        Some(b"cluster secret"),
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().contains("\"ignored\"") && reply.text().contains("--allow"),
        "{}",
        reply.text()
    );
    let node_stats = images(node).await;
    assert!(
        node_stats
            .iter()
            .any(|i| i["state"] == "refused" && i["id"] == d.id.as_str()),
        "{node_stats:?}"
    );
    let text = metrics(node).await;
    assert_eq!(
        metric(&text, "imagewolf_refused_total{source=\"announcement\"}"),
        Some(1.0),
        "{text}"
    );

    // The allowed image goes everywhere, as without the list.
    let envelope = registry_push_envelope("10.1.2.3:5000", "team/app", Some("v1"), &digest, "a1");
    let reply = post(origin, "/registryNotifications", EVENTS, &envelope).await;
    assert!(reply.text().contains("\"accepted\":1"), "{}", reply.text());
    wait_for_state(node, allowed, "loaded").await;
    assert_eq!(source.pulls(), 1);
    // Only the allowed tarball reached the node: the refused one was never fetched.
    let loaded = loaded_files(&cluster.agents[1].data_dir);
    assert_eq!(loaded.len(), 1);
    assert!(loaded[0] != payload, "the refused tarball was loaded");
    assert_eq!(
        seeding.stats().uploaded,
        0,
        "the refused torrent was downloaded"
    );
    seeder.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_torrents_1_pushes_queue_and_all_arrive() {
    let dir = TempDir::new("agent-slots").unwrap();
    let references = [
        "10.1.2.3:5000/team/one:v1",
        "10.1.2.3:5000/team/two:v1",
        "10.1.2.3:5000/team/three:v1",
    ];
    // The "registry" answers no pull until the test says so.
    let source = Arc::new(GatedImages::new(dir.path(), &references, 0));
    let cluster = LocalAgents::origin_and_node(dir.path().join("agents"), source.clone(), |c| {
        c.max_torrents = 1;
    })
    .await
    .unwrap();
    let (origin, node) = (cluster.agents[0].api, cluster.agents[1].api);

    for (i, reference) in references.iter().enumerate() {
        let repository = reference
            .split_once('/')
            .unwrap()
            .1
            .split_once(':')
            .unwrap()
            .0;
        let digest = format!("sha256:{}", format!("{i:02}").repeat(32));
        let envelope = registry_push_envelope(
            "10.1.2.3:5000",
            repository,
            Some("v1"),
            &digest,
            &format!("e{i}"),
        );
        let reply = post(origin, "/registryNotifications", EVENTS, &envelope).await;
        assert!(reply.text().contains("\"accepted\":1"), "{}", reply.text());
    }
    // One pull holds the only slot; the other two pushes wait, visible in /stats and
    // /metrics, and are not pulled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = images(origin).await;
        let count = |state: &str| all.iter().filter(|i| i["state"] == state).count();
        if count("pulling") == 1 && count("queued") == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected 1 pulling and 2 queued: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = metrics(origin).await;
    assert_eq!(
        metric(&text, "imagewolf_torrent_slots"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "imagewolf_torrent_slots_busy"), Some(1.0));
    assert_eq!(metric(&text, "imagewolf_distributions_queued"), Some(2.0));
    assert_eq!(source.pulls(), 1, "pulled past --max-torrents");

    // The registry answers: every image reaches both nodes (the receiving node has one
    // slot too, which each announcement takes in turn), and every slot is given back.
    source.gate.add_permits(references.len());
    for reference in references {
        wait_for_state(origin, reference, "loaded").await;
        wait_for_state(node, reference, "loaded").await;
    }
    assert_eq!(source.pulls(), 3);
    assert_eq!(loaded_files(&cluster.agents[1].data_dir).len(), 3);
    for api in [origin, node] {
        let text = metrics(api).await;
        assert_eq!(
            metric(&text, "imagewolf_torrent_slots_busy"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(metric(&text, "imagewolf_distributions_queued"), Some(0.0));
    }
    cluster.shutdown().await;
}

/// A `--runtime none` loader that behaves like a real runtime in one respect: it registers
/// images under the names their archives give, so received archives are checked against
/// their announcements before it may load them.
struct NamingLoader(KeepTarball);

impl ImageLoader for NamingLoader {
    fn has_image<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>> {
        self.0.has_image(id)
    }

    fn load<'a>(&'a self, path: &'a std::path::Path) -> BoxFuture<'a, Result<(), LoaderError>> {
        self.0.load(path)
    }

    fn registers_names(&self) -> bool {
        true
    }
}

/// The attack of a member gone rogue (or of anyone, on a cluster run without a secret): an
/// announcement whose hashes are all right but whose archive holds another image, or names
/// the announced one otherwise (`docker.io/library/nginx:latest` over a node's own). The
/// receiving node fails it with the reason and loads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_holding_or_naming_another_image_than_announced_is_never_loaded() {
    let dir = TempDir::new("agent-names").unwrap();
    let (mut cluster, mut listeners) = LocalAgents::start(dir.path().join("agents"), vec![], 1)
        .await
        .unwrap();
    let listener = listeners.pop().unwrap();
    let kept = dir.path().join("node");
    let loader = Arc::new(NamingLoader(KeepTarball::new(kept.join("loaded")).unwrap()));
    let node = cluster
        .start_late_with_loader(listener, None, Some(loader))
        .await
        .unwrap()
        .api;
    let image = |registry: &str, repository: &str, tag: &str| ImageRef {
        registry: registry.into(),
        repository: repository.into(),
        tag: Some(tag.into()),
        digest: None,
    };
    // (archive's own name, announced as, announced image id or None for the archive's, why)
    let cases = [
        (
            "docker.io/library/nginx:latest",
            image("10.1.2.3:5000", "team/innocent", "v1"),
            None,
            "names its image",
        ),
        (
            "docker.io/library/nginx:1.27",
            image("docker.io", "library/nginx", "1.27"),
            Some(format!("sha256:{}", "ab".repeat(32))),
            "not the announced",
        ),
    ];
    for (i, (own_name, announced, image_id, why)) in cases.into_iter().enumerate() {
        let case_dir = dir.path().join(format!("case-{i}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let archive = GeneratedImage::build(&case_dir, own_name, 1 << 20).unwrap();
        let payload = std::fs::read(&archive.path).unwrap();
        let (seeder, meta, _seeding) = seed_in_memory("image.tar", payload.clone()).await;
        let reference = format!(
            "{}/{}:{}",
            announced.registry,
            announced.repository,
            announced.tag.as_deref().unwrap()
        );
        let mut d = Distribution::single(
            announced,
            image_id.unwrap_or_else(|| archive.image_id.clone()),
            &meta,
            sha256_hex(&payload),
            vec![seeder.listen_addr().to_string()],
            0,
        );
        d.sign(TEST_CLUSTER_SECRET);
        let body = serde_json::to_vec(&d).unwrap();
        let reply = agent_call(
            node,
            "POST",
            "/v1/distributions",
            Some(TEST_CLUSTER_SECRET),
            &body,
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let img = wait_for_state(node, &reference, "failed").await;
        assert!(img["error"].as_str().unwrap().contains(why), "{img}");
        assert!(
            loaded_files(&kept).is_empty(),
            "a mismatched archive was loaded"
        );
        seeder.shutdown().await;
    }
    cluster.shutdown().await;
}
