//! Runs 1 and 2: one seed in node 0 and a downloader in every other node, all started at the
//! same moment, with imagewolf-bt's `seed`/`download` examples or libtorrent's
//! `lt_client.py`; same torrent file, same in-process tracker implementation at the same URL.
//!
//! A node's completion time is its downloader's exit, measured from the moment the first
//! downloader was spawned (the common start). Process start-up (exec through `ip netns exec`,
//! the Python interpreter for libtorrent) is part of it, as it would be on a real node.
//!
//! The tracker is bound afresh for each run on the same address: a seed stopped with SIGKILL
//! would otherwise stay listed, and the second swarm would start by dialling the first one's
//! dead peers.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use imagewolf::cluster::Cluster;
use imagewolf::ChildGuard;
use imagewolf_bt::metainfo::Metainfo;
use imagewolf_bt::tracker::{TrackerConfig, TrackerServer};

use crate::measure::{process_cpu_seconds, CpuMeter, CpuUse};
use crate::netlog::{NetLog, NetSampler};
use crate::report::RunResult;
use crate::{interrupted, signal_term, Tools};

/// Which BitTorrent implementation a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// imagewolf-bt (the `seed` and `download` examples).
    ImageWolf,
    /// libtorrent 2.0 (`tests/assets/lt_client.py`).
    Libtorrent,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::ImageWolf => "imagewolf-bt",
            Client::Libtorrent => "libtorrent",
        }
    }
}

/// Runs start once the machine has fewer cores busy than this (other work)...
pub const QUIET_CORES: f64 = 0.4;
/// ...or after this long anyway.
pub const QUIET_WAIT: Duration = Duration::from_secs(120);

/// The BitTorrent port every peer listens on (each in its own namespace).
const BT_PORT: u16 = 6881;

/// Everything both swarm runs share.
pub struct SwarmSetup<'a> {
    /// The topology.
    pub cluster: &'a Cluster,
    /// Nodes used (seed + downloaders), at most the cluster's.
    pub nodes: usize,
    /// Link rate (for the report).
    pub rate_mbit: u32,
    /// The payload file (seeded from where it is).
    pub payload: PathBuf,
    /// Payload size, MiB.
    pub size_mib: u64,
    /// Where the torrent file is (written by the imagewolf-bt seed on the first run).
    pub torrent: PathBuf,
    /// The tracker's address (bridge IP, fixed port).
    pub tracker_addr: SocketAddr,
    /// Scratch directory for downloads.
    pub scratch: PathBuf,
    /// Where logs go.
    pub logs: PathBuf,
    /// Runtime for the tracker.
    pub rt: &'a tokio::runtime::Runtime,
    /// Binaries and scripts.
    pub tools: &'a Tools,
    /// Give up on a run after this long.
    pub timeout: Duration,
    /// Seed imagewolf-bt runs with the counting seed (`seed_stats.rs`).
    pub seed_stats: bool,
    /// The imagewolf-bt downloaders' piece-memory budget, MiB (`None`: the engine's).
    pub piece_memory_mib: Option<u64>,
}

struct Downloader {
    node: usize,
    guard: ChildGuard,
    log: PathBuf,
    done: Option<(f64, bool)>,
}

/// Runs one swarm and returns its result; `label` names a variant (e.g. another rate) in
/// the report and logs, `rep` the repetition (in log names only).
pub fn run(
    setup: &SwarmSetup<'_>,
    client: Client,
    label: &str,
    rep: usize,
) -> anyhow::Result<RunResult> {
    let cluster = setup.cluster;
    let safe: String = label.chars().filter(char::is_ascii_alphanumeric).collect();
    let mut tag = if safe.is_empty() {
        client.name().to_owned()
    } else {
        format!("{}-{safe}", client.name())
    };
    if rep > 0 {
        tag.push_str(&format!("-rep{}", rep + 1));
    }
    eprintln!(
        "== {tag}: 1 seed + {} downloaders, {} MiB at {} Mbit/s",
        setup.nodes - 1,
        setup.size_mib,
        setup.rate_mbit
    );
    // Wait out other work before the seed starts, not after: a seed left waiting longer than
    // the tracker's peer lifetime (120 s) may be forgotten before the downloaders announce.
    let background = crate::measure::wait_quiet(QUIET_CORES, QUIET_WAIT);
    let tracker = setup
        .rt
        .block_on(TrackerServer::bind(
            setup.tracker_addr,
            TrackerConfig::default(),
        ))
        .with_context(|| format!("binding the tracker on {}", setup.tracker_addr))?;
    let announce = format!("http://{}/announce", setup.tracker_addr);
    let seed_node = cluster.node(0);
    let seed_listen = format!("{}:{BT_PORT}", seed_node.ip);
    let seed_log = setup.logs.join(format!("{tag}-seed.log"));
    let log_file = File::create(&seed_log)?;
    let mut cmd = match client {
        Client::ImageWolf if setup.seed_stats => {
            let mut cmd = seed_node.command(&setup.tools.this);
            cmd.arg("seed-stats")
                .arg(&setup.payload)
                .arg(&setup.torrent)
                .args([&seed_listen, &announce]);
            cmd
        }
        Client::ImageWolf => {
            let mut cmd = seed_node.command(&setup.tools.seed);
            cmd.arg(&setup.payload)
                .arg("--torrent-out")
                .arg(&setup.torrent)
                .args(["--listen", &seed_listen, "--announce", &announce])
                .arg("--lan-cluster");
            cmd
        }
        Client::Libtorrent => {
            let dir = setup.payload.parent().context("payload has no directory")?;
            let mut cmd = seed_node.command(imagewolf::SYSTEM_PYTHON);
            cmd.arg(&setup.tools.lt_client)
                .arg("seed")
                .arg(&setup.torrent)
                .arg(dir)
                .args(["--listen", &seed_listen]);
            cmd
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let mut seed = ChildGuard::spawn(&format!("{tag} seed"), &mut cmd)?;

    // The seed is ready once it is listed by the tracker (it has hashed or loaded the
    // torrent, listens, and announced).
    let ready_by = Instant::now() + Duration::from_secs(120);
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        if let Some(status) = seed.child.try_wait()? {
            bail!("{tag} seed exited with {status}: {}", tail(&seed_log));
        }
        let parsed = match client {
            // The imagewolf-bt seed writes the torrent, then starts seeding and announcing.
            Client::ImageWolf => fs::read_to_string(&seed_log)
                .is_ok_and(|l| l.contains("seeding on"))
                .then(|| read_torrent(&setup.torrent))
                .transpose()?,
            Client::Libtorrent => Some(read_torrent(&setup.torrent)?),
        };
        if let Some(meta) = parsed {
            if tracker.peer_count(&meta.info_hash()) >= 1 {
                break;
            }
        }
        if Instant::now() > ready_by {
            bail!("{tag} seed not announced after 120 s: {}", tail(&seed_log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seed_cpu_before = process_cpu_seconds(seed.id());

    let out_dir = setup.scratch.join(&tag);
    fs::create_dir_all(&out_dir)?;
    // Children count through our own cutime once reaped; the seed's set-up CPU is taken out.
    let meter = CpuMeter::start(&[]);
    let sampler = NetSampler::start(&cluster.nodes()[..setup.nodes]);
    let t0 = Instant::now();
    let net_offset = t0.duration_since(sampler.started).as_secs_f64();
    let mut downloaders = Vec::with_capacity(setup.nodes - 1);
    for i in 1..setup.nodes {
        let node = cluster.node(i);
        let listen = format!("{}:{BT_PORT}", node.ip);
        let log = setup.logs.join(format!("{tag}-node{i}.log"));
        let log_file = File::create(&log)?;
        let timeout = setup.timeout.as_secs().to_string();
        let mut cmd = match client {
            Client::ImageWolf => {
                let mut cmd = node.command(&setup.tools.download);
                cmd.arg(&setup.torrent)
                    .arg("--out")
                    .arg(out_dir.join(format!("node{i}.bin")))
                    .args(["--listen", &listen, "--timeout", &timeout])
                    .arg("--lan-cluster");
                if let Some(mib) = setup.piece_memory_mib {
                    cmd.arg("--piece-memory-mib").arg(mib.to_string());
                }
                cmd
            }
            Client::Libtorrent => {
                let dir = out_dir.join(format!("node{i}"));
                fs::create_dir_all(&dir)?;
                let mut cmd = node.command(imagewolf::SYSTEM_PYTHON);
                cmd.arg(&setup.tools.lt_client)
                    .arg("download")
                    .arg(&setup.torrent)
                    .arg(&dir)
                    .args(["--listen", &listen, "--timeout", &timeout]);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let guard = ChildGuard::spawn(&format!("{tag} node{i}"), &mut cmd)?;
        downloaders.push(Downloader {
            node: i,
            guard,
            log,
            done: None,
        });
    }
    let spawned = t0.elapsed().as_secs_f64();

    let deadline = t0 + setup.timeout + Duration::from_secs(10);
    let mut last_progress = Instant::now();
    loop {
        let mut pending = 0;
        for d in &mut downloaders {
            if d.done.is_some() {
                continue;
            }
            match d.guard.child.try_wait()? {
                Some(status) => {
                    let t = t0.elapsed().as_secs_f64();
                    d.done = Some((t, status.success()));
                    if !status.success() {
                        eprintln!("   node{} FAILED ({status}): {}", d.node, tail(&d.log));
                    }
                }
                None => pending += 1,
            }
        }
        if pending == 0 {
            break;
        }
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            eprintln!("   {pending} downloaders still running at the deadline; stopping them");
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "   t={:>5.1}s  {} of {} complete",
                t0.elapsed().as_secs_f64(),
                downloaders.len() - pending,
                downloaders.len()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let active = meter.read();
    let net = sampler.finish();
    let seed_uploaded = seed_uploaded_mib(client, &seed_log);

    // Stop the seed gracefully (the imagewolf-bt seed prints its totals), then reap everyone,
    // so their CPU is in our children's total.
    signal_term(seed.id());
    if seed.wait_timeout(Duration::from_secs(10)).is_err() {
        let _ = seed.child.kill();
        let _ = seed.child.wait();
    }
    let seed_summary = fs::read_to_string(&seed_log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("\"seed_stats\""))
        .map(str::to_owned);
    let mut times = Vec::new();
    let mut failed = 0;
    let mut wasted = 0u64;
    let mut self_reported = Vec::new();
    for d in &mut downloaders {
        if d.done.is_none() {
            let _ = d.guard.child.kill();
        }
        let _ = d.guard.child.wait();
        match d.done {
            Some((t, true)) => times.push(t),
            _ => failed += 1,
        }
        let log = fs::read_to_string(&d.log).unwrap_or_default();
        if let Some((secs, w)) = parse_completion(client, &log) {
            self_reported.push(secs);
            wasted += w;
        }
    }
    let reaped = meter.read();
    let cpu = CpuUse {
        wall: active.wall,
        machine_cores: active.machine_cores,
        process_seconds: (reaped.process_seconds - seed_cpu_before).max(0.0),
    };
    drop(tracker);
    let _ = fs::remove_dir_all(&out_dir);

    times.sort_by(f64::total_cmp);
    let mut notes = Vec::new();
    if background >= QUIET_CORES {
        notes.push(format!(
            "other work kept {background:.2} cores busy just before the start (shared machine)"
        ));
    }
    if let Some(up) = seed_uploaded {
        let last = times.last().copied().unwrap_or(0.0);
        let line_mib = f64::from(setup.rate_mbit) * 1e6 / 8.0 / 1_048_576.0 * last;
        notes.push(format!(
            "seed uploaded {up:.0} MiB = {:.2} x S ({:.0} % of its link over the run)",
            up / setup.size_mib as f64,
            if line_mib > 0.0 {
                100.0 * up / line_mib
            } else {
                0.0
            }
        ));
    }
    if let Some(summary) = seed_summary {
        notes.push(format!("counting seed: {summary}"));
    }
    let total_mib = (setup.nodes - 1) as f64 * setup.size_mib as f64;
    notes.push(format!(
        "{wasted} bytes received twice or discarded ({:.3} % of {total_mib:.0} MiB); spawning the {} downloaders took {spawned:.2} s",
        wasted as f64 / (total_mib * 1_048_576.0) * 100.0,
        setup.nodes - 1
    ));
    notes.extend(net_notes(
        &net,
        net_offset,
        &downloaders,
        setup.rate_mbit,
        &setup.logs.join(format!("{tag}-net.csv")),
    ));
    if !self_reported.is_empty() {
        self_reported.sort_by(f64::total_cmp);
        notes.push(format!(
            "self-reported transfer times (from the client's own start) p50 {:.2} s, max {:.2} s",
            crate::report::quantile(&self_reported, 0.5).unwrap_or(0.0),
            self_reported.last().copied().unwrap_or(0.0)
        ));
    }
    let result = RunResult {
        name: if label.is_empty() {
            client.name().to_owned()
        } else {
            format!("{} ({label})", client.name())
        },
        nodes: setup.nodes,
        rate_mbit: setup.rate_mbit,
        size_mib: setup.size_mib,
        times,
        failed,
        cpu,
        peak_rss_mib: None,
        memory_only: false,
        notes,
    };
    eprintln!(
        "   done: p50 {:.2} s, max {} (S/U = {:.2} s), CPU {:.1} s, machine {:.2} cores busy",
        result.quantile(0.5).unwrap_or(f64::NAN),
        result
            .max()
            .map_or(format!("{failed} failed"), |m| format!("{m:.2} s")),
        result.bound(),
        result.cpu.process_seconds,
        result.cpu.machine_cores
    );
    Ok(result)
}

/// What the link counters say about a swarm run (see `netlog.rs`); writes the per-100 ms
/// series to `csv`.
fn net_notes(
    net: &NetLog,
    offset: f64,
    downloaders: &[Downloader],
    rate_mbit: u32,
    csv: &Path,
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Err(e) = net.write_csv(csv) {
        eprintln!("   writing {}: {e}", csv.display());
    }
    let first = downloaders
        .iter()
        .filter_map(|d| d.done.map(|(t, _)| t))
        .fold(f64::INFINITY, f64::min);
    if first.is_finite() {
        if let Some((seed, up, down)) = net.busy(offset, offset + first, rate_mbit) {
            notes.push(format!(
                "link use (frame bytes / U) from the start to the first completion ({first:.1} s): seed upload {:.0} %, downloaders' upload {:.0} %, download {:.0} %; downloaders' download per second, %: {:?}",
                100.0 * seed,
                100.0 * up,
                100.0 * down,
                net.down_per_second(offset, offset + first, rate_mbit)
            ));
        }
    }
    let own: Vec<f64> = downloaders
        .iter()
        .filter_map(|d| {
            let (t, _) = d.done?;
            net.node_down(d.node, offset, offset + t, rate_mbit)
        })
        .collect();
    if !own.is_empty() {
        notes.push(format!(
            "each downloader's download link busy from the start to its own completion: mean {:.1} %, min {:.1} %",
            100.0 * own.iter().sum::<f64>() / own.len() as f64,
            100.0 * own.iter().copied().fold(f64::INFINITY, f64::min)
        ));
    }
    notes.push(format!(
        "tbf drops {} (most on one node {}), TCP segments retransmitted {} (most on one node {})",
        net.drops.iter().sum::<u64>(),
        net.drops.iter().max().copied().unwrap_or(0),
        net.retrans.iter().sum::<u64>(),
        net.retrans.iter().max().copied().unwrap_or(0)
    ));
    notes
}

fn read_torrent(path: &Path) -> anyhow::Result<Metainfo> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Metainfo::from_bytes(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// The seed's last reported upload total, MiB.
fn seed_uploaded_mib(client: Client, log: &Path) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    match client {
        // "seed: peers  15  uploaded    130.2 MiB  up    11.9 MiB/s"
        Client::ImageWolf => text.lines().rev().find_map(|l| {
            let rest = l.split_once("uploaded")?.1;
            rest.split_whitespace().next()?.parse().ok()
        }),
        Client::Libtorrent => text.lines().rev().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some(v.get("uploaded")?.as_f64()? / 1_048_576.0)
        }),
    }
}

/// (seconds the client itself measured, bytes wasted) from a downloader's log.
fn parse_completion(client: Client, log: &str) -> Option<(f64, u64)> {
    match client {
        // "complete: N bytes in 12.34 s (10.4 MiB/s), 0 hash failures, 123 bytes wasted"
        Client::ImageWolf => {
            let line = log.lines().find(|l| l.starts_with("complete:"))?;
            let secs = line
                .split_once(" in ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let wasted = line
                .rsplit_once(", ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((secs, wasted))
        }
        Client::Libtorrent => log.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v.get("event")?.as_str()? != "complete" {
                return None;
            }
            let wasted =
                v.get("wasted")?.as_u64().unwrap_or(0) + v.get("failed")?.as_u64().unwrap_or(0);
            Some((v.get("seconds")?.as_f64()?, wasted))
        }),
    }
}
