//! Polling mode against Debian's real `docker-registry`, with images pushed by a real
//! `dockerd`: the poller reports exactly the new digests (new tag, moved tag, first push of
//! a repository) with the digest the registry gave the push, and the agent binary started
//! with `--poll` spreads such a push like a notified one. Needs root, docker.io and
//! docker-registry; fails (never skips) without them.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::docker::{build_test_image, free_port, Dockerd, Registry};
use imagewolf::{http, ChildGuard, TempDir};
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::poll::{PollTarget, Poller};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");

/// The manifest digest the registry recorded for a push of `reference`.
fn pushed_digest(dockerd: &Dockerd, reference: &str) -> String {
    let repo = reference.rsplit_once(':').unwrap().0;
    let digests = dockerd
        .run_cli(&[
            "image",
            "inspect",
            "--format",
            "{{range .RepoDigests}}{{println .}}{{end}}",
            reference,
        ])
        .unwrap();
    digests
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{repo}@")))
        .unwrap_or_else(|| panic!("no RepoDigest for {repo} in {digests:?}"))
        .to_owned()
}

fn push(dockerd: &Dockerd, reference: &str) -> String {
    dockerd
        .run_cli(&["push", reference])
        .unwrap_or_else(|e| panic!("pushing {reference}: {e}"));
    pushed_digest(dockerd, reference)
}

fn expected(registry: &str, repository: &str, tag: &str, digest: &str) -> ImageRef {
    ImageRef {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        tag: Some(tag.to_owned()),
        digest: Some(digest.to_owned()),
    }
}

async fn poll(poller: &mut Poller) -> Vec<ImageRef> {
    let (mut found, errors) = poller.poll_once().await;
    assert!(errors.is_empty(), "{errors:?}");
    found.sort_by_key(|r| r.to_string());
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn poller_reports_new_digests_and_the_agent_spreads_them() {
    let registry = Registry::start_local()
        .unwrap_or_else(|e| panic!("registry (apt-get install -y docker-registry): {e}"));
    let reg = registry.addr().to_owned();
    let dockerd = Dockerd::start("poll", &[])
        .unwrap_or_else(|e| panic!("dockerd (apt-get install -y docker.io): {e}"));

    let targets: Vec<PollTarget> = [
        format!("http://{reg}/imagewolf/polled"),
        format!("http://{reg}/imagewolf/single:v1"),
    ]
    .iter()
    .map(|t| t.parse().unwrap())
    .collect();
    let mut poller = Poller::new(targets);
    // Neither repository exists yet: an empty baseline.
    assert_eq!(poll(&mut poller).await, []);

    let v1 = format!("{reg}/imagewolf/polled:v1");
    build_test_image(&dockerd, &v1, 2, 1).unwrap();
    let d1 = push(&dockerd, &v1);
    assert_eq!(
        poll(&mut poller).await,
        [expected(&reg, "imagewolf/polled", "v1", &d1)]
    );
    assert_eq!(
        poll(&mut poller).await,
        [],
        "the same digest reported twice"
    );

    // A new tag for the same image, and a moved tag.
    let v2 = format!("{reg}/imagewolf/polled:v2");
    dockerd.run_cli(&["tag", &v1, &v2]).unwrap();
    assert_eq!(push(&dockerd, &v2), d1);
    build_test_image(&dockerd, &v1, 1, 1).unwrap();
    let d1b = push(&dockerd, &v1);
    assert_ne!(d1, d1b);
    assert_eq!(
        poll(&mut poller).await,
        [
            expected(&reg, "imagewolf/polled", "v1", &d1b),
            expected(&reg, "imagewolf/polled", "v2", &d1),
        ]
    );

    // The single-tag target sees its tag only.
    let single = format!("{reg}/imagewolf/single:v1");
    let other = format!("{reg}/imagewolf/single:other");
    build_test_image(&dockerd, &single, 1, 1).unwrap();
    dockerd.run_cli(&["tag", &single, &other]).unwrap();
    let ds = push(&dockerd, &single);
    push(&dockerd, &other);
    assert_eq!(
        poll(&mut poller).await,
        [expected(&reg, "imagewolf/single", "v1", &ds)]
    );

    // A poller started now takes what exists as its baseline (an agent restart does not
    // redistribute everything).
    let mut fresh = Poller::new(vec![format!("http://{reg}/imagewolf/polled")
        .parse()
        .unwrap()]);
    assert_eq!(poll(&mut fresh).await, []);

    // The agent binary with --poll: a push nobody notifies it of gets spread.
    let dir = TempDir::new("poll-agent").unwrap();
    let api = free_port().unwrap();
    let bt = free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut cmd = Command::new(AGENT);
    // Every agent of the test cluster shares one secret (the agent refuses to start without).
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--peers", &format!("static:127.0.0.1:{api}")])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--bt-listen", &format!("127.0.0.1:{bt}")])
        .args(["--advertise-addr", "127.0.0.1"])
        // The registry endpoint on a port of its own (tests run side by side).
        .args(["--endpoint-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--docker-host", &dockerd.docker_host()])
        .args(["--poll", &format!("http://{reg}/imagewolf/agent")])
        .args(["--poll-seconds", "1"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _agent = ChildGuard::spawn("agent", &mut cmd).unwrap();
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let addr = SocketAddr::from(([127, 0, 0, 1], api));
    let start = Instant::now();
    while http::request(addr, "GET", "/healthz", &[], b"")
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent not up:\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let it take its (empty) baseline before the push.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pushed = format!("{reg}/imagewolf/agent:v1");
    build_test_image(&dockerd, &pushed, 1, 1).unwrap();
    let digest = push(&dockerd, &pushed);
    let start = Instant::now();
    loop {
        let stats = http::request(addr, "GET", "/stats", &[], b"")
            .await
            .unwrap();
        let images: Vec<serde_json::Value> = serde_json::from_slice(&stats.body).unwrap();
        if let Some(image) = images.iter().find(|i| {
            i["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with(&pushed) && r.contains(&digest))
        }) {
            eprintln!(
                "agent picked up the push by polling in {:?}: {image}",
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the polling agent never took up {pushed}@{digest}: {images:?}\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
