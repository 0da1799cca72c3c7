//! Download a torrent, verify it, and exit 0 once complete.
//!
//! ```text
//! cargo run --release --example download -- IN.torrent --out PATH [--listen IP:PORT] [--peer IP:PORT]...
//!     [--timeout SECS] [--progress-ms MS]
//! cargo run --release --example download -- 'magnet:?xt=urn:btih:HASH&x.pe=IP:PORT' --out PATH ...
//! ```
//! Peers come from the torrent's trackers and from `--peer`. For a single-file torrent PATH
//! is the file to write; for a multi-file torrent it is the directory to write into. An
//! existing PATH is checked first and only what is missing or wrong is fetched (resume).
//! A magnet link (instead of IN.torrent) has its info dict fetched from the peers it names
//! (`x.pe`, `--peer`) and its trackers (`tr`) first, checked against its info-hash (BEP 9).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use imagewolf_bt::metainfo::{FileLayout, Metainfo};
use imagewolf_bt::storage::FileStorage;
use imagewolf_bt::{AddTorrent, Magnet, Session, SessionConfig, StartFrom};

/// Download IN.torrent to PATH.
#[derive(Parser)]
struct Args {
    /// The .torrent file, or a magnet link.
    torrent: String,
    /// Where to write the payload (a file, or a directory for multi-file torrents).
    #[arg(long)]
    out: PathBuf,
    /// Address to accept peers on.
    #[arg(long, default_value = "0.0.0.0:0")]
    listen: SocketAddr,
    /// A peer to connect to (repeatable).
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Give up after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Print a progress line at most this often, in milliseconds (tests that react to
    /// progress use a short interval).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    progress_ms: u64,
    /// ImageWolf's LAN tuning (`SessionConfig::lan_cluster`: 20 peers asked of trackers, at
    /// most 50 per torrent, traffic marked bulk). Without it, the library's general-purpose
    /// defaults.
    #[arg(long)]
    lan_cluster: bool,
    /// Piece-memory budget, MiB: pieces being downloaded are held in memory up to this
    /// (`SessionConfig::piece_memory_per_torrent`). Default: the configuration's (16).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    piece_memory_mib: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    // Through the library's size limit: a huge file (or an endless pipe) is refused without
    // being read into memory.
    let mut config = SessionConfig {
        listen_addr: args.listen,
        ..if args.lan_cluster {
            SessionConfig::lan_cluster()
        } else {
            SessionConfig::default()
        }
    };
    if let Some(mib) = args.piece_memory_mib {
        config.piece_memory_per_torrent = mib << 20;
    }
    let session = Session::new(config).await?;
    let mut peers = args.peers.clone();
    let meta = if args.torrent.starts_with("magnet:") {
        let mut magnet = Magnet::parse(&args.torrent)?;
        magnet.peers.extend(&args.peers);
        peers = magnet.peers.clone();
        println!("fetching the metadata of {}", magnet.info_hash);
        let fetch = session.fetch_metadata(&magnet);
        match args.timeout {
            0 => fetch.await?,
            secs => tokio::time::timeout(Duration::from_secs(secs), fetch)
                .await
                .context("timed out fetching the metadata")??,
        }
    } else {
        Metainfo::load(args.torrent.as_ref())
            .with_context(|| format!("parsing {}", args.torrent))?
    };
    let resume = args.out.exists();
    let storage = match &meta.info().files {
        FileLayout::Single { length } => FileStorage::create_file(&args.out, *length),
        FileLayout::Multi { .. } => FileStorage::for_metainfo(&args.out, &meta),
    }
    .with_context(|| format!("opening {}", args.out.display()))?;
    let start_from = if resume {
        StartFrom::Check
    } else {
        StartFrom::Empty
    };
    println!(
        "downloading {} ({} bytes) to {}{}",
        meta.info_hash(),
        meta.total_len(),
        args.out.display(),
        if resume {
            " (checking existing data first)"
        } else {
            ""
        }
    );
    let handle = session
        .add_torrent(AddTorrent::new(meta, Arc::new(storage), start_from).with_peers(peers))
        .await?;
    let started = Instant::now();
    let mut progress = handle.progress();
    let every = Duration::from_millis(args.progress_ms);
    let mut last_print = Instant::now() - every;
    let deadline = (args.timeout > 0).then(|| started + Duration::from_secs(args.timeout));
    loop {
        let s = progress.borrow_and_update().clone();
        if s.is_complete() {
            break;
        }
        if let imagewolf_bt::TorrentStatus::Failed(e) = &s.status {
            bail!("download failed: {e}");
        }
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            println!(
                "download: {:>5.1} %  peers {:>3}  down {:>7.1} MiB/s",
                100.0 * s.progress(),
                s.peers,
                s.download_rate / (1024.0 * 1024.0)
            );
        }
        let wait = tokio::time::timeout(every.min(Duration::from_secs(1)), progress.changed());
        if let Ok(Err(_)) = wait.await {
            bail!("torrent stopped");
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!("timed out after {} s", args.timeout);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let s = handle.stats();
    println!(
        "complete: {} bytes in {secs:.2} s ({:.1} MiB/s), {} hash failures, {} bytes wasted",
        s.total_len,
        s.total_len as f64 / secs / (1024.0 * 1024.0),
        s.hash_failures,
        s.wasted
    );
    session.shutdown().await;
    Ok(())
}
