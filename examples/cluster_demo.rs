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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::future::BoxFuture;
use imagewolf::{http, random_payload, TempDir};
use imagewolf_agent::api::{self, AgentApi, ApiConfig};
use imagewolf_agent::config::PeerSpec;
use imagewolf_agent::discovery;
use imagewolf_agent::distributor::{Distributor, DistributorApi, DistributorConfig};
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::loader::KeepTarball;
use imagewolf_agent::source::{ImageSource, NoSource, PulledImage, SourceError, Tarball};
use sha2::Digest;

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

/// Stands in for the registry + `docker pull`/`docker save`: a `docker save` tarball built
/// once from random layers.
struct GeneratedImage {
    path: PathBuf,
    image_id: String,
    reference: String,
}

impl GeneratedImage {
    fn build(dir: &std::path::Path, reference: &str, size: usize) -> anyhow::Result<Self> {
        let path = dir.join("generated.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for i in 0..4 {
            let mut layer = tar::Builder::new(Vec::new());
            let content = random_payload(size / 4, 100 + i);
            append(&mut layer, &format!("data/layer{i}.bin"), &content)?;
            let layer = layer.into_inner()?;
            let digest = hex(&sha2::Sha256::digest(&layer));
            append(&mut tar, &format!("{digest}/layer.tar"), &layer)?;
            layers.push(format!("{digest}/layer.tar"));
            diff_ids.push(format!("sha256:{digest}"));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string();
        let config_digest = hex(&sha2::Sha256::digest(config.as_bytes()));
        append(&mut tar, &format!("{config_digest}.json"), config.as_bytes())?;
        let manifest = serde_json::json!([{
            "Config": format!("{config_digest}.json"),
            "RepoTags": [reference],
            "Layers": layers,
        }])
        .to_string();
        append(&mut tar, "manifest.json", manifest.as_bytes())?;
        tar.into_inner()?;
        Ok(Self {
            path,
            image_id: format!("sha256:{config_digest}"),
            reference: reference.to_owned(),
        })
    }
}

fn append<W: std::io::Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ImageSource for GeneratedImage {
    fn pull<'a>(&'a self, _image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            let size_hint = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
            Ok(PulledImage {
                image_id: self.image_id.clone(),
                reference: self.reference.clone(),
                size_hint,
            })
        })
    }

    fn export<'a>(&'a self, _image: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move {
            let file = tokio::fs::File::open(&self.path).await.map_err(|e| SourceError {
                message: e.to_string(),
                retryable: false,
            })?;
            Ok(Box::pin(file) as Tarball)
        })
    }
}

struct Node {
    api: SocketAddr,
    distributor: Arc<Distributor>,
    loaded_after: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    let dir = TempDir::new("cluster-demo")?;
    let registry = "registry.demo:5000";
    let reference = format!("{registry}/demo/app:v1");
    println!("building a {} MiB image in docker-save format ...", args.size_mib);
    let image = Arc::new(GeneratedImage::build(dir.path(), &reference, args.size_mib << 20)?);

    // Reserve every node's API port first: the static peer list names them all.
    let listeners: Vec<tokio::net::TcpListener> = futures::future::try_join_all(
        (0..args.nodes).map(|_| tokio::net::TcpListener::bind("127.0.0.1:0")),
    )
    .await?;
    let apis: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let peers = PeerSpec::Static(apis.iter().map(|a| a.to_string()).collect());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let data_dir = dir.path().join(format!("node{i}"));
        let agents = discovery::spawn(peers.clone(), Duration::from_secs(5), shutdown_rx.clone()).await;
        let source: Arc<dyn ImageSource> = if i == 0 { image.clone() } else { Arc::new(NoSource) };
        let loader = Arc::new(KeepTarball::new(data_dir.join("loaded"))?);
        let distributor = Distributor::start(
            DistributorConfig {
                data_dir,
                advertise: "127.0.0.1".parse()?,
                api_port: apis[i].port(),
                bt_listen: "127.0.0.1:0".parse()?,
                seed_time: Duration::from_secs(600),
            },
            source,
            loader,
            agents,
        )
        .await?;
        let api_config = ApiConfig {
            registry_override: None,
            hub_registry: "docker.io".into(),
            max_body: api::DEFAULT_MAX_BODY,
        };
        tokio::spawn(api::serve(
            listener,
            Arc::new(DistributorApi(Arc::clone(&distributor))) as Arc<dyn AgentApi>,
            api_config,
            shutdown_rx.clone(),
        ));
        nodes.push(Node {
            api: apis[i],
            distributor,
            loaded_after: None,
        });
    }
    println!("{} agents up: {}", args.nodes, apis.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "));

    // The registry's notification for the push, as distribution 2.8 sends it.
    let envelope = serde_json::json!({"events": [{
        "id": "demo-event-1", "timestamp": "2026-11-27T00:00:00Z", "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": format!("sha256:{}", "ab".repeat(32)), "size": 1234, "length": 1234,
            "repository": "demo/app", "tag": "v1",
            "url": format!("http://{registry}/v2/demo/app/manifests/sha256:{}", "ab".repeat(32)),
        },
        "request": {"id": "r1", "addr": "127.0.0.1:40000", "host": registry, "method": "PUT", "useragent": "docker/28"},
        "actor": {}, "source": {"addr": "registry:5000", "instanceID": "demo"},
    }]});
    let started = Instant::now();
    let reply = http::request(
        apis[0],
        "POST",
        "/registryNotifications",
        &[("Content-Type", "application/vnd.docker.distribution.events.v1+json")],
        envelope.to_string().as_bytes(),
    )
    .await
    .context("notifying the first agent")?;
    println!("push notified to {}: {} {}\n", apis[0], reply.status, reply.text());
    if reply.status != 200 {
        bail!("the agent refused the notification");
    }

    let header: String = (0..args.nodes).map(|i| format!("{:>14}", format!("node{i}"))).collect();
    println!("{:>8} {header}", "time");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut line = String::new();
        for node in nodes.iter_mut() {
            let stats = http::request(node.api, "GET", "/stats", &[], b"").await?;
            let images: serde_json::Value = serde_json::from_slice(&stats.body)?;
            let cell = match images.as_array().and_then(|a| a.first()) {
                None => "-".to_string(),
                Some(img) => {
                    let state = img["state"].as_str().unwrap_or("?");
                    if state == "loaded" && node.loaded_after.is_none() {
                        node.loaded_after = Some(started.elapsed());
                    }
                    if state == "failed" {
                        bail!("{} failed: {}", node.api, img["error"]);
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
        if nodes.iter().all(|n| n.loaded_after.is_some()) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("not loaded everywhere within 10 minutes");
        }
    }

    println!("\nnode  role    loaded after  MiB down  MiB up   load s");
    for (i, node) in nodes.iter().enumerate() {
        let img = node.distributor.images().into_iter().next().context("no image")?;
        println!(
            "{i:>4}  {:<6}  {:>10.2} s  {:>8.1}  {:>6.1}  {:>7}",
            if img.origin { "origin" } else { "peer" },
            node.loaded_after.unwrap_or_default().as_secs_f64(),
            img.bytes_down as f64 / 1048576.0,
            img.bytes_up as f64 / 1048576.0,
            img.load_seconds.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into()),
        );
    }
    println!(
        "\n{} loaded on all {} nodes in {:.2} s after the push; the registry was asked once.",
        reference,
        args.nodes,
        started.elapsed().as_secs_f64()
    );
    shutdown_tx.send_replace(true);
    for node in nodes {
        node.distributor.shutdown().await;
    }
    Ok(())
}
