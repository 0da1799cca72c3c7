//! A diagnostic seed: the `seed` example's behaviour (same engine, same defaults, same
//! torrent) with a storage wrapper that counts every block read for upload, so a run can show
//! how many copies of each piece the initial seed sent and when the last distinct piece first
//! left it. Selected with `--seed-stats`; runs as `bench_cluster seed-stats FILE TORRENT_OUT
//! LISTEN ANNOUNCE_URL` in node 0.
//!
//! The engine reads a block from storage right before it writes the Piece frame to the
//! socket, so a read is an upload (to within the socket buffer).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::{FileStorage, Storage};
use imagewolf_bt::{AddTorrent, Session, SessionConfig, StartFrom, BLOCK_LEN};

struct Counting {
    inner: FileStorage,
    piece_len: u64,
    /// Blocks read per piece.
    blocks: Vec<AtomicU32>,
    total_blocks: AtomicU64,
    /// Seconds since start at which each piece was first read (0 = never), as f32 bits.
    first_read: Vec<AtomicU32>,
    /// Pieces read at least once.
    distinct: AtomicU32,
    started: Instant,
    all_out_at: Mutex<Option<f64>>,
}

impl Storage for Counting {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let piece = usize::try_from(offset / self.piece_len).unwrap_or(usize::MAX);
        if let (Some(count), Some(first)) = (self.blocks.get(piece), self.first_read.get(piece)) {
            count.fetch_add(1, Ordering::Relaxed);
            self.total_blocks.fetch_add(1, Ordering::Relaxed);
            let now = self.started.elapsed().as_secs_f32().max(f32::MIN_POSITIVE);
            if first
                .compare_exchange(0, now.to_bits(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                let d = self.distinct.fetch_add(1, Ordering::Relaxed) + 1;
                if d as usize == self.blocks.len() {
                    *self.all_out_at.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(f64::from(now));
                }
            }
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Entry point for `bench_cluster seed-stats FILE TORRENT_OUT LISTEN ANNOUNCE`.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [file, torrent_out, listen, announce] = args else {
        anyhow::bail!("usage: bench_cluster seed-stats FILE TORRENT_OUT LISTEN ANNOUNCE_URL");
    };
    let file = PathBuf::from(file);
    let listen: SocketAddr = listen.parse().context("LISTEN")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(serve(
        file,
        PathBuf::from(torrent_out),
        listen,
        announce.clone(),
    ))
}

async fn serve(
    file: PathBuf,
    torrent_out: PathBuf,
    listen: SocketAddr,
    announce: String,
) -> anyhow::Result<()> {
    let name = file
        .file_name()
        .context("FILE has no name")?
        .to_string_lossy()
        .into_owned();
    let builder = TorrentBuilder::new(name).announce(announce);
    let path = file.clone();
    let meta = tokio::task::spawn_blocking(move || builder.build_from_file(&path)).await??;
    std::fs::write(&torrent_out, meta.to_bytes())?;
    let pieces = meta.lengths().num_pieces() as usize;
    let piece_len = u64::from(meta.lengths().piece_len());
    let storage = Arc::new(Counting {
        inner: FileStorage::open_file(&file, meta.total_len())?,
        piece_len,
        blocks: (0..pieces).map(|_| AtomicU32::new(0)).collect(),
        total_blocks: AtomicU64::new(0),
        first_read: (0..pieces).map(|_| AtomicU32::new(0)).collect(),
        distinct: AtomicU32::new(0),
        started: Instant::now(),
        all_out_at: Mutex::new(None),
    });
    // ImageWolf's tuning, as the agent runs it: the seed spreads distinct pieces first.
    let session = Session::new(SessionConfig {
        listen_addr: listen,
        announce_ip: Some(listen.ip()),
        ..SessionConfig::lan_cluster()
    })
    .await?;
    let handle = session
        .add_torrent(AddTorrent::new(
            meta,
            Arc::clone(&storage) as Arc<dyn Storage>,
            StartFrom::Complete,
        ))
        .await?;
    println!("seeding on {listen}");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let blocks = storage.total_blocks.load(Ordering::Relaxed);
                let s = handle.stats();
                println!(
                    "seed: t={:.1}s peers {:>3}  uploaded {:>8.1} MiB  read {:>8.1} MiB  distinct pieces {}/{pieces}",
                    storage.started.elapsed().as_secs_f64(),
                    s.peers,
                    s.uploaded as f64 / 1_048_576.0,
                    blocks as f64 * f64::from(BLOCK_LEN) / 1_048_576.0,
                    storage.distinct.load(Ordering::Relaxed),
                );
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Summary: copies per piece (in piece-equivalents of blocks read) and when the pieces
    // first left, in seconds from the first block uploaded.
    let read_times: Vec<f64> = storage
        .first_read
        .iter()
        .map(|f| f64::from(f32::from_bits(f.load(Ordering::Relaxed))))
        .collect();
    let offset = read_times
        .iter()
        .copied()
        .filter(|t| *t > 0.0)
        .fold(f64::INFINITY, f64::min);
    let offset = if offset.is_finite() { offset } else { 0.0 };
    let blocks_per_piece = (piece_len / u64::from(BLOCK_LEN)).max(1) as f64;
    let mut copies: Vec<f64> = storage
        .blocks
        .iter()
        .map(|c| f64::from(c.load(Ordering::Relaxed)) / blocks_per_piece)
        .collect();
    copies.sort_by(f64::total_cmp);
    let mut firsts: Vec<f64> = read_times.iter().map(|t| t - offset).collect();
    firsts.sort_by(f64::total_cmp);
    let q = |v: &[f64], q: f64| crate::report::quantile(v, q).unwrap_or(f64::NAN);
    let all_out = storage
        .all_out_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|t| t - offset);
    println!(
        "{}",
        serde_json::json!({
            "event": "seed_stats",
            "pieces": pieces,
            "copies_mean": copies.iter().sum::<f64>() / pieces.max(1) as f64,
            "copies_p50": q(&copies, 0.5),
            "copies_p90": q(&copies, 0.9),
            "copies_max": copies.last(),
            "first_out_p50_s": q(&firsts, 0.5),
            "first_out_p90_s": q(&firsts, 0.9),
            "all_pieces_out_s": all_out,
            "pieces_out_by_s": (1..=40).map(|t| firsts.iter().filter(|f| **f <= f64::from(t)).count()).collect::<Vec<_>>(),
        })
    );
    session.shutdown().await;
    Ok(())
}
