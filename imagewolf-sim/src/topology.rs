//! The swarm's shape, drawn once from the run's seed: link rates, latencies, start times,
//! who fails, and the peer graph.

use rand::rngs::SmallRng;
use rand::RngExt;

use crate::config::SimConfig;
use crate::net::{payload_rate, secs};
use crate::queue::Nanos;

/// Per-node links and timing, and the connections.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Uplink payload rate, bytes/s.
    pub up: Vec<f64>,
    /// Downlink payload rate, bytes/s.
    pub down: Vec<f64>,
    /// Access latency (half a link's one-way latency at the median), ns.
    pub access: Vec<Nanos>,
    /// When each node starts; the seed at 0.
    pub start: Vec<Nanos>,
    /// When each node leaves on its own (fails), if it does.
    pub fail: Vec<Option<Nanos>>,
    /// Undirected connections, each once.
    pub edges: Vec<(u32, u32)>,
}

impl Topology {
    /// Draws a topology for `cfg` from `rng`.
    pub fn build(cfg: &SimConfig, rng: &mut SmallRng) -> Self {
        let n = cfg.nodes;
        let mut up = Vec::with_capacity(n);
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let mut factor = 1.0;
            if i > 0 {
                if cfg.rate_jitter > 0.0 {
                    factor *= 1.0 + cfg.rate_jitter * (2.0 * rng.random::<f64>() - 1.0);
                }
                if cfg.slow_fraction > 0.0 && rng.random::<f64>() < cfg.slow_fraction {
                    factor *= cfg.slow_factor;
                }
            }
            up.push(payload_rate(cfg.up_mbit * factor, cfg.goodput));
            down.push(payload_rate(cfg.down_mbit * factor, cfg.goodput));
        }
        let access = (0..n)
            .map(|_| {
                let j = 1.0 + cfg.latency_jitter * (2.0 * rng.random::<f64>() - 1.0);
                secs(cfg.latency_ms / 2000.0 * j)
            })
            .collect();
        let start = (0..n)
            .map(|i| {
                if i == 0 {
                    0
                } else {
                    secs(cfg.start_s + cfg.start_jitter_s * rng.random::<f64>())
                }
            })
            .collect();
        let mut fail = vec![None; n];
        let mut failing = 0;
        while failing < cfg.fail_count {
            let i = rng.random_range(1..n);
            if fail[i].is_none() {
                fail[i] = Some(secs(cfg.fail_at_s));
                failing += 1;
            }
        }
        let edges = random_graph(n, cfg.numwant, cfg.max_peers, cfg.balanced_tracker, rng);
        Self {
            up,
            down,
            access,
            start,
            fail,
            edges,
        }
    }
}

/// Each node, in random order, asks for `numwant` distinct others (a tracker's reply) and
/// dials them; a dial is refused by a node already at `max_peers`, and a pair is connected
/// once. The tracker hands out the peers it handed out least often, ties at random
/// (`balanced`, as `imagewolf_bt::tracker::Swarms`), or a uniform random sample. With
/// `numwant >= n - 1` and enough `max_peers` the graph is complete.
pub fn random_graph(
    n: usize,
    numwant: usize,
    max_peers: usize,
    balanced: bool,
    rng: &mut SmallRng,
) -> Vec<(u32, u32)> {
    let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut edges = Vec::new();
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, rng);
    let want = numwant.min(n - 1);
    let mut picked: Vec<usize> = Vec::with_capacity(want);
    let mut handed = vec![0u32; n];
    for &i in &order {
        picked.clear();
        if want == n - 1 {
            picked.extend((0..n).filter(|&j| j != i));
        } else if balanced {
            let mut cands: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            shuffle(&mut cands, rng);
            cands.select_nth_unstable_by_key(want - 1, |&j| handed[j]);
            cands.truncate(want);
            for &j in &cands {
                handed[j] += 1;
            }
            picked.extend(cands);
        } else {
            while picked.len() < want {
                let j = rng.random_range(0..n);
                if j != i && !picked.contains(&j) {
                    picked.push(j);
                }
            }
        }
        for &j in &picked {
            if adj[i].len() >= max_peers {
                break;
            }
            if adj[j].len() >= max_peers || adj[i].contains(&(j as u32)) {
                continue;
            }
            adj[i].push(j as u32);
            adj[j].push(i as u32);
            edges.push((i.min(j) as u32, i.max(j) as u32));
        }
    }
    edges.sort_unstable();
    edges
}

fn shuffle<T>(v: &mut [T], rng: &mut SmallRng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn small_swarms_are_complete_and_large_ones_bounded() {
        let mut rng = SmallRng::seed_from_u64(7);
        let edges = random_graph(16, 20, 50, false, &mut rng);
        assert_eq!(edges.len(), 16 * 15 / 2);
        let edges = random_graph(2000, 20, 50, false, &mut rng);
        let mut deg = vec![0usize; 2000];
        for &(a, b) in &edges {
            assert_ne!(a, b);
            deg[a as usize] += 1;
            deg[b as usize] += 1;
        }
        assert!(deg.iter().all(|&d| (1..=50).contains(&d)));
        let mean = deg.iter().sum::<usize>() as f64 / 2000.0;
        assert!((30.0..=42.0).contains(&mean), "mean degree {mean}");
    }

    fn degrees(n: usize, balanced: bool, seed: u64) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut deg = vec![0usize; n];
        for (a, b) in random_graph(n, 20, 50, balanced, &mut rng) {
            deg[a as usize] += 1;
            deg[b as usize] += 1;
        }
        deg
    }

    /// Uniform replies leave some nodes dialled by few others (degree spread like 20 plus a
    /// binomial); balanced replies make every node's degree about 2 x numwant.
    #[test]
    fn a_balanced_tracker_makes_the_graph_near_regular() {
        let uniform = degrees(1000, false, 3);
        let balanced = degrees(1000, true, 3);
        let min = |d: &[usize]| *d.iter().min().unwrap();
        assert!(min(&uniform) <= 30, "uniform: min degree {}", min(&uniform));
        assert!(
            min(&balanced) >= 36,
            "balanced: min degree {}",
            min(&balanced)
        );
        assert!(balanced.iter().all(|&d| d <= 40));
    }
}
