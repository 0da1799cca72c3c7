//! Seed a file: hash it into a `.torrent`, write that, and serve it until killed.
//!
//! ```text
//! cargo run --release --example seed -- FILE --torrent-out OUT.torrent --listen IP:PORT \
//!     [--tracker-listen IP:PORT | --announce URL]
//! ```
//! With `--tracker-listen` an in-memory tracker runs in this process and the torrent announces
//! to it. Progress is printed every second; Ctrl-C (SIGINT) or SIGTERM stops cleanly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};
use imagewolf_bt::{AddTorrent, Session};

/// Seed FILE over BitTorrent.
#[derive(Parser)]
struct Args {
    /// The file to seed.
    file: PathBuf,
    /// Where to write the .torrent.
    #[arg(long)]
    torrent_out: PathBuf,
    /// Address to accept peers on.
    #[arg(long, default_value = "0.0.0.0:6881")]
    listen: SocketAddr,
    /// Run an in-memory tracker on this address and announce to it.
    #[arg(long, conflicts_with = "announce")]
    tracker_listen: Option<SocketAddr>,
    /// Announce to this tracker URL.
    #[arg(long)]
    announce: Option<String>,
    /// ImageWolf's LAN tuning (`SessionConfig::lan_cluster`): the seed spreads distinct
    /// pieces first, peer traffic is marked bulk. Without it, the library's general-purpose
    /// defaults (a plain seed).
    #[arg(long)]
    lan_cluster: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .init();
    let args = Args::parse();
    // The address others reach us at: the listen IP, or loopback for a wildcard listen.
    let reachable_ip = match args.listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    // The tracker is bound on its own, before hashing (the torrent names it), and the
    // session only once the .torrent is written: scripts wait for the peer port and then
    // read the file. (`SessionBuilder::tracker` binds both at once, for programs.)
    let tracker = match args.tracker_listen {
        Some(addr) => Some(
            TrackerServer::bind(addr, TrackerConfig::default())
                .await
                .with_context(|| format!("starting the tracker on {addr}"))?,
        ),
        None => None,
    };
    let announce = match (&tracker, args.announce) {
        (Some(t), _) => {
            let mut addr = t.local_addr();
            if addr.ip().is_unspecified() {
                addr.set_ip(reachable_ip);
            }
            Some(format!("http://{addr}/announce"))
        }
        (None, url) => url,
    };

    let name = args
        .file
        .file_name()
        .context("FILE has no file name")?
        .to_string_lossy()
        .into_owned();
    let started = Instant::now();
    let mut builder = TorrentBuilder::new(name);
    if let Some(url) = &announce {
        builder = builder.announce(url.clone());
    }
    // Hashing runs on tokio's blocking pool.
    let meta = builder
        .create(&args.file)
        .await
        .with_context(|| format!("hashing {}", args.file.display()))?;
    let hash_secs = started.elapsed().as_secs_f64();
    meta.save(&args.torrent_out)
        .with_context(|| format!("writing {}", args.torrent_out.display()))?;
    println!(
        "torrent {} ({} bytes, {} pieces of {} KiB, hashed in {hash_secs:.2} s) -> {}",
        meta.info_hash(),
        meta.total_len(),
        meta.lengths().num_pieces(),
        meta.lengths().piece_len() / 1024,
        args.torrent_out.display()
    );

    let config = if args.lan_cluster {
        imagewolf_bt::SessionConfig::lan_cluster()
    } else {
        imagewolf_bt::SessionConfig::default()
    };
    let session = Session::builder()
        .config(config)
        .listen_addr(args.listen)
        .announce_ip(reachable_ip)
        .build()
        .await?;
    let handle = session
        .add_torrent(AddTorrent::seed_file(meta, &args.file)?)
        .await?;
    println!(
        "seeding on {}{}",
        session.listen_addr(),
        announce
            .map(|u| format!(", tracker {u}"))
            .unwrap_or_default()
    );

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = handle.stats();
                println!("seed: peers {:>3}  uploaded {:>8.1} MiB  up {:>7.1} MiB/s", s.peers, mib(s.uploaded), mib(s.upload_rate as u64));
                if let imagewolf_bt::TorrentStatus::Failed(e) = s.status {
                    bail!("torrent failed: {e}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    println!("stopping");
    session.shutdown().await;
    if let Some(t) = tracker {
        t.shutdown();
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())
}
