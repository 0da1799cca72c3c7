//! The cluster benchmark: N nodes on this one machine, each a network namespace whose veth
//! is shaped to U Mbit/s in both directions (a node's NIC), and in one invocation:
//!
//! 1. an imagewolf-bt swarm (one seed, N-1 downloaders started at once),
//! 2. the same with libtorrent 2.0 (same torrent, same tracker implementation and URL),
//! 3. the registry herd: N dockerds `docker pull` one S MiB image at once from a registry
//!    whose namespace is shaped to U like a node, and again with N_e2e dockerds,
//! 4. ImageWolf end to end with N_e2e nodes: `docker push` -> loaded in every node's dockerd,
//! 5. (`update`) the everyday update, and (`cold`, [`cold`]) cold pulls on containerd nodes
//!    through mirror mode against the same nodes pulling straight from the registry,
//!
//! then a markdown table (p50/p90/max completion, as multiples of the lower bound S/U, CPU
//! seconds per GiB, cores busy, agents' peak RSS) and an SVG plot in `--out-dir`.
//!
//! Run it with `scripts/bench-cluster` (builds the release binaries it needs first). Needs
//! root, iproute2, iperf3, docker.io, docker-registry and python3-libtorrent.
//!
//! Design decisions:
//! - Everything started here is owned by a guard that stops it by pid on drop (ChildGuard,
//!   Dockerd, Registry, Cluster), and errors propagate with `?`, so a failed or interrupted
//!   run (Ctrl-C / SIGTERM set a flag the wait loops check) unwinds and cleans up. Locals are
//!   declared cluster first, so processes inside the namespaces are stopped before it goes.
//! - CPU-bound detection looks at the whole machine (this machine is 2 cores, shared): a run
//!   during which >= 90 % of the cores were busy is flagged, and the two swarms are then also
//!   run at a lower rate, where bandwidth rather than CPU is what is measured.

mod ceiling;
mod cold;
mod docker_runs;
mod measure;
mod netlog;
mod plot;
mod report;
mod seed_stats;
mod swarm;
mod update;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use imagewolf::cluster::{require_root_and_tools, ClusterBuilder};
use imagewolf::docker::{build_test_image, Dockerd, Registry};
use imagewolf::TempDir;

use report::{Context, RunResult};

/// Bandwidth-shaped cluster benchmark: imagewolf-bt vs libtorrent vs a registry herd, and
/// ImageWolf end to end.
#[derive(Parser, Debug)]
struct Args {
    /// Nodes for the swarms and the big herd.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Each node's NIC speed (and the registry's), Mbit/s.
    #[arg(long, default_value_t = 100)]
    rate_mbit: u32,
    /// Payload / image size, MiB.
    #[arg(long, default_value_t = 128)]
    size_mib: u64,
    /// Nodes for the end-to-end run (and the herd it is compared with).
    #[arg(long, default_value_t = 8)]
    e2e_nodes: usize,
    /// Also run the swarms at this rate. Default: at half the rate if a swarm run at the main
    /// rate was CPU-bound; 0 disables.
    #[arg(long)]
    low_rate_mbit: Option<u32>,
    /// Which runs: any of ceiling, bt, lt, herd, e2e, rss, update, cold (comma-separated).
    /// `cold` pulls an image nobody announced on `--cold-nodes` containerd nodes at once,
    /// through the agents' mirrors and straight from the registry, a lone node's cold pull
    /// both ways, and a `--hit-mib` blob from the endpoint over loopback. `ceiling`
    /// measures TCP goodput per node with every node sending to the next at once (iperf3,
    /// 10 s), at each swarm rate; it also runs with bt or lt unless `--no-iperf`. `rss`
    /// measures the agents' memory while distributing a `--rss-mib` image over unshaped
    /// links.
    #[arg(long, default_value = "bt,lt,herd,e2e")]
    runs: String,
    /// Image size for the `rss` run, MiB.
    #[arg(long, default_value_t = 1024)]
    rss_mib: u64,
    /// Nodes pulling at once in the `cold` run.
    #[arg(long, default_value_t = 8)]
    cold_nodes: usize,
    /// Alternated repetitions of the `cold` run's lone pull (each way; the median counts).
    #[arg(long, default_value_t = 3)]
    cold_repeat: usize,
    /// Size of the blob read from the endpoint over loopback in the `cold` run, MiB (0: skip).
    #[arg(long, default_value_t = 512)]
    hit_mib: u64,
    /// Size of the new layer in the `update` run, MiB.
    #[arg(long, default_value_t = 8)]
    update_mib: u64,
    /// Run the memory run's agents with `--distribution blobs`.
    #[arg(long)]
    rss_blobs: bool,
    /// Nodes for the memory run.
    #[arg(long, default_value_t = 3)]
    rss_nodes: usize,
    /// Where the table (cluster.md), raw results (cluster.json) and plot (cluster.svg) go.
    #[arg(long, default_value = "docs/bench")]
    out_dir: PathBuf,
    /// Where process logs go (kept for diagnosis).
    #[arg(long, default_value = "target/bench-cluster")]
    logs: PathBuf,
    /// Skip the ceiling (iperf3 goodput) measurement that runs with the swarms.
    #[arg(long)]
    no_iperf: bool,
    /// Repeat each swarm run this many times (alternating the clients) and report the
    /// median repetition.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Diagnosis: give the seed's node (node 0) this NIC speed in the swarm runs instead of
    /// the common rate. If the swarm is limited by how fast the seed injects distinct
    /// pieces, a faster seed link brings the others close to S/U.
    #[arg(long)]
    seed_rate_mbit: Option<u32>,
    /// Diagnosis: seed the imagewolf-bt swarm with a counting seed (same engine and defaults)
    /// that reports how many copies of each piece it uploaded and when each first left.
    #[arg(long)]
    seed_stats: bool,
    /// Diagnosis: the imagewolf-bt downloaders' piece-memory budget, MiB (default: the
    /// engine's 16). A small one makes the cap bind at this bench's scale, as it does in
    /// large swarms at 1 Gbit/s.
    #[arg(long)]
    piece_memory_mib: Option<u64>,
}

/// Paths of the programs the runs start.
pub struct Tools {
    /// This program (for `seed-stats`).
    this: PathBuf,
    seed: PathBuf,
    download: PathBuf,
    agent: PathBuf,
    lt_client: PathBuf,
}

impl Tools {
    fn find() -> anyhow::Result<Self> {
        // This example lives in target/release/examples; the root package's examples are
        // next to it and the agent binary one level up.
        let exe = std::env::current_exe()?;
        let examples = exe.parent().context("executable has no directory")?;
        let profile = examples.parent().context("no profile directory")?;
        let tools = Tools {
            this: exe.clone(),
            seed: examples.join("seed"),
            download: examples.join("download"),
            agent: profile.join("imagewolf-agent"),
            lt_client: imagewolf::test_asset("lt_client.py"),
        };
        for p in [&tools.seed, &tools.download, &tools.agent, &tools.lt_client] {
            if !p.is_file() {
                bail!(
                    "{} is missing: build with `cargo build --release -p imagewolf --example seed --example download` and `cargo build --release -p imagewolf-agent --bins` (scripts/bench-cluster does both)",
                    p.display()
                );
            }
        }
        Ok(tools)
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM arrived (wait loops then bail out, and guards clean up).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Sends SIGTERM to `pid` (by pid, with the `kill` utility).
pub fn signal_term(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("seed-stats") {
        if let Err(e) = seed_stats::main(&argv[2..]) {
            eprintln!("seed-stats failed: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run() {
        eprintln!("bench-cluster failed: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let wanted: Vec<&str> = args.runs.split(',').map(str::trim).collect();
    for w in &wanted {
        if ![
            "ceiling", "bt", "lt", "herd", "e2e", "rss", "update", "cold",
        ]
        .contains(w)
        {
            bail!("--runs: unknown run {w:?} (ceiling, bt, lt, herd, e2e, rss, update, cold)");
        }
    }
    if args.nodes < 2
        || args.e2e_nodes < 2
        || args.cold_nodes < 2
        || args.size_mib < 4
        || args.rate_mbit == 0
    {
        bail!("need --nodes >= 2, --e2e-nodes >= 2, --cold-nodes >= 2, --size-mib >= 4, --rate-mbit > 0");
    }
    require_root_and_tools().map_err(anyhow::Error::msg)?;
    if wanted.contains(&"cold") {
        imagewolf::containerd::require_containerd().map_err(anyhow::Error::msg)?;
    }
    imagewolf::require_libtorrent().map_err(anyhow::Error::msg)?;
    let tools = Tools::find()?;
    fs::create_dir_all(&args.logs)?;
    fs::create_dir_all(&args.out_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        eprintln!("interrupted: stopping and cleaning up");
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    let scratch = TempDir::new("bench")?;
    let bound = report::lower_bound(args.size_mib, args.rate_mbit);
    eprintln!(
        "bench-cluster: N={} U={} Mbit/s S={} MiB (S/U = {bound:.2} s), end to end at N={}",
        args.nodes, args.rate_mbit, args.size_mib, args.e2e_nodes
    );

    let has = |run: &str| wanted.contains(&run);
    let pick = |on: bool, n: usize| if on { n } else { 0 };
    let daemons_needed = pick(has("herd"), args.nodes)
        .max(pick(has("e2e") || has("update"), args.e2e_nodes))
        .max(pick(has("rss"), args.rss_nodes));
    let ceiling_wanted = has("ceiling") || ((has("bt") || has("lt")) && !args.no_iperf);
    let total_nodes = pick(has("bt") || has("lt") || ceiling_wanted, args.nodes)
        .max(daemons_needed)
        .max(pick(has("cold"), args.cold_nodes));
    let cluster = ClusterBuilder {
        nodes: total_nodes,
        rate_mbit: Some(args.rate_mbit),
        extras: 1,
        extra_rate_mbit: Some(args.rate_mbit),
        default_route: false,
        // The agents' registry endpoints (`--distribution blobs`) are reached by the node's
        // dockerd over a host-local link, as over loopback on a real host.
        host_links: true,
    }
    .build()?;
    eprintln!(
        "cluster {}: {} nodes + registry namespace on {}",
        cluster.tag(),
        total_nodes,
        cluster.subnet()
    );
    let mut ctx = Context {
        command: std::env::var("BENCH_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        machine: machine_description(),
        ceilings: Vec::new(),
        notes: Vec::new(),
    };
    let measure_ceiling = |ctx: &mut Context, rate: u32| -> anyhow::Result<()> {
        if ceiling_wanted {
            let c = ceiling::measure(&cluster, args.nodes, rate)?;
            eprintln!("{}", c.describe());
            ctx.ceilings.push(c);
        }
        Ok(())
    };
    measure_ceiling(&mut ctx, args.rate_mbit)?;

    let mut results: Vec<RunResult> = Vec::new();
    let mut cold_report: Option<cold::ColdReport> = None;
    let mut e2e_pair: Option<(usize, usize)> = None;

    // Runs 1 and 2.
    if wanted.contains(&"bt") || wanted.contains(&"lt") {
        let payload_dir = scratch.path().join("payload");
        fs::create_dir_all(&payload_dir)?;
        let payload = payload_dir.join(format!("payload-{}mib.bin", args.size_mib));
        write_payload(&payload, args.size_mib)?;
        let torrent = scratch.path().join("payload.torrent");
        let tracker_addr =
            SocketAddr::from((cluster.bridge_ip(), free_port_on(cluster.bridge_ip())?));
        let mut setup = swarm::SwarmSetup {
            cluster: &cluster,
            nodes: args.nodes,
            rate_mbit: args.rate_mbit,
            payload,
            size_mib: args.size_mib,
            torrent,
            tracker_addr,
            scratch: scratch.path().to_owned(),
            logs: args.logs.clone(),
            rt: &rt,
            tools: &tools,
            timeout: Duration::from_secs_f64(60.0 + 20.0 * bound),
            seed_stats: args.seed_stats,
            piece_memory_mib: args.piece_memory_mib,
        };
        if let Some(rate) = args.seed_rate_mbit {
            cluster.set_node_rate(0, Some(rate))?;
            ctx.notes.push(format!(
                "Diagnostic setting: the seed's node had a {rate} Mbit/s link in the swarm runs (the others {} Mbit/s).",
                args.rate_mbit
            ));
        }
        // The imagewolf-bt seed writes the torrent file both clients use, so it runs first.
        let with_lt = wanted.contains(&"lt");
        let main_runs = swarm_pair(&setup, "", args.repeat, with_lt)?;
        let cpu_bound = main_runs.iter().any(RunResult::cpu_bound);
        results.extend(main_runs);
        let low = match args.low_rate_mbit {
            Some(0) => None,
            Some(r) => Some(r),
            None if cpu_bound => Some((args.rate_mbit / 2).max(1)),
            None => None,
        };
        if let Some(low) = low {
            if cpu_bound {
                ctx.notes.push(format!(
                    "At {} Mbit/s the machine's {} cores were >= 90 % busy during a swarm run (CPU-bound), so the swarms were also run at {low} Mbit/s, where bandwidth is what is measured.",
                    args.rate_mbit,
                    measure::cpu_count()
                ));
            }
            cluster.set_rate(Some(low), Some(args.rate_mbit))?;
            measure_ceiling(&mut ctx, low)?;
            if let Some(rate) = args.seed_rate_mbit {
                cluster.set_node_rate(0, Some(rate))?;
            }
            setup.rate_mbit = low;
            setup.timeout =
                Duration::from_secs_f64(60.0 + 20.0 * report::lower_bound(args.size_mib, low));
            let label = format!("{low} Mbit/s");
            results.extend(swarm_pair(&setup, &label, args.repeat, with_lt)?);
            cluster.set_rate(Some(args.rate_mbit), Some(args.rate_mbit))?;
        }
        if args.seed_rate_mbit.is_some() {
            cluster.set_node_rate(0, Some(args.rate_mbit))?;
        }
        let _ = fs::remove_dir_all(scratch.path().join("payload"));
    }

    // Runs 3 and 4.
    let rss = has("rss");
    if daemons_needed > 0 || has("cold") {
        let registry_node = cluster.extra(0);
        let registry_addr = format!("{}:5000", registry_node.ip);
        let insecure = [registry_addr.as_str(), imagewolf::cluster::HOST_LINKS_CIDR];
        eprintln!("starting {daemons_needed} dockerds (one per node) and a builder");
        let daemons = start_dockerds(daemons_needed + 1, &insecure)?;
        let (builder, nodes) = daemons.split_first().context("no dockerd")?;
        let layers = 4;
        let layer_mib = (args.size_mib / layers as u64).max(1) as usize;
        let refs: Vec<&Dockerd> = nodes.iter().collect();

        if wanted.contains(&"herd") {
            let registry = Registry::start_in(registry_node, &registry_addr, &Default::default())?;
            let reference = format!("{registry_addr}/bench/herd:v1");
            eprintln!("building and pushing {reference} ({layers} x {layer_mib} MiB)");
            build_test_image(builder, &reference, layers, layer_mib)?;
            let pushed = std::time::Instant::now();
            builder.run_cli(&["push", &reference])?;
            let push_secs = pushed.elapsed().as_secs_f64();
            eprintln!("   push took {push_secs:.1} s");
            let timeout = Duration::from_secs_f64(120.0 + 4.0 * args.nodes as f64 * bound);
            let mut big = docker_runs::herd(
                &refs[..args.nodes],
                &registry,
                &reference,
                args.rate_mbit,
                args.size_mib,
                &args.logs,
                timeout,
            )?;
            big.notes.push(format!(
                "the push into the registry (through its shaped link) took {push_secs:.1} s before the pulls"
            ));
            results.push(big);
            docker_runs::remove_image(&refs[..args.nodes], &reference);
            // When N_e2e = N the big herd already is the end-to-end comparison.
            if args.e2e_nodes != args.nodes && wanted.contains(&"e2e") {
                let small = docker_runs::herd(
                    &refs[..args.e2e_nodes],
                    &registry,
                    &reference,
                    args.rate_mbit,
                    args.size_mib,
                    &args.logs,
                    timeout,
                )?;
                results.push(small);
                docker_runs::remove_image(&refs[..args.e2e_nodes], &reference);
            }
            drop(registry);
        }
        if wanted.contains(&"e2e") {
            let herd_index = results
                .iter()
                .position(|r| r.name.starts_with("registry herd") && r.nodes == args.e2e_nodes);
            let reference = format!("{registry_addr}/bench/app:v1");
            eprintln!("building {reference} ({layers} x {layer_mib} MiB)");
            build_test_image(builder, &reference, layers, layer_mib)?;
            let e2e_scratch = docker_runs::scratch_dir(scratch.path(), "e2e")?;
            let setup = docker_runs::E2eSetup {
                cluster: &cluster,
                dockerds: &refs[..args.e2e_nodes],
                builder,
                registry_node,
                registry_addr: &registry_addr,
                tools: &tools,
                logs: &args.logs,
                scratch: &e2e_scratch,
                rate_mbit: args.rate_mbit,
                size_mib: args.size_mib,
                blobs: layers + 1,
                timeout: Duration::from_secs_f64(180.0 + 10.0 * bound),
                rt: &rt,
                name: format!("ImageWolf end to end (N={})", args.e2e_nodes),
                registry_native: false,
            };
            results.push(docker_runs::end_to_end(&setup, &reference)?);
            let _ = fs::remove_dir_all(&e2e_scratch);
            if let Some(h) = herd_index {
                e2e_pair = Some((h, results.len() - 1));
            }
        }
        if wanted.contains(&"update") {
            let v1 = format!("{registry_addr}/bench/upd:v1");
            let v2 = format!("{registry_addr}/bench/upd:v2");
            eprintln!(
                "building {v1} ({layers} x {layer_mib} MiB) and {v2} (+ {} MiB)",
                args.update_mib
            );
            build_test_image(builder, &v1, layers, layer_mib)?;
            imagewolf::docker::extend_test_image(builder, &v1, &v2, args.update_mib as usize)?;
            let dockerds = &refs[..args.e2e_nodes];
            let delta_bound = report::lower_bound(args.update_mib, args.rate_mbit);
            let timeout = Duration::from_secs_f64(120.0 + 4.0 * args.nodes as f64 * bound);
            let registry = Registry::start_in(registry_node, &registry_addr, &Default::default())?;
            let herd = update::herd(
                dockerds,
                builder,
                &registry,
                &v1,
                &v2,
                args.rate_mbit,
                args.update_mib,
                &args.logs,
                timeout,
            )?;
            drop(registry);
            let upd_scratch = docker_runs::scratch_dir(scratch.path(), "update")?;
            let setup = docker_runs::E2eSetup {
                cluster: &cluster,
                dockerds,
                builder,
                registry_node,
                registry_addr: &registry_addr,
                tools: &tools,
                logs: &args.logs,
                scratch: &upd_scratch,
                rate_mbit: args.rate_mbit,
                size_mib: args.size_mib,
                blobs: layers + 1,
                timeout: Duration::from_secs_f64(180.0 + 10.0 * bound),
                rt: &rt,
                name: format!("ImageWolf blobs (N={})", args.e2e_nodes),
                registry_native: true,
            };
            let (first, upd) = update::imagewolf(&setup, &v1, &v2, args.update_mib)?;
            let _ = fs::remove_dir_all(&upd_scratch);
            ctx.notes.push(format!(
                "Everyday update at N={} (v2 = v1 + {} MiB): registry herd slowest node / ImageWolf slowest node = {} (target >= 2.5); ImageWolf's slowest node {:.2} s against the target 2 s + 2 x D/U = {:.2} s",
                args.e2e_nodes,
                args.update_mib,
                report::max_ratio(&herd, &upd),
                upd.max().unwrap_or(f64::NAN),
                2.0 + 2.0 * delta_bound
            ));
            if let Some(h) = results
                .iter()
                .find(|r| r.name.starts_with("registry herd (") && r.nodes == args.e2e_nodes)
            {
                ctx.notes.push(format!(
                    "First push at N={} through the registry-native path: registry herd slowest node / ImageWolf (blobs) slowest node = {}",
                    args.e2e_nodes,
                    report::max_ratio(h, &first)
                ));
            }
            results.push(first);
            results.push(herd);
            results.push(upd);
        }
        if rss {
            cluster.set_rate(None, None)?;
            let reference = format!("{registry_addr}/bench/big:v1");
            let layer_mib = (args.rss_mib / layers as u64).max(1) as usize;
            eprintln!("building {reference} ({layers} x {layer_mib} MiB) for the memory run");
            build_test_image(builder, &reference, layers, layer_mib)?;
            let rss_scratch = docker_runs::scratch_dir(scratch.path(), "rss")?;
            let setup = docker_runs::E2eSetup {
                cluster: &cluster,
                dockerds: &refs[..args.rss_nodes],
                builder,
                registry_node,
                registry_addr: &registry_addr,
                tools: &tools,
                logs: &args.logs,
                scratch: &rss_scratch,
                rate_mbit: 10_000,
                size_mib: args.rss_mib,
                blobs: layers + 1,
                timeout: Duration::from_secs(900),
                rt: &rt,
                name: format!("ImageWolf memory run (N={}, unshaped)", args.rss_nodes),
                registry_native: args.rss_blobs,
            };
            let mut r = docker_runs::end_to_end(&setup, &reference)?;
            r.memory_only = true;
            results.push(r);
            let _ = fs::remove_dir_all(&rss_scratch);
        }
        if has("cold") {
            let cold_scratch = docker_runs::scratch_dir(scratch.path(), "cold")?;
            let setup = cold::ColdSetup {
                cluster: &cluster,
                nodes: args.cold_nodes,
                builder,
                registry_node,
                registry_addr: &registry_addr,
                tools: &tools,
                logs: &args.logs,
                scratch: &cold_scratch,
                rate_mbit: args.rate_mbit,
                size_mib: args.size_mib,
                layers,
                repeat: args.cold_repeat,
                hit_mib: args.hit_mib,
                rt: &rt,
            };
            cold_report = Some(cold::run(&setup)?);
            let _ = fs::remove_dir_all(&cold_scratch);
        }
    }

    // Ratios between runs.
    let find = |prefix: &str, rate: u32| {
        results
            .iter()
            .find(|r| r.name.starts_with(prefix) && r.rate_mbit == rate)
    };
    let rates: Vec<u32> = {
        let mut v: Vec<u32> = results.iter().map(|r| r.rate_mbit).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.dedup();
        v
    };
    for rate in rates {
        if let (Some(bt), Some(lt)) = (find("imagewolf-bt", rate), find("libtorrent", rate)) {
            ctx.notes.push(format!(
                "At {rate} Mbit/s, libtorrent's slowest node / imagewolf-bt's slowest node = {} (above 1: imagewolf-bt ahead); medians: {:.2}",
                report::max_ratio(lt, bt),
                lt.quantile(0.5).unwrap_or(f64::NAN) / bt.quantile(0.5).unwrap_or(f64::NAN)
            ));
        }
    }
    if let Some((h, e)) = e2e_pair {
        ctx.notes.push(format!(
            "End to end at N={}: registry herd slowest node / ImageWolf slowest node = {} (target >= 5)",
            args.e2e_nodes,
            report::max_ratio(&results[h], &results[e])
        ));
    }
    ctx.notes.push(
        "S/U = S x 2^20 x 8 / (U x 10^6) s: the time one node needs to receive S MiB through a U Mbit/s link; no distribution scheme can deliver the whole payload to a node faster. Every node's completion is measured from the common start (process start-up included).".into(),
    );

    let md_path = args.out_dir.join("cluster.md");
    let json_path = args.out_dir.join("cluster.json");
    // A run of `cold` alone updates its own section of cluster.md and key of cluster.json
    // and keeps the rest; other runs rewrite both, as before.
    let (mut table, mut json) = if results.is_empty() && cold_report.is_some() {
        (
            fs::read_to_string(&md_path).unwrap_or_default(),
            fs::read_to_string(&json_path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| serde_json::json!({})),
        )
    } else {
        let table = report::markdown(&results, &ctx);
        println!("\n{table}");
        (table, raw_json(&results, &ctx))
    };
    if let Some(cold) = &cold_report {
        let section = report::cold_markdown(cold, &ctx);
        println!("\n{section}");
        table = report::upsert_cold_section(&table, &section);
        json["cold"] = report::cold_json(cold, &ctx);
    }
    fs::write(&md_path, &table)?;
    fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let title = format!(
        "Per-node completion, N={} (end to end N={}), U={} Mbit/s, S={} MiB",
        args.nodes, args.e2e_nodes, args.rate_mbit, args.size_mib
    );
    if let Some(svg) = plot::svg(&results, &title) {
        fs::write(args.out_dir.join("cluster.svg"), svg)?;
    }
    eprintln!(
        "wrote {}/cluster.md, cluster.json, cluster.svg; logs in {}",
        args.out_dir.display(),
        args.logs.display()
    );
    Ok(())
}

/// Runs the imagewolf-bt swarm (and libtorrent's, if `with_lt`) `repeat` times, alternating
/// so background noise falls on both alike, and returns for each client the repetition with
/// the median slowest node, noting every repetition's figures.
fn swarm_pair(
    setup: &swarm::SwarmSetup<'_>,
    label: &str,
    repeat: usize,
    with_lt: bool,
) -> anyhow::Result<Vec<RunResult>> {
    let repeat = repeat.max(1);
    let mut bt = Vec::with_capacity(repeat);
    let mut lt = Vec::with_capacity(repeat);
    for rep in 0..repeat {
        bt.push(swarm::run(setup, swarm::Client::ImageWolf, label, rep)?);
        if with_lt {
            lt.push(swarm::run(setup, swarm::Client::Libtorrent, label, rep)?);
        }
    }
    Ok([bt, lt]
        .into_iter()
        .filter(|runs| !runs.is_empty())
        .map(median_run)
        .collect())
}

/// The repetition whose slowest node is the median (failed runs count as slowest), with a
/// note listing all of them.
fn median_run(mut runs: Vec<RunResult>) -> RunResult {
    let key = |r: &RunResult| r.max().unwrap_or(f64::INFINITY);
    let all: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r.quantile(0.5).map_or("-".into(), |v| format!("{v:.1}")),
                r.max()
                    .map_or(format!("{} failed", r.failed), |v| format!("{v:.1}"))
            )
        })
        .collect();
    let cpu_bound = runs.iter().any(RunResult::cpu_bound);
    let n = runs.len();
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mut chosen = runs.swap_remove((n - 1) / 2);
    if n > 1 {
        chosen.notes.insert(
            0,
            format!(
                "{n} repetitions, p50/max s in run order: {}; the row shows the median one{}",
                all.join(", "),
                if cpu_bound && !chosen.cpu_bound() {
                    " (another repetition was CPU-bound)"
                } else {
                    ""
                }
            ),
        );
    }
    chosen
}

fn raw_json(results: &[RunResult], ctx: &Context) -> serde_json::Value {
    serde_json::json!({
        "command": ctx.command,
        "machine": ctx.machine,
        "ceilings": ctx.ceilings.iter().map(|c| serde_json::json!({
            "rate_mbit": c.rate_mbit,
            "goodput_per_node_mbit": c.per_node_mbit,
            "link_busy": c.link_busy,
            "tbf_drops": c.drops,
            "tcp_retransmissions": c.retrans,
        })).collect::<Vec<_>>(),
        "runs": results.iter().map(|r| serde_json::json!({
            "name": r.name,
            "nodes": r.nodes,
            "rate_mbit": r.rate_mbit,
            "size_mib": r.size_mib,
            "lower_bound_s": r.bound(),
            "times_s": r.times,
            "failed": r.failed,
            "cpu_process_s": r.cpu.process_seconds,
            "wall_s": r.cpu.wall,
            "machine_cores_busy": r.cpu.machine_cores,
            "peak_rss_mib": r.peak_rss_mib,
            "notes": r.notes,
        })).collect::<Vec<_>>(),
    })
}

/// Writes `mib` MiB of reproducible random bytes.
fn write_payload(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    for i in 0..mib {
        f.write_all(&imagewolf::random_payload(1 << 20, 0xbe4c_0000 + i))?;
    }
    f.flush()?;
    Ok(())
}

/// A TCP port free on `ip` right now.
fn free_port_on(ip: std::net::Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Starts `n` dockerds in parallel (each takes seconds to come up).
fn start_dockerds(n: usize, insecure: &[&str]) -> anyhow::Result<Vec<Dockerd>> {
    let started: Vec<std::io::Result<Dockerd>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let name = if i == 0 {
                        "builder".to_owned()
                    } else {
                        format!("bn{}", i - 1)
                    };
                    Dockerd::start(&name, insecure)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("dockerd start panicked")))
            })
            .collect()
    });
    // Keep the ones that started (so they are stopped on drop) and report the first error.
    let mut daemons = Vec::with_capacity(n);
    let mut first_err = None;
    for r in started {
        match r {
            Ok(d) => daemons.push(d),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e.into());
    }
    Ok(daemons)
}

fn machine_description() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1_048_576.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .unwrap_or_default();
    let lt = imagewolf::require_libtorrent().unwrap_or_default();
    format!(
        "{} vCPU ({model}), {mem_gib:.0} GiB RAM, {os}, Linux {}, libtorrent {lt}, links emulated with tc tbf on veth pairs (burst max(256 KiB, 10 ms), queues of 100 ms; the upload queue a pfifo_fast, the kernel default qdisc, under the tbf)",
        measure::cpu_count(),
        kernel.trim()
    )
}
