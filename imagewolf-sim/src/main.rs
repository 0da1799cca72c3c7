//! `imagewolf-sim`: run one simulated swarm, compare it with a cluster bench run, or run the
//! scaling curve and plot it.
//!
//! ```text
//! cargo run --release -p imagewolf-sim -- --nodes 1000 --size-mib 1024 --rate-mbit 1000
//! cargo run --release -p imagewolf-sim -- --nodes 16 --size-mib 128 --rate-mbit 50 \
//!     --leave-on-complete --numwant 50 --compare docs/sim/bench-n16/cluster.json
//! cargo run --release -p imagewolf-sim -- --curve 100,1000,10000 --out-dir docs/sim
//! ```

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use imagewolf_sim::plot::{curve_svg, CurvePoint};
use imagewolf_sim::report::quantile;
use imagewolf_sim::{Outcome, Sim, SimConfig};
use serde_json::Value;

/// Discrete-event simulation of an ImageWolf swarm driving imagewolf-bt's real picker and
/// seed spreader.
#[derive(Parser, Debug)]
struct Args {
    /// Nodes, the seed (origin) included.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Image size, MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Every node's link rate (up and down), Mbit/s.
    #[arg(long, default_value_t = 1000.0)]
    rate_mbit: f64,
    /// Downlink rate if different from --rate-mbit, Mbit/s.
    #[arg(long)]
    down_mbit: Option<f64>,
    /// Payload share of the link rate (the bench's iperf3 ceiling measures 0.95).
    #[arg(long, default_value_t = 0.95)]
    goodput: f64,
    /// One-way link latency, ms (median).
    #[arg(long, default_value_t = 0.2)]
    latency_ms: f64,
    /// Relative spread of per-node access latencies.
    #[arg(long, default_value_t = 0.5)]
    latency_jitter: f64,
    /// Delay of a control message behind a busy uplink's queue, ms.
    #[arg(long, default_value_t = 5.0)]
    queue_ms: f64,
    /// Fraction of downloaders with slow links.
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// Slow links' rate as a fraction of --rate-mbit.
    #[arg(long, default_value_t = 0.5)]
    slow_factor: f64,
    /// Downloaders' rates spread uniformly within 1 ± this.
    #[arg(long, default_value_t = 0.0)]
    rate_jitter: f64,
    /// Peers each node dials (tracker numwant).
    #[arg(long, default_value_t = 20)]
    numwant: usize,
    /// Most connections per node.
    #[arg(long, default_value_t = 50)]
    max_peers: usize,
    /// The tracker hands out a uniform random sample of its peers (most trackers) instead of
    /// the least handed out (ours)
    #[arg(long)]
    uniform_tracker: bool,
    /// The seed does not suggest the pieces it shows (no starts past the piece-memory cap)
    #[arg(long)]
    no_suggest: bool,
    /// Each connection's request pipeline is not clamped to an equal share of the
    /// piece-memory budget (the engine before `Picker::request_share`)
    #[arg(long)]
    no_request_share: bool,
    /// Downloaders that leave (fail) at --fail-at.
    #[arg(long, default_value_t = 0)]
    fail: usize,
    /// When they leave, seconds.
    #[arg(long, default_value_t = 2.0)]
    fail_at: f64,
    /// Nodes leave as soon as they complete (the bench's `download` example); default: they
    /// keep seeding, as agents do.
    #[arg(long)]
    leave_on_complete: bool,
    /// When downloaders start, seconds, plus a uniform jitter of --start-jitter.
    #[arg(long, default_value_t = 0.03)]
    start: f64,
    /// See --start.
    #[arg(long, default_value_t = 0.03)]
    start_jitter: f64,
    /// Plain initial seed (no SeedSpreader).
    #[arg(long)]
    no_spread: bool,
    /// Piece-memory budget per torrent, MiB.
    #[arg(long, default_value_t = 16)]
    piece_memory_mib: u64,
    /// Piece length, KiB (a power of two, at least 16); default: the engine's choice for the size
    #[arg(long)]
    piece_kib: Option<u32>,
    /// Blocks (16 KiB) per simulated unit; default: automatic from --unit-budget.
    #[arg(long)]
    unit_blocks: Option<u32>,
    /// Automatic unit size: the smallest keeping nodes x units under this.
    #[arg(long, default_value_t = 50_000_000)]
    unit_budget: u64,
    /// SHA-1 rate for verifying pieces, MB/s.
    #[arg(long, default_value_t = 1000.0)]
    hash_mb_s: f64,
    /// CPU model for a cluster emulated on one machine: cores the swarm shares (0: none).
    #[arg(long, default_value_t = 0.0)]
    cpu_cores: f64,
    /// CPU model: CPU seconds per GiB received (the bench's "CPU s per GiB").
    #[arg(long, default_value_t = 0.0)]
    cpu_s_per_gib: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runs with seeds --seed .. --seed + --runs - 1 and reports each (and the comparison
    /// over all of them).
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Write the run's JSON (summary and per-node times) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Compare per-node completion times with the imagewolf-bt run of a cluster bench
    /// `cluster.json` at the same node count and rate.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Run the scaling curve at these node counts instead (comma-separated) and write
    /// curve.json, curve.md and curve.svg to --out-dir.
    #[arg(long, value_delimiter = ',')]
    curve: Vec<usize>,
    /// Only redraw <out-dir>/curve.svg from <out-dir>/curve.json.
    #[arg(long)]
    replot: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Where the curve's files go.
    #[arg(long, default_value = "docs/sim")]
    out_dir: PathBuf,
}

impl Args {
    fn config(&self, nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            size_bytes: self.size_mib << 20,
            up_mbit: self.rate_mbit,
            down_mbit: self.down_mbit.unwrap_or(self.rate_mbit),
            goodput: self.goodput,
            latency_ms: self.latency_ms,
            latency_jitter: self.latency_jitter,
            queue_ms: self.queue_ms,
            slow_fraction: self.slow_fraction,
            slow_factor: self.slow_factor,
            rate_jitter: self.rate_jitter,
            numwant: self.numwant,
            max_peers: self.max_peers,
            balanced_tracker: !self.uniform_tracker,
            suggest: !self.no_suggest,
            request_share: !self.no_request_share,
            fail_count: self.fail,
            fail_at_s: self.fail_at,
            leave_on_complete: self.leave_on_complete,
            start_s: self.start,
            start_jitter_s: self.start_jitter,
            spread: !self.no_spread,
            piece_memory: self.piece_memory_mib << 20,
            piece_len: self.piece_kib.map(|k| k << 10),
            unit_blocks: self.unit_blocks,
            unit_budget: self.unit_budget,
            hash_bytes_per_s: self.hash_mb_s * 1e6,
            cpu_cores: self.cpu_cores,
            cpu_s_per_gib: self.cpu_s_per_gib,
            seed,
            ..SimConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.replot {
        replot(&args)
    } else if args.curve.is_empty() {
        single(&args)
    } else {
        curve(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imagewolf-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn single(args: &Args) -> Result<(), String> {
    let mut outcomes = Vec::new();
    for seed in args.seed..args.seed + args.runs.max(1) {
        let out = Sim::new(args.config(args.nodes, seed))?
            .with_progress(!args.quiet)
            .run();
        println!("{}\n", out.text());
        outcomes.push(out);
    }
    if let Some(path) = &args.json {
        let all: Vec<Value> = outcomes.iter().map(Outcome::json).collect();
        let v = if all.len() == 1 {
            all[0].clone()
        } else {
            Value::Array(all)
        };
        write(
            path,
            &serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?,
        )?;
    }
    if let Some(path) = &args.compare {
        println!("{}", compare(path, args, &outcomes)?);
    }
    Ok(())
}

/// Rank-by-rank comparison of the sim's completion times with the bench's imagewolf-bt run
/// at the same node count and rate (nodes are not matched by identity, only by rank).
fn compare(path: &PathBuf, args: &Args, outcomes: &[Outcome]) -> Result<String, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bench: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let run = bench["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("imagewolf-bt"))
                && r["nodes"].as_u64() == Some(args.nodes as u64)
                && r["rate_mbit"].as_f64() == Some(args.rate_mbit)
        })
        .ok_or_else(|| {
            format!(
                "{}: no imagewolf-bt run with {} nodes at {} Mbit/s",
                path.display(),
                args.nodes,
                args.rate_mbit
            )
        })?;
    let mut real: Vec<f64> = run["times_s"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect();
    real.sort_by(f64::total_cmp);
    // The sim's times at each rank, averaged over the runs.
    let sims: Vec<Vec<f64>> = outcomes.iter().map(Outcome::completion_times).collect();
    if sims.iter().any(|t| t.len() != real.len()) {
        return Err("the sim and the bench completed different numbers of nodes".into());
    }
    let k = sims.len() as f64;
    let sim: Vec<f64> = (0..real.len())
        .map(|i| sims.iter().map(|t| t[i]).sum::<f64>() / k)
        .collect();
    let bound = outcomes[0].config.lower_bound_s();
    let mut s = format!(
        "Bench `{}` ({}) vs sim (mean of {} run(s)), per node by rank, seconds (S/U = {bound:.2} s):\n\n| rank | bench s | sim s | sim / bench |\n|---:|---:|---:|---:|\n",
        run["name"].as_str().unwrap_or("?"),
        bench["command"].as_str().unwrap_or("?"),
        sims.len(),
    );
    let mut worst = 0.0f64;
    for (i, (r, m)) in real.iter().zip(&sim).enumerate() {
        let ratio = m / r;
        worst = worst.max((ratio - 1.0).abs());
        s.push_str(&format!("| {} | {r:.2} | {m:.2} | {ratio:.3} |\n", i + 1));
    }
    let (rp50, sp50) = (quantile(&real, 0.5), quantile(&sim, 0.5));
    let (rmax, smax) = (real[real.len() - 1], sim[sim.len() - 1]);
    s.push_str(&format!(
        "\np50: bench {rp50:.2} s ({:.3} x S/U), sim {sp50:.2} s ({:.3}); max: bench {rmax:.2} s ({:.3}), sim {smax:.2} s ({:.3}); largest per-node deviation {:.1} %\n",
        rp50 / bound,
        sp50 / bound,
        rmax / bound,
        smax / bound,
        100.0 * worst
    ));
    Ok(s)
}

/// The curve's plot from the runs in `<out-dir>/curve.json`.
fn replot(args: &Args) -> Result<(), String> {
    let path = args.out_dir.join("curve.json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let runs = json["runs"].as_array().cloned().unwrap_or_default();
    let points: Vec<CurvePoint> = runs
        .iter()
        .map(|r| CurvePoint {
            nodes: r["config"]["nodes"].as_u64().unwrap_or(0) as usize,
            p50: r["summary"]["p50_over_bound"].as_f64().unwrap_or(f64::NAN),
            p99: r["summary"]["p99_over_bound"].as_f64().unwrap_or(f64::NAN),
            origin: r["summary"]["origin_upload_over_s"]
                .as_f64()
                .unwrap_or(f64::NAN),
        })
        .collect();
    let c = &runs.first().ok_or("curve.json has no runs")?["config"];
    let title = curve_title(
        c["size_bytes"].as_u64().unwrap_or(0) >> 20,
        c["up_mbit"].as_f64().unwrap_or(0.0),
        c["numwant"].as_u64().unwrap_or(0) as usize,
    );
    write(&args.out_dir.join("curve.svg"), &curve_svg(&points, &title))
}

fn curve_title(size_mib: u64, rate_mbit: f64, numwant: usize) -> String {
    format!("Simulated swarm: {size_mib} MiB image, {rate_mbit} Mbit/s links, numwant {numwant}")
}

fn curve(args: &Args) -> Result<(), String> {
    fs::create_dir_all(&args.out_dir).map_err(|e| e.to_string())?;
    let mut points = Vec::new();
    let mut runs = Vec::new();
    let mut md = String::from(
        "| nodes | unit KiB | p50 s | p99 s | p50 / (S/U) | p99 / (S/U) | max / (S/U) | origin upload / S | connections per node (mean / max) | control messages per node (mean / max) | wasted | sim wall s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for &n in &args.curve {
        let out = Sim::new(args.config(n, args.seed))?
            .with_progress(!args.quiet)
            .run();
        println!("{}\n", out.text());
        let s = out.summary();
        let b = s.bound_s;
        md.push_str(&format!(
            "| {n} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} / {} | {:.0} / {} | {:.2} % | {:.0} |\n",
            u64::from(out.unit_blocks) * 16,
            s.p50_s,
            s.p99_s,
            s.p50_s / b,
            s.p99_s / b,
            s.max_s / b,
            s.origin_upload,
            s.connections_mean,
            s.connections_max,
            s.control_mean,
            s.control_max,
            100.0 * s.wasted_fraction,
            out.wall_s
        ));
        points.push(CurvePoint {
            nodes: n,
            p50: s.p50_s / b,
            p99: s.p99_s / b,
            origin: s.origin_upload,
        });
        let mut j = out.json();
        if let Some(obj) = j.as_object_mut() {
            obj.remove("times_s");
        }
        runs.push(j);
    }
    let cmd = std::env::var("SIM_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    md.push_str(&format!(
        "\nS = {} MiB, U = {} Mbit/s (S/U = {:.2} s), seed {}. Command: `{cmd}`\n",
        args.size_mib,
        args.rate_mbit,
        args.config(2, args.seed).lower_bound_s(),
        args.seed
    ));
    let title = curve_title(args.size_mib, args.rate_mbit, args.numwant);
    write(&args.out_dir.join("curve.svg"), &curve_svg(&points, &title))?;
    write(&args.out_dir.join("curve.md"), &md)?;
    let json = serde_json::json!({ "command": cmd, "runs": runs });
    write(
        &args.out_dir.join("curve.json"),
        &serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )?;
    println!("{md}");
    eprintln!(
        "wrote {}/curve.svg, curve.md, curve.json",
        args.out_dir.display()
    );
    Ok(())
}

fn write(path: &PathBuf, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
