//! ImageWolf end to end on one machine, needing nothing but cargo: N agents (each with its
//! own HTTP API, BitTorrent port, blob store and registry endpoint, finding each other
//! through a static peer list), a registry in this process serving a generated 4-layer image
//! over the real registry API, and real registry push notifications POSTed to the first
//! agent. First the image is pushed, then a new version that adds one small layer: watch the
//! update move only that layer. Progress comes from the agents' own `/stats`; a per-node
//! summary ends each push.
//!
//! ```text
//! cargo run --release --example cluster_demo -- [--nodes 6] [--size-mib 192] [--update-mib 8]
//! ```
//! Without a container runtime the agents run with `--runtime none`: an image lands in each
//! node's blob store and its registry endpoint, and a `docker save` archive built from the
//! store is kept in `DATA_DIR/loaded/`. The multi-node tests (`cargo test -p imagewolf-agent
//! --test cluster --test cluster_containerd`) run the same agents against real dockerd and
//! containerd instances and a real registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use imagewolf::local_agents::{registry_push_envelope, LocalAgents};
use imagewolf::mem_registry::MemRegistry;
use imagewolf::oci::{Blob, Image};
use imagewolf::{http, TempDir};
use imagewolf_agent::registry::manifest::host_platform;
use imagewolf_agent::registry::{HostPolicy, RegistrySource};
use imagewolf_agent::source::ImageSource;

/// Spread a generated image, then an update of it, to N local agents through the real
/// agent flow.
#[derive(Parser)]
struct Args {
    /// Agents (nodes).
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Image size in MiB (split over 4 layers).
    #[arg(long, default_value_t = 192)]
    size_mib: usize,
    /// Size of the layer the update adds, MiB.
    #[arg(long, default_value_t = 8)]
    update_mib: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    anyhow::ensure!(args.size_mib >= 4, "--size-mib must be at least 4");
    let dir = TempDir::new("cluster-demo")?;
    let registry = MemRegistry::start(dir.path().join("registry")).await?;
    let repo = "demo/app";
    println!(
        "building a {} MiB image of 4 layers, and v2 = it + one {} MiB layer ...",
        args.size_mib, args.update_mib
    );
    let layers: Vec<Blob> = (0..4)
        .map(|i| Blob::layer(&format!("layer{i}.bin"), (args.size_mib << 20) / 4, 100 + i))
        .collect();
    let arch = host_platform().architecture;
    let v1 = Image::new("linux", arch, None, layers.clone());
    let mut v2_layers = layers;
    v2_layers.push(Blob::layer("update.bin", args.update_mib << 20, 999));
    let v2 = Image::new("linux", arch, None, v2_layers);

    // Agent 0 hears the pushes and reads the registry; the others receive.
    // The registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let policy = HostPolicy::naming([registry.addr().to_string()]);
    let source: Arc<dyn ImageSource> = Arc::new(RegistrySource::new().with_policy(policy.clone()));
    let mut sources = vec![Some(source)];
    sources.resize_with(args.nodes, || None);
    let (mut cluster, _) = LocalAgents::start(dir.path().join("agents"), sources, 0).await?;
    cluster.registry_policy = policy;
    for i in 0..args.nodes {
        cluster
            .enable_blobs(i, 16 << 30, host_platform(), &[])
            .await?;
    }
    let apis: Vec<SocketAddr> = cluster.agents.iter().map(|a| a.api).collect();
    println!(
        "{} agents up: {}; registry at {}",
        args.nodes,
        apis.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        registry.addr()
    );

    for (tag, image, what) in [("v1", &v1, "first push"), ("v2", &v2, "the update")] {
        let digest = registry.push(repo, tag, image)?;
        let gets = registry.blob_gets();
        let reference = format!("{}/{repo}:{tag}", registry.addr());
        println!("\n== {what}: {reference}");
        let took = spread(&apis, &registry.addr().to_string(), repo, tag, &digest).await?;
        summary(&cluster, &reference)?;
        println!(
            "{reference} loaded on all {} nodes in {:.2} s after the push; the registry served {} blobs, once, to node0.",
            args.nodes,
            took.as_secs_f64(),
            registry.blob_gets() - gets
        );
    }
    cluster.shutdown().await;
    Ok(())
}

/// Notifies agent 0 of a push and shows every node's state until all have loaded it.
async fn spread(
    apis: &[SocketAddr],
    registry: &str,
    repo: &str,
    tag: &str,
    digest: &str,
) -> anyhow::Result<Duration> {
    let envelope = registry_push_envelope(registry, repo, Some(tag), digest, &format!("e-{tag}"));
    let started = Instant::now();
    let reply = http::request(
        apis[0],
        "POST",
        "/registryNotifications",
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.events.v1+json",
        )],
        envelope.as_bytes(),
    )
    .await
    .context("notifying the first agent")?;
    if reply.status != 200 {
        bail!("the agent refused the notification: {}", reply.text());
    }
    let reference = format!("{registry}/{repo}:{tag}");
    let header: String = (0..apis.len())
        .map(|i| format!("{:>14}", format!("node{i}")))
        .collect();
    println!("{:>8} {header}", "time");
    let mut loaded = vec![false; apis.len()];
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut line = String::new();
        for (api, done) in apis.iter().zip(loaded.iter_mut()) {
            let stats = http::request(*api, "GET", "/stats", &[], b"").await?;
            let images: Vec<serde_json::Value> = serde_json::from_slice(&stats.body)?;
            let img = images.iter().find(|i| {
                i["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with(&reference))
            });
            let cell = match img {
                None => "-".to_string(),
                Some(img) => {
                    let state = img["state"].as_str().unwrap_or("?");
                    *done |= state == "loaded";
                    if state == "failed" {
                        bail!("{api} failed: {}", img["error"]);
                    }
                    match (state, img["size"].as_u64(), img["bytes_down"].as_u64()) {
                        ("downloading", Some(size), Some(down)) if size > 0 => {
                            format!("{:.0}% down", 100.0 * down.min(size) as f64 / size as f64)
                        }
                        (state, _, _) => state.to_string(),
                    }
                }
            };
            line.push_str(&format!("{cell:>14}"));
        }
        println!("{:>7.1}s {line}", started.elapsed().as_secs_f64());
        if loaded.iter().all(|l| *l) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not loaded everywhere within 10 minutes");
        }
    }
}

/// One line per node: its role and what moved.
fn summary(cluster: &LocalAgents, reference: &str) -> anyhow::Result<()> {
    println!("\nnode  role    blobs had/total  MiB needed  MiB down  MiB up");
    for (i, agent) in cluster.agents.iter().enumerate() {
        let img = agent
            .distributor
            .images()
            .into_iter()
            .find(|i| i.reference.starts_with(reference))
            .context("no record of the image")?;
        let blobs = img.blobs.unwrap_or_default();
        println!(
            "{i:>4}  {:<6}  {:>15}  {:>10.1}  {:>8.1}  {:>6.1}",
            if img.origin { "origin" } else { "peer" },
            format!("{}/{}", blobs.present, blobs.total),
            blobs.bytes_needed as f64 / 1048576.0,
            img.bytes_down as f64 / 1048576.0,
            img.bytes_up as f64 / 1048576.0,
        );
    }
    Ok(())
}
