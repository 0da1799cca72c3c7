//! ImageWolf end to end on one machine, needing nothing but cargo: N agents (each with its
//! own HTTP API, BitTorrent port and data dir, finding each other through a static peer list),
//! a generated multi-layer image in `docker save` format standing in for the registry, and a
//! real registry push notification POSTed to the first agent. Progress comes from the agents'
//! own `/stats` over HTTP; a per-node summary ends it.
//!
//! ```text
//! cargo run --release --example cluster_demo -- [--nodes 6] [--size-mib 192]
//! ```
//! Without Docker the agents run with `--runtime none` (a loaded image is a verified tarball
//! in `DATA_DIR/loaded/`). The multi-node test (`cargo test --test cluster`) runs the same
//! agents against real dockerd instances and a real registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use imagewolf::generated_image::GeneratedImage;
use imagewolf::local_agents::{registry_push_envelope, LocalAgents};
use imagewolf::{http, TempDir};
use imagewolf_agent::source::ImageSource;

/// Spread a generated image to N local agents through the real agent flow.
#[derive(Parser)]
struct Args {
    /// Agents (nodes).
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Image size in MiB (split over 4 layers).
    #[arg(long, default_value_t = 192)]
    size_mib: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    let dir = TempDir::new("cluster-demo")?;
    let registry = "registry.demo:5000";
    let reference = format!("{registry}/demo/app:v1");
    println!(
        "building a {} MiB image in docker-save format ...",
        args.size_mib
    );
    let image: Arc<dyn ImageSource> = Arc::new(GeneratedImage::build(
        dir.path(),
        &reference,
        args.size_mib << 20,
    )?);

    // Agent 0 can pull (it hears the push); the others receive.
    let mut sources = vec![Some(image)];
    sources.resize_with(args.nodes, || None);
    let (cluster, _) = LocalAgents::start(dir.path().join("agents"), sources, 0).await?;
    let apis: Vec<_> = cluster.agents.iter().map(|a| a.api).collect();
    println!(
        "{} agents up: {}",
        args.nodes,
        apis.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );

    let envelope = registry_push_envelope(
        registry,
        "demo/app",
        Some("v1"),
        &format!("sha256:{}", "ab".repeat(32)),
        "demo-event-1",
    );
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
    println!(
        "push notified to {}: {} {}\n",
        apis[0],
        reply.status,
        reply.text()
    );
    if reply.status != 200 {
        bail!("the agent refused the notification");
    }

    let mut loaded_after: Vec<Option<Duration>> = vec![None; args.nodes];
    let header: String = (0..args.nodes)
        .map(|i| format!("{:>14}", format!("node{i}")))
        .collect();
    println!("{:>8} {header}", "time");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut line = String::new();
        for (api, done) in apis.iter().zip(loaded_after.iter_mut()) {
            let stats = http::request(*api, "GET", "/stats", &[], b"").await?;
            let images: serde_json::Value = serde_json::from_slice(&stats.body)?;
            let cell = match images.as_array().and_then(|a| a.first()) {
                None => "-".to_string(),
                Some(img) => {
                    let state = img["state"].as_str().unwrap_or("?");
                    if state == "loaded" && done.is_none() {
                        *done = Some(started.elapsed());
                    }
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
        if loaded_after.iter().all(Option::is_some) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not loaded everywhere within 10 minutes");
        }
    }

    println!("\nnode  role    loaded after  MiB down  MiB up   load s");
    for (i, (agent, done)) in cluster.agents.iter().zip(&loaded_after).enumerate() {
        let img = agent
            .distributor
            .images()
            .into_iter()
            .next()
            .context("no image")?;
        println!(
            "{i:>4}  {:<6}  {:>10.2} s  {:>8.1}  {:>6.1}  {:>7}",
            if img.origin { "origin" } else { "peer" },
            done.unwrap_or_default().as_secs_f64(),
            img.bytes_down as f64 / 1048576.0,
            img.bytes_up as f64 / 1048576.0,
            img.load_seconds
                .map(|s| format!("{s:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "\n{reference} loaded on all {} nodes in {:.2} s after the push; the image was fetched once, by node0.",
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    cluster.shutdown().await;
    Ok(())
}
