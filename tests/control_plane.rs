//! The control plane at a size where announcing to everyone would show (in one process, on
//! loopback, `--runtime none`): 24 agents all get a push by rumor with bounded fan-out, and
//! an idle anti-entropy round costs each agent one small call whatever the cluster's size.
//! The measured figures at 8-48 agents are `tests/control_traffic.rs` (ignored; by hand).

use std::sync::Arc;
use std::time::{Duration, Instant};

use imagewolf::generated_image::GeneratedImage;
use imagewolf::http;
use imagewolf::local_agents::{registry_push_envelope, LocalAgents};
use imagewolf::TempDir;
use imagewolf_agent::distributor::gossip::fanout;
use imagewolf_agent::peers::PeerTraffic;
use imagewolf_agent::source::ImageSource;
use imagewolf_agent::stats::ImageState;

const EVENTS: &str = "application/vnd.docker.distribution.events.v1+json";

async fn start(dir: &std::path::Path, n: usize, image: Arc<GeneratedImage>) -> LocalAgents {
    let mut sources: Vec<Option<Arc<dyn ImageSource>>> = vec![None; n];
    sources[0] = Some(image);
    LocalAgents::start(dir.join(format!("n{n}")), sources, 0)
        .await
        .unwrap()
        .0
}

async fn push_and_wait(cluster: &LocalAgents, reference: &str) -> Duration {
    let envelope = registry_push_envelope(
        "10.1.2.3:5000",
        "team/app",
        Some("v1"),
        &format!("sha256:{}", "cd".repeat(32)),
        "event-1",
    );
    let started = Instant::now();
    let reply = http::request(
        cluster.agents[0].api,
        "POST",
        "/registryNotifications",
        &[("Content-Type", EVENTS)],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let deadline = started + Duration::from_secs(120);
    loop {
        let missing: Vec<_> = cluster
            .agents
            .iter()
            .filter(|a| {
                !a.distributor
                    .images()
                    .iter()
                    .any(|i| i.reference.starts_with(reference) && i.state == ImageState::Loaded)
            })
            .map(|a| a.api)
            .collect();
        if missing.is_empty() {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "not loaded in 120 s: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn traffic(cluster: &LocalAgents) -> Vec<PeerTraffic> {
    cluster
        .agents
        .iter()
        .map(|a| a.distributor.peer_traffic())
        .collect()
}

/// Every agent runs one anti-entropy round at once; what each sent and received for it
/// (the most of any agent: calls, bytes).
async fn idle_round(cluster: &LocalAgents) -> (u64, u64) {
    let before = traffic(cluster);
    let rounds = cluster
        .agents
        .iter()
        .map(|a| a.distributor.catch_up_with(1));
    let taken: usize = futures::future::join_all(rounds).await.into_iter().sum();
    assert_eq!(taken, 0, "an idle round started a distribution");
    let after = traffic(cluster);
    after
        .iter()
        .zip(&before)
        .map(|(a, b)| {
            (
                a.calls - b.calls,
                (a.bytes_sent - b.bytes_sent) + (a.bytes_received - b.bytes_received),
            )
        })
        .fold((0, 0), |(c, b), (calls, bytes)| {
            (c.max(calls), b.max(bytes))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_agents_get_a_push_and_idle_rounds_cost_the_same_as_with_six() {
    let dir = TempDir::new("control-plane").unwrap();
    let reference = "10.1.2.3:5000/team/app:v1";
    // Two segments (16 MiB each at most): a first version, then growth pushed down the tree.
    let image = Arc::new(GeneratedImage::build(dir.path(), reference, 20 << 20).unwrap());

    let small = start(dir.path(), 6, Arc::clone(&image)).await;
    push_and_wait(&small, reference).await;
    let (small_calls, small_bytes) = idle_round(&small).await;
    small.shutdown().await;

    let n = 24;
    let cluster = start(dir.path(), n, image).await;
    let before = traffic(&cluster);
    let took = push_and_wait(&cluster, reference).await;
    let after = traffic(&cluster);
    let sent: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.bytes_sent - b.bytes_sent)
        .sum();
    let calls: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.calls - b.calls)
        .sum();
    let receivers = (n - 1) as u64;
    println!(
        "N={n}: loaded everywhere in {took:?}; {calls} calls, {} B sent per receiver",
        sent / receivers
    );
    // Each agent offers the first version to fanout(n-1) agents and each later version to
    // the agents it delivered the first to; announcing to everyone would be (n-1) calls
    // per version from the origin alone, and every agent's listing from every other.
    let k = fanout(n - 1) as u64;
    assert!(
        calls <= n as u64 * (2 * k + 8) + 4 * n as u64,
        "{calls} calls for one push"
    );
    // A rumor is about a hundred bytes; the rest is the torrent of each segment, delivered
    // once to each receiver (about 15 KB in all here, with HTTP heads).
    assert!(
        sent / receivers <= 20 << 10,
        "{} B per receiver",
        sent / receivers
    );

    let (calls, bytes) = idle_round(&cluster).await;
    println!("idle round, most of any agent: N=6 {small_calls} calls {small_bytes} B; N={n} {calls} calls {bytes} B");
    // One digest call, answered "same" in a few dozen bytes (a retry at most).
    assert!(calls <= 2, "{calls} calls in one idle round");
    assert!(bytes <= 1500, "{bytes} B in one idle round");
    assert!(
        bytes <= small_bytes + 200,
        "an idle round grew with the cluster: {small_bytes} B at 6 agents, {bytes} B at {n}"
    );
    cluster.shutdown().await;
}
