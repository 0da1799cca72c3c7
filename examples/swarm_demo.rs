//! A whole swarm on this machine: an in-memory tracker, one seed and N downloaders (each its
//! own session on loopback, file-backed), spreading a generated payload. Shows live progress
//! and a per-node summary. Needs nothing but cargo:
//!
//! ```text
//! cargo run --release --example swarm_demo -- [--nodes 8] [--size-mib 256]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use imagewolf::{random_payload, TempDir};
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom, TorrentHandle};

/// Spread a generated payload from one seed to N downloaders over loopback.
#[derive(Parser)]
struct Args {
    /// Downloaders.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Payload size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
}

fn loopback() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().expect("literal"),
        peer_id: PeerId::generate(),
        ..SessionConfig::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = TempDir::new("demo")?;
    let size = args.size_mib << 20;
    println!("generating a {} MiB payload ...", args.size_mib);
    let payload_path = dir.path().join("image.tar");
    std::fs::write(&payload_path, random_payload(size, 42))?;

    let tracker = TrackerServer::bind("127.0.0.1:0".parse()?, TrackerConfig::default()).await?;
    let started = Instant::now();
    let meta = TorrentBuilder::new("image.tar")
        .announce(tracker.announce_url())
        .build_from_file(&payload_path)
        .context("hashing the payload")?;
    println!(
        "torrent {}: {} pieces of {} KiB, hashed in {:.2} s; tracker {}",
        meta.info_hash(),
        meta.lengths().num_pieces(),
        meta.lengths().piece_len() / 1024,
        started.elapsed().as_secs_f64(),
        tracker.announce_url()
    );

    let seed = Session::new(loopback()).await?;
    let storage = FileStorage::open_file(&payload_path, meta.total_len())?;
    let seed_handle = seed
        .add_torrent(AddTorrent::new(
            meta.clone(),
            Arc::new(storage),
            StartFrom::Complete,
        ))
        .await?;

    let started = Instant::now();
    let mut nodes: Vec<(Session, TorrentHandle, Option<Duration>)> = Vec::new();
    for i in 0..args.nodes {
        let session = Session::new(loopback()).await?;
        let path = dir.path().join(format!("node{i}")).join("image.tar");
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let storage = FileStorage::create_file(&path, meta.total_len())?;
        let handle = session
            .add_torrent(AddTorrent::new(
                meta.clone(),
                Arc::new(storage),
                StartFrom::Empty,
            ))
            .await?;
        nodes.push((session, handle, None));
    }
    println!(
        "seed on {}, {} downloaders started\n",
        seed.listen_addr(),
        args.nodes
    );

    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let mut line = String::new();
        for (_, handle, done) in nodes.iter_mut() {
            let stats = handle.stats();
            if stats.is_complete() && done.is_none() {
                *done = Some(started.elapsed());
            }
            line.push_str(&format!("{:>4.0}%", 100.0 * stats.progress()));
        }
        println!("{:>6.1} s |{line}", started.elapsed().as_secs_f64());
        if nodes.iter().all(|(_, _, d)| d.is_some()) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the swarm did not complete within 10 minutes");
        }
    }

    println!("\nnode  complete after  avg MiB/s  uploaded MiB  hash failures");
    for (i, (_, handle, done)) in nodes.iter().enumerate() {
        let secs = done.expect("all done").as_secs_f64();
        let s = handle.stats();
        println!(
            "{i:>4}  {secs:>12.2} s  {:>9.1}  {:>12.1}  {:>13}",
            size as f64 / secs / (1 << 20) as f64,
            s.uploaded as f64 / (1 << 20) as f64,
            s.hash_failures
        );
    }
    let total = started.elapsed().as_secs_f64();
    let seed_up = seed_handle.stats().uploaded as f64 / size as f64;
    println!(
        "\nall {} nodes complete in {total:.2} s; the seed uploaded {seed_up:.2} copies, the nodes shared the rest",
        args.nodes
    );
    for (session, _, _) in nodes {
        session.shutdown().await;
    }
    seed.shutdown().await;
    Ok(())
}
