//! Where the link time goes: per-node upload and download bytes over time, tbf drops and TCP
//! retransmissions, read from the kernel while a run goes on.
//!
//! - Bytes: the root namespace's `/proc/net/dev` every 100 ms for the bridge end of each
//!   node's veth. That end's transmit counter is the node's download, its receive counter the
//!   node's upload. These are frame bytes (Ethernet + IP + TCP headers included), the same
//!   bytes tbf meters, so `bytes / (U / 8)` is how busy the emulated NIC was: 1.0 is a link
//!   that never idled, and TCP payload then arrives at ~0.956 of it (1448 of 1514 bytes).
//! - Drops: `tc -s qdisc` on both veth ends before and after (tbf drops when its 100 ms queue
//!   is full; each drop costs TCP a retransmission and a window cut).
//! - Retransmissions: `RetransSegs` of `/proc/net/snmp` inside each namespace before and
//!   after.
//!
//! The sampler thread only reads files; the analysis runs after the run.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imagewolf::cluster::Node;

/// Sampling period.
pub const PERIOD: Duration = Duration::from_millis(100);

/// One reading of every node's counters.
#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the sampler started.
    t: f64,
    /// Per node: bytes the node uploaded (host end received) and downloaded (host end sent).
    up: Vec<u64>,
    down: Vec<u64>,
}

/// Samples `/proc/net/dev` on a thread until stopped.
pub struct NetSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
    nodes: Vec<Node>,
    drops_before: Vec<u64>,
    retrans_before: Vec<u64>,
    /// When sampling started (sample times are seconds since then).
    pub started: Instant,
}

/// What a [`NetSampler`] saw over a run.
pub struct NetLog {
    samples: Vec<Sample>,
    /// tbf drops per node (both ends) during the run.
    pub drops: Vec<u64>,
    /// TCP segments retransmitted per node during the run.
    pub retrans: Vec<u64>,
}

impl NetSampler {
    /// Starts sampling `nodes` now.
    pub fn start(nodes: &[Node]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = nodes.iter().map(|n| n.host_veth.clone()).collect();
        let drops_before = nodes.iter().map(tbf_drops).collect();
        let retrans_before = nodes.iter().map(retrans_segs).collect();
        let flag = Arc::clone(&stop);
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let t0 = started;
            let mut samples = Vec::new();
            let mut next = t0;
            while !flag.load(Ordering::Relaxed) {
                if let Some((up, down)) = read_dev(&names) {
                    samples.push(Sample {
                        t: t0.elapsed().as_secs_f64(),
                        up,
                        down,
                    });
                }
                next += PERIOD;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
            nodes: nodes.to_vec(),
            drops_before,
            retrans_before,
            started,
        }
    }

    /// Stops sampling and collects the counters.
    pub fn finish(mut self) -> NetLog {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let drops = self
            .nodes
            .iter()
            .zip(&self.drops_before)
            .map(|(n, b)| tbf_drops(n).saturating_sub(*b))
            .collect();
        let retrans = self
            .nodes
            .iter()
            .zip(&self.retrans_before)
            .map(|(n, b)| retrans_segs(n).saturating_sub(*b))
            .collect();
        NetLog {
            samples,
            drops,
            retrans,
        }
    }
}

impl Drop for NetSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// (up, down) byte counters of `names` from the root namespace's /proc/net/dev.
fn read_dev(names: &[String]) -> Option<(Vec<u64>, Vec<u64>)> {
    let text = fs::read_to_string("/proc/net/dev").ok()?;
    let mut up = vec![0; names.len()];
    let mut down = vec![0; names.len()];
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(i) = names.iter().position(|n| n == name.trim()) else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
        up[i] = f.first().copied().unwrap_or(0);
        down[i] = f.get(8).copied().unwrap_or(0);
    }
    Some((up, down))
}

/// Packets tbf dropped on both ends of `node`'s veth so far.
fn tbf_drops(node: &Node) -> u64 {
    let parse = |out: std::io::Result<std::process::Output>| -> u64 {
        let Ok(out) = out else { return 0 };
        let text = String::from_utf8_lossy(&out.stdout);
        // " Sent 123 bytes 45 pkt (dropped 6, overlimits 7 requeues 0)"
        text.split("dropped ")
            .skip(1)
            .filter_map(|s| s.split(',').next()?.trim().parse::<u64>().ok())
            .sum()
    };
    parse(
        Command::new("tc")
            .args(["-s", "qdisc", "show", "dev", &node.host_veth])
            .output(),
    ) + parse(
        Command::new("tc")
            .args([
                "-n",
                &node.name,
                "-s",
                "qdisc",
                "show",
                "dev",
                &node.ns_veth,
            ])
            .output(),
    )
}

/// `Tcp: RetransSegs` inside `node`'s namespace.
fn retrans_segs(node: &Node) -> u64 {
    let Ok(out) = node.command("cat").arg("/proc/net/snmp").output() else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(head), Some(vals)) = (tcp.next(), tcp.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(k, _)| *k == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

impl NetLog {
    /// Per-interval rows: `t, up_0, down_0, up_1, down_1, ...` in Mbit/s, as CSV.
    pub fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        let n = self.samples.first().map_or(0, |s| s.up.len());
        let mut out = String::from("t_s");
        for i in 0..n {
            let _ = write!(out, ",up{i}_mbit,down{i}_mbit");
        }
        out.push('\n');
        for w in self.samples.windows(2) {
            let dt = w[1].t - w[0].t;
            if dt <= 0.0 {
                continue;
            }
            let _ = write!(out, "{:.2}", w[1].t);
            for i in 0..n {
                let up = w[1].up[i].saturating_sub(w[0].up[i]) as f64 * 8.0 / dt / 1e6;
                let down = w[1].down[i].saturating_sub(w[0].down[i]) as f64 * 8.0 / dt / 1e6;
                let _ = write!(out, ",{up:.1},{down:.1}");
            }
            out.push('\n');
        }
        fs::write(path, out)
    }

    /// The counters at time `t` (seconds since the sampler started), interpolated.
    fn at(&self, t: f64) -> Option<(Vec<f64>, Vec<f64>)> {
        let after = self.samples.iter().position(|s| s.t >= t)?;
        let b = &self.samples[after];
        if after == 0 {
            let f = |v: &[u64]| v.iter().map(|x| *x as f64).collect();
            return Some((f(&b.up), f(&b.down)));
        }
        let a = &self.samples[after - 1];
        let w = if b.t > a.t {
            (t - a.t) / (b.t - a.t)
        } else {
            1.0
        };
        let mix = |x: &[u64], y: &[u64]| {
            x.iter()
                .zip(y)
                .map(|(x, y)| *x as f64 + w * (*y as f64 - *x as f64))
                .collect()
        };
        Some((mix(&a.up, &b.up), mix(&a.down, &b.down)))
    }

    /// Link use between `t0` and `t1` (sampler seconds), as fractions of `rate_mbit`:
    /// (seed upload, mean downloader upload, mean downloader download). Node 0 is the seed.
    pub fn busy(&self, t0: f64, t1: f64, rate_mbit: u32) -> Option<(f64, f64, f64)> {
        let (u0, d0) = self.at(t0)?;
        let (u1, d1) = self.at(t1)?;
        let line = f64::from(rate_mbit) * 1e6 / 8.0 * (t1 - t0);
        if line <= 0.0 || u0.len() < 2 {
            return None;
        }
        let n = (u0.len() - 1) as f64;
        let seed_up = (u1[0] - u0[0]) / line;
        let up = (1..u0.len()).map(|i| u1[i] - u0[i]).sum::<f64>() / n / line;
        let down = (1..u0.len()).map(|i| d1[i] - d0[i]).sum::<f64>() / n / line;
        Some((seed_up, up, down))
    }

    /// Frame bytes each node uploaded and downloaded between `t0` and `t1` (sampler
    /// seconds), `t1` clamped to the last sample (taken up to one period before the end).
    pub fn moved(&self, t0: f64, t1: f64) -> Option<(Vec<f64>, Vec<f64>)> {
        let t1 = t1.min(self.samples.last()?.t);
        let (u0, d0) = self.at(t0)?;
        let (u1, d1) = self.at(t1)?;
        let diff = |a: Vec<f64>, b: Vec<f64>| a.iter().zip(&b).map(|(a, b)| b - a).collect();
        Some((diff(u0, u1), diff(d0, d1)))
    }

    /// Node `i`'s download between `t0` and `t1` as a fraction of `rate_mbit`.
    pub fn node_down(&self, i: usize, t0: f64, t1: f64, rate_mbit: u32) -> Option<f64> {
        let (_, d0) = self.at(t0)?;
        let (_, d1) = self.at(t1)?;
        let line = f64::from(rate_mbit) * 1e6 / 8.0 * (t1 - t0);
        if line <= 0.0 {
            return None;
        }
        Some((d1.get(i)? - d0.get(i)?) / line)
    }

    /// Mean downloader download per whole second from `t0`, as % of the line rate.
    pub fn down_per_second(&self, t0: f64, t1: f64, rate_mbit: u32) -> Vec<f64> {
        let mut out = Vec::new();
        let mut t = t0;
        while t + 1.0 <= t1 + 1e-9 {
            match self.busy(t, t + 1.0, rate_mbit) {
                Some((_, _, d)) => out.push((100.0 * d).round()),
                None => break,
            }
            t += 1.0;
        }
        out
    }
}
