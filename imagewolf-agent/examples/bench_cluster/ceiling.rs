//! The ceiling run: what TCP itself carries over these links. Every node sends to the next
//! with iperf3 at once for [`SECONDS`] (so every NIC is loaded in both directions, as in a
//! swarm), and each receiver's goodput is the payload rate one node can get at best. The
//! swarms are then also reported against `S / goodput`, the floor actually reachable, not
//! only against `S / U`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use imagewolf::cluster::Cluster;
use imagewolf::ChildGuard;

use crate::netlog::NetSampler;
use crate::report::quantile;

/// How long every node sends.
pub const SECONDS: u32 = 10;

/// Per-node TCP goodput at one link rate.
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// The link rate U, Mbit/s.
    pub rate_mbit: u32,
    /// Goodput each node received, Mbit/s, sorted.
    pub per_node_mbit: Vec<f64>,
    /// Frame bytes on the links over the same time / U (mean over nodes' download).
    pub link_busy: Option<f64>,
    /// tbf drops and TCP retransmissions during it (all nodes).
    pub drops: u64,
    pub retrans: u64,
}

impl Ceiling {
    /// The median node's goodput, Mbit/s.
    pub fn median_mbit(&self) -> f64 {
        quantile(&self.per_node_mbit, 0.5).unwrap_or(f64::NAN)
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let u = f64::from(self.rate_mbit);
        let frac = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3}", v / u));
        format!(
            "Ceiling at {} Mbit/s (iperf3, every node sending TCP to the next at once for {SECONDS} s): goodput per node min / p50 / max = {} / {} / {} x U ({:.1} Mbit/s median), link busy {} (frame bytes / U), {} tbf drops, {} TCP retransmissions; so the practical floor for one node is S/G = {:.3} x S/U.",
            self.rate_mbit,
            frac(self.per_node_mbit.first().copied()),
            frac(quantile(&self.per_node_mbit, 0.5)),
            frac(self.per_node_mbit.last().copied()),
            self.median_mbit(),
            self.link_busy
                .map_or("-".into(), |b| format!("{:.1} %", 100.0 * b)),
            self.drops,
            self.retrans,
            u / self.median_mbit()
        )
    }
}

/// Measures the ceiling on the first `n` nodes of `cluster` at its current rate.
pub fn measure(cluster: &Cluster, n: usize, rate_mbit: u32) -> anyhow::Result<Ceiling> {
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        let node = cluster.node(i);
        let mut cmd = node.command("iperf3");
        cmd.args(["-s", "-1", "-B", &node.ip.to_string(), "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        servers.push(ChildGuard::spawn(&format!("iperf3 server {i}"), &mut cmd)?);
    }
    for i in 0..n {
        cluster
            .node(i)
            .wait_listening(5201, Duration::from_secs(10))?;
    }
    let sampler = NetSampler::start(&cluster.nodes()[..n]);
    let started = std::time::Instant::now();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let to = cluster.node((i + 1) % n).ip.to_string();
        let mut cmd = cluster.node(i).command("iperf3");
        cmd.args(["-c", &to, "-p", "5201", "-t", &SECONDS.to_string(), "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        clients.push(ChildGuard::spawn(&format!("iperf3 client {i}"), &mut cmd)?);
    }
    let mut rates = Vec::with_capacity(n);
    for mut c in clients {
        let mut out = String::new();
        if let Some(mut stdout) = c.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out)?;
        }
        c.wait_timeout(Duration::from_secs(30 + u64::from(SECONDS)))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            rates.push(bps / 1e6);
        }
    }
    let offset = started.duration_since(sampler.started).as_secs_f64();
    let net = sampler.finish();
    drop(servers);
    anyhow::ensure!(
        rates.len() == n,
        "iperf3 reported {} of {n} nodes",
        rates.len()
    );
    rates.sort_by(f64::total_cmp);
    // The middle of the run, away from connection set-up and teardown.
    let s = f64::from(SECONDS);
    let link_busy = net
        .busy(offset + 0.2 * s, offset + 0.8 * s, rate_mbit)
        .map(|(_, _, down)| down);
    Ok(Ceiling {
        rate_mbit,
        per_node_mbit: rates,
        link_busy,
        drops: net.drops.iter().sum(),
        retrans: net.retrans.iter().sum(),
    })
}
