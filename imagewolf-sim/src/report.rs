//! What a run measured, and its summary figures.

use serde_json::{json, Value};

use crate::config::SimConfig;

/// One node's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeResult {
    /// When it started, seconds.
    pub start_s: f64,
    /// When it had every piece verified, seconds from the common start (`None`: never).
    pub done_s: Option<f64>,
    /// It left before completing (a failure).
    pub failed: bool,
    /// Payload bytes it uploaded (units sent, whether or not they arrived).
    pub uploaded: u64,
    /// Payload bytes it received.
    pub downloaded: u64,
    /// Received bytes that were not wanted (endgame duplicates, late arrivals).
    pub wasted: u64,
    /// Control messages it sent: handshakes, bitfields, interested/unchoke, one request and
    /// one cancel per 16 KiB block, HAVEs, tracker announces.
    pub control_messages: u64,
    /// Connections it established.
    pub connections: u32,
}

/// Everything a run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The parameters.
    pub config: SimConfig,
    /// Blocks per simulated unit.
    pub unit_blocks: u32,
    /// Pieces of the torrent.
    pub pieces: u32,
    /// Node 0 is the seed.
    pub nodes: Vec<NodeResult>,
    /// Simulated time at the end, seconds.
    pub end_s: f64,
    /// Events processed.
    pub events: u64,
    /// Calls of `Picker::pick`.
    pub pick_calls: u64,
    /// Wall-clock seconds the run took.
    pub wall_s: f64,
    /// When the origin's spreader had every piece out once, seconds (`None`: never, or no
    /// spreader): after it, the origin seeds normally.
    pub spread_done_s: Option<f64>,
    /// Fraction of each second of the run the origin's uplink was sending.
    pub origin_busy: Vec<f64>,
    /// Bytes delivered to downloaders per half second of the run, as a fraction of what
    /// all their downlinks could take (finished nodes included): where the swarm idles.
    pub swarm_down: Vec<f64>,
}

/// The headline figures of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Nodes, seed included.
    pub nodes: usize,
    /// S/U, seconds.
    pub bound_s: f64,
    /// Downloaders that completed.
    pub completed: usize,
    /// Downloaders that left before completing.
    pub failed: usize,
    /// Downloaders still incomplete at the end (neither complete nor failed).
    pub incomplete: usize,
    /// Completion times, seconds: p50, p90, p99, max.
    pub p50_s: f64,
    /// See [`Summary::p50_s`].
    pub p90_s: f64,
    /// See [`Summary::p50_s`].
    pub p99_s: f64,
    /// See [`Summary::p50_s`].
    pub max_s: f64,
    /// Bytes the seed (origin) uploaded / S.
    pub origin_upload: f64,
    /// Connections per node: mean and max.
    pub connections_mean: f64,
    /// See [`Summary::connections_mean`].
    pub connections_max: u32,
    /// Control messages per node: mean and max (seed included).
    pub control_mean: f64,
    /// See [`Summary::control_mean`].
    pub control_max: u64,
    /// Received bytes that were wasted / all received.
    pub wasted_fraction: f64,
}

/// The `q` quantile (nearest rank) of sorted `v`; NaN if empty.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl Outcome {
    /// Completion times of the downloaders that completed, sorted.
    pub fn completion_times(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self.nodes[1..].iter().filter_map(|n| n.done_s).collect();
        t.sort_by(f64::total_cmp);
        t
    }

    /// The headline figures.
    pub fn summary(&self) -> Summary {
        let t = self.completion_times();
        let downloaders = &self.nodes[1..];
        let failed = downloaders.iter().filter(|n| n.failed).count();
        let n = self.nodes.len() as f64;
        let received: u64 = self.nodes.iter().map(|x| x.downloaded).sum();
        let wasted: u64 = self.nodes.iter().map(|x| x.wasted).sum();
        Summary {
            nodes: self.nodes.len(),
            bound_s: self.config.lower_bound_s(),
            completed: t.len(),
            failed,
            incomplete: downloaders.len() - t.len() - failed,
            p50_s: quantile(&t, 0.5),
            p90_s: quantile(&t, 0.9),
            p99_s: quantile(&t, 0.99),
            max_s: t.last().copied().unwrap_or(f64::NAN),
            origin_upload: self.nodes[0].uploaded as f64 / self.config.size_bytes as f64,
            connections_mean: self
                .nodes
                .iter()
                .map(|x| f64::from(x.connections))
                .sum::<f64>()
                / n,
            connections_max: self.nodes.iter().map(|x| x.connections).max().unwrap_or(0),
            control_mean: self
                .nodes
                .iter()
                .map(|x| x.control_messages as f64)
                .sum::<f64>()
                / n,
            control_max: self
                .nodes
                .iter()
                .map(|x| x.control_messages)
                .max()
                .unwrap_or(0),
            wasted_fraction: if received == 0 {
                0.0
            } else {
                wasted as f64 / received as f64
            },
        }
    }

    /// A few lines for a terminal.
    pub fn text(&self) -> String {
        let s = self.summary();
        let c = &self.config;
        let b = s.bound_s;
        format!(
            "nodes {} (1 seed), S {} MiB, U {} Mbit/s, piece {} KiB, unit {} KiB, seed {}\n\
             completed {} / {} (failed {}, incomplete {}); S/U = {:.3} s\n\
             completion s: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n\
             completion / (S/U): p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}\n\
             origin upload / S: {:.3}; wasted {:.2} % of received\n\
             origin: every piece out once at {}; uplink busy per second: {}\n\
             downloaders' downlinks busy per half second: {}\n\
             connections per node: mean {:.1}, max {}; control messages per node: mean {:.0}, max {}\n\
             {} events, {} picks, in {:.1} s wall ({:.2} M events/s)",
            s.nodes,
            c.size_bytes >> 20,
            c.up_mbit,
            c.piece_len() >> 10,
            u64::from(self.unit_blocks) * 16,
            c.seed,
            s.completed,
            s.nodes - 1,
            s.failed,
            s.incomplete,
            b,
            s.p50_s,
            s.p90_s,
            s.p99_s,
            s.max_s,
            s.p50_s / b,
            s.p90_s / b,
            s.p99_s / b,
            s.max_s / b,
            s.origin_upload,
            100.0 * s.wasted_fraction,
            self.spread_done_s.map_or("-".to_string(), |t| format!(
                "{t:.3} s ({:.3} x S/U)",
                t / b
            )),
            self.origin_busy
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            self.swarm_down
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            s.connections_mean,
            s.connections_max,
            s.control_mean,
            s.control_max,
            self.events,
            self.pick_calls,
            self.wall_s,
            self.events as f64 / self.wall_s.max(1e-9) / 1e6,
        )
    }

    /// The run as JSON: parameters, summary, and per-node completion times.
    pub fn json(&self) -> Value {
        let s = self.summary();
        let c = &self.config;
        let b = s.bound_s;
        json!({
            "config": {
                "nodes": c.nodes, "size_bytes": c.size_bytes, "up_mbit": c.up_mbit,
                "down_mbit": c.down_mbit, "goodput": c.goodput, "latency_ms": c.latency_ms,
                "latency_jitter": c.latency_jitter, "queue_ms": c.queue_ms,
                "slow_fraction": c.slow_fraction, "slow_factor": c.slow_factor,
                "rate_jitter": c.rate_jitter, "numwant": c.numwant, "max_peers": c.max_peers,
                "balanced_tracker": c.balanced_tracker, "suggest": c.suggest,
                "fail_count": c.fail_count, "fail_at_s": c.fail_at_s,
                "leave_on_complete": c.leave_on_complete, "start_s": c.start_s,
                "start_jitter_s": c.start_jitter_s, "spread": c.spread,
                "piece_memory": c.piece_memory, "cpu_cores": c.cpu_cores,
                "cpu_s_per_gib": c.cpu_s_per_gib, "piece_len": c.piece_len(),
                "unit_blocks": self.unit_blocks, "seed": c.seed,
            },
            "summary": {
                "bound_s": b, "completed": s.completed, "failed": s.failed,
                "incomplete": s.incomplete,
                "p50_s": s.p50_s, "p90_s": s.p90_s, "p99_s": s.p99_s, "max_s": s.max_s,
                "p50_over_bound": s.p50_s / b, "p99_over_bound": s.p99_s / b,
                "max_over_bound": s.max_s / b, "origin_upload_over_s": s.origin_upload,
                "connections_mean": s.connections_mean, "connections_max": s.connections_max,
                "control_messages_mean": s.control_mean, "control_messages_max": s.control_max,
                "wasted_fraction": s.wasted_fraction,
                "spread_done_s": self.spread_done_s, "origin_busy": self.origin_busy,
                "swarm_down": self.swarm_down,
            },
            "times_s": self.completion_times(),
            "per_node": self.nodes.iter().map(|n| json!({
                "start_s": n.start_s, "done_s": n.done_s, "failed": n.failed,
                "uploaded": n.uploaded, "downloaded": n.downloaded, "wasted": n.wasted,
                "control_messages": n.control_messages, "connections": n.connections,
            })).collect::<Vec<_>>(),
            "events": self.events,
            "pick_calls": self.pick_calls,
            "wall_s": self.wall_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 0.99), 4.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
